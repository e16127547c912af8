"""Connection events, states and the manager's connection API, over real sockets."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from spear_twisted.channels.events import ConnectionEvent, ConnectionEventKind
from spear_twisted.channels.protocol import SpearProtocol
from spear_twisted.connections import ConnectionManager, ConnectionState
from spear_twisted.errors import AuthenticationFailed, ConnectionClosed, ErrorCode
from spear_twisted.wire import CloseMessage, ConnectionStatus, MessageType, SessionState
from tests.channel_support import ClockReactor, EchoAgent, execute, wait_until
from tests.connection_support import (
    Gen,
    agent_channel,
    connect_raw,
    dial,
    instance,
    make_manager,
)

K = ConnectionEventKind


class EventTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Gen:
        self.manager = make_manager(self)
        assert self.manager.secrets is not None
        self.secrets = self.manager.secrets
        self.address = yield self.manager.start_listening()
        self.events: list[ConnectionEvent] = []

    @defer.inlineCallbacks
    def connected_agent(self, name: str = "w") -> Gen:
        worker = instance(name)
        agent = agent_channel(self, worker, self.secrets.issue(worker))
        yield dial(agent, self.address)
        EchoAgent(agent)
        channel = yield self.manager.channel_for(worker).when_connected()
        return agent, channel

    @defer.inlineCallbacks
    def test_a_whole_connection_in_order_with_message_events(self) -> Gen:
        self.manager.subscribe(self.events.append, messages=True)
        agent, channel = yield self.connected_agent()
        local_port = agent.connection.transport.getHost().port
        yield channel.request_response(execute("t", "x"))
        yield agent.close()
        yield wait_until(lambda: self.events[-1].kind is K.DISCONNECTED, "the Disconnected event")
        self.assertEqual(
            [(e.kind, e.message_type) for e in self.events],
            [
                (K.CONNECTED, None),
                (K.MESSAGE_RECEIVED, MessageType.AUTH_REQUEST),
                (K.MESSAGE_SENT, MessageType.AUTH_RESPONSE),
                (K.AUTHENTICATED, None),
                (K.MESSAGE_SENT, MessageType.EXECUTE_REQUEST),
                (K.MESSAGE_RECEIVED, MessageType.EXECUTE_RESPONSE),
                (K.MESSAGE_RECEIVED, MessageType.CONNECTION_CLOSE),
                (K.DISCONNECTED, None),
            ],
        )
        self.assertEqual({e.connection_id for e in self.events}, {self.events[0].connection_id})
        self.assertEqual(self.events[0].remote_addr, f"127.0.0.1:{local_port}")
        self.assertEqual(self.events[3].client_type, "test")
        self.assertIsNone(self.events[-1].reason, "an orderly close is no error")
        self.assertTrue(all(e.size and e.size > 4 for e in self.events if e.message_type is not None))
        times = [e.time for e in self.events]
        self.assertEqual(times, sorted(times))

    @defer.inlineCallbacks
    def test_without_asking_for_messages_a_subscriber_gets_the_lifecycle_only(self) -> Gen:
        self.manager.subscribe(self.events.append)
        agent, channel = yield self.connected_agent()
        yield channel.request_response(execute())
        yield agent.close()
        yield wait_until(lambda: self.events[-1].kind is K.DISCONNECTED, "the Disconnected event")
        self.assertEqual([e.kind for e in self.events], [K.CONNECTED, K.AUTHENTICATED, K.DISCONNECTED])

    @defer.inlineCallbacks
    def test_authentication_failure_events(self) -> Gen:
        self.manager.subscribe(self.events.append)
        worker = instance("w")
        agent = agent_channel(self, worker, "wrong-token-123")
        yield self.assertFailure(dial(agent, self.address), AuthenticationFailed)
        yield wait_until(
            lambda: self.events and self.events[-1].kind is K.DISCONNECTED, "the Disconnected event"
        )
        self.assertEqual(
            [e.kind for e in self.events], [K.CONNECTED, K.AUTHENTICATION_FAILED, K.DISCONNECTED]
        )
        failed = self.events[1]
        self.assertEqual((failed.instance_id, failed.error_code), (worker, ErrorCode.AUTHENTICATION_FAILED))
        self.assertEqual(failed.reason, "invalid token")

    @defer.inlineCallbacks
    def test_refused_connection_events(self) -> Gen:
        manager = make_manager(self, max_connections=1)
        manager.subscribe(self.events.append)
        address = yield manager.start_listening()
        first = yield connect_raw(self, address)
        yield wait_until(lambda: manager.get_connection_count() == 1, "the first connection")
        second = yield connect_raw(self, address)
        yield second.lost
        yield wait_until(lambda: len(self.events) == 4, "four events")
        self.assertEqual([e.kind for e in self.events], [K.CONNECTED, K.CONNECTED, K.ERROR, K.DISCONNECTED])
        self.assertEqual(self.events[2].error_code, ErrorCode.TOO_MANY_CONNECTIONS)
        self.assertEqual(self.events[2].connection_id, self.events[3].connection_id)
        self.assertNotEqual(self.events[0].connection_id, self.events[2].connection_id)
        self.assertFalse(first.lost.called)

    @defer.inlineCallbacks
    def test_a_failing_subscriber_is_logged_and_the_others_still_served(self) -> Gen:
        def broken(event: ConnectionEvent) -> None:
            raise ValueError("subscriber bug")

        unsubscribe = self.manager.subscribe(broken)
        self.manager.subscribe(self.events.append)
        yield self.connected_agent()
        unsubscribe()
        self.assertEqual([e.kind for e in self.events], [K.CONNECTED, K.AUTHENTICATED])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)

    @defer.inlineCallbacks
    def test_unsubscribing_stops_delivery_and_message_events_when_nobody_wants_them(self) -> Gen:
        manager = make_manager(self, enable_monitoring=False)
        assert manager.secrets is not None
        self.secrets = manager.secrets
        self.manager = manager
        self.address = yield manager.start_listening()
        unsubscribe = manager.subscribe(self.events.append, messages=True)
        _agent, channel = yield self.connected_agent()
        [connection] = [c for c in manager.admission.open.values()]
        self.assertTrue(connection.observe_messages)
        yield channel.request_response(execute())
        count = len(self.events)
        unsubscribe()
        self.assertFalse(connection.observe_messages)
        self.assertFalse(manager.observes_messages)
        yield channel.request_response(execute())
        self.assertEqual(len(self.events), count)
        # Subscribing for messages turns them on again, for open connections too.
        manager.subscribe(self.events.append, messages=True)
        self.assertTrue(connection.observe_messages)
        yield channel.request_response(execute())
        self.assertEqual(
            [e.message_type for e in self.events[count:]],
            [MessageType.EXECUTE_REQUEST, MessageType.EXECUTE_RESPONSE],
        )


class MonitoringFeedTests(TestCase):
    @defer.inlineCallbacks
    def run_traffic(self, manager: ConnectionManager, requests: int) -> Gen:
        """Count the calls to the connection observer while an agent authenticates and serves requests."""
        calls: list[ConnectionEvent] = []
        observe = manager.observe

        def counting(connection: SpearProtocol, event: ConnectionEvent) -> None:
            calls.append(event)
            observe(connection, event)

        manager.observe = counting  # type: ignore[method-assign]
        manager.factory.observer = counting
        assert manager.secrets is not None
        address = yield manager.start_listening()
        worker = instance("w")
        agent = agent_channel(self, worker, manager.secrets.issue(worker))
        yield dial(agent, address)
        EchoAgent(agent)
        channel = yield manager.channel_for(worker).when_connected()
        for _ in range(requests):
            yield channel.request_response(execute())
        return calls

    @defer.inlineCallbacks
    def test_disabled_monitoring_costs_no_observer_call_per_message(self) -> Gen:
        manager = make_manager(self, enable_monitoring=False)
        calls = yield self.run_traffic(manager, 50)
        self.assertEqual([e.kind for e in calls], [K.CONNECTED, K.AUTHENTICATED])
        self.assertEqual(manager.monitoring.snapshot()["system"]["connections_total"], 0)

    @defer.inlineCallbacks
    def test_monitoring_without_message_tracking_costs_no_observer_call_per_message(self) -> Gen:
        from spear_twisted.monitoring import MonitoringConfig, MonitoringService

        monitoring = MonitoringService(MonitoringConfig(enable_message_tracking=False))
        manager = make_manager(self, monitoring=monitoring)
        calls = yield self.run_traffic(manager, 50)
        self.assertEqual([e.kind for e in calls], [K.CONNECTED, K.AUTHENTICATED])
        self.assertEqual(monitoring.system.authentications, 1)

    @defer.inlineCallbacks
    def test_the_manager_feeds_connection_message_and_performance_figures(self) -> Gen:
        manager = make_manager(self)
        calls = yield self.run_traffic(manager, 3)
        self.assertEqual(len(calls), 2 + 2 + 3 * 2)
        snapshot = manager.monitoring.snapshot()
        system = snapshot["system"]
        self.assertEqual((system["connections_total"], system["connections_active"]), (1, 1))
        self.assertEqual(system["authentications"], 1)
        self.assertEqual((system["messages_received"], system["messages_sent"]), (4, 4))
        self.assertEqual(snapshot["message_types"]["outgoing:ExecuteRequest"]["count"], 3)
        self.assertEqual(snapshot["message_types"]["incoming:AuthRequest"]["count"], 1)
        [figures] = snapshot["connections"].values()
        self.assertEqual((figures["instance_id"], figures["authenticated"]), ("process:w", True))
        self.assertEqual(figures["messages_received"], 4)
        self.assertEqual(snapshot["performance"]["authentication"]["count"], 1)
        text = manager.monitoring.metrics_text().decode()
        self.assertIn('spear_authentications_total{outcome="success"} 1.0', text)
        self.assertIn('spear_messages_total{direction="outgoing",message_type="ExecuteRequest"} 3.0', text)


class StateTests(TestCase):
    @defer.inlineCallbacks
    def test_states_are_current_and_the_connection_api_works(self) -> Gen:
        clock = ClockReactor()
        manager = make_manager(self, reactor=clock, heartbeat_interval=10, heartbeat_timeout=30)
        assert manager.secrets is not None
        address = yield manager.start_listening()
        pending = yield connect_raw(self, address)
        yield wait_until(lambda: manager.get_connection_count() == 1, "the raw connection")
        [waiting] = manager.get_all_connections()
        self.assertFalse(waiting.authenticated)
        self.assertEqual(waiting.session_state, SessionState.AWAITING_AUTH)
        self.assertIsNone(waiting.instance_id)
        self.assertEqual(waiting.remote_addr, f"127.0.0.1:{pending.transport.getHost().port}")
        self.assertEqual(manager.get_connection(waiting.connection_id), waiting)

        clock.advance(2)
        worker = instance("w")
        agent = agent_channel(self, worker, manager.secrets.issue(worker), reactor=clock)
        yield dial(agent, address)
        EchoAgent(agent)
        channel = yield manager.channel_for(worker).when_connected()
        state = manager.get_connection_by_instance(worker)
        self.assertIsInstance(state, ConnectionState)
        self.assertEqual((state.instance_id, state.authenticated, state.transport), (worker, True, "tcp"))
        self.assertEqual((state.client_type, state.client_version), ("test", "test/1"))
        self.assertEqual((state.connected_at, state.last_activity), (2.0, 2.0))
        self.assertEqual(state.status, ConnectionStatus.ACTIVE)
        self.assertEqual(state.heartbeat_sequence, 0)
        self.assertEqual(manager.get_connection_count(), 2)
        self.assertEqual(
            {s.connection_id for s in manager.get_all_connections()},
            {waiting.connection_id, state.connection_id},
        )

        clock.advance(3)
        yield channel.request_response(execute())
        self.assertEqual(manager.get_connection_by_instance(worker).last_activity, 5.0)
        self.assertEqual(state.last_activity, 2.0, "a state is a snapshot")

        # close_connection: an orderly close with the reason.
        agent_side = agent.connection
        yield manager.close_connection(state.connection_id, "maintenance")
        yield agent_side.when_lost()
        self.assertEqual(agent_side.session.close_reason, "maintenance")
        self.assertIsNone(manager.get_connection_by_instance(worker))
        self.assertIsNone(manager.get_connection(state.connection_id))
        self.assertEqual(manager.get_connection_count(), 1)
        with self.assertRaises(KeyError):
            manager.close_connection(state.connection_id)

        # close_all_connections: every one, pending ones included.
        yield manager.close_all_connections()
        yield pending.lost
        self.assertEqual(manager.get_connection_count(), 0)
        self.assertEqual(pending.messages[-1].parse_payload(), CloseMessage("the spearlet is closing"))

    @defer.inlineCallbacks
    def test_remove_instance_revokes_its_secret_and_closes_its_channel(self) -> Gen:
        manager = make_manager(self)
        assert manager.secrets is not None
        address = yield manager.start_listening()
        worker = instance("w")
        token = manager.secrets.issue(worker)
        agent = agent_channel(self, worker, token)
        yield dial(agent, address)
        channel = manager.channel_for(worker)
        lost = agent.connection.when_lost()
        yield manager.remove_instance(worker)
        yield lost
        self.assertTrue(channel.closed)
        self.assertNotIn(worker, manager.secrets)
        yield self.assertFailure(channel.when_connected(), ConnectionClosed)
        again = agent_channel(self, worker, token)
        yield self.assertFailure(dial(again, address), AuthenticationFailed)


class ReentrantSubscriberTests(TestCase):
    @defer.inlineCallbacks
    def test_events_caused_by_a_subscriber_reach_every_subscriber_in_order(self) -> Gen:
        manager = make_manager(self)
        assert manager.secrets is not None
        address = yield manager.start_listening()
        first: list[ConnectionEvent] = []
        second: list[ConnectionEvent] = []

        def closing(event: ConnectionEvent) -> None:
            first.append(event)
            if event.kind is K.AUTHENTICATED:
                manager.close_connection(event.connection_id, "not today")

        manager.subscribe(closing, messages=True)
        manager.subscribe(second.append, messages=True)
        worker = instance("w")
        agent = agent_channel(self, worker, manager.secrets.issue(worker))
        yield dial(agent, address)
        yield wait_until(lambda: second and second[-1].kind is K.DISCONNECTED, "the Disconnected event")
        kinds = [(e.kind, e.message_type) for e in second]
        self.assertEqual(kinds, [(e.kind, e.message_type) for e in first])
        self.assertEqual(
            kinds[2:5],
            [
                (K.MESSAGE_SENT, MessageType.AUTH_RESPONSE),
                (K.AUTHENTICATED, None),
                (K.MESSAGE_SENT, MessageType.CONNECTION_CLOSE),
            ],
        )
