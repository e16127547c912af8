"""
The Spear wire protocol, sans-IO: messages, codec, framing and the session.

Nothing in this package imports Twisted; the Twisted protocols and the
asyncio agent both drive it.
"""

from typing import TYPE_CHECKING, Any

from spear_twisted.wire.codec import decode_body, decode_message, encode_body, get_converter
from spear_twisted.wire.constants import (
    AUTH_TIMEOUT,
    CONNECTION_TIMEOUT,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    MAX_MESSAGE_SIZE,
    MAX_PREAUTH_MESSAGE_SIZE,
    PORT_RANGE,
    PROTOCOL_VERSION,
)
from spear_twisted.wire.framing import FrameDecoder, encode_frame
from spear_twisted.wire.identity import RuntimeInstanceId, RuntimeType
from spear_twisted.wire.messages import (
    CANCEL_SIGNAL,
    AnySignal,
    AuthRequest,
    AuthResponse,
    Body,
    CloseMessage,
    ConnectionStatus,
    CustomSignal,
    ErrorMessage,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionMode,
    ExecutionStatus,
    HeartbeatMessage,
    MessageType,
    ResourceUsage,
    SignalMessage,
    SignalType,
    SpearMessage,
    StreamDataMessage,
    Timestamp,
)
from spear_twisted.wire.session import (
    AuthFailed,
    AuthRequested,
    AuthRequestInvalid,
    AuthSucceeded,
    Deadlines,
    HeartbeatReceived,
    MessageReceived,
    PeerClosing,
    Role,
    SendHeartbeat,
    Session,
    SessionConfig,
    SessionEvent,
    SessionState,
    TimedOut,
    Violation,
)

if TYPE_CHECKING:
    from spear_twisted.wire.codec import converter


def __getattr__(name: str) -> Any:
    # The cattrs converter is built (and cattrs imported) on first use.
    if name == "converter":
        return get_converter()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AUTH_TIMEOUT",
    "CANCEL_SIGNAL",
    "CONNECTION_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "MAX_MESSAGE_SIZE",
    "MAX_PREAUTH_MESSAGE_SIZE",
    "PORT_RANGE",
    "PROTOCOL_VERSION",
    "AnySignal",
    "AuthFailed",
    "AuthRequest",
    "AuthRequestInvalid",
    "AuthRequested",
    "AuthResponse",
    "AuthSucceeded",
    "Body",
    "CloseMessage",
    "ConnectionStatus",
    "CustomSignal",
    "Deadlines",
    "ErrorMessage",
    "ExecuteRequest",
    "ExecuteResponse",
    "ExecutionMode",
    "ExecutionStatus",
    "FrameDecoder",
    "HeartbeatMessage",
    "HeartbeatReceived",
    "MessageReceived",
    "MessageType",
    "PeerClosing",
    "ResourceUsage",
    "Role",
    "RuntimeInstanceId",
    "RuntimeType",
    "SendHeartbeat",
    "Session",
    "SessionConfig",
    "SessionEvent",
    "SessionState",
    "SignalMessage",
    "SignalType",
    "SpearMessage",
    "StreamDataMessage",
    "TimedOut",
    "Timestamp",
    "Violation",
    "converter",
    "decode_body",
    "decode_message",
    "encode_body",
    "encode_frame",
    "get_converter",
]
