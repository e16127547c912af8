"""
Helpers for the admin endpoint and CLI tests: a real ``SpearService`` with
real agent processes, its admin endpoint on a free loopback port, and a real
HTTP client.
"""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from spear_twisted.config import AdminConfig, SpearConfig, TaskConfig
from spear_twisted.service import SpearService
from tests.runtime_support import ROOT
from tests.service_support import service_config, task_config

#: A test agent: echoes, or sleeps, dies, fails, or returns its input, by command.
AGENT = textwrap.dedent(
    """
    import asyncio, os, sys

    from spear_twisted.agent.handler import TaskFailed
    from spear_twisted.agent.runner import run


    async def handle(request):
        if request.command == "sleep":
            await asyncio.sleep(float(request.args[0]))
            return "slept"
        if request.command == "die":
            os._exit(3)
        if request.command == "fail":
            raise TaskFailed("failed on purpose", exit_code=int(request.args[0]), output="partial output")
        if request.command == "cat":
            return request.input_data
        return " ".join((request.command, *request.args))


    sys.exit(run(handle))
    """
)

#: A program that never connects back: its instance never becomes ready.
SILENT = "import time; time.sleep(600)"

#: A program that never connects back and ignores SIGTERM: stopping it takes its kill timeout.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ignoring SIGTERM', flush=True); time.sleep(600)"
)


def write_agent(test: Any) -> str:
    """The test agent's script file."""
    directory = test.mktemp()
    os.makedirs(directory)
    path = os.path.join(directory, "agent.py")
    with open(path, "w") as file:
        file.write(AGENT)
    return path


def agent_task(test: Any, task_id: str = "tool", **settings: Any) -> TaskConfig:
    """A task served by the test agent, started on demand, one instance at most."""
    options: dict[str, Any] = {"min_instances": 0, "max_instances": 1}
    options.update(settings)
    return task_config(task_id, ("-u", write_agent(test)), **options)


def silent_task(task_id: str = "silent", **settings: Any) -> TaskConfig:
    """A task whose instances start but never connect (so never serve)."""
    options: dict[str, Any] = {"min_instances": 1, "max_instances": 1, "stop_grace_period": 0.0}
    options.update(settings)
    return task_config(task_id, ("-c", SILENT), **options)


def stubborn_task(task_id: str = "stubborn", **settings: Any) -> TaskConfig:
    """A task whose one instance never connects and takes ``kill_timeout`` to stop."""
    options: dict[str, Any] = {
        "min_instances": 1,
        "max_instances": 1,
        "stop_grace_period": 0.0,
        "kill_timeout": 3.0,
    }
    options.update(settings)
    return task_config(task_id, ("-c", STUBBORN), **options)


def spear_config(test: Any, tasks: tuple[TaskConfig, ...], *, token: str | None = None) -> SpearConfig:
    """A configuration with ``tasks``, Unix sockets in a private directory, admin on a free port."""
    return service_config(test, *tasks, admin=AdminConfig(endpoint="tcp:0:interface=127.0.0.1", token=token))


def running_service(test: Any, config: SpearConfig) -> SpearService:
    """A started ``SpearService``, stopped (and waited for) after ``test`` unless the test stopped it."""
    service = SpearService(config)
    service.startService()
    test.addCleanup(lambda: service.stopService() if service.running else None)
    return service


def admin_url(service: SpearService) -> str:
    """The base URL of ``service``'s admin endpoint."""
    assert service.admin is not None and service.admin.url is not None
    return service.admin.url


class Answer:
    """An HTTP answer: status, headers and the whole body."""

    def __init__(self, response: IResponse, body: bytes) -> None:
        self.status = response.code
        self.headers = response.headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return None if not values else values[0].decode() if isinstance(values[0], bytes) else values[0]

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """Real HTTP requests, one connection each, all closed after the test."""

    def __init__(self, test: Any, base_url: str) -> None:
        self.base_url = base_url
        self.pool = HTTPConnectionPool(real_reactor, persistent=False)
        self.agent = Agent(real_reactor, pool=self.pool)
        test.addCleanup(self.pool.closeCachedConnections)

    @defer.inlineCallbacks
    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        producer = None if body is None else FileBodyProducer(io.BytesIO(body))
        raw = Headers({name: [value] for name, value in (headers or {}).items()})
        response = yield self.agent.request(method.encode(), (self.base_url + path).encode(), raw, producer)
        data = yield readBody(response)
        return Answer(response, data)

    def get(self, path: str, **headers: str) -> Deferred[Answer]:
        return self.request("GET", path, headers=headers)  # type: ignore[no-any-return]

    def execute(self, task_id: str, document: Any, **headers: str) -> Deferred[Answer]:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        return self.request(  # type: ignore[no-any-return]
            "POST", f"/tasks/{task_id}/execute", body, {"Content-Type": "application/json", **headers}
        )


class RawHttp(protocol.Protocol):
    """A connection that sends bytes as given and collects everything until the server closes."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.received)


@defer.inlineCallbacks
def raw_connection(base_url: str) -> Any:
    """A new :class:`RawHttp` connection to the admin endpoint."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    endpoint = TCP4ClientEndpoint(real_reactor, host, int(port))
    connection = yield endpoint.connect(protocol.Factory.forProtocol(RawHttp))
    return connection


@defer.inlineCallbacks
def raw_exchange(base_url: str, data: bytes) -> Any:
    """Send ``data`` on a new connection to the admin endpoint; everything it answered until it closed."""
    connection = yield raw_connection(base_url)
    connection.transport.write(data)
    received = yield connection.closed
    return received


class _Collect(protocol.ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.ended: Deferred[tuple[bytes, bytes, int]] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback((self.out, self.err, reason.value.exitCode))


@defer.inlineCallbacks
def eventually(condition: Any, timeout: float = 60.0, interval: float = 0.05) -> Any:
    """Fires once ``condition()`` is true; fails after ``timeout`` seconds (real processes take real time)."""
    from twisted.internet.task import deferLater

    deadline = real_reactor.seconds() + timeout
    while not condition():
        if real_reactor.seconds() > deadline:
            raise AssertionError(f"still false after {timeout} s: {condition}")
        yield deferLater(real_reactor, interval, lambda: None)


def run_cli(
    *argv: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> Deferred[tuple[bytes, bytes, int]]:
    """
    Run ``python -m spear_twisted.cli ARGV`` in a child process with ``stdin``:
    ``(stdout, stderr, exit status)``.
    """
    environment = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": ROOT, "LANG": "C.UTF-8"}
    environment.update(env or {})
    collect = _Collect(stdin)
    real_reactor.spawnProcess(
        collect,
        sys.executable,
        [sys.executable, "-m", "spear_twisted.cli", *argv],
        env=environment,
        path=ROOT,
    )
    return collect.ended
