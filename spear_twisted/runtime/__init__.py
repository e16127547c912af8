"""
Runtimes: where instances run.  :class:`ProcessRuntime` runs them as
supervised child processes.
"""

from spear_twisted.runtime.environment import InvalidInstanceConfig
from spear_twisted.runtime.events import RuntimeEvent, RuntimeEventKind
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
from spear_twisted.runtime.process import ProcessRuntime, ProcessRuntimeConfig
from spear_twisted.runtime.supervision import BackoffPolicy

__all__ = [
    "BackoffPolicy",
    "ExitInfo",
    "IRuntime",
    "InstanceConfig",
    "InstanceHealth",
    "InstanceMetrics",
    "InstanceStatus",
    "InvalidInstanceConfig",
    "ProcessRuntime",
    "ProcessRuntimeConfig",
    "ResourceLimits",
    "RestartPolicy",
    "RuntimeEvent",
    "RuntimeEventKind",
    "StatusChange",
    "TaskInstance",
]
