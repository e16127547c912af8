"""``GET /healthz``'s verdict, read from the service's status."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.admin.health import assess
from spear_twisted.runtime.model import InstanceStatus


def task(
    task_id: str, statuses: list[InstanceStatus], *, min_instances: int = 1, max_instances: int = 2
) -> Any:
    return {
        "id": task_id,
        "min_instances": min_instances,
        "max_instances": max_instances,
        "instances": [
            {"instance_id": f"{task_id}-{n}", "status": status.value} for n, status in enumerate(statuses)
        ],
    }


class HealthTests(SynchronousTestCase):
    def test_a_running_spearlet_with_a_ready_instance_serves(self) -> None:
        health = assess(True, {"tasks": [task("echo", [InstanceStatus.READY])]})
        self.assertTrue(health.serving)
        self.assertEqual(health.http_status, 200)
        self.assertEqual(health.document["status"], "serving")
        self.assertEqual(
            health.document["tasks"]["echo"],
            {
                "can_serve": True,
                "serving_instances": 1,
                "instances": 1,
                "min_instances": 1,
                "max_instances": 2,
            },
        )

    def test_running_and_busy_instances_serve_too(self) -> None:
        for status in (InstanceStatus.RUNNING, InstanceStatus.BUSY):
            self.assertTrue(assess(True, {"tasks": [task("echo", [status])]}).serving, status)

    def test_a_stopping_spearlet_does_not_serve(self) -> None:
        health = assess(False, {"tasks": [task("echo", [InstanceStatus.READY])]})
        self.assertEqual((health.http_status, health.document["status"]), (503, "stopping"))

    def test_no_task_that_can_serve_is_unavailable_and_says_why(self) -> None:
        for statuses in ([], [InstanceStatus.STARTING], [InstanceStatus.UNHEALTHY, InstanceStatus.ERROR]):
            health = assess(True, {"tasks": [task("echo", statuses)]})
            self.assertEqual((health.http_status, health.document["status"]), (503, "unavailable"), statuses)
            self.assertIn("no task can serve", health.document["reason"])
            self.assertFalse(health.document["tasks"]["echo"]["can_serve"])

    def test_no_task_at_all_is_unavailable(self) -> None:
        health = assess(True, {"tasks": []})
        self.assertEqual((health.http_status, health.document["reason"]), (503, "no task is configured"))

    def test_an_on_demand_task_with_room_to_start_an_instance_can_serve(self) -> None:
        self.assertTrue(assess(True, {"tasks": [task("lazy", [], min_instances=0)]}).serving)
        full = task("lazy", [InstanceStatus.ERROR, InstanceStatus.STARTING], min_instances=0, max_instances=2)
        self.assertFalse(assess(True, {"tasks": [full]}).serving)

    def test_one_task_that_can_serve_is_enough(self) -> None:
        health = assess(
            True, {"tasks": [task("a", [InstanceStatus.STARTING]), task("b", [InstanceStatus.READY])]}
        )
        self.assertTrue(health.serving)
        self.assertEqual(health.document["reason"], "1 of 2 tasks can serve")
