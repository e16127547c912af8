"""
The agent SDK in child processes, spawned by a real ProcessRuntime: the
asyncio path (which must not import Twisted), its handler forms, signals,
timeouts, exit statuses; the entry point's configuration errors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from spear_twisted.agent import EXIT_CONFIG, EXIT_OK, EXIT_UNREACHABLE
from spear_twisted.auth import SecretRegistry
from spear_twisted.errors import InstanceStartFailed
from spear_twisted.runtime import InstanceConfig, InstanceStatus, RestartPolicy, TaskInstance
from spear_twisted.runtime.process import ProcessRuntime
from spear_twisted.wire import ExecuteRequest, ExecutionStatus, SignalMessage, SignalType, SpearMessage
from tests.runtime_support import (
    CHILD_ENV,
    CHILD_INHERIT,
    PYTHON,
    LogCapture,
    execute,
    python_args,
    real_runtime,
    when_status,
    with_timeout,
    write_script,
)

STEP = 60.0

#: A started runtime and its instance.
Started = tuple[ProcessRuntime, TaskInstance]

AGENT = """
import asyncio, json, sys
from spear_twisted.agent import TaskFailed, run

signals = []


def on_signal(message):
    kind = message.signal_type
    signals.append(getattr(kind, "value", None) or f"Custom({kind.name})")


async def awaited(request):
    await asyncio.sleep(0)
    return "awaited " + " ".join(request.args)


def handle(request):
    command = request.command
    if command == "modules":
        return json.dumps(sorted(name for name in sys.modules if name.split(".")[0] == "twisted"))
    if command == "framework":
        import txaio
        return "asyncio" if txaio.using_asyncio else "twisted"
    if command == "plain":
        return "plain"
    if command == "coroutine":
        return awaited(request)
    if command == "future":
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_soon(future.set_result, "resolved")
        return future
    if command == "signals":
        return json.dumps(signals)
    if command == "slow":
        return asyncio.sleep(60)
    if command == "failed":
        raise TaskFailed("nope", exit_code=9, output="half")
    raise ValueError(f"unknown command {command}")


overrides = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
raise SystemExit(run(handle, on_signal=on_signal, **overrides))
"""


# An application that runs its own event loop and serves an agent in it
# (spear_twisted.agent.aio.serve), beside a task of its own.
EMBEDDED_AGENT = """
import asyncio
import txaio

txaio.use_asyncio()
from spear_twisted.agent import AgentConfig
from spear_twisted.agent.aio import serve


async def main():
    running = asyncio.Event()

    async def own_task():
        running.set()
        await asyncio.sleep(3600)

    application = asyncio.create_task(own_task())

    async def handle(request):
        await running.wait()
        return f"{request.command} {' '.join(request.args)}, beside the application's own task"

    status = await serve(handle, AgentConfig.from_environment())
    application.cancel()
    return status


raise SystemExit(asyncio.run(main()))
"""


# Says when it starts importing its framework (txaio comes first), then runs
# with the run() arguments of its second argument (JSON).  With "hold" as its
# first, it holds that import until a signal ends it: the window between
# authentication and the event loop's own signal handlers, made wide.
IMPORT_AGENT = """
import json, sys, time

hold, arguments = sys.argv[1] == "hold", json.loads(sys.argv[2])


class SayTheImport:
    def find_spec(self, name, path=None, target=None):
        if name == "txaio":
            sys.meta_path.remove(self)
            print("importing the framework", flush=True)
            if hold:
                time.sleep(600)
        return None


sys.meta_path.insert(0, SayTheImport())
from spear_twisted.agent import run

raise SystemExit(run(lambda request: "served", **arguments))
"""


class HeldValidator:
    """The registry's validation, held until ``release`` fires; ``asked`` fires when it is asked."""

    def __init__(self, registry: SecretRegistry) -> None:
        self.registry = registry
        self.asked: Deferred[None] = Deferred()
        self.release: Deferred[None] = Deferred()

    def __call__(self, instance_id: Any, token: Any) -> Deferred[Any]:
        self.asked.callback(None)
        return self.release.addCallback(lambda _: self.registry(instance_id, token))


#: A runtime, its instance, the held validator, the Deferreds of the import line and of the start.
HeldStart = tuple[ProcessRuntime, TaskInstance, HeldValidator, Deferred[Any], Deferred[Any]]


class AsyncioAgentTests(TestCase):
    @defer.inlineCallbacks
    def start(
        self, *args: str, **changes: Any
    ) -> Generator[Deferred[Any], Any, tuple[ProcessRuntime, TaskInstance]]:
        runtime = real_runtime(self)
        script = write_script(self, AGENT)
        config = InstanceConfig(PYTHON, python_args(script, *args), inherit_env=CHILD_INHERIT, **changes)
        instance = runtime.create_instance("agent", config)
        yield with_timeout(runtime.start_instance(instance), STEP, "authentication")
        return runtime, instance

    @defer.inlineCallbacks
    def test_the_asyncio_path_imports_no_twisted(self) -> Generator[Deferred[Any], Any, None]:
        runtime, instance = yield self.start()
        framework = yield with_timeout(execute(runtime, instance, command="framework"), STEP, "a response")
        self.assertEqual(framework.output, "asyncio")
        modules = yield with_timeout(execute(runtime, instance, command="modules"), STEP, "a response")
        self.assertEqual(modules.status, ExecutionStatus.COMPLETED)
        self.assertEqual(json.loads(modules.output), [])

    @defer.inlineCallbacks
    def test_every_handler_form_under_asyncio(self) -> Generator[Deferred[Any], Any, None]:
        runtime, instance = yield self.start()
        expected = {
            "plain": (ExecutionStatus.COMPLETED, "plain", None, 0),
            "coroutine": (ExecutionStatus.COMPLETED, "awaited a b", None, 0),
            "future": (ExecutionStatus.COMPLETED, "resolved", None, 0),
            "failed": (ExecutionStatus.FAILED, "half", "nope", 9),
            "other": (ExecutionStatus.FAILED, None, "ValueError: unknown command other", 1),
        }
        for command, outcome in expected.items():
            response = yield with_timeout(
                execute(runtime, instance, "a", "b", command=command), STEP, command
            )
            self.assertEqual((response.status, response.output, response.error, response.exit_code), outcome)

    @defer.inlineCallbacks
    def test_a_slow_handler_is_answered_with_timeout(self) -> Generator[Deferred[Any], Any, None]:
        runtime, instance = yield self.start()
        channel = runtime.factory.get_channel(instance.instance_id)
        request = ExecuteRequest("agent", "slow", timeout=1)
        answer = yield with_timeout(
            channel.request_response(SpearMessage.execute_request(0, request), STEP), STEP, "the timeout"
        )
        response = answer.parse_payload()
        self.assertEqual(response.status, ExecutionStatus.TIMEOUT)
        self.assertEqual(response.error, "the handler did not finish within 1 s")

    @defer.inlineCallbacks
    def test_signals_reach_the_hook(self) -> Generator[Deferred[Any], Any, None]:
        runtime, instance = yield self.start()
        channel = runtime.factory.get_channel(instance.instance_id)
        for kind in (SignalType.PAUSE, SignalType.RESUME, SignalType.custom("reload")):
            yield channel.send(SpearMessage.signal(0, SignalMessage(kind)))
        response = yield with_timeout(execute(runtime, instance, command="signals"), STEP, "a response")
        self.assertEqual(json.loads(response.output), ["Pause", "Resume", "Custom(reload)"])

    @defer.inlineCallbacks
    def sigterm(self, runtime: ProcessRuntime, instance: TaskInstance) -> Generator[Deferred[Any], Any, None]:
        # Once the agent serves (its framework is loaded and its handlers
        # installed); before that, see sigterm_while_importing.
        yield with_timeout(execute(runtime, instance, command="plain"), STEP, "a response")
        ended = when_status(runtime, instance, InstanceStatus.STOPPED, InstanceStatus.ERROR)
        assert instance.pid is not None
        os.kill(instance.pid, signal.SIGTERM)
        yield with_timeout(ended, STEP, "the exit")
        self.assertEqual(instance.status, InstanceStatus.STOPPED, instance.error)
        self.assertEqual(instance.last_exit.exit_code, EXIT_OK)

    @defer.inlineCallbacks
    def test_serve_runs_an_agent_inside_an_applications_own_event_loop(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        runtime = real_runtime(self)
        script = write_script(self, EMBEDDED_AGENT)
        config = InstanceConfig(
            PYTHON, python_args(script), inherit_env=CHILD_INHERIT, restart_policy=RestartPolicy.NEVER
        )
        instance = runtime.create_instance("agent", config)
        yield with_timeout(runtime.start_instance(instance), STEP, "authentication")
        response = yield with_timeout(execute(runtime, instance, "a", command="hello"), STEP, "a response")
        self.assertEqual(response.output, "hello a, beside the application's own task")
        yield with_timeout(runtime.stop_instance(instance), STEP, "the stop")
        self.assertEqual(instance.status, InstanceStatus.STOPPED, instance.error)
        self.assertEqual(instance.last_exit.exit_code, EXIT_OK)

    @defer.inlineCallbacks
    def test_sigterm_ends_an_asyncio_agent_cleanly(self) -> Generator[Deferred[Any], Any, None]:
        runtime, instance = yield self.start(restart_policy=RestartPolicy.NEVER)
        yield self.sigterm(runtime, instance)

    @defer.inlineCallbacks
    def test_sigterm_ends_a_twisted_agent_cleanly(self) -> Generator[Deferred[Any], Any, None]:
        runtime, instance = yield self.start_echo("twisted")
        yield self.sigterm(runtime, instance)

    @defer.inlineCallbacks
    def sigterm_while_importing(self, framework: str) -> Generator[Deferred[Any], Any, None]:
        log = LogCapture(self)
        runtime = real_runtime(self)
        script = write_script(self, IMPORT_AGENT)
        config = InstanceConfig(
            PYTHON,
            python_args(script, "hold", json.dumps({"framework": framework})),
            inherit_env=CHILD_INHERIT,
            restart_policy=RestartPolicy.NEVER,
        )
        instance = runtime.create_instance("agent", config)
        importing = log.when_output(instance, "importing the framework")
        yield with_timeout(runtime.start_instance(instance), STEP, "authentication")
        yield with_timeout(importing, STEP, "the framework's import")
        ended = when_status(runtime, instance, InstanceStatus.STOPPED, InstanceStatus.ERROR)
        assert instance.pid is not None
        os.kill(instance.pid, signal.SIGTERM)
        yield with_timeout(ended, STEP, "the exit")
        self.assertEqual(instance.status, InstanceStatus.STOPPED, instance.error)
        assert instance.last_exit is not None
        self.assertEqual((instance.last_exit.exit_code, instance.last_exit.signal), (EXIT_OK, None))
        stderr = log.output_lines(instance, "stderr")
        self.assertIn("spear agent: terminating (SIGTERM) before the agent started", stderr)
        self.assertNotIn("Traceback", "\n".join(stderr))

    def test_sigterm_while_the_framework_imports_ends_an_asyncio_agent_cleanly(self) -> Any:
        return self.sigterm_while_importing("asyncio")

    def test_sigterm_while_the_framework_imports_ends_a_twisted_agent_cleanly(self) -> Any:
        return self.sigterm_while_importing("twisted")

    @defer.inlineCallbacks
    def start_echo(
        self, framework: str
    ) -> Generator[Deferred[Any], Any, tuple[ProcessRuntime, TaskInstance]]:
        runtime = real_runtime(self)
        config = InstanceConfig(
            PYTHON,
            ("-m", "spear_twisted.agent.echo", "--framework", framework),
            inherit_env=CHILD_INHERIT,
            restart_policy=RestartPolicy.NEVER,
        )
        instance = runtime.create_instance("echo", config)
        yield with_timeout(runtime.start_instance(instance), STEP, "authentication")
        return runtime, instance

    @defer.inlineCallbacks
    def held_start(self, **overrides: Any) -> Generator[Deferred[Any], Any, HeldStart]:
        """An agent whose AuthRequest the spearlet holds; Deferreds of its import line and of its start."""
        log = LogCapture(self)
        validators: list[HeldValidator] = []

        def held(registry: SecretRegistry) -> HeldValidator:
            validators.append(HeldValidator(registry))
            return validators[0]

        runtime = real_runtime(self, validator=held)
        script = write_script(self, IMPORT_AGENT)
        config = InstanceConfig(
            PYTHON,
            python_args(script, "go", json.dumps(overrides)),
            inherit_env=CHILD_INHERIT,
            restart_policy=RestartPolicy.NEVER,
        )
        instance = runtime.create_instance("agent", config)
        importing = log.when_output(instance, "importing the framework")
        ready = runtime.start_instance(instance)
        yield with_timeout(validators[0].asked, STEP, "the AuthRequest")
        return runtime, instance, validators[0], importing, ready

    @defer.inlineCallbacks
    def test_the_framework_is_imported_once_the_spearlet_answered(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        runtime, instance, validator, importing, ready = yield self.held_start()
        order: list[str] = []
        importing.addCallback(lambda _: order.append("imported"))
        # Long enough for an agent that did not wait to import (some 100 ms).
        yield task.deferLater(real_reactor, 2, lambda: None)
        order.append("answered")
        validator.release.callback(None)
        yield with_timeout(ready, STEP, "authentication")
        yield with_timeout(importing, STEP, "the framework's import")
        self.assertEqual(order, ["answered", "imported"])
        response = yield with_timeout(execute(runtime, instance, command="any"), STEP, "a response")
        self.assertEqual(response.output, "served")

    @defer.inlineCallbacks
    def test_without_awaiting_the_answer_the_framework_is_imported_at_once(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        runtime, instance, validator, importing, ready = yield self.held_start(await_auth_response=False)
        yield with_timeout(importing, STEP, "the framework's import, the AuthRequest unanswered")
        validator.release.callback(None)
        yield with_timeout(ready, STEP, "authentication")
        response = yield with_timeout(execute(runtime, instance, command="any"), STEP, "a response")
        self.assertEqual(response.output, "served")

    @defer.inlineCallbacks
    def test_sigterm_while_awaiting_the_answer_ends_the_agent_cleanly(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        log = LogCapture(self)
        _runtime, instance, _validator, importing, ready = yield self.held_start()
        failed = self.assertFailure(ready, InstanceStartFailed)
        assert instance.pid is not None
        os.kill(instance.pid, signal.SIGTERM)
        yield with_timeout(failed, STEP, "the exit")
        assert instance.last_exit is not None
        self.assertEqual((instance.last_exit.exit_code, instance.last_exit.signal), (EXIT_OK, None))
        stderr = log.output_lines(instance, "stderr")
        self.assertIn("spear agent: terminating (SIGTERM) before the agent started", stderr)
        self.assertNotIn("Traceback", "\n".join(stderr))
        self.assertFalse(importing.called)

    @defer.inlineCallbacks
    def test_a_dropped_connection_is_reestablished(self) -> Generator[Deferred[Any], Any, None]:
        runtime, instance = yield self.start(json.dumps({"retry_delay": 0.05}))
        yield with_timeout(execute(runtime, instance, command="plain"), STEP, "a response")
        channel = runtime.factory.get_channel(instance.instance_id)
        assert channel is not None and channel.connection is not None
        unhealthy = when_status(runtime, instance, InstanceStatus.UNHEALTHY)
        channel.connection.abort()
        yield with_timeout(unhealthy, STEP, "the loss")
        yield with_timeout(when_status(runtime, instance, InstanceStatus.READY), STEP, "the reconnection")
        self.assertEqual(instance.history[-1].reason, "its agent reconnected")
        response = yield with_timeout(execute(runtime, instance, command="plain"), STEP, "a response")
        self.assertEqual(response.output, "plain")
        self.assertEqual(instance.restart_count, 0)

    @defer.inlineCallbacks
    def test_the_agent_exits_69_once_the_spearlet_is_gone_for_good(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        overrides = json.dumps({"max_retries": 2, "retry_delay": 0.05})
        runtime, instance = yield self.start(overrides, restart_policy=RestartPolicy.NEVER)
        ended = when_status(runtime, instance, InstanceStatus.ERROR)
        # The spearlet's side of the instance disappears (as if it crashed).
        yield runtime.factory.remove_channel(instance.instance_id)
        yield with_timeout(ended, STEP, "the agent giving up")
        self.assertEqual(instance.last_exit.exit_code, EXIT_UNREACHABLE)
        self.assertTrue(instance.error.startswith(f"exited with code {EXIT_UNREACHABLE}; last output: "))
        self.assertIn("giving up after 3 attempts", instance.error)


class EntryPointTests(TestCase):
    def test_without_its_environment_the_agent_exits_78_saying_why(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "spear_twisted.agent.echo"],
            env=CHILD_ENV,
            capture_output=True,
            text=True,
            timeout=STEP,
            check=False,
        )
        self.assertEqual(result.returncode, EXIT_CONFIG)
        self.assertIn("SPEAR_INSTANCE_ID is not set", result.stderr)

    def test_a_bad_argument_is_a_usage_error(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "spear_twisted.agent.echo", "--framework", "gevent"],
            env=CHILD_ENV,
            capture_output=True,
            text=True,
            timeout=STEP,
            check=False,
        )
        self.assertEqual(result.returncode, 2)
        self.assertIn("usage: python -m spear_twisted.agent.echo", result.stderr)
