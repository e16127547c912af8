"""
The launchers, with real children: limits, own session and process group,
parent-death signal, default signal dispositions, the pid kept.

Every test runs once per launcher: util-linux (setpriv, sh, prlimit, setsid)
and Python (``launcher.py``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Generator
from typing import Any

import psutil
from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spear_twisted.runtime.launch import (
    Launcher,
    PythonLauncher,
    UtilLinuxLauncher,
    effective_limits,
    select_launcher,
)
from tests.runtime_support import write_script

PROBE = """
import ctypes, json, os, resource, signal
libc = ctypes.CDLL(None, use_errno=True)
pdeathsig = ctypes.c_int(0)
libc.prctl(2, ctypes.byref(pdeathsig), 0, 0, 0)  # PR_GET_PDEATHSIG
names = ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_NPROC")
print(json.dumps({
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "pgid": os.getpgid(0),
    "sid": os.getsid(0),
    "pdeathsig": pdeathsig.value,
    "limits": {name: resource.getrlimit(getattr(resource, name)) for name in names},
}))
"""


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[Any] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)


def run(
    launcher: Launcher,
    program: str,
    args: list[str],
    rlimits: dict[str, int],
    parent: int | None = None,
    env: dict[str, str] | None = None,
) -> Deferred[tuple[int, Any, _Collect]]:
    """Spawn ``program`` through ``launcher``; fires with (spawned pid, exit reason, output)."""
    env = {"PATH": os.environ["PATH"]} if env is None else env
    command = launcher.command(
        program, args, rlimits, os.getpid() if parent is None else parent, environment=env.keys()
    )
    collect = _Collect()
    transport = reactor.spawnProcess(collect, command.executable, list(command.argv), env=env)
    pid = transport.pid
    return collect.ended.addCallback(lambda reason: (pid, reason, collect))


def launchers() -> list[Launcher]:
    found: list[Launcher] = [PythonLauncher()]
    util_linux = UtilLinuxLauncher.find()
    if util_linux is not None:
        found.insert(0, util_linux)
    return found


class LauncherTests(TestCase):
    def test_util_linux_tools_are_available_here(self) -> None:
        """The default launcher is tested, not skipped: its tools must be installed."""
        self.assertIsInstance(select_launcher("auto"), UtilLinuxLauncher)

    @defer.inlineCallbacks
    def test_the_program_runs_in_its_own_session_with_the_spawned_pid(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        probe = write_script(self, PROBE)
        for launcher in launchers():
            pid, reason, output = yield run(launcher, sys.executable, [probe], {})
            self.assertEqual(reason.exitCode, 0, output.err)
            report = json.loads(output.out)
            self.assertEqual(report["pid"], pid, launcher.name)
            self.assertEqual(report["pgid"], pid, launcher.name)
            self.assertEqual(report["sid"], pid, launcher.name)
            self.assertEqual(report["ppid"], os.getpid(), launcher.name)

    @defer.inlineCallbacks
    def test_the_parent_death_signal_is_armed(self) -> Generator[Deferred[Any], Any, None]:
        probe = write_script(self, PROBE)
        for launcher in launchers():
            _pid, _reason, output = yield run(launcher, sys.executable, [probe], {})
            self.assertEqual(json.loads(output.out)["pdeathsig"], signal.SIGKILL, launcher.name)

    @defer.inlineCallbacks
    def test_the_limits_are_set_before_the_program_starts(self) -> Generator[Deferred[Any], Any, None]:
        probe = write_script(self, PROBE)
        rlimits = {"RLIMIT_AS": 2**31, "RLIMIT_CPU": 50, "RLIMIT_NOFILE": 100, "RLIMIT_NPROC": 4000}
        for launcher in launchers():
            _pid, _reason, output = yield run(launcher, sys.executable, [probe], rlimits)
            limits = json.loads(output.out)["limits"]
            for name, value in rlimits.items():
                self.assertEqual(limits[name], [value, value], f"{launcher.name} {name}")

    @defer.inlineCallbacks
    def test_no_signal_is_left_ignored(self) -> Generator[Deferred[Any], Any, None]:
        for launcher in launchers():
            _pid, _reason, output = yield run(
                launcher, "/bin/cat", ["/proc/self/status"], {"RLIMIT_NOFILE": 64}
            )
            [ignored] = [line for line in output.out.decode().splitlines() if line.startswith("SigIgn:")]
            # Standard signals only: glibc's posix_spawn (which Twisted uses)
            # leaves its two internal real-time signals (32, 33) ignored; a
            # program linked with glibc takes them back when it starts.
            standard = (1 << 31) - 1  # signals 1 to 31
            self.assertEqual(int(ignored.split()[1], 16) & standard, 0, launcher.name)

    @defer.inlineCallbacks
    def test_the_environment_is_passed_as_it_is(self) -> Generator[Deferred[Any], Any, None]:
        for launcher in launchers():
            for env in ({"PATH": "/usr/bin:/bin", "A": "1"}, {"PATH": "/usr/bin:/bin", "PWD": os.getcwd()}):
                _pid, _reason, output = yield run(
                    launcher, "/usr/bin/env", [], {"RLIMIT_NOFILE": 64}, env=env
                )
                seen = dict(line.split("=", 1) for line in output.out.decode().splitlines())
                self.assertEqual(seen, env, launcher.name)

    @defer.inlineCallbacks
    def test_a_spearlet_gone_before_the_exec_starts_nothing(self) -> Generator[Deferred[Any], Any, None]:
        for launcher in launchers():
            # A parent pid that is not ours: as if the spearlet had died and
            # the child had been adopted by another process.
            _pid, reason, output = yield run(launcher, "/bin/true", [], {}, parent=1)
            self.assertEqual(reason.exitCode, 127, launcher.name)
            self.assertIn(b"the spearlet exited before the instance started", output.err, launcher.name)

    @defer.inlineCallbacks
    def test_the_instance_dies_with_its_spearlet(self) -> Generator[Deferred[Any], Any, None]:
        """A spearlet killed with SIGKILL takes its instance with it (the parent-death signal)."""
        for launcher in launchers():
            collect = _Collect()
            first_line: Deferred[None] = Deferred()

            def out_received(
                data: bytes, collect: _Collect = collect, first_line: Deferred[None] = first_line
            ) -> None:
                collect.out += data
                if b"\n" in collect.out and not first_line.called:
                    first_line.callback(None)

            collect.outReceived = out_received  # type: ignore[method-assign]
            transport = reactor.spawnProcess(
                collect,
                sys.executable,
                [sys.executable, "-c", _SPEARLET, launcher_spec(launcher), "/bin/sleep", "600"],
                env={"PATH": os.environ["PATH"], "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))},
            )
            yield first_line
            instance_pid = int(collect.out.split()[0])
            self.assertTrue(psutil.pid_exists(instance_pid))
            os.kill(transport.pid, signal.SIGKILL)
            yield collect.ended
            gone = yield wait_gone(instance_pid, 60)
            self.assertTrue(gone, f"{launcher.name}: instance {instance_pid} outlived its spearlet")


# A stand-in spearlet: launches its instance with its own pid as the parent,
# prints the instance's pid, then sleeps until killed.
_SPEARLET = """
import json, os, subprocess, sys, time
from spear_twisted.runtime.launch import PythonLauncher, UtilLinuxLauncher
spec = json.loads(sys.argv[1])
launcher = PythonLauncher(spec["python"]) if spec["name"] == "python" else UtilLinuxLauncher(**spec["tools"])
command = launcher.command(sys.argv[2], sys.argv[3:], {}, os.getpid())
child = subprocess.Popen(list(command.argv), executable=command.executable, env={})
print(child.pid, flush=True)
time.sleep(600)
"""


def launcher_spec(launcher: Launcher) -> str:
    if isinstance(launcher, UtilLinuxLauncher):
        tools = {
            "setpriv": launcher.setpriv,
            "sh": launcher.sh,
            "prlimit": launcher.prlimit,
            "setsid": launcher.setsid,
        }
        return json.dumps({"name": launcher.name, "tools": tools})
    assert isinstance(launcher, PythonLauncher)
    return json.dumps({"name": launcher.name, "python": launcher.python})


@defer.inlineCallbacks
def wait_gone(pid: int, seconds: float) -> Generator[Deferred[Any], Any, bool]:
    """Poll until ``pid`` is gone (or a zombie, reaped here if it is our child); False after ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        try:
            status = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            return True
        if status == psutil.STATUS_ZOMBIE:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            return True
        yield task.deferLater(reactor, 0.05, lambda: None)
    return False


class SelectionTests(SynchronousTestCase):
    def test_auto_falls_back_to_python_without_the_tools(self) -> None:
        self.assertIsInstance(select_launcher("auto", path="/nonexistent", system_path=""), PythonLauncher)

    def test_util_linux_without_the_tools_is_an_error(self) -> None:
        with self.assertRaises(ValueError) as caught:
            select_launcher("util-linux", path="/nonexistent", system_path="")
        self.assertIn("setpriv", str(caught.exception))

    def test_python_is_always_available(self) -> None:
        self.assertEqual(select_launcher("python"), PythonLauncher(sys.executable))

    def test_an_unknown_launcher_is_refused(self) -> None:
        self.assertRaises(ValueError, select_launcher, "docker")

    def test_the_util_linux_command_chain(self) -> None:
        launcher = UtilLinuxLauncher("/u/setpriv", "/u/sh", "/u/prlimit", "/u/setsid")
        command = launcher.command("/bin/prog", ["a b"], {"RLIMIT_NOFILE": 10, "RLIMIT_AS": 99}, 1234)
        self.assertEqual(command.executable, "/u/setsid")
        self.assertEqual(
            command.argv[:7], ("/u/setsid", "--", "/u/setpriv", "--pdeathsig", "KILL", "--", "/u/sh")
        )
        self.assertEqual(
            command.argv[9:],
            ("1234", "drop-pwd", "/u/prlimit", "--as=99", "--nofile=10", "--", "/bin/prog", "a b"),
        )
        self.assertNotIn("/u/prlimit", launcher.command("/bin/prog", [], {}, 1).argv)

    def test_limits_above_the_hard_limit_are_lowered_to_it(self) -> None:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        applied, notes = effective_limits({"RLIMIT_NOFILE": hard + 1, "RLIMIT_CPU": 5})
        self.assertEqual(applied["RLIMIT_NOFILE"], hard)
        self.assertEqual(applied["RLIMIT_CPU"], 5)
        self.assertEqual(
            notes, [f"RLIMIT_NOFILE {hard + 1} is above the spearlet's hard limit; {hard} is used"]
        )
