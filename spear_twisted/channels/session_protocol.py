"""
:class:`SpearSessionProtocol`: one Spear session over whole messages.

It is the Twisted driver of the sans-IO :class:`~spear_twisted.wire.Session`,
for any transport that delivers whole messages.  It owns everything a
connection does above its framing: the authentication handshake, heartbeats
and deadlines (one timer per connection), the back-pressure-aware send queue,
connection events, and closing.  Its collaborators:

* a *gatekeeper* (spearlet role) decides whether an ``AuthRequest`` is good
  and which owner the connection then belongs to;
* an *owner* (usually a channel) gets the authenticated connection, its
  application messages, and its end;
* an optional *observer* gets :class:`~spear_twisted.channels.events.ConnectionEvent`\\ s.

Who dialled does not matter: the role decides who validates and who presents
a token.

A transport author subclasses it and supplies the framing: call
:meth:`~SpearSessionProtocol.message_received` with each whole message
received (or :meth:`~SpearSessionProtocol.protocol_error` when one cannot be
decoded), implement :meth:`~SpearSessionProtocol.write_message`, and let
:meth:`~SpearSessionProtocol.incoming_limit_changed` and
:meth:`~SpearSessionProtocol.stream_ended` know about limits and truncated
input.  :class:`~spear_twisted.channels.protocol.SpearProtocol` (length-prefixed
frames over a byte stream) is such a subclass; docs/transports.rst describes
the contract.
"""

from __future__ import annotations

import itertools
import secrets
import socket
import struct
import typing
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from spear_twisted._version import __version__
from spear_twisted.channels._twisted import failure_is
from spear_twisted.channels.events import ConnectionEvent, ConnectionEventKind
from spear_twisted.errors import (
    AuthenticationError,
    AuthenticationFailed,
    ConnectionLost,
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


def peer_credentials(transport: object) -> PeerCredentials | None:
    """``SO_PEERCRED`` of ``transport``'s socket, when it is a Unix socket."""
    sock = getattr(transport, "socket", None)
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    return PeerCredentials(*_PEERCRED.unpack(raw))


class SessionTransport(typing.Protocol):
    """
    What :class:`SpearSessionProtocol` needs of its transport.

    Twisted types ``Protocol.transport`` as a bare ``ITransport``; the
    session also uses the transport as a consumer (it registers itself as a
    streaming producer: back-pressure on sends), as a push producer (it
    pauses reading when its owner's queue is full) and aborts it.  Twisted's
    socket transports, the memory transport and a gRPC stream provide all of
    it.
    """

    def getPeer(self) -> object: ...

    def getHost(self) -> object: ...

    def registerProducer(self, producer: object, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...


# A message waiting for the transport's buffer to drain, and who waits for it.
_Queued = tuple[SpearMessage, "Deferred[None] | None"]


@implementer(IPushProducer)
class SpearSessionProtocol(Protocol):
    """
    One Spear connection over whole messages; see the module docstring.

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

    # Slots: a spearlet holds thousands of idle connections.
    __slots__ = (
        "_auth_pending",
        "_closing_error",
        "_closing_started",
        "_lost",
        "_lost_waiters",
        "_outgoing",
        "_read_paused",
        "_ready_waiters",
        "_timer",
        "_write_paused",
        "authenticated_at",
        "bytes_received",
        "bytes_sent",
        "clock",
        "close_timeout",
        "connected_at",
        "connection_id",
        "credentials",
        "gatekeeper",
        "instance_id",
        "messages_received",
        "messages_sent",
        "observe_messages",
        "observer",
        "owner",
        "peer_credentials",
        "refuse",
        "remote_addr",
        "role",
        "session",
        "session_config",
        "status",
        "transport_name",
    )

    def __init__(
        self,
        *,
        role: Role,
        clock: IReactorTime,
        session_config: SessionConfig | None = None,
        gatekeeper: Any = None,
        owner: Any = None,
        credentials: AuthRequest | None = None,
        observer: Callable[[SpearSessionProtocol, ConnectionEvent], None] | None = None,
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

        # Containers are made when first needed: an idle connection holds none.
        self._outgoing: deque[_Queued] | None = None
        self._write_paused = False
        self._read_paused = False
        # The one timer of the connection: the session's next deadline, or
        # (once closing) the abort of a close that does not finish.
        self._timer: IDelayedCall | None = None
        self._closing_started = False
        self._auth_pending: Deferred[Any] | None = None
        self._closing_error: SpearError | None = None
        self._lost = False
        self._lost_waiters: list[Deferred[None]] | None = None
        self._ready_waiters: list[Deferred[SpearSessionProtocol]] | None = None

    # -- facts -------------------------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        """Whether the handshake succeeded and the connection is still up."""
        session = self.session
        return not self._lost and session is not None and session.authenticated

    @property
    def session_id(self) -> str | None:
        """The session id the spearlet issued (``None`` before the handshake)."""
        return None if self.session is None else self.session.session_id

    @property
    def client_type(self) -> str | None:
        """The agent's ``client_type`` from its ``AuthRequest``."""
        request = self.session.auth_request if self.session else None
        return None if request is None else request.client_type

    @property
    def client_version(self) -> str | None:
        """The agent's ``client_version`` from its ``AuthRequest``."""
        request = self.session.auth_request if self.session else None
        return None if request is None else request.client_version

    @property
    def last_activity(self) -> float | None:
        """When a message was last received or sent, on the clock."""
        return None if self.session is None else max(self.session.last_received, self.session.last_sent)

    @property
    def heartbeat_sequence(self) -> int:
        """How many heartbeats this side has sent."""
        return 0 if self.session is None else self.session.heartbeats_sent

    @property
    def is_lost(self) -> bool:
        """Whether the connection is gone."""
        return self._lost

    @property
    def max_message_size(self) -> int:
        """The largest incoming message accepted now: small until authenticated."""
        if self.session is None:
            return self.session_config.max_preauth_message_size
        return self.session.max_message_size

    @property
    def queued_sends(self) -> int:
        """Messages waiting for the transport's buffer to drain."""
        return 0 if self._outgoing is None else len(self._outgoing)

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

    def _message_event(self, kind: ConnectionEventKind, message: SpearMessage, size: int) -> None:
        self._event(kind, message_type=message.message_type, request_id=message.request_id, size=size)

    def _transport(self) -> SessionTransport:
        transport = self.transport
        if transport is None:
            raise RuntimeError(f"{self!r} has no transport")
        # Twisted declares ``transport`` as ITransport; ours are also
        # consumers and push producers (see SessionTransport).
        return cast(SessionTransport, transport)

    # -- what a transport calls ---------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self._transport()
        now = self._now()
        self.connected_at = now
        self.peer_credentials = peer_credentials(transport)
        self.remote_addr = describe_peer(transport, self.peer_credentials)
        self.session = Session(self.role, self.session_config, now=now)
        transport.registerProducer(self, True)
        self._event(ConnectionEventKind.CONNECTED)
        if self.refuse is not None:
            self.log.info(
                "Refusing connection {connection_id} from {remote_addr}: {reason}",
                connection_id=self.connection_id,
                remote_addr=self.remote_addr,
                reason=str(self.refuse),
            )
            self.fail(self.refuse)
            return
        if self.role is Role.AGENT:
            assert self.credentials is not None
            self.send_message(SpearMessage.auth_request(CONTROL_REQUEST_ID, self.credentials))
        self._schedule()

    def message_received(self, message: SpearMessage, size: int) -> None:
        """
        The transport received ``message``, ``size`` bytes on the wire.

        The transport must not call this once the connection is closing
        (:attr:`accepts_messages` is false), and must have held the message
        to :attr:`max_message_size` before decoding it.
        """
        self.bytes_received += size
        self.messages_received += 1
        if self.observe_messages:
            self._message_event(ConnectionEventKind.MESSAGE_RECEIVED, message, size)
        session = self.session
        assert session is not None
        now = self.clock.seconds()
        if session.accept_application(message, now):
            self.owner.message_received(self, message)
            return
        for event in session.receive(message, now):
            self._handle(event)

    @property
    def accepts_messages(self) -> bool:
        """Whether the transport should still deliver what it receives."""
        return not self._lost and self._closing_error is None

    def protocol_error(self, error: SpearError) -> None:
        """
        The transport could not frame or decode what it received: tell the
        peer why with an ``Error`` (``error``'s code), then close.
        """
        self.fail(error)

    def write_message(self, message: SpearMessage) -> int:
        """
        Hand ``message`` to the transport now; return its size on the wire.

        Transports implement this; it is called in send order, only while the
        transport's buffer is below its high-water mark (or while closing).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement write_message")

    def incoming_limit_changed(self, limit: int) -> None:
        """
        The largest incoming message accepted is now ``limit`` bytes (it rises
        once the handshake succeeds).  Transports that frame bytes apply it to
        the next message whose size they read.
        """

    def stream_ended(self) -> SpearError | None:
        """
        The transport's input ended (``connectionLost``): the error for a
        message cut short, or ``None``.  Byte-stream transports override it.
        """
        return None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._lost:
            return
        self._lost = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        # An orderly close (ConnectionClose sent or received) is no error;
        # anything else that ends the connection is.
        orderly = self.session is not None and self.session.state is SessionState.CLOSING
        if self.session is not None:
            self.session.closed()
        truncated = self.stream_ended()
        error = self._closing_error or truncated
        if error is None and not orderly:
            error = ConnectionLost(f"connection lost: {reason.getErrorMessage()}")
        if error is not None and error.instance_id is None:
            error.instance_id = self.instance_id
        pending, self._outgoing = self._outgoing, None
        for message, waiter in pending or ():
            if waiter is not None:
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
        ready_waiters, self._ready_waiters = self._ready_waiters, None
        for ready in ready_waiters or ():
            ready.errback(error or ConnectionLost("connection closed before it authenticated"))
        waiters, self._lost_waiters = self._lost_waiters, None
        for waiter in waiters or ():
            waiter.callback(None)

    # -- IPushProducer: the transport's write buffer ------------------------------------------

    def pauseProducing(self) -> None:
        self._write_paused = True

    def resumeProducing(self) -> None:
        self._write_paused = False
        outgoing = self._outgoing
        while outgoing and not self._write_paused and not self._lost:
            message, waiter = outgoing.popleft()
            self._write(message)
            if waiter is not None:
                waiter.callback(None)

    def stopProducing(self) -> None:
        self._write_paused = True

    # -- reading back-pressure ----------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading from the transport (the owner's queue is full)."""
        if not self._read_paused and not self._lost:
            self._read_paused = True
            self._transport().pauseProducing()

    def resume_reading(self) -> None:
        """Read from the transport again."""
        if self._read_paused and not self._lost:
            self._read_paused = False
            self._peer_not_silent()
            self._transport().resumeProducing()

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
        Send ``message``; the Deferred fires once it is handed to the
        transport (later, while the transport's buffer is full).
        """
        if self._lost:
            return defer.fail(
                ConnectionLost("not connected", instance_id=self.instance_id, request_id=message.request_id)
            )
        if self._write_paused or self._outgoing:
            waiter: Deferred[None] = Deferred()
            self._queue(message, waiter)
            return waiter
        self._write(message)
        return defer.succeed(None)

    def send_or_queue(self, message: SpearMessage) -> Deferred[None] | None:
        """
        Like :meth:`send_message`, without a Deferred in the common case:
        ``None`` when ``message`` was handed to the transport at once, else
        a Deferred that fires once it is (or fails with ``ConnectionLost``).
        """
        if self._write_paused or self._outgoing or self._lost:
            return self.send_message(message)
        self._write(message)
        return None

    def _queue(self, message: SpearMessage, waiter: Deferred[None] | None) -> None:
        if self._outgoing is None:
            self._outgoing = deque()
        self._outgoing.append((message, waiter))

    def _write(self, message: SpearMessage) -> None:
        size = self.write_message(message)
        self.messages_sent += 1
        self.bytes_sent += size
        session = self.session
        if session is not None:
            session.sent(message, self.clock.seconds())
        if self.observe_messages:
            self._message_event(ConnectionEventKind.MESSAGE_SENT, message, size)

    # -- closing ---------------------------------------------------------------------------------------

    def close(self, reason: str | None = None) -> Deferred[None]:
        """
        Orderly close: ``ConnectionClose`` (with ``reason``), flush, disconnect.

        Fires once the connection is gone; idempotent.
        """
        if self._lost:
            return defer.succeed(None)
        waiter = self.when_lost()
        assert self.session is not None
        if self.session.state in (SessionState.AWAITING_AUTH, SessionState.ACTIVE):
            self.send_message(SpearMessage.connection_close(CONTROL_REQUEST_ID, reason))
            self.session.begin_close(reason)
        self._lose_connection()
        return waiter

    def when_ready(self) -> Deferred[SpearSessionProtocol]:
        """Fires with this connection once it has authenticated; fails if it ends first."""
        if self.authenticated:
            return defer.succeed(self)
        if self._lost:
            return defer.fail(
                self._closing_error or ConnectionLost("connection closed before it authenticated")
            )
        waiter: Deferred[SpearSessionProtocol] = Deferred()
        if self._ready_waiters is None:
            self._ready_waiters = []
        self._ready_waiters.append(waiter)
        return waiter

    def when_lost(self) -> Deferred[None]:
        """A Deferred that fires once the connection is gone."""
        if self._lost:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        if self._lost_waiters is None:
            self._lost_waiters = []
        self._lost_waiters.append(waiter)
        return waiter

    def fail(self, error: SpearError) -> None:
        """Tell the peer why with an ``Error`` (``error``'s code), then close."""
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
        transport = self._transport()
        # Everything queued goes into the transport's buffer now, above its
        # high-water mark or not (a socket transport pauses us again on every
        # write while full, which would strand the rest, ConnectionClose
        # included): it is flushed before the connection closes, and the
        # producer must be unregistered or the transport would wait for it
        # forever.
        self._write_paused = False
        outgoing = self._outgoing
        while outgoing and not self._lost:
            message, waiter = outgoing.popleft()
            self._write(message)
            if waiter is not None:
                waiter.callback(None)
        transport.unregisterProducer()
        transport.loseConnection()
        if not self._closing_started:
            # From here on the connection's one timer bounds the close.
            self._closing_started = True
            timer, self._timer = self._timer, None
            if timer is not None and timer.active():
                timer.cancel()
            if not self._lost:
                self._timer = self.clock.callLater(self.close_timeout, self._abort)

    def _abort(self) -> None:
        self._timer = None
        if not self._lost:
            self.log.warn(
                "Connection {connection_id}: close did not finish in {timeout} s; aborting",
                connection_id=self.connection_id,
                timeout=self.close_timeout,
            )
            self._transport().abortConnection()

    def abort(self) -> None:
        """Drop the connection at once, without flushing."""
        if not self._lost and self.transport is not None:
            self._transport().abortConnection()

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
                self.fail(event.error)
            else:
                self.connection_error(event.error)
                self.send_message(SpearMessage.from_error(event.error, CONTROL_REQUEST_ID))
        elif isinstance(event, SendHeartbeat):
            heartbeat = HeartbeatMessage(Timestamp.now(), event.sequence, self.status)
            self.send_message(SpearMessage.heartbeat(CONTROL_REQUEST_ID, heartbeat))
        elif isinstance(event, TimedOut):
            if isinstance(event.error, HeartbeatTimeout):
                self._event(ConnectionEventKind.HEARTBEAT_TIMEOUT, reason=str(event.error))
            self.fail(event.error)

    def _authenticate(self, event: AuthRequested) -> None:
        request = event.request
        try:
            self.instance_id = RuntimeInstanceId.parse(request.instance_id)
        except (TypeError, ValueError) as e:
            self._refuse_auth(event.request_id, AuthenticationFailed(f"bad instance id: {e}"))
            return
        # A gatekeeper that raises gives a failed Deferred: refused, never a traceback to the peer.
        pending = defer.maybeDeferred(self.gatekeeper.authenticate, self, request)
        self._auth_pending = pending
        pending.addCallbacks(
            lambda owner: self._accept(event.request_id, owner),
            lambda failure: self._auth_refused(event.request_id, failure),
        )

    def _auth_refused(self, request_id: int, failure: Failure) -> None:
        self._auth_pending = None
        if failure_is(failure, defer.CancelledError) or self._lost:
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
        self.incoming_limit_changed(self.session.max_message_size)
        if self.instance_id is None and self.credentials is not None:
            try:
                self.instance_id = RuntimeInstanceId.parse(self.credentials.instance_id)
            except (TypeError, ValueError):
                pass  # an id the credentials do not spell right stays unknown
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
        waiters, self._ready_waiters = self._ready_waiters, None
        for waiter in waiters or ():
            waiter.callback(self)

    # -- deadlines ---------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Keep the connection's timer at the session's earliest deadline."""
        if self._lost or self.session is None or self._closing_started:
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
        return f"<{type(self).__name__} {self.connection_id} {self.role.value} {self.instance_id or '?'}>"


def describe_peer(transport: SessionTransport, credentials: PeerCredentials | None = None) -> str:
    """
    Who is at the other end of ``transport``, for logs and status:
    ``host:port`` over TCP; over a Unix socket, the socket's path (an
    accepted peer has no address of its own: the path it connected to) and
    the peer process's ``credentials``, ``SO_PEERCRED``
    (``unix:/run/spear/agents.sock pid=4242 uid=1000``).
    """
    peer = transport.getPeer()
    if isinstance(peer, UNIXAddress):
        path = _unix_path(peer) or _unix_path(transport.getHost())
        where = f"unix:{path}" if path else "unix"
        if credentials is not None:
            where += f" pid={credentials.pid} uid={credentials.uid}"
        return where
    host = getattr(peer, "host", None)
    port = getattr(peer, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    name = getattr(peer, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return str(name) if name else type(peer).__name__


def _unix_path(address: object) -> str | None:
    """The path of a Unix socket address; ``None`` for an unnamed socket (or another address)."""
    if not isinstance(address, UNIXAddress):
        return None
    name: bytes | str | None = address.name
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace") or None
    return name or None
