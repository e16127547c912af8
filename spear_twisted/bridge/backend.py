"""
:class:`TaskExecutionBackend`: the bridge's ``Execute`` and ``Status`` on a
running spearlet (:class:`~spear_twisted.service.SpearService`).

``Execute`` runs the call's task through the TaskExecutionManager, as any
caller of ``tasks.execute`` does: an instance is picked (or started), the
request goes over its channel, and the instance's ``ExecuteResponse``
comes back as the ``ExecuteResult``, with the ``instance_id`` of the
instance that ran it.  The time allowed is the call's
``timeout_seconds`` or what is left of its gRPC deadline, whichever is
shorter (the task's ``request_timeout`` when it has neither): a task that
runs out of its ``timeout_seconds`` answers with status ``Timeout``; a call
whose deadline comes first ends with ``DEADLINE_EXCEEDED``.  Every other failure is a
Spear error that becomes the call's status (an unknown task is
``NOT_FOUND``, no instance ``UNAVAILABLE``, ...).  A caller that cancels, or
whose deadline passes, withdraws the request from the manager.

``Status`` describes the spearlet from ``SpearService.status()``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.contract import execute_request_from_call, execute_result_from_response
from spear_twisted.bridge.methods import CallContext, IBridgeBackend
from spear_twisted.bridge.status import GrpcError, StatusCode
from spear_twisted.channels._twisted import failure as failure_of
from spear_twisted.channels.session_protocol import SERVER_VERSION
from spear_twisted.errors import ExecutionTimeout, UnknownTask
from spear_twisted.execution.request import ServedResponse
from spear_twisted.runtime.model import SERVING
from spear_twisted.wire import PROTOCOL_VERSION

#: Instance statuses that count as ready to work in ``TaskStatus.ready_instances``.
READY_STATUSES = frozenset(status.value for status in SERVING)


@implementer(IBridgeBackend)
class TaskExecutionBackend:
    """
    ``Execute`` and ``Status`` on ``service``: anything with ``tasks`` (a
    TaskExecutionManager), ``connections`` (a ConnectionManager),
    ``monitoring``, ``status()`` and ``reactor``, such as a SpearService.
    """

    def __init__(self, service: Any) -> None:
        self.service = service

    # -- Execute -----------------------------------------------------------------------------------

    def execute(self, call: pb.ExecuteCall, context: CallContext) -> Deferred[pb.ExecuteResult]:
        try:
            request = execute_request_from_call(call)
        except Exception as e:
            return defer.fail(e)
        task_limit = float(request.timeout) if request.timeout else None
        left = (
            None
            if context.deadline is None
            else max(0.001, context.deadline - self.service.reactor.seconds())
        )
        deadline_first = left is not None and (task_limit is None or left < task_limit)
        timeout = left if deadline_first else task_limit
        running: Deferred[ServedResponse] = self.service.tasks.execute_with_instance(
            call.task_id, request, timeout
        )
        return running.addCallbacks(_result, _timed_out, errbackArgs=(deadline_first, timeout))

    # -- Status ------------------------------------------------------------------------------------

    def status(self, request: pb.StatusRequest, context: CallContext) -> Deferred[pb.StatusReply]:
        snapshot = self.service.status()
        tasks = snapshot["tasks"]
        if request.task_id:
            tasks = [task for task in tasks if task["id"] == request.task_id]
            if not tasks:
                return defer.fail(UnknownTask(f"no task {request.task_id!r} is configured"))
        reply = pb.StatusReply(
            server_version=SERVER_VERSION,
            protocol_version=PROTOCOL_VERSION,
            uptime_seconds=float(snapshot["uptime"]),
        )
        outcomes: dict[tuple[str, str], int] = getattr(self.service.tasks, "outcomes", {})
        transports = {
            str(state.instance_id): state.transport
            for state in self.service.connections.get_all_connections()
            if state.authenticated and state.instance_id is not None
        }
        for task in tasks:
            instances = task["instances"]
            finished = {
                outcome: count for (task_id, outcome), count in outcomes.items() if task_id == task["id"]
            }
            reply.tasks.append(
                pb.TaskStatus(
                    task_id=task["id"],
                    instances=len(instances),
                    ready_instances=sum(1 for instance in instances if instance["status"] in READY_STATUSES),
                    in_flight=task["outstanding"],
                    executions=sum(finished.values()),
                    failures=sum(count for outcome, count in finished.items() if outcome != "completed"),
                    min_instances=task["min_instances"],
                    max_instances=task["max_instances"],
                )
            )
            for instance in instances:
                instance_id = instance["instance_id"]
                reply.instances.append(
                    pb.InstanceStatus(
                        instance_id=instance_id,
                        task_id=task["id"],
                        state=instance["status"],
                        transport=transports.get(instance_id, ""),
                        connected=instance_id in transports,
                        in_flight=instance["outstanding"],
                        executions=instance.get("served", 0),
                        uptime_seconds=float(instance["uptime"]),
                    )
                )
        connections = snapshot["connections"]
        reply.connections.active = sum(1 for connection in connections if connection["authenticated"])
        reply.connections.authenticating = len(connections) - reply.connections.active
        monitoring = getattr(self.service, "monitoring", None)
        reply.connections.total = (
            monitoring.system.connections_total if monitoring is not None else len(connections)
        )
        reply.connections.by_transport.update(Counter(transports.values()))
        return defer.succeed(reply)


def _result(served: ServedResponse) -> pb.ExecuteResult:
    return execute_result_from_response(served.response, str(served.instance_id))


def _timed_out(failure: Failure, deadline_first: bool, timeout: float | None) -> pb.ExecuteResult | Failure:
    error = failure.value
    if not isinstance(error, ExecutionTimeout):
        return failure
    if deadline_first:
        # The caller's deadline was the limit: DEADLINE_EXCEEDED, as gRPC says.
        return failure_of(GrpcError(StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded ({timeout:g} s)"))
    if error.response is not None:
        # The task ran out of its time: a result with status Timeout, as the
        # instance (or the spearlet for it) reported it.
        instance_id = "" if error.instance_id is None else str(error.instance_id)
        return execute_result_from_response(error.response, instance_id)
    return failure
