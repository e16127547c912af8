"""
The ICommunicationChannel contract, over every transport.

:class:`ChannelContractMixin` holds the behaviour every channel must have; it
runs over real Unix sockets (in a temporary runtime directory), real TCP on
loopback, the gRPC bridge on loopback, and the in-process memory transport.  Time-driven behaviour
(request and auth timeouts, heartbeats, latency, uptime) runs over the same
real sockets with time taken from a ``task.Clock`` (see
``tests/channel_support.py``).  Transport-specific checks live in
``test_channel_unix.py``, ``test_channel_tcp.py``, ``test_bridge_channel.py``
(the gRPC bridge against grpcio agents) and the factory in
``test_channel_factory.py``.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from spear_twisted.channels.channel import OutstandingRequest
from spear_twisted.channels.config import ChannelConfig
from spear_twisted.channels.events import ConnectionEvent, ConnectionEventKind
from spear_twisted.channels.interfaces import ICommunicationChannel
from spear_twisted.channels.protocol import SpearProtocol
from spear_twisted.channels.stats import LATENCY_WINDOW, ChannelStats, LatencyWindow
from spear_twisted.errors import (
    AuthenticationError,
    AuthenticationFailed,
    ConnectionClosed,
    ConnectionLost,
    ErrorCode,
    RequestTimeout,
    UnknownTask,
)
from spear_twisted.wire import (
    AuthRequest,
    AuthResponse,
    ErrorMessage,
    ExecuteResponse,
    FrameDecoder,
    MessageType,
    Role,
    SpearMessage,
)
from tests.channel_support import (
    QUIET_TURNS,
    ChannelMaker,
    ClockReactor,
    EchoAgent,
    answer,
    buffered_bytes,
    connect_raw,
    credentials,
    execute,
    high_water,
    instance,
    stream,
    turns,
    wait_until,
)

Gen = Generator[Deferred[Any], Any, None]


class EventLog:
    """An observer keeping every ``ConnectionEvent``."""

    def __init__(self) -> None:
        self.events: list[ConnectionEvent] = []

    def __call__(self, _connection: SpearProtocol, event: ConnectionEvent) -> None:
        self.events.append(event)

    def of(self, kind: ConnectionEventKind) -> list[ConnectionEvent]:
        return [event for event in self.events if event.kind is kind]

    def messages(self, kind: ConnectionEventKind, message_type: MessageType) -> list[ConnectionEvent]:
        return [event for event in self.of(kind) if event.message_type is message_type]


class ChannelContractMixin:
    """The channel contract; subclasses set ``transport``."""

    transport = "tcp"

    def setUp(self) -> None:
        self.maker = ChannelMaker(self, self.transport)

    # -- the interface ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_both_roles_provide_ICommunicationChannel(self) -> Gen:
        server, client = yield self.maker.pair()
        self.assertTrue(verifyObject(ICommunicationChannel, server))
        self.assertTrue(verifyObject(ICommunicationChannel, client))
        self.assertEqual(server.instance_id, instance("worker-1"))
        self.assertEqual(client.instance_id, instance("worker-1"))

    # -- round trips -------------------------------------------------------------------

    @defer.inlineCallbacks
    def _round_trips(self, agent_dials: bool) -> Gen:
        server, client = yield self.maker.pair(agent_dials=agent_dials)
        agent = EchoAgent(client)
        response = yield server.request_response(execute("t1", "hello", "world"), timeout=30)
        self.assertEqual(response.message_type, MessageType.EXECUTE_RESPONSE)
        self.assertEqual(response.request_id, agent.requests[0].request_id)
        body = response.parse_payload()
        self.assertIsInstance(body, ExecuteResponse)
        self.assertEqual((body.task_id, body.output), ("t1", "process:worker-1:hello world"))

        # Unsolicited messages, both ways, in order.
        for sequence in range(3):
            yield client.send(stream(sequence, b"up"))
            yield server.send(stream(sequence, b"down"))
        up = []
        for _ in range(3):
            up.append((yield server.receive()))
        self.assertEqual([m.parse_payload().sequence for m in up], [0, 1, 2])
        self.assertEqual({m.parse_payload().data for m in up}, {b"up"})
        yield agent.when(lambda: len(agent.other) == 3)
        self.assertEqual([m.parse_payload().sequence for m in agent.other], [0, 1, 2])
        self.assertEqual({m.parse_payload().data for m in agent.other}, {b"down"})
        self.assertTrue(server.is_connected())
        self.assertTrue(client.is_connected())

    def test_round_trips_when_the_agent_dials(self) -> Deferred[None]:
        return self._round_trips(agent_dials=True)  # type: ignore[no-any-return]

    def test_round_trips_when_the_spearlet_dials(self) -> Deferred[None]:
        return self._round_trips(agent_dials=False)  # type: ignore[no-any-return]

    @defer.inlineCallbacks
    def test_when_connected_waits_for_authentication_then_fires_at_once(self) -> Gen:
        iid = instance("late")
        token = self.maker.registry.issue(iid)
        server = self.maker.channel(iid)
        address = yield server.listen()
        waiting = server.when_connected()
        self.assertFalse(waiting.called)
        self.assertFalse(server.is_connected())
        client = self.maker.channel(iid, role=Role.AGENT, token=token)
        dialled = yield self.maker.dial(client, address)
        self.assertIs(dialled, client)
        fired = yield waiting
        self.assertIs(fired, server)
        self.assertTrue(server.is_connected())
        again = server.when_connected()
        self.assertTrue(again.called)
        self.assertIs((yield again), server)

    @defer.inlineCallbacks
    def test_secret_issued_after_the_channel_was_made_is_accepted(self) -> Gen:
        # The usual order: make the channel, then issue the instance's secret.
        iid = instance("issued-later")
        server = self.maker.channel(iid)
        address = yield server.listen()
        token = self.maker.registry.issue(iid)
        client = self.maker.channel(iid, role=Role.AGENT, token=token)
        yield self.maker.dial(client, address)
        yield server.when_connected()
        self.assertTrue(server.is_connected())

    @defer.inlineCallbacks
    def test_large_request_sent_the_moment_the_spearlet_accepts_arrives(self) -> Gen:
        # The AuthResponse and a request far above the pre-auth size limit
        # leave in the same turn and may reach the agent in one read.
        iid = instance("eager")
        token = self.maker.registry.issue(iid)
        server = self.maker.channel(iid)
        address = yield server.listen()
        data = b"\x03" * 256 * 1024
        answered = server.when_connected().addCallback(
            lambda _: server.request_response(execute("big", data=data))
        )
        client = self.maker.channel(iid, role=Role.AGENT, token=token)
        yield self.maker.dial(client, address)
        agent = EchoAgent(client)
        response = yield answered
        self.assertEqual(response.parse_payload().output, "process:eager:")
        self.assertEqual(agent.requests[0].parse_payload().input_data, data)
        self.assertEqual(client.get_stats().connection_errors, 0)

    # -- isolation ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_two_instances_messages_never_cross(self) -> Gen:
        a, b = instance("alpha"), instance("beta")
        server_a, client_a = yield self.maker.pair(a)
        server_b, client_b = yield self.maker.pair(b)
        self.assertNotEqual(server_a.address, server_b.address)
        agent_a, agent_b = EchoAgent(client_a), EchoAgent(client_b)

        calls = []
        for n in range(10):
            calls.append(server_a.request_response(execute(f"a{n}", str(n))))
            calls.append(server_b.request_response(execute(f"b{n}", str(n))))
        results = yield defer.gatherResults(calls)
        for n in range(10):
            self.assertEqual(results[2 * n].parse_payload().output, f"process:alpha:{n}")
            self.assertEqual(results[2 * n + 1].parse_payload().output, f"process:beta:{n}")
        self.assertEqual(
            sorted(m.parse_payload().task_id for m in agent_a.requests), sorted(f"a{n}" for n in range(10))
        )
        self.assertEqual(
            sorted(m.parse_payload().task_id for m in agent_b.requests), sorted(f"b{n}" for n in range(10))
        )

        # An unsolicited message from alpha reaches alpha's channel only.
        pending_b = server_b.receive()
        yield client_a.send(stream(1, b"from alpha"))
        got = yield server_a.receive()
        self.assertEqual(got.parse_payload().data, b"from alpha")
        yield turns()
        self.assertFalse(pending_b.called)
        pending_b.cancel()
        yield self.assertFailure(pending_b, CancelledError)

        for channel, name in [
            (server_a, "alpha"),
            (client_a, "alpha"),
            (server_b, "beta"),
            (client_b, "beta"),
        ]:
            self.assertEqual(channel.instance_id, instance(name))
            self.assertEqual(channel.get_stats().instance_id, f"process:{name}")

    # -- requests ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_request_ids_are_per_channel_distinct_and_responses_match_by_id(self) -> Gen:
        server_a, client_a = yield self.maker.pair(instance("alpha"))
        server_b, client_b = yield self.maker.pair(instance("beta"))
        agent_a = EchoAgent(client_a, answering=False)
        agent_b = EchoAgent(client_b, answering=False)
        calls = [server_a.request_response(execute(f"t{n}")) for n in range(5)]
        first_b = server_b.request_response(execute("b"))
        yield agent_a.when_requests(5)
        yield agent_b.when_requests(1)
        ids = [m.request_id for m in agent_a.requests]
        self.assertEqual(len(set(ids)), 5)
        self.assertNotIn(0, ids)  # 0 is the control id (handshake, heartbeats)
        # Each channel allocates its own ids: beta's first is alpha's first.
        self.assertEqual(agent_b.requests[0].request_id, ids[0])

        # Answered in reverse order, each request gets its own response.
        for request in reversed(agent_a.requests):
            yield client_a.send(answer(request, f"answer to {request.parse_payload().task_id}"))
        results = yield defer.gatherResults(calls)
        self.assertEqual([r.parse_payload().output for r in results], [f"answer to t{n}" for n in range(5)])
        yield client_b.send(answer(agent_b.requests[0], "b"))
        yield first_b

    @defer.inlineCallbacks
    def test_send_request_tells_the_request_id_the_peer_sees(self) -> Gen:
        server, client = yield self.maker.pair()
        agent = EchoAgent(client, answering=False)
        first = server.send_request(execute("first"), timeout=30)
        second = server.send_request(execute("second"), timeout=30)
        self.assertIsInstance(first, OutstandingRequest)
        yield agent.when_requests(2)
        self.assertEqual([first.request_id, second.request_id], [m.request_id for m in agent.requests])
        yield client.send(answer(agent.requests[1], "two"))
        response = yield second.response
        self.assertEqual(response.request_id, second.request_id)
        # The response Deferred is the request's: cancelling it withdraws the request.
        first.response.cancel()
        yield self.assertFailure(first.response, CancelledError)
        self.assertEqual(server.get_stats().outstanding_requests, 0)

    @defer.inlineCallbacks
    def test_send_request_without_a_connection_has_no_id_and_fails(self) -> Gen:
        server, client = yield self.maker.pair()
        yield client.close()
        yield wait_until(lambda: not server.is_connected(), "the disconnection")
        outstanding = server.send_request(execute("nobody"), timeout=30)
        self.assertIsNone(outstanding.request_id)
        yield self.assertFailure(outstanding.response, ConnectionLost)

    @defer.inlineCallbacks
    def test_request_ids_wrap_around_without_reusing_an_outstanding_id(self) -> Gen:
        server, client = yield self.maker.pair()
        agent = EchoAgent(client, answering=False)
        first = server.request_response(execute("first"))
        yield agent.when_requests(1)
        self.assertEqual(agent.requests[0].request_id, 1)
        # No public way to reach the end of the id space: move the private counter there.
        server._request_ids = itertools.count(2**64 - 1)
        last = server.request_response(execute("last"))
        wrapped = server.request_response(execute("wrapped"))
        yield agent.when_requests(3)
        self.assertEqual([m.request_id for m in agent.requests], [1, 2**64 - 1, 2])
        for request in agent.requests:
            yield client.send(answer(request, request.parse_payload().task_id))
        results = yield defer.gatherResults([first, last, wrapped])
        self.assertEqual([r.parse_payload().output for r in results], ["first", "last", "wrapped"])

    @defer.inlineCallbacks
    def test_cancelled_request_is_released_and_its_late_response_discarded(self) -> Gen:
        server, client = yield self.maker.pair()
        agent = EchoAgent(client, answering=False)
        call = server.request_response(execute("slow"))
        yield agent.when_requests(1)
        self.assertEqual(server.get_stats().outstanding_requests, 1)
        call.cancel()
        yield self.assertFailure(call, CancelledError)
        self.assertEqual(server.get_stats().outstanding_requests, 0)

        yield client.send(answer(agent.requests[0], "too late"))
        yield wait_until(lambda: server.get_stats().late_responses == 1, "the late response")
        # Discarded: not delivered as an unsolicited message either.
        self.assertEqual(server.get_stats().queued_messages, 0)
        self.assertTrue(server.is_connected())

    @defer.inlineCallbacks
    def test_error_reply_fails_the_request_with_the_peers_error(self) -> Gen:
        server, client = yield self.maker.pair()
        agent = EchoAgent(client, answering=False)
        call = server.request_response(execute("nope"))
        yield agent.when_requests(1)
        request_id = agent.requests[0].request_id
        reply = SpearMessage.error(
            request_id, ErrorMessage(ErrorCode.UNKNOWN_TASK, "no task nope", None, request_id)
        )
        yield client.send(reply)
        error = yield self.assertFailure(call, UnknownTask)
        self.assertEqual(error.instance_id, server.instance_id)
        self.assertEqual(error.request_id, request_id)
        self.assertIn("no task nope", str(error))

    @defer.inlineCallbacks
    def test_sending_without_a_connection_fails_naming_the_instance(self) -> Gen:
        iid = instance("lonely")
        server = self.maker.channel(iid)
        yield server.listen()
        error = yield self.assertFailure(server.send(stream(1)), ConnectionLost)
        self.assertEqual(error.instance_id, iid)
        error = yield self.assertFailure(server.request_response(execute()), ConnectionLost)
        self.assertEqual(error.instance_id, iid)
        self.assertFalse(server.is_connected())

    # -- connection loss ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_connection_loss_fails_every_outstanding_request_at_once(self) -> Gen:
        server, client = yield self.maker.pair()
        agent = EchoAgent(client, answering=False)
        calls = [server.request_response(execute(f"t{n}")) for n in range(3)]
        yield agent.when_requests(3)
        outstanding_when_first_failed = []

        def first_failure(failure: Any) -> Any:
            if not outstanding_when_first_failed:
                outstanding_when_first_failed.append(server.get_stats().outstanding_requests)
            return failure

        for call in calls:
            call.addErrback(first_failure)
        client.connection.abort()
        results = yield defer.DeferredList(calls, consumeErrors=True)
        # When the first failure was delivered no request was outstanding any more.
        self.assertEqual(outstanding_when_first_failed, [0])
        request_ids = {m.request_id for m in agent.requests}
        for ok, failure in results:
            self.assertFalse(ok)
            failure.trap(ConnectionLost)
            self.assertEqual(failure.value.instance_id, server.instance_id)
            self.assertIn(failure.value.request_id, request_ids)
            self.assertIn("process:worker-1", str(failure.value))
        self.assertEqual({f.value.request_id for _, f in results}, request_ids)
        self.assertFalse(server.is_connected())
        stats = server.get_stats()
        self.assertEqual(
            (stats.connected, stats.connection_errors, stats.outstanding_requests), (False, 1, 0)
        )

    @defer.inlineCallbacks
    def test_orderly_close_by_the_agent_fails_outstanding_requests_without_a_connection_error(self) -> Gen:
        server, client = yield self.maker.pair()
        agent = EchoAgent(client, answering=False)
        call = server.request_response(execute("pending"))
        yield agent.when_requests(1)
        yield client.close()
        error = yield self.assertFailure(call, ConnectionLost)
        self.assertEqual(error.instance_id, server.instance_id)
        self.assertEqual(error.request_id, agent.requests[0].request_id)
        self.assertEqual(server.get_stats().connection_errors, 0)

    @defer.inlineCallbacks
    def test_receive_waits_across_reconnection_and_stats_accumulate(self) -> Gen:
        server, client = yield self.maker.pair(spearlet={"heartbeat_interval": None})
        yield client.send(stream(0))
        self.assertEqual((yield server.receive()).parse_payload().sequence, 0)
        pending = server.receive()
        client.connection.abort()
        yield wait_until(lambda: not server.is_connected(), "the spearlet noticing the loss")
        self.assertFalse(pending.called)
        before = server.get_stats()
        self.assertEqual((before.connections, before.connection_errors), (1, 1))
        self.assertEqual(before.messages_received, 2)  # AuthRequest and the stream message

        token = self.maker.registry.issue(server.instance_id)
        again = self.maker.channel(server.instance_id, role=Role.AGENT, token=token)
        yield self.maker.dial(again, server.address)
        yield again.send(stream(1))
        message = yield pending
        self.assertEqual(message.parse_payload().sequence, 1)
        after = server.get_stats()
        self.assertEqual((after.connections, after.connected), (2, True))
        self.assertEqual(after.messages_received, 4)
        self.assertGreater(after.bytes_received, before.bytes_received)

    # -- push mode -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_push_mode_delivers_queued_then_arriving_messages_in_order_and_ends_on_close(self) -> Gen:
        server, client = yield self.maker.pair()
        for sequence in range(2):
            yield client.send(stream(sequence))
        yield wait_until(lambda: server.get_stats().queued_messages == 2, "two queued messages")
        delivered: list[int] = []
        ends: list[Any] = []
        server.set_receiver(lambda message: delivered.append(message.parse_payload().sequence), ends.append)
        self.assertEqual(delivered, [0, 1])  # the queued ones, at once
        self.assertEqual(server.get_stats().queued_messages, 0)
        self.assertRaises(RuntimeError, server.receive)
        for sequence in range(2, 5):
            client.send(stream(sequence))
        yield wait_until(lambda: len(delivered) == 5, "the messages pushed as they arrive")
        self.assertEqual(delivered, [0, 1, 2, 3, 4])
        self.assertEqual(server.get_stats().queued_messages, 0)
        self.assertEqual(ends, [])
        yield server.close()
        self.assertEqual(len(ends), 1)
        self.assertIsInstance(ends[0], ConnectionClosed)
        self.assertEqual(ends[0].instance_id, server.instance_id)

    @defer.inlineCallbacks
    def test_push_mode_answers_requests_from_the_receiver(self) -> Gen:
        server, client = yield self.maker.pair()

        def serve(message: SpearMessage) -> None:
            if message.message_type is MessageType.EXECUTE_REQUEST:
                body = message.parse_payload()
                client.send(answer(message, f"pushed:{' '.join(body.args)}"))  # type: ignore[union-attr]

        client.set_receiver(serve)
        responses = yield defer.gatherResults(
            [server.request_response(execute(f"t{n}", str(n)), timeout=30) for n in range(20)]
        )
        self.assertEqual([r.parse_payload().output for r in responses], [f"pushed:{n}" for n in range(20)])
        self.assertEqual(server.get_stats().latency_samples, 20)

    @defer.inlineCallbacks
    def test_push_mode_receiver_that_raises_is_logged_and_delivery_goes_on(self) -> Gen:
        server, client = yield self.maker.pair()
        delivered: list[int] = []

        def fragile(message: SpearMessage) -> None:
            sequence = message.parse_payload().sequence  # type: ignore[union-attr]
            delivered.append(sequence)
            if sequence == 0:
                raise ValueError("a receiver bug")

        server.set_receiver(fragile)
        for sequence in range(3):
            client.send(stream(sequence))
        yield wait_until(lambda: len(delivered) == 3, "every message despite the failure")
        self.assertEqual(delivered, [0, 1, 2])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)  # type: ignore[attr-defined]
        self.assertTrue(server.is_connected())
        self.assertTrue(client.is_connected())

    @defer.inlineCallbacks
    def test_set_receiver_is_refused_while_receive_waits_and_none_returns_to_queueing(self) -> Gen:
        server, client = yield self.maker.pair()
        waiting = server.receive()
        self.assertRaises(RuntimeError, server.set_receiver, lambda message: None)
        yield client.send(stream(0))
        self.assertEqual((yield waiting).parse_payload().sequence, 0)
        delivered: list[SpearMessage] = []
        server.set_receiver(delivered.append)
        yield client.send(stream(1))
        yield wait_until(lambda: len(delivered) == 1, "the pushed message")
        server.set_receiver(None)
        yield client.send(stream(2))
        self.assertEqual((yield server.receive()).parse_payload().sequence, 2)
        self.assertEqual(len(delivered), 1)

    @defer.inlineCallbacks
    def test_push_mode_resumes_reading_that_a_full_queue_stopped(self) -> Gen:
        size, count = 4, 12
        server, client = yield self.maker.pair(spearlet={"receive_queue_size": size})
        data = b"\x01" * 16 * 1024
        sends = [client.send(stream(n, data)) for n in range(count)]
        yield wait_until(lambda: server.get_stats().queued_messages >= size, "the receive queue filling")
        self.assertTrue(server.connection._read_paused)
        delivered: list[int] = []
        server.set_receiver(lambda message: delivered.append(message.parse_payload().sequence))
        self.assertFalse(server.connection._read_paused)
        yield wait_until(lambda: len(delivered) == count, "every message pushed")
        self.assertEqual(delivered, list(range(count)))
        results = yield defer.DeferredList(sends)
        self.assertTrue(all(ok for ok, _ in results))

    @defer.inlineCallbacks
    def test_set_receiver_on_a_closed_channel_delivers_what_was_queued_then_ends(self) -> Gen:
        server, client = yield self.maker.pair()
        yield client.send(stream(0))
        yield wait_until(lambda: server.get_stats().queued_messages == 1, "a queued message")
        yield server.close()
        calls: list[Any] = []
        server.set_receiver(lambda message: calls.append(message.parse_payload().sequence), calls.append)
        self.assertEqual(calls[0], 0)
        self.assertIsInstance(calls[1], ConnectionClosed)
        self.assertEqual(len(calls), 2)

    # -- back-pressure -------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_send_waits_while_the_peer_does_not_read_and_memory_stays_bounded(self) -> Gen:
        server, client = yield self.maker.pair()
        agent = EchoAgent(client)
        # The agent's protocol stops reading its transport: a peer that does not read.
        client.connection.transport.pauseProducing()
        connection = server.connection
        transport = connection.transport
        data = b"\x07" * 32 * 1024
        frame_size = len(stream(0, data).to_frame())
        handed_off = 0
        blocked: Deferred[None] | None = None
        for sequence in range(200):
            sending = server.send(stream(sequence, data))
            # Give the reactor the turns it needs to flush into the kernel.
            for _ in range(QUIET_TURNS):
                if sending.called:
                    break
                yield task.deferLater(real_reactor, 0, lambda: None)
            if not sending.called:
                blocked = sending
                break
            yield sending
            handed_off += 1
            self.assertLessEqual(buffered_bytes(transport), high_water(transport) + frame_size)
        self.assertIsNotNone(blocked, "send never waited although the peer stopped reading")
        assert blocked is not None
        yield turns()
        self.assertFalse(blocked.called)
        # What our side holds: the transport's buffer (at most one frame above
        # the high-water mark) and the one message waiting to be handed over.
        self.assertEqual(connection.queued_sends, 1)
        self.assertLessEqual(buffered_bytes(transport), high_water(transport) + frame_size)
        self.assertLess(handed_off, 200)

        client.connection.transport.resumeProducing()
        yield blocked
        total = handed_off + 1
        yield agent.when(lambda: len(agent.other) == total)
        self.assertEqual([m.parse_payload().sequence for m in agent.other], list(range(total)))
        self.assertEqual(connection.queued_sends, 0)

    @defer.inlineCallbacks
    def test_full_receive_queue_stops_reading_until_the_consumer_catches_up(self) -> Gen:
        size, count = 8, 40
        server, client = yield self.maker.pair(spearlet={"receive_queue_size": size})
        data = b"\x01" * 16 * 1024  # frames of ~200 KB: a 64 KiB read completes at most one
        sends = [client.send(stream(n, data)) for n in range(count)]
        yield wait_until(lambda: server.get_stats().queued_messages >= size, "the receive queue filling")
        yield turns()
        queued = server.get_stats().queued_messages
        self.assertGreaterEqual(queued, size)
        self.assertLessEqual(queued, size + 1)
        # Whether the channel paused reading has no public view: the protocol's flag.
        self.assertTrue(server.connection._read_paused)
        # A socket of its own stops being read (a gRPC stream shares its
        # HTTP/2 connection with others: it stops acknowledging instead).
        if self.transport in ("unix", "tcp"):
            self.assertNotIn(server.connection.transport, real_reactor.getReaders())
        yield turns()
        self.assertEqual(server.get_stats().queued_messages, queued)

        received = []
        for _ in range(count):
            message = yield server.receive()
            received.append(message.parse_payload().sequence)
        self.assertEqual(received, list(range(count)))
        self.assertFalse(server.connection._read_paused)
        if self.transport in ("unix", "tcp"):
            self.assertIn(server.connection.transport, real_reactor.getReaders())
        results = yield defer.DeferredList(sends)
        self.assertTrue(all(ok for ok, _ in results))

    # -- closing -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_close_flushes_sends_connection_close_and_disconnects(self) -> Gen:
        log = EventLog()
        server, client = yield self.maker.pair(agent={"observer": log, "observe_messages": True})
        agent = EchoAgent(client)
        data = b"\x02" * 64 * 1024
        for sequence in range(5):
            server.send(stream(sequence, data))  # not awaited: close must flush them
        yield server.close()
        self.assertFalse(server.is_connected())
        yield wait_until(lambda: log.of(ConnectionEventKind.DISCONNECTED), "the agent's disconnection")
        self.assertEqual([m.parse_payload().sequence for m in agent.other], list(range(5)))
        received = [e.message_type for e in log.of(ConnectionEventKind.MESSAGE_RECEIVED)]
        self.assertEqual(received[-1], MessageType.CONNECTION_CLOSE)
        self.assertEqual(received.count(MessageType.STREAM_DATA), 5)
        disconnected = log.of(ConnectionEventKind.DISCONNECTED)
        self.assertEqual([e.reason for e in disconnected], [None])  # orderly
        self.assertFalse(client.is_connected())
        self.assertEqual(client.get_stats().connection_errors, 0)

    @defer.inlineCallbacks
    def test_close_is_idempotent_and_everything_after_it_fails_closed(self) -> Gen:
        server, _client = yield self.maker.pair()
        first, second = server.close(), server.close()
        yield first
        yield second
        yield server.close()
        self.assertTrue(server.closed)
        self.assertFalse(server.is_connected())
        self.assertFalse(server.get_stats().connected)
        for attempt in (
            server.send(stream(1)),
            server.receive(),
            server.request_response(execute()),
            server.when_connected(),
        ):
            error = yield self.assertFailure(attempt, ConnectionClosed)
            self.assertEqual(error.instance_id, server.instance_id)

    @defer.inlineCallbacks
    def test_close_fails_waiting_receive_and_when_connected(self) -> Gen:
        server = self.maker.channel(instance("idle"))
        yield server.listen()
        receiving, connecting = server.receive(), server.when_connected()
        yield server.close()
        yield self.assertFailure(receiving, ConnectionClosed)
        yield self.assertFailure(connecting, ConnectionClosed)

    # -- stats -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_stats_count_messages_and_bytes_as_the_peer_sees_them(self) -> Gen:
        quiet = {"heartbeat_interval": None}
        server, client = yield self.maker.pair(spearlet=quiet, agent=quiet)
        EchoAgent(client)
        for n in range(5):
            yield server.request_response(execute(f"t{n}", "x" * n))
        for n in range(2):
            yield client.send(stream(n))
            yield server.receive()
        stats = server.get_stats()
        self.assertIsInstance(stats, ChannelStats)
        peer = client.get_stats()
        # AuthResponse + 5 requests out; AuthRequest + 5 responses + 2 stream messages in.
        self.assertEqual((stats.messages_sent, stats.messages_received), (6, 8))
        self.assertEqual((peer.messages_sent, peer.messages_received), (8, 6))
        self.assertEqual(stats.bytes_sent, peer.bytes_received)
        self.assertEqual(stats.bytes_received, peer.bytes_sent)
        self.assertEqual(stats.transport, self.transport)
        self.assertEqual((stats.connected, stats.connections), (True, 1))
        self.assertEqual((stats.connection_errors, stats.timeout_errors), (0, 0))
        self.assertEqual(stats.latency_samples, 5)
        self.assertGreater(stats.latency_mean, 0)
        self.assertLessEqual(stats.latency_p50, stats.latency_p99)
        self.assertGreaterEqual(stats.uptime, 0)

    # -- the handshake -----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_wrong_token_gets_a_refusing_auth_response_and_the_connection_closes(self) -> Gen:
        iid = instance("guarded")
        self.maker.registry.issue(iid)
        server = self.maker.channel(iid)
        address = yield server.listen()
        raw = yield connect_raw(address, self.maker.hub)
        raw.send(SpearMessage.auth_request(5, AuthRequest(str(iid), "not-the-secret", "t", "t")))
        yield raw.lost
        self.assertEqual(len(raw.messages), 1)
        refusal = raw.messages[0]
        self.assertEqual((refusal.message_type, refusal.request_id), (MessageType.AUTH_RESPONSE, 5))
        body = refusal.parse_payload()
        self.assertIsInstance(body, AuthResponse)
        self.assertFalse(body.success)
        self.assertIsNone(body.session_id)
        self.assertIn("invalid token", body.error_message)
        self.assertFalse(server.is_connected())

        client = self.maker.channel(iid, role=Role.AGENT, token="also-not-the-secret")
        yield self.assertFailure(self.maker.dial(client, address), AuthenticationFailed)
        self.assertFalse(client.is_connected())
        self.assertFalse(server.is_connected())

    @defer.inlineCallbacks
    def test_token_of_another_instance_is_refused(self) -> Gen:
        a, b = instance("alpha"), instance("beta")
        self.maker.registry.issue(a)
        token_b = self.maker.registry.issue(b)
        server_a = self.maker.channel(a)
        address = yield server_a.listen()
        # Alpha's id with beta's token.
        impostor = self.maker.channel(a, role=Role.AGENT, token=token_b)
        yield self.assertFailure(self.maker.dial(impostor, address), AuthenticationFailed)
        # Beta itself, with its valid token, at alpha's address.
        stray = self.maker.channel(b, role=Role.AGENT, token=token_b)
        error = yield self.assertFailure(self.maker.dial(stray, address), AuthenticationFailed)
        self.assertIn("another instance", str(error))
        self.assertFalse(server_a.is_connected())
        self.assertEqual(server_a.get_stats().connections, 0)

    @defer.inlineCallbacks
    def test_second_connection_of_a_connected_instance_is_refused_already_connected(self) -> Gen:
        log = EventLog()
        server, client = yield self.maker.pair(spearlet={"observer": log})
        EchoAgent(client)
        token = self.maker.registry.issue(server.instance_id)
        second = self.maker.channel(server.instance_id, role=Role.AGENT, token=token)
        error = yield self.assertFailure(self.maker.dial(second, server.address), AuthenticationError)
        self.assertIn("already has a live connection", str(error))
        refusals = log.of(ConnectionEventKind.AUTHENTICATION_FAILED)
        self.assertEqual([e.error_code for e in refusals], [ErrorCode.ALREADY_CONNECTED])
        # The first connection is untouched.
        response = yield server.request_response(execute("t", "still"))
        self.assertEqual(response.parse_payload().output, "process:worker-1:still")
        self.assertEqual(server.get_stats().connections, 1)

    # -- time, from a task.Clock ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_request_timeout_names_instance_and_request(self) -> Gen:
        clock = ClockReactor()
        server, client = yield self.maker.pair(reactor=clock, spearlet={"request_timeout": 5.0})
        agent = EchoAgent(client, answering=False)
        by_default = server.request_response(execute("default"))
        explicit = server.request_response(execute("explicit"), timeout=20)
        yield agent.when_requests(2)
        clock.advance(4.9)
        self.assertFalse(by_default.called)
        clock.advance(0.1)
        error = yield self.assertFailure(by_default, RequestTimeout)
        request_id = agent.requests[0].request_id
        self.assertEqual((error.instance_id, error.request_id), (server.instance_id, request_id))
        self.assertIn("process:worker-1", str(error))
        self.assertIn(f"request {request_id}", str(error))
        self.assertFalse(explicit.called)
        stats = server.get_stats()
        self.assertEqual((stats.timeout_errors, stats.outstanding_requests), (1, 1))

        # The response that comes after the timeout is discarded.
        yield client.send(answer(agent.requests[0], "late"))
        yield wait_until(lambda: server.get_stats().late_responses == 1, "the late response")
        self.assertEqual(server.get_stats().queued_messages, 0)

        clock.advance(15)
        error = yield self.assertFailure(explicit, RequestTimeout)
        self.assertEqual(error.request_id, agent.requests[1].request_id)
        self.assertEqual(server.get_stats().timeout_errors, 2)
        self.assertTrue(server.is_connected())

    @defer.inlineCallbacks
    def test_cancelling_a_request_stops_its_timeout(self) -> Gen:
        clock = ClockReactor()
        server, client = yield self.maker.pair(reactor=clock)
        agent = EchoAgent(client, answering=False)
        call = server.request_response(execute(), timeout=5)
        yield agent.when_requests(1)
        call.cancel()
        yield self.assertFailure(call, CancelledError)
        clock.advance(10)
        self.assertEqual(server.get_stats().timeout_errors, 0)

    @defer.inlineCallbacks
    def test_latency_and_uptime_follow_the_clock(self) -> Gen:
        clock = ClockReactor()
        server, client = yield self.maker.pair(reactor=clock)
        agent = EchoAgent(client, answering=False)
        self.assertEqual(server.get_stats().uptime, 0)
        for n, delay in enumerate([0.25, 0.5, 1.0]):
            call = server.request_response(execute())
            yield agent.when_requests(n + 1)
            clock.advance(delay)
            yield client.send(answer(agent.requests[n], "ok"))
            yield call
        stats = server.get_stats()
        self.assertEqual(stats.latency_samples, 3)
        self.assertAlmostEqual(stats.latency_mean, 1.75 / 3)
        self.assertEqual((stats.latency_p50, stats.latency_p99), (0.5, 1.0))
        self.assertEqual(stats.uptime, 1.75)
        clock.advance(10)
        self.assertEqual(server.get_stats().uptime, 11.75)

    @defer.inlineCallbacks
    def test_silent_connection_is_closed_after_the_auth_timeout(self) -> Gen:
        clock = ClockReactor()
        server = self.maker.channel(instance("silent"), reactor=clock, auth_timeout=5)
        address = yield server.listen()
        raw = yield connect_raw(address, self.maker.hub)
        yield wait_until(lambda: clock.getDelayedCalls(), "the spearlet accepting the connection")
        clock.advance(4.9)
        yield turns()
        self.assertEqual(raw.messages, [])
        self.assertFalse(raw.lost.called)
        clock.advance(0.1)
        yield raw.lost
        self.assertEqual([m.message_type for m in raw.messages], [MessageType.ERROR])
        body = raw.messages[0].parse_payload()
        self.assertEqual(body.error_code, ErrorCode.AUTHENTICATION_TIMEOUT)
        self.assertEqual(server.get_stats().connection_errors, 1)

    @defer.inlineCallbacks
    def test_heartbeat_sent_after_an_interval_of_silence(self) -> Gen:
        clock = ClockReactor()
        server_log, agent_log = EventLog(), EventLog()
        server, client = yield self.maker.pair(
            reactor=clock,
            spearlet={"heartbeat_interval": 10, "observer": server_log, "observe_messages": True},
            agent={"heartbeat_interval": 10, "observer": agent_log, "observe_messages": True},
        )
        sent = ConnectionEventKind.MESSAGE_SENT
        received = ConnectionEventKind.MESSAGE_RECEIVED
        clock.advance(9.9)
        self.assertEqual(server_log.messages(sent, MessageType.HEARTBEAT), [])
        clock.advance(0.1)
        self.assertEqual(len(server_log.messages(sent, MessageType.HEARTBEAT)), 1)
        self.assertEqual(len(agent_log.messages(sent, MessageType.HEARTBEAT)), 1)
        yield wait_until(
            lambda: (
                server_log.messages(received, MessageType.HEARTBEAT)
                and agent_log.messages(received, MessageType.HEARTBEAT)
            ),
            "both heartbeats arriving",
        )
        self.assertEqual(server.connection.heartbeat_sequence, 1)
        self.assertTrue(server.is_connected() and client.is_connected())

    @defer.inlineCallbacks
    def test_heartbeat_timeout_does_not_run_while_the_channel_holds_off_reading(self) -> Gen:
        # The spearlet stopped reading because its consumer is behind: the
        # agent's frames wait unread, so its silence cannot be judged, and
        # closing would drop what is waiting.
        clock = ClockReactor()
        size, count = 2, 12
        server, client = yield self.maker.pair(
            reactor=clock,
            spearlet={"receive_queue_size": size, "heartbeat_interval": None, "heartbeat_timeout": 25},
            agent={"heartbeat_interval": 10},
        )
        data = b"\x05" * 16 * 1024
        for n in range(count):
            client.send(stream(n, data))
        yield wait_until(lambda: server.connection._read_paused, "the spearlet pausing its reading")
        for _ in range(6):
            clock.advance(10)  # the agent keeps sending heartbeats, which wait unread
            yield turns(5)
        self.assertTrue(server.is_connected())
        received = []
        for _ in range(count):
            received.append((yield server.receive()).parse_payload().sequence)
        self.assertEqual(received, list(range(count)))
        self.assertEqual(server.get_stats().connection_errors, 0)
        self.assertFalse(server.connection._read_paused)

    @defer.inlineCallbacks
    def test_heartbeat_timeout_closes_and_fails_outstanding_requests(self) -> Gen:
        clock = ClockReactor()
        log = EventLog()
        server, client = yield self.maker.pair(
            reactor=clock,
            spearlet={"heartbeat_interval": None, "heartbeat_timeout": 25, "observer": log},
            agent={"heartbeat_interval": None},
        )
        agent = EchoAgent(client, answering=False)
        call = server.request_response(execute("stuck"), timeout=60)
        yield agent.when_requests(1)
        clock.advance(24.9)
        self.assertTrue(server.is_connected())
        clock.advance(0.1)
        error = yield self.assertFailure(call, ConnectionLost)
        self.assertEqual(error.instance_id, server.instance_id)
        self.assertIn("nothing received for 25 s", str(error))
        self.assertEqual(len(log.of(ConnectionEventKind.HEARTBEAT_TIMEOUT)), 1)
        yield agent.when(lambda: agent.other)
        told = agent.other[0].parse_payload()
        self.assertEqual(told.error_code, ErrorCode.HEARTBEAT_TIMEOUT)
        self.assertEqual(server.get_stats().connection_errors, 1)


class UnixChannelContractTests(ChannelContractMixin, TestCase):
    transport = "unix"


class TCPChannelContractTests(ChannelContractMixin, TestCase):
    transport = "tcp"


class GrpcChannelContractTests(ChannelContractMixin, TestCase):
    """The contract over the gRPC bridge: the agent's side dials with a Twisted ``ConnectCall``."""

    transport = "grpc"

    @defer.inlineCallbacks
    def test_round_trips_when_the_spearlet_dials(self) -> Gen:
        # Over gRPC the spearlet only listens: its side refuses to dial,
        # saying who does.
        iid = instance("worker-1")
        token = self.maker.registry.issue(iid)
        agent = self.maker.channel(iid, role=Role.AGENT, token=token)
        with self.assertRaises(ValueError) as raised:
            yield agent.listen()
        self.assertIn("dials the spearlet", str(raised.exception))
        server = self.maker.channel(iid)
        with self.assertRaises(ValueError) as raised:
            yield server.connect_to("127.0.0.1", 9)
        self.assertIn("agents dial it", str(raised.exception))
        yield self._round_trips(agent_dials=True)


class MemoryChannelContractTests(ChannelContractMixin, TestCase):
    transport = "memory"


class LatencyWindowTests(TestCase):
    def test_empty_window_reports_zeros(self) -> None:
        self.assertEqual(LatencyWindow().summary(), (0.0, 0.0, 0.0))

    def test_window_keeps_only_the_latest_samples(self) -> None:
        window = LatencyWindow()
        for _ in range(LATENCY_WINDOW):
            window.add(100.0)
        for n in range(1, LATENCY_WINDOW + 1):
            window.add(n / 1000)
        self.assertEqual(len(window), LATENCY_WINDOW)
        mean, p50, p99 = window.summary()
        self.assertAlmostEqual(mean, (LATENCY_WINDOW + 1) / 2 / 1000)
        self.assertEqual(p50, 512 / 1000)
        self.assertEqual(p99, 1014 / 1000)  # nearest rank: ceil(0.99 * 1024)


class _Gatekeeper:
    """Accepts every token; the owner is a recorder."""

    def __init__(self) -> None:
        self.lost: list[Any] = []
        self.messages: list[SpearMessage] = []

    def authenticate(self, connection: SpearProtocol, request: AuthRequest) -> Any:
        return defer.succeed(self)

    def connection_ready(self, connection: SpearProtocol) -> None:
        pass

    def message_received(self, connection: SpearProtocol, message: SpearMessage) -> None:
        self.messages.append(message)

    def connection_done(self, connection: SpearProtocol, error: Any) -> None:
        self.lost.append(error)

    def connection_lost_before_auth(self, connection: SpearProtocol, error: Any) -> None:
        self.lost.append(error)


class PausingTransport(StringTransport):
    """Pauses its producer on every write, as a full socket transport does."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None:
            self.producer.pauseProducing()


class ProtocolOverStringTransportTests(TestCase):
    """Buffering and close timing of one SpearProtocol, without sockets."""

    def _connected(
        self, clock: task.Clock, transport: StringTransport | None = None, **kwargs: Any
    ) -> tuple[SpearProtocol, StringTransport]:
        connection = SpearProtocol(role=Role.SPEARLET, clock=clock, gatekeeper=_Gatekeeper(), **kwargs)
        transport = transport or StringTransport()
        connection.makeConnection(transport)
        connection.dataReceived(
            SpearMessage.auth_request(1, credentials(instance("w"), "token-12345")).to_frame()
        )
        self.assertTrue(connection.authenticated)
        transport.clear()
        return connection, transport

    def test_sends_wait_in_order_while_the_transport_is_paused(self) -> None:
        connection, transport = self._connected(task.Clock())
        self.assertIs(transport.producer, connection)
        connection.pauseProducing()
        messages = [stream(n) for n in range(3)]
        waiting = [connection.send_message(m) for m in messages]
        self.assertEqual(transport.value(), b"")
        self.assertEqual(connection.queued_sends, 3)
        self.assertFalse(any(d.called for d in waiting))
        connection.resumeProducing()
        self.assertTrue(all(d.called for d in waiting))
        self.assertEqual(transport.value(), b"".join(m.to_frame() for m in messages))
        self.assertEqual(connection.queued_sends, 0)

    def test_close_flushes_every_queued_frame_even_when_each_write_pauses(self) -> None:
        # A socket transport above its high-water mark pauses its producer on
        # every write; close must still hand over everything queued, then
        # ConnectionClose (it once stopped after the first frame).
        connection, transport = self._connected(task.Clock(), PausingTransport())
        connection.resumeProducing()
        messages = [stream(n) for n in range(3)]
        waiting = [connection.send_message(m) for m in messages]
        self.assertEqual(connection.queued_sends, 2)
        closing = connection.close("bye")
        self.assertTrue(all(d.called for d in waiting))
        self.assertEqual(connection.queued_sends, 0)
        decoder = FrameDecoder()
        sent = [SpearMessage.deserialize(body) for body in decoder.feed(transport.value())]
        self.assertEqual(sent[:3], messages)
        self.assertEqual([m.message_type for m in sent[3:]], [MessageType.CONNECTION_CLOSE])
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)
        connection.connectionLost()
        self.successResultOf(closing)

    def test_lost_connection_fails_queued_sends(self) -> None:
        connection, _transport = self._connected(task.Clock())
        connection.pauseProducing()
        waiting = connection.send_message(stream(1, b"", "x"))
        connection.connectionLost()
        failure = self.failureResultOf(waiting, ConnectionLost)
        self.assertEqual(failure.value.instance_id, instance("w"))

    def test_close_that_cannot_flush_is_aborted_after_the_close_timeout(self) -> None:
        clock = task.Clock()
        connection, transport = self._connected(clock, close_timeout=3)
        closing = connection.close("bye")
        self.assertTrue(transport.disconnecting)
        sent = SpearMessage.deserialize(transport.value()[4:])
        self.assertEqual(sent.message_type, MessageType.CONNECTION_CLOSE)
        self.assertEqual(sent.parse_payload().reason, "bye")
        clock.advance(2.9)
        self.assertFalse(transport.disconnected)  # StringTransport: set by abortConnection
        clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertNoResult(closing)
        connection.connectionLost()
        self.successResultOf(closing)
        self.assertEqual(clock.getDelayedCalls(), [])

    def _agent(self) -> tuple[SpearProtocol, StringTransport, _Gatekeeper]:
        owner = _Gatekeeper()
        connection = SpearProtocol(
            role=Role.AGENT,
            clock=task.Clock(),
            owner=owner,
            credentials=credentials(instance("w"), "token-12345"),
        )
        transport = StringTransport()
        connection.makeConnection(transport)
        return connection, transport, owner

    def test_large_frame_in_the_same_read_as_the_auth_response_gets_the_full_limit(self) -> None:
        accepted = SpearMessage.auth_response(0, AuthResponse(True, None, "session", "test", ()))
        big = stream(1, b"\x04" * 100 * 1024)
        frame = big.to_frame()
        self.assertGreater(len(frame), ChannelConfig().max_preauth_message_size)
        for split in [None, 2, 4 + 10]:
            connection, transport, owner = self._agent()
            data = accepted.to_frame() + frame
            if split is None:
                connection.dataReceived(data)
            else:
                # The prefix (or body) of the large frame cut across reads.
                cut = len(accepted.to_frame()) + split
                connection.dataReceived(data[:cut])
                connection.dataReceived(data[cut:])
            self.assertTrue(connection.authenticated)
            self.assertEqual(owner.messages, [big])
            self.assertFalse(transport.disconnecting)

    def test_oversized_frame_before_auth_is_refused_at_its_prefix(self) -> None:
        connection = SpearProtocol(role=Role.SPEARLET, clock=task.Clock(), gatekeeper=_Gatekeeper())
        transport = StringTransport()
        connection.makeConnection(transport)
        limit = ChannelConfig().max_preauth_message_size
        connection.dataReceived(struct.pack(">I", limit + 1) + b"x" * 1000)
        error = SpearMessage.deserialize(transport.value()[4:]).parse_payload()
        self.assertEqual(error.error_code, ErrorCode.MESSAGE_TOO_LARGE)
        self.assertTrue(transport.disconnecting)
        # Nothing of it was kept.
        self.assertEqual(connection._decoder.buffered, 0)  # no public view of the decoder

    def test_heartbeat_timeout_waits_while_reading_is_held_off_then_runs_again(self) -> None:
        clock = task.Clock()
        config = ChannelConfig(heartbeat_interval=None, heartbeat_timeout=25).session_config()
        connection, transport = self._connected(clock, session_config=config)
        connection.pause_reading()
        self.assertEqual(transport.producerState, "paused")
        for _ in range(10):
            clock.advance(25)
        self.assertFalse(transport.disconnecting)
        connection.resume_reading()
        self.assertEqual(transport.producerState, "producing")
        clock.advance(24.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        error = SpearMessage.deserialize(transport.value()[4:]).parse_payload()
        self.assertEqual(error.error_code, ErrorCode.HEARTBEAT_TIMEOUT)

    def test_auth_timeout_with_a_clock(self) -> None:
        clock = task.Clock()
        connection = SpearProtocol(
            role=Role.SPEARLET,
            clock=clock,
            gatekeeper=_Gatekeeper(),
            session_config=ChannelConfig(auth_timeout=2).session_config(),
        )
        transport = StringTransport()
        connection.makeConnection(transport)
        clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.1)
        error = SpearMessage.deserialize(transport.value()[4:]).parse_payload()
        self.assertEqual(error.error_code, ErrorCode.AUTHENTICATION_TIMEOUT)
        self.assertTrue(transport.disconnecting)
