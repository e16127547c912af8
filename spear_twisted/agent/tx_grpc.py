"""
The agent's gRPC transport under Twisted (``SPEAR_COMMUNICATION_TYPE=grpc``):
one :class:`~spear_twisted.bridge.client.ConnectCall` per connection, the
bridge's own gRPC client, driving ``h2`` in the reactor.

Why not grpcio here: its blocking API would need threads to hand every
message to the reactor, and its ``grpc.aio`` API an asyncio event loop under
the reactor; a ``ConnectCall`` needs neither, works on any reactor, and
speaks gRPC as grpcio does (the tests run it against a grpcio server too).
The asyncio flavour uses grpcio (:mod:`spear_twisted.agent.aio_grpc`).

The call's envelopes are converted by :mod:`spear_twisted.bridge.contract`
and fed to the same :class:`~spear_twisted.agent.core.AgentConnection` as
a socket's frames; the end of the call is the end of the connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

from spear_twisted.agent.config import AgentConfig
from spear_twisted.agent.core import AgentConnection
from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.client import ConnectCall
from spear_twisted.bridge.contract import envelope_from_message, message_from_envelope
from spear_twisted.bridge.endpoints import client_tls_options
from spear_twisted.bridge.status import GrpcError
from spear_twisted.errors import InvalidMessage
from spear_twisted.wire import SpearMessage


class CallTransport:
    """A ``ConnectCall`` as an :class:`~spear_twisted.agent.core.Transport`."""

    def __init__(self, call: ConnectCall) -> None:
        self.call = call

    def send_message(self, message: SpearMessage) -> None:
        # A send refused because the call is over: its end is reported by on_end.
        self.call.send(envelope_from_message(message)).addErrback(lambda _: None)

    def close(self) -> None:
        """End the agent's side after what was sent; the call ends when the spearlet ends it."""
        self.call.finish()


def connect(connection: AgentConnection, config: AgentConfig, reactor: Any) -> Deferred[None]:
    """Open a ``Connect`` call for ``connection`` (it then authenticates itself)."""
    host, port = config.host, config.port
    assert port is not None
    endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    endpoint: IStreamClientEndpoint = endpoint_type(reactor, host, port, timeout=config.connect_timeout)
    scheme = "http"
    if config.tls_ca_path is not None:
        endpoint = wrapClientTLS(client_tls_options(host, config.tls_ca_path), endpoint)
        scheme = "https"
    call = ConnectCall(
        clock=reactor,
        authority=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        scheme=scheme,
        max_receive_message_size=config.max_message_size,
        max_send_message_size=config.max_message_size,
    )

    def received(envelope: pb.Envelope, _size: int) -> None:
        try:
            message = message_from_envelope(envelope)
        except InvalidMessage as e:
            connection.protocol_error(e)
            return
        connection.message_received(message)

    def ended(error: GrpcError | None) -> None:
        connection.connection_lost("the spearlet ended the call" if error is None else str(error))

    def connected(_: object) -> None:
        connection.connection_made(CallTransport(call))
        call.set_receiver(received, ended)

    connecting: Deferred[Any] = connectProtocol(endpoint, call)  # type: ignore[no-untyped-call]
    return connecting.addCallback(connected)
