"""Restart backoff, crash-loop detection, and exits described in words."""

from __future__ import annotations

import signal as signals
from collections import deque
from collections.abc import Iterable

import attrs

from spear_twisted.runtime.model import ExitInfo, ResourceLimits
from spear_twisted.settings import not_negative, positive, setting

# What a program that ran out of memory (its address-space limit) tends to print.
_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")


@attrs.frozen
class BackoffPolicy:
    """
    When an instance whose process died is restarted, and when to give up.

    A process that dies young waits ``min_delay`` seconds before its
    restart, then twice as long after each further young death, up to
    ``max_delay``; one that lived at least ``stable_after`` seconds restarts
    at once and the delay starts over.  A death after ``crash_loop_restarts``
    restarts within the last ``crash_loop_window`` seconds is a crash loop:
    the instance is not restarted and goes to Error.
    """

    __spear_settings__ = True

    min_delay: float = setting(
        1.0, doc="Seconds before restarting a process that died young (default 1).", validator=not_negative
    )
    max_delay: float = setting(
        60.0,
        doc="Longest wait between restarts; the delay doubles up to it (default 60).",
        validator=positive,
    )
    stable_after: float = setting(
        60.0,
        doc="Seconds a process must live for its death to restart at once and reset the delay (default 60).",
        validator=not_negative,
    )
    crash_loop_restarts: int = setting(
        5,
        doc="Restarts within ``crash_loop_window`` after which the next death is a crash loop (default 5).",
        validator=positive,
    )
    crash_loop_window: float = setting(
        300.0, doc="Seconds over which restarts are counted (default 300).", validator=positive
    )

    def __attrs_post_init__(self) -> None:
        if self.max_delay < self.min_delay:
            raise ValueError(
                f"max_delay ({self.max_delay:g}) must not be below min_delay ({self.min_delay:g})"
            )


class RestartTracker:
    """The restarts of one instance under a :class:`BackoffPolicy`."""

    def __init__(self, policy: BackoffPolicy) -> None:
        self.policy = policy
        self._delay = policy.min_delay
        self._restarts: deque[float] = deque()

    def next_delay(self, now: float, lived: float) -> float | None:
        """
        Seconds to wait before restarting a process that died at ``now``
        after living ``lived`` seconds, or ``None`` in a crash loop.  A
        returned delay counts as a restart.
        """
        policy = self.policy
        while self._restarts and now - self._restarts[0] >= policy.crash_loop_window:
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
        """Restarts counted in the current window."""
        return len(self._restarts)


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 77`` for a number with no name."""
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(
    exit_code: int | None,
    signal: int | None,
    *,
    limits: ResourceLimits,
    output_tail: Iterable[str] = (),
    killed_by_us: bool = False,
) -> ExitInfo:
    """How a process ended, in words an operator can act on."""
    tail = [line for line in output_tail if line.strip()]
    if signal is not None:
        reason = f"killed by {signal_name(signal)}"
        if signal == signals.SIGXCPU and limits.max_cpu_seconds is not None:
            reason += f" (CPU time limit of {limits.max_cpu_seconds} s exceeded)"
        elif signal == signals.SIGKILL and not killed_by_us:
            if limits.max_cpu_seconds is not None:
                limit = limits.max_cpu_seconds
                reason += f" (not sent by the spearlet: the CPU time limit of {limit} s, or the kernel)"
            else:
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
