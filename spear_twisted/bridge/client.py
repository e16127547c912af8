"""
:class:`ConnectCall`: the client side of one ``Connect`` call, on an HTTP/2
connection of its own, driven by the sans-IO ``h2`` library in the reactor.

It is what a Twisted agent dials the gRPC bridge with: an agent-side
:class:`~spear_twisted.bridge.channel.GrpcChannel`, and the Twisted flavour of
the agent SDK.  It speaks gRPC as any client does (h2c with prior knowledge,
or h2 over TLS with ALPN ``h2``; ``application/grpc``; 5-byte message
prefixes; ``grpc-status`` trailers), so it works against any gRPC server of
``spear.v1.SpearBridge``, not only ours.

As a stream it offers what :class:`~spear_twisted.bridge.session.EnvelopeStream`
lists, like the server's :class:`~spear_twisted.bridge.call.BridgeStream`:

* :meth:`~ConnectCall.send` fires once the message is handed to HTTP/2,
  which waits while the server's window is closed (back-pressure);
* :meth:`~ConnectCall.set_receiver` with
  :meth:`~ConnectCall.pause_reading`: while reading is paused, messages are
  held and their bytes not acknowledged, so the server's window closes;
* :meth:`~ConnectCall.finish` ends the client's side in order (the call is
  over when the server's status arrives), or cancels the call with an
  error (``RST_STREAM``, then the connection closes).

The end is reported once, through ``on_end``: ``None`` when the server
ended the call with ``OK``, else a :class:`~spear_twisted.bridge.status.GrpcError`
with the server's status (or ``UNAVAILABLE`` when the connection was lost).

A server's graceful ``GOAWAY`` that still covers the call lets it run to its
end, as RFC 9113 says.  ``h2`` itself would accept nothing more on the
connection after a ``GOAWAY``: the client reads those frames itself and
does not hand them to ``h2``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import h2.config
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from google.protobuf.message import DecodeError as ProtobufDecodeError
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spear_twisted._version import __version__
from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.contract import CONNECT_PATH
from spear_twisted.bridge.framing import MessageDecoder, frame_message
from spear_twisted.bridge.h2connection import BridgeH2Connection
from spear_twisted.bridge.headers import decode_grpc_message, is_grpc_content_type
from spear_twisted.bridge.status import GrpcError, StatusCode

KiB = 1024
MiB = 1024 * KiB

#: ``user-agent`` of the client's requests.
USER_AGENT = f"spear_twisted-connect/{__version__}".encode()

# HTTP statuses of a reply that is not gRPC, as gRPC statuses (the gRPC
# over HTTP/2 specification's table).
_HTTP_STATUS = {
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}

# HTTP/2 errors in a reset of the call, as gRPC statuses.
_RESET_STATUS = {
    h2.errors.ErrorCodes.REFUSED_STREAM: StatusCode.UNAVAILABLE,
    h2.errors.ErrorCodes.CANCEL: StatusCode.CANCELLED,
    h2.errors.ErrorCodes.ENHANCE_YOUR_CALM: StatusCode.RESOURCE_EXHAUSTED,
    h2.errors.ErrorCodes.INADEQUATE_SECURITY: StatusCode.PERMISSION_DENIED,
}

# What waits in the outbox: a frame to send, or the end of the client's side.
_END = None

# HTTP/2 frame header length, and the GOAWAY frame type (RFC 9113 section 6.8).
_FRAME_HEADER = 9
_GOAWAY = 0x7


@implementer(IPushProducer)
class ConnectCall(Protocol):
    """
    One ``Connect`` call; connect it with an endpoint (``connectProtocol``):
    the call starts as soon as the connection is made.

    :param clock: the reactor's time (the close timeout).
    :param authority: ``host:port`` of the server (the ``:authority`` header).
    :param scheme: ``http``, or ``https`` over TLS.
    :param max_receive_message_size: the largest message accepted from the server.
    :param max_send_message_size: the largest message :meth:`send` accepts.
    :param stream_window: HTTP/2 receive window of the call.
    :param connection_window: HTTP/2 receive window of the connection.
    :param close_timeout: how long closing may take before the connection is aborted.
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        authority: str,
        scheme: str = "http",
        path: str = CONNECT_PATH,
        max_receive_message_size: int = 4 * MiB,
        max_send_message_size: int | None = None,
        stream_window: int = 1 * MiB,
        connection_window: int = 16 * MiB,
        close_timeout: float = 10.0,
    ) -> None:
        self.clock = clock
        self.authority = authority
        self.scheme = scheme
        self.path = path
        self.max_send_message_size = max_send_message_size
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.close_timeout = close_timeout
        self.h2 = BridgeH2Connection(
            config=h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.stream_id = 0
        self._decoder = MessageDecoder(max_receive_message_size)
        # sending
        self._outbox: deque[tuple[bytes | None, Deferred[None] | None]] = deque()
        self._write_paused = False
        self._half_closed = False
        # receiving
        self._inbox: deque[tuple[pb.Envelope, int]] = deque()
        self._unacked = 0
        self._reading_paused = False
        self._on_message: Any = None
        self._on_end: Any = None
        self._receiving = False
        # the call's end
        self._headers_seen = False
        self._status: StatusCode | None = None
        self._status_message = ""
        self._remote_ended = False
        #: Why the call ended (``None`` while it runs or after ``OK``).
        self.error: GrpcError | None = None
        #: Whether the call is over (its end may still wait for held messages).
        self.ended = False
        self._end_delivered = False
        self._lost = False
        self._close_timer: IDelayedCall | None = None
        # Frame boundaries of what the server sent, to take its GOAWAY frames out.
        self._frame_header = bytearray()
        self._frame_left = 0
        self._goaway: bytearray | None = None
        #: The last stream id of the server's latest GOAWAY (it takes no new
        #: calls), once one has come.
        self.goaway_last_stream_id: int | None = None
        self._lost_waiters: list[Deferred[None]] = []

    # -- facts ------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether the call is still running."""
        return not self.ended

    @property
    def status(self) -> StatusCode | None:
        """The server's status, once it has sent it."""
        return self._status

    @property
    def max_receive_message_size(self) -> int:
        """Largest message accepted from the server from now on."""
        return self._decoder.max_message_size

    @max_receive_message_size.setter
    def max_receive_message_size(self, size: int) -> None:
        if size < 0:
            raise ValueError("max_receive_message_size must not be negative")
        self._decoder.max_message_size = size

    def when_lost(self) -> Deferred[None]:
        """Fires once the HTTP/2 connection is gone."""
        if self._lost:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._lost_waiters.append(waiter)
        return waiter

    # -- Twisted callbacks ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.stream_window,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.h2.initiate_connection()
        extra = self.connection_window - 65_535
        if extra > 0:
            self.h2.increment_flow_control_window(extra)
        self.stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(
            self.stream_id,
            [
                (b":method", b"POST"),
                (b":scheme", self.scheme.encode("ascii")),
                (b":path", self.path.encode("ascii")),
                (b":authority", self.authority.encode("ascii")),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"grpc-accept-encoding", b"identity"),
                (b"user-agent", USER_AGENT),
            ],
        )
        transport.registerProducer(self, True)
        self._pump()
        self._write_out()

    def dataReceived(self, data: bytes) -> None:
        if self._lost:
            return
        data, goaways = self._without_goaway(data)
        self._receiving = True
        try:
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                self._end(
                    GrpcError(StatusCode.INTERNAL, f"HTTP/2 protocol error: {str(e) or type(e).__name__}")
                )
                self._close()
                return
            for event in events:
                self._event(event)
                if self._lost:
                    return
            for payload in goaways:
                self._goaway_received(payload)
        finally:
            self._receiving = False
        self._drain()
        self._acknowledge()
        self._pump()
        self._write_out()

    def _without_goaway(self, data: bytes) -> tuple[bytes, list[bytes]]:
        """
        ``data`` without its GOAWAY frames, and their payloads, following
        frame boundaries across reads (a header cut by the end of a read is
        held until its type is known).
        """
        position, size = 0, len(data)
        kept: list[bytes] = []
        goaways: list[bytes] = []
        changed = bool(self._frame_header)
        while position < size:
            if self._frame_left:
                take = min(self._frame_left, size - position)
                if self._goaway is not None:
                    self._goaway += data[position : position + take]
                else:
                    kept.append(data[position : position + take])
                position += take
                self._frame_left -= take
            else:
                header = self._frame_header
                need = _FRAME_HEADER - len(header)
                header += data[position : position + need]
                position += need
                if len(header) < _FRAME_HEADER:
                    changed = True
                    break
                self._frame_left = int.from_bytes(header[:3], "big")
                if header[3] == _GOAWAY:
                    self._goaway = bytearray()
                    changed = True
                else:
                    kept.append(bytes(header))
                header.clear()
            if not self._frame_left and self._goaway is not None:
                goaways.append(bytes(self._goaway))
                self._goaway = None
        if not changed:
            return data, goaways  # the common case: whole frames, no GOAWAY
        return b"".join(kept), goaways

    def _goaway_received(self, payload: bytes) -> None:
        """The server will take no new calls; this one goes on if the GOAWAY covers it."""
        last_stream_id = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF if len(payload) >= 8 else 0
        code = (
            int.from_bytes(payload[4:8], "big") if len(payload) >= 8 else h2.errors.ErrorCodes.PROTOCOL_ERROR
        )
        self.goaway_last_stream_id = last_stream_id
        if self.ended or (code == h2.errors.ErrorCodes.NO_ERROR and last_stream_id >= self.stream_id):
            return
        self._end(
            GrpcError(StatusCode.UNAVAILABLE, f"the server closed the connection (GOAWAY, error code {code})")
        )
        self._close()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._lost:
            return
        self._lost = True
        timer, self._close_timer = self._close_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._end(GrpcError(StatusCode.UNAVAILABLE, f"connection lost: {reason.getErrorMessage()}"))
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- IPushProducer: the transport's write buffer ---------------------------------------------

    def pauseProducing(self) -> None:
        self._write_paused = True

    def resumeProducing(self) -> None:
        self._write_paused = False
        self._pump()
        self._write_out()

    def stopProducing(self) -> None:
        self._write_paused = True

    # -- h2 events ------------------------------------------------------------------------------------

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._data_received(event)
        elif isinstance(event, h2.events.ResponseReceived):
            self._headers_received(event.headers or ())
        elif isinstance(event, h2.events.TrailersReceived):
            self._trailers_received(event.headers or ())
        elif isinstance(event, h2.events.StreamEnded):
            self._remote_end()
        elif isinstance(event, h2.events.StreamReset):
            if not self._remote_ended:
                code = event.error_code
                status = _RESET_STATUS.get(code, StatusCode.INTERNAL)  # type: ignore[call-overload]
                self._end(GrpcError(status, f"the server reset the call (HTTP/2 error code {int(code)})"))
            self._close()

    def _headers_received(self, headers: Any) -> None:
        self._headers_seen = True
        http_status = content_type = None
        for name, value in headers:
            if name == b":status":
                http_status = value
            elif name == b"content-type":
                content_type = value
        self._read_status(headers)
        if http_status != b"200":
            code = int(http_status) if http_status is not None and http_status.isdigit() else 0
            message = f"the server answered HTTP {code}"
            if self._status_message:
                message += f": {self._status_message}"
            self._refuse(GrpcError(_HTTP_STATUS.get(code, StatusCode.UNKNOWN), message))
        elif content_type is None or not is_grpc_content_type(content_type):
            shown = (content_type or b"").decode("ascii", "replace")
            self._refuse(GrpcError(StatusCode.UNKNOWN, f"the server answered with content-type {shown!r}"))

    def _trailers_received(self, headers: Any) -> None:
        self._read_status(headers)

    def _read_status(self, headers: Any) -> None:
        for name, value in headers:
            if name == b"grpc-status":
                try:
                    self._status = StatusCode(int(value))
                except ValueError:
                    self._status = StatusCode.UNKNOWN
            elif name == b"grpc-message":
                self._status_message = decode_grpc_message(value)

    def _data_received(self, event: h2.events.DataReceived) -> None:
        self._unacked += event.flow_controlled_length
        if self.ended:
            return
        decoder = self._decoder
        for raw in decoder.feed(event.data):
            try:
                envelope = pb.Envelope.FromString(raw)
            except ProtobufDecodeError as e:
                self._refuse(GrpcError(StatusCode.INTERNAL, f"the server sent an invalid Envelope: {e}"))
                return
            size = len(raw)
            if self._on_message is not None and not self._reading_paused and not self._inbox:
                self._on_message(envelope, size)
            else:
                self._inbox.append((envelope, size))
            if self.ended:
                return
        if decoder.error is not None:
            self._refuse(decoder.error)

    def _remote_end(self) -> None:
        self._remote_ended = True
        if self.ended:
            return
        truncated = self._decoder.end()
        if truncated is not None:
            self._end(truncated)
        elif not self._headers_seen or self._status is None:
            self._end(GrpcError(StatusCode.INTERNAL, "the server ended the call without a grpc-status"))
        elif self._status is StatusCode.OK:
            self._end(None)
        else:
            self._end(GrpcError(self._status, self._status_message))
        self._close()

    # -- the stream -----------------------------------------------------------------------------------

    def set_receiver(self, on_message: Any, on_end: Any) -> None:
        """
        Call ``on_message(envelope, size)`` for every message (those held
        first) while reading is not paused, then ``on_end(error)`` once:
        ``None`` when the server ended the call with ``OK``.
        """
        self._on_message = on_message
        self._on_end = on_end
        self._drained()

    def pause_reading(self) -> None:
        """Hold messages (and, past the window, the server) until :meth:`resume_reading`."""
        self._reading_paused = True

    def resume_reading(self) -> None:
        """Deliver the held messages and go on."""
        if self._reading_paused:
            self._reading_paused = False
            self._drained()

    def _drain(self) -> None:
        """Deliver what is held (while reading is not paused), then the end once everything is."""
        while self._inbox and self._on_message is not None and not self._reading_paused:
            envelope, size = self._inbox.popleft()
            self._on_message(envelope, size)
        if self.ended and not self._inbox:
            self._deliver_end()

    def _drained(self) -> None:
        """Deliver what is held and, outside a read, give the window for it back now."""
        self._drain()
        if not self._receiving:
            self._acknowledge()
            self._write_out()

    def _acknowledge(self) -> None:
        if self._unacked and not self._lost and (self.ended or not (self._inbox or self._reading_paused)):
            unacked, self._unacked = self._unacked, 0
            try:
                self.h2.acknowledge_received_data(unacked, self.stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass  # the call is over: nothing to give window for

    def send(self, message: pb.Envelope) -> Deferred[None]:
        """
        Send ``message`` to the server.

        :return: a Deferred that fires once the message is handed to HTTP/2
            (later while the server's window is closed), or fails with a
            ``GrpcError`` when the call is over or its side ended.  A message
            over ``max_send_message_size`` fails with ``RESOURCE_EXHAUSTED``
            and cancels the call with that error.
        """
        return self.send_serialized(message.SerializeToString())

    def send_serialized(self, data: bytes) -> Deferred[None]:
        """:meth:`send` of a message already serialized to ``data``."""
        if self.ended or self._half_closed:
            return defer.fail(
                self.error or GrpcError(StatusCode.CANCELLED, "the call's sending side is closed")
            )
        limit = self.max_send_message_size
        if limit is not None and len(data) > limit:
            # The call ends with it, as the server's side does: a message that
            # cannot be sent must not leave the peer waiting for it.
            error = GrpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"message of {len(data)} bytes exceeds the send limit of {limit} bytes",
            )
            self._refuse(error)
            return defer.fail(error)
        frame = frame_message(data)
        if not self._outbox and not self._write_paused and self.transport is not None:
            try:
                # h2 checks the window and the frame size itself, before changing anything.
                self.h2.send_data(self.stream_id, frame)
            except (h2.exceptions.FlowControlError, h2.exceptions.FrameTooLargeError):
                pass
            except h2.exceptions.StreamClosedError:
                # Closed by what h2 has read and the call has not been told of yet.
                return defer.fail(GrpcError(StatusCode.UNAVAILABLE, "the call is over"))
            else:
                self._write_out()
                return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._outbox.append((frame, waiter))
        self._pump()
        self._write_out()
        return waiter

    def finish(self, error: GrpcError | None = None) -> None:
        """
        End the client's side: in order after what was sent (the call is
        over when the server's status arrives), or, with ``error``, cancel
        the call at once (``RST_STREAM``) and close the connection.
        """
        if self.ended:
            return
        if error is None:
            if not self._half_closed:
                self._half_closed = True
                self._outbox.append((_END, None))
                self._pump()
                self._write_out()
            return
        if self.transport is not None and not self._lost:
            try:
                self.h2.reset_stream(self.stream_id, h2.errors.ErrorCodes.CANCEL)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
        self._end(error)
        self._close()

    def abort(self) -> None:
        """Drop the connection at once."""
        if not self._lost and self.transport is not None:
            transport: Any = self.transport
            transport.abortConnection()

    # -- sending --------------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Move the outbox into h2, as far as the windows and the transport allow."""
        if self._lost or self.transport is None:
            return
        conn = self.h2
        outbox = self._outbox
        fired: list[Deferred[None]] = []
        try:
            while outbox and not self._write_paused and not self.ended:
                frame, waiter = outbox[0]
                if frame is _END:
                    outbox.popleft()
                    conn.end_stream(self.stream_id)
                    continue
                window = min(conn.local_flow_control_window(self.stream_id), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                if len(frame) <= window:
                    conn.send_data(self.stream_id, frame)
                    outbox.popleft()
                    if waiter is not None:
                        fired.append(waiter)
                else:
                    conn.send_data(self.stream_id, frame[:window])
                    outbox[0] = (frame[window:], waiter)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            # The call was closed under us: what waits cannot be sent.
            pass
        for waiter in fired:
            waiter.callback(None)

    def _write_out(self) -> None:
        if self._receiving or self._lost or self.transport is None:
            return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    # -- ending ---------------------------------------------------------------------------------------

    def _refuse(self, error: GrpcError) -> None:
        """The server's reply cannot be used: cancel the call with ``error``."""
        self.log.info(
            "Connect call to {authority} failed: {error}", authority=self.authority, error=str(error)
        )
        self.finish(error)

    def _end(self, error: GrpcError | None) -> None:
        """
        The call is over: after ``OK`` the messages held still go first; after
        an error they are dropped and the end is told at once.
        """
        if self.ended:
            return
        self.ended = True
        self.error = error
        outbox, self._outbox = self._outbox, deque()
        failure = error or GrpcError(StatusCode.CANCELLED, "the call is over")
        for _frame, waiter in outbox:
            if waiter is not None:
                waiter.errback(failure)
        if error is not None:
            self._inbox.clear()
            self._deliver_end()
        elif not self._receiving:
            self._drain()

    def _deliver_end(self) -> None:
        if self.ended and not self._end_delivered and self._on_end is not None:
            self._end_delivered = True
            self._on_end(self.error)

    def _close(self) -> None:
        """The call is over: close the connection politely (GOAWAY), abort if that takes too long."""
        if self._lost or self.transport is None or self._close_timer is not None:
            return
        try:
            self.h2.close_connection()
        except h2.exceptions.ProtocolError:
            pass  # the server already sent GOAWAY
        receiving, self._receiving = self._receiving, False
        self._write_out()
        self._receiving = receiving
        transport: Any = self.transport
        transport.unregisterProducer()
        transport.loseConnection()
        self._close_timer = self.clock.callLater(self.close_timeout, self._abort)

    def _abort(self) -> None:
        self._close_timer = None
        if not self._lost:
            self.abort()

    def __repr__(self) -> str:
        state = "ended" if self.ended else "active"
        return f"<ConnectCall {self.authority}{self.path} {state}>"
