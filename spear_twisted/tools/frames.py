"""
``python -m spear_twisted.tools.frames``: read and write Spear frames.

* ``decode [FILE]`` reads a byte stream of frames (a capture, or a socket
  piped through ``socat``) and prints one JSON line per message: the envelope
  and the decoded body.  Tokens are masked unless ``--show-secrets``.  A
  protocol violation is reported with its error code, and the exit status is 1.
* ``encode [FILE]`` reads JSON lines ``{"message_type": ..., "request_id": ...,
  "body": {...}}`` and writes the frames to standard output.
* ``demo`` writes the frames of a sample session (handshake, one execution, a
  heartbeat, the close), for example to pipe into ``decode``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

from spear_twisted.errors import SpearError
from spear_twisted.wire import (
    AuthRequest,
    AuthResponse,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionStatus,
    FrameDecoder,
    HeartbeatMessage,
    MessageType,
    SpearMessage,
    Timestamp,
    codec,
)
from spear_twisted.wire.messages import BODY_TYPES

_READ_SIZE = 64 * 1024


def _bodies(stream: BinaryIO, decoder: FrameDecoder) -> Iterator[bytes]:
    while chunk := stream.read(_READ_SIZE):
        yield from decoder.feed(chunk)
        if decoder.error is not None:
            return
    decoder.end()


def _describe(message: SpearMessage, show_secrets: bool) -> dict[str, Any]:
    body = codec.unstructure(message.parse_payload())
    if message.message_type is MessageType.AUTH_REQUEST and not show_secrets:
        body["token"] = "***"
    return {
        "message_type": message.message_type.value,
        "request_id": message.request_id,
        "timestamp": codec.unstructure(message.timestamp),
        "version": message.version,
        "body": body,
    }


def decode(stream: BinaryIO, out: BinaryIO, show_secrets: bool = False) -> int:
    """Print each frame of ``stream`` as a JSON line; 1 on a violation, else 0."""
    decoder = FrameDecoder()
    try:
        for body in _bodies(stream, decoder):
            message = SpearMessage.deserialize(body)
            out.write(orjson.dumps(_describe(message, show_secrets)) + b"\n")
    except SpearError as e:
        return _report(e)
    if decoder.error is not None:
        return _report(decoder.error)
    return 0


def _report(error: SpearError) -> int:
    sys.stderr.write(f"error {int(error.code)} ({error.code.name}): {error}\n")
    return 1


def encode(stream: BinaryIO, out: BinaryIO) -> int:
    """Write a frame for each JSON line of ``stream``; 1 on a bad line, else 0."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
            kind = MessageType(item["message_type"])
            body = codec.structure(item["body"], BODY_TYPES[kind], root="body")
            message = SpearMessage.create(int(item.get("request_id", 0)), body)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, SpearError) as e:
            sys.stderr.write(f"line {number}: {e}\n")
            return 1
        out.write(message.to_frame())
    return 0


def demo_frames() -> bytes:
    """The frames of a short sample session, agent and spearlet interleaved."""
    now = Timestamp.now()
    messages = [
        SpearMessage.auth_request(1, AuthRequest("process:echo-1", "example-token-0123", "0.1.0", "process")),
        SpearMessage.auth_response(
            1,
            AuthResponse(True, None, "session-7f3a", "spear_twisted", ("heartbeat", "stream")),
        ),
        SpearMessage.execute_request(2, ExecuteRequest("echo", "echo", ("hello", "world"))),
        SpearMessage.execute_response(
            2, ExecuteResponse("echo", ExecutionStatus.COMPLETED, "hello world", None, 0, 1)
        ),
        SpearMessage.heartbeat(3, HeartbeatMessage(now, 1)),
        SpearMessage.connection_close(4, "demo finished"),
    ]
    return b"".join(message.to_frame() for message in messages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spear_twisted.tools.frames", description="Read and write Spear frames."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    decode_parser = commands.add_parser("decode", help="frames in, JSON lines out")
    decode_parser.add_argument("file", nargs="?", help="frame stream (default: standard input)")
    decode_parser.add_argument("--show-secrets", action="store_true", help="do not mask tokens")
    encode_parser = commands.add_parser("encode", help="JSON lines in, frames out")
    encode_parser.add_argument("file", nargs="?", help="JSON lines (default: standard input)")
    commands.add_parser("demo", help="write a sample session's frames")
    options = parser.parse_args(argv)

    out = sys.stdout.buffer
    if options.command == "demo":
        out.write(demo_frames())
        return 0
    stream = open(options.file, "rb") if options.file else sys.stdin.buffer
    with stream:
        if options.command == "decode":
            return decode(stream, out, options.show_secrets)
        return encode(stream, out)


if __name__ == "__main__":
    sys.exit(main())
