"""The task execution manager's figures as Prometheus metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from spear_twisted.runtime.model import InstanceStatus, serving_status

if TYPE_CHECKING:
    from spear_twisted.execution.manager import TaskExecutionManager


class ExecutionCollector:
    """
    Read at each collection (scrape) from the manager's own figures, so a
    request costs no metric update:

    * ``spear_executions_total{task,outcome}``: finished ``execute`` calls by
      outcome (``completed``, ``failed``, ``cancelled`` as the instance
      answered; ``timeout``, ``no_instance``, ``instance_lost``,
      ``refused``, ``error``, or ``cancelled`` by the caller);
    * ``spear_task_instances{task,status}``: the pool's instances by status;
    * ``spear_task_outstanding_requests{task}`` and
      ``spear_task_waiting_requests{task}``: requests at instances, and
      waiting for one.
    """

    def __init__(self, manager: TaskExecutionManager) -> None:
        self.manager = manager

    def describe(self) -> list[Metric]:
        # The names are fixed and unique within the monitoring service's own registry.
        return []

    def collect(self) -> list[Metric]:
        manager = self.manager
        executions = CounterMetricFamily(
            "spear_executions", "Finished execute calls by task and outcome", labels=["task", "outcome"]
        )
        for (task, outcome), count in sorted(manager.outcomes.items()):
            executions.add_metric([task, outcome], count)
        instances = GaugeMetricFamily(
            "spear_task_instances", "Instances of each task by status", labels=["task", "status"]
        )
        outstanding = GaugeMetricFamily(
            "spear_task_outstanding_requests", "Requests at a task's instances", labels=["task"]
        )
        waiting = GaugeMetricFamily(
            "spear_task_waiting_requests", "Requests waiting for an instance of a task", labels=["task"]
        )
        for task_id, pool in manager.pools.items():
            counts = dict.fromkeys((status.value for status in InstanceStatus), 0)
            capacity = pool.task.max_concurrent_requests
            for member in pool.members:
                # As /status shows it: a serving instance is Ready, Running or Busy by its load.
                counts[serving_status(member.instance.status, member.outstanding, capacity)] += 1
            for status, count in counts.items():
                instances.add_metric([task_id, status], count)
            outstanding.add_metric([task_id], pool.outstanding)
            waiting.add_metric([task_id], len(pool.waiting))
        return [executions, instances, outstanding, waiting]
