"""
:class:`Execution`: one call of ``execute``, from waiting for an instance to
the caller's answer.

One deadline covers the whole call: waiting for an instance, then the
instance's work.  What can happen:

* an instance takes the request and answers: the caller gets its
  ``ExecuteResponse`` (an answer with status Timeout is an
  :class:`~spear_twisted.errors.ExecutionTimeout`);
* no instance can take it before the deadline:
  :class:`~spear_twisted.errors.NoInstanceAvailable`, saying why; at once
  when none can (every instance ended, in Error after a crash loop say, and
  the next starts only after the deadline), else at the deadline;
* the instance does not answer before the deadline: it is sent the cancel
  signal (below) and the caller gets
  :class:`~spear_twisted.errors.ExecutionTimeout`, whose ``response`` has
  status Timeout;
* the caller cancels the Deferred: a request still waiting for an instance
  is withdrawn; one an instance has is sent the cancel signal too, and the
  instance is free for the next request at once;
* the instance's connection is lost while it works:
  :class:`~spear_twisted.errors.InstanceLost`; if the task is idempotent,
  the request is first tried again on another instance while time remains.
  A request that never left (the connection was already gone) or that the
  instance refused because it is terminating is always tried again.

The cancel signal is a ``Signal`` whose envelope carries the request's
``request_id``, with ``signal_type`` ``{"Custom": "cancel"}``, ``task_id`` the
task's id and ``data`` the request id in ASCII decimal digits.  The agent
SDK cancels that request's handler and sends no answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from spear_twisted.errors import (
    ConnectionClosed,
    ConnectionLost,
    ErrorCode,
    ExecutionTimeout,
    InstanceLost,
    NoInstanceAvailable,
    RequestTimeout,
    SpearError,
    UnexpectedMessage,
)
from spear_twisted.wire import (
    CANCEL_SIGNAL,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionStatus,
    RuntimeInstanceId,
    SignalMessage,
    SignalType,
    SpearMessage,
)

if TYPE_CHECKING:
    from spear_twisted.execution.manager import TaskExecutionManager
    from spear_twisted.execution.pool import InstancePool, Member

#: The smallest timeout handed to a channel (a deadline reached exactly still sends).
_MIN_TIMEOUT = 0.001


def cancel_signal(task_id: str, request_id: int) -> SpearMessage:
    """The ``Signal`` asking an instance to abandon request ``request_id`` of ``task_id``."""
    body = SignalMessage(SignalType.custom(CANCEL_SIGNAL), task_id, str(request_id).encode("ascii"))
    return SpearMessage.signal(request_id, body)


@attrs.frozen
class ServedResponse:
    """An instance's answer to an ``execute``, and which instance gave it."""

    response: ExecuteResponse
    #: The instance that ran the request (the last one tried, after a retry).
    instance_id: RuntimeInstanceId


class Execution:
    """One request's way through the pool; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        manager: TaskExecutionManager,
        pool: InstancePool,
        request: ExecuteRequest,
        seconds: float,
        *,
        with_instance: bool = False,
    ) -> None:
        self.manager = manager
        self.pool = pool
        self.request = request
        self.seconds = seconds
        self.clock = manager.reactor
        self.started = self.clock.seconds()
        self.deadline = self.started + seconds
        self.with_instance = with_instance
        #: Fires with the ``ExecuteResponse``; a :class:`ServedResponse` ``with_instance``.
        self.result: Deferred[Any] = Deferred(self._cancelled)
        #: Instances that took the request, in order.
        self.attempts: list[Member] = []
        self._member: Member | None = None
        self._pending: Deferred[SpearMessage] | None = None
        #: The request id of the request at ``_member``, while it is there.
        self._request_id: int | None = None
        self._timer: IDelayedCall | None = None
        self._done = False

    def begin(self) -> Deferred[Any]:
        """Start; the caller's Deferred."""
        self._attempt()
        return self.result

    def remaining(self) -> float:
        """Seconds left before the deadline."""
        return float(self.deadline - self.clock.seconds())

    # -- finding an instance ---------------------------------------------------------------------

    def _attempt(self) -> None:
        member = self.pool.acquire(self)
        if member is not None:
            self.assigned(member)
        elif not self._done:
            self._timer = self.clock.callLater(max(0.0, self.remaining()), self._no_instance)

    def _no_instance(self) -> None:
        self._timer = None
        self.pool.withdraw(self)
        self._fail(
            NoInstanceAvailable(
                f"no instance of task {self.pool.task.id} could take the request within "
                f"{self.seconds:g} s ({self.pool.describe_failure()})"
            ),
            "no_instance",
        )

    def refused(self, error: SpearError) -> None:
        """The pool will give no instance (it is stopping)."""
        self._cancel_timer()
        self._fail(error, "refused")

    def unservable(self, reason: str) -> None:
        """No instance can take the request before its deadline: fail now rather than then."""
        self._cancel_timer()
        self._fail(
            NoInstanceAvailable(
                f"no instance of task {self.pool.task.id} can take the request within {self.seconds:g} s"
                f" ({reason})"
            ),
            "no_instance",
        )

    # -- running it ---------------------------------------------------------------------------------

    def assigned(self, member: Member) -> None:
        """``member`` takes the request."""
        self._cancel_timer()
        if self._done:
            self.pool.release(member)
            return
        self._member = member
        self.attempts.append(member)
        channel = member.channel
        if channel is None:
            pending: Deferred[SpearMessage] = defer.fail(
                ConnectionClosed("the instance has no channel", instance_id=member.instance.instance_id)
            )
            self._request_id = None
        else:
            outstanding = channel.send_request(
                SpearMessage.execute_request(0, self.request), max(_MIN_TIMEOUT, self.remaining())
            )
            pending = outstanding.response
            self._request_id = outstanding.request_id
        # A request that failed at once never left: the connection was already gone.
        sent = not pending.called
        self._pending = pending
        pending.addCallbacks(self._answered, self._failed, callbackArgs=(member,), errbackArgs=(member, sent))

    def _answered(self, message: SpearMessage, member: Member) -> None:
        self._pending = self._member = self._request_id = None
        self.pool.release(member)
        try:
            body = message.parse_payload()
        except SpearError as e:
            self._fail(e, "error")
            return
        if not isinstance(body, ExecuteResponse):
            self._fail(
                UnexpectedMessage(
                    f"the instance answered an ExecuteRequest with {message.message_type.value}",
                    instance_id=member.instance.instance_id,
                    request_id=message.request_id,
                ),
                "error",
            )
            return
        if body.status is ExecutionStatus.TIMEOUT:
            self._fail(
                ExecutionTimeout(
                    f"the instance timed out: {body.error or 'no reason given'}",
                    instance_id=member.instance.instance_id,
                    request_id=message.request_id,
                    response=body,
                ),
                "timeout",
            )
            return
        self._succeed(body, member)

    def _failed(self, failure: Failure, member: Member, sent: bool) -> None:
        self._pending = self._member = self._request_id = None
        self.pool.release(member)
        if self._done:
            return
        error = failure.value
        instance_id = member.instance.instance_id
        if isinstance(error, RequestTimeout):
            request_id = error.request_id
            if request_id is not None:
                self._send_cancel(member, request_id)
            self._fail(
                ExecutionTimeout(
                    f"task {self.pool.task.id} did not answer within {self.seconds:g} s",
                    instance_id=instance_id,
                    request_id=request_id,
                    response=ExecuteResponse(
                        self.request.task_id,
                        ExecutionStatus.TIMEOUT,
                        error=f"no response within {self.seconds:g} s",
                        duration_ms=self._elapsed_ms(),
                    ),
                ),
                "timeout",
            )
            return
        if isinstance(error, (ConnectionLost, ConnectionClosed)):
            if self._may_retry(sent):
                self.log.info(
                    "Task {task_id}: instance {instance_id} was lost with request {request_id}; "
                    "trying another instance",
                    task_id=self.pool.task.id,
                    instance_id=str(instance_id),
                    request_id=error.request_id,
                )
                self._attempt()
                return
            self._fail(
                InstanceLost(
                    f"instance of task {self.pool.task.id} lost while executing: {error.message}",
                    instance_id=instance_id,
                    request_id=error.request_id,
                ),
                "instance_lost",
            )
            return
        if isinstance(error, SpearError) and error.code is ErrorCode.SHUTTING_DOWN and self._may_retry(False):
            # The instance refused it unexecuted: it is terminating.
            self._attempt()
            return
        if isinstance(error, SpearError):
            self._fail(error, "error")
            return
        self.log.failure("Task {task_id}: request failed", failure, task_id=self.pool.task.id)
        self._fail(failure, "error")

    def _may_retry(self, delivered: bool) -> bool:
        """Whether to try again: time remains, the spearlet runs, the request never ran or may run twice."""
        return (
            self.remaining() > 0
            and bool(self.manager.running)
            and (not delivered or self.pool.task.idempotent)
            and len(self.attempts) <= self.pool.task.max_instances
        )

    def _send_cancel(self, member: Member, request_id: int) -> None:
        channel = self.manager.runtime.factory.get_channel(member.instance.instance_id)
        if channel is None or not channel.is_connected():
            return
        channel.send(cancel_signal(self.pool.task.id, request_id)).addErrback(lambda _: None)

    # -- ending ------------------------------------------------------------------------------------------

    def _elapsed_ms(self) -> int:
        return max(0, int((self.clock.seconds() - self.started) * 1000))

    def _succeed(self, response: ExecuteResponse, member: Member) -> None:
        if self._done:
            return
        self._done = True
        self.manager.record(self, response.status.value.lower())
        # Made only for the callers that ask: execute() is the hot path.
        self.result.callback(
            ServedResponse(response, member.instance.instance_id) if self.with_instance else response
        )

    def _fail(self, error: BaseException | Failure, outcome: str) -> None:
        if self._done:
            return
        self._done = True
        self.manager.record(self, outcome)
        self.result.errback(error)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _cancelled(self, _: Deferred[Any]) -> None:
        """
        The caller cancelled: stop waiting for an instance, or, when an
        instance has the request, send it the cancel signal and stop waiting
        for its answer (the instance is free again at once).
        """
        if self._done:
            return
        self._done = True
        self.manager.record(self, "cancelled")
        self._cancel_timer()
        self.pool.withdraw(self)
        pending, member, request_id = self._pending, self._member, self._request_id
        if pending is None:
            return
        if member is not None and request_id is not None and not pending.called:
            self.log.info(
                "Task {task_id}: request {request_id} at instance {instance_id} cancelled by its caller",
                task_id=self.pool.task.id,
                request_id=request_id,
                instance_id=str(member.instance.instance_id),
            )
            self._send_cancel(member, request_id)
        pending.cancel()
