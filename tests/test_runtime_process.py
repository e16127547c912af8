"""
ProcessRuntime end to end, with real children: Python agents that connect
back, authenticate and answer; programs that crash, loop, ignore SIGTERM,
fork grandchildren, run out of memory or print their secret.

Children import this worktree's source (``PYTHONPATH``).  Nothing sleeps:
tests wait for events, with generous limits for a loaded machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Generator
from typing import Any

import psutil
from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from spear_twisted.errors import ConnectionLost, InstanceStartFailed
from spear_twisted.runtime import (
    BackoffPolicy,
    InstanceConfig,
    InstanceStatus,
    ProcessRuntimeConfig,
    ResourceLimits,
    RestartPolicy,
    RuntimeEventKind,
)
from spear_twisted.wire import ExecutionStatus
from tests.channel_support import wait_until
from tests.runtime_support import (
    CHILD_ENV,
    CHILD_INHERIT,
    CRASHING_AGENT,
    PYTHON,
    ROOT,
    LogCapture,
    execute,
    pids_in_group,
    python_args,
    real_runtime,
    when_event,
    when_status,
    with_timeout,
    write_script,
)

#: Seconds any one step of a test may take on a loaded machine.
STEP = 60.0

ECHO = ("-m", "spear_twisted.agent.echo")

# Authenticates with the SDK's bootstrap (a plain socket), then does what
# the test needs; it never reads what the spearlet sends.
BOOTSTRAP = """
import os, sys, time
from spear_twisted.agent.bootstrap import connect_and_authenticate
from spear_twisted.agent.config import AgentConfig
connection = connect_and_authenticate(AgentConfig.from_environment())
"""

STUBBORN = (
    BOOTSTRAP
    + """
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    children.append(pid)
print("grandchildren", *children, flush=True)
time.sleep(600)
"""
)

ESCAPING_GRANDCHILD = """
import os, time
pid = os.fork()
if pid == 0:
    os.setsid()  # out of the instance's process group, stdout still open
    time.sleep(600)
    os._exit(0)
print("grandchild", pid, flush=True)
"""

ENVIRONMENT = (
    BOOTSTRAP
    + """
import json
print(json.dumps(dict(os.environ), sort_keys=True), flush=True)
print("the secret is", os.environ["SPEAR_SECRET"], flush=True)
print("done", flush=True)
time.sleep(600)
"""
)

NOISY = (
    BOOTSTRAP
    + """
sys.stdout.write("to stdout\\n")
sys.stdout.flush()
sys.stderr.write("to stderr\\n")
sys.stderr.flush()
os.write(1, b"binary \\xff\\xfe\\x00 end\\n")
os.write(1, b"x" * 20000 + b"\\n")
print("done", flush=True)
time.sleep(600)
"""
)

GREEDY = """
print("allocating", flush=True)
hog = bytearray(512 * 1024 * 1024)
print("allocated", len(hog), flush=True)
"""


def echo_config(**changes: Any) -> InstanceConfig:
    settings: dict[str, Any] = {"executable": PYTHON, "args": ECHO, "inherit_env": CHILD_INHERIT}
    settings.update(changes)
    return InstanceConfig(**settings)


def script_config(test: TestCase, source: str, **changes: Any) -> InstanceConfig:
    return echo_config(args=python_args(write_script(test, source)), **changes)


def kill_later(test: TestCase, pids: list[int]) -> None:
    """Kill ``pids`` (escaped grandchildren) when the test ends."""

    def kill() -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    test.addCleanup(kill)


class RoundTripTests(TestCase):
    @defer.inlineCallbacks
    def round_trip(self, framework: str, transport: str, launcher: str = "auto") -> Generator[Any, Any, None]:
        runtime = real_runtime(self, config=ProcessRuntimeConfig(launcher=launcher, reap_orphans=True))
        config = echo_config(args=(*ECHO, "--framework", framework), transports=(transport,))
        instance = runtime.create_instance("echo", config)
        started = yield with_timeout(runtime.start_instance(instance), STEP, "authentication")
        self.assertIs(started, instance)
        self.assertEqual(instance.status, InstanceStatus.READY)
        self.assertTrue(instance.address.startswith(f"{transport}:"))
        response = yield with_timeout(
            execute(runtime, instance, "hello", "world", command="say"), STEP, "a response"
        )
        self.assertEqual(response.status, ExecutionStatus.COMPLETED)
        self.assertEqual(response.output, "say hello world")
        self.assertEqual(response.exit_code, 0)
        self.assertIsNotNone(response.duration_ms)
        self.assertTrue(runtime.health_check(instance).healthy)
        yield with_timeout(runtime.stop_instance(instance), STEP, "the stop")
        self.assertEqual(instance.status, InstanceStatus.STOPPED)
        # The agent obeyed the Terminate signal: a clean exit, no SIGTERM.
        self.assertEqual(instance.last_exit.exit_code, 0)
        self.assertEqual(runtime.factory.channels, {})

    def test_an_asyncio_echo_agent_over_unix(self) -> Deferred[None]:
        return self.round_trip("asyncio", "unix")

    def test_a_twisted_echo_agent_over_tcp(self) -> Deferred[None]:
        return self.round_trip("twisted", "tcp")

    def test_an_asyncio_echo_agent_over_tcp_with_the_python_launcher(self) -> Deferred[None]:
        return self.round_trip("asyncio", "tcp", launcher="python")

    def test_a_twisted_echo_agent_over_unix_with_the_python_launcher(self) -> Deferred[None]:
        return self.round_trip("twisted", "unix", launcher="python")

    @defer.inlineCallbacks
    def test_metrics_come_from_the_process(self) -> Generator[Any, Any, None]:
        runtime = real_runtime(self)
        instance = runtime.create_instance("echo", echo_config())
        yield with_timeout(runtime.start_instance(instance), STEP, "authentication")
        metrics = runtime.get_metrics(instance)
        self.assertEqual(metrics.pid, instance.pid)
        self.assertGreater(metrics.rss_bytes, 1024 * 1024)
        self.assertGreaterEqual(metrics.open_fds, 3)
        self.assertGreaterEqual(metrics.threads, 1)
        self.assertGreater(metrics.cpu_seconds, 0)
        self.assertGreaterEqual(metrics.cpu_percent, 0)
        self.assertEqual(metrics.processes, 1)


class FailureTests(TestCase):
    @defer.inlineCallbacks
    def test_a_wrong_secret_is_an_error_with_the_reason(self) -> Generator[Any, Any, None]:
        runtime = real_runtime(self)
        source = (
            "from spear_twisted.agent import run\nraise SystemExit(run(str, secret='not-the-right-secret'))\n"
        )
        instance = runtime.create_instance("echo", script_config(self, source))
        failure = yield with_timeout(
            self.assertFailure(runtime.start_instance(instance), InstanceStartFailed), STEP, "the failure"
        )
        self.assertEqual(instance.status, InstanceStatus.ERROR)
        self.assertIn("exited with code 77", instance.error)
        self.assertIn("invalid token", instance.error)
        self.assertEqual(failure.message, instance.error)
        self.assertEqual(runtime.factory.channels, {})

    @defer.inlineCallbacks
    def test_a_program_that_never_authenticates_is_killed_after_the_startup_timeout(
        self,
    ) -> Generator[Any, Any, None]:
        runtime = real_runtime(self)
        instance = runtime.create_instance(
            "sleepy", script_config(self, "import time\ntime.sleep(600)\n", startup_timeout=1)
        )
        yield with_timeout(
            self.assertFailure(runtime.start_instance(instance), InstanceStartFailed), STEP, "the timeout"
        )
        self.assertEqual(instance.error, "its agent did not authenticate within 1 s")
        if instance.last_exit is None:
            yield with_timeout(when_event(runtime, instance, RuntimeEventKind.EXITED), STEP, "the exit")
        self.assertEqual(instance.last_exit.signal, signal.SIGKILL)
        self.assertEqual(instance.status, InstanceStatus.ERROR)

    @defer.inlineCallbacks
    def test_exceeding_the_memory_limit_shows_in_the_exit_reason(self) -> Generator[Any, Any, None]:
        runtime = real_runtime(self)
        limits = ResourceLimits(max_memory_bytes=256 * 1024 * 1024)
        instance = runtime.create_instance("greedy", script_config(self, GREEDY), limits)
        yield with_timeout(
            self.assertFailure(runtime.start_instance(instance), InstanceStartFailed), STEP, "the failure"
        )
        self.assertEqual(instance.last_exit.exit_code, 1)
        self.assertIn("(memory limit of 268435456 bytes exceeded); last output: MemoryError", instance.error)


class SupervisionTests(TestCase):
    @defer.inlineCallbacks
    def test_a_crash_is_restarted_with_backoff(self) -> Generator[Any, Any, None]:
        backoff = BackoffPolicy(min_delay=0.1, max_delay=1, crash_loop_restarts=10)
        runtime = real_runtime(self, config=ProcessRuntimeConfig(backoff=backoff, reap_orphans=True))
        instance = runtime.create_instance("crashy", script_config(self, CRASHING_AGENT))
        events: list[Any] = []
        runtime.subscribe(events.append)
        yield with_timeout(runtime.start_instance(instance), STEP, "authentication")
        first_pid = instance.pid
        for round_number in (1, 2):
            yield self.assertFailure(execute(runtime, instance, command="crash"), ConnectionLost)
            yield with_timeout(when_status(runtime, instance, InstanceStatus.STARTING), STEP, "the exit")
            yield with_timeout(when_status(runtime, instance, InstanceStatus.READY), STEP, "the restart")
            self.assertEqual(instance.restart_count, round_number)
        scheduled = [event for event in events if event.kind is RuntimeEventKind.RESTART_SCHEDULED]
        self.assertEqual([event.delay for event in scheduled], [0.1, 0.2])
        self.assertEqual(instance.last_exit.exit_code, 3)
        self.assertNotEqual(instance.pid, first_pid)
        response = yield with_timeout(execute(runtime, instance), STEP, "a response")
        self.assertEqual(response.output, "alive")
        description = instance.describe(runtime.reactor.seconds())
        self.assertEqual((description["restart_count"], description["last_exit_code"]), (2, 3))
        self.assertGreaterEqual(description["uptime"], 0)

    @defer.inlineCallbacks
    def test_a_crash_loop_ends_in_error(self) -> Generator[Any, Any, None]:
        backoff = BackoffPolicy(min_delay=0.05, max_delay=0.1, crash_loop_restarts=3, crash_loop_window=600)
        runtime = real_runtime(self, config=ProcessRuntimeConfig(backoff=backoff, reap_orphans=True))
        # Authenticates, then dies: every restart is Ready for a moment.
        source = BOOTSTRAP + "time.sleep(0.3)\nsys.exit(5)\n"
        instance = runtime.create_instance("loop", script_config(self, source))
        looped = when_event(runtime, instance, RuntimeEventKind.CRASH_LOOP)
        yield with_timeout(runtime.start_instance(instance), STEP, "authentication")
        event = yield with_timeout(looped, STEP, "the crash loop")
        expected = "crash loop: 3 restarts within 600 s; last: exited with code 5"
        self.assertEqual(event.reason, expected)
        self.assertEqual(instance.status, InstanceStatus.ERROR)
        self.assertEqual(instance.error, expected)
        self.assertEqual(instance.restart_count, 3)
        self.assertEqual(runtime.factory.channels, {})


class StopTests(TestCase):
    @defer.inlineCallbacks
    def test_a_stubborn_child_and_its_grandchildren_are_killed(self) -> Generator[Any, Any, None]:
        log = LogCapture(self)
        runtime = real_runtime(self)
        config = script_config(self, STUBBORN, stop_grace_period=0.2, kill_timeout=0.3)
        instance = runtime.create_instance("stubborn", config)
        yield with_timeout(runtime.start_instance(instance), STEP, "authentication")
        event = yield with_timeout(log.when_output(instance, "grandchildren"), STEP, "the grandchildren")
        grandchildren = [int(pid) for pid in event["line"].split()[1:]]
        pgid = instance.pid
        assert pgid is not None
        self.assertEqual(sorted(pids_in_group(pgid)), sorted([pgid, *grandchildren]))
        yield with_timeout(runtime.stop_instance(instance), STEP, "the stop")
        self.assertEqual(instance.status, InstanceStatus.STOPPED)
        self.assertEqual(instance.last_exit.signal, signal.SIGKILL)
        text = log.text()
        self.assertIn("SIGTERM to its process group", text)
        self.assertIn("SIGKILL to its process group", text)
        # No orphans: nothing of the group is alive; no zombies: all reaped
        # (a zombie still exists).  Only this test's processes are looked at:
        # this process, a subreaper, also adopts the orphans of other tests'
        # children (a daemonizing twistd), which are none of this runtime's.
        self.assertEqual(pids_in_group(pgid), [])
        for pid in [pgid, *grandchildren]:
            self.assertFalse(psutil.pid_exists(pid), f"{pid} still exists")

    @defer.inlineCallbacks
    def test_a_stop_right_after_the_start_terminates_the_process(self) -> Generator[Any, Any, None]:
        """Even while the launcher may not have made the process group yet."""
        runtime = real_runtime(self)
        config = script_config(self, "import time\ntime.sleep(600)\n", stop_grace_period=0, kill_timeout=600)
        instance = runtime.create_instance("sleepy", config)
        yield task.deferLater(reactor, 0, lambda: None)  # the reactor runs: spawning is immediate
        started = self.assertFailure(runtime.start_instance(instance), InstanceStartFailed)
        self.assertIsNotNone(instance.pid)
        yield with_timeout(runtime.stop_instance(instance), STEP, "the stop")
        yield started
        self.assertEqual(instance.last_exit.signal, signal.SIGTERM)
        self.assertEqual(instance.status, InstanceStatus.STOPPED)

    @defer.inlineCallbacks
    def test_stop_service_fires_only_when_every_child_is_gone(self) -> Generator[Any, Any, None]:
        log = LogCapture(self)
        runtime = real_runtime(self)
        runtime.startService()
        config = script_config(self, STUBBORN, stop_grace_period=0.1, kill_timeout=0.2)
        instances = [runtime.create_instance("stubborn", config) for _ in range(2)]
        yield with_timeout(
            defer.gatherResults([runtime.start_instance(i) for i in instances]), STEP, "startup"
        )
        pids: list[int] = []
        for instance in instances:
            event = yield with_timeout(log.when_output(instance, "grandchildren"), STEP, "the grandchildren")
            pids += [instance.pid, *(int(pid) for pid in event["line"].split()[1:])]
        yield with_timeout(runtime.stopService(), STEP, "the stop")
        for pid in pids:
            self.assertFalse(psutil.pid_exists(pid), f"{pid} outlived stopService")

    @defer.inlineCallbacks
    def test_an_exit_is_seen_while_a_grandchild_holds_stdout(self) -> Generator[Any, Any, None]:
        """The exit is noticed when the process exits, not when its pipes close."""
        log = LogCapture(self)
        runtime = real_runtime(self)
        instance = runtime.create_instance(
            "escape", script_config(self, ESCAPING_GRANDCHILD, restart_policy=RestartPolicy.NEVER)
        )
        failed = self.assertFailure(runtime.start_instance(instance), InstanceStartFailed)
        event = yield with_timeout(log.when_output(instance, "grandchild"), STEP, "the grandchild")
        grandchild = int(event["line"].split()[1])
        kill_later(self, [grandchild])
        yield with_timeout(failed, STEP, "the exit")
        self.assertTrue(psutil.pid_exists(grandchild))
        self.assertEqual(instance.last_exit.exit_code, 0)
        self.assertEqual(instance.error, "exited with code 0, before its agent authenticated")


# Authenticates, then leaves an orphan: a grandchild in a session of its
# own (out of the instance's group), whose parent has exited, which ends a
# moment later.  A subreaper adopts it.
LEAVES_AN_ORPHAN = (
    BOOTSTRAP
    + """
r, w = os.pipe()
middle = os.fork()
if middle == 0:
    os.setsid()
    orphan = os.fork()
    if orphan == 0:
        time.sleep(0.5)
        os._exit(0)
    os.write(w, str(orphan).encode())
    os._exit(0)
os.waitpid(middle, 0)
print("orphan", os.read(r, 32).decode(), flush=True)
time.sleep(600)
"""
)


def our_child(pid: int) -> bool:
    """Whether ``pid`` is a child of this process, running or exited and not yet reaped."""
    try:
        return bool(psutil.Process(pid).ppid() == os.getpid())
    except psutil.NoSuchProcess:
        return False


class OrphanTests(TestCase):
    @defer.inlineCallbacks
    def test_a_subreaper_reaps_the_orphans_it_adopts(self) -> Generator[Any, Any, None]:
        log = LogCapture(self)
        runtime = real_runtime(self)
        runtime.groups.orphan_interval = 0.05
        config = script_config(self, LEAVES_AN_ORPHAN, stop_grace_period=0)
        instance = runtime.create_instance("orphaning", config)
        yield with_timeout(runtime.start_instance(instance), STEP, "authentication")
        event = yield with_timeout(log.when_output(instance, "orphan"), STEP, "the orphan")
        orphan = int(event["line"].split()[1])
        # Adopted: its parent is this process (unless it has already ended and been reaped).
        self.assertTrue(our_child(orphan) or not psutil.pid_exists(orphan))
        # It ends, and is reaped: no zombie is left (a zombie still exists).
        yield wait_until(lambda: not our_child(orphan), "the orphan's end and reaping")
        yield wait_until(lambda: "Reaped 1 orphaned" in log.text(), "the log line")
        self.assertEqual(instance.status, InstanceStatus.READY)


class EnvironmentAndLogTests(TestCase):
    @defer.inlineCallbacks
    def test_the_instance_gets_exactly_its_environment(self) -> Generator[Any, Any, None]:
        log = LogCapture(self)
        runtime = real_runtime(self)
        config = script_config(self, ENVIRONMENT, env={"MODE": "test"}, inherit_env=(*CHILD_INHERIT, "HOME"))
        instance = runtime.create_instance("env", config)
        yield with_timeout(runtime.start_instance(instance), STEP, "authentication")
        yield with_timeout(log.when_output(instance, "done"), STEP, "the output")
        [dumped] = [line for line in log.output_lines(instance) if line.startswith("{")]
        environment = json.loads(dumped)
        address = runtime.factory.get_channel(instance.instance_id).address.environment()
        self.assertEqual(
            set(environment),
            {"PATH", "PYTHONPATH", "LANG", "MODE", "SPEAR_INSTANCE_ID", "SPEAR_SECRET", "SECRET", *address},
        )
        self.assertEqual(environment["PYTHONPATH"], ROOT)
        self.assertEqual(environment["MODE"], "test")
        self.assertEqual(environment["SPEAR_INSTANCE_ID"], str(instance.instance_id))
        self.assertEqual(environment["SPEAR_SOCKET_PATH"], address["SPEAR_SOCKET_PATH"])
        self.assertEqual(environment["SPEAR_COMMUNICATION_TYPE"], "unix")
        # The secret printed by the child is masked in the log...
        self.assertEqual(environment["SPEAR_SECRET"], "***")
        self.assertEqual(environment["SECRET"], "***")
        self.assertIn("the secret is ***", log.output_lines(instance, "stdout"))
        # Nothing anywhere in the log is the secret...
        for token in re.split(r"[\s\"',:;{}()\[\]=]+", log.text()):
            self.assertFalse(runtime.secrets.validate(instance.instance_id, token))
        # ...and it never entered the spearlet's own environment.
        for value in os.environ.values():
            self.assertFalse(runtime.secrets.validate(instance.instance_id, value))
        self.assertNotIn("SPEAR_SECRET", os.environ)

    @defer.inlineCallbacks
    def test_output_is_logged_line_by_line_with_the_instance_id(self) -> Generator[Any, Any, None]:
        log = LogCapture(self)
        runtime = real_runtime(self)
        instance = runtime.create_instance("noisy", script_config(self, NOISY))
        yield with_timeout(runtime.start_instance(instance), STEP, "authentication")
        yield with_timeout(log.when_output(instance, "done"), STEP, "the output")
        self.assertIn("to stdout", log.output_lines(instance, "stdout"))
        self.assertIn("to stderr", log.output_lines(instance, "stderr"))
        binary = [line for line in log.output_lines(instance) if line.startswith("binary")]
        self.assertEqual(binary, ["binary \ufffd\ufffd\x00 end"])
        long_pieces = [line for line in log.output_lines(instance, "stdout") if line.startswith("xxx")]
        self.assertEqual(len(long_pieces), 3)
        self.assertEqual(long_pieces[0], "x" * 8192 + " [line continues]")
        self.assertEqual(long_pieces[2], "x" * (20000 - 2 * 8192))
        [event] = [e for e in log.events if e.get("line") == "to stdout"]
        self.assertEqual(event["instance_id"], str(instance.instance_id))
        self.assertEqual(event["stream"], "stdout")


EMBEDDED = """
import json, os, sys
from twisted.internet import reactor
from spear_twisted.auth import SecretRegistry
from spear_twisted.channels.config import ChannelConfig
from spear_twisted.channels.factory import CommunicationFactory
from spear_twisted.runtime import InstanceConfig, ProcessRuntime

registry = SecretRegistry()
factory = CommunicationFactory(validator=registry, config=ChannelConfig(runtime_dir=sys.argv[1]))
runtime = ProcessRuntime(factory, registry, parent_environment={"PATH": os.environ["PATH"]})
instance = runtime.create_instance("escape", InstanceConfig(sys.executable, ("-u", sys.argv[2])))
report = {}

def ended(failure):
    report["error"] = instance.error
    report["exit_code"] = instance.last_exit.exit_code
    try:
        os.waitpid(report["pid"], os.WNOHANG)
        report["reaped"] = False
    except ChildProcessError:
        report["reaped"] = True
    factory.close_all().addBoth(lambda _: reactor.stop())

def spawned(event):
    if event.pid is not None and "pid" not in report:
        report["pid"] = event.pid

runtime.subscribe(spawned)
reactor.callWhenRunning(lambda: runtime.start_instance(instance).addErrback(ended))
reactor.run(installSignalHandlers=False)
print(json.dumps(report))
"""


class EmbeddingTests(TestCase):
    def test_children_are_reaped_when_the_reactor_runs_without_signal_handlers(self) -> None:
        """
        An application that runs the reactor with ``installSignalHandlers=False``
        gets no SIGCHLD handling from Twisted; with a grandchild holding the
        child's stdout, Twisted alone would never see the child exit.
        """
        from tests.channel_support import short_temp_dir

        child = write_script(self, ESCAPING_GRANDCHILD)
        result = subprocess.run(
            [sys.executable, "-c", EMBEDDED, short_temp_dir(self), child],
            env=CHILD_ENV,
            capture_output=True,
            text=True,
            timeout=STEP,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        report = json.loads(result.stdout.splitlines()[-1])
        self.assertEqual(report["exit_code"], 0)
        self.assertEqual(report["error"], "exited with code 0, before its agent authenticated")
        self.assertTrue(report["reaped"])
        escaped = [p.pid for p in psutil.process_iter(["cmdline"]) if child in (p.info["cmdline"] or [])]
        kill_later(self, escaped)
