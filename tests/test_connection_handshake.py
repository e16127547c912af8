"""The authentication handshake on the ConnectionManager's listeners, over real sockets."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from spear_twisted.auth import MIN_TOKEN_LENGTH, refuse_all
from spear_twisted.channels.channel import Channel
from spear_twisted.channels.events import ConnectionEvent, ConnectionEventKind
from spear_twisted.channels.interfaces import ICommunicationChannel
from spear_twisted.channels.protocol import SERVER_VERSION, SUPPORTED_FEATURES, IConnectionGatekeeper
from spear_twisted.connections import ConnectionManager, DuplicatePolicy
from spear_twisted.errors import AuthenticationFailed, ErrorCode
from spear_twisted.wire import MessageType, SessionState
from tests.channel_support import ClockReactor, EchoAgent, execute, turns, wait_until
from tests.connection_support import (
    Gen,
    LaterValidator,
    RawSocket,
    agent_channel,
    auth_request,
    auth_response,
    connect_raw,
    dial,
    error_of,
    instance,
    make_manager,
    raw_auth_request,
    socket_dir,
)


class HandshakeTests(TestCase):
    """Success and every way to fail, on a TCP listener from the port range."""

    @defer.inlineCallbacks
    def setUp(self) -> Gen:
        self.manager = make_manager(self)
        self.address = yield self.manager.start_listening()
        assert self.manager.secrets is not None
        self.secrets = self.manager.secrets

    @defer.inlineCallbacks
    def refused(self, message: Any) -> Gen:
        """Send ``message`` first on a raw connection; return the ``AuthResponse`` after the close."""
        raw = yield connect_raw(self, self.address)
        raw.send(message)
        yield raw.lost
        self.assertEqual([m.message_type for m in raw.messages], [MessageType.AUTH_RESPONSE])
        response = auth_response(raw.messages[0])
        self.assertFalse(response.success)
        self.assertIsNone(response.session_id)
        return response

    def test_the_manager_is_a_gatekeeper(self) -> None:
        self.assertTrue(verifyObject(IConnectionGatekeeper, self.manager))

    @defer.inlineCallbacks
    def test_success_answers_with_a_fresh_session_and_makes_the_instances_channel(self) -> Gen:
        worker = instance("worker-1")
        token = self.secrets.issue(worker)
        waiting = self.manager.channel_for(worker).when_connected()
        self.assertFalse(waiting.called)
        raw = yield connect_raw(self, self.address)
        raw.send(auth_request(worker, token, request_id=41))
        yield raw.when_messages(1)
        response = auth_response(raw.messages[0])
        self.assertEqual(raw.messages[0].request_id, 41)
        self.assertTrue(response.success)
        self.assertIsNone(response.error_message)
        self.assertEqual(response.server_version, SERVER_VERSION)
        self.assertEqual(tuple(response.supported_features), SUPPORTED_FEATURES)
        self.assertGreaterEqual(len(response.session_id or ""), 32)
        channel = yield waiting
        self.assertIs(channel, self.manager.factory.get_channel(worker))
        self.assertTrue(verifyObject(ICommunicationChannel, channel))
        state = self.manager.get_connection_by_instance(worker)
        self.assertEqual(state.session_id, response.session_id)
        self.assertTrue(state.authenticated)
        self.assertEqual(state.session_state, SessionState.ACTIVE)

    @defer.inlineCallbacks
    def test_each_connection_gets_its_own_unguessable_session_id(self) -> Gen:
        session_ids = set()
        for n in range(5):
            worker = instance(f"w{n}")
            raw = yield connect_raw(self, self.address)
            raw.send(auth_request(worker, self.secrets.issue(worker)))
            yield raw.when_messages(1)
            session_ids.add(auth_response(raw.messages[0]).session_id)
        self.assertEqual(len(session_ids), 5)

    @defer.inlineCallbacks
    def test_an_agent_channel_authenticates_and_serves_requests(self) -> Gen:
        worker = instance("worker-1")
        agent = agent_channel(self, worker, self.secrets.issue(worker))
        yield dial(agent, self.address)
        channel = self.manager.factory.get_channel(worker)
        self.assertIsInstance(channel, Channel)
        yield channel.when_connected()
        EchoAgent(agent)
        response = yield channel.request_response(execute("t", "hello"))
        self.assertEqual(response.parse_payload().output, "process:worker-1:hello")
        self.assertEqual(channel.transport_name, "tcp")

    @defer.inlineCallbacks
    def test_wrong_token_is_refused_and_the_connection_closed(self) -> Gen:
        worker = instance("worker-1")
        self.secrets.issue(worker)
        response = yield self.refused(auth_request(worker, "not-the-secret-at-all"))
        self.assertEqual(response.error_message, "invalid token")
        self.assertEqual(response.server_version, SERVER_VERSION)
        self.assertIsNone(self.manager.get_connection_by_instance(worker))
        self.assertEqual(self.manager.get_connection_count(), 0)

    @defer.inlineCallbacks
    def test_short_token_is_refused_even_by_a_validator_that_accepts_everything(self) -> Gen:
        manager = make_manager(self, validator=lambda instance_id, token: True)
        self.address = yield manager.start_listening()
        response = yield self.refused(auth_request(instance("w"), "x" * (MIN_TOKEN_LENGTH - 1)))
        self.assertEqual(
            response.error_message, f"invalid token: token is shorter than {MIN_TOKEN_LENGTH} characters"
        )
        raw = yield connect_raw(self, self.address)
        raw.send(auth_request(instance("w"), "x" * MIN_TOKEN_LENGTH))
        yield raw.when_messages(1)
        self.assertTrue(auth_response(raw.messages[0]).success)

    @defer.inlineCallbacks
    def test_token_of_another_instance_never_authenticates(self) -> Gen:
        first, second = instance("a"), instance("b")
        token_a = self.secrets.issue(first)
        self.secrets.issue(second)
        response = yield self.refused(auth_request(second, token_a))
        self.assertEqual(response.error_message, "invalid token")

    @defer.inlineCallbacks
    def test_unknown_instance_gets_the_same_answer_as_a_wrong_token(self) -> Gen:
        response = yield self.refused(auth_request(instance("nobody"), "some-long-token"))
        self.assertEqual(response.error_message, "invalid token")

    @defer.inlineCallbacks
    def test_tokens_of_the_wrong_type_non_ascii_or_huge_get_the_auth_failure(self) -> Gen:
        worker = instance("w")
        token = self.secrets.issue(worker)
        base = {"instance_id": str(worker), "client_version": "1", "client_type": "t", "extra_params": {}}
        cases = {
            "number": 12345678901234,
            "null": None,
            "list": [token],
            "object": {"token": token},
            "boolean": True,
        }
        for what, value in cases.items():
            response = yield self.refused(raw_auth_request({**base, "token": value}))
            self.assertIn("invalid AuthRequest", response.error_message, what)
            self.assertIn("payload.token", response.error_message, what)
        response = yield self.refused(auth_request(worker, "sécret-ümlaut-" + token))
        self.assertEqual(response.error_message, "invalid token: token must be ASCII")
        response = yield self.refused(auth_request(worker, token * 200))
        self.assertEqual(response.error_message, "invalid token: token is longer than 4096 characters")
        response = yield self.refused(raw_auth_request({"instance_id": str(worker)}))
        self.assertIn("payload.token: missing field", response.error_message)

    @defer.inlineCallbacks
    def test_bad_instance_id_is_refused(self) -> Gen:
        response = yield self.refused(auth_request("no-runtime-type", "long-enough-token"))
        self.assertIn("bad instance id", response.error_message)

    @defer.inlineCallbacks
    def test_no_validator_configured_refuses_everyone(self) -> Gen:
        worker = instance("w")
        response = yield self.refused(auth_request(worker, "whatever-token"))
        self.assertEqual(response.error_message, "invalid token")
        manager = make_manager(self, validator=refuse_all)
        self.address = yield manager.start_listening()
        response = yield self.refused(auth_request(worker, "whatever-token"))
        self.assertEqual(response.error_message, "invalid token")

    @defer.inlineCallbacks
    def test_a_validator_may_answer_later_with_a_deferred(self) -> Gen:
        validator = LaterValidator()
        answers = validator.answers
        manager = make_manager(self, validator=validator)
        self.address = yield manager.start_listening()
        yes = yield connect_raw(self, self.address)
        yes.send(auth_request(instance("yes"), "token-yes-1"))
        no = yield connect_raw(self, self.address)
        no.send(auth_request(instance("no"), "token-no-22"))
        yield wait_until(lambda: len(answers) == 2, "both validations starting")
        yield turns()
        self.assertEqual((yes.messages, no.messages), ([], []))
        answers[0].callback(True)
        answers[1].callback(False)
        yield yes.when_messages(1)
        yield no.lost
        self.assertTrue(auth_response(yes.messages[0]).success)
        self.assertEqual(auth_response(no.messages[0]).error_message, "invalid token")

    @defer.inlineCallbacks
    def test_a_failing_validator_refuses_without_a_traceback_to_the_peer(self) -> Gen:
        def validator(instance_id: Any, token: object) -> bool:
            raise RuntimeError("database unreachable")

        manager = make_manager(self, validator=validator)
        self.address = yield manager.start_listening()
        response = yield self.refused(auth_request(instance("w"), "long-enough-token"))
        self.assertEqual(response.error_message, "authentication could not be completed")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_an_answer_other_than_true_is_a_refusal(self) -> Gen:
        manager = make_manager(self, validator=lambda instance_id, token: "yes")
        self.address = yield manager.start_listening()
        response = yield self.refused(auth_request(instance("w"), "long-enough-token"))
        self.assertEqual(response.error_message, "invalid token")

    @defer.inlineCallbacks
    def test_a_first_frame_other_than_auth_request_gets_an_error_then_close(self) -> Gen:
        raw = yield connect_raw(self, self.address)
        raw.send(execute("t").with_request_id(9))
        yield raw.lost
        [message] = raw.messages
        error = error_of(message)
        self.assertEqual(error.error_code, ErrorCode.NOT_AUTHENTICATED)
        self.assertIn("first frame must be AuthRequest", error.message)
        self.assertEqual(message.request_id, 9)

    @defer.inlineCallbacks
    def test_one_failed_attempt_closes_the_connection_and_later_frames_are_ignored(self) -> Gen:
        worker = instance("w")
        token = self.secrets.issue(worker)
        raw = yield connect_raw(self, self.address)
        raw.transport.write(
            auth_request(worker, "wrong-token-1").to_frame() + auth_request(worker, token).to_frame()
        )
        yield raw.lost
        self.assertEqual([auth_response(m).success for m in raw.messages], [False])
        self.assertIsNone(self.manager.get_connection_by_instance(worker))

    @defer.inlineCallbacks
    def test_a_frame_above_the_preauth_limit_is_refused_at_its_prefix(self) -> Gen:
        manager = make_manager(self, max_preauth_message_size=1024)
        self.address = yield manager.start_listening()
        raw = yield connect_raw(self, self.address)
        raw.transport.write((1025).to_bytes(4, "big") + b"{")
        yield raw.lost
        [message] = raw.messages
        self.assertEqual(error_of(message).error_code, ErrorCode.MESSAGE_TOO_LARGE)

    @defer.inlineCallbacks
    def test_the_full_limit_applies_once_authenticated(self) -> Gen:
        manager = make_manager(self, max_preauth_message_size=1024)
        assert manager.secrets is not None
        self.address = yield manager.start_listening()
        worker = instance("w")
        agent = agent_channel(self, worker, manager.secrets.issue(worker))
        yield dial(agent, self.address)
        channel = yield manager.channel_for(worker).when_connected()
        EchoAgent(agent)
        response = yield channel.request_response(execute("t", "x" * 5000))
        self.assertEqual(len(response.parse_payload().output), len("process:w:") + 5000)


class AuthTimeoutTests(TestCase):
    @defer.inlineCallbacks
    def test_no_auth_request_in_time_gets_an_error_then_close(self) -> Gen:
        clock = ClockReactor()
        manager = make_manager(self, reactor=clock, auth_timeout=5)
        address = yield manager.start_listening()
        raw = yield connect_raw(self, address)
        yield wait_until(lambda: manager.get_connection_count() == 1, "the manager accepting")
        clock.advance(4.9)
        yield turns()
        self.assertFalse(raw.lost.called)
        clock.advance(0.1)
        yield raw.lost
        [message] = raw.messages
        error = error_of(message)
        self.assertEqual(error.error_code, ErrorCode.AUTHENTICATION_TIMEOUT)
        self.assertEqual(error.message, "no AuthRequest within 5 s")

    @defer.inlineCallbacks
    def test_a_validator_that_never_answers_ends_at_the_auth_timeout(self) -> Gen:
        clock = ClockReactor()
        validator = LaterValidator()
        manager = make_manager(self, reactor=clock, validator=validator, auth_timeout=5)
        address = yield manager.start_listening()
        raw = yield connect_raw(self, address)
        raw.send(auth_request(instance("w"), "long-enough-token"))
        yield wait_until(lambda: validator.answers, "the validation starting")
        clock.advance(5)
        yield raw.lost
        self.assertEqual(error_of(raw.messages[0]).error_code, ErrorCode.AUTHENTICATION_TIMEOUT)
        self.assertTrue(validator.answers[0].called, "the pending validation is cancelled")

    @defer.inlineCallbacks
    def test_trickling_bytes_does_not_extend_the_deadline(self) -> Gen:
        clock = ClockReactor()
        manager = make_manager(self, reactor=clock, auth_timeout=30)
        address = yield manager.start_listening()
        raw = yield connect_raw(self, address)
        yield wait_until(lambda: manager.get_connection_count() == 1, "the manager accepting")
        frame = auth_request(instance("w"), "long-enough-token").to_frame()
        for offset in range(29):
            raw.transport.write(frame[offset : offset + 1])
            yield turns(5)
            clock.advance(1)
        self.assertFalse(raw.lost.called)
        clock.advance(1)
        yield raw.lost
        self.assertEqual(error_of(raw.messages[0]).error_code, ErrorCode.AUTHENTICATION_TIMEOUT)


class DuplicateInstanceTests(TestCase):
    @defer.inlineCallbacks
    def connected(self, manager: ConnectionManager, name: str = "w") -> Gen:
        self.address = yield manager.start_listening()
        assert manager.secrets is not None
        self.worker = instance(name)
        self.token = manager.secrets.issue(self.worker)
        self.first = agent_channel(self, self.worker, self.token)
        yield dial(self.first, self.address)
        self.channel = yield manager.channel_for(self.worker).when_connected()
        self.echo = EchoAgent(self.first)

    @defer.inlineCallbacks
    def test_by_default_the_newcomer_is_refused_and_the_first_connection_untouched(self) -> Gen:
        manager = make_manager(self)
        self.assertIs(manager.config.duplicate_policy, DuplicatePolicy.REFUSE_NEW)
        yield self.connected(manager)
        first_state = manager.get_connection_by_instance(self.worker)
        second = agent_channel(self, self.worker, self.token)
        error = yield self.assertFailure(dial(second, self.address), AuthenticationFailed)
        self.assertEqual(error.message, f"instance {self.worker} already has a live connection")
        self.assertEqual(manager.get_connection_by_instance(self.worker), first_state)
        response = yield self.channel.request_response(execute("t", "still"))
        self.assertEqual(response.parse_payload().output, "process:w:still")
        self.assertEqual(manager.get_connection_count(), 1)

    @defer.inlineCallbacks
    def test_replace_old_closes_the_first_connection_with_already_connected(self) -> Gen:
        manager = make_manager(self, duplicate_policy="replace-old")
        yield self.connected(manager)
        first_id = manager.get_connection_by_instance(self.worker).connection_id
        first_connection = self.first.connection
        second = agent_channel(self, self.worker, self.token)
        yield dial(second, self.address)
        EchoAgent(second)
        yield first_connection.when_lost()
        [told] = [error_of(m) for m in self.echo.other]
        self.assertEqual(told.error_code, ErrorCode.ALREADY_CONNECTED)
        self.assertEqual(told.message, "replaced by a newer connection of the same instance")
        state = manager.get_connection_by_instance(self.worker)
        self.assertNotEqual(state.connection_id, first_id)
        self.assertIs(manager.channel_for(self.worker), self.channel)
        response = yield self.channel.request_response(execute("t", "second"))
        self.assertEqual(response.parse_payload().output, "process:w:second")
        # The replacement is one connection error, not also a failed attempt.
        self.assertEqual(self.channel.get_stats().connection_errors, 1)
        self.assertIsNone(self.channel.last_connection_error)

    @defer.inlineCallbacks
    def test_the_instance_may_reconnect_once_its_connection_is_gone(self) -> Gen:
        manager = make_manager(self)
        yield self.connected(manager)
        yield self.first.close()
        yield wait_until(lambda: manager.get_connection_count() == 0, "the first connection ending")
        again = agent_channel(self, self.worker, self.token)
        yield dial(again, self.address)
        EchoAgent(again)
        response = yield self.channel.request_response(execute("t", "again"))
        self.assertEqual(response.parse_payload().output, "process:w:again")


class LimitTests(TestCase):
    @defer.inlineCallbacks
    def test_over_max_connections_the_newcomer_gets_an_error_and_the_others_are_unaffected(self) -> Gen:
        manager = make_manager(self, max_connections=2)
        assert manager.secrets is not None
        address = yield manager.start_listening()
        channels = []
        for name in ("a", "b"):
            worker = instance(name)
            agent = agent_channel(self, worker, manager.secrets.issue(worker))
            yield dial(agent, address)
            EchoAgent(agent)
            channels.append((yield manager.channel_for(worker).when_connected()))
        raw = yield connect_raw(self, address)
        yield raw.lost
        [message] = raw.messages
        error = error_of(message)
        self.assertEqual(error.error_code, ErrorCode.TOO_MANY_CONNECTIONS)
        self.assertEqual(error.message, "the spearlet is at its limit of 2 connections")
        self.assertEqual(manager.get_connection_count(), 2)
        for channel, name in zip(channels, "ab", strict=True):
            response = yield channel.request_response(execute("t", "ok"))
            self.assertEqual(response.parse_payload().output, f"process:{name}:ok")

    @defer.inlineCallbacks
    def test_max_pending_auth_refuses_a_newcomer_only_when_every_pending_one_is_authenticating(self) -> Gen:
        validator = LaterValidator()
        answers = validator.answers
        manager = make_manager(self, validator=validator, max_pending_auth=2)
        address = yield manager.start_listening()
        busy = []
        for name in ("a", "b"):
            raw = yield connect_raw(self, address)
            raw.send(auth_request(instance(name), "long-enough-token"))
            busy.append(raw)
        yield wait_until(lambda: len(answers) == 2, "both validations starting")
        newcomer = yield connect_raw(self, address)
        yield newcomer.lost
        self.assertEqual(error_of(newcomer.messages[0]).error_code, ErrorCode.TOO_MANY_PENDING_AUTH)
        for answer in answers:
            answer.callback(True)
        for raw in busy:
            yield raw.when_messages(1)
            self.assertTrue(auth_response(raw.messages[0]).success)

    @defer.inlineCallbacks
    def test_a_silent_pending_connection_makes_room_for_a_newcomer(self) -> Gen:
        manager = make_manager(self, max_pending_auth=2)
        assert manager.secrets is not None
        address = yield manager.start_listening()
        silent = []
        for _ in range(2):
            silent.append((yield connect_raw(self, address)))
        yield wait_until(lambda: manager.get_connection_count() == 2, "both silent connections accepted")
        worker = instance("honest")
        agent = agent_channel(self, worker, manager.secrets.issue(worker))
        yield dial(agent, address)
        yield silent[0].lost
        self.assertEqual(error_of(silent[0].messages[0]).error_code, ErrorCode.TOO_MANY_PENDING_AUTH)
        self.assertFalse(silent[1].lost.called)
        self.assertEqual(manager.admission.evicted, 1)


class AuthOverUnixTests(TestCase):
    @defer.inlineCallbacks
    def test_unix_endpoint_authenticates_and_records_peer_credentials(self) -> Gen:
        directory = socket_dir(self)
        manager = make_manager(self)
        assert manager.secrets is not None
        address = yield manager.start_listening(f"unix:{directory}/agents.sock")
        worker = instance("w")
        agent = agent_channel(self, worker, manager.secrets.issue(worker))
        yield dial(agent, address)
        state = manager.get_connection_by_instance(worker)
        self.assertEqual(state.transport, "unix")
        self.assertEqual(state.peer_credentials.pid, os.getpid())
        self.assertEqual(manager.channel_for(worker).transport_name, "unix")


class PendingAuthFloodTests(TestCase):
    """A flood of connections that say nothing does not starve agents that authenticate."""

    @defer.inlineCallbacks
    def test_honest_agents_authenticate_through_a_flood_of_silent_connections(self) -> Gen:
        limit = 8
        manager = make_manager(self, max_pending_auth=limit)
        assert manager.secrets is not None
        address = yield manager.start_listening()
        events: list[ConnectionEvent] = []
        most_pending = [0]

        def watch(event: ConnectionEvent) -> None:
            events.append(event)
            most_pending[0] = max(most_pending[0], manager.admission.pending_count())

        manager.subscribe(watch)
        sockets: list[RawSocket] = []

        def cleanup() -> None:
            for raw in sockets:
                raw.close()

        self.addCleanup(cleanup)
        # Every connection below is completed by the kernel into the
        # listener's backlog before the reactor accepts any of them: the
        # reactor then accepts them in batches of a hundred and more, and
        # only afterwards reads the honest ones' AuthRequests.
        sockets += [RawSocket(address) for _ in range(300)]
        honest = []
        for n in range(5):
            worker = instance(f"honest-{n}")
            raw = RawSocket(address)
            raw.send(auth_request(worker, manager.secrets.issue(worker)))
            honest.append(raw)
        sockets += honest
        sockets += [RawSocket(address) for _ in range(300)]

        def answered() -> bool:
            for raw in honest:
                raw.poll()
            return all(raw.messages for raw in honest)

        yield wait_until(answered, "every honest agent's AuthResponse")
        for raw in honest:
            self.assertTrue(auth_response(raw.messages[0]).success)
        self.assertLessEqual(most_pending[0], limit)
        self.assertGreaterEqual(manager.admission.evicted, 500)
        # The flood was real: an honest connection saw more than `limit`
        # connections accepted after its own before its AuthRequest was read,
        # so closing simply the oldest pending connection would have closed it.
        honest_addresses = {f"127.0.0.1:{raw.sock.getsockname()[1]}" for raw in honest}
        accepted_after = []
        for index, event in enumerate(events):
            if event.kind is ConnectionEventKind.CONNECTED and event.remote_addr in honest_addresses:
                later = events[index + 1 :]
                done = next(
                    i
                    for i, e in enumerate(later)
                    if e.connection_id == event.connection_id and e.kind is ConnectionEventKind.AUTHENTICATED
                )
                accepted_after.append(sum(e.kind is ConnectionEventKind.CONNECTED for e in later[:done]))
        self.assertEqual(len(accepted_after), 5)
        self.assertGreater(max(accepted_after), limit)
        silent = [raw for raw in sockets if raw not in honest]
        for raw in silent:
            raw.poll()
        told = [error_of(raw.messages[0]).error_code for raw in silent if raw.messages]
        self.assertGreaterEqual(len(told), 500)
        self.assertEqual(set(told), {ErrorCode.TOO_MANY_PENDING_AUTH})
