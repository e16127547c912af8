"""
The session of PROTOCOL.md section 4 as a state machine, sans-IO.

A :class:`Session` decides what each incoming message means in the current
state and which deadlines are running; it performs no I/O and reads no clock.
Its driver (a Twisted protocol, or the asyncio agent) feeds it:

* every decoded message with :meth:`Session.receive`, acting on the returned
  events (deliver, reply with an ``Error``, close, ...);
* every message it sends with :meth:`Session.sent`;
* the time, with :meth:`Session.poll`, at :meth:`Session.next_deadline`.

States: ``AWAITING_AUTH`` -> ``ACTIVE`` -> ``CLOSING`` -> ``CLOSED``.  The
spearlet validates an ``AuthRequest`` (the session only reports it) and then
calls :meth:`Session.accept` or :meth:`Session.reject`; the agent's session
moves on the ``AuthResponse`` by itself.
"""

from __future__ import annotations

import enum

import attrs

from spear_twisted.errors import (
    AuthenticationFailed,
    AuthenticationTimeout,
    CommunicationError,
    DecodeError,
    HeartbeatTimeout,
    IdleTimeout,
    NotAuthenticated,
    SpearError,
    UnexpectedMessage,
    UnsupportedVersion,
)
from spear_twisted.settings import positive, positive_or_off
from spear_twisted.wire.constants import (
    AUTH_TIMEOUT,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    MAX_MESSAGE_SIZE,
    MAX_PREAUTH_MESSAGE_SIZE,
    PROTOCOL_VERSION,
)
from spear_twisted.wire.messages import (
    AuthRequest,
    AuthResponse,
    CloseMessage,
    ErrorMessage,
    HeartbeatMessage,
    MessageType,
    SpearMessage,
)


class Role(enum.Enum):
    """Which end of the session this is; it does not depend on who dialled."""

    SPEARLET = "spearlet"
    AGENT = "agent"


class SessionState(enum.Enum):
    """Where a session stands."""

    AWAITING_AUTH = "awaiting_auth"
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"


@attrs.frozen
class SessionConfig:
    """
    The session's timing and size rules; a ``None`` timeout is disabled.

    ``idle_timeout`` is the spearlet's ``connection_timeout``: an
    authenticated connection with no traffic but heartbeats for that long is
    closed.
    """

    auth_timeout: float = attrs.field(default=AUTH_TIMEOUT, validator=positive)
    heartbeat_interval: float | None = attrs.field(default=HEARTBEAT_INTERVAL, validator=positive_or_off)
    heartbeat_timeout: float | None = attrs.field(default=HEARTBEAT_TIMEOUT, validator=positive_or_off)
    idle_timeout: float | None = attrs.field(default=None, validator=positive_or_off)
    max_message_size: int = attrs.field(default=MAX_MESSAGE_SIZE, validator=positive)
    max_preauth_message_size: int = attrs.field(default=MAX_PREAUTH_MESSAGE_SIZE, validator=positive)


@attrs.frozen
class Deadlines:
    """The session's running deadlines, as times on the driver's clock."""

    auth: float | None = None
    heartbeat_send: float | None = None
    heartbeat_timeout: float | None = None
    idle: float | None = None

    def earliest(self) -> float | None:
        """The soonest deadline, or ``None`` when nothing is running."""
        running = (self.auth, self.heartbeat_send, self.heartbeat_timeout, self.idle)
        times = [t for t in running if t is not None]
        return min(times) if times else None


# -- events ---------------------------------------------------------------------------


@attrs.frozen
class AuthRequested:
    """(spearlet) Validate this request, then call ``accept`` or ``reject``."""

    request_id: int
    request: AuthRequest


@attrs.frozen
class AuthRequestInvalid:
    """
    (spearlet) The first frame was an ``AuthRequest`` whose body is invalid:
    answer ``AuthResponse(success=False)`` with ``error`` and close.
    """

    request_id: int
    error: DecodeError


@attrs.frozen
class AuthSucceeded:
    """(agent) The spearlet accepted us."""

    request_id: int
    response: AuthResponse


@attrs.frozen
class AuthFailed:
    """(agent) The spearlet refused us, or failed the session before accepting it."""

    error: SpearError


@attrs.frozen
class MessageReceived:
    """An application message (request, response, signal, stream data, error)."""

    message: SpearMessage


@attrs.frozen
class HeartbeatReceived:
    """The peer's heartbeat."""

    message: SpearMessage
    heartbeat: HeartbeatMessage


@attrs.frozen
class PeerClosing:
    """The peer announced an orderly close."""

    reason: str | None


@attrs.frozen
class Violation:
    """
    The peer broke the protocol: send ``SpearMessage.from_error(error)``, and
    close the connection afterwards when ``close`` is true.
    """

    error: CommunicationError
    close: bool


@attrs.frozen
class SendHeartbeat:
    """Heartbeat interval of silence: send a heartbeat numbered ``sequence``."""

    sequence: int


@attrs.frozen
class TimedOut:
    """
    A deadline passed: send ``SpearMessage.from_error(error)`` and close.

    ``error`` is an ``AuthenticationTimeout``, ``HeartbeatTimeout`` or
    ``IdleTimeout``.
    """

    error: CommunicationError


SessionEvent = (
    AuthRequested
    | AuthRequestInvalid
    | AuthSucceeded
    | AuthFailed
    | MessageReceived
    | HeartbeatReceived
    | PeerClosing
    | Violation
    | SendHeartbeat
    | TimedOut
)

# An enum's members are slow to reach through the class (its metaclass has a
# __getattr__): the per-message paths use these aliases.
_ACTIVE = SessionState.ACTIVE
_CLOSING = SessionState.CLOSING
_HEARTBEAT = MessageType.HEARTBEAT
_AUTH_REQUEST = MessageType.AUTH_REQUEST
_CONNECTION_CLOSE = MessageType.CONNECTION_CLOSE
_AGENT = Role.AGENT

# What each role may receive once authenticated (PROTOCOL.md section 2.1).
_APPLICATION_MESSAGES = {
    Role.SPEARLET: frozenset({MessageType.EXECUTE_RESPONSE, MessageType.ERROR, MessageType.STREAM_DATA}),
    Role.AGENT: frozenset(
        {MessageType.EXECUTE_REQUEST, MessageType.SIGNAL, MessageType.ERROR, MessageType.STREAM_DATA}
    ),
}


class Session:
    """One connection's protocol state; see the module docstring."""

    # Slots: a spearlet holds one session per connection, thousands of them.
    __slots__ = (
        "_application",
        "_auth_deadline",
        "_auth_request_id",
        "auth_request",
        "close_reason",
        "config",
        "connected_at",
        "heartbeats_received",
        "heartbeats_sent",
        "last_activity",
        "last_received",
        "last_sent",
        "role",
        "session_id",
        "state",
    )

    def __init__(self, role: Role, config: SessionConfig | None = None, *, now: float) -> None:
        self.role = role
        self.config = config or SessionConfig()
        self.state = SessionState.AWAITING_AUTH
        self.connected_at = now
        self.last_received = now
        self.last_sent = now
        self.last_activity = now
        self.session_id: str | None = None
        #: The peer's ``AuthRequest`` with its token blanked: a secret is not
        #: kept for the life of the connection (the gatekeeper got it in
        #: ``AuthRequested``).
        self.auth_request: AuthRequest | None = None
        self.close_reason: str | None = None
        self.heartbeats_sent = 0
        self.heartbeats_received = 0
        self._auth_request_id: int | None = None  # outstanding AuthRequest
        self._auth_deadline: float | None = now + self.config.auth_timeout
        self._application = _APPLICATION_MESSAGES[role]

    # -- facts ------------------------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        """Whether the handshake has succeeded (and the session is not closed)."""
        state = self.state
        return (state is _ACTIVE or state is _CLOSING) and self.session_id is not None

    @property
    def max_message_size(self) -> int:
        """The frame size limit that applies now: small until authenticated."""
        if self.state is SessionState.AWAITING_AUTH:
            return self.config.max_preauth_message_size
        return self.config.max_message_size

    @property
    def deadlines(self) -> Deadlines:
        """The deadlines running in the current state."""
        config = self.config
        if self.state is SessionState.AWAITING_AUTH:
            return Deadlines(auth=self._auth_deadline)
        if self.state is not SessionState.ACTIVE:
            return Deadlines()
        return Deadlines(
            heartbeat_send=None
            if config.heartbeat_interval is None
            else self.last_sent + config.heartbeat_interval,
            heartbeat_timeout=None
            if config.heartbeat_timeout is None
            else self.last_received + config.heartbeat_timeout,
            idle=None if config.idle_timeout is None else self.last_activity + config.idle_timeout,
        )

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has something to do."""
        return self.deadlines.earliest()

    # -- transitions driven by the peer -------------------------------------------------

    def receive(self, message: SpearMessage, now: float) -> list[SessionEvent]:
        """What ``message``, just received, means now."""
        if self.state is SessionState.CLOSED:
            return []
        if self.state is SessionState.CLOSING and not self.authenticated:
            # Closing a session that never authenticated (refused, failed, or
            # a violation): nothing more the peer sends is delivered.
            return []
        self.last_received = now
        if message.version != PROTOCOL_VERSION:
            error = UnsupportedVersion(
                f"protocol version {message.version} is not supported (this side speaks {PROTOCOL_VERSION})",
                request_id=message.request_id,
            )
            return [self._violation(error, close=True)]
        kind = message.message_type
        if kind is MessageType.CONNECTION_CLOSE:
            return [self._peer_closing(message)]
        if self.state is SessionState.AWAITING_AUTH:
            if self.role is Role.SPEARLET:
                return self._receive_before_auth_spearlet(message)
            return self._receive_before_auth_agent(message)
        return self._receive_authenticated(message, now)

    def accept_application(self, message: SpearMessage, now: float) -> bool:
        """
        The fast path of :meth:`receive` for the common case: an application
        message on an active session.  True means it was recorded and is to be
        delivered (what ``receive`` would say with ``MessageReceived``); False
        means the caller must use ``receive``.
        """
        if (
            self.state is _ACTIVE
            and message.version == PROTOCOL_VERSION
            and message.message_type in self._application
        ):
            self.last_received = self.last_activity = now
            return True
        return False

    def _receive_before_auth_spearlet(self, message: SpearMessage) -> list[SessionEvent]:
        if message.message_type is not MessageType.AUTH_REQUEST or self._auth_request_id is not None:
            what = "a second AuthRequest" if self._auth_request_id is not None else message.message_type.value
            error = NotAuthenticated(
                f"{what} received before authentication completed; the first frame must be AuthRequest",
                request_id=message.request_id,
            )
            return [self._violation(error, close=True)]
        self._auth_request_id = message.request_id
        try:
            request = message.parse_payload()
        except DecodeError as error:
            self.state = SessionState.CLOSING
            return [AuthRequestInvalid(message.request_id, error)]
        assert isinstance(request, AuthRequest)
        self.auth_request = attrs.evolve(request, token="")
        return [AuthRequested(message.request_id, request)]

    def _receive_before_auth_agent(self, message: SpearMessage) -> list[SessionEvent]:
        kind = message.message_type
        if self._auth_request_id is None or kind not in (MessageType.AUTH_RESPONSE, MessageType.ERROR):
            error = UnexpectedMessage(
                f"{kind.value} received while waiting for AuthResponse",
                request_id=message.request_id,
            )
            return [self._violation(error, close=True)]
        try:
            body = message.parse_payload()
        except DecodeError as invalid:
            self.state = SessionState.CLOSING
            return [AuthFailed(invalid)]
        if isinstance(body, ErrorMessage):
            self.state = SessionState.CLOSING
            return [AuthFailed(body.to_error())]
        assert isinstance(body, AuthResponse)
        if message.request_id != self._auth_request_id:
            error = UnexpectedMessage(
                f"AuthResponse for request {message.request_id}, expected {self._auth_request_id}",
                request_id=message.request_id,
            )
            return [self._violation(error, close=True)]
        if not body.success:
            self.state = SessionState.CLOSING
            reason = body.error_message or "authentication failed"
            return [AuthFailed(AuthenticationFailed(reason, request_id=message.request_id))]
        self.state = SessionState.ACTIVE
        self.session_id = body.session_id or ""
        self._auth_deadline = None
        return [AuthSucceeded(message.request_id, body)]

    def _receive_authenticated(self, message: SpearMessage, now: float) -> list[SessionEvent]:
        kind = message.message_type
        if kind is MessageType.HEARTBEAT:
            try:
                heartbeat = message.parse_payload()
            except DecodeError as error:
                return [self._violation(error, close=False)]
            assert isinstance(heartbeat, HeartbeatMessage)
            self.heartbeats_received += 1
            return [HeartbeatReceived(message, heartbeat)]
        if kind in _APPLICATION_MESSAGES[self.role]:
            self.last_activity = now
            return [MessageReceived(message)]
        if kind is MessageType.AUTH_REQUEST:
            reason = "AuthRequest received on an already authenticated session"
        else:
            reason = f"{kind.value} is not sent to the {self.role.value}"
        return [self._violation(UnexpectedMessage(reason, request_id=message.request_id), close=False)]

    def _peer_closing(self, message: SpearMessage) -> PeerClosing:
        try:
            body = message.parse_payload()
        except DecodeError:
            body = CloseMessage(None)  # the intent to close is clear either way
        assert isinstance(body, CloseMessage)
        self.state = SessionState.CLOSING
        self.close_reason = body.reason
        return PeerClosing(body.reason)

    def _violation(self, error: CommunicationError, *, close: bool) -> Violation:
        if close:
            self.state = SessionState.CLOSING
        return Violation(error, close)

    # -- transitions driven by this side ------------------------------------------------------

    def sent(self, message: SpearMessage, now: float) -> None:
        """Record that ``message`` was sent (it resets the heartbeat interval)."""
        self.last_sent = now
        kind = message.message_type
        if kind is _HEARTBEAT:
            return
        if kind is _AUTH_REQUEST and self.role is _AGENT:
            self._auth_request_id = message.request_id
        elif kind is _CONNECTION_CLOSE and self.state is not SessionState.CLOSED:
            self.state = SessionState.CLOSING
        else:
            self.last_activity = now

    def accept(self, session_id: str, now: float) -> None:
        """(spearlet) The pending ``AuthRequest`` is valid: the session is active."""
        if self.role is not Role.SPEARLET or self.state is not SessionState.AWAITING_AUTH:
            raise RuntimeError(f"cannot accept authentication in state {self.state.value}")
        if self._auth_request_id is None:
            raise RuntimeError("no AuthRequest is pending")
        self.state = SessionState.ACTIVE
        self.session_id = session_id
        self._auth_deadline = None
        self.last_activity = self.last_received = now

    def reject(self) -> None:
        """(spearlet) The pending ``AuthRequest`` was refused: the session is closing."""
        if self.state is SessionState.AWAITING_AUTH:
            self.state = SessionState.CLOSING

    def begin_close(self, reason: str | None = None) -> None:
        """This side is closing the session."""
        if self.state is not SessionState.CLOSED:
            self.state = SessionState.CLOSING
            if self.close_reason is None:
                self.close_reason = reason

    def closed(self) -> None:
        """The transport is gone."""
        self.state = SessionState.CLOSED

    def poll(self, now: float) -> list[SessionEvent]:
        """The deadlines that have passed by ``now``, as events."""
        deadlines = self.deadlines
        if deadlines.auth is not None and now >= deadlines.auth:
            self.state = SessionState.CLOSING
            what = "AuthRequest" if self.role is Role.SPEARLET else "AuthResponse"
            return [TimedOut(AuthenticationTimeout(f"no {what} within {self.config.auth_timeout:g} s"))]
        if deadlines.heartbeat_timeout is not None and now >= deadlines.heartbeat_timeout:
            self.state = SessionState.CLOSING
            return [TimedOut(HeartbeatTimeout(f"nothing received for {self.config.heartbeat_timeout:g} s"))]
        if deadlines.idle is not None and now >= deadlines.idle:
            self.state = SessionState.CLOSING
            return [TimedOut(IdleTimeout(f"no traffic for {self.config.idle_timeout:g} s"))]
        if deadlines.heartbeat_send is not None and now >= deadlines.heartbeat_send:
            self.heartbeats_sent += 1
            # Counted as sent now, so the next one is due an interval later
            # even if the driver's send is still buffered.
            self.last_sent = now
            return [SendHeartbeat(self.heartbeats_sent)]
        return []
