"""
``execute`` with real agents: the packaged echo agent, and small agents
written for the slow, crashing and silent cases, spawned by a whole
:class:`~spear_twisted.service.SpearService`.

Children import this worktree's source (``PYTHONPATH``).  Nothing sleeps:
tests wait for results and log events, with generous limits for a loaded
machine.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from spear_twisted.errors import ExecutionTimeout, InstanceLost, NoInstanceAvailable, UnknownTask
from spear_twisted.runtime import BackoffPolicy, InstanceStatus, ProcessRuntimeConfig
from spear_twisted.wire import ExecuteRequest, ExecutionStatus
from tests.channel_support import wait_until
from tests.runtime_support import CRASHING_AGENT, LogCapture, python_args, with_timeout, write_script
from tests.service_support import ECHO_ARGS, running_service, task_config

#: Seconds any one step of a test may take on a loaded machine.
STEP = 60.0

SLOW_AGENT = """
import asyncio, sys
from spear_twisted.agent import run

async def handle(request):
    if request.command == "fast":
        return "fast"
    print("slow handler started", flush=True)
    try:
        await asyncio.sleep(600)
    except asyncio.CancelledError:
        print("handler cancelled", flush=True)
        raise
    return "slow"

raise SystemExit(run(handle))
"""

# Crashes on the first request any of the task's instances gets (the marker
# file says whether one did), answers every later one.
CRASH_ONCE_AGENT = """
import os, sys
from spear_twisted.agent import run

marker = sys.argv[1]

def handle(request):
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return f"answered by {os.getpid()}"
    os._exit(3)

raise SystemExit(run(handle))
"""


def request(command: str, *args: str) -> ExecuteRequest:
    return ExecuteRequest("t", command, args)


class EchoTests(TestCase):
    @defer.inlineCallbacks
    def test_echo_agents_answer_every_request_and_share_the_work(self) -> Generator[Any, Any, None]:
        service = running_service(
            self, task_config("echo", ECHO_ARGS, min_instances=2, max_instances=2, max_concurrent_requests=4)
        )
        calls = [service.tasks.execute("echo", ExecuteRequest("echo", "say", [str(n)])) for n in range(40)]
        responses = yield with_timeout(defer.gatherResults(calls), STEP, "40 echo requests")
        self.assertEqual([response.output for response in responses], [f"say {n}" for n in range(40)])
        self.assertTrue(all(response.status is ExecutionStatus.COMPLETED for response in responses))
        [task] = service.status()["tasks"]
        served = [instance["served"] for instance in task["instances"]]
        self.assertEqual(sum(served), 40)
        self.assertTrue(all(count > 0 for count in served), served)

    @defer.inlineCallbacks
    def test_requests_wait_for_an_instance_started_on_demand(self) -> Generator[Any, Any, None]:
        service = running_service(self, task_config("echo", ECHO_ARGS, min_instances=0, max_instances=1))
        [task] = service.status()["tasks"]
        self.assertEqual(task["instances"], [])
        response = yield with_timeout(
            service.tasks.execute("echo", ExecuteRequest("echo", "hello", ["world"])),
            STEP,
            "the first request",
        )
        self.assertEqual(response.output, "hello world")
        [task] = service.status()["tasks"]
        self.assertEqual(len(task["instances"]), 1)

    @defer.inlineCallbacks
    def test_extra_instances_start_under_load_and_stop_when_idle(self) -> Generator[Any, Any, None]:
        service = running_service(
            self,
            task_config(
                "echo",
                ECHO_ARGS,
                min_instances=1,
                max_instances=2,
                max_concurrent_requests=1,
                idle_timeout=0.5,
            ),
        )
        pool = service.tasks.pools["echo"]
        calls = [service.tasks.execute("echo", ExecuteRequest("echo", "n", [str(n)])) for n in range(8)]
        self.assertEqual(len(pool.members), 2)
        yield with_timeout(defer.gatherResults(calls), STEP, "8 requests")
        stopped = []
        ended = defer.Deferred()

        def watch(event: Any) -> None:
            if event.status is InstanceStatus.STOPPED:
                stopped.append(event.instance_id)
                if not ended.called:
                    ended.callback(None)

        unsubscribe = service.runtime.subscribe(watch)
        self.addCleanup(unsubscribe)
        yield with_timeout(ended, STEP, "the idle instance's stop")
        # The pool lets it go once its stop has finished.
        yield wait_until(lambda: len(pool.members) == 1, "the pool letting the stopped instance go")
        [remaining] = pool.members
        self.assertNotIn(remaining.instance.instance_id, stopped)
        self.assertEqual(remaining.instance.status, InstanceStatus.READY)

    def test_an_unknown_task_is_refused(self) -> None:
        service = running_service(self, task_config("echo", ECHO_ARGS, min_instances=0))
        failure = self.failureResultOf(service.tasks.execute("nope", ExecuteRequest("nope")), UnknownTask)
        self.assertEqual(failure.value.message, "no task 'nope' is configured (tasks: echo)")


class TimeoutTests(TestCase):
    @defer.inlineCallbacks
    def test_a_request_past_its_timeout_is_cancelled_at_the_agent(self) -> Generator[Any, Any, None]:
        script = write_script(self, SLOW_AGENT)
        service = running_service(self, task_config("t", python_args(script)))
        log = LogCapture(self)
        # The instance first, so that the timeout is all the handler's.
        fast = yield with_timeout(service.tasks.execute("t", request("fast")), STEP, "a fast request")
        self.assertEqual(fast.output, "fast")
        cancelled = log.when(lambda event: "handler cancelled" in event.get("line", ""))
        try:
            yield service.tasks.execute("t", request("slow"), timeout=1.0)
        except ExecutionTimeout as e:
            assert e.response is not None
            self.assertEqual(e.response.status, ExecutionStatus.TIMEOUT)
            self.assertGreaterEqual(e.response.duration_ms or 0, 1000)
        else:
            raise AssertionError("the slow request did not time out")
        yield with_timeout(cancelled, STEP, "the handler's cancellation")
        # The instance serves on.
        again = yield with_timeout(service.tasks.execute("t", request("fast")), STEP, "a request after")
        self.assertEqual(again.output, "fast")


class CancelTests(TestCase):
    @defer.inlineCallbacks
    def test_a_caller_that_cancels_cancels_the_handler_and_frees_the_instance(
        self,
    ) -> Generator[Any, Any, None]:
        script = write_script(self, SLOW_AGENT)
        service = running_service(self, task_config("t", python_args(script)))
        log = LogCapture(self)
        fast = yield with_timeout(service.tasks.execute("t", request("fast")), STEP, "a fast request")
        self.assertEqual(fast.output, "fast")
        [member] = service.tasks.pools["t"].members
        started = log.when(lambda event: "slow handler started" in event.get("line", ""))
        cancelled = log.when(lambda event: "handler cancelled" in event.get("line", ""))
        slow = service.tasks.execute("t", request("slow"))
        yield with_timeout(started, STEP, "the slow handler's start")
        slow.cancel()
        yield self.assertFailure(slow, defer.CancelledError)
        self.assertEqual(member.outstanding, 0)
        yield with_timeout(cancelled, STEP, "the handler's cancellation")
        self.assertIn("cancelled by the spearlet", log.text())
        # The one instance takes the next request (max_concurrent_requests is 1).
        again = yield with_timeout(service.tasks.execute("t", request("fast")), STEP, "a request after")
        self.assertEqual(again.output, "fast")
        self.assertEqual(service.tasks.pools["t"].members, [member])
        self.assertEqual(member.served, 3)
        self.assertEqual(service.tasks.outcomes[("t", "cancelled")], 1)


class LostInstanceTests(TestCase):
    @defer.inlineCallbacks
    def test_an_instance_that_dies_mid_request_is_reported_and_restarted(self) -> Generator[Any, Any, None]:
        script = write_script(self, CRASHING_AGENT)
        service = running_service(
            self,
            task_config("t", python_args(script), restart_policy="always"),
            runtime=ProcessRuntimeConfig(backoff=BackoffPolicy(min_delay=0.1, max_delay=0.1)),
        )
        alive = yield with_timeout(service.tasks.execute("t", request("hello")), STEP, "a first request")
        self.assertEqual(alive.output, "alive")
        [member] = service.tasks.pools["t"].members
        try:
            yield with_timeout(service.tasks.execute("t", request("crash")), STEP, "the crash")
        except InstanceLost as e:
            self.assertEqual(e.instance_id, member.instance.instance_id)
        else:
            raise AssertionError("the crash was not reported")
        again = yield with_timeout(
            service.tasks.execute("t", request("hello")), STEP, "a request after the restart"
        )
        self.assertEqual(again.output, "alive")
        self.assertEqual(member.instance.restart_count, 1)
        self.assertEqual(member.instance.last_exit.exit_code, 3)  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def test_an_idempotent_request_is_run_again_on_another_instance(self) -> Generator[Any, Any, None]:
        script = write_script(self, CRASH_ONCE_AGENT)
        marker = os.path.abspath(self.mktemp())
        service = running_service(
            self,
            task_config("t", python_args(script, marker), min_instances=2, max_instances=2, idempotent=True),
        )
        pool = service.tasks.pools["t"]
        yield with_timeout(
            defer.gatherResults([_ready(service, member) for member in pool.members]), STEP, "two instances"
        )
        response = yield with_timeout(
            service.tasks.execute("t", request("once")), STEP, "the retried request"
        )
        self.assertTrue(response.output.startswith("answered by "), response.output)
        pids = {member.instance.pid for member in pool.members}
        self.assertIn(int(response.output.rsplit(" ", 1)[1]), pids)
        # The crashed process's exit is recorded once its output is drained,
        # which may be after the other instance has answered.
        yield wait_until(
            lambda: any(member.instance.last_exit is not None for member in pool.members),
            "the crash recorded",
        )
        crashed = [member for member in pool.members if member.instance.last_exit is not None]
        self.assertEqual(len(crashed), 1)
        self.assertEqual(crashed[0].instance.last_exit.exit_code, 3)  # type: ignore[union-attr]


class NoInstanceTests(TestCase):
    @defer.inlineCallbacks
    def test_a_program_that_never_connects_leaves_requests_without_instance(
        self,
    ) -> Generator[Any, Any, None]:
        sleeper = write_script(self, "import time\ntime.sleep(600)\n")
        service = running_service(self, task_config("t", python_args(sleeper), request_timeout=1.0))
        try:
            yield with_timeout(service.tasks.execute("t", request("x")), STEP, "the request's end")
        except NoInstanceAvailable as e:
            self.assertEqual(
                e.message, "no instance of task t could take the request within 1 s (instances: 1 Starting)"
            )
        else:
            raise AssertionError("the request found an instance")


class UnservableTests(TestCase):
    @defer.inlineCallbacks
    def test_a_task_whose_instance_crash_looped_fails_requests_at_once(self) -> Generator[Any, Any, None]:
        script = write_script(self, CRASHING_AGENT)
        # Deaths restart at once; the second is a crash loop; the pool
        # replaces an ended instance only after 60 s, past any request here.
        backoff = BackoffPolicy(min_delay=60, max_delay=60, stable_after=0, crash_loop_restarts=1)
        service = running_service(
            self,
            task_config("t", python_args(script), restart_policy="always"),
            runtime=ProcessRuntimeConfig(backoff=backoff),
        )
        [member] = service.tasks.pools["t"].members
        errored = _status(service, member, InstanceStatus.ERROR)
        for attempt in ("first", "second"):
            try:
                yield with_timeout(service.tasks.execute("t", request("crash")), STEP, f"the {attempt} crash")
            except InstanceLost:
                pass
            else:
                raise AssertionError("the crash was not reported")
        yield with_timeout(errored, STEP, "the crash loop")
        try:
            yield with_timeout(service.tasks.execute("t", request("hello")), STEP, "the refusal")
        except NoInstanceAvailable as e:
            self.assertTrue(
                e.message.startswith(
                    "no instance of task t can take the request within 30 s (instances: 1 Error; "
                    "last failure: crash loop: 1 restarts within 300 s; last: exited with code 3"
                ),
                e.message,
            )
            self.assertIn("; the next instance starts in ", e.message)
        else:
            raise AssertionError("the request found an instance")
        self.assertEqual(service.tasks.outcomes[("t", "no_instance")], 1)


def _status(service: Any, member: Any, status: InstanceStatus) -> defer.Deferred[None]:
    """Fires once ``member``'s instance is in ``status`` (at once if it is)."""
    if member.instance.status is status:
        return defer.succeed(None)
    done: defer.Deferred[None] = defer.Deferred()

    def watch(event: Any) -> None:
        if member.instance.status is status and not done.called:
            unsubscribe()
            done.callback(None)

    unsubscribe = service.runtime.subscribe(watch)
    return done


def _ready(service: Any, member: Any) -> defer.Deferred[None]:
    """Fires once ``member``'s instance is Ready."""
    return _status(service, member, InstanceStatus.READY)
