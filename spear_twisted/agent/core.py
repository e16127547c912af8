"""
The agent, whatever its event loop: :class:`Agent` and :class:`AgentConnection`.

An :class:`AgentConnection` is the agent's end of one connection.  It drives
the sans-IO wire layer directly: a ``FrameDecoder`` for the bytes of a
socket, a ``Session`` with ``Role.AGENT`` for what each message means and
when to send heartbeats; a framework adapter (``spear_twisted.agent.tx`` for
Twisted, ``spear_twisted.agent.aio`` for asyncio) feeds it bytes, or whole
messages for a transport that carries them whole (the gRPC bridge), and
gives it a transport that sends messages.  The :class:`Agent` outlives connections: it hands each
``ExecuteRequest`` to the author's handler, turns the outcome into an
``ExecuteResponse``, passes signals on, reconnects with backoff, and
decides when and how the agent ends.

Futures are txaio's, so this module works unchanged under either framework;
txaio's framework must be chosen before it is imported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import txaio as _txaio

from spear_twisted.agent.config import (
    EXIT_AUTH_REFUSED,
    EXIT_OK,
    EXIT_PROTOCOL,
    EXIT_UNREACHABLE,
    AgentConfig,
)
from spear_twisted.agent.handler import TaskFailed
from spear_twisted.errors import AuthenticationError, DecodeError, ErrorCode, ShuttingDown, SpearError
from spear_twisted.wire import (
    CANCEL_SIGNAL,
    AuthRequest,
    AuthSucceeded,
    ConnectionStatus,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionStatus,
    FrameDecoder,
    HeartbeatMessage,
    MessageReceived,
    MessageType,
    PeerClosing,
    Role,
    SendHeartbeat,
    Session,
    SessionConfig,
    SessionEvent,
    SessionState,
    SignalMessage,
    SignalType,
    SpearMessage,
    TimedOut,
    Timestamp,
    Violation,
)
from spear_twisted.wire.codec import decode_message
from spear_twisted.wire.session import AuthFailed

# txaio's functions are bound when its framework is chosen: untyped.
txaio: Any = _txaio

#: A handler: an ``ExecuteRequest`` in; a str, bytes, ``None`` or an
#: ``ExecuteResponse`` out, directly, through a Deferred/future, or as a coroutine.
Handler = Callable[[ExecuteRequest], Any]

#: A signal hook: called with each ``SignalMessage`` other than Terminate and cancel.
SignalHook = Callable[[SignalMessage], Any]

#: The custom signal by which the spearlet abandons a request: its envelope
#: carries the request's ``request_id`` (``data`` has it in ASCII digits too).
CANCEL = SignalType.custom(CANCEL_SIGNAL)

_I32 = (-(2**31), 2**31 - 1)

# An enum's members are slow to reach through the class (its metaclass has a
# __getattr__): the per-message paths use these aliases.
_ACTIVE = SessionState.ACTIVE
_CLOSED = SessionState.CLOSED
_EXECUTE_REQUEST = MessageType.EXECUTE_REQUEST
_SIGNAL = MessageType.SIGNAL
_ERROR = MessageType.ERROR
_monotonic = time.monotonic

# The results a handler gives at once (not a Deferred, future or coroutine):
# answered in the same call, with no future, callbacks or timeout timer.
_IMMEDIATE = frozenset({str, bytes, type(None), ExecuteResponse})

# Refusals before authentication that may pass on a later attempt.
_RETRYABLE = frozenset(
    {
        ErrorCode.ALREADY_CONNECTED,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.TOO_MANY_PENDING_AUTH,
        ErrorCode.AUTHENTICATION_TIMEOUT,
        ErrorCode.SERVER_BUSY,
        ErrorCode.SHUTTING_DOWN,
    }
)


class Clock(Protocol):
    """The agent's time: the adapter's event loop."""

    def seconds(self) -> float: ...

    def call_later(self, delay: float, function: Callable[..., Any], *args: Any) -> Any:
        """Call ``function(*args)`` in ``delay`` seconds; returns a handle with ``cancel()``."""


class Transport(Protocol):
    """What an :class:`AgentConnection` needs of its framework's transport."""

    def send_message(self, message: SpearMessage) -> None:
        """Send ``message`` (as a frame on a socket, as an envelope on a gRPC stream)."""

    def close(self) -> None:
        """Flush, then close."""


def response_for(request: ExecuteRequest, result: Any, duration_ms: int) -> ExecuteResponse:
    """
    The ``ExecuteResponse`` for a handler's ``result``: a str (or UTF-8
    bytes) is the output, ``None`` no output, both Completed with exit code
    0; an ``ExecuteResponse`` is sent as it is (its duration filled in when
    missing).

    :raises TypeError: for any other result.
    """
    if isinstance(result, ExecuteResponse):
        if result.duration_ms is None:
            return ExecuteResponse(
                result.task_id,
                result.status,
                result.output,
                result.error,
                result.exit_code,
                duration_ms,
                result.resource_usage,
            )
        return result
    if isinstance(result, (bytes, bytearray, memoryview)):
        result = bytes(result).decode("utf-8", "replace")
    if result is not None and not isinstance(result, str):
        raise TypeError(
            f"the handler returned {type(result).__name__}; expected str, bytes, None or an ExecuteResponse"
        )
    return ExecuteResponse(request.task_id, ExecutionStatus.COMPLETED, result, None, 0, duration_ms)


def failure_response(request: ExecuteRequest, error: BaseException, duration_ms: int) -> ExecuteResponse:
    """The ``ExecuteResponse`` for a handler that raised ``error``."""
    if isinstance(error, TaskFailed):
        low, high = _I32
        code = error.exit_code if isinstance(error.exit_code, int) and low <= error.exit_code <= high else 1
        return ExecuteResponse(
            request.task_id, ExecutionStatus.FAILED, error.output, error.message, code, duration_ms
        )
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return ExecuteResponse(request.task_id, ExecutionStatus.FAILED, None, text, 1, duration_ms)


class AgentConnection:
    """
    The agent's end of one connection; see the module docstring.

    ``preauthenticated`` is the ``AuthRequest`` frame already sent on this
    connection (by :mod:`spear_twisted.agent.bootstrap`); without it the
    connection sends one when it is made.
    """

    def __init__(self, agent: Agent, *, preauthenticated: bytes | None = None) -> None:
        self.agent = agent
        self.preauthenticated = preauthenticated
        self.session: Session | None = None
        self.transport: Transport | None = None
        self.closed = False
        #: Why the handshake failed, if it did.
        self.auth_error: SpearError | None = None
        #: Whether the handshake succeeded (the connection may be gone since).
        self.was_authenticated = False
        self._decoder = FrameDecoder(agent.config.max_message_size)
        self._timer: Any = None
        # When ``_timer`` fires, on the clock's time.
        self._timer_at = 0.0

    @property
    def authenticated(self) -> bool:
        """Whether the spearlet accepted this connection and it is still up."""
        return not self.closed and self.session is not None and self.session.authenticated

    # -- driven by the adapter -----------------------------------------------------------

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        clock = self.agent.clock
        now = clock.seconds()
        self.session = Session(Role.AGENT, self.agent.session_config, now=now)
        if self.preauthenticated is not None:
            # The bootstrap sent it: let the session know, checking it on the way.
            self.session.sent(SpearMessage.deserialize(self.preauthenticated[4:]), now)
        else:
            self.send(SpearMessage.auth_request(0, self.agent.credentials))
        self._schedule()

    def data_received(self, data: bytes) -> None:
        """Bytes of a socket arrived: frames of PROTOCOL.md section 1."""
        if self.closed:
            return
        session = self.session
        assert session is not None
        moved = False
        for body in self._decoder.feed(data):
            if self.closed or session.state is _CLOSED:
                return
            try:
                message = decode_message(body)
            except DecodeError as e:
                self._fail(e)
                return
            moved = self._message(session, message) or moved
        if self._decoder.error is not None:
            self._fail(self._decoder.error)
        if moved or self.closed or session.state is not _ACTIVE:
            self._schedule()

    def message_received(self, message: SpearMessage) -> None:
        """A whole message arrived (a transport that carries messages, not bytes)."""
        session = self.session
        if self.closed or session is None or session.state is _CLOSED:
            return
        if self._message(session, message) or self.closed or session.state is not _ACTIVE:
            self._schedule()

    def protocol_error(self, error: SpearError) -> None:
        """The transport could not read what arrived: tell the spearlet with an ``Error``, then close."""
        if not self.closed:
            self._fail(error)

    def _message(self, session: Session, message: SpearMessage) -> bool:
        """Handle ``message``; whether the session's deadlines may have moved earlier."""
        now = self.agent.clock.seconds()
        if session.accept_application(message, now):
            # An application message on an active session only moves the
            # deadlines later: the timer, if early, re-arms when it fires.
            self.agent.message_received(self, message)
            return False
        for event in session.receive(message, now):
            self._handle(event)
        return True

    def connection_lost(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        orderly = self.session is not None and self.session.state is SessionState.CLOSING
        if self.session is not None:
            self.session.closed()
        self.agent.connection_lost(self, None if orderly else reason)

    # -- sending and closing ----------------------------------------------------------------

    def send(self, message: SpearMessage) -> bool:
        """Send ``message``; False if the connection is gone."""
        if self.closed or self.transport is None:
            return False
        self.transport.send_message(message)
        assert self.session is not None
        self.session.sent(message, self.agent.clock.seconds())
        return True

    def close(self, reason: str | None = None) -> None:
        """Orderly close: ``ConnectionClose``, then flush and disconnect."""
        if self.closed or self.transport is None:
            return
        assert self.session is not None
        if self.session.state in (SessionState.AWAITING_AUTH, SessionState.ACTIVE):
            self.send(SpearMessage.connection_close(0, reason))
            self.session.begin_close(reason)
        self.transport.close()

    def _fail(self, error: SpearError) -> None:
        """Tell the spearlet why with an ``Error``, then close."""
        self.agent.log.warn("Protocol error from the spearlet: {error}", error=str(error))
        if not self.was_authenticated and self.auth_error is None:
            self.auth_error = error
        self.send(SpearMessage.from_error(error))
        if self.session is not None:
            self.session.begin_close(str(error))
        if self.transport is not None:
            self.transport.close()

    # -- the session's verdicts -----------------------------------------------------------------

    def _handle(self, event: SessionEvent) -> None:
        if isinstance(event, MessageReceived):
            self.agent.message_received(self, event.message)
        elif isinstance(event, AuthSucceeded):
            self.was_authenticated = True
            self.agent.authenticated(self, event.response.session_id)
        elif isinstance(event, AuthFailed):
            self.auth_error = event.error
            if self.transport is not None:
                self.transport.close()
        elif isinstance(event, PeerClosing):
            if self.transport is not None:
                self.transport.close()
        elif isinstance(event, SendHeartbeat):
            status = ConnectionStatus.BUSY if self.agent.busy else ConnectionStatus.ACTIVE
            self.send(SpearMessage.heartbeat(0, HeartbeatMessage(Timestamp.now(), event.sequence, status)))
        elif isinstance(event, Violation):
            if event.close:
                self._fail(event.error)
            else:
                self.agent.log.warn("Protocol error from the spearlet: {error}", error=str(event.error))
                self.send(SpearMessage.from_error(event.error))
        elif isinstance(event, TimedOut):
            self.agent.log.warn("{error}; closing the connection", error=str(event.error))
            self.send(SpearMessage.from_error(event.error))
            if self.transport is not None:
                self.transport.close()
        # HeartbeatReceived: the session has noted it; nothing else to do.

    def _schedule(self) -> None:
        """
        Keep one timer at or before the session's next deadline.  Traffic only
        moves deadlines later, so a timer that is due no later than the
        deadline is kept: firing early is harmless (``_deadline`` polls and
        re-arms), and re-arming on every message is not free.
        """
        timer = self._timer
        if self.closed or self.session is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        deadline = self.session.next_deadline()
        if timer is not None:
            if deadline is not None and self._timer_at <= deadline:
                return
            timer.cancel()
            self._timer = None
        if deadline is not None:
            clock = self.agent.clock
            now = clock.seconds()
            self._timer_at = max(now, deadline)
            self._timer = clock.call_later(max(0.0, deadline - now), self._deadline)

    def _deadline(self) -> None:
        self._timer = None
        if self.closed or self.session is None:
            return
        for event in self.session.poll(self.agent.clock.seconds()):
            self._handle(event)
        self._schedule()


class Agent:
    """
    One agent: its handler, its connection to the spearlet, its end.

    :param connect: the adapter's dialler: called with a fresh
        :class:`AgentConnection`, returns a future that fires once the
        transport is connected (the connection then authenticates itself),
        or fails.
    :param clock: the adapter's event loop time.
    """

    def __init__(
        self,
        handler: Handler,
        config: AgentConfig,
        *,
        connect: Callable[[AgentConnection], Any],
        clock: Clock,
        on_signal: SignalHook | None = None,
    ) -> None:
        self.handler = handler
        self.config = config
        self.on_signal = on_signal
        self.clock = clock
        self._connect = connect
        self.log = txaio.make_logger()
        self.credentials = AuthRequest(
            config.instance_id, config.secret, config.client_version, config.client_type, config.extra_params
        )
        self.session_config = SessionConfig(
            auth_timeout=config.connect_timeout,
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
            max_message_size=config.max_message_size,
            max_preauth_message_size=config.max_message_size,
        )
        self._finish_waiters: list[Any] = []
        self.connection: AgentConnection | None = None
        #: Connections that authenticated so far.
        self.connections = 0
        self._attempts = 0
        self._retry: Any = None
        self._terminating = False
        self._exit_status: int | None = None
        self._running: set[Any] = set()
        # Request id -> a function that abandons that request (the cancel signal).
        self._cancellers: dict[int, Callable[[], None]] = {}

    def when_finished(self) -> Any:
        """A new future (a Deferred under Twisted) resolved with the exit status once the agent is done."""
        future = txaio.create_future()
        if self._exit_status is not None:
            txaio.resolve(future, self._exit_status)
        else:
            self._finish_waiters.append(future)
        return future

    @property
    def exit_status(self) -> int | None:
        """The exit status, once the agent is done."""
        return self._exit_status

    @property
    def attempts(self) -> int:
        """Failed connection attempts since the last authentication."""
        return self._attempts

    @property
    def busy(self) -> bool:
        """Whether a request is being handled."""
        return bool(self._running)

    @property
    def terminating(self) -> bool:
        """Whether the agent is on its way out."""
        return self._terminating

    # -- connecting -------------------------------------------------------------------------

    def start(self, preauthenticated: bytes | None = None) -> AgentConnection | None:
        """
        Begin: with ``preauthenticated`` the adapter has a connection on which
        that ``AuthRequest`` frame was sent, and connects the returned
        :class:`AgentConnection` to it; without, the agent dials.
        """
        if preauthenticated is not None:
            self.connection = AgentConnection(self, preauthenticated=preauthenticated)
            return self.connection
        self._dial()
        return None

    def _dial(self) -> None:
        self._retry = None
        if self._terminating:
            return
        connection = AgentConnection(self)
        self.connection = connection
        connecting = txaio.as_future(self._connect, connection)
        txaio.add_callbacks(
            connecting, None, lambda failure: self._connect_failed(connection, txaio.failure_message(failure))
        )

    def _connect_failed(self, connection: AgentConnection, reason: str) -> None:
        if connection is self.connection:
            self.connection = None
        self._retry_later(f"cannot connect to the spearlet at {self.config.address}: {reason}")

    def _retry_later(self, why: str) -> None:
        if self._terminating:
            self._finish(EXIT_OK)
            return
        self._attempts += 1
        if self._attempts > self.config.max_retries:
            self.log.error("{why}; giving up after {attempts} attempts", why=why, attempts=self._attempts)
            self._finish(EXIT_UNREACHABLE)
            return
        delay = self.config.retry_delay_for(self._attempts)
        self.log.warn("{why}; retrying in {delay} s", why=why, delay=f"{delay:g}")
        self._retry = self.clock.call_later(delay, self._dial)

    def authenticated(self, connection: AgentConnection, session_id: str | None) -> None:
        """``connection``'s handshake succeeded."""
        self._attempts = 0
        self.connections += 1
        self.log.info(
            "Authenticated as {instance_id} at {address}",
            instance_id=self.config.instance_id,
            address=self.config.address,
        )

    def connection_lost(self, connection: AgentConnection, reason: str | None) -> None:
        """``connection`` ended; ``reason`` is ``None`` for an orderly close."""
        if connection is not self.connection:
            return
        self.connection = None
        if self._terminating:
            self._finish(EXIT_OK)
            return
        error = connection.auth_error
        if error is not None and error.code not in _RETRYABLE:
            if isinstance(error, AuthenticationError):
                self.log.error("The spearlet refused this agent: {error}", error=str(error))
                self._finish(EXIT_AUTH_REFUSED)
            else:
                self.log.error("The spearlet broke the protocol: {error}", error=str(error))
                self._finish(EXIT_PROTOCOL)
            return
        if connection.was_authenticated:
            self._attempts = 0
        self._retry_later(f"connection to the spearlet lost ({reason or 'closed by the spearlet'})")

    # -- messages ---------------------------------------------------------------------------------

    def message_received(self, connection: AgentConnection, message: SpearMessage) -> None:
        kind = message.message_type
        if kind is _EXECUTE_REQUEST:
            self._execute(connection, message)
        elif kind is _SIGNAL:
            self._signal(connection, message)
        elif kind is _ERROR:
            try:
                error = message.parse_payload()
                text = f"{error.error_code} {error.message}"  # type: ignore[union-attr]
            except DecodeError as e:
                text = f"(undecodable: {e})"
            self.log.warn("Error from the spearlet: {error}", error=text)
        else:
            self.log.info("Ignoring a {kind} message: this agent does not handle it", kind=kind.value)

    def _execute(self, connection: AgentConnection, message: SpearMessage) -> None:
        request_id = message.request_id
        if self._terminating:
            refusal = ShuttingDown("the agent is terminating", request_id=request_id)
            connection.send(SpearMessage.from_error(refusal))
            return
        try:
            request = message.parse_payload()
        except DecodeError as e:
            e.request_id = request_id
            connection.send(SpearMessage.from_error(e))
            return
        assert isinstance(request, ExecuteRequest)
        started = _monotonic()
        try:
            result = self.handler(request)
        except BaseException as e:
            # What txaio makes of it: a failed future (a BaseException that is
            # not an Exception propagates under asyncio, as it did).
            future = txaio.as_future(_raise, e)
        else:
            if type(result) in _IMMEDIATE:
                # The common case: answered now, nothing to wait for or cancel.
                self._send_response(
                    connection, request_id, self._response(request_id, request, result, started)
                )
                return
            future = txaio.as_future(_identity, result)
        _Pending(self, connection, request_id, request, future, started).start()

    def _response(
        self, request_id: int, request: ExecuteRequest, result: Any, started: float
    ) -> ExecuteResponse:
        """The response for the handler's ``result`` (a failure for one it may not give)."""
        try:
            return response_for(request, result, int((_monotonic() - started) * 1000))
        except (TypeError, ValueError) as e:
            self.log.error("Request {request_id}: {error}", request_id=request_id, error=str(e))
            return failure_response(request, e, int((_monotonic() - started) * 1000))

    def _send_response(self, connection: AgentConnection, request_id: int, response: ExecuteResponse) -> None:
        if not connection.send(SpearMessage.execute_response(request_id, response)):
            self.log.warn(
                "The response to request {request_id} is lost: its connection is gone",
                request_id=request_id,
            )

    def _signal(self, connection: AgentConnection, message: SpearMessage) -> None:
        try:
            body = message.parse_payload()
        except DecodeError as e:
            e.request_id = message.request_id
            connection.send(SpearMessage.from_error(e))
            return
        assert isinstance(body, SignalMessage)
        if body.signal_type is SignalType.TERMINATE:
            self.terminate("a Terminate signal from the spearlet")
            return
        if body.signal_type == CANCEL:
            self._cancel_request(message.request_id)
            return
        if self.on_signal is None:
            self.log.info("Ignoring signal {signal}: no signal hook", signal=_signal_name(body))
            return
        # txaio turns a hook that raises into a failed future: one errback logs both.
        outcome = txaio.as_future(self.on_signal, body)
        txaio.add_callbacks(
            outcome,
            None,
            lambda failure: self.log.error(
                "The signal hook failed on {signal}: {error}",
                signal=_signal_name(body),
                error=txaio.failure_message(failure),
            ),
        )

    def _cancel_request(self, request_id: int) -> None:
        abandon = self._cancellers.pop(request_id, None)
        if abandon is None:
            self.log.info(
                "Cancel signal for request {request_id}, which is not running", request_id=request_id
            )
            return
        abandon()

    # -- ending ------------------------------------------------------------------------------------

    def terminate(self, why: str = "asked to") -> None:
        """
        End cleanly: take no more requests, let the running ones finish and
        answer, close the connection, exit with status 0.
        """
        if self._terminating:
            return
        self._terminating = True
        self.log.info("Terminating ({why})", why=why)
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        running = list(self._running)
        if running:
            waiting = txaio.gather(running, consume_exceptions=True)
            txaio.add_callbacks(waiting, lambda _: self._close(), lambda _: self._close())
        else:
            self._close()

    def _close(self) -> None:
        connection = self.connection
        if connection is None or connection.closed or connection.transport is None:
            self._finish(EXIT_OK)
            return
        connection.close("the agent is terminating")

    def _finish(self, status: int) -> None:
        if self._exit_status is not None:
            return
        self._exit_status = status
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        waiters, self._finish_waiters = self._finish_waiters, []
        for waiter in waiters:
            if not txaio.is_called(waiter):
                txaio.resolve(waiter, status)


class _Pending:
    """
    A request whose handler gave a future: answered when the future settles,
    at its timeout, or never if the spearlet cancels it.  One object with
    slots per request, its bound methods the callbacks.
    """

    __slots__ = ("agent", "connection", "done", "future", "request", "request_id", "started", "timer")

    def __init__(
        self,
        agent: Agent,
        connection: AgentConnection,
        request_id: int,
        request: ExecuteRequest,
        future: Any,
        started: float,
    ) -> None:
        self.agent = agent
        self.connection = connection
        self.request_id = request_id
        self.request = request
        self.future = future
        self.started = started
        self.done = False
        self.timer: Any = None

    def start(self) -> None:
        """Follow the future: running, cancellable, timed out at the request's timeout."""
        agent = self.agent
        agent._running.add(self.future)
        agent._cancellers[self.request_id] = self.abandon
        if self.request.timeout:
            self.timer = agent.clock.call_later(self.request.timeout, self.timed_out)
        txaio.add_callbacks(self.future, self.succeeded, self.failed)

    def _elapsed(self) -> int:
        return int((_monotonic() - self.started) * 1000)

    def _finish(self, response: ExecuteResponse) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.agent._send_response(self.connection, self.request_id, response)

    def _settled(self) -> None:
        agent = self.agent
        agent._running.discard(self.future)
        if agent._cancellers.get(self.request_id) == self.abandon:
            del agent._cancellers[self.request_id]

    def succeeded(self, result: Any) -> None:
        try:
            self._finish(self.agent._response(self.request_id, self.request, result, self.started))
        finally:
            self._settled()

    def failed(self, failure: Any) -> None:
        try:
            if self.done:
                return
            error = failure.value
            if not isinstance(error, TaskFailed):
                self.agent.log.error(
                    "Handler failed on request {request_id} of {task_id}:\n{traceback}",
                    request_id=self.request_id,
                    task_id=self.request.task_id,
                    traceback=txaio.failure_format_traceback(failure),
                )
            self._finish(failure_response(self.request, error, self._elapsed()))
        finally:
            self._settled()

    def timed_out(self) -> None:
        self.timer = None
        request = self.request
        self._finish(
            ExecuteResponse(
                request.task_id,
                ExecutionStatus.TIMEOUT,
                None,
                f"the handler did not finish within {request.timeout} s",
                None,
                self._elapsed(),
            )
        )
        txaio.cancel(self.future)

    def abandon(self) -> None:
        """The spearlet gave up on the request: no answer, the handler cancelled."""
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.agent.log.info("Request {request_id} cancelled by the spearlet", request_id=self.request_id)
        txaio.cancel(self.future)


def _raise(error: BaseException) -> None:
    raise error


def _identity(value: Any) -> Any:
    return value


def _signal_name(body: SignalMessage) -> str:
    kind = body.signal_type
    return kind.value if isinstance(kind, SignalType) else f"Custom({kind.name})"
