"""
Round trips: decode(encode(x)) == x for every body, envelope and frame, and
the serde reading rules (unknown keys ignored, missing nullable keys read as
``None``).
"""

from __future__ import annotations

import math
import struct
import typing
from decimal import Decimal
from typing import Any

import attrs
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.wire import (
    AuthRequest,
    AuthResponse,
    CloseMessage,
    ErrorMessage,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionStatus,
    FrameDecoder,
    HeartbeatMessage,
    MessageType,
    ResourceUsage,
    SignalMessage,
    SpearMessage,
    StreamDataMessage,
    Timestamp,
    codec,
)
from spear_twisted.wire.messages import BODY_TYPES

from .strategies import (
    BODY_STRATEGIES,
    bodies,
    f64,
    raw_messages,
    text,
    timestamps,
    typed_messages,
    u64,
)

SETTINGS = settings(max_examples=150, deadline=None)

_MESSAGE_TYPE_OF = {body: kind for kind, body in BODY_TYPES.items()}

#: The keys whose type is ``T|null`` in PROTOCOL.md section 3, per body.
NULLABLE_KEYS: dict[type[Any], tuple[str, ...]] = {
    AuthRequest: (),
    AuthResponse: ("error_message", "session_id"),
    ExecuteRequest: ("working_dir", "timeout", "input_data"),
    ExecuteResponse: ("output", "error", "exit_code", "duration_ms", "resource_usage"),
    SignalMessage: ("task_id", "data"),
    HeartbeatMessage: (),
    ErrorMessage: ("details", "related_request_id"),
    StreamDataMessage: (),
    CloseMessage: ("reason",),
}

# Shallow JSON values for unknown keys: they must be skipped whatever they hold.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
    | st.sampled_from([":", "::", '{"a":1}', "\\u003a"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)


def roundtrip_body(body: Any, request_id: int = 5) -> Any:
    message = SpearMessage.create(request_id, body, timestamp=Timestamp(1, 2))
    return message.parse_payload()


def body_dict(body: Any) -> dict[str, Any]:
    return orjson.loads(codec.encode_body(body))  # type: ignore[no-any-return]


def ryu_format(value: float) -> str:
    """
    How Rust's ryu (and so serde_json) writes a finite f64, from Python's
    shortest round-trip digits: ryu's ``format64`` layout rules.
    """
    if value == 0.0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    length = len(digits)
    kk = length + exponent  # 10^(kk-1) <= value < 10^kk
    if 0 <= exponent and kk <= 16:
        out = digits + "0" * exponent + ".0"
    elif 0 < kk <= 16:
        out = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        out = "0." + "0" * -kk + digits
    elif length == 1:
        out = f"{digits}e{kk - 1}"
    else:
        out = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + out


class BodyRoundTripTests(SynchronousTestCase):
    """Every body type survives SpearMessage.create(...).parse_payload()."""

    def assert_roundtrips(self, body: Any) -> None:
        decoded = roundtrip_body(body)
        self.assertIs(type(decoded), type(body))
        self.assertEqual(decoded, body)

    @SETTINGS
    @given(BODY_STRATEGIES[AuthRequest])
    def test_auth_request_survives_encode_then_decode(self, body: AuthRequest) -> None:
        self.assert_roundtrips(body)

    @SETTINGS
    @given(BODY_STRATEGIES[AuthResponse])
    def test_auth_response_survives_encode_then_decode(self, body: AuthResponse) -> None:
        self.assert_roundtrips(body)

    @SETTINGS
    @given(BODY_STRATEGIES[ExecuteRequest])
    def test_execute_request_survives_encode_then_decode(self, body: ExecuteRequest) -> None:
        self.assert_roundtrips(body)

    @SETTINGS
    @given(BODY_STRATEGIES[ExecuteResponse])
    def test_execute_response_survives_encode_then_decode(self, body: ExecuteResponse) -> None:
        self.assert_roundtrips(body)

    @SETTINGS
    @given(BODY_STRATEGIES[SignalMessage])
    def test_signal_including_custom_survives_encode_then_decode(self, body: SignalMessage) -> None:
        self.assert_roundtrips(body)

    @SETTINGS
    @given(BODY_STRATEGIES[HeartbeatMessage])
    def test_heartbeat_survives_encode_then_decode(self, body: HeartbeatMessage) -> None:
        self.assert_roundtrips(body)

    @SETTINGS
    @given(BODY_STRATEGIES[ErrorMessage])
    def test_error_message_survives_encode_then_decode(self, body: ErrorMessage) -> None:
        self.assert_roundtrips(body)

    @SETTINGS
    @given(BODY_STRATEGIES[StreamDataMessage])
    def test_stream_data_survives_encode_then_decode(self, body: StreamDataMessage) -> None:
        self.assert_roundtrips(body)

    @SETTINGS
    @given(BODY_STRATEGIES[CloseMessage])
    def test_connection_close_survives_encode_then_decode(self, body: CloseMessage) -> None:
        self.assert_roundtrips(body)

    @SETTINGS
    @given(bodies, u64)
    def test_create_takes_the_message_type_from_the_body_and_decode_body_reads_it_back(
        self, body: Any, rid: int
    ) -> None:
        message = SpearMessage.create(rid, body)
        self.assertIs(message.message_type, _MESSAGE_TYPE_OF[type(body)])
        self.assertEqual(message.request_id, rid)
        self.assertEqual(message.version, 1)
        self.assertEqual(codec.decode_body(message.message_type, message.payload, request_id=rid), body)

    @SETTINGS
    @given(f64)
    def test_f64_survives_bit_for_bit_including_the_sign_of_zero(self, value: float) -> None:
        decoded = roundtrip_body(
            ExecuteResponse("t", ExecutionStatus.RUNNING, resource_usage=ResourceUsage(value))
        )
        cpu = decoded.resource_usage.cpu_percent
        self.assertEqual(struct.pack(">d", cpu), struct.pack(">d", value))

    @settings(max_examples=300, deadline=None)
    @given(f64)
    def test_f64_is_written_as_ryu_writes_it(self, value: float) -> None:
        body = codec.encode_body(ResourceUsage(cpu_percent=value))
        expected = '{"cpu_percent":' + ryu_format(value) + ","
        self.assertTrue(body.startswith(expected.encode()), (body, expected))


class EnvelopeRoundTripTests(SynchronousTestCase):
    """Envelopes survive serialize/deserialize, and frames survive any chunking."""

    @SETTINGS
    @given(raw_messages)
    def test_any_envelope_survives_serialize_then_deserialize(self, message: SpearMessage) -> None:
        self.assertEqual(SpearMessage.deserialize(message.serialize()), message)

    @SETTINGS
    @given(typed_messages)
    def test_typed_message_survives_envelope_and_body_roundtrip(self, message: SpearMessage) -> None:
        decoded = SpearMessage.deserialize(message.serialize())
        self.assertEqual(decoded, message)
        self.assertEqual(decoded.parse_payload(), message.parse_payload())

    @SETTINGS
    @given(raw_messages)
    def test_frame_is_the_big_endian_length_then_the_serialized_envelope(self, message: SpearMessage) -> None:
        data = message.to_frame()
        envelope = message.serialize()
        self.assertEqual(data[:4], struct.pack(">I", len(envelope)))
        self.assertEqual(data[4:], envelope)

    @SETTINGS
    @given(st.lists(typed_messages, min_size=1, max_size=5), st.data())
    def test_messages_survive_framing_split_at_arbitrary_points(
        self, messages: list[SpearMessage], data: st.DataObject
    ) -> None:
        stream = b"".join(message.to_frame() for message in messages)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
        decoder = FrameDecoder()
        received: list[bytes] = []
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            received.extend(decoder.feed(stream[start:end]))
        self.assertIsNone(decoder.end())
        self.assertEqual([SpearMessage.deserialize(body) for body in received], messages)


class UnknownKeyTests(SynchronousTestCase):
    """serde's rule: unknown keys are ignored, in bodies and in the envelope."""

    @SETTINGS
    @given(bodies, st.dictionaries(text, json_values, max_size=4))
    def test_unknown_keys_in_a_body_are_ignored(self, body: Any, extra: dict[str, Any]) -> None:
        fields = body_dict(body)
        extra = {key: value for key, value in extra.items() if key not in fields}
        kind = _MESSAGE_TYPE_OF[type(body)]
        payload = orjson.dumps({**extra, **fields})
        self.assertEqual(codec.decode_body(kind, payload), body)

    @SETTINGS
    @given(
        raw_messages,
        st.dictionaries(text, json_values, max_size=4),
        st.dictionaries(text, json_values, max_size=3),
    )
    def test_unknown_keys_in_the_envelope_and_its_timestamp_are_ignored(
        self, message: SpearMessage, extra: dict[str, Any], extra_in_timestamp: dict[str, Any]
    ) -> None:
        envelope = orjson.loads(message.serialize())
        envelope["timestamp"].update(
            {k: v for k, v in extra_in_timestamp.items() if k not in envelope["timestamp"]}
        )
        envelope.update({k: v for k, v in extra.items() if k not in envelope})
        self.assertEqual(SpearMessage.deserialize(orjson.dumps(envelope)), message)

    def test_unknown_key_in_nested_resource_usage_is_ignored(self) -> None:
        payload = (
            b'{"task_id":"t","status":"Completed","resource_usage":{"cpu_percent":1.5,"gpu_percent":99,'
            b'"memory_bytes":7}}'
        )
        self.assertEqual(
            codec.decode_body(MessageType.EXECUTE_RESPONSE, payload),
            ExecuteResponse("t", ExecutionStatus.COMPLETED, resource_usage=ResourceUsage(1.5, 7)),
        )

    def test_unknown_key_holding_a_large_byte_array_with_booleans_is_ignored(self) -> None:
        junk = orjson.dumps([True, False, *range(200)])
        payload = b'{"reason":"r","junk":' + junk + b"}"
        self.assertEqual(codec.decode_body(MessageType.CONNECTION_CLOSE, payload), CloseMessage("r"))


class MissingNullableKeyTests(SynchronousTestCase):
    """serde's rule: a missing key whose type is ``T|null`` reads as null."""

    def test_nullable_key_table_matches_the_optional_fields(self) -> None:
        # The table above is typed from PROTOCOL.md; the classes must agree with it.
        for cls, keys in NULLABLE_KEYS.items():
            attrs.resolve_types(cls)
            optional = tuple(f.name for f in attrs.fields(cls) if type(None) in typing.get_args(f.type))
            self.assertEqual(optional, keys, cls.__name__)
        self.assertEqual(set(NULLABLE_KEYS), set(BODY_TYPES.values()))

    @SETTINGS
    @given(bodies, st.data())
    def test_missing_nullable_keys_read_as_none(self, body: Any, data: st.DataObject) -> None:
        nullable = NULLABLE_KEYS[type(body)]
        dropped = data.draw(st.sets(st.sampled_from(nullable)) if nullable else st.just(set()))
        fields = {key: value for key, value in body_dict(body).items() if key not in dropped}
        decoded = codec.decode_body(_MESSAGE_TYPE_OF[type(body)], orjson.dumps(fields))
        self.assertEqual(decoded, attrs.evolve(body, **dict.fromkeys(dropped)))

    def test_resource_usage_with_no_keys_reads_as_all_none(self) -> None:
        payload = b'{"task_id":"t","status":"Running","resource_usage":{}}'
        self.assertEqual(
            codec.decode_body(MessageType.EXECUTE_RESPONSE, payload).resource_usage,
            ResourceUsage(None, None, None, None, None, None),
        )

    def test_execute_response_with_only_required_keys_decodes(self) -> None:
        payload = b'{"task_id":"t","status":"Cancelled"}'
        self.assertEqual(
            codec.decode_body(MessageType.EXECUTE_RESPONSE, payload),
            ExecuteResponse("t", ExecutionStatus.CANCELLED, None, None, None, None, None),
        )

    def test_connection_close_object_without_reason_reads_as_no_reason(self) -> None:
        self.assertEqual(codec.decode_body(MessageType.CONNECTION_CLOSE, b"{}"), CloseMessage(None))

    def test_explicit_null_reads_as_none_like_a_missing_key(self) -> None:
        self.assertEqual(
            codec.decode_body(MessageType.SIGNAL, b'{"signal_type":"Pause","task_id":null,"data":null}'),
            codec.decode_body(MessageType.SIGNAL, b'{"signal_type":"Pause"}'),
        )


class TimestampTests(SynchronousTestCase):
    """The SystemTime object of the envelope and heartbeats."""

    @SETTINGS
    @given(timestamps)
    def test_timestamp_nanoseconds_round_trip(self, timestamp: Timestamp) -> None:
        self.assertEqual(Timestamp.from_ns(timestamp.to_ns()), timestamp)

    def test_timestamp_from_seconds_splits_seconds_and_nanoseconds(self) -> None:
        self.assertEqual(Timestamp.from_seconds(1700000000.5), Timestamp(1700000000, 500000000))
        self.assertEqual(Timestamp(3, 250000000).to_seconds(), 3.25)

    def test_timestamp_refuses_nanoseconds_of_a_whole_second(self) -> None:
        self.assertRaises(ValueError, Timestamp, 0, 10**9)
        self.assertRaises(ValueError, Timestamp, -1, 0)
