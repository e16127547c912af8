"""
The session core over a transport whose messages arrive whole.

``MessagePipe`` is the smallest such transport: two ends in one process that
hand ``SpearMessage`` objects (never bytes) to each other on the next turn of
a ``task.Clock``.  It stands for what the gRPC bridge does with one stream
(PROTOCOL.md section 8): the session machinery of
:class:`SpearSessionProtocol` (handshake, gatekeeper and owner, heartbeats
and deadlines, the send queue, close) runs unchanged, with no framing.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from spear_twisted.auth import SecretRegistry
from spear_twisted.channels.channel import Channel
from spear_twisted.channels.config import ChannelConfig
from spear_twisted.channels.interfaces import ICommunicationChannel
from spear_twisted.channels.protocol import SpearProtocol
from spear_twisted.channels.session_protocol import (
    IConnectionGatekeeper,
    IConnectionOwner,
    SpearSessionProtocol,
)
from spear_twisted.errors import (
    AuthenticationFailed,
    ConnectionLost,
    ErrorCode,
    FrameTooLarge,
    RequestTimeout,
)
from spear_twisted.wire import (
    AuthRequest,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionStatus,
    MessageType,
    Role,
    RuntimeInstanceId,
    RuntimeType,
    SpearMessage,
)

INSTANCE = RuntimeInstanceId(RuntimeType.KUBERNETES, "pod-1")
SECRET = "secret-token-1234"


@attrs.frozen
class PipeAddress:
    name: str


@implementer(IConsumer, IPushProducer)
class MessagePipe:
    """One end of an in-process pipe of whole messages."""

    def __init__(self, clock: task.Clock, name: str, high_water: int = 8) -> None:
        self.clock = clock
        self.name = name
        self.high_water = high_water
        self.protocol: MessageProtocol | None = None
        self.peer: MessagePipe = self
        self.producer: Any = None
        self.producer_paused = False
        self.reading_paused = False
        self.disconnecting = False
        self.disconnected = False
        self.aborted = False
        #: Messages written here that the peer has not read yet.
        self.in_flight: deque[SpearMessage] = deque()
        #: Every message this end wrote, as objects.
        self.written: list[SpearMessage] = []

    @classmethod
    def pair(cls, clock: task.Clock) -> tuple[MessagePipe, MessagePipe]:
        server, client = cls(clock, "server"), cls(clock, "client")
        server.peer, client.peer = client, server
        return server, client

    def connect(self, protocol: MessageProtocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    # -- what the protocol calls -------------------------------------------------------------

    def getPeer(self) -> PipeAddress:
        return PipeAddress(self.peer.name)

    def getHost(self) -> PipeAddress:
        return PipeAddress(self.name)

    def send(self, message: SpearMessage) -> None:
        if self.disconnected or self.aborted:
            return
        self.written.append(message)
        self.in_flight.append(message)
        if self.producer is not None and len(self.in_flight) > self.high_water and not self.producer_paused:
            self.producer_paused = True
            self.producer.pauseProducing()
        self.clock.callLater(0, self.peer.deliver)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.reading_paused = True

    def resumeProducing(self) -> None:
        self.reading_paused = False
        self.clock.callLater(0, self.deliver)

    def stopProducing(self) -> None:
        self.loseConnection()

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.clock.callLater(0, self.peer.deliver)

    def abortConnection(self) -> None:
        self.aborted = True
        self.in_flight.clear()
        self.clock.callLater(0, self._lose_both)

    # -- moving messages -------------------------------------------------------------------------

    def deliver(self) -> None:
        """Hand the peer's in-flight messages to this end's protocol."""
        peer = self.peer
        while peer.in_flight and not self.reading_paused and not self.disconnected:
            message = peer.in_flight.popleft()
            assert self.protocol is not None
            if self.protocol.accepts_messages:
                self.protocol.receive_whole(message)
        if peer.producer is not None and peer.producer_paused and len(peer.in_flight) <= peer.high_water // 2:
            peer.producer_paused = False
            peer.producer.resumeProducing()
        if (peer.disconnecting or self.disconnecting) and not peer.in_flight and not self.in_flight:
            self._lose_both()

    def _lose_both(self) -> None:
        for end in (self, self.peer):
            if not end.disconnected:
                end.disconnected = True
                assert end.protocol is not None
                end.protocol.connectionLost(Failure(ConnectionDone()))


class MessageProtocol(SpearSessionProtocol):
    """The session core over a MessagePipe: no framing, no re-encoding."""

    def receive_whole(self, message: SpearMessage) -> None:
        """A message arrived; held to the size limit as a gRPC bridge would hold it."""
        size = len(message.payload)
        if size > self.max_message_size:
            self.protocol_error(FrameTooLarge("message too large", length=size, limit=self.max_message_size))
            return
        self.message_received(message, size)

    def write_message(self, message: SpearMessage) -> int:
        pipe = self.transport
        assert isinstance(pipe, MessagePipe)
        pipe.send(message)
        return len(message.payload)


def request(n: int = 0) -> SpearMessage:
    return SpearMessage.execute_request(0, ExecuteRequest(f"task-{n}", "echo"))


def response_to(message: SpearMessage) -> SpearMessage:
    body = ExecuteResponse("task", ExecutionStatus.COMPLETED, "done")
    return SpearMessage.execute_response(message.request_id, body)


class WholeMessageSessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.make_channels(ChannelConfig(heartbeat_interval=10, heartbeat_timeout=30, request_timeout=5))

    def make_channels(self, config: ChannelConfig) -> None:
        self.clock = task.Clock()
        registry = SecretRegistry()
        registry.register(INSTANCE, SECRET)
        self.config = config
        self.spearlet = Channel(INSTANCE, reactor=self.clock, config=self.config, validator=registry)
        self.agent_channel = Channel(
            INSTANCE,
            reactor=self.clock,
            config=self.config,
            role=Role.AGENT,
            credentials=AuthRequest(str(INSTANCE), SECRET, "1.0", "test"),
        )

    def connect(
        self, agent_credentials: AuthRequest | None = None
    ) -> tuple[MessageProtocol, MessageProtocol]:
        server_pipe, client_pipe = MessagePipe.pair(self.clock)
        self.server_pipe, self.client_pipe = server_pipe, client_pipe
        server = self.spearlet.build_connection(MessageProtocol)
        if agent_credentials is None:
            client = self.agent_channel.build_connection(MessageProtocol)
        else:
            client = MessageProtocol(
                role=Role.AGENT, clock=self.clock, owner=self.agent_channel, credentials=agent_credentials
            )
        assert isinstance(server, MessageProtocol) and isinstance(client, MessageProtocol)
        server_pipe.connect(server)
        client_pipe.connect(client)
        return server, client

    def pump(self, turns: int = 20) -> None:
        for _ in range(turns):
            self.clock.advance(0)

    def test_handshake_and_round_trip_carry_message_objects(self) -> None:
        server, client = self.connect()
        self.pump()
        self.assertTrue(server.authenticated and client.authenticated)
        self.assertTrue(self.spearlet.is_connected())
        self.assertEqual(server.instance_id, INSTANCE)
        self.assertIsNotNone(server.session_id)
        answering = self.agent_channel.receive()
        result = self.spearlet.request_response(request(1))
        self.pump()
        incoming = self.successResultOf(answering)
        # The very object the spearlet wrote: nothing was encoded on the way.
        self.assertIs(incoming, self.server_pipe.written[-1])
        self.agent_channel.send(response_to(incoming))
        self.pump()
        answer = self.successResultOf(result)
        self.assertEqual(answer.message_type, MessageType.EXECUTE_RESPONSE)
        self.assertEqual(answer.request_id, incoming.request_id)
        stats = self.spearlet.get_stats()
        self.assertEqual((stats.messages_received, stats.latency_samples), (2, 1))

    def test_bad_token_is_refused_with_an_auth_response_and_both_ends_close(self) -> None:
        server, client = self.connect(AuthRequest(str(INSTANCE), "wrong-token", "1.0", "test"))
        ready = client.when_ready()
        self.pump()
        failure = self.failureResultOf(ready, AuthenticationFailed)
        self.assertIn("invalid token", failure.value.message)
        answer = self.server_pipe.written[0]
        self.assertEqual(answer.message_type, MessageType.AUTH_RESPONSE)
        self.assertFalse(answer.parse_payload().success)
        self.assertTrue(server.is_lost and client.is_lost)
        self.assertFalse(self.spearlet.is_connected())

    def test_heartbeats_flow_and_silence_times_out_on_the_clock(self) -> None:
        server, client = self.connect()
        self.pump()
        self.clock.advance(10)
        self.pump()
        kinds = [m.message_type for m in self.client_pipe.written]
        self.assertIn(MessageType.HEARTBEAT, kinds)
        # From now on nothing the agent sends reaches the spearlet.
        self.server_pipe.reading_paused = True
        lost = server.when_lost()
        self.clock.advance(29.9)
        self.assertNoResult(lost)
        self.clock.advance(0.1)
        error = self.server_pipe.written[-1]
        self.assertEqual(error.message_type, MessageType.ERROR)
        self.assertEqual(error.parse_payload().error_code, ErrorCode.HEARTBEAT_TIMEOUT)
        # The close cannot flush (the spearlet reads nothing): it is aborted
        # after the close timeout, by the connection's one timer.
        self.clock.advance(self.config.close_timeout)
        self.pump()
        self.successResultOf(lost)
        self.assertTrue(client.is_lost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_request_timeout_and_connection_loss_fail_requests_on_the_clock(self) -> None:
        _server, client = self.connect()
        self.pump()
        timing_out = self.spearlet.request_response(request(1), timeout=2)
        outstanding = self.spearlet.request_response(request(2), timeout=60)
        self.clock.advance(1.9)
        self.assertNoResult(timing_out)
        self.clock.advance(0.1)
        self.failureResultOf(timing_out, RequestTimeout)
        self.assertNoResult(outstanding)
        client.abort()
        self.pump()
        failure = self.failureResultOf(outstanding, ConnectionLost)
        self.assertEqual(failure.value.instance_id, INSTANCE)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_request_deadlines_share_one_timer_and_each_fires_exactly_on_time(self) -> None:
        self.make_channels(ChannelConfig(heartbeat_interval=None, heartbeat_timeout=None))
        self.connect()
        self.pump()
        timeouts = [30.0, 10.0, 20.0, 5.0, 40.0, 10.0]
        calls = [self.spearlet.request_response(request(n), timeout=t) for n, t in enumerate(timeouts)]
        self.pump()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the channel's one deadline timer
        elapsed = 0.0
        for deadline in sorted(set(timeouts)):
            self.clock.advance(deadline - elapsed - 0.01)
            for call, timeout in zip(calls, timeouts, strict=True):
                if timeout >= deadline:
                    self.assertNoResult(call)
            self.clock.advance(0.01)
            elapsed = deadline
            for call, timeout in zip(calls, timeouts, strict=True):
                if timeout == deadline:
                    failure = self.failureResultOf(call, RequestTimeout)
                    self.assertIn(f"{timeout:g} s", failure.value.message)
        self.assertEqual(self.spearlet.get_stats().timeout_errors, len(timeouts))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_request_made_while_requests_time_out_keeps_every_deadline(self) -> None:
        self.make_channels(ChannelConfig(heartbeat_interval=None, heartbeat_timeout=None))
        self.connect()
        self.pump()
        later = self.spearlet.request_response(request(1), timeout=100)
        made: list[Deferred[SpearMessage]] = []

        def again(failure: Failure) -> None:
            # From inside the timeout: a long request while one at 100 s runs.
            made.append(self.spearlet.request_response(request(3), timeout=500))

        self.spearlet.request_response(request(2), timeout=10).addErrback(again)
        self.clock.advance(10)
        self.assertEqual(len(made), 1)
        self.clock.advance(89.9)
        self.assertNoResult(later)
        self.clock.advance(0.1)
        self.failureResultOf(later, RequestTimeout)
        self.clock.advance(409.9)
        self.assertNoResult(made[0])
        self.clock.advance(0.1)
        self.failureResultOf(made[0], RequestTimeout)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_requests_answered_out_of_order_keep_the_deadline_heap_bounded(self) -> None:
        self.make_channels(ChannelConfig(heartbeat_interval=None, heartbeat_timeout=None, request_timeout=60))
        self.connect()
        self.pump()
        arriving = [self.agent_channel.receive() for _ in range(300)]
        calls = [self.spearlet.request_response(request(n)) for n in range(300)]
        self.pump()
        requests = [self.successResultOf(d) for d in arriving]
        for count, incoming in enumerate(reversed(requests), 1):
            self.agent_channel.send(response_to(incoming))
            self.pump(2)
            outstanding = 300 - count
            self.assertEqual(self.spearlet.get_stats().outstanding_requests, outstanding)
            self.assertLessEqual(len(self.spearlet._deadlines), 2 * outstanding + 64)
            self.assertLessEqual(len(self.clock.getDelayedCalls()), 1)
        for call in calls:
            self.successResultOf(call)
        self.clock.advance(60)
        self.assertEqual(self.spearlet.get_stats().timeout_errors, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sends_wait_while_the_transport_is_full_and_go_in_order(self) -> None:
        server, _client = self.connect()
        self.pump()
        received: list[Deferred[SpearMessage]] = [self.agent_channel.receive() for _ in range(20)]
        self.client_pipe.reading_paused = True
        sent = [self.spearlet.send(request(n)) for n in range(20)]
        self.assertGreater(server.queued_sends, 0)
        self.assertNoResult(sent[-1])
        self.client_pipe.resumeProducing()
        self.pump(60)
        for waiter in sent:
            self.successResultOf(waiter)
        tasks = [self.successResultOf(d).parse_payload().task_id for d in received]
        self.assertEqual(tasks, [f"task-{n}" for n in range(20)])

    def test_oversized_message_before_auth_is_a_protocol_error(self) -> None:
        server, _client = self.connect(AuthRequest(str(INSTANCE), "x" * 100_000, "1.0", "test"))
        self.pump()
        error = self.server_pipe.written[0]
        self.assertEqual(error.parse_payload().error_code, ErrorCode.MESSAGE_TOO_LARGE)
        self.assertTrue(server.is_lost)

    def test_close_sends_connection_close_and_is_idempotent(self) -> None:
        _server, client = self.connect()
        self.pump()
        closing = self.spearlet.close()
        again = self.spearlet.close()
        self.pump()
        self.successResultOf(closing)
        self.successResultOf(again)
        self.assertEqual(self.server_pipe.written[-1].message_type, MessageType.CONNECTION_CLOSE)
        self.assertTrue(client.is_lost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_contracts_are_provided(self) -> None:
        server, client = self.connect()
        self.pump()
        self.assertTrue(verifyObject(IPushProducer, server))
        self.assertTrue(verifyObject(IConnectionOwner, self.spearlet))
        self.assertTrue(verifyObject(IConnectionGatekeeper, self.spearlet))
        self.assertTrue(verifyObject(IConnectionOwner, self.agent_channel))
        self.assertTrue(verifyObject(ICommunicationChannel, self.spearlet))
        self.assertIs(self.spearlet.connection, server)
        self.assertIs(self.agent_channel.connection, client)

    def test_stream_protocol_is_the_core_plus_framing(self) -> None:
        self.assertTrue(issubclass(SpearProtocol, SpearSessionProtocol))
        self.assertIs(Channel.protocol_type, SpearProtocol)
        with self.assertRaises(NotImplementedError):
            SpearSessionProtocol(
                role=Role.AGENT, clock=self.clock, credentials=AuthRequest("a:b", "t")
            ).write_message(request())
