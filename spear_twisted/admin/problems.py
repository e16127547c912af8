"""
Errors as the admin endpoint reports them: an HTTP status for every
:class:`~spear_twisted.errors.ErrorCode`, and the JSON error document.

The status says who should act: 4xx the caller (a wrong request, a wrong
token, an unknown task), 502 the instance (it broke the protocol or went
away), 503 nobody yet (no instance can take the request now, or the
spearlet is stopping: retry later), 504 the instance was too slow, 500 the
spearlet itself.
"""

from __future__ import annotations

from typing import Any

from spear_twisted.errors import ErrorCode, InvalidMessage, SpearError
from spear_twisted.wire import ExecuteResponse
from spear_twisted.wire.codec import unstructure

#: The HTTP status of each error code.
HTTP_STATUS: dict[ErrorCode, int] = {
    # A peer broke the protocol: here that peer is an instance, upstream of us.
    ErrorCode.PROTOCOL_VIOLATION: 502,
    ErrorCode.MALFORMED_FRAME: 502,
    # From the admin endpoint itself: the request body is over the cap.
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    # From the admin endpoint itself: the request body is not valid JSON / not the schema.
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_MESSAGE: 400,
    ErrorCode.UNSUPPORTED_VERSION: 502,
    ErrorCode.UNEXPECTED_MESSAGE: 502,
    # From the admin endpoint itself: no bearer token, or the wrong one.
    ErrorCode.NOT_AUTHENTICATED: 401,
    ErrorCode.AUTHENTICATION_FAILED: 401,
    # An instance that could not authenticate could not serve.
    ErrorCode.AUTHENTICATION_TIMEOUT: 503,
    ErrorCode.ALREADY_CONNECTED: 503,
    ErrorCode.TOO_MANY_CONNECTIONS: 503,
    ErrorCode.TOO_MANY_PENDING_AUTH: 503,
    ErrorCode.HEARTBEAT_TIMEOUT: 502,
    ErrorCode.IDLE_TIMEOUT: 502,
    ErrorCode.CONNECTION_LOST: 502,
    ErrorCode.CONNECTION_CLOSED: 502,
    ErrorCode.CONNECTION_FAILED: 502,
    ErrorCode.REQUEST_TIMEOUT: 504,
    ErrorCode.REQUEST_CANCELLED: 503,
    ErrorCode.UNKNOWN_TASK: 404,
    ErrorCode.NO_INSTANCE_AVAILABLE: 503,
    ErrorCode.EXECUTION_TIMEOUT: 504,
    ErrorCode.INSTANCE_LOST: 502,
    ErrorCode.EXECUTION_FAILED: 502,
    ErrorCode.SERVER_BUSY: 503,
    ErrorCode.INSTANCE_START_FAILED: 503,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.UNKNOWN_ROUTE: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
}


def http_status_for(code: int) -> int:
    """The HTTP status for error ``code``; 500 for a number this version does not know."""
    try:
        return HTTP_STATUS[ErrorCode(code)]
    except ValueError:
        return 500


def error_name(code: int) -> str:
    """The name of error ``code`` (``"UNKNOWN_TASK"``), or ``"UNKNOWN"``."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return "UNKNOWN"


def error_document(error: SpearError) -> dict[str, Any]:
    """
    The JSON body reporting ``error``::

        {"error": {"code": 1302, "name": "UNKNOWN_TASK", "message": "..."}}

    with ``problems`` (``[{"path": ..., "reason": ...}]``) for a schema
    error, ``instance_id`` and ``details`` when the error has them, and
    ``response`` (the ``ExecuteResponse`` with status Timeout, with any
    output so far) for an execution timeout.
    """
    code = int(getattr(error, "error_code", error.code))
    body: dict[str, Any] = {"code": code, "name": error_name(code), "message": str(error)}
    if isinstance(error, InvalidMessage):
        body["problems"] = [{"path": path, "reason": reason} for path, reason in error.problems]
    if error.instance_id is not None:
        body["instance_id"] = str(error.instance_id)
    if error.details is not None:
        body["details"] = error.details
    response = getattr(error, "response", None)
    if isinstance(response, ExecuteResponse):
        body["response"] = unstructure(response)
    return {"error": body}
