"""An instance's stdout and stderr, line by line, into the log."""

from __future__ import annotations

from collections.abc import Callable, Iterable

#: Longest line logged whole, in bytes; longer ones are logged in pieces of this size.
LINE_LIMIT = 8192

#: What a redacted secret is replaced with.
REDACTED = b"***"


class LineSplitter:
    """
    Bytes in any chunking -> lines out, each at most ``limit`` bytes.

    A line longer than ``limit`` is emitted in pieces marked
    ``[line continues]``, so memory stays bounded whatever the program
    writes.  Lines are decoded as UTF-8 with replacement characters, so
    binary output cannot break the log.  Every occurrence of a ``redact``
    string (the instance's secret) is masked, also across reads and across
    the cut of a long line.
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        *,
        limit: int = LINE_LIMIT,
        redact: Iterable[str] = (),
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit!r}")
        self._emit = emit
        self._limit = limit
        self._secrets = tuple(secret.encode("utf-8") for secret in redact if secret)
        # A piece of a long line is cut only where no secret can straddle the cut.
        self._holdback = max((len(secret) for secret in self._secrets), default=1) - 1
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        """Take ``data``; emit every line it completes."""
        buffer = self._buffer
        buffer += data
        for secret in self._secrets:
            if secret in buffer:
                buffer[:] = buffer.replace(secret, REDACTED)
        limit = self._limit
        start = 0
        while True:
            end = buffer.find(b"\n", start, start + limit + 1)
            if end >= 0:
                self._line(bytes(buffer[start:end]))
                start = end + 1
            elif len(buffer) - start > limit + self._holdback:
                self._line(bytes(buffer[start : start + limit]), continued=True)
                start += limit
            else:
                break
        del buffer[:start]

    def flush(self) -> None:
        """Emit what remains (output that did not end with a newline)."""
        buffer = self._buffer
        while len(buffer) > self._limit:
            self._line(bytes(buffer[: self._limit]), continued=True)
            del buffer[: self._limit]
        if buffer:
            self._line(bytes(buffer))
            buffer.clear()

    def _line(self, raw: bytes, continued: bool = False) -> None:
        text = raw.rstrip(b"\r").decode("utf-8", "replace")
        if continued:
            text += " [line continues]"
        self._emit(text)
