"""
``twistd spear`` as operators run it, in real twistd processes: in the
foreground and daemonized, with the built-in default and with a file; bad
options and files; a graceful stop on SIGTERM and SIGINT within its bound;
supervision that outlives daemonization (Twisted ticket 9562); and the
plugin found after a plain install.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, utils
from twisted.trial.unittest import TestCase

from tests.channel_support import short_temp_dir
from tests.runtime_support import ROOT, with_timeout
from tests.twistd_support import STEP, TWISTD, alive, child_environment, kill, make_dir, run_twistd, wait_for

ECHO_TASK = f"""
[[tasks]]
id = "echo"
executable = "{sys.executable}"
args = ["-m", "spear_twisted.agent.echo"]
inherit_env = ["PATH", "PYTHONPATH", "LANG"]
min_instances = {{count}}
max_instances = {{count}}
"""

# An agent that authenticates and then ignores everything: the Terminate
# signal (it never reads) and SIGTERM.
STUBBORN_AGENT = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
from spear_twisted.agent.bootstrap import connect_and_authenticate
from spear_twisted.agent.config import AgentConfig
connection = connect_and_authenticate(AgentConfig.from_environment())
print("stubborn and connected", flush=True)
while True:
    time.sleep(60)
"""


class Spearlet:
    """A configuration file for one twistd spearlet, with its private directories."""

    def __init__(self, test: TestCase, tasks: str, extra: str = "") -> None:
        self.runtime_dir = short_temp_dir(test)
        self.home = make_dir(test)
        self.agents_socket = os.path.join(os.path.dirname(self.runtime_dir), "agents.sock")
        self.pidfile = os.path.join(self.home, "twistd.pid")
        self.logfile = os.path.join(self.home, "twistd.log")
        self.config = os.path.join(self.home, "spear.toml")
        with open(self.config, "w") as file:
            file.write(
                f'runtime_dir = "{self.runtime_dir}"\n{extra}\n'
                f'[connections]\nendpoints = ["unix:{self.agents_socket}"]\n'
                "[admin]\nenabled = false\n"
                "[runtime.backoff]\nmin_delay = 0.1\n"
                f"{tasks}"
            )

    def sockets(self) -> list[str]:
        """The socket files of the instances and of the agents' listener."""
        found = (
            [os.path.join(self.runtime_dir, name) for name in os.listdir(self.runtime_dir)]
            if os.path.isdir(self.runtime_dir)
            else []
        )
        if os.path.exists(self.agents_socket):
            found.append(self.agents_socket)
        return found

    def log(self) -> str:
        try:
            with open(self.logfile) as file:
                return file.read()
        except FileNotFoundError:
            return ""


class ForegroundTests(TestCase):
    @defer.inlineCallbacks
    def _stops_gracefully_on(self, signal_name: str) -> Generator[Any, Any, None]:
        spearlet = Spearlet(self, ECHO_TASK.format(count=2))
        child = run_twistd(self, "-n", "--pidfile", spearlet.pidfile, "spear", "--config", spearlet.config)
        yield with_timeout(child.output.when("is Ready", 2), STEP, "two Ready instances")
        pids = [pid for spawned in child.output.spawned().values() for pid in spawned]
        self.assertEqual(len(pids), 2)
        self.assertTrue(all(alive(pid) for pid in pids))
        self.assertEqual(len(spearlet.sockets()), 3)
        self.assertTrue(os.path.exists(spearlet.pidfile))
        child.signal(signal_name)
        ended = yield with_timeout(child.ended, STEP, "twistd's end")
        # After a clean shutdown twistd ends by the signal it was sent (Twisted's convention).
        self.assertEqual(ended, (None, getattr(signal, f"SIG{signal_name}")), child.output.text())
        self.assertEqual([pid for pid in pids if alive(pid)], [])
        self.assertEqual(spearlet.sockets(), [])
        self.assertFalse(os.path.exists(spearlet.pidfile))
        text = child.output.text()
        # Each agent was asked to terminate through its connection, and did.
        self.assertEqual(text.count("Terminating (a Terminate signal from the spearlet)"), 2)
        self.assertEqual(len(re.findall(r"exited with code 0 after", text)), 2)
        self.assertIn("Server Shut Down.", text)

    def test_sigterm_stops_instances_connections_and_sockets(self) -> Any:
        return self._stops_gracefully_on("TERM")

    def test_sigint_stops_gracefully_too(self) -> Any:
        return self._stops_gracefully_on("INT")

    @defer.inlineCallbacks
    def test_without_a_file_the_built_in_echo_task_runs(self) -> Generator[Any, Any, None]:
        home = make_dir(self)
        runtime = short_temp_dir(self)
        os.makedirs(runtime, mode=0o700)
        child = run_twistd(
            self,
            "-n",
            "--pidfile",
            os.path.join(home, "twistd.pid"),
            "spear",
            "--admin",
            "tcp:0:interface=127.0.0.1",
            cwd=home,
            XDG_RUNTIME_DIR=runtime,
        )
        line = yield with_timeout(child.output.when("running; tasks:"), STEP, "the start")
        self.assertIn("tasks: echo (1-4 instances)", line)
        yield with_timeout(child.output.when("is Ready"), STEP, "the echo instance")
        self.assertTrue(os.listdir(os.path.join(runtime, "spear")))
        child.signal("INT")
        ended = yield with_timeout(child.ended, STEP, "twistd's end")
        self.assertEqual(ended, (None, signal.SIGINT), child.output.text())
        self.assertIn("Server Shut Down.", child.output.text())
        self.assertEqual(os.listdir(os.path.join(runtime, "spear")), [])

    @defer.inlineCallbacks
    def test_the_stop_escalation_bounds_the_shutdown(self) -> Generator[Any, Any, None]:
        grace, kill = 1, 1
        script = os.path.join(make_dir(self), "stubborn.py")
        with open(script, "w") as file:
            file.write(STUBBORN_AGENT)
        spearlet = Spearlet(
            self,
            f'[[tasks]]\nid = "stubborn"\nexecutable = "{sys.executable}"\nargs = ["-u", "{script}"]\n'
            'inherit_env = ["PATH", "PYTHONPATH", "LANG"]\n'
            f"stop_grace_period = {grace}\nkill_timeout = {kill}\n",
        )
        child = run_twistd(self, "-n", "--pidfile", spearlet.pidfile, "spear", "--config", spearlet.config)
        # Ready: authenticated as the spearlet sees it, so that stopping begins with Terminate.
        yield with_timeout(child.output.when("is Ready"), STEP, "the stubborn agent")
        [[pid]] = child.output.spawned().values()
        seen: dict[str, float] = {}
        steps = {
            "terminate": "Terminate signal; 1 s to exit",
            "sigterm": "SIGTERM to its process group; 1 s to exit",
            "sigkill": "SIGKILL to its process group",
        }
        for step, text in steps.items():
            child.output.when(text).addCallback(lambda _, step=step: seen.setdefault(step, time.monotonic()))
        started = time.monotonic()
        child.signal("TERM")
        ended = yield with_timeout(child.ended, grace + kill + STEP, "twistd's end")
        elapsed = time.monotonic() - started
        text = child.output.text()
        self.assertEqual(ended, (None, signal.SIGTERM), text)
        # What the bound is about: each step was taken, in order, after the
        # one before had its time (a line is read after it is written, so
        # these are lower bounds whatever the load).
        self.assertEqual(sorted(seen, key=seen.__getitem__), list(steps), text)
        self.assertGreaterEqual(seen["sigterm"] - started, grace)
        self.assertGreaterEqual(seen["sigkill"] - started, grace + kill)
        self.assertIn("killed by SIGKILL", text)
        self.assertFalse(alive(pid))
        self.assertEqual(spearlet.sockets(), [])
        # The bound: stop_grace_period + kill_timeout, and what a loaded
        # machine adds to starting and ending the rest (STEP, as every step).
        self.assertLess(elapsed, grace + kill + STEP)


class RefusalTests(TestCase):
    @defer.inlineCallbacks
    def test_an_unknown_option_exits_with_a_message(self) -> Generator[Any, Any, None]:
        child = run_twistd(self, "-n", "spear", "--no-such-option")
        code, _ = yield with_timeout(child.ended, STEP, "twistd's end")
        self.assertEqual(code, 1)
        self.assertIn("option --no-such-option not recognized", child.output.text())

    @defer.inlineCallbacks
    def test_a_bad_file_exits_naming_the_file_and_the_key(self) -> Generator[Any, Any, None]:
        spearlet = Spearlet(self, ECHO_TASK.format(count='"two"'))
        child = run_twistd(self, "-n", "--pidfile", spearlet.pidfile, "spear", "--config", spearlet.config)
        code, _ = yield with_timeout(child.ended, STEP, "twistd's end")
        self.assertEqual(code, 1)
        text = child.output.text()
        self.assertIn(f"{spearlet.config}: tasks[0].min_instances: expected integer, found string", text)
        self.assertIn(f"{spearlet.config}: tasks[0].max_instances: expected integer, found string", text)
        self.assertNotIn("Traceback", text)
        self.assertFalse(os.path.exists(spearlet.pidfile))

    @defer.inlineCallbacks
    def test_a_missing_program_exits_naming_the_task(self) -> Generator[Any, Any, None]:
        spearlet = Spearlet(self, '[[tasks]]\nid = "gone"\nexecutable = "/no/such/program"\n')
        child = run_twistd(self, "-n", "--pidfile", spearlet.pidfile, "spear", "--config", spearlet.config)
        code, _ = yield with_timeout(child.ended, STEP, "twistd's end")
        self.assertEqual(code, 1)
        self.assertIn("tasks[0] (gone): executable /no/such/program does not exist", child.output.text())


class DaemonTests(TestCase):
    @defer.inlineCallbacks
    def test_a_daemon_restarts_a_killed_instance_and_stops_on_sigterm(self) -> Generator[Any, Any, None]:
        """Exits are seen under a daemonized twistd too (Twisted ticket 9562)."""
        spearlet = Spearlet(self, ECHO_TASK.format(count=1))
        child = run_twistd(
            self,
            "--pidfile",
            spearlet.pidfile,
            "--logfile",
            spearlet.logfile,
            "spear",
            "--config",
            spearlet.config,
        )
        ended = yield with_timeout(child.ended, STEP, "the daemon's parent's end")
        self.assertEqual(ended, (0, None), child.output.text())
        yield wait_for(lambda: "is Ready" in spearlet.log(), "the instance's readiness")
        with open(spearlet.pidfile) as file:
            daemon = int(file.read())
        self.addCleanup(lambda: alive(daemon) and kill(daemon))
        [first] = re.findall(r"Spawned instance \S+ \(pid (\d+)", spearlet.log())
        kill(int(first))
        yield wait_for(lambda: spearlet.log().count("is Ready") >= 2, "the instance's restart")
        log = spearlet.log()
        self.assertIn(f"(pid {first}) killed by SIGKILL", log)
        self.assertIn("restarting in", log)
        _, second = (int(pid) for pid in re.findall(r"Spawned instance \S+ \(pid (\d+)", log))
        self.assertTrue(alive(second))
        kill(daemon, 15)
        yield wait_for(lambda: not alive(daemon), "the daemon's end")
        self.assertFalse(os.path.exists(spearlet.pidfile))
        self.assertFalse(alive(second))
        self.assertEqual(spearlet.sockets(), [])
        self.assertIn("Server Shut Down.", spearlet.log())


class InstallTests(TestCase):
    @defer.inlineCallbacks
    def test_twistd_lists_spear_after_a_plain_install(self) -> Generator[Any, Any, None]:
        """A regular (non-editable) install puts the plugin where Twisted finds it."""
        source = os.path.join(make_dir(self), "source")
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(
                ".git",
                ".venv",
                "_trial_temp*",
                "build",
                "dist",
                "*.egg-info",
                "__pycache__",
                "docs",
                "dropin.cache",
            ),
        )
        target = os.path.join(make_dir(self), "site")
        _, errors, code = yield with_timeout(
            utils.getProcessOutputAndValue(
                sys.executable,
                [
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--no-deps",
                    "--no-build-isolation",
                    "--target",
                    target,
                    source,
                ],
                env=dict(os.environ),
            ),
            STEP * 3,
            "pip install",
        )
        self.assertEqual(code, 0, errors.decode())
        self.assertTrue(os.path.exists(os.path.join(target, "twisted", "plugins", "spear_plugin.py")))
        self.assertFalse(os.path.exists(os.path.join(target, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(target, "twisted", "plugins", "__init__.py")))
        # Nothing of the source tree on the path: only the installed copy.
        elsewhere = make_dir(self)
        help_text, _, code = yield utils.getProcessOutputAndValue(
            TWISTD, ["--help"], env=child_environment(PYTHONPATH=target), path=elsewhere
        )
        self.assertEqual(code, 0)
        self.assertRegex(help_text.decode(), r"\n\s+spear\s+Run a Spear spearlet")


class StartFailureTests(TestCase):
    @defer.inlineCallbacks
    def test_a_listener_that_cannot_start_ends_twistd_with_a_message(self) -> Generator[Any, Any, None]:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spearlet = Spearlet(self, ECHO_TASK.format(count=1))
        child = run_twistd(
            self,
            "-n",
            "--pidfile",
            spearlet.pidfile,
            "spear",
            "--config",
            spearlet.config,
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
        )
        code, _ = yield with_timeout(child.ended, STEP, "twistd's end")
        self.assertEqual(code, 1)
        self.assertIn(
            f"The spearlet could not start: Couldn't listen on 127.0.0.1:{port}: "
            "[Errno 98] Address already in use",
            child.output.text(),
        )
        self.assertFalse(os.path.exists(spearlet.pidfile))
        self.assertEqual(spearlet.sockets(), [])
