"""
What grpcio never sends, with a raw HTTP/2 client on real sockets: requests
that are not gRPC, headers-only errors, metadata encodings, send-side flow
control, Rapid Reset, control-frame floods, and graceful shutdown.
"""

from __future__ import annotations

import base64
from collections.abc import Generator
from typing import Any

import grpc
import h2.errors
import hyperframe.frame
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.call import BridgeStream
from spear_twisted.bridge.config import BridgeConfig
from spear_twisted.bridge.contract import EXECUTE_PATH
from spear_twisted.bridge.methods import CallContext, spear_bridge_methods
from spear_twisted.bridge.protocol import MAX_STREAM_ID, SHUTDOWN_PING
from spear_twisted.bridge.server import BridgeServer
from spear_twisted.bridge.status import GrpcError, StatusCode
from spear_twisted.errors import RequestCancelled
from tests.bridge_support import (
    ALICE,
    ALICE_TOKEN,
    CALL_TIMEOUT,
    EchoBackend,
    RawH2Client,
    ServerFixture,
    SyncClient,
    connect_raw_h2,
    in_thread,
)
from tests.channel_support import turns, wait_until

Gen = Generator[Deferred[Any], Any, None]

FAIL_PATH = "/test.Hardening/Fail"
FLOOD_PATH = "/test.Hardening/Flood"
BURST_PATH = "/test.Hardening/Burst"


class TestMethods:
    """Extra methods for these tests, served beside ``spear.v1.SpearBridge``."""

    def __init__(self) -> None:
        self.contexts: list[CallContext] = []
        self.streams: list[BridgeStream] = []
        self.sent: list[int] = []
        #: Why sends of ``burst`` failed.
        self.send_failures: list[Failure] = []
        self.release = Deferred[None]()

    def fail(self, request: pb.StatusRequest, context: CallContext) -> Any:
        """Fails with the message and trailing metadata a test asks for."""
        self.contexts.append(context)
        raise GrpcError(
            StatusCode.FAILED_PRECONDITION,
            request.task_id,
            metadata=[("trace-bin", b"\x00\xff\x10"), ("reason", "testing")],
        )

    @defer.inlineCallbacks
    def flood(self, stream: BridgeStream, context: CallContext) -> Gen:
        """Sends ten 1000-byte messages, each after the previous one is handed to HTTP/2."""
        self.streams.append(stream)
        for n in range(10):
            yield stream.send(pb.Envelope(request_id=n, payload=b"f" * 1000))
            self.sent.append(n)
        yield self.release

    @defer.inlineCallbacks
    def burst(self, stream: BridgeStream, context: CallContext) -> Gen:
        """Queues ten 1000-byte messages at once (their sends are not the handler's work), then waits."""
        self.streams.append(stream)
        for n in range(10):
            stream.send(pb.Envelope(request_id=n, payload=b"b" * 1000)).addCallbacks(
                lambda _, n=n: self.sent.append(n), self.send_failures.append
            )
        yield self.release


def hardened_server(backend: Any, extra: TestMethods, **options: Any) -> BridgeServer:
    from spear_twisted.bridge.auth import BearerTokenAuthenticator

    methods = spear_bridge_methods(backend)
    methods.add_unary(FAIL_PATH, pb.StatusRequest, pb.StatusReply, extra.fail)
    methods.add_bidi_stream(FLOOD_PATH, pb.Envelope, pb.Envelope, extra.flood)
    methods.add_bidi_stream(BURST_PATH, pb.Envelope, pb.Envelope, extra.burst)
    return BridgeServer(methods, authenticator=BearerTokenAuthenticator({"alice": ALICE_TOKEN}), **options)


class RawRequestTests(TestCase):
    def setUp(self) -> None:
        self.extra = TestMethods()
        self.backend = EchoBackend()
        self.fixture = ServerFixture(self, server=hardened_server(self.backend, self.extra))
        self.fixture.listen_tcp()

    @defer.inlineCallbacks
    def client(self, **options: Any) -> Generator[Deferred[Any], Any, RawH2Client]:
        assert self.fixture.port is not None
        client = yield connect_raw_h2(self.fixture.port.getHost().port, **options)
        self.addCleanup(lambda: client.transport.loseConnection() if not client.closed else None)
        return client

    @defer.inlineCallbacks
    def test_a_method_other_than_post_is_405(self) -> Gen:
        client = yield self.client()
        stream = client.request(EXECUTE_PATH, method=b"GET")
        yield client.when(lambda: stream in client.ended)
        headers = client.response_headers(stream)
        self.assertEqual(headers[b":status"], b"405")
        self.assertEqual(headers[b"grpc-status"], b"13")
        self.assertEqual(headers[b"grpc-message"], b"method GET not allowed: gRPC uses POST")
        self.assertNotIn(stream, client.data)

    @defer.inlineCallbacks
    def test_a_content_type_that_is_not_grpc_is_415(self) -> Gen:
        client = yield self.client()
        for content_type in [b"application/json", None]:
            stream = client.request(EXECUTE_PATH, b"{}", content_type=content_type)
            yield client.when(lambda stream=stream: stream in client.ended)
            headers = client.response_headers(stream)
            self.assertEqual(headers[b":status"], b"415")
            self.assertEqual(headers[b"grpc-status"], b"3")
            self.assertIn(b"is not gRPC", headers[b"grpc-message"])

    @defer.inlineCallbacks
    def test_an_error_before_any_response_is_one_headers_only_frame(self) -> Gen:
        client = yield self.client()
        headers_only = [hyperframe.frame.HeadersFrame]
        for end, expected in [
            (True, headers_only),
            (False, [*headers_only, hyperframe.frame.RstStreamFrame]),
        ]:
            stream = client.grpc("/spear.v1.SpearBridge/Nope", pb.StatusRequest(), end=end)
            yield client.when(lambda stream=stream: stream in client.ended)
            yield turns(20)
            frames = [frame for frame in client.frames if frame.stream_id == stream]
            self.assertEqual([type(frame) for frame in frames], expected)
            self.assertIn("END_STREAM", frames[0].flags)
            if not end:
                # NO_ERROR: the answer is complete, the client need not send the rest.
                self.assertEqual(frames[1].error_code, 0)
            headers = client.response_headers(stream)
            self.assertEqual(headers[b":status"], b"200")
            self.assertEqual(headers[b"content-type"], b"application/grpc")
            self.assertEqual(headers[b"grpc-status"], b"12")

    @defer.inlineCallbacks
    def test_grpc_message_is_percent_encoded_and_bin_metadata_base64(self) -> Gen:
        client = yield self.client()
        text = "t\u00e2che 100% inconnue\n"
        stream = client.request(
            FAIL_PATH,
            _framed(pb.StatusRequest(task_id=text)),
            extra=[
                (b"trace-bin", base64.b64encode(b"\x01\x02\x03\x04").rstrip(b"=")),
                (b"x-caller", b"test"),
            ],
        )
        yield client.when(lambda: stream in client.ended)
        headers = client.response_headers(stream)
        self.assertEqual(headers[b"grpc-status"], b"9")
        self.assertEqual(headers[b"grpc-message"], b"t%C3%A2che 100%25 inconnue%0A")
        self.assertEqual(headers[b"trace-bin"], b"AP8Q")
        self.assertEqual(headers[b"reason"], b"testing")
        context = self.extra.contexts[0]
        self.assertEqual(context.metadata, (("trace-bin", b"\x01\x02\x03\x04"), ("x-caller", "test")))

    @defer.inlineCallbacks
    def test_every_refusal_is_a_structured_log_event(self) -> Gen:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        client = yield self.client()
        stream = client.grpc("/spear.v1.SpearBridge/Nope", pb.StatusRequest())
        refused = client.request(EXECUTE_PATH, method=b"PUT")
        yield client.when(lambda: {stream, refused} <= client.ended)
        ended = [event for event in events if "status_code" in event]
        self.assertEqual(
            [(event["path"], event["status"], event["http_status"], event["stream_id"]) for event in ended],
            [
                ("/spear.v1.SpearBridge/Nope", "UNIMPLEMENTED", 200, stream),
                (EXECUTE_PATH, "INTERNAL", 405, refused),
            ],
        )
        self.assertEqual(ended[0]["reason"], "unknown method /spear.v1.SpearBridge/Nope")

    @defer.inlineCallbacks
    def test_bad_request_headers_are_refused_with_the_reason(self) -> Gen:
        client = yield self.client()
        for extra, message in [
            ([(b"grpc-timeout", b"soon")], b"malformed grpc-timeout 'soon'"),
            ([(b"blob-bin", b"!!!")], b"metadata 'blob-bin' is not valid base64"),
        ]:
            stream = client.request(FAIL_PATH, _framed(pb.StatusRequest()), extra=extra)
            yield client.when(lambda stream=stream: stream in client.ended)
            headers = client.response_headers(stream)
            self.assertEqual(headers[b"grpc-status"], b"13")
            self.assertTrue(headers[b"grpc-message"].startswith(message), headers[b"grpc-message"])
        self.assertEqual(self.extra.contexts, [])

    @defer.inlineCallbacks
    def test_unary_framing_errors(self) -> Gen:
        client = yield self.client()
        cases = [
            (b"", b"the client sent no request message"),
            (_framed(pb.StatusRequest()) * 2, b"more than one request message for a unary method"),
            (_framed(pb.StatusRequest())[:-1] + b"\x00\x00", b"stream ended inside a message"),
        ]
        for body, message in cases:
            stream = client.request(FAIL_PATH, body or None, extra=[(b"x", b"y")])
            yield client.when(lambda stream=stream: stream in client.ended)
            headers = client.response_headers(stream)
            self.assertEqual(headers[b"grpc-status"], b"13", body)
            self.assertTrue(headers[b"grpc-message"].startswith(message), headers[b"grpc-message"])

    @defer.inlineCallbacks
    def test_sending_waits_for_the_clients_window(self) -> Gen:
        """A client that gives no window back gets only its window's worth; the sender waits, others go on."""
        client = yield self.client(initial_window=3000, auto_ack=False)
        stream = client.request(FLOOD_PATH, None, extra=[(b"x", b"y")], end=False)
        yield wait_until(lambda: len(self.extra.sent) >= 2, "the first sends")
        yield turns(100)
        self.assertLessEqual(len(client.data.get(stream, b"")), 3000)
        self.assertLess(len(self.extra.sent), 4)
        blocked = len(self.extra.sent)
        # Another call on the same connection is answered meanwhile.
        other = client.request(FAIL_PATH, _framed(pb.StatusRequest(task_id="still here")))
        yield client.when(lambda: other in client.ended)
        self.assertEqual(client.response_headers(other)[b"grpc-message"], b"still here")
        self.assertEqual(len(self.extra.sent), blocked)
        # Window back: the rest flows, in order.
        client.h2.increment_flow_control_window(20_000, stream)
        client.h2.increment_flow_control_window(20_000)
        client.flush()
        yield wait_until(lambda: len(self.extra.sent) == 10, "every send")
        self.extra.release.callback(None)
        yield client.when(lambda: stream in client.ended)
        data = client.data[stream]
        messages = []
        while data:
            length = int.from_bytes(data[1:5], "big")
            messages.append(pb.Envelope.FromString(data[5 : 5 + length]))
            data = data[5 + length :]
        self.assertEqual([message.request_id for message in messages], list(range(10)))
        self.assertEqual(client.response_headers(stream)[b"grpc-status"], b"0")

    @defer.inlineCallbacks
    def test_sends_waiting_when_the_client_resets_the_stream_fail_saying_so(self) -> Gen:
        """Window back and a reset in one read: what was queued cannot go, and every sender is told why."""
        client = yield self.client(initial_window=3000, auto_ack=False)
        stream = client.request(BURST_PATH, None, extra=[(b"x", b"y")], end=False)
        yield wait_until(lambda: len(self.extra.sent) == 2, "the sends the window allows")
        [connection] = self.fixture.server.connections
        # Both frames reach the server in one read, whatever TCP would do.
        client.h2.increment_flow_control_window(20_000, stream)
        client.h2.increment_flow_control_window(20_000)
        client.h2.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        connection.dataReceived(client.h2.data_to_send())
        self.assertEqual(self.extra.sent, [0, 1])
        self.assertEqual(len(self.extra.send_failures), 8)
        expected = (
            f"the client closed stream {stream} before the call's queued output could be sent (8 messages)"
        )
        for failure in self.extra.send_failures:
            self.assertIsInstance(failure.value, RequestCancelled)
            self.assertEqual(failure.value.message, expected)
        [call] = self.extra.streams
        self.assertEqual(call.status, StatusCode.CANCELLED)
        self.assertNotIn(stream, connection.calls)
        self.assertEqual(self.fixture.server.counters().active_calls, 0)

    @defer.inlineCallbacks
    def test_data_for_a_finished_call_gives_the_window_back(self) -> Gen:
        client = yield self.client(initial_window=65535)
        refused = client.request("/spear.v1.SpearBridge/Nope", b"x" * 10_000, end=False)
        yield client.when(lambda: refused in client.ended or refused in client.resets)
        # The connection window is intact: a call of 60 KiB still goes through.
        stream = client.grpc(EXECUTE_PATH, pb.ExecuteCall(task_id="echo", input=b"z" * 60_000))
        yield client.when(lambda: stream in client.ended)
        self.assertEqual(client.response_headers(stream)[b"grpc-status"], b"0")


def _framed(message: Any) -> bytes:
    from spear_twisted.bridge.framing import frame_message

    return frame_message(message.SerializeToString())


class FloodTests(TestCase):
    @defer.inlineCallbacks
    def test_a_rapid_reset_flood_gets_goaway_and_the_connection_closes(self) -> Gen:
        clock = task.Clock()
        fixture = ServerFixture(self, clock=clock, config=BridgeConfig(reset_burst=10, reset_rate=1.0))
        fixture.listen_tcp()
        assert fixture.port is not None
        client = yield connect_raw_h2(fixture.port.getHost().port)
        for _ in range(30):
            stream = client.grpc(EXECUTE_PATH, pb.ExecuteCall(task_id="slow"), end=False)
            client.reset(stream)
        yield client.lost
        goaways = client.frames_of(hyperframe.frame.GoAwayFrame)
        self.assertEqual([frame.error_code for frame in goaways], [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM])
        self.assertLessEqual(fixture.server.counters().resets, 11)
        self.assertEqual(fixture.server.connections, set())

    @defer.inlineCallbacks
    def test_resets_within_the_rate_are_fine(self) -> Gen:
        clock = task.Clock()
        fixture = ServerFixture(self, clock=clock, config=BridgeConfig(reset_burst=10, reset_rate=1.0))
        fixture.listen_tcp()
        assert fixture.port is not None
        client = yield connect_raw_h2(fixture.port.getHost().port)
        self.addCleanup(client.transport.loseConnection)
        for _ in range(30):
            stream = client.grpc(EXECUTE_PATH, pb.ExecuteCall(task_id="slow"), end=False)
            client.reset(stream)
            expected = stream // 2 + 1  # client streams are odd: 1, 3, 5...
            yield wait_until(
                lambda expected=expected: fixture.server.counters().resets >= expected, "the reset"
            )
            clock.advance(1.0)
        self.assertFalse(client.closed)
        self.assertEqual(fixture.server.counters().resets, 30)
        stream = client.grpc(EXECUTE_PATH, pb.ExecuteCall(task_id="echo", input=b"alive"))
        yield client.when(lambda: stream in client.ended)
        self.assertEqual(client.response_headers(stream)[b"grpc-status"], b"0")

    @defer.inlineCallbacks
    def test_control_frames_for_a_client_that_does_not_read_are_capped(self) -> Gen:
        fixture = ServerFixture(self, config=BridgeConfig(max_buffered_control_bytes=1000))
        fixture.listen_tcp()
        assert fixture.port is not None
        client = yield connect_raw_h2(fixture.port.getHost().port)
        yield wait_until(lambda: len(fixture.server.connections) == 1, "the connection")
        connection = next(iter(fixture.server.connections))
        # The transport's buffer is full (the client does not read): fault injected,
        # as filling a loopback socket's buffers would take megabytes.
        connection.pauseProducing()
        for n in range(200):
            client.h2.ping(b"%08d" % n)
        client.flush()
        yield client.lost
        self.assertEqual(fixture.server.connections, set())
        self.assertLess(len(client.frames_of(hyperframe.frame.PingFrame)), 200)


class ShutdownTests(TestCase):
    @defer.inlineCallbacks
    def call_in_flight(
        self,
    ) -> Generator[Deferred[Any], Any, tuple[task.Clock, ServerFixture, RawH2Client, int]]:
        """A server on a Clock, a raw client, and one slow call the backend holds."""
        clock = task.Clock()
        fixture = ServerFixture(self, clock=clock)
        fixture.listen_tcp()
        assert fixture.port is not None
        client = yield connect_raw_h2(fixture.port.getHost().port)
        slow = client.grpc(EXECUTE_PATH, pb.ExecuteCall(task_id="slow"))
        yield fixture.backend.when_started()
        return clock, fixture, client, slow

    @defer.inlineCallbacks
    def test_goaway_twice_then_calls_in_flight_finish(self) -> Gen:
        _clock, fixture, client, slow = yield self.call_in_flight()
        stopped = fixture.server.shutdown(grace=30)
        yield client.when(lambda: len(client.frames_of(hyperframe.frame.GoAwayFrame)) == 2)
        first, final = client.frames_of(hyperframe.frame.GoAwayFrame)
        self.assertEqual((first.last_stream_id, first.error_code), (MAX_STREAM_ID, 0))
        self.assertEqual((final.last_stream_id, final.error_code), (slow, 0))
        pings = client.frames_of(hyperframe.frame.PingFrame)
        self.assertIn(SHUTDOWN_PING, [frame.opaque_data for frame in pings])
        self.assertFalse(stopped.called)
        fixture.backend.release("finished in time")
        yield client.lost
        yield stopped
        self.assertEqual(client.response_headers(slow)[b"grpc-status"], b"0")
        self.assertIn(b"finished in time", client.data[slow])

    @defer.inlineCallbacks
    def test_a_call_opened_after_the_final_goaway_is_refused(self) -> Gen:
        clock, fixture, client, slow = yield self.call_in_flight()
        client.deaf = True  # a peer whose HEADERS cross our GOAWAY
        fixture.server.shutdown(grace=30)
        clock.advance(1.0)  # no PING acknowledgement (deaf): the timeout sends the final GOAWAY
        yield client.when(lambda: len(client.frames_of(hyperframe.frame.GoAwayFrame)) == 2)
        late = client.grpc(EXECUTE_PATH, pb.ExecuteCall(task_id="echo"))
        yield client.when(lambda: bool(client.frames_of(hyperframe.frame.RstStreamFrame, late)))
        self.assertEqual(
            client.frames_of(hyperframe.frame.RstStreamFrame, late)[0].error_code,
            h2.errors.ErrorCodes.REFUSED_STREAM,
        )
        self.assertEqual(len(fixture.backend.calls), 1)
        fixture.backend.release()
        yield client.lost
        self.assertGreater(slow, 0)

    @defer.inlineCallbacks
    def test_calls_still_running_after_the_grace_period_are_unavailable(self) -> Gen:
        clock, fixture, client, slow = yield self.call_in_flight()
        stopped = fixture.server.shutdown(grace=5)
        yield client.when(lambda: len(client.frames_of(hyperframe.frame.GoAwayFrame)) == 2)
        clock.advance(5)
        yield stopped
        yield client.lost
        headers = client.response_headers(slow)
        self.assertEqual(headers[b"grpc-status"], b"14")
        self.assertEqual(headers[b"grpc-message"], b"the server is shutting down")
        self.assertEqual(fixture.backend.cancelled, 1)

    @defer.inlineCallbacks
    def test_grpcio_finishes_its_call_and_new_calls_are_unavailable(self) -> Gen:
        clock = task.Clock()
        fixture = ServerFixture(self, clock=clock)
        client = SyncClient(self, fixture.listen_tcp())
        future = yield in_thread(
            client.execute.future, pb.ExecuteCall(task_id="slow"), metadata=ALICE, timeout=CALL_TIMEOUT
        )
        yield fixture.backend.when_started()
        stopped = fixture.server.shutdown(grace=30)
        connection = next(iter(fixture.server.connections))
        yield wait_until(lambda: connection._goaway_last is not None, "the final GOAWAY")
        fixture.backend.release("done")
        result = yield in_thread(future.result)
        self.assertEqual(result.output, "done")
        yield stopped
        code, _, _ = yield client.fails(
            client.execute, pb.ExecuteCall(task_id="echo"), metadata=ALICE, timeout=CALL_TIMEOUT
        )
        self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)
