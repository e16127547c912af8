"""Helpers of the tests that run a whole SpearService with real instance processes."""

from __future__ import annotations

import sys
from typing import Any

from spear_twisted.config import AdminConfig, SpearConfig, TaskConfig
from spear_twisted.runtime import ProcessRuntimeConfig
from spear_twisted.service import SpearService
from tests.channel_support import short_temp_dir
from tests.runtime_support import ROOT

#: ``args`` of the packaged echo agent.
ECHO_ARGS = ("-m", "spear_twisted.agent.echo")


def task_config(task_id: str, args: tuple[str, ...], **changes: Any) -> TaskConfig:
    """A task run by this Python, importing this worktree's source."""
    settings: dict[str, Any] = {
        "id": task_id,
        "executable": sys.executable,
        "args": args,
        "env": {"PYTHONPATH": ROOT},
        "stop_grace_period": 5.0,
    }
    settings.update(changes)
    return TaskConfig(**settings)


def service_config(test: Any, *tasks: TaskConfig, **changes: Any) -> SpearConfig:
    """A configuration with ``tasks``, its sockets in a fresh directory, no admin endpoint."""
    settings: dict[str, Any] = {
        "runtime_dir": short_temp_dir(test),
        "admin": AdminConfig(enabled=False),
        "runtime": ProcessRuntimeConfig(reap_orphans=True),
        "tasks": tasks,
    }
    settings.update(changes)
    return SpearConfig(**settings)


def running_service(test: Any, *tasks: TaskConfig, **changes: Any) -> SpearService:
    """A started SpearService of ``tasks``, stopped when ``test`` ends."""
    service = SpearService(service_config(test, *tasks, **changes))
    service.startService()
    test.addCleanup(service.stopService)
    return service
