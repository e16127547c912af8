"""
Channel benchmark over the gRPC bridge: ``request_response`` round trips
through the session core, a GrpcChannel against the agent SDK's grpc
transport, beside the same over TCP in the same run.

The spearlet side is this process: a listening channel (GrpcChannel, or
TCPChannel as the baseline) in the default reactor.  The agent is the
packaged echo agent (``python -m spear_twisted.agent.echo``) in a child
process, asyncio flavour: over grpc it is grpcio's ``grpc.aio`` client, over
tcp the SDK's socket transport.  Measured per transport:

* ``ExecuteRequest`` round trips per second, one at a time;
* round trips per second with 32 in flight;

and the CPU time per round trip of the spearlet process and of the agent
process (from ``/proc``).  Transports take turns, round after round (the best
round counts).  No target: the table shows what the gRPC transport costs
against TCP for the same session.

Run: ``python bench/bench_grpc_channel.py [--quick]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Generator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from twisted.internet import defer, task  # noqa: E402

from spear_twisted.auth import SecretRegistry  # noqa: E402
from spear_twisted.bridge.channel import GrpcChannel  # noqa: E402
from spear_twisted.channels.config import ChannelConfig  # noqa: E402
from spear_twisted.channels.tcp import TCPChannel  # noqa: E402
from spear_twisted.runtime.environment import protocol_environment  # noqa: E402
from spear_twisted.wire import ExecuteRequest, RuntimeInstanceId, RuntimeType, SpearMessage  # noqa: E402

TRANSPORTS = {"tcp": TCPChannel, "grpc": GrpcChannel}
IN_FLIGHT = 32


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by every thread of process ``pid`` (Linux ``/proc``)."""
    ticks = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{thread}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


@defer.inlineCallbacks
def measure(transport: str, trips: int) -> Generator[Any, Any, dict[str, float]]:
    """One round of ``transport``: rates, and CPU microseconds per round trip (``cpu_`` keys)."""
    registry = SecretRegistry()
    instance_id = RuntimeInstanceId(RuntimeType.KUBERNETES, f"bench-{transport}")
    channel = TRANSPORTS[transport](
        instance_id,
        config=ChannelConfig(heartbeat_interval=None, heartbeat_timeout=None),
        validator=registry,
    )
    address = yield channel.listen()
    environment = {
        **protocol_environment(instance_id, registry.issue(instance_id), address.environment()),
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": ROOT,
    }
    agent = subprocess.Popen(
        [sys.executable, "-m", "spear_twisted.agent.echo"], env=environment, stderr=subprocess.DEVNULL
    )
    figures: dict[str, float] = {}
    try:
        yield channel.when_connected()
        request = SpearMessage.execute_request(0, ExecuteRequest("bench", "echo", ("--fast",)))
        for _ in range(max(50, trips // 10)):  # warm up
            yield channel.request_response(request, 30)

        def timed(name: str, count: int, start: float, own: float, theirs: float) -> None:
            figures[name] = count / (time.perf_counter() - start)
            figures[f"cpu_spearlet_{name}"] = (time.process_time() - own) / count * 1e6
            figures[f"cpu_agent_{name}"] = (process_cpu(agent.pid) - theirs) / count * 1e6

        start, own, theirs = time.perf_counter(), time.process_time(), process_cpu(agent.pid)
        for _ in range(trips):
            yield channel.request_response(request, 30)
        timed("serial", trips, start, own, theirs)
        rounds = trips // IN_FLIGHT
        start, own, theirs = time.perf_counter(), time.process_time(), process_cpu(agent.pid)
        for _ in range(rounds):
            yield defer.gatherResults([channel.request_response(request, 30) for _ in range(IN_FLIGHT)])
        timed("concurrent", rounds * IN_FLIGHT, start, own, theirs)
    finally:
        yield channel.close()
        agent.terminate()
        agent.wait(30)
    return figures


def row(case: str, *cells: str) -> None:
    print((f"{case:<40}" + "".join(f"{cell:>12}" for cell in cells)).rstrip(), flush=True)


@defer.inlineCallbacks
def run(reactor: Any, quick: bool) -> Generator[Any, Any, None]:
    trips, rounds = (1000, 2) if quick else (5000, 5)
    names = tuple(TRANSPORTS)
    best: dict[str, dict[str, float]] = {name: {} for name in names}
    for number in range(rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        for name in order:
            figures = yield measure(name, trips)
            for key, value in figures.items():
                if key.startswith("cpu_"):
                    best[name][key] = min(best[name].get(key, value), value)
                else:
                    best[name][key] = max(best[name].get(key, 0.0), value)

    import grpc

    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, grpcio {grpc.__version__};"
        f" best of {rounds} rounds, {trips} round trips each"
    )
    print("spearlet: this process, Channel.request_response; agent: the echo agent (asyncio) in a child")
    print()
    labels = {"serial": "round trips, one at a time", "concurrent": f"round trips, {IN_FLIGHT} in flight"}
    row("per second", "tcp", "grpc", "grpc/tcp")
    for key, label in labels.items():
        tcp, grpc_rate = best["tcp"][key], best["grpc"][key]
        row(label, f"{tcp:,.0f}", f"{grpc_rate:,.0f}", f"{grpc_rate / tcp:.2f}")
    print()
    row("CPU per round trip (us)", "tcp", "grpc", "grpc/tcp")
    for side in ("spearlet", "agent"):
        for key, label in labels.items():
            tcp, grpc_cpu = best["tcp"][f"cpu_{side}_{key}"], best["grpc"][f"cpu_{side}_{key}"]
            row(f"{side}: {label}", f"{tcp:,.0f}", f"{grpc_cpu:,.0f}", f"{grpc_cpu / tcp:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer round trips and rounds")
    args = parser.parse_args()
    task.react(run, [args.quick])


if __name__ == "__main__":
    main()
