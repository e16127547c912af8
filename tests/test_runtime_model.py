"""Instance configuration, limits, status and backoff: defaults, checks, reading from configuration."""

from __future__ import annotations

import signal

from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.errors import InvalidMessage
from spear_twisted.runtime import (
    BackoffPolicy,
    InstanceConfig,
    InstanceStatus,
    ProcessRuntimeConfig,
    ResourceLimits,
    RestartPolicy,
    TaskInstance,
)
from spear_twisted.runtime.model import HISTORY_LIMIT, SERVING
from spear_twisted.runtime.supervision import RestartTracker, describe_exit
from spear_twisted.wire import RuntimeInstanceId, RuntimeType
from spear_twisted.wire.codec import structure


class ResourceLimitsTests(SynchronousTestCase):
    def test_the_documented_defaults(self) -> None:
        limits = ResourceLimits()
        self.assertEqual(
            (limits.max_memory_bytes, limits.max_cpu_seconds, limits.max_open_files, limits.max_processes),
            (1024**3, None, 1024, None),
        )
        self.assertEqual(limits.as_rlimits(), {"RLIMIT_AS": 1024**3, "RLIMIT_NOFILE": 1024})

    def test_every_limit_maps_to_its_rlimit(self) -> None:
        limits = ResourceLimits(max_memory_bytes=1, max_cpu_seconds=2, max_open_files=3, max_processes=4)
        self.assertEqual(
            limits.as_rlimits(), {"RLIMIT_AS": 1, "RLIMIT_CPU": 2, "RLIMIT_NOFILE": 3, "RLIMIT_NPROC": 4}
        )
        self.assertEqual(ResourceLimits(None, None, None, None).as_rlimits(), {})

    def test_a_limit_must_be_positive(self) -> None:
        for name in ("max_memory_bytes", "max_cpu_seconds", "max_open_files", "max_processes"):
            with self.assertRaises(ValueError) as caught:
                ResourceLimits(**{name: 0})
            self.assertIn(name, str(caught.exception))

    def test_limits_are_read_from_configuration(self) -> None:
        limits = structure({"max_memory_bytes": 268435456, "max_cpu_seconds": 10}, ResourceLimits)
        self.assertEqual(limits, ResourceLimits(max_memory_bytes=268435456, max_cpu_seconds=10))
        with self.assertRaises(InvalidMessage) as caught:
            structure({"max_memory": 1}, ResourceLimits)
        self.assertIn("did you mean 'max_memory_bytes'", str(caught.exception))


class InstanceConfigTests(SynchronousTestCase):
    def test_the_defaults(self) -> None:
        config = InstanceConfig("/bin/true")
        self.assertEqual(config.args, ())
        self.assertEqual(config.env, {})
        self.assertEqual(config.inherit_env, ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR"))
        self.assertEqual(config.restart_policy, RestartPolicy.ON_FAILURE)
        self.assertEqual(config.startup_timeout, 30.0)
        self.assertEqual((config.stop_grace_period, config.kill_timeout), (5.0, 5.0))
        self.assertIsNone(config.transports)

    def test_it_is_read_from_configuration_with_its_policy_by_name(self) -> None:
        config = structure(
            {
                "executable": "python3",
                "args": ["-m", "spear_twisted.agent.echo"],
                "env": {"MODE": "fast"},
                "restart_policy": "always",
                "transports": ["tcp"],
            },
            InstanceConfig,
        )
        self.assertEqual(config.restart_policy, RestartPolicy.ALWAYS)
        self.assertEqual(config.args, ("-m", "spear_twisted.agent.echo"))
        self.assertEqual(config.transports, ("tcp",))

    def test_an_unknown_restart_policy_is_refused(self) -> None:
        self.assertRaises(ValueError, InstanceConfig, "/bin/true", restart_policy="restart-on-failed")
        with self.assertRaises(InvalidMessage):
            structure({"executable": "x", "restart_policy": "restart-on-failed"}, InstanceConfig)

    def test_bad_values_are_refused_with_the_field_name(self) -> None:
        cases = [
            ({"startup_timeout": 0}, "startup_timeout"),
            ({"kill_timeout": -1}, "kill_timeout"),
            ({"stop_grace_period": -1}, "stop_grace_period"),
            ({"env": {"A=B": "x"}}, "env"),
            ({"env": {"A": "x\0"}}, "env"),
        ]
        for changes, name in cases:
            with self.assertRaises(ValueError) as caught:
                InstanceConfig("/bin/true", **changes)  # type: ignore[arg-type]
            self.assertIn(name, str(caught.exception))
        self.assertRaises(TypeError, InstanceConfig, "/bin/true", args="not a list")
        self.assertRaises(TypeError, InstanceConfig, "/bin/true", args=[1])

    def test_a_grace_period_of_zero_is_allowed(self) -> None:
        self.assertEqual(InstanceConfig("/bin/true", stop_grace_period=0).stop_grace_period, 0)


class StatusTests(SynchronousTestCase):
    def instance(self) -> TaskInstance:
        return TaskInstance(
            RuntimeInstanceId(RuntimeType.PROCESS, "echo-1"),
            "echo",
            InstanceConfig("/bin/true"),
            ResourceLimits(),
            0.0,
        )

    def test_the_statuses_of_the_issue(self) -> None:
        self.assertEqual(
            [status.value for status in InstanceStatus],
            ["Creating", "Starting", "Ready", "Running", "Busy", "Unhealthy", "Stopping", "Stopped", "Error"],
        )
        self.assertEqual(SERVING, {InstanceStatus.READY, InstanceStatus.RUNNING, InstanceStatus.BUSY})

    def test_every_change_is_kept_with_its_reason_and_the_error_only_in_error(self) -> None:
        instance = self.instance()
        instance.set_status(InstanceStatus.STARTING, 1.0)
        instance.set_status(InstanceStatus.ERROR, 2.0, "exited with code 1")
        self.assertEqual(instance.error, "exited with code 1")
        instance.set_status(InstanceStatus.STARTING, 3.0)
        self.assertIsNone(instance.error)
        self.assertEqual(
            [(change.time, change.old, change.new, change.reason) for change in instance.history],
            [
                (1.0, None, InstanceStatus.STARTING, None),
                (2.0, InstanceStatus.STARTING, InstanceStatus.ERROR, "exited with code 1"),
                (3.0, InstanceStatus.ERROR, InstanceStatus.STARTING, None),
            ],
        )

    def test_the_history_keeps_the_latest_changes(self) -> None:
        instance = self.instance()
        for number in range(HISTORY_LIMIT + 5):
            instance.set_status(InstanceStatus.READY, float(number))
        self.assertEqual(len(instance.history), HISTORY_LIMIT)
        self.assertEqual(instance.history[0].time, 5.0)

    def test_uptime_counts_only_while_a_process_runs(self) -> None:
        instance = self.instance()
        self.assertEqual(instance.uptime(10.0), 0.0)
        instance.pid, instance.started_at = 42, 4.0
        self.assertEqual(instance.uptime(10.0), 6.0)
        self.assertEqual(instance.describe(10.0)["uptime"], 6.0)


class BackoffTests(SynchronousTestCase):
    def test_the_documented_defaults(self) -> None:
        policy = BackoffPolicy()
        self.assertEqual(
            (
                policy.min_delay,
                policy.max_delay,
                policy.stable_after,
                policy.crash_loop_restarts,
                policy.crash_loop_window,
            ),
            (1.0, 60.0, 60.0, 5, 300.0),
        )

    def test_the_maximum_cannot_be_below_the_minimum(self) -> None:
        self.assertRaises(ValueError, BackoffPolicy, min_delay=5, max_delay=1)
        self.assertRaises(ValueError, BackoffPolicy, crash_loop_restarts=0)

    def test_young_deaths_double_the_delay_up_to_the_maximum(self) -> None:
        tracker = RestartTracker(BackoffPolicy(min_delay=0.5, max_delay=3, crash_loop_restarts=100))
        delays = [tracker.next_delay(float(now), lived=1) for now in range(6)]
        self.assertEqual(delays, [0.5, 1.0, 2.0, 3.0, 3.0, 3.0])

    def test_a_zero_minimum_restarts_at_once_every_time(self) -> None:
        tracker = RestartTracker(BackoffPolicy(min_delay=0, max_delay=8, crash_loop_restarts=100))
        self.assertEqual([tracker.next_delay(float(now), lived=0) for now in range(3)], [0.0, 0.0, 0.0])

    def test_the_crash_loop_counts_restarts_in_the_window(self) -> None:
        tracker = RestartTracker(BackoffPolicy(crash_loop_restarts=2, crash_loop_window=10))
        self.assertIsNotNone(tracker.next_delay(0.0, lived=0))
        self.assertIsNotNone(tracker.next_delay(5.0, lived=0))
        self.assertIsNone(tracker.next_delay(9.9, lived=0))
        self.assertEqual(tracker.recent_restarts, 2)
        self.assertIsNotNone(tracker.next_delay(10.0, lived=0))

    def test_the_runtime_settings_are_read_from_configuration(self) -> None:
        config = structure({"launcher": "python", "backoff": {"max_delay": 30}}, ProcessRuntimeConfig)
        self.assertEqual(config.backoff, BackoffPolicy(max_delay=30))
        self.assertFalse(config.reap_orphans)
        with self.assertRaises(InvalidMessage):
            structure({"launcher": "docker"}, ProcessRuntimeConfig)


class DescribeExitTests(SynchronousTestCase):
    def test_exit_codes_and_signals_in_words(self) -> None:
        limits = ResourceLimits()
        self.assertEqual(describe_exit(0, None, limits=limits).reason, "exited with code 0")
        self.assertTrue(describe_exit(0, None, limits=limits).clean)
        self.assertEqual(
            describe_exit(3, None, limits=limits, output_tail=["", "boom", ""]).reason,
            "exited with code 3; last output: boom",
        )
        self.assertEqual(
            describe_exit(None, signal.SIGTERM, limits=limits, killed_by_us=True).reason, "killed by SIGTERM"
        )
        self.assertEqual(describe_exit(None, 77, limits=limits).reason, "killed by signal 77")

    def test_a_memory_error_names_the_memory_limit(self) -> None:
        info = describe_exit(
            1, None, limits=ResourceLimits(max_memory_bytes=1000), output_tail=["MemoryError"]
        )
        self.assertEqual(
            info.reason, "exited with code 1 (memory limit of 1000 bytes exceeded); last output: MemoryError"
        )
        self.assertFalse(info.clean)

    def test_sigxcpu_names_the_cpu_limit(self) -> None:
        info = describe_exit(None, signal.SIGXCPU, limits=ResourceLimits(max_cpu_seconds=2))
        self.assertEqual(info.reason, "killed by SIGXCPU (CPU time limit of 2 s exceeded)")

    def test_a_sigkill_the_spearlet_did_not_send_is_pointed_out(self) -> None:
        info = describe_exit(None, signal.SIGKILL, limits=ResourceLimits())
        self.assertEqual(
            info.reason,
            "killed by SIGKILL (not sent by the spearlet: perhaps the kernel's out-of-memory killer)",
        )
        info = describe_exit(None, signal.SIGKILL, limits=ResourceLimits(max_cpu_seconds=1))
        self.assertIn("the CPU time limit of 1 s", info.reason)
