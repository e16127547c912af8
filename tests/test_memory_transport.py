"""
The in-process memory transport, driven by the real reactor.

Every test waits on Deferreds fired from protocol callbacks (or on a few
reactor turns, to show that something did *not* happen), and closes what it
opened, so the reactor is clean after each one.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    CannotListenError,
    ConnectingCancelledError,
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IListeningPort,
    IPushProducer,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from spear_twisted.channels.memory import (
    DEFAULT_HUB,
    READ_SIZE,
    MemoryAddress,
    MemoryClientEndpoint,
    MemoryHub,
    MemoryServerEndpoint,
    MemoryTransport,
)

NAME = "instance-1"


def turns(count: int = 5) -> Deferred[None]:
    """Fires after ``count`` reactor turns: long enough for anything already scheduled to happen."""

    @defer.inlineCallbacks
    def run() -> Generator[Deferred[Any], Any, None]:
        for _ in range(count):
            yield task.deferLater(reactor, 0, lambda: None)

    return run()


class Recorder(Protocol):
    """Records what happens to it; can be waited on."""

    pause_on_connect = False

    def __init__(self) -> None:
        self.received = b""
        self.chunks: list[bytes] = []
        self.made = 0
        self.reasons: list[Failure] = []
        self._data_waiters: list[tuple[int, Deferred[bytes]]] = []
        self._lost_waiters: list[Deferred[Recorder]] = []

    @property
    def memory_transport(self) -> MemoryTransport:
        assert isinstance(self.transport, MemoryTransport)
        return self.transport

    def connectionMade(self) -> None:
        self.made += 1
        if self.pause_on_connect:
            self.memory_transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.chunks.append(data)
        waiting, self._data_waiters = self._data_waiters, []
        for size, waiter in waiting:
            if len(self.received) >= size:
                waiter.callback(self.received)
            else:
                self._data_waiters.append((size, waiter))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reasons.append(reason)
        waiting, self._lost_waiters = self._lost_waiters, []
        for waiter in waiting:
            waiter.callback(self)

    def when_received(self, size: int) -> Deferred[bytes]:
        """Fires with everything received once at least ``size`` bytes have arrived."""
        if len(self.received) >= size:
            return defer.succeed(self.received)
        waiter: Deferred[bytes] = Deferred()
        self._data_waiters.append((size, waiter))
        return waiter

    def when_lost(self) -> Deferred[Recorder]:
        """Fires with this protocol once ``connectionLost`` has been called (a Failure cannot be a result)."""
        if self.reasons:
            return defer.succeed(self)
        waiter: Deferred[Recorder] = Deferred()
        self._lost_waiters.append(waiter)
        return waiter

    @property
    def reason(self) -> Failure:
        """Why the connection was lost; it must have been lost exactly once."""
        [reason] = self.reasons
        return reason


class PausedRecorder(Recorder):
    """Stops reading as soon as it is connected."""

    pause_on_connect = True


class Echo(Recorder):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)


class RecordingFactory(Factory):
    """Builds ``protocol_class`` and remembers what it built and for whom."""

    def __init__(self, protocol_class: type[Protocol] = Recorder, refuse: bool = False) -> None:
        self.protocol = protocol_class
        self.refuse = refuse
        self.built: list[Any] = []
        self.addresses: list[Any] = []
        self.starts = 0
        self.stops = 0

    def startFactory(self) -> None:
        self.starts += 1

    def stopFactory(self) -> None:
        self.stops += 1

    def buildProtocol(self, addr: Any) -> Protocol | None:
        self.addresses.append(addr)
        if self.refuse:
            return None
        protocol = super().buildProtocol(addr)
        self.built.append(protocol)
        return protocol


@implementer(IPushProducer)
class StreamingProducer:
    """Counts what its consumer asks of it."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.stops = 0
        self._resumed: list[Deferred[None]] = []

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1
        waiting, self._resumed = self._resumed, []
        for waiter in waiting:
            waiter.callback(None)

    def stopProducing(self) -> None:
        self.stops += 1

    def when_resumed(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._resumed.append(waiter)
        return waiter


class PullProducer:
    """Writes one chunk each time it is asked, ``count`` times, then unregisters."""

    def __init__(self, transport: MemoryTransport, chunk: bytes, count: int) -> None:
        self.transport = transport
        self.chunk = chunk
        self.count = count
        self.resumes = 0
        self.stops = 0

    def resumeProducing(self) -> None:
        self.resumes += 1
        if self.resumes <= self.count:
            self.transport.write(self.chunk)
        if self.resumes == self.count:
            self.transport.unregisterProducer()

    def stopProducing(self) -> None:
        self.stops += 1


class FloodWriter(Recorder):
    """Writes ``total`` bytes in ``chunk``-sized writes, only while its transport has not paused it."""

    def __init__(self, total: int, chunk: int) -> None:
        super().__init__()
        self.total = total
        self.chunk = chunk
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.max_buffered = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < self.total:
            data = bytes([self.sent // self.chunk % 256]) * self.chunk
            self.transport.write(data)
            self.sent += len(data)
            self.max_buffered = max(self.max_buffered, self.memory_transport.buffered_bytes)
        if self.sent >= self.total:
            self.transport.unregisterProducer()

    def stopProducing(self) -> None:
        self.paused = True


class MemoryTestCase(TestCase):
    """A hub on the real reactor, and helpers that clean up after themselves."""

    high_water = 64 * 1024
    low_water = 16 * 1024

    def setUp(self) -> None:
        self.hub = MemoryHub(reactor, high_water=self.high_water, low_water=self.low_water)

    def listen(self, factory: Factory | None = None, name: str = NAME) -> Any:
        port = self.hub.listen(name, factory or RecordingFactory())
        self.addCleanup(port.stopListening)
        return port

    @defer.inlineCallbacks
    def pair(
        self, server_class: type[Protocol] = Recorder, client: Recorder | None = None, name: str = NAME
    ) -> Generator[Deferred[Any], Any, tuple[Any, Any]]:
        """Listen on ``name`` (if nobody does yet) and connect; fires with ``(server, client)`` protocols."""
        if self.hub.is_listening(name):
            factory = self.hub._ports[name].factory
        else:
            factory = RecordingFactory(server_class)
            self.listen(factory, name)
        client_factory = Factory.forProtocol(Recorder) if client is None else _fixed(client)
        client_protocol = yield self.hub.connect(name, client_factory)
        server_protocol = factory.built[-1]
        self.addCleanup(self.close, server_protocol, client_protocol)
        return server_protocol, client_protocol

    def close(self, *protocols: Recorder) -> Deferred[Any]:
        """Abort whatever is still open and wait until every protocol has lost its connection."""
        for protocol in protocols:
            if not protocol.reasons:
                protocol.transport.abortConnection()
        return defer.gatherResults([protocol.when_lost() for protocol in protocols])


def _fixed(protocol: Protocol) -> Factory:
    factory = Factory()
    factory.buildProtocol = lambda addr: protocol  # type: ignore[method-assign]
    return factory


class DeliveryTests(MemoryTestCase):
    @defer.inlineCallbacks
    def test_echo_round_trip(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair(Echo)
        client.transport.write(b"hello, ")
        client.transport.write(b"spear")
        received = yield client.when_received(12)
        self.assertEqual(received, b"hello, spear")
        self.assertEqual(server.received, b"hello, spear")

    @defer.inlineCallbacks
    def test_many_writes_arrive_in_order_coalesced(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair()
        pieces = [b"%05d;" % i for i in range(2000)]
        for piece in pieces[:1000]:
            client.transport.write(piece)
        client.transport.writeSequence(pieces[1000:])
        expected = b"".join(pieces)
        received = yield server.when_received(len(expected))
        self.assertEqual(received, expected)
        self.assertLess(len(server.chunks), len(pieces))

    @defer.inlineCallbacks
    def test_write_returns_before_the_peer_receives(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair()
        client.transport.write(b"x")
        self.assertEqual(server.received, b"")
        self.assertEqual(client.memory_transport.buffered_bytes, 1)
        yield server.when_received(1)
        self.assertEqual(client.memory_transport.buffered_bytes, 0)

    @defer.inlineCallbacks
    def test_writing_back_inside_data_received_does_not_recurse(self) -> Generator[Deferred[Any], Any, None]:
        events: list[str] = []
        depth = [0, 0]  # current, deepest

        class PingPong(Recorder):
            def dataReceived(self, data: bytes) -> None:
                depth[0] += 1
                depth[1] = max(depth)
                events.append("received")
                super().dataReceived(data)
                if len(self.received) < 20:
                    events.append("write")
                    self.transport.write(b"p")
                    events.append("returned")
                depth[0] -= 1

        server, client = yield self.pair(PingPong, client=PingPong())
        client.transport.write(b"p")
        yield defer.gatherResults([server.when_received(20), client.when_received(19)])
        self.assertEqual(depth[1], 1)
        # Every write returned before anything was received: no delivery inside write().
        self.assertEqual(events, ["received", "write", "returned"] * 38 + ["received"])

    @defer.inlineCallbacks
    def test_large_write_arrives_in_reads_of_at_most_read_size(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair()
        data = bytes(range(256)) * (4 * READ_SIZE // 256) + b"tail"
        client.transport.write(data)
        received = yield server.when_received(len(data))
        self.assertEqual(received, data)
        self.assertLessEqual(max(map(len, server.chunks)), READ_SIZE)
        self.assertEqual(len(server.chunks), 5)

    @defer.inlineCallbacks
    def test_both_directions_flow_independently(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair()
        client.transport.write(b"up")
        server.transport.write(b"down")
        yield defer.gatherResults([server.when_received(2), client.when_received(4)])
        self.assertEqual((server.received, client.received), (b"up", b"down"))

    @defer.inlineCallbacks
    def test_write_rejects_anything_but_bytes(self) -> Generator[Deferred[Any], Any, None]:
        _, client = yield self.pair()
        self.assertRaises(TypeError, client.transport.write, "text")
        self.assertRaises(TypeError, client.transport.writeSequence, [b"ok", bytearray(b"no")])
        self.assertEqual(client.memory_transport.buffered_bytes, 0)


class BackPressureTests(MemoryTestCase):
    high_water = 1000
    low_water = 100

    @defer.inlineCallbacks
    def test_paused_reader_holds_delivery_until_it_resumes(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair(PausedRecorder)
        client.transport.write(b"held")
        yield turns()
        self.assertEqual(server.received, b"")
        self.assertEqual(client.memory_transport.buffered_bytes, 4)
        server.transport.resumeProducing()
        received = yield server.when_received(4)
        self.assertEqual(received, b"held")

    @defer.inlineCallbacks
    def test_pausing_inside_data_received_stops_the_next_read(self) -> Generator[Deferred[Any], Any, None]:
        class PauseAfterOne(Recorder):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.transport.pauseProducing()

        server, client = yield self.pair(PauseAfterOne)
        client.transport.write(b"a" * (READ_SIZE + 10))
        yield server.when_received(1)
        yield turns()
        self.assertEqual(len(server.received), READ_SIZE)
        server.transport.resumeProducing()
        yield server.when_received(READ_SIZE + 10)
        self.assertEqual(len(server.chunks), 2)

    @defer.inlineCallbacks
    def test_writer_producer_pauses_above_high_water_and_resumes_after_reader_resumes(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair(PausedRecorder)
        producer = StreamingProducer()
        client.transport.registerProducer(producer, True)
        client.transport.write(b"a" * 600)
        client.transport.write(b"b" * 400)
        self.assertEqual(producer.pauses, 0, "at the high-water mark, not above it")
        client.transport.write(b"c")
        self.assertEqual(producer.pauses, 1)
        client.transport.write(b"d" * 600)
        self.assertEqual(producer.pauses, 1, "paused once, not on every write")

        yield turns()
        self.assertTrue(producer.paused)
        self.assertEqual(producer.resumes, 0)

        resumed = producer.when_resumed()
        server.transport.resumeProducing()
        yield resumed
        self.assertLessEqual(client.memory_transport.buffered_bytes, self.low_water)
        received = yield server.when_received(1601)
        self.assertEqual(received, b"a" * 600 + b"b" * 400 + b"c" + b"d" * 600)
        client.transport.unregisterProducer()

    @defer.inlineCallbacks
    def test_buffer_stays_bounded_while_writer_honours_pause(self) -> Generator[Deferred[Any], Any, None]:
        chunk = 300
        total = 30_000
        writer = FloodWriter(total, chunk)
        server, _ = yield self.pair(PausedRecorder, client=writer)
        yield turns()
        self.assertTrue(writer.paused)
        self.assertEqual(server.received, b"")
        self.assertLessEqual(writer.memory_transport.buffered_bytes, self.high_water + chunk)

        server.transport.resumeProducing()
        received = yield server.when_received(total)
        expected = b"".join(bytes([i % 256]) * chunk for i in range(total // chunk))
        self.assertEqual(received, expected)
        self.assertLessEqual(writer.max_buffered, self.high_water + chunk)
        self.assertGreater(writer.pauses, 10)

    @defer.inlineCallbacks
    def test_pull_producer_is_asked_again_each_time_the_buffer_drains(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair()
        producer = PullProducer(client.memory_transport, b"chunk;", 10)
        client.transport.registerProducer(producer, False)
        self.assertEqual(producer.resumes, 1, "asked at once on registration")
        received = yield server.when_received(60)
        self.assertEqual(received, b"chunk;" * 10)
        yield turns()
        self.assertEqual(producer.resumes, 10)
        self.assertIsNone(client.memory_transport.producer)

    @defer.inlineCallbacks
    def test_registering_a_second_producer_fails(self) -> Generator[Deferred[Any], Any, None]:
        _, client = yield self.pair()
        client.transport.registerProducer(StreamingProducer(), True)
        self.assertRaises(RuntimeError, client.transport.registerProducer, StreamingProducer(), True)
        client.transport.unregisterProducer()


class CloseTests(MemoryTestCase):
    @defer.inlineCallbacks
    def test_lose_connection_flushes_then_both_sides_get_connection_done(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        received_at_close: list[int] = []

        class Counting(Recorder):
            def connectionLost(self, reason: Failure = connectionDone) -> None:
                received_at_close.append(len(self.received))
                super().connectionLost(reason)

        server, client = yield self.pair(Counting)
        data = b"z" * (5 * READ_SIZE)
        client.transport.write(data)
        client.transport.loseConnection()
        self.assertTrue(client.transport.disconnecting)
        yield defer.gatherResults([server.when_lost(), client.when_lost()])
        reasons = [server.reason, client.reason]
        self.assertEqual(received_at_close, [len(data)])
        self.assertEqual(server.received, data)
        for reason in reasons:
            self.assertTrue(reason.check(ConnectionDone))
        self.assertFalse(client.transport.connected)

    @defer.inlineCallbacks
    def test_lose_connection_waits_for_a_paused_reader(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair(PausedRecorder)
        client.transport.write(b"last words")
        client.transport.loseConnection()
        yield turns()
        self.assertEqual((server.reasons, client.reasons), ([], []))
        server.transport.resumeProducing()
        yield server.when_lost()
        reason = server.reason
        self.assertTrue(reason.check(ConnectionDone))
        self.assertEqual(server.received, b"last words")

    @defer.inlineCallbacks
    def test_paused_reader_learns_of_the_close_when_it_resumes(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair(PausedRecorder)
        client.transport.loseConnection()
        yield turns()
        self.assertEqual((server.reasons, client.reasons), ([], []))
        server.transport.resumeProducing()
        yield defer.gatherResults([server.when_lost(), client.when_lost()])
        self.assertTrue(server.reason.check(ConnectionDone))
        self.assertTrue(client.reason.check(ConnectionDone))

    @defer.inlineCallbacks
    def test_writes_after_lose_connection_are_ignored(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair()
        client.transport.write(b"before")
        client.transport.loseConnection()
        client.transport.write(b"after")
        client.transport.writeSequence([b"after", b"too"])
        yield server.when_lost()
        self.assertEqual(server.received, b"before")

    @defer.inlineCallbacks
    def test_closing_side_stops_reading(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair()
        client.transport.pauseProducing()
        server.transport.write(b"never read")
        client.transport.loseConnection()
        client.transport.resumeProducing()  # too late: it stopped reading for good, like a socket
        yield defer.gatherResults([server.when_lost(), client.when_lost()])
        reasons = [server.reason, client.reason]
        self.assertEqual(client.received, b"")
        for reason in reasons:
            self.assertTrue(reason.check(ConnectionDone))

    @defer.inlineCallbacks
    def test_both_sides_losing_connection_while_paused_still_close(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair(PausedRecorder)
        client.transport.pauseProducing()
        client.transport.write(b"to server")
        server.transport.write(b"to client")
        client.transport.loseConnection()
        server.transport.loseConnection()
        yield defer.gatherResults([server.when_lost(), client.when_lost()])
        reasons = [server.reason, client.reason]
        for reason in reasons:
            self.assertTrue(reason.check(ConnectionDone))

    @defer.inlineCallbacks
    def test_lose_connection_waits_for_a_pull_producer_to_unregister(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair()
        producer = PullProducer(client.memory_transport, b"more;", 3)
        client.transport.registerProducer(producer, False)
        client.transport.loseConnection()
        # The producer still writes while the close waits for it, as with FileDescriptor.
        yield server.when_lost()
        reason = server.reason
        self.assertTrue(reason.check(ConnectionDone))
        self.assertEqual(server.received, b"more;" * 3)
        self.assertEqual(producer.stops, 0, "it unregistered itself")

    @defer.inlineCallbacks
    def test_lose_connection_holds_while_pull_producer_stays_registered(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair()
        producer = PullProducer(client.memory_transport, b"", 0)
        client.transport.registerProducer(producer, False)
        client.transport.loseConnection()
        yield turns()
        self.assertEqual(server.reasons, [])
        client.transport.unregisterProducer()
        yield server.when_lost()
        reason = server.reason
        self.assertTrue(reason.check(ConnectionDone))

    @defer.inlineCallbacks
    def test_lose_connection_stops_an_unpaused_streaming_producer(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair()
        producer = StreamingProducer()
        client.transport.registerProducer(producer, True)
        client.transport.write(b"bye")
        client.transport.loseConnection()
        yield client.when_lost()
        reason = client.reason
        self.assertTrue(reason.check(ConnectionDone))
        self.assertEqual(server.received, b"bye")
        self.assertEqual(producer.stops, 1)

    @defer.inlineCallbacks
    def test_stop_producing_loses_the_connection(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair()
        server.transport.stopProducing()
        yield client.when_lost()
        reason = client.reason
        self.assertTrue(reason.check(ConnectionDone))

    @defer.inlineCallbacks
    def test_abort_drops_buffered_data_and_reports_connection_lost(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair(PausedRecorder)
        producer = StreamingProducer()
        client.transport.registerProducer(producer, True)
        client.transport.write(b"dropped")
        client.transport.abortConnection()
        self.assertEqual(client.memory_transport.buffered_bytes, 0)
        self.assertEqual((server.reasons, client.reasons), ([], []), "reported on the next turn")
        yield defer.gatherResults([server.when_lost(), client.when_lost()])
        server_reason, client_reason = server.reason, client.reason
        self.assertTrue(client_reason.check(ConnectionAborted))
        self.assertTrue(client_reason.check(ConnectionLost))
        self.assertTrue(server_reason.check(ConnectionLost))
        self.assertFalse(server_reason.check(ConnectionAborted))
        self.assertEqual(producer.stops, 1)
        server.transport.resumeProducing()
        yield turns()
        self.assertEqual(server.received, b"")

    @defer.inlineCallbacks
    def test_abort_overrides_a_pending_lose_connection(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair(PausedRecorder)
        client.transport.write(b"waiting")
        client.transport.loseConnection()
        client.transport.abortConnection()
        yield server.when_lost()
        reason = server.reason
        self.assertTrue(reason.check(ConnectionLost))
        self.assertEqual(server.received, b"")

    @defer.inlineCallbacks
    def test_connection_lost_once_and_writes_afterwards_ignored(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair()
        client.transport.loseConnection()
        yield server.when_lost()
        for protocol in (client, server):
            protocol.transport.write(b"late")
            protocol.transport.loseConnection()
            protocol.transport.abortConnection()
            protocol.transport.resumeProducing()
        yield turns()
        self.assertEqual((len(server.reasons), len(client.reasons)), (1, 1))
        self.assertEqual((server.received, client.received), (b"", b""))
        self.assertEqual(client.memory_transport.buffered_bytes, 0)

    @defer.inlineCallbacks
    def test_producer_registered_after_close_is_stopped(self) -> Generator[Deferred[Any], Any, None]:
        _, client = yield self.pair()
        client.transport.abortConnection()
        yield client.when_lost()
        producer = StreamingProducer()
        client.transport.registerProducer(producer, True)
        self.assertEqual(producer.stops, 1)
        self.assertIsNone(client.memory_transport.producer)

    @defer.inlineCallbacks
    def test_error_in_data_received_closes_with_that_error(self) -> Generator[Deferred[Any], Any, None]:
        class Broken(Recorder):
            def dataReceived(self, data: bytes) -> None:
                raise ZeroDivisionError("bad frame")

        server, client = yield self.pair(Broken)
        client.transport.write(b"boom")
        yield defer.gatherResults([server.when_lost(), client.when_lost()])
        server_reason, client_reason = server.reason, client.reason
        self.assertTrue(server_reason.check(ZeroDivisionError))
        self.assertTrue(client_reason.check(ConnectionLost))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class ConnectTests(MemoryTestCase):
    def test_connect_to_unknown_name_is_refused(self) -> Deferred[Any]:
        return self.assertFailure(
            self.hub.connect("nobody", Factory.forProtocol(Recorder)), ConnectionRefusedError
        )

    def test_listen_on_a_taken_name_fails(self) -> None:
        self.listen()
        self.assertTrue(self.hub.is_listening(NAME))
        self.assertRaises(CannotListenError, self.hub.listen, NAME, RecordingFactory())

    def test_connect_is_established_on_a_later_turn(self) -> Deferred[Any]:
        factory = RecordingFactory()
        self.listen(factory)
        client = Recorder()
        connecting = self.hub.connect(NAME, _fixed(client))
        self.assertEqual((factory.built, client.made), ([], 0))

        def connected(protocol: Recorder) -> Deferred[Any]:
            self.assertIs(protocol, client)
            self.assertEqual((factory.built[0].made, client.made), (1, 1))
            return self.close(factory.built[0], client)

        return connecting.addCallback(connected)

    @defer.inlineCallbacks
    def test_stop_listening_frees_the_name_and_keeps_connections(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair(Echo)
        port = self.hub._ports[NAME]
        yield port.stopListening()
        self.assertFalse(self.hub.is_listening(NAME))
        yield self.assertFailure(
            self.hub.connect(NAME, Factory.forProtocol(Recorder)), ConnectionRefusedError
        )

        client.transport.write(b"still up")
        received = yield client.when_received(8)
        self.assertEqual(received, b"still up")
        self.assertEqual((server.reasons, client.reasons), ([], []))

        again = self.listen()
        self.assertTrue(self.hub.is_listening(NAME))
        self.assertIsNot(again, port)

    def test_port_starts_and_stops_its_factory(self) -> Deferred[None]:
        factory = RecordingFactory()
        port = self.hub.listen(NAME, factory)
        self.assertEqual((factory.starts, factory.stops), (1, 0))

        def stopped(_: object) -> None:
            self.assertEqual((factory.starts, factory.stops), (1, 1))
            # Stopping twice is harmless.
            port.stopListening()
            self.assertEqual(factory.stops, 1)

        return port.stopListening().addCallback(stopped)

    @defer.inlineCallbacks
    def test_client_factory_is_started_for_the_connection_life(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        self.listen()
        client_factory = RecordingFactory()
        client = yield self.hub.connect(NAME, client_factory)
        self.assertEqual((client_factory.starts, client_factory.stops), (1, 0))
        client.transport.loseConnection()
        yield client.when_lost()
        yield turns(1)  # it is stopped after the protocol's connectionLost, as by a TCP connector
        self.assertEqual(client_factory.stops, 1)

    @defer.inlineCallbacks
    def test_server_build_protocol_none_refuses(self) -> Generator[Deferred[Any], Any, None]:
        self.listen(RecordingFactory(refuse=True))
        client_factory = RecordingFactory()
        yield self.assertFailure(self.hub.connect(NAME, client_factory), ConnectionRefusedError)
        self.assertEqual(client_factory.addresses, [])

    @defer.inlineCallbacks
    def test_client_build_protocol_none_refuses_and_server_gets_nothing(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        server_factory = RecordingFactory()
        self.listen(server_factory)
        client_factory = RecordingFactory(refuse=True)
        yield self.assertFailure(self.hub.connect(NAME, client_factory), ConnectionRefusedError)
        yield turns()
        [server] = server_factory.built
        self.assertEqual((server.made, server.reasons), (0, []))
        self.assertEqual(client_factory.stops, client_factory.starts)

    @defer.inlineCallbacks
    def test_client_factory_failing_to_build_fails_the_connect(self) -> Generator[Deferred[Any], Any, None]:
        class Failing(Factory):
            def buildProtocol(self, addr: Any) -> Protocol | None:
                raise ValueError("no protocol for you")

        server_factory = RecordingFactory()
        self.listen(server_factory)
        yield self.assertFailure(self.hub.connect(NAME, Failing()), ValueError)
        yield turns()
        self.assertEqual(server_factory.built[0].made, 0)

    @defer.inlineCallbacks
    def test_connect_can_be_cancelled(self) -> Generator[Deferred[Any], Any, None]:
        server_factory = RecordingFactory()
        self.listen(server_factory)
        connecting = self.hub.connect(NAME, Factory.forProtocol(Recorder))
        connecting.cancel()
        yield self.assertFailure(connecting, ConnectingCancelledError)
        yield turns()
        self.assertEqual(server_factory.built, [])

    @defer.inlineCallbacks
    def test_addresses_name_both_sides_and_a_unique_connection(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        server_factory = RecordingFactory()
        self.listen(server_factory)
        first_server, first_client = yield self.pair()
        second_server, _ = yield self.pair()
        first_id = first_server.transport.getHost().connection_id
        second_id = second_server.transport.getHost().connection_id
        self.assertNotEqual(first_id, second_id)
        self.assertEqual(server_factory.addresses[0], MemoryAddress(NAME, "client", first_id))
        self.assertEqual(first_server.transport.getHost(), MemoryAddress(NAME, "server", first_id))
        self.assertEqual(first_server.transport.getPeer(), MemoryAddress(NAME, "client", first_id))
        self.assertEqual(first_client.transport.getHost(), first_server.transport.getPeer())
        self.assertEqual(first_client.transport.getPeer(), first_server.transport.getHost())
        self.assertEqual(self.hub._ports[NAME].getHost(), MemoryAddress(NAME, "server", 0))

    def test_address_side_is_checked(self) -> None:
        self.assertRaises(ValueError, MemoryAddress, NAME, "sideways", 1)

    def test_water_marks_must_be_ordered(self) -> None:
        self.assertRaises(ValueError, MemoryHub, reactor, high_water=10, low_water=20)
        self.assertRaises(ValueError, MemoryHub, reactor, high_water=10, low_water=-1)

    def test_default_hub_uses_the_global_reactor(self) -> None:
        self.assertIsInstance(DEFAULT_HUB, MemoryHub)
        self.assertIs(DEFAULT_HUB.reactor, reactor)


class EndpointTests(MemoryTestCase):
    @defer.inlineCallbacks
    def test_endpoints_listen_and_connect(self) -> Generator[Deferred[Any], Any, None]:
        server_factory = RecordingFactory(Echo)
        port = yield MemoryServerEndpoint(self.hub, NAME).listen(server_factory)
        self.addCleanup(port.stopListening)
        client = yield MemoryClientEndpoint(self.hub, NAME).connect(Factory.forProtocol(Recorder))
        self.addCleanup(self.close, server_factory.built[0], client)
        client.transport.write(b"ping")
        received = yield client.when_received(4)
        self.assertEqual(received, b"ping")

    @defer.inlineCallbacks
    def test_endpoint_failures(self) -> Generator[Deferred[Any], Any, None]:
        yield self.assertFailure(
            MemoryClientEndpoint(self.hub, NAME).connect(Factory.forProtocol(Recorder)),
            ConnectionRefusedError,
        )
        self.listen()
        yield self.assertFailure(
            MemoryServerEndpoint(self.hub, NAME).listen(RecordingFactory()), CannotListenError
        )


class InterfaceTests(MemoryTestCase):
    def test_endpoints_provide_their_interfaces(self) -> None:
        self.assertTrue(verifyObject(IStreamServerEndpoint, MemoryServerEndpoint(self.hub, NAME)))
        self.assertTrue(verifyObject(IStreamClientEndpoint, MemoryClientEndpoint(self.hub, NAME)))

    def test_port_and_address_provide_their_interfaces(self) -> None:
        port = self.listen()
        self.assertTrue(verifyObject(IListeningPort, port))
        self.assertTrue(verifyObject(IAddress, port.getHost()))

    @defer.inlineCallbacks
    def test_transport_provides_its_interfaces(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.pair()
        for transport in (server.transport, client.transport):
            for interface in (ITransport, IConsumer, IPushProducer):
                self.assertTrue(verifyObject(interface, transport))
        self.assertTrue(verifyObject(IAddress, client.transport.getPeer()))
