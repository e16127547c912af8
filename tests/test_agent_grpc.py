"""
Spawned instances on the gRPC transport, end to end: a real ProcessRuntime
gives each child ``SPEAR_COMMUNICATION_TYPE=grpc`` and the port of its
GrpcChannel; the child's agent (grpcio's ``grpc.aio`` under asyncio, the
bridge's Twisted client under Twisted) connects, authenticates and serves.
Also: the entry point without grpcio installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from spear_twisted.agent import EXIT_CONFIG, EXIT_OK
from spear_twisted.bridge.channel import GrpcChannel
from spear_twisted.runtime import InstanceConfig, InstanceStatus, RestartPolicy, TaskInstance
from spear_twisted.runtime.process import ProcessRuntime
from spear_twisted.wire import ExecutionStatus
from tests.runtime_support import (
    CHILD_ENV,
    CHILD_INHERIT,
    PYTHON,
    execute,
    python_args,
    real_runtime,
    when_status,
    with_timeout,
    write_script,
)
from tests.test_agent_asyncio import AGENT

STEP = 60.0

Gen = Generator[Deferred[Any], Any, None]


class SpawnedGrpcAgentTests(TestCase):
    @defer.inlineCallbacks
    def start(
        self, args: tuple[str, ...], **changes: Any
    ) -> Generator[Deferred[Any], Any, tuple[ProcessRuntime, TaskInstance]]:
        runtime = real_runtime(self)
        config = InstanceConfig(PYTHON, args, inherit_env=CHILD_INHERIT, transports=("grpc",), **changes)
        instance = runtime.create_instance("agent", config)
        yield with_timeout(runtime.start_instance(instance), STEP, "authentication")
        channel = runtime.factory.get_channel(instance.instance_id)
        self.assertIsInstance(channel, GrpcChannel)
        assert channel is not None and channel.address is not None
        self.assertEqual(instance.address, f"grpc:127.0.0.1:{channel.address.port}")
        return runtime, instance

    @defer.inlineCallbacks
    def test_an_asyncio_agent_over_grpcio_serves_and_imports_no_twisted(self) -> Gen:
        runtime, instance = yield self.start(python_args(write_script(self, AGENT)))
        framework = yield with_timeout(execute(runtime, instance, command="framework"), STEP, "a response")
        self.assertEqual(framework.output, "asyncio")
        modules = yield with_timeout(execute(runtime, instance, command="modules"), STEP, "a response")
        self.assertEqual(json.loads(modules.output), [])
        for command, outcome in {
            "coroutine": (ExecutionStatus.COMPLETED, "awaited a b", None, 0),
            "failed": (ExecutionStatus.FAILED, "half", "nope", 9),
        }.items():
            response = yield with_timeout(
                execute(runtime, instance, "a", "b", command=command), STEP, command
            )
            self.assertEqual((response.status, response.output, response.error, response.exit_code), outcome)
        channel = runtime.factory.get_channel(instance.instance_id)
        assert channel is not None
        self.assertEqual(channel.get_stats().transport, "grpc")
        self.assertEqual(channel.connection.client_type, "spear_twisted-python")

    @defer.inlineCallbacks
    def test_a_dropped_grpc_call_is_reestablished_by_an_asyncio_agent(self) -> Gen:
        args = python_args(write_script(self, AGENT), json.dumps({"retry_delay": 0.05}))
        runtime, instance = yield self.start(args)
        yield with_timeout(execute(runtime, instance, command="plain"), STEP, "a response")
        channel = runtime.factory.get_channel(instance.instance_id)
        assert channel is not None and channel.connection is not None
        unhealthy = when_status(runtime, instance, InstanceStatus.UNHEALTHY)
        channel.connection.abort()
        yield with_timeout(unhealthy, STEP, "the loss")
        yield with_timeout(when_status(runtime, instance, InstanceStatus.READY), STEP, "the reconnection")
        response = yield with_timeout(execute(runtime, instance, command="plain"), STEP, "a response")
        self.assertEqual(response.output, "plain")
        self.assertEqual((instance.restart_count, channel.get_stats().connections), (0, 2))

    @defer.inlineCallbacks
    def sigterm(self, runtime: ProcessRuntime, instance: TaskInstance) -> Gen:
        ended = when_status(runtime, instance, InstanceStatus.STOPPED, InstanceStatus.ERROR)
        assert instance.pid is not None
        os.kill(instance.pid, signal.SIGTERM)
        yield with_timeout(ended, STEP, "the exit")
        self.assertEqual(instance.status, InstanceStatus.STOPPED, instance.error)
        self.assertEqual(instance.last_exit.exit_code, EXIT_OK)

    @defer.inlineCallbacks
    def test_echo_agents_of_both_frameworks_over_grpc_end_to_end(self) -> Gen:
        for framework in ("asyncio", "twisted"):
            runtime, instance = yield self.start(
                ("-m", "spear_twisted.agent.echo", "--framework", framework),
                restart_policy=RestartPolicy.NEVER,
            )
            response = yield with_timeout(
                execute(runtime, instance, "over", "grpc", command=framework), STEP, "a response"
            )
            self.assertEqual(
                (response.status, response.output), (ExecutionStatus.COMPLETED, f"{framework} over grpc")
            )
            channel = runtime.factory.get_channel(instance.instance_id)
            assert channel is not None
            # SIGTERM: the agent closes its call in order and exits 0.
            yield self.sigterm(runtime, instance)
            self.assertEqual(channel.get_stats().connection_errors, 0, framework)


class EntryPointTests(TestCase):
    def test_grpc_under_asyncio_without_grpcio_exits_78_saying_what_to_install(self) -> None:
        # A Python where grpcio cannot be imported.
        program = (
            "import sys; sys.modules['grpc'] = None\n"
            "from spear_twisted.agent.echo import main\n"
            "sys.exit(main())\n"
        )
        environment = {
            **CHILD_ENV,
            "SPEAR_INSTANCE_ID": "kubernetes:pod-1",
            "SPEAR_SECRET": "a-secret-of-enough-length",
            "SPEAR_COMMUNICATION_TYPE": "grpc",
            "SPEAR_COMMUNICATION_PORT": "9",
        }
        result = subprocess.run(
            [sys.executable, "-c", program],
            env=environment,
            capture_output=True,
            text=True,
            timeout=STEP,
            check=False,
        )
        self.assertEqual(result.returncode, EXIT_CONFIG, result.stderr)
        self.assertIn("needs grpcio, which is not installed", result.stderr)
        self.assertIn("pip install 'spear_twisted[grpc]'", result.stderr)
