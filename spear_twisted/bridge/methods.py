"""
What the bridge serves: methods by ``:path``, their handlers, and the
backends of the ``spear.v1.SpearBridge`` service.

A :class:`MethodRegistry` maps each path to a :class:`Method`:

* a *unary* handler is called as ``handler(request, context)`` with the
  decoded request once the client has sent it, and returns the response
  (or a Deferred of it); cancelling that Deferred is how the server stops
  the work when the client cancels or the deadline passes;
* a *bidirectional streaming* handler is called as ``handler(stream,
  context)`` with a :class:`~spear_twisted.bridge.call.BridgeStream` as soon as
  the call is accepted, and returns a Deferred that fires when the call is
  over (its result is ignored; a failure becomes the call's status).

Failures become statuses through
:func:`~spear_twisted.bridge.status.status_for_error`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import attrs
from google.protobuf.message import Message
from twisted.internet import defer
from zope.interface import Interface

from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.contract import CONNECT_PATH, EXECUTE_PATH, STATUS_PATH


class MethodKind(enum.Enum):
    """How a method's messages flow."""

    UNARY = "unary"
    BIDI_STREAM = "bidi_stream"


@attrs.frozen
class CallContext:
    """
    What a handler knows about its call.

    ``timeout`` is the client's ``grpc-timeout`` in seconds (``None``: no
    deadline) and ``deadline`` the server clock's time when it passes;
    ``metadata`` holds the client's custom metadata (``-bin`` values as
    bytes); ``caller`` is the authenticated caller's name, for methods that
    need authentication.
    """

    method: str
    peer: str
    connection_id: str
    stream_id: int
    metadata: tuple[tuple[str, str | bytes], ...] = ()
    timeout: float | None = None
    deadline: float | None = None
    caller: str | None = None

    def metadata_value(self, key: str) -> str | bytes | None:
        """The first value of metadata ``key``, or ``None``."""
        for name, value in self.metadata:
            if name == key:
                return value
        return None


#: A unary handler: ``(request, context) -> response | Deferred[response]``.
UnaryHandler = Callable[[Any, CallContext], Any]

#: A streaming handler: ``(stream, context) -> Deferred[None] | None``.
StreamHandler = Callable[[Any, CallContext], Any]


@attrs.frozen
class Method:
    """One servable method: its path, message types, handler and rules."""

    path: str
    kind: MethodKind
    request_type: type[Message]
    response_type: type[Message]
    handler: Callable[[Any, CallContext], Any]
    requires_auth: bool = False


class MethodRegistry:
    """The methods a server serves, by ``:path`` (``/package.Service/Method``)."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def add(self, method: Method) -> None:
        """Serve ``method``; a path is served once."""
        if not method.path.startswith("/") or method.path.count("/") != 2:
            raise ValueError(f"a method path is /package.Service/Method, not {method.path!r}")
        if method.path in self._methods:
            raise ValueError(f"{method.path} is already served")
        self._methods[method.path] = method

    def add_unary(
        self,
        path: str,
        request_type: type[Message],
        response_type: type[Message],
        handler: UnaryHandler,
        *,
        requires_auth: bool = False,
    ) -> None:
        """Serve a unary method."""
        self.add(Method(path, MethodKind.UNARY, request_type, response_type, handler, requires_auth))

    def add_bidi_stream(
        self,
        path: str,
        request_type: type[Message],
        response_type: type[Message],
        handler: StreamHandler,
        *,
        requires_auth: bool = False,
    ) -> None:
        """Serve a bidirectional streaming method."""
        self.add(Method(path, MethodKind.BIDI_STREAM, request_type, response_type, handler, requires_auth))

    def lookup(self, path: str) -> Method | None:
        """The method served at ``path``, or ``None``."""
        return self._methods.get(path)

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path served, in the order they were added."""
        return tuple(self._methods)


class IBridgeBackend(Interface):
    """What the unary methods of ``SpearBridge`` run on (the TaskExecutionManager)."""

    def execute(call, context):  # type: ignore[no-untyped-def]
        """
        Run ``call`` (an ``ExecuteCall``) for the caller of ``context``.

        :return: a Deferred firing with an ``ExecuteResult``, or failing with
            a ``SpearError`` (for example ``UnknownTask``) that becomes the
            call's status; it is cancelled if the caller goes away or the
            deadline passes.
        """

    def status(request, context):  # type: ignore[no-untyped-def]
        """
        The state of the spearlet (for ``request``, a ``StatusRequest``).

        :return: a Deferred firing with a ``StatusReply``; the server fills
            in its ``bridge`` figures.
        """


class IConnectHandler(Interface):
    """
    What a ``Connect`` stream is handed to
    (:class:`~spear_twisted.bridge.session.ConnectSession` runs the Spear session on it).
    """

    def connect(stream, context):  # type: ignore[no-untyped-def]
        """
        Serve the session on ``stream`` (a ``BridgeStream`` of ``Envelope``).

        :return: a Deferred that fires when the session is over.
        """


def spear_bridge_methods(
    backend: Any,
    connect: Any = None,
    *,
    bridge_stats: Callable[[], pb.BridgeStats] | None = None,
    authenticate_callers: bool = True,
) -> MethodRegistry:
    """
    The registry of ``spear.v1.SpearBridge``: ``Execute`` and ``Status`` on
    ``backend`` (an :class:`IBridgeBackend`), and ``Connect`` on ``connect``
    (an :class:`IConnectHandler`; without one, ``Connect`` is UNIMPLEMENTED).

    ``Execute`` and ``Status`` need caller authentication unless
    ``authenticate_callers`` is false; ``Connect`` never does (the session
    authenticates).  ``bridge_stats`` fills ``StatusReply.bridge``.
    """
    registry = MethodRegistry()

    def status(request: pb.StatusRequest, context: CallContext) -> Any:
        reply = defer.maybeDeferred(backend.status, request, context)
        if bridge_stats is None:
            return reply

        def with_stats(result: pb.StatusReply) -> pb.StatusReply:
            result.bridge.CopyFrom(bridge_stats())
            return result

        return reply.addCallback(with_stats)

    registry.add_unary(
        EXECUTE_PATH, pb.ExecuteCall, pb.ExecuteResult, backend.execute, requires_auth=authenticate_callers
    )
    registry.add_unary(
        STATUS_PATH, pb.StatusRequest, pb.StatusReply, status, requires_auth=authenticate_callers
    )
    if connect is not None:
        registry.add_bidi_stream(CONNECT_PATH, pb.Envelope, pb.Envelope, connect.connect)
    return registry
