"""
gRPC message framing, sans-IO.

Every gRPC message on an HTTP/2 stream is a 5-byte prefix (a compressed
flag, then the length as a big-endian uint32) followed by that many bytes.
:func:`frame_message` writes one; :class:`MessageDecoder` takes a stream's
bytes in any chunking and returns whole messages.

The decoder refuses, as soon as the prefix is read and before keeping any of
the body, a length above its limit (``RESOURCE_EXHAUSTED``) and a compressed
message (``UNIMPLEMENTED``: this server accepts the ``identity`` encoding
only).  Reassembly appends to one buffer and copies each message out once.

No Twisted here.
"""

from __future__ import annotations

import struct

from spear_twisted.bridge.status import GrpcError, StatusCode

_PREFIX = struct.Struct(">BI")

#: Length of the message prefix.
PREFIX_SIZE = _PREFIX.size

#: The only message encoding this server speaks (``grpc-accept-encoding``).
ACCEPTED_ENCODINGS = "identity"


def frame_message(data: bytes) -> bytes:
    """``data`` as one uncompressed gRPC message (prefix included)."""
    return _PREFIX.pack(0, len(data)) + data


class MessageDecoder:
    """
    Incremental decoder of one stream's gRPC messages.

    ``feed(data)`` returns the messages completed by ``data``.  A refusal
    stops decoding: the messages before it are still returned, the refusal is
    kept in :attr:`error`, nothing more is buffered and later data is ignored.
    ``max_message_size`` may be changed between feeds; it applies to the
    messages whose prefix has not been read yet.

    :param encoding: the stream's ``grpc-encoding``, named in the refusal of a
        compressed message.
    """

    def __init__(self, max_message_size: int, encoding: str | None = None) -> None:
        if max_message_size < 0:
            raise ValueError("max_message_size must not be negative")
        self.max_message_size = max_message_size
        self.encoding = encoding
        self.error: GrpcError | None = None
        self._buffer = bytearray()
        self._expected = -1  # length of the message being read, once its prefix is known

    @property
    def buffered(self) -> int:
        """Bytes held for the message being read (prefix included)."""
        return len(self._buffer)

    @property
    def in_message(self) -> bool:
        """Whether a message has begun and is not complete yet."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Take ``data``; return every message it completes, in order."""
        if self.error is not None or not data:
            return []
        size = len(data)
        if not self._buffer and size >= PREFIX_SIZE and type(data) is bytes:
            # The common case: one whole message (a refused one takes the long way).
            flag, length = _PREFIX.unpack_from(data)
            if size == PREFIX_SIZE + length and not flag and length <= self.max_message_size:
                return [data[PREFIX_SIZE:]]
        messages: list[bytes] = []
        view = memoryview(data)
        if self._buffer:
            rest = self._complete(view, messages)
            if rest is None:
                return messages
            view = rest
        size = len(view)
        offset = 0
        while size - offset >= PREFIX_SIZE:
            flag, length = _PREFIX.unpack_from(view, offset)
            if not self._admit(flag, length):
                return messages
            end = offset + PREFIX_SIZE + length
            if end > size:
                self._expected = length
                break
            messages.append(bytes(view[offset + PREFIX_SIZE : end]))
            offset = end
        if offset < size:
            self._buffer += view[offset:]
        return messages

    def _complete(self, view: memoryview, messages: list[bytes]) -> memoryview | None:
        """Continue the buffered message with ``view``; the bytes left after it, or None."""
        buffer = self._buffer
        if self._expected < 0:
            need = PREFIX_SIZE - len(buffer)
            buffer += view[:need]
            view = view[need:]
            if len(buffer) < PREFIX_SIZE:
                return None
            flag, length = _PREFIX.unpack_from(buffer)
            if not self._admit(flag, length):
                return None
            self._expected = length
        need = PREFIX_SIZE + self._expected - len(buffer)
        if len(view) < need:
            buffer += view  # the common case of a large message: keep accumulating
            return None
        buffer += view[:need]
        with memoryview(buffer) as whole:
            messages.append(bytes(whole[PREFIX_SIZE:]))
        buffer.clear()
        self._expected = -1
        return view[need:]

    def _admit(self, flag: int, length: int) -> bool:
        """Whether the message announced by a prefix may be read; else refuse it."""
        if flag:
            self._refuse(self._compressed(flag))
            return False
        if length > self.max_message_size:
            self._refuse(
                GrpcError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"received message of {length} bytes exceeds the limit of {self.max_message_size} bytes",
                )
            )
            return False
        return True

    def _compressed(self, flag: int) -> GrpcError:
        if flag != 1:
            return GrpcError(StatusCode.INTERNAL, f"invalid message flag {flag:#04x} (expected 0 or 1)")
        encoding = self.encoding or "identity"
        return GrpcError(
            StatusCode.UNIMPLEMENTED,
            f"compressed messages are not supported (grpc-encoding {encoding});"
            f" this server accepts {ACCEPTED_ENCODINGS} only",
        )

    def _refuse(self, error: GrpcError) -> None:
        self.error = error
        self._buffer = bytearray()
        self._expected = -1

    def end(self) -> GrpcError | None:
        """
        The stream has ended: the refusal that stopped decoding, an
        ``INTERNAL`` error if a message was cut short, or ``None``.
        """
        if self.error is None and self._buffer:
            held = len(self._buffer)
            detail = (
                f"{held} of the {PREFIX_SIZE} prefix bytes"
                if self._expected < 0
                else f"{held - PREFIX_SIZE} of {self._expected} bytes"
            )
            self._refuse(GrpcError(StatusCode.INTERNAL, f"stream ended inside a message ({detail})"))
        return self.error
