"""
What ``GET /healthz`` answers, read from the service's status.

A task *can serve* when one of its instances is Ready, Running or Busy, or
when it keeps no instance warm (``min_instances`` 0) and has room to start
one on demand.  The spearlet is healthy while it runs and at least one task
can serve; it is not while it is stopping, or when no task can serve (every
warm task's instances are still starting, restarting or failed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from spear_twisted.runtime.model import SERVING

_SERVING = frozenset(status.value for status in SERVING)


@attrs.frozen
class Health:
    """Whether the spearlet serves, and the JSON that says why."""

    serving: bool
    document: dict[str, Any]

    @property
    def http_status(self) -> int:
        """200 when serving, else 503."""
        return 200 if self.serving else 503


def task_health(task: Mapping[str, Any]) -> dict[str, Any]:
    """One task's figures from its entry in the status, and whether it can serve."""
    instances = task.get("instances", [])
    serving = sum(1 for instance in instances if instance.get("status") in _SERVING)
    min_instances = task.get("min_instances", 0)
    max_instances = task.get("max_instances", 0)
    on_demand = min_instances == 0 and len(instances) < max_instances
    return {
        "can_serve": serving > 0 or on_demand,
        "serving_instances": serving,
        "instances": len(instances),
        "min_instances": min_instances,
        "max_instances": max_instances,
    }


def assess(running: bool, status: Mapping[str, Any]) -> Health:
    """The health of a spearlet that is ``running`` (not stopping) with ``status``."""
    tasks = {task["id"]: task_health(task) for task in status.get("tasks", [])}
    if not running:
        return Health(False, {"status": "stopping", "reason": "the spearlet is stopping", "tasks": tasks})
    able = sorted(task_id for task_id, health in tasks.items() if health["can_serve"])
    if not tasks:
        return Health(False, {"status": "unavailable", "reason": "no task is configured", "tasks": tasks})
    if not able:
        reason = "no task can serve: every task's instances are starting, restarting or failed"
        return Health(False, {"status": "unavailable", "reason": reason, "tasks": tasks})
    reason = f"{len(able)} of {len(tasks)} tasks can serve"
    return Health(True, {"status": "serving", "reason": reason, "tasks": tasks})
