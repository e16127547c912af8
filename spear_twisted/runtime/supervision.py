"""Restart backoff, crash-loop detection and exit descriptions."""

from __future__ import annotations

import signal as signals
from collections import deque
from collections.abc import Iterable

import attrs

from spear_twisted.runtime.model import ExitInfo, ResourceLimits
from spear_twisted.settings import setting

_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")


@attrs.frozen
class BackoffPolicy:
    """
    When a dead instance is restarted.

    An instance that dies young waits ``min_delay``, then twice as long after
    each further young death, up to ``max_delay``; one that lived at least
    ``stable_after`` seconds restarts at once and the delay starts over.
    ``crash_loop_restarts`` restarts within ``crash_loop_window`` seconds is a
    crash loop: restarting stops.
    """

    __spear_settings__ = True

    min_delay: float = setting(1.0, doc="Seconds before restarting an instance that died young.")
    max_delay: float = setting(60.0, doc="Longest wait between restarts; the delay doubles up to it.")
    stable_after: float = setting(
        60.0, doc="Seconds an instance must live for its next death to restart at once and reset the delay."
    )
    crash_loop_restarts: int = setting(
        5, doc="Restarts within ``crash_loop_window`` that make a crash loop: the instance goes to Error."
    )
    crash_loop_window: float = setting(60.0, doc="Seconds over which restarts are counted.")


class RestartTracker:
    """The restart history of one instance under a :class:`BackoffPolicy`."""

    def __init__(self, policy: BackoffPolicy) -> None:
        self.policy = policy
        self._delay = policy.min_delay
        self._restarts: deque[float] = deque()

    def next_delay(self, now: float, lived: float) -> float | None:
        """Seconds to wait before restarting, or ``None`` in a crash loop."""
        policy = self.policy
        while self._restarts and now - self._restarts[0] > policy.crash_loop_window:
            self._restarts.popleft()
        if len(self._restarts) >= policy.crash_loop_restarts:
            return None
        self._restarts.append(now)
        if lived >= policy.stable_after:
            self._delay = policy.min_delay
            return 0.0
        delay = self._delay
        self._delay = min(self._delay * 2, policy.max_delay)
        return delay

    @property
    def recent_restarts(self) -> int:
        return len(self._restarts)


def describe_exit(
    exit_code: int | None,
    signal: int | None,
    *,
    limits: ResourceLimits,
    stderr_tail: Iterable[str] = (),
    killed_by_us: bool = False,
) -> ExitInfo:
    """How a process ended, in words an operator can act on."""
    tail = list(stderr_tail)
    if signal is not None:
        try:
            name = signals.Signals(signal).name
        except ValueError:
            name = f"signal {signal}"
        reason = f"killed by {name}"
        if signal == signals.SIGXCPU and limits.max_cpu_seconds is not None:
            reason += f" (CPU time limit of {limits.max_cpu_seconds} s exceeded)"
        elif signal == signals.SIGKILL and not killed_by_us:
            reason += " (not sent by the spearlet: perhaps the kernel's out-of-memory killer)"
    else:
        reason = f"exited with code {exit_code}"
    if exit_code not in (0, None) or signal is not None:
        text = "\n".join(tail)
        if limits.max_memory_bytes is not None and any(hint in text for hint in _MEMORY_HINTS):
            reason += f" (memory limit of {limits.max_memory_bytes} bytes exceeded)"
        if tail:
            reason += f"; last output: {tail[-1][:300]}"
    return ExitInfo(exit_code, signal, reason)
