"""Instances, their configuration, limits and status."""

from __future__ import annotations

import enum
from typing import Any

import attrs

from spear_twisted.settings import setting
from spear_twisted.wire import RuntimeInstanceId


class InstanceStatus(enum.Enum):
    """Where an instance stands in its life."""

    CREATING = "creating"
    STARTING = "starting"
    READY = "ready"
    RUNNING = "running"
    BUSY = "busy"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


class RestartPolicy(enum.Enum):
    """When a dead instance is started again."""

    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


def _non_negative(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@attrs.frozen
class ResourceLimits:
    """
    Limits applied to an instance's process before its program starts
    (``setrlimit``); ``None`` leaves the inherited limit.

    * ``max_memory_bytes``: address space (``RLIMIT_AS``), default 1 GiB;
    * ``max_cpu_seconds``: CPU time (``RLIMIT_CPU``), default unlimited;
    * ``max_open_files``: descriptors (``RLIMIT_NOFILE``), default 1024;
    * ``max_processes``: processes of the user (``RLIMIT_NPROC``), default
      unlimited (the limit counts every process of the uid, not the instance's).
    """

    __spear_settings__ = True

    max_memory_bytes: int | None = setting(
        1024**3,
        doc="Address-space limit in bytes (``RLIMIT_AS``); exceeding it fails allocations.",
        validator=_positive,
    )
    max_cpu_seconds: int | None = setting(
        None, doc="CPU-time limit in seconds (``RLIMIT_CPU``); the process gets SIGXCPU.", validator=_positive
    )
    max_open_files: int | None = setting(
        1024, doc="Open file descriptor limit (``RLIMIT_NOFILE``).", validator=_positive
    )
    max_processes: int | None = setting(
        None,
        doc="Process limit (``RLIMIT_NPROC``); counts every process of the user, not only the instance's.",
        validator=_positive,
    )

    def as_rlimits(self) -> dict[str, int]:
        """The limits as ``{"RLIMIT_AS": n, ...}`` for the launcher."""
        names = {
            "RLIMIT_AS": self.max_memory_bytes,
            "RLIMIT_CPU": self.max_cpu_seconds,
            "RLIMIT_NOFILE": self.max_open_files,
            "RLIMIT_NPROC": self.max_processes,
        }
        return {name: value for name, value in names.items() if value is not None}


@attrs.frozen
class InstanceConfig:
    """
    How to run one instance of a task.

    ``env`` is the task's variables; ``inherit_env`` names the variables
    copied from the spearlet's own environment (nothing else is).
    ``transports`` overrides the runtime's channel strategy.
    """

    executable: str
    args: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    env: dict[str, str] = attrs.field(factory=dict, hash=False)
    working_dir: str | None = None
    inherit_env: tuple[str, ...] = attrs.field(
        default=("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR"), converter=tuple
    )
    restart_policy: RestartPolicy = attrs.field(default=RestartPolicy.ON_FAILURE, converter=RestartPolicy)
    startup_timeout: float = attrs.field(default=30.0, validator=_positive)
    stop_grace_period: float = attrs.field(default=5.0, validator=_non_negative)
    kill_timeout: float = attrs.field(default=5.0, validator=_positive)
    transports: tuple[str, ...] | None = attrs.field(
        default=None, converter=lambda value: None if value is None else tuple(value)
    )


@attrs.frozen
class StatusChange:
    """One transition of an instance, on the reactor's clock."""

    time: float
    old: InstanceStatus | None
    new: InstanceStatus
    reason: str | None = None


@attrs.frozen
class ExitInfo:
    """How an instance's process ended."""

    exit_code: int | None
    signal: int | None
    reason: str

    @property
    def clean(self) -> bool:
        """Exited with status 0."""
        return self.exit_code == 0 and self.signal is None


@attrs.define
class TaskInstance:
    """
    One instance of a task: its identity, configuration and current state.

    Mutable on purpose: the runtime updates it as the instance lives; every
    status change is appended to ``history``.
    """

    instance_id: RuntimeInstanceId
    task_id: str
    config: InstanceConfig
    limits: ResourceLimits
    created_at: float
    status: InstanceStatus = InstanceStatus.CREATING
    error: str | None = None
    history: list[StatusChange] = attrs.field(factory=list)
    pid: int | None = None
    started_at: float | None = None
    ready_at: float | None = None
    restart_count: int = 0
    last_exit: ExitInfo | None = None
    address: str | None = None

    def set_status(self, status: InstanceStatus, now: float, reason: str | None = None) -> None:
        """Move to ``status`` and record why."""
        self.history.append(StatusChange(now, self.status if self.history else None, status, reason))
        self.status = status
        self.error = reason if status is InstanceStatus.ERROR else None

    def uptime(self, now: float) -> float:
        """Seconds the current process has been running (0 when none runs)."""
        if self.pid is None or self.started_at is None:
            return 0.0
        return now - self.started_at

    def describe(self, now: float) -> dict[str, Any]:
        """The instance's status as plain JSON-able data."""
        return {
            "instance_id": str(self.instance_id),
            "task_id": self.task_id,
            "status": self.status.value,
            "error": self.error,
            "pid": self.pid,
            "restart_count": self.restart_count,
            "uptime": round(self.uptime(now), 3),
            "last_exit_code": None if self.last_exit is None else self.last_exit.exit_code,
            "last_exit_signal": None if self.last_exit is None else self.last_exit.signal,
            "last_exit_reason": None if self.last_exit is None else self.last_exit.reason,
            "address": self.address,
        }


@attrs.frozen
class InstanceMetrics:
    """Resource use of an instance's process (and its descendants)."""

    pid: int | None
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    open_fds: int | None = None
    threads: int | None = None
    children: int = 0


@attrs.frozen
class InstanceHealth:
    """Whether an instance can take work, and why not."""

    healthy: bool
    status: InstanceStatus
    reason: str | None = None
