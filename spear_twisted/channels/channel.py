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

import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from spear_twisted.auth import SecretValidator, refuse_all
from spear_twisted.channels.config import ChannelAddress, ChannelConfig
from spear_twisted.channels.interfaces import ICommunicationChannel
from spear_twisted.channels.protocol import IConnectionGatekeeper, IConnectionOwner, SpearProtocol
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

_MAX_REQUEST_ID = 2**64 - 1


@attrs.define
class _Pending:
    deferred: Deferred[SpearMessage]
    started: float
    timer: IDelayedCall | None = None


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

        self._connection: SpearProtocol | None = None
        self._unauthenticated: set[SpearProtocol] = set()
        self._ports: list[IListeningPort] = []
        self._pending: dict[int, _Pending] = {}
        self._request_ids = itertools.count(1)
        self._queue: deque[SpearMessage] = deque()
        self._receivers: deque[Deferred[SpearMessage]] = deque()
        self._connected_waiters: list[Deferred[ICommunicationChannel]] = []
        self._closed = False
        self._close_done: Deferred[None] | None = None
        self._latency = LatencyWindow()
        self._totals = {"messages_sent": 0, "messages_received": 0, "bytes_sent": 0, "bytes_received": 0}
        self._connection_errors = 0
        self._timeout_errors = 0
        self._late_responses = 0
        self._connections = 0

    # -- Factory ----------------------------------------------------------------------------

    def buildProtocol(self, addr: Any) -> SpearProtocol | None:
        if self._closed:
            return None
        protocol = SpearProtocol(
            role=self.role,
            clock=self.clock,
            session_config=self.config.session_config(),
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

    def authenticate(self, connection: SpearProtocol, request: AuthRequest) -> Deferred[Any]:
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
        checked = defer.maybeDeferred(self.validator, self.instance_id, request.token)
        return checked.addCallback(self._validated)

    def _validated(self, valid: bool) -> Channel:
        if valid is not True:
            raise AuthenticationFailed("invalid token", instance_id=self.instance_id)
        if self._has_live_connection() and not self.replace_duplicates:
            raise AlreadyConnected("the instance already has a live connection", instance_id=self.instance_id)
        return self

    def _has_live_connection(self) -> bool:
        return self._connection is not None and not self._connection.is_lost

    def connection_lost_before_auth(self, connection: SpearProtocol, error: SpearError | None) -> None:
        self._unauthenticated.discard(connection)
        if error is not None:
            self._connection_errors += 1
            self.last_connection_error = str(error.message)

    # -- IConnectionOwner --------------------------------------------------------------------------

    def connection_ready(self, connection: SpearProtocol) -> None:
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
        if len(self._queue) >= self.config.receive_queue_size:
            connection.pause_reading()
        waiters, self._connected_waiters = self._connected_waiters, []
        for waiter in waiters:
            waiter.callback(self)

    def message_received(self, connection: SpearProtocol, message: SpearMessage) -> None:
        if message.message_type in _RESPONSE_TYPES and self._answer(message):
            return
        if self._receivers:
            self._receivers.popleft().callback(message)
            return
        self._queue.append(message)
        if len(self._queue) >= self.config.receive_queue_size:
            connection.pause_reading()

    def _answer(self, message: SpearMessage) -> bool:
        """Resolve the request ``message`` answers; False if it answers none."""
        request_id = message.request_id
        error: SpearError | None = None
        if message.message_type is MessageType.ERROR:
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
            if message.message_type is MessageType.EXECUTE_RESPONSE:
                self._late_responses += 1
                self.log.warn(
                    "Discarding response {request_id} from {instance_id}: no such request is outstanding"
                    " (it timed out or was cancelled)",
                    request_id=request_id,
                    instance_id=str(self.instance_id),
                )
                return True
            return False
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        self._latency.add(self.clock.seconds() - pending.started)
        if error is not None:
            pending.deferred.errback(error)
        else:
            pending.deferred.callback(message)
        return True

    def connection_done(self, connection: SpearProtocol, error: SpearError | None) -> None:
        if connection is not self._connection:
            # An agent-side connection that never authenticated.
            self.connection_lost_before_auth(connection, error)
            return
        self._connection = None
        for name in self._totals:
            self._totals[name] += getattr(connection, name)
        if error is not None:
            self._connection_errors += 1
        pending, self._pending = self._pending, {}
        for request_id, entry in pending.items():
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
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
        waiter: Deferred[ICommunicationChannel] = Deferred(lambda d: self._forget(self._connected_waiters, d))
        self._connected_waiters.append(waiter)
        return waiter

    def send(self, message: SpearMessage) -> Deferred[None]:
        connection = self._live_connection(message.request_id)
        if isinstance(connection, SpearError):
            return defer.fail(connection)
        return connection.send_message(message)

    def receive(self) -> Deferred[SpearMessage]:
        if self._queue:
            message = self._queue.popleft()
            if self._connection is not None and len(self._queue) <= self.config.receive_queue_size // 2:
                self._connection.resume_reading()
            return defer.succeed(message)
        if self._closed:
            return defer.fail(self._closed_error())
        waiter: Deferred[SpearMessage] = Deferred(lambda d: self._forget(self._receivers, d))
        self._receivers.append(waiter)
        return waiter

    def request_response(self, message: SpearMessage, timeout: float | None = None) -> Deferred[SpearMessage]:
        if timeout is None:
            timeout = self.config.request_timeout
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        connection = self._live_connection(None)
        if isinstance(connection, SpearError):
            return defer.fail(connection)
        request_id = self._allocate_request_id()
        message = message.with_request_id(request_id)
        waiter: Deferred[SpearMessage] = Deferred(lambda d: self._cancel_request(request_id))
        entry = _Pending(waiter, self.clock.seconds())
        self._pending[request_id] = entry
        entry.timer = self.clock.callLater(timeout, self._request_timed_out, request_id, timeout)
        connection.send_message(message).addErrback(self._send_failed, request_id)
        return waiter

    def get_stats(self) -> ChannelStats:
        totals = dict(self._totals)
        connection = self._connection
        uptime = 0.0
        if connection is not None:
            for name in totals:
                totals[name] += getattr(connection, name)
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
            queued_messages=len(self._queue),
            latency_samples=len(self._latency),
            latency_mean=mean,
            latency_p50=p50,
            latency_p99=p99,
            uptime=uptime,
            connections=self._connections,
            **totals,
        )

    def close(self) -> Deferred[None]:
        if self._close_done is not None:
            return _chain(self._close_done)
        self._closed = True
        error = self._closed_error()
        waiters: list[Deferred[Any]] = [*self._receivers, *self._connected_waiters]
        self._receivers.clear()
        self._connected_waiters = []
        for waiter in waiters:
            waiter.errback(error)
        steps: list[Deferred[Any]] = [defer.maybeDeferred(port.stopListening) for port in self._ports]
        self._ports = []
        connections = set(self._unauthenticated)
        if self._connection is not None:
            connections.add(self._connection)
        steps += [connection.close("channel closed") for connection in connections]
        done = defer.DeferredList(steps, consumeErrors=True)
        self._close_done = done.addCallback(lambda _: None)
        self.log.debug("Channel {instance_id} closed", instance_id=str(self.instance_id))
        return _chain(self._close_done)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @property
    def connection(self) -> SpearProtocol | None:
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
        connecting = endpoint.connect(self)
        connecting.addCallback(lambda connection: connection.when_ready())
        return connecting.addCallback(lambda _: self)

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

    def _live_connection(self, request_id: int | None) -> SpearProtocol | SpearError:
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

    def _request_timed_out(self, request_id: int, timeout: float) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return
        entry.timer = None
        self._timeout_errors += 1
        entry.deferred.errback(
            RequestTimeout(
                f"no response within {timeout:g} s", instance_id=self.instance_id, request_id=request_id
            )
        )

    def _cancel_request(self, request_id: int) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None and entry.timer is not None and entry.timer.active():
            entry.timer.cancel()

    def _send_failed(self, failure: Any, request_id: int) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return None
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        entry.deferred.errback(failure)
        return None

    @staticmethod
    def _forget(waiters: Any, waiter: Deferred[Any]) -> None:
        try:
            waiters.remove(waiter)
        except ValueError:
            pass

    def __repr__(self) -> str:
        state = "connected" if self.is_connected() else ("closed" if self._closed else "waiting")
        return f"<{type(self).__name__} {self.instance_id} {state}>"


def _chain(done: Deferred[None]) -> Deferred[None]:
    """A fresh Deferred that fires when ``done`` does, so callers cannot disturb it."""
    result: Deferred[None] = Deferred()

    def fire(value: None) -> None:
        result.callback(None)
        return value

    done.addCallback(fire)
    return result
