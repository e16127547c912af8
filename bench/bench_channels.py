"""
Channel benchmark: request/response over real sockets, against a bare
``Int32StringReceiver`` echo measured in the same run.

Cases, over Unix sockets and TCP on loopback:

* round trips per second for an ``ExecuteRequest`` carrying 200 bytes of
  ``input_data``, with 1 connection and with 100 connections (100 channels,
  each doing sequential round trips, all concurrently);
* MB/s of ``input_data`` with 1 MiB messages, and with 16 MiB messages
  (a ~192 MiB frame; the channels' ``max_message_size`` is raised to 256 MiB
  for that row): equal rates show that our reassembly, encoding and decoding
  stay linear in the size.

*Ours*: this process holds spearlet-side channels (``UnixChannel`` /
``TCPChannel``) and calls ``request_response``; another process runs one
agent-side channel per instance, in push mode (``set_receiver``: our leanest
agent side), that answers each ``ExecuteRequest`` with an
``ExecuteResponse`` (each frame and its envelope are decoded strictly, as
every message is; the body is left to handlers, which this benchmark does not
measure).  An info row under each 200 B row puts the agent SDK (under
Twisted, or asyncio with ``--sdk-framework asyncio``; a handler returning
the same response) in the agent process instead: what a real agent costs,
body decoding and handler machinery included.

*Baseline*: another process runs a bare ``Int32StringReceiver`` echo server;
this process sends a frame body of the same size as our request's frame
body and waits for the echo before sending the next.  For 1 MiB messages the
baseline sends 1 MiB bodies: the MB/s figures are of application data, so the
ratio includes the cost of the wire format (PROTOCOL.md encodes bytes as JSON
arrays of numbers, twice: 1 MiB of ``input_data`` is a ~12 MiB frame).  An
extra row echoes a body of our frame's size to separate transport from
encoding, and one shows the bare receiver with 16 MiB bodies, where its
buffer handling (``_unprocessed + data`` on every read) is quadratic.

The 200 B rows alternate baseline and ours for three rounds (one with
``--quick``) and print the median of each, so that load from elsewhere on a
shared machine weighs on both alike; under each, the CPU time (user and
system) per round trip of both processes, and its split between this process
(the caller) and the child (the agent, or the echo server), which other load
disturbs less than the rates.  The busier process sets the rate with many
connections.

Prints a table: case, baseline, ours, ratio (ours/baseline rate; higher is
better), target.  No pass/fail: figures, not assertions.

Run: ``python bench/bench_channels.py [--quick] [--transport unix|tcp]
[--connections N] [--small-only] [--no-sdk] [--sdk-framework twisted|asyncio]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import Int32StringReceiver

from spear_twisted.auth import SecretRegistry
from spear_twisted.channels.config import ChannelConfig
from spear_twisted.channels.tcp import TCPChannel
from spear_twisted.channels.unix import UnixChannel
from spear_twisted.errors import ConnectionClosed, ConnectionLost
from spear_twisted.wire import (
    AuthRequest,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionStatus,
    MessageType,
    Role,
    RuntimeInstanceId,
    RuntimeType,
    SpearMessage,
)

CHANNEL_TYPES = {"unix": UnixChannel, "tcp": TCPChannel}
MiB = 1024 * 1024
#: No bare Int32StringReceiver frame may be longer than this (its default is 99999).
MAX_BARE = 64 * MiB
#: Seconds the parent waits for a child to start or connect.
START_TIMEOUT = 60.0


def request_message(size: int) -> SpearMessage:
    """The benchmark's ``ExecuteRequest`` with ``size`` bytes of ``input_data``."""
    body = ExecuteRequest("bench", "echo", ("--fast",), {"LANG": "C"}, None, 30, input_data=b"\xa5" * size)
    return SpearMessage.execute_request(0, body)


# -- the child processes ---------------------------------------------------------------------------


class _StdinWatch(Protocol):
    """Stops the child's work when its stdin closes (the parent is done, or gone)."""

    def __init__(self, done: Deferred[None]) -> None:
        self.done = done

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


def _stdin_closed(reactor: Any) -> Deferred[None]:
    from twisted.internet import stdio

    done: Deferred[None] = Deferred()
    stdio.StandardIO(_StdinWatch(done), reactor=reactor)
    return done


_REPLY = ExecuteResponse("bench", ExecutionStatus.COMPLETED, "done", None, 0, 0)


def _serve_agent(channel: Any) -> None:
    """
    Answer every ExecuteRequest on ``channel`` as it arrives: push mode
    (``set_receiver``), our leanest agent side.
    """

    def answer(message: SpearMessage) -> None:
        if message.message_type is not MessageType.EXECUTE_REQUEST:
            return
        # The frame and its envelope are decoded strictly (the channel does
        # that); the body is the handler's business, and this benchmark
        # measures channels, not handlers, so it is answered unread.
        channel.send(SpearMessage.create(message.request_id, _REPLY)).addErrback(_lost)

    channel.set_receiver(answer)


def _lost(failure: Any) -> None:
    failure.trap(ConnectionClosed, ConnectionLost)


@defer.inlineCallbacks
def agent_child(reactor: Any, transport: str, kind: str) -> Generator[Deferred[Any], Any, None]:
    """
    The agent process: for each ``(instance id, address)`` of
    ``$SPEAR_BENCH_ADDRESSES`` an agent-side channel in push mode
    (``kind`` ``channel``) or an agent of the agent SDK (``sdk``), answering
    until stdin closes.
    """
    secret = os.environ["SPEAR_SECRET"]
    addresses = json.loads(os.environ["SPEAR_BENCH_ADDRESSES"])
    max_message_size = int(os.environ["SPEAR_BENCH_MAX_MESSAGE"])
    stdin_closed = _stdin_closed(reactor)
    if kind == "sdk":
        yield sdk_agents(reactor, transport, secret, addresses, max_message_size, stdin_closed)
        return
    config = ChannelConfig(max_message_size=max_message_size)
    channels = []
    for instance_id, address in addresses:
        channel = CHANNEL_TYPES[transport](
            RuntimeInstanceId.parse(instance_id),
            role=Role.AGENT,
            credentials=AuthRequest(instance_id, secret, "bench/1", "bench"),
            reactor=reactor,
            config=config,
        )
        channels.append(channel)
        if transport == "unix":
            yield channel.connect_to(address)
        else:
            host, port = address.rsplit(":", 1)
            yield channel.connect_to(host, int(port))
        _serve_agent(channel)
    yield stdin_closed
    yield defer.DeferredList([channel.close() for channel in channels], consumeErrors=True)


@defer.inlineCallbacks
def sdk_agents(
    reactor: Any,
    transport: str,
    secret: str,
    addresses: list[list[str]],
    max_message_size: int,
    stdin_closed: Deferred[None],
) -> Generator[Deferred[Any], Any, None]:
    """Agents of the agent SDK under Twisted, one per address, whose handler returns the reply."""
    import txaio

    txaio.use_twisted()
    from spear_twisted.agent.tx import start_agent

    agents = [
        start_agent(
            lambda request: _REPLY,
            _sdk_config(transport, instance_id, address, secret, max_message_size),
            reactor=reactor,
        )
        for instance_id, address in addresses
    ]
    yield stdin_closed
    finished = [agent.when_finished() for agent in agents]
    for agent in agents:
        agent.terminate("the benchmark is over")
    yield defer.DeferredList(finished, consumeErrors=True)


def _sdk_config(transport: str, instance_id: str, address: str, secret: str, max_message_size: int) -> Any:
    from spear_twisted.agent import AgentConfig

    where: dict[str, Any] = {"socket_path": address}
    if transport == "tcp":
        host, port = address.rsplit(":", 1)
        where = {"host": host, "port": int(port)}
    return AgentConfig(
        instance_id=instance_id,
        secret=secret,
        transport=transport,
        max_message_size=max_message_size,
        max_retries=0,
        **where,
    )


def sdk_asyncio_child(transport: str) -> None:
    """
    The agent process with agents of the agent SDK under asyncio (no
    Twisted reactor), one per address, answering until stdin closes.
    """
    import asyncio

    import txaio

    txaio.use_asyncio()
    from spear_twisted.agent.aio import start_agent

    secret = os.environ["SPEAR_SECRET"]
    addresses = json.loads(os.environ["SPEAR_BENCH_ADDRESSES"])
    max_message_size = int(os.environ["SPEAR_BENCH_MAX_MESSAGE"])

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stdin_closed = loop.create_future()

        class StdinWatch(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                if not stdin_closed.done():
                    stdin_closed.set_result(None)

        await loop.connect_read_pipe(StdinWatch, sys.stdin)
        agents = [
            start_agent(
                lambda request: _REPLY,
                _sdk_config(transport, instance_id, address, secret, max_message_size),
                loop=loop,
            )
            for instance_id, address in addresses
        ]
        await stdin_closed
        finished = [agent.when_finished() for agent in agents]
        for agent in agents:
            agent.terminate("the benchmark is over")
        await asyncio.gather(*finished, return_exceptions=True)

    asyncio.run(serve())


class BareEcho(Int32StringReceiver):
    MAX_LENGTH = MAX_BARE

    def stringReceived(self, string: bytes) -> None:
        self.sendString(string)


@defer.inlineCallbacks
def echo_child(reactor: Any, transport: str, path: str | None) -> Generator[Deferred[Any], Any, None]:
    """The baseline process: a bare Int32StringReceiver echo server until stdin closes."""
    factory = Factory.forProtocol(BareEcho)
    if transport == "unix":
        assert path is not None
        port = reactor.listenUNIX(path, factory, backlog=1024)
        sys.stdout.write("READY 0\n")
    else:
        port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
        sys.stdout.write(f"READY {port.getHost().port}\n")
    sys.stdout.flush()
    yield _stdin_closed(reactor)
    yield port.stopListening()


# -- children and scratch directories ---------------------------------------------------------------


_scratch: list[str] = []


def scratch_dir() -> str:
    """A fresh temporary directory, removed by :func:`remove_scratch` if not before."""
    path = tempfile.mkdtemp(prefix="spear-bench-")
    _scratch.append(path)
    return path


def remove_scratch() -> None:
    while _scratch:
        shutil.rmtree(_scratch.pop(), ignore_errors=True)


class Child:
    """A child process of this script; stopped by closing its stdin, then firmly."""

    live: list[Child] = []

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", os.path.abspath(__file__), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        Child.live.append(self)

    def read_ready(self) -> str:
        """The child's ``READY <value>`` line (blocking: the child needs nothing from us to print it)."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"child did not start (exit status {self.process.returncode}): {line!r}")
        return line.split(" ", 1)[1]

    def cpu_seconds(self) -> float:
        """CPU (user and system) the child has used so far, from ``/proc``."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"child exited with status {self.process.returncode}")

    def stop(self, grace: float = 10.0) -> None:
        if self in Child.live:
            Child.live.remove(self)
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def _signal(self, number: int) -> None:
        try:
            os.killpg(self.process.pid, number)
        except ProcessLookupError:
            pass

    @classmethod
    def stop_all(cls) -> None:
        for child in list(cls.live):
            child.stop(grace=2.0)


# -- measuring ------------------------------------------------------------------------------------------


@defer.inlineCallbacks
def measure_rate(
    reactor: Any,
    operations: list[Callable[[], Deferred[Any]]],
    *,
    warmup: float,
    duration: float,
    min_count: int = 2,
    child: Child | None = None,
) -> Generator[Deferred[Any], Any, tuple[float, tuple[float, float]]]:
    """
    Operations completed per second, each of ``operations`` running in its
    own sequential loop, all loops concurrently, and the CPU seconds per
    operation of this process and of ``child``.  After ``warmup`` seconds the completions
    are timed for at least ``duration`` seconds and at least ``min_count``
    completions; the rate is completions over the time between the first and
    the last of them.
    """
    state: dict[str, Any] = {"stop": False, "times": None, "error": None}

    @defer.inlineCallbacks
    def loop(operation: Callable[[], Deferred[Any]]) -> Generator[Deferred[Any], Any, None]:
        while not state["stop"]:
            yield operation()
            if state["times"] is not None:
                state["times"].append(time.perf_counter())

    def failed(failure: Any) -> None:
        if state["error"] is None:
            state["error"] = failure
        state["stop"] = True

    loops = [loop(operation).addErrback(failed) for operation in operations]

    def check() -> None:
        if state["error"] is not None:
            state["error"].raiseException()

    yield task.deferLater(reactor, warmup, check)
    state["times"] = times = []
    started = time.perf_counter()
    own_started = time.process_time()
    child_started = 0.0 if child is None else child.cpu_seconds()
    yield task.deferLater(reactor, duration, check)
    while len(times) < min_count + 1 or time.perf_counter() - started < duration:
        yield task.deferLater(reactor, 0.01, check)
    cpu_per_operation = (
        (time.process_time() - own_started) / len(times),
        (0.0 if child is None else child.cpu_seconds() - child_started) / len(times),
    )
    state["stop"] = True
    yield defer.DeferredList(loops)
    check()
    return (len(times) - 1) / (times[-1] - times[0]), cpu_per_operation


class BareClient(Int32StringReceiver):
    """The baseline's client: one outstanding echo at a time."""

    MAX_LENGTH = MAX_BARE

    def __init__(self) -> None:
        self.waiting: Deferred[bytes] | None = None
        self.lost: Deferred[None] = Deferred()

    def round_trip(self, body: bytes) -> Deferred[bytes]:
        self.waiting = Deferred()
        self.sendString(body)
        return self.waiting

    def stringReceived(self, string: bytes) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.callback(string)

    def connectionLost(self, reason: Any = None) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.errback(reason)
        self.lost.callback(None)


@defer.inlineCallbacks
def bare_echo(
    reactor: Any, transport: str, connections: int, body_size: int, timing: dict[str, float]
) -> Generator[Deferred[Any], Any, tuple[float, float]]:
    """
    Echoes per second of ``body_size``-byte bodies through the bare echo
    child, and the CPU seconds per echo of both processes.
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint

    scratch = scratch_dir()
    path = os.path.join(scratch, "echo.sock")
    child = Child(["--child", "echo", transport, path])
    clients: list[BareClient] = []
    try:
        port = int(child.read_ready())
        for _ in range(connections):
            if transport == "unix":
                endpoint: Any = UNIXClientEndpoint(reactor, path)
            else:
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
            clients.append((yield endpoint.connect(Factory.forProtocol(BareClient))))
        body = b"\xa5" * body_size
        operations = [lambda client=client: client.round_trip(body) for client in clients]
        return (yield measure_rate(reactor, operations, child=child, **timing))
    finally:
        for client in clients:
            client.transport.loseConnection()
        yield defer.DeferredList([client.lost for client in clients])
        child.stop()
        shutil.rmtree(scratch, ignore_errors=True)


@defer.inlineCallbacks
def ours(
    reactor: Any,
    transport: str,
    connections: int,
    input_size: int,
    timing: dict[str, float],
    max_message_size: int = 64 * MiB,
    agent: str = "channel",
) -> Generator[Deferred[Any], Any, tuple[float, float, tuple[float, float]]]:
    """
    ``request_response`` round trips per second with ``input_size`` bytes of
    ``input_data``, the median latency in seconds, and the CPU seconds per
    round trip of both processes.
    """
    import secrets as secrets_module

    secret = secrets_module.token_urlsafe(32)
    registry = SecretRegistry()
    runtime_dir = scratch_dir()
    config = ChannelConfig(
        runtime_dir=os.path.join(runtime_dir, "run"), request_timeout=300, max_message_size=max_message_size
    )
    channels: list[Any] = []
    addresses = []
    child: Child | None = None
    try:
        for n in range(connections):
            instance_id = RuntimeInstanceId(RuntimeType.PROCESS, f"bench-{n}")
            registry.register(instance_id, secret)
            channel = CHANNEL_TYPES[transport](
                instance_id, config=config, validator=registry, reactor=reactor
            )
            channels.append(channel)
            address = yield channel.listen()
            addresses.append([str(instance_id), address.path or f"{address.host}:{address.port}"])
        child = Child(
            ["--child", "agent", transport, agent],
            env={
                "SPEAR_SECRET": secret,
                "SPEAR_BENCH_ADDRESSES": json.dumps(addresses),
                "SPEAR_BENCH_MAX_MESSAGE": str(max_message_size),
            },
        )
        connected = defer.gatherResults([channel.when_connected() for channel in channels])
        connected.addTimeout(START_TIMEOUT, reactor)
        yield connected
        message = request_message(input_size)
        operations = [lambda channel=channel: channel.request_response(message) for channel in channels]
        rate, cpu = yield measure_rate(reactor, operations, child=child, **timing)
        p50s = sorted(channel.get_stats().latency_p50 for channel in channels)
        return rate, p50s[len(p50s) // 2], cpu
    finally:
        # The agents end first (as a stopping instance does), then the channels.
        if child is not None:
            child.stop()
        yield defer.DeferredList([channel.close() for channel in channels], consumeErrors=True)
        shutil.rmtree(runtime_dir, ignore_errors=True)


# -- the table ----------------------------------------------------------------------------------------------


def _row(case: str, base: str, mine: str, ratio: str, target: str) -> None:
    print(f"{case:<40}{base:>14}{mine:>14}{ratio:>8}{target:>10}", flush=True)


def _median_split(runs: list[Any]) -> tuple[float, float]:
    """The CPU split of the run whose total CPU per round trip is the median."""
    splits = [run[-1] for run in runs]
    middle = statistics.median(sum(split) for split in splits)
    return min(splits, key=lambda split: abs(sum(split) - middle))


def _cpu_text(cpu: tuple[float, float]) -> str:
    own, child = cpu
    return f"{(own + child) * 1e6:.0f} us ({own * 1e6:.0f} + {child * 1e6:.0f})"


@defer.inlineCallbacks
def run_all(
    reactor: Any,
    quick: bool,
    transports: list[str],
    connection_counts: list[int],
    small_only: bool,
    sdk_agent: str | None,
) -> Generator[Deferred[Any], Any, None]:
    fast = {"warmup": 0.2, "duration": 0.75} if quick else {"warmup": 0.5, "duration": 1.5}
    rounds = 1 if quick else 3
    slow = (
        {"warmup": 0.5, "duration": 1.5, "min_count": 3}
        if quick
        else {"warmup": 1.0, "duration": 5.0, "min_count": 5}
    )
    huge_timing = {"warmup": 0.5, "duration": 3.0, "min_count": 2}
    small = request_message(200).to_frame()
    large = request_message(MiB).to_frame()
    reply = SpearMessage.execute_response(1, ExecuteResponse("bench", ExecutionStatus.COMPLETED, "200 bytes"))
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {'quick' if quick else 'full'} run;"
        f" load average at start {os.getloadavg()[0]:.2f}"
    )
    print(
        f"ExecuteRequest frame: {len(small)} B for 200 B of input_data, {len(large) / MiB:.1f} MiB for 1 MiB;"
        f" ExecuteResponse frame ~{len(reply.to_frame())} B"
    )
    print("baseline: bare Int32StringReceiver echo in another process, body = our request frame body")
    print(f"200 B rows: median of {rounds} alternating round{'s' if rounds > 1 else ''} of baseline and ours")
    print(
        "rt/s = round trips per second (summed over connections); MB/s = 10^6 bytes of input_data per second"
    )
    print()
    _row("case", "baseline", "ours", "ratio", "target")
    for transport in transports:
        for connections in connection_counts:
            # Alternating rounds, median of each: a load that comes and goes
            # on a shared machine then weighs on both sides alike.
            runs: dict[str, list[Any]] = {"baseline": [], "ours": [], "sdk": []}
            for _ in range(rounds):
                runs["baseline"].append(
                    (yield bare_echo(reactor, transport, connections, len(small) - 4, fast))
                )
                runs["ours"].append((yield ours(reactor, transport, connections, 200, fast)))
                if sdk_agent is not None:
                    runs["sdk"].append(
                        (yield ours(reactor, transport, connections, 200, fast, agent=sdk_agent))
                    )
            base = statistics.median(run[0] for run in runs["baseline"])
            case = f"{transport} 200 B, {connections} conn{'s' if connections > 1 else ''}"
            for kind in ("ours", "sdk"):
                if not runs[kind]:
                    continue
                mine = statistics.median(run[0] for run in runs[kind])
                _row(
                    case
                    if kind == "ours"
                    else f"{'':<6}agent SDK as the agent{' (asyncio)' if sdk_agent == 'sdk-asyncio' else ''}",
                    f"{base:,.0f} rt/s" if kind == "ours" else "",
                    f"{mine:,.0f} rt/s",
                    f"{mine / base:.2f}x",
                    ">= 0.6x" if kind == "ours" else "(info)",
                )
                p50 = statistics.median(run[1] for run in runs[kind])
                split = _cpu_text(_median_split(runs[kind]))
                print(f"{'':<6}(CPU per round trip, caller + agent: {split}; p50 latency {p50 * 1e3:.2f} ms)")
            print(
                f"{'':<6}(baseline CPU per round trip: {_cpu_text(_median_split(runs['baseline']))})",
                flush=True,
            )
        if small_only:
            continue
        base, _ = yield bare_echo(reactor, transport, 1, MiB, slow)
        mine, _, _ = yield ours(reactor, transport, 1, MiB, slow)
        _row(
            f"{transport} 1 MiB, 1 conn",
            f"{base * MiB / 1e6:,.1f} MB/s",
            f"{mine * MiB / 1e6:,.1f} MB/s",
            f"{mine / base:.3f}x",
            "-",
        )
        mine, _, _ = yield ours(reactor, transport, 1, 16 * MiB, huge_timing, max_message_size=256 * MiB)
        _row(f"{transport} 16 MiB, 1 conn", "", f"{mine * 16 * MiB / 1e6:,.1f} MB/s", "", "(linear)")
        wire, _ = yield bare_echo(reactor, transport, 1, len(large) - 4, slow)
        _row(
            f"{transport} bare echo, {(len(large) - 4) / MiB:.1f} MiB body",
            f"{wire * (len(large) - 4) / 1e6:,.1f} MB/s",
            "",
            "",
            "(info)",
        )
        huge, _ = yield bare_echo(reactor, transport, 1, 16 * MiB, slow)
        _row(f"{transport} bare echo, 16 MiB body", f"{huge * 16 * MiB / 1e6:,.1f} MB/s", "", "", "(note)")
    print()
    print(f"load average at end {os.getloadavg()[0]:.2f} (the other work of a shared machine)")
    print("ratio = ours/baseline rate (higher is better); target applies to the 200 B rows.")
    print("16 MiB (ours): the same MB/s as 1 MiB means cost linear in the size.")
    print("16 MiB: Int32StringReceiver joins its whole buffer on every read (quadratic in the frame size).")


def _log_warnings_to_stderr() -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])], redirectStandardIO=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    parser.add_argument(
        "--transport", action="append", choices=sorted(CHANNEL_TYPES), help="only this transport (repeatable)"
    )
    parser.add_argument(
        "--connections",
        action="append",
        type=int,
        help="200 B rows with this many connections only (repeatable)",
    )
    parser.add_argument("--small-only", action="store_true", help="only the 200 B rows")
    parser.add_argument(
        "--no-sdk", action="store_true", help="without the rows of the agent SDK as the agent"
    )
    parser.add_argument(
        "--sdk-framework",
        choices=("twisted", "asyncio"),
        default="twisted",
        help="the agent SDK's framework in its rows (default twisted)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        role, transport, *rest = options.child
        if role == "agent" and rest[0] == "sdk-asyncio":
            sdk_asyncio_child(transport)
            return
        _log_warnings_to_stderr()
        if role == "agent":
            task.react(agent_child, [transport, rest[0]])
        else:
            task.react(echo_child, [transport, rest[0] if rest else None])
        return
    try:
        task.react(
            run_all,
            [
                options.quick,
                options.transport or ["unix", "tcp"],
                options.connections or [1, 100],
                options.small_only,
                None if options.no_sdk else ("sdk" if options.sdk_framework == "twisted" else "sdk-asyncio"),
            ],
        )
    finally:
        Child.stop_all()
        remove_scratch()


if __name__ == "__main__":
    main()
