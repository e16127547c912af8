"""
Wire-layer benchmark: our encode + decode of a whole frame against the stdlib.

For an ExecuteRequest with 200 B, 64 KiB and 1 MiB of ``input_data`` it times

* ours: typed body -> ``SpearMessage.to_frame()`` -> ``FrameDecoder.feed`` ->
  ``SpearMessage.deserialize`` -> ``parse_payload()`` (typed classes, strict
  checks included);
* baseline: the equivalent plain dicts through ``json.dumps`` / ``json.loads``
  with the same length prefix, in the same run;

the typed body alone: ``parse_payload()`` of an ExecuteRequest (200 B of
``input_data``) and of an ExecuteResponse, whose fast path is set against the
general strict reader it agrees with (``codec._decode_body_generally``, the
path every body took before) in the same run;

and a 64 MiB frame reassembled from 64 KiB pieces by ``FrameDecoder`` against
collecting the pieces in a list and joining them once.

It also times what an agent process pays before its first frame: a fresh
interpreter that imports ``spear_twisted.wire``, encodes an ``AuthRequest``
frame and decodes an ``AuthResponse`` frame, against a fresh interpreter that
does the same with ``json`` and ``struct`` (a plain-socket Python child).
Both run with bytecode caching on, as an installed package would (the
environment's ``PYTHONDONTWRITEBYTECODE`` is dropped for them), after one
warm-up run; the figure is the best wall time of the runs.

Prints a table with the ratio ours/baseline (lower is better) and the target
of issue 2.  No pass/fail: figures, not assertions.

Run: ``python bench/bench_wire.py [--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable

from spear_twisted.wire import (
    ExecuteRequest,
    ExecuteResponse,
    ExecutionMode,
    ExecutionStatus,
    FrameDecoder,
    ResourceUsage,
    SpearMessage,
    Timestamp,
    codec,
)

HEADER = struct.Struct(">I")


def best_time(fn: Callable[[], object], min_seconds: float) -> float:
    """Best per-call seconds over repeated batches lasting about ``min_seconds``."""
    fn()
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds / 5:
            break
        number *= 2
    best = elapsed / number
    deadline = time.perf_counter() + min_seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def ours(data: bytes) -> Callable[[], object]:
    timestamp = Timestamp(1700000000, 123456789)

    def run() -> object:
        body = ExecuteRequest(
            task_id="task-1",
            command="process",
            args=("--fast", "--input", "stdin"),
            env={"LANG": "C"},
            working_dir=None,
            timeout=30,
            mode=ExecutionMode.SYNC,
            input_data=data,
        )
        message = SpearMessage.create(42, body, timestamp=timestamp)
        frame = message.to_frame()
        (body_bytes,) = FrameDecoder().feed(frame)
        decoded = SpearMessage.deserialize(body_bytes).parse_payload()
        assert decoded.input_data == data  # type: ignore[union-attr]
        return decoded

    return run


def baseline(data: bytes) -> Callable[[], object]:
    def run() -> object:
        body = {
            "task_id": "task-1",
            "command": "process",
            "args": ["--fast", "--input", "stdin"],
            "env": {"LANG": "C"},
            "working_dir": None,
            "timeout": 30,
            "mode": "Sync",
            "input_data": list(data),
        }
        payload = json.dumps(body, separators=(",", ":")).encode()
        envelope = {
            "message_type": "ExecuteRequest",
            "request_id": 42,
            "timestamp": {"secs_since_epoch": 1700000000, "nanos_since_epoch": 123456789},
            "payload": list(payload),
            "version": 1,
        }
        text = json.dumps(envelope, separators=(",", ":")).encode()
        frame = HEADER.pack(len(text)) + text
        (length,) = HEADER.unpack_from(frame)
        decoded_envelope = json.loads(frame[4 : 4 + length])
        decoded = json.loads(bytes(decoded_envelope["payload"]))
        assert bytes(decoded["input_data"]) == data
        return decoded

    return run


def reassembly(total: int, piece: int) -> tuple[Callable[[], object], Callable[[], object]]:
    chunk = os.urandom(piece)
    header = HEADER.pack(total)
    pieces = [header] + [chunk] * (total // piece)

    def decoder_run() -> object:
        decoder = FrameDecoder(max_message_size=total)
        out: list[bytes] = []
        for p in pieces:
            out.extend(decoder.feed(p))
        assert len(out) == 1 and len(out[0]) == total
        return out

    def join_run() -> object:
        parts: list[bytes] = []
        have = -HEADER.size
        for p in pieces:
            parts.append(p)
            have += len(p)
        body = b"".join(parts)[HEADER.size :]
        assert have == total and len(body) == total
        return body

    return decoder_run, join_run


#: The agent's first steps with spear_twisted: import, AuthRequest frame out, AuthResponse in.
AGENT_START_OURS = """
from spear_twisted.wire import AuthRequest, AuthResponse, FrameDecoder, SpearMessage
frame = SpearMessage.auth_request(0, AuthRequest("process:a", "secret", "1.0", "python")).to_frame()
(body,) = FrameDecoder().feed(bytes.fromhex(RESPONSE))
response = SpearMessage.deserialize(body).parse_payload()
assert isinstance(response, AuthResponse) and response.success
"""

#: The same with the standard library only, as a plain-socket Python child would.
AGENT_START_BASELINE = """
import json, struct, time
body = json.dumps({"instance_id": "process:a", "token": "secret", "client_version": "1.0",
                   "client_type": "python", "extra_params": {}}, separators=(",", ":")).encode()
now = time.time_ns()
envelope = json.dumps({"message_type": "AuthRequest", "request_id": 0,
                       "timestamp": {"secs_since_epoch": now // 10**9, "nanos_since_epoch": now % 10**9},
                       "payload": list(body), "version": 1}, separators=(",", ":")).encode()
frame = struct.pack(">I", len(envelope)) + envelope
data = bytes.fromhex(RESPONSE)
(length,) = struct.unpack_from(">I", data)
response = json.loads(bytes(json.loads(data[4:4 + length])["payload"]))
assert response["success"]
"""


def agent_start(script: str, runs: int) -> float:
    """Best wall time of ``runs`` fresh interpreters running ``script``."""
    from spear_twisted.wire import AuthResponse, SpearMessage

    response = SpearMessage.auth_response(0, AuthResponse(True, None, "s-1", "spear_twisted", ("heartbeat",)))
    code = f"RESPONSE = {response.to_frame().hex()!r}\n{script}"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    command = [sys.executable, "-c", code]
    subprocess.run(command, env=env, check=True)  # warm-up: bytecode caches written
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True)
        best = min(best, time.perf_counter() - start)
    return best


def body_parses() -> list[tuple[str, Callable[[], object], Callable[[], object]]]:
    """(label, general reader, parse_payload) for the hot bodies."""
    request = ExecuteRequest(
        task_id="task-1",
        command="process",
        args=("--fast", "--input", "stdin"),
        env={"LANG": "C"},
        timeout=30,
        mode=ExecutionMode.SYNC,
        input_data=bytes(range(200)),
    )
    response = ExecuteResponse(
        task_id="task-1",
        status=ExecutionStatus.COMPLETED,
        output="processed 200 bytes: ok",
        exit_code=0,
        duration_ms=3,
        resource_usage=ResourceUsage(cpu_percent=12.5, memory_bytes=1 << 20),
    )
    cases = []
    for label, body in (("ExecuteRequest 200 B", request), ("ExecuteResponse", response)):
        message = SpearMessage.create(42, body)
        assert message.parse_payload() == body

        def slow(message: SpearMessage = message) -> object:
            # The strict reader without the fast path.
            return codec._decode_body_generally(message.message_type, message.payload, message.request_id)

        cases.append((f"parse_payload {label}", slow, message.parse_payload))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    options = parser.parse_args()
    seconds = 0.3 if options.quick else 1.5

    print(f"python {sys.version.split()[0]}; times are the best per-operation figure of repeated runs")
    print()
    print(f"{'case':<34}{'baseline':>12}{'ours':>12}{'ratio':>8}{'target':>9}")
    targets = {200: "<= 0.70", 64 * 1024: "-", 1024 * 1024: "<= 0.30"}
    for size, label in ((200, "200 B"), (64 * 1024, "64 KiB"), (1024 * 1024, "1 MiB")):
        data = os.urandom(size)
        base = best_time(baseline(data), seconds)
        mine = best_time(ours(data), seconds)
        print(
            f"{'ExecuteRequest ' + label + ' enc+dec':<34}{base * 1e6:>10.1f}us{mine * 1e6:>10.1f}us"
            f"{mine / base:>8.2f}{targets[size]:>9}"
        )
    for label, slow, fast in body_parses():
        base = best_time(slow, seconds)
        mine = best_time(fast, seconds)
        print(f"{label:<34}{base * 1e6:>10.1f}us{mine * 1e6:>10.1f}us{mine / base:>8.2f}{'-':>9}")
    decoder_run, join_run = reassembly(64 * 1024 * 1024, 64 * 1024)
    base = best_time(join_run, seconds)
    mine = best_time(decoder_run, seconds)
    print(
        f"{'64 MiB frame from 64 KiB pieces':<34}{base * 1e3:>10.1f}ms{mine * 1e3:>10.1f}ms"
        f"{mine / base:>8.2f}{'< 1 s':>9}"
    )
    runs = 5 if options.quick else 20
    base = agent_start(AGENT_START_BASELINE, runs)
    mine = agent_start(AGENT_START_OURS, runs)
    print(
        f"{'agent start: import, auth frames':<34}{base * 1e3:>10.1f}ms{mine * 1e3:>10.1f}ms"
        f"{mine / base:>8.2f}{'-':>9}"
    )


if __name__ == "__main__":
    main()
