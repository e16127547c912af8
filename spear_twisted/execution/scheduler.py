"""The scheduler's choice: the least loaded eligible candidate, round-robin among equals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def least_loaded(candidates: Sequence[T], load: Callable[[T], int | None], start: int = 0) -> int | None:
    """
    The index of the candidate with the smallest ``load``; ``None`` when no
    candidate is eligible (``load`` returned ``None`` for each).

    Among candidates with the same load the first one at or after ``start``
    (wrapping around) wins, so that a caller who passes the index after its
    previous choice spreads equal work round-robin.
    """
    count = len(candidates)
    best: int | None = None
    best_load = 0
    for step in range(count):
        index = (start + step) % count
        current = load(candidates[index])
        if current is None:
            continue
        if best is None or current < best_load:
            best, best_load = index, current
            if current == 0:
                # Nothing is less loaded than idle.
                break
    return best
