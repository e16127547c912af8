"""
:class:`ProcessRuntime`: instances as supervised child processes.

For each instance the runtime

* checks the program before anything else (a clear error, nothing left
  half-made);
* makes the instance's channel with the CommunicationFactory (its own Unix
  socket or TCP port) and issues it a fresh secret in the SecretRegistry;
* spawns it, once the reactor runs, through a launcher (its own session and
  process group, parent-death signal, resource limits) with an environment
  built from nothing: the whitelisted variables of the spearlet's, the
  task's, then PROTOCOL.md section 7's.  The secret never enters the
  spearlet's own environment;
* logs its stdout and stderr line by line with its ``instance_id``;
* calls it Ready once its agent has authenticated on the channel, or kills
  it and calls it Error when that does not happen within the startup
  timeout;
* stops it politely then firmly: a ``Terminate`` signal, a grace period,
  SIGTERM to its process group, a kill timeout, SIGKILL to the group;
* restarts it after its process ends, by its restart policy, with
  exponential backoff, and gives up on a crash loop (Error);
* reports its resource use through psutil.

The runtime needs only a CommunicationFactory and a SecretRegistry; a
ConnectionManager provides both (:meth:`ProcessRuntime.from_connection_manager`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Generator, Mapping
from typing import Any

import attrs
import psutil
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spear_twisted.auth import SecretRegistry
from spear_twisted.channels.channel import Channel
from spear_twisted.channels.factory import CommunicationFactory
from spear_twisted.errors import InstanceStartFailed, ShuttingDown
from spear_twisted.runtime.child import OUTPUT_DRAIN_TIMEOUT, InstanceProcessProtocol, Waiters
from spear_twisted.runtime.environment import (
    InvalidInstanceConfig,
    build_environment,
    checked_program,
    protocol_environment,
)
from spear_twisted.runtime.events import RuntimeEvent, RuntimeEventKind
from spear_twisted.runtime.interfaces import IRuntime
from spear_twisted.runtime.launch import LAUNCHERS, Launcher, effective_limits, select_launcher
from spear_twisted.runtime.model import (
    SERVING,
    ExitInfo,
    InstanceConfig,
    InstanceHealth,
    InstanceMetrics,
    InstanceStatus,
    ResourceLimits,
    RestartPolicy,
    TaskInstance,
)
from spear_twisted.runtime.output import LINE_LIMIT
from spear_twisted.runtime.reaping import ProcessGroups, become_subreaper, wait_group_gone
from spear_twisted.runtime.supervision import BackoffPolicy, RestartTracker
from spear_twisted.settings import positive, setting
from spear_twisted.wire import RuntimeInstanceId, RuntimeType, SignalMessage, SignalType, SpearMessage

#: A subscriber of runtime events.
EventSubscriber = Callable[[RuntimeEvent], None]


def _launcher_name(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in LAUNCHERS:
        raise ValueError(f"{attribute.name} must be one of {', '.join(LAUNCHERS)}, not {value!r}")


@attrs.frozen
class ProcessRuntimeConfig:
    """Settings of a :class:`ProcessRuntime`."""

    __spear_settings__ = True

    backoff: BackoffPolicy = setting(
        attrs.Factory(BackoffPolicy), doc="Restart delays and crash-loop detection."
    )
    launcher: str = setting(
        "auto",
        doc=(
            'How processes are started: ``"util-linux"`` (setpriv, prlimit, setsid), ``"python"`` (a '
            'second interpreter), or ``"auto"`` (util-linux when its tools are found).'
        ),
        validator=_launcher_name,
    )
    output_line_limit: int = setting(
        LINE_LIMIT,
        doc="Longest output line logged whole, in bytes; longer ones are cut.",
        validator=positive,
    )
    output_drain_timeout: float = setting(
        OUTPUT_DRAIN_TIMEOUT,
        doc="Seconds after a process exits to wait for its last output before reporting the exit.",
        validator=positive,
    )
    kill_wait: float = setting(
        10.0,
        doc="Seconds to wait for a process group to vanish after SIGKILL before logging that it survived.",
        validator=positive,
    )
    reap_orphans: bool = setting(
        False,
        doc=(
            "Make the spearlet the reaper of its instances' orphans (``PR_SET_CHILD_SUBREAPER``), so that "
            "killed grandchildren never linger as zombies where init does not reap them (a container "
            "whose PID 1 is not an init).  Orphans of other children of the process come to it as well, "
            "and are reaped when they end."
        ),
    )


@attrs.define(eq=False)
class _State:
    """The runtime's bookkeeping of one instance."""

    instance: TaskInstance
    tracker: RestartTracker
    process: InstanceProcessProtocol | None = None
    ready: Deferred[TaskInstance] | None = None
    startup_timer: IDelayedCall | None = None
    restart_timer: IDelayedCall | None = None
    connection_waiter: Deferred[Any] | None = None
    # The connection of the previous process, until it is seen lost.
    stale_connection: Any = None
    stopping: Waiters | None = None
    # Bumped by every start, restart and stop: a launch still in flight
    # whose generation is no longer current gives up.
    generation: int = 0
    group_gone: Waiters = attrs.field(factory=Waiters)
    # For cpu_percent: (time, CPU seconds) of the previous get_metrics.
    cpu_sample: tuple[float, float] | None = None


@implementer(IRuntime)
class ProcessRuntime(Service):
    """
    See the module docstring.

    :param factory: makes each instance's channel.
    :param secrets: holds each instance's secret; the validator of the
        factory's channels must consult it.
    :param parent_environment: the spearlet's environment the whitelist
        reads (``os.environ`` by default).
    """

    name = "process-runtime"
    runtime_type = RuntimeType.PROCESS
    log = Logger()

    def __init__(
        self,
        factory: CommunicationFactory,
        secrets: SecretRegistry,
        *,
        reactor: Any = None,
        config: ProcessRuntimeConfig | None = None,
        parent_environment: Mapping[str, str] | None = None,
        groups: ProcessGroups | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        self.factory = factory
        self.secrets = secrets
        self.config = config or ProcessRuntimeConfig()
        self.parent_environment: Mapping[str, str] = (
            os.environ if parent_environment is None else parent_environment
        )
        self.groups = groups or ProcessGroups()
        self.launcher: Launcher = select_launcher(
            self.config.launcher, path=self.parent_environment.get("PATH")
        )
        self._states: dict[RuntimeInstanceId, _State] = {}
        self._subscribers: list[EventSubscriber] = []
        self._shutting_down = False
        self._subreaper: bool | None = None
        # Collects the orphans adopted as a subreaper, while instances run.
        self._orphans: LoopingCall | None = None

    @classmethod
    def from_connection_manager(cls, manager: Any, **kwargs: Any) -> ProcessRuntime:
        """
        A runtime whose channels and secrets are ``manager``'s (a
        ConnectionManager: its ``factory``, and its ``validator``, which must
        be a SecretRegistry).
        """
        registry = manager.validator
        if not isinstance(registry, SecretRegistry):
            raise TypeError(
                f"the connection manager validates with {type(registry).__name__}; the process runtime "
                "needs a SecretRegistry to issue instance secrets"
            )
        return cls(manager.factory, registry, reactor=kwargs.pop("reactor", manager.reactor), **kwargs)

    # -- events -------------------------------------------------------------------------------------

    def subscribe(self, subscriber: EventSubscriber) -> Callable[[], None]:
        """Call ``subscriber(event)`` with every :class:`RuntimeEvent`; returns an unsubscriber."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def _emit(self, instance: TaskInstance, kind: RuntimeEventKind, **fields: Any) -> None:
        event = RuntimeEvent(kind, instance.instance_id, self.reactor.seconds(), instance.status, **fields)
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                self.log.failure("Runtime event subscriber failed on {kind}", kind=kind.value)

    def _set_status(self, state: _State, status: InstanceStatus, reason: str | None = None) -> None:
        instance = state.instance
        instance.set_status(status, self.reactor.seconds(), reason)
        self.log.info(
            "Instance {instance_id} is {status}{because}",
            instance_id=str(instance.instance_id),
            status=status.value,
            reason=reason,
            because=f": {reason}" if reason else "",
        )
        self._emit(instance, RuntimeEventKind.STATUS_CHANGED, reason=reason)

    # -- instances ------------------------------------------------------------------------------------

    @property
    def instances(self) -> dict[RuntimeInstanceId, TaskInstance]:
        """Every instance of this runtime, by id (a copy)."""
        return {instance_id: state.instance for instance_id, state in self._states.items()}

    def get_instance(self, instance_id: RuntimeInstanceId) -> TaskInstance | None:
        """The instance called ``instance_id``, if this runtime has it."""
        state = self._states.get(instance_id)
        return None if state is None else state.instance

    def _state(self, instance: TaskInstance) -> _State:
        state = self._states.get(instance.instance_id)
        if state is None or state.instance is not instance:
            raise ValueError(f"instance {instance.instance_id} does not belong to this runtime")
        return state

    def create_instance(
        self,
        task_id: str,
        instance_config: InstanceConfig,
        resource_limits: ResourceLimits | None = None,
    ) -> TaskInstance:
        """
        A new instance of ``task_id``, not started (Creating).  The program
        and the working directory are checked now, before anything is
        allocated.

        :raises InvalidInstanceConfig: saying what is wrong; nothing is kept.
        """
        if (
            not isinstance(task_id, str)
            or not task_id
            or not task_id.isprintable()
            or task_id != task_id.strip()
        ):
            raise InvalidInstanceConfig(f"task id must be a non-empty printable string, not {task_id!r}")
        config = checked_program(instance_config, self.parent_environment)
        try:
            instance_id = RuntimeInstanceId.generate(RuntimeType.PROCESS, prefix=task_id[:64])
        except ValueError as e:
            raise InvalidInstanceConfig(f"task id {task_id!r} cannot name an instance: {e}") from None
        instance = TaskInstance(
            instance_id, task_id, config, resource_limits or ResourceLimits(), self.reactor.seconds()
        )
        state = _State(instance, RestartTracker(self.config.backoff))
        self._states[instance_id] = state
        self._set_status(state, InstanceStatus.CREATING)
        return instance

    def remove_instance(self, instance: TaskInstance) -> None:
        """
        Forget ``instance``, which must not be running (Creating, Stopped or
        Error).

        :raises ValueError: when it is running or stopping.
        """
        state = self._state(instance)
        if instance.status not in (InstanceStatus.CREATING, InstanceStatus.STOPPED, InstanceStatus.ERROR):
            raise ValueError(f"instance {instance.instance_id} is {instance.status.value}; stop it first")
        if state.process is not None and state.process.running:
            raise ValueError(f"instance {instance.instance_id} still has a running process")
        del self._states[instance.instance_id]

    # -- starting ------------------------------------------------------------------------------------

    def start_instance(self, instance: TaskInstance) -> Deferred[TaskInstance]:
        """
        Spawn ``instance`` (Creating, Stopped or Error); fires with it once
        its agent has authenticated (Ready).

        :return: a Deferred failing with ``InstanceStartFailed`` when the
            process cannot start, ends, or does not authenticate within the
            startup timeout; the instance is then in Error with that reason.
        """
        try:
            state = self._state(instance)
        except ValueError as e:
            return defer.fail(e)
        if self._shutting_down:
            return defer.fail(
                ShuttingDown("the process runtime is stopping", instance_id=instance.instance_id)
            )
        if instance.status not in (InstanceStatus.CREATING, InstanceStatus.STOPPED, InstanceStatus.ERROR):
            return defer.fail(
                ValueError(
                    f"instance {instance.instance_id} is {instance.status.value}; it cannot be started"
                )
            )
        state.tracker = RestartTracker(self.config.backoff)
        instance.restart_count = 0
        ready: Deferred[TaskInstance] = Deferred()
        state.ready = ready
        self._set_status(state, InstanceStatus.STARTING)
        self._launch(state)
        return ready

    @defer.inlineCallbacks
    def _launch(self, state: _State) -> Generator[Deferred[Any], Any, None]:
        instance = state.instance
        state.generation += 1
        generation = state.generation
        try:
            channel = yield self._channel_for(instance)
            # Children are spawned only once the reactor runs (its SIGCHLD
            # handling, if any, is in place then).
            yield self._when_running()
        except Exception as e:
            if state.generation == generation:
                yield self._fail_start(state, f"could not make its channel: {e}")
            return
        if state.generation != generation:
            # Stopped meanwhile: the stop may have closed the channel before
            # this one was made.
            if instance.status in (InstanceStatus.STOPPED, InstanceStatus.ERROR):
                yield self.factory.remove_channel(instance.instance_id)
            return
        try:
            process = self._spawn(state, channel)
        except Exception as e:
            self.log.failure("Spawning {instance_id} failed", instance_id=str(instance.instance_id))
            yield self._fail_start(state, f"could not spawn its process: {e}")
            return
        state.startup_timer = self.reactor.callLater(
            instance.config.startup_timeout, self._startup_timed_out, state, process
        )
        self._await_connection(state, process, channel)

    def _channel_for(self, instance: TaskInstance) -> Deferred[Channel]:
        config = self.factory.config
        if instance.config.transports is not None:
            config = attrs.evolve(config, transports=instance.config.transports)
        return self.factory.get_or_create_channel(instance.instance_id, config)

    def _when_running(self) -> Deferred[None]:
        if getattr(self.reactor, "running", True):
            return defer.succeed(None)
        started: Deferred[None] = Deferred()
        self.reactor.callWhenRunning(started.callback, None)
        return started

    def _spawn(self, state: _State, channel: Channel) -> InstanceProcessProtocol:
        instance = state.instance
        config = instance.config
        if channel.address is None:
            raise RuntimeError(f"channel of {instance.instance_id} has no address")
        if self.config.reap_orphans and self._subreaper is None:
            self._subreaper = become_subreaper()
            if not self._subreaper:
                self.log.warn("Could not become the reaper of orphaned instance processes")
        if self._subreaper and self._orphans is None:
            self._orphans = LoopingCall(self._reap_orphans)
            self._orphans.clock = self.reactor
            self._orphans.start(self.groups.orphan_interval, now=False)
        rlimits, notes = effective_limits(instance.limits.as_rlimits())
        for note in notes:
            self.log.warn("Instance {instance_id}: {note}", instance_id=str(instance.instance_id), note=note)
        secret = self.secrets.issue(instance.instance_id)
        environment = build_environment(
            config,
            self.parent_environment,
            protocol_environment(instance.instance_id, secret, channel.address.environment()),
        )
        command = self.launcher.command(
            config.executable, config.args, rlimits, os.getpid(), environment=environment.keys()
        )
        process = InstanceProcessProtocol(
            instance,
            reactor=self.reactor,
            groups=self.groups,
            secret=secret,
            on_exit=lambda process, info: self._exited(state, process, info),
            line_limit=self.config.output_line_limit,
            drain_timeout=self.config.output_drain_timeout,
        )
        state.stale_connection = channel.connection
        try:
            # An explicit environment, always: with env=None Twisted would
            # pass on the spearlet's whole environment.
            transport = self.reactor.spawnProcess(
                process, command.executable, list(command.argv), env=environment, path=config.working_dir
            )
        except Exception:
            self.secrets.revoke(instance.instance_id)
            raise
        state.process = process
        state.group_gone = Waiters()
        state.cpu_sample = None
        instance.pid = transport.pid
        instance.started_at = self.reactor.seconds()
        instance.address = str(channel.address)
        self.log.info(
            "Spawned instance {instance_id} (pid {pid}, {launcher} launcher): {executable} on {address}",
            instance_id=str(instance.instance_id),
            pid=transport.pid,
            launcher=self.launcher.name,
            executable=config.executable,
            address=instance.address,
        )
        self._emit(instance, RuntimeEventKind.SPAWNED, pid=transport.pid)
        return process

    def _fail_start(self, state: _State, reason: str) -> Deferred[None]:
        """The (first) start failed: resources released, Error with ``reason``, the starter told."""
        released = self._release(state)
        self._set_status(state, InstanceStatus.ERROR, reason)
        self._fail_ready(state, reason)
        return released

    def _fail_ready(self, state: _State, reason: str) -> None:
        ready, state.ready = state.ready, None
        if ready is not None and not ready.called:
            ready.errback(InstanceStartFailed(reason, instance_id=state.instance.instance_id))

    # -- readiness ----------------------------------------------------------------------------------

    def _await_connection(self, state: _State, process: InstanceProcessProtocol, channel: Channel) -> None:
        waiter = channel.when_connected()
        state.connection_waiter = waiter
        waiter.addCallbacks(
            lambda _: self._connected(state, process, channel),
            lambda failure: None,  # the channel closed, or we stopped waiting
        )

    def _connected(self, state: _State, process: InstanceProcessProtocol, channel: Channel) -> None:
        state.connection_waiter = None
        if state.process is not process or not process.running:
            return
        connection = channel.connection
        if connection is None:
            self._await_connection(state, process, channel)
            return
        if connection is state.stale_connection:
            # The previous process's connection, not yet seen lost.
            connection.when_lost().addCallback(lambda _: self._await_connection(state, process, channel))
            return
        state.stale_connection = connection
        instance = state.instance
        if state.startup_timer is not None and state.startup_timer.active():
            state.startup_timer.cancel()
        state.startup_timer = None
        if instance.status in (InstanceStatus.STARTING, InstanceStatus.UNHEALTHY):
            was = instance.status
            instance.ready_at = self.reactor.seconds()
            self._set_status(
                state,
                InstanceStatus.READY,
                "its agent authenticated" if was is InstanceStatus.STARTING else "its agent reconnected",
            )
        ready, state.ready = state.ready, None
        if ready is not None and not ready.called:
            ready.callback(instance)
        connection.when_lost().addCallback(lambda _: self._disconnected(state, process, channel))

    def _disconnected(self, state: _State, process: InstanceProcessProtocol, channel: Channel) -> None:
        if state.process is not process or not process.running or channel.closed:
            return
        if state.instance.status in SERVING:
            self._set_status(state, InstanceStatus.UNHEALTHY, "its agent disconnected")
        self._await_connection(state, process, channel)

    def _startup_timed_out(self, state: _State, process: InstanceProcessProtocol) -> None:
        state.startup_timer = None
        instance = state.instance
        if (
            state.process is not process
            or not process.running
            or instance.status is not InstanceStatus.STARTING
        ):
            return
        reason = f"its agent did not authenticate within {instance.config.startup_timeout:g} s"
        refused = self._last_connection_error(instance)
        if refused:
            reason += f" (last connection attempt: {refused})"
        self.log.warn(
            "Instance {instance_id}: {reason}; killing it",
            instance_id=str(instance.instance_id),
            reason=reason,
        )
        self._emit(instance, RuntimeEventKind.STARTUP_TIMEOUT, reason=reason, pid=process.pid)
        process.signal_group(signal.SIGKILL)
        self._set_status(state, InstanceStatus.ERROR, reason)
        self._fail_ready(state, reason)

    def _last_connection_error(self, instance: TaskInstance) -> str | None:
        channel = self.factory.get_channel(instance.instance_id)
        return None if channel is None else channel.last_connection_error

    # -- exits and restarts ------------------------------------------------------------------------

    def _exited(self, state: _State, process: InstanceProcessProtocol, info: ExitInfo) -> None:
        instance = state.instance
        now = self.reactor.seconds()
        lived = instance.uptime(now)
        if state.process is process:
            self._cancel_timers(state, restart=False)
        instance.pid = None
        instance.last_exit = info
        # Its secret dies with it; a restart gets a fresh one.
        self.secrets.revoke(instance.instance_id)
        self.log.info(
            "Instance {instance_id} (pid {pid}) {reason} after {lived:.1f} s",
            instance_id=str(instance.instance_id),
            pid=process.pid,
            reason=info.reason,
            exit_code=info.exit_code,
            signal=info.signal,
            lived=lived,
        )
        self._emit(instance, RuntimeEventKind.EXITED, reason=info.reason, pid=process.pid, exit=info)
        assert process.pid is not None
        gone = state.group_gone
        wait_group_gone(self.reactor, self.groups, process.pid, self.config.kill_wait).addCallback(
            self._group_settled, instance, process.pid, gone
        )
        status = instance.status
        if status is InstanceStatus.STOPPING:
            return
        if status is InstanceStatus.ERROR:
            self._release(state)
            return
        if state.ready is not None:
            reason = f"{info.reason}, before its agent authenticated"
            refused = self._last_connection_error(instance)
            if refused:
                reason += f" (last connection attempt: {refused})"
            self._fail_start(state, reason)
            return
        policy = instance.config.restart_policy
        if policy is RestartPolicy.NEVER or (policy is RestartPolicy.ON_FAILURE and info.clean):
            self._release(state)
            if info.clean:
                self._set_status(state, InstanceStatus.STOPPED, info.reason)
            else:
                self._set_status(state, InstanceStatus.ERROR, info.reason)
            return
        self._schedule_restart(state, lived, info.reason)

    def _group_settled(self, gone: bool, instance: TaskInstance, pgid: int, waiters: Waiters) -> None:
        if not gone:
            self.log.error(
                "Process group {pgid} of instance {instance_id} survived SIGKILL for {seconds:g} s",
                pgid=pgid,
                instance_id=str(instance.instance_id),
                seconds=self.config.kill_wait,
            )
        waiters.fire()

    def _schedule_restart(self, state: _State, lived: float, reason: str) -> None:
        instance = state.instance
        delay = state.tracker.next_delay(self.reactor.seconds(), lived)
        if delay is None:
            backoff = self.config.backoff
            loop = (
                f"crash loop: {backoff.crash_loop_restarts} restarts within {backoff.crash_loop_window:g} s;"
                f" last: {reason}"
            )
            self.log.error(
                "Instance {instance_id}: {reason}", instance_id=str(instance.instance_id), reason=loop
            )
            self._release(state)
            self._set_status(state, InstanceStatus.ERROR, loop)
            self._emit(instance, RuntimeEventKind.CRASH_LOOP, reason=loop)
            return
        self._set_status(state, InstanceStatus.STARTING, f"restarting in {delay:g} s after: {reason}")
        self._emit(instance, RuntimeEventKind.RESTART_SCHEDULED, reason=reason, delay=delay)
        state.restart_timer = self.reactor.callLater(delay, self._restart, state)

    def _restart(self, state: _State) -> None:
        state.restart_timer = None
        if state.instance.status is not InstanceStatus.STARTING or self._shutting_down:
            return
        state.instance.restart_count += 1
        self._launch(state)

    def _cancel_timers(self, state: _State, restart: bool = True) -> None:
        timers = [state.startup_timer, state.restart_timer] if restart else [state.startup_timer]
        for timer in timers:
            if timer is not None and timer.active():
                timer.cancel()
        state.startup_timer = None
        if restart:
            state.restart_timer = None
        waiter, state.connection_waiter = state.connection_waiter, None
        if waiter is not None and not waiter.called:
            waiter.cancel()

    def _release(self, state: _State) -> Deferred[None]:
        """Forget the instance's secret and close its channel (no process is running)."""
        instance_id = state.instance.instance_id
        self.secrets.revoke(instance_id)
        self._cancel_timers(state)
        return self.factory.remove_channel(instance_id)

    # -- stopping ----------------------------------------------------------------------------------

    def stop_instance(self, instance: TaskInstance) -> Deferred[TaskInstance]:
        """
        Stop ``instance``: a ``Terminate`` signal, the grace period, SIGTERM
        to its process group, the kill timeout, SIGKILL to the group.  Fires
        with the instance (Stopped) once its process group is gone and its
        channel closed.
        """
        try:
            state = self._state(instance)
        except ValueError as e:
            return defer.fail(e)
        stopping = state.stopping
        if stopping is None:
            if instance.status is InstanceStatus.STOPPED and (
                state.process is None or not state.process.running
            ):
                return defer.succeed(instance)
            stopping = state.stopping = Waiters()
            self._stop(state).addBoth(self._stopped, state, stopping)
        return stopping.wait().addCallback(lambda _: instance)

    def _stopped(self, result: Any, state: _State, waiters: Waiters) -> None:
        if isinstance(result, Failure):
            self.log.failure(
                "Stopping instance {instance_id} failed", result, instance_id=str(state.instance.instance_id)
            )
        state.stopping = None
        waiters.fire()

    @defer.inlineCallbacks
    def _stop(self, state: _State) -> Generator[Deferred[Any], Any, TaskInstance]:
        instance = state.instance
        state.generation += 1
        self._cancel_timers(state)
        self._set_status(state, InstanceStatus.STOPPING)
        self._fail_ready(state, "stopped before its agent authenticated")
        process = state.process
        if process is not None:
            if process.running:
                yield self._terminate(instance, process)
            yield process.when_reported()
            yield process.when_ended()
            yield state.group_gone.wait()
        yield self._release(state)
        self._set_status(state, InstanceStatus.STOPPED)
        return instance

    @defer.inlineCallbacks
    def _terminate(
        self, instance: TaskInstance, process: InstanceProcessProtocol
    ) -> Generator[Deferred[Any], Any, None]:
        config = instance.config
        instance_id = str(instance.instance_id)
        channel = self.factory.get_channel(instance.instance_id)
        if channel is not None and channel.is_connected():
            self.log.info(
                "Instance {instance_id}: Terminate signal; {seconds:g} s to exit",
                instance_id=instance_id,
                seconds=config.stop_grace_period,
            )
            terminate = SpearMessage.signal(0, SignalMessage(SignalType.TERMINATE, instance.task_id))
            channel.send(terminate).addErrback(lambda _: None)
            if (yield self._wait_exit(process, config.stop_grace_period)):
                return
        if not process.running:
            return
        self.log.info(
            "Instance {instance_id}: SIGTERM to its process group; {seconds:g} s to exit",
            instance_id=instance_id,
            seconds=config.kill_timeout,
        )
        process.signal_group(signal.SIGTERM)
        if (yield self._wait_exit(process, config.kill_timeout)):
            return
        self.log.warn("Instance {instance_id}: SIGKILL to its process group", instance_id=instance_id)
        process.signal_group(signal.SIGKILL)
        if not (yield self._wait_exit(process, self.config.kill_wait)):
            self.log.error(
                "Instance {instance_id} (pid {pid}) survived SIGKILL for {seconds:g} s",
                instance_id=instance_id,
                pid=process.pid,
                seconds=self.config.kill_wait,
            )

    def _wait_exit(self, process: InstanceProcessProtocol, seconds: float) -> Deferred[bool]:
        """Fires True once ``process`` has exited, False if ``seconds`` pass first."""
        if not process.running:
            return defer.succeed(True)
        if seconds <= 0:
            return defer.succeed(False)
        waiting = process.when_exited().addTimeout(seconds, self.reactor)
        return waiting.addCallbacks(
            lambda _: True, lambda failure: failure.trap(defer.TimeoutError) and False
        )

    def startService(self) -> None:
        self._shutting_down = False
        service: Any = super()
        service.startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop every instance; fires only when every child process (and its
        process group) is gone.
        """
        service: Any = super()
        service.stopService()
        self._shutting_down = True
        stops = [self.stop_instance(state.instance) for state in list(self._states.values())]
        return defer.DeferredList(stops, consumeErrors=True).addCallback(self._all_stopped)

    def _all_stopped(self, _: object) -> None:
        orphans, self._orphans = self._orphans, None
        if orphans is not None:
            if orphans.running:
                orphans.stop()
            self._reap_orphans()

    def _reap_orphans(self) -> None:
        reaped = self.groups.reap_orphans()
        if reaped:
            self.log.info("Reaped {count} orphaned processes adopted by the spearlet", count=reaped)

    # -- observation --------------------------------------------------------------------------------

    def set_serving_status(
        self, instance: TaskInstance, status: InstanceStatus, reason: str | None = None
    ) -> None:
        """
        Move a serving instance between Ready, Running and Busy (for its
        scheduler: idle, executing, at capacity).

        :raises ValueError: when ``status`` is not one of those, or the
            instance is not serving.
        """
        state = self._state(instance)
        if status not in SERVING:
            raise ValueError(f"{status.value} is not a serving status (Ready, Running, Busy)")
        if instance.status not in SERVING:
            raise ValueError(f"instance {instance.instance_id} is {instance.status.value}, not serving")
        if instance.status is not status:
            self._set_status(state, status, reason)

    def health_check(self, instance: TaskInstance) -> InstanceHealth:
        """Whether ``instance`` can take work: serving, its process alive, its agent connected."""
        state = self._state(instance)
        if instance.status not in SERVING:
            last = instance.history[-1].reason if instance.history else None
            return InstanceHealth(False, instance.status, last or f"instance is {instance.status.value}")
        if state.process is None or not state.process.running:
            return InstanceHealth(False, instance.status, "its process is not running")
        channel = self.factory.get_channel(instance.instance_id)
        if channel is None or not channel.is_connected():
            return InstanceHealth(False, instance.status, "its agent is not connected")
        return InstanceHealth(True, instance.status)

    def get_metrics(self, instance: TaskInstance) -> InstanceMetrics:
        """CPU, RSS, open descriptors and threads of the instance's process and its descendants."""
        state = self._state(instance)
        pid = instance.pid
        if pid is None:
            return InstanceMetrics(None)
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            return InstanceMetrics(pid)
        cpu = 0.0
        rss = fds = threads = 0
        counted = 0
        for member in members:
            try:
                with member.oneshot():
                    times = member.cpu_times()
                    cpu += times.user + times.system
                    rss += member.memory_info().rss
                    fds += member.num_fds()
                    threads += member.num_threads()
                counted += 1
            except psutil.Error:
                continue
        now = self.reactor.seconds()
        since, before = state.cpu_sample or (instance.started_at or now, 0.0)
        state.cpu_sample = (now, cpu)
        elapsed = now - since
        percent = round(100.0 * max(0.0, cpu - before) / elapsed, 2) if elapsed > 0 else None
        return InstanceMetrics(
            pid,
            cpu_percent=percent,
            cpu_seconds=round(cpu, 3),
            rss_bytes=rss,
            open_fds=fds,
            threads=threads,
            processes=counted,
        )
