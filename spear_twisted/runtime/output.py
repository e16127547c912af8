"""An instance's stdout and stderr, line by line, into the log."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

#: Longest line logged whole; longer ones are logged in pieces of this size.
LINE_LIMIT = 8192

#: stderr lines kept to explain an exit.
TAIL_LINES = 20


class LineSplitter:
    """
    Bytes in any chunking -> complete lines out, each at most ``limit`` bytes.

    Lines are decoded as UTF-8 with replacement, so binary output cannot break
    the log; ``redact`` strings (the instance's secret) are masked.
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        *,
        limit: int = LINE_LIMIT,
        redact: tuple[str, ...] = (),
        tail: int = TAIL_LINES,
    ) -> None:
        self._emit = emit
        self._limit = limit
        self._redact = tuple(secret for secret in redact if secret)
        self._buffer = bytearray()
        self.tail: deque[str] = deque(maxlen=tail)

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0 or end - start > self._limit:
                break
            self._line(bytes(buffer[start:end]))
            start = end + 1
        while len(buffer) - start > self._limit:
            self._line(bytes(buffer[start : start + self._limit]), continued=True)
            start += self._limit
        del buffer[:start]

    def flush(self) -> None:
        """Emit what remains (output that did not end with a newline)."""
        if self._buffer:
            self._line(bytes(self._buffer))
            self._buffer.clear()

    def _line(self, raw: bytes, continued: bool = False) -> None:
        text = raw.rstrip(b"\r").decode("utf-8", "replace")
        for secret in self._redact:
            if secret in text:
                text = text.replace(secret, "***")
        if continued:
            text += " [line continues]"
        self.tail.append(text)
        self._emit(text)
