"""The scheduler's choice: least outstanding, round-robin among equals, never an ineligible instance."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.execution import least_loaded, serving_status
from spear_twisted.runtime import InstanceStatus

loads = st.lists(st.one_of(st.none(), st.integers(min_value=0, max_value=20)), max_size=12)


def identity(load: int | None) -> int | None:
    return load


class LeastLoadedTests(SynchronousTestCase):
    def test_the_least_loaded_candidate_wins(self) -> None:
        self.assertEqual(least_loaded([3, 1, 2], identity), 1)

    def test_ineligible_candidates_are_skipped(self) -> None:
        self.assertEqual(least_loaded([None, 5, None], identity), 1)
        self.assertIsNone(least_loaded([None, None], identity))
        self.assertIsNone(least_loaded([], identity))

    def test_equals_are_taken_in_turn_from_the_start_index(self) -> None:
        candidates = [0, 0, 0]
        chosen = []
        start = 0
        for _ in range(6):
            index = least_loaded(candidates, identity, start)
            assert index is not None
            chosen.append(index)
            start = index + 1
        self.assertEqual(chosen, [0, 1, 2, 0, 1, 2])

    def test_the_search_wraps_around(self) -> None:
        self.assertEqual(least_loaded([1, 2, 1], identity, 1), 2)
        self.assertEqual(least_loaded([1, 2, 3], identity, 2), 0)

    @given(loads, st.integers(min_value=0, max_value=11))
    def test_the_choice_is_eligible_minimal_and_the_first_from_start(
        self, values: list[int | None], start: int
    ) -> None:
        eligible = [value for value in values if value is not None]
        start = start % len(values) if values else 0
        index = least_loaded(values, identity, start)
        if not eligible:
            self.assertIsNone(index)
            return
        assert index is not None
        self.assertEqual(values[index], min(eligible))
        # No candidate of the same load comes before it, counting from start.
        order = [(start + step) % len(values) for step in range(len(values))]
        self.assertEqual(next(i for i in order if values[i] == min(eligible)), index)


class ServingStatusTests(SynchronousTestCase):
    def test_a_serving_instance_is_ready_running_or_busy_by_its_requests(self) -> None:
        self.assertEqual(serving_status(InstanceStatus.READY, 0, 4), "Ready")
        self.assertEqual(serving_status(InstanceStatus.READY, 1, 4), "Running")
        self.assertEqual(serving_status(InstanceStatus.READY, 4, 4), "Busy")

    def test_other_statuses_are_shown_as_they_are(self) -> None:
        self.assertEqual(serving_status(InstanceStatus.UNHEALTHY, 2, 4), "Unhealthy")
        self.assertEqual(serving_status(InstanceStatus.STARTING, 0, 4), "Starting")
