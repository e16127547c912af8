"""Figures a channel keeps about itself."""

from __future__ import annotations

import math
from collections import deque

import attrs

#: Round trips kept for the latency figures.
LATENCY_WINDOW = 1024


class LatencyWindow:
    """The latest ``size`` round-trip times, for mean and percentiles."""

    __slots__ = ("_samples", "_size")

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._size = size
        # Made on the first sample: an idle channel holds no window.
        self._samples: deque[float] | None = None

    def add(self, seconds: float) -> None:
        if self._samples is None:
            self._samples = deque(maxlen=self._size)
        self._samples.append(seconds)

    def __len__(self) -> int:
        return 0 if self._samples is None else len(self._samples)

    def summary(self) -> tuple[float, float, float]:
        """``(mean, p50, p99)`` in seconds over the window; zeros when empty."""
        if not self._samples:
            return (0.0, 0.0, 0.0)
        ordered = sorted(self._samples)
        return (sum(ordered) / len(ordered), _nearest_rank(ordered, 50), _nearest_rank(ordered, 99))


def _nearest_rank(ordered: list[float], percentile: float) -> float:
    rank = max(1, math.ceil(percentile / 100 * len(ordered)))
    return ordered[rank - 1]


@attrs.frozen
class ChannelStats:
    """
    A snapshot of a channel's figures.

    Latencies are request/response round trips in seconds over the latest
    :data:`LATENCY_WINDOW` requests; ``uptime`` is seconds since the current
    connection authenticated (0 when not connected).
    """

    instance_id: str
    transport: str
    connected: bool
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    connection_errors: int = 0
    timeout_errors: int = 0
    late_responses: int = 0
    outstanding_requests: int = 0
    queued_messages: int = 0
    latency_samples: int = 0
    latency_mean: float = 0.0
    latency_p50: float = 0.0
    latency_p99: float = 0.0
    uptime: float = 0.0
    connections: int = 0
