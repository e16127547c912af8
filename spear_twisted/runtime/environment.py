"""An instance's program and environment, checked and built before it is spawned."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

import attrs

from spear_twisted.runtime.model import InstanceConfig
from spear_twisted.wire import RuntimeInstanceId


class InvalidInstanceConfig(ValueError):
    """The instance cannot be made as configured; the message says why."""


def resolve_executable(executable: str, path: str | None) -> str:
    """
    The absolute path of ``executable`` (a path, or a name looked up on
    ``path``), which must be an existing, executable file.

    :raises InvalidInstanceConfig: saying what is wrong.
    """
    if not executable:
        raise InvalidInstanceConfig("executable is empty")
    if "\0" in executable:
        raise InvalidInstanceConfig("executable contains a NUL character")
    if os.sep in executable:
        candidate = os.path.abspath(executable)
    else:
        found = shutil.which(executable, path=path or os.defpath)
        if found is None:
            raise InvalidInstanceConfig(f"executable {executable!r} not found on PATH {path or os.defpath!r}")
        candidate = os.path.abspath(found)
    if not os.path.exists(candidate):
        raise InvalidInstanceConfig(f"executable {candidate} does not exist")
    if not os.path.isfile(candidate):
        raise InvalidInstanceConfig(f"executable {candidate} is not a file")
    if not os.access(candidate, os.X_OK):
        raise InvalidInstanceConfig(f"executable {candidate} is not executable")
    return candidate


def check_working_dir(working_dir: str | None) -> str | None:
    """``working_dir`` made absolute, which must be an existing directory."""
    if working_dir is None:
        return None
    if not os.path.isdir(working_dir):
        raise InvalidInstanceConfig(f"working directory {working_dir} does not exist or is not a directory")
    return os.path.abspath(working_dir)


def inherited_environment(config: InstanceConfig, parent: Mapping[str, str]) -> dict[str, str]:
    """The whitelisted variables of the spearlet's environment ``parent``, then the task's."""
    environment = {name: parent[name] for name in config.inherit_env if name in parent}
    environment.update(config.env)
    return environment


def checked_program(config: InstanceConfig, parent: Mapping[str, str]) -> InstanceConfig:
    """
    ``config`` with its executable resolved (on the ``PATH`` its instance
    will have, from the spearlet's environment ``parent``) and its working
    directory made absolute, as a spawn will use them.

    :raises InvalidInstanceConfig: naming what is missing.
    """
    path = inherited_environment(config, parent).get("PATH")
    executable = resolve_executable(config.executable, path)
    working_dir = check_working_dir(config.working_dir)
    return attrs.evolve(config, executable=executable, working_dir=working_dir)


def protocol_environment(
    instance_id: RuntimeInstanceId, secret: str, address: Mapping[str, str]
) -> dict[str, str]:
    """
    The variables of PROTOCOL.md section 7: who the instance is, its secret
    (under both spellings) and where to connect (``address`` is
    ``ChannelAddress.environment()``).
    """
    return {
        "SPEAR_INSTANCE_ID": str(instance_id),
        "SPEAR_SECRET": secret,
        "SECRET": secret,
        **address,
    }


def build_environment(
    config: InstanceConfig, parent: Mapping[str, str], protocol: Mapping[str, str]
) -> dict[str, str]:
    """
    An instance's whole environment, built from nothing: the whitelisted
    variables of ``parent``, then the task's, then the protocol's, which win.
    """
    environment = inherited_environment(config, parent)
    environment.update(protocol)
    return environment
