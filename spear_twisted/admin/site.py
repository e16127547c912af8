"""
The HTTP server of the admin endpoint: a twisted.web ``Site`` whose requests
refuse a body larger than the cap before buffering it.

A body announced (``Content-Length``) larger than the cap is refused with
413 as soon as the headers have arrived, before any of it is read (a client
that sent ``Expect: 100-continue`` sends none of it); a chunked body is
refused as soon as the bytes received pass the cap.  Either way the
connection is then closed.  Idle connections are closed after the idle
timeout.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from spear_twisted.admin.body import dump_json
from spear_twisted.admin.problems import error_document
from spear_twisted.errors import ErrorCode, SpearError

#: The largest request body accepted, in bytes (1 MiB).
MAX_BODY_BYTES = 1024 * 1024

#: Seconds a connection may stay idle (between requests, or while a request
#: is being received) before it is closed.
IDLE_TIMEOUT = 60.0

log = Logger()


class AdminRequest(Request):
    """A request that refuses a body over its site's ``max_body_bytes``."""

    _refused = False
    _received = 0

    def _limit(self) -> int:
        channel: Any = self.channel  # an HTTPChannel of an AdminSite
        limit: int = channel.site.max_body_bytes
        return limit

    def gotLength(self, length: int | None) -> None:
        # Never a temporary file: the body is capped, so memory is fine.
        self.content = io.BytesIO()
        if length is not None and length > self._limit():
            # No "100 Continue" after the refusal: the body must not come.
            self.requestHeaders.removeHeader(b"expect")
            self._refuse(f"the request body of {length} bytes is over the limit of {self._limit()} bytes")

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._limit():
            self._refuse(f"the request body is over the limit of {self._limit()} bytes")
            return
        content: Any = self.content
        content.write(data)

    def process(self) -> None:
        # A refused request's remaining bytes may still complete it.
        if not self._refused:
            super().process()  # type: ignore[no-untyped-call]

    def _refuse(self, message: str) -> None:
        """Answer 413 at once and close: the rest of the body is not read."""
        self._refused = True
        error = SpearError(message, code=ErrorCode.MESSAGE_TOO_LARGE)
        body = dump_json(error_document(error))
        head = (
            b"HTTP/1.1 413 Content Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body)
        )
        channel: Any = self.channel
        log.warn(
            "admin request refused with 413 {error_name}: {error_message}",
            error_code=int(error.code),
            error_name=error.code.name,
            error_message=message,
            http_status=413,
            client=str(channel.getPeer()),
        )
        channel.transport.write(head + body)
        channel.loseConnection()


class AdminSite(Site):
    """
    The admin endpoint's ``Site``: capped request bodies, an idle timeout,
    and each request as a structured ``debug`` event instead of an access
    log file.
    """

    noisy = False
    requestFactory = AdminRequest

    def __init__(
        self,
        resource: IResource,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        idle_timeout: float = IDLE_TIMEOUT,
        reactor: Any = None,
    ) -> None:
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, not {max_body_bytes!r}")
        super().__init__(resource, timeout=idle_timeout, reactor=reactor)  # type: ignore[no-untyped-call]
        self.max_body_bytes = max_body_bytes

    def log(self, request: Any) -> None:
        log.debug(
            "admin {method} {path} answered {http_status}",
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
            http_status=request.code,
            client=str(request.getClientAddress()),
        )
