"""
The agent under asyncio: an ``asyncio.Protocol`` that feeds an
:class:`~spear_twisted.agent.core.AgentConnection`, and the event loop's
connections to dial with (grpcio's ``grpc.aio`` for the gRPC bridge:
:mod:`spear_twisted.agent.aio_grpc`).  Nothing here imports Twisted.

txaio must be using asyncio (``txaio.use_asyncio()``) before this module is
imported; :func:`spear_twisted.agent.run` does that.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import Any

import txaio as _txaio

from spear_twisted.agent.bootstrap import Bootstrap
from spear_twisted.agent.config import AgentConfig
from spear_twisted.agent.core import Agent, AgentConnection, Handler, SignalHook

TYPE_CHECKING = False
if TYPE_CHECKING:
    from spear_twisted.wire import SpearMessage

# txaio's functions are bound when its framework is chosen: untyped.
txaio: Any = _txaio


class _Transport:
    """An asyncio transport as an :class:`~spear_twisted.agent.core.Transport`."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def send_message(self, message: SpearMessage) -> None:
        self._transport.write(message.to_frame())

    def close(self) -> None:
        self._transport.close()


class AgentProtocol(asyncio.Protocol):
    """One connection of the agent, driving its :class:`AgentConnection`."""

    def __init__(self, connection: AgentConnection) -> None:
        self.connection = connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.connection.connection_made(_Transport(transport))

    def data_received(self, data: bytes) -> None:
        self.connection.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.connection_lost(
            "connection closed" if exc is None else str(exc) or type(exc).__name__
        )


class _LoopClock:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def seconds(self) -> float:
        return self.loop.time()

    def call_later(self, delay: float, function: Any, *args: Any) -> Any:
        return self.loop.call_later(delay, function, *args)


def start_agent(
    handler: Handler,
    config: AgentConfig,
    *,
    loop: asyncio.AbstractEventLoop,
    on_signal: SignalHook | None = None,
    preconnected: Bootstrap | None = None,
) -> Agent:
    """
    Start an agent on ``loop``: on the ``preconnected`` socket (whose
    ``AuthRequest`` is sent), or by dialling ``config``'s address.  Its
    ``when_finished()`` gives its exit status.
    """
    txaio.config.loop = loop

    async def connect(connection: AgentConnection) -> None:
        if config.transport == "grpc":
            from spear_twisted.agent import aio_grpc

            await aio_grpc.connect(connection, config, loop)
            return
        if config.transport == "unix":
            dialling = loop.create_unix_connection(lambda: AgentProtocol(connection), config.socket_path)
        else:
            assert config.port is not None
            dialling = loop.create_connection(lambda: AgentProtocol(connection), config.host, config.port)
        await asyncio.wait_for(dialling, config.connect_timeout)

    agent = Agent(handler, config, connect=connect, clock=_LoopClock(loop), on_signal=on_signal)
    adopted = agent.start(None if preconnected is None else preconnected.frame)
    if adopted is not None:
        assert preconnected is not None
        sock = preconnected.as_socket()

        async def adopt() -> None:
            if sock.family == socket.AF_UNIX:
                await loop.create_unix_connection(lambda: AgentProtocol(adopted), sock=sock)
            else:
                await loop.create_connection(lambda: AgentProtocol(adopted), sock=sock)

        adopting = loop.create_task(adopt())
        txaio.add_callbacks(
            adopting, None, lambda failure: adopted.connection_lost(txaio.failure_message(failure))
        )
    return agent


async def serve(handler: Handler, config: AgentConfig, *, on_signal: SignalHook | None = None) -> int:
    """Run an agent in a running event loop until it is done; its exit status."""
    agent = start_agent(handler, config, loop=asyncio.get_running_loop(), on_signal=on_signal)
    status: int = await agent.when_finished()
    return status


def run_agent(
    handler: Handler,
    config: AgentConfig,
    *,
    on_signal: SignalHook | None = None,
    preconnected: Bootstrap | None = None,
) -> int:
    """Run a new event loop until the agent is done; its exit status."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        agent = start_agent(handler, config, loop=loop, on_signal=on_signal, preconnected=preconnected)
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, agent.terminate, signal.Signals(number).name)
        status: int = loop.run_until_complete(agent.when_finished())
        return status
    finally:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
        asyncio.set_event_loop(None)
