"""Per-channel settings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from spear_twisted.settings import positive, positive_or_off, valid_port_range
from spear_twisted.wire import (
    AUTH_TIMEOUT,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    MAX_MESSAGE_SIZE,
    MAX_PREAUTH_MESSAGE_SIZE,
    PORT_RANGE,
    SessionConfig,
)

#: Transport names, in the spelling of ``SPEAR_COMMUNICATION_TYPE``.
TRANSPORTS = ("unix", "tcp", "grpc", "memory")


def _transports(_instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...] | None) -> None:
    if value is None:
        return
    if not value:
        raise ValueError(f"{attribute.name} must name at least one transport")
    for name in value:
        if name not in TRANSPORTS:
            raise ValueError(f"{attribute.name}: unknown transport {name!r}, expected one of {TRANSPORTS}")


def _optional_tuple(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _optional_uids(value: Iterable[int] | None) -> frozenset[int] | None:
    return None if value is None else frozenset(value)


@attrs.frozen
class ChannelConfig:
    """
    How a channel is made and how it behaves.

    ``transports`` overrides the runtime type's strategy (for example
    ``("tcp",)``).  ``socket_path`` and ``port`` pin the address; otherwise a
    Unix channel gets a unique path in ``runtime_dir`` and a TCP or gRPC
    channel the first free port of ``port_range`` on ``host``.

    ``tls_cert_path`` and ``tls_key_path`` (PEM files, set together) make a
    gRPC channel serve HTTP/2 over TLS with ALPN ``h2``; its instance is told
    to trust ``tls_ca_path`` (by default the certificate file itself).  The
    other transports do not use them.
    """

    transports: tuple[str, ...] | None = attrs.field(
        default=None, converter=_optional_tuple, validator=_transports
    )
    runtime_dir: str | None = None
    socket_path: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    port_range: tuple[int, int] = attrs.field(default=PORT_RANGE, converter=tuple, validator=valid_port_range)
    allow_remote: bool = False
    backlog: int = attrs.field(default=1024, validator=positive)
    request_timeout: float = attrs.field(default=30.0, validator=positive)
    connect_timeout: float = attrs.field(default=10.0, validator=positive)
    close_timeout: float = attrs.field(default=10.0, validator=positive)
    receive_queue_size: int = attrs.field(default=1024, validator=positive)
    auth_timeout: float = attrs.field(default=AUTH_TIMEOUT, validator=positive)
    heartbeat_interval: float | None = attrs.field(default=HEARTBEAT_INTERVAL, validator=positive_or_off)
    heartbeat_timeout: float | None = attrs.field(default=HEARTBEAT_TIMEOUT, validator=positive_or_off)
    idle_timeout: float | None = attrs.field(default=None, validator=positive_or_off)
    max_message_size: int = attrs.field(default=MAX_MESSAGE_SIZE, validator=positive)
    max_preauth_message_size: int = attrs.field(default=MAX_PREAUTH_MESSAGE_SIZE, validator=positive)
    allowed_uids: frozenset[int] | None = attrs.field(default=None, converter=_optional_uids)
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    tls_ca_path: str | None = None

    def __attrs_post_init__(self) -> None:
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("tls_cert_path and tls_key_path must be set together")

    def session_config(self) -> SessionConfig:
        """The wire session's share of these settings."""
        return SessionConfig(
            auth_timeout=self.auth_timeout,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            idle_timeout=self.idle_timeout,
            max_message_size=self.max_message_size,
            max_preauth_message_size=self.max_preauth_message_size,
        )


@attrs.frozen
class ChannelAddress:
    """Where a channel listens (or what it dialled), as an instance must be told."""

    transport: str
    host: str | None = None
    port: int | None = None
    path: str | None = None
    name: str | None = None
    #: The certificates an agent must trust to dial over TLS (gRPC over TLS only).
    ca_path: str | None = None

    def environment(self) -> dict[str, str]:
        """The address part of an instance's environment (PROTOCOL.md section 7)."""
        env = {"SPEAR_COMMUNICATION_TYPE": self.transport}
        if self.ca_path is not None:
            env["SPEAR_TLS_CA_PATH"] = self.ca_path
        if self.port is not None:
            env["SPEAR_COMMUNICATION_PORT"] = str(self.port)
            env["SERVICE_ADDR"] = f"{self.host or '127.0.0.1'}:{self.port}"
        if self.path is not None:
            env["SPEAR_SOCKET_PATH"] = self.path
        if self.name is not None:
            env["SPEAR_MEMORY_NAME"] = self.name
        return env

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        if self.port is not None:
            return f"{self.transport}:{self.host}:{self.port}"
        return f"{self.transport}:{self.name}"
