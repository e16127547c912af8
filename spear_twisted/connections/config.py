"""``ConnectionManagerConfig``: every setting checked when it is made."""

from __future__ import annotations

import enum
import os
from typing import Any

import attrs

from spear_twisted.channels.config import ChannelConfig
from spear_twisted.channels.tcp import is_loopback
from spear_twisted.settings import positive, positive_or_off, setting, valid_port_range
from spear_twisted.wire import (
    AUTH_TIMEOUT,
    CONNECTION_TIMEOUT,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    MAX_MESSAGE_SIZE,
    MAX_PREAUTH_MESSAGE_SIZE,
    PORT_RANGE,
)

#: The listen backlog is never below this.
MIN_BACKLOG = 1024


class DuplicatePolicy(enum.Enum):
    """What a second successful authentication of a connected instance does."""

    #: The newcomer gets ``AuthResponse(success=false)`` saying the instance
    #: already has a live connection, and is closed; the old one is untouched.
    REFUSE_NEW = "refuse-new"
    #: The old connection gets ``Error`` 1103 (``ALREADY_CONNECTED``) and is
    #: closed; the newcomer takes its place in the instance's channel.
    REPLACE_OLD = "replace-old"


def _backlog(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < MIN_BACKLOG:
        raise ValueError(f"{attribute.name} must be at least {MIN_BACKLOG}, not {value!r}")


def _not_empty(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must not be empty")


def _descriptions(_instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for description in value:
        if ":" not in description:
            raise ValueError(
                f"{attribute.name}: {description!r} is not an endpoint description such as "
                "'tcp:9100:interface=127.0.0.1' or 'unix:/run/spear/agents.sock'"
            )


@attrs.frozen
class ConnectionManagerConfig:
    """
    Settings of a :class:`~spear_twisted.connections.manager.ConnectionManager`.

    Times are seconds.  Invalid values are refused here, with the field's
    name in the message.
    """

    __spear_settings__ = True

    listen_addr: str = setting(
        "127.0.0.1",
        doc="Address ``start_listening`` binds; a non-loopback one needs ``allow_remote``.",
        validator=_not_empty,
    )
    port_range: tuple[int, int] = setting(
        PORT_RANGE,
        doc="Ports tried, in order, when no port is given: ``[low, high]``.",
        converter=tuple,
        validator=valid_port_range,
    )
    endpoints: tuple[str, ...] = setting(
        (),
        doc=(
            "Endpoint descriptions listened on when the service starts (``tcp:``, ``unix:``, ``ssl:``); "
            "empty: the first free port of ``port_range``."
        ),
        converter=tuple,
        validator=_descriptions,
    )
    max_connections: int = setting(
        1000,
        doc="Connections open at once; a new one beyond is answered with error 1200 and closed.",
        validator=positive,
    )
    connection_timeout: float | None = setting(
        CONNECTION_TIMEOUT,
        doc=(
            "Seconds an authenticated connection may carry nothing but heartbeats before it is closed "
            "(error 1203); ``false`` (``None``) disables it."
        ),
        validator=positive_or_off,
    )
    auth_timeout: float = setting(
        AUTH_TIMEOUT,
        doc="Seconds from accepting a connection within which ``AuthRequest`` must arrive (error 1102).",
        validator=positive,
    )
    heartbeat_interval: float = setting(
        HEARTBEAT_INTERVAL,
        doc="Seconds of sending nothing after which a side sends a heartbeat.",
        validator=positive,
    )
    heartbeat_timeout: float = setting(
        HEARTBEAT_TIMEOUT,
        doc="Seconds without any frame received after which the connection is closed (error 1202).",
        validator=positive,
    )
    max_message_size: int = setting(
        MAX_MESSAGE_SIZE,
        doc="Largest frame body, in bytes, once authenticated (error 1002 beyond).",
        validator=positive,
    )
    max_preauth_message_size: int = setting(
        MAX_PREAUTH_MESSAGE_SIZE,
        doc="Largest frame body, in bytes, before authentication (error 1002 beyond).",
        validator=positive,
    )
    max_pending_auth: int = setting(
        64,
        doc=(
            "Connections allowed to wait for authentication at once; beyond, a silent one is closed "
            "to make room, or the newcomer is refused (error 1201)."
        ),
        validator=positive,
    )
    backlog: int = setting(MIN_BACKLOG, doc="Listen backlog (at least 1024).", validator=_backlog)
    enable_tls: bool = setting(False, doc="Serve ``start_listening``'s listener over TLS.")
    tls_cert_path: str | None = setting(None, doc="PEM certificate (optionally followed by its chain).")
    tls_key_path: str | None = setting(None, doc="PEM private key of the certificate.")
    enable_monitoring: bool = setting(
        True, doc="Feed connection and message events to the monitoring service."
    )
    duplicate_policy: DuplicatePolicy = setting(
        DuplicatePolicy.REFUSE_NEW,
        doc=(
            'A second authentication of a connected instance: ``"refuse-new"`` refuses the newcomer, '
            '``"replace-old"`` closes the old connection (error 1103).'
        ),
        converter=DuplicatePolicy,
    )
    allow_remote: bool = setting(False, doc="Allow listening on a non-loopback address.")
    close_timeout: float = setting(
        10.0,
        doc="Seconds an orderly close may take to flush before the connection is aborted.",
        validator=positive,
    )

    def __attrs_post_init__(self) -> None:
        if not self.allow_remote and not is_loopback(self.listen_addr):
            raise ValueError(
                f"listen_addr {self.listen_addr!r} is not a loopback address; set allow_remote to use it"
            )
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError(
                f"heartbeat_timeout ({self.heartbeat_timeout:g}) must be longer than "
                f"heartbeat_interval ({self.heartbeat_interval:g})"
            )
        if self.max_preauth_message_size > self.max_message_size:
            raise ValueError(
                f"max_preauth_message_size ({self.max_preauth_message_size}) must not exceed "
                f"max_message_size ({self.max_message_size})"
            )
        if self.enable_tls:
            for name in ("tls_cert_path", "tls_key_path"):
                path = getattr(self, name)
                if not path:
                    raise ValueError(f"{name} is required when enable_tls is true")
                if not os.path.isfile(path):
                    raise ValueError(f"{name}: no such file {path!r}")

    def channel_config(self, **changes: Any) -> ChannelConfig:
        """The per-channel settings these manager settings imply (``changes`` override)."""
        settings: dict[str, Any] = {
            "host": self.listen_addr,
            "port_range": self.port_range,
            "allow_remote": self.allow_remote,
            "backlog": self.backlog,
            "close_timeout": self.close_timeout,
            "auth_timeout": self.auth_timeout,
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_timeout": self.heartbeat_timeout,
            "idle_timeout": self.connection_timeout,
            "max_message_size": self.max_message_size,
            "max_preauth_message_size": self.max_preauth_message_size,
        }
        settings.update(changes)
        return ChannelConfig(**settings)
