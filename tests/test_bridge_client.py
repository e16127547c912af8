"""
ConnectCall, the bridge's Twisted gRPC client of ``Connect``: against a
grpcio server (it speaks gRPC as any client does, not only to our server),
and against our server for what grpcio cannot be made to do on cue (a
graceful shutdown while the call runs, a reader that holds off).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from concurrent import futures
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from twisted.internet import defer
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.client import ConnectCall
from spear_twisted.bridge.contract import CONNECT_PATH
from spear_twisted.bridge.framing import frame_message
from spear_twisted.bridge.status import GrpcError, StatusCode
from tests.bridge_support import ServerFixture, in_thread
from tests.channel_support import turns, wait_until

Gen = Generator[Deferred[Any], Any, None]


def envelope(n: int, size: int = 8) -> pb.Envelope:
    return pb.Envelope(
        message_type=pb.MESSAGE_TYPE_STREAM_DATA,
        request_id=n,
        timestamp=pb.Timestamp(secs_since_epoch=n),
        payload=bytes([n % 256]) * size,
        version=1,
    )


class GrpcioServer:
    """A grpcio server of ``Connect`` for one test: it echoes, or fails as told by the first envelope."""

    def __init__(self, test: TestCase) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))

        def connect(requests: Iterator[pb.Envelope], context: Any) -> Iterator[pb.Envelope]:
            for request in requests:
                if request.request_id == 999:
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, "not you, 100% sure")
                yield request

        handler = grpc.method_handlers_generic_handler(
            "spear.v1.SpearBridge",
            {
                "Connect": grpc.stream_stream_rpc_method_handler(
                    connect,
                    request_deserializer=pb.Envelope.FromString,
                    response_serializer=pb.Envelope.SerializeToString,
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        test.addCleanup(lambda: in_thread(lambda: self.server.stop(None).wait()))


class Collector:
    """What a call delivers: its envelopes, and its end."""

    def __init__(self, call: ConnectCall) -> None:
        self.envelopes: list[pb.Envelope] = []
        self.sizes: list[int] = []
        self.ended: Deferred[GrpcError | None] = Deferred()
        call.set_receiver(self._received, self.ended.callback)

    def _received(self, message: pb.Envelope, size: int) -> None:
        self.envelopes.append(message)
        self.sizes.append(size)


@defer.inlineCallbacks
def dial(port: int, path: str = CONNECT_PATH, **options: Any) -> Generator[Deferred[Any], Any, ConnectCall]:
    call = ConnectCall(clock=real_reactor, authority=f"127.0.0.1:{port}", path=path, **options)
    yield connectProtocol(TCP4ClientEndpoint(real_reactor, "127.0.0.1", port), call)
    return call


class AgainstGrpcioTests(TestCase):
    def setUp(self) -> None:
        self.grpcio = GrpcioServer(self)

    @defer.inlineCallbacks
    def test_envelopes_both_ways_then_a_clean_end(self) -> Gen:
        call = yield dial(self.grpcio.port)
        collector = Collector(call)
        sent = [envelope(n, size=n * 1000) for n in range(30)]  # some span several DATA frames
        yield defer.gatherResults([call.send(message) for message in sent])
        call.finish()
        self.assertIsNone((yield collector.ended))
        self.assertEqual(collector.envelopes, sent)
        self.assertEqual(collector.sizes, [message.ByteSize() for message in sent])
        self.assertEqual(call.status, StatusCode.OK)
        yield call.when_lost()

    @defer.inlineCallbacks
    def test_the_servers_status_and_message_end_the_call(self) -> Gen:
        call = yield dial(self.grpcio.port)
        collector = Collector(call)
        yield call.send(envelope(1))
        yield call.send(envelope(999))
        error = yield collector.ended
        self.assertIsInstance(error, GrpcError)
        self.assertEqual((error.status, error.message), (StatusCode.PERMISSION_DENIED, "not you, 100% sure"))
        self.assertEqual([e.request_id for e in collector.envelopes], [1])
        failed = yield self.assertFailure(call.send(envelope(2)), GrpcError)
        self.assertIs(failed, error)

    @defer.inlineCallbacks
    def test_an_unknown_method_is_unimplemented(self) -> Gen:
        call = yield dial(self.grpcio.port, path="/spear.v1.SpearBridge/Nope")
        collector = Collector(call)
        error = yield collector.ended
        self.assertEqual(error.status, StatusCode.UNIMPLEMENTED)

    @defer.inlineCallbacks
    def test_cancelling_resets_the_call(self) -> Gen:
        call = yield dial(self.grpcio.port)
        collector = Collector(call)
        yield call.send(envelope(1))
        yield wait_until(lambda: collector.envelopes, "the echo")
        call.finish(GrpcError(StatusCode.CANCELLED, "changed my mind"))
        error = yield collector.ended
        self.assertEqual((error.status, error.message), (StatusCode.CANCELLED, "changed my mind"))
        yield call.when_lost()

    @defer.inlineCallbacks
    def test_a_message_over_the_send_limit_ends_the_call_with_resource_exhausted(self) -> Gen:
        call = yield dial(self.grpcio.port, max_send_message_size=100)
        collector = Collector(call)
        yield call.send(envelope(1))
        failed = yield self.assertFailure(call.send(envelope(2, size=500)), GrpcError)
        self.assertEqual(failed.status, StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("exceeds the send limit of 100 bytes", failed.message)
        self.assertIs((yield collector.ended), failed)
        yield call.when_lost()


class AgainstOurServerTests(TestCase):
    def setUp(self) -> None:
        self.fixture = ServerFixture(self)
        self.port = int(self.fixture.listen_tcp().rsplit(":", 1)[1])

    @defer.inlineCallbacks
    def test_a_graceful_shutdown_lets_the_running_call_finish(self) -> Gen:
        call = yield dial(self.port)
        collector = Collector(call)
        yield call.send(envelope(1))
        yield wait_until(lambda: len(collector.envelopes) == 1, "the first echo")
        shutting_down = self.fixture.server.shutdown(grace=60)
        # The server's GOAWAY covers this call: it goes on.
        yield wait_until(lambda: call.goaway_last_stream_id is not None, "the GOAWAY")
        self.assertFalse(call.ended)
        yield turns()
        yield call.send(envelope(2))
        yield wait_until(lambda: len(collector.envelopes) == 2, "the echo after GOAWAY")
        call.finish()
        self.assertIsNone((yield collector.ended))
        yield shutting_down
        self.assertEqual([e.request_id for e in collector.envelopes], [1, 2])

    @defer.inlineCallbacks
    def test_a_paused_reader_holds_messages_and_the_servers_window(self) -> Gen:
        call = yield dial(self.port, stream_window=65_535)
        collector = Collector(call)
        call.pause_reading()
        big = [envelope(n, size=16 * 1024) for n in range(12)]  # ~192 KiB: three windows' worth
        for message in big:
            call.send(message)
        yield wait_until(lambda: self.fixture.connect.streams, "the call")
        yield turns()
        self.assertEqual(collector.envelopes, [])
        # The server could send no more than the window we gave it.
        self.assertLess(len(call._inbox), len(big))
        call.resume_reading()
        yield wait_until(lambda: len(collector.envelopes) == len(big), "every echo")
        self.assertEqual(collector.envelopes, big)
        call.finish()
        self.assertIsNone((yield collector.ended))


class ScriptedServer(Protocol):
    """
    An HTTP/2 server (``h2``, server side) that answers the first request
    with ``script``: each item is ``("headers", [...], end)``,
    ``("data", bytes, end)`` or ``("reset", code)``.  For what no real gRPC
    server sends on cue.
    """

    def __init__(self, script: list[tuple[Any, ...]]) -> None:
        self.script = script
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))

    def connectionMade(self) -> None:
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.transport.loseConnection()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._answer(event.stream_id)
        self.transport.write(self.h2.data_to_send())

    def _answer(self, stream_id: int) -> None:
        for step in self.script:
            if step[0] == "headers":
                self.h2.send_headers(stream_id, step[1], end_stream=step[2])
            elif step[0] == "data":
                self.h2.send_data(stream_id, step[1], end_stream=step[2])
            else:
                self.h2.reset_stream(stream_id, step[1])


OK_HEADERS = [(":status", "200"), ("content-type", "application/grpc")]


class AgainstAScriptedServerTests(TestCase):
    @defer.inlineCallbacks
    def ended_by(self, script: list[tuple[Any, ...]]) -> Generator[Deferred[Any], Any, GrpcError | None]:
        factory = Factory.forProtocol(lambda: ScriptedServer(script))
        port = real_reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        call = yield dial(port.getHost().port)
        collector = Collector(call)
        call.send(envelope(1)).addErrback(lambda _: None)
        error = yield collector.ended
        yield call.when_lost()
        return error

    @defer.inlineCallbacks
    def test_an_http_error_status_maps_to_its_grpc_status(self) -> Gen:
        for http_status, expected in [
            ("404", StatusCode.UNIMPLEMENTED),
            ("503", StatusCode.UNAVAILABLE),
            ("418", StatusCode.UNKNOWN),
        ]:
            error = yield self.ended_by([("headers", [(":status", http_status)], True)])
            self.assertEqual(error.status, expected, http_status)
            self.assertIn(f"the server answered HTTP {http_status}", error.message)

    @defer.inlineCallbacks
    def test_a_reply_that_is_not_grpc_is_refused(self) -> Gen:
        error = yield self.ended_by([("headers", [(":status", "200"), ("content-type", "text/html")], True)])
        self.assertEqual(error.status, StatusCode.UNKNOWN)
        self.assertIn("content-type 'text/html'", error.message)

    @defer.inlineCallbacks
    def test_an_end_without_a_grpc_status_is_internal(self) -> Gen:
        error = yield self.ended_by([("headers", OK_HEADERS, False), ("headers", [("x-other", "1")], True)])
        self.assertEqual(
            (error.status, error.message),
            (StatusCode.INTERNAL, "the server ended the call without a grpc-status"),
        )

    @defer.inlineCallbacks
    def test_an_invalid_envelope_is_internal(self) -> Gen:
        not_protobuf = b"\xff\xff\xff"
        error = yield self.ended_by(
            [("headers", OK_HEADERS, False), ("data", frame_message(not_protobuf), False)]
        )
        self.assertEqual(error.status, StatusCode.INTERNAL)
        self.assertIn("the server sent an invalid Envelope", error.message)

    @defer.inlineCallbacks
    def test_a_reset_maps_to_its_grpc_status(self) -> Gen:
        error = yield self.ended_by(
            [("headers", OK_HEADERS, False), ("reset", h2.errors.ErrorCodes.REFUSED_STREAM)]
        )
        self.assertEqual(error.status, StatusCode.UNAVAILABLE)
        self.assertIn("the server reset the call (HTTP/2 error code 7)", error.message)
