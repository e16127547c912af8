"""
:class:`BridgeStream`: one gRPC call on one HTTP/2 stream of a
:class:`~spear_twisted.bridge.protocol.BridgeProtocol`.

It decodes the call's messages, holds them for its handler, decides when
the bytes it received are acknowledged (HTTP/2 flow control), queues what the
handler sends, and ends the call with a status.  Streaming handlers get it
as their stream: :meth:`~BridgeStream.receive` (or
:meth:`~BridgeStream.set_receiver` with :meth:`~BridgeStream.pause_reading`)
to read, :meth:`~BridgeStream.send` to write, :meth:`~BridgeStream.finish` to
end.

Flow control: received bytes are acknowledged to the client once the
message they belong to has been taken by the handler, or while they are the
message being assembled (up to the size limit).  While more than
``receive_buffer_size`` bytes of whole messages wait for a handler that does
not read, nothing more is acknowledged and the client stops sending on this
call; other calls go on.  Acknowledgements go to HTTP/2 in batches of
``BridgeConfig.acknowledge_batch`` bytes (the rest once the client ends its
side or the call ends): small enough that the client never waits for them,
and h2's window bookkeeping is not run for every small message.

A send's Deferred fires once its bytes are handed to HTTP/2, which is when
the client's window allows: wait for it before the next send and a slow
client holds the handler back instead of memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from spear_twisted.bridge.framing import ACCEPTED_ENCODINGS, MessageDecoder, frame_message
from spear_twisted.bridge.headers import encode_grpc_message, encode_metadata
from spear_twisted.bridge.methods import CallContext, Method, MethodKind
from spear_twisted.bridge.status import GrpcError, Metadata, StatusCode, status_for_error
from spear_twisted.errors import ConnectionClosed, RequestCancelled, SpearError

if TYPE_CHECKING:
    from spear_twisted.bridge.config import BridgeConfig
    from spear_twisted.bridge.protocol import BridgeProtocol

# Kinds of what a call queues for its stream, in order.
DATA = 0
HEADERS = 1
RESET = 2

#: HTTP/2 error code NO_ERROR, sent in RST_STREAM to stop a client's upload
#: once its call is answered (RFC 9113 section 8.1).
NO_ERROR = 0

_RESPONSE_HEADERS = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", ACCEPTED_ENCODINGS.encode()),
]
_OK_TRAILERS = [(b"grpc-status", b"0")]

#: Called with each message a streaming handler reads, and its size in bytes.
MessageCallback = Callable[[Any, int], None]
#: Called once when the client's messages end: ``None`` for a half-close,
#: else the error that ended the call.
EndCallback = Callable[[SpearError | None], None]


class BridgeStream:
    """
    One call; for streaming methods, the handler's stream.

    Created by the protocol when a request's headers arrive; see the module
    docstring.
    """

    log = Logger()

    def __init__(
        self,
        connection: BridgeProtocol,
        stream_id: int,
        method: Method | None,
        context: CallContext | None,
        config: BridgeConfig,
        encoding: str | None = None,
        path: str = "",
    ) -> None:
        self.connection = connection
        self.stream_id = stream_id
        #: The request's ``:path``, as received.
        self.path = path
        self.method = method
        self.context = context
        self._decoder = MessageDecoder(config.max_receive_message_size, encoding)
        self._max_send = config.max_send_message_size
        self._buffer_limit = config.receive_buffer_size
        self._acknowledge_batch = config.acknowledge_batch
        self._unary = method is not None and method.kind is MethodKind.UNARY

        # receiving
        self._unacked = 0
        self._inbox: deque[tuple[Any, int]] = deque()
        self._inbox_bytes = 0
        self._receivers: deque[Deferred[Any]] = deque()
        self._on_message: MessageCallback | None = None
        self._on_end: EndCallback | None = None
        self._reading_paused = False
        self._request: bytes | None = None
        #: Whether the client has ended its side (sent END_STREAM).
        self.remote_ended = False
        self._on_end_called = False

        # the call
        self._authorized = method is not None and not method.requires_auth
        self._started = False
        self._work: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None
        #: Why the call ended early (client reset, connection lost), if it did.
        self.gone: SpearError | None = None
        self._done_waiters: list[Deferred[StatusCode]] = []

        # sending
        self.headers_sent = False
        #: Whether the call's status is queued (nothing more is sent).
        self.finished = False
        #: The status the call ended with, once finished.
        self.status: StatusCode | None = None
        #: What this call waits to hand to HTTP/2: ``(kind, payload, waiter)``.
        self.outbox: deque[tuple[int, Any, Deferred[None] | None]] = deque()

    # -- facts ------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether the call is still running (not finished, not reset, connected)."""
        return not self.finished and self.gone is None

    @property
    def held_bytes(self) -> int:
        """Bytes held for the handler: whole messages not taken yet, and the one being assembled."""
        return self._inbox_bytes + self._decoder.buffered

    @property
    def unacknowledged_bytes(self) -> int:
        """Bytes received on this call that the client has not been given window for yet."""
        return self._unacked

    @property
    def max_receive_message_size(self) -> int:
        """Largest message accepted from now on (a session may raise it once authenticated)."""
        return self._decoder.max_message_size

    @max_receive_message_size.setter
    def max_receive_message_size(self, size: int) -> None:
        if size < 0:
            raise ValueError("max_receive_message_size must not be negative")
        self._decoder.max_message_size = size

    def when_done(self) -> Deferred[StatusCode]:
        """Fires with the call's status once it is over (its status queued, or the call reset)."""
        if not self.active:
            return defer.succeed(self.status if self.status is not None else StatusCode.CANCELLED)
        waiter: Deferred[StatusCode] = Deferred()
        self._done_waiters.append(waiter)
        return waiter

    # -- the protocol's side: what arrived -------------------------------------------

    def start(self, deadline: float | None) -> None:
        """The headers were accepted; run the deadline and (once authorized) the handler."""
        if deadline is not None:
            delay = max(0.0, deadline - self.connection.clock.seconds())
            self._timer = self.connection.clock.callLater(delay, self._deadline_passed)
        if self._authorized:
            self._begin()

    def authorized(self, caller: str) -> None:
        """The caller authenticated as ``caller``: the call may go on."""
        if not self.active:
            return
        assert self.context is not None
        self.context = _with_caller(self.context, caller)
        self._authorized = True
        self._begin()

    def data_received(self, data: bytes, flow_controlled_length: int) -> None:
        """Bytes of the request arrived."""
        self._unacked += flow_controlled_length
        if not self.active:
            self._acknowledge()  # nobody reads them: give the window back at once
            return
        decoder = self._decoder
        messages = decoder.feed(data)
        for raw in messages:
            self._message_received(raw)
            if not self.active:
                break
        if decoder.error is not None and self.active:
            self._fail(decoder.error)
        if not self.active:
            self._acknowledge()
        elif self._inbox_bytes <= self._buffer_limit and self._unacked >= self._acknowledge_batch:
            self._acknowledge()

    def remote_end(self) -> None:
        """The client ended its side of the stream."""
        self.remote_ended = True
        if not self.active:
            return
        if self._inbox_bytes <= self._buffer_limit:
            self._acknowledge()  # no more data comes: nothing to gather a batch with
        error = self._decoder.end()
        if error is not None:
            self._fail(error)
            return
        if self._unary:
            if self._authorized:
                self._dispatch_unary()
        elif not self._inbox:
            self._deliver_end(None)

    def reset_received(self, error_code: int) -> None:
        """The client reset the stream: the call is cancelled."""
        self._end(RequestCancelled(f"the client cancelled the call (RST_STREAM error code {error_code})"))

    def connection_lost(self, error: SpearError) -> None:
        """The connection is gone."""
        self._end(error)

    def stream_closed(self, error: SpearError) -> None:
        """
        The stream closed while this call still had output queued: every
        queued send fails with ``error``, and the call ends with it.
        """
        self._end(error)

    # -- receiving --------------------------------------------------------------------

    def _message_received(self, raw: bytes) -> None:
        method = self.method
        assert method is not None
        if self._unary:
            if self._request is not None or self._work is not None:
                self._fail(GrpcError(StatusCode.INTERNAL, "more than one request message for a unary method"))
                return
            self._request = raw
            return
        try:
            message = method.request_type.FromString(raw)
        except ProtobufDecodeError as e:
            self._fail(_unparsable(method, e))
            return
        size = len(raw)
        if self._on_message is not None and not self._reading_paused and not self._inbox:
            self._on_message(message, size)
        elif self._receivers:
            self._receivers.popleft().callback(message)
        else:
            self._inbox.append((message, size))
            self._inbox_bytes += size

    def receive(self) -> Deferred[Any]:
        """
        The next message from the client: a Deferred firing with it, with
        ``None`` once the client has ended its side, or failing with why the
        call ended (``RequestCancelled``, ``ConnectionLost``,
        ``ConnectionClosed`` once the call has finished).
        """
        if self.gone is not None:
            return defer.fail(self.gone)
        if self.finished:
            return defer.fail(self._finished_error())
        if self._inbox:
            message, size = self._inbox.popleft()
            self._taken(size)
            return defer.succeed(message)
        if self.remote_ended:
            return defer.succeed(None)
        waiter: Deferred[Any] = Deferred(self._forget_receiver)
        self._receivers.append(waiter)
        return waiter

    def set_receiver(self, on_message: MessageCallback, on_end: EndCallback) -> None:
        """
        Push mode: call ``on_message(message, size)`` for every message (those
        already held first) while reading is not paused, then ``on_end(None)``
        when the client ends its side, or ``on_end(error)`` if the call ends
        otherwise.
        """
        self._on_message = on_message
        self._on_end = on_end
        self._drain()
        if self.gone is not None:
            self._deliver_end(self.gone)
        elif self.finished:
            self._deliver_end(self._finished_error())

    def pause_reading(self) -> None:
        """Push mode: hold messages (and, past the buffer, the client) until :meth:`resume_reading`."""
        self._reading_paused = True

    def resume_reading(self) -> None:
        """Push mode: deliver the held messages and go on."""
        if self._reading_paused:
            self._reading_paused = False
            self._drain()

    def _drain(self) -> None:
        on_message = self._on_message
        while self._inbox and on_message is not None and not self._reading_paused:
            message, size = self._inbox.popleft()
            self._taken(size)
            on_message(message, size)
        if not self._inbox and self.remote_ended and self.active:
            self._deliver_end(None)

    def _taken(self, size: int) -> None:
        self._inbox_bytes -= size
        unacked = self._unacked
        if (
            unacked
            and self._inbox_bytes <= self._buffer_limit
            and (unacked >= self._acknowledge_batch or self.remote_ended)
        ):
            self._acknowledge()
            self.connection.write_out()

    def _acknowledge(self) -> None:
        if self._unacked:
            unacked, self._unacked = self._unacked, 0
            self.connection.acknowledge(self.stream_id, unacked)

    def _deliver_end(self, error: SpearError | None) -> None:
        """The client's messages are over: tell whoever waits for the next one."""
        receivers, self._receivers = self._receivers, deque()
        for waiter in receivers:
            if error is None:
                waiter.callback(None)
            else:
                waiter.errback(error)
        if self._on_end is not None and not self._on_end_called:
            self._on_end_called = True
            self._on_end(error)

    def _forget_receiver(self, waiter: Deferred[Any]) -> None:
        try:
            self._receivers.remove(waiter)
        except ValueError:
            pass

    # -- running the handler ------------------------------------------------------------

    def _begin(self) -> None:
        if self._started or not self.active:
            return
        self._started = True
        if self._unary:
            if self.remote_ended:
                self._dispatch_unary()
            return
        assert self.method is not None and self.context is not None
        work = defer.maybeDeferred(self.method.handler, self, self.context)
        self._work = work
        work.addCallbacks(self._stream_handler_done, self._handler_failed)

    def _dispatch_unary(self) -> None:
        method = self.method
        assert method is not None and self.context is not None
        if self._work is not None or not self.active:
            return
        raw = self._request
        if raw is None:
            self.finish(GrpcError(StatusCode.INTERNAL, "the client sent no request message"))
            return
        self._request = None
        try:
            request = method.request_type.FromString(raw)
        except ProtobufDecodeError as e:
            self.finish(_unparsable(method, e))
            return
        work = defer.maybeDeferred(method.handler, request, self.context)
        self._work = work
        work.addCallbacks(self._unary_result, self._handler_failed)

    def _unary_result(self, response: Message) -> None:
        self._work = None
        if not self.active:
            return
        method = self.method
        assert method is not None
        if not isinstance(response, method.response_type):
            self.log.error(
                "Handler of {method} returned {kind}, not {expected}",
                method=method.path,
                kind=type(response).__name__,
                expected=method.response_type.__name__,
            )
            self.finish(status_for_error(TypeError("bad response type")))
            return
        data = response.SerializeToString()
        if len(data) > self._max_send:
            self.finish(_too_large_to_send(len(data), self._max_send))
            return
        self._queue_response_headers()
        self.outbox.append((DATA, frame_message(data), None))
        self.finish()

    def _stream_handler_done(self, _result: object) -> None:
        self._work = None
        self.finish()

    def _handler_failed(self, failure: Failure) -> None:
        self._work = None
        if not self.active:
            return  # cancelled because the call ended: nothing to report
        error = failure.value
        if isinstance(error, CancelledError):
            error = GrpcError(StatusCode.CANCELLED, "the server cancelled the call")
        elif not isinstance(error, (GrpcError, SpearError)):
            self.log.failure(
                "Handler of {method} failed on {connection_id} stream {stream_id}",
                failure,
                method=self.method.path if self.method else None,
                connection_id=self.connection.connection_id,
                stream_id=self.stream_id,
            )
        self.finish(status_for_error(error))  # type: ignore[arg-type]

    def _deadline_passed(self) -> None:
        self._timer = None
        if not self.active:
            return
        assert self.context is not None
        timeout = self.context.timeout
        self.log.info(
            "Call {method} on {connection_id} stream {stream_id} passed its deadline ({timeout} s)",
            method=self.context.method,
            connection_id=self.connection.connection_id,
            stream_id=self.stream_id,
            timeout=timeout,
        )
        self._fail(GrpcError(StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded ({timeout:g} s)"))

    # -- sending ------------------------------------------------------------------------

    def send_initial_metadata(self, metadata: Metadata = ()) -> None:
        """Send the response headers now, with ``metadata``; only before the first message."""
        if self.headers_sent:
            raise ValueError("the response headers are already sent")
        if self.active:
            self._queue_response_headers(metadata)
            self.connection.pump(self)

    def send(self, message: Message) -> Deferred[None]:
        """
        Send ``message`` to the client.

        :return: a Deferred that fires once the message is handed to HTTP/2
            (later while the client's window is closed), or fails when the
            call is over.
        """
        return self.send_serialized(message.SerializeToString())

    def send_serialized(self, data: bytes) -> Deferred[None]:
        """:meth:`send` of a message already serialized to ``data``."""
        if not self.active:
            return defer.fail(self.gone or self._finished_error())
        if len(data) > self._max_send:
            error = _too_large_to_send(len(data), self._max_send)
            self.finish(error)
            return defer.fail(error)
        if not self.headers_sent:
            self._queue_response_headers()
            self.connection.pump(self)
        frame = frame_message(data)
        if self.connection.send_now(self, frame):
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self.outbox.append((DATA, frame, waiter))
        self.connection.pump(self)
        return waiter

    def finish(self, error: GrpcError | None = None, metadata: Metadata = ()) -> None:
        """
        End the call: with OK, or with ``error``'s status and message.

        Before any response headers this is a headers-only (Trailers-Only)
        reply.  If the client is still sending, its stream is then reset with
        NO_ERROR so that it stops.  Idempotent.
        """
        self._finish(error, metadata, cancel_work=False)

    def _fail(self, error: GrpcError) -> None:
        """End the call with ``error`` from outside the handler, and cancel the handler's work."""
        self._finish(error, (), cancel_work=True)

    def _finish(self, error: GrpcError | None, metadata: Metadata, *, cancel_work: bool) -> None:
        if not self.active:
            return
        self.finished = True
        self._cancel_timer()
        status = StatusCode.OK if error is None else error.status
        self.status = status
        if error is not None:
            self._log_failure(error)
        if error is None and not metadata:
            trailers = _OK_TRAILERS
        else:
            trailers = [(b"grpc-status", b"%d" % status)]
            if error is not None and error.message:
                trailers.append((b"grpc-message", encode_grpc_message(error.message)))
            try:
                trailers += encode_metadata([*metadata, *(error.metadata if error else ())])
            except ValueError as e:
                self.log.error("Dropping invalid trailing metadata: {error}", error=str(e))
        if self.headers_sent:
            self.outbox.append((HEADERS, (trailers, True), None))
        else:
            self.headers_sent = True
            self.outbox.append((HEADERS, ([*_RESPONSE_HEADERS, *trailers], True), None))
        # Sent only if the client has not ended its side by then.
        self.outbox.append((RESET, NO_ERROR, None))
        if cancel_work:
            # Before anyone hears of the end: the work is over when they do.
            self._cancel_work()
        self._drop_inbox()
        if not self._unary:
            self._deliver_end(self._finished_error())
        self.connection.call_finished(self)
        self._fire_done()
        self.connection.pump(self)

    def _finished_error(self) -> ConnectionClosed:
        name = self.status.name if self.status is not None else "?"
        return ConnectionClosed(f"the call has finished ({name})")

    def refuse_http(self, http_status: int, error: GrpcError) -> None:
        """Answer a request that is not gRPC: HTTP ``http_status``, and ``error`` for gRPC clients."""
        self.finished = True
        self.status = error.status
        self._log_failure(error, http_status)
        headers = [
            (b":status", b"%d" % http_status),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", b"%d" % error.status),
            (b"grpc-message", encode_grpc_message(error.message)),
        ]
        self.headers_sent = True
        self.outbox.append((HEADERS, (headers, True), None))
        self.outbox.append((RESET, NO_ERROR, None))
        self.connection.call_finished(self)
        self.connection.pump(self)

    def _log_failure(self, error: GrpcError, http_status: int = 200) -> None:
        self.log.info(
            "Call {path} on {connection_id} stream {stream_id} from {peer} ended with {status}: {reason}",
            path=self.path,
            connection_id=self.connection.connection_id,
            stream_id=self.stream_id,
            peer=self.connection.peer,
            status=error.status.name,
            status_code=int(error.status),
            http_status=http_status,
            reason=error.message,
        )

    def _queue_response_headers(self, metadata: Metadata = ()) -> None:
        self.headers_sent = True
        headers = _RESPONSE_HEADERS
        if metadata:
            headers = [*headers, *encode_metadata(metadata)]
        self.outbox.append((HEADERS, (headers, False), None))

    # -- ending -----------------------------------------------------------------------------

    def _end(self, error: SpearError) -> None:
        """The stream is gone under the call (reset, connection lost): stop everything."""
        if self.gone is not None:
            return
        was_active = self.active
        self.gone = error
        self._cancel_timer()
        self._cancel_work()
        self._drop_inbox()
        outbox, self.outbox = self.outbox, deque()
        for _kind, _payload, waiter in outbox:
            if waiter is not None:
                waiter.errback(error)
        self._deliver_end(error)
        if was_active:
            self.status = StatusCode.CANCELLED
            self.connection.call_finished(self)
        self._fire_done()

    def _drop_inbox(self) -> None:
        """Nobody will read what is held: free it and give its window back."""
        self._inbox.clear()
        self._inbox_bytes = 0
        self._acknowledge()

    def _cancel_work(self) -> None:
        work, self._work = self._work, None
        if work is not None and not work.called:
            work.cancel()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _fire_done(self) -> None:
        waiters, self._done_waiters = self._done_waiters, []
        status = self.status if self.status is not None else StatusCode.CANCELLED
        for waiter in waiters:
            waiter.callback(status)

    def __repr__(self) -> str:
        return f"<BridgeStream {self.connection.connection_id}/{self.stream_id} {self.path}>"


def _with_caller(context: CallContext, caller: str) -> CallContext:
    return attrs.evolve(context, caller=caller)


def _unparsable(method: Method, error: Exception) -> GrpcError:
    return GrpcError(
        StatusCode.INTERNAL,
        f"the request is not a valid {method.request_type.DESCRIPTOR.full_name}: {error}",
    )


def _too_large_to_send(size: int, limit: int) -> GrpcError:
    return GrpcError(
        StatusCode.RESOURCE_EXHAUSTED,
        f"response message of {size} bytes exceeds the server's send limit of {limit} bytes",
    )
