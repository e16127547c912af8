"""
``twistd spear``: the plugin's options and service.

``twistd -n spear`` runs the built-in default (the ``echo`` task);
``--config spear.toml`` runs a configuration file, which ``--listen``,
``--admin`` and ``--log-level`` override.  A bad option, configuration
file or task program is a usage error: twistd prints the message and exits
with status 1 before anything starts.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
)
from twisted.python import usage
from twisted.python.components import Componentized

from spear_twisted.config import LOG_LEVELS, ConfigError, SpearConfig, default_config, load_config
from spear_twisted.runtime.environment import (
    InvalidInstanceConfig,
    checked_program,
)
from spear_twisted.service import SpearService


class Options(usage.Options):
    """The options of ``twistd spear``."""

    synopsis = "[--config FILE] [--listen DESCRIPTION]... [--admin DESCRIPTION] [--log-level LEVEL]"
    longdesc = (
        "Run a Spear spearlet: spawn and supervise the configured tasks' instances and serve execute "
        "requests.  Without --config it runs the built-in 'echo' task."
    )
    optParameters = [
        ["config", "c", None, "The TOML configuration file (default: the built-in echo task)."],
        [
            "admin",
            None,
            None,
            "Endpoint description of the admin HTTP endpoint, replacing the file's "
            "(for example tcp:7732:interface=127.0.0.1).",
        ],
        [
            "log-level",
            None,
            None,
            f"Least severe level of spear_twisted's log events: {', '.join(LOG_LEVELS)} "
            "(default: the file's, else info).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []
        #: The configuration to run, once the options are parsed.
        self.config: SpearConfig | None = None

    def opt_listen(self, description: str) -> None:
        """
        Listen for agents on this endpoint description (tcp:9100:interface=127.0.0.1,
        unix:/run/spear/agents.sock); repeatable; replaces the file's listeners.
        """
        self["listen"].append(description)

    def postOptions(self) -> None:
        """Read and check the configuration: any problem is a usage error naming it."""
        path = self["config"]
        try:
            config = default_config() if path is None else load_config(path)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        source = path or "the built-in configuration"
        try:
            config = override(config, self["listen"], self["admin"], self["log-level"])
        except ValueError as e:
            raise usage.UsageError(f"command line: {e}") from None
        check_programs(config, source)
        check_token_files(config, source)
        self.config = config


def override(config: SpearConfig, listen: list[str], admin: str | None, log_level: str | None) -> SpearConfig:
    """
    ``config`` with the command line's listeners, admin endpoint and log
    level in place of its own.

    :raises ValueError: naming the option whose value is invalid.
    """
    if listen:
        try:
            config = attrs.evolve(
                config, connections=attrs.evolve(config.connections, endpoints=tuple(listen))
            )
        except ValueError as e:
            raise ValueError(f"--listen: {e}") from None
    if admin is not None:
        try:
            config = attrs.evolve(config, admin=attrs.evolve(config.admin, enabled=True, endpoint=admin))
        except ValueError as e:
            raise ValueError(f"--admin: {e}") from None
    if log_level is not None:
        try:
            config = attrs.evolve(config, log_level=log_level)
        except ValueError as e:
            raise ValueError(f"--log-level: {e}") from None
    return config


def check_token_files(config: SpearConfig, source: str) -> None:
    """
    Read the token files ``config`` names (admin, bridge callers) now, so
    that one that cannot be used is a usage error naming it, not a
    traceback from ``makeService``.

    :raises usage.UsageError: naming ``source``, the key and the file.
    """
    try:
        config.admin.bearer_token()
    except ConfigError as e:
        raise usage.UsageError(
            "\n".join(f"{source}: admin.{key}: {reason}" for key, reason in e.problems)
        ) from None
    if config.bridge.listen:
        try:
            config.bridge.caller_tokens()
        except ValueError as e:
            raise usage.UsageError(f"{source}: bridge.{e}") from None


def check_programs(config: SpearConfig, source: str) -> None:
    """
    Check each task's program and working directory now, as its instances
    will find them, so that a typo stops the start-up instead of leaving a
    task without instances.

    :raises usage.UsageError: naming the task's key and the problem.
    """
    for index, task in enumerate(config.tasks):
        try:
            checked_program(task.instance_config(), os.environ)
        except InvalidInstanceConfig as e:
            raise usage.UsageError(f"{source}: tasks[{index}] ({task.id}): {e}") from None


def log_observer(config: SpearConfig, twistd_options: Any) -> ILogObserver:
    """
    The observer twistd would log to (its ``--logfile``, ``--syslog`` or
    standard output), showing spear_twisted's events from the configured
    ``log_level`` up and everything else as twistd does.
    """
    from twisted.scripts._twistd_unix import UnixAppLogger

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)
    predicate.setLogLevelForNamespace("spear_twisted", LogLevel.levelWithName(config.log_level))
    destination = UnixAppLogger(twistd_options)._getLogObserver()  # type: ignore[no-untyped-call]
    return FilteringLogObserver(destination, [predicate])


class TwistdRoot(MultiService):
    """
    The service ``twistd spear`` runs: the spearlet, which it holds, and the
    log observer that it gives twistd's application (twistd logs to an
    application's ``ILogObserver`` when it has one).
    """

    def __init__(self, spear: SpearService, twistd_options: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.spear = spear
        self._twistd_options = twistd_options
        spear.setServiceParent(self)  # type: ignore[no-untyped-call]

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:  # type: ignore[no-untyped-call]
            observer = log_observer(self.spear.config, self._twistd_options)
            parent.setComponent(ILogObserver, observer)  # type: ignore[no-untyped-call]
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]


def makeService(options: Options) -> MultiService:
    """The spearlet of ``options``; under twistd, with the log filtered by its level."""
    assert options.config is not None, "the options were not parsed"
    spear = SpearService(options.config)
    parent = getattr(options, "parent", None)
    if parent is None:
        return spear
    return TwistdRoot(spear, parent)
