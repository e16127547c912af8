"""
An in-process stream transport: connected pairs of Twisted transports.

A :class:`MemoryHub` is a namespace of listening names.  Connecting to a name
builds a protocol on each side and joins them with two :class:`MemoryTransport`
ends that behave like TCP as a protocol sees it:

* Bytes are delivered on a later reactor turn, never from inside ``write``,
  in order, coalesced into reads of at most :data:`READ_SIZE` bytes.
* ``pauseProducing`` on a transport stops reads to its protocol; the bytes
  wait in the writer's buffer.
* Each direction's buffer counts bytes written and not yet read by the peer's
  protocol.  Above the hub's ``high_water`` the writer's streaming producer is
  paused; at or below ``low_water`` it is resumed.  So a reader that stops
  reading stops a writer that honours its producer, and memory stays bounded.
* ``loseConnection`` stops reading and flushes, like
  ``twisted.internet.abstract.FileDescriptor`` (a registered producer may
  still write until it is unregistered or stopped; other writes are ignored);
  once the peer has read everything, both protocols get ``connectionLost``
  with ``ConnectionDone``.  ``abortConnection`` drops both buffers; on the
  next turn the aborting side gets ``ConnectionAborted`` and its peer
  ``ConnectionLost``, as with TCP.

The two ends of a connection always close together, in the same turn.
"""

from __future__ import annotations

import errno
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
)
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IListeningPort,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spear_twisted.channels._twisted import (
    Producer,
    as_producer,
    cannot_listen_error,
    connecting_cancelled_error,
    connection_refused_error,
    failure,
)

#: Buffered bytes above which the writer's streaming producer is paused.
HIGH_WATER = 64 * 1024
#: Buffered bytes at or below which a paused producer is resumed.  Well under
#: ``HIGH_WATER`` so that a producer is not bounced on every read.
LOW_WATER = 16 * 1024
#: The most bytes handed to ``dataReceived`` in one reactor turn, like a TCP read.
READ_SIZE = 64 * 1024

_log = Logger()


@implementer(IAddress)
@attrs.frozen
class MemoryAddress:
    """One end of a memory connection; a listening port's own address has ``connection_id`` 0."""

    name: str
    side: str = attrs.field(validator=attrs.validators.in_(("server", "client")))
    connection_id: int


@implementer(ITransport, IConsumer, IPushProducer)
class MemoryTransport:
    """One end of an in-process connection; made by :meth:`MemoryHub.connect`."""

    def __init__(
        self,
        hub: MemoryHub,
        host: MemoryAddress,
        peer: MemoryAddress,
        on_lost: Callable[[], object] | None = None,
    ) -> None:
        self.hub = hub
        self.protocol: IProtocol | None = None
        self.connected = False
        self.disconnecting = False
        self.disconnected = False
        self.producer: Producer | None = None
        self.streamingProducer = False
        self.producerPaused = False
        self._host = host
        self._peer_address = peer
        self._peer: MemoryTransport = self
        self._on_lost = on_lost
        self._made = False
        # Bytes written here that the peer's protocol has not read yet;
        # ``_offset`` is how much of the first chunk it has read.
        self._buffer: deque[bytes] = deque()
        self._offset = 0
        self._buffered = 0
        self._reading_paused = False
        self._delivery: IDelayedCall | None = None
        # Set once the pair is closing: nothing more is written or delivered.
        self._closing = False

    def __repr__(self) -> str:
        return f"<MemoryTransport {self._host.name}#{self._host.connection_id} {self._host.side}>"

    @property
    def buffered_bytes(self) -> int:
        """Bytes written on this end that the peer's protocol has not read yet."""
        return self._buffered

    # -- ITransport ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the peer; it is delivered on a later reactor turn."""
        _must_be_bytes(data)
        if data and self._accepts_writes():
            self._buffer.append(data)
            self._buffered += len(data)
            self._maybe_pause_producer()
            self._schedule_delivery()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Queue each of ``data`` for the peer, in order."""
        chunks = list(data)
        for chunk in chunks:
            _must_be_bytes(chunk)
        chunks = [chunk for chunk in chunks if chunk]
        if chunks and self._accepts_writes():
            self._buffer.extend(chunks)
            self._buffered += sum(map(len, chunks))
            self._maybe_pause_producer()
            self._schedule_delivery()

    def loseConnection(self) -> None:
        """Stop reading, flush what was written, then close both ends with ``ConnectionDone``."""
        if self.connected and not self.disconnecting and not self._closing:
            self.disconnecting = True
            self._schedule_delivery()
            # What the peer has buffered for us will never be read now: let it
            # be dropped, so that the peer's producer and its own close move on.
            self._peer._schedule_delivery()

    def abortConnection(self) -> None:
        """
        Drop both buffers and close both ends on the next turn, this one with
        ``ConnectionAborted``, the peer with ``ConnectionLost`` (as TCP does).
        """
        if self.disconnected or self._closing:
            return
        self._shut()
        self.hub.reactor.callLater(
            0, self._lose_both, failure(ConnectionAborted()), failure(ConnectionLost())
        )

    def getPeer(self) -> MemoryAddress:
        """The other end's address."""
        return self._peer_address

    def getHost(self) -> MemoryAddress:
        """This end's address."""
        return self._host

    # -- IConsumer: who writes to this end --------------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """Register ``producer``; a pull producer is asked for data now and whenever the buffer empties."""
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, because producer {self.producer!r} "
                "was never unregistered."
            )
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = as_producer(producer)
        self.streamingProducer = bool(streaming)
        self.producerPaused = False
        if not streaming:
            as_producer(producer).resumeProducing()

    def unregisterProducer(self) -> None:
        """Forget the producer; a pending ``loseConnection`` may now finish."""
        self.producer = None
        self.producerPaused = False
        if self.connected and self.disconnecting:
            self._schedule_delivery()

    # -- IPushProducer: reading on this end -------------------------------------------------

    def pauseProducing(self) -> None:
        """Deliver nothing more to this end's protocol until ``resumeProducing``."""
        self._reading_paused = True

    def resumeProducing(self) -> None:
        """Deliver to this end's protocol again."""
        if self.connected and not self.disconnecting and self._reading_paused:
            self._reading_paused = False
            self._peer._schedule_delivery()

    def stopProducing(self) -> None:
        """Lose the connection, as a socket transport does."""
        self.loseConnection()

    # -- moving bytes -------------------------------------------------------------------------------

    def _accepts_writes(self) -> bool:
        # After loseConnection only a still-registered producer may write: it
        # is how FileDescriptor lets a producer finish before the close.
        return self.connected and not self._closing and (not self.disconnecting or self.producer is not None)

    def _maybe_pause_producer(self) -> None:
        if (
            self.producer is not None
            and self.streamingProducer
            and not self.producerPaused
            and self._buffered > self.hub.high_water
        ):
            self.producerPaused = True
            self.producer.pauseProducing()

    def _schedule_delivery(self) -> None:
        if self._delivery is None and self.connected and not self._closing:
            self._delivery = self.hub.reactor.callLater(0, self._deliver)

    def _deliver(self) -> None:
        self._delivery = None
        if self._closing:
            return
        peer = self._peer
        if self._buffer:
            if peer.disconnecting:
                # The peer stopped reading for good: like a socket's receive
                # buffer at close, what it would never read is dropped.
                self._buffer.clear()
                self._offset = 0
                self._buffered = 0
            elif peer._reading_paused:
                return  # peer.resumeProducing schedules the next delivery
            else:
                data = self._take(READ_SIZE)
                assert peer.protocol is not None
                if not self._guarded(peer, peer.protocol.dataReceived, data) or self._closing:
                    return
                if self._buffer:
                    self._schedule_delivery()
        self._drained()

    def _take(self, limit: int) -> bytes:
        buffer = self._buffer
        parts = []
        size = 0
        while buffer and size < limit:
            chunk = buffer[0]
            end = self._offset + limit - size
            if end >= len(chunk):
                part = chunk[self._offset :] if self._offset else chunk
                buffer.popleft()
                self._offset = 0
            else:
                part = chunk[self._offset : end]
                self._offset = end
            parts.append(part)
            size += len(part)
        self._buffered -= size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _drained(self) -> None:
        # FileDescriptor.doWrite, after a write: ask the producer for more,
        # else finish a pending loseConnection once the buffer is empty.
        producer = self.producer
        if producer is not None:
            if self.streamingProducer:
                if self.producerPaused and self._buffered <= self.hub.low_water:
                    self.producerPaused = False
                    if not self._guarded(self, producer.resumeProducing) or self._closing:
                        return
            elif not self._buffer:
                if not self._guarded(self, producer.resumeProducing) or self._closing:
                    return
        peer = self._peer
        # The end of the stream comes after its data: a peer that paused
        # reading learns of the close when it resumes, as it would from a socket.
        if self.disconnecting and not self._buffer and (peer.disconnecting or not peer._reading_paused):
            # A pull producer holds the close until it is unregistered, as in
            # FileDescriptor; an unpaused streaming producer does not, and is
            # stopped by connectionLost.  Unlike FileDescriptor, a streaming
            # producer resumed above that wrote nothing does not hang the close.
            if self.producer is None or (self.streamingProducer and not self.producerPaused):
                self._shut()
                self._lose_both(failure(ConnectionDone()), failure(ConnectionDone()))

    # -- closing ------------------------------------------------------------------------------------

    def _guarded(self, owner: MemoryTransport, call: Callable[..., object], *args: Any) -> bool:
        """Call ``call``; if it raises, log it and end the connection with the error as ``owner``'s reason."""
        try:
            call(*args)
        except Exception:
            reason = failure()
            _log.failure("Unhandled error in memory connection {transport!r}", reason, transport=owner)
            owner._shut()
            owner._lose_both(reason, failure(ConnectionLost()))
            return False
        return True

    def _shut(self) -> None:
        """Stop everything moving on both ends; ``connectionLost`` follows."""
        for end in (self, self._peer):
            end._closing = True
            end._buffer.clear()
            end._offset = 0
            end._buffered = 0
            if end._delivery is not None:
                end._delivery.cancel()
                end._delivery = None

    def _lose_both(self, reason: Failure, peer_reason: Failure) -> None:
        self._connection_lost(reason)
        self._peer._connection_lost(peer_reason)

    def _connection_lost(self, reason: Failure) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        self.connected = False
        # As FileDescriptor.connectionLost: the producer is stopped first.
        producer, self.producer = self.producer, None
        if producer is not None:
            _call_logged(producer.stopProducing)
        if self._made and self.protocol is not None:
            _call_logged(self.protocol.connectionLost, reason)
        if self._on_lost is not None:
            _call_logged(self._on_lost)


@implementer(IListeningPort)
class MemoryListeningPort:
    """A name listening in a :class:`MemoryHub`; made by :meth:`MemoryHub.listen`."""

    def __init__(self, hub: MemoryHub, name: str, factory: IProtocolFactory) -> None:
        self.hub = hub
        self.name = name
        self.factory = factory
        self.listening = False

    def __repr__(self) -> str:
        return f"<MemoryListeningPort {self.name!r}{'' if self.listening else ' (stopped)'}>"

    def startListening(self) -> None:
        """Take the name and start the factory; raises ``CannotListenError`` if the name is taken."""
        if not self.listening:
            self.hub._register(self)
            self.listening = True
            self.factory.doStart()

    def stopListening(self) -> Deferred[None]:
        """Free the name and stop the factory; connections already made stay up."""
        if self.listening:
            self.listening = False
            self.hub._unregister(self)
            self.factory.doStop()
        return defer.succeed(None)

    def getHost(self) -> MemoryAddress:
        """The listening address (``connection_id`` 0)."""
        return MemoryAddress(self.name, "server", 0)


class MemoryHub:
    """A namespace of listening names. One per CommunicationFactory; a module-level DEFAULT_HUB too."""

    def __init__(
        self,
        reactor: IReactorTime | None = None,
        *,
        high_water: int = HIGH_WATER,
        low_water: int = LOW_WATER,
    ) -> None:
        if not 0 <= low_water <= high_water:
            raise ValueError(f"need 0 <= low_water <= high_water, got {low_water} and {high_water}")
        # The global reactor is looked up on first use, not here: importing
        # this module (and so making DEFAULT_HUB) must not install a reactor.
        self._reactor = reactor
        self.high_water = high_water
        self.low_water = low_water
        self._ports: dict[str, MemoryListeningPort] = {}
        self._connection_ids = itertools.count(1)

    @property
    def reactor(self) -> IReactorTime:
        """The reactor that drives delivery; the global one unless given."""
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def listen(self, name: str, factory: IProtocolFactory) -> IListeningPort:
        """Listen on ``name``; raises ``CannotListenError`` if the name is taken."""
        port = MemoryListeningPort(self, name, factory)
        port.startListening()
        return port

    def connect(self, name: str, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect to ``name`` on the next turn; fires with the client protocol,
        or fails with ``ConnectionRefusedError``.
        """

        def cancel(connecting: Deferred[IProtocol]) -> None:
            call.cancel()
            connecting.errback(connecting_cancelled_error(MemoryAddress(name, "server", 0)))

        connecting: Deferred[IProtocol] = Deferred(cancel)
        # Like a socket's connect, the protocols are made on a later turn, not
        # inside the caller.
        call = self.reactor.callLater(0, self._try_establish, name, factory, connecting)
        return connecting

    def is_listening(self, name: str) -> bool:
        """Whether some port listens on ``name``."""
        return name in self._ports

    def _register(self, port: MemoryListeningPort) -> None:
        if port.name in self._ports:
            raise cannot_listen_error(
                None, port.name, OSError(errno.EADDRINUSE, f"memory name {port.name!r} is in use")
            )
        self._ports[port.name] = port

    def _unregister(self, port: MemoryListeningPort) -> None:
        if self._ports.get(port.name) is port:
            del self._ports[port.name]

    def _try_establish(self, name: str, factory: IProtocolFactory, connecting: Deferred[IProtocol]) -> None:
        try:
            self._establish(name, factory, connecting)
        except Exception:
            # A factory's doStart or doStop raised: the caller hears of it
            # rather than waiting forever.
            if not connecting.called:
                connecting.errback()
            else:
                raise

    def _establish(self, name: str, factory: IProtocolFactory, connecting: Deferred[IProtocol]) -> None:
        port = self._ports.get(name)
        if port is None:
            connecting.errback(connection_refused_error(f"nothing listens on memory name {name!r}"))
            return
        connection_id = next(self._connection_ids)
        server_address = MemoryAddress(name, "server", connection_id)
        client_address = MemoryAddress(name, "client", connection_id)
        try:
            server_protocol = port.factory.buildProtocol(client_address)
        except Exception:
            _log.failure("Server factory of memory name {name!r} failed to build a protocol", name=name)
            server_protocol = None
        if server_protocol is None:
            connecting.errback(connection_refused_error(f"memory name {name!r} refused the connection"))
            return
        # As a TCP connector does, the client factory is started for the
        # connection's life.
        factory.doStart()
        try:
            client_protocol = factory.buildProtocol(server_address)
        except Exception:
            factory.doStop()
            connecting.errback()
            return
        if client_protocol is None:
            factory.doStop()
            connecting.errback(connection_refused_error(f"the client factory refused memory name {name!r}"))
            return

        server = MemoryTransport(self, server_address, client_address)
        client = MemoryTransport(self, client_address, server_address, on_lost=factory.doStop)
        server._peer, client._peer = client, server
        server.protocol, client.protocol = server_protocol, client_protocol
        server.connected = client.connected = True

        server._made = True
        if not server._guarded(server, server_protocol.makeConnection, server):
            connecting.errback(connection_refused_error(f"memory name {name!r} failed to accept"))
            return
        client._made = True
        if not client._guarded(client, client_protocol.makeConnection, client):
            connecting.errback(ConnectionLost(f"the client protocol failed in connectionMade to {name!r}"))
            return
        connecting.callback(client_protocol)


#: The hub for callers that do not bring their own.
DEFAULT_HUB = MemoryHub()


@implementer(IStreamServerEndpoint)
@attrs.frozen
class MemoryServerEndpoint:
    """Listens on ``name`` in ``hub``."""

    hub: MemoryHub
    name: str

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen; fails with ``CannotListenError`` if the name is taken."""
        return defer.execute(self.hub.listen, self.name, factory)


@implementer(IStreamClientEndpoint)
@attrs.frozen
class MemoryClientEndpoint:
    """Connects to ``name`` in ``hub``."""

    hub: MemoryHub
    name: str

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect; fails with ``ConnectionRefusedError`` if nothing listens."""
        return self.hub.connect(self.name, factory)


def _must_be_bytes(data: object) -> None:
    # As FileDescriptor: a str or bytearray written by mistake fails loudly
    # here, not as garbage on the other side.
    if not isinstance(data, bytes):
        raise TypeError(f"Data must be bytes, not {type(data).__name__}")


def _call_logged(call: Callable[..., object], *args: Any) -> None:
    try:
        call(*args)
    except Exception:
        _log.failure("Unhandled error while closing a memory connection")
