"""
:class:`InstancePool`: the instances of one task, how many, and who gets
the next request.

The pool keeps ``min_instances`` instances running, starts more while
requests wait (up to ``max_instances``), and stops an instance beyond
``min_instances`` once it has been idle for ``idle_timeout``.  The next
request goes to a Ready, healthy instance with room for it
(``max_concurrent_requests``) and the fewest outstanding requests,
round-robin among equals; requests that find none wait in line, first come
first served.  An instance that ends for good (Error, or Stopped without
being asked to) is replaced after a delay that doubles with each failure in
a row, so a program that cannot start is not respawned in a tight loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from spear_twisted.channels.channel import Channel
from spear_twisted.config import TaskConfig
from spear_twisted.errors import ShuttingDown, SpearError
from spear_twisted.execution.scheduler import least_loaded
from spear_twisted.runtime.environment import InvalidInstanceConfig
from spear_twisted.runtime.events import RuntimeEvent, RuntimeEventKind
from spear_twisted.runtime.model import SERVING, InstanceStatus, TaskInstance
from spear_twisted.runtime.process import ProcessRuntime

#: Statuses of an instance that is over: not running and not coming back by itself.
_ENDED = frozenset({InstanceStatus.STOPPED, InstanceStatus.ERROR})


class Waiter(Protocol):
    """A request waiting for an instance."""

    #: When it stops waiting (on the reactor's clock).
    deadline: float

    def assigned(self, member: Member) -> None:
        """``member`` takes the request (its ``outstanding`` already counts it)."""

    def refused(self, error: SpearError) -> None:
        """No instance will come: the pool is stopping."""

    def unservable(self, reason: str) -> None:
        """No instance can take it before its deadline (``reason`` says why); it waits no more."""


@attrs.define(eq=False)
class Member:
    """One instance of the pool and the pool's figures about it."""

    instance: TaskInstance
    #: Requests sent to it and not yet answered.
    outstanding: int = 0
    #: Requests it was given in all.
    served: int = 0
    #: Being stopped by the pool (idle, or the pool is stopping).
    retiring: bool = False
    #: Its channel, once it has been Ready.
    channel: Channel | None = None
    idle_timer: IDelayedCall | None = None

    @property
    def live(self) -> bool:
        """Whether it counts towards the pool's size: running or on its way, and not retiring."""
        return not self.retiring and self.instance.status not in _ENDED


class InstancePool:
    """
    See the module docstring.

    :param task: the task's configuration.
    :param runtime: where its instances run.
    :param on_member: called with a member and ``True`` when it joins the
        pool, ``False`` when it leaves (the manager's index of instance ids).
    """

    log = Logger()

    def __init__(
        self,
        task: TaskConfig,
        runtime: ProcessRuntime,
        *,
        reactor: Any,
        on_member: Callable[[Member, bool], None] = lambda member, added: None,
    ) -> None:
        self.task = task
        self.runtime = runtime
        self.reactor = reactor
        self.members: list[Member] = []
        self.waiting: deque[Waiter] = deque()
        #: Why the last instance failed to start or ended, until one is Ready again.
        self.last_error: str | None = None
        self._on_member = on_member
        self._next = 0
        self._failures = 0
        self._replace_timer: IDelayedCall | None = None
        self._dispatching = False
        self._stopping = False
        self._instance_config = task.instance_config()

    # -- size ------------------------------------------------------------------------------------

    @property
    def live_count(self) -> int:
        """Instances running or starting, not counting those being retired."""
        return sum(1 for member in self.members if member.live)

    @property
    def outstanding(self) -> int:
        """Requests sent to the pool's instances and not yet answered."""
        return sum(member.outstanding for member in self.members)

    def start(self) -> None:
        """Start ``min_instances`` instances."""
        self._stopping = False
        self._fill()

    def _fill(self) -> None:
        """Start instances up to ``min_instances``, and more while requests wait."""
        if self._stopping or self._replace_timer is not None:
            return
        while self.live_count < self.task.min_instances:
            if not self._spawn():
                return
        task = self.task
        while self.waiting and self.live_count < task.max_instances:
            starting = sum(
                1 for member in self.members if member.live and member.instance.status not in SERVING
            )
            if len(self.waiting) <= starting * task.max_concurrent_requests:
                return
            if not self._spawn():
                return

    def _spawn(self) -> bool:
        """Create and start one instance; False (and a delayed retry) when it cannot be made."""
        try:
            instance = self.runtime.create_instance(self.task.id, self._instance_config, self.task.limits)
        except InvalidInstanceConfig as e:
            self.log.error(
                "Task {task_id}: cannot make an instance: {reason}", task_id=self.task.id, reason=str(e)
            )
            self._failed(str(e))
            return False
        member = Member(instance)
        self.members.append(member)
        self._on_member(member, True)
        self.runtime.start_instance(instance).addErrback(self._start_failed, member)
        return True

    def _start_failed(self, failure: Failure, member: Member) -> None:
        # The runtime put the instance in Error and said why; the status
        # event does the rest.  One stopped while starting is no news.
        if self._stopping or member.retiring:
            return
        self.log.warn(
            "Task {task_id}: instance {instance_id} did not start: {reason}",
            task_id=self.task.id,
            instance_id=str(member.instance.instance_id),
            reason=failure.getErrorMessage(),
        )

    # -- the runtime's events -------------------------------------------------------------------

    def instance_event(self, member: Member, event: RuntimeEvent) -> None:
        """React to an event of one of the pool's instances."""
        if event.kind is not RuntimeEventKind.STATUS_CHANGED or self._stopping or member.retiring:
            return
        status = event.status
        if status is InstanceStatus.READY:
            # The channel it authenticated on: the one requests go out on.
            member.channel = self.runtime.factory.get_channel(member.instance.instance_id)
            self._failures = 0
            self.last_error = None
            self._dispatch()
            self._consider_idle()
        elif status in _ENDED:
            self._failed(event.reason or f"instance {member.instance.instance_id} is {status.value}")

    def _failed(self, reason: str) -> None:
        """An instance could not be made, or ended: replace it after the backoff delay."""
        self.last_error = reason
        self._failures += 1
        if self._replace_timer is not None or self._stopping:
            self._give_up_hopeless()
            return
        backoff = self.runtime.config.backoff
        delay = min(backoff.max_delay, backoff.min_delay * 2 ** (self._failures - 1))
        self.log.info(
            "Task {task_id}: replacing ended instances in {delay:g} s (last: {reason})",
            task_id=self.task.id,
            delay=delay,
            reason=reason,
        )
        self._replace_timer = self.reactor.callLater(delay, self._replace)
        self._give_up_hopeless()

    def _give_up_hopeless(self) -> None:
        """
        Fail the waiting requests that no instance can take before their
        deadline: none is running or starting (every one ended, in Error
        after a crash loop, say) and the next is started only after it.
        A request waits on while an instance is starting or busy.
        """
        timer = self._replace_timer
        if not self.waiting or timer is None or any(member.live for member in self.members):
            return
        starts_at = timer.getTime()
        hopeless = [waiter for waiter in self.waiting if waiter.deadline <= starts_at]
        if not hopeless:
            return
        delay = max(0.0, starts_at - self.reactor.seconds())
        reason = f"{self.describe_failure()}; the next instance starts in {delay:.3g} s"
        for waiter in hopeless:
            self.withdraw(waiter)
        for waiter in hopeless:
            waiter.unservable(reason)

    def _replace(self) -> None:
        self._replace_timer = None
        for member in [member for member in self.members if member.instance.status in _ENDED]:
            self._forget(member)
        self._fill()

    def _forget(self, member: Member) -> None:
        if member in self.members:
            self.members.remove(member)
            self._cancel_idle(member)
            try:
                self.runtime.remove_instance(member.instance)
            except ValueError:
                self.log.failure("Task {task_id}: could not remove an instance", task_id=self.task.id)
            self._on_member(member, False)

    # -- the scheduler ------------------------------------------------------------------------------

    def _load(self, member: Member) -> int | None:
        """
        ``member``'s outstanding requests if it can take one more, else
        ``None``.  It must be healthy: serving (the runtime moves an
        instance whose process ended or whose agent disconnected out of
        Ready at once) with its agent connected this very moment (the
        runtime's ``health_check``, without the record it makes, which
        would cost as much as the rest of the choice).
        """
        channel = member.channel
        if (
            member.retiring
            or member.outstanding >= self.task.max_concurrent_requests
            or member.instance.status not in SERVING
            or channel is None
            or not channel.is_connected()
        ):
            return None
        return member.outstanding

    def _pick(self) -> Member | None:
        members = self.members
        if not members:
            return None
        index = least_loaded(members, self._load, self._next % len(members))
        if index is None:
            return None
        self._next = index + 1
        member = members[index]
        member.outstanding += 1
        member.served += 1
        self._cancel_idle(member)
        return member

    def acquire(self, waiter: Waiter) -> Member | None:
        """
        An instance for one request, its ``outstanding`` counting it; or
        ``None``, and ``waiter`` waits in line (more instances are started
        if the task may have more) until :meth:`release` or a Ready instance
        makes room, or until it is :meth:`withdraw` n.
        """
        if self._stopping:
            waiter.refused(ShuttingDown(f"task {self.task.id} is stopping"))
            return None
        if not self.waiting:
            member = self._pick()
            if member is not None:
                return member
        self.waiting.append(waiter)
        self._fill()
        self._give_up_hopeless()
        return None

    def withdraw(self, waiter: Waiter) -> None:
        """``waiter`` no longer waits (it timed out or was cancelled)."""
        try:
            self.waiting.remove(waiter)
        except ValueError:
            pass

    def release(self, member: Member) -> None:
        """One request of ``member`` is over; the next waiting one may go."""
        member.outstanding -= 1
        if self.waiting:
            self._dispatch()
        if member.outstanding == 0:
            self._consider_idle()

    def _dispatch(self) -> None:
        """Give waiting requests to instances with room, in order."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self.waiting:
                member = self._pick()
                if member is None:
                    break
                self.waiting.popleft().assigned(member)
        finally:
            self._dispatching = False

    # -- idle instances ----------------------------------------------------------------------------

    def _consider_idle(self) -> None:
        """Time the idleness of each idle instance while the pool is above ``min_instances``."""
        if self.live_count <= self.task.min_instances:
            return
        for member in self.members:
            if (
                member.idle_timer is None
                and member.outstanding == 0
                and member.live
                and member.instance.status in SERVING
            ):
                member.idle_timer = self.reactor.callLater(self.task.idle_timeout, self._idle_expired, member)

    def _cancel_idle(self, member: Member) -> None:
        timer, member.idle_timer = member.idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _idle_expired(self, member: Member) -> None:
        member.idle_timer = None
        # The others serving must be min_instances without it: an instance
        # still starting may never be Ready.
        serving = sum(
            1
            for other in self.members
            if other is not member and other.live and other.instance.status in SERVING
        )
        if (
            self._stopping
            or member.outstanding
            or not member.live
            or self.waiting
            or serving < self.task.min_instances
        ):
            return
        self.log.info(
            "Task {task_id}: stopping instance {instance_id}, idle for {seconds:g} s",
            task_id=self.task.id,
            instance_id=str(member.instance.instance_id),
            seconds=self.task.idle_timeout,
        )
        self._retire(member)

    def _retire(self, member: Member) -> Deferred[None]:
        member.retiring = True
        self._cancel_idle(member)
        stopped = self.runtime.stop_instance(member.instance)
        return stopped.addBoth(self._retired, member)

    def _retired(self, result: object, member: Member) -> None:
        if isinstance(result, Failure):
            self.log.failure(
                "Task {task_id}: stopping instance {instance_id} failed",
                result,
                task_id=self.task.id,
                instance_id=str(member.instance.instance_id),
            )
        self._forget(member)

    # -- stopping ----------------------------------------------------------------------------------------

    def stop(self) -> Deferred[None]:
        """Refuse the waiting requests and stop every instance; fires once all are gone."""
        self._stopping = True
        if self._replace_timer is not None and self._replace_timer.active():
            self._replace_timer.cancel()
        self._replace_timer = None
        waiting, self.waiting = self.waiting, deque()
        for waiter in waiting:
            waiter.refused(ShuttingDown(f"task {self.task.id} is stopping"))
        stops = [self._retire(member) for member in list(self.members)]
        return defer.DeferredList(stops, consumeErrors=True).addCallback(lambda _: None)

    # -- description -----------------------------------------------------------------------------------------

    def describe_failure(self) -> str:
        """Why no instance can take a request now, in words."""
        if not self.members:
            parts = ["no instance is running"]
        else:
            counts: dict[str, int] = {}
            for member in self.members:
                name = member.instance.status.value
                if (
                    member.instance.status in SERVING
                    and member.outstanding >= self.task.max_concurrent_requests
                ):
                    name = "busy"
                counts[name] = counts.get(name, 0) + 1
            parts = ["instances: " + ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))]
        if self.last_error:
            parts.append(f"last failure: {self.last_error}")
        return "; ".join(parts)
