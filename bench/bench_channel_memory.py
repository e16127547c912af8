"""
Channel memory benchmark: server memory per idle authenticated connection.

This process (the spearlet) makes N ``UnixChannel``\\ s, each listening on
its own socket as the ``process`` strategy does; a child process dials every
one and authenticates with plain sockets (its memory is not counted).  Once
all N are connected and idle, the growth of this process's resident set
(RSS, after a garbage collection) is divided by N:

* *per instance*: channel + its listening port + its authenticated
  connection (what a spearlet pays per running instance);
* *per connection*: the growth from "N channels listening" to "N
  connections authenticated".

*Baseline*: the same N connections to one listening Unix socket served by a
bare ``twisted.internet.protocol.Protocol`` that keeps nothing: what Twisted
itself costs per idle connection.

Also prints the Python heap growth per connection (``tracemalloc``, in a
separate run, as it slows everything down).  Issue 4's target: at most
8 KiB of server RSS per idle authenticated connection at 5000 connections,
each with its channel.  No pass/fail: figures, not assertions.

Run: ``python bench/bench_channel_memory.py [--connections N]``
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

from spear_twisted.auth import SecretRegistry
from spear_twisted.channels.config import ChannelConfig
from spear_twisted.channels.unix import UnixChannel
from spear_twisted.wire import AuthRequest, RuntimeInstanceId, RuntimeType, SpearMessage

SECRET = "bench-secret-0123456789"
START_TIMEOUT = 300.0


def rss() -> int:
    """This process's resident set in bytes, after a full collection."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_main(paths_file: str) -> None:
    """Dial every path, send an AuthRequest per connection; hold them until stdin closes."""
    with open(paths_file) as listing:
        targets = [line.rstrip("\n").split("\t") for line in listing if line.strip()]
    sockets = []
    for instance_id, path in targets:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        if instance_id != "-":
            request = AuthRequest(instance_id, SECRET, "bench/1", "bench")
            sock.sendall(SpearMessage.auth_request(1, request).to_frame())
        sockets.append(sock)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    sys.stdin.read()
    for sock in sockets:
        sock.close()


class Child:
    """The dialling process; stopped by closing its stdin."""

    def __init__(self, paths_file: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", paths_file],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def ready(self) -> Deferred[None]:
        # Read its READY line in a thread: the reactor must keep accepting meanwhile.
        from twisted.internet.threads import deferToThread

        assert self.process.stdout is not None
        stdout = self.process.stdout
        return deferToThread(stdout.readline).addCallback(lambda _: None)

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _write_targets(directory: str, targets: list[tuple[str, str]]) -> str:
    path = os.path.join(directory, "targets.tsv")
    with open(path, "w") as listing:
        listing.writelines(f"{instance_id}\t{socket_path}\n" for instance_id, socket_path in targets)
    return path


@defer.inlineCallbacks
def ours(reactor: Any, count: int, trace: bool) -> Generator[Deferred[Any], Any, tuple[float, float]]:
    """Bytes per instance and per connection (RSS, or traced Python heap if ``trace``)."""
    scratch = tempfile.mkdtemp(prefix="spear-mem-")
    measure = (lambda: tracemalloc.get_traced_memory()[0]) if trace else rss
    channels: list[UnixChannel] = []
    child: Child | None = None
    try:
        registry = SecretRegistry()
        config = ChannelConfig(runtime_dir=os.path.join(scratch, "run"))
        before = measure()
        targets = []
        for n in range(count):
            instance_id = RuntimeInstanceId(RuntimeType.PROCESS, f"mem-{n}")
            registry.register(instance_id, SECRET)
            channel = UnixChannel(instance_id, config=config, validator=registry, reactor=reactor)
            address = yield channel.listen()
            channels.append(channel)
            targets.append((str(instance_id), address.path))
        listening = measure()
        child = Child(_write_targets(scratch, targets))
        connected = defer.gatherResults([channel.when_connected() for channel in channels])
        connected.addTimeout(START_TIMEOUT, reactor)
        yield connected
        yield child.ready()
        yield task.deferLater(reactor, 0.5, lambda: None)  # let the handshakes' writes drain
        after = measure()
        return (after - before) / count, (after - listening) / count
    finally:
        yield defer.DeferredList([channel.close() for channel in channels], consumeErrors=True)
        if child is not None:
            child.stop()
        shutil.rmtree(scratch, ignore_errors=True)


class _Idle(Protocol):
    pass


@defer.inlineCallbacks
def baseline(reactor: Any, count: int, trace: bool) -> Generator[Deferred[Any], Any, float]:
    """Bytes per idle bare Twisted connection."""
    scratch = tempfile.mkdtemp(prefix="spear-mem-")
    measure = (lambda: tracemalloc.get_traced_memory()[0]) if trace else rss
    made: list[Protocol] = []

    class Keeping(Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            protocol = _Idle()
            made.append(protocol)
            return protocol

    path = os.path.join(scratch, "bare.sock")
    port = reactor.listenUNIX(path, Keeping(), backlog=1024)
    child = Child(_write_targets(scratch, [("-", path)] * count))
    try:
        before = measure()
        while len(made) < count:
            yield task.deferLater(reactor, 0.05, lambda: None)
        yield child.ready()
        after = measure()
        return (after - before) / count
    finally:
        for protocol in made:
            if protocol.transport is not None:
                protocol.transport.loseConnection()
        child.stop()
        yield port.stopListening()
        shutil.rmtree(scratch, ignore_errors=True)


@defer.inlineCallbacks
def run_all(reactor: Any, count: int) -> Generator[Deferred[Any], Any, None]:
    print(f"python {sys.version.split()[0]}; {count} idle authenticated Unix connections")
    print()
    print(f"{'case':<44}{'baseline':>12}{'ours':>12}{'target':>12}")
    base = yield baseline(reactor, count, False)
    per_instance, per_connection = yield ours(reactor, count, False)
    print(f"{'RSS per connection':<44}{base:>10,.0f} B{per_connection:>10,.0f} B{'<= 8192 B':>12}")
    print(f"{'RSS per instance (channel+listener+conn.)':<44}{'':>12}{per_instance:>10,.0f} B{'':>12}")
    tracemalloc.start()
    base = yield baseline(reactor, count, True)
    per_instance, per_connection = yield ours(reactor, count, True)
    tracemalloc.stop()
    print(f"{'Python heap per connection':<44}{base:>10,.0f} B{per_connection:>10,.0f} B{'':>12}")
    print(f"{'Python heap per instance':<44}{'':>12}{per_instance:>10,.0f} B{'':>12}")
    print()
    print("baseline: a bare Twisted Protocol per connection, one listening socket")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--connections", type=int, default=5000, help="how many (default 5000)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child_main(options.child)
        return
    started = time.perf_counter()
    task.react(run_all, [options.connections])
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
