"""
The gRPC-over-HTTP/2 header rules, sans-IO.

* ``grpc-timeout``: an integer of at most 8 digits and a unit
  (``H M S m u n``), read by :func:`parse_timeout`.
* ``grpc-message``: UTF-8, percent-encoded outside printable ASCII and for
  ``%`` itself (:func:`encode_grpc_message`, :func:`decode_grpc_message`).
* Custom metadata: keys are lower case ``0-9 a-z - _ .``; values of keys
  ending in ``-bin`` are binary and travel base64-encoded (padding optional
  on receipt, omitted on sending); other values are printable ASCII.
* ``content-type``: ``application/grpc`` or ``application/grpc+proto``,
  parameters after ``;`` ignored.

No Twisted here.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

from spear_twisted.bridge.status import Metadata

_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])")
# Seconds per unit as (multiplier, divisor): division keeps 60000000u exactly 60.0.
_TIMEOUT_UNITS = {
    b"H": (3600, 1),
    b"M": (60, 1),
    b"S": (1, 1),
    b"m": (1, 10**3),
    b"u": (1, 10**6),
    b"n": (1, 10**9),
}

#: Longest timeout ``grpc-timeout`` can express with 8 digits of hours.
MAX_TIMEOUT = 99_999_999 * 3600.0

_KEY = re.compile(r"[0-9a-z_.\-]+")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")

#: Headers of a request that are not the caller's metadata.
RESERVED_REQUEST_HEADERS = frozenset(
    {
        b"content-type",
        b"te",
        b"grpc-timeout",
        b"grpc-encoding",
        b"grpc-accept-encoding",
        b"user-agent",
        b"grpc-message-type",
        b"host",
        b"content-length",
    }
)


def parse_timeout(value: bytes) -> float:
    """
    The seconds a ``grpc-timeout`` value stands for.

    :raises ValueError: when ``value`` is not 1 to 8 digits and a unit.
    """
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        shown = value[:32].decode("ascii", "replace")
        raise ValueError(f"malformed grpc-timeout {shown!r}: expected 1 to 8 digits and one of H M S m u n")
    multiplier, divisor = _TIMEOUT_UNITS[match.group(2)]
    return int(match.group(1)) * multiplier / divisor


def format_timeout(seconds: float) -> bytes:
    """
    ``seconds`` as a ``grpc-timeout`` value: to the nanosecond, in the finest
    unit that holds it in 8 digits, rounded up to that unit.
    """
    if seconds < 0:
        raise ValueError(f"a timeout cannot be negative: {seconds!r}")
    nanoseconds = round(seconds * 10**9)
    for unit, scale in (
        (b"n", 1),
        (b"u", 10**3),
        (b"m", 10**6),
        (b"S", 10**9),
        (b"M", 60 * 10**9),
        (b"H", 3600 * 10**9),
    ):
        count = -(-nanoseconds // scale)  # ceiling, in integers
        if count < 100_000_000:
            return b"%d%s" % (count, unit)
    raise ValueError(f"{seconds!r} s is longer than grpc-timeout can express")


def encode_grpc_message(message: str) -> bytes:
    """``message`` as a ``grpc-message`` value: UTF-8, percent-encoded where needed."""
    data = message.encode("utf-8", "surrogatepass")
    if _PRINTABLE.fullmatch(data) and b"%" not in data:
        return data
    return b"".join(
        bytes((byte,)) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte for byte in data
    )


def decode_grpc_message(value: bytes) -> str:
    """A ``grpc-message`` value as text; a malformed escape is kept as it is."""
    if b"%" in value:
        value = _ESCAPE.sub(lambda match: bytes((int(match.group(1), 16),)), value)
    return value.decode("utf-8", "replace")


def is_grpc_content_type(value: bytes) -> bool:
    """Whether ``value`` is ``application/grpc`` or ``application/grpc+proto`` (any parameters)."""
    media = value.split(b";", 1)[0].strip().lower()
    return media in (b"application/grpc", b"application/grpc+proto")


def decode_metadata(headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str | bytes], ...]:
    """
    The caller's metadata among request ``headers``: pseudo-headers and the
    reserved gRPC headers left out, ``-bin`` values base64-decoded.

    :raises ValueError: naming the key of a ``-bin`` value that is not base64.
    """
    pairs: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name[:1] == b":" or name in RESERVED_REQUEST_HEADERS:
            continue
        key = name.decode("ascii", "replace")
        if key.endswith("-bin"):
            pairs.append((key, decode_binary(key, value)))
        else:
            pairs.append((key, value.decode("ascii", "replace")))
    return tuple(pairs)


def decode_binary(key: str, value: bytes) -> bytes:
    """A ``-bin`` header value: base64 with or without padding (several values joined by commas)."""
    try:
        return b"".join(
            base64.b64decode(part + b"=" * (-len(part) % 4), validate=True)
            for part in value.replace(b" ", b"").split(b",")
        )
    except (binascii.Error, ValueError):
        raise ValueError(f"metadata {key!r} is not valid base64") from None


def encode_metadata(metadata: Metadata) -> list[tuple[bytes, bytes]]:
    """
    ``metadata`` as header fields: ``-bin`` values base64-encoded (unpadded).

    :raises ValueError: for a key that is not lower case ``0-9 a-z - _ .``,
        a reserved key (``grpc-`` prefix), a ``-bin`` value that is not bytes,
        or a text value that is not printable ASCII.
    """
    fields: list[tuple[bytes, bytes]] = []
    for key, value in metadata:
        if not _KEY.fullmatch(key) or key.startswith("grpc-"):
            raise ValueError(f"invalid metadata key {key!r}")
        if key.endswith("-bin"):
            if not isinstance(value, (bytes, bytearray)):
                raise ValueError(f"metadata {key!r} is binary: its value must be bytes")
            fields.append((key.encode(), base64.b64encode(value).rstrip(b"=")))
        else:
            if not isinstance(value, str):
                raise ValueError(f"metadata {key!r} is text: its value must be str")
            data = value.encode("ascii", "replace")
            if not value.isascii() or not _PRINTABLE.fullmatch(data):
                raise ValueError(
                    f"metadata {key!r} must be printable ASCII; use a -bin key for binary values"
                )
            fields.append((key.encode(), data))
    return fields
