"""FrameDecoder and encode_frame: PROTOCOL.md section 1."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.errors import EmptyFrame, ErrorCode, FrameTooLarge, TruncatedFrame
from spear_twisted.wire import MAX_MESSAGE_SIZE, FrameDecoder, encode_frame

SETTINGS = settings(max_examples=200, deadline=None)

frame_bodies = st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8)


def prefix(length: int) -> bytes:
    return struct.pack(">I", length)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(cuts)
    return [data[start:end] for start, end in zip([0, *points], [*points, len(data)], strict=True)]


class EncodeFrameTests(SynchronousTestCase):
    def test_encode_frame_puts_a_four_byte_big_endian_length_before_the_body(self) -> None:
        self.assertEqual(encode_frame(b"abc"), b"\x00\x00\x00\x03abc")
        self.assertEqual(encode_frame(b"x" * 0x010203), b"\x00\x01\x02\x03" + b"x" * 0x010203)

    def test_encode_frame_refuses_an_empty_body(self) -> None:
        self.assertRaises(ValueError, encode_frame, b"")

    @SETTINGS
    @given(st.binary(min_size=1, max_size=2000))
    def test_encoded_frame_decodes_to_its_body(self, body: bytes) -> None:
        data = encode_frame(body)
        self.assertEqual(int.from_bytes(data[:4], "big"), len(body))
        self.assertEqual(FrameDecoder().feed(data), [body])


class ReassemblyTests(SynchronousTestCase):
    @SETTINGS
    @given(frame_bodies, st.data())
    def test_frames_split_at_arbitrary_points_yield_exactly_the_bodies_in_order(
        self, bodies: list[bytes], data: st.DataObject
    ) -> None:
        stream = b"".join(encode_frame(body) for body in bodies)
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
        decoder = FrameDecoder()
        received = []
        for chunk in chunked(stream, cuts):
            received.extend(decoder.feed(chunk))
        self.assertEqual(received, bodies)
        self.assertEqual(decoder.buffered, 0)
        self.assertIsNone(decoder.error)
        self.assertIsNone(decoder.end())

    @settings(max_examples=50, deadline=None)
    @given(frame_bodies)
    def test_frames_fed_one_byte_at_a_time_yield_exactly_the_bodies(self, bodies: list[bytes]) -> None:
        stream = b"".join(encode_frame(body) for body in bodies)
        decoder = FrameDecoder()
        received = []
        for index in range(len(stream)):
            received.extend(decoder.feed(stream[index : index + 1]))
        self.assertEqual(received, bodies)
        self.assertIsNone(decoder.end())

    def test_every_split_of_a_two_frame_stream_yields_both_bodies(self) -> None:
        bodies = [b"first body", b"2"]
        stream = b"".join(encode_frame(body) for body in bodies)
        for first in range(len(stream) + 1):
            for second in range(first, len(stream) + 1):
                decoder = FrameDecoder()
                received = []
                for chunk in (stream[:first], stream[first:second], stream[second:]):
                    received.extend(decoder.feed(chunk))
                self.assertEqual(received, bodies, (first, second))
                self.assertIsNone(decoder.end())

    def test_many_frames_in_one_chunk_are_all_returned_in_order(self) -> None:
        bodies = [str(i).encode() * (i % 7 + 1) for i in range(1000)]
        self.assertEqual(FrameDecoder().feed(b"".join(map(encode_frame, bodies))), bodies)

    def test_partial_frame_after_whole_frames_is_kept_for_the_next_feed(self) -> None:
        decoder = FrameDecoder()
        tail = encode_frame(b"third")
        self.assertEqual(
            decoder.feed(encode_frame(b"one") + encode_frame(b"two") + tail[:6]), [b"one", b"two"]
        )
        self.assertEqual(decoder.buffered, 6)
        self.assertEqual(decoder.expected, 5)
        self.assertEqual(decoder.feed(tail[6:]), [b"third"])
        self.assertEqual(decoder.buffered, 0)
        self.assertIsNone(decoder.expected)

    def test_empty_feed_returns_nothing_and_changes_nothing(self) -> None:
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(b""), [])
        decoder.feed(b"\x00\x00")
        self.assertEqual(decoder.feed(b""), [])
        self.assertEqual(decoder.buffered, 2)

    def test_bytearray_and_memoryview_chunks_are_accepted_and_bodies_are_bytes(self) -> None:
        decoder = FrameDecoder()
        data = encode_frame(b"hello") + encode_frame(b"world")
        received = decoder.feed(bytearray(data[:7])) + decoder.feed(memoryview(data[7:]))
        self.assertEqual(received, [b"hello", b"world"])
        self.assertTrue(all(type(body) is bytes for body in received))

    def test_returned_bodies_do_not_change_when_the_fed_buffer_is_reused(self) -> None:
        decoder = FrameDecoder()
        chunk = bytearray(encode_frame(b"abc"))
        [body] = decoder.feed(chunk)
        chunk[4:] = b"xyz"
        self.assertEqual(body, b"abc")

    def test_64_mib_frame_fed_in_64_kib_pieces_is_reassembled_exactly(self) -> None:
        piece = bytes(range(256)) * 256  # 64 KiB
        body = piece * 1024  # 64 MiB, exactly the default limit
        self.assertEqual(len(body), MAX_MESSAGE_SIZE)
        data = encode_frame(body) + encode_frame(b"next")
        decoder = FrameDecoder()
        received: list[bytes] = []
        step = 64 * 1024
        for start in range(0, len(data), step):
            received.extend(decoder.feed(data[start : start + step]))
        self.assertEqual(len(received), 2)
        self.assertEqual(len(received[0]), MAX_MESSAGE_SIZE)
        self.assertTrue(received[0] == body)
        self.assertEqual(received[1], b"next")
        self.assertIsNone(decoder.end())


class LargeFrameTests(SynchronousTestCase):
    """Frames of 1 MiB and more are kept in pieces and joined once."""

    body = bytes(range(256)) * 4096 * 3  # 3 MiB

    def test_large_frame_among_small_ones_in_odd_chunks_is_reassembled_exactly(self) -> None:
        data = encode_frame(b"before") + encode_frame(self.body) + encode_frame(b"after") + encode_frame(b"x")
        for step in (1024 * 1024 + 7, 65536, 3 * 1024 * 1024 + 9, len(data)):
            decoder = FrameDecoder()
            received: list[bytes] = []
            for start in range(0, len(data), step):
                received.extend(decoder.feed(data[start : start + step]))
            self.assertEqual(received, [b"before", self.body, b"after", b"x"])
            self.assertEqual((decoder.buffered, decoder.expected), (0, None))
            self.assertIsNone(decoder.end())

    def test_progress_of_a_large_frame_is_reported(self) -> None:
        decoder = FrameDecoder()
        frame = encode_frame(self.body)
        self.assertEqual(decoder.feed(frame[:1000]), [])
        self.assertEqual((decoder.buffered, decoder.expected), (1000, len(self.body)))
        self.assertEqual(decoder.feed(frame[1000:5000]), [])
        self.assertEqual(decoder.buffered, 5000)
        self.assertEqual(decoder.feed(frame[5000:]), [self.body])

    def test_large_frame_cut_short_reports_how_much_arrived(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(encode_frame(self.body)[: 2 * 1024 * 1024])
        error = decoder.end()
        self.assertIsInstance(error, TruncatedFrame)
        assert isinstance(error, TruncatedFrame)
        self.assertEqual((error.received, error.expected), (2 * 1024 * 1024, len(self.body)))

    def test_large_frame_does_not_change_when_the_fed_buffers_are_reused(self) -> None:
        decoder = FrameDecoder()
        frame = encode_frame(self.body)
        chunk = bytearray(frame[: 2 * 1024 * 1024])
        decoder.feed(chunk)
        chunk[:] = b"\xff" * len(chunk)
        second = bytearray(frame[2 * 1024 * 1024 :])
        [body] = decoder.feed(memoryview(second))
        second[:] = b"\xff" * len(second)
        self.assertTrue(body == self.body)


class SizeLimitTests(SynchronousTestCase):
    def test_oversize_length_is_refused_on_reading_the_prefix_before_any_body_arrives(self) -> None:
        decoder = FrameDecoder(max_message_size=1024)
        self.assertEqual(decoder.feed(prefix(1025)), [])
        error = decoder.error
        self.assertIsInstance(error, FrameTooLarge)
        self.assertEqual(error.code, ErrorCode.MESSAGE_TOO_LARGE)
        self.assertEqual((error.length, error.limit), (1025, 1024))
        self.assertIn("1025", str(error))
        self.assertEqual(decoder.buffered, 0)

    def test_oversize_length_arriving_in_pieces_is_refused_with_nothing_buffered(self) -> None:
        decoder = FrameDecoder(max_message_size=10)
        self.assertEqual(decoder.feed(b"\x00\x00"), [])
        self.assertIsNone(decoder.error)
        self.assertEqual(decoder.feed(b"\x00\x0b" + b"x" * 5), [])
        self.assertIsInstance(decoder.error, FrameTooLarge)
        self.assertEqual(decoder.buffered, 0)

    def test_body_of_an_oversize_frame_is_never_buffered(self) -> None:
        decoder = FrameDecoder(max_message_size=100)
        decoder.feed(prefix(2**32 - 1))
        for _ in range(100):
            self.assertEqual(decoder.feed(b"y" * 1000), [])
        self.assertEqual(decoder.buffered, 0)
        self.assertIsInstance(decoder.error, FrameTooLarge)

    def test_default_limit_accepts_exactly_64_mib_and_refuses_one_byte_more(self) -> None:
        decoder = FrameDecoder()
        self.assertEqual(decoder.max_message_size, 64 * 1024 * 1024)
        decoder.feed(prefix(64 * 1024 * 1024))
        self.assertIsNone(decoder.error)
        self.assertEqual(decoder.expected, 64 * 1024 * 1024)

        decoder = FrameDecoder()
        decoder.feed(prefix(64 * 1024 * 1024 + 1))
        self.assertIsInstance(decoder.error, FrameTooLarge)
        self.assertEqual(decoder.error.code, ErrorCode.MESSAGE_TOO_LARGE)
        self.assertEqual(decoder.buffered, 0)

    def test_raised_max_message_size_applies_to_the_next_prefix(self) -> None:
        decoder = FrameDecoder(max_message_size=8)
        self.assertEqual(decoder.feed(encode_frame(b"12345678")), [b"12345678"])
        decoder.max_message_size = 16
        self.assertEqual(decoder.feed(encode_frame(b"0123456789abcdef")), [b"0123456789abcdef"])
        self.assertIsNone(decoder.error)

    def test_lowered_max_message_size_applies_to_the_next_prefix(self) -> None:
        decoder = FrameDecoder(max_message_size=16)
        decoder.max_message_size = 4
        decoder.feed(encode_frame(b"12345"))
        self.assertIsInstance(decoder.error, FrameTooLarge)
        self.assertEqual(decoder.error.limit, 4)

    def test_max_message_size_change_spares_a_frame_whose_prefix_was_already_read(self) -> None:
        decoder = FrameDecoder(max_message_size=100)
        data = encode_frame(b"x" * 50) + encode_frame(b"y" * 30)
        self.assertEqual(decoder.feed(data[:14]), [])
        decoder.max_message_size = 20
        # The frame in progress was admitted under the old limit; the next one is judged by the new.
        self.assertEqual(decoder.feed(data[14:]), [b"x" * 50])
        self.assertIsInstance(decoder.error, FrameTooLarge)
        self.assertEqual((decoder.error.length, decoder.error.limit), (30, 20))

    def test_max_message_size_below_one_is_refused(self) -> None:
        self.assertRaises(ValueError, FrameDecoder, 0)


class ViolationTests(SynchronousTestCase):
    def test_zero_length_frame_is_refused_with_malformed_frame_code(self) -> None:
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(prefix(0)), [])
        self.assertIsInstance(decoder.error, EmptyFrame)
        self.assertEqual(decoder.error.code, ErrorCode.MALFORMED_FRAME)
        self.assertIn("zero length", str(decoder.error))
        self.assertEqual(decoder.buffered, 0)

    def test_frames_before_a_violation_in_the_same_chunk_are_still_returned(self) -> None:
        decoder = FrameDecoder(max_message_size=10)
        data = encode_frame(b"a") + encode_frame(b"bb") + prefix(11) + b"z" * 11
        self.assertEqual(decoder.feed(data), [b"a", b"bb"])
        self.assertIsInstance(decoder.error, FrameTooLarge)

    def test_frames_before_a_zero_length_in_a_buffered_chunk_are_still_returned(self) -> None:
        decoder = FrameDecoder()
        first = encode_frame(b"first")
        decoder.feed(first[:3])
        self.assertEqual(decoder.feed(first[3:] + encode_frame(b"second") + prefix(0)), [b"first", b"second"])
        self.assertIsInstance(decoder.error, EmptyFrame)
        self.assertEqual(decoder.buffered, 0)

    def test_data_after_a_violation_is_ignored(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(prefix(0) + encode_frame(b"lost"))
        error = decoder.error
        self.assertEqual(decoder.feed(encode_frame(b"also lost")), [])
        self.assertIs(decoder.error, error)
        self.assertEqual(decoder.buffered, 0)
        self.assertIs(decoder.end(), error)

    def test_end_with_a_partial_header_reports_a_truncated_frame(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(encode_frame(b"whole") + b"\x00\x00\x01")
        error = decoder.end()
        self.assertIsInstance(error, TruncatedFrame)
        self.assertEqual(error.code, ErrorCode.MALFORMED_FRAME)
        self.assertEqual((error.received, error.expected), (3, None))
        self.assertIn("3 of the 4 length bytes", str(error))

    def test_end_with_a_partial_body_reports_a_truncated_frame(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(prefix(10) + b"abc")
        error = decoder.end()
        self.assertIsInstance(error, TruncatedFrame)
        self.assertEqual(error.code, ErrorCode.MALFORMED_FRAME)
        self.assertEqual((error.received, error.expected), (7, 10))
        self.assertIn("3 of 10 body bytes", str(error))
        self.assertIs(decoder.error, error)
        self.assertEqual(decoder.feed(b"1234567"), [])

    def test_end_after_whole_frames_reports_nothing(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(encode_frame(b"a") + encode_frame(b"b"))
        self.assertIsNone(decoder.end())
        self.assertIsNone(FrameDecoder().end())

    @SETTINGS
    @given(frame_bodies, st.data())
    def test_end_inside_any_frame_reports_truncation_after_the_whole_frames(
        self, bodies: list[bytes], data: st.DataObject
    ) -> None:
        stream = b"".join(encode_frame(body) for body in bodies)
        boundaries = {0}
        for body in bodies:
            boundaries.add(max(boundaries) + 4 + len(body))
        cut = data.draw(st.integers(1, len(stream) - 1).filter(lambda n: n not in boundaries))
        decoder = FrameDecoder()
        received = decoder.feed(stream[:cut])
        whole = max(b for b in boundaries if b <= cut)
        self.assertEqual(b"".join(encode_frame(body) for body in received), stream[:whole])
        error = decoder.end()
        self.assertIsInstance(error, TruncatedFrame)
        self.assertEqual(error.received, cut - whole)
