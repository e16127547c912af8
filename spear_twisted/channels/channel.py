"""
:class:`Channel`: one instance's :class:`ICommunicationChannel`, and the
Twisted ``Factory`` of that instance's connections.

The channel is the stable handle; connections come and go under it (an
instance that restarts reconnects to the same channel).  It correlates
responses with requests, queues unsolicited messages with back-pressure,
keeps its figures, and closes everything it owns.  Subclasses add the
transport: where to listen and how to dial.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from spear_twisted.auth import SecretValidator, refuse_all
from spear_twisted.channels.config import ChannelAddress, ChannelConfig
from spear_twisted.channels.interfaces import ICommunicationChannel
from spear_twisted.channels.protocol import SpearProtocol
from spear_twisted.channels.session_protocol import (
    IConnectionGatekeeper,
    IConnectionOwner,
    SpearSessionProtocol,
)
from spear_twisted.channels.stats import ChannelStats, LatencyWindow
from spear_twisted.errors import (
    AlreadyConnected,
    AuthenticationFailed,
    ConnectionClosed,
    ConnectionLost,
    DecodeError,
    RequestTimeout,
    SpearError,
)
from spear_twisted.wire import (
    AuthRequest,
    ErrorMessage,
    MessageType,
    Role,
    RuntimeInstanceId,
    SpearMessage,
)

# Incoming messages that can answer a request this side sent.
_RESPONSE_TYPES = frozenset({MessageType.EXECUTE_RESPONSE, MessageType.ERROR, MessageType.AUTH_RESPONSE})

# An enum's members are slow to reach through the class (its metaclass has a
# __getattr__): the per-message paths use aliases.
_ERROR = MessageType.ERROR
_EXECUTE_RESPONSE = MessageType.EXECUTE_RESPONSE

_MAX_REQUEST_ID = 2**64 - 1

#: Push mode's callbacks (see :meth:`Channel.set_receiver`).
MessageCallback = Callable[[SpearMessage], object]
EndCallback = Callable[[SpearError], object]


class _Pending:
    """An outstanding request: who waits for it, and until when."""

    __slots__ = ("deadline", "deferred", "done", "request_id", "started", "timeout")

    deferred: Deferred[SpearMessage]

    def __init__(self, request_id: int, started: float, timeout: float) -> None:
        self.request_id = request_id
        self.started = started
        self.deadline = started + timeout
        self.timeout = timeout
        #: Answered, failed or cancelled: its deadline entry is stale.
        self.done = False


@attrs.frozen
class OutstandingRequest:
    """
    A request sent with :meth:`Channel.send_request`: its id, by which the
    peer knows it (a ``Signal`` about it carries that id), and the Deferred
    of its response.
    """

    #: The request id it went out under; ``None`` when it never went out
    #: (nothing was connected: ``response`` has already failed).
    request_id: int | None
    #: Fires as :meth:`Channel.request_response`'s Deferred does; cancellable.
    response: Deferred[SpearMessage]


class _Totals:
    """What the channel's past connections sent and received."""

    __slots__ = ("bytes_received", "bytes_sent", "messages_received", "messages_sent")

    def __init__(self) -> None:
        self.messages_sent = self.messages_received = self.bytes_sent = self.bytes_received = 0

    def add(self, connection: SpearSessionProtocol | _Totals) -> None:
        self.messages_sent += connection.messages_sent
        self.messages_received += connection.messages_received
        self.bytes_sent += connection.bytes_sent
        self.bytes_received += connection.bytes_received


@implementer(ICommunicationChannel, IConnectionOwner, IConnectionGatekeeper)
class Channel(Factory):
    """
    A channel for ``instance_id``; see the module docstring.

    :param role: ``SPEARLET`` (validates the instance's token with
        ``validator``) or ``AGENT`` (presents ``credentials``).
    :param validator: ``(instance_id, token) -> bool | Deferred[bool]``;
        without one every attempt is refused.
    :param observer: called with ``(connection, ConnectionEvent)`` for every
        connection of this channel.
    :param admission: called before each new connection; returns the error to
        refuse it with (the spearlet is full), or ``None``.
    :param replace_duplicates: when the instance authenticates a second time
        while connected, replace the old connection instead of refusing the
        new one.
    """

    log = Logger()

    #: The ``SPEAR_COMMUNICATION_TYPE`` spelling of this channel's transport.
    transport_name = "stream"

    # Start/stop of every channel's factory would flood the log.
    noisy = False

    # Slots: a spearlet holds a channel per instance, thousands of them.
    __slots__ = (
        "_close_done",
        "_closed",
        "_connected_waiters",
        "_connection",
        "_connection_errors",
        "_connections",
        "_deadline_sequence",
        "_deadline_timer",
        "_deadlines",
        "_late_responses",
        "_latency",
        "_pending",
        "_ports",
        "_push",
        "_queue",
        "_receivers",
        "_request_ids",
        "_session_config",
        "_timeout_errors",
        "_totals",
        "_unauthenticated",
        "address",
        "admission",
        "clock",
        "config",
        "credentials",
        "instance_id",
        "last_connection_error",
        "observe_messages",
        "observer",
        "reactor",
        "replace_duplicates",
        "role",
        "validator",
    )

    def __init__(
        self,
        instance_id: RuntimeInstanceId,
        *,
        reactor: Any = None,
        config: ChannelConfig | None = None,
        role: Role = Role.SPEARLET,
        validator: SecretValidator | None = None,
        credentials: AuthRequest | None = None,
        observer: Any = None,
        observe_messages: bool = False,
        admission: Callable[[], SpearError | None] | None = None,
        replace_duplicates: bool = False,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if role is Role.AGENT and credentials is None:
            raise ValueError("an agent-side channel needs credentials")
        self.instance_id = instance_id
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.config = config or ChannelConfig()
        # One for every connection of the channel: made once, shared.
        self._session_config = self.config.session_config()
        self.role = role
        # Not ``validator or refuse_all``: a SecretRegistry with no secrets yet is falsy.
        self.validator: SecretValidator = validator if validator is not None else refuse_all
        self.credentials = credentials
        self.observer = observer
        self.observe_messages = observe_messages
        self.admission = admission
        self.replace_duplicates = replace_duplicates
        self.address: ChannelAddress | None = None
        #: Why the latest connection that did not authenticate failed.
        self.last_connection_error: str | None = None

        self._connection: SpearSessionProtocol | None = None
        self._unauthenticated: set[SpearSessionProtocol] = set()
        self._ports: list[IListeningPort] = []
        self._pending: dict[int, _Pending] = {}
        self._request_ids = itertools.count(1)
        # Request deadlines: a heap of (deadline, sequence, request) under one
        # timer at the earliest; answered requests leave stale entries that
        # are dropped when they surface (or in a sweep, if they pile up).
        self._deadlines: list[tuple[float, int, _Pending]] = []
        self._deadline_sequence = itertools.count()
        self._deadline_timer: IDelayedCall | None = None
        # Made when first needed: an idle channel holds no queues.
        self._queue: deque[SpearMessage] | None = None
        self._receivers: deque[Deferred[SpearMessage]] | None = None
        # Push mode (set_receiver): on_message and on_end, instead of the queue.
        self._push: tuple[MessageCallback, EndCallback | None] | None = None
        self._connected_waiters: list[Deferred[ICommunicationChannel]] = []
        self._closed = False
        self._close_done: Deferred[None] | None = None
        self._latency = LatencyWindow()
        self._totals = _Totals()
        self._connection_errors = 0
        self._timeout_errors = 0
        self._late_responses = 0
        self._connections = 0

    # -- Factory ----------------------------------------------------------------------------

    #: The connection protocol ``buildProtocol`` makes: length-prefixed frames.
    protocol_type: type[SpearSessionProtocol] = SpearProtocol

    def buildProtocol(self, addr: Any) -> SpearSessionProtocol | None:
        return self.build_connection(self.protocol_type)

    def build_connection(self, protocol_type: type[SpearSessionProtocol]) -> SpearSessionProtocol | None:
        """
        A new connection of this channel, of ``protocol_type`` (a
        :class:`SpearSessionProtocol` subclass: a transport whose messages
        arrive whole, such as a gRPC stream, brings its own); ``None`` once
        the channel is closed.
        """
        if self._closed:
            return None
        protocol = protocol_type(
            role=self.role,
            clock=self.clock,
            session_config=self._session_config,
            gatekeeper=self if self.role is Role.SPEARLET else None,
            owner=self if self.role is Role.AGENT else None,
            credentials=self.credentials,
            observer=self.observer,
            observe_messages=self.observe_messages,
            transport_name=self.transport_name,
            close_timeout=self.config.close_timeout,
            refuse=None if self.admission is None else self.admission(),
        )
        protocol.factory = self
        self._unauthenticated.add(protocol)
        return protocol

    # -- IConnectionGatekeeper -------------------------------------------------------------------

    def authenticate(self, connection: SpearSessionProtocol, request: AuthRequest) -> Deferred[Any]:
        if str(self.instance_id) != request.instance_id:
            return defer.fail(AuthenticationFailed("this address belongs to another instance"))
        allowed = self.config.allowed_uids
        credentials = connection.peer_credentials
        if allowed is not None and (credentials is None or credentials.uid not in allowed):
            return defer.fail(AuthenticationFailed("peer process is not allowed to connect"))
        if self._has_live_connection() and not self.replace_duplicates:
            return defer.fail(
                AlreadyConnected("the instance already has a live connection", instance_id=self.instance_id)
            )
        try:
            verdict = self.validator(self.instance_id, request.token)
        except Exception:
            return defer.fail()
        checked = verdict if isinstance(verdict, Deferred) else defer.succeed(verdict)
        return checked.addCallback(self._validated)

    def _validated(self, valid: bool) -> Channel:
        if valid is not True:
            raise AuthenticationFailed("invalid token", instance_id=self.instance_id)
        if self._has_live_connection() and not self.replace_duplicates:
            raise AlreadyConnected("the instance already has a live connection", instance_id=self.instance_id)
        return self

    def _has_live_connection(self) -> bool:
        return self._connection is not None and not self._connection.is_lost

    def connection_lost_before_auth(self, connection: SpearSessionProtocol, error: SpearError | None) -> None:
        self._unauthenticated.discard(connection)
        if error is not None:
            self._connection_errors += 1
            self.last_connection_error = str(error.message)

    # -- IConnectionOwner --------------------------------------------------------------------------

    def connection_ready(self, connection: SpearSessionProtocol) -> None:
        self._unauthenticated.discard(connection)
        if self._closed:
            connection.close("channel closed")
            return
        old = self._connection
        if old is not None and not old.is_lost:
            if not self.replace_duplicates:
                # Two connections raced through authentication: keep the first.
                connection.fail(AlreadyConnected("the instance already has a live connection"))
                return
            replaced = AlreadyConnected("replaced by a newer connection of the same instance")
            self.connection_done(old, replaced)
            old.fail(replaced)
        self._connection = connection
        self._connections += 1
        if self._queue is not None and len(self._queue) >= self.config.receive_queue_size:
            connection.pause_reading()
        waiters, self._connected_waiters = self._connected_waiters, []
        for waiter in waiters:
            waiter.callback(self)

    def message_received(self, connection: SpearSessionProtocol, message: SpearMessage) -> None:
        if message.message_type in _RESPONSE_TYPES and self._answer(message):
            return
        if self._push is not None:
            self._deliver(self._push[0], message)
            return
        if self._receivers:
            self._receivers.popleft().callback(message)
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(message)
        if len(queue) >= self.config.receive_queue_size:
            connection.pause_reading()

    def _answer(self, message: SpearMessage) -> bool:
        """Resolve the request ``message`` answers; False if it answers none."""
        request_id = message.request_id
        error: SpearError | None = None
        if message.message_type is _ERROR:
            try:
                body = message.parse_payload()
            except DecodeError:
                return False
            assert isinstance(body, ErrorMessage)
            if body.related_request_id is not None:
                request_id = body.related_request_id
            error = body.to_error(self.instance_id)
        pending = self._pending.pop(request_id, None)
        if pending is None:
            if message.message_type is _EXECUTE_RESPONSE:
                self._late_responses += 1
                self.log.warn(
                    "Discarding response {request_id} from {instance_id}: no such request is outstanding"
                    " (it timed out or was cancelled)",
                    request_id=request_id,
                    instance_id=str(self.instance_id),
                )
                return True
            return False
        pending.done = True
        self._drop_stale_deadlines()
        self._latency.add(self.clock.seconds() - pending.started)
        if error is not None:
            pending.deferred.errback(error)
        else:
            pending.deferred.callback(message)
        return True

    def connection_done(self, connection: SpearSessionProtocol, error: SpearError | None) -> None:
        if connection is not self._connection:
            if connection in self._unauthenticated:
                # An agent-side connection that never authenticated.
                self.connection_lost_before_auth(connection, error)
            # Otherwise one already retired (replaced by a newer one): counted then.
            return
        self._connection = None
        self._totals.add(connection)
        if error is not None:
            self._connection_errors += 1
        pending, self._pending = self._pending, {}
        self._stop_deadlines()
        for request_id, entry in pending.items():
            entry.done = True
            reason = f": {error.message}" if error is not None else ""
            entry.deferred.errback(
                ConnectionLost(
                    f"connection lost while the request was outstanding{reason}",
                    instance_id=self.instance_id,
                    request_id=request_id,
                )
            )

    # -- ICommunicationChannel ------------------------------------------------------------------------

    def is_connected(self) -> bool:
        return self._connection is not None and self._connection.authenticated

    def when_connected(self) -> Deferred[ICommunicationChannel]:
        if self.is_connected():
            return defer.succeed(self)
        if self._closed:
            return defer.fail(self._closed_error())
        waiter: Deferred[ICommunicationChannel] = Deferred(self._forget_connected_waiter)
        self._connected_waiters.append(waiter)
        return waiter

    def send(self, message: SpearMessage) -> Deferred[None]:
        connection = self._live_connection(message.request_id)
        if isinstance(connection, SpearError):
            return defer.fail(connection)
        return connection.send_message(message)

    def receive(self) -> Deferred[SpearMessage]:
        if self._push is not None:
            raise RuntimeError("this channel is in push mode: messages go to the receiver of set_receiver")
        queue = self._queue
        if queue:
            message = queue.popleft()
            if self._connection is not None and len(queue) <= self.config.receive_queue_size // 2:
                self._connection.resume_reading()
            return defer.succeed(message)
        if self._closed:
            return defer.fail(self._closed_error())
        waiter: Deferred[SpearMessage] = Deferred(self._forget_receiver)
        if self._receivers is None:
            self._receivers = deque()
        self._receivers.append(waiter)
        return waiter

    def set_receiver(self, on_message: MessageCallback | None, on_end: EndCallback | None = None) -> None:
        """
        Push mode: call ``on_message(message)`` with every unsolicited
        message as it arrives (those already queued first, at once) instead
        of queueing it for :meth:`receive`, and ``on_end(error)`` once, with
        the ``ConnectionClosed`` that :meth:`receive` would fail with, when
        the channel closes.  ``set_receiver(None)`` returns to queueing.

        ``on_message`` runs synchronously as the message is read (nothing is
        queued, so there is no back-pressure: it must not block); an
        exception it raises is logged and the channel goes on.  While a
        receiver is set, :meth:`receive` raises ``RuntimeError``.

        :raises RuntimeError: when :meth:`receive` calls are waiting.
        """
        if on_message is None:
            self._push = None
            return
        if self._receivers:
            raise RuntimeError("receive() calls are waiting: push mode would leave them unanswered")
        self._push = push = (on_message, on_end)
        queue = self._queue
        while queue and self._push is push:
            self._deliver(on_message, queue.popleft())
        if self._push is not push:
            return
        if self._connection is not None:
            self._connection.resume_reading()
        if self._closed:
            self._end_push()

    def _deliver(self, on_message: MessageCallback, message: SpearMessage) -> None:
        try:
            on_message(message)
        except Exception:
            self.log.failure(
                "The receiver of {instance_id} failed on a {message_type} message (request {request_id})",
                instance_id=str(self.instance_id),
                message_type=message.message_type.value,
                request_id=message.request_id,
            )

    def _end_push(self) -> None:
        push, self._push = self._push, None
        if push is not None and push[1] is not None:
            try:
                push[1](self._closed_error())
            except Exception:
                self.log.failure(
                    "The receiver of {instance_id} failed at the end", instance_id=str(self.instance_id)
                )

    def request_response(self, message: SpearMessage, timeout: float | None = None) -> Deferred[SpearMessage]:
        entry = self._request(message, timeout)
        if isinstance(entry, SpearError):
            return defer.fail(entry)
        return entry.deferred

    def send_request(self, message: SpearMessage, timeout: float | None = None) -> OutstandingRequest:
        entry = self._request(message, timeout)
        if isinstance(entry, SpearError):
            return OutstandingRequest(None, defer.fail(entry))
        return OutstandingRequest(entry.request_id, entry.deferred)

    def _request(self, message: SpearMessage, timeout: float | None) -> _Pending | SpearError:
        """Send ``message`` as a new request; its entry, or why nothing could be sent."""
        if timeout is None:
            timeout = self.config.request_timeout
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        connection = self._live_connection(None)
        if isinstance(connection, SpearError):
            return connection
        request_id = self._allocate_request_id()
        message = message.with_request_id(request_id)
        entry = _Pending(request_id, self.clock.seconds(), timeout)
        waiter: Deferred[SpearMessage] = Deferred(lambda _: self._cancel_request(entry))
        entry.deferred = waiter
        self._pending[request_id] = entry
        self._add_deadline(entry)
        sending = connection.send_or_queue(message)
        if sending is not None:
            sending.addErrback(self._send_failed, entry)
        return entry

    def get_stats(self) -> ChannelStats:
        totals = _Totals()
        totals.add(self._totals)
        connection = self._connection
        uptime = 0.0
        if connection is not None:
            totals.add(connection)
            if connection.authenticated and connection.authenticated_at is not None:
                uptime = self.clock.seconds() - connection.authenticated_at
        mean, p50, p99 = self._latency.summary()
        return ChannelStats(
            instance_id=str(self.instance_id),
            transport=self.transport_name,
            connected=self.is_connected(),
            connection_errors=self._connection_errors,
            timeout_errors=self._timeout_errors,
            late_responses=self._late_responses,
            outstanding_requests=len(self._pending),
            queued_messages=0 if self._queue is None else len(self._queue),
            latency_samples=len(self._latency),
            latency_mean=mean,
            latency_p50=p50,
            latency_p99=p99,
            uptime=uptime,
            connections=self._connections,
            messages_sent=totals.messages_sent,
            messages_received=totals.messages_received,
            bytes_sent=totals.bytes_sent,
            bytes_received=totals.bytes_received,
        )

    def close(self) -> Deferred[None]:
        if self._close_done is not None:
            return _chain(self._close_done)
        self._closed = True
        error = self._closed_error()
        waiters: list[Deferred[Any]] = [*(self._receivers or ()), *self._connected_waiters]
        self._receivers = None
        self._connected_waiters = []
        for waiter in waiters:
            waiter.errback(error)
        self._end_push()
        steps: list[Deferred[Any]] = [defer.maybeDeferred(port.stopListening) for port in self._ports]
        self._ports = []
        connections = set(self._unauthenticated)
        if self._connection is not None:
            connections.add(self._connection)
        steps += [connection.close("channel closed") for connection in connections]
        if not self._pending:
            self._stop_deadlines()
        done = defer.DeferredList(steps, consumeErrors=True)
        self._close_done = done.addCallback(lambda _: None)
        self.log.debug("Channel {instance_id} closed", instance_id=str(self.instance_id))
        return _chain(self._close_done)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @property
    def connection(self) -> SpearSessionProtocol | None:
        """The current connection, authenticated or not yet."""
        return self._connection

    # -- transports --------------------------------------------------------------------------------------

    def listen(self) -> Deferred[ChannelAddress]:
        """Start listening at this channel's address; fires with the address."""
        raise NotImplementedError(f"{type(self).__name__} cannot listen")

    def connect(self, endpoint: IStreamClientEndpoint) -> Deferred[Channel]:
        """
        Dial ``endpoint`` with this channel's role; fires with the channel once
        the connection has authenticated, or fails with why it did not.
        """
        if self._closed:
            return defer.fail(self._closed_error())
        ready = endpoint.connect(self).addCallback(_when_ready)
        return ready.addCallback(lambda _: self)

    def add_port(self, port: IListeningPort) -> None:
        """Own ``port``: it stops listening when the channel closes."""
        if self._closed:
            port.stopListening()
        else:
            self._ports.append(port)

    @property
    def ports(self) -> tuple[IListeningPort, ...]:
        return tuple(self._ports)

    # -- internals --------------------------------------------------------------------------------------

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed("the channel is closed", instance_id=self.instance_id)

    def _live_connection(self, request_id: int | None) -> SpearSessionProtocol | SpearError:
        if self._closed:
            error: SpearError = self._closed_error()
        elif self._connection is None or not self._connection.authenticated:
            error = ConnectionLost("the instance is not connected", instance_id=self.instance_id)
        else:
            return self._connection
        error.request_id = request_id
        return error

    def _allocate_request_id(self) -> int:
        while True:
            request_id = next(self._request_ids)
            if request_id > _MAX_REQUEST_ID:
                self._request_ids = itertools.count(1)
                continue
            if request_id not in self._pending:
                return request_id

    # -- request deadlines: one timer per channel ------------------------------------------------------

    def _add_deadline(self, entry: _Pending) -> None:
        deadlines = self._deadlines
        heapq.heappush(deadlines, (entry.deadline, next(self._deadline_sequence), entry))
        # The timer is at the earliest deadline (or before it: a stale entry
        # may be the earliest, and firing early only rearms).
        delay = max(0.0, deadlines[0][0] - entry.started)
        timer = self._deadline_timer
        if timer is None:
            self._deadline_timer = self.clock.callLater(delay, self._deadlines_due)
        elif deadlines[0][0] < timer.getTime():
            # A shorter timeout than those already running.
            timer.reset(delay)

    def _drop_stale_deadlines(self) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].done:
            heapq.heappop(deadlines)
        # Answers out of order leave stale entries below a live one: sweep
        # them when they outnumber the live, so the heap stays bounded.
        if len(deadlines) > 2 * len(self._pending) + 64:
            self._deadlines = [item for item in deadlines if not item[2].done]
            heapq.heapify(self._deadlines)

    def _deadlines_due(self) -> None:
        """The timer: fail every request whose deadline has come, rearm for the next."""
        self._deadline_timer = None
        now = self.clock.seconds()
        deadlines = self._deadlines
        while deadlines and (deadlines[0][2].done or deadlines[0][0] <= now):
            _, _, entry = heapq.heappop(deadlines)
            if not entry.done:
                self._request_timed_out(entry)
        # The timer stays armed while anything is outstanding (a request that
        # times out may have triggered others).
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].done:
            heapq.heappop(deadlines)
        if deadlines and self._deadline_timer is None:
            self._deadline_timer = self.clock.callLater(
                max(0.0, deadlines[0][0] - self.clock.seconds()), self._deadlines_due
            )

    def _stop_deadlines(self) -> None:
        self._deadlines = []
        timer, self._deadline_timer = self._deadline_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _retire(self, entry: _Pending) -> None:
        """``entry`` is over: no longer outstanding under its id (which may be reused)."""
        entry.done = True
        if self._pending.get(entry.request_id) is entry:
            del self._pending[entry.request_id]

    def _request_timed_out(self, entry: _Pending) -> None:
        self._retire(entry)
        self._timeout_errors += 1
        entry.deferred.errback(
            RequestTimeout(
                f"no response within {entry.timeout:g} s",
                instance_id=self.instance_id,
                request_id=entry.request_id,
            )
        )

    def _cancel_request(self, entry: _Pending) -> None:
        if entry.done:
            return
        self._retire(entry)
        self._drop_stale_deadlines()

    def _send_failed(self, failure: Any, entry: _Pending) -> None:
        if entry.done:
            return None
        self._retire(entry)
        self._drop_stale_deadlines()
        entry.deferred.errback(failure)
        return None

    def _forget_receiver(self, waiter: Deferred[SpearMessage]) -> None:
        if self._receivers is not None:
            self._forget(self._receivers, waiter)

    def _forget_connected_waiter(self, waiter: Deferred[ICommunicationChannel]) -> None:
        self._forget(self._connected_waiters, waiter)

    @staticmethod
    def _forget(waiters: Any, waiter: Deferred[Any]) -> None:
        try:
            waiters.remove(waiter)
        except ValueError:
            pass

    def __repr__(self) -> str:
        state = "connected" if self.is_connected() else ("closed" if self._closed else "waiting")
        return f"<{type(self).__name__} {self.instance_id} {state}>"


def _when_ready(connection: IProtocol) -> Deferred[SpearSessionProtocol]:
    # The endpoint connected with the protocol this channel's buildProtocol made.
    if not isinstance(connection, SpearSessionProtocol):
        raise TypeError(f"expected a SpearSessionProtocol, not {type(connection).__name__}")
    return connection.when_ready()


def _chain(done: Deferred[None]) -> Deferred[None]:
    """A fresh Deferred that fires when ``done`` does, so callers cannot disturb it."""
    result: Deferred[None] = Deferred()

    def fire(value: None) -> None:
        result.callback(None)
        return value

    done.addCallback(fire)
    return result
