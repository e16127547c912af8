"""
Execute benchmark: invocations per second through
``TaskExecutionManager.execute``, against the bare channel
``request_response`` to the same instances, measured in the same run.

A :class:`~spear_twisted.service.SpearService` in this process runs the
``echo`` task: 1 or 4 instances of the packaged echo agent (``python -m
spear_twisted.agent.echo``), each its own process on its own Unix socket.

*Ours*: C concurrent callers, each a loop of ``execute("echo", request)``
waiting for each response before the next: the scheduler picks the
instance, the request goes out on its channel, the response comes back
through the pool's bookkeeping, the monitoring records the execution.

*Baseline*: the same C loops calling ``request_response`` directly on the
instances' channels (loop i on instance i mod N), each making the request
message and reading the response's body as a caller must: everything ours
does but the execution manager.

Rounds alternate baseline and ours (three; one with ``--quick``) and the
median of each is printed, so that load from elsewhere on a shared machine
weighs on both alike; beside the rates, this process's CPU time (user and
system) per invocation, which other load disturbs less.

Prints a table: case, baseline, ours, ratio (ours/baseline rate; higher is
better), target (at least 0.7x).  No pass/fail: figures, not assertions.

Run: ``python bench/bench_execute.py [--quick]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from spear_twisted.config import AdminConfig, SpearConfig, TaskConfig
from spear_twisted.monitoring import MonitoringConfig
from spear_twisted.service import SpearService
from spear_twisted.wire import ExecuteRequest, SpearMessage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: (instances, concurrent callers) of each case.
CASES = [(1, 1), (1, 16), (4, 4), (4, 16)]

TARGET = 0.7

REQUEST = ExecuteRequest("echo", "hello", ("world",))


def echo_config(runtime_dir: str, instances: int) -> SpearConfig:
    """The echo task with ``instances`` instances, all started at once, nothing else listening."""
    task_config = TaskConfig(
        id="echo",
        executable=sys.executable,
        args=("-m", "spear_twisted.agent.echo"),
        env={"PYTHONPATH": ROOT},
        min_instances=instances,
        max_instances=instances,
        max_concurrent_requests=64,
    )
    return SpearConfig(
        runtime_dir=runtime_dir,
        admin=AdminConfig(enabled=False),
        monitoring=MonitoringConfig(),
        tasks=(task_config,),
    )


@defer.inlineCallbacks
def measure(
    reactor: Any, operations: list[Callable[[], Deferred[Any]]], seconds: float
) -> Generator[Deferred[Any], Any, tuple[float, float]]:
    """
    Run each operation in a loop of its own for a warm-up, then for
    ``seconds``; the rate of completed operations per second, and this
    process's CPU seconds per operation.
    """
    counting = {"on": False, "done": 0, "stop": False}

    @defer.inlineCallbacks
    def loop(operation: Callable[[], Deferred[Any]]) -> Generator[Deferred[Any], Any, None]:
        while not counting["stop"]:
            yield operation()
            if counting["on"]:
                counting["done"] += 1

    loops = [loop(operation) for operation in operations]
    yield task.deferLater(reactor, min(1.0, seconds / 3), lambda: None)
    counting["on"] = True
    cpu_before = _cpu()
    started = time.perf_counter()
    yield task.deferLater(reactor, seconds, lambda: None)
    done, elapsed, cpu = counting["done"], time.perf_counter() - started, _cpu() - cpu_before
    counting["stop"] = True
    yield defer.gatherResults(loops)
    return done / elapsed, cpu / max(done, 1)


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def ours(service: SpearService, callers: int) -> list[Callable[[], Deferred[Any]]]:
    execute = service.tasks.execute
    return [lambda: execute("echo", REQUEST) for _ in range(callers)]


def baseline(service: SpearService, callers: int) -> list[Callable[[], Deferred[Any]]]:
    pool = service.tasks.pools["echo"]
    channels = [service.runtime.factory.get_channel(member.instance.instance_id) for member in pool.members]
    timeout = pool.task.request_timeout

    def call(channel: Any) -> Deferred[Any]:
        # What a caller of the channel does: make the message, send it, read the response's body.
        answered = channel.request_response(SpearMessage.execute_request(0, REQUEST), timeout)
        return answered.addCallback(SpearMessage.parse_payload)

    count = len(channels)
    return [lambda channel=channels[index % count]: call(channel) for index in range(callers)]  # type: ignore[misc]


def _row(*cells: str) -> None:
    widths = (26, 22, 22, 8, 8)
    print(
        "  ".join(
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
    )


@defer.inlineCallbacks
def run_all(reactor: Any, quick: bool) -> Generator[Deferred[Any], Any, None]:
    seconds = 1.5 if quick else 4.0
    rounds = 1 if quick else 3
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {rounds} round(s) of {seconds:g} s per case"
    )
    print()
    _row("case", "baseline", "ours", "ratio", "target")
    _row("", "request_response", "execute", "", "")
    for instances, callers in CASES:
        directory = tempfile.mkdtemp(prefix="spear-bench-")
        service = SpearService(echo_config(os.path.join(directory, "run"), instances))
        try:
            service.startService()
            # Every instance Ready before measuring.
            yield defer.gatherResults([service.tasks.execute("echo", REQUEST) for _ in range(instances * 8)])
            while any(
                member.instance.status.value != "Ready" for member in service.tasks.pools["echo"].members
            ):
                yield task.deferLater(reactor, 0.05, lambda: None)
            base_runs, our_runs = [], []
            for _ in range(rounds):
                base_runs.append((yield measure(reactor, baseline(service, callers), seconds)))
                our_runs.append((yield measure(reactor, ours(service, callers), seconds)))
        finally:
            yield service.stopService()
            shutil.rmtree(directory, ignore_errors=True)
        base_rate = statistics.median(rate for rate, _ in base_runs)
        our_rate = statistics.median(rate for rate, _ in our_runs)
        base_cpu = statistics.median(cpu for _, cpu in base_runs)
        our_cpu = statistics.median(cpu for _, cpu in our_runs)
        case = f"{instances} instance{'s' * (instances > 1)}, {callers} caller{'s' * (callers > 1)}"
        _row(
            case, f"{base_rate:,.0f}/s", f"{our_rate:,.0f}/s", f"{our_rate / base_rate:.2f}x", f">={TARGET}x"
        )
        _row("  CPU per invocation", f"{base_cpu * 1e6:,.0f} us", f"{our_cpu * 1e6:,.0f} us", "", "")
    print()
    print(
        "ratio = ours/baseline rate (higher is better); CPU: this process's (the spearlet's), user + system."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    options = parser.parse_args()
    task.react(run_all, [options.quick])


if __name__ == "__main__":
    main()
