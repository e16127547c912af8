"""
:class:`BridgeH2Connection` handles every received frame exactly as ``h2``
does (same events, same errors, same bytes to send), without formatting a
trace nobody logs; it falls back to ``h2``'s own method for an ``h2`` of
another shape and when a logger is configured.
"""

from __future__ import annotations

from typing import Any

import h2
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
from hyperframe.frame import (
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.bridge.h2connection import (
    RECEIVE_FRAME_REPLACED,
    TESTED_H2,
    BridgeH2Connection,
    receive_frame_replaceable,
)
from spear_twisted.bridge.methods import MethodRegistry
from spear_twisted.bridge.protocol import BridgeProtocol

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()
REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/spear.v1.SpearBridge/Connect"),
    (b":authority", b"localhost"),
    (b"content-type", b"application/grpc"),
]

# Steps of a conversation: what the client sends, and what the server does.
Step = tuple[Any, ...]


def _config(**extra: Any) -> h2.config.H2Configuration:
    return h2.config.H2Configuration(client_side=False, header_encoding=None, **extra)


def _encode(steps: list[Step]) -> list[Step]:
    """The client's steps as bytes (one HPACK encoder for the whole conversation)."""
    encoder = hpack.Encoder()
    encoded: list[Step] = []
    for step in steps:
        kind = step[0]
        if kind == "headers":
            _, stream_id, end = step
            frame = HeadersFrame(stream_id, data=encoder.encode(REQUEST), flags=["END_HEADERS"])
            if end:
                frame.flags.add("END_STREAM")
            encoded.append(("receive", frame.serialize()))
        elif kind == "data":
            _, stream_id, size, end = step
            data_frame = DataFrame(stream_id, data=b"\x00" * size, flags=["END_STREAM"] if end else [])
            encoded.append(("receive", data_frame.serialize()))
        elif kind == "window":
            _, stream_id, increment = step
            encoded.append(("receive", WindowUpdateFrame(stream_id, window_increment=increment).serialize()))
        elif kind == "rst":
            _, stream_id, code = step
            encoded.append(("receive", RstStreamFrame(stream_id, error_code=code).serialize()))
        elif kind == "ping":
            encoded.append(("receive", PingFrame(0, opaque_data=b"12345678").serialize()))
        else:
            encoded.append(step)  # the server's own actions
    return encoded


def _play(connection: h2.connection.H2Connection, steps: list[Step]) -> list[Any]:
    """Everything ``connection`` shows for ``steps``: events, errors, bytes to send."""
    seen: list[Any] = []
    connection.initiate_connection()
    connection.receive_data(PREFACE)
    connection.data_to_send()
    for step in steps:
        try:
            if step[0] == "receive":
                seen.append([repr(event) for event in connection.receive_data(step[1])])
            elif step[0] == "server-reset":
                connection.reset_stream(step[1])
            elif step[0] == "server-end":
                connection.send_headers(step[1], [(b":status", b"200")], end_stream=True)
        except h2.exceptions.ProtocolError as e:
            seen.append((type(e).__name__, str(e)))
        seen.append(connection.data_to_send())
    return seen


def _both(steps: list[Step]) -> tuple[list[Any], list[Any]]:
    encoded = _encode(steps)
    return _play(h2.connection.H2Connection(config=_config()), encoded), _play(
        BridgeH2Connection(config=_config()), encoded
    )


streams = st.sampled_from([1, 3, 5])
steps = st.lists(
    st.one_of(
        st.tuples(st.just("headers"), st.sampled_from([1, 3, 5, 7]), st.booleans()),
        st.tuples(st.just("data"), streams, st.integers(0, 40), st.booleans()),
        st.tuples(st.just("window"), st.sampled_from([0, 1, 3]), st.integers(1, 1000)),
        st.tuples(st.just("rst"), streams, st.sampled_from([0, 8])),
        st.tuples(st.just("ping")),
        st.tuples(st.just("server-reset"), streams),
        st.tuples(st.just("server-end"), streams),
    ),
    max_size=14,
)


class ShapeTests(SynchronousTestCase):
    def test_the_installed_h2_is_replaced(self) -> None:
        """The ``h2`` this package requires has the method the subclass reproduces."""
        self.assertTrue(RECEIVE_FRAME_REPLACED)
        self.assertTrue(BridgeH2Connection.quiet_receive)
        self.assertTrue(receive_frame_replaceable(h2.connection.H2Connection._receive_frame, h2.__version__))

    def test_the_bridge_uses_it(self) -> None:
        protocol = BridgeProtocol(MethodRegistry(), clock=None)  # type: ignore[arg-type]
        self.assertIsInstance(protocol.h2, BridgeH2Connection)

    def test_an_untested_h2_version_is_not_replaced(self) -> None:
        method = h2.connection.H2Connection._receive_frame
        low, high = TESTED_H2
        self.assertTrue(receive_frame_replaceable(method, f"{low[0]}.{low[1]}.0"))
        self.assertTrue(receive_frame_replaceable(method, f"{high[0]}.{high[1] - 1}.9"))
        for version in ("4.0.0", f"{high[0]}.{high[1]}.0", "5.0.0", "4", "four.one", ""):
            self.assertFalse(receive_frame_replaceable(method, version), version)

    def test_a_method_of_another_shape_is_not_replaced(self) -> None:
        def other(self: Any, frame: Any) -> list[Any]:
            self.config.logger.trace("Received frame: %s", repr(frame))
            return self._frame_dispatch_table[frame.__class__](frame)[1]  # type: ignore[no-any-return]

        def silent(self: Any, frame: Any) -> list[Any]:
            return []

        version = h2.__version__
        self.assertFalse(receive_frame_replaceable(other, version))
        self.assertFalse(receive_frame_replaceable(silent, version))
        self.assertFalse(receive_frame_replaceable(len, version))
        self.assertFalse(receive_frame_replaceable(None, version))


class SameAsH2Tests(SynchronousTestCase):
    """The subclass and ``h2``, fed the same bytes, show the same things."""

    def assertSame(self, steps: list[Step]) -> list[Any]:
        stock, quiet = _both(steps)
        self.assertEqual(quiet, stock)
        return quiet

    def test_a_conversation(self) -> None:
        seen = self.assertSame(
            [
                ("headers", 1, False),
                ("data", 1, 20, False),
                ("window", 0, 100),
                ("window", 1, 50),
                ("ping",),
                ("data", 1, 5, True),
                ("server-end", 1),
                ("headers", 3, True),
                ("rst", 3, 8),
            ]
        )
        self.assertIn("RequestReceived", seen[0][0])
        self.assertIn("DataReceived", seen[2][0])

    def test_headers_after_the_client_ended_reset_the_stream(self) -> None:
        seen = self.assertSame([("headers", 1, True), ("headers", 1, False)])
        self.assertEqual(seen[-2], ["<StreamReset stream_id:1, error_code:5, remote_reset:False>"])
        self.assertIn(RstStreamFrame(1).serialize()[:9], seen[-1])

    def test_headers_on_a_stream_the_server_reset_are_refused_with_rst_stream(self) -> None:
        seen = self.assertSame([("headers", 1, False), ("server-reset", 1), ("headers", 1, False)])
        self.assertEqual(seen[-2], [])
        self.assertIn(RstStreamFrame(1).serialize()[:9], seen[-1])

    def test_headers_on_a_stream_that_ended_close_the_connection(self) -> None:
        seen = self.assertSame([("headers", 1, True), ("server-end", 1), ("headers", 1, False)])
        self.assertEqual(seen[-2][0], "StreamClosedError")

    def test_data_on_a_stream_the_server_reset_is_refused_with_rst_stream(self) -> None:
        seen = self.assertSame([("headers", 1, False), ("server-reset", 1), ("data", 1, 10, False)])
        self.assertEqual(seen[-2], [])
        self.assertIn(RstStreamFrame(1).serialize()[:9], seen[-1])

    def test_a_reused_stream_id_after_a_reset_is_refused_with_rst_stream(self) -> None:
        # Stream 1 is reset, then forgotten once stream 3 opens: HEADERS on 1 are
        # below the highest stream id.
        seen = self.assertSame(
            [("headers", 1, False), ("rst", 1, 8), ("headers", 3, False), ("headers", 1, False)]
        )
        self.assertEqual(seen[-2], [])
        self.assertIn(RstStreamFrame(1).serialize()[:9], seen[-1])

    def test_a_reused_stream_id_after_an_end_closes_the_connection(self) -> None:
        seen = self.assertSame(
            [("headers", 1, True), ("server-end", 1), ("headers", 3, False), ("headers", 1, False)]
        )
        self.assertEqual(seen[-2][0], "StreamClosedError")

    def test_a_stream_id_skipped_over_closes_the_connection(self) -> None:
        seen = self.assertSame([("headers", 3, False), ("headers", 1, False)])
        self.assertEqual(seen[-2][0], "StreamIDTooLowError")

    @settings(max_examples=300, deadline=None)
    @given(steps)
    def test_any_conversation(self, conversation: list[Step]) -> None:
        self.assertSame(conversation)


class FallbackTests(SynchronousTestCase):
    def test_without_the_replacement_h2_handles_frames(self) -> None:
        """``quiet_receive`` off (an h2 of another shape): h2's own method runs, traces included."""
        self.patch(BridgeH2Connection, "quiet_receive", False)
        traced = self._traces(BridgeH2Connection(config=_config()))
        self.assertTrue(traced)
        self.assertTrue(all(message == "Received frame: %s" for message, _ in traced))

    def test_with_the_replacement_nothing_is_traced(self) -> None:
        self.assertEqual(self._traces(BridgeH2Connection(config=_config())), [])

    def test_a_configured_logger_gets_every_frame(self) -> None:
        traced: list[tuple[str, tuple[Any, ...]]] = []
        connection = BridgeH2Connection(config=_config(logger=_Recorder(traced)))
        connection.initiate_connection()
        connection.receive_data(PREFACE + _encode([("headers", 1, False)])[0][1])
        frames = [args[0] for message, args in traced if message == "Received frame: %s"]
        self.assertEqual(len(frames), 2)
        self.assertIn("HeadersFrame", frames[1])

    def test_without_the_replacement_the_conversations_are_the_same(self) -> None:
        self.patch(BridgeH2Connection, "quiet_receive", False)
        stock, quiet = _both([("headers", 1, False), ("server-reset", 1), ("data", 1, 3, False)])
        self.assertEqual(quiet, stock)

    def _traces(self, connection: BridgeH2Connection) -> list[tuple[str, tuple[Any, ...]]]:
        # h2's default logger throws the trace away: record what reaches it.
        traced: list[tuple[str, tuple[Any, ...]]] = []
        self.patch(
            h2.config.DummyLogger, "trace", lambda logger, message, *args: traced.append((message, args))
        )
        connection.initiate_connection()
        connection.receive_data(PREFACE + _encode([("headers", 1, False)])[0][1])
        return [entry for entry in traced if entry[0] == "Received frame: %s"]


class _Recorder:
    """A logger for h2's configuration that records its calls."""

    def __init__(self, calls: list[tuple[str, tuple[Any, ...]]]) -> None:
        self.calls = calls

    def debug(self, message: str, *args: Any) -> None:
        self.calls.append((message, args))

    def trace(self, message: str, *args: Any) -> None:
        self.calls.append((message, args))
