"""Unary calls (``Execute``, ``Status``) against the bridge, with the real grpcio client, sync and aio."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator
from typing import Any

import grpc
import grpc.aio
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.auth import allow_any_caller
from spear_twisted.bridge.config import BridgeConfig
from spear_twisted.bridge.methods import IBridgeBackend, IConnectHandler
from spear_twisted.errors import ErrorCode
from tests.bridge_support import (
    ALICE,
    ALICE_TOKEN,
    CALL_TIMEOUT,
    EchoBackend,
    EchoConnect,
    ServerFixture,
    SyncClient,
    execute_stub,
    in_thread,
    raw_stub,
    run_aio,
    status_stub,
)

Gen = Generator[Deferred[Any], Any, None]


def echo(text: str = "hello") -> pb.ExecuteCall:
    return pb.ExecuteCall(task_id="echo", command="run", input=text.encode())


class UnarySyncTests(TestCase):
    """With grpcio's blocking API, each call in a thread."""

    def setUp(self) -> None:
        self.fixture = ServerFixture(self)
        self.target = self.fixture.listen_tcp()
        self.client = SyncClient(self, self.target)

    def test_the_test_backends_provide_their_interfaces(self) -> None:
        self.assertTrue(verifyObject(IBridgeBackend, EchoBackend()))
        self.assertTrue(verifyObject(IConnectHandler, EchoConnect()))

    @defer.inlineCallbacks
    def test_execute_round_trip(self) -> Gen:
        call = pb.ExecuteCall(
            task_id="echo", command="run", args=["a", "b"], env={"K": "V"}, timeout_seconds=5
        )
        result = yield self.client.call(self.client.execute, call, metadata=ALICE, timeout=CALL_TIMEOUT)
        self.assertEqual(result.status, pb.EXECUTION_STATUS_COMPLETED)
        self.assertEqual(result.output, "run a b")
        self.assertEqual(result.instance_id, "process:echo-1")
        received, context = self.fixture.backend.calls[0]
        self.assertEqual(received, call)
        self.assertEqual(context.caller, "alice")
        self.assertEqual(context.method, "/spear.v1.SpearBridge/Execute")
        self.assertIsNotNone(context.timeout)
        self.assertTrue(0 < context.timeout <= CALL_TIMEOUT + 1, context.timeout)  # grpcio rounds up

    @defer.inlineCallbacks
    def test_input_bytes_pass_unchanged(self) -> Gen:
        data = bytes(range(256)) * 4
        yield self.client.call(
            self.client.execute,
            pb.ExecuteCall(task_id="echo", input=data),
            metadata=ALICE,
            timeout=CALL_TIMEOUT,
        )
        self.assertEqual(self.fixture.backend.calls[0][0].input, data)

    @defer.inlineCallbacks
    def test_status_carries_the_backend_reply_and_the_bridge_figures(self) -> Gen:
        yield self.client.call(self.client.execute, echo(), metadata=ALICE, timeout=CALL_TIMEOUT)
        reply = yield self.client.call(
            self.client.status, pb.StatusRequest(), metadata=ALICE, timeout=CALL_TIMEOUT
        )
        self.assertEqual(reply.server_version, "spear_twisted/test")
        self.assertEqual([task.task_id for task in reply.tasks], ["echo"])
        self.assertEqual(reply.bridge.connections, 1)
        self.assertEqual(reply.bridge.calls, 2)
        self.assertEqual(reply.bridge.active_calls, 1)  # this Status call itself
        self.assertEqual(reply.bridge.failed_calls, 0)

    @defer.inlineCallbacks
    def test_unknown_method_is_unimplemented(self) -> Gen:
        stub = raw_stub(self.client.channel, "/spear.v1.SpearBridge/Nope")
        code, details, _ = yield self.client.fails(stub, b"", timeout=CALL_TIMEOUT)
        self.assertEqual(code, grpc.StatusCode.UNIMPLEMENTED)
        self.assertEqual(details, "unknown method /spear.v1.SpearBridge/Nope")
        stub = raw_stub(self.client.channel, "/other.Service/Execute")
        code, _, _ = yield self.client.fails(stub, b"", timeout=CALL_TIMEOUT)
        self.assertEqual(code, grpc.StatusCode.UNIMPLEMENTED)

    @defer.inlineCallbacks
    def test_missing_credentials_are_unauthenticated(self) -> Gen:
        code, details, _ = yield self.client.fails(self.client.execute, echo(), timeout=CALL_TIMEOUT)
        self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(details, "missing 'authorization: Bearer <token>' metadata")
        self.assertEqual(self.fixture.backend.calls, [])

    @defer.inlineCallbacks
    def test_a_wrong_token_is_unauthenticated_and_never_reaches_the_backend(self) -> Gen:
        for metadata in [
            (("authorization", "Bearer wrong-token-value"),),
            (("authorization", f"Basic {ALICE_TOKEN}"),),
            (("authorization", f"Bearer {ALICE_TOKEN}x"),),
        ]:
            code, details, _ = yield self.client.fails(
                self.client.status, pb.StatusRequest(), metadata=metadata, timeout=CALL_TIMEOUT
            )
            self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED, metadata)
            self.assertNotIn(ALICE_TOKEN, details)
        self.assertEqual(self.fixture.backend.calls, [])

    @defer.inlineCallbacks
    def test_backend_errors_map_to_statuses_with_the_spear_error_code(self) -> Gen:
        code, details, trailers = yield self.client.fails(
            self.client.execute, pb.ExecuteCall(task_id="nope"), metadata=ALICE, timeout=CALL_TIMEOUT
        )
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND)
        self.assertEqual(details, "no task 'nope'")
        self.assertIn(("spear-error-code", str(int(ErrorCode.UNKNOWN_TASK))), trailers)

    @defer.inlineCallbacks
    def test_a_backend_bug_is_unknown_without_its_traceback(self) -> Gen:
        code, details, _ = yield self.client.fails(
            self.client.execute, pb.ExecuteCall(task_id="crash"), metadata=ALICE, timeout=CALL_TIMEOUT
        )
        self.assertEqual(code, grpc.StatusCode.UNKNOWN)
        self.assertNotIn("a bug in the backend", details)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_an_unparsable_request_is_internal(self) -> Gen:
        stub = raw_stub(self.client.channel, "/spear.v1.SpearBridge/Execute")
        code, details, _ = yield self.client.fails(
            stub, b"\xff\xff\xff", metadata=ALICE, timeout=CALL_TIMEOUT
        )
        self.assertEqual(code, grpc.StatusCode.INTERNAL)
        self.assertIn("not a valid spear.v1.ExecuteCall", details)

    @defer.inlineCallbacks
    def test_oversize_request_is_resource_exhausted(self) -> Gen:
        fixture = ServerFixture(self, config=BridgeConfig(max_receive_message_size=1000))
        client = SyncClient(self, fixture.listen_tcp())
        code, details, _ = yield client.fails(
            client.execute, echo("x" * 5000), metadata=ALICE, timeout=CALL_TIMEOUT
        )
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("exceeds the limit of 1000 bytes", details)
        self.assertEqual(fixture.backend.calls, [])
        # The connection is still good.
        result = yield client.call(client.execute, echo("small"), metadata=ALICE, timeout=CALL_TIMEOUT)
        self.assertEqual(result.output, "small")

    @defer.inlineCallbacks
    def test_oversize_response_is_resource_exhausted(self) -> Gen:
        fixture = ServerFixture(self, config=BridgeConfig(max_send_message_size=1000))
        client = SyncClient(self, fixture.listen_tcp())
        code, details, _ = yield client.fails(
            client.execute, pb.ExecuteCall(task_id="big", args=["2000"]), metadata=ALICE, timeout=CALL_TIMEOUT
        )
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("send limit of 1000 bytes", details)

    @defer.inlineCallbacks
    def test_a_compressed_message_is_refused(self) -> Gen:
        code, details, _ = yield self.client.fails(
            self.client.execute,
            echo("compress me " * 100),
            metadata=ALICE,
            timeout=CALL_TIMEOUT,
            compression=grpc.Compression.Gzip,
        )
        self.assertEqual(code, grpc.StatusCode.UNIMPLEMENTED)
        self.assertIn("compressed messages are not supported (grpc-encoding gzip)", details)
        self.assertEqual(self.fixture.backend.calls, [])

    @defer.inlineCallbacks
    def test_client_cancellation_cancels_the_backend_work(self) -> Gen:
        future = yield in_thread(
            self.client.execute.future, pb.ExecuteCall(task_id="slow"), metadata=ALICE, timeout=CALL_TIMEOUT
        )
        yield self.fixture.backend.when_started()
        yield in_thread(future.cancel)
        yield self.fixture.backend.when_cancelled()
        self.assertTrue(future.cancelled())
        counters = self.fixture.server.counters()
        self.assertEqual(counters.resets, 1)
        self.assertEqual(counters.active_calls, 0)

    @defer.inlineCallbacks
    def test_many_concurrent_calls_on_one_connection(self) -> Gen:
        # More than max_concurrent_streams: grpcio queues the rest until streams free up.
        count = 150
        futures = yield in_thread(
            lambda: [
                self.client.execute.future(
                    pb.ExecuteCall(task_id="slow"), metadata=ALICE, timeout=CALL_TIMEOUT
                )
                for _ in range(count)
            ]
        )
        yield self.fixture.backend.when_started(100)
        self.assertEqual(len(self.fixture.server.connections), 1)
        connection = next(iter(self.fixture.server.connections))
        self.assertEqual(len(connection.calls), 100)
        self.fixture.backend.release()
        yield self.fixture.backend.when_started(count - 100)
        self.fixture.backend.release()
        results = yield in_thread(lambda: [future.result() for future in futures])
        self.assertEqual([result.output for result in results], ["released"] * count)
        self.assertEqual(len(self.fixture.server.connections), 1)


class DeadlineTests(TestCase):
    """``grpc-timeout`` is enforced on the server's own clock."""

    @defer.inlineCallbacks
    def test_deadline_exceeded_cancels_the_work(self) -> Gen:
        clock = task.Clock()
        fixture = ServerFixture(self, clock=clock)
        client = SyncClient(self, fixture.listen_tcp())
        failing = client.fails(client.execute, pb.ExecuteCall(task_id="slow"), metadata=ALICE, timeout=30)
        yield fixture.backend.when_started()
        _call, context = fixture.backend.calls[0]
        self.assertEqual(context.deadline, context.timeout)  # the clock started at 0
        self.assertTrue(29 < context.timeout <= 31, context.timeout)  # grpcio rounds up
        clock.advance(context.timeout)
        yield fixture.backend.when_cancelled()
        code, details, _ = yield failing
        self.assertEqual(code, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(details, f"deadline exceeded ({context.timeout:g} s)")

    @defer.inlineCallbacks
    def test_no_deadline_without_grpc_timeout(self) -> Gen:
        clock = task.Clock()
        fixture = ServerFixture(self, clock=clock)
        client = SyncClient(self, fixture.listen_tcp())
        future = yield in_thread(client.execute.future, pb.ExecuteCall(task_id="slow"), metadata=ALICE)
        yield fixture.backend.when_started()
        self.assertIsNone(fixture.backend.calls[0][1].timeout)
        clock.advance(10_000)
        fixture.backend.release("late but fine")
        result = yield in_thread(future.result)
        self.assertEqual(result.output, "late but fine")


class AuthenticationConfigurationTests(TestCase):
    @defer.inlineCallbacks
    def test_without_an_authenticator_callers_are_refused(self) -> Gen:
        fixture = ServerFixture(self, authenticator=None)
        client = SyncClient(self, fixture.listen_tcp())
        code, details, _ = yield client.fails(client.execute, echo(), metadata=ALICE, timeout=CALL_TIMEOUT)
        self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(details, "this server has no caller authentication configured")

    @defer.inlineCallbacks
    def test_allow_any_caller_is_an_explicit_choice(self) -> Gen:
        fixture = ServerFixture(self, authenticator=allow_any_caller)
        client = SyncClient(self, fixture.listen_tcp())
        result = yield client.call(client.execute, echo("open"), timeout=CALL_TIMEOUT)
        self.assertEqual(result.output, "open")
        self.assertEqual(fixture.backend.calls[0][1].caller, "anonymous")


class UnaryAioTests(TestCase):
    """With ``grpc.aio``, in its own event loop in a thread."""

    def setUp(self) -> None:
        self.fixture = ServerFixture(self)
        self.target = self.fixture.listen_tcp()

    @defer.inlineCallbacks
    def test_execute_status_and_errors(self) -> Gen:
        target = self.target

        async def scenario() -> list[Any]:
            async with grpc.aio.insecure_channel(target) as channel:
                execute = execute_stub(channel)
                status = status_stub(channel)
                outcomes: list[Any] = []
                result = await execute(echo("aio"), metadata=ALICE, timeout=CALL_TIMEOUT)
                outcomes.append(result.output)
                reply = await status(pb.StatusRequest(task_id="echo"), metadata=ALICE, timeout=CALL_TIMEOUT)
                outcomes.append([task.task_id for task in reply.tasks])
                for call in [
                    execute(pb.ExecuteCall(task_id="nope"), metadata=ALICE, timeout=CALL_TIMEOUT),
                    execute(echo(), timeout=CALL_TIMEOUT),
                    raw_stub(channel, "/spear.v1.SpearBridge/Missing")(b"", timeout=CALL_TIMEOUT),
                ]:
                    try:
                        await call
                    except grpc.aio.AioRpcError as e:
                        outcomes.append(e.code())
                return outcomes

        outcomes = yield run_aio(scenario)
        self.assertEqual(
            outcomes,
            [
                "aio",
                ["echo"],
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.UNIMPLEMENTED,
            ],
        )

    @defer.inlineCallbacks
    def test_cancellation_cancels_the_backend_work(self) -> Gen:
        target = self.target
        backend = self.fixture.backend
        started = threading.Event()
        self.fixture.backend.when_started().addCallback(lambda _: started.set())

        async def scenario() -> bool:
            async with grpc.aio.insecure_channel(target) as channel:
                call = execute_stub(channel)(
                    pb.ExecuteCall(task_id="slow"), metadata=ALICE, timeout=CALL_TIMEOUT
                )
                await asyncio.get_running_loop().run_in_executor(None, started.wait, CALL_TIMEOUT)
                call.cancel()
                try:
                    await call
                except asyncio.CancelledError:
                    return True
                return False

        cancelled = yield run_aio(scenario)
        self.assertTrue(cancelled)
        yield backend.when_cancelled()

    @defer.inlineCallbacks
    def test_limits_and_deadline(self) -> Gen:
        clock = task.Clock()
        fixture = ServerFixture(self, clock=clock, config=BridgeConfig(max_receive_message_size=1000))
        target = fixture.listen_tcp()

        async def scenario() -> list[Any]:
            async with grpc.aio.insecure_channel(target) as channel:
                execute = execute_stub(channel)
                outcomes = []
                for call in [
                    execute(echo("x" * 5000), metadata=ALICE, timeout=CALL_TIMEOUT),
                    execute(
                        echo("y" * 500),
                        metadata=ALICE,
                        timeout=CALL_TIMEOUT,
                        compression=grpc.Compression.Gzip,
                    ),
                    execute(pb.ExecuteCall(task_id="slow"), metadata=ALICE, timeout=30),
                ]:
                    try:
                        await call
                    except grpc.aio.AioRpcError as e:
                        outcomes.append((e.code(), e.details()))
                return outcomes

        outcome = run_aio(scenario)
        yield fixture.backend.when_started()
        clock.advance(fixture.backend.calls[0][1].timeout)
        outcomes = yield outcome
        self.assertEqual(
            [code for code, _ in outcomes],
            [
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ],
        )
        self.assertEqual(fixture.backend.cancelled, 1)

    @defer.inlineCallbacks
    def test_many_concurrent_calls(self) -> Gen:
        target = self.target

        async def scenario() -> list[str]:
            async with grpc.aio.insecure_channel(target) as channel:
                execute = execute_stub(channel)
                calls = [execute(echo(str(n)), metadata=ALICE, timeout=CALL_TIMEOUT) for n in range(300)]
                results = await asyncio.gather(*calls)
                return [result.output for result in results]

        outputs = yield run_aio(scenario)
        self.assertEqual(outputs, [str(n) for n in range(300)])
        self.assertEqual(self.fixture.server.counters().calls, 300)
