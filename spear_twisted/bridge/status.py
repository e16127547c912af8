"""
gRPC status codes, the exception that carries one, and how Spear errors map
to them.

A handler fails a call by raising (or failing its Deferred with) a
:class:`GrpcError`, or any :class:`~spear_twisted.errors.SpearError`, which
:func:`status_for_error` maps to a status and whose :class:`ErrorCode` travels
in the ``spear-error-code`` trailer.  Anything else is reported as
``UNKNOWN`` with a generic message: a bug never reaches the peer as a
traceback.

No Twisted here.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from spear_twisted.errors import ErrorCode, SpearError

#: Trailing metadata key carrying the Spear error code of a failed call.
ERROR_CODE_KEY = "spear-error-code"


class StatusCode(enum.IntEnum):
    """The gRPC status codes (``grpc-status``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


#: Metadata: ``(key, value)`` pairs; ``value`` is bytes for ``-bin`` keys, else text.
Metadata = Sequence[tuple[str, "str | bytes"]]


class GrpcError(Exception):
    """
    Ends a call with ``status`` and ``message`` (sent percent-encoded in
    ``grpc-message``) and optional trailing ``metadata``.
    """

    def __init__(self, status: StatusCode, message: str = "", metadata: Metadata = ()) -> None:
        if status is StatusCode.OK:
            raise ValueError("a GrpcError cannot carry the OK status")
        super().__init__(message)
        self.status = StatusCode(status)
        self.message = message
        self.metadata = tuple(metadata)

    def __str__(self) -> str:
        return f"{self.status.name}: {self.message}"

    def __repr__(self) -> str:
        return f"GrpcError({self.status.name}, {self.message!r})"


#: The gRPC status each Spear error code is reported with.
STATUS_FOR_CODE: dict[ErrorCode, StatusCode] = {
    ErrorCode.PROTOCOL_VIOLATION: StatusCode.INVALID_ARGUMENT,
    ErrorCode.MALFORMED_FRAME: StatusCode.INVALID_ARGUMENT,
    ErrorCode.MESSAGE_TOO_LARGE: StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.INVALID_JSON: StatusCode.INVALID_ARGUMENT,
    ErrorCode.INVALID_MESSAGE: StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNSUPPORTED_VERSION: StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNEXPECTED_MESSAGE: StatusCode.FAILED_PRECONDITION,
    ErrorCode.NOT_AUTHENTICATED: StatusCode.UNAUTHENTICATED,
    ErrorCode.AUTHENTICATION_FAILED: StatusCode.UNAUTHENTICATED,
    ErrorCode.AUTHENTICATION_TIMEOUT: StatusCode.UNAUTHENTICATED,
    ErrorCode.ALREADY_CONNECTED: StatusCode.ALREADY_EXISTS,
    ErrorCode.TOO_MANY_CONNECTIONS: StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.TOO_MANY_PENDING_AUTH: StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.HEARTBEAT_TIMEOUT: StatusCode.UNAVAILABLE,
    ErrorCode.IDLE_TIMEOUT: StatusCode.UNAVAILABLE,
    ErrorCode.CONNECTION_LOST: StatusCode.UNAVAILABLE,
    ErrorCode.CONNECTION_CLOSED: StatusCode.UNAVAILABLE,
    ErrorCode.CONNECTION_FAILED: StatusCode.UNAVAILABLE,
    ErrorCode.REQUEST_TIMEOUT: StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.REQUEST_CANCELLED: StatusCode.CANCELLED,
    ErrorCode.UNKNOWN_TASK: StatusCode.NOT_FOUND,
    ErrorCode.NO_INSTANCE_AVAILABLE: StatusCode.UNAVAILABLE,
    ErrorCode.EXECUTION_TIMEOUT: StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.INSTANCE_LOST: StatusCode.UNAVAILABLE,
    ErrorCode.EXECUTION_FAILED: StatusCode.ABORTED,
    ErrorCode.SERVER_BUSY: StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.INSTANCE_START_FAILED: StatusCode.UNAVAILABLE,
    ErrorCode.INTERNAL_ERROR: StatusCode.INTERNAL,
    ErrorCode.SHUTTING_DOWN: StatusCode.UNAVAILABLE,
    ErrorCode.UNKNOWN_ROUTE: StatusCode.UNIMPLEMENTED,
    ErrorCode.METHOD_NOT_ALLOWED: StatusCode.UNIMPLEMENTED,
}


def status_for_error(error: BaseException) -> GrpcError:
    """
    The :class:`GrpcError` that reports ``error`` to a caller.

    A ``GrpcError`` is itself; a ``SpearError`` keeps its message and adds its
    code as the ``spear-error-code`` trailer; anything else is ``UNKNOWN``
    with a generic message (its details belong in the server's log only).
    """
    if isinstance(error, GrpcError):
        return error
    if isinstance(error, SpearError):
        status = STATUS_FOR_CODE.get(error.code, StatusCode.UNKNOWN)
        return GrpcError(status, str(error), ((ERROR_CODE_KEY, str(int(error.code))),))
    return GrpcError(StatusCode.UNKNOWN, "the server failed to handle the call; see its log")
