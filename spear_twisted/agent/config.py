"""
:class:`AgentConfig`: where the agent connects and who it says it is.

Read from the environment a spearlet gives its instances (PROTOCOL.md
section 7); explicit arguments override it.  This module runs before the
agent has authenticated, when every millisecond of import counts, so it
uses only ``os``: the configuration is a plain class with slots rather than
an attrs class (attrs costs 20 ms or more to import).
"""

from __future__ import annotations

import os
import sys

from spear_twisted._version import __version__

# Not typing.TYPE_CHECKING: importing typing costs the agent's start 8 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

#: The agent terminated cleanly (a ``Terminate`` signal, SIGTERM or SIGINT).
EXIT_OK = 0
#: The spearlet could not be reached, or stayed unreachable, after every retry.
EXIT_UNREACHABLE = 69
#: The spearlet broke the protocol.
EXIT_PROTOCOL = 76
#: The spearlet refused the agent's instance id and secret.
EXIT_AUTH_REFUSED = 77
#: The configuration (environment or arguments) is missing or wrong.
EXIT_CONFIG = 78

#: ``SPEAR_COMMUNICATION_TYPE`` values the SDK connects over.
TRANSPORTS = ("unix", "tcp", "grpc")

# PROTOCOL.md section 6; spear_twisted.wire.constants holds the same values
# (importing it would load the whole wire layer before authenticating).
HEARTBEAT_INTERVAL = 30.0
HEARTBEAT_TIMEOUT = 90.0
MAX_MESSAGE_SIZE = 64 * 1024 * 1024

#: The variables that carry the instance's secret; removed from ``os.environ``
#: by the entry point so that programs the handler starts do not inherit it.
SECRET_VARIABLES = ("SPEAR_SECRET", "SECRET")


class AgentConfigError(ValueError):
    """The agent's configuration is missing or wrong; the message says what to set."""


class AgentConfig:
    """
    The agent's settings.

    ``transport`` is ``"unix"`` (with ``socket_path``), ``"tcp"`` or
    ``"grpc"`` (with ``host`` and ``port``; the gRPC bridge goes over TLS,
    trusting the PEM certificates of ``tls_ca_path``, when that is set).
    Reconnection after a lost connection waits
    ``retry_delay`` seconds, doubling up to ``max_retry_delay``, for at most
    ``max_retries`` attempts; the same rule covers the first connection.

    ``await_auth_response`` (default ``True``): over a socket, the entry
    point sends the ``AuthRequest`` before it imports its framework and the
    wire layer; it then waits for the spearlet's answer (at most
    ``connect_timeout``) before those imports, which are most of an agent's
    start-up CPU time.  A spearlet starting many instances at once thus
    spawns and authenticates them without their imports competing for the
    CPU (the performance notes show the figures); ``False`` overlaps the imports with the
    spearlet's validation instead, which, alone on an idle machine, serves
    the first request sooner by that validation's time (well under a
    millisecond).
    """

    __slots__ = (
        "await_auth_response",
        "client_type",
        "client_version",
        "connect_timeout",
        "extra_params",
        "heartbeat_interval",
        "heartbeat_timeout",
        "host",
        "instance_id",
        "max_message_size",
        "max_retries",
        "max_retry_delay",
        "port",
        "retry_delay",
        "secret",
        "socket_path",
        "tls_ca_path",
        "transport",
    )

    def __init__(
        self,
        *,
        instance_id: str,
        secret: str,
        transport: str,
        socket_path: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_retries: int = 5,
        retry_delay: float = 0.5,
        max_retry_delay: float = 10.0,
        connect_timeout: float = 10.0,
        heartbeat_interval: float | None = HEARTBEAT_INTERVAL,
        heartbeat_timeout: float | None = HEARTBEAT_TIMEOUT,
        max_message_size: int = MAX_MESSAGE_SIZE,
        client_type: str = "spear_twisted-python",
        client_version: str = __version__,
        extra_params: Mapping[str, str] | None = None,
        tls_ca_path: str | None = None,
        await_auth_response: bool = True,
    ) -> None:
        self.instance_id = _text("instance_id", instance_id)
        self.secret = _text("secret", secret)
        if transport not in TRANSPORTS:
            raise AgentConfigError(
                f"transport {transport!r} is not supported by the Python agent SDK: expected one of "
                f"{', '.join(TRANSPORTS)}"
            )
        self.transport = transport
        if transport == "unix" and not socket_path:
            raise AgentConfigError("a unix transport needs socket_path (SPEAR_SOCKET_PATH)")
        if transport in ("tcp", "grpc") and port is None:
            raise AgentConfigError(
                f"a {transport} transport needs port (SPEAR_COMMUNICATION_PORT or SERVICE_ADDR)"
            )
        if tls_ca_path is not None and transport != "grpc":
            raise AgentConfigError("tls_ca_path (SPEAR_TLS_CA_PATH) is for the grpc transport only")
        self.tls_ca_path = None if tls_ca_path is None else _text("tls_ca_path", tls_ca_path)
        if port is not None and (type(port) is not int or not 0 < port < 65536):
            raise AgentConfigError(f"port must be an integer in 1..65535, not {port!r}")
        self.socket_path = socket_path
        self.host = _text("host", host)
        self.port = port
        if type(max_retries) is not int or max_retries < 0:
            raise AgentConfigError(f"max_retries must be a non-negative integer, not {max_retries!r}")
        self.max_retries = max_retries
        self.retry_delay = _seconds("retry_delay", retry_delay, zero=True)
        self.max_retry_delay = _seconds("max_retry_delay", max_retry_delay, zero=True)
        if self.max_retry_delay < self.retry_delay:
            raise AgentConfigError("max_retry_delay must not be below retry_delay")
        self.connect_timeout = _seconds("connect_timeout", connect_timeout)
        self.heartbeat_interval = (
            None if heartbeat_interval is None else _seconds("heartbeat_interval", heartbeat_interval)
        )
        self.heartbeat_timeout = (
            None if heartbeat_timeout is None else _seconds("heartbeat_timeout", heartbeat_timeout)
        )
        if type(max_message_size) is not int or max_message_size < 1:
            raise AgentConfigError(f"max_message_size must be a positive integer, not {max_message_size!r}")
        self.max_message_size = max_message_size
        self.client_type = _text("client_type", client_type, empty=True)
        self.client_version = _text("client_version", client_version, empty=True)
        self.extra_params = dict(extra_params or {})
        if type(await_auth_response) is not bool:
            raise AgentConfigError(
                f"await_auth_response must be True or False, not {type(await_auth_response).__name__}"
            )
        self.await_auth_response = await_auth_response

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> AgentConfig:
        """
        The configuration the environment ``environ`` (``os.environ`` by
        default) describes, with ``overrides`` (any ``__init__`` argument)
        taking precedence.

        :raises AgentConfigError: naming the variable or argument to set.
        """
        env = os.environ if environ is None else environ
        unknown = set(overrides) - set(cls.__slots__)
        if unknown:
            raise TypeError(f"unknown agent settings: {', '.join(sorted(unknown))}")
        settings: dict[str, object] = {}
        if "SPEAR_INSTANCE_ID" in env:
            settings["instance_id"] = env["SPEAR_INSTANCE_ID"]
        secret = env.get("SPEAR_SECRET") or env.get("SECRET")
        if secret:
            settings["secret"] = secret
        host, port = _service_addr(env.get("SERVICE_ADDR"))
        if host is not None:
            settings["host"] = host
        if env.get("SPEAR_COMMUNICATION_PORT"):
            port = _port(env["SPEAR_COMMUNICATION_PORT"], "SPEAR_COMMUNICATION_PORT")
        if port is not None:
            settings["port"] = port
        if env.get("SPEAR_SOCKET_PATH"):
            settings["socket_path"] = env["SPEAR_SOCKET_PATH"]
        if env.get("SPEAR_TLS_CA_PATH"):
            settings["tls_ca_path"] = env["SPEAR_TLS_CA_PATH"]
        kind = env.get("SPEAR_COMMUNICATION_TYPE")
        if kind:
            settings["transport"] = kind.strip().lower()
        settings.update(overrides)
        if "transport" not in settings:
            if settings.get("socket_path"):
                settings["transport"] = "unix"
            elif settings.get("port") is not None:
                settings["transport"] = "tcp"
        for name, variable in (
            ("instance_id", "SPEAR_INSTANCE_ID"),
            ("secret", "SPEAR_SECRET"),
            ("transport", "SPEAR_COMMUNICATION_TYPE"),
        ):
            if not settings.get(name):
                raise AgentConfigError(
                    f"{variable} is not set (nor was {name} passed): is this a Spear instance?"
                )
        return cls(**settings)  # type: ignore[arg-type]

    @property
    def address(self) -> str:
        """Where the agent connects, for messages: ``unix:/path``, ``tcp:host:port`` or ``grpc:host:port``."""
        if self.transport == "unix":
            return f"unix:{self.socket_path}"
        return f"{self.transport}:{self.host}:{self.port}"

    def retry_delay_for(self, attempt: int) -> float:
        """The wait before reconnection attempt ``attempt`` (1 for the first retry)."""
        return float(min(self.retry_delay * 2 ** max(0, attempt - 1), self.max_retry_delay))

    def __repr__(self) -> str:
        return f"<AgentConfig {self.instance_id} {self.address}>"


def _text(name: str, value: object, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise AgentConfigError(f"{name} must be a non-empty string, not {type(value).__name__}")
    return value


def _seconds(name: str, value: object, *, zero: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value < 0
        or (value == 0 and not zero)
    ):
        raise AgentConfigError(f"{name} must be a {'non-negative' if zero else 'positive'} number of seconds")
    return float(value)


def _port(text: str, variable: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise AgentConfigError(f"{variable}={text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise AgentConfigError(f"{variable}={text!r} is not in 1..65535")
    return port


def _service_addr(text: str | None) -> tuple[str | None, int | None]:
    """``host:port`` (``[v6]:port`` for IPv6) of ``SERVICE_ADDR``."""
    if not text:
        return None, None
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise AgentConfigError(f"SERVICE_ADDR={text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, _port(port, "SERVICE_ADDR")


def say(message: str) -> None:
    """Tell the operator ``message`` on standard error (the agent's own lines, before any logging)."""
    sys.stderr.write(f"spear agent: {message}\n")
    sys.stderr.flush()
