"""
ProcessRuntime's supervision on a memory reactor: readiness, startup timeout,
restarts with backoff, crash loops, stop escalation, environment.

Processes are fakes (the procmon tests' way) and time is the reactor's
``Clock``; each instance's channel is real, over the memory transport, and
its agent a real agent-side channel.  The same behaviour with real children
is in ``test_runtime_process``.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from spear_twisted.connections.manager import ConnectionManager
from spear_twisted.errors import InstanceStartFailed, ShuttingDown
from spear_twisted.runtime import (
    BackoffPolicy,
    InstanceConfig,
    InstanceStatus,
    InvalidInstanceConfig,
    IRuntime,
    ProcessRuntime,
    ProcessRuntimeConfig,
    ResourceLimits,
    RestartPolicy,
    RuntimeEventKind,
)
from spear_twisted.runtime.launch import LAUNCHER_SCRIPT
from spear_twisted.wire import MessageType, SignalType
from tests.runtime_support import FakeRuntime, statuses

TRUE = "/bin/true"


def config(**changes: Any) -> InstanceConfig:
    settings: dict[str, Any] = {"executable": TRUE}
    settings.update(changes)
    return InstanceConfig(**settings)


class InterfaceTests(TestCase):
    def test_the_process_runtime_provides_IRuntime(self) -> None:
        fake = FakeRuntime(self)
        self.assertTrue(verifyObject(IRuntime, fake.runtime))

    def test_a_connection_manager_provides_the_factory_and_the_secrets(self) -> None:
        from spear_twisted.auth import SecretRegistry

        registry = SecretRegistry()
        manager = ConnectionManager(validator=registry)
        runtime = ProcessRuntime.from_connection_manager(
            manager, config=ProcessRuntimeConfig(launcher="python")
        )
        self.assertIs(runtime.factory, manager.factory)
        self.assertIs(runtime.secrets, registry)

    def test_a_connection_manager_without_a_secret_registry_is_refused(self) -> None:
        manager = ConnectionManager(validator=lambda instance_id, token: True)
        with self.assertRaises(TypeError) as caught:
            ProcessRuntime.from_connection_manager(manager)
        self.assertIn("SecretRegistry", str(caught.exception))


class CreateTests(TestCase):
    def test_an_instance_is_created_without_starting(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance("echo", config(args=["a"]))
        self.assertEqual(instance.status, InstanceStatus.CREATING)
        self.assertEqual(instance.task_id, "echo")
        self.assertEqual(instance.config.executable, TRUE)
        self.assertEqual(instance.limits, ResourceLimits())
        self.assertEqual(fake.reactor.processes, [])
        self.assertEqual(fake.factory.channels, {})
        self.assertEqual(len(fake.registry), 0)
        self.assertIs(fake.runtime.get_instance(instance.instance_id), instance)

    def test_a_missing_executable_is_refused_and_nothing_is_kept(self) -> None:
        fake = FakeRuntime(self)
        with self.assertRaises(InvalidInstanceConfig) as caught:
            fake.runtime.create_instance("echo", config(executable="/no/such/program"))
        self.assertIn("/no/such/program does not exist", str(caught.exception))
        self.assertEqual(fake.runtime.instances, {})
        self.assertEqual(fake.factory.channels, {})
        self.assertEqual(len(fake.registry), 0)
        self.assertEqual(fake.events, [])

    def test_a_name_is_looked_up_on_the_PATH_the_instance_inherits(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance("echo", config(executable="true"))
        self.assertIn(instance.config.executable, ("/usr/bin/true", "/bin/true"))

    def test_a_missing_working_directory_is_refused(self) -> None:
        fake = FakeRuntime(self)
        with self.assertRaises(InvalidInstanceConfig) as caught:
            fake.runtime.create_instance("echo", config(working_dir="/no/such/dir"))
        self.assertIn("/no/such/dir", str(caught.exception))
        self.assertEqual(fake.runtime.instances, {})

    def test_a_bad_task_id_is_refused(self) -> None:
        fake = FakeRuntime(self)
        for task_id in ("", " echo", "a\nb"):
            self.assertRaises(InvalidInstanceConfig, fake.runtime.create_instance, task_id, config())

    def test_every_instance_gets_its_own_id(self) -> None:
        fake = FakeRuntime(self)
        first = fake.runtime.create_instance("echo", config())
        second = fake.runtime.create_instance("echo", config())
        self.assertNotEqual(first.instance_id, second.instance_id)
        self.assertTrue(first.instance_id.instance_id.startswith("echo-"))

    def test_an_instance_of_another_runtime_is_refused(self) -> None:
        one, other = FakeRuntime(self), FakeRuntime(self)
        instance = one.runtime.create_instance("echo", config())
        self.failureResultOf(other.runtime.start_instance(instance), ValueError)
        self.failureResultOf(other.runtime.stop_instance(instance), ValueError)

    def test_a_created_instance_can_be_removed(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance("echo", config())
        fake.runtime.remove_instance(instance)
        self.assertEqual(fake.runtime.instances, {})


class StartTests(TestCase):
    def test_spawning_waits_until_the_reactor_runs(self) -> None:
        fake = FakeRuntime(self)
        fake.reactor.running = False
        instance = fake.runtime.create_instance("echo", config())
        fake.runtime.start_instance(instance)
        self.assertEqual(fake.reactor.processes, [])
        fake.reactor.running = False
        fake.reactor.run()
        self.assertEqual(len(fake.reactor.processes), 1)

    def test_the_instance_runs_through_the_launcher(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance(
            "echo", config(args=["--fast"]), ResourceLimits(max_open_files=64)
        )
        fake.runtime.start_instance(instance)
        [process] = fake.reactor.processes
        self.assertEqual(process.args[:4], [process.executable, "-I", "-S", LAUNCHER_SCRIPT])
        self.assertIn('"argv": ["/bin/true", "--fast"]', process.args[4])
        self.assertIn('"RLIMIT_NOFILE": 64', process.args[4])
        self.assertEqual(process.path, None)
        self.assertTrue(process.stdin_closed)

    def test_the_environment_is_built_from_nothing(self) -> None:
        fake = FakeRuntime(self)
        task_env = {"MODE": "fast", "SPEAR_SECRET": "an attempt to override the secret"}
        instance = fake.runtime.create_instance("echo", config(env=task_env, inherit_env=["PATH", "NOT_SET"]))
        fake.runtime.start_instance(instance)
        [process] = fake.reactor.processes
        env = process.env
        self.assertIsInstance(env, dict)
        secret = env["SPEAR_SECRET"]
        self.assertEqual(
            env,
            {
                "PATH": "/usr/bin:/bin",
                "MODE": "fast",
                "SPEAR_INSTANCE_ID": str(instance.instance_id),
                "SPEAR_SECRET": secret,
                "SECRET": secret,
                "SPEAR_COMMUNICATION_TYPE": "memory",
                "SPEAR_MEMORY_NAME": str(instance.instance_id),
            },
        )
        self.assertTrue(fake.registry.validate(instance.instance_id, secret))
        self.assertNotIn(secret, os.environ.values())

    def test_every_spawn_gets_a_fresh_secret(self) -> None:
        fake = FakeRuntime(
            self, config=ProcessRuntimeConfig(launcher="python", backoff=BackoffPolicy(min_delay=0))
        )
        instance = fake.runtime.create_instance("echo", config(restart_policy="always"))
        fake.runtime.start_instance(instance)
        self.successResultOf(fake.agent(instance))
        first = fake.reactor.processes[0].env["SPEAR_SECRET"]
        fake.reactor.processes[0].exit(1)
        fake.reactor.advance(0)
        second = fake.reactor.processes[1].env["SPEAR_SECRET"]
        self.assertNotEqual(first, second)
        self.assertFalse(fake.registry.validate(instance.instance_id, first))
        self.assertTrue(fake.registry.validate(instance.instance_id, second))

    def test_the_instance_is_ready_only_once_its_agent_authenticated(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance("echo", config())
        started = fake.runtime.start_instance(instance)
        fake.reactor.pump()
        self.assertEqual(instance.status, InstanceStatus.STARTING)
        self.assertNoResult(started)
        self.assertEqual(instance.pid, fake.reactor.processes[0].pid)
        self.successResultOf(fake.agent(instance))
        self.assertIs(self.successResultOf(started), instance)
        self.assertEqual(instance.status, InstanceStatus.READY)
        self.assertEqual(
            statuses(instance), [InstanceStatus.CREATING, InstanceStatus.STARTING, InstanceStatus.READY]
        )
        self.assertEqual(instance.history[-1].reason, "its agent authenticated")
        self.assertEqual(instance.address, f"memory:{instance.instance_id}")

    def test_a_wrong_secret_does_not_make_the_instance_ready(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance("echo", config())
        started = fake.runtime.start_instance(instance)
        self.failureResultOf(fake.agent(instance, token="not-the-secret-at-all"))
        self.assertEqual(instance.status, InstanceStatus.STARTING)
        fake.reactor.processes[0].exit(77)
        failure = self.failureResultOf(started, InstanceStartFailed)
        self.assertEqual(instance.status, InstanceStatus.ERROR)
        self.assertEqual(
            instance.error,
            "exited with code 77, before its agent authenticated (last connection attempt: invalid token)",
        )
        self.assertIn("invalid token", failure.value.message)

    def test_no_authentication_within_the_startup_timeout_kills_the_group(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance("echo", config(startup_timeout=12))
        started = fake.runtime.start_instance(instance)
        pid = fake.reactor.processes[0].pid
        fake.reactor.advance(11.9)
        self.assertEqual(fake.groups.sent, [])
        fake.reactor.advance(0.1)
        self.assertEqual(fake.groups.sent, [(pid, signal.SIGKILL)])
        failure = self.failureResultOf(started, InstanceStartFailed)
        self.assertEqual(failure.value.message, "its agent did not authenticate within 12 s")
        self.assertEqual(instance.status, InstanceStatus.ERROR)
        self.assertEqual(instance.error, "its agent did not authenticate within 12 s")
        [timeout] = fake.events_of(RuntimeEventKind.STARTUP_TIMEOUT)
        self.assertEqual(timeout.pid, pid)
        fake.reactor.advance(0)
        self.assertEqual(instance.pid, None)
        self.assertEqual(instance.last_exit.signal, signal.SIGKILL)
        self.assertEqual(instance.status, InstanceStatus.ERROR)
        self.assertEqual(fake.factory.channels, {})
        self.assertEqual(len(fake.registry), 0)

    def test_an_instance_in_error_can_be_started_again(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance("echo", config())
        started = fake.runtime.start_instance(instance)
        fake.reactor.processes[0].exit(3)
        self.failureResultOf(started, InstanceStartFailed)
        again = fake.runtime.start_instance(instance)
        self.successResultOf(fake.agent(instance))
        self.successResultOf(again)
        self.assertEqual(instance.status, InstanceStatus.READY)

    def test_a_running_instance_cannot_be_started_twice(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance("echo", config())
        fake.runtime.start_instance(instance)
        self.failureResultOf(fake.runtime.start_instance(instance), ValueError)

    def test_a_spawn_failure_is_an_error_and_releases_everything(self) -> None:
        fake = FakeRuntime(self)

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise OSError(12, "Cannot allocate memory")

        fake.reactor.spawnProcess = refuse  # type: ignore[method-assign]
        instance = fake.runtime.create_instance("echo", config())
        failure = self.failureResultOf(fake.runtime.start_instance(instance), InstanceStartFailed)
        self.assertIn("could not spawn its process", failure.value.message)
        self.assertEqual(instance.status, InstanceStatus.ERROR)
        self.assertEqual(fake.factory.channels, {})
        self.assertEqual(len(fake.registry), 0)
        self.flushLoggedErrors(OSError)

    def test_start_fails_once_the_runtime_is_stopping(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance("echo", config())
        fake.runtime.startService()
        self.successResultOf(fake.runtime.stopService())
        self.failureResultOf(fake.runtime.start_instance(instance), ShuttingDown)


def ready(fake: FakeRuntime, **changes: Any) -> Any:
    """An instance of ``config(**changes)`` made Ready on ``fake``."""
    instance = fake.runtime.create_instance("echo", config(**changes))
    started = fake.runtime.start_instance(instance)
    authenticated = fake.agent(instance)
    assert started.called and authenticated.called
    return instance


class RestartTests(TestCase):
    def fake(self, **backoff: Any) -> FakeRuntime:
        policy = BackoffPolicy(**backoff)
        return FakeRuntime(self, config=ProcessRuntimeConfig(launcher="python", backoff=policy))

    def crash(self, fake: FakeRuntime, code: int = 1) -> None:
        fake.reactor.processes[-1].exit(code)

    def test_a_crash_restarts_after_a_delay_that_doubles_up_to_the_maximum(self) -> None:
        fake = self.fake(min_delay=1, max_delay=5, crash_loop_restarts=100)
        instance = ready(fake)
        delays = []
        for _ in range(5):
            self.crash(fake)
            [*_, scheduled] = fake.events_of(RuntimeEventKind.RESTART_SCHEDULED)
            delays.append(scheduled.delay)
            self.assertEqual(instance.status, InstanceStatus.STARTING)
            spawned = len(fake.reactor.processes)
            fake.reactor.advance(scheduled.delay - 0.01)
            self.assertEqual(len(fake.reactor.processes), spawned)
            fake.reactor.advance(0.01)
            self.assertEqual(len(fake.reactor.processes), spawned + 1)
        self.assertEqual(delays, [1, 2, 4, 5, 5])
        self.assertEqual(instance.restart_count, 5)

    def test_a_restarted_instance_is_ready_again_once_its_agent_authenticates(self) -> None:
        fake = self.fake(min_delay=2)
        instance = ready(fake)
        self.crash(fake, 3)
        self.assertEqual(instance.status, InstanceStatus.STARTING)
        self.assertEqual(instance.history[-1].reason, "restarting in 2 s after: exited with code 3")
        fake.reactor.advance(2)
        self.successResultOf(fake.agent(instance))
        self.assertEqual(instance.status, InstanceStatus.READY)
        description = instance.describe(fake.reactor.seconds())
        self.assertEqual(description["restart_count"], 1)
        self.assertEqual(description["last_exit_code"], 3)
        self.assertEqual(description["last_exit_signal"], None)
        fake.reactor.advance(7)
        self.assertEqual(instance.describe(fake.reactor.seconds())["uptime"], 7.0)

    def test_a_process_that_lived_long_restarts_at_once_and_the_delay_starts_over(self) -> None:
        fake = self.fake(min_delay=1, stable_after=60, crash_loop_restarts=100)
        instance = ready(fake)
        self.crash(fake)
        fake.reactor.advance(1)
        self.crash(fake)
        fake.reactor.advance(2)
        self.successResultOf(fake.agent(instance))
        fake.reactor.advance(60)
        self.crash(fake)
        self.assertEqual(
            [event.delay for event in fake.events_of(RuntimeEventKind.RESTART_SCHEDULED)], [1, 2, 0]
        )
        fake.reactor.advance(0)
        self.crash(fake)
        self.assertEqual(fake.events_of(RuntimeEventKind.RESTART_SCHEDULED)[-1].delay, 1)

    def test_a_signal_death_is_described_and_restarted(self) -> None:
        fake = self.fake()
        instance = ready(fake)
        fake.reactor.processes[-1].exit(None, signal.SIGSEGV)
        self.assertEqual(instance.last_exit.signal, signal.SIGSEGV)
        self.assertEqual(instance.last_exit.reason, "killed by SIGSEGV")
        self.assertEqual(instance.status, InstanceStatus.STARTING)

    def test_a_crash_loop_stops_restarting_and_is_an_error_with_an_event(self) -> None:
        fake = self.fake(min_delay=1, max_delay=1, crash_loop_restarts=3, crash_loop_window=100)
        instance = ready(fake)
        for _ in range(3):
            self.crash(fake)
            fake.reactor.advance(1)
        self.assertEqual(len(fake.reactor.processes), 4)
        self.crash(fake, 9)
        self.assertEqual(instance.status, InstanceStatus.ERROR)
        expected = "crash loop: 3 restarts within 100 s; last: exited with code 9"
        self.assertEqual(instance.error, expected)
        [loop] = fake.events_of(RuntimeEventKind.CRASH_LOOP)
        self.assertEqual(loop.reason, expected)
        fake.reactor.advance(1000)
        self.assertEqual(len(fake.reactor.processes), 4)
        self.assertEqual(fake.factory.channels, {})
        self.assertEqual(len(fake.registry), 0)

    def test_restarts_outside_the_window_are_forgotten(self) -> None:
        fake = self.fake(min_delay=1, max_delay=1, crash_loop_restarts=2, crash_loop_window=10)
        instance = ready(fake)
        for _ in range(6):
            self.crash(fake)
            fake.reactor.advance(6)
        self.assertEqual(instance.status, InstanceStatus.STARTING)
        self.assertEqual(instance.restart_count, 6)

    def test_never_leaves_a_failed_instance_in_error(self) -> None:
        fake = self.fake()
        instance = ready(fake, restart_policy=RestartPolicy.NEVER)
        self.crash(fake, 4)
        self.assertEqual(instance.status, InstanceStatus.ERROR)
        self.assertEqual(instance.error, "exited with code 4")
        fake.reactor.advance(100)
        self.assertEqual(len(fake.reactor.processes), 1)

    def test_never_and_on_failure_leave_a_clean_exit_stopped(self) -> None:
        for policy in ("never", "on-failure"):
            fake = self.fake()
            instance = ready(fake, restart_policy=policy)
            self.crash(fake, 0)
            self.assertEqual(instance.status, InstanceStatus.STOPPED, policy)
            self.assertEqual(instance.history[-1].reason, "exited with code 0")
            fake.reactor.advance(100)
            self.assertEqual(len(fake.reactor.processes), 1)
            self.assertEqual(fake.factory.channels, {})

    def test_always_restarts_after_a_clean_exit(self) -> None:
        fake = self.fake()
        instance = ready(fake, restart_policy="always")
        self.crash(fake, 0)
        self.assertEqual(instance.status, InstanceStatus.STARTING)
        fake.reactor.advance(1)
        self.assertEqual(len(fake.reactor.processes), 2)

    def test_an_agent_that_disconnects_makes_the_instance_unhealthy_until_it_reconnects(self) -> None:
        fake = self.fake()
        instance = ready(fake)
        channel = fake.factory.get_channel(instance.instance_id)
        assert channel is not None and channel.connection is not None
        channel.connection.abort()
        fake.reactor.pump()
        self.assertEqual(instance.status, InstanceStatus.UNHEALTHY)
        self.assertEqual(instance.history[-1].reason, "its agent disconnected")
        health = fake.runtime.health_check(instance)
        self.assertEqual((health.healthy, health.reason), (False, "its agent disconnected"))
        self.successResultOf(fake.agent(instance))
        self.assertEqual(instance.status, InstanceStatus.READY)
        self.assertEqual(instance.history[-1].reason, "its agent reconnected")
        self.assertTrue(fake.runtime.health_check(instance).healthy)


class StopTests(TestCase):
    def test_stop_sends_terminate_then_sigterm_then_sigkill_to_the_group(self) -> None:
        fake = FakeRuntime(self)
        instance = ready(fake, stop_grace_period=3, kill_timeout=4)
        pid = instance.pid
        assert pid is not None
        fake.groups.stubborn.add(pid)
        received: list[Any] = []
        fake.agents[-1].receive().addCallback(received.append)
        stopping = fake.runtime.stop_instance(instance)
        fake.reactor.pump()
        [message] = received
        self.assertEqual(message.message_type, MessageType.SIGNAL)
        self.assertEqual(message.parse_payload().signal_type, SignalType.TERMINATE)
        self.assertEqual(instance.status, InstanceStatus.STOPPING)
        fake.reactor.advance(2.9)
        self.assertEqual(fake.groups.sent, [])
        fake.reactor.advance(0.1)
        self.assertEqual(fake.groups.sent, [(pid, signal.SIGTERM)])
        fake.reactor.advance(3.9)
        self.assertEqual(fake.groups.sent, [(pid, signal.SIGTERM)])
        self.assertNoResult(stopping)
        fake.reactor.advance(0.1)
        self.assertEqual(fake.groups.sent, [(pid, signal.SIGTERM), (pid, signal.SIGKILL)])
        fake.reactor.pump()
        self.assertIs(self.successResultOf(stopping), instance)
        self.assertEqual(instance.status, InstanceStatus.STOPPED)
        self.assertEqual(instance.pid, None)
        self.assertEqual(instance.last_exit.signal, signal.SIGKILL)
        self.assertEqual(fake.factory.channels, {})
        self.assertEqual(len(fake.registry), 0)
        self.assertEqual(
            statuses(instance)[-3:], [InstanceStatus.READY, InstanceStatus.STOPPING, InstanceStatus.STOPPED]
        )

    def test_a_process_that_exits_on_terminate_is_not_signalled(self) -> None:
        fake = FakeRuntime(self)
        instance = ready(fake, stop_grace_period=3)
        stopping = fake.runtime.stop_instance(instance)
        fake.reactor.pump()
        fake.reactor.advance(1)
        fake.reactor.processes[0].exit(0)
        fake.reactor.pump()
        self.successResultOf(stopping)
        self.assertEqual(fake.groups.sent, [])
        self.assertEqual(instance.status, InstanceStatus.STOPPED)
        self.assertEqual(instance.last_exit.reason, "exited with code 0")

    def test_a_process_whose_agent_is_not_connected_gets_sigterm_at_once(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance("echo", config(stop_grace_period=3))
        started = fake.runtime.start_instance(instance)
        stopping = fake.runtime.stop_instance(instance)
        self.assertEqual(fake.groups.sent, [(fake.reactor.processes[0].original_pid, signal.SIGTERM)])
        fake.reactor.pump()
        self.successResultOf(stopping)
        failure = self.failureResultOf(started, InstanceStartFailed)
        self.assertEqual(failure.value.message, "stopped before its agent authenticated")

    def test_stopping_twice_waits_for_the_same_stop(self) -> None:
        fake = FakeRuntime(self)
        instance = ready(fake, stop_grace_period=1)
        first = fake.runtime.stop_instance(instance)
        second = fake.runtime.stop_instance(instance)
        fake.reactor.advance(1)
        fake.reactor.pump()
        self.assertIs(self.successResultOf(first), instance)
        self.assertIs(self.successResultOf(second), instance)
        self.assertEqual(fake.groups.sent, [(fake.reactor.processes[0].original_pid, signal.SIGTERM)])
        self.assertIs(self.successResultOf(fake.runtime.stop_instance(instance)), instance)

    def test_stop_during_the_restart_delay_cancels_the_restart(self) -> None:
        fake = FakeRuntime(self)
        instance = ready(fake)
        fake.reactor.processes[0].exit(1)
        self.assertEqual(instance.status, InstanceStatus.STARTING)
        stopping = fake.runtime.stop_instance(instance)
        fake.reactor.pump()
        self.successResultOf(stopping)
        self.assertEqual(instance.status, InstanceStatus.STOPPED)
        fake.reactor.advance(100)
        self.assertEqual(len(fake.reactor.processes), 1)
        self.assertEqual(fake.reactor.getDelayedCalls(), [])

    def test_stop_before_the_reactor_runs_spawns_nothing(self) -> None:
        fake = FakeRuntime(self)
        fake.reactor.running = False
        instance = fake.runtime.create_instance("echo", config())
        started = fake.runtime.start_instance(instance)
        self.successResultOf(fake.runtime.stop_instance(instance))
        fake.reactor.run()
        self.assertEqual(fake.reactor.processes, [])
        self.failureResultOf(started, InstanceStartFailed)
        self.assertEqual(fake.factory.channels, {})

    def test_a_stopped_instance_can_be_started_again(self) -> None:
        fake = FakeRuntime(self)
        instance = ready(fake, stop_grace_period=0)
        stopping = fake.runtime.stop_instance(instance)
        fake.reactor.pump()
        self.successResultOf(stopping)
        restarted = fake.runtime.start_instance(instance)
        self.successResultOf(fake.agent(instance))
        self.successResultOf(restarted)
        self.assertEqual(instance.status, InstanceStatus.READY)
        self.assertEqual(instance.restart_count, 0)

    def test_stop_service_fires_only_when_every_child_is_gone(self) -> None:
        fake = FakeRuntime(self)
        fake.runtime.startService()
        instances = [ready(fake, stop_grace_period=1, kill_timeout=2) for _ in range(2)]
        idle = fake.runtime.create_instance("idle", config())
        for process in fake.reactor.processes:
            fake.groups.stubborn.add(process.original_pid)
        stopping = fake.runtime.stopService()
        fake.reactor.pump()
        fake.reactor.advance(1)
        fake.reactor.advance(1.9)
        self.assertNoResult(stopping)
        self.assertTrue(all(process.running for process in fake.reactor.processes))
        fake.reactor.advance(0.1)
        fake.reactor.pump()
        self.assertIsNone(self.successResultOf(stopping))
        self.assertFalse(any(process.running for process in fake.reactor.processes))
        for instance in [*instances, idle]:
            self.assertEqual(instance.status, InstanceStatus.STOPPED)


class ObservationTests(TestCase):
    def test_serving_statuses_are_set_by_the_scheduler(self) -> None:
        fake = FakeRuntime(self)
        instance = ready(fake)
        fake.runtime.set_serving_status(instance, InstanceStatus.BUSY, "3 of 3 requests")
        self.assertEqual(instance.status, InstanceStatus.BUSY)
        self.assertTrue(fake.runtime.health_check(instance).healthy)
        fake.runtime.set_serving_status(instance, InstanceStatus.RUNNING)
        fake.runtime.set_serving_status(instance, InstanceStatus.READY)
        self.assertEqual(
            statuses(instance)[-3:], [InstanceStatus.BUSY, InstanceStatus.RUNNING, InstanceStatus.READY]
        )
        self.assertRaises(ValueError, fake.runtime.set_serving_status, instance, InstanceStatus.STOPPED)

    def test_an_instance_that_is_not_serving_cannot_take_a_serving_status(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance("echo", config())
        self.assertRaises(ValueError, fake.runtime.set_serving_status, instance, InstanceStatus.BUSY)

    def test_health_says_why_an_instance_cannot_take_work(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance("echo", config())
        health = fake.runtime.health_check(instance)
        self.assertEqual(
            (health.healthy, health.status, health.reason),
            (False, InstanceStatus.CREATING, "instance is Creating"),
        )
        started = fake.runtime.start_instance(instance)
        fake.reactor.processes[0].exit(2)
        self.failureResultOf(started)
        health = fake.runtime.health_check(instance)
        self.assertEqual(health.reason, instance.error)

    def test_every_status_change_is_an_event(self) -> None:
        fake = FakeRuntime(self)
        instance = ready(fake)
        changes = [event for event in fake.events if event.kind is RuntimeEventKind.STATUS_CHANGED]
        self.assertEqual([event.status for event in changes], statuses(instance))
        [spawned] = fake.events_of(RuntimeEventKind.SPAWNED)
        self.assertEqual(spawned.pid, instance.pid)

    def test_a_failing_subscriber_does_not_stop_the_others(self) -> None:
        fake = FakeRuntime(self)

        def broken(event: Any) -> None:
            raise RuntimeError("subscriber bug")

        fake.runtime.subscribe(broken)
        seen: list[Any] = []
        unsubscribe = fake.runtime.subscribe(seen.append)
        fake.runtime.create_instance("echo", config())
        self.assertEqual(len(seen), 1)
        unsubscribe()
        fake.runtime.create_instance("echo", config())
        self.assertEqual(len(seen), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_metrics_of_an_instance_without_a_process_are_empty(self) -> None:
        fake = FakeRuntime(self)
        instance = fake.runtime.create_instance("echo", config())
        metrics = fake.runtime.get_metrics(instance)
        self.assertEqual((metrics.pid, metrics.rss_bytes, metrics.processes), (None, None, 0))

    def test_history_is_bounded(self) -> None:
        fake = FakeRuntime(self)
        instance = ready(fake)
        for _ in range(200):
            fake.runtime.set_serving_status(instance, InstanceStatus.BUSY)
            fake.runtime.set_serving_status(instance, InstanceStatus.READY)
        self.assertEqual(len(instance.history), 100)
