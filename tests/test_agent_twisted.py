"""
The agent SDK under Twisted, in this process, against a real spearlet-side
channel over real sockets: handler forms, failures, timeouts, signals,
Terminate, reconnection, retries, refusal, heartbeats, an adopted socket.

Time-driven behaviour uses ``ClockReactor`` (sockets real, time a Clock).
The asyncio side runs in child processes: ``test_agent_asyncio``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import txaio
from twisted.internet import defer, protocol, task
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from spear_twisted.agent import (
    EXIT_AUTH_REFUSED,
    EXIT_OK,
    EXIT_PROTOCOL,
    EXIT_UNREACHABLE,
    AgentConfig,
    TaskFailed,
)
from spear_twisted.agent.bootstrap import connect_and_authenticate
from spear_twisted.auth import SecretRegistry
from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.channel import GrpcChannel
from spear_twisted.bridge.methods import MethodRegistry
from spear_twisted.bridge.server import BridgeServer
from spear_twisted.channels.channel import Channel
from spear_twisted.channels.config import ChannelAddress, ChannelConfig
from spear_twisted.channels.tcp import TCPChannel
from spear_twisted.channels.unix import UnixChannel
from spear_twisted.errors import DecodeError, RequestTimeout, ShuttingDown
from spear_twisted.execution import cancel_signal
from spear_twisted.runtime.environment import protocol_environment
from spear_twisted.wire import (
    CustomSignal,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionStatus,
    FrameDecoder,
    MessageType,
    RuntimeInstanceId,
    RuntimeType,
    SignalMessage,
    SignalType,
    SpearMessage,
    Timestamp,
)
from tests.bridge_support import self_signed_certificate
from tests.channel_support import ClockReactor, short_temp_dir, turns, wait_until

txaio.use_twisted()

from spear_twisted.agent.core import Agent  # noqa: E402  (txaio's framework first)
from spear_twisted.agent.tx import serve as tx_serve  # noqa: E402
from spear_twisted.agent.tx import start_agent  # noqa: E402

INSTANCE = RuntimeInstanceId(RuntimeType.PROCESS, "agent-1")


class Spearlet:
    """The spearlet side of one instance: a listening channel and its secret."""

    def __init__(self, test: TestCase, transport: str = "unix", **config: Any) -> None:
        self.test = test
        self.registry = SecretRegistry()
        self.secret = self.registry.issue(INSTANCE)
        kind = {"unix": UnixChannel, "tcp": TCPChannel, "grpc": GrpcChannel}[transport]
        self.channel: Channel = kind(
            INSTANCE,
            config=ChannelConfig(
                runtime_dir=short_temp_dir(test), heartbeat_interval=None, heartbeat_timeout=None, **config
            ),
            validator=self.registry,
        )
        self.address: ChannelAddress | None = None
        test.addCleanup(self.channel.close)

    @defer.inlineCallbacks
    def listen(self) -> Generator[Deferred[Any], Any, ChannelAddress]:
        self.address = yield self.channel.listen()
        return self.address

    def config(self, **overrides: Any) -> AgentConfig:
        assert self.address is not None
        environ = protocol_environment(INSTANCE, self.secret, self.address.environment())
        return AgentConfig.from_environment(environ, **overrides)

    def execute(self, command: str, *args: str, timeout: int | None = None) -> Deferred[ExecuteResponse]:
        request = ExecuteRequest("task-1", command, args, timeout=timeout)
        answered = self.channel.request_response(SpearMessage.execute_request(0, request), 30)
        return answered.addCallback(lambda message: message.parse_payload())

    def signal(self, kind: SignalType | CustomSignal) -> Deferred[None]:
        return self.channel.send(SpearMessage.signal(0, SignalMessage(kind, "task-1", b"data")))


def serve(
    test: TestCase, handler: Callable[[ExecuteRequest], Any], config: AgentConfig, **kwargs: Any
) -> Agent:
    """A running agent, terminated when the test ends."""
    agent = start_agent(handler, config, **kwargs)

    def stop() -> Deferred[Any]:
        agent.terminate("the test ended")
        return agent.when_finished()

    test.addCleanup(stop)
    return agent


def forms(reactor: Any) -> Callable[[ExecuteRequest], Any]:
    """A handler answering in the form its request's command names."""

    async def awaited() -> str:
        return await yield_later(reactor, "awaited")

    def handle(request: ExecuteRequest) -> Any:
        command = request.command
        if command == "str":
            return "text " + " ".join(request.args)
        if command == "bytes":
            return b"bytes \xff"
        if command == "none":
            return None
        if command == "response":
            return ExecuteResponse(request.task_id, ExecutionStatus.COMPLETED, "custom", None, 7, None)
        if command == "deferred":
            return yield_later(reactor, "later")
        if command == "coroutine":
            return awaited()
        if command == "raise":
            raise ValueError("bad input")
        if command == "failed":
            raise TaskFailed("no luck", exit_code=4, output="partial")
        if command == "int":
            return 5
        raise AssertionError(command)

    return handle


def yield_later(reactor: Any, value: str) -> Deferred[str]:
    return task.deferLater(reactor, 0, lambda: value)


class HandlerTests(TestCase):
    @defer.inlineCallbacks
    def test_every_handler_form_becomes_a_response(self) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self)
        yield spearlet.listen()
        serve(self, forms(real_reactor), spearlet.config())
        yield spearlet.channel.when_connected()
        expected = {
            "str": (ExecutionStatus.COMPLETED, "text a b", None, 0),
            "bytes": (ExecutionStatus.COMPLETED, "bytes \ufffd", None, 0),
            "none": (ExecutionStatus.COMPLETED, None, None, 0),
            "response": (ExecutionStatus.COMPLETED, "custom", None, 7),
            "deferred": (ExecutionStatus.COMPLETED, "later", None, 0),
            "coroutine": (ExecutionStatus.COMPLETED, "awaited", None, 0),
            "raise": (ExecutionStatus.FAILED, None, "ValueError: bad input", 1),
            "failed": (ExecutionStatus.FAILED, "partial", "no luck", 4),
            "int": (
                ExecutionStatus.FAILED,
                None,
                "TypeError: the handler returned int; expected str, bytes, None or an ExecuteResponse",
                1,
            ),
        }
        for command, (status, output, error, exit_code) in expected.items():
            response = yield spearlet.execute(command, "a", "b")
            self.assertEqual(
                (response.status, response.output, response.error, response.exit_code),
                (status, output, error, exit_code),
                command,
            )
            self.assertEqual(response.task_id, "task-1")
            self.assertIsNotNone(response.duration_ms)

    @defer.inlineCallbacks
    def test_a_request_whose_body_cannot_be_read_is_answered_with_an_error_naming_it(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self)
        yield spearlet.listen()
        serve(self, forms(real_reactor), spearlet.config())
        yield spearlet.channel.when_connected()
        unreadable = SpearMessage(MessageType.EXECUTE_REQUEST, 0, Timestamp.now(), b'{"task_id": 5}')
        error = yield self.assertFailure(spearlet.channel.request_response(unreadable, 30), DecodeError)
        self.assertIn("payload.task_id", error.message)
        # The agent goes on serving.
        self.assertEqual((yield spearlet.execute("str", "after")).output, "text after")

    @defer.inlineCallbacks
    def test_a_coroutine_function_is_a_handler(self) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self, "tcp")
        yield spearlet.listen()

        async def handle(request: ExecuteRequest) -> str:
            value = await yield_later(real_reactor, request.command)
            return f"async {value}"

        serve(self, handle, spearlet.config())
        yield spearlet.channel.when_connected()
        response = yield spearlet.execute("hi")
        self.assertEqual(response.output, "async hi")

    @defer.inlineCallbacks
    def test_requests_are_handled_concurrently(self) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self)
        yield spearlet.listen()
        pending: dict[str, Deferred[str]] = {}

        def handle(request: ExecuteRequest) -> Deferred[str]:
            pending[request.command] = Deferred()
            return pending[request.command]

        serve(self, handle, spearlet.config())
        yield spearlet.channel.when_connected()
        first, second = spearlet.execute("first"), spearlet.execute("second")
        yield wait_until(lambda: len(pending) == 2, "both requests reaching the handler")
        pending["second"].callback("two")
        self.assertEqual((yield second).output, "two")
        self.assertNoResult(first)
        pending["first"].callback("one")
        self.assertEqual((yield first).output, "one")

    @defer.inlineCallbacks
    def test_a_request_that_outlives_its_timeout_is_answered_with_timeout(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self)
        yield spearlet.listen()
        clock = ClockReactor()
        cancelled: list[Any] = []

        def handle(request: ExecuteRequest) -> Deferred[str]:
            return Deferred(cancelled.append)

        serve(self, handle, spearlet.config(), reactor=clock)
        yield spearlet.channel.when_connected()
        answered = spearlet.execute("slow", timeout=3)
        yield wait_until(
            lambda: clock.getDelayedCalls() and any(c.getTime() == 3 for c in clock.getDelayedCalls()),
            "the timer",
        )
        clock.advance(3)
        response = yield answered
        self.assertEqual(response.status, ExecutionStatus.TIMEOUT)
        self.assertEqual(response.error, "the handler did not finish within 3 s")
        self.assertEqual(len(cancelled), 1)


class SignalTests(TestCase):
    @defer.inlineCallbacks
    def test_pause_resume_restart_and_custom_reach_the_hook(self) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self)
        yield spearlet.listen()
        seen: list[SignalMessage] = []
        serve(self, forms(real_reactor), spearlet.config(), on_signal=seen.append)
        yield spearlet.channel.when_connected()
        kinds = [SignalType.PAUSE, SignalType.RESUME, SignalType.RESTART, SignalType.custom("reload")]
        for kind in kinds:
            yield spearlet.signal(kind)
        yield wait_until(lambda: len(seen) == 4, "the signals")
        self.assertEqual([message.signal_type for message in seen], kinds)
        self.assertEqual(seen[0].data, b"data")

    @defer.inlineCallbacks
    def test_a_failing_hook_does_not_end_the_agent(self) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self)
        yield spearlet.listen()

        async def hook(message: SignalMessage) -> None:
            raise RuntimeError("hook bug")

        serve(self, forms(real_reactor), spearlet.config(), on_signal=hook)
        yield spearlet.channel.when_connected()
        yield spearlet.signal(SignalType.PAUSE)
        response = yield spearlet.execute("str")
        self.assertEqual(response.status, ExecutionStatus.COMPLETED)

    @defer.inlineCallbacks
    def test_without_a_hook_signals_are_ignored(self) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self)
        yield spearlet.listen()
        serve(self, forms(real_reactor), spearlet.config())
        yield spearlet.channel.when_connected()
        yield spearlet.signal(SignalType.custom("reload"))
        self.assertEqual((yield spearlet.execute("str")).output, "text ")

    @defer.inlineCallbacks
    def test_the_cancel_signal_abandons_its_request_without_an_answer(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self)
        yield spearlet.listen()
        cancelled: list[Any] = []

        def handle(request: ExecuteRequest) -> Any:
            if request.command == "slow":
                return Deferred(cancelled.append)
            return "quick"

        serve(self, handle, spearlet.config())
        yield spearlet.channel.when_connected()
        request = SpearMessage.execute_request(0, ExecuteRequest("task-1", "slow"))
        timed_out = yield self.assertFailure(spearlet.channel.request_response(request, 0.2), RequestTimeout)
        yield spearlet.channel.send(cancel_signal("task-1", timed_out.request_id))
        yield wait_until(lambda: len(cancelled) == 1, "the handler's cancellation")
        self.assertEqual((yield spearlet.execute("next")).output, "quick")
        self.assertEqual(spearlet.channel.get_stats().late_responses, 0)

    @defer.inlineCallbacks
    def test_terminate_lets_running_requests_finish_then_ends_cleanly(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self)
        yield spearlet.listen()
        slow: Deferred[str] = Deferred()
        started: list[str] = []

        def handle(request: ExecuteRequest) -> Deferred[str]:
            started.append(request.command)
            return slow

        agent = serve(self, handle, spearlet.config())
        yield spearlet.channel.when_connected()
        running = spearlet.execute("slow")
        yield wait_until(lambda: started == ["slow"], "the request")
        yield spearlet.signal(SignalType.TERMINATE)
        yield wait_until(lambda: agent.terminating, "the Terminate signal")
        yield self.assertFailure(spearlet.execute("late"), ShuttingDown)
        finished = agent.when_finished()
        self.assertNoResult(finished)
        slow.callback("finished")
        self.assertEqual((yield running).output, "finished")
        status = yield finished
        self.assertEqual(status, EXIT_OK)
        yield wait_until(lambda: not spearlet.channel.is_connected(), "the close")

    @defer.inlineCallbacks
    def test_serve_runs_an_agent_in_a_running_reactor_and_fires_with_its_exit_status(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self)
        yield spearlet.listen()
        finished = tx_serve(forms(real_reactor), spearlet.config(), reactor=real_reactor)
        yield spearlet.channel.when_connected()
        self.assertEqual((yield spearlet.execute("str", "served")).output, "text served")
        yield spearlet.signal(SignalType.TERMINATE)
        self.assertEqual((yield finished), EXIT_OK)
        yield wait_until(lambda: not spearlet.channel.is_connected(), "the close")


class ConnectionTests(TestCase):
    @defer.inlineCallbacks
    def test_a_lost_connection_is_reestablished_and_authenticated_again(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self)
        yield spearlet.listen()
        clock = ClockReactor()
        agent = serve(self, forms(real_reactor), spearlet.config(retry_delay=2), reactor=clock)
        yield spearlet.channel.when_connected()
        yield wait_until(lambda: agent.connections == 1, "the agent reading its AuthResponse")
        connection = spearlet.channel.connection
        assert connection is not None
        connection.abort()
        yield wait_until(lambda: agent.connection is None, "the loss")
        self.assertFalse(spearlet.channel.is_connected())
        clock.advance(2)
        yield spearlet.channel.when_connected()
        yield wait_until(lambda: agent.connections == 2, "the second authentication")
        self.assertEqual((yield spearlet.execute("str", "again")).output, "text again")

    @defer.inlineCallbacks
    def test_when_the_spearlet_is_gone_for_good_the_agent_exits_69(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self)
        yield spearlet.listen()
        clock = ClockReactor()
        config = spearlet.config(max_retries=3, retry_delay=1, max_retry_delay=2)
        agent = serve(self, forms(real_reactor), config, reactor=clock)
        finished = agent.when_finished()
        yield spearlet.channel.when_connected()
        yield wait_until(lambda: agent.connections == 1, "the agent reading its AuthResponse")
        yield spearlet.channel.close()
        for attempt, delay in enumerate((1, 2, 2), start=1):
            yield wait_until(lambda attempt=attempt: agent.attempts == attempt, f"failed attempt {attempt}")
            self.assertNoResult(finished)
            clock.advance(delay)
        status = yield finished
        self.assertEqual(status, EXIT_UNREACHABLE)

    @defer.inlineCallbacks
    def test_a_refused_secret_exits_77(self) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self)
        yield spearlet.listen()
        agent = serve(self, forms(real_reactor), spearlet.config(secret="not-the-right-secret"))
        status = yield agent.when_finished()
        self.assertEqual(status, EXIT_AUTH_REFUSED)
        self.assertEqual(spearlet.channel.last_connection_error, "invalid token")

    @defer.inlineCallbacks
    def connected_on_a_clock(self) -> Generator[Deferred[Any], Any, tuple[Spearlet, ClockReactor, Agent]]:
        """A spearlet and an authenticated agent (``forms``, heartbeats every 5 s) whose time is a Clock."""
        spearlet = Spearlet(self)
        yield spearlet.listen()
        clock = ClockReactor()
        agent = serve(self, forms(real_reactor), spearlet.config(heartbeat_interval=5), reactor=clock)
        yield spearlet.channel.when_connected()
        yield wait_until(lambda: agent.connections == 1, "the agent reading its AuthResponse")
        return spearlet, clock, agent

    @defer.inlineCallbacks
    def test_heartbeats_are_sent_in_silence(self) -> Generator[Deferred[Any], Any, None]:
        spearlet, clock, _ = yield self.connected_on_a_clock()
        connection = spearlet.channel.connection
        assert connection is not None and connection.session is not None
        session = connection.session
        clock.advance(5)
        yield wait_until(lambda: session.heartbeats_received == 1, "a heartbeat")
        clock.advance(5)
        yield wait_until(lambda: session.heartbeats_received == 2, "a second heartbeat")

    @defer.inlineCallbacks
    def test_traffic_postpones_heartbeats_and_the_one_timer_follows(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        spearlet, clock, _ = yield self.connected_on_a_clock()
        connection = spearlet.channel.connection
        assert connection is not None and connection.session is not None
        session = connection.session
        clock.advance(3)
        response = yield spearlet.execute("str", "x")
        self.assertEqual(response.output, "text x")
        # The timer armed before the request fires at the old deadline (5 s),
        # finds nothing due (the response was sent at 3 s) and re-arms.
        clock.advance(3)
        yield turns()
        self.assertEqual(session.heartbeats_received, 0)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(2)
        yield wait_until(lambda: session.heartbeats_received == 1, "a heartbeat 5 s after the response")

    @defer.inlineCallbacks
    def test_an_immediate_answer_arms_no_timer(self) -> Generator[Deferred[Any], Any, None]:
        spearlet, clock, agent = yield self.connected_on_a_clock()
        armed: list[float] = []
        call_later = clock.callLater

        def counting(delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
            armed.append(delay)
            return call_later(delay, f, *args, **kw)

        clock.callLater = counting  # type: ignore[method-assign]
        for command in ("str", "bytes", "none", "response"):
            response = yield spearlet.execute(command, timeout=30)
            self.assertEqual(response.status, ExecutionStatus.COMPLETED, command)
        # No request timeout timer, no re-arming of the connection's timer.
        self.assertEqual(armed, [])
        self.assertFalse(agent.busy)
        # A Deferred is waited for, with its request's timeout.
        response = yield spearlet.execute("deferred", timeout=30)
        self.assertEqual(response.output, "later")
        self.assertEqual(armed, [30])

    @defer.inlineCallbacks
    def test_a_socket_authenticated_before_twisted_is_adopted(self) -> Generator[Deferred[Any], Any, None]:
        for transport in ("unix", "tcp"):
            spearlet = Spearlet(self, transport)
            yield spearlet.listen()
            config = spearlet.config()
            connected = connect_and_authenticate(config)
            assert connected is not None
            yield spearlet.channel.when_connected()
            agent = serve(self, forms(real_reactor), config, preconnected=connected)
            self.assertEqual(connected.sock.fileno(), -1)
            self.assertEqual((yield spearlet.execute("str", transport)).output, f"text {transport}")
            yield wait_until(lambda agent=agent: agent.connections == 1, "the AuthResponse read by the agent")

    @defer.inlineCallbacks
    def test_a_spearlet_that_breaks_the_protocol_makes_the_agent_exit_76(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        class Garbage(protocol.Protocol):
            def dataReceived(self, data: bytes) -> None:
                if FrameDecoder().feed(data):
                    self.transport.write(b"\x00\x00\x00\x03abc")

        port = real_reactor.listenTCP(0, protocol.Factory.forProtocol(Garbage), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        config = AgentConfig(
            instance_id=str(INSTANCE), secret="some-secret-value", transport="tcp", port=port.getHost().port
        )
        agent = serve(self, forms(real_reactor), config)
        self.assertEqual((yield agent.when_finished()), EXIT_PROTOCOL)


class GrpcTransportTests(TestCase):
    """The Twisted agent over the gRPC bridge (a ``ConnectCall`` of its own; no grpcio)."""

    @defer.inlineCallbacks
    def test_requests_signals_and_terminate_over_grpc(self) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self, "grpc")
        yield spearlet.listen()
        config = spearlet.config()
        self.assertEqual((config.transport, config.address), ("grpc", f"grpc:127.0.0.1:{config.port}"))
        signals: list[Any] = []
        agent = serve(self, forms(real_reactor), config, on_signal=signals.append)
        yield spearlet.channel.when_connected()
        self.assertEqual(spearlet.channel.get_stats().transport, "grpc")
        answers = yield defer.gatherResults([spearlet.execute("str", str(n)) for n in range(10)])
        self.assertEqual([a.output for a in answers], [f"text {n}" for n in range(10)])
        failed = yield spearlet.execute("failed")
        self.assertEqual(
            (failed.status, failed.error, failed.exit_code), (ExecutionStatus.FAILED, "no luck", 4)
        )
        yield spearlet.signal(SignalType.PAUSE)
        yield wait_until(lambda: signals, "the signal hook")
        self.assertEqual(signals[0].signal_type, SignalType.PAUSE)
        yield spearlet.signal(SignalType.TERMINATE)
        self.assertEqual((yield agent.when_finished()), EXIT_OK)
        yield wait_until(lambda: not spearlet.channel.is_connected(), "the close")
        self.assertEqual(spearlet.channel.get_stats().connection_errors, 0)

    @defer.inlineCallbacks
    def test_a_lost_grpc_call_is_reestablished_with_backoff(self) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self, "grpc")
        yield spearlet.listen()
        clock = ClockReactor()
        agent = serve(self, forms(real_reactor), spearlet.config(retry_delay=2), reactor=clock)
        yield spearlet.channel.when_connected()
        yield wait_until(lambda: agent.connections == 1, "the agent reading its AuthResponse")
        connection = spearlet.channel.connection
        assert connection is not None
        connection.abort()
        yield wait_until(lambda: agent.connection is None, "the loss")
        clock.advance(1.9)
        yield turns()
        self.assertFalse(spearlet.channel.is_connected())
        clock.advance(0.1)
        yield spearlet.channel.when_connected()
        yield wait_until(lambda: agent.connections == 2, "the second authentication")
        self.assertEqual((yield spearlet.execute("str", "again")).output, "text again")

    @defer.inlineCallbacks
    def test_an_unreachable_grpc_spearlet_makes_the_agent_exit_69(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self, "grpc")
        yield spearlet.listen()
        config = spearlet.config(max_retries=2, retry_delay=1)
        yield spearlet.channel.close()  # nobody listens there any more
        clock = ClockReactor()
        agent = serve(self, forms(real_reactor), config, reactor=clock)
        finished = agent.when_finished()
        for attempt in (1, 2):
            yield wait_until(lambda attempt=attempt: agent.attempts == attempt, f"failed attempt {attempt}")
            self.assertNoResult(finished)
            clock.advance(2)
        self.assertEqual((yield finished), EXIT_UNREACHABLE)

    @defer.inlineCallbacks
    def test_a_refused_secret_over_grpc_exits_77(self) -> Generator[Deferred[Any], Any, None]:
        spearlet = Spearlet(self, "grpc")
        yield spearlet.listen()
        agent = serve(self, forms(real_reactor), spearlet.config(secret="not-the-right-secret"))
        self.assertEqual((yield agent.when_finished()), EXIT_AUTH_REFUSED)
        self.assertEqual(spearlet.channel.last_connection_error, "invalid token")

    @defer.inlineCallbacks
    def test_an_invalid_envelope_from_the_spearlet_makes_the_agent_exit_76(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        def garbage(stream: Any, _context: Any) -> Deferred[None]:
            # An envelope without a timestamp: not a message of the protocol.
            sending: Deferred[None] = stream.send(
                pb.Envelope(message_type=pb.MESSAGE_TYPE_AUTH_RESPONSE, version=1)
            )
            return sending.addCallback(lambda _: stream.receive()).addCallback(lambda _: None)

        methods = MethodRegistry()
        methods.add_bidi_stream("/spear.v1.SpearBridge/Connect", pb.Envelope, pb.Envelope, garbage)
        server = BridgeServer(methods)
        port = real_reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(server.shutdown, 0)
        self.addCleanup(port.stopListening)
        config = AgentConfig(
            instance_id=str(INSTANCE), secret="some-secret-value", transport="grpc", port=port.getHost().port
        )
        agent = serve(self, forms(real_reactor), config)
        self.assertEqual((yield agent.when_finished()), EXIT_PROTOCOL)

    @defer.inlineCallbacks
    def test_over_tls_trusting_the_ca_the_spearlet_names(self) -> Generator[Deferred[Any], Any, None]:
        cert, key, _pem = self_signed_certificate(self.mktemp())
        spearlet = Spearlet(self, "grpc", tls_cert_path=cert, tls_key_path=key)
        yield spearlet.listen()
        config = spearlet.config(host="localhost")
        self.assertEqual(config.tls_ca_path, cert)
        serve(self, forms(real_reactor), config)
        yield spearlet.channel.when_connected()
        self.assertEqual((yield spearlet.execute("str", "tls")).output, "text tls")
