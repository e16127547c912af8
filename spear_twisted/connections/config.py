"""``ConnectionManagerConfig``: every setting checked when it is made."""

from __future__ import annotations

import enum
import os
from typing import Any

import attrs

from spear_twisted.channels.config import ChannelConfig
from spear_twisted.settings import setting
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

    #: The newcomer gets ``Error`` 1103 (``ALREADY_CONNECTED``) and is closed.
    REFUSE_NEW = "refuse-new"
    #: The old connection gets that error and is closed; the newcomer stays.
    REPLACE_OLD = "replace-old"


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _port_range(_instance: object, attribute: attrs.Attribute[Any], value: tuple[int, int]) -> None:
    if len(value) != 2:
        raise ValueError(f"{attribute.name} must be (low, high), not {value!r}")
    low, high = value
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        raise ValueError(f"{attribute.name} ports must be within 1..65535, not {value!r}")
    if low > high:
        raise ValueError(f"{attribute.name} is empty: {low} > {high}")


def _backlog(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < MIN_BACKLOG:
        raise ValueError(f"{attribute.name} must be at least {MIN_BACKLOG}, not {value!r}")


@attrs.frozen
class ConnectionManagerConfig:
    """
    Settings of a :class:`~spear_twisted.connections.manager.ConnectionManager`.

    Times are seconds.  ``connection_timeout`` closes an authenticated
    connection with no traffic but heartbeats for that long.  Invalid values
    are refused here, with the field's name.
    """

    __spear_settings__ = True

    listen_addr: str = setting(
        "127.0.0.1",
        doc="Address the shared listener binds (``start_listening``); loopback unless ``allow_remote``.",
    )
    port_range: tuple[int, int] = setting(
        PORT_RANGE,
        doc="Ports tried, in order, when no port is given: ``[low, high]``.",
        converter=tuple,
        validator=_port_range,
    )
    max_connections: int = setting(
        1000,
        doc="Connections open at once; a new one beyond is answered with error 1200 and closed.",
        validator=_positive,
    )
    connection_timeout: float = setting(
        CONNECTION_TIMEOUT,
        doc=(
            "Seconds an authenticated connection may carry nothing but heartbeats before it is closed "
            "(error 1203)."
        ),
        validator=_positive,
    )
    auth_timeout: float = setting(
        AUTH_TIMEOUT,
        doc="Seconds from accepting a connection within which ``AuthRequest`` must arrive (error 1102).",
        validator=_positive,
    )
    heartbeat_interval: float = setting(
        HEARTBEAT_INTERVAL,
        doc="Seconds of silence after which a side sends a heartbeat.",
        validator=_positive,
    )
    heartbeat_timeout: float = setting(
        HEARTBEAT_TIMEOUT,
        doc="Seconds without any frame received after which the connection is closed (error 1202).",
        validator=_positive,
    )
    max_message_size: int = setting(
        MAX_MESSAGE_SIZE,
        doc="Largest frame body, in bytes, once authenticated (error 1002 beyond).",
        validator=_positive,
    )
    max_preauth_message_size: int = setting(
        MAX_PREAUTH_MESSAGE_SIZE,
        doc="Largest frame body, in bytes, before authentication.",
        validator=_positive,
    )
    max_pending_auth: int = setting(
        64,
        doc=(
            "Connections allowed to wait for authentication at once; beyond, the oldest is closed (error "
            "1201)."
        ),
        validator=_positive,
    )
    backlog: int = setting(
        MIN_BACKLOG, doc="Listen backlog of every listener (at least 1024).", validator=_backlog
    )
    enable_tls: bool = setting(False, doc="Serve the shared listener over TLS.")
    tls_cert_path: str | None = setting(None, doc="PEM certificate (and chain) for TLS.")
    tls_key_path: str | None = setting(None, doc="PEM private key for TLS.")
    enable_monitoring: bool = setting(
        True, doc="Record connection and message events into the monitoring service."
    )
    duplicate_policy: DuplicatePolicy = setting(
        DuplicatePolicy.REFUSE_NEW,
        doc='A second authentication of a connected instance: ``"refuse-new"`` (error 1103 to the newcomer)'
        ' or ``"replace-old"``.',
        converter=DuplicatePolicy,
    )
    allow_remote: bool = setting(False, doc="Allow listening on a non-loopback address.")

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError(
                f"heartbeat_timeout ({self.heartbeat_timeout:g}) must exceed "
                f"heartbeat_interval ({self.heartbeat_interval:g})"
            )
        if self.max_preauth_message_size > self.max_message_size:
            raise ValueError("max_preauth_message_size must not exceed max_message_size")
        if self.enable_tls:
            for name in ("tls_cert_path", "tls_key_path"):
                path = getattr(self, name)
                if not path:
                    raise ValueError(f"{name} is required when enable_tls is true")
                if not os.path.isfile(path):
                    raise ValueError(f"{name}: no such file {path!r}")

    def channel_config(self, **changes: Any) -> ChannelConfig:
        """The per-channel settings these manager settings imply."""
        settings: dict[str, Any] = {
            "host": self.listen_addr,
            "port_range": self.port_range,
            "allow_remote": self.allow_remote,
            "backlog": self.backlog,
            "auth_timeout": self.auth_timeout,
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_timeout": self.heartbeat_timeout,
            "idle_timeout": self.connection_timeout,
            "max_message_size": self.max_message_size,
            "max_preauth_message_size": self.max_preauth_message_size,
        }
        settings.update(changes)
        return ChannelConfig(**settings)
