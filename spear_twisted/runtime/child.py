"""
:class:`InstanceProcessProtocol`: one instance process as Twisted sees it.

Its stdin is closed (control traffic goes over the channel, never the
pipes); stdout and stderr become log lines tagged with the instance id; the
exit is noticed when the process exits, and the reason is worded once its
last output has been read.
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from spear_twisted.runtime.model import ExitInfo, TaskInstance
from spear_twisted.runtime.output import LINE_LIMIT, LineSplitter
from spear_twisted.runtime.reaping import ProcessGroups
from spear_twisted.runtime.supervision import describe_exit

#: Output lines kept to explain an exit.
TAIL_LINES = 20

#: Seconds after the exit to wait for the pipes to close (the last output)
#: before the exit is reported anyway and our ends of the pipes are closed.
OUTPUT_DRAIN_TIMEOUT = 1.0


class InstanceProcessProtocol(ProcessProtocol):
    """
    One instance process; see the module docstring.

    ``on_exit`` is called with the :class:`ExitInfo` once the process has
    exited and its output is read (or ``drain_timeout`` passed).
    """

    log = Logger()

    def __init__(
        self,
        instance: TaskInstance,
        *,
        reactor: Any,
        groups: ProcessGroups,
        secret: str,
        on_exit: Callable[[InstanceProcessProtocol, ExitInfo], object],
        line_limit: int = LINE_LIMIT,
        drain_timeout: float = OUTPUT_DRAIN_TIMEOUT,
    ) -> None:
        self.instance = instance
        self.reactor = reactor
        self.groups = groups
        self.on_exit = on_exit
        self.drain_timeout = drain_timeout
        self.exit_info: ExitInfo | None = None
        self.pid: int | None = None
        self.killed_by_us = False
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        # The secret is kept only to mask it, should the program print it.
        self.stdout = LineSplitter(self._emitter("stdout"), limit=line_limit, redact=(secret,))
        self.stderr = LineSplitter(self._emitter("stderr"), limit=line_limit, redact=(secret,))
        self._stop_watching: Callable[[], None] | None = None
        self._status: tuple[int | None, int | None] | None = None
        self._drain_timer: Any = None
        self._ended = False
        self._exit_waiters = Waiters()
        self._report_waiters = Waiters()
        self._end_waiters = Waiters()

    def _emitter(self, stream: str) -> Callable[[str], None]:
        instance_id = str(self.instance.instance_id)
        tail = self.tail

        def emit(line: str) -> None:
            tail.append(line)
            self.log.info(
                "[{instance_id}] {stream}: {line}", instance_id=instance_id, stream=stream, line=line
            )

        return emit

    @property
    def running(self) -> bool:
        """Whether the process has been spawned and has not exited."""
        return self.pid is not None and self._status is None

    # -- Twisted callbacks ---------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.pid = transport.pid
        transport.closeStdin()
        self._stop_watching = self.groups.watch_exit(self.reactor, transport.pid, transport.reapProcess)

    def outReceived(self, data: bytes) -> None:
        self.stdout.feed(data)

    def errReceived(self, data: bytes) -> None:
        self.stderr.feed(data)

    def processExited(self, reason: Failure) -> None:
        if self._stop_watching is not None:
            self._stop_watching()
            self._stop_watching = None
        value = reason.value
        self._status = (getattr(value, "exitCode", None), getattr(value, "signal", None))
        # What the instance left in its group dies with it: no orphans.
        if self.pid is not None:
            self.groups.signal(self.pid, signal.SIGKILL)
        self._exit_waiters.fire()
        if self._ended:
            self._report()
        else:
            self._drain_timer = self.reactor.callLater(self.drain_timeout, self._drain_timed_out)

    def processEnded(self, reason: Failure) -> None:
        self._ended = True
        self.stdout.flush()
        self.stderr.flush()
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
            self._report()
        self._end_waiters.fire()

    def _drain_timed_out(self) -> None:
        # Something outside the group (a grandchild that started its own
        # session) holds the pipes: report the exit now, and close our ends
        # so that no descriptor is left behind.
        self._drain_timer = None
        self._report()
        transport: Any = self.transport
        transport.loseConnection()

    def _report(self) -> None:
        if self.exit_info is not None or self._status is None:
            return
        self.stdout.flush()
        self.stderr.flush()
        exit_code, number = self._status
        self.exit_info = describe_exit(
            exit_code,
            number,
            limits=self.instance.limits,
            output_tail=self.tail,
            killed_by_us=self.killed_by_us,
        )
        self._report_waiters.fire()
        self.on_exit(self, self.exit_info)

    def when_exited(self) -> Deferred[None]:
        """Fires as soon as the process has exited (before its output is drained)."""
        return self._exit_waiters.wait()

    def when_reported(self) -> Deferred[None]:
        """Fires once the exit has been reported to ``on_exit``."""
        return self._report_waiters.wait()

    def when_ended(self) -> Deferred[None]:
        """Fires once every pipe of the process is closed."""
        return self._end_waiters.wait()

    # -- control -----------------------------------------------------------------------------

    def signal_group(self, number: int) -> bool:
        """Send ``number`` to the instance's process group; False if it is gone."""
        if self.pid is None:
            return False
        if number in (signal.SIGKILL, signal.SIGTERM):
            self.killed_by_us = True
        if self.groups.signal(self.pid, number):
            return True
        # No group yet: the launcher has not reached setsid.  The process
        # itself is still our unreaped child, so its pid is safe to signal.
        return self.running and self.groups.signal_process(self.pid, number)


class Waiters:
    """Deferreds waiting for one thing that happens once."""

    def __init__(self) -> None:
        self.happened = False
        self._waiting: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        if self.happened:
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        return waiter

    def fire(self) -> None:
        self.happened = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)
