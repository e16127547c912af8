"""The ``spear`` command, run as a child process, against a real ``SpearService``."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.admin_support import admin_url, agent_task, run_cli, running_service, silent_task, spear_config


class InvokeTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        service = running_service(
            self, spear_config(self, (agent_task(self, "tool", min_instances=1, max_concurrent_requests=4),))
        )
        self.service = service
        self.env = {"SPEAR_ADMIN_URL": admin_url(service)}

    def spear(self, *argv: str, stdin: bytes = b"") -> Any:
        return run_cli(*argv, env=self.env, stdin=stdin)

    @defer.inlineCallbacks
    def test_invoke_prints_the_output_and_exits_0(self) -> Any:
        out, err, status = yield self.spear("invoke", "tool", "hello", "world")
        self.assertEqual((out, err, status), (b"hello world\n", b"", 0))

    @defer.inlineCallbacks
    def test_a_failed_execution_exits_with_its_exit_code_its_error_on_stderr(self) -> Any:
        out, err, status = yield self.spear("invoke", "tool", "fail", "3")
        self.assertEqual((out, status), (b"partial output\n", 3))
        self.assertIn(b"failed on purpose", err)

    @defer.inlineCallbacks
    def test_input_comes_from_a_file_or_standard_input(self) -> Any:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write("from a fïle\n".encode())
        out, _, status = yield self.spear("invoke", "tool", "cat", "--input", path)
        self.assertEqual((out, status), ("from a fïle\n".encode(), 0))
        out, _, status = yield self.spear("invoke", "tool", "cat", "--input", "-", stdin=b"from stdin")
        self.assertEqual((out, status), (b"from stdin\n", 0))

    @defer.inlineCallbacks
    def test_an_unknown_task_exits_67(self) -> Any:
        out, err, status = yield self.spear("invoke", "nope", "x")
        self.assertEqual((out, status), (b"", 67))
        self.assertIn(b"no task 'nope' is configured", err)
        self.assertIn(b"(UNKNOWN_TASK, 1302)", err)

    @defer.inlineCallbacks
    def test_an_execution_timeout_exits_75(self) -> Any:
        _, err, status = yield self.spear("invoke", "tool", "sleep", "30", "--timeout", "1")
        self.assertEqual(status, 75)
        self.assertIn(b"EXECUTION_TIMEOUT", err)

    @defer.inlineCallbacks
    def test_a_lost_instance_exits_76(self) -> Any:
        _, err, status = yield self.spear("invoke", "tool", "die")
        self.assertEqual(status, 76)
        self.assertIn(b"INSTANCE_LOST", err)

    @defer.inlineCallbacks
    def test_json_prints_the_whole_answer(self) -> Any:
        import json

        out, _, status = yield self.spear("invoke", "--json", "tool", "hi")
        self.assertEqual(
            (json.loads(out)["output"], json.loads(out)["status"], status), ("hi", "Completed", 0)
        )
        [member] = self.service.tasks.pools["tool"].members
        self.assertEqual(json.loads(out)["instance_id"], str(member.instance.instance_id))
        out, _, status = yield self.spear("invoke", "--json", "nope", "hi")
        self.assertEqual((json.loads(out)["error"]["name"], status), ("UNKNOWN_TASK", 67))

    @defer.inlineCallbacks
    def test_status_prints_the_tasks_instances_and_connections(self) -> Any:
        yield self.spear("invoke", "tool", "warm")
        out, err, status = yield self.spear("status")
        self.assertEqual((err, status), (b"", 0))
        text = out.decode()
        lines = text.splitlines()
        self.assertTrue(lines[0].startswith("spear_twisted "), text)
        self.assertIn("TASK  RUNTIME  MIN  MAX  INSTANCES  OUTSTANDING", text)
        self.assertTrue(any(line.split()[:5] == ["tool", "process", "1", "1", "1"] for line in lines), text)
        [instance] = [line for line in lines if line.startswith("tool ") and " Ready " in line]
        self.assertIn("MiB", instance)
        self.assertIn("CONNECTION ID", text)
        # The instance's connection: its Unix socket and the process at the other end.
        [member] = self.service.tasks.pools["tool"].members
        [connection] = [line for line in lines if line.startswith("conn-")]
        self.assertIn(" unix:", connection)
        self.assertIn(f" pid={member.instance.pid} uid={os.getuid()} ", connection)

    @defer.inlineCallbacks
    def test_health_exits_0_when_serving(self) -> Any:
        yield self.spear("invoke", "tool", "warm")
        out, _, status = yield self.spear("health")
        self.assertEqual((out, status), (b"serving: 1 of 1 tasks can serve\n", 0))


class UnavailableTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_no_instance_available_exits_69_and_health_too(self) -> Any:
        service = running_service(self, spear_config(self, (silent_task("silent", request_timeout=0.5),)))
        env = {"SPEAR_ADMIN_URL": admin_url(service)}
        _, err, status = yield run_cli("invoke", "silent", "x", env=env)
        self.assertEqual(status, 69)
        self.assertIn(b"NO_INSTANCE_AVAILABLE", err)
        out, _, status = yield run_cli("health", env=env)
        self.assertEqual(status, 69)
        self.assertTrue(out.startswith(b"unavailable: no task can serve"), out)


class TokenTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_without_the_token_exits_77_and_with_it_works(self) -> Any:
        service = running_service(self, spear_config(self, (agent_task(self, "tool"),), token="t0ken"))
        url = admin_url(service)
        _, err, status = yield run_cli("status", "--admin", url)
        self.assertEqual(status, 77)
        self.assertIn(b"NOT_AUTHENTICATED", err)
        _, err, status = yield run_cli("status", "--admin", url, "--token", "wrong")
        self.assertEqual(status, 77)
        self.assertIn(b"AUTHENTICATION_FAILED", err)
        out, _, status = yield run_cli(
            "invoke", "tool", "hi", env={"SPEAR_ADMIN_URL": url, "SPEAR_ADMIN_TOKEN": "t0ken"}
        )
        self.assertEqual((out, status), (b"hi\n", 0))
