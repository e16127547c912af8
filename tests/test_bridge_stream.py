"""The bidirectional ``Connect`` stream: envelopes both ways, back-pressure, flow control, endings."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator
from typing import Any

import grpc
import grpc.aio
from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.call import BridgeStream
from spear_twisted.bridge.config import BridgeConfig
from spear_twisted.bridge.contract import CONNECT_PATH, envelope_from_message, message_from_envelope
from spear_twisted.bridge.framing import frame_message
from spear_twisted.bridge.methods import CallContext, IConnectHandler
from spear_twisted.errors import ConnectionClosed, RequestCancelled, SpearError, UnknownTask
from spear_twisted.wire import HeartbeatMessage, SpearMessage, StreamDataMessage, Timestamp
from tests.bridge_support import (
    ALICE,
    CALL_TIMEOUT,
    ServerFixture,
    SyncClient,
    connect_raw_h2,
    connect_stub,
    execute_stub,
    in_thread,
    run_aio,
)
from tests.channel_support import turns, wait_until

Gen = Generator[Deferred[Any], Any, None]

KiB = 1024


def raw_envelope(size: int) -> pb.Envelope:
    """A ``StreamData`` envelope whose payload is ``size`` bytes (not parsed on the way)."""
    return pb.Envelope(
        message_type=pb.MESSAGE_TYPE_STREAM_DATA,
        request_id=7,
        timestamp=pb.Timestamp(secs_since_epoch=1),
        payload=b"\xa5" * size,
        version=1,
    )


def envelopes(count: int, size: int = 10) -> list[pb.Envelope]:
    return [
        envelope_from_message(
            SpearMessage.stream_data(n, StreamDataMessage("s", bytes([n % 256]) * size, False, n))
        )
        for n in range(count)
    ]


@implementer(IConnectHandler)
class Recorder:
    """A Connect handler the test drives: it keeps each stream and a Deferred the test fires to end it."""

    def __init__(self) -> None:
        self.streams: list[BridgeStream] = []
        self.contexts: list[CallContext] = []
        self.done: list[Deferred[None]] = []
        self.cancelled = 0
        self._arrivals: list[Deferred[None]] = []

    def connect(self, stream: BridgeStream, context: CallContext) -> Deferred[None]:
        self.streams.append(stream)
        self.contexts.append(context)
        done: Deferred[None] = Deferred(lambda _: self._count_cancel())
        self.done.append(done)
        # Told on the next turn: the server must hold ``done`` before the test acts.
        reactor.callLater(0, self._arrived)
        return done

    def _arrived(self) -> None:
        arrivals, self._arrivals = self._arrivals, []
        for arrival in arrivals:
            arrival.callback(None)

    def _count_cancel(self) -> None:
        self.cancelled += 1

    @defer.inlineCallbacks
    def when_connected(self, count: int = 1) -> Gen:
        while len(self.streams) < count:
            arrival: Deferred[None] = Deferred()
            self._arrivals.append(arrival)
            yield arrival


class ConnectEchoTests(TestCase):
    def setUp(self) -> None:
        self.fixture = ServerFixture(self)
        self.target = self.fixture.listen_tcp()

    @defer.inlineCallbacks
    def test_sync_stream_echoes_envelopes_unchanged(self) -> Gen:
        client = SyncClient(self, self.target)
        sent = envelopes(50)
        received = yield in_thread(lambda: list(client.connect(iter(sent), timeout=CALL_TIMEOUT)))
        self.assertEqual(received, sent)
        self.assertEqual(
            [message_from_envelope(envelope) for envelope in received],
            [message_from_envelope(envelope) for envelope in sent],
        )
        self.assertEqual(self.fixture.connect.errors, [])

    @defer.inlineCallbacks
    def test_aio_round_trips_then_a_clean_end(self) -> Gen:
        target = self.target
        heartbeat = envelope_from_message(SpearMessage.heartbeat(0, HeartbeatMessage(Timestamp.now(), 1)))

        async def scenario() -> tuple[list[int], bool, Any]:
            async with grpc.aio.insecure_channel(target) as channel:
                call = connect_stub(channel)(timeout=CALL_TIMEOUT)
                seen = []
                for n in range(200):
                    await call.write(pb.Envelope(**{**_fields(heartbeat), "request_id": n}))
                    seen.append((await call.read()).request_id)
                await call.done_writing()
                end = await call.read()
                return seen, end is grpc.aio.EOF, await call.code()

        seen, ended, code = yield run_aio(scenario)
        self.assertEqual(seen, list(range(200)))
        self.assertTrue(ended)
        self.assertEqual(code, grpc.StatusCode.OK)

    @defer.inlineCallbacks
    def test_a_large_envelope_does_not_stall_other_calls(self) -> Gen:
        """A 3 MiB message assembles on one stream while unary calls go through on the same connection."""
        target = self.target
        big = raw_envelope(3 * 1024 * KiB)

        async def scenario() -> tuple[bool, list[str]]:
            async with grpc.aio.insecure_channel(target, options=_unlimited()) as channel:
                call = connect_stub(channel)(timeout=CALL_TIMEOUT)
                execute = execute_stub(channel)
                writing = asyncio.ensure_future(call.write(big))
                outputs = []
                for n in range(20):
                    result = await execute(_echo(str(n)), metadata=ALICE, timeout=CALL_TIMEOUT)
                    outputs.append(result.output)
                await writing
                back = await call.read()
                await call.done_writing()
                return back == big, outputs

        same, outputs = yield run_aio(scenario)
        self.assertTrue(same)
        self.assertEqual(outputs, [str(n) for n in range(20)])


def _fields(envelope: pb.Envelope) -> dict[str, Any]:
    return {field.name: value for field, value in envelope.ListFields()}


def _echo(text: str) -> pb.ExecuteCall:
    return pb.ExecuteCall(task_id="echo", input=text.encode())


def _unlimited() -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


class StreamHandlerTests(TestCase):
    """Handlers that use the stream's API directly, as the session core of part 2 will."""

    def setUp(self) -> None:
        self.recorder = Recorder()
        self.fixture = ServerFixture(
            self, connect=self.recorder, config=BridgeConfig(max_receive_message_size=4 * 1024 * KiB)
        )
        self.target = self.fixture.listen_tcp()
        self.client = SyncClient(self, self.target)

    @defer.inlineCallbacks
    def test_push_mode_with_paused_reading_keeps_order(self) -> Gen:
        sent = envelopes(30)
        release = threading.Event()

        def requests() -> Any:
            yield from sent[:10]
            release.wait(CALL_TIMEOUT)
            yield from sent[10:]

        responses = yield in_thread(self.client.connect, requests(), timeout=CALL_TIMEOUT)
        yield self.recorder.when_connected()
        stream = self.recorder.streams[0]
        got: list[tuple[pb.Envelope, int]] = []
        ends: list[SpearError | None] = []
        stream.pause_reading()
        stream.set_receiver(lambda message, size: got.append((message, size)), ends.append)
        yield wait_until(lambda: stream.held_bytes > 0 and len(stream._inbox) == 10, "ten envelopes held")
        self.assertEqual(got, [])
        stream.resume_reading()
        self.assertEqual([message for message, _ in got], sent[:10])
        self.assertEqual([size for _, size in got], [envelope.ByteSize() for envelope in sent[:10]])
        release.set()
        yield wait_until(lambda: ends == [None], "the client's half-close")
        self.assertEqual([message for message, _ in got], sent)
        for message, _ in got:
            yield stream.send(message)
        stream.finish()
        received = yield in_thread(list, responses)
        self.assertEqual(received, sent)

    @defer.inlineCallbacks
    def test_push_mode_delivers_the_end_after_every_held_message(self) -> Gen:
        sent = envelopes(5)
        responses = yield in_thread(self.client.connect, iter(sent), timeout=CALL_TIMEOUT)
        yield self.recorder.when_connected()
        stream = self.recorder.streams[0]
        yield wait_until(lambda: stream.remote_ended, "the client's half-close")
        events: list[Any] = []
        stream.set_receiver(lambda message, size: events.append(message.request_id), events.append)
        self.assertEqual(events, [envelope.request_id for envelope in sent] + [None])
        stream.finish()
        self.assertEqual((yield in_thread(list, responses)), [])

    @defer.inlineCallbacks
    def test_a_slow_reader_holds_the_client_back_without_stalling_other_calls(self) -> Gen:
        """Unread messages stop being acknowledged, so the client waits; memory stays bounded."""
        config = BridgeConfig(
            stream_window_size=64 * KiB,
            connection_window_size=1024 * KiB,
            receive_buffer_size=128 * KiB,
        )
        recorder = Recorder()
        fixture = ServerFixture(self, connect=recorder, config=config)
        target = fixture.listen_tcp()
        chunk = raw_envelope(32 * KiB)
        total = 100  # 3.2 MiB: far more than the windows and the buffer
        written = [0]
        stalled = threading.Event()
        other_done = threading.Event()

        async def scenario() -> tuple[int, str, int]:
            async with grpc.aio.insecure_channel(target) as channel:
                call = connect_stub(channel)(timeout=CALL_TIMEOUT)

                async def write_all() -> None:
                    for _ in range(total):
                        await call.write(chunk)
                        written[0] += 1
                    await call.done_writing()

                writing = asyncio.ensure_future(write_all())
                await asyncio.get_running_loop().run_in_executor(None, stalled.wait, CALL_TIMEOUT)
                # The stalled stream does not hold the connection back.
                result = await execute_stub(channel)(_echo("other"), metadata=ALICE, timeout=CALL_TIMEOUT)
                other_done.set()
                read = 0
                while await call.read() is not grpc.aio.EOF:
                    read += 1
                await writing
                return read, result.output, (await call.code()).value[0]

        outcome = run_aio(scenario)
        yield recorder.when_connected()
        stream = recorder.streams[0]
        yield wait_until(
            lambda: stream.held_bytes > config.receive_buffer_size and stream.unacknowledged_bytes > 0,
            "the server holding back acknowledgements",
        )
        yield turns(200)
        limit = config.receive_buffer_size + config.stream_window_size + chunk.ByteSize() + 5
        self.assertLessEqual(stream.held_bytes, limit)
        self.assertLessEqual(stream.unacknowledged_bytes, config.stream_window_size)
        self.assertLess(written[0], total // 4)
        stalled.set()
        yield in_thread(other_done.wait, CALL_TIMEOUT)
        self.assertTrue(other_done.is_set())
        echoed = 0
        while True:
            message = yield stream.receive()
            if message is None:
                break
            self.assertEqual(message, chunk)
            echoed += 1
            yield stream.send(message)
        stream.finish()
        read, other, code = yield outcome
        self.assertEqual((echoed, read, other, code), (total, total, "other", 0))

    @defer.inlineCallbacks
    def test_a_handler_error_becomes_the_status(self) -> Gen:
        responses = yield in_thread(self.client.connect, iter(envelopes(1)), timeout=CALL_TIMEOUT)
        yield self.recorder.when_connected()
        self.recorder.done[0].errback(UnknownTask("no such task"))
        with self.assertRaises(grpc.RpcError) as caught:
            yield in_thread(list, responses)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)  # type: ignore[attr-defined]
        self.assertEqual(caught.exception.details(), "no such task")  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_finish_with_an_error_after_messages_sends_trailers(self) -> Gen:
        from spear_twisted.bridge.status import GrpcError, StatusCode

        responses = yield in_thread(self.client.connect, iter(envelopes(3)), timeout=CALL_TIMEOUT)
        yield self.recorder.when_connected()
        stream = self.recorder.streams[0]
        first = yield stream.receive()
        yield stream.send(first)
        stream.finish(GrpcError(StatusCode.ABORTED, "enough: 100% done"), metadata=[("x-why", "test")])
        with self.assertRaises(ConnectionClosed):
            yield stream.receive()
        with self.assertRaises(ConnectionClosed):
            yield stream.send(first)

        def read_all() -> tuple[list[pb.Envelope], Any, str, Any]:
            got = []
            try:
                for envelope in responses:
                    got.append(envelope)
            except grpc.RpcError as e:
                return got, e.code(), e.details(), dict(e.trailing_metadata())
            raise AssertionError("no error")

        got, code, details, trailers = yield in_thread(read_all)
        self.assertEqual(got, [first])
        self.assertEqual(code, grpc.StatusCode.ABORTED)
        self.assertEqual(details, "enough: 100% done")
        self.assertEqual(trailers["x-why"], "test")

    @defer.inlineCallbacks
    def test_client_cancellation_ends_the_stream_and_cancels_the_handler(self) -> Gen:
        never = threading.Event()

        def requests() -> Any:
            yield envelopes(1)[0]
            never.wait(CALL_TIMEOUT)

        responses = yield in_thread(self.client.connect, requests(), timeout=CALL_TIMEOUT)
        yield self.recorder.when_connected()
        stream = self.recorder.streams[0]
        yield stream.receive()
        waiting = stream.receive()
        yield in_thread(responses.cancel)
        never.set()
        with self.assertRaises(RequestCancelled):
            yield waiting
        yield wait_until(lambda: self.recorder.cancelled == 1, "the handler's cancellation")
        self.assertFalse(stream.active)
        with self.assertRaises(RequestCancelled):
            yield stream.send(envelopes(1)[0])

    @defer.inlineCallbacks
    def test_a_lowered_limit_refuses_larger_messages(self) -> Gen:
        """A session lowers the limit before authentication (PROTOCOL.md's pre-auth size)."""
        release = threading.Event()

        def requests() -> Any:
            yield envelopes(1, size=10)[0]
            release.wait(CALL_TIMEOUT)
            yield envelopes(1, size=500)[0]

        responses = yield in_thread(self.client.connect, requests(), timeout=CALL_TIMEOUT)
        yield self.recorder.when_connected()
        stream = self.recorder.streams[0]
        stream.max_receive_message_size = 100
        self.assertEqual(stream.max_receive_message_size, 100)
        small = yield stream.receive()
        self.assertEqual(len(small.payload) < 100, True)
        pending = stream.receive()
        release.set()
        with self.assertRaises(ConnectionClosed):
            yield pending
        with self.assertRaises(grpc.RpcError) as caught:
            yield in_thread(list, responses)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)  # type: ignore[attr-defined]
        self.assertEqual(self.recorder.cancelled, 1)

    @defer.inlineCallbacks
    def test_an_unparsable_envelope_is_internal(self) -> Gen:
        raw = self.client.channel.stream_stream("/spear.v1.SpearBridge/Connect")
        responses = yield in_thread(raw, iter([b"\x08\xff\xff"]), timeout=CALL_TIMEOUT)
        with self.assertRaises(grpc.RpcError) as caught:
            yield in_thread(list, responses)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INTERNAL)  # type: ignore[attr-defined]
        self.assertIn("not a valid spear.v1.Envelope", caught.exception.details())  # type: ignore[attr-defined]


class StreamDeadlineTests(TestCase):
    @defer.inlineCallbacks
    def test_the_deadline_ends_the_stream_and_cancels_the_handler(self) -> Gen:
        clock = task.Clock()
        recorder = Recorder()
        fixture = ServerFixture(self, connect=recorder, clock=clock)
        client = SyncClient(self, fixture.listen_tcp())
        never = threading.Event()
        self.addCleanup(never.set)

        def requests() -> Any:
            never.wait(CALL_TIMEOUT)
            return
            yield  # a generator that sends nothing

        responses = yield in_thread(client.connect, requests(), timeout=CALL_TIMEOUT)
        yield recorder.when_connected()
        stream = recorder.streams[0]
        waiting = stream.receive()
        clock.advance(recorder.contexts[0].timeout)
        with self.assertRaises(ConnectionClosed) as caught:
            yield waiting
        self.assertIn("DEADLINE_EXCEEDED", str(caught.exception))
        self.assertEqual(recorder.cancelled, 1)
        with self.assertRaises(grpc.RpcError) as raised:
            yield in_thread(list, responses)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)  # type: ignore[attr-defined]
        timeout = recorder.contexts[0].timeout
        self.assertEqual(raised.exception.details(), f"deadline exceeded ({timeout:g} s)")  # type: ignore[attr-defined]


class AcknowledgementTests(TestCase):
    """Consumed bytes go back to the client in batches, the rest when the client or the call ends."""

    def test_a_batch_is_an_eighth_of_the_smaller_window_share(self) -> None:
        self.assertEqual(BridgeConfig().acknowledge_batch, (16 * 1024 * KiB // 100) // 8)
        self.assertEqual(BridgeConfig(max_concurrent_streams=1).acknowledge_batch, 1024 * KiB // 8)
        small = BridgeConfig(
            stream_window_size=65_535, connection_window_size=65_535, max_concurrent_streams=1
        )
        self.assertEqual(small.acknowledge_batch, 65_535 // 8)

    @defer.inlineCallbacks
    def test_small_messages_are_acknowledged_in_batches_and_the_rest_at_the_end(self) -> Gen:
        config = BridgeConfig()
        batch = config.acknowledge_batch
        recorder = Recorder()  # takes nothing: the messages wait, within the buffer
        fixture = ServerFixture(self, connect=recorder, config=config)
        fixture.listen_tcp()
        assert fixture.port is not None
        client = yield connect_raw_h2(fixture.port.getHost().port)
        self.addCleanup(lambda: client.transport.loseConnection() if not client.closed else None)
        envelope = raw_envelope(1000)
        message = frame_message(envelope.SerializeToString())
        stream_id = client.grpc(CONNECT_PATH, envelope, end=False)
        yield recorder.when_connected()
        stream = recorder.streams[0]
        seen: list[int] = []
        expected: list[int] = []
        unacknowledged = 0
        per_batch = -(-batch // len(message))
        for sent in range(1, 3 * per_batch + 2):
            if sent > 1:
                client.h2.send_data(stream_id, message)
                client.flush()
            yield wait_until(lambda n=sent: stream.held_bytes == n * (len(message) - 5), f"message {sent}")
            seen.append(stream.unacknowledged_bytes)
            unacknowledged += len(message)
            if unacknowledged >= batch:
                unacknowledged = 0
            expected.append(unacknowledged)
        self.assertEqual(seen, expected)
        self.assertEqual(expected.count(0), 3)  # three batches went
        self.assertGreater(seen[-1], 0)
        client.h2.end_stream(stream_id)
        client.flush()
        yield wait_until(lambda: stream.remote_ended, "the client's end")
        self.assertEqual(stream.unacknowledged_bytes, 0)  # the call still runs; its rest went back
        self.assertTrue(stream.active)
        recorder.done[0].callback(None)
        yield client.when(lambda: stream_id in client.ended)

    @defer.inlineCallbacks
    def test_calls_each_smaller_than_a_batch_do_not_use_up_the_connection_window(self) -> Gen:
        config = BridgeConfig(
            stream_window_size=65_535, connection_window_size=65_535, max_concurrent_streams=1
        )
        fixture = ServerFixture(self, config=config)
        client = SyncClient(self, fixture.listen_tcp())
        sent = envelopes(3, size=1000)  # about 6 KiB a call, below the batch of 8 KiB
        self.assertLess(sum(envelope.ByteSize() + 5 for envelope in sent), config.acknowledge_batch)
        calls = 30  # about 180 KiB in all: nearly three times the connection window

        def run() -> list[list[pb.Envelope]]:
            return [
                list(client.connect(iter(sent), metadata=ALICE, timeout=CALL_TIMEOUT)) for _ in range(calls)
            ]

        echoed = yield in_thread(run)
        self.assertEqual(echoed, [sent] * calls)
