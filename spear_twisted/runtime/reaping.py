"""
Noticing that a child exited, and making sure its process group is gone.

A child's exit is noticed through a pidfd in the reactor (readable once the
process exits), whether or not the reactor handles SIGCHLD: an application
that runs the reactor with ``installSignalHandlers=False`` still has its
instances reaped, and a grandchild that holds the child's stdout open does
not hide the exit (Twisted reaps on SIGCHLD, or when every pipe is closed).

An instance leads its own process group; when its leader exits, what it
left in the group is killed, and :func:`wait_group_gone` waits until no
member is alive.  Killed grandchildren are orphans: the system's init reaps
them, or this process if :func:`become_subreaper` made it their reaper, in
which case :meth:`ProcessGroups.reap` collects them.  A subreaper also
adopts the orphans of every other descendant (a grandchild that left its
instance's group, a program that daemonizes), whenever they end:
:meth:`ProcessGroups.reap_orphans` collects those.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

import psutil
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """
    Make this process the reaper of its descendants' orphans
    (``PR_SET_CHILD_SUBREAPER``); False where that is not possible.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


@implementer(IReadDescriptor)
class _PidfdWatcher:
    """Calls ``on_exit`` once when the process behind ``pidfd`` exits."""

    def __init__(self, reactor: Any, pidfd: int, on_exit: Callable[[], object]) -> None:
        self.reactor = reactor
        self.pidfd = pidfd
        self.on_exit = on_exit

    def fileno(self) -> int:
        return self.pidfd

    def doRead(self) -> None:
        self.stop()
        self.on_exit()

    def stop(self) -> None:
        if self.pidfd >= 0:
            self.reactor.removeReader(self)
            os.close(self.pidfd)
            self.pidfd = -1

    def connectionLost(self, reason: Failure) -> None:
        self.stop()

    def logPrefix(self) -> str:
        return "PidfdWatcher"


class ProcessGroups:
    """
    Signals, watches and inspects processes and their groups.

    The runtime does all of this through one object so that its unit tests
    can drive a memory reactor whose processes are not real.
    """

    #: Seconds between polls where no pidfd can watch a process.
    poll_interval = 0.5

    def watch_exit(self, reactor: Any, pid: int, on_exit: Callable[[], object]) -> Callable[[], None]:
        """
        Call ``on_exit()`` soon after ``pid`` exits (``on_exit`` reaps it);
        returns a function that stops watching.
        """
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            # Already gone (and perhaps reaped): let the caller reap now.
            reactor.callLater(0, on_exit)
            return lambda: None
        except (AttributeError, OSError):
            return self._poll(reactor, on_exit)
        watcher = _PidfdWatcher(reactor, pidfd, on_exit)
        reactor.addReader(watcher)
        return watcher.stop

    def _poll(self, reactor: IReactorTime, on_exit: Callable[[], object]) -> Callable[[], None]:
        # No pidfds (a kernel before 5.3): reap periodically; reaping a
        # running process is a no-op.
        state: dict[str, Any] = {}

        def tick() -> None:
            on_exit()
            state["call"] = reactor.callLater(self.poll_interval, tick)

        def stop() -> None:
            call = state.pop("call", None)
            if call is not None and call.active():
                call.cancel()

        state["call"] = reactor.callLater(self.poll_interval, tick)
        return stop

    def signal(self, pgid: int, number: int) -> bool:
        """Send ``number`` to process group ``pgid``; False if there is no such group."""
        try:
            os.killpg(pgid, number)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def signal_process(self, pid: int, number: int) -> bool:
        """
        Send ``number`` to the single process ``pid``; False if it is gone.
        Only for a child not yet reaped (so that its pid cannot have been reused).
        """
        try:
            os.kill(pid, number)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def alive(self, pgid: int) -> bool:
        """Whether any member of group ``pgid`` is alive (zombies are not)."""
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except OSError as e:
            if e.errno != errno.EPERM:
                raise
        for pid in psutil.pids():
            try:
                if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return True
            except (OSError, psutil.Error):
                continue
        return False

    def reap(self, pgid: int) -> int:
        """
        Reap this process's exited children in group ``pgid`` (orphans it
        adopted as a subreaper); how many.  Only call it once the group's
        leader has been reaped, so that nothing Twisted waits for is taken.
        """
        reaped = 0
        while True:
            try:
                pid, _status = os.waitpid(-pgid, os.WNOHANG)
            except ChildProcessError:
                return reaped
            if pid == 0:
                return reaped
            reaped += 1

    #: Seconds between collections of adopted orphans (see :meth:`reap_orphans`).
    orphan_interval = 5.0

    def reap_orphans(self) -> int:
        """
        Reap the exited children of this process that nobody else waits
        for: orphans it adopted as a subreaper.  A child that Twisted
        spawned (it reaps its own) or that is in this process's own group
        (a ``subprocess`` child of the application, which waits for it) is
        left alone.  How many were reaped.
        """
        from twisted.internet.process import reapProcessHandlers

        own_group = os.getpgrp()
        reaped = 0
        for child in psutil.Process().children():
            pid = child.pid
            try:
                if child.status() != psutil.STATUS_ZOMBIE or pid in reapProcessHandlers:
                    continue
                if os.getpgid(pid) == own_group:
                    continue
                done, _status = os.waitpid(pid, os.WNOHANG)
            except (psutil.Error, OSError):
                continue  # gone meanwhile, or reaped by someone else
            if done:
                reaped += 1
        return reaped


def wait_group_gone(
    reactor: IReactorTime, groups: ProcessGroups, pgid: int, timeout: float, interval: float = 0.02
) -> Deferred[bool]:
    """
    Fires True once group ``pgid`` has no live member (reaping the orphans
    this process adopted), False if ``timeout`` seconds pass first.
    """
    groups.reap(pgid)
    if not groups.alive(pgid):
        return defer.succeed(True)
    done: Deferred[bool] = Deferred()
    deadline = reactor.seconds() + timeout

    def check() -> None:
        groups.reap(pgid)
        if not groups.alive(pgid):
            done.callback(True)
        elif reactor.seconds() >= deadline:
            done.callback(False)
        else:
            reactor.callLater(interval, check)

    reactor.callLater(interval, check)
    return done
