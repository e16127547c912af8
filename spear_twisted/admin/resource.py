"""
The admin endpoint's routes, as one twisted.web resource.

========================  =========  ==============================================
path                      methods    answer
========================  =========  ==============================================
``/healthz``              GET, HEAD  200 serving / 503 stopping or no task can serve
``/metrics``              GET, HEAD  Prometheus text exposition
``/status``               GET, HEAD  the service's status as JSON
``/tasks/{id}/execute``   POST       the ``ExecuteResponse`` and ``instance_id`` as JSON
========================  =========  ==============================================

With a bearer token set, every route but ``/healthz`` needs it.  Every refusal is a JSON
error document (:func:`~spear_twisted.admin.problems.error_document`) with
the HTTP status of its code, and one structured log line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.server import Request as WebRequest

from spear_twisted.admin.bearer import BearerToken, challenge_for
from spear_twisted.admin.body import dump_json, parse_execute_body, response_document
from spear_twisted.admin.health import assess
from spear_twisted.admin.problems import error_document, http_status_for
from spear_twisted.errors import (
    InternalError,
    MethodNotAllowed,
    PeerError,
    RequestCancelled,
    SpearError,
    UnknownRoute,
)
from spear_twisted.execution.request import ServedResponse
from spear_twisted.wire import ExecuteRequest

#: The content type of ``GET /metrics``: Prometheus text exposition 0.0.4.
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = b"application/json"

log = Logger()


class TaskExecutor(Protocol):
    """What the admin endpoint needs of the task execution manager."""

    def execute_with_instance(
        self, task_id: str, request: ExecuteRequest, timeout: float | None = None
    ) -> Deferred[ServedResponse]: ...

    def status(self, *, with_metrics: bool = True) -> list[dict[str, Any]]: ...


class Administered(Protocol):
    """What the admin endpoint needs of the service it administers (a ``SpearService``)."""

    running: int

    @property
    def tasks(self) -> TaskExecutor: ...

    def status(self) -> dict[str, Any]: ...

    def metrics_text(self) -> bytes: ...


_Handler = Callable[[WebRequest, tuple[str, ...]], bytes | int]


def _status_for(error: SpearError) -> int:
    if isinstance(error, PeerError) and error.known_code is None:
        # A code this version does not know, sent by an instance: upstream's fault.
        return 502
    return http_status_for(error.code)


@attrs.frozen
class Route:
    """A path pattern (``None`` matches any one segment), its handlers by method, and whether it is open."""

    pattern: tuple[str | None, ...]
    methods: dict[bytes, _Handler]
    #: Served without the bearer token (health probes rarely carry one).
    public: bool = False

    def match(self, segments: tuple[str, ...]) -> tuple[str, ...] | None:
        """The parameters of ``segments`` if they match the pattern."""
        if len(segments) != len(self.pattern):
            return None
        parameters = []
        for part, segment in zip(self.pattern, segments, strict=True):
            if part is None:
                parameters.append(segment)
            elif part != segment:
                return None
        return tuple(parameters)


class AdminResource(Resource):
    """The root of the admin endpoint: routing, authentication and errors."""

    isLeaf = True

    def __init__(self, service: Administered, *, token: BearerToken | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.service = service
        self.token = token
        self.routes = (
            Route(("healthz",), {b"GET": self._healthz}, public=True),
            Route(("metrics",), {b"GET": self._metrics}),
            Route(("status",), {b"GET": self._status}),
            Route(("tasks", None, "execute"), {b"POST": self._execute}),
        )

    # -- routing ------------------------------------------------------------------------------

    def render(self, request: WebRequest) -> bytes | int:
        try:
            route, parameters = self._match(request)
            if self.token is not None and not (route is not None and route.public):
                # Before any 404 or 405: without the token, nothing about the routes is told.
                refusal = self.token.check(request.requestHeaders.getRawHeaders(b"authorization"))
                if refusal is not None:
                    _set_header(request, b"WWW-Authenticate", challenge_for(refusal))
                    raise refusal
            if route is None:
                raise UnknownRoute(f"no resource at {_path(request)}")
            return self._handler(request, route)(request, parameters)
        except SpearError as e:
            return self._refuse(request, e)
        except Exception:
            log.failure("admin {method} {path} failed", method=_text(request.method), path=_path(request))
            failed = InternalError("the admin endpoint failed; the spearlet's log has the details")
            return self._refuse(request, failed)

    def _match(self, request: WebRequest) -> tuple[Route | None, tuple[str, ...]]:
        try:
            segments = tuple(segment.decode("utf-8") for segment in request.postpath or ())
        except UnicodeDecodeError:
            return None, ()
        for route in self.routes:
            parameters = route.match(segments)
            if parameters is not None:
                return route, parameters
        return None, ()

    def _handler(self, request: WebRequest, route: Route) -> _Handler:
        method = request.method
        if method == b"HEAD" and b"GET" in route.methods:
            method = b"GET"  # twisted.web writes no body for HEAD
        handler = route.methods.get(method)
        if handler is None:
            allowed = sorted(name.decode() for name in route.methods)
            if "GET" in allowed:
                allowed.append("HEAD")
            raise MethodNotAllowed(
                f"{_text(request.method)} is not allowed on {_path(request)}; use {', '.join(allowed)}",
                allowed=allowed,
            )
        return handler

    # -- routes ------------------------------------------------------------------------------

    def _healthz(self, request: WebRequest, _parameters: tuple[str, ...]) -> bytes:
        # Only the tasks, without the instances' process figures: a probe is
        # frequent, and reading those would reset the CPU window of /status.
        tasks = self.service.tasks.status(with_metrics=False)
        health = assess(bool(self.service.running), {"tasks": tasks})
        return _json(request, health.http_status, health.document)

    def _metrics(self, request: WebRequest, _parameters: tuple[str, ...]) -> bytes:
        text = self.service.metrics_text()
        _set_header(request, b"Content-Type", METRICS_CONTENT_TYPE)
        _set_header(request, b"Content-Length", b"%d" % len(text))
        return text

    def _status(self, request: WebRequest, _parameters: tuple[str, ...]) -> bytes:
        return _json(request, 200, self.service.status())

    def _execute(self, request: WebRequest, parameters: tuple[str, ...]) -> int:
        (task_id,) = parameters
        assert request.content is not None
        execute_request, timeout = parse_execute_body(task_id, request.content.read())
        result = maybeDeferred(self.service.tasks.execute_with_instance, task_id, execute_request, timeout)
        gone: list[bool] = []

        def client_gone(_reason: Failure) -> None:
            gone.append(True)
            result.cancel()

        request.notifyFinish().addErrback(client_gone)

        def answered(served: ServedResponse) -> None:
            if not gone:
                document = response_document(served.response, served.instance_id)
                _finish(request, _json(request, 200, document))

        def failed(failure: Failure) -> None:
            if gone:
                if not isinstance(failure.value, (CancelledError, RequestCancelled)):
                    log.failure(
                        "admin execute of task {task_id} failed after its client went away",
                        failure,
                        task_id=task_id,
                    )
                return
            error = failure.value
            if not isinstance(error, SpearError):
                log.failure("admin execute of task {task_id} failed", failure, task_id=task_id)
                error = InternalError(f"executing task {task_id!r} failed; see the spearlet's log")
            _finish(request, self._refuse(request, error))

        result.addCallbacks(answered, failed)
        return NOT_DONE_YET

    # -- answers ------------------------------------------------------------------------------

    def _refuse(self, request: WebRequest, error: SpearError) -> bytes:
        """The JSON error body for ``error``, with its status set, and its log line."""
        status = _status_for(error)
        document = error_document(error)
        if isinstance(error, MethodNotAllowed):
            _set_header(request, b"Allow", ", ".join(error.allowed).encode())
        log.emit(
            log_level_for(status),
            "admin {method} {path} refused with {http_status} {error_name}: {error_message}",
            method=_text(request.method),
            path=_path(request),
            http_status=status,
            error_code=document["error"]["code"],
            error_name=document["error"]["name"],
            error_message=document["error"]["message"],
            client=_client(request),
        )
        return _json(request, status, document)


def log_level_for(status: int) -> LogLevel:
    """``warn`` for the caller's mistakes (4xx), ``error`` for everything else."""
    level: LogLevel = LogLevel.warn if status < 500 else LogLevel.error
    return level


def _json(request: WebRequest, status: int, document: Any) -> bytes:
    body = dump_json(document)
    request.setResponseCode(status)
    _set_header(request, b"Content-Type", JSON_CONTENT_TYPE)
    _set_header(request, b"Content-Length", b"%d" % len(body))
    _set_header(request, b"Cache-Control", b"no-store")
    return body


def _set_header(request: WebRequest, name: bytes, value: bytes) -> None:
    request.responseHeaders.setRawHeaders(name, [value])


def _finish(request: WebRequest, body: bytes) -> None:
    request.write(body)  # type: ignore[no-untyped-call]
    request.finish()  # type: ignore[no-untyped-call]


def _text(value: bytes | None) -> str:
    return (value or b"").decode("latin-1")


def _path(request: WebRequest) -> str:
    return _text(request.path)


def _client(request: WebRequest) -> str:
    address = request.getClientAddress()  # type: ignore[no-untyped-call]
    host = getattr(address, "host", None)
    return f"{host}:{address.port}" if host is not None else str(address)
