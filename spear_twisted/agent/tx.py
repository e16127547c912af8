"""
The agent under Twisted: a ``Protocol`` that feeds an
:class:`~spear_twisted.agent.core.AgentConnection`, and the reactor's
endpoints to dial with (a ``Connect`` call of the bridge's own client for
the gRPC bridge: :mod:`spear_twisted.agent.tx_grpc`).

txaio must be using Twisted (``txaio.use_twisted()``) before this module is
imported; :func:`spear_twisted.agent.run` does that.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from spear_twisted.agent.bootstrap import Bootstrap
from spear_twisted.agent.config import AgentConfig
from spear_twisted.agent.core import Agent, AgentConnection, Handler, SignalHook

TYPE_CHECKING = False
if TYPE_CHECKING:
    from spear_twisted.wire import SpearMessage


class _Transport:
    """A Twisted transport as an :class:`~spear_twisted.agent.core.Transport`."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def send_message(self, message: SpearMessage) -> None:
        self._transport.write(message.to_frame())

    def close(self) -> None:
        self._transport.loseConnection()


class AgentProtocol(Protocol):
    """One connection of the agent, driving its :class:`AgentConnection`."""

    def __init__(self, connection: AgentConnection) -> None:
        self.connection = connection

    def connectionMade(self) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.connection.connection_made(_Transport(self.transport))

    def dataReceived(self, data: bytes) -> None:
        self.connection.data_received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connection.connection_lost(reason.getErrorMessage())


class _ReactorClock:
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def seconds(self) -> float:
        return float(self.reactor.seconds())

    def call_later(self, delay: float, function: Any, *args: Any) -> Any:
        return self.reactor.callLater(delay, function, *args)


def start_agent(
    handler: Handler,
    config: AgentConfig,
    *,
    reactor: Any = None,
    on_signal: SignalHook | None = None,
    preconnected: Bootstrap | None = None,
) -> Agent:
    """
    Start an agent on ``reactor``: on the ``preconnected`` socket (whose
    ``AuthRequest`` is sent), or by dialling ``config``'s address.  Its
    ``when_finished()`` gives its exit status.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor

    def connect(connection: AgentConnection) -> Deferred[Any]:
        if config.transport == "grpc":
            from spear_twisted.agent import tx_grpc

            return tx_grpc.connect(connection, config, reactor)
        # Twisted's endpoints are untyped.
        kinds: Any = endpoints
        if config.transport == "unix":
            endpoint = kinds.UNIXClientEndpoint(reactor, config.socket_path, timeout=config.connect_timeout)
        else:
            kind = kinds.TCP6ClientEndpoint if ":" in config.host else kinds.TCP4ClientEndpoint
            endpoint = kind(reactor, config.host, config.port, timeout=config.connect_timeout)
        connecting: Deferred[Any] = kinds.connectProtocol(endpoint, AgentProtocol(connection))
        return connecting

    agent = Agent(handler, config, connect=connect, clock=_ReactorClock(reactor), on_signal=on_signal)
    adopted = agent.start(None if preconnected is None else preconnected.frame)
    if adopted is not None:
        assert preconnected is not None
        sock = preconnected.as_socket()
        # The reactor duplicates the descriptor; ours is closed right after.
        reactor.adoptStreamConnection(
            sock.fileno(), sock.family, Factory.forProtocol(lambda: AgentProtocol(adopted))
        )
        sock.close()
    return agent


def serve(
    handler: Handler,
    config: AgentConfig,
    *,
    reactor: Any = None,
    on_signal: SignalHook | None = None,
) -> Deferred[int]:
    """Run an agent in an application that runs the reactor itself; fires with its exit status."""
    finished: Deferred[int] = start_agent(
        handler, config, reactor=reactor, on_signal=on_signal
    ).when_finished()
    return finished


def run_agent(
    handler: Handler,
    config: AgentConfig,
    *,
    on_signal: SignalHook | None = None,
    preconnected: Bootstrap | None = None,
) -> int:
    """Run the reactor until the agent is done; its exit status."""
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    agent = start_agent(handler, config, reactor=reactor, on_signal=on_signal, preconnected=preconnected)
    outcome: list[int] = []

    def done(status: int) -> None:
        outcome.append(status)
        if reactor.running:
            reactor.stop()

    def on_failure(failure: Failure) -> None:
        agent.log.failure("The agent failed", failure)
        done(1)

    agent.when_finished().addCallbacks(done, on_failure)

    def graceful(number: int, _frame: Any) -> None:
        reactor.callFromThread(agent.terminate, signal.Signals(number).name)

    def install_signals() -> None:
        # Right after the reactor's own handlers (a startup trigger of the
        # same phase, registered later), which would stop it at once; until
        # then run()'s start-up handlers are in charge.
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, graceful)

    reactor.addSystemEventTrigger("during", "startup", install_signals)
    if not outcome:
        reactor.run()
    return outcome[0] if outcome else 1
