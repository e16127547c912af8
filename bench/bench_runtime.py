"""
Runtime benchmark: how long from spawning an instance to its agent being
authenticated, against a baseline measured in the same run.

*Ours*: ``ProcessRuntime.start_instance`` of ``python -m
spear_twisted.agent.echo`` (asyncio, or ``--framework twisted``), from the
call to the instance being Ready: the instance's channel (its own Unix
socket), its secret, its environment, the util-linux launcher (own
session, parent-death signal, resource limits), the agent's start, its
``AuthRequest``, the spearlet's validation.

*Baselines*: the same interpreter, spawned directly with ``spawnProcess``,
running a script that connects to a Unix socket this process listens on
and sends one frame (the same ``AuthRequest`` size); measured from the
listen and spawn to the frame received.  ``plain`` imports only
``socket``; ``twisted`` imports the reactor first, ``asyncio`` asyncio.
Like an instance, each starts its own session (``os.setsid()``, ``os``
being loaded with the interpreter), so that the scheduler treats both
alike: on Linux with autogroups each session gets an equal share of the
CPU, and 50 children in the benchmark's own session would share one.

Cases: one instance at a time (the median of repeated runs), and 50
started together (until the last is Ready, against 50 baselines spawned
together).  Extra rows, without targets: the Python launcher instead of the
util-linux one; 50 children that authenticate like the agent and import
nothing more; 50 agents that do not await the spearlet's answer before
their imports (``await_auth_response=False``: their imports compete for the
CPU with the instances still starting); the time to a first response (the
agent's framework and the wire layer imported), one instance alone and the
last of 50, the latter against 50 baselines that import asyncio before they
connect; the import costs in a fresh interpreter.

Prints a table: case, baseline, ours, ratio (ours/baseline time; lower is
better), target.  No pass/fail: figures, not assertions.

Run: ``python bench/bench_runtime.py [--quick] [--case NAME ...]`` (``--case``
runs only the named cases, for instance ``asyncio-50``; ``--list`` names them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol

from spear_twisted.agent.bootstrap import auth_request_frame
from spear_twisted.agent.config import AgentConfig
from spear_twisted.auth import SecretRegistry
from spear_twisted.channels.config import ChannelConfig
from spear_twisted.channels.factory import CommunicationFactory
from spear_twisted.runtime import InstanceConfig, ProcessRuntime, ProcessRuntimeConfig, TaskInstance
from spear_twisted.wire import ExecuteRequest, SpearMessage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_ENV = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": ROOT, "LANG": "C.UTF-8"}
INHERIT = ("PATH", "PYTHONPATH", "LANG")
TOGETHER = 50

# Each baseline child leads its own session, as an instance does: Linux's
# autogroups give each session, not each process, an equal share of the CPU.
OWN_SESSION = """
import os
os.setsid()
"""

SEND = """
import socket, sys
frame = bytes.fromhex(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(frame)
s.close()
"""

PLAIN = OWN_SESSION + SEND

TWISTED = OWN_SESSION + "from twisted.internet import reactor, protocol\n" + SEND

ASYNCIO = OWN_SESSION + "import asyncio\n" + SEND

# Authenticates with the agent's bootstrap, then imports nothing: it holds
# the connection until the spearlet closes it.
BOOTSTRAP_ONLY = """
from spear_twisted.agent.bootstrap import connect_and_authenticate
from spear_twisted.agent.config import AgentConfig
connection = connect_and_authenticate(AgentConfig.from_environment())
while connection.sock.recv(65536):
    pass
"""

# The echo agent, importing its framework without awaiting the spearlet's answer.
NO_AWAIT = """
from spear_twisted.agent import run
from spear_twisted.agent.echo import echo
raise SystemExit(run(echo, await_auth_response=False))
"""

# The AuthRequest an agent of this run sends (for the baselines' one frame).
FRAME = auth_request_frame(
    AgentConfig(
        instance_id="process:echo-0123456789abcdef", secret="x" * 43, transport="unix", socket_path="/x"
    )
)


class _FrameReceiver(Protocol):
    def __init__(self, done: Deferred[float]) -> None:
        self.done = done
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= 4 + int.from_bytes(FRAME[:4], "big") and not self.done.called:
            self.done.callback(time.perf_counter())


class _Exit(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


@defer.inlineCallbacks
def baseline(script: str, directory: str, count: int) -> Generator[Deferred[Any], Any, float]:
    """Seconds from listening and spawning ``count`` baseline children to the last frame received."""
    start = time.perf_counter()
    ports, arrivals, exits = [], [], []
    for number in range(count):
        path = os.path.join(directory, f"b{number}.sock")
        arrived: Deferred[float] = Deferred()
        ports.append(
            reactor.listenUNIX(path, Factory.forProtocol(lambda arrived=arrived: _FrameReceiver(arrived)))
        )
        arrivals.append(arrived)
        process = _Exit()
        reactor.spawnProcess(
            process, sys.executable, [sys.executable, "-c", script, path, FRAME.hex()], env=CHILD_ENV
        )
        exits.append(process.ended)
    times = yield defer.gatherResults(arrivals)
    elapsed = max(times) - start
    yield defer.gatherResults(exits)
    yield defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in ports])
    return float(elapsed)


class Ours:
    """A ProcessRuntime spawning echo agents."""

    def __init__(self, directory: str, launcher: str = "auto") -> None:
        self.directory = directory
        self.registry = SecretRegistry()
        self.factory = CommunicationFactory(
            validator=self.registry, config=ChannelConfig(runtime_dir=directory)
        )
        self.runtime = ProcessRuntime(
            self.factory,
            self.registry,
            config=ProcessRuntimeConfig(launcher=launcher),
            parent_environment=CHILD_ENV,
        )

    def script(self, name: str, source: str) -> str:
        path = os.path.join(self.directory, f"{name}.py")
        with open(path, "w") as file:
            file.write(source)
        return path

    def instance(self, framework: str) -> TaskInstance:
        if framework == "bootstrap-only":
            script = self.script("bootstrap_only", BOOTSTRAP_ONLY)
            config = InstanceConfig(sys.executable, (script,), inherit_env=INHERIT, stop_grace_period=0)
            return self.runtime.create_instance("boot", config)
        if framework == "no-await":
            config = InstanceConfig(sys.executable, (self.script("no_await", NO_AWAIT),), inherit_env=INHERIT)
            return self.runtime.create_instance("echo", config)
        args = ("-m", "spear_twisted.agent.echo", "--framework", framework)
        return self.runtime.create_instance("echo", InstanceConfig(sys.executable, args, inherit_env=INHERIT))

    @defer.inlineCallbacks
    def ready(self, framework: str, count: int) -> Generator[Deferred[Any], Any, float]:
        """Seconds from starting ``count`` instances together to the last Ready."""
        instances = [self.instance(framework) for _ in range(count)]
        start = time.perf_counter()
        yield defer.gatherResults([self.runtime.start_instance(instance) for instance in instances])
        elapsed = time.perf_counter() - start
        yield self.stop(instances)
        return elapsed

    @defer.inlineCallbacks
    def first_response(self, framework: str, count: int = 1) -> Generator[Deferred[Any], Any, float]:
        """
        Seconds from starting ``count`` instances together to the last
        response to the request each is sent once Ready.
        """
        instances = [self.instance(framework) for _ in range(count)]
        start = time.perf_counter()
        yield defer.gatherResults(
            [self.runtime.start_instance(instance).addCallback(self.ping) for instance in instances]
        )
        elapsed = time.perf_counter() - start
        yield self.stop(instances)
        return elapsed

    def ping(self, instance: TaskInstance) -> Deferred[Any]:
        channel = self.factory.get_channel(instance.instance_id)
        assert channel is not None
        return channel.request_response(SpearMessage.execute_request(0, ExecuteRequest("echo", "ping")), 60)

    @defer.inlineCallbacks
    def stop(self, instances: list[TaskInstance]) -> Generator[Deferred[Any], Any, None]:
        yield defer.gatherResults([self.runtime.stop_instance(instance) for instance in instances])
        for instance in instances:
            self.runtime.remove_instance(instance)


def import_costs() -> list[tuple[str, float]]:
    """Milliseconds each agent phase spends importing, in a fresh interpreter (best of 5)."""
    phases = [
        ("before authenticating (bootstrap)", "import spear_twisted.agent.bootstrap"),
        ("wire layer", "import spear_twisted.wire"),
        (
            "asyncio path after it (txaio, asyncio, core, wire)",
            "import txaio; txaio.use_asyncio(); import spear_twisted.agent.aio",
        ),
        (
            "twisted path after it (txaio, reactor, core, wire)",
            "import txaio; txaio.use_twisted(); import spear_twisted.agent.tx;"
            " from twisted.internet import reactor",
        ),
    ]
    results = []
    for name, statement in phases:
        code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
        best = min(
            float(
                subprocess.run(
                    [sys.executable, "-c", code], env=CHILD_ENV, capture_output=True, text=True, check=True
                ).stdout
            )
            for _ in range(5)
        )
        results.append((name, best * 1000))
    return results


WIDTH = 58


def row(case: str, base: float | None, mine: float, target: str) -> None:
    base_text = "-" if base is None else f"{base * 1000:.1f} ms"
    ratio = "-" if base is None else f"{mine / base:.2f}"
    print(f"{case:<{WIDTH}}{base_text:>12}{mine * 1000:>10.1f} ms{ratio:>8}{target:>10}", flush=True)


def cases(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The single-instance and the 50-instance cases: name -> a function giving a Deferred of seconds."""
    ours = Ours(directory)
    python_launcher = Ours(directory, launcher="python")
    single = {
        "plain": lambda: baseline(PLAIN, directory, 1),
        "asyncio": lambda: ours.ready("asyncio", 1),
        "twisted-baseline": lambda: baseline(TWISTED, directory, 1),
        "twisted": lambda: ours.ready("twisted", 1),
        "python-launcher": lambda: python_launcher.ready("asyncio", 1),
        "first-asyncio": lambda: ours.first_response("asyncio"),
        "first-twisted": lambda: ours.first_response("twisted"),
    }
    together = {
        "plain-50": lambda: baseline(PLAIN, directory, TOGETHER),
        "asyncio-50": lambda: ours.ready("asyncio", TOGETHER),
        "asyncio-baseline-50": lambda: baseline(ASYNCIO, directory, TOGETHER),
        "first-asyncio-50": lambda: ours.first_response("asyncio", TOGETHER),
        "no-await-50": lambda: ours.ready("no-await", TOGETHER),
        "first-no-await-50": lambda: ours.first_response("no-await", TOGETHER),
        "twisted-50": lambda: ours.ready("twisted", TOGETHER),
        "bootstrap-50": lambda: ours.ready("bootstrap-only", TOGETHER),
    }
    return single, together


#: The table: label, baseline case, our case, target.
ROWS = [
    ("asyncio agent: spawn -> authenticated", "plain", "asyncio", "<= 1.5"),
    ("twisted agent: spawn -> authenticated", "twisted-baseline", "twisted", "<= 1.2"),
    (f"{TOGETHER} asyncio agents together: last authenticated", "plain-50", "asyncio-50", "<= 1.5"),
    (f"{TOGETHER} twisted agents together: last authenticated", "plain-50", "twisted-50", "-"),
    (f"{TOGETHER} bootstrap-only together: last authenticated", "plain-50", "bootstrap-50", "-"),
    (f"{TOGETHER} asyncio, not awaiting answer: last authenticated", "plain-50", "no-await-50", "-"),
    ("asyncio agent, python launcher", "plain", "python-launcher", "-"),
    ("asyncio agent: spawn -> first response", "plain", "first-asyncio", "-"),
    ("twisted agent: spawn -> first response", "twisted-baseline", "first-twisted", "-"),
    (
        f"{TOGETHER} asyncio agents together: last first response",
        "asyncio-baseline-50",
        "first-asyncio-50",
        "-",
    ),
    (
        f"{TOGETHER} asyncio, not awaiting answer: last first response",
        "asyncio-baseline-50",
        "first-no-await-50",
        "-",
    ),
]


@defer.inlineCallbacks
def run(quick: bool, only: list[str]) -> Generator[Deferred[Any], Any, None]:
    rounds = 5 if quick else 21
    together_rounds = 1 if quick else 3
    directory = tempfile.mkdtemp(prefix="spear-bench-")
    try:
        single, together = cases(directory)
        if only:
            single = {name: case for name, case in single.items() if name in only}
            together = {name: case for name, case in together.items() if name in only}
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {'quick' if quick else 'full'} run")
        print("median of", rounds, "runs per single-instance row;", together_rounds, "per 50-instance row")
        print()
        print(f"{'case':<{WIDTH}}{'baseline':>12}{'ours':>13}{'ratio':>8}{'target':>10}")
        samples: dict[str, list[float]] = {}
        # Interleaved, so that the machine's load touches every case alike.
        for group, repeat in ((single, rounds), (together, together_rounds)):
            for _ in range(repeat if group else 0):
                for name, case in group.items():
                    samples.setdefault(name, []).append((yield case()))
        median = {name: statistics.median(values) for name, values in samples.items()}
        for label, base, mine, target in ROWS:
            if mine in median:
                row(label, median.get(base), median[mine], target)
        print()
        print("baselines: plain = python script, own session, import socket, connect, send one frame;")
        print("           twisted = the same after importing twisted's reactor;")
        print("           asyncio (last first response) = the same after importing asyncio.")
        print("bootstrap-only: our runtime and launcher, a child that authenticates like the agent")
        print("                and then imports nothing.")
        print("not awaiting answer: the echo agent with await_auth_response=False (imports its")
        print("                     framework while the spearlet validates its AuthRequest).")
        print("ratio = ours/baseline time (lower is better).")
        if not only:
            print()
            print("agent imports in a fresh interpreter (best of 5):")
            for name, milliseconds in import_costs():
                print(f"  {name:<56}{milliseconds:>8.1f} ms")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--case", action="append", default=[], help="run only this case (repeatable)")
    parser.add_argument("--list", action="store_true", help="name the cases and exit")
    options = parser.parse_args()
    if options.list:
        single, together = cases(tempfile.gettempdir())
        print("\n".join([*single, *together]))
        return
    failures: list[Any] = []

    def go() -> None:
        run(options.quick, options.case).addErrback(lambda failure: failures.append(failure)).addBoth(
            lambda _: reactor.stop()
        )

    reactor.callWhenRunning(go)
    reactor.run()
    for failure in failures:
        failure.printTraceback()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
