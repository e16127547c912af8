"""
Large messages: byte arrays written and read in pieces, as strictly as whole.

Above 1 MiB an envelope's payload array is read in pieces and large byte
arrays are written in pieces (both for speed); these tests hold that path to
exactly what the general reader and writer do.
"""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.errors import InvalidJson, InvalidMessage
from spear_twisted.wire import ExecuteRequest, SpearMessage, Timestamp, codec

PIECE = codec._PIECE
PAYLOAD_START = b'"payload":['


def large_message(size: int = 640 * 1024) -> SpearMessage:
    data = bytes(range(256)) * (size // 256)
    body = ExecuteRequest("task", "run", input_data=data)
    return SpearMessage.create(77, body, timestamp=Timestamp(1700000000, 5))


class LargeEnvelopeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.message = large_message()
        self.text = self.message.serialize()
        self.assertGreater(len(self.text), codec._LARGE_MESSAGE)
        self.start = self.text.index(PAYLOAD_START) + len(PAYLOAD_START)

    def with_payload_text(self, position: int, old: bytes, new: bytes) -> bytes:
        """The text with ``old`` at ``position`` of the payload replaced by ``new``."""
        at = self.start + position
        self.assertEqual(self.text[at : at + len(old)], old)
        return self.text[:at] + new + self.text[at + len(old) :]

    def test_large_message_reads_back_equal_and_through_the_piecewise_path(self) -> None:
        self.assertIsNotNone(codec._large_envelope(self.text))
        decoded = codec.decode_message(self.text)
        self.assertEqual(decoded, self.message)
        self.assertEqual(decoded.parse_payload(), self.message.parse_payload())

    def test_written_in_pieces_exactly_as_whole(self) -> None:
        payload = self.message.payload
        self.assertGreater(len(payload), codec._PIECEWISE)
        self.assertEqual(codec.encode_byte_array(payload), orjson.dumps(list(payload)))
        body = self.message.parse_payload()
        assert isinstance(body, ExecuteRequest) and body.input_data is not None
        plain = {**codec.unstructure(body), "input_data": list(body.input_data)}
        self.assertEqual(codec.encode_body(body), orjson.dumps(plain))

    def assert_refused_like_the_general_reader(self, text: bytes, error: type[Exception]) -> None:
        self.assertIsNone(codec._large_envelope(text))
        with self.assertRaises(error):
            codec.decode_message(text)

    def test_number_out_of_byte_range_is_refused(self) -> None:
        first = self.text[self.start : self.text.index(b",", self.start)]
        self.assert_refused_like_the_general_reader(self.with_payload_text(0, first, b"256"), InvalidMessage)

    def test_leading_zero_is_refused(self) -> None:
        first = self.text[self.start : self.text.index(b",", self.start)]
        self.assert_refused_like_the_general_reader(
            self.with_payload_text(0, first, b"0" + first), InvalidJson
        )

    def test_boolean_in_the_payload_is_refused(self) -> None:
        first = self.text[self.start : self.text.index(b",", self.start)]
        self.assert_refused_like_the_general_reader(self.with_payload_text(0, first, b"true"), InvalidMessage)

    def test_string_in_the_payload_is_refused(self) -> None:
        first = self.text[self.start : self.text.index(b",", self.start)]
        self.assert_refused_like_the_general_reader(self.with_payload_text(0, first, b'"1"'), InvalidMessage)

    def test_trailing_comma_is_refused(self) -> None:
        text = self.text.replace(b'],"version"', b',],"version"')
        self.assert_refused_like_the_general_reader(text, InvalidJson)

    def test_empty_element_at_or_near_a_cut_is_refused(self) -> None:
        # The reader cuts the array at the first comma after every 4 pieces'
        # worth of text: an empty element anywhere near there must not slip
        # through a cut.
        cut = 4 * PIECE
        for offset in range(-6, 8):
            position = self.text.index(b",", self.start + cut + offset) - self.start
            text = self.with_payload_text(position, b",", b",,")
            self.assert_refused_like_the_general_reader(text, InvalidJson)

    def test_duplicate_key_goes_to_the_general_reader_and_is_refused(self) -> None:
        text = self.text.replace(b'"request_id":77,', b'"request_id":77,"request_id":78,', 1)
        self.assert_refused_like_the_general_reader(text, InvalidJson)

    def test_other_spacing_is_read_by_the_general_reader(self) -> None:
        text = self.text.replace(b'"payload":[', b'"payload": [', 1)
        self.assertIsNone(codec._large_envelope(text))
        self.assertEqual(codec.decode_message(text), self.message)

    @given(st.binary(min_size=0, max_size=300))
    def test_byte_arrays_are_written_as_orjson_writes_lists(self, data: bytes) -> None:
        self.assertEqual(codec.encode_byte_array(data), orjson.dumps(list(data)))

    def test_byte_arrays_written_in_pieces_match_whole_at_every_piece_boundary(self) -> None:
        base = bytes(range(256)) * (codec._PIECEWISE // 256)
        for extra in (1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 5):
            data = base + bytes(range(7)) * (extra // 7) + b"\x01" * (extra % 7)
            self.assertEqual(codec.encode_byte_array(data), orjson.dumps(list(data)))
