"""No secret ever reaches the log, whatever happens to the handshake."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from spear_twisted.errors import AuthenticationFailed
from tests.channel_support import ClockReactor, EchoAgent, execute, wait_until
from tests.connection_support import (
    Gen,
    agent_channel,
    auth_request,
    connect_raw,
    dial,
    instance,
    make_manager,
    raw_auth_request,
)


def rendered(event: LogEvent) -> str:
    """Everything a log observer could write about ``event``: its text, every field, any traceback."""
    parts = [formatEvent(event), repr(event)]
    failure = event.get("log_failure")
    if failure is not None:
        parts.append(failure.getTraceback())
    return "\n".join(parts)


class NoSecretInLogsTests(TestCase):
    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @defer.inlineCallbacks
    def test_no_token_appears_in_any_log_event(self) -> Gen:
        clock = ClockReactor()
        manager = make_manager(self, reactor=clock, heartbeat_interval=10, heartbeat_timeout=30)
        assert manager.secrets is not None
        address = yield manager.start_listening()
        good, other = instance("good"), instance("other")
        good_secret = manager.secrets.issue(good)
        other_secret = manager.secrets.issue(other)
        presented: list[Any] = [good_secret, other_secret]

        # Success, then traffic, then a duplicate with the right token.
        agent = agent_channel(self, good, good_secret, reactor=clock)
        yield dial(agent, address)
        EchoAgent(agent)
        channel = yield manager.channel_for(good).when_connected()
        yield channel.request_response(execute())
        duplicate = agent_channel(self, good, good_secret)
        yield self.assertFailure(dial(duplicate, address), AuthenticationFailed)

        # Another instance's token, a wrong one, a short one, a non-ASCII one,
        # a huge one, and tokens of the wrong JSON type.
        wrong = "wrong-token-7f3a9c"
        short = "s3cr3t"
        accented = "sécret-tøken-9q"
        huge = "h" * 5000
        presented += [wrong, short, accented, huge]
        for token in (good_secret, wrong, short, accented, huge):
            raw = yield connect_raw(self, address)
            raw.send(auth_request(other, token))
            yield raw.lost
        for token in (other_secret, wrong):
            raw = yield connect_raw(self, address)
            raw.send(raw_auth_request({"instance_id": str(other), "token": [token], "extra": token}))
            yield raw.lost

        # A validator that fails while holding the token.
        def failing(instance_id: Any, token: object) -> bool:
            raise RuntimeError("validator failed")

        failing_manager = make_manager(self, validator=failing)
        failing_address = yield failing_manager.start_listening()
        raw = yield connect_raw(self, failing_address)
        raw.send(auth_request(other, other_secret))
        yield raw.lost
        self.flushLoggedErrors(RuntimeError)

        # Heartbeat timeout of the authenticated agent, after it stops answering.
        agent.connection.pause_reading()
        agent.connection.transport.stopReading()
        clock.advance(31)
        yield wait_until(lambda: manager.get_connection_count() == 0, "the heartbeat timeout")

        self.assertGreater(len(self.events), 10)
        text = "\n".join(rendered(event) for event in self.events)
        for expected in (
            "Authentication refused",
            "error 1202",
            "Gatekeeper failed",
            "authenticated as process:good",
        ):
            self.assertIn(expected, text)
        for secret in presented:
            self.assertNotIn(secret, text)
