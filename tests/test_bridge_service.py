"""
The gRPC bridge of a whole spearlet: ``Connect`` through the
ConnectionManager on a shared listener (many instances' sessions on one
HTTP/2 connection), and the front door: ``Execute`` of real tasks through
the TaskExecutionManager and ``Status``, with the real grpcio client, from
the ``[bridge]`` table of the configuration.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import grpc
import grpc.aio
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.auth import BearerTokenAuthenticator
from spear_twisted.bridge.backend import TaskExecutionBackend
from spear_twisted.bridge.config import BridgeConfig, BridgeServiceConfig
from spear_twisted.bridge.contract import CONNECT_PATH, envelope_from_message, message_from_envelope
from spear_twisted.bridge.methods import MethodRegistry
from spear_twisted.bridge.server import BridgeServer, BridgeService
from spear_twisted.bridge.session import ConnectSession
from spear_twisted.config import ConfigError, loads_config
from spear_twisted.connections import ConnectionManager
from spear_twisted.errors import ErrorCode
from spear_twisted.wire import (
    AuthRequest,
    AuthResponse,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionStatus,
    RuntimeInstanceId,
    RuntimeType,
    SpearMessage,
)
from tests.bridge_support import (
    CALL_TIMEOUT,
    connect_stub,
    execute_stub,
    in_thread,
    rpc_failure,
    run_aio,
    status_stub,
)
from tests.channel_support import execute, wait_until
from tests.runtime_support import python_args, with_timeout, write_script
from tests.service_support import ECHO_ARGS, running_service, task_config
from tests.test_agent_asyncio import AGENT

Gen = Generator[Deferred[Any], Any, None]

STEP = 60.0

#: The caller token of the front door tests.
OPS_TOKEN = "ops-token-of-some-length"
OPS = (("authorization", f"Bearer {OPS_TOKEN}"),)


class SharedListenerTests(TestCase):
    """``Connect`` served by a ConnectionManager on a bridge listener of its own."""

    def setUp(self) -> None:
        self.manager = ConnectionManager()
        methods = MethodRegistry()
        methods.add_bidi_stream(CONNECT_PATH, pb.Envelope, pb.Envelope, ConnectSession(self.manager).connect)
        self.bridge = BridgeService(BridgeServer(methods), ["tcp:0:interface=127.0.0.1"])
        self.bridge.startService()
        self.addCleanup(self.manager.stopService)
        self.addCleanup(self.bridge.stopService)
        self.target = f"127.0.0.1:{self.bridge.ports[0].getHost().port}"

    @defer.inlineCallbacks
    def test_many_instances_sessions_on_one_http2_connection(self) -> Gen:
        count = 20
        instances = [RuntimeInstanceId(RuntimeType.KUBERNETES, f"pod-{n}") for n in range(count)]
        secrets = self.manager.secrets
        assert secrets is not None
        tokens = [secrets.issue(instance_id) for instance_id in instances]
        target = self.target

        async def agents() -> list[tuple[bool, str]]:
            import asyncio

            async with grpc.aio.insecure_channel(target) as channel:

                async def agent(instance_id: RuntimeInstanceId, token: str) -> tuple[bool, str]:
                    call = connect_stub(channel)(timeout=CALL_TIMEOUT)
                    request = AuthRequest(str(instance_id), token, "grpcio-test/1", "grpcio")
                    await call.write(envelope_from_message(SpearMessage.auth_request(0, request)))
                    accepted = message_from_envelope(await call.read()).parse_payload()
                    assert isinstance(accepted, AuthResponse)
                    envelope = await call.read()
                    message = message_from_envelope(envelope)
                    body = message.parse_payload()
                    assert isinstance(body, ExecuteRequest)
                    answer = ExecuteResponse(
                        body.task_id, ExecutionStatus.COMPLETED, f"{instance_id}:{body.args[0]}"
                    )
                    await call.write(
                        envelope_from_message(SpearMessage.execute_response(message.request_id, answer))
                    )
                    ending = await call.read()  # the spearlet's ConnectionClose
                    await call.done_writing()
                    await call.read()
                    return accepted.success, message_from_envelope(ending).message_type.value

                return list(
                    await asyncio.gather(*(agent(i, t) for i, t in zip(instances, tokens, strict=True)))
                )

        running = run_aio(agents)
        channels = [self.manager.channel_for(instance_id) for instance_id in instances]
        yield defer.gatherResults([channel.when_connected() for channel in channels])
        self.assertEqual(self.manager.get_connection_count(), count)
        self.assertEqual({state.transport for state in self.manager.get_all_connections()}, {"grpc"})
        # One HTTP/2 connection carries every session.
        self.assertEqual(self.bridge.server.counters().connections, 1)
        self.assertEqual(self.bridge.server.counters().active_calls, count)
        answers = yield defer.gatherResults(
            [channel.request_response(execute("t", str(n)), timeout=30) for n, channel in enumerate(channels)]
        )
        self.assertEqual(
            [answer.parse_payload().output for answer in answers],
            [f"{instance_id}:{n}" for n, instance_id in enumerate(instances)],
        )
        yield self.manager.close_all_connections("the test is over")
        results = yield running
        self.assertEqual(results, [(True, "ConnectionClose")] * count)

    @defer.inlineCallbacks
    def test_a_wrong_secret_is_refused_by_the_manager(self) -> Gen:
        instance_id = RuntimeInstanceId(RuntimeType.KUBERNETES, "pod-1")
        assert self.manager.secrets is not None
        self.manager.secrets.issue(instance_id)
        target = self.target

        def agent() -> list[pb.Envelope]:
            request = AuthRequest(str(instance_id), "not-the-secret", "t", "t")
            with grpc.insecure_channel(target) as channel:
                return list(
                    connect_stub(channel)(
                        iter([envelope_from_message(SpearMessage.auth_request(0, request))])
                    )
                )

        received = yield in_thread(agent)
        body = message_from_envelope(received[0]).parse_payload()
        assert isinstance(body, AuthResponse)
        self.assertEqual((body.success, body.error_message), (False, "invalid token"))
        self.assertEqual(self.manager.monitoring.system.authentication_failures, 1)


class FrontDoorTests(TestCase):
    """``Execute`` and ``Status`` of a running SpearService, from its ``[bridge]`` table."""

    @defer.inlineCallbacks
    def start(self, *tasks: Any, **bridge: Any) -> Generator[Deferred[Any], Any, str]:
        settings: dict[str, Any] = {"listen": ["tcp:0:interface=127.0.0.1"], "tokens": {"ops": OPS_TOKEN}}
        settings.update(bridge)
        self.service = running_service(self, *tasks, bridge=BridgeServiceConfig(**settings))
        assert self.service.bridge is not None
        yield self.service.bridge.when_listening()
        return f"127.0.0.1:{self.service.bridge.ports[0].getHost().port}"

    @defer.inlineCallbacks
    def test_execute_of_the_echo_task_through_the_task_manager(self) -> Gen:
        target = yield self.start(task_config("echo", ECHO_ARGS, min_instances=1))
        call = pb.ExecuteCall(task_id="echo", command="hello", args=["grpc", "caller"])

        def sync() -> pb.ExecuteResult:
            with grpc.insecure_channel(target) as channel:
                return execute_stub(channel)(call, metadata=OPS, timeout=CALL_TIMEOUT)

        async def aio() -> list[pb.ExecuteResult]:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = execute_stub(channel)
                return [await stub(call, metadata=OPS, timeout=CALL_TIMEOUT) for _ in range(5)]

        result = yield with_timeout(in_thread(sync), STEP, "the sync call")
        self.assertEqual(
            (result.task_id, result.status, result.output, result.exit_code),
            ("echo", pb.EXECUTION_STATUS_COMPLETED, "hello grpc caller", 0),
        )
        self.assertTrue(result.HasField("duration_ms"))
        [member] = self.service.tasks.pools["echo"].members
        self.assertEqual(result.instance_id, str(member.instance.instance_id))
        results = yield with_timeout(run_aio(aio), STEP, "the aio calls")
        self.assertEqual({r.output for r in results}, {"hello grpc caller"})
        self.assertEqual({r.instance_id for r in results}, {str(member.instance.instance_id)})
        served = sum(instance["served"] for instance in self.service.tasks.status()[0]["instances"])
        self.assertEqual(served, 6)

    @defer.inlineCallbacks
    def test_refusals_become_statuses_with_the_spear_error_code(self) -> Gen:
        target = yield self.start(task_config("echo", ECHO_ARGS, min_instances=0))

        def calls() -> list[tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]]:
            with grpc.insecure_channel(target) as channel:
                stub = execute_stub(channel)
                unknown = pb.ExecuteCall(task_id="nope")
                return [
                    rpc_failure(lambda: stub(unknown, metadata=OPS, timeout=CALL_TIMEOUT)),
                    rpc_failure(lambda: stub(unknown, timeout=CALL_TIMEOUT)),
                    rpc_failure(
                        lambda: stub(
                            unknown,
                            metadata=(("authorization", "Bearer wrong-token-value"),),
                            timeout=CALL_TIMEOUT,
                        )
                    ),
                ]

        (missing, anonymous, wrong) = yield in_thread(calls)
        self.assertEqual(missing[0], grpc.StatusCode.NOT_FOUND)
        self.assertIn("no task 'nope' is configured (tasks: echo)", missing[1])
        self.assertIn(("spear-error-code", str(int(ErrorCode.UNKNOWN_TASK))), missing[2])
        self.assertEqual(anonymous[0], grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(wrong[:2], (grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token"))

    @defer.inlineCallbacks
    def test_a_task_out_of_time_answers_timeout_and_a_passed_deadline_withdraws_the_request(self) -> Gen:
        script = write_script(self, AGENT)
        target = yield self.start(task_config("agent", python_args(script), min_instances=1))
        yield with_timeout(
            self.service.tasks.execute("agent", ExecuteRequest("agent", "plain")), STEP, "ready"
        )

        def calls() -> tuple[pb.ExecuteResult, grpc.StatusCode]:
            with grpc.insecure_channel(target) as channel:
                stub = execute_stub(channel)
                slow = pb.ExecuteCall(task_id="agent", command="slow", timeout_seconds=1)
                timed_out = stub(slow, metadata=OPS, timeout=CALL_TIMEOUT)
                code = rpc_failure(
                    lambda: stub(pb.ExecuteCall(task_id="agent", command="slow"), metadata=OPS, timeout=1)
                )[0]
                return timed_out, code

        timed_out, code = yield with_timeout(in_thread(calls), STEP, "the calls")
        self.assertEqual((timed_out.status, timed_out.task_id), (pb.EXECUTION_STATUS_TIMEOUT, "agent"))
        [member] = self.service.tasks.pools["agent"].members
        self.assertEqual(timed_out.instance_id, str(member.instance.instance_id))
        self.assertEqual(code, grpc.StatusCode.DEADLINE_EXCEEDED)
        # The request is withdrawn (cancelled by the call's end, or timed out
        # at the same deadline) once the server sees the end, which grpcio's
        # own deadline may have told its caller first: nothing of it is left.
        outcomes = self.service.tasks.outcomes
        yield wait_until(
            lambda: outcomes.get(("agent", "cancelled"), 0) + outcomes.get(("agent", "timeout"), 0) == 2,
            "the request withdrawn",
        )
        self.assertEqual(self.service.tasks.status()[0]["outstanding"], 0)

    @defer.inlineCallbacks
    def test_status_describes_tasks_instances_connections_and_the_bridge(self) -> Gen:
        target = yield self.start(task_config("echo", ECHO_ARGS, min_instances=2, max_instances=2))
        yield with_timeout(self.service.tasks.execute("echo", ExecuteRequest("echo", "warm")), STEP, "ready")
        yield wait_until(
            lambda: [i["status"] for i in self.service.tasks.status()[0]["instances"]] == ["Ready", "Ready"],
            "both instances ready",
        )

        def status() -> tuple[pb.StatusReply, tuple[grpc.StatusCode, str, Any]]:
            with grpc.insecure_channel(target) as channel:
                stub = status_stub(channel)
                reply = stub(pb.StatusRequest(), metadata=OPS, timeout=CALL_TIMEOUT)
                missing = rpc_failure(
                    lambda: stub(pb.StatusRequest(task_id="nope"), metadata=OPS, timeout=CALL_TIMEOUT)
                )
                return reply, missing

        reply, missing = yield in_thread(status)
        self.assertTrue(reply.server_version.startswith("spear_twisted/"))
        self.assertEqual(reply.protocol_version, 1)
        [task] = reply.tasks
        self.assertEqual((task.task_id, task.min_instances, task.instances), ("echo", 2, 2))
        self.assertEqual((task.ready_instances, task.executions, task.failures, task.in_flight), (2, 1, 0, 0))
        self.assertEqual(len(reply.instances), 2)
        for instance in reply.instances:
            self.assertEqual((instance.task_id, instance.state, instance.connected), ("echo", "Ready", True))
            self.assertIn(instance.transport, ("unix", "tcp"))
        self.assertEqual(reply.connections.active, 2)
        self.assertEqual(sum(reply.connections.by_transport.values()), 2)
        self.assertEqual(reply.bridge.connections, 1)
        self.assertEqual(missing[0], grpc.StatusCode.NOT_FOUND)

    def test_the_bridge_is_served_only_when_it_listens_somewhere(self) -> None:
        service = running_service(self, task_config("echo", ECHO_ARGS, min_instances=0))
        self.assertIsNone(service.bridge)
        self.assertNotIn("bridge", [child.name for child in service])

    def test_a_backend_provides_IBridgeBackend(self) -> None:
        from zope.interface.verify import verifyObject

        from spear_twisted.bridge.methods import IBridgeBackend

        self.assertTrue(verifyObject(IBridgeBackend, TaskExecutionBackend(object())))


class BridgeTableTests(SynchronousTestCase):
    """The ``[bridge]`` table of the configuration."""

    def test_the_table_is_read_with_its_http2_settings(self) -> None:
        config = loads_config(
            """
            [bridge]
            listen = ["tcp:50051:interface=127.0.0.1", "unix:/run/spear/bridge.sock"]
            tokens = { ops = "ops-token-of-some-length" }
            connect = false

            [bridge.http2]
            max_concurrent_streams = 8
            """
        )
        bridge = config.bridge
        self.assertEqual(bridge.listen, ("tcp:50051:interface=127.0.0.1", "unix:/run/spear/bridge.sock"))
        self.assertEqual((bridge.tokens, bridge.connect), ({"ops": "ops-token-of-some-length"}, False))
        self.assertEqual(bridge.http2, BridgeConfig(max_concurrent_streams=8))
        self.assertEqual(loads_config("").bridge, BridgeServiceConfig())

    def test_mistakes_are_named(self) -> None:
        for text, expected in [
            ('[bridge]\nlisten = ["50051"]', "is not an endpoint description"),
            ('[bridge]\ntokens = { ops = "short" }', "the token of caller 'ops' is unusable"),
            ("[bridge]\nallow_any_caller = true\ntokens = { ops = 'ops-token-of-some-length' }", "not both"),
            ("[bridge]\nlisen = []", "lisen"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                loads_config(text, "spear.toml")
            self.assertIn(expected, str(caught.exception))
            self.assertIn("spear.toml", str(caught.exception))

    def test_tokens_from_files(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        good, empty = os.path.join(directory, "good"), os.path.join(directory, "empty")
        with open(good, "w") as f:
            f.write(" ops-token-from-a-file \n")
        with open(empty, "w") as f:
            f.write("\n")
        config = BridgeServiceConfig(tokens={"a": "a-token-of-some-length"}, token_files={"b": good})
        self.assertEqual(
            config.caller_tokens(), {"a": "a-token-of-some-length", "b": "ops-token-from-a-file"}
        )
        for path, expected in [(empty, "is empty"), (os.path.join(directory, "none"), "cannot read")]:
            with self.assertRaises(ValueError) as caught:
                BridgeServiceConfig(token_files={"c": path}).caller_tokens()
            self.assertIn(expected, str(caught.exception))
        # A usable authenticator from them.
        BearerTokenAuthenticator(config.caller_tokens())
