"""
:class:`BridgeProtocol`: one HTTP/2 connection serving gRPC calls.

The Twisted driver of the sans-IO ``h2`` connection, shaped like Twisted's
own ``twisted.web._http2`` (bytes in, events out, ``data_to_send()`` to the
transport, an ``IPushProducer`` toward the transport) but serving gRPC:
request validation, Trailers-Only errors, trailers with ``grpc-status``,
deadlines, and one :class:`~spear_twisted.bridge.call.BridgeStream` per
call.

Output: what a call sends waits in its own queue and goes to ``h2`` while
the stream's and the connection's send windows allow and the transport is
not paused; calls blocked on a window are resumed by the client's
WINDOW_UPDATE, in turn, a bounded share each, so one large response does not
starve the others.

Hardening: control frames produced for a client that does not read are
capped (``max_buffered_control_bytes``), stream resets are rate-limited
with a token bucket (Rapid Reset), and shutdown is a graceful double GOAWAY
(the first says "no new calls", a PING round trip later the second names the
last call served) after which calls in flight have ``shutdown_grace``
seconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h2.config
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spear_twisted.bridge.call import DATA, HEADERS, BridgeStream
from spear_twisted.bridge.config import BridgeConfig
from spear_twisted.bridge.h2connection import BridgeH2Connection
from spear_twisted.bridge.headers import decode_metadata, is_grpc_content_type, parse_timeout
from spear_twisted.bridge.methods import CallContext, MethodRegistry
from spear_twisted.bridge.status import GrpcError, StatusCode
from spear_twisted.channels.session_protocol import describe_peer
from spear_twisted.errors import (
    AuthenticationError,
    ConnectionLost,
    NotAuthenticated,
    RequestCancelled,
    ShuttingDown,
)

if TYPE_CHECKING:
    from spear_twisted.bridge.server import BridgeServer

#: Largest stream id (RFC 9113): a first GOAWAY naming it refuses nothing yet.
MAX_STREAM_ID = 2**31 - 1

#: Bytes one blocked call may send per turn when several wait for window.
SEND_QUANTUM = 64 * 1024

#: Opaque data of the PING that separates the two GOAWAY frames of a shutdown.
SHUTDOWN_PING = b"spear-gw"

_connection_ids = itertools.count(1)


@implementer(IPushProducer)
class BridgeProtocol(Protocol):
    """
    One HTTP/2 connection of a :class:`~spear_twisted.bridge.server.BridgeServer`.

    :param methods: what is served.
    :param clock: deadlines, reset rate and shutdown timers (a ``task.Clock``
        in tests).
    :param authenticator: an ``ICallAuthenticator`` for methods that need
        one; without it they are refused.
    """

    log = Logger()

    def __init__(
        self,
        methods: MethodRegistry,
        *,
        clock: IReactorTime,
        config: BridgeConfig | None = None,
        authenticator: Any = None,
        server: BridgeServer | None = None,
    ) -> None:
        self.methods = methods
        self.clock = clock
        self.config = config or BridgeConfig()
        self.authenticator = authenticator
        self.server = server
        self.connection_id = f"h2-{next(_connection_ids)}"
        self.peer = "?"
        self.h2 = BridgeH2Connection(
            config=h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.calls: dict[int, BridgeStream] = {}
        self._waiting: dict[int, BridgeStream] = {}  # calls with output held back
        self._touched: dict[int, BridgeStream] = {}  # calls with output queued during a read
        self._receiving = False
        self._write_paused = False
        self._paused_bytes = 0
        self._lost = False
        self._closing = False
        self._abort_timer: IDelayedCall | None = None
        self._reset_tokens = float(self.config.reset_burst)
        self._reset_stamp = 0.0
        self._goaway_last: int | None = None  # the final GOAWAY's last stream id, once sent
        self._draining = False
        self._shutdown_timers: list[IDelayedCall] = []
        self._lost_waiters: list[Deferred[None]] = []
        self._handlers: dict[type, Callable[[Any], None]] = {
            h2.events.RequestReceived: self._request_received,
            h2.events.DataReceived: self._data_received,
            h2.events.StreamEnded: self._stream_ended,
            h2.events.StreamReset: self._stream_reset,
            h2.events.WindowUpdated: self._window_updated,
            h2.events.RemoteSettingsChanged: self._settings_changed,
            h2.events.ConnectionTerminated: self._connection_terminated,
            h2.events.PingAckReceived: self._ping_acknowledged,
        }

    # -- Twisted callbacks --------------------------------------------------------------

    @property
    def _transport(self) -> Any:
        # A TCP, Unix or TLS transport: also a consumer that can be aborted.
        return self.transport

    def connectionMade(self) -> None:
        transport = self._transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        self.peer = describe_peer(transport)
        self._reset_stamp = self.clock.seconds()
        config = self.config
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: config.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: config.stream_window_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: config.max_header_list_size,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.h2.decoder.max_header_list_size = config.max_header_list_size
        self.h2.initiate_connection()
        extra = config.connection_window_size - 65_535
        if extra > 0:
            self.h2.increment_flow_control_window(extra)
        transport.registerProducer(self, True)
        if self.server is not None:
            self.server.connection_made(self)
        self.write_out()

    def dataReceived(self, data: bytes) -> None:
        if self._lost:
            return
        self._receiving = True
        try:
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                self.log.info(
                    "HTTP/2 protocol error from {peer} on {connection_id}: {error}",
                    peer=self.peer,
                    connection_id=self.connection_id,
                    error=str(e) or type(e).__name__,
                )
                self._terminate(ConnectionLost(f"HTTP/2 protocol error: {str(e) or type(e).__name__}"))
                return
            handlers = self._handlers
            for event in events:
                handler = handlers.get(type(event))
                if handler is not None:
                    handler(event)
                if self._lost or self._closing:
                    return
        finally:
            self._receiving = False
        # Output queued while the read was handled goes now, once every event
        # of the read is known (a client's END_STREAM makes a reset needless).
        touched = self._touched
        while touched and not self._lost:
            self.pump(touched.pop(next(iter(touched))))
        self.write_out()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone(f"connection lost: {reason.getErrorMessage()}")

    def _gone(self, why: str) -> None:
        if self._lost:
            return
        self._lost = True
        for timer in [self._abort_timer, *self._shutdown_timers]:
            if timer is not None and timer.active():
                timer.cancel()
        self._abort_timer = None
        self._shutdown_timers = []
        error = ConnectionLost(why)
        calls, self.calls = self.calls, {}
        self._waiting.clear()
        self._touched.clear()
        for call in calls.values():
            call.connection_lost(error)
        if self.server is not None:
            self.server.connection_lost(self)
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- IPushProducer: the transport's write buffer --------------------------------------

    def pauseProducing(self) -> None:
        self._write_paused = True

    def resumeProducing(self) -> None:
        self._write_paused = False
        self._paused_bytes = 0
        self._pump_waiting()

    def stopProducing(self) -> None:
        self._write_paused = True

    # -- h2 events -------------------------------------------------------------------------

    def _request_received(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self._goaway_last is not None and stream_id > self._goaway_last:
            # Opened after the final GOAWAY: the client retries it elsewhere.
            self._reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        http_method = path = content_type = timeout = encoding = None
        for name, value in event.headers or ():
            if name == b":method":
                http_method = value
            elif name == b":path":
                path = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = value
            elif name == b"grpc-encoding":
                encoding = value
        text_path = (path or b"").decode("utf-8", "replace")
        method = self.methods.lookup(text_path)
        call = BridgeStream(
            self,
            stream_id,
            method,
            None,
            self.config,
            encoding.decode("ascii", "replace") if encoding is not None else None,
            text_path,
        )
        self.calls[stream_id] = call
        if self.server is not None:
            self.server.call_started(self)
        if http_method != b"POST":
            shown = (http_method or b"").decode("ascii", "replace")
            call.refuse_http(
                405, GrpcError(StatusCode.INTERNAL, f"method {shown} not allowed: gRPC uses POST")
            )
            return
        if content_type is None or not is_grpc_content_type(content_type):
            shown = (content_type or b"").decode("ascii", "replace")
            call.refuse_http(
                415,
                GrpcError(
                    StatusCode.INVALID_ARGUMENT,
                    f"content-type {shown!r} is not gRPC (application/grpc or application/grpc+proto)",
                ),
            )
            return
        if method is None:
            call.finish(GrpcError(StatusCode.UNIMPLEMENTED, f"unknown method {text_path}"))
            return
        seconds: float | None = None
        try:
            if timeout is not None:
                seconds = parse_timeout(timeout)
            metadata = decode_metadata(event.headers or ())
        except ValueError as e:
            call.finish(GrpcError(StatusCode.INTERNAL, str(e)))
            return
        now = self.clock.seconds()
        deadline = None if seconds is None else now + seconds
        context = CallContext(
            method=text_path,
            peer=self.peer,
            connection_id=self.connection_id,
            stream_id=stream_id,
            metadata=metadata,
            timeout=seconds,
            deadline=deadline,
        )
        call.context = context
        call.start(deadline)
        if method.requires_auth:
            self._authenticate(call, context)

    def _authenticate(self, call: BridgeStream, context: CallContext) -> None:
        authenticator = self.authenticator
        if authenticator is None:
            checked: Deferred[str] = defer.fail(
                NotAuthenticated("this server has no caller authentication configured")
            )
        else:
            checked = defer.maybeDeferred(authenticator.authenticate, context)

        def refused(failure: Failure) -> None:
            error = failure.value
            if not isinstance(error, AuthenticationError):
                self.log.failure(
                    "Authenticator failed on {connection_id}", failure, connection_id=self.connection_id
                )
                message = "authentication could not be completed"
            else:
                message = error.message
            call.finish(GrpcError(StatusCode.UNAUTHENTICATED, message))
            self.write_out()

        checked.addCallbacks(call.authorized, refused)

    def _data_received(self, event: h2.events.DataReceived) -> None:
        call = self.calls.get(event.stream_id)
        if call is None:
            # A call already answered or refused: give the window back.
            self.acknowledge(event.stream_id, event.flow_controlled_length)
            return
        call.data_received(event.data, event.flow_controlled_length)

    def _stream_ended(self, event: h2.events.StreamEnded) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None:
            call.remote_end()
            self._forget_if_done(call)

    def _stream_reset(self, event: h2.events.StreamReset) -> None:
        call = self.calls.pop(event.stream_id, None)
        self._waiting.pop(event.stream_id, None)
        self._touched.pop(event.stream_id, None)
        if call is not None:
            if self.server is not None:
                self.server.call_reset(self)
            call.reset_received(event.error_code)
            self._maybe_closed()
        # Resets h2 sent for the client's stream errors count too: a client
        # must not provoke them without limit either ("MadeYouReset").
        self._spend_reset_token()

    def _spend_reset_token(self) -> None:
        # Token bucket: refill for the time elapsed (clamped, the clock may
        # step back), then spend one.  An empty bucket is a Rapid Reset flood.
        now = self.clock.seconds()
        elapsed = max(0.0, now - self._reset_stamp)
        self._reset_stamp = now
        self._reset_tokens = min(
            float(self.config.reset_burst), self._reset_tokens + elapsed * self.config.reset_rate
        )
        if self._reset_tokens < 1:
            self.log.warn(
                "Too many stream resets from {peer} on {connection_id}; closing the connection",
                peer=self.peer,
                connection_id=self.connection_id,
            )
            self._terminate(ConnectionLost("too many stream resets"), h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        else:
            self._reset_tokens -= 1

    def _window_updated(self, event: h2.events.WindowUpdated) -> None:
        waiting = self._waiting
        if not waiting:
            return  # the common case: grpcio's client sends two with every message
        if event.stream_id:
            call = waiting.get(event.stream_id)
            if call is not None:
                self.pump(call)
        else:
            self._pump_waiting()

    def _settings_changed(self, event: h2.events.RemoteSettingsChanged) -> None:
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._pump_waiting()

    def _connection_terminated(self, event: h2.events.ConnectionTerminated) -> None:
        # The client sent GOAWAY: h2 allows nothing more to be sent, so every
        # call ends here.
        self.log.info(
            "Client {peer} closed {connection_id} with GOAWAY (error code {code})",
            peer=self.peer,
            connection_id=self.connection_id,
            code=int(event.error_code) if event.error_code is not None else None,
        )
        self._terminate(ConnectionLost("the client closed the connection (GOAWAY)"), send_goaway=False)

    def _ping_acknowledged(self, event: h2.events.PingAckReceived) -> None:
        if event.ping_data == SHUTDOWN_PING and self._draining and self._goaway_last is None:
            self._final_goaway()

    # -- what calls use ------------------------------------------------------------------

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Give ``size`` consumed bytes of ``stream_id`` back to the client's windows."""
        if size and not self._lost:
            self.h2.acknowledge_received_data(size, stream_id)

    def call_finished(self, call: BridgeStream) -> None:
        """``call`` has its status (or was reset)."""
        if self.server is not None:
            self.server.call_ended(self, call.status)

    def pump(self, call: BridgeStream) -> None:
        """Hand what ``call`` queued to HTTP/2, as far as windows and the transport allow."""
        if self._lost:
            return
        if self._write_paused:
            self._waiting[call.stream_id] = call
            return
        waiters: list[Deferred[None]] = []
        self._send(call, waiters, None)
        self.write_out()
        for waiter in waiters:
            waiter.callback(None)

    def send_now(self, call: BridgeStream, data: bytes) -> bool:
        """
        The fast path of a message: hand ``data`` to HTTP/2 at once if nothing
        of ``call`` waits and the windows allow it all; whether it was.
        """
        if self._lost or self._write_paused or call.outbox:
            return False
        try:
            # h2 checks the window and the frame size itself, before changing anything.
            self.h2.send_data(call.stream_id, data)
        except (
            h2.exceptions.FlowControlError,
            h2.exceptions.FrameTooLargeError,
            h2.exceptions.StreamClosedError,
        ):
            return False
        if not self._receiving:
            self.write_out()
        return True

    def write_out(self) -> None:
        """Write what ``h2`` has produced to the transport (at the end of a read if inside one)."""
        if self._receiving or self._lost:
            return
        data = self.h2.data_to_send()
        if not data:
            return
        if self._write_paused:
            # Only control frames are produced while paused (calls wait in
            # their queues): a client that sends PINGs or SETTINGS without
            # reading must not grow this buffer without bound.
            self._paused_bytes += len(data)
            if self._paused_bytes > self.config.max_buffered_control_bytes:
                self.log.warn(
                    "Client {peer} on {connection_id} does not read: {size} bytes of control frames"
                    " buffered; aborting the connection",
                    peer=self.peer,
                    connection_id=self.connection_id,
                    size=self._paused_bytes,
                )
                self._transport.abortConnection()
                self._gone("too many control frames buffered")
                return
        self._transport.write(data)

    # -- sending ---------------------------------------------------------------------------

    def _send(self, call: BridgeStream, waiters: list[Deferred[None]], quantum: int | None) -> int:
        """Move ``call``'s queue into h2; return the DATA bytes moved."""
        conn = self.h2
        stream_id = call.stream_id
        outbox = call.outbox
        moved = 0
        try:
            while outbox and not self._write_paused:
                kind, payload, waiter = outbox[0]
                if kind == DATA:
                    window = conn.local_flow_control_window(stream_id)
                    if quantum is not None:
                        window = min(window, quantum - moved)
                    if window <= 0:
                        self._waiting[stream_id] = call
                        return moved
                    size = len(payload)
                    frame_size = conn.max_outbound_frame_size
                    if size <= window and size <= frame_size:
                        conn.send_data(stream_id, payload)
                        moved += size
                    else:
                        offset = 0
                        while offset < size and window > 0:
                            take = min(size - offset, window, frame_size)
                            conn.send_data(stream_id, payload[offset : offset + take])
                            offset += take
                            window -= take
                            moved += take
                        if offset < size:
                            outbox[0] = (DATA, payload[offset:], waiter)
                            self._waiting[stream_id] = call
                            self.write_out()
                            return moved
                    outbox.popleft()
                    if waiter is not None:
                        waiters.append(waiter)
                elif kind == HEADERS:
                    headers, end_stream = payload
                    outbox.popleft()
                    conn.send_headers(stream_id, headers, end_stream=end_stream)
                else:
                    if self._receiving:
                        # Decided once the whole read is handled: a client
                        # END_STREAM later in it makes the reset needless.
                        self._touched[stream_id] = call
                        return moved
                    outbox.popleft()
                    if not call.remote_ended:
                        try:
                            conn.reset_stream(stream_id, payload)
                        except h2.exceptions.StreamClosedError:
                            pass  # closed meanwhile: nothing to stop
        except h2.exceptions.StreamClosedError:
            # Gone under us: the client reset it in this very read (its
            # StreamReset event is still to come).  Nothing queued can go:
            # every waiting send fails, saying so, and the call ends.
            self._waiting.pop(stream_id, None)
            self._touched.pop(stream_id, None)
            messages = sum(1 for item in outbox if item[0] == DATA)
            call.stream_closed(
                RequestCancelled(
                    f"the client closed stream {stream_id} before the call's queued output could be sent"
                    f" ({messages} {'message' if messages == 1 else 'messages'})"
                )
            )
            return moved
        if outbox:
            self._waiting[stream_id] = call
        else:
            self._waiting.pop(stream_id, None)
            self._forget_if_done(call)
        return moved

    def _pump_waiting(self) -> None:
        """Give every call with held-back output its turn, a quantum at a time."""
        if self._lost or not self._waiting:
            return
        waiters: list[Deferred[None]] = []
        progress = True
        while self._waiting and progress and not self._write_paused:
            progress = False
            for call in list(self._waiting.values()):
                if self._write_paused:
                    break
                before = len(call.outbox)
                moved = self._send(call, waiters, SEND_QUANTUM)
                if moved or len(call.outbox) != before:
                    progress = True
            self.write_out()
        self.write_out()
        for waiter in waiters:
            waiter.callback(None)

    def _forget_if_done(self, call: BridgeStream) -> None:
        if call.finished and not call.outbox and self.calls.get(call.stream_id) is call:
            del self.calls[call.stream_id]
            self._maybe_closed()

    def _reset(self, stream_id: int, code: int) -> None:
        try:
            self.h2.reset_stream(stream_id, code)
        except h2.exceptions.StreamClosedError:
            pass
        self.write_out()

    # -- ending ------------------------------------------------------------------------------

    def _terminate(self, error: ConnectionLost, code: int | None = None, *, send_goaway: bool = True) -> None:
        """End the connection now: GOAWAY (unless the client sent one), flush, close."""
        if self._lost:
            return
        if send_goaway and code is not None:
            try:
                self.h2.close_connection(error_code=code)
            except h2.exceptions.ProtocolError:
                pass
        self._receiving = False
        self._write_paused = False
        self.write_out()
        calls, self.calls = self.calls, {}
        self._waiting.clear()
        self._touched.clear()
        for call in calls.values():
            call.connection_lost(error)
        self._lose_connection()

    def _lose_connection(self) -> None:
        if self._lost or self._closing:
            return
        self._closing = True
        transport = self._transport
        transport.unregisterProducer()
        transport.loseConnection()
        self._abort_timer = self.clock.callLater(self.config.close_timeout, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        if not self._lost and self.transport is not None:
            self.log.warn(
                "Connection {connection_id} did not close within {timeout} s; aborting",
                connection_id=self.connection_id,
                timeout=self.config.close_timeout,
            )
            self._transport.abortConnection()

    def shutdown(self, grace: float | None = None) -> Deferred[None]:
        """
        Graceful close: GOAWAY, let the calls in flight finish within
        ``grace`` seconds (``shutdown_grace`` by default), end the rest with
        UNAVAILABLE, then close.  Fires once the connection is gone.
        """
        done = self.when_lost()
        if self._lost or self._draining or self._closing:
            return done
        self._draining = True
        grace = self.config.shutdown_grace if grace is None else grace
        # First GOAWAY: no new calls, but the ones the client already sent
        # (whose HEADERS may be in flight) are still accepted until the PING
        # comes back; then the final GOAWAY names the last one served.
        self._write_goaway(MAX_STREAM_ID)
        if grace <= 0:
            self._grace_over()
            return done
        self.h2.ping(SHUTDOWN_PING)
        self.write_out()
        self._shutdown_timers.append(
            self.clock.callLater(self.config.goaway_ping_timeout, self._final_goaway)
        )
        self._shutdown_timers.append(self.clock.callLater(grace, self._grace_over))
        self._maybe_closed()
        return done

    def _final_goaway(self) -> None:
        if self._lost or self._goaway_last is not None:
            return
        self._goaway_last = self.h2.highest_inbound_stream_id
        self._write_goaway(self._goaway_last)
        self.write_out()
        self._maybe_closed()

    def _write_goaway(self, last_stream_id: int) -> None:
        # Written directly: h2's close_connection() would forbid sending the
        # in-flight calls' responses.
        if self._lost:
            return
        pending = self.h2.data_to_send()
        frame = GoAwayFrame(stream_id=0, last_stream_id=last_stream_id, error_code=0)
        self._transport.write(pending + frame.serialize())

    def _grace_over(self) -> None:
        if self._lost:
            return
        if self._goaway_last is None:
            self._final_goaway()
        for call in list(self.calls.values()):
            if call.active:
                call._fail(GrpcError(StatusCode.UNAVAILABLE, "the server is shutting down"))
        self._write_paused = False
        self._pump_waiting()
        for call in list(self.calls.values()):
            call.connection_lost(ShuttingDown("the server is shutting down"))
        self.calls.clear()
        self._waiting.clear()
        self.write_out()
        self._lose_connection()

    def _maybe_closed(self) -> None:
        if self._goaway_last is not None and not self.calls and not self._lost:
            self.write_out()
            self._lose_connection()

    def when_lost(self) -> Deferred[None]:
        """Fires once the connection is gone."""
        if self._lost:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._lost_waiters.append(waiter)
        return waiter

    def abort(self) -> None:
        """Drop the connection at once."""
        if not self._lost and self.transport is not None:
            self._transport.abortConnection()

    def __repr__(self) -> str:
        return f"<BridgeProtocol {self.connection_id} {self.peer} calls={len(self.calls)}>"
