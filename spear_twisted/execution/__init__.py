"""
Tasks and their instances: :class:`TaskExecutionManager` keeps a pool of
instances per configured task and runs each ``execute`` on the least loaded
healthy one.
"""

from spear_twisted.execution.manager import TaskExecutionManager
from spear_twisted.execution.pool import InstancePool, Member
from spear_twisted.execution.request import Execution, ServedResponse, cancel_signal
from spear_twisted.execution.scheduler import least_loaded
from spear_twisted.runtime.model import serving_status
from spear_twisted.wire import CANCEL_SIGNAL

__all__ = [
    "CANCEL_SIGNAL",
    "Execution",
    "InstancePool",
    "Member",
    "ServedResponse",
    "TaskExecutionManager",
    "cancel_signal",
    "least_loaded",
    "serving_status",
]
