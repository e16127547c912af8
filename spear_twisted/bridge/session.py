"""
The Spear session over a gRPC ``Connect`` stream (PROTOCOL.md section 8).

Each ``Envelope`` of the stream carries one message of the session, and the
session is the same core as over Unix sockets and TCP,
:class:`~spear_twisted.channels.session_protocol.SpearSessionProtocol`: the
handshake, heartbeats and deadlines, the send queue, events and closing are
its own.  This module adds only how messages travel:

* :class:`EnvelopeSessionProtocol` writes each message as one ``Envelope``
  and holds incoming ones to the session's size limit (small until the
  handshake succeeds);
* :class:`StreamTransport` makes a stream of envelopes the session's
  transport: the server's :class:`~spear_twisted.bridge.call.BridgeStream`,
  or the client's :class:`~spear_twisted.bridge.client.ConnectCall`;
* :class:`ConnectSession` serves ``Connect``: each call becomes a connection
  built by a channel (or any :class:`ConnectionBuilder`), exactly as a
  socket connection would be.

Back-pressure: a message the stream cannot hand to HTTP/2 at once (the
peer's window is closed, or the socket's buffer is full) pauses the session's
sends until it is handed over.  Reading: while the session holds off reading
(its owner's queue is full), the stream stops acknowledging what arrives, so
the peer's window closes and it waits.

Ending: the peer's orderly end of its messages (``on_end(None)``) ends the
call and the connection; any other end (a reset, a lost HTTP/2 connection, a
refusal) is the connection lost with that error, so requests outstanding on
it fail at once.  Closing the connection ends the call: OK after an orderly
close, ``UNAVAILABLE`` when it is aborted.
"""

from __future__ import annotations

import typing
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.contract import envelope_from_message, message_from_envelope
from spear_twisted.bridge.framing import PREFIX_SIZE
from spear_twisted.bridge.methods import CallContext, IConnectHandler
from spear_twisted.bridge.status import GrpcError, StatusCode
from spear_twisted.channels._twisted import Producer, as_producer, failure
from spear_twisted.channels.session_protocol import SpearSessionProtocol
from spear_twisted.errors import InvalidMessage
from spear_twisted.wire import Role, SpearMessage


class EnvelopeStream(typing.Protocol):
    """
    What a :class:`StreamTransport` needs of a stream of ``Envelope``\\ s;
    :class:`~spear_twisted.bridge.call.BridgeStream` (the server's side of a
    call) and :class:`~spear_twisted.bridge.client.ConnectCall` (the
    client's) provide it.
    """

    @property
    def active(self) -> bool:
        """Whether the call is still running."""

    @property
    def max_receive_message_size(self) -> int:
        """The largest message accepted from now on."""

    @max_receive_message_size.setter
    def max_receive_message_size(self, size: int) -> None: ...

    def send_serialized(self, data: bytes) -> Deferred[None]:
        """Send the serialized ``Envelope`` ``data``; fires once it is handed to HTTP/2."""

    def set_receiver(self, on_message: Any, on_end: Any) -> None:
        """Call ``on_message(message, size)`` per message, ``on_end(error or None)`` once."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def finish(self, error: GrpcError | None = None) -> None:
        """End this side of the call: in order, or with ``error``."""


class ConnectionBuilder(typing.Protocol):
    """Builds the connections of a listener: a channel, or the ConnectionManager."""

    def build_connection(self, protocol_type: type[SpearSessionProtocol]) -> SpearSessionProtocol | None:
        """A new connection of ``protocol_type``, or ``None`` when no more are accepted."""


class EnvelopeSessionProtocol(SpearSessionProtocol):
    """
    A Spear connection whose messages travel as ``Envelope``\\ s on a
    :class:`StreamTransport`.

    Takes the keyword arguments of
    :class:`~spear_twisted.channels.session_protocol.SpearSessionProtocol`.
    A message's size, for the statistics and the limits, is its envelope's
    serialized size plus the 5-byte gRPC message prefix.
    """

    __slots__ = ()

    def write_message(self, message: SpearMessage) -> int:
        """Send ``message`` as one ``Envelope``; its size on the wire."""
        transport = self.transport
        assert isinstance(transport, StreamTransport)
        return transport.send_envelope(envelope_from_message(message))

    def incoming_limit_changed(self, limit: int) -> None:
        transport = self.transport
        if isinstance(transport, StreamTransport):
            transport.stream.max_receive_message_size = limit


_NOT_ENDED: Any = object()


@implementer(IConsumer, IPushProducer)
class StreamTransport:
    """
    A stream of envelopes as the transport of one
    :class:`EnvelopeSessionProtocol` (see the module docstring).

    :param stream: an :class:`EnvelopeStream`.
    :param peer: the address of the other end (``getPeer``).
    :param host: this end's address (``getHost``).
    """

    log = Logger()

    def __init__(
        self, stream: EnvelopeStream, peer: IAddress | None = None, host: IAddress | None = None
    ) -> None:
        self.stream = stream
        self.protocol: EnvelopeSessionProtocol | None = None
        self._peer = peer
        self._host = host
        self._producer: Producer | None = None
        self._pending = 0
        self._producer_paused = False
        self._delivering = False
        self._deferred_end: Failure | None = None
        #: Whether the session asked to close (``loseConnection`` or ``abortConnection``).
        self.disconnecting = False
        #: Whether ``connectionLost`` has been delivered.
        self.disconnected = False

    def attach(self, protocol: EnvelopeSessionProtocol) -> None:
        """Run ``protocol``'s session on the stream, from now on."""
        self.protocol = protocol
        if protocol.role is Role.SPEARLET:
            # Small until the agent has authenticated.
            self.stream.max_receive_message_size = protocol.max_message_size
        else:
            # The agent dialled the spearlet it was told to, which may send a
            # large request right behind its AuthResponse: a stream's decoder
            # reads every message of a read before the session has seen the
            # first, so the limit cannot rise in between.
            self.stream.max_receive_message_size = protocol.session_config.max_message_size
        protocol.makeConnection(self)  # type: ignore[no-untyped-call]
        # After connectionMade: messages already held are delivered now, to a
        # session that exists.
        self.stream.set_receiver(self._message_received, self._ended)

    # -- the session's side ---------------------------------------------------------------

    def send_envelope(self, envelope: pb.Envelope) -> int:
        """Send ``envelope``; its size on the wire.  A send that must wait pauses the session."""
        # Serialized once: measuring it (ByteSize) costs as much as writing it.
        data = envelope.SerializeToString()
        sending = self.stream.send_serialized(data)
        size = len(data) + PREFIX_SIZE
        if sending.called:
            # Handed over at once, or refused because the call is over (whose
            # end the session hears of through on_end).
            sending.addErrback(_ignore)
            return size
        self._pending += 1
        if not self._producer_paused and self._producer is not None:
            self._producer_paused = True
            self._producer.pauseProducing()
        sending.addBoth(self._sent)
        return size

    def _sent(self, result: object) -> None:
        self._pending -= 1
        if self._pending == 0 and self._producer_paused:
            self._producer_paused = False
            if self._producer is not None and not self.disconnected:
                self._producer.resumeProducing()

    def getPeer(self) -> IAddress | None:
        return self._peer

    def getHost(self) -> IAddress | None:
        return self._host

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = as_producer(producer)
        self._producer_paused = False

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producer_paused = False

    def write(self, data: bytes) -> None:
        raise TypeError("a gRPC stream carries envelopes: the session writes with send_envelope")

    # IPushProducer: the session holds off reading while its owner's queue is full.

    def pauseProducing(self) -> None:
        self.stream.pause_reading()

    def resumeProducing(self) -> None:
        self.stream.resume_reading()

    def stopProducing(self) -> None:
        self.stream.pause_reading()

    def loseConnection(self) -> None:
        """End the call in order (after what the session sent)."""
        if self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        self.stream.finish()

    def abortConnection(self) -> None:
        """End the call at once, with ``UNAVAILABLE``."""
        if self.disconnected:
            return
        self.disconnecting = True
        self.stream.finish(GrpcError(StatusCode.UNAVAILABLE, "the connection was aborted"))

    # -- the stream's side ----------------------------------------------------------------

    def _message_received(self, envelope: pb.Envelope, size: int) -> None:
        protocol = self.protocol
        if protocol is None or not protocol.accepts_messages:
            return
        self._delivering = True
        try:
            try:
                message = message_from_envelope(envelope)
            except InvalidMessage as e:
                protocol.protocol_error(e)
            else:
                protocol.message_received(message, size + PREFIX_SIZE)
        finally:
            self._delivering = False
        if self._deferred_end is not None:
            reason, self._deferred_end = self._deferred_end, None
            self._connection_lost(reason)

    def _ended(self, error: BaseException | None) -> None:
        if self.disconnected:
            return
        if error is None:
            # The peer ended its messages in order: end ours too (a no-op
            # once the call is over).
            if self.stream.active:
                self.stream.finish()
            reason = failure(ConnectionDone("the peer ended the stream"))
        else:
            reason = failure(error)
        if self._delivering:
            # Said while the session handles a message (it closed the
            # connection): the session hears of it once it is done, as a
            # socket's end comes after the read that caused it.
            self._deferred_end = reason
            return
        self._connection_lost(reason)

    def _connection_lost(self, reason: Failure) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        protocol = self.protocol
        if protocol is not None:
            protocol.connectionLost(reason)

    def __repr__(self) -> str:
        return f"<StreamTransport {self.stream!r}>"


def _ignore(_failure: Failure) -> None:
    return None


@implementer(IConnectHandler)
class ConnectSession:
    """
    Serves ``Connect``: each call becomes one Spear connection made by
    ``builder`` (a channel, for a listener of its own; the ConnectionManager,
    for a shared one), which then belongs wherever its ``AuthRequest`` says.
    """

    log = Logger()

    def __init__(self, builder: ConnectionBuilder) -> None:
        self.builder = builder

    def connect(self, stream: Any, context: CallContext) -> Deferred[None]:
        """Run a session on ``stream``; fires once the connection is gone."""
        connection = self.builder.build_connection(EnvelopeSessionProtocol)
        if connection is None:
            return defer.fail(GrpcError(StatusCode.UNAVAILABLE, "this address no longer accepts connections"))
        assert isinstance(connection, EnvelopeSessionProtocol)
        bridge_transport = stream.connection.transport
        transport = StreamTransport(stream, bridge_transport.getPeer(), bridge_transport.getHost())
        self.log.debug(
            "Connect call on {bridge_connection} stream {stream_id} from {peer}: connection {connection_id}",
            bridge_connection=context.connection_id,
            stream_id=context.stream_id,
            peer=context.peer,
            connection_id=connection.connection_id,
        )
        transport.attach(connection)
        return connection.when_lost()
