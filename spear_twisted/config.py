"""
The spearlet's configuration: one TOML file read into attrs classes.

Every key is optional but a task's ``id`` and ``executable`` (defaults are
in the configuration reference, generated from the fields below).  An
unknown key, a wrong type or an invalid value is an error naming the file,
the key path and what was expected::

    spear.toml: tasks[0].max_instances: expected integer, found string

With no file, :func:`default_config` runs one task, ``echo``, served by the
packaged echo agent (``python -m spear_twisted.agent.echo``), its instances
on Unix sockets, everything on localhost.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Mapping
from typing import Any

import attrs

from spear_twisted.auth import read_token_file
from spear_twisted.bridge.config import BridgeServiceConfig
from spear_twisted.channels.config import TRANSPORTS
from spear_twisted.connections.config import ConnectionManagerConfig
from spear_twisted.errors import InvalidMessage
from spear_twisted.monitoring import MonitoringConfig
from spear_twisted.runtime.model import (
    DEFAULT_INHERITED_ENV,
    InstanceConfig,
    ResourceLimits,
    RestartPolicy,
)
from spear_twisted.runtime.process import ProcessRuntimeConfig
from spear_twisted.settings import not_negative, positive, setting
from spear_twisted.wire import RuntimeType
from spear_twisted.wire.codec import structure

#: The admin endpoint's port, where ``spear`` looks by default.
DEFAULT_ADMIN_PORT = 7732
#: The admin endpoint's default: that port, on loopback.
DEFAULT_ADMIN_ENDPOINT = f"tcp:{DEFAULT_ADMIN_PORT}:interface=127.0.0.1"

#: Log levels, least severe first (``twisted.logger.LogLevel`` names).
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")

_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: The runtime types this spearlet can run instances of.
SUPPORTED_RUNTIMES = (RuntimeType.PROCESS,)


class ConfigError(ValueError):
    """
    The configuration cannot be used.  ``problems`` are ``(key path,
    reason)`` pairs; the message has one line per problem, each naming the
    source, the key path and the reason.
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(
            "\n".join(f"{source}: {path or '(top level)'}: {reason}" for path, reason in problems)
        )


def _task_id(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _TASK_ID.fullmatch(value):
        raise ValueError(
            f"{attribute.name} {value!r} must be 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or a digit"
        )


def _runtime_type(_instance: object, attribute: attrs.Attribute[Any], value: RuntimeType) -> None:
    if value not in SUPPORTED_RUNTIMES:
        names = ", ".join(f'"{kind.value}"' for kind in SUPPORTED_RUNTIMES)
        raise ValueError(
            f'{attribute.name} "{value.value}" is not available: this spearlet runs {names} instances'
        )


def _log_level(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in LOG_LEVELS:
        raise ValueError(f"{attribute.name} must be one of {', '.join(LOG_LEVELS)}, not {value!r}")


def _endpoint(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if ":" not in value:
        raise ValueError(
            f"{attribute.name} {value!r} is not an endpoint description such as {DEFAULT_ADMIN_ENDPOINT!r}"
        )


def _like_instance(name: str) -> Any:
    """
    A task field that is :class:`InstanceConfig`'s field ``name``: the same
    default, converter, checks and documentation, stated once.
    """
    field = attrs.fields_dict(InstanceConfig)[name]
    return attrs.field(
        default=field.default,
        validator=field.validator,
        converter=field.converter,
        metadata=field.metadata,
        eq=field.eq,
        hash=field.hash,
    )


#: The fields a task shares with :class:`InstanceConfig`.
INSTANCE_FIELDS = tuple(field.name for field in attrs.fields(InstanceConfig))


@attrs.frozen
class TaskConfig:
    """
    One task: the program its instances run, how many of them, and how
    requests are served.  A ``[[tasks]]`` table of the file.
    """

    __spear_settings__ = True

    id: str = setting(
        doc="The task's name, which callers use (``spear invoke ID ...``): 1 to 64 letters, digits, "
        "``_``, ``.`` or ``-``.",
        validator=_task_id,
    )
    executable: str = _like_instance("executable")
    args: tuple[str, ...] = _like_instance("args")
    env: dict[str, str] = _like_instance("env")
    working_dir: str | None = _like_instance("working_dir")
    inherit_env: tuple[str, ...] = _like_instance("inherit_env")
    restart_policy: RestartPolicy = _like_instance("restart_policy")
    startup_timeout: float = _like_instance("startup_timeout")
    stop_grace_period: float = _like_instance("stop_grace_period")
    kill_timeout: float = _like_instance("kill_timeout")
    transports: tuple[str, ...] | None = _like_instance("transports")
    runtime_type: RuntimeType = setting(
        RuntimeType.PROCESS,
        doc='Where the instances run: ``"process"`` (child processes of the spearlet).',
        validator=_runtime_type,
    )
    min_instances: int = setting(
        1,
        doc="Instances kept running at all times (0: started on the first request).",
        validator=not_negative,
    )
    max_instances: int = setting(
        1, doc="Most instances running at once, started on demand.", validator=positive
    )
    max_concurrent_requests: int = setting(
        1, doc="Requests one instance is given at once.", validator=positive
    )
    request_timeout: float = setting(
        30.0,
        doc="Seconds a request may take, waiting for an instance included, unless the caller or the "
        "request sets its own timeout.",
        validator=positive,
    )
    idle_timeout: float = setting(
        300.0,
        doc="Seconds an instance beyond ``min_instances`` may stay idle before it is stopped.",
        validator=positive,
    )
    idempotent: bool = setting(
        False,
        doc="Whether a request whose instance was lost mid-request may be run again on another instance.",
    )
    limits: ResourceLimits = setting(attrs.Factory(ResourceLimits), doc="Resource limits of each instance.")

    def __attrs_post_init__(self) -> None:
        for name in self.transports or ():
            if name not in TRANSPORTS:
                raise ValueError(
                    f"transports: unknown transport {name!r}; expected one of {', '.join(TRANSPORTS)}"
                )
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances ({self.min_instances}) must not exceed max_instances ({self.max_instances})"
            )

    def instance_config(self) -> InstanceConfig:
        """How the runtime runs each instance of this task."""
        return InstanceConfig(**{name: getattr(self, name) for name in INSTANCE_FIELDS})


@attrs.frozen
class AdminConfig:
    """The admin HTTP endpoint: health, metrics, status and execute."""

    __spear_settings__ = True

    enabled: bool = setting(True, doc="Serve the admin endpoint.")
    endpoint: str = setting(
        DEFAULT_ADMIN_ENDPOINT,
        doc="Endpoint description the admin endpoint listens on.",
        validator=_endpoint,
    )
    token: str | None = setting(
        None,
        doc="Bearer token required on every request but ``/healthz``; prefer ``token_file``, which "
        "keeps it out of the configuration.",
    )
    token_file: str | None = setting(
        None, doc="A file holding the bearer token (its surrounding blanks are ignored)."
    )

    def __attrs_post_init__(self) -> None:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty")

    def bearer_token(self) -> str | None:
        """
        The token requests must bear, read from ``token_file`` when that is
        set; ``None`` when none is configured.

        :raises ConfigError: when the file cannot be read or is empty.
        """
        if self.token_file is None:
            return self.token
        try:
            return read_token_file(self.token_file)
        except ValueError as e:
            raise ConfigError("admin", [("token_file", str(e))]) from None


@attrs.frozen
class SpearConfig:
    """Everything a spearlet runs with: the whole file."""

    __spear_settings__ = True

    log_level: str = setting(
        "info",
        doc="Least severe level of spear_twisted's own log events that is logged under twistd "
        "(``debug``, ``info``, ``warn``, ``error``, ``critical``).",
        validator=_log_level,
    )
    runtime_dir: str | None = setting(
        None,
        doc="Private directory (mode 0700) of the instances' Unix sockets; by default "
        "``$XDG_RUNTIME_DIR/spear``, or ``/tmp/spear-<uid>``.",
    )
    connections: ConnectionManagerConfig = setting(
        attrs.Factory(ConnectionManagerConfig),
        doc="Listeners, port range, TLS, the handshake's limits and timeouts.",
    )
    monitoring: MonitoringConfig = setting(
        attrs.Factory(MonitoringConfig), doc="What is recorded for metrics."
    )
    runtime: ProcessRuntimeConfig = setting(
        attrs.Factory(ProcessRuntimeConfig), doc="How instance processes are started and restarted."
    )
    admin: AdminConfig = setting(attrs.Factory(AdminConfig), doc="The admin HTTP endpoint.")
    bridge: BridgeServiceConfig = setting(
        attrs.Factory(BridgeServiceConfig),
        doc="The gRPC bridge: ``Execute`` and ``Status`` for callers, ``Connect`` for agents.",
    )
    tasks: tuple[TaskConfig, ...] = setting((), doc="The tasks (``[[tasks]]`` tables).")

    def __attrs_post_init__(self) -> None:
        seen: set[str] = set()
        for task in self.tasks:
            if task.id in seen:
                raise ValueError(f"task id {task.id!r} is used twice")
            seen.add(task.id)

    def task(self, task_id: str) -> TaskConfig | None:
        """The task called ``task_id``, if there is one."""
        return next((task for task in self.tasks if task.id == task_id), None)


def echo_task() -> TaskConfig:
    """The built-in ``echo`` task: ``python -m spear_twisted.agent.echo`` with this Python."""
    return TaskConfig(
        id="echo",
        executable=sys.executable,
        args=("-m", "spear_twisted.agent.echo"),
        # PYTHONPATH too, so that the agent imports the same spear_twisted as the spearlet.
        inherit_env=(*DEFAULT_INHERITED_ENV, "PYTHONPATH"),
        transports=("unix", "tcp"),
        min_instances=1,
        max_instances=4,
        max_concurrent_requests=16,
        request_timeout=30.0,
    )


def default_config() -> SpearConfig:
    """The configuration without a file: the ``echo`` task, everything on localhost."""
    return SpearConfig(tasks=(echo_task(),))


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> SpearConfig:
    """
    A configuration from a parsed TOML document.

    :raises ConfigError: naming ``source``, the key path and the problem.
    """
    try:
        return structure(dict(data), SpearConfig)
    except InvalidMessage as e:
        raise ConfigError(source, list(e.problems)) from None


def loads_config(text: str, source: str = "<config>") -> SpearConfig:
    """
    A configuration from TOML text.

    :raises ConfigError: naming ``source`` and the problem.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [("", f"invalid TOML: {e}")]) from None
    return parse_config(data, source)


def load_config(path: str) -> SpearConfig:
    """
    A configuration from the TOML file at ``path``.

    :raises ConfigError: naming the file, the key path and the problem.
    """
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as e:
        raise ConfigError(path, [("", f"cannot read the file: {e.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, [("", f"not UTF-8 text: {e}")]) from None
    return loads_config(text, path)
