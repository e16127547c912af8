"""
:class:`SpearProtocol`: one Spear connection over a byte stream.

The session machinery (handshake, heartbeats and deadlines, the send queue,
events, closing) is :class:`~spear_twisted.channels.session_protocol.SpearSessionProtocol`;
this subclass adds the framing of PROTOCOL.md section 1: bytes go through a
:class:`~spear_twisted.wire.FrameDecoder` and each message is written as its
length-prefixed frame.  Unix sockets, TCP and the memory transport use it.
"""

from __future__ import annotations

import struct
from typing import Any, cast

from twisted.internet.interfaces import ITransport

from spear_twisted.channels.session_protocol import (
    CLOSE_TIMEOUT,
    CONTROL_REQUEST_ID,
    SERVER_VERSION,
    SUPPORTED_FEATURES,
    IConnectionGatekeeper,
    IConnectionOwner,
    PeerCredentials,
    SpearSessionProtocol,
    new_connection_id,
    peer_credentials,
)
from spear_twisted.errors import DecodeError, SpearError
from spear_twisted.wire import FrameDecoder, SpearMessage
from spear_twisted.wire.codec import decode_message

__all__ = [
    "CLOSE_TIMEOUT",
    "CONTROL_REQUEST_ID",
    "SERVER_VERSION",
    "SUPPORTED_FEATURES",
    "IConnectionGatekeeper",
    "IConnectionOwner",
    "PeerCredentials",
    "SpearProtocol",
    "SpearSessionProtocol",
    "new_connection_id",
    "peer_credentials",
]

# The length prefix of a frame (PROTOCOL.md section 1).
_FRAME_PREFIX = struct.Struct(">I")
_PREFIX_SIZE = _FRAME_PREFIX.size


class SpearProtocol(SpearSessionProtocol):
    """
    One Spear connection over a stream of length-prefixed frames.

    Takes the keyword arguments of :class:`SpearSessionProtocol`.  The
    protocol is a streaming producer for its transport: while the
    transport's write buffer is above its high-water mark, sends wait in
    order.
    """

    __slots__ = ("_decoder",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._decoder = FrameDecoder(self.session_config.max_preauth_message_size)

    def dataReceived(self, data: bytes) -> None:
        if self._lost:
            return
        decoder = self._decoder
        # Until the handshake completes the size limit is the small pre-auth
        # one, and it rises when the handshake completes, which may happen in
        # the middle of this read (an AuthResponse followed by a large
        # request): feed the decoder one frame at a time meanwhile, so that
        # each frame is held to the limit in force when its prefix is read.
        while data and decoder.max_message_size < self.session_config.max_message_size:
            cut = self._current_frame_end(data)
            if cut is None or cut >= len(data):
                break
            self._feed(data[:cut])
            data = data[cut:]
            if not self.accepts_messages or decoder.error is not None:
                return
        self._feed(data)

    def _current_frame_end(self, data: bytes) -> int | None:
        """How many bytes of ``data`` complete the frame (or prefix) being read."""
        decoder = self._decoder
        if decoder.expected is not None:
            return _PREFIX_SIZE + decoder.expected - decoder.buffered
        if decoder.buffered:
            return _PREFIX_SIZE - decoder.buffered
        if len(data) < _PREFIX_SIZE:
            return None
        (length,) = _FRAME_PREFIX.unpack_from(data)
        return int(_PREFIX_SIZE + length)

    def _feed(self, data: bytes) -> None:
        decoder = self._decoder
        for body in decoder.feed(data):
            if self._lost or self._closing_error is not None:
                return
            try:
                message = decode_message(body)
            except DecodeError as e:
                self.protocol_error(e)
                return
            self.message_received(message, len(body) + _PREFIX_SIZE)
        if decoder.error is not None and self._closing_error is None:
            self.protocol_error(decoder.error)

    def write_message(self, message: SpearMessage) -> int:
        """Write ``message`` as one length-prefixed frame."""
        frame = message.to_frame()
        # Twisted types Protocol.transport as Optional[ITransport]; writes
        # happen only while connected.
        cast(ITransport, self.transport).write(frame)
        return len(frame)

    def incoming_limit_changed(self, limit: int) -> None:
        self._decoder.max_message_size = limit

    def stream_ended(self) -> SpearError | None:
        return self._decoder.end()
