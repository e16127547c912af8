"""
:class:`SpearProtocol`: one connection speaking the Spear protocol.

It is the Twisted driver of the sans-IO wire layer: bytes go through a
:class:`~spear_twisted.wire.FrameDecoder`, messages through a
:class:`~spear_twisted.wire.Session`, and the session's events become writes,
closes and calls to the connection's collaborators:

* a *gatekeeper* (spearlet role) decides whether an ``AuthRequest`` is good
  and which owner the connection then belongs to;
* an *owner* (usually a channel) gets the authenticated connection, its
  application messages, and its end;
* an optional *observer* gets :class:`~spear_twisted.channels.events.ConnectionEvent`\\ s.

Who dialled does not matter: the role decides who validates and who presents
a token.  The protocol is a streaming producer for its transport: while the
transport's write buffer is above its high-water mark, sends wait in order.
"""

from __future__ import annotations

import itertools
import secrets
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from spear_twisted._version import __version__
from spear_twisted.channels.events import ConnectionEvent, ConnectionEventKind
from spear_twisted.errors import (
    AuthenticationError,
    AuthenticationFailed,
    ConnectionLost,
    DecodeError,
    HeartbeatTimeout,
    SpearError,
)
from spear_twisted.wire import (
    AuthFailed,
    AuthRequest,
    AuthRequested,
    AuthRequestInvalid,
    AuthResponse,
    AuthSucceeded,
    ConnectionStatus,
    FrameDecoder,
    HeartbeatMessage,
    HeartbeatReceived,
    MessageReceived,
    PeerClosing,
    Role,
    RuntimeInstanceId,
    SendHeartbeat,
    Session,
    SessionConfig,
    SessionEvent,
    SessionState,
    SpearMessage,
    TimedOut,
    Timestamp,
    Violation,
)

#: ``server_version`` sent in ``AuthResponse``.
SERVER_VERSION = f"spear_twisted/{__version__}"

#: ``supported_features`` sent in ``AuthResponse``.
SUPPORTED_FEATURES = ("heartbeat", "signal", "stream_data", "connection_close_reason")

#: ``request_id`` of messages this side originates that answer nothing and
#: expect no answer but the handshake's (heartbeats, closes, errors about no
#: request); channels allocate request ids from 1.
CONTROL_REQUEST_ID = 0

#: Seconds an orderly close may take to flush before the connection is aborted.
CLOSE_TIMEOUT = 10.0

_connection_ids = itertools.count(1)


def new_connection_id() -> str:
    """A connection id unique within this process."""
    return f"conn-{next(_connection_ids)}"


class IConnectionOwner(Interface):
    """Whoever an authenticated connection belongs to (usually a channel)."""

    def connection_ready(connection):  # type: ignore[no-untyped-def]
        """``connection`` has authenticated and now belongs to this owner."""

    def message_received(connection, message):  # type: ignore[no-untyped-def]
        """An application message arrived on ``connection``."""

    def connection_done(connection, error):  # type: ignore[no-untyped-def]
        """``connection`` ended; ``error`` is why (a ``SpearError``), ``None`` if orderly."""


class IConnectionGatekeeper(Interface):
    """Decides, on the spearlet side, what an ``AuthRequest`` is worth."""

    def authenticate(connection, request):  # type: ignore[no-untyped-def]
        """
        Validate ``request`` (an ``AuthRequest``) received on ``connection``.

        :return: a Deferred firing with the ``IConnectionOwner`` the connection
            then belongs to, or failing with an ``AuthenticationError`` whose
            message is sent to the agent.
        """

    def connection_lost_before_auth(connection, error):  # type: ignore[no-untyped-def]
        """``connection`` ended before it authenticated."""


@attrs.frozen
class PeerCredentials:
    """The peer process of a Unix socket connection (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


_PEERCRED = struct.Struct("3i")

# The length prefix of a frame (PROTOCOL.md section 1).
_FRAME_PREFIX = struct.Struct(">I")


def peer_credentials(transport: Any) -> PeerCredentials | None:
    """``SO_PEERCRED`` of ``transport``'s socket, when it is a Unix socket."""
    sock = getattr(transport, "socket", None)
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    return PeerCredentials(*_PEERCRED.unpack(raw))


@implementer(IPushProducer)
class SpearProtocol(Protocol):
    """
    One Spear connection; see the module docstring.

    :param role: which end of the session this is.
    :param clock: the reactor's time (a ``task.Clock`` in tests).
    :param gatekeeper: (spearlet) validates the ``AuthRequest``.
    :param owner: (agent) the owner from the start; (spearlet) set by the
        gatekeeper's answer.
    :param credentials: (agent) the ``AuthRequest`` to present.
    :param observer: called with ``(connection, ConnectionEvent)``; message
        events only if ``observe_messages``.
    :param refuse: when set, the connection is answered with this error and
        closed at once (the listener is full).
    """

    log = Logger()

    def __init__(
        self,
        *,
        role: Role,
        clock: IReactorTime,
        session_config: SessionConfig | None = None,
        gatekeeper: Any = None,
        owner: Any = None,
        credentials: AuthRequest | None = None,
        observer: Callable[[SpearProtocol, ConnectionEvent], None] | None = None,
        observe_messages: bool = False,
        refuse: SpearError | None = None,
        transport_name: str = "stream",
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        if role is Role.AGENT and credentials is None:
            raise ValueError("an agent-side connection needs credentials")
        if role is Role.SPEARLET and gatekeeper is None:
            raise ValueError("a spearlet-side connection needs a gatekeeper")
        self.role = role
        self.clock = clock
        self.session_config = session_config or SessionConfig()
        self.gatekeeper = gatekeeper
        self.owner = owner
        self.credentials = credentials
        self.observer = observer
        self.observe_messages = observe_messages and observer is not None
        self.refuse = refuse
        self.transport_name = transport_name
        self.close_timeout = close_timeout

        self.connection_id = new_connection_id()
        self.instance_id: RuntimeInstanceId | None = None
        self.remote_addr: str | None = None
        self.peer_credentials: PeerCredentials | None = None
        self.connected_at: float | None = None
        self.authenticated_at: float | None = None
        self.session: Session | None = None
        self.status = ConnectionStatus.ACTIVE
        self.messages_sent = self.messages_received = 0
        self.bytes_sent = self.bytes_received = 0

        self._decoder = FrameDecoder(self.session_config.max_preauth_message_size)
        self._outgoing: deque[tuple[SpearMessage, bytes, Deferred[None]]] = deque()
        self._write_paused = False
        self._read_paused = False
        self._timer: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None
        self._auth_pending: Deferred[Any] | None = None
        self._closing_error: SpearError | None = None
        self._lost = False
        self._lost_waiters: list[Deferred[None]] = []
        self._ready_waiters: list[Deferred[SpearProtocol]] = []

    # -- facts -------------------------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        """Whether the handshake succeeded and the connection is still up."""
        return not self._lost and self.session is not None and self.session.authenticated

    @property
    def session_id(self) -> str | None:
        return None if self.session is None else self.session.session_id

    @property
    def client_type(self) -> str | None:
        request = self.session.auth_request if self.session else None
        return None if request is None else request.client_type

    @property
    def client_version(self) -> str | None:
        request = self.session.auth_request if self.session else None
        return None if request is None else request.client_version

    @property
    def last_activity(self) -> float | None:
        return None if self.session is None else max(self.session.last_received, self.session.last_sent)

    @property
    def heartbeat_sequence(self) -> int:
        return 0 if self.session is None else self.session.heartbeats_sent

    @property
    def is_lost(self) -> bool:
        return self._lost

    def _now(self) -> float:
        return self.clock.seconds()

    def _event(self, kind: ConnectionEventKind, **fields: Any) -> None:
        if self.observer is not None:
            self.observer(
                self,
                ConnectionEvent(
                    kind,
                    self.connection_id,
                    self._now(),
                    instance_id=self.instance_id,
                    remote_addr=self.remote_addr,
                    **fields,
                ),
            )

    # -- Twisted callbacks ------------------------------------------------------------------

    def connectionMade(self) -> None:
        now = self._now()
        self.connected_at = now
        self.remote_addr = _describe_address(self.transport.getPeer())
        self.peer_credentials = peer_credentials(self.transport)
        self.session = Session(self.role, self.session_config, now=now)
        self.transport.registerProducer(self, True)
        self._event(ConnectionEventKind.CONNECTED)
        if self.refuse is not None:
            self.log.info(
                "Refusing connection {connection_id} from {remote_addr}: {reason}",
                connection_id=self.connection_id,
                remote_addr=self.remote_addr,
                reason=str(self.refuse),
            )
            self._fail_connection(self.refuse)
            return
        if self.role is Role.AGENT:
            assert self.credentials is not None
            self.send_message(SpearMessage.auth_request(CONTROL_REQUEST_ID, self.credentials))
        self._schedule()

    def dataReceived(self, data: bytes) -> None:
        if self._lost:
            return
        # Until the handshake completes the size limit is the small pre-auth
        # one, and it rises when the handshake completes, which may happen in
        # the middle of this read (an AuthResponse followed by a large
        # request): feed the decoder one frame at a time meanwhile, so that
        # each frame is held to the limit in force when its prefix is read.
        decoder = self._decoder
        while data and decoder.max_message_size < self.session_config.max_message_size:
            cut = self._current_frame_end(data)
            if cut is None or cut >= len(data):
                break
            self._feed(data[:cut])
            data = data[cut:]
            if self._lost or self._closing_error is not None or decoder.error is not None:
                return
        self._feed(data)

    def _current_frame_end(self, data: bytes) -> int | None:
        """How many bytes of ``data`` complete the frame (or prefix) being read."""
        decoder = self._decoder
        if decoder.expected is not None:
            return _FRAME_PREFIX.size + decoder.expected - decoder.buffered
        if decoder.buffered:
            return _FRAME_PREFIX.size - decoder.buffered
        if len(data) < _FRAME_PREFIX.size:
            return None
        (length,) = _FRAME_PREFIX.unpack_from(data)
        return int(_FRAME_PREFIX.size + length)

    def _feed(self, data: bytes) -> None:
        decoder = self._decoder
        for body in decoder.feed(data):
            if self._lost or self._closing_error is not None:
                return
            self._frame_received(body)
        if decoder.error is not None and self._closing_error is None:
            self._fail_connection(decoder.error)

    def _frame_received(self, body: bytes) -> None:
        self.bytes_received += len(body) + 4
        self.messages_received += 1
        try:
            message = SpearMessage.deserialize(body)
        except DecodeError as e:
            self._fail_connection(e)
            return
        if self.observe_messages:
            self._event(
                ConnectionEventKind.MESSAGE_RECEIVED,
                message_type=message.message_type,
                request_id=message.request_id,
                size=len(body) + 4,
            )
        session = self.session
        assert session is not None
        now = self._now()
        if session.accept_application(message, now):
            self.owner.message_received(self, message)
            return
        for event in session.receive(message, now):
            self._handle(event)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._lost:
            return
        self._lost = True
        for timer in (self._timer, self._abort_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._abort_timer = None
        # An orderly close (ConnectionClose sent or received) is no error;
        # anything else that ends the connection is.
        orderly = self.session is not None and self.session.state is SessionState.CLOSING
        if self.session is not None:
            self.session.closed()
        truncated = self._decoder.end()
        error = self._closing_error or truncated
        if error is None and not orderly:
            error = ConnectionLost(f"connection lost: {reason.getErrorMessage()}")
        if error is not None and error.instance_id is None:
            error.instance_id = self.instance_id
        pending = list(self._outgoing)
        self._outgoing.clear()
        for message, _frame, waiter in pending:
            waiter.errback(
                ConnectionLost(
                    "connection lost before the message was sent",
                    instance_id=self.instance_id,
                    request_id=message.request_id,
                )
            )
        if self._auth_pending is not None:
            self._auth_pending.cancel()
            self._auth_pending = None
        self._event(
            ConnectionEventKind.DISCONNECTED,
            reason=None if error is None else str(error),
            error_code=None if error is None else int(error.code),
        )
        self.log.info(
            "Connection {connection_id} ({instance_id}) closed: {reason}",
            connection_id=self.connection_id,
            instance_id=str(self.instance_id) if self.instance_id else None,
            reason="orderly" if error is None else str(error),
        )
        if self.owner is not None:
            self.owner.connection_done(self, error)
        elif self.gatekeeper is not None:
            self.gatekeeper.connection_lost_before_auth(self, error)
        ready_waiters, self._ready_waiters = self._ready_waiters, []
        for ready in ready_waiters:
            ready.errback(error or ConnectionLost("connection closed before it authenticated"))
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- IPushProducer: the transport's write buffer ------------------------------------------

    def pauseProducing(self) -> None:
        self._write_paused = True

    def resumeProducing(self) -> None:
        self._write_paused = False
        outgoing = self._outgoing
        while outgoing and not self._write_paused and not self._lost:
            message, frame, waiter = outgoing.popleft()
            self._write(message, frame)
            waiter.callback(None)

    def stopProducing(self) -> None:
        self._write_paused = True

    # -- reading back-pressure ----------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading from the transport (the owner's queue is full)."""
        if not self._read_paused and not self._lost:
            self._read_paused = True
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """Read from the transport again."""
        if self._read_paused and not self._lost:
            self._read_paused = False
            self._peer_not_silent()
            self.transport.resumeProducing()

    def _peer_not_silent(self) -> None:
        # While we hold off reading (our owner's queue is full) what the peer
        # sends waits unread: its silence cannot be judged, and timing it out
        # would drop what waits.  The receive deadlines run from when we read again.
        if self.session is not None:
            now = self._now()
            self.session.last_received = max(self.session.last_received, now)
            self.session.last_activity = max(self.session.last_activity, now)

    # -- sending ------------------------------------------------------------------------------------

    def send_message(self, message: SpearMessage) -> Deferred[None]:
        """
        Send ``message``; the Deferred fires once its frame is handed to the
        transport (later, while the transport's buffer is full).
        """
        if self._lost:
            return defer.fail(
                ConnectionLost("not connected", instance_id=self.instance_id, request_id=message.request_id)
            )
        frame = message.to_frame()
        if self._write_paused or self._outgoing:
            waiter: Deferred[None] = Deferred()
            self._outgoing.append((message, frame, waiter))
            return waiter
        self._write(message, frame)
        return defer.succeed(None)

    def _write(self, message: SpearMessage, frame: bytes) -> None:
        self.transport.write(frame)
        self.messages_sent += 1
        self.bytes_sent += len(frame)
        if self.session is not None:
            self.session.sent(message, self._now())
        if self.observe_messages:
            self._event(
                ConnectionEventKind.MESSAGE_SENT,
                message_type=message.message_type,
                request_id=message.request_id,
                size=len(frame),
            )

    @property
    def queued_sends(self) -> int:
        """Messages waiting for the transport's buffer to drain."""
        return len(self._outgoing)

    # -- closing ---------------------------------------------------------------------------------------

    def close(self, reason: str | None = None) -> Deferred[None]:
        """
        Orderly close: ``ConnectionClose`` (with ``reason``), flush, disconnect.

        Fires once the connection is gone; idempotent.
        """
        if self._lost:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._lost_waiters.append(waiter)
        assert self.session is not None
        if self.session.state in (SessionState.AWAITING_AUTH, SessionState.ACTIVE):
            self.send_message(SpearMessage.connection_close(CONTROL_REQUEST_ID, reason))
            self.session.begin_close(reason)
        self._lose_connection()
        return waiter

    def when_ready(self) -> Deferred[SpearProtocol]:
        """Fires with this connection once it has authenticated; fails if it ends first."""
        if self.authenticated:
            return defer.succeed(self)
        if self._lost:
            return defer.fail(
                self._closing_error or ConnectionLost("connection closed before it authenticated")
            )
        waiter: Deferred[SpearProtocol] = Deferred()
        self._ready_waiters.append(waiter)
        return waiter

    def when_lost(self) -> Deferred[None]:
        """A Deferred that fires once the connection is gone."""
        if self._lost:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._lost_waiters.append(waiter)
        return waiter

    def fail(self, error: SpearError) -> None:
        """Tell the peer why with an ``Error`` (``error``'s code), then close."""
        self._fail_connection(error)

    def _fail_connection(self, error: SpearError) -> None:
        """Tell the peer why with an ``Error``, then close."""
        if self._closing_error is not None or self._lost:
            return
        if error.instance_id is None:
            error.instance_id = self.instance_id
        self._closing_error = error
        self.connection_error(error)
        self.send_message(SpearMessage.from_error(error, CONTROL_REQUEST_ID))
        if self.session is not None:
            self.session.begin_close(str(error))
        self._lose_connection()

    def connection_error(self, error: SpearError) -> None:
        """Record and log an error that ends or concerns this connection."""
        self.log.warn(
            "Connection {connection_id} ({instance_id}): error {error_code} {error}",
            connection_id=self.connection_id,
            instance_id=str(self.instance_id) if self.instance_id else None,
            error_code=int(error.code),
            error=str(error),
        )
        self._event(ConnectionEventKind.ERROR, reason=str(error), error_code=int(error.code))

    def _lose_connection(self) -> None:
        if self._lost or self.transport is None:
            return
        # Everything queued goes into the transport's buffer now, above its
        # high-water mark or not (a socket transport pauses us again on every
        # write while full, which would strand the rest, ConnectionClose
        # included): it is flushed before the connection closes, and the
        # producer must be unregistered or the transport would wait for it
        # forever.
        self._write_paused = False
        outgoing = self._outgoing
        while outgoing and not self._lost:
            message, frame, waiter = outgoing.popleft()
            self._write(message, frame)
            waiter.callback(None)
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self._abort_timer is None:
            self._abort_timer = self.clock.callLater(self.close_timeout, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        if not self._lost:
            self.log.warn(
                "Connection {connection_id}: close did not finish in {timeout} s; aborting",
                connection_id=self.connection_id,
                timeout=self.close_timeout,
            )
            self.transport.abortConnection()

    def abort(self) -> None:
        """Drop the connection at once, without flushing."""
        if not self._lost and self.transport is not None:
            self.transport.abortConnection()

    # -- session events ---------------------------------------------------------------------------------

    def _handle(self, event: SessionEvent) -> None:
        if isinstance(event, MessageReceived):
            if self.owner is not None:
                self.owner.message_received(self, event.message)
        elif isinstance(event, HeartbeatReceived):
            pass
        elif isinstance(event, AuthRequested):
            self._authenticate(event)
        elif isinstance(event, AuthSucceeded):
            self._ready()
        elif isinstance(event, AuthFailed):
            self._closing_error = event.error
            self._event(
                ConnectionEventKind.AUTHENTICATION_FAILED,
                reason=str(event.error),
                error_code=int(event.error.code),
            )
            self._lose_connection()
        elif isinstance(event, AuthRequestInvalid):
            self._refuse_auth(event.request_id, AuthenticationFailed(f"invalid AuthRequest: {event.error}"))
        elif isinstance(event, PeerClosing):
            self._lose_connection()
        elif isinstance(event, Violation):
            if event.close:
                self._fail_connection(event.error)
            else:
                self.connection_error(event.error)
                self.send_message(SpearMessage.from_error(event.error, CONTROL_REQUEST_ID))
        elif isinstance(event, SendHeartbeat):
            heartbeat = HeartbeatMessage(Timestamp.now(), event.sequence, self.status)
            self.send_message(SpearMessage.heartbeat(CONTROL_REQUEST_ID, heartbeat))
        elif isinstance(event, TimedOut):
            if isinstance(event.error, HeartbeatTimeout):
                self._event(ConnectionEventKind.HEARTBEAT_TIMEOUT, reason=str(event.error))
            self._fail_connection(event.error)

    def _authenticate(self, event: AuthRequested) -> None:
        request = event.request
        try:
            self.instance_id = RuntimeInstanceId.parse(request.instance_id)
        except (TypeError, ValueError) as e:
            self._refuse_auth(event.request_id, AuthenticationFailed(f"bad instance id: {e}"))
            return
        try:
            pending = defer.maybeDeferred(self.gatekeeper.authenticate, self, request)
        except Exception as e:  # a gatekeeper bug must not reach the peer as a traceback
            pending = defer.fail(e)
        self._auth_pending = pending
        pending.addCallbacks(
            lambda owner: self._accept(event.request_id, owner),
            lambda failure: self._auth_refused(event.request_id, failure),
        )

    def _auth_refused(self, request_id: int, failure: Failure) -> None:
        self._auth_pending = None
        if failure.check(defer.CancelledError) or self._lost:
            return
        error = failure.value
        if not isinstance(error, AuthenticationError):
            self.log.failure(
                "Gatekeeper failed on connection {connection_id}",
                failure,
                connection_id=self.connection_id,
            )
            error = AuthenticationFailed("authentication could not be completed")
        self._refuse_auth(request_id, error)

    def _refuse_auth(self, request_id: int, error: AuthenticationError) -> None:
        error.instance_id = self.instance_id
        self._closing_error = error
        self._event(
            ConnectionEventKind.AUTHENTICATION_FAILED, reason=str(error.message), error_code=int(error.code)
        )
        self.log.warn(
            "Authentication refused on {connection_id} for {instance_id}: {reason}",
            connection_id=self.connection_id,
            instance_id=str(self.instance_id) if self.instance_id else None,
            reason=error.message,
        )
        response = AuthResponse(False, error.message, None, SERVER_VERSION, SUPPORTED_FEATURES)
        self.send_message(SpearMessage.auth_response(request_id, response))
        assert self.session is not None
        self.session.reject()
        self._lose_connection()

    def _accept(self, request_id: int, owner: Any) -> None:
        self._auth_pending = None
        if self._lost:
            return
        assert self.session is not None
        session_id = secrets.token_urlsafe(24)
        self.session.accept(session_id, self._now())
        response = AuthResponse(True, None, session_id, SERVER_VERSION, SUPPORTED_FEATURES)
        self.send_message(SpearMessage.auth_response(request_id, response))
        self.owner = owner
        self._ready()

    def _ready(self) -> None:
        assert self.session is not None
        self.authenticated_at = self._now()
        self._decoder.max_message_size = self.session.max_message_size
        if self.instance_id is None and self.credentials is not None:
            try:
                self.instance_id = RuntimeInstanceId.parse(self.credentials.instance_id)
            except (TypeError, ValueError):
                self.instance_id = None
        self.log.info(
            "Connection {connection_id} authenticated as {instance_id} ({transport})",
            connection_id=self.connection_id,
            instance_id=str(self.instance_id) if self.instance_id else None,
            transport=self.transport_name,
        )
        self._schedule()
        if self.owner is not None:
            self.owner.connection_ready(self)
        # After the owner took the connection: observers may use the channel.
        if not self._lost:
            self._event(ConnectionEventKind.AUTHENTICATED, client_type=self.client_type)
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(self)

    # -- deadlines ---------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Keep one timer at the session's earliest deadline."""
        if self._lost or self.session is None:
            return
        deadline = self.session.next_deadline()
        timer = self._timer
        if timer is not None and timer.active():
            # Activity only moves deadlines later; firing early is harmless.
            if deadline is not None and timer.getTime() <= deadline:
                return
            timer.cancel()
        self._timer = None
        if deadline is not None:
            self._timer = self.clock.callLater(max(0.0, deadline - self._now()), self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._timer = None
        if self._lost or self.session is None:
            return
        if self._read_paused:
            self._peer_not_silent()
        for event in self.session.poll(self._now()):
            self._handle(event)
        self._schedule()

    def __repr__(self) -> str:
        return f"<SpearProtocol {self.connection_id} {self.role.value} {self.instance_id or '?'}>"


def _describe_address(address: Any) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return str(name) if name else type(address).__name__
