"""
:class:`TaskExecutionManager`: the configured tasks, a pool of instances for
each, and ``execute``.

It is a Twisted ``Service``: started, it starts each task's
``min_instances``; stopped, it refuses new requests, refuses those waiting
for an instance, and stops every instance (the runtime's stop escalation:
``Terminate``, SIGTERM, SIGKILL), letting requests in flight finish while
their instances do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from spear_twisted.config import TaskConfig
from spear_twisted.errors import ShuttingDown, UnknownTask
from spear_twisted.execution.metrics import ExecutionCollector
from spear_twisted.execution.pool import InstancePool, Member
from spear_twisted.execution.request import Execution, ServedResponse
from spear_twisted.monitoring import MonitoringService
from spear_twisted.runtime.events import RuntimeEvent
from spear_twisted.runtime.model import serving_status
from spear_twisted.runtime.process import ProcessRuntime
from spear_twisted.wire import ExecuteRequest, ExecuteResponse, RuntimeInstanceId


class TaskExecutionManager(Service):
    """
    See the module docstring.

    :param runtime: runs the instances (and makes their channels).
    :param tasks: the tasks; their ids are unique.
    :param monitoring: records each execution's duration and gets the
        task and instance metrics in its registry.
    """

    name = "tasks"
    log = Logger()

    def __init__(
        self,
        runtime: ProcessRuntime,
        tasks: Sequence[TaskConfig],
        *,
        reactor: Any = None,
        monitoring: MonitoringService | None = None,
    ) -> None:
        self.runtime = runtime
        self.reactor = runtime.reactor if reactor is None else reactor
        self.monitoring = monitoring
        self.pools: dict[str, InstancePool] = {}
        for task in tasks:
            if task.id in self.pools:
                raise ValueError(f"task id {task.id!r} is used twice")
            self.pools[task.id] = InstancePool(
                task, runtime, reactor=self.reactor, on_member=self._member_changed
            )
        self._members: dict[RuntimeInstanceId, tuple[InstancePool, Member]] = {}
        self._unsubscribe: Callable[[], None] | None = None
        #: Executions by ``(task id, outcome)``: completed, failed, timeout, no_instance, ...
        self.outcomes: dict[tuple[str, str], int] = {}
        if monitoring is not None:
            monitoring.registry.register(ExecutionCollector(self))

    # -- IService --------------------------------------------------------------------------------------

    def startService(self) -> None:
        """Start each task's ``min_instances``."""
        super().startService()  # type: ignore[no-untyped-call]
        if self._unsubscribe is None:
            self._unsubscribe = self.runtime.subscribe(self._runtime_event)
        for pool in self.pools.values():
            pool.start()

    def stopService(self) -> Deferred[None]:
        """Refuse new and waiting requests, stop every instance; fires once all are gone."""
        super().stopService()  # type: ignore[no-untyped-call]
        stops = [pool.stop() for pool in self.pools.values()]
        done = defer.DeferredList(stops, consumeErrors=True)
        return done.addCallback(self._stopped)

    def _stopped(self, _: object) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # -- bookkeeping -----------------------------------------------------------------------------------

    def _member_changed(self, member: Member, added: bool) -> None:
        instance_id = member.instance.instance_id
        if added:
            self._members[instance_id] = (self.pools[member.instance.task_id], member)
        else:
            self._members.pop(instance_id, None)

    def _runtime_event(self, event: RuntimeEvent) -> None:
        entry = self._members.get(event.instance_id)
        if entry is not None:
            pool, member = entry
            pool.instance_event(member, event)

    def record(self, execution: Execution, outcome: str) -> None:
        """Count one finished execution and time it (for metrics)."""
        key = (execution.pool.task.id, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if self.monitoring is not None:
            self.monitoring.record_performance_event(
                "execute", self.reactor.seconds() - execution.started, task=key[0], outcome=outcome
            )

    # -- executing ------------------------------------------------------------------------------------

    def execute(
        self, task_id: str, request: ExecuteRequest, timeout: float | None = None
    ) -> Deferred[ExecuteResponse]:
        """
        Run ``request`` on an instance of ``task_id``.

        :param timeout: seconds for the whole call, waiting for an instance
            included; by default the request's own ``timeout``, else the
            task's ``request_timeout``.
        :return: a Deferred firing with the instance's ``ExecuteResponse``
            (whatever its status but Timeout), or failing with
            ``UnknownTask``, ``NoInstanceAvailable``, ``ExecutionTimeout``
            (its ``response`` has status Timeout), ``InstanceLost``,
            ``ShuttingDown``, or the instance's own error.  Cancelling it
            withdraws the request (an instance that has it is sent the
            cancel signal).
        """
        started: Deferred[ExecuteResponse] = self._execute(task_id, request, timeout, with_instance=False)
        return started

    def execute_with_instance(
        self, task_id: str, request: ExecuteRequest, timeout: float | None = None
    ) -> Deferred[ServedResponse]:
        """
        :meth:`execute`, telling which instance answered: the Deferred fires
        with a :class:`ServedResponse`, the instance's ``ExecuteResponse``
        and the id of the instance that gave it.
        """
        started: Deferred[ServedResponse] = self._execute(task_id, request, timeout, with_instance=True)
        return started

    def _execute(
        self, task_id: str, request: ExecuteRequest, timeout: float | None, *, with_instance: bool
    ) -> Deferred[Any]:
        pool = self.pools.get(task_id)
        if pool is None:
            known = ", ".join(sorted(self.pools)) or "none"
            return defer.fail(UnknownTask(f"no task {task_id!r} is configured (tasks: {known})"))
        if not self.running:
            return defer.fail(ShuttingDown("the spearlet is not running"))
        if timeout is None:
            timeout = float(request.timeout) if request.timeout else pool.task.request_timeout
        if not (timeout > 0 and math.isfinite(timeout)):
            return defer.fail(ValueError(f"timeout must be a positive number of seconds, not {timeout!r}"))
        if request.task_id != task_id:
            request = attrs.evolve(request, task_id=task_id)
        return Execution(self, pool, request, timeout, with_instance=with_instance).begin()

    # -- status ------------------------------------------------------------------------------------------

    def status(self, *, with_metrics: bool = True) -> list[dict[str, Any]]:
        """
        Each task with its instances, as JSON-able data (see
        ``SpearService.status``).  Without ``with_metrics`` the instances'
        resource figures (``cpu_percent``, ``rss_bytes``, ``open_fds``,
        ``threads``) are left out, and their processes are not looked at:
        what a health probe needs, without resetting the CPU figure's window.
        """
        now = self.reactor.seconds()
        return [self._describe_pool(pool, now, with_metrics) for pool in self.pools.values()]

    def _describe_pool(self, pool: InstancePool, now: float, with_metrics: bool) -> dict[str, Any]:
        task = pool.task
        return {
            "id": task.id,
            "runtime_type": task.runtime_type.value,
            "min_instances": task.min_instances,
            "max_instances": task.max_instances,
            "outstanding": pool.outstanding,
            "waiting": len(pool.waiting),
            "last_error": pool.last_error,
            "instances": [self._describe_member(pool, member, now, with_metrics) for member in pool.members],
        }

    def _describe_member(
        self, pool: InstancePool, member: Member, now: float, with_metrics: bool
    ) -> dict[str, Any]:
        instance = member.instance
        reason = instance.error or (instance.history[-1].reason if instance.history else None)
        described = {
            "instance_id": str(instance.instance_id),
            "status": serving_status(instance.status, member.outstanding, pool.task.max_concurrent_requests),
            "reason": reason,
            "pid": instance.pid,
            "restarts": instance.restart_count,
            "last_exit": None if instance.last_exit is None else instance.last_exit.reason,
            "uptime": round(instance.uptime(now), 3),
            "outstanding": member.outstanding,
            "served": member.served,
        }
        if with_metrics:
            metrics = self.runtime.get_metrics(instance)
            described.update(
                cpu_percent=metrics.cpu_percent,
                rss_bytes=metrics.rss_bytes,
                open_fds=metrics.open_fds,
                threads=metrics.threads,
            )
        return described
