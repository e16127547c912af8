"""
Length-prefixed framing (PROTOCOL.md section 1), sans-IO.

:func:`encode_frame` puts the 4-byte big-endian length in front of a body;
:class:`FrameDecoder` takes bytes in any chunking and returns whole bodies.

Reassembly is linear in the bytes received: a small frame's pieces are
appended to one buffer and copied out once; a large frame's pieces are kept as
they arrive and joined once when the last one comes.  So a 64 MiB frame
arriving in 64 KiB reads costs one copy, not the quadratic rebuild of
Twisted's ``IntNStringReceiver``.  A length above the limit is refused as soon as the
prefix is read, before any of its body is kept.
"""

from __future__ import annotations

import struct

from spear_twisted.errors import EmptyFrame, FrameError, FrameTooLarge, TruncatedFrame
from spear_twisted.wire.constants import FRAME_HEADER_SIZE, MAX_MESSAGE_SIZE

_HEADER = struct.Struct(">I")

#: Frames at least this long are reassembled from their pieces, joined once.
_LARGE_FRAME = 1024 * 1024

#: Largest length the 4-byte prefix can express.
MAX_FRAME_LENGTH = 2**32 - 1


def encode_frame(body: bytes) -> bytes:
    """``body`` with its length prefix."""
    length = len(body)
    if length == 0:
        raise ValueError("a frame body must not be empty")
    if length > MAX_FRAME_LENGTH:
        raise ValueError(f"a frame body of {length} bytes does not fit a 4-byte length")
    return _HEADER.pack(length) + body


class FrameDecoder:
    """
    Incremental frame decoder.

    ``feed(data)`` returns the bodies completed by ``data``, in order.  A
    violation stops decoding: the bodies before it are still returned, the
    violation is kept in :attr:`error`, and later data is ignored.  Call
    :meth:`end` when the byte stream ends to learn whether a frame was cut
    short.

    ``max_message_size`` may be changed between calls (for example raised
    once a peer has authenticated); it applies to frames whose length prefix
    has not been read yet.
    """

    __slots__ = ("_buffer", "_expected", "_have", "_pieces", "error", "max_message_size")

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be at least 1")
        self.max_message_size = max_message_size
        self.error: FrameError | None = None
        self._buffer = bytearray()
        self._expected: int | None = None  # body length of the frame being read
        # The body of a large frame, as received so far (see _LARGE_FRAME).
        self._pieces: list[bytes] | None = None
        self._have = 0

    @property
    def buffered(self) -> int:
        """Bytes held for the frame being read (prefix included)."""
        if self._pieces is not None:
            return FRAME_HEADER_SIZE + self._have
        return len(self._buffer)

    @property
    def expected(self) -> int | None:
        """The body length of the frame being read, once its prefix is known."""
        return self._expected

    def feed(self, data: bytes) -> list[bytes]:
        """Take ``data``; return every body it completes."""
        if self.error is not None or not data:
            return []
        if self._pieces is not None:
            return self._feed_large(data)
        buffer = self._buffer
        if not buffer:
            # The common case of a small message: exactly one whole frame.
            if len(data) > FRAME_HEADER_SIZE:
                (length,) = _HEADER.unpack_from(data)
                if len(data) - FRAME_HEADER_SIZE == length <= self.max_message_size:
                    return [bytes(data[FRAME_HEADER_SIZE:])]
            return self._feed_fresh(data)
        expected = self._expected
        if expected is not None and len(buffer) + len(data) < FRAME_HEADER_SIZE + expected:
            buffer += data  # the common case for a large frame: keep accumulating
            return []
        buffer += data
        frames: list[bytes] = []
        # Through a view, so each body is copied out once; the view must be
        # released before the buffer is resized.
        with memoryview(buffer) as view:
            offset = self._drain(view, frames)
        del buffer[:offset]
        return frames

    def _feed_large(self, data: bytes) -> list[bytes]:
        pieces = self._pieces
        assert pieces is not None and self._expected is not None
        need = self._expected - self._have
        if len(data) < need:
            pieces.append(bytes(data))
            self._have += len(data)
            return []
        pieces.append(bytes(data[:need]))
        frames = [b"".join(pieces)]
        self._pieces = None
        self._have = 0
        self._expected = None
        if len(data) > need:
            frames.extend(self.feed(data[need:]))
        return frames

    def _feed_fresh(self, data: bytes) -> list[bytes]:
        # Nothing buffered: slice whole frames straight out of ``data`` and
        # buffer only the incomplete tail.
        frames: list[bytes] = []
        view = memoryview(data)
        offset = self._drain(view, frames)
        if offset < len(data) and self.error is None:
            self._buffer += view[offset:]
        return frames

    def _drain(self, data: memoryview, frames: list[bytes]) -> int:
        """Append the whole frames at the start of ``data``; return bytes consumed."""
        offset = 0
        size = len(data)
        limit = self.max_message_size
        # The frame at offset 0 of a buffered feed had its prefix checked by an
        # earlier feed; a changed limit applies from the next prefix on.
        admitted = self._expected
        while size - offset >= FRAME_HEADER_SIZE:
            (length,) = _HEADER.unpack_from(data, offset)
            if length == 0:
                self._fail(EmptyFrame("frame with a zero length"))
                self._expected = None
                return offset
            if length > limit and admitted is None:
                self._fail(
                    FrameTooLarge(
                        f"frame of {length} bytes exceeds the limit of {limit} bytes",
                        length=length,
                        limit=limit,
                    )
                )
                self._expected = None
                return offset
            admitted = None
            end = offset + FRAME_HEADER_SIZE + length
            if end > size:
                self._expected = length
                if length >= _LARGE_FRAME:
                    # Keep the body's pieces as they come; join them once.
                    self._pieces = [bytes(data[offset + FRAME_HEADER_SIZE : size])]
                    self._have = size - offset - FRAME_HEADER_SIZE
                    return size
                return offset
            frames.append(bytes(data[offset + FRAME_HEADER_SIZE : end]))
            offset = end
        self._expected = None
        return offset

    def _fail(self, error: FrameError) -> None:
        self.error = error
        self._buffer = bytearray()
        self._pieces = None

    def end(self) -> FrameError | None:
        """
        The byte stream has ended: the error that stopped decoding, a
        :class:`TruncatedFrame` if a frame was cut short, or ``None``.
        """
        if self.error is None and self.buffered:
            received = self.buffered
            expected = self._expected
            if expected is None:
                detail = f"{received} of the {FRAME_HEADER_SIZE} length bytes"
            else:
                detail = f"{received - FRAME_HEADER_SIZE} of {expected} body bytes"
            self._fail(
                TruncatedFrame(
                    f"connection ended inside a frame ({detail})",
                    received=received,
                    expected=expected,
                )
            )
        return self.error
