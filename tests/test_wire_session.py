"""
The session state machine of PROTOCOL.md section 4, driven with explicit
times (no clock, no reactor).
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.errors import (
    AuthenticationFailed,
    AuthenticationTimeout,
    ErrorCode,
    HeartbeatTimeout,
    IdleTimeout,
    InvalidJson,
    InvalidMessage,
    NotAuthenticated,
    PeerError,
    TooManyConnections,
    UnexpectedMessage,
    UnsupportedVersion,
)
from spear_twisted.wire import (
    MAX_MESSAGE_SIZE,
    MAX_PREAUTH_MESSAGE_SIZE,
    AuthFailed,
    AuthRequest,
    AuthRequested,
    AuthRequestInvalid,
    AuthResponse,
    AuthSucceeded,
    ConnectionStatus,
    Deadlines,
    ErrorMessage,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionStatus,
    HeartbeatMessage,
    HeartbeatReceived,
    MessageReceived,
    MessageType,
    PeerClosing,
    Role,
    SendHeartbeat,
    Session,
    SessionConfig,
    SessionState,
    SignalMessage,
    SignalType,
    SpearMessage,
    StreamDataMessage,
    TimedOut,
    Timestamp,
    Violation,
)

TS = Timestamp(1700000000, 0)
CREDENTIALS = AuthRequest("process:worker-001", "s3cret", "0.1.0", "python", {})


def message(request_id: int, body: Any) -> SpearMessage:
    return SpearMessage.create(request_id, body, timestamp=TS)


def auth_request(request_id: int = 1) -> SpearMessage:
    return message(request_id, CREDENTIALS)


def heartbeat(sequence: int = 1) -> SpearMessage:
    return message(0, HeartbeatMessage(TS, sequence, ConnectionStatus.ACTIVE))


def execute_request(request_id: int = 10) -> SpearMessage:
    return message(request_id, ExecuteRequest("task-1", "echo", ("hi",)))


def execute_response(request_id: int = 10) -> SpearMessage:
    return message(request_id, ExecuteResponse("task-1", ExecutionStatus.COMPLETED, "hi\n"))


def raw(kind: MessageType, payload: bytes, request_id: int = 5, version: int = 1) -> SpearMessage:
    return SpearMessage(kind, request_id, TS, payload, version)


#: One message of every type, as each side may receive it.
ALL_MESSAGES = {
    MessageType.AUTH_REQUEST: auth_request(3),
    MessageType.AUTH_RESPONSE: message(3, AuthResponse(True, None, "s", "v", ())),
    MessageType.EXECUTE_REQUEST: execute_request(3),
    MessageType.EXECUTE_RESPONSE: execute_response(3),
    MessageType.SIGNAL: message(3, SignalMessage(SignalType.TERMINATE)),
    MessageType.HEARTBEAT: heartbeat(),
    MessageType.ERROR: message(3, ErrorMessage(ErrorCode.INTERNAL_ERROR, "oops")),
    MessageType.STREAM_DATA: message(3, StreamDataMessage("s", b"x", False, 0)),
    MessageType.CONNECTION_CLOSE: SpearMessage.connection_close(3),
}


class SessionTestCase(SynchronousTestCase):
    def only(self, events: list[Any], kind: type[Any]) -> Any:
        self.assertEqual(len(events), 1, events)
        [event] = events
        self.assertIsInstance(event, kind)
        return event

    def active_spearlet(self, config: SessionConfig | None = None, *, at: float = 0.0) -> Session:
        session = Session(Role.SPEARLET, config, now=at)
        self.only(session.receive(auth_request(), at), AuthRequested)
        session.accept("session-1", at)
        return session

    def active_agent(self, config: SessionConfig | None = None, *, at: float = 0.0) -> Session:
        session = Session(Role.AGENT, config, now=at)
        session.sent(auth_request(1), at)
        self.only(session.receive(message(1, AuthResponse(True, None, "sid", "v", ())), at), AuthSucceeded)
        return session


class SpearletHandshakeTests(SessionTestCase):
    def test_new_session_awaits_authentication_with_the_preauth_frame_limit(self) -> None:
        session = Session(Role.SPEARLET, now=5.0)
        self.assertIs(session.state, SessionState.AWAITING_AUTH)
        self.assertFalse(session.authenticated)
        self.assertIsNone(session.session_id)
        self.assertEqual(session.max_message_size, MAX_PREAUTH_MESSAGE_SIZE)
        self.assertEqual(MAX_PREAUTH_MESSAGE_SIZE, 64 * 1024)

    def test_auth_request_first_is_reported_for_validation(self) -> None:
        session = Session(Role.SPEARLET, now=0.0)
        event = self.only(session.receive(auth_request(77), 1.0), AuthRequested)
        self.assertEqual(event, AuthRequested(77, CREDENTIALS))
        self.assertEqual(session.auth_request, attrs.evolve(CREDENTIALS, token=""))
        self.assertIs(session.state, SessionState.AWAITING_AUTH)
        self.assertFalse(session.authenticated)

    def test_accept_makes_the_session_active_with_the_full_frame_limit(self) -> None:
        session = Session(Role.SPEARLET, now=0.0)
        session.receive(auth_request(), 1.0)
        session.accept("sess-xyz", 2.0)
        self.assertIs(session.state, SessionState.ACTIVE)
        self.assertTrue(session.authenticated)
        self.assertEqual(session.session_id, "sess-xyz")
        self.assertEqual(session.max_message_size, MAX_MESSAGE_SIZE)
        self.assertIsNone(session.deadlines.auth)

    def test_frame_limits_follow_the_config(self) -> None:
        config = SessionConfig(max_message_size=1000, max_preauth_message_size=100)
        session = Session(Role.SPEARLET, config, now=0.0)
        self.assertEqual(session.max_message_size, 100)
        session.receive(auth_request(), 0.0)
        session.accept("s", 0.0)
        self.assertEqual(session.max_message_size, 1000)

    def test_reject_moves_the_session_to_closing(self) -> None:
        session = Session(Role.SPEARLET, now=0.0)
        session.receive(auth_request(), 1.0)
        session.reject()
        self.assertIs(session.state, SessionState.CLOSING)
        self.assertFalse(session.authenticated)
        self.assertEqual(session.deadlines, Deadlines())
        self.assertIsNone(session.next_deadline())

    def test_any_other_message_first_is_a_closing_not_authenticated_violation(self) -> None:
        for kind, first in ALL_MESSAGES.items():
            if kind in (MessageType.AUTH_REQUEST, MessageType.CONNECTION_CLOSE):
                continue
            session = Session(Role.SPEARLET, now=0.0)
            event = self.only(session.receive(first, 1.0), Violation)
            self.assertTrue(event.close, kind)
            self.assertIsInstance(event.error, NotAuthenticated)
            self.assertEqual(event.error.code, ErrorCode.NOT_AUTHENTICATED)
            self.assertEqual(event.error.request_id, first.request_id)
            self.assertIn(f"{kind.value} received before authentication completed", str(event.error))
            self.assertIs(session.state, SessionState.CLOSING)

    def test_auth_request_with_an_invalid_body_is_reported_as_auth_request_invalid(self) -> None:
        session = Session(Role.SPEARLET, now=0.0)
        event = self.only(
            session.receive(raw(MessageType.AUTH_REQUEST, b'{"instance_id":"x"}', 9), 1.0), AuthRequestInvalid
        )
        self.assertEqual(event.request_id, 9)
        self.assertIsInstance(event.error, InvalidMessage)
        self.assertIn(("payload.token", "missing field"), event.error.problems)
        self.assertIs(session.state, SessionState.CLOSING)
        self.assertIsNone(session.auth_request)

    def test_auth_request_that_is_not_json_is_reported_as_auth_request_invalid(self) -> None:
        session = Session(Role.SPEARLET, now=0.0)
        event = self.only(session.receive(raw(MessageType.AUTH_REQUEST, b"{{", 9), 1.0), AuthRequestInvalid)
        self.assertIsInstance(event.error, InvalidJson)
        self.assertEqual(event.error.request_id, 9)

    def test_second_auth_request_while_one_is_pending_is_a_closing_violation(self) -> None:
        session = Session(Role.SPEARLET, now=0.0)
        session.receive(auth_request(1), 1.0)
        event = self.only(session.receive(auth_request(2), 2.0), Violation)
        self.assertTrue(event.close)
        self.assertIsInstance(event.error, NotAuthenticated)
        self.assertIn("a second AuthRequest", str(event.error))
        self.assertEqual(event.error.request_id, 2)
        self.assertIs(session.state, SessionState.CLOSING)

    def test_auth_request_on_an_active_session_is_an_unexpected_message(self) -> None:
        session = self.active_spearlet()
        event = self.only(session.receive(auth_request(2), 1.0), Violation)
        self.assertFalse(event.close)
        self.assertIsInstance(event.error, UnexpectedMessage)
        self.assertIn("already authenticated", str(event.error))
        self.assertIs(session.state, SessionState.ACTIVE)

    def test_accept_without_a_pending_auth_request_is_a_programming_error(self) -> None:
        session = Session(Role.SPEARLET, now=0.0)
        self.assertRaises(RuntimeError, session.accept, "s", 1.0)
        self.assertRaises(RuntimeError, self.active_spearlet().accept, "s", 1.0)
        agent = Session(Role.AGENT, now=0.0)
        agent.sent(auth_request(), 0.0)
        self.assertRaises(RuntimeError, agent.accept, "s", 1.0)

    def test_messages_after_a_closing_violation_before_auth_are_not_delivered(self) -> None:
        session = Session(Role.SPEARLET, now=0.0)
        self.only(session.receive(execute_response(1), 1.0), Violation)
        self.assertEqual(session.receive(execute_response(2), 1.0), [])
        self.assertEqual(session.receive(message(3, StreamDataMessage("s", b"x")), 1.0), [])
        self.assertFalse(session.authenticated)

    def test_messages_after_reject_are_not_delivered(self) -> None:
        session = Session(Role.SPEARLET, now=0.0)
        session.receive(auth_request(), 1.0)
        session.reject()
        for kind, later in ALL_MESSAGES.items():
            self.assertEqual(session.receive(later, 2.0), [], kind)
        self.assertIs(session.state, SessionState.CLOSING)

    def test_messages_after_an_unauthenticated_peer_announced_close_are_not_delivered(self) -> None:
        session = Session(Role.SPEARLET, now=0.0)
        self.only(session.receive(SpearMessage.connection_close(1), 1.0), PeerClosing)
        self.assertEqual(session.receive(execute_response(2), 1.0), [])


class AuthDeadlineTests(SessionTestCase):
    def test_auth_deadline_is_auth_timeout_after_connecting(self) -> None:
        session = Session(Role.SPEARLET, now=100.0)
        self.assertEqual(session.deadlines, Deadlines(auth=130.0))
        self.assertEqual(session.next_deadline(), 130.0)
        self.assertEqual(
            Session(Role.SPEARLET, SessionConfig(auth_timeout=2.5), now=1.0).next_deadline(), 3.5
        )

    def test_auth_deadline_passing_times_out_with_authentication_timeout(self) -> None:
        session = Session(Role.SPEARLET, now=100.0)
        self.assertEqual(session.poll(129.999), [])
        event = self.only(session.poll(130.0), TimedOut)
        self.assertIsInstance(event.error, AuthenticationTimeout)
        self.assertEqual(event.error.code, ErrorCode.AUTHENTICATION_TIMEOUT)
        self.assertEqual(str(event.error), "no AuthRequest within 30 s")
        self.assertIs(session.state, SessionState.CLOSING)
        self.assertEqual(session.poll(1000.0), [])

    def test_auth_deadline_is_absolute_from_connect_and_frames_do_not_extend_it(self) -> None:
        session = Session(Role.SPEARLET, now=0.0)
        session.receive(auth_request(), 29.0)  # pending validation
        self.assertEqual(session.next_deadline(), 30.0)
        self.only(session.poll(30.0), TimedOut)

    def test_agent_auth_deadline_is_not_extended_by_sending(self) -> None:
        session = Session(Role.AGENT, now=0.0)
        session.sent(auth_request(), 1.0)
        session.sent(heartbeat(), 20.0)
        self.assertEqual(session.deadlines.auth, 30.0)
        self.assertIsNone(session.deadlines.heartbeat_send)
        event = self.only(session.poll(31.0), TimedOut)
        self.assertEqual(str(event.error), "no AuthResponse within 30 s")

    def test_only_the_auth_deadline_runs_before_authentication(self) -> None:
        session = Session(Role.SPEARLET, SessionConfig(idle_timeout=5.0), now=0.0)
        self.assertEqual(
            session.deadlines, Deadlines(auth=30.0, heartbeat_send=None, heartbeat_timeout=None, idle=None)
        )
        self.assertEqual(session.poll(29.0), [])


class HeartbeatTests(SessionTestCase):
    def test_deadlines_of_an_active_session(self) -> None:
        session = self.active_spearlet(SessionConfig(idle_timeout=300.0), at=10.0)
        session.sent(message(1, AuthResponse(True, None, "s", "v", ())), 10.0)
        self.assertEqual(
            session.deadlines, Deadlines(auth=None, heartbeat_send=40.0, heartbeat_timeout=100.0, idle=310.0)
        )
        self.assertEqual(session.next_deadline(), 40.0)

    def test_interval_of_silence_asks_for_heartbeats_with_increasing_sequence(self) -> None:
        session = self.active_spearlet()
        session.sent(message(1, AuthResponse(True, None, "s", "v", ())), 0.0)
        self.assertEqual(session.poll(29.9), [])
        self.assertEqual(session.poll(30.0), [SendHeartbeat(1)])
        self.assertEqual(session.next_deadline(), 60.0)
        session.receive(heartbeat(), 40.0)
        self.assertEqual(session.poll(59.0), [])
        self.assertEqual(session.poll(60.0), [SendHeartbeat(2)])
        session.receive(heartbeat(), 80.0)
        self.assertEqual(session.poll(95.0), [SendHeartbeat(3)])  # late poll: one beat, counted from now
        self.assertEqual(session.deadlines.heartbeat_send, 125.0)
        self.assertEqual(session.heartbeats_sent, 3)

    def test_sending_any_message_postpones_the_next_heartbeat(self) -> None:
        session = self.active_spearlet()
        session.sent(execute_request(), 20.0)
        self.assertEqual(session.deadlines.heartbeat_send, 50.0)
        session.sent(heartbeat(), 45.0)
        self.assertEqual(session.deadlines.heartbeat_send, 75.0)
        self.assertEqual(session.poll(74.0), [])

    def test_nothing_received_for_the_heartbeat_timeout_times_out(self) -> None:
        session = self.active_spearlet(at=10.0)
        self.assertEqual(session.deadlines.heartbeat_timeout, 100.0)
        session.receive(heartbeat(), 50.0)
        self.assertEqual(session.deadlines.heartbeat_timeout, 140.0)
        session.sent(execute_request(), 100.0)  # our own sends do not count
        self.assertEqual(session.deadlines.heartbeat_send, 130.0)
        event = self.only(session.poll(140.0), TimedOut)  # not the heartbeat that is also due
        self.assertIsInstance(event.error, HeartbeatTimeout)
        self.assertEqual(event.error.code, ErrorCode.HEARTBEAT_TIMEOUT)
        self.assertEqual(str(event.error), "nothing received for 90 s")
        self.assertIs(session.state, SessionState.CLOSING)

    def test_any_frame_received_resets_the_heartbeat_timeout(self) -> None:
        session = self.active_spearlet()
        session.receive(execute_response(), 80.0)
        session.receive(message(0, StreamDataMessage("s", b"")), 160.0)
        self.assertEqual(session.deadlines.heartbeat_timeout, 250.0)
        self.only(session.receive(execute_request(), 200.0), Violation)  # even a wrong one
        self.assertEqual(session.deadlines.heartbeat_timeout, 290.0)

    def test_heartbeat_received_is_reported_and_counted(self) -> None:
        session = self.active_spearlet()
        beat = message(0, HeartbeatMessage(Timestamp(5, 6), 9, ConnectionStatus.BUSY))
        event = self.only(session.receive(beat, 1.0), HeartbeatReceived)
        self.assertEqual(
            event, HeartbeatReceived(beat, HeartbeatMessage(Timestamp(5, 6), 9, ConnectionStatus.BUSY))
        )
        self.assertEqual(session.heartbeats_received, 1)

    def test_heartbeat_with_an_invalid_body_is_a_violation_that_keeps_the_session(self) -> None:
        session = self.active_spearlet()
        event = self.only(session.receive(raw(MessageType.HEARTBEAT, b'{"sequence":1}'), 1.0), Violation)
        self.assertFalse(event.close)
        self.assertIsInstance(event.error, InvalidMessage)
        self.assertIs(session.state, SessionState.ACTIVE)
        self.assertEqual(session.heartbeats_received, 0)

    def test_disabled_heartbeats_leave_no_heartbeat_deadlines(self) -> None:
        config = SessionConfig(heartbeat_interval=None, heartbeat_timeout=None)
        session = self.active_spearlet(config)
        self.assertEqual(session.deadlines, Deadlines())
        self.assertIsNone(session.next_deadline())
        self.assertEqual(session.poll(1e9), [])


class IdleTimeoutTests(SessionTestCase):
    CONFIG = SessionConfig(heartbeat_interval=30.0, heartbeat_timeout=90.0, idle_timeout=300.0)

    def test_idle_timeout_is_off_by_default(self) -> None:
        self.assertIsNone(SessionConfig().idle_timeout)
        self.assertIsNone(self.active_spearlet().deadlines.idle)

    def test_heartbeats_either_way_do_not_count_as_activity(self) -> None:
        session = self.active_spearlet(self.CONFIG)
        for now in range(30, 300, 30):
            session.receive(heartbeat(), float(now))
            session.sent(heartbeat(), float(now))
            self.assertEqual(session.poll(float(now)), [])
        self.assertEqual(session.deadlines.idle, 300.0)
        event = self.only(session.poll(300.0), TimedOut)
        self.assertIsInstance(event.error, IdleTimeout)
        self.assertEqual(event.error.code, ErrorCode.IDLE_TIMEOUT)
        self.assertEqual(str(event.error), "no traffic for 300 s")

    def test_application_messages_either_way_count_as_activity(self) -> None:
        session = self.active_spearlet(self.CONFIG)
        session.sent(execute_request(), 60.0)
        self.assertEqual(session.deadlines.idle, 360.0)
        session.receive(execute_response(), 80.0)
        self.assertEqual(session.deadlines.idle, 380.0)

    def test_wrong_direction_messages_do_not_count_as_activity(self) -> None:
        session = self.active_spearlet(self.CONFIG)
        self.only(session.receive(execute_request(), 80.0), Violation)
        self.assertEqual(session.deadlines.idle, 300.0)


class ActiveSessionTests(SessionTestCase):
    def test_spearlet_delivers_what_an_agent_sends(self) -> None:
        for kind in (MessageType.EXECUTE_RESPONSE, MessageType.ERROR, MessageType.STREAM_DATA):
            session = self.active_spearlet()
            event = self.only(session.receive(ALL_MESSAGES[kind], 1.0), MessageReceived)
            self.assertIs(event.message, ALL_MESSAGES[kind])

    def test_agent_delivers_what_a_spearlet_sends(self) -> None:
        for kind in (
            MessageType.EXECUTE_REQUEST,
            MessageType.SIGNAL,
            MessageType.ERROR,
            MessageType.STREAM_DATA,
        ):
            session = self.active_agent()
            event = self.only(session.receive(ALL_MESSAGES[kind], 1.0), MessageReceived)
            self.assertIs(event.message, ALL_MESSAGES[kind])

    def test_wrong_direction_message_is_an_unexpected_message_that_keeps_the_session(self) -> None:
        for role, kinds in (
            (Role.SPEARLET, (MessageType.EXECUTE_REQUEST, MessageType.SIGNAL, MessageType.AUTH_RESPONSE)),
            (Role.AGENT, (MessageType.EXECUTE_RESPONSE, MessageType.AUTH_REQUEST, MessageType.AUTH_RESPONSE)),
        ):
            for kind in kinds:
                session = self.active_spearlet() if role is Role.SPEARLET else self.active_agent()
                event = self.only(session.receive(ALL_MESSAGES[kind], 1.0), Violation)
                self.assertFalse(event.close, (role, kind))
                self.assertIsInstance(event.error, UnexpectedMessage)
                self.assertEqual(event.error.code, ErrorCode.UNEXPECTED_MESSAGE)
                self.assertEqual(event.error.request_id, 3)
                self.assertIs(session.state, SessionState.ACTIVE)

    def test_wrong_direction_message_names_the_role(self) -> None:
        event = self.only(self.active_spearlet().receive(execute_request(), 1.0), Violation)
        self.assertIn("ExecuteRequest is not sent to the spearlet", str(event.error))

    def test_unsupported_version_is_a_closing_violation_in_any_state(self) -> None:
        for session in (Session(Role.SPEARLET, now=0.0), self.active_spearlet(), self.active_agent()):
            bad = SpearMessage(MessageType.HEARTBEAT, 12, TS, heartbeat().payload, 2)
            event = self.only(session.receive(bad, 1.0), Violation)
            self.assertTrue(event.close)
            self.assertIsInstance(event.error, UnsupportedVersion)
            self.assertEqual(event.error.code, ErrorCode.UNSUPPORTED_VERSION)
            self.assertEqual(event.error.request_id, 12)
            self.assertIn("protocol version 2 is not supported", str(event.error))
            self.assertIs(session.state, SessionState.CLOSING)

    def test_connection_close_reports_the_peer_closing_with_its_reason(self) -> None:
        session = self.active_spearlet()
        self.assertEqual(
            session.receive(SpearMessage.connection_close(4, "draining"), 1.0), [PeerClosing("draining")]
        )
        self.assertIs(session.state, SessionState.CLOSING)
        self.assertEqual(session.close_reason, "draining")
        self.assertEqual(session.next_deadline(), None)

    def test_connection_close_with_an_empty_payload_has_no_reason(self) -> None:
        session = self.active_agent()
        self.assertEqual(session.receive(SpearMessage.connection_close(4), 1.0), [PeerClosing(None)])
        self.assertIs(session.state, SessionState.CLOSING)

    def test_connection_close_with_an_unreadable_payload_still_closes(self) -> None:
        session = self.active_spearlet()
        self.assertEqual(session.receive(raw(MessageType.CONNECTION_CLOSE, b"[1]"), 1.0), [PeerClosing(None)])
        self.assertIs(session.state, SessionState.CLOSING)

    def test_connection_close_before_authentication_closes_too(self) -> None:
        session = Session(Role.SPEARLET, now=0.0)
        self.assertEqual(session.receive(SpearMessage.connection_close(0, "bye"), 1.0), [PeerClosing("bye")])
        self.assertIs(session.state, SessionState.CLOSING)

    def test_sending_connection_close_moves_to_closing(self) -> None:
        session = self.active_spearlet()
        session.sent(SpearMessage.connection_close(0), 1.0)
        self.assertIs(session.state, SessionState.CLOSING)

    def test_local_close_still_delivers_responses_from_an_authenticated_peer(self) -> None:
        session = self.active_spearlet()
        session.begin_close("shutting down")
        self.assertIs(session.state, SessionState.CLOSING)
        self.assertEqual(session.close_reason, "shutting down")
        self.assertTrue(session.authenticated)
        self.only(session.receive(execute_response(), 1.0), MessageReceived)

    def test_closed_session_ignores_everything(self) -> None:
        for session in (Session(Role.SPEARLET, now=0.0), self.active_spearlet(), self.active_agent()):
            session.closed()
            self.assertIs(session.state, SessionState.CLOSED)
            self.assertFalse(session.authenticated)
            for later in ALL_MESSAGES.values():
                self.assertEqual(session.receive(later, 5.0), [])
            self.assertEqual(session.poll(1e9), [])
            self.assertEqual(session.deadlines, Deadlines())
            session.begin_close("late")
            session.sent(SpearMessage.connection_close(0), 6.0)
            self.assertIs(session.state, SessionState.CLOSED)


class AgentHandshakeTests(SessionTestCase):
    def test_auth_response_success_makes_the_agent_active(self) -> None:
        session = Session(Role.AGENT, now=0.0)
        self.assertEqual(session.max_message_size, MAX_PREAUTH_MESSAGE_SIZE)
        session.sent(auth_request(5), 0.0)
        response = AuthResponse(True, None, "sess-1", "spear/1", ("heartbeat",))
        self.assertEqual(session.receive(message(5, response), 1.0), [AuthSucceeded(5, response)])
        self.assertIs(session.state, SessionState.ACTIVE)
        self.assertTrue(session.authenticated)
        self.assertEqual(session.session_id, "sess-1")
        self.assertEqual(session.max_message_size, MAX_MESSAGE_SIZE)
        self.assertIsNone(session.deadlines.auth)
        self.assertIsNotNone(session.deadlines.heartbeat_send)

    def test_auth_response_failure_fails_with_the_reason(self) -> None:
        session = Session(Role.AGENT, now=0.0)
        session.sent(auth_request(5), 0.0)
        event = self.only(
            session.receive(message(5, AuthResponse(False, "bad token", None, "v", ())), 1.0), AuthFailed
        )
        self.assertIsInstance(event.error, AuthenticationFailed)
        self.assertEqual(event.error.code, ErrorCode.AUTHENTICATION_FAILED)
        self.assertEqual(event.error.message, "bad token")
        self.assertEqual(event.error.request_id, 5)
        self.assertIs(session.state, SessionState.CLOSING)
        self.assertFalse(session.authenticated)

    def test_auth_response_failure_without_a_reason_says_authentication_failed(self) -> None:
        session = Session(Role.AGENT, now=0.0)
        session.sent(auth_request(5), 0.0)
        event = self.only(
            session.receive(message(5, AuthResponse(False, None, None, "v", ())), 1.0), AuthFailed
        )
        self.assertEqual(event.error.message, "authentication failed")

    def test_error_message_before_auth_fails_with_the_error_class_of_its_code(self) -> None:
        for code, error_class in (
            (ErrorCode.AUTHENTICATION_TIMEOUT, AuthenticationTimeout),
            (ErrorCode.TOO_MANY_CONNECTIONS, TooManyConnections),
            (ErrorCode.NOT_AUTHENTICATED, NotAuthenticated),
        ):
            session = Session(Role.AGENT, now=0.0)
            session.sent(auth_request(5), 0.0)
            error_body = ErrorMessage(code, "go away", "details", 5)
            event = self.only(session.receive(message(0, error_body), 1.0), AuthFailed)
            self.assertIs(type(event.error), error_class)
            self.assertEqual(event.error.code, code)
            self.assertEqual(event.error.message, "go away")
            self.assertEqual(event.error.details, "details")
            self.assertEqual(event.error.request_id, 5)
            self.assertIs(session.state, SessionState.CLOSING)

    def test_error_message_with_an_unknown_code_fails_with_a_peer_error(self) -> None:
        session = Session(Role.AGENT, now=0.0)
        session.sent(auth_request(5), 0.0)
        event = self.only(session.receive(message(0, ErrorMessage(4242, "new error")), 1.0), AuthFailed)
        self.assertIsInstance(event.error, PeerError)
        self.assertEqual(event.error.error_code, 4242)
        self.assertIsNone(event.error.known_code)

    def test_auth_response_with_another_request_id_is_a_closing_violation(self) -> None:
        session = Session(Role.AGENT, now=0.0)
        session.sent(auth_request(5), 0.0)
        event = self.only(session.receive(message(6, AuthResponse(True, None, "s", "v", ())), 1.0), Violation)
        self.assertTrue(event.close)
        self.assertIsInstance(event.error, UnexpectedMessage)
        self.assertIn("AuthResponse for request 6, expected 5", str(event.error))
        self.assertFalse(session.authenticated)
        self.assertIs(session.state, SessionState.CLOSING)

    def test_auth_response_before_the_auth_request_was_sent_is_a_closing_violation(self) -> None:
        session = Session(Role.AGENT, now=0.0)
        event = self.only(session.receive(message(1, AuthResponse(True, None, "s", "v", ())), 1.0), Violation)
        self.assertTrue(event.close)
        self.assertIsInstance(event.error, UnexpectedMessage)
        self.assertIs(session.state, SessionState.CLOSING)

    def test_other_message_while_waiting_for_auth_response_is_a_closing_violation(self) -> None:
        session = Session(Role.AGENT, now=0.0)
        session.sent(auth_request(1), 0.0)
        event = self.only(session.receive(execute_request(), 1.0), Violation)
        self.assertTrue(event.close)
        self.assertIsInstance(event.error, UnexpectedMessage)
        self.assertIn("ExecuteRequest received while waiting for AuthResponse", str(event.error))

    def test_auth_response_with_an_invalid_body_fails_authentication(self) -> None:
        session = Session(Role.AGENT, now=0.0)
        session.sent(auth_request(1), 0.0)
        event = self.only(
            session.receive(raw(MessageType.AUTH_RESPONSE, b'{"success":"yes"}', 1), 1.0), AuthFailed
        )
        self.assertIsInstance(event.error, InvalidMessage)
        self.assertIs(session.state, SessionState.CLOSING)

    def test_agent_auth_deadline_times_out_without_an_auth_response(self) -> None:
        session = Session(Role.AGENT, SessionConfig(auth_timeout=10.0), now=0.0)
        session.sent(auth_request(1), 0.0)
        event = self.only(session.poll(10.0), TimedOut)
        self.assertIsInstance(event.error, AuthenticationTimeout)
        self.assertEqual(str(event.error), "no AuthResponse within 10 s")

    def test_messages_after_failed_authentication_are_not_delivered(self) -> None:
        session = Session(Role.AGENT, now=0.0)
        session.sent(auth_request(1), 0.0)
        self.only(session.receive(message(1, AuthResponse(False, "no", None, "v", ())), 1.0), AuthFailed)
        self.assertEqual(session.receive(execute_request(), 1.0), [])


class ConfigTests(SynchronousTestCase):
    def test_default_config_uses_the_protocol_constants(self) -> None:
        config = SessionConfig()
        self.assertEqual(
            (config.auth_timeout, config.heartbeat_interval, config.heartbeat_timeout, config.idle_timeout),
            (30.0, 30.0, 90.0, None),
        )
        self.assertEqual(
            (config.max_message_size, config.max_preauth_message_size), (64 * 1024 * 1024, 64 * 1024)
        )

    def test_non_positive_timeouts_and_sizes_are_refused(self) -> None:
        for field in (
            "auth_timeout",
            "heartbeat_interval",
            "heartbeat_timeout",
            "idle_timeout",
            "max_message_size",
            "max_preauth_message_size",
        ):
            for value in (0, -1):
                error = self.assertRaises(ValueError, SessionConfig, **{field: value})
                self.assertIn(field, str(error))

    def test_earliest_deadline_ignores_the_ones_not_running(self) -> None:
        self.assertIsNone(Deadlines().earliest())
        self.assertEqual(
            Deadlines(auth=None, heartbeat_send=5.0, heartbeat_timeout=3.0, idle=None).earliest(), 3.0
        )
        self.assertEqual(Deadlines(idle=1.0, heartbeat_send=2.0).earliest(), 1.0)


class SessionForgetsTheTokenTests(SynchronousTestCase):
    def test_the_session_keeps_the_auth_request_without_its_token(self) -> None:
        """The gatekeeper gets the token once; the session does not hold it for the connection's life."""
        session = Session(Role.SPEARLET, now=0.0)
        request = AuthRequest("process:worker-1", "s3cret-token-value", "1.0", "python")
        [event] = session.receive(SpearMessage.auth_request(1, request), 0.5)
        assert isinstance(event, AuthRequested)
        self.assertEqual(event.request.token, "s3cret-token-value")
        assert session.auth_request is not None
        self.assertEqual(session.auth_request.token, "")
        self.assertEqual(
            (session.auth_request.instance_id, session.auth_request.client_type),
            ("process:worker-1", "python"),
        )
