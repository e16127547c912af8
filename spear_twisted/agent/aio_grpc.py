"""
The agent's gRPC transport under asyncio (``SPEAR_COMMUNICATION_TYPE=grpc``):
one ``Connect`` call of grpcio's ``grpc.aio`` client per connection, its
envelopes converted by :mod:`spear_twisted.bridge.contract` (which imports
no Twisted) and fed to the same
:class:`~spear_twisted.agent.core.AgentConnection` as a socket's frames.

Connecting waits until the HTTP/2 connection is ready and fails at once
when it cannot be made (grpcio would otherwise keep retrying on its own), so
the agent's own reconnection and backoff apply as over a socket.  Writes go
out in order through one task; the end of the call (the spearlet's status,
a reset, a lost connection) is the end of the connection.

grpcio is needed only here: install ``spear_twisted[grpc]``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio

from spear_twisted.agent.config import AgentConfig
from spear_twisted.agent.core import AgentConnection
from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.contract import CONNECT_PATH, envelope_from_message, message_from_envelope
from spear_twisted.errors import InvalidMessage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from spear_twisted.wire import SpearMessage


class GrpcConnectError(ConnectionError):
    """The spearlet's gRPC address could not be reached."""


def channel_options(config: AgentConfig) -> list[tuple[str, Any]]:
    """grpcio channel options: the message size limits of ``config``, both ways."""
    return [
        ("grpc.max_receive_message_length", config.max_message_size),
        ("grpc.max_send_message_length", config.max_message_size),
    ]


def open_channel(config: AgentConfig) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``config``'s address, over TLS when ``tls_ca_path`` is set."""
    host = f"[{config.host}]" if ":" in config.host else config.host
    target = f"{host}:{config.port}"
    if config.tls_ca_path is None:
        return grpc.aio.insecure_channel(target, options=channel_options(config))
    with open(config.tls_ca_path, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.aio.secure_channel(target, credentials, options=channel_options(config))


async def wait_until_ready(channel: grpc.aio.Channel) -> None:
    """
    Until ``channel``'s HTTP/2 connection is up.

    :raises GrpcConnectError: as soon as the connection attempt fails.
    """
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            raise GrpcConnectError("the connection failed")
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)


class GrpcTransport:
    """One ``Connect`` call as an :class:`~spear_twisted.agent.core.Transport`."""

    def __init__(self, channel: grpc.aio.Channel, call: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._channel = channel
        self._call = call
        self._outgoing: asyncio.Queue[pb.Envelope | None] = asyncio.Queue()
        self._writer = loop.create_task(self._write())
        #: The task of :meth:`run` (the loop keeps only a weak reference to it).
        self.reader: asyncio.Task[None] | None = None
        self._closing = False

    def send_message(self, message: SpearMessage) -> None:
        if not self._closing:
            self._outgoing.put_nowait(envelope_from_message(message))

    def close(self) -> None:
        """End the agent's side after what was sent; the call ends when the spearlet ends it."""
        if not self._closing:
            self._closing = True
            self._outgoing.put_nowait(None)

    async def _write(self) -> None:
        call = self._call
        try:
            while (envelope := await self._outgoing.get()) is not None:
                await call.write(envelope)
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call is over: its end is read by run()

    async def run(self, connection: AgentConnection) -> None:
        """Feed ``connection`` what the call brings, then tell it how the call ended."""
        call = self._call
        reason = "the spearlet ended the call"
        try:
            while (envelope := await call.read()) is not grpc.aio.EOF:
                try:
                    message = message_from_envelope(envelope)
                except InvalidMessage as e:
                    connection.protocol_error(e)
                    continue
                connection.message_received(message)
            code = await call.code()
            if code is not grpc.StatusCode.OK:
                reason = f"{code.name}: {await call.details()}"
        except grpc.aio.AioRpcError as e:
            reason = f"{e.code().name}: {e.details()}"
        except asyncio.CancelledError:
            reason = "the call was cancelled"
        finally:
            self._closing = True
            self._writer.cancel()
            await self._channel.close()
            connection.connection_lost(reason)


async def connect(connection: AgentConnection, config: AgentConfig, loop: asyncio.AbstractEventLoop) -> None:
    """Open a ``Connect`` call for ``connection`` (it then authenticates itself)."""
    channel = open_channel(config)
    try:
        await asyncio.wait_for(wait_until_ready(channel), config.connect_timeout)
    except TimeoutError:
        await channel.close()
        raise GrpcConnectError(f"no connection within {config.connect_timeout:g} s") from None
    except BaseException:
        await channel.close()
        raise
    call = channel.stream_stream(
        CONNECT_PATH,
        request_serializer=pb.Envelope.SerializeToString,
        response_deserializer=pb.Envelope.FromString,
    )()
    transport = GrpcTransport(channel, call, loop)
    connection.connection_made(transport)
    transport.reader = loop.create_task(transport.run(connection))
