"""
:class:`BridgeH2Connection`: ``h2``'s connection without a per-frame cost
that buys nothing here.

``h2``'s ``H2Connection._receive_frame`` starts with
``self.config.logger.trace("Received frame: %s", repr(frame))``: the
``repr`` of every received frame is built (about 5 us of the 40 us a
``Connect`` round trip spends in ``h2``) before a logger that is off throws
it away.  The subclass handles a frame as ``h2`` does, minus that line, when
both hold:

* the connection's logger is ``h2``'s default ``DummyLogger`` (with any other
  logger the stock method runs, traces included);
* ``h2``'s method has the shape that was reproduced (checked once, at import,
  by :func:`receive_frame_replaceable`: the ``h2`` version is in
  :data:`TESTED_H2`, and the method names exactly the attributes and globals,
  and logs the message, of the versions tested).

Otherwise it is ``h2``'s own method.  Nothing global is patched: only the
bridge's connections use the subclass.
"""

from __future__ import annotations

from types import FunctionType
from typing import Any

import h2
import h2.config
import h2.connection
from h2.errors import ErrorCodes
from h2.events import Event
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from hyperframe.frame import Frame, RstStreamFrame

#: ``h2`` releases whose ``_receive_frame`` was reproduced and tested:
#: from 4.1 up to (not including) 4.5.
TESTED_H2 = ((4, 1), (4, 5))

#: Everything the reproduced method's code names (``co_names``), in the
#: ``h2`` versions tested.
_RECEIVE_FRAME_NAMES = frozenset(
    {
        "ErrorCodes",
        "RstStreamFrame",
        "STREAM_CLOSED",
        "StreamClosedError",
        "StreamIDTooLowError",
        "__class__",
        "_events",
        "_frame_dispatch_table",
        "_prepare_for_sending",
        "_stream_is_closed_by_end",
        "_stream_is_closed_by_reset",
        "config",
        "error_code",
        "logger",
        "repr",
        "stream_id",
        "trace",
    }
)
_TRACE_MESSAGE = "Received frame: %s"


def _release(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def receive_frame_replaceable(method: Any, version: str) -> bool:
    """
    Whether ``method`` (an ``H2Connection._receive_frame``) of ``h2``
    ``version`` is the one :class:`BridgeH2Connection` reproduces.
    """
    release = _release(version)
    if release is None or not TESTED_H2[0] <= release < TESTED_H2[1]:
        return False
    if not isinstance(method, FunctionType):
        return False
    code = method.__code__
    return frozenset(code.co_names) == _RECEIVE_FRAME_NAMES and _TRACE_MESSAGE in code.co_consts


#: Whether this ``h2``'s ``_receive_frame`` is replaced (see the module docstring).
RECEIVE_FRAME_REPLACED = receive_frame_replaceable(h2.connection.H2Connection._receive_frame, h2.__version__)


class BridgeH2Connection(h2.connection.H2Connection):
    """An ``h2`` connection that formats no trace of a received frame while its log is off."""

    #: Whether frames are handled without the trace (class-wide; tests turn it off).
    quiet_receive: bool = RECEIVE_FRAME_REPLACED

    def _receive_frame(self, frame: Frame) -> list[Event]:
        if not self.quiet_receive or type(self.config.logger) is not h2.config.DummyLogger:
            return super()._receive_frame(frame)
        # h2's method from here on, without its trace.
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # A stream closed by RST_STREAM: answer with RST_STREAM (a stream
            # error); closed otherwise: a connection error.
            if not self._stream_is_closed_by_reset(e.stream_id):
                raise
            reset = RstStreamFrame(e.stream_id)
            reset.error_code = e.error_code
            self._prepare_for_sending([reset])
            return e._events
        except StreamIDTooLowError as e:
            # A stream id below the highest seen: a stream error if that
            # stream was reset, a connection error if it ended, or was
            # closed implicitly by a higher one.
            if self._stream_is_closed_by_reset(e.stream_id):
                reset = RstStreamFrame(e.stream_id)
                reset.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([reset])
                return []
            if self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            raise
        self._prepare_for_sending(frames)
        return events  # type: ignore[no-any-return]
