"""Instances, their configuration, limits and status."""

from __future__ import annotations

import enum
from collections import deque
from typing import Any

import attrs

from spear_twisted.settings import not_negative, positive, positive_or_off, setting
from spear_twisted.wire import RuntimeInstanceId

#: Status changes kept per instance; older ones are dropped first.
HISTORY_LIMIT = 100

#: The variables an instance inherits from the spearlet unless configured otherwise.
DEFAULT_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR")


class InstanceStatus(enum.Enum):
    """
    Where an instance stands in its life.

    ``CREATING`` (made, not started), ``STARTING`` (spawned or waiting to be
    respawned, not yet authenticated), ``READY`` / ``RUNNING`` / ``BUSY``
    (serving: authenticated; idle, executing, at capacity), ``UNHEALTHY``
    (its process runs but its agent is not connected), ``STOPPING``,
    ``STOPPED``, ``ERROR`` (with a reason; not restarted).
    """

    CREATING = "Creating"
    STARTING = "Starting"
    READY = "Ready"
    RUNNING = "Running"
    BUSY = "Busy"
    UNHEALTHY = "Unhealthy"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    ERROR = "Error"


#: Statuses in which an instance can take work.
SERVING = frozenset({InstanceStatus.READY, InstanceStatus.RUNNING, InstanceStatus.BUSY})


def serving_status(status: InstanceStatus, outstanding: int, capacity: int) -> str:
    """
    The status shown for an instance: a serving one is Ready (idle), Running
    (executing) or Busy (at ``capacity``) by its outstanding requests.

    Worked out when asked, not stored in the instance: a status change is
    logged and sent to every runtime subscriber, which would cost more than
    the request itself twice per request.
    """
    if status not in SERVING:
        return status.value
    if outstanding <= 0:
        return InstanceStatus.READY.value
    if outstanding >= capacity:
        return InstanceStatus.BUSY.value
    return InstanceStatus.RUNNING.value


class RestartPolicy(enum.Enum):
    """When an instance whose process ended is started again."""

    #: Whatever the exit status.
    ALWAYS = "always"
    #: Only after a non-zero exit status or a signal.
    ON_FAILURE = "on-failure"
    #: Never: a clean exit is Stopped, any other is Error.
    NEVER = "never"


def _string_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)):
        raise TypeError(f"expected a sequence of strings, not a single {type(value).__name__}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"expected strings, not {type(item).__name__}: {item!r}")
    return items


def _environment(_instance: object, attribute: attrs.Attribute[Any], value: dict[str, str]) -> None:
    for name, item in value.items():
        if not isinstance(name, str) or not isinstance(item, str):
            raise TypeError(f"{attribute.name} must map strings to strings: {name!r}: {item!r}")
        if not name or "=" in name or "\0" in name or "\0" in item:
            raise ValueError(f"{attribute.name}: {name!r} is not a valid environment variable")


def _optional_transports(value: Any) -> tuple[str, ...] | None:
    return None if value is None else _string_tuple(value)


@attrs.frozen
class ResourceLimits:
    """
    Limits applied to an instance's process before its program starts
    (``setrlimit``, soft and hard); ``None`` leaves the limit inherited from
    the spearlet.  A value above the spearlet's own hard limit is lowered to
    it (an unprivileged process cannot raise a hard limit).
    """

    __spear_settings__ = True

    max_memory_bytes: int | None = setting(
        1024**3,
        doc=(
            "Address-space limit in bytes (``RLIMIT_AS``), default 1 GiB; an allocation beyond it fails "
            "(Python raises ``MemoryError``).  Runtimes that reserve much address space up front (the "
            "JVM, Go) need more, or ``false`` (``None``): no limit of its own."
        ),
        validator=positive_or_off,
    )
    max_cpu_seconds: int | None = setting(
        None,
        doc="CPU-time limit in seconds (``RLIMIT_CPU``), default unlimited; beyond it comes SIGXCPU.",
        validator=attrs.validators.optional(positive),
    )
    max_open_files: int | None = setting(
        1024,
        doc=(
            "Open file descriptor limit (``RLIMIT_NOFILE``), default 1024; ``false`` (``None``): "
            "the spearlet's own."
        ),
        validator=positive_or_off,
    )
    max_processes: int | None = setting(
        None,
        doc=(
            "Process limit (``RLIMIT_NPROC``), default unlimited.  The kernel counts every process of the "
            "user, not only the instance's."
        ),
        validator=attrs.validators.optional(positive),
    )

    def as_rlimits(self) -> dict[str, int]:
        """The limits that are set, as ``{"RLIMIT_AS": n, ...}``."""
        names = {
            "RLIMIT_AS": self.max_memory_bytes,
            "RLIMIT_CPU": self.max_cpu_seconds,
            "RLIMIT_NOFILE": self.max_open_files,
            "RLIMIT_NPROC": self.max_processes,
        }
        return {name: value for name, value in names.items() if value is not None}


@attrs.frozen
class InstanceConfig:
    """How to run the instances of one task."""

    __spear_settings__ = True

    executable: str = setting(
        doc="The program: a path, or a name looked up on the ``PATH`` the instance inherits."
    )
    args: tuple[str, ...] = setting((), doc="Its arguments.", converter=_string_tuple)
    env: dict[str, str] = setting(
        attrs.Factory(dict),
        doc="The task's environment variables (the protocol's variables of PROTOCOL.md section 7 win).",
        validator=_environment,
        hash=False,
    )
    working_dir: str | None = setting(None, doc="Working directory; the spearlet's own when unset.")
    inherit_env: tuple[str, ...] = setting(
        DEFAULT_INHERITED_ENV,
        doc="Names of the spearlet's environment variables passed on; nothing else of its environment is.",
        converter=_string_tuple,
    )
    restart_policy: RestartPolicy = setting(
        RestartPolicy.ON_FAILURE,
        doc='When an ended process is started again: ``"always"``, ``"on-failure"`` or ``"never"``.',
        converter=RestartPolicy,
    )
    startup_timeout: float = setting(
        30.0,
        doc="Seconds from spawning to the agent's authentication; beyond, the process is killed (Error).",
        validator=positive,
    )
    stop_grace_period: float = setting(
        5.0,
        doc="Seconds between the ``Terminate`` signal and SIGTERM to the process group.",
        validator=not_negative,
    )
    kill_timeout: float = setting(
        5.0, doc="Seconds between SIGTERM and SIGKILL to the process group.", validator=positive
    )
    transports: tuple[str, ...] | None = setting(
        None,
        doc='Transports offered to the instance, in order (``["tcp"]``); by default its runtime type\'s.',
        converter=_optional_transports,
    )


@attrs.frozen
class StatusChange:
    """One transition of an instance, at ``time`` on the runtime's clock."""

    time: float
    old: InstanceStatus | None
    new: InstanceStatus
    reason: str | None = None


@attrs.frozen
class ExitInfo:
    """How an instance's process ended, and why in words."""

    exit_code: int | None
    signal: int | None
    reason: str

    @property
    def clean(self) -> bool:
        """Whether it exited with status 0."""
        return self.exit_code == 0 and self.signal is None


@attrs.define
class TaskInstance:
    """
    One instance of a task: identity, configuration and current state.

    Mutable on purpose: the runtime updates it as the instance lives.  Every
    status change is appended to ``history`` (the last :data:`HISTORY_LIMIT`).
    """

    instance_id: RuntimeInstanceId
    task_id: str
    config: InstanceConfig
    limits: ResourceLimits
    created_at: float
    status: InstanceStatus = InstanceStatus.CREATING
    #: Why the instance is in Error (``None`` in any other status).
    error: str | None = None
    history: deque[StatusChange] = attrs.field(factory=lambda: deque(maxlen=HISTORY_LIMIT))
    #: The pid (and process group) of the running process.
    pid: int | None = None
    #: When the current (or last) process was spawned.
    started_at: float | None = None
    #: When its agent last authenticated.
    ready_at: float | None = None
    #: Restarts by the supervisor (not counting explicit starts).
    restart_count: int = 0
    last_exit: ExitInfo | None = None
    #: Where the instance's agent connects, as ``unix:/path`` or ``tcp:host:port``.
    address: str | None = None

    def set_status(self, status: InstanceStatus, now: float, reason: str | None = None) -> StatusChange:
        """Move to ``status`` and record the change."""
        change = StatusChange(now, self.status if self.history else None, status, reason)
        self.history.append(change)
        self.status = status
        self.error = reason if status is InstanceStatus.ERROR else None
        return change

    def uptime(self, now: float) -> float:
        """Seconds the current process has been running (0 when none runs)."""
        if self.pid is None or self.started_at is None:
            return 0.0
        return max(0.0, now - self.started_at)

    def describe(self, now: float) -> dict[str, Any]:
        """The instance's status as plain JSON-able data."""
        last = self.last_exit
        return {
            "instance_id": str(self.instance_id),
            "task_id": self.task_id,
            "status": self.status.value,
            "error": self.error,
            "pid": self.pid,
            "address": self.address,
            "restart_count": self.restart_count,
            "uptime": round(self.uptime(now), 3),
            "last_exit_code": None if last is None else last.exit_code,
            "last_exit_signal": None if last is None else last.signal,
            "last_exit_reason": None if last is None else last.reason,
        }


@attrs.frozen
class InstanceMetrics:
    """
    Resource use of an instance's process and its descendants.

    ``cpu_percent`` is the CPU time used since the previous ``get_metrics``
    of the instance (since its process started, the first time) over the
    time passed, in percent of one core.
    """

    pid: int | None
    cpu_percent: float | None = None
    cpu_seconds: float | None = None
    rss_bytes: int | None = None
    open_fds: int | None = None
    threads: int | None = None
    processes: int = 0


@attrs.frozen
class InstanceHealth:
    """Whether an instance can take work, and why not."""

    healthy: bool
    status: InstanceStatus
    reason: str | None = None
