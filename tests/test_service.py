"""
SpearService: the parts assembled from one configuration, their order, the
status snapshot and the metrics; and the embedding example of the docs, run
by a real twistd.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Generator
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import TestCase

from spear_twisted import __version__
from spear_twisted.config import SpearConfig
from spear_twisted.connections import ConnectionManager
from spear_twisted.execution import TaskExecutionManager
from spear_twisted.monitoring import MonitoringService
from spear_twisted.runtime import ProcessRuntime
from spear_twisted.service import SpearService
from spear_twisted.wire import ExecuteRequest, RuntimeInstanceId
from tests.runtime_support import ROOT, with_timeout
from tests.service_support import ECHO_ARGS, running_service, service_config, task_config
from tests.twistd_support import STEP, alive, make_dir, run_twistd

STATUS_KEYS = {"version", "uptime", "tasks", "connections"}
TASK_KEYS = {"id", "runtime_type", "min_instances", "max_instances", "outstanding", "instances"}
INSTANCE_KEYS = {
    "instance_id",
    "status",
    "reason",
    "pid",
    "restarts",
    "last_exit",
    "uptime",
    "outstanding",
    "cpu_percent",
    "rss_bytes",
    "open_fds",
    "threads",
}
CONNECTION_KEYS = {
    "connection_id",
    "instance_id",
    "transport",
    "remote_addr",
    "authenticated",
    "status",
    "session_state",
    "connected_at",
    "last_activity",
    "peer",
}


class AssemblyTests(TestCase):
    def test_the_parts_are_made_from_the_one_configuration(self) -> None:
        config = service_config(self, task_config("echo", ECHO_ARGS))
        service = SpearService(config)
        self.assertIs(service.config, config)
        self.assertIsInstance(service.monitoring, MonitoringService)
        self.assertIsInstance(service.connections, ConnectionManager)
        self.assertIsInstance(service.runtime, ProcessRuntime)
        self.assertIsInstance(service.tasks, TaskExecutionManager)
        self.assertIs(service.connections.config, config.connections)
        self.assertIs(service.connections.monitoring, service.monitoring)
        self.assertIs(service.runtime.config, config.runtime)
        self.assertIs(service.runtime.factory, service.connections.factory)
        self.assertEqual(service.connections.factory.config.runtime_dir, config.runtime_dir)
        self.assertEqual(list(service.tasks.pools), ["echo"])
        self.assertEqual(
            list(service), [service.monitoring, service.connections, service.runtime, service.tasks]
        )

    def test_it_is_a_service_any_application_can_hold(self) -> None:
        service = SpearService(SpearConfig(tasks=()))
        self.assertTrue(IService.providedBy(service))
        parent = MultiService()
        service.setServiceParent(parent)
        self.assertIs(parent.getServiceNamed("spear"), service)

    @defer.inlineCallbacks
    def test_stopping_stops_the_parts_last_first_one_after_another(self) -> Generator[Any, Any, None]:
        service = running_service(self, task_config("echo", ECHO_ARGS))
        yield with_timeout(
            service.tasks.execute("echo", ExecuteRequest("echo", "up")), STEP, "the instance's first answer"
        )
        events: list[str] = []
        for child in service:
            original = child.stopService

            def recorded(child: Any = child, original: Any = original) -> Any:
                events.append(f"stop {child.name}")
                result = defer.maybeDeferred(original)
                return result.addCallback(lambda _: events.append(f"stopped {child.name}"))

            child.stopService = recorded  # type: ignore[method-assign]
        yield with_timeout(service.stopService(), STEP, "the service's stop")
        self.assertEqual(
            events,
            [
                "stop tasks",
                "stopped tasks",
                "stop process-runtime",
                "stopped process-runtime",
                "stop connections",
                "stopped connections",
                "stop monitoring",
                "stopped monitoring",
            ],
        )

    def test_a_listener_that_cannot_start_fails_the_start_up(self) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = service_config(self)
        config = SpearConfig(
            runtime_dir=config.runtime_dir,
            admin=config.admin,
            connections=type(config.connections)(endpoints=(f"tcp:{port}:interface=127.0.0.1",)),
        )
        service = SpearService(config)
        self.assertRaises(CannotListenError, service.startService)
        self.addCleanup(service.stopService)


class StatusTests(TestCase):
    @defer.inlineCallbacks
    def test_the_status_is_json_with_the_documented_keys(self) -> Generator[Any, Any, None]:
        service = running_service(self, task_config("echo", ECHO_ARGS, min_instances=2, max_instances=2))
        yield with_timeout(
            defer.gatherResults(
                [service.tasks.execute("echo", ExecuteRequest("echo", "up")) for _ in range(4)]
            ),
            STEP,
            "answers",
        )
        status = json.loads(json.dumps(service.status()))
        self.assertEqual(set(status), STATUS_KEYS)
        self.assertEqual(status["version"], __version__)
        self.assertGreater(status["uptime"], 0)
        [task] = status["tasks"]
        self.assertLessEqual(TASK_KEYS, set(task))
        self.assertEqual((task["id"], task["runtime_type"], task["min_instances"]), ("echo", "process", 2))
        self.assertEqual(len(task["instances"]), 2)
        for instance in task["instances"]:
            self.assertLessEqual(INSTANCE_KEYS, set(instance))
            self.assertEqual(instance["status"], "Ready")
            self.assertTrue(alive(instance["pid"]))
            self.assertGreater(instance["rss_bytes"], 0)
            self.assertGreater(instance["threads"], 0)
        self.assertEqual(len(status["connections"]), 2)
        for connection in status["connections"]:
            self.assertEqual(set(connection), CONNECTION_KEYS)
            self.assertTrue(connection["authenticated"])
            self.assertEqual(connection["status"], "Active")
        self.assertEqual(
            {connection["instance_id"] for connection in status["connections"]},
            {instance["instance_id"] for instance in task["instances"]},
        )
        # An instance's Unix socket connection says where, and which process.
        pids = {instance["instance_id"]: instance["pid"] for instance in task["instances"]}
        for connection in status["connections"]:
            instance_id = RuntimeInstanceId.parse(connection["instance_id"])
            channel = service.runtime.factory.get_channel(instance_id)
            assert channel is not None and channel.address is not None
            pid = pids[connection["instance_id"]]
            self.assertEqual(connection["peer"], {"pid": pid, "uid": os.getuid(), "gid": os.getgid()})
            self.assertEqual(
                connection["remote_addr"], f"unix:{channel.address.path} pid={pid} uid={os.getuid()}"
            )

    @defer.inlineCallbacks
    def test_the_metrics_cover_connections_messages_and_tasks(self) -> Generator[Any, Any, None]:
        service = running_service(self, task_config("echo", ECHO_ARGS))
        yield with_timeout(service.tasks.execute("echo", ExecuteRequest("echo", "up")), STEP, "an answer")
        text = service.metrics_text().decode()
        for line in (
            "spear_connections_active 1.0",
            'spear_authentications_total{outcome="success"} 1.0',
            'spear_messages_total{direction="outgoing",message_type="ExecuteRequest"} 1.0',
            'spear_executions_total{outcome="completed",task="echo"} 1.0',
            'spear_task_instances{status="Ready",task="echo"} 1.0',
        ):
            self.assertIn(line, text)


class EmbeddingTests(TestCase):
    @defer.inlineCallbacks
    def test_the_documented_tac_runs_a_spearlet_inside_an_application(self) -> Generator[Any, Any, None]:
        home = make_dir(self)
        config = os.path.join(home, "spear.toml")
        runtime_dir = service_config(self).runtime_dir
        with open(config, "w") as file:
            file.write(
                f'runtime_dir = "{runtime_dir}"\n'
                f'[connections]\nendpoints = ["unix:{runtime_dir}.sock"]\n'
                "[admin]\nenabled = false\n"
                f'[[tasks]]\nid = "echo"\nexecutable = "{sys.executable}"\n'
                'args = ["-m", "spear_twisted.agent.echo"]\ninherit_env = ["PATH", "PYTHONPATH", "LANG"]\n'
            )
        tac = os.path.join(ROOT, "docs", "examples", "embedded.tac")
        child = run_twistd(
            self,
            "-n",
            "--pidfile",
            os.path.join(home, "twistd.pid"),
            "-y",
            tac,
            cwd=home,
            SPEAR_CONFIG=config,
        )
        yield with_timeout(
            child.output.when("The spearlet answered: hello from the application"), STEP, "the answer"
        )
        pids = [pid for spawned in child.output.spawned().values() for pid in spawned]
        child.signal("TERM")
        ended = yield with_timeout(child.ended, STEP, "twistd's end")
        self.assertEqual(ended, (None, signal.SIGTERM), child.output.text())
        self.assertEqual([pid for pid in pids if alive(pid)], [])
        self.assertEqual(os.listdir(runtime_dir), [])
