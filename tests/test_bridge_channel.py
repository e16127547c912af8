"""
GrpcChannel, the spearlet's side, against agents written with the real
grpcio client (sync and ``grpc.aio``) that speak the session by hand: the
handshake, execute round trips through ``request_response``, refusals,
violations, losses and closing.  The channel contract over this transport,
with the agent side a Twisted ``ConnectCall``, is in ``test_channels.py``.
"""

from __future__ import annotations

import queue
from collections.abc import Generator, Iterator
from typing import Any

import grpc
import grpc.aio
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from spear_twisted.auth import SecretRegistry
from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.channel import GrpcChannel
from spear_twisted.bridge.contract import envelope_from_message, message_from_envelope
from spear_twisted.bridge.session import EnvelopeSessionProtocol, StreamTransport
from spear_twisted.channels.config import ChannelConfig
from spear_twisted.channels.interfaces import ICommunicationChannel
from spear_twisted.errors import ConnectionLost, ErrorCode
from spear_twisted.wire import (
    AuthRequest,
    AuthResponse,
    ErrorMessage,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionStatus,
    MessageType,
    Role,
    RuntimeInstanceId,
    RuntimeType,
    SpearMessage,
)
from tests.bridge_support import CALL_TIMEOUT, connect_stub, in_thread, run_aio, self_signed_certificate
from tests.channel_support import ClockReactor, execute, turns, wait_until

Gen = Generator[Deferred[Any], Any, None]

INSTANCE = RuntimeInstanceId(RuntimeType.KUBERNETES, "pod-1")


def auth(token: str, instance_id: RuntimeInstanceId = INSTANCE) -> pb.Envelope:
    """The ``AuthRequest`` envelope an agent opens its stream with."""
    return envelope_from_message(
        SpearMessage.auth_request(0, AuthRequest(str(instance_id), token, "grpcio-test/1", "grpcio"))
    )


def answer(envelope: pb.Envelope) -> pb.Envelope:
    """The ``ExecuteResponse`` envelope answering an ``ExecuteRequest`` envelope: its args, joined."""
    message = message_from_envelope(envelope)
    body = message.parse_payload()
    assert isinstance(body, ExecuteRequest)
    output = " ".join(body.args)
    return envelope_from_message(
        SpearMessage.execute_response(
            message.request_id, ExecuteResponse(body.task_id, ExecutionStatus.COMPLETED, output, None, 0)
        )
    )


def kinds(envelopes: list[pb.Envelope]) -> list[MessageType]:
    return [message_from_envelope(envelope).message_type for envelope in envelopes]


class Spearlet:
    """A listening spearlet-side GrpcChannel for one test, and its instance's secret."""

    def __init__(self, test: TestCase, reactor: Any = None, **config: Any) -> None:
        self.registry = SecretRegistry()
        self.token = self.registry.issue(INSTANCE)
        self.channel = GrpcChannel(
            INSTANCE, reactor=reactor, config=ChannelConfig(**config), validator=self.registry
        )
        test.addCleanup(self.channel.close)
        self.target = ""

    @defer.inlineCallbacks
    def listen(self) -> Generator[Deferred[Any], Any, str]:
        address = yield self.channel.listen()
        self.target = f"{address.host}:{address.port}"
        return self.target


def sync_agent(target: str, first: pb.Envelope, answers: int) -> tuple[list[pb.Envelope], grpc.StatusCode]:
    """
    A blocking grpcio agent: open ``Connect`` with ``first``, answer
    ``answers`` execute requests, end its side, read until the spearlet ends
    the call.  Returns every envelope received and the final status.
    """
    outgoing: queue.Queue[pb.Envelope | None] = queue.Queue()
    outgoing.put(first)

    def requests() -> Iterator[pb.Envelope]:
        while (item := outgoing.get()) is not None:
            yield item

    with grpc.insecure_channel(target) as channel:
        call = connect_stub(channel)(requests(), timeout=CALL_TIMEOUT)
        received: list[pb.Envelope] = []
        answered = 0
        for envelope in call:
            received.append(envelope)
            kind = message_from_envelope(envelope).message_type
            if kind is MessageType.EXECUTE_REQUEST:
                outgoing.put(answer(envelope))
                answered += 1
                if answered == answers:
                    outgoing.put(None)
            elif kind is MessageType.AUTH_RESPONSE and answers == 0:
                outgoing.put(None)
        outgoing.put(None)
        return received, call.code()


class GrpcioAgentTests(TestCase):
    """Agents written with grpcio against a spearlet-side GrpcChannel."""

    @defer.inlineCallbacks
    def test_channel_provides_ICommunicationChannel_and_tells_the_instance_grpc(self) -> Gen:
        spearlet = Spearlet(self)
        target = yield spearlet.listen()
        channel = spearlet.channel
        self.assertTrue(verifyObject(ICommunicationChannel, channel))
        environment = channel.address.environment()
        self.assertEqual(environment["SPEAR_COMMUNICATION_TYPE"], "grpc")
        self.assertEqual(f"127.0.0.1:{environment['SPEAR_COMMUNICATION_PORT']}", target)
        self.assertNotIn("SPEAR_TLS_CA_PATH", environment)
        self.assertEqual(channel.get_stats().transport, "grpc")

    @defer.inlineCallbacks
    def test_sync_agent_authenticates_and_answers_execute_requests(self) -> Gen:
        spearlet = Spearlet(self)
        target = yield spearlet.listen()
        agent = in_thread(sync_agent, target, auth(spearlet.token), 5)
        yield spearlet.channel.when_connected()
        responses = yield defer.gatherResults(
            [spearlet.channel.request_response(execute("t", "call", str(n)), timeout=30) for n in range(5)]
        )
        self.assertEqual([r.parse_payload().output for r in responses], [f"call {n}" for n in range(5)])
        received, code = yield agent
        self.assertEqual(code, grpc.StatusCode.OK)
        first = message_from_envelope(received[0])
        self.assertEqual((first.message_type, first.request_id), (MessageType.AUTH_RESPONSE, 0))
        body = first.parse_payload()
        assert isinstance(body, AuthResponse)
        self.assertTrue(body.success)
        self.assertTrue(body.session_id)
        self.assertEqual(kinds(received[1:]), [MessageType.EXECUTE_REQUEST] * 5)
        # The agent ended its side without ConnectionClose: for the spearlet
        # that is a lost connection, as when a socket closes.
        yield wait_until(lambda: not spearlet.channel.is_connected(), "the spearlet seeing the end")
        stats = spearlet.channel.get_stats()
        self.assertEqual((stats.connections, stats.connection_errors, stats.latency_samples), (1, 1, 5))

    @defer.inlineCallbacks
    def test_aio_agent_round_trips_and_unsolicited_messages_both_ways(self) -> Gen:
        spearlet = Spearlet(self)
        target = yield spearlet.listen()
        first = auth(spearlet.token)
        count = 20

        async def agent() -> tuple[bool, list[str], grpc.StatusCode]:
            async with grpc.aio.insecure_channel(target) as channel:
                call = connect_stub(channel)(timeout=CALL_TIMEOUT)
                await call.write(first)
                accepted = message_from_envelope(await call.read()).parse_payload()
                assert isinstance(accepted, AuthResponse)
                await call.write(envelope_from_message(SpearMessage.stream_data(0, _data(b"up"))))
                seen = []
                while len(seen) < count:
                    envelope = await call.read()
                    message = message_from_envelope(envelope)
                    if message.message_type is MessageType.EXECUTE_REQUEST:
                        await call.write(answer(envelope))
                    seen.append(message.message_type.value)
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass
                return accepted.success, seen, await call.code()

        running = run_aio(agent)
        yield spearlet.channel.when_connected()
        up = yield spearlet.channel.receive()
        self.assertEqual(up.parse_payload().data, b"up")
        answers = []
        for n in range(count // 2):
            yield spearlet.channel.send(SpearMessage.stream_data(0, _data(b"down")))
            answers.append((yield spearlet.channel.request_response(execute("t", str(n)), timeout=30)))
        success, seen, code = yield running
        self.assertTrue(success)
        self.assertEqual(seen, ["StreamData", "ExecuteRequest"] * (count // 2))
        self.assertEqual([a.parse_payload().output for a in answers], [str(n) for n in range(count // 2)])
        self.assertEqual(code, grpc.StatusCode.OK)

    @defer.inlineCallbacks
    def test_wrong_secret_gets_a_refusing_auth_response_and_the_stream_ends(self) -> Gen:
        spearlet = Spearlet(self)
        target = yield spearlet.listen()
        received, code = yield in_thread(sync_agent, target, auth("not-the-secret"), 0)
        self.assertEqual(code, grpc.StatusCode.OK)
        self.assertEqual(len(received), 1)
        refusal = message_from_envelope(received[0])
        body = refusal.parse_payload()
        assert isinstance(body, AuthResponse)
        self.assertFalse(body.success)
        self.assertIsNone(body.session_id)
        self.assertIn("invalid token", body.error_message or "")
        self.assertFalse(spearlet.channel.is_connected())
        self.assertEqual(spearlet.channel.last_connection_error, "invalid token")

    @defer.inlineCallbacks
    def test_another_instances_id_is_refused(self) -> Gen:
        spearlet = Spearlet(self)
        target = yield spearlet.listen()
        other = RuntimeInstanceId(RuntimeType.KUBERNETES, "pod-2")
        token = spearlet.registry.issue(other)
        received, _code = yield in_thread(sync_agent, target, auth(token, other), 0)
        body = message_from_envelope(received[0]).parse_payload()
        assert isinstance(body, AuthResponse)
        self.assertFalse(body.success)
        self.assertIn("another instance", body.error_message or "")

    @defer.inlineCallbacks
    def test_an_invalid_envelope_gets_error_1004_and_the_stream_ends(self) -> Gen:
        spearlet = Spearlet(self)
        target = yield spearlet.listen()
        invalid = pb.Envelope(
            message_type=pb.MESSAGE_TYPE_AUTH_REQUEST, request_id=3, payload=b"{}", version=1
        )
        received, code = yield in_thread(sync_agent, target, invalid, 0)
        self.assertEqual(code, grpc.StatusCode.OK)
        self.assertEqual(kinds(received), [MessageType.ERROR])
        body = message_from_envelope(received[0]).parse_payload()
        assert isinstance(body, ErrorMessage)
        self.assertEqual(body.error_code, ErrorCode.INVALID_MESSAGE)
        self.assertIn("timestamp", body.message)
        self.assertEqual(spearlet.channel.get_stats().connection_errors, 1)

    @defer.inlineCallbacks
    def test_a_message_over_the_preauth_limit_ends_the_call_with_resource_exhausted(self) -> Gen:
        spearlet = Spearlet(self, max_preauth_message_size=1024)
        target = yield spearlet.listen()
        big = pb.Envelope(
            message_type=pb.MESSAGE_TYPE_AUTH_REQUEST,
            timestamp=pb.Timestamp(secs_since_epoch=1),
            payload=b"x" * 4096,
            version=1,
        )

        def send() -> tuple[grpc.StatusCode, str]:
            with grpc.insecure_channel(target) as channel:
                call = connect_stub(channel)(iter([big]), timeout=CALL_TIMEOUT)
                try:
                    list(call)
                except grpc.RpcError as e:
                    return e.code(), e.details()
                return call.code(), ""

        code, details = yield in_thread(send)
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("exceeds the limit of 1024 bytes", details)
        self.assertFalse(spearlet.channel.is_connected())

    @defer.inlineCallbacks
    def test_losing_the_agent_fails_every_outstanding_request_at_once(self) -> Gen:
        spearlet = Spearlet(self)
        target = yield spearlet.listen()
        first = auth(spearlet.token)

        async def agent() -> None:
            async with grpc.aio.insecure_channel(target) as channel:
                call = connect_stub(channel)(timeout=CALL_TIMEOUT)
                await call.write(first)
                await call.read()
                for _ in range(3):
                    await call.read()
                call.cancel()  # the agent goes away with the requests unanswered

        running = run_aio(agent)
        yield spearlet.channel.when_connected()
        calls = [spearlet.channel.request_response(execute(f"t{n}"), timeout=60) for n in range(3)]
        outstanding_at_first_failure: list[int] = []

        def first_failure(failure: Any) -> Any:
            if not outstanding_at_first_failure:
                outstanding_at_first_failure.append(spearlet.channel.get_stats().outstanding_requests)
            return failure

        for call in calls:
            call.addErrback(first_failure)
        results = yield defer.DeferredList(calls, consumeErrors=True)
        yield running
        self.assertEqual(outstanding_at_first_failure, [0])
        for ok, failure in results:
            self.assertFalse(ok)
            failure.trap(ConnectionLost)
            self.assertEqual(failure.value.instance_id, INSTANCE)
        self.assertFalse(spearlet.channel.is_connected())
        self.assertEqual(spearlet.channel.get_stats().connection_errors, 1)

    @defer.inlineCallbacks
    def test_closing_the_channel_sends_connection_close_and_ends_the_stream(self) -> Gen:
        spearlet = Spearlet(self)
        target = yield spearlet.listen()
        first = auth(spearlet.token)

        async def agent() -> tuple[list[MessageType], grpc.StatusCode]:
            async with grpc.aio.insecure_channel(target) as channel:
                call = connect_stub(channel)(timeout=CALL_TIMEOUT)
                await call.write(first)
                seen = []
                while (envelope := await call.read()) is not grpc.aio.EOF:
                    seen.append(message_from_envelope(envelope).message_type)
                return seen, await call.code()

        running = run_aio(agent)
        yield spearlet.channel.when_connected()
        yield spearlet.channel.close()
        seen, code = yield running
        self.assertEqual(seen, [MessageType.AUTH_RESPONSE, MessageType.CONNECTION_CLOSE])
        self.assertEqual(code, grpc.StatusCode.OK)
        server = spearlet.channel.server
        assert server is not None
        self.assertEqual(server.counters().connections, 0)
        self.assertEqual(spearlet.channel.ports, ())

    @defer.inlineCallbacks
    def test_an_agent_that_never_authenticates_gets_error_1102_after_the_auth_timeout(self) -> Gen:
        clock = ClockReactor()
        spearlet = Spearlet(self, reactor=clock, auth_timeout=5)
        target = yield spearlet.listen()
        arrived: queue.Queue[pb.Envelope] = queue.Queue()

        def silent() -> grpc.StatusCode:
            with grpc.insecure_channel(target) as channel:
                hold: queue.Queue[None] = queue.Queue()

                def requests() -> Iterator[pb.Envelope]:
                    hold.get()
                    yield from ()

                call = connect_stub(channel)(requests(), timeout=CALL_TIMEOUT)
                for envelope in call:
                    arrived.put(envelope)
                hold.put(None)
                return call.code()

        running = in_thread(silent)
        yield wait_until(lambda: clock.getDelayedCalls(), "the spearlet accepting the call")
        clock.advance(4.9)
        yield turns()
        self.assertTrue(arrived.empty())
        clock.advance(0.1)
        code = yield running
        self.assertEqual(code, grpc.StatusCode.OK)
        error = message_from_envelope(arrived.get_nowait()).parse_payload()
        assert isinstance(error, ErrorMessage)
        self.assertEqual(error.error_code, ErrorCode.AUTHENTICATION_TIMEOUT)

    def test_a_non_loopback_host_is_refused_without_allow_remote(self) -> Deferred[Any]:
        channel = GrpcChannel(INSTANCE, config=ChannelConfig(host="0.0.0.0"), validator=SecretRegistry())
        self.addCleanup(channel.close)
        return self.assertFailure(channel.listen(), ValueError)

    @defer.inlineCallbacks
    def test_the_spearlet_side_cannot_dial_and_the_agent_side_cannot_listen(self) -> Gen:
        spearlet = GrpcChannel(INSTANCE, validator=SecretRegistry())
        agent = GrpcChannel(
            INSTANCE, role=Role.AGENT, credentials=AuthRequest(str(INSTANCE), "t" * 16, "t", "t")
        )
        self.addCleanup(spearlet.close)
        self.addCleanup(agent.close)
        error = yield self.assertFailure(spearlet.connect_to("127.0.0.1", 9), ValueError)
        self.assertIn("agents dial it", str(error))
        error = yield self.assertFailure(agent.listen(), ValueError)
        self.assertIn("dials the spearlet", str(error))


class TLSTests(TestCase):
    """The channel over HTTP/2 with TLS (ALPN ``h2``)."""

    def setUp(self) -> None:
        self.cert, self.key, self.pem = self_signed_certificate(self.mktemp())

    @defer.inlineCallbacks
    def test_grpcio_over_tls_and_the_instance_is_told_what_to_trust(self) -> Gen:
        spearlet = Spearlet(self, tls_cert_path=self.cert, tls_key_path=self.key)
        yield spearlet.listen()
        address = spearlet.channel.address
        self.assertEqual(address.environment()["SPEAR_TLS_CA_PATH"], self.cert)
        target = f"localhost:{address.port}"
        first, pem = auth(spearlet.token), self.pem

        async def agent() -> bool:
            credentials = grpc.ssl_channel_credentials(root_certificates=pem)
            async with grpc.aio.secure_channel(target, credentials) as channel:
                call = connect_stub(channel)(timeout=CALL_TIMEOUT)
                await call.write(first)
                accepted = message_from_envelope(await call.read()).parse_payload()
                assert isinstance(accepted, AuthResponse)
                envelope = await call.read()
                await call.write(answer(envelope))
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass
                return accepted.success

        running = run_aio(agent)
        yield spearlet.channel.when_connected()
        response = yield spearlet.channel.request_response(execute("t", "over", "tls"), timeout=30)
        self.assertEqual(response.parse_payload().output, "over tls")
        self.assertTrue((yield running))

    @defer.inlineCallbacks
    def test_a_twisted_agent_dials_over_tls_trusting_the_ca_path(self) -> Gen:
        spearlet = Spearlet(self, tls_cert_path=self.cert, tls_key_path=self.key)
        yield spearlet.listen()
        address = spearlet.channel.address
        agent = GrpcChannel(
            INSTANCE, role=Role.AGENT, credentials=AuthRequest(str(INSTANCE), spearlet.token, "t", "t")
        )
        self.addCleanup(agent.close)
        yield agent.connect_to("localhost", address.port, ca_path=address.ca_path)
        yield spearlet.channel.when_connected()
        self.assertIsInstance(agent.connection, EnvelopeSessionProtocol)
        self.assertIsInstance(agent.connection.transport, StreamTransport)
        yield agent.send(SpearMessage.stream_data(0, _data(b"secret")))
        message = yield spearlet.channel.receive()
        self.assertEqual(message.parse_payload().data, b"secret")

    def test_tls_needs_both_files(self) -> None:
        self.assertRaises(ValueError, ChannelConfig, tls_cert_path=self.cert)
        self.assertRaises(ValueError, ChannelConfig, tls_key_path=self.key)


def _data(data: bytes) -> Any:
    from spear_twisted.wire import StreamDataMessage

    return StreamDataMessage("s", data, False, 0)
