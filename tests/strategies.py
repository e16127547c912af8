"""Hypothesis strategies for every wire value, shared by the wire tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from spear_twisted.wire import (
    AuthRequest,
    AuthResponse,
    CloseMessage,
    ConnectionStatus,
    CustomSignal,
    ErrorMessage,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionMode,
    ExecutionStatus,
    HeartbeatMessage,
    MessageType,
    ResourceUsage,
    SignalMessage,
    SignalType,
    SpearMessage,
    StreamDataMessage,
    Timestamp,
)

U8_MAX = 2**8 - 1
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def bounded_int(low: int, high: int) -> st.SearchStrategy[int]:
    """Any integer in range, with the bounds and their neighbours drawn often."""
    edges = sorted(edge for edge in {low, low + 1, 0, 1, high - 1, high} if low <= edge <= high)
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


u8 = bounded_int(0, U8_MAX)
u32 = bounded_int(0, U32_MAX)
u64 = bounded_int(0, U64_MAX)
i32 = bounded_int(I32_MIN, I32_MAX)
nanos = bounded_int(0, 10**9 - 1)

#: Any text: st.text() draws from every plane (non-BMP included) but never a lone surrogate.
text = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(min_codepoint=0x10000), max_size=8),  # non-BMP only
    st.text(st.characters(max_codepoint=0x20), max_size=8),  # control characters
)
small_bytes = st.binary(max_size=300)  # long enough to cross the bulk paths (>= 64)
string_map = st.dictionaries(text, text, max_size=5)
strings = st.lists(text, max_size=6).map(tuple)
# Finite doubles, with the formatting edge cases (exponent forms, -0.0) drawn often.
f64 = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 12.5, 100.0, 1e15, 1e16, 1e-5, 1e-6, 1e-7, 5e-324, 1.7976931348623157e308]),
)

timestamps = st.builds(Timestamp, u64, nanos)
signals: st.SearchStrategy[Any] = st.one_of(st.sampled_from(list(SignalType)), st.builds(CustomSignal, text))

auth_requests = st.builds(AuthRequest, text, text, text, text, string_map)
auth_responses = st.builds(AuthResponse, st.booleans(), st.none() | text, st.none() | text, text, strings)
execute_requests = st.builds(
    ExecuteRequest,
    text,
    text,
    strings,
    string_map,
    st.none() | text,
    st.none() | u64,
    st.sampled_from(list(ExecutionMode)),
    st.none() | small_bytes,
)
resource_usages = st.builds(
    ResourceUsage,
    st.none() | f64,
    st.none() | u64,
    st.none() | u64,
    st.none() | u64,
    st.none() | u64,
    st.none() | u64,
)
execute_responses = st.builds(
    ExecuteResponse,
    text,
    st.sampled_from(list(ExecutionStatus)),
    st.none() | text,
    st.none() | text,
    st.none() | i32,
    st.none() | u64,
    st.none() | resource_usages,
)
signal_messages = st.builds(SignalMessage, signals, st.none() | text, st.none() | small_bytes)
heartbeats = st.builds(HeartbeatMessage, timestamps, u64, st.sampled_from(list(ConnectionStatus)))
error_messages = st.builds(ErrorMessage, u32, text, st.none() | text, st.none() | u64)
stream_data = st.builds(StreamDataMessage, text, small_bytes, st.booleans(), u64)
close_messages = st.builds(CloseMessage, st.none() | text)

#: Every body class with its strategy.
BODY_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    AuthRequest: auth_requests,
    AuthResponse: auth_responses,
    ExecuteRequest: execute_requests,
    ExecuteResponse: execute_responses,
    SignalMessage: signal_messages,
    HeartbeatMessage: heartbeats,
    ErrorMessage: error_messages,
    StreamDataMessage: stream_data,
    CloseMessage: close_messages,
}

bodies: st.SearchStrategy[Any] = st.one_of(*BODY_STRATEGIES.values())

#: Envelopes with any payload bytes (the envelope does not parse its payload).
raw_messages = st.builds(
    SpearMessage, st.sampled_from(list(MessageType)), u64, timestamps, st.binary(max_size=200), u8
)

#: Envelopes carrying a valid body of their type.
typed_messages = st.builds(
    lambda request_id, body, timestamp: SpearMessage.create(request_id, body, timestamp=timestamp),
    u64,
    bodies,
    timestamps,
)
