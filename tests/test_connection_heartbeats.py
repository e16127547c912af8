"""Heartbeats, the heartbeat timeout and the idle timeout, over real sockets with a ``task.Clock``."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from spear_twisted.channels.events import ConnectionEvent, ConnectionEventKind
from spear_twisted.errors import ErrorCode
from spear_twisted.wire import HeartbeatMessage, MessageType, SpearMessage
from tests.channel_support import ClockReactor, turns, wait_until
from tests.connection_support import (
    Gen,
    agent_channel,
    auth_request,
    connect_raw,
    dial,
    error_of,
    instance,
    make_manager,
)

K = ConnectionEventKind


def heartbeat_in(event: ConnectionEvent) -> bool:
    return event.kind is K.MESSAGE_RECEIVED and event.message_type is MessageType.HEARTBEAT


class HeartbeatTests(TestCase):
    def setUp(self) -> None:
        self.clock = ClockReactor()

    @defer.inlineCallbacks
    def test_both_sides_send_a_heartbeat_after_an_interval_of_silence(self) -> Gen:
        manager = make_manager(
            self, reactor=self.clock, heartbeat_interval=10, heartbeat_timeout=30, connection_timeout=None
        )
        assert manager.secrets is not None
        address = yield manager.start_listening()
        spearlet_events: list[ConnectionEvent] = []
        manager.subscribe(spearlet_events.append, messages=True)
        agent_events: list[ConnectionEvent] = []
        worker = instance("w")
        agent = agent_channel(
            self,
            worker,
            manager.secrets.issue(worker),
            reactor=self.clock,
            observer=lambda _connection, event: agent_events.append(event),
            observe_messages=True,
            heartbeat_interval=10,
            heartbeat_timeout=30,
        )
        yield dial(agent, address)

        def heartbeats(events: list[ConnectionEvent], kind: ConnectionEventKind) -> int:
            return sum(e.kind is kind and e.message_type is MessageType.HEARTBEAT for e in events)

        self.clock.advance(9.9)
        yield turns()
        self.assertEqual(heartbeats(spearlet_events, K.MESSAGE_SENT), 0)
        self.clock.advance(0.1)
        yield wait_until(
            lambda: (
                heartbeats(spearlet_events, K.MESSAGE_RECEIVED) == 1
                and heartbeats(agent_events, K.MESSAGE_RECEIVED) == 1
            ),
            "a heartbeat each way",
        )
        self.assertEqual(heartbeats(spearlet_events, K.MESSAGE_SENT), 1)
        state = manager.get_connection_by_instance(worker)
        self.assertEqual(state.heartbeat_sequence, 1)
        self.assertEqual(state.last_activity, 10.0)
        # Silence again: the next ones come an interval later, numbered on.
        self.clock.advance(10)
        yield wait_until(lambda: heartbeats(spearlet_events, K.MESSAGE_RECEIVED) == 2, "the second heartbeat")
        self.assertEqual(manager.get_connection_by_instance(worker).heartbeat_sequence, 2)
        self.assertTrue(agent.is_connected())

    @defer.inlineCallbacks
    def heartbeating(self, connection_timeout: float | None) -> Gen:
        """An agent channel authenticated to a manager; both heartbeat every 10 s, time out after 25 s."""
        timing = {"heartbeat_interval": 10, "heartbeat_timeout": 25}
        manager = make_manager(self, reactor=self.clock, connection_timeout=connection_timeout, **timing)
        assert manager.secrets is not None
        address = yield manager.start_listening()
        self.received: list[ConnectionEvent] = []
        manager.subscribe(lambda e: self.received.append(e) if heartbeat_in(e) else None, messages=True)
        worker = instance("w")
        agent = agent_channel(self, worker, manager.secrets.issue(worker), reactor=self.clock, **timing)
        yield dial(agent, address)
        return manager, agent

    @defer.inlineCallbacks
    def exchange(self, count: int) -> Gen:
        """Let ``count`` intervals pass, each with the agent's heartbeat arriving."""
        for _ in range(count):
            expected = len(self.received) + 1
            self.clock.advance(10)
            yield wait_until(lambda n=expected: len(self.received) == n, f"heartbeat {expected}")

    @defer.inlineCallbacks
    def test_heartbeats_keep_an_agent_that_answers_connected(self) -> Gen:
        manager, agent = yield self.heartbeating(connection_timeout=None)
        yield self.exchange(40)
        self.assertTrue(agent.is_connected())
        self.assertEqual(manager.get_connection_count(), 1)

    @defer.inlineCallbacks
    def test_nothing_received_for_the_heartbeat_timeout_closes_with_a_heartbeat_timeout_event(self) -> Gen:
        manager = make_manager(self, reactor=self.clock, heartbeat_interval=10, heartbeat_timeout=30)
        assert manager.secrets is not None
        address = yield manager.start_listening()
        events: list[ConnectionEvent] = []
        manager.subscribe(events.append)
        worker = instance("w")
        raw = yield connect_raw(self, address)
        raw.send(auth_request(worker, manager.secrets.issue(worker)))
        yield raw.when_messages(1)
        for _ in range(2):
            self.clock.advance(10)
            yield turns()
        self.assertFalse(raw.lost.called)
        self.clock.advance(10)
        yield raw.lost
        kinds = [m.message_type for m in raw.messages]
        self.assertEqual(
            kinds,
            [MessageType.AUTH_RESPONSE, MessageType.HEARTBEAT, MessageType.HEARTBEAT, MessageType.ERROR],
        )
        self.assertEqual(
            [raw.messages[1].parse_payload().sequence, raw.messages[2].parse_payload().sequence], [1, 2]
        )
        self.assertIsInstance(raw.messages[1].parse_payload(), HeartbeatMessage)
        error = error_of(raw.messages[-1])
        self.assertEqual(error.error_code, ErrorCode.HEARTBEAT_TIMEOUT)
        self.assertEqual(error.message, "nothing received for 30 s")
        yield wait_until(lambda: events[-1].kind is K.DISCONNECTED, "the Disconnected event")
        self.assertEqual(
            [e.kind for e in events],
            [K.CONNECTED, K.AUTHENTICATED, K.HEARTBEAT_TIMEOUT, K.ERROR, K.DISCONNECTED],
        )
        self.assertEqual(events[3].error_code, ErrorCode.HEARTBEAT_TIMEOUT)
        self.assertEqual(manager.get_connection_count(), 0)
        self.assertIsNone(manager.get_connection_by_instance(worker))
        self.assertEqual(manager.monitoring.system.heartbeat_timeouts, 1)

    @defer.inlineCallbacks
    def test_an_authenticated_connection_with_only_heartbeats_is_closed_after_the_connection_timeout(
        self,
    ) -> Gen:
        _manager, agent = yield self.heartbeating(connection_timeout=60)
        lost = agent.connection.when_lost()
        messages: list[SpearMessage] = []
        agent.receive().addCallback(messages.append)
        yield self.exchange(5)
        self.assertTrue(agent.is_connected())
        self.clock.advance(10)
        yield lost
        [message] = messages
        error = error_of(message)
        self.assertEqual(error.error_code, ErrorCode.IDLE_TIMEOUT)
        self.assertEqual(error.message, "no traffic for 60 s")
