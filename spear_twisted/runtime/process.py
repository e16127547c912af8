"""
:class:`ProcessRuntime`: instances as child processes, supervised.

Each instance gets a fresh secret (registered with the ConnectionManager's
:class:`~spear_twisted.auth.SecretRegistry`), a channel with its own address
from the CommunicationFactory, and an explicit environment (nothing of the
spearlet's own but the whitelisted variables).  It starts through the
launcher (new session, parent-death signal, resource limits, exec), is Ready
once its agent authenticates, and is stopped politely then firmly: a
``Terminate`` signal, a grace period, SIGTERM to its process group, a kill
timeout, SIGKILL to the group.

A process's death is noticed when it exits (a pidfd in the reactor, or a
periodic reap where pidfds are missing), not when its pipes close, and
whether or not the reactor installed a SIGCHLD handler: an embedding
application that runs the reactor without signal handlers, or a daemonised
twistd, still sees its instances exit.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import psutil
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReadDescriptor
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spear_twisted.auth import SecretRegistry
from spear_twisted.channels.channel import Channel
from spear_twisted.channels.events import ConnectionEvent, ConnectionEventKind
from spear_twisted.connections.manager import ConnectionManager
from spear_twisted.errors import InstanceStartFailed
from spear_twisted.runtime.interfaces import IRuntime
from spear_twisted.runtime.model import (
    ExitInfo,
    InstanceConfig,
    InstanceHealth,
    InstanceMetrics,
    InstanceStatus,
    ResourceLimits,
    RestartPolicy,
    StatusChange,
    TaskInstance,
)
from spear_twisted.runtime.output import LINE_LIMIT, LineSplitter
from spear_twisted.runtime.supervision import BackoffPolicy, RestartTracker, describe_exit
from spear_twisted.wire import RuntimeInstanceId, RuntimeType, SignalMessage, SignalType, SpearMessage

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")

#: Statuses in which an instance can take work.
SERVING = frozenset({InstanceStatus.READY, InstanceStatus.RUNNING, InstanceStatus.BUSY})

#: A subscriber of status changes.
StatusSubscriber = Callable[[TaskInstance, StatusChange], None]


class InvalidInstanceConfig(ValueError):
    """The instance cannot be created as configured; the message says why."""


@attrs.frozen
class ProcessRuntimeConfig:
    """Settings of the process runtime."""

    backoff: BackoffPolicy = attrs.field(factory=BackoffPolicy)
    output_line_limit: int = LINE_LIMIT
    #: The interpreter that runs the launcher.
    launcher_python: str = sys.executable
    #: Seconds between reaps where no pidfd can watch a process.
    reap_interval: float = 1.0
    #: Seconds to wait for a process after SIGKILL before giving up on it.
    kill_wait: float = 10.0


def resolve_executable(executable: str, path: str | None) -> str:
    """
    The absolute path of ``executable``, which must exist and be executable.

    :raises InvalidInstanceConfig: saying what is wrong.
    """
    if not executable:
        raise InvalidInstanceConfig("executable is empty")
    if os.sep in executable:
        candidate: str | None = os.path.abspath(executable)
    else:
        candidate = shutil.which(executable, path=path)
        if candidate is None:
            raise InvalidInstanceConfig(f"executable {executable!r} not found on PATH {path!r}")
    assert candidate is not None
    if not os.path.exists(candidate):
        raise InvalidInstanceConfig(f"executable {candidate} does not exist")
    if not os.path.isfile(candidate):
        raise InvalidInstanceConfig(f"executable {candidate} is not a file")
    if not os.access(candidate, os.X_OK):
        raise InvalidInstanceConfig(f"executable {candidate} is not executable")
    return candidate


def build_environment(
    config: InstanceConfig,
    parent: Mapping[str, str],
    protocol: Mapping[str, str],
) -> dict[str, str]:
    """
    An instance's whole environment: the whitelisted parent variables, then
    the task's, then the protocol's (PROTOCOL.md section 7), which win.
    """
    environment = {name: parent[name] for name in config.inherit_env if name in parent}
    environment.update(config.env)
    environment.update(protocol)
    return environment


@implementer(IReadDescriptor)
class _ExitWatcher:
    """Reaps one child as soon as it exits, through a pidfd in the reactor."""

    def __init__(self, reactor: Any, process: Any, pidfd: int) -> None:
        self.reactor = reactor
        self.process = process
        self.pidfd = pidfd

    def fileno(self) -> int:
        return self.pidfd

    def doRead(self) -> None:
        self.stop()
        self.process.reapProcess()

    def stop(self) -> None:
        if self.pidfd >= 0:
            self.reactor.removeReader(self)
            os.close(self.pidfd)
            self.pidfd = -1

    def connectionLost(self, reason: Failure) -> None:
        self.stop()

    def logPrefix(self) -> str:
        return "ExitWatcher"


class InstanceProcessProtocol(ProcessProtocol):
    """One instance process: output into the log, exit to the runtime."""

    log = Logger()

    def __init__(self, runtime: ProcessRuntime, instance: TaskInstance, secret: str) -> None:
        self.runtime = runtime
        self.instance = instance
        self.exited: Deferred[ExitInfo] = Deferred()
        self.exit_info: ExitInfo | None = None
        self.killed_by_us = False
        self.pgid: int | None = None
        limit = runtime.config.output_line_limit
        # The secret is kept only to mask it, should the program print it.
        self.stdout = LineSplitter(self._emitter("stdout"), limit=limit, redact=(secret,))
        self.stderr = LineSplitter(self._emitter("stderr"), limit=limit, redact=(secret,))
        self._watcher: _ExitWatcher | None = None

    def _emitter(self, stream: str) -> Callable[[str], None]:
        instance_id = str(self.instance.instance_id)

        def emit(line: str) -> None:
            self.log.info(
                "[{instance_id}] {stream}: {line}", instance_id=instance_id, stream=stream, line=line
            )

        return emit

    def connectionMade(self) -> None:
        pid = self.transport.pid
        self.pgid = pid  # the launcher makes the instance a session (and group) leader
        self.transport.closeStdin()
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return  # gone already, or no pidfds: the runtime's periodic reap covers it
        self._watcher = _ExitWatcher(self.runtime.reactor, self.transport, pidfd)
        self.runtime.reactor.addReader(self._watcher)

    def outReceived(self, data: bytes) -> None:
        self.stdout.feed(data)

    def errReceived(self, data: bytes) -> None:
        self.stderr.feed(data)

    def processExited(self, reason: Failure) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        value = reason.value
        self.stdout.flush()
        self.stderr.flush()
        self.exit_info = describe_exit(
            getattr(value, "exitCode", None),
            getattr(value, "signal", None),
            limits=self.instance.limits,
            stderr_tail=self.stderr.tail,
            killed_by_us=self.killed_by_us,
        )
        # Anything the instance left in its group dies with it: no orphans.
        self.signal_group(signal.SIGKILL)
        self.exited.callback(self.exit_info)

    def processEnded(self, reason: Failure) -> None:
        self.stdout.flush()
        self.stderr.flush()

    def signal_group(self, number: int) -> bool:
        """Send ``number`` to the instance's process group; False if it is gone."""
        if self.pgid is None:
            return False
        if number in (signal.SIGKILL, signal.SIGTERM):
            self.killed_by_us = True
        try:
            os.killpg(self.pgid, number)
        except OSError as e:
            if e.errno in (errno.ESRCH, errno.EPERM):
                return False
            raise
        return True


@implementer(IRuntime)
class ProcessRuntime(Service):
    """See the module docstring."""

    name = "process-runtime"
    runtime_type = RuntimeType.PROCESS
    log = Logger()

    def __init__(
        self,
        connection_manager: ConnectionManager,
        *,
        secrets: SecretRegistry | None = None,
        reactor: Any = None,
        config: ProcessRuntimeConfig | None = None,
        parent_environment: Mapping[str, str] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if secrets is None:
            if not isinstance(connection_manager.validator, SecretRegistry):
                raise TypeError("pass the SecretRegistry the connection manager validates with")
            secrets = connection_manager.validator
        self.reactor = reactor
        self.connections = connection_manager
        self.secrets = secrets
        self.config = config or ProcessRuntimeConfig()
        self.parent_environment = os.environ if parent_environment is None else parent_environment
        self.instances: dict[RuntimeInstanceId, TaskInstance] = {}
        self._processes: dict[RuntimeInstanceId, InstanceProcessProtocol] = {}
        self._trackers: dict[RuntimeInstanceId, RestartTracker] = {}
        self._restart_timers: dict[RuntimeInstanceId, IDelayedCall] = {}
        self._ready_waiters: dict[RuntimeInstanceId, Deferred[TaskInstance]] = {}
        self._subscribers: list[StatusSubscriber] = []
        self._serial = itertools.count(1)
        self._reaper: task.LoopingCall | None = None
        self._unsubscribe = connection_manager.subscribe(self._connection_event)

    # -- status -------------------------------------------------------------------------------

    def subscribe(self, subscriber: StatusSubscriber) -> Callable[[], None]:
        """Call ``subscriber(instance, change)`` on every status change; returns an unsubscriber."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber) if subscriber in self._subscribers else None

    def _set_status(self, instance: TaskInstance, status: InstanceStatus, reason: str | None = None) -> None:
        if instance.status is status and instance.history:
            return
        instance.set_status(status, self.reactor.seconds(), reason)
        change = instance.history[-1]
        self.log.info(
            "Instance {instance_id} is {status}{because}",
            instance_id=str(instance.instance_id),
            status=status.value,
            because=f": {reason}" if reason else "",
        )
        for subscriber in list(self._subscribers):
            try:
                subscriber(instance, change)
            except Exception:
                self.log.failure("Instance status subscriber failed")

    # -- IRuntime -------------------------------------------------------------------------------

    def create_instance(
        self,
        task_id: str,
        instance_config: InstanceConfig,
        resource_limits: ResourceLimits | None = None,
    ) -> TaskInstance:
        """
        A new instance of ``task_id``, not started.  The executable and the
        working directory are checked now, before anything is allocated.

        :raises InvalidInstanceConfig: saying what is wrong.
        """
        path = build_environment(instance_config, self.parent_environment, {}).get("PATH", os.defpath)
        executable = resolve_executable(instance_config.executable, path)
        working_dir = instance_config.working_dir
        if working_dir is not None and not os.path.isdir(working_dir):
            raise InvalidInstanceConfig(f"working directory {working_dir} does not exist")
        config = attrs.evolve(instance_config, executable=executable)
        instance_id = RuntimeInstanceId(RuntimeType.PROCESS, f"{task_id}-{next(self._serial)}")
        instance = TaskInstance(
            instance_id, task_id, config, resource_limits or ResourceLimits(), self.reactor.seconds()
        )
        self.instances[instance_id] = instance
        self._set_status(instance, InstanceStatus.CREATING)
        return instance

    @defer.inlineCallbacks
    def start_instance(self, instance: TaskInstance) -> Any:
        """
        Spawn ``instance``; fires with it once its agent has authenticated.

        :raises InstanceStartFailed: the process could not start, exited, or
            did not authenticate within the startup timeout (the instance is
            then in Error with that reason).
        """
        if instance.status not in (InstanceStatus.CREATING, InstanceStatus.STOPPED, InstanceStatus.ERROR):
            raise ValueError(f"instance {instance.instance_id} is {instance.status.value}; cannot start it")
        self._trackers[instance.instance_id] = RestartTracker(self.config.backoff)
        result = yield self._launch(instance)
        return result

    @defer.inlineCallbacks
    def _launch(self, instance: TaskInstance) -> Any:
        instance_id = instance.instance_id
        if instance.status is not InstanceStatus.STARTING:
            self._set_status(instance, InstanceStatus.STARTING)
        try:
            channel = yield self._channel_for(instance)
            yield self._when_running()
            if instance.status is not InstanceStatus.STARTING:
                raise InstanceStartFailed(f"start abandoned: instance is {instance.status.value}")
            process = self._spawn(instance, channel)
        except InstanceStartFailed as e:
            self._set_status(instance, InstanceStatus.ERROR, e.message)
            raise
        except Exception as e:
            reason = f"could not start: {e}"
            self._set_status(instance, InstanceStatus.ERROR, reason)
            raise InstanceStartFailed(reason, instance_id=instance_id) from e
        ready: Deferred[TaskInstance] = Deferred()
        self._ready_waiters[instance_id] = ready
        timeout = self.reactor.callLater(
            instance.config.startup_timeout, self._startup_timed_out, instance, process
        )
        process.exited.addCallback(self._exited, instance, process)
        try:
            result = yield ready
        finally:
            if timeout.active():
                timeout.cancel()
        return result

    def _channel_for(self, instance: TaskInstance) -> Deferred[Channel]:
        factory = self.connections.factory
        channel = factory.get_channel(instance.instance_id)
        if channel is not None and not channel.closed and channel.ports:
            return defer.succeed(channel)
        config = self.connections.channel_config
        if instance.config.transports is not None:
            config = attrs.evolve(config, transports=instance.config.transports)
        return factory.get_or_create_channel(instance.instance_id, config)

    def _when_running(self) -> Deferred[None]:
        # Children are only spawned once the reactor runs: its SIGCHLD
        # handling (when it has any) is installed then.
        if getattr(self.reactor, "running", True):
            return defer.succeed(None)
        started: Deferred[None] = Deferred()
        self.reactor.callWhenRunning(started.callback, None)
        return started

    def _spawn(self, instance: TaskInstance, channel: Channel) -> InstanceProcessProtocol:
        assert channel.address is not None
        secret = self.secrets.issue(instance.instance_id)
        protocol_env = {
            "SPEAR_INSTANCE_ID": str(instance.instance_id),
            "SPEAR_SECRET": secret,
            "SECRET": secret,
            **channel.address.environment(),
        }
        environment = build_environment(instance.config, self.parent_environment, protocol_env)
        config = instance.config
        spec = {
            "executable": config.executable,
            "argv": [config.executable, *config.args],
            "rlimits": instance.limits.as_rlimits(),
            "parent": os.getpid(),
        }
        launcher = self.config.launcher_python
        process = InstanceProcessProtocol(self, instance, secret)
        transport = self.reactor.spawnProcess(
            process,
            launcher,
            [launcher, "-I", "-S", LAUNCHER, json.dumps(spec)],
            env=environment,
            path=config.working_dir,
        )
        instance.pid = transport.pid
        instance.started_at = self.reactor.seconds()
        instance.address = str(channel.address)
        self._processes[instance.instance_id] = process
        self._ensure_reaper()
        self.log.info(
            "Spawned instance {instance_id} (pid {pid}): {executable}",
            instance_id=str(instance.instance_id),
            pid=transport.pid,
            executable=config.executable,
        )
        return process

    def _ensure_reaper(self) -> None:
        # Covers processes no pidfd watches (old kernels) and a reactor
        # running without its SIGCHLD handler.
        if self._reaper is None:
            from twisted.internet.process import reapAllProcesses

            self._reaper = task.LoopingCall(reapAllProcesses)
            self._reaper.clock = self.reactor
            self._reaper.start(self.config.reap_interval, now=False)

    # -- readiness ------------------------------------------------------------------------------

    def _connection_event(self, event: ConnectionEvent) -> None:
        instance_id = event.instance_id
        if instance_id is None or instance_id not in self.instances:
            return
        instance = self.instances[instance_id]
        if event.kind is ConnectionEventKind.AUTHENTICATED:
            if instance.status in (InstanceStatus.STARTING, InstanceStatus.UNHEALTHY):
                instance.ready_at = self.reactor.seconds()
                self._set_status(instance, InstanceStatus.READY)
                waiter = self._ready_waiters.pop(instance_id, None)
                if waiter is not None:
                    waiter.callback(instance)
        elif event.kind is ConnectionEventKind.DISCONNECTED:
            process = self._processes.get(instance_id)
            alive = process is not None and process.exit_info is None
            if alive and instance.status in SERVING:
                self._set_status(instance, InstanceStatus.UNHEALTHY, "its agent disconnected")

    def _startup_timed_out(self, instance: TaskInstance, process: InstanceProcessProtocol) -> None:
        waiter = self._ready_waiters.pop(instance.instance_id, None)
        if waiter is None:
            return
        reason = f"did not authenticate within {instance.config.startup_timeout:g} s"
        self._set_status(instance, InstanceStatus.ERROR, reason)
        process.signal_group(signal.SIGKILL)
        waiter.errback(InstanceStartFailed(reason, instance_id=instance.instance_id))

    # -- exits and restarts --------------------------------------------------------------------------

    def _exited(self, info: ExitInfo, instance: TaskInstance, process: InstanceProcessProtocol) -> ExitInfo:
        instance_id = instance.instance_id
        if self._processes.get(instance_id) is process:
            del self._processes[instance_id]
        lived = instance.uptime(self.reactor.seconds())
        instance.pid = None
        instance.last_exit = info
        self.log.info(
            "Instance {instance_id} {reason} after {lived:.1f} s",
            instance_id=str(instance_id),
            reason=info.reason,
            lived=lived,
        )
        waiter = self._ready_waiters.pop(instance_id, None)
        if instance.status is InstanceStatus.STOPPING:
            return info
        if waiter is not None:
            reason = f"{info.reason} before authenticating"
            auth_error = self._last_auth_error(instance_id)
            if auth_error:
                reason += f" ({auth_error})"
            if instance.restart_count and self._schedule_restart(instance, lived, reason):
                # A restart attempt that failed: keep trying under the backoff.
                waiter.errback(InstanceStartFailed(reason, instance_id=instance_id))
                return info
            self._set_status(instance, InstanceStatus.ERROR, reason)
            waiter.errback(InstanceStartFailed(reason, instance_id=instance_id))
            return info
        if instance.status is InstanceStatus.ERROR:
            return info
        policy = instance.config.restart_policy
        if policy is RestartPolicy.NEVER or (policy is RestartPolicy.ON_FAILURE and info.clean):
            status = InstanceStatus.STOPPED if info.clean else InstanceStatus.ERROR
            self._set_status(instance, status, None if info.clean else info.reason)
            self._release(instance)
            return info
        self._schedule_restart(instance, lived, info.reason)
        return info

    def _schedule_restart(self, instance: TaskInstance, lived: float, reason: str) -> bool:
        """Arrange the next restart; False (and Error) in a crash loop."""
        tracker = self._trackers.setdefault(instance.instance_id, RestartTracker(self.config.backoff))
        delay = tracker.next_delay(self.reactor.seconds(), lived)
        if delay is None:
            backoff = self.config.backoff
            self._set_status(
                instance,
                InstanceStatus.ERROR,
                f"crash loop: {backoff.crash_loop_restarts} restarts within {backoff.crash_loop_window:g} s;"
                f" last: {reason}",
            )
            self._release(instance)
            return False
        self._set_status(instance, InstanceStatus.STARTING, f"restarting in {delay:g} s after: {reason}")
        self._restart_timers[instance.instance_id] = self.reactor.callLater(delay, self._restart, instance)
        return True

    def _restart(self, instance: TaskInstance) -> None:
        self._restart_timers.pop(instance.instance_id, None)
        if instance.status is not InstanceStatus.STARTING:
            return
        instance.restart_count += 1
        self._launch(instance).addErrback(lambda failure: failure.trap(InstanceStartFailed))

    def _last_auth_error(self, instance_id: RuntimeInstanceId) -> str | None:
        channel = self.connections.factory.get_channel(instance_id)
        return None if channel is None else channel.last_connection_error

    def _release(self, instance: TaskInstance) -> None:
        """Forget the instance's secret (its channel stays for a restart or a stop)."""
        self.secrets.revoke(instance.instance_id)

    # -- stopping ---------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def stop_instance(self, instance: TaskInstance) -> Any:
        """
        Stop ``instance``: ``Terminate``, grace period, SIGTERM to its group,
        kill timeout, SIGKILL to its group.  Fires once the process is gone
        and the instance's channel is closed.
        """
        instance_id = instance.instance_id
        timer = self._restart_timers.pop(instance_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        if instance.status is InstanceStatus.STOPPED:
            return instance
        self._set_status(instance, InstanceStatus.STOPPING)
        waiter = self._ready_waiters.pop(instance_id, None)
        if waiter is not None:
            waiter.errback(InstanceStartFailed("stopped before it was ready", instance_id=instance_id))
        process = self._processes.get(instance_id)
        if process is not None and process.exit_info is None:
            yield self._terminate(instance, process)
        self._release(instance)
        yield self.connections.factory.remove_channel(instance_id)
        self._set_status(instance, InstanceStatus.STOPPED)
        return instance

    @defer.inlineCallbacks
    def _terminate(self, instance: TaskInstance, process: InstanceProcessProtocol) -> Any:
        config = instance.config
        channel = self.connections.factory.get_channel(instance.instance_id)
        if channel is not None and channel.is_connected():
            terminate = SpearMessage.signal(0, SignalMessage(SignalType.TERMINATE, instance.task_id))
            channel.send(terminate).addErrback(lambda _: None)
        if (yield self._wait_exit(process, config.stop_grace_period)):
            return
        self.log.info(
            "Instance {instance_id}: SIGTERM to its process group", instance_id=str(instance.instance_id)
        )
        process.signal_group(signal.SIGTERM)
        if (yield self._wait_exit(process, config.kill_timeout)):
            return
        self.log.warn(
            "Instance {instance_id}: SIGKILL to its process group", instance_id=str(instance.instance_id)
        )
        process.signal_group(signal.SIGKILL)
        if not (yield self._wait_exit(process, self.config.kill_wait)):
            self.log.error(
                "Instance {instance_id} (pid {pid}) survived SIGKILL for {seconds} s",
                instance_id=str(instance.instance_id),
                pid=process.pgid,
                seconds=self.config.kill_wait,
            )

    def _wait_exit(self, process: InstanceProcessProtocol, seconds: float) -> Deferred[bool]:
        """Fires True once ``process`` has exited, False if ``seconds`` pass first."""
        if process.exit_info is not None:
            return defer.succeed(True)
        outcome: Deferred[bool] = Deferred()

        def exited(info: ExitInfo) -> ExitInfo:
            if not outcome.called:
                timer.cancel()
                outcome.callback(True)
            return info

        def timed_out() -> None:
            if not outcome.called:
                outcome.callback(False)

        timer = self.reactor.callLater(seconds, timed_out)
        process.exited.addCallback(exited)
        return outcome

    def stopService(self) -> Deferred[None]:
        """Stop every instance; fires only when every child process is gone."""
        super().stopService()
        stops = [self.stop_instance(instance) for instance in list(self.instances.values())]
        done = defer.DeferredList(stops, consumeErrors=True)

        def finished(_: object) -> None:
            if self._reaper is not None and self._reaper.running:
                self._reaper.stop()
            self._reaper = None
            self._unsubscribe()

        return done.addCallback(finished)

    # -- observation -------------------------------------------------------------------------------------

    def health_check(self, instance: TaskInstance) -> InstanceHealth:
        """Whether ``instance`` can take work: serving, process alive, channel connected."""
        if instance.status not in SERVING:
            return InstanceHealth(
                False, instance.status, instance.error or f"instance is {instance.status.value}"
            )
        process = self._processes.get(instance.instance_id)
        if process is None or process.exit_info is not None:
            return InstanceHealth(False, instance.status, "its process is not running")
        channel = self.connections.factory.get_channel(instance.instance_id)
        if channel is None or not channel.is_connected():
            return InstanceHealth(False, instance.status, "its agent is not connected")
        return InstanceHealth(True, instance.status)

    def get_metrics(self, instance: TaskInstance) -> InstanceMetrics:
        """CPU, RSS, open descriptors and threads of the instance's process and its descendants."""
        pid = instance.pid
        if pid is None:
            return InstanceMetrics(None)
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            return InstanceMetrics(pid)
        cpu = rss = fds = threads = 0.0
        for member in members:
            try:
                with member.oneshot():
                    times = member.cpu_times()
                    cpu += times.user + times.system
                    rss += member.memory_info().rss
                    fds += member.num_fds()
                    threads += member.num_threads()
            except psutil.Error:
                continue
        lived = max(instance.uptime(self.reactor.seconds()), 1e-9)
        return InstanceMetrics(
            pid,
            cpu_percent=round(100.0 * cpu / lived, 2),
            rss_bytes=int(rss),
            open_fds=int(fds),
            threads=int(threads),
            children=len(members) - 1,
        )

    def get_instance(self, instance_id: RuntimeInstanceId) -> TaskInstance | None:
        return self.instances.get(instance_id)
