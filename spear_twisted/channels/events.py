"""Connection events, delivered in order to whoever observes connections."""

from __future__ import annotations

import enum

import attrs

from spear_twisted.wire import MessageType, RuntimeInstanceId


class ConnectionEventKind(enum.Enum):
    """What happened to a connection."""

    CONNECTED = "Connected"
    AUTHENTICATED = "Authenticated"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    MESSAGE_RECEIVED = "MessageReceived"
    MESSAGE_SENT = "MessageSent"
    HEARTBEAT_TIMEOUT = "HeartbeatTimeout"
    DISCONNECTED = "Disconnected"
    ERROR = "Error"


@attrs.frozen
class ConnectionEvent:
    """
    One event of one connection.

    ``time`` is on the reactor's clock.  Message events carry the message's
    type, request id and frame size; failure events carry a reason and the
    error code sent or received.
    """

    kind: ConnectionEventKind
    connection_id: str
    time: float
    instance_id: RuntimeInstanceId | None = None
    remote_addr: str | None = None
    client_type: str | None = None
    message_type: MessageType | None = None
    request_id: int | None = None
    size: int | None = None
    reason: str | None = None
    error_code: int | None = None
