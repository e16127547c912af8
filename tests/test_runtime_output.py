"""An instance's output into log lines: any chunking, long lines, binary data, secrets masked."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.runtime.output import LineSplitter

SECRET = "s3cr3t-T0ken-abcdefgh"
CONTINUES = " [line continues]"
# Printable ASCII without the carriage return (dropped at line ends).
TEXT = string.ascii_letters + string.digits + string.punctuation + " \t\n"


def split(chunks: list[bytes], *, limit: int = 16, redact: tuple[str, ...] = ()) -> list[str]:
    lines: list[str] = []
    splitter = LineSplitter(lines.append, limit=limit, redact=redact)
    for chunk in chunks:
        splitter.feed(chunk)
    splitter.flush()
    return lines


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


class LineSplitterTests(SynchronousTestCase):
    def test_lines_in_any_chunking(self) -> None:
        self.assertEqual(split([b"one\ntw", b"o\n", b"", b"three"]), ["one", "two", "three"])

    def test_carriage_returns_are_dropped(self) -> None:
        self.assertEqual(split([b"dos\r\nline\r\n"]), ["dos", "line"])

    def test_a_long_line_is_cut_into_marked_pieces(self) -> None:
        self.assertEqual(
            split([b"a" * 40 + b"\nend\n"]),
            ["a" * 16 + " [line continues]", "a" * 16 + " [line continues]", "a" * 8, "end"],
        )

    def test_a_long_line_is_cut_before_its_newline_arrives(self) -> None:
        lines: list[str] = []
        splitter = LineSplitter(lines.append, limit=4)
        splitter.feed(b"abcdefghij")
        self.assertEqual(lines, ["abcd [line continues]", "efgh [line continues]"])
        splitter.feed(b"\n")
        self.assertEqual(lines[-1], "ij")

    def test_a_line_of_exactly_the_limit_is_whole(self) -> None:
        self.assertEqual(split([b"x" * 16 + b"\n"]), ["x" * 16])

    def test_binary_output_cannot_break_it(self) -> None:
        lines = split([bytes(range(256))], limit=1000)
        self.assertEqual(len(lines), 2)
        self.assertIn("\ufffd", lines[1])

    def test_the_secret_is_masked(self) -> None:
        self.assertEqual(split([f"token={SECRET}!\n".encode()], limit=100, redact=(SECRET,)), ["token=***!"])

    def test_a_secret_split_across_reads_is_masked(self) -> None:
        data = f"x {SECRET} y\n".encode()
        for cut in range(len(data)):
            lines = split([data[:cut], data[cut:]], limit=100, redact=(SECRET,))
            self.assertEqual(lines, ["x *** y"], cut)

    def test_a_secret_at_the_cut_of_a_long_line_is_masked(self) -> None:
        for offset in range(30):
            data = b"-" * offset + SECRET.encode() + b"-" * 40 + b"\n"
            text = "".join(
                line.replace(" [line continues]", "") for line in split([data], limit=16, redact=(SECRET,))
            )
            self.assertNotIn(SECRET[:10], text, offset)
            self.assertIn("***", text)

    @given(
        st.text(alphabet=TEXT, max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=8)
    )
    def test_text_survives_any_chunking(self, text: str, cuts: list[int]) -> None:
        rebuilt = "".join(
            line[: -len(CONTINUES)] if line.endswith(CONTINUES) else line + "\n"
            for line in split(chunked(text.encode(), cuts), limit=16)
        )
        self.assertEqual(rebuilt, text if text.endswith("\n") or not text else text + "\n")

    @given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=8))
    def test_no_line_is_longer_than_the_limit(self, data: bytes, cuts: list[int]) -> None:
        for line in split(chunked(data, cuts), limit=16):
            self.assertLessEqual(len(line.removesuffix(CONTINUES)), 16)

    @given(
        st.lists(st.integers(min_value=0, max_value=80), max_size=6), st.integers(min_value=0, max_value=60)
    )
    def test_the_secret_never_shows_whatever_the_chunking(self, cuts: list[int], offset: int) -> None:
        data = b"." * offset + SECRET.encode() + b"." * 10 + SECRET.encode() + b"\n"
        lines = split(chunked(data, cuts), limit=16, redact=(SECRET,))
        text = "".join(line.replace(" [line continues]", "") for line in lines)
        self.assertNotIn(SECRET, text)
        self.assertEqual(text.count("***"), 2)
