"""
Running real ``twistd`` processes in tests: the spearlet as operators run
it, its output watched line by line, its end awaited.

Every child imports this worktree's source (``PYTHONPATH``); waits are for
lines and exits, with generous limits for a loaded machine.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable
from typing import Any

import psutil
from twisted.internet import defer, protocol, task
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred

from spear_twisted.wire import RuntimeInstanceId
from tests.runtime_support import ROOT, with_timeout

#: The twistd of this Python's environment.
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

#: Seconds any one step may take on a loaded machine.
STEP = 60.0

_SPAWNED = re.compile(r"Spawned instance (\S+) \(pid (\d+)")


def child_environment(**extra: str) -> dict[str, str]:
    """The environment of a twistd child: this source first on the path."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": ROOT, "LANG": "C.UTF-8"}
    env.update(extra)
    return env


class Output:
    """Lines of text as they come, and Deferreds that fire when one matches."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._waiting: list[tuple[Callable[[str], bool], Deferred[str]]] = []
        self._partial = ""

    def feed(self, data: str) -> None:
        self._partial += data
        *complete, self._partial = self._partial.split("\n")
        for line in complete:
            self.lines.append(line)
            waiting, self._waiting = self._waiting, []
            for condition, waiter in waiting:
                if condition(line):
                    waiter.callback(line)
                else:
                    self._waiting.append((condition, waiter))

    def when(self, text: str, count: int = 1) -> Deferred[str]:
        """Fires with the ``count``-th line (seen or to come) containing ``text``."""
        seen = [line for line in self.lines if text in line]
        if len(seen) >= count:
            return defer.succeed(seen[count - 1])
        remaining = [count - len(seen)]
        waiter: Deferred[str] = Deferred()

        def condition(line: str) -> bool:
            if text in line:
                remaining[0] -= 1
            return remaining[0] <= 0

        self._waiting.append((condition, waiter))
        return waiter

    def text(self) -> str:
        return "\n".join(self.lines) + self._partial

    def spawned(self) -> dict[RuntimeInstanceId, list[int]]:
        """The pids spawned for each instance, in order."""
        found: dict[RuntimeInstanceId, list[int]] = {}
        for line in self.lines:
            match = _SPAWNED.search(line)
            if match:
                found.setdefault(RuntimeInstanceId.parse(match.group(1)), []).append(int(match.group(2)))
        return found


class Twistd(protocol.ProcessProtocol):
    """One ``twistd`` child; its stdout and stderr go to one :class:`Output`."""

    def __init__(self) -> None:
        self.output = Output()
        #: Fires with ``(exit code, signal)`` once the process has ended.
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output.feed(data.decode("utf-8", "replace"))

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback((reason.value.exitCode, getattr(reason.value, "signal", None)))

    def signal(self, name: str) -> None:
        self.transport.signalProcess(name)  # type: ignore[union-attr]


def run_twistd(test: Any, *argv: str, cwd: str | None = None, **env: str) -> Twistd:
    """Start ``twistd argv...``; it is killed, if still running, when ``test`` ends."""
    child = Twistd()
    real_reactor.spawnProcess(
        child, TWISTD, [TWISTD, *argv], env=child_environment(**env), path=cwd or make_dir(test)
    )

    def kill() -> Deferred[Any] | None:
        if child.ended.called:
            return None
        child.signal("KILL")
        return child.ended

    test.addCleanup(kill)
    return child


def make_dir(test: Any) -> str:
    path = os.path.abspath(test.mktemp())
    os.makedirs(path)
    return path


def wait_for(condition: Callable[[], bool], what: str, seconds: float = STEP) -> Deferred[None]:
    """Fires once ``condition()`` holds, checked every 50 ms (for files another process writes)."""
    done: Deferred[None] = Deferred()

    def check() -> None:
        if condition():
            loop.stop()

    loop = task.LoopingCall(check)
    loop.start(0.05).addCallbacks(lambda _: done.callback(None), done.errback)

    def stop_loop(result: Any) -> Any:
        if loop.running:
            loop.stop()
        return result

    return with_timeout(done, seconds, what).addBoth(stop_loop)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill(pid: int, number: int = signal.SIGKILL) -> None:
    os.kill(pid, number)
