"""
gRPC bridge benchmark: our h2-on-Twisted server against grpcio's own Python
servers, each doing the same echo work, measured in one run with the same
client.

Servers, each in its own process on 127.0.0.1:

* *ours*: :class:`~spear_twisted.bridge.server.BridgeServer` serving
  ``spear.v1.SpearBridge`` (``Execute`` answers an ``ExecuteResult`` built
  from the call; ``Connect`` echoes each ``Envelope``), in the default
  reactor, no threads;
* *grpcio*: ``grpc.server`` with a thread pool (the classic Python server,
  the baseline of the targets), same methods, same work;
* *grpcio aio*: ``grpc.aio.server`` on asyncio, same methods (for reference).

Client: another process with ``grpc.aio`` on one channel, measuring

* unary ``Execute`` calls per second, one at a time;
* unary calls per second with 32 in flight;
* ``Connect`` round trips per second (write an envelope, read its echo);

and, for each, the server process's CPU time per operation (all its threads,
read from ``/proc``), which decides what a busy machine can serve.

Each server is measured in turn, round after round, each round starting
with another server (the best round counts), so that they share the
machine's state; on a shared machine the figures still vary from run to
run by 10-20 %.  Prints a table with the ratio
ours / grpcio and the targets of issue 7 (>= 0.7x unary, >= 1.0x stream).

Run: ``python bench/bench_bridge.py [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from concurrent import futures
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from spear_twisted.bridge import spear_pb2 as pb  # noqa: E402
from spear_twisted.bridge.contract import CONNECT_PATH, EXECUTE_PATH, SERVICE  # noqa: E402

#: Seconds the parent waits for a child to start.
START_TIMEOUT = 60.0

SERVERS = ("ours", "grpcio", "grpcio-aio")


def answer(call: pb.ExecuteCall) -> pb.ExecuteResult:
    """The echo work both servers do for ``Execute``."""
    return pb.ExecuteResult(
        task_id=call.task_id,
        status=pb.EXECUTION_STATUS_COMPLETED,
        output=call.command,
        exit_code=0,
        duration_ms=0,
    )


# -- the servers ----------------------------------------------------------------------------------


def serve_ours() -> None:
    from twisted.internet import defer, reactor
    from zope.interface import implementer

    from spear_twisted.bridge.methods import IBridgeBackend, IConnectHandler
    from spear_twisted.bridge.server import make_spear_bridge

    @implementer(IBridgeBackend)
    class Backend:
        def execute(self, call: pb.ExecuteCall, context: Any) -> pb.ExecuteResult:
            return answer(call)

        def status(self, request: pb.StatusRequest, context: Any) -> pb.StatusReply:
            return pb.StatusReply()

    @implementer(IConnectHandler)
    class Echo:
        """Echoes in push mode, as the session core of part 2 reads a stream."""

        def connect(self, stream: Any, context: Any) -> Any:
            done: defer.Deferred[None] = defer.Deferred()

            def ended(error: Any) -> None:
                if not done.called:
                    done.callback(None)

            stream.set_receiver(lambda envelope, size: stream.send(envelope), ended)
            return done

    server = make_spear_bridge(Backend(), Echo(), authenticate_callers=False)
    port = reactor.listenTCP(0, server, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(json.dumps({"port": port.getHost().port}), flush=True)
    reactor.run()  # type: ignore[attr-defined]


def _handlers(unary: Any, stream: Any) -> Any:
    import grpc

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Execute": grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=pb.ExecuteCall.FromString,
                response_serializer=pb.ExecuteResult.SerializeToString,
            ),
            "Connect": grpc.stream_stream_rpc_method_handler(
                stream,
                request_deserializer=pb.Envelope.FromString,
                response_serializer=pb.Envelope.SerializeToString,
            ),
        },
    )


def serve_grpcio() -> None:
    import grpc

    def execute(call: pb.ExecuteCall, context: Any) -> pb.ExecuteResult:
        return answer(call)

    def connect(requests: Any, context: Any) -> Any:
        yield from requests

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    server.add_generic_rpc_handlers((_handlers(execute, connect),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"port": port}), flush=True)
    server.wait_for_termination()


def serve_grpcio_aio() -> None:
    import grpc.aio

    async def execute(call: pb.ExecuteCall, context: Any) -> pb.ExecuteResult:
        return answer(call)

    async def connect(requests: Any, context: Any) -> Any:
        async for envelope in requests:
            yield envelope

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_handlers(execute, connect),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(json.dumps({"port": port}), flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


# -- the client -----------------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by every thread of process ``pid`` (Linux ``/proc``)."""
    ticks = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{thread}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def client(target: str, server_pid: int, calls: int, trips: int) -> dict[str, float]:
    """Rates per second, and the server's CPU microseconds per operation (``cpu_`` keys)."""
    import grpc.aio

    request = pb.ExecuteCall(task_id="bench", command="echo", args=["--fast"], input=b"\xa5" * 200)
    envelope = pb.Envelope(
        message_type=pb.MESSAGE_TYPE_STREAM_DATA,
        request_id=1,
        timestamp=pb.Timestamp(secs_since_epoch=1_700_000_000),
        payload=b'{"stream_id":"s","data":[1,2,3],"is_last":false,"sequence":1}',
        version=1,
    )
    async with grpc.aio.insecure_channel(target) as channel:
        execute = channel.unary_unary(
            EXECUTE_PATH,
            request_serializer=pb.ExecuteCall.SerializeToString,
            response_deserializer=pb.ExecuteResult.FromString,
        )
        connect = channel.stream_stream(
            CONNECT_PATH,
            request_serializer=pb.Envelope.SerializeToString,
            response_deserializer=pb.Envelope.FromString,
        )
        figures: dict[str, float] = {}

        def timed(name: str, count: int, start: float, cpu: float) -> None:
            figures[name] = count / (time.perf_counter() - start)
            figures[f"cpu_{name}"] = (process_cpu(server_pid) - cpu) / count * 1e6

        for _ in range(max(50, calls // 10)):  # warm up
            await execute(request)
        start, cpu = time.perf_counter(), process_cpu(server_pid)
        for _ in range(calls):
            await execute(request)
        timed("unary", calls, start, cpu)

        in_flight = 32
        start, cpu = time.perf_counter(), process_cpu(server_pid)
        for _ in range(calls // in_flight):
            await asyncio.gather(*[execute(request) for _ in range(in_flight)])
        timed("concurrent", calls // in_flight * in_flight, start, cpu)

        call = connect()
        for _ in range(max(50, trips // 10)):
            await call.write(envelope)
            await call.read()
        start, cpu = time.perf_counter(), process_cpu(server_pid)
        for _ in range(trips):
            await call.write(envelope)
            await call.read()
        timed("stream", trips, start, cpu)
        await call.done_writing()
        await call.read()
    return figures


# -- the parent -----------------------------------------------------------------------------------


def child(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-u", os.path.abspath(__file__), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def start_server(kind: str) -> tuple[subprocess.Popen[str], int]:
    process = child("--serve", kind)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the {kind} server did not start")
    return process, int(json.loads(line)["port"])


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(server: subprocess.Popen[str], port: int, calls: int, trips: int) -> dict[str, float]:
    process = child(
        "--client",
        f"127.0.0.1:{port}",
        "--pid",
        str(server.pid),
        "--calls",
        str(calls),
        "--trips",
        str(trips),
    )
    output, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"the client failed ({process.returncode})")
    return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]


def row(case: str, *cells: str) -> None:
    print((f"{case:<34}" + "".join(f"{cell:>12}" for cell in cells)).rstrip(), flush=True)


def run(quick: bool) -> None:
    calls, trips, rounds = (600, 1000, 2) if quick else (3000, 5000, 5)
    servers = {kind: start_server(kind) for kind in SERVERS}
    best: dict[str, dict[str, float]] = {kind: {} for kind in SERVERS}
    try:
        for number in range(rounds):
            # A different server goes first in each round: none always meets the same neighbours.
            order = SERVERS[number % len(SERVERS) :] + SERVERS[: number % len(SERVERS)]
            for kind in order:
                figures = measure(*servers[kind], calls, trips)
                for name, value in figures.items():
                    if name.startswith("cpu_"):  # the least CPU is the best
                        best[kind][name] = min(best[kind].get(name, value), value)
                    else:
                        best[kind][name] = max(best[kind].get(name, 0.0), value)
    finally:
        for process, _port in servers.values():
            stop(process)

    import grpc
    import h2

    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, grpcio {grpc.__version__},"
        f" h2 {h2.__version__}; best of {rounds} rounds, {calls} calls / {trips} round trips each"
    )
    print("client: grpc.aio in another process, one channel; servers: each in its own process")
    print()
    row("case (per second)", "grpcio", "grpcio aio", "ours", "ratio", "target")
    targets = {"unary": ">= 0.70", "concurrent": "-", "stream": ">= 1.00"}
    labels = {
        "unary": "Execute calls, one at a time",
        "concurrent": "Execute calls, 32 in flight",
        "stream": "Connect round trips",
    }
    for name in ("unary", "concurrent", "stream"):
        base, aio, ours = best["grpcio"][name], best["grpcio-aio"][name], best["ours"][name]
        row(labels[name], f"{base:,.0f}", f"{aio:,.0f}", f"{ours:,.0f}", f"{ours / base:.2f}", targets[name])
    print()
    row("server CPU per operation (us)", "grpcio", "grpcio aio", "ours", "ratio", "")
    for name in ("unary", "concurrent", "stream"):
        key = f"cpu_{name}"
        base, aio, ours = best["grpcio"][key], best["grpcio-aio"][key], best["ours"][key]
        row(labels[name], f"{base:,.0f}", f"{aio:,.0f}", f"{ours:,.0f}", f"{ours / base:.2f}", "")
    print()
    print("ratio = ours / grpcio (the thread-pool server): higher is better for rates,")
    print("lower for CPU (every thread of the server process, from /proc).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=3000, help=argparse.SUPPRESS)
    parser.add_argument("--trips", type=int, default=5000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "ours":
        serve_ours()
    elif args.serve == "grpcio":
        serve_grpcio()
    elif args.serve == "grpcio-aio":
        serve_grpcio_aio()
    elif args.client:
        print(json.dumps(asyncio.run(client(args.client, args.pid, args.calls, args.trips))), flush=True)
    else:
        run(args.quick)


if __name__ == "__main__":
    main()
