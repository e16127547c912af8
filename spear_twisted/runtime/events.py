"""What happens to instances, as events for whoever watches the runtime."""

from __future__ import annotations

import enum

import attrs

from spear_twisted.runtime.model import ExitInfo, InstanceStatus
from spear_twisted.wire import RuntimeInstanceId


class RuntimeEventKind(enum.Enum):
    """What happened to an instance."""

    #: Its status changed (``status`` is the new one, ``reason`` why).
    STATUS_CHANGED = "StatusChanged"
    #: A process was spawned for it (``pid``).
    SPAWNED = "Spawned"
    #: Its process ended (``exit``).
    EXITED = "Exited"
    #: A restart is scheduled in ``delay`` seconds.
    RESTART_SCHEDULED = "RestartScheduled"
    #: Too many restarts within the crash-loop window: no more restarts; it is in Error.
    CRASH_LOOP = "CrashLoop"
    #: Its agent did not authenticate within the startup timeout; the process was killed.
    STARTUP_TIMEOUT = "StartupTimeout"


@attrs.frozen
class RuntimeEvent:
    """One event of one instance, at ``time`` on the runtime's clock."""

    kind: RuntimeEventKind
    instance_id: RuntimeInstanceId
    time: float
    status: InstanceStatus
    reason: str | None = None
    pid: int | None = None
    exit: ExitInfo | None = None
    delay: float | None = None
