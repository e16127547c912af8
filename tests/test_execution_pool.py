"""
The task execution manager on a memory reactor: pool sizes, the scheduler,
and every outcome of ``execute``, driven by the reactor's clock.

Processes are fakes and time is a ``Clock`` (``tests.execution_support``);
each instance's channel and its agent's are real memory channels, so
requests, answers, signals and lost connections are real messages.  The
same behaviour with real agent processes is in ``test_execution_agents``.
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from spear_twisted.errors import (
    ErrorCode,
    ExecutionTimeout,
    InstanceLost,
    NoInstanceAvailable,
    ShuttingDown,
    UnknownTask,
)
from spear_twisted.execution import CANCEL_SIGNAL, ServedResponse
from spear_twisted.runtime import BackoffPolicy, InstanceStatus
from spear_twisted.wire import CustomSignal, ExecuteRequest, ExecuteResponse, ExecutionStatus
from tests.execution_support import FakePool


class PoolSizeTests(TestCase):
    def test_min_instances_start_with_the_service(self) -> None:
        pool = FakePool(self, min_instances=2, max_instances=4)
        pool.start(connect=False)
        self.assertEqual(len(pool.reactor.processes), 2)
        self.assertEqual([instance.status for instance in pool.instances], [InstanceStatus.STARTING] * 2)
        pool.connect()
        self.assertEqual([instance.status for instance in pool.instances], [InstanceStatus.READY] * 2)

    def test_no_instance_runs_before_the_first_request_with_min_zero(self) -> None:
        pool = FakePool(self, min_instances=0, max_instances=2)
        pool.start()
        self.assertEqual(pool.reactor.processes, [])
        result = pool.execute("hello")
        self.assertEqual(len(pool.reactor.processes), 1)
        [agent] = pool.connect()
        agent.answer_all()
        self.assertEqual(self.successResultOf(result).output, "hello")

    def test_more_instances_start_while_requests_wait_up_to_max(self) -> None:
        pool = FakePool(self, min_instances=1, max_instances=3, max_concurrent_requests=1)
        pool.start()
        results = [pool.execute(f"r{index}") for index in range(5)]
        # One request is at the first instance; the four waiting need two more at most.
        self.assertEqual(len(pool.reactor.processes), 3)
        self.assertEqual(len(pool.pool.waiting), 4)
        pool.connect()
        self.assertEqual(pool.loads(), [1, 1, 1])
        self.assertEqual(len(pool.pool.waiting), 2)
        for _ in range(2):
            for instance in pool.instances:
                pool.agent(instance).answer_all()
        self.assertEqual(sorted(pool.loads()), [1, 2, 2])
        for instance in pool.instances:
            pool.agent(instance).answer_all()
        self.assertEqual(
            [self.successResultOf(result).output for result in results], [f"r{i}" for i in range(5)]
        )

    def test_only_as_many_instances_start_as_the_waiting_requests_need(self) -> None:
        pool = FakePool(self, min_instances=0, max_instances=4, max_concurrent_requests=3)
        pool.start()
        for index in range(3):
            pool.execute(f"r{index}")
        self.assertEqual(len(pool.reactor.processes), 1)
        pool.execute("r3")
        self.assertEqual(len(pool.reactor.processes), 2)

    def test_extra_instances_stop_after_their_idle_timeout(self) -> None:
        pool = FakePool(self, min_instances=1, max_instances=3, max_concurrent_requests=1, idle_timeout=30)
        pool.start()
        results = [pool.execute() for _ in range(3)]
        pool.connect()
        for instance in pool.instances:
            pool.agent(instance).answer_all()
        for result in results:
            self.successResultOf(result)
        pool.reactor.advance(29)
        self.assertEqual(len(pool.instances), 3)
        pool.reactor.advance(1)
        pool.reactor.pump()
        self.assertEqual(pool.pool.live_count, 1)
        # The stop escalation: Terminate, then SIGTERM after the grace period.
        pool.reactor.advance(1)
        pool.reactor.pump()
        self.assertEqual(len(pool.instances), 1)
        self.assertEqual(sum(process.running for process in pool.reactor.processes), 1)
        [remaining] = pool.instances
        self.assertEqual(remaining.status, InstanceStatus.READY)

    def test_an_instance_that_works_is_not_stopped_for_idleness(self) -> None:
        pool = FakePool(self, min_instances=0, max_instances=1, idle_timeout=10)
        pool.start()
        first = pool.execute()
        pool.connect()
        [instance] = pool.instances
        agent = pool.agent(instance)
        agent.answer_all()
        self.successResultOf(first)
        pool.reactor.advance(9)
        second = pool.execute()
        pool.reactor.advance(5)
        agent.answer_all()
        self.successResultOf(second)
        pool.reactor.advance(9)
        self.assertEqual(instance.status, InstanceStatus.READY)
        pool.reactor.advance(1)
        pool.reactor.pump()
        self.assertEqual(instance.status, InstanceStatus.STOPPING)

    def test_idleness_is_counted_from_readiness(self) -> None:
        pool = FakePool(self, min_instances=1, max_instances=2, idle_timeout=5, startup_timeout=60)
        pool.start()
        [first] = pool.instances
        agent = pool.agent(first)
        results = [pool.execute(), pool.execute()]
        self.assertEqual(len(pool.reactor.processes), 2)
        agent.answer_all()
        agent.answer_all()
        for result in results:
            self.successResultOf(result)
        second = pool.instances[1]
        pool.reactor.advance(20)
        self.assertEqual(second.status, InstanceStatus.STARTING)
        pool.connect()
        pool.reactor.advance(4.9)
        self.assertEqual(second.status, InstanceStatus.READY)
        self.assertEqual(first.status, InstanceStatus.READY)
        pool.reactor.advance(0.1)
        pool.reactor.pump()
        self.assertEqual([first.status, second.status], [InstanceStatus.STOPPING, InstanceStatus.READY])

    def test_min_instances_are_never_stopped_for_idleness(self) -> None:
        pool = FakePool(self, min_instances=2, max_instances=2, idle_timeout=10)
        pool.start()
        pool.reactor.advance(100)
        self.assertEqual([instance.status for instance in pool.instances], [InstanceStatus.READY] * 2)

    def test_an_instance_that_ends_is_replaced_after_a_delay_that_doubles(self) -> None:
        pool = FakePool(self, min_instances=1, max_instances=1, restart_policy="never")
        pool.start()
        [first] = pool.instances
        pool.reactor.processes[0].exit(3)
        pool.reactor.pump()
        self.assertEqual(first.status, InstanceStatus.ERROR)
        self.assertEqual(pool.pool.last_error, "exited with code 3")
        pool.reactor.advance(0.9)
        self.assertEqual(len(pool.reactor.processes), 1)
        pool.reactor.advance(0.1)
        pool.reactor.pump()
        self.assertEqual(len(pool.reactor.processes), 2)
        [second] = pool.instances
        self.assertNotEqual(second.instance_id, first.instance_id)
        self.assertIsNone(pool.fake.runtime.get_instance(first.instance_id))
        # Failing again before it was ever Ready: twice the delay.
        pool.reactor.processes[1].exit(3)
        pool.reactor.pump()
        pool.reactor.advance(1.9)
        self.assertEqual(len(pool.reactor.processes), 2)
        pool.reactor.advance(0.1)
        pool.reactor.pump()
        self.assertEqual(len(pool.reactor.processes), 3)
        pool.connect()
        self.assertIsNone(pool.pool.last_error)

    def test_a_program_that_cannot_be_made_is_retried_with_the_backoff(self) -> None:
        pool = FakePool(self, min_instances=1, max_instances=1, executable="/no/such/program")
        pool.start()
        self.assertEqual(pool.instances, [])
        self.assertIn("/no/such/program does not exist", pool.pool.last_error or "")
        result = pool.execute(timeout=5)
        pool.reactor.advance(5)
        failure = self.failureResultOf(result, NoInstanceAvailable)
        self.assertIn("no instance is running", failure.value.message)
        self.assertIn("last failure: executable /no/such/program does not exist", failure.value.message)


class UnservableTests(TestCase):
    """A request that no instance can take before its deadline fails at once, saying why."""

    #: Deaths restart at once, the second is a crash loop; ended instances are replaced after 10 s.
    CRASH_LOOP = BackoffPolicy(min_delay=10, max_delay=10, stable_after=0, crash_loop_restarts=1)

    def test_every_instance_in_error_and_none_starting_before_the_deadline_fails_at_once(self) -> None:
        pool = FakePool(self, restart_policy="always", backoff=self.CRASH_LOOP)
        pool.start()
        [instance] = pool.instances
        pool.reactor.processes[0].exit(3)
        pool.reactor.pump()
        pool.connect()
        pool.reactor.processes[1].exit(3)
        pool.reactor.pump()
        self.assertEqual(instance.status, InstanceStatus.ERROR)
        result = pool.execute(timeout=5)
        failure = self.failureResultOf(result, NoInstanceAvailable)
        self.assertEqual(
            failure.value.message,
            "no instance of task work can take the request within 5 s (instances: 1 Error;"
            " last failure: crash loop: 1 restarts within 300 s; last: exited with code 3;"
            " the next instance starts in 10 s)",
        )
        self.assertEqual(pool.pool.waiting, deque())
        self.assertEqual(pool.manager.outcomes[("work", "no_instance")], 1)

    def test_a_waiting_request_fails_when_its_last_instance_ends(self) -> None:
        pool = FakePool(self, restart_policy="never", backoff=self.CRASH_LOOP)
        pool.start(connect=False)
        result = pool.execute(timeout=5)
        self.assertNoResult(result)
        pool.reactor.processes[0].exit(3)
        pool.reactor.pump()
        failure = self.failureResultOf(result, NoInstanceAvailable)
        self.assertIn("(instances: 1 Error; last failure: exited with code 3", failure.value.message)
        self.assertIn("; the next instance starts in 10 s)", failure.value.message)

    def test_a_request_waits_for_a_replacement_due_before_its_deadline(self) -> None:
        pool = FakePool(self, restart_policy="never")
        pool.start()
        pool.reactor.processes[0].exit(3)
        pool.reactor.pump()
        result = pool.execute(timeout=5)
        pool.reactor.advance(1)
        self.assertNoResult(result)
        [agent] = pool.connect()
        agent.answer_all()
        self.assertEqual(self.successResultOf(result).output, "run")

    def test_a_request_waits_while_an_instance_is_starting_or_busy(self) -> None:
        pool = FakePool(self, restart_policy="never", backoff=self.CRASH_LOOP)
        pool.start(connect=False)
        starting = pool.execute(timeout=20)
        pool.reactor.advance(4)
        self.assertNoResult(starting)
        [agent] = pool.connect()
        busy = pool.execute(timeout=5)
        pool.reactor.advance(4)
        self.assertNoResult(busy)
        agent.answer_all()
        self.successResultOf(starting)
        agent.answer_all()
        self.successResultOf(busy)


class SchedulerTests(TestCase):
    def test_requests_go_round_robin_among_idle_instances(self) -> None:
        pool = FakePool(self, min_instances=3, max_instances=3)
        pool.start()
        for _ in range(6):
            result = pool.execute()
            for instance in pool.instances:
                pool.agent(instance).answer_all()
            self.successResultOf(result)
        self.assertEqual(pool.loads(), [2, 2, 2])

    def test_a_request_goes_to_the_instance_with_the_fewest_outstanding(self) -> None:
        pool = FakePool(self, min_instances=2, max_instances=2, max_concurrent_requests=4)
        pool.start()
        first, _ = pool.instances
        for _ in range(4):
            pool.execute()
        self.assertEqual(pool.loads(), [2, 2])
        pool.agent(first).answer_all()
        pool.execute()
        pool.execute()
        self.assertEqual(pool.loads(), [4, 2])
        pool.execute()
        self.assertEqual(pool.loads(), [4, 3])
        self.assertEqual([member.outstanding for member in pool.pool.members], [2, 3])

    def test_max_concurrent_requests_is_respected_and_the_rest_wait_in_order(self) -> None:
        pool = FakePool(self, min_instances=1, max_instances=1, max_concurrent_requests=2)
        pool.start()
        [instance] = pool.instances
        agent = pool.agent(instance)
        results = [pool.execute(f"r{index}") for index in range(4)]
        self.assertEqual(len(agent.requests), 2)
        self.assertEqual(len(pool.pool.waiting), 2)
        agent.answer(agent.requests[1])
        self.assertEqual([request.parse_payload().command for request in agent.requests], ["r0", "r1", "r2"])
        agent.answer_all()
        agent.answer_all()
        self.assertEqual(
            [self.successResultOf(result).output for result in results], ["r0", "r1", "r2", "r3"]
        )

    def test_an_unhealthy_instance_gets_nothing(self) -> None:
        pool = FakePool(self, min_instances=2, max_instances=2, max_concurrent_requests=8)
        pool.start()
        first, _ = pool.instances
        connection = pool.agent(first).channel.connection
        assert connection is not None
        connection.abort()
        pool.reactor.pump()
        self.assertEqual(first.status, InstanceStatus.UNHEALTHY)
        for _ in range(4):
            pool.execute()
        self.assertEqual(pool.loads(), [0, 4])

    def test_a_stopping_instance_gets_nothing(self) -> None:
        pool = FakePool(self, min_instances=2, max_instances=2, max_concurrent_requests=8)
        pool.start()
        first, second = pool.instances
        pool.fake.runtime.stop_instance(first)
        pool.reactor.pump()
        self.assertEqual(first.status, InstanceStatus.STOPPING)
        for _ in range(3):
            pool.execute()
        self.assertEqual(len(pool.agent(second).requests), 3)
        self.assertEqual(pool.agent(first).requests, [])

    def test_waiting_requests_go_to_an_instance_as_soon_as_it_is_ready(self) -> None:
        pool = FakePool(self, min_instances=1, max_instances=1)
        pool.start(connect=False)
        result = pool.execute("early")
        self.assertEqual(len(pool.pool.waiting), 1)
        [agent] = pool.connect()
        self.assertEqual(len(agent.requests), 1)
        agent.answer_all()
        self.assertEqual(self.successResultOf(result).output, "early")


class OutcomeTests(TestCase):
    def test_the_response_is_returned_whatever_its_status_but_timeout(self) -> None:
        pool = FakePool(self)
        pool.start()
        [instance] = pool.instances
        result = pool.execute("fail")
        pool.agent(instance).answer(
            pool.agent(instance).requests[0], None, status=ExecutionStatus.FAILED, exit_code=3, error="no"
        )
        response = self.successResultOf(result)
        self.assertEqual(
            (response.status, response.exit_code, response.error), (ExecutionStatus.FAILED, 3, "no")
        )

    def test_the_request_carries_the_task_id_it_was_executed_as(self) -> None:
        pool = FakePool(self)
        pool.start()
        [instance] = pool.instances
        pool.results.append(pool.manager.execute("work", ExecuteRequest("something-else", "x")))
        pool.reactor.pump()
        self.assertEqual(pool.agent(instance).requests[0].parse_payload().task_id, "work")

    def test_an_unknown_task_is_refused_naming_the_known_ones(self) -> None:
        pool = FakePool(self)
        pool.start()
        failure = self.failureResultOf(pool.manager.execute("nope", ExecuteRequest("nope")), UnknownTask)
        self.assertEqual(failure.value.code, ErrorCode.UNKNOWN_TASK)
        self.assertEqual(failure.value.message, "no task 'nope' is configured (tasks: work)")

    def test_no_instance_available_within_the_request_timeout(self) -> None:
        pool = FakePool(self, max_concurrent_requests=1, request_timeout=3)
        pool.start()
        pool.execute("first", timeout=10)
        waiting = pool.execute("second")
        pool.reactor.advance(2.9)
        self.assertNoResult(waiting)
        pool.reactor.advance(0.1)
        failure = self.failureResultOf(waiting, NoInstanceAvailable)
        self.assertEqual(
            failure.value.message,
            "no instance of task work could take the request within 3 s (instances: 1 busy)",
        )
        self.assertEqual(pool.pool.waiting, type(pool.pool.waiting)())

    def test_an_instance_that_never_authenticates_leaves_the_request_without_instance(self) -> None:
        pool = FakePool(self, request_timeout=2)
        pool.start(connect=False)
        failure = self.failureResultOf(self._after(pool, pool.execute(), 2), NoInstanceAvailable)
        self.assertIn("(instances: 1 Starting)", failure.value.message)

    def _after(self, pool: FakePool, result: defer.Deferred, seconds: float) -> defer.Deferred:
        pool.reactor.advance(seconds)
        return result

    def test_the_callers_timeout_wins_then_the_requests_then_the_tasks(self) -> None:
        pool = FakePool(self, max_concurrent_requests=1, request_timeout=30)
        pool.start()
        pool.execute("busy", timeout=100)
        by_caller = pool.manager.execute("work", ExecuteRequest("work", "x", timeout=5), timeout=1)
        by_request = pool.manager.execute("work", ExecuteRequest("work", "x", timeout=2))
        by_task = pool.execute()
        pool.reactor.advance(1)
        self.failureResultOf(by_caller, NoInstanceAvailable)
        self.assertNoResult(by_request)
        pool.reactor.advance(1)
        self.failureResultOf(by_request, NoInstanceAvailable)
        pool.reactor.advance(27.9)
        self.assertNoResult(by_task)
        pool.reactor.advance(0.1)
        self.failureResultOf(by_task, NoInstanceAvailable)

    def test_a_timeout_that_is_not_a_positive_number_is_refused(self) -> None:
        pool = FakePool(self)
        pool.start()
        for bad in (0, -1, float("inf"), float("nan")):
            self.failureResultOf(pool.execute(timeout=bad), ValueError)

    def test_an_execution_timeout_cancels_the_request_at_the_instance(self) -> None:
        pool = FakePool(self)
        pool.start()
        [instance] = pool.instances
        agent = pool.agent(instance)
        result = pool.execute("slow", timeout=2)
        pool.reactor.advance(1.9)
        self.assertNoResult(result)
        pool.reactor.advance(0.1)
        pool.reactor.pump()
        failure = self.failureResultOf(result, ExecutionTimeout)
        error = failure.value
        [request] = agent.requests
        self.assertEqual(error.request_id, request.request_id)
        self.assertEqual(error.instance_id, instance.instance_id)
        self.assertEqual(error.message, "task work did not answer within 2 s")
        assert error.response is not None
        self.assertEqual(error.response.status, ExecutionStatus.TIMEOUT)
        self.assertEqual(error.response.task_id, "work")
        self.assertEqual(error.response.duration_ms, 2000)
        [(request_id, signal)] = agent.signals
        self.assertEqual(request_id, request.request_id)
        self.assertEqual(signal.signal_type, CustomSignal(CANCEL_SIGNAL))
        self.assertEqual(signal.task_id, "work")
        self.assertEqual(signal.data, str(request.request_id).encode())
        # The instance is free again.
        self.assertEqual(pool.pool.members[0].outstanding, 0)

    def test_an_answer_with_status_timeout_is_an_execution_timeout(self) -> None:
        pool = FakePool(self)
        pool.start()
        [instance] = pool.instances
        agent = pool.agent(instance)
        result = pool.execute()
        agent.answer(agent.requests[0], None, status=ExecutionStatus.TIMEOUT, error="took too long")
        failure = self.failureResultOf(result, ExecutionTimeout)
        assert failure.value.response is not None
        self.assertEqual(failure.value.response.error, "took too long")
        self.assertEqual(agent.signals, [])

    def test_an_instance_lost_mid_request_is_reported(self) -> None:
        pool = FakePool(self, min_instances=2, max_instances=2)
        pool.start()
        first, second = pool.instances
        result = pool.execute()
        pool.reactor.processes[0].exit(1)
        pool.reactor.pump()
        failure = self.failureResultOf(result, InstanceLost)
        self.assertEqual(failure.value.instance_id, first.instance_id)
        self.assertEqual(failure.value.code, ErrorCode.INSTANCE_LOST)
        self.assertIn("lost while executing", failure.value.message)
        # Not idempotent: the other instance never saw it.
        self.assertEqual(pool.agent(second).requests, [])

    def test_an_idempotent_request_is_retried_on_another_instance(self) -> None:
        pool = FakePool(self, min_instances=2, max_instances=2, idempotent=True)
        pool.start()
        _, second = pool.instances
        result = pool.execute("again")
        self.assertEqual(pool.loads(), [1, 0])
        pool.reactor.processes[0].exit(1)
        pool.reactor.pump()
        self.assertNoResult(result)
        agent = pool.agent(second)
        self.assertEqual(len(agent.requests), 1)
        agent.answer_all()
        self.assertEqual(self.successResultOf(result).output, "again")

    def test_execute_with_instance_names_the_instance_that_answered(self) -> None:
        pool = FakePool(self, min_instances=2, max_instances=2, idempotent=True)
        pool.start()
        first, _ = pool.instances
        served = pool.manager.execute_with_instance("work", ExecuteRequest("work", "one"))
        pool.reactor.pump()
        pool.agent(first).answer_all()
        answered = ExecuteResponse("work", ExecutionStatus.COMPLETED, output="one", exit_code=0)
        self.assertEqual(self.successResultOf(served), ServedResponse(answered, first.instance_id))
        # After a retry, the instance that answered.
        retried = pool.manager.execute_with_instance("work", ExecuteRequest("work", "two"))
        pool.reactor.pump()
        self.assertEqual(pool.loads(), [1, 1])
        pool.reactor.processes[1].exit(1)
        pool.reactor.pump()
        pool.agent(first).answer_all()
        result = self.successResultOf(retried)
        self.assertEqual((result.response.output, result.instance_id), ("two", first.instance_id))

    def test_an_idempotent_request_waits_for_the_lost_instance_to_come_back(self) -> None:
        pool = FakePool(
            self, idempotent=True, restart_policy="always", backoff=BackoffPolicy(min_delay=1, max_delay=1)
        )
        pool.start()
        result = pool.execute("again", timeout=10)
        pool.reactor.processes[0].exit(1)
        pool.reactor.pump()
        self.assertNoResult(result)
        pool.reactor.advance(1)
        pool.reactor.pump()
        [agent] = pool.connect()
        agent.answer_all()
        self.assertEqual(self.successResultOf(result).output, "again")

    def test_a_refusal_by_a_terminating_instance_is_tried_elsewhere(self) -> None:
        pool = FakePool(self, min_instances=2, max_instances=2)
        pool.start()
        first, second = pool.instances
        result = pool.execute("x")
        pool.agent(first).refuse(pool.agent(first).requests[0], ShuttingDown("the agent is terminating"))
        self.assertNoResult(result)
        pool.agent(second).answer_all()
        self.assertEqual(self.successResultOf(result).output, "x")

    def test_another_error_of_the_instance_is_passed_on(self) -> None:
        pool = FakePool(self)
        pool.start()
        [instance] = pool.instances
        agent = pool.agent(instance)
        result = pool.execute()
        agent.refuse(agent.requests[0], NoInstanceAvailable("nested"))
        self.assertEqual(self.failureResultOf(result, NoInstanceAvailable).value.message, "nested")

    def test_a_caller_that_cancels_a_waiting_request_withdraws_it(self) -> None:
        pool = FakePool(self, max_concurrent_requests=1)
        pool.start()
        [instance] = pool.instances
        agent = pool.agent(instance)
        pool.execute("first")
        waiting = pool.execute("second")
        waiting.cancel()
        self.failureResultOf(waiting, defer.CancelledError)
        agent.answer_all()
        pool.reactor.pump()
        self.assertEqual(len(agent.requests), 1)
        self.assertEqual(pool.manager.outcomes[("work", "cancelled")], 1)

    def test_a_caller_that_cancels_a_sent_request_frees_the_instance(self) -> None:
        pool = FakePool(self)
        pool.start()
        [instance] = pool.instances
        agent = pool.agent(instance)
        result = pool.execute()
        result.cancel()
        pool.reactor.pump()
        self.failureResultOf(result, defer.CancelledError)
        self.assertEqual(pool.pool.members[0].outstanding, 0)
        # The instance is told to abandon the request it has.
        [request] = agent.requests
        [(request_id, signal)] = agent.signals
        self.assertEqual(request_id, request.request_id)
        self.assertEqual(signal.signal_type, CustomSignal(CANCEL_SIGNAL))
        self.assertEqual(signal.task_id, "work")
        self.assertEqual(signal.data, str(request.request_id).encode())
        self.assertEqual(pool.manager.outcomes[("work", "cancelled")], 1)

    def test_a_caller_that_cancels_a_request_waiting_for_an_instance_sends_no_signal(self) -> None:
        pool = FakePool(self, min_instances=0)
        pool.start()
        result = pool.execute()
        self.assertEqual(len(pool.reactor.processes), 1)
        result.cancel()
        self.failureResultOf(result, defer.CancelledError)
        [agent] = pool.connect()
        pool.reactor.pump()
        self.assertEqual((agent.requests, agent.signals), ([], []))

    def test_stopping_refuses_waiting_and_new_requests(self) -> None:
        pool = FakePool(self, max_concurrent_requests=1)
        pool.start()
        pool.execute("first")
        waiting = pool.execute("second")
        pool.manager.stopService()
        self.assertEqual(self.failureResultOf(waiting, ShuttingDown).value.message, "task work is stopping")
        pool.reactor.advance(2)
        failure = self.failureResultOf(pool.execute("late"), ShuttingDown)
        self.assertEqual(failure.value.message, "the spearlet is not running")
        self.assertEqual(pool.instances, [])


class ObservationTests(TestCase):
    def test_the_status_describes_each_task_and_instance(self) -> None:
        pool = FakePool(self, min_instances=1, max_instances=2, max_concurrent_requests=2)
        pool.start()
        pool.execute()
        [task] = pool.manager.status()
        self.assertEqual(
            {
                key: task[key]
                for key in ("id", "runtime_type", "min_instances", "max_instances", "outstanding")
            },
            {
                "id": "work",
                "runtime_type": "process",
                "min_instances": 1,
                "max_instances": 2,
                "outstanding": 1,
            },
        )
        [instance] = task["instances"]
        self.assertEqual(instance["status"], "Running")
        self.assertEqual(instance["outstanding"], 1)
        self.assertEqual(instance["reason"], "its agent authenticated")
        self.assertEqual(instance["pid"], pool.instances[0].pid)
        self.assertEqual(instance["restarts"], 0)
        self.assertIsNone(instance["last_exit"])
        for key in ("instance_id", "uptime", "cpu_percent", "rss_bytes", "open_fds", "threads"):
            self.assertIn(key, instance)

    def test_a_status_without_metrics_leaves_the_processes_alone(self) -> None:
        pool = FakePool(self)
        pool.start()

        def looked_at(instance: object) -> None:
            raise AssertionError("the instance's process was looked at")

        self.patch(pool.fake.runtime, "get_metrics", looked_at)
        [task] = pool.manager.status(with_metrics=False)
        [instance] = task["instances"]
        self.assertEqual(instance["status"], "Ready")
        for key in ("cpu_percent", "rss_bytes", "open_fds", "threads"):
            self.assertNotIn(key, instance)

    def test_the_instances_metric_counts_serving_instances_by_their_load_as_status_shows_them(self) -> None:
        pool = FakePool(self, max_concurrent_requests=2)
        pool.start()
        [instance] = pool.instances
        first = pool.execute()
        text = pool.monitoring.metrics_text().decode()
        self.assertIn('spear_task_instances{status="Running",task="work"} 1.0', text)
        self.assertIn('spear_task_instances{status="Ready",task="work"} 0.0', text)
        second = pool.execute()
        text = pool.monitoring.metrics_text().decode()
        self.assertIn('spear_task_instances{status="Busy",task="work"} 1.0', text)
        self.assertIn('spear_task_instances{status="Running",task="work"} 0.0', text)
        pool.agent(instance).answer_all()
        self.successResultOf(first)
        self.successResultOf(second)
        text = pool.monitoring.metrics_text().decode()
        self.assertIn('spear_task_instances{status="Ready",task="work"} 1.0', text)

    def test_executions_are_counted_and_timed_in_the_metrics(self) -> None:
        pool = FakePool(self, request_timeout=1)
        pool.start()
        [instance] = pool.instances
        result = pool.execute()
        pool.reactor.advance(0.25)
        pool.agent(instance).answer_all()
        self.successResultOf(result)
        timed_out = pool.execute()
        pool.reactor.advance(1)
        pool.reactor.pump()
        self.failureResultOf(timed_out, ExecutionTimeout)
        text = pool.monitoring.metrics_text().decode()
        self.assertIn('spear_executions_total{outcome="completed",task="work"} 1.0', text)
        self.assertIn('spear_executions_total{outcome="timeout",task="work"} 1.0', text)
        self.assertIn('spear_task_instances{status="Ready",task="work"} 1.0', text)
        self.assertIn('spear_task_outstanding_requests{task="work"} 0.0', text)
        self.assertIn('spear_task_waiting_requests{task="work"} 0.0', text)
        self.assertIn('spear_operation_seconds_count{operation="execute"} 2.0', text)
        self.assertEqual(pool.monitoring.snapshot()["performance"]["execute"]["count"], 2)

    def test_a_task_id_used_twice_is_refused(self) -> None:
        pool = FakePool(self)
        with self.assertRaises(ValueError):
            type(pool.manager)(pool.fake.runtime, [pool.task, pool.task])
