"""
End to end: the real ``twistd -n spear`` with a configuration file, used
through the ``spear`` command and the admin endpoint's HTTP, then stopped
with SIGTERM, leaving no process, no socket file and no pid file behind.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Generator
from typing import Any

import psutil
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.admin_support import Client, run_cli
from tests.channel_support import short_temp_dir
from tests.runtime_support import pids_in_group, with_timeout
from tests.twistd_support import STEP, alive, make_dir, run_twistd

_LISTENING = re.compile(r"admin endpoint listening on (http://127\.0\.0\.1:\d+)")


def config_text(runtime_dir: str, agents_socket: str) -> str:
    """Two echo instances on Unix sockets in ``runtime_dir``; the admin endpoint on a free loopback port."""
    return f"""
runtime_dir = "{runtime_dir}"

[connections]
endpoints = ["unix:{agents_socket}"]

[admin]
endpoint = "tcp:0:interface=127.0.0.1"

[[tasks]]
id = "echo"
executable = "{sys.executable}"
args = ["-m", "spear_twisted.agent.echo"]
inherit_env = ["PATH", "PYTHONPATH", "LANG"]
min_instances = 2
max_instances = 2
"""


def family(pid: int) -> set[int]:
    """``pid`` and every live process descending from it."""
    try:
        return {pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


class EndToEndTests(TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def test_twistd_spear_serves_the_cli_and_http_and_stops_clean_on_sigterm(
        self,
    ) -> Generator[Any, Any, None]:
        home = make_dir(self)
        runtime_dir = short_temp_dir(self)
        agents_socket = os.path.join(os.path.dirname(runtime_dir), "agents.sock")
        config = os.path.join(home, "spear.toml")
        pidfile = os.path.join(home, "twistd.pid")
        with open(config, "w") as file:
            file.write(config_text(runtime_dir, agents_socket))
        child = run_twistd(self, "-n", "--pidfile", pidfile, "spear", "--config", config, cwd=home)

        # The bound port, from the line logged once the admin endpoint listens.
        line = yield with_timeout(
            child.output.when("admin endpoint listening on"), STEP, "the admin endpoint"
        )
        match = _LISTENING.search(line)
        assert match is not None, line
        url = match.group(1)
        yield with_timeout(child.output.when("is Ready", 2), STEP, "two Ready echo instances")
        env = {"SPEAR_ADMIN_URL": url}
        client = Client(self, url)

        # Health, then the same request through the command line and through HTTP.
        health = yield client.get("/healthz")
        self.assertEqual((health.status, health.json()["status"]), (200, "serving"))
        out, err, status = yield run_cli("invoke", "echo", "hello", "world", env=env)
        self.assertEqual((out, err, status), (b"hello world\n", b"", 0))
        answer = yield client.execute("echo", {"command": "hello", "args": ["http"]})
        self.assertEqual(answer.status, 200)
        self.assertEqual((answer.json()["status"], answer.json()["output"]), ("Completed", "hello http"))
        out, err, status = yield run_cli("invoke", "nope", "x", env=env)
        self.assertEqual(status, 67, err)

        # Metrics and status.
        metrics = yield client.get("/metrics")
        self.assertEqual(metrics.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8")
        self.assertIn('spear_executions_total{outcome="completed",task="echo"} 2.0', metrics.body.decode())
        self.assertIn("spear_connections_active 2.0", metrics.body.decode())
        answer = yield client.get("/status")
        [task] = answer.json()["tasks"]
        instances = task["instances"]
        self.assertEqual([instance["status"] for instance in instances], ["Ready", "Ready"])
        self.assertEqual(len(answer.json()["connections"]), 2)
        out, err, status = yield run_cli("status", env=env)
        self.assertEqual((err, status), (b"", 0))
        for instance in instances:
            self.assertIn(f"{instance['instance_id']}  Ready   {instance['pid']}", out.decode())

        # Everything twistd runs: its descendants and the instances' process groups.
        assert child.transport is not None
        twistd_pid = child.transport.pid
        assert twistd_pid is not None
        instance_pids = {instance["pid"] for instance in instances}
        processes = family(twistd_pid)
        self.assertLessEqual(instance_pids, processes)
        groups = {os.getpgid(pid) for pid in instance_pids}
        self.assertNotIn(os.getpgid(twistd_pid), groups, "each instance runs in its own process group")
        self.assertTrue(os.path.exists(pidfile))
        self.assertTrue(os.listdir(runtime_dir))
        self.assertTrue(os.path.exists(agents_socket))

        child.signal("TERM")
        ended = yield with_timeout(child.ended, STEP, "twistd's end after SIGTERM")
        self.assertEqual(ended, (None, signal.SIGTERM), child.output.text())
        self.assertEqual(sorted(pid for pid in processes if alive(pid)), [])
        self.assertEqual({group: pids_in_group(group) for group in groups}, {group: [] for group in groups})
        self.assertEqual(os.listdir(runtime_dir), [])
        self.assertFalse(os.path.exists(agents_socket))
        self.assertFalse(os.path.exists(pidfile))
        # And the admin endpoint is gone with it.
        out, err, status = yield run_cli("health", env=env)
        self.assertEqual(status, 69, err)
