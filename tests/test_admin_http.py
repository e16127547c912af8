"""
The admin endpoint over real HTTP, in front of a real ``SpearService`` whose
instances are real agent processes.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from spear_twisted.admin import AdminService, address_url
from spear_twisted.admin.site import MAX_BODY_BYTES
from tests.admin_support import (
    Client,
    admin_url,
    agent_task,
    eventually,
    raw_connection,
    raw_exchange,
    running_service,
    silent_task,
    spear_config,
    stubborn_task,
)
from tests.channel_support import short_temp_dir
from tests.runtime_support import LogCapture, with_timeout


def error_of(answer: Any) -> dict[str, Any]:
    document = answer.json()
    assert set(document) == {"error"}, document
    error: dict[str, Any] = document["error"]
    return error


class ExecuteTests(TestCase):
    """``POST /tasks/{id}/execute``: the response, and each error class of ``execute``."""

    timeout = 120

    def setUp(self) -> None:
        self.service = running_service(
            self,
            spear_config(
                self,
                (
                    agent_task(
                        self,
                        "tool",
                        min_instances=1,
                        max_concurrent_requests=4,
                        stop_grace_period=1.0,
                        kill_timeout=1.0,
                    ),
                    silent_task("silent", request_timeout=0.5),
                ),
            ),
        )
        self.client = Client(self, admin_url(self.service))

    @defer.inlineCallbacks
    def test_the_execute_response_comes_back_as_json(self) -> Any:
        answer = yield self.client.execute("tool", {"command": "hello", "args": ["world"]})
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        response = answer.json()
        self.assertEqual(
            {key: response[key] for key in ("task_id", "status", "output", "error", "exit_code")},
            {
                "task_id": "tool",
                "status": "Completed",
                "output": "hello world",
                "error": None,
                "exit_code": 0,
            },
        )
        self.assertIsInstance(response["duration_ms"], int)
        # And which instance ran it.
        [member] = self.service.tasks.pools["tool"].members
        self.assertEqual(response["instance_id"], str(member.instance.instance_id))

    @defer.inlineCallbacks
    def test_input_arrives_as_text_or_as_base64(self) -> Any:
        text = yield self.client.execute("tool", {"command": "cat", "input": "héllo\n"})
        self.assertEqual(text.json()["output"], "héllo\n")
        data = base64.b64encode("wörld".encode()).decode()
        encoded = yield self.client.execute("tool", {"command": "cat", "input_base64": data})
        self.assertEqual(encoded.json()["output"], "wörld")

    @defer.inlineCallbacks
    def test_a_failed_execution_is_its_response_with_its_exit_code(self) -> Any:
        answer = yield self.client.execute("tool", {"command": "fail", "args": ["3"]})
        self.assertEqual(answer.status, 200)
        response = answer.json()
        self.assertEqual(
            (response["status"], response["exit_code"], response["output"]), ("Failed", 3, "partial output")
        )
        self.assertIn("failed on purpose", response["error"])

    @defer.inlineCallbacks
    def test_an_unknown_task_is_404(self) -> Any:
        answer = yield self.client.execute("nope", {"command": "x"})
        self.assertEqual(answer.status, 404)
        error = error_of(answer)
        self.assertEqual((error["code"], error["name"]), (1302, "UNKNOWN_TASK"))
        self.assertIn("'nope'", error["message"])

    @defer.inlineCallbacks
    def test_an_execution_timeout_is_504_with_the_timeout_response(self) -> Any:
        answer = yield self.client.execute("tool", {"command": "sleep", "args": ["30"], "timeout": 1})
        self.assertEqual(answer.status, 504)
        error = error_of(answer)
        self.assertEqual((error["code"], error["name"]), (1304, "EXECUTION_TIMEOUT"))
        self.assertEqual(error["response"]["status"], "Timeout")
        self.assertEqual(error["response"]["task_id"], "tool")

    @defer.inlineCallbacks
    def test_an_instance_lost_mid_request_is_502(self) -> Any:
        answer = yield self.client.execute("tool", {"command": "die"})
        self.assertEqual(answer.status, 502)
        error = error_of(answer)
        self.assertEqual((error["code"], error["name"]), (1305, "INSTANCE_LOST"))
        self.assertIn("instance_id", error)

    @defer.inlineCallbacks
    def test_no_instance_available_is_503(self) -> Any:
        answer = yield self.client.execute("silent", {"command": "x"})
        self.assertEqual(answer.status, 503)
        self.assertEqual(error_of(answer)["name"], "NO_INSTANCE_AVAILABLE")

    @defer.inlineCallbacks
    def test_bad_json_is_400(self) -> Any:
        answer = yield self.client.execute("tool", b'{"command": ')
        self.assertEqual(answer.status, 400)
        error = error_of(answer)
        self.assertEqual((error["code"], error["name"]), (1003, "INVALID_JSON"))

    @defer.inlineCallbacks
    def test_a_schema_error_is_400_naming_each_field_path(self) -> Any:
        answer = yield self.client.execute("tool", {"command": "x", "args": ["a", 1], "mode": "Fast"})
        self.assertEqual(answer.status, 400)
        error = error_of(answer)
        self.assertEqual(error["name"], "INVALID_MESSAGE")
        self.assertEqual([problem["path"] for problem in error["problems"]], ["args[1]", "mode"])

    @defer.inlineCallbacks
    def test_the_wrong_method_is_405_with_allow(self) -> Any:
        answer = yield self.client.get("/tasks/tool/execute")
        self.assertEqual(answer.status, 405)
        self.assertEqual(answer.header("Allow"), "POST")
        self.assertEqual(error_of(answer)["name"], "METHOD_NOT_ALLOWED")
        posted = yield self.client.request("POST", "/status", b"{}")
        self.assertEqual((posted.status, posted.header("Allow")), (405, "GET, HEAD"))

    @defer.inlineCallbacks
    def test_an_unknown_path_is_404(self) -> Any:
        for path in ("/", "/nope", "/tasks/tool", "/tasks/tool/execute/more", "/healthz/"):
            answer = yield self.client.get(path)
            self.assertEqual((answer.status, error_of(answer)["name"]), (404, "UNKNOWN_ROUTE"), path)

    @defer.inlineCallbacks
    def test_a_body_announced_over_the_cap_is_refused_before_it_is_sent(self) -> Any:
        head = (
            b"POST /tasks/tool/execute HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)
        )
        received = yield raw_exchange(admin_url(self.service), head)
        status_line, _, rest = received.partition(b"\r\n")
        self.assertEqual(status_line, b"HTTP/1.1 413 Content Too Large")
        self.assertNotIn(b"100 Continue", received)
        body = json.loads(rest.partition(b"\r\n\r\n")[2])
        self.assertEqual(body["error"]["name"], "MESSAGE_TOO_LARGE")
        self.assertIn(str(MAX_BODY_BYTES), body["error"]["message"])

    @defer.inlineCallbacks
    def test_a_chunked_body_over_the_cap_is_refused(self) -> Any:
        chunk = b"x" * (64 * 1024)
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY_BYTES // len(chunk) + 1)
        )
        request = (
            b"POST /tasks/tool/execute HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
        )
        received = yield raw_exchange(admin_url(self.service), request)
        self.assertTrue(received.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), received[:100])

    @defer.inlineCallbacks
    def test_a_body_at_the_cap_is_read(self) -> Any:
        document = {"command": "cat", "input": ""}
        padding = MAX_BODY_BYTES - len(json.dumps(document))
        document["input"] = "y" * padding
        body = json.dumps(document).encode()
        self.assertEqual(len(body), MAX_BODY_BYTES)
        answer = yield self.client.execute("tool", body)
        self.assertEqual((answer.status, len(answer.json()["output"])), (200, padding))

    @defer.inlineCallbacks
    def test_a_client_that_goes_away_withdraws_its_request(self) -> Any:
        logs = LogCapture(self)
        body = json.dumps({"command": "sleep", "args": ["30"]}).encode()
        connection = yield raw_connection(admin_url(self.service))
        connection.transport.write(
            b"POST /tasks/tool/execute HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )

        def outstanding() -> int:
            [tool] = [task for task in self.service.tasks.status() if task["id"] == "tool"]
            return int(tool["outstanding"])

        yield eventually(lambda: outstanding() == 1)
        connection.transport.loseConnection()
        yield connection.closed
        yield eventually(lambda: outstanding() == 0)
        self.assertEqual(self.service.tasks.outcomes.get(("tool", "cancelled")), 1)
        # The instance was told: its handler is cancelled, not left sleeping.
        yield with_timeout(
            logs.when(lambda event: "cancelled by the spearlet" in event.get("line", "")),
            60,
            "the agent's cancellation of the handler",
        )

    @defer.inlineCallbacks
    def test_every_refusal_is_one_structured_log_line(self) -> Any:
        logs = LogCapture(self)
        yield self.client.execute("nope", {"command": "x"})
        [event] = [event for event in logs.events if "error_code" in event]
        self.assertEqual(
            {key: event[key] for key in ("method", "path", "http_status", "error_code", "error_name")},
            {
                "method": "POST",
                "path": "/tasks/nope/execute",
                "http_status": 404,
                "error_code": 1302,
                "error_name": "UNKNOWN_TASK",
            },
        )
        self.assertTrue(event["client"].startswith("127.0.0.1:"))


class StoppingTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_while_stopping_execute_is_503_shutting_down_and_health_says_stopping(self) -> Any:
        logs = LogCapture(self)
        service = running_service(
            self, spear_config(self, (agent_task(self, "tool"), stubborn_task("stubborn")))
        )
        client = Client(self, admin_url(service))
        # Its instance now ignores SIGTERM: the stop lasts until its SIGKILL.
        yield logs.when(lambda event: event.get("line") == "ignoring SIGTERM")
        stopped = service.stopService()
        answer = yield client.execute("tool", {"command": "x"})
        health = yield client.get("/healthz")
        self.assertFalse(stopped.called, "the stop was over before the requests were answered")
        yield stopped
        self.assertEqual((answer.status, error_of(answer)["name"]), (503, "SHUTTING_DOWN"))
        self.assertEqual((health.status, health.json()["status"]), (503, "stopping"))


class ObservationTests(TestCase):
    """``/healthz``, ``/metrics`` and ``/status``."""

    timeout = 120

    @defer.inlineCallbacks
    def test_health_is_503_while_no_task_can_serve(self) -> Any:
        service = running_service(self, spear_config(self, (silent_task("silent"),)))
        answer = yield Client(self, admin_url(service)).get("/healthz")
        self.assertEqual((answer.status, answer.json()["status"]), (503, "unavailable"))
        self.assertFalse(answer.json()["tasks"]["silent"]["can_serve"])
        self.assertIn("no task can serve", answer.json()["reason"])

    @defer.inlineCallbacks
    def test_a_task_that_starts_instances_on_demand_can_serve_from_the_start(self) -> Any:
        service = running_service(self, spear_config(self, (agent_task(self, "tool"), silent_task("silent"))))
        answer = yield Client(self, admin_url(service)).get("/healthz")
        self.assertEqual((answer.status, answer.json()["reason"]), (200, "1 of 2 tasks can serve"))
        self.assertTrue(answer.json()["tasks"]["tool"]["can_serve"])

    @defer.inlineCallbacks
    def test_health_is_200_when_an_instance_serves(self) -> Any:
        service = running_service(self, spear_config(self, (agent_task(self, "tool", min_instances=1),)))
        client = Client(self, admin_url(service))
        yield client.execute("tool", {"command": "x"})
        health = yield client.get("/healthz")
        self.assertEqual((health.status, health.json()["status"]), (200, "serving"))
        self.assertEqual(health.json()["tasks"]["tool"]["serving_instances"], 1)
        head = yield client.request("HEAD", "/healthz")
        self.assertEqual((head.status, head.body), (200, b""))

    @defer.inlineCallbacks
    def test_metrics_are_prometheus_text_with_the_executions(self) -> Any:
        service = running_service(self, spear_config(self, (agent_task(self, "tool"),)))
        client = Client(self, admin_url(service))
        yield client.execute("tool", {"command": "x"})
        answer = yield client.get("/metrics")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8")
        text = answer.body.decode()
        self.assertIn('spear_executions_total{outcome="completed",task="tool"} 1.0', text)
        self.assertIn("# TYPE spear_connections_active gauge", text)

    @defer.inlineCallbacks
    def test_status_is_the_service_status_as_json(self) -> Any:
        service = running_service(self, spear_config(self, (agent_task(self, "tool"),)))
        client = Client(self, admin_url(service))
        yield client.execute("tool", {"command": "x"})
        answer = yield client.get("/status")
        self.assertEqual((answer.status, answer.header("Content-Type")), (200, "application/json"))
        status = answer.json()
        [task] = status["tasks"]
        [instance] = task["instances"]
        self.assertEqual((task["id"], instance["status"]), ("tool", "Ready"))
        self.assertIsInstance(instance["pid"], int)
        self.assertIsInstance(instance["rss_bytes"], int)
        [connection] = status["connections"]
        self.assertEqual(connection["instance_id"], instance["instance_id"])
        self.assertTrue(connection["authenticated"])

    @defer.inlineCallbacks
    def test_a_failure_inside_the_endpoint_is_500_and_logged(self) -> Any:
        service = running_service(self, spear_config(self, (agent_task(self, "tool"),)))
        logs = LogCapture(self)

        def broken() -> dict[str, Any]:
            raise RuntimeError("status is broken")

        # A fault the real service cannot be made to have.
        self.patch(service, "status", broken)
        answer = yield Client(self, admin_url(service)).get("/status")
        self.assertEqual(answer.status, 500)
        self.assertEqual(error_of(answer)["name"], "INTERNAL_ERROR")
        self.assertNotIn("status is broken", answer.body.decode())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        [failure] = [event["log_failure"] for event in logs.events if "log_failure" in event]
        self.assertEqual(str(failure.value), "status is broken")


class BearerTokenTests(TestCase):
    """With a token configured, every route but ``/healthz`` needs it."""

    timeout = 120
    token = "admin-s3cret"

    def setUp(self) -> None:
        self.logs = LogCapture(self)
        config = spear_config(self, (agent_task(self, "tool"),), token=self.token)
        self.client = Client(self, admin_url(running_service(self, config)))

    @defer.inlineCallbacks
    def test_no_token_is_401_with_a_bearer_challenge(self) -> Any:
        for path in ("/status", "/metrics", "/nope"):
            answer = yield self.client.get(path)
            self.assertEqual(answer.status, 401, path)
            self.assertEqual(answer.header("WWW-Authenticate"), 'Bearer realm="spear"')
            self.assertEqual(error_of(answer)["name"], "NOT_AUTHENTICATED")
        answer = yield self.client.execute("tool", {"command": "x"})
        self.assertEqual(answer.status, 401)

    @defer.inlineCallbacks
    def test_a_wrong_token_is_401_invalid_token(self) -> Any:
        answer = yield self.client.get("/status", Authorization="Bearer admin-s3cre")
        self.assertEqual(answer.status, 401)
        self.assertEqual(answer.header("WWW-Authenticate"), 'Bearer realm="spear", error="invalid_token"')
        self.assertEqual(error_of(answer)["name"], "AUTHENTICATION_FAILED")

    @defer.inlineCallbacks
    def test_the_token_opens_every_route(self) -> Any:
        bearer = f"Bearer {self.token}"
        status = yield self.client.get("/status", Authorization=bearer)
        executed = yield self.client.execute("tool", {"command": "hi"}, Authorization=bearer)
        self.assertEqual((status.status, executed.status), (200, 200))

    @defer.inlineCallbacks
    def test_health_needs_no_token(self) -> Any:
        answer = yield self.client.get("/healthz")
        self.assertIn(answer.status, (200, 503))
        self.assertIn("status", answer.json())

    @defer.inlineCallbacks
    def test_the_token_is_never_logged(self) -> Any:
        yield self.client.get("/status", Authorization="Bearer admin-s3cret-wrong")
        yield self.client.get("/status", Authorization=f"Bearer {self.token}")
        self.assertNotIn("s3cret", self.logs.text())
        self.assertNotIn("s3cret", repr(self.logs.events))


class ServiceTests(TestCase):
    timeout = 60

    def test_a_port_in_use_fails_the_start_at_once(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.error import CannotListenError
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        taken = f"tcp:{port.getHost().port}:interface=127.0.0.1"
        service = AdminService(running_service_target(self), taken)
        self.assertRaises(CannotListenError, service.startService)
        self.assertFalse(service.running)

    def test_the_admin_service_listens_first_and_stops_last(self) -> None:
        from spear_twisted.service import SpearService

        service = SpearService(spear_config(self, (agent_task(self, "tool"),)))
        children = list(service)
        self.assertIs(children[0], service.admin)
        self.assertEqual(service.admin.name if service.admin else None, "admin")


class AddressTests(TestCase):
    timeout = 60

    def test_addresses_read_as_urls(self) -> None:
        from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

        self.assertEqual(address_url(IPv4Address("TCP", "127.0.0.1", 7732)), "http://127.0.0.1:7732")
        self.assertEqual(address_url(IPv6Address("TCP", "::1", 7732)), "http://[::1]:7732")
        self.assertEqual(address_url(UNIXAddress(b"/run/spear/admin.sock")), "unix:/run/spear/admin.sock")

    @defer.inlineCallbacks
    def test_the_endpoint_serves_on_a_unix_socket_and_removes_it_when_stopped(self) -> Any:
        from twisted.internet import protocol
        from twisted.internet import reactor as real_reactor
        from twisted.internet.endpoints import UNIXClientEndpoint

        from tests.admin_support import RawHttp

        path = os.path.join(short_temp_dir(self) + "-admin.sock")
        # In front of a service that is not running: health says it is not serving.
        service = AdminService(running_service_target(self), f"unix:{path}")
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        self.assertEqual(service.url, f"unix:{path}")
        endpoint = UNIXClientEndpoint(real_reactor, path)
        connection = yield endpoint.connect(protocol.Factory.forProtocol(RawHttp))
        connection.transport.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = yield connection.closed
        self.assertTrue(received.startswith(b"HTTP/1.1 503 "), received[:40])
        self.assertIn(b'"status":"stopping"', received)
        yield service.stopService()
        self.assertFalse(os.path.exists(path))
        self.assertIsNone(service.url)


def running_service_target(test: TestCase) -> Any:
    """A constructed (not started) ``SpearService`` to put an admin endpoint in front of."""
    from spear_twisted.service import SpearService

    return SpearService(spear_config(test, (agent_task(test, "tool"),)))
