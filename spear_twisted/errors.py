"""
The error codes of PROTOCOL.md section 5 and the exceptions that carry them.

Every refusal on the wire is an ``Error`` message whose ``error_code`` comes
from :class:`ErrorCode`; every failure raised by spear_twisted is a
:class:`SpearError` that knows its code, and can name the instance and the
request it concerns.  The numbers are a stable contract: never renumber, only
add.

This module imports nothing from Twisted: the wire layer and the asyncio side
of the agent SDK use it too.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spear_twisted.wire.identity import RuntimeInstanceId
    from spear_twisted.wire.messages import ExecuteResponse


class ErrorCode(enum.IntEnum):
    """
    The stable error codes carried by ``ErrorMessage.error_code``.

    Ranges: 1000 protocol, 1100 authentication, 1200 connection,
    1300 requests and execution, 1400 the spearlet itself.
    """

    # protocol
    PROTOCOL_VIOLATION = 1000
    MALFORMED_FRAME = 1001
    MESSAGE_TOO_LARGE = 1002
    INVALID_JSON = 1003
    INVALID_MESSAGE = 1004
    UNSUPPORTED_VERSION = 1005
    UNEXPECTED_MESSAGE = 1006

    # authentication
    NOT_AUTHENTICATED = 1100
    AUTHENTICATION_FAILED = 1101
    AUTHENTICATION_TIMEOUT = 1102
    ALREADY_CONNECTED = 1103

    # connections
    TOO_MANY_CONNECTIONS = 1200
    TOO_MANY_PENDING_AUTH = 1201
    HEARTBEAT_TIMEOUT = 1202
    IDLE_TIMEOUT = 1203
    CONNECTION_LOST = 1204
    CONNECTION_CLOSED = 1205
    CONNECTION_FAILED = 1206

    # requests and execution
    REQUEST_TIMEOUT = 1300
    REQUEST_CANCELLED = 1301
    UNKNOWN_TASK = 1302
    NO_INSTANCE_AVAILABLE = 1303
    EXECUTION_TIMEOUT = 1304
    INSTANCE_LOST = 1305
    EXECUTION_FAILED = 1306
    SERVER_BUSY = 1307
    INSTANCE_START_FAILED = 1308

    # the spearlet itself
    INTERNAL_ERROR = 1400
    SHUTTING_DOWN = 1401

    @property
    def description(self) -> str:
        """What the code means, as documented in the error-code table."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.PROTOCOL_VIOLATION: "The peer broke the protocol in a way no more specific code covers.",
    ErrorCode.MALFORMED_FRAME: "A frame with a zero length, or a frame cut short by the end of the connection.",
    ErrorCode.MESSAGE_TOO_LARGE: (
        "A frame longer than the receiver's maximum message size; it was not buffered."
    ),
    ErrorCode.INVALID_JSON: (
        "A body that is not strict UTF-8 JSON: bad syntax, duplicate keys, NaN or Infinity, "
        "lone surrogates, a byte order mark, trailing data, nesting deeper than 127."
    ),
    ErrorCode.INVALID_MESSAGE: (
        "Valid JSON that does not match the message schema: a missing key, a wrong type, "
        "an integer out of range or an unknown enum name."
    ),
    ErrorCode.UNSUPPORTED_VERSION: "A message whose ``version`` this side does not speak.",
    ErrorCode.UNEXPECTED_MESSAGE: (
        "A message that is not allowed in this direction or in the session's current state."
    ),
    ErrorCode.NOT_AUTHENTICATED: "A message other than ``AuthRequest`` before authentication succeeded.",
    ErrorCode.AUTHENTICATION_FAILED: "The instance id and token were refused.",
    ErrorCode.AUTHENTICATION_TIMEOUT: "No ``AuthRequest`` arrived within the authentication timeout.",
    ErrorCode.ALREADY_CONNECTED: "The instance already has a live authenticated connection.",
    ErrorCode.TOO_MANY_CONNECTIONS: "The spearlet is at its maximum number of connections.",
    ErrorCode.TOO_MANY_PENDING_AUTH: "Too many connections are still waiting to authenticate.",
    ErrorCode.HEARTBEAT_TIMEOUT: "Nothing was received for longer than the heartbeat timeout.",
    ErrorCode.IDLE_TIMEOUT: "The connection carried no traffic for longer than the idle timeout.",
    ErrorCode.CONNECTION_LOST: "The connection ended while the operation was outstanding.",
    ErrorCode.CONNECTION_CLOSED: "The channel was closed locally; no more messages can be sent on it.",
    ErrorCode.CONNECTION_FAILED: "No transport could establish the connection.",
    ErrorCode.REQUEST_TIMEOUT: "No response to a request arrived within its timeout.",
    ErrorCode.REQUEST_CANCELLED: "The caller cancelled the request.",
    ErrorCode.UNKNOWN_TASK: "No task with that id is configured.",
    ErrorCode.NO_INSTANCE_AVAILABLE: "No ready instance could take the request within its timeout.",
    ErrorCode.EXECUTION_TIMEOUT: "The instance did not finish the execution within its timeout.",
    ErrorCode.INSTANCE_LOST: "The instance died or disconnected while executing the request.",
    ErrorCode.EXECUTION_FAILED: "The instance reported that the execution failed.",
    ErrorCode.SERVER_BUSY: "The spearlet or the instance is at capacity; retry later.",
    ErrorCode.INSTANCE_START_FAILED: (
        "The instance's process could not be started, exited, or did not authenticate in time."
    ),
    ErrorCode.INTERNAL_ERROR: "An unexpected failure inside the spearlet; its log has the details.",
    ErrorCode.SHUTTING_DOWN: "The spearlet is stopping and accepts no new work.",
}


class SpearError(Exception):
    """
    Base of every spear_twisted error.

    ``code`` is the :class:`ErrorCode` sent to a peer for this error;
    ``instance_id`` and ``request_id`` name what the error concerns, when
    known; ``details`` is optional free text for the ``details`` field of an
    ``ErrorMessage``.
    """

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(
        self,
        message: str,
        *,
        instance_id: RuntimeInstanceId | None = None,
        request_id: int | None = None,
        details: str | None = None,
        code: ErrorCode | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.instance_id = instance_id
        self.request_id = request_id
        self.details = details

    def __str__(self) -> str:
        context = []
        if self.instance_id is not None:
            context.append(f"instance {self.instance_id}")
        if self.request_id is not None:
            context.append(f"request {self.request_id}")
        if context:
            return f"{self.message} ({', '.join(context)})"
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class CommunicationError(SpearError):
    """Something went wrong between the spearlet and an instance."""

    code = ErrorCode.PROTOCOL_VIOLATION


# -- protocol -----------------------------------------------------------------


class ProtocolError(CommunicationError):
    """The peer sent something the protocol does not allow."""

    code = ErrorCode.PROTOCOL_VIOLATION


class FrameError(ProtocolError):
    """A violation of the length-prefixed framing (PROTOCOL.md section 1)."""

    code = ErrorCode.MALFORMED_FRAME


class EmptyFrame(FrameError):
    """A frame whose length prefix is zero."""

    code = ErrorCode.MALFORMED_FRAME


class TruncatedFrame(FrameError):
    """The connection ended in the middle of a frame."""

    code = ErrorCode.MALFORMED_FRAME

    def __init__(self, message: str, *, received: int, expected: int | None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.received = received
        self.expected = expected


class FrameTooLarge(FrameError):
    """A frame whose announced length exceeds the receiver's limit."""

    code = ErrorCode.MESSAGE_TOO_LARGE

    def __init__(self, message: str, *, length: int, limit: int, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.length = length
        self.limit = limit


class DecodeError(ProtocolError):
    """A frame body that could not be decoded into a message."""

    code = ErrorCode.INVALID_MESSAGE


class InvalidJson(DecodeError):
    """A body that is not strict UTF-8 JSON."""

    code = ErrorCode.INVALID_JSON


class InvalidMessage(DecodeError):
    """
    JSON that does not match the schema.

    ``problems`` lists ``(path, reason)`` pairs, for example
    ``("payload.args[2]", "expected string, found integer")``.
    """

    code = ErrorCode.INVALID_MESSAGE

    def __init__(self, problems: Sequence[tuple[str, str]], **kwargs: object) -> None:
        self.problems = tuple(problems)
        text = "; ".join(f"{path}: {reason}" if path else reason for path, reason in self.problems)
        super().__init__(text, **kwargs)  # type: ignore[arg-type]

    def prefixed(self, prefix: str) -> InvalidMessage:
        """The same problems with ``prefix`` put in front of every path."""
        return InvalidMessage(
            [(f"{prefix}.{path}" if path else prefix, reason) for path, reason in self.problems],
            instance_id=self.instance_id,
            request_id=self.request_id,
        )


class UnsupportedVersion(ProtocolError):
    """A message whose protocol version this side does not speak."""

    code = ErrorCode.UNSUPPORTED_VERSION


class UnexpectedMessage(ProtocolError):
    """A message not allowed in this direction or in the session's state."""

    code = ErrorCode.UNEXPECTED_MESSAGE


# -- authentication ------------------------------------------------------------


class AuthenticationError(CommunicationError):
    """The authentication handshake did not succeed."""

    code = ErrorCode.AUTHENTICATION_FAILED


class NotAuthenticated(AuthenticationError):
    """A message arrived before authentication succeeded."""

    code = ErrorCode.NOT_AUTHENTICATED


class AuthenticationFailed(AuthenticationError):
    """The instance id and token were refused."""

    code = ErrorCode.AUTHENTICATION_FAILED


class AuthenticationTimeout(AuthenticationError):
    """No ``AuthRequest`` (or no ``AuthResponse``) in time."""

    code = ErrorCode.AUTHENTICATION_TIMEOUT


class AlreadyConnected(AuthenticationError):
    """The instance already has a live authenticated connection."""

    code = ErrorCode.ALREADY_CONNECTED


# -- connections -----------------------------------------------------------------


class TooManyConnections(CommunicationError):
    """The spearlet is at its connection limit."""

    code = ErrorCode.TOO_MANY_CONNECTIONS


class TooManyPendingAuth(CommunicationError):
    """Too many connections are still waiting to authenticate."""

    code = ErrorCode.TOO_MANY_PENDING_AUTH


class HeartbeatTimeout(CommunicationError):
    """Nothing was received for longer than the heartbeat timeout."""

    code = ErrorCode.HEARTBEAT_TIMEOUT


class IdleTimeout(CommunicationError):
    """The connection was idle for longer than the idle timeout."""

    code = ErrorCode.IDLE_TIMEOUT


class ConnectionLost(CommunicationError):
    """The connection ended while something was outstanding."""

    code = ErrorCode.CONNECTION_LOST


class ConnectionClosed(CommunicationError):
    """The channel was closed locally."""

    code = ErrorCode.CONNECTION_CLOSED


class ConnectionFailed(CommunicationError):
    """
    No transport could establish a connection.

    ``attempts`` lists ``(transport, reason)`` for every transport tried.
    """

    code = ErrorCode.CONNECTION_FAILED

    def __init__(self, message: str, *, attempts: Sequence[tuple[str, str]] = (), **kwargs: object) -> None:
        self.attempts = tuple(attempts)
        if self.attempts:
            tried = "; ".join(f"{transport}: {reason}" for transport, reason in self.attempts)
            message = f"{message} (tried {tried})"
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class RequestTimeout(CommunicationError):
    """No response to a request arrived within its timeout."""

    code = ErrorCode.REQUEST_TIMEOUT


class RequestCancelled(CommunicationError):
    """The caller cancelled the request."""

    code = ErrorCode.REQUEST_CANCELLED


# -- execution ------------------------------------------------------------------------


class ExecutionError(SpearError):
    """A task execution could not be carried out."""

    code = ErrorCode.EXECUTION_FAILED


class UnknownTask(ExecutionError):
    """No task with that id is configured."""

    code = ErrorCode.UNKNOWN_TASK


class NoInstanceAvailable(ExecutionError):
    """No ready instance could take the request within its timeout."""

    code = ErrorCode.NO_INSTANCE_AVAILABLE


class ExecutionTimeout(ExecutionError):
    """
    The instance did not finish within the execution timeout.

    ``response`` is the ``ExecuteResponse`` with status Timeout that stands
    for the execution: the instance's own, or one made by the spearlet.
    """

    code = ErrorCode.EXECUTION_TIMEOUT

    def __init__(self, message: str, *, response: ExecuteResponse | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.response = response


class InstanceLost(ExecutionError):
    """The instance died or disconnected while executing the request."""

    code = ErrorCode.INSTANCE_LOST


class ExecutionFailed(ExecutionError):
    """The instance reported that the execution failed."""

    code = ErrorCode.EXECUTION_FAILED


class ServerBusy(ExecutionError):
    """The spearlet or the instance is at capacity."""

    code = ErrorCode.SERVER_BUSY


class InstanceStartFailed(ExecutionError):
    """The instance's process could not start, or did not authenticate in time."""

    code = ErrorCode.INSTANCE_START_FAILED


# -- the spearlet itself -------------------------------------------------------------


class InternalError(SpearError):
    """An unexpected failure inside the spearlet."""

    code = ErrorCode.INTERNAL_ERROR


class ShuttingDown(SpearError):
    """The spearlet is stopping and accepts no new work."""

    code = ErrorCode.SHUTTING_DOWN


#: The exception class raised for an ``Error`` message received with a code.
ERROR_CLASSES: dict[ErrorCode, type[SpearError]] = {
    ErrorCode.PROTOCOL_VIOLATION: ProtocolError,
    ErrorCode.MALFORMED_FRAME: FrameError,
    ErrorCode.MESSAGE_TOO_LARGE: FrameError,
    ErrorCode.INVALID_JSON: DecodeError,
    ErrorCode.INVALID_MESSAGE: DecodeError,
    ErrorCode.UNSUPPORTED_VERSION: UnsupportedVersion,
    ErrorCode.UNEXPECTED_MESSAGE: UnexpectedMessage,
    ErrorCode.NOT_AUTHENTICATED: NotAuthenticated,
    ErrorCode.AUTHENTICATION_FAILED: AuthenticationFailed,
    ErrorCode.AUTHENTICATION_TIMEOUT: AuthenticationTimeout,
    ErrorCode.ALREADY_CONNECTED: AlreadyConnected,
    ErrorCode.TOO_MANY_CONNECTIONS: TooManyConnections,
    ErrorCode.TOO_MANY_PENDING_AUTH: TooManyPendingAuth,
    ErrorCode.HEARTBEAT_TIMEOUT: HeartbeatTimeout,
    ErrorCode.IDLE_TIMEOUT: IdleTimeout,
    ErrorCode.CONNECTION_LOST: ConnectionLost,
    ErrorCode.CONNECTION_CLOSED: ConnectionClosed,
    ErrorCode.CONNECTION_FAILED: ConnectionFailed,
    ErrorCode.REQUEST_TIMEOUT: RequestTimeout,
    ErrorCode.REQUEST_CANCELLED: RequestCancelled,
    ErrorCode.UNKNOWN_TASK: UnknownTask,
    ErrorCode.NO_INSTANCE_AVAILABLE: NoInstanceAvailable,
    ErrorCode.EXECUTION_TIMEOUT: ExecutionTimeout,
    ErrorCode.INSTANCE_LOST: InstanceLost,
    ErrorCode.EXECUTION_FAILED: ExecutionFailed,
    ErrorCode.SERVER_BUSY: ServerBusy,
    ErrorCode.INSTANCE_START_FAILED: InstanceStartFailed,
    ErrorCode.INTERNAL_ERROR: InternalError,
    ErrorCode.SHUTTING_DOWN: ShuttingDown,
}


class PeerError(SpearError):
    """
    An ``Error`` message received from the peer, as an exception.

    ``code`` is the raw number the peer sent (it may be one this version does
    not know); ``error_class`` is the local class for a known code.
    """

    def __init__(self, error_code: int, message: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.error_code = error_code

    @property
    def known_code(self) -> ErrorCode | None:
        """The :class:`ErrorCode` for the number the peer sent, if known."""
        try:
            return ErrorCode(self.error_code)
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"peer error {self.error_code}: {super().__str__()}"
