"""
Golden frames written by hand from PROTOCOL.md, checked byte for byte both ways.

Every body JSON text below is typed out from PROTOCOL.md section 3 the way
Rust's serde_json writes it: compact, keys in struct order, ``null`` for an
absent optional, byte arrays as arrays of numbers, non-ASCII text raw in
UTF-8, control characters escaped (``\\n``, ``\\u0001``), ``f64`` in ryu's
shortest form.  None of it is produced by our encoder; the tests compare the
encoder's output with it, and decode it into the typed values.

Test methods are generated per golden case (see the end of the module), so
each case and direction fails on its own with a descriptive name.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.errors import ErrorCode
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
    FrameDecoder,
    HeartbeatMessage,
    MessageType,
    ResourceUsage,
    SignalMessage,
    SignalType,
    SpearMessage,
    StreamDataMessage,
    Timestamp,
    codec,
    encode_frame,
)

U64_MAX = 18446744073709551615

#: The envelope timestamp every golden message carries, and its JSON.
TS = Timestamp(1700000000, 123456789)
TS_JSON = '{"secs_since_epoch":1700000000,"nanos_since_epoch":123456789}'


def envelope_json(message_type: str, request_id: int, body: bytes, timestamp_json: str = TS_JSON) -> bytes:
    """The envelope of PROTOCOL.md section 2, fields in the Rust struct's order."""
    payload = "[" + ",".join(str(byte) for byte in body) + "]"
    return (
        '{"message_type":"'
        + message_type
        + '","request_id":'
        + str(request_id)
        + ',"timestamp":'
        + timestamp_json
        + ',"payload":'
        + payload
        + ',"version":1}'
    ).encode("utf-8")


def frame(envelope: bytes) -> bytes:
    """A 4-byte big-endian length, then the envelope."""
    return len(envelope).to_bytes(4, "big") + envelope


#: (case name, wire message type name, MessageType, request id, body, hand-written body JSON)
GOLDEN: list[tuple[str, str, MessageType, int, Any, str]] = []


def golden(name: str, type_name: str, kind: MessageType, request_id: int, body: Any, text: str) -> None:
    GOLDEN.append((name, type_name, kind, request_id, body, text))


# -- AuthRequest ----------------------------------------------------------------------------------

golden(
    "auth_request",
    "AuthRequest",
    MessageType.AUTH_REQUEST,
    1,
    AuthRequest(
        instance_id="process:worker-001",
        token="s3cret-token",
        client_version="0.1.0",
        client_type="python",
        extra_params={"lang": "python"},
    ),
    '{"instance_id":"process:worker-001","token":"s3cret-token","client_version":"0.1.0",'
    '"client_type":"python","extra_params":{"lang":"python"}}',
)
golden(
    "auth_request_with_empty_extra_params",
    "AuthRequest",
    MessageType.AUTH_REQUEST,
    0,
    AuthRequest("wasm:w", "t", "", "rust", {}),
    '{"instance_id":"wasm:w","token":"t","client_version":"","client_type":"rust","extra_params":{}}',
)

# -- AuthResponse ------------------------------------------------------------------------------

golden(
    "auth_response_success",
    "AuthResponse",
    MessageType.AUTH_RESPONSE,
    1,
    AuthResponse(True, None, "sess-abc", "spear-twisted/0.1.0", ("heartbeat", "streaming")),
    '{"success":true,"error_message":null,"session_id":"sess-abc","server_version":"spear-twisted/0.1.0",'
    '"supported_features":["heartbeat","streaming"]}',
)
golden(
    "auth_response_failure",
    "AuthResponse",
    MessageType.AUTH_RESPONSE,
    1,
    AuthResponse(False, "invalid token", None, "spear-twisted/0.1.0", ()),
    '{"success":false,"error_message":"invalid token","session_id":null,'
    '"server_version":"spear-twisted/0.1.0","supported_features":[]}',
)

# -- ExecuteRequest ----------------------------------------------------------------------------

golden(
    "execute_request_with_every_field_and_non_ascii_args",
    "ExecuteRequest",
    MessageType.EXECUTE_REQUEST,
    42,
    ExecuteRequest(
        task_id="task-1",
        command="echo",
        args=("hello", "wörld 中文 😀"),
        env={"PATH": "/usr/bin"},
        working_dir="/tmp",
        timeout=30,
        mode=ExecutionMode.SYNC,
        input_data=b"hi\n",
    ),
    '{"task_id":"task-1","command":"echo","args":["hello","wörld 中文 😀"],"env":{"PATH":"/usr/bin"},'
    '"working_dir":"/tmp","timeout":30,"mode":"Sync","input_data":[104,105,10]}',
)
golden(
    "execute_request_with_u64_max_timeout",
    "ExecuteRequest",
    MessageType.EXECUTE_REQUEST,
    U64_MAX,
    ExecuteRequest("t", "c", (), {}, None, U64_MAX, ExecutionMode.ASYNC, b""),
    '{"task_id":"t","command":"c","args":[],"env":{},"working_dir":null,"timeout":18446744073709551615,'
    '"mode":"Async","input_data":[]}',
)
for _wire, _mode in [
    ("Sync", ExecutionMode.SYNC),
    ("Async", ExecutionMode.ASYNC),
    ("Stream", ExecutionMode.STREAM),
    ("Interactive", ExecutionMode.INTERACTIVE),
]:
    golden(
        f"execute_request_mode_{_wire.lower()}",
        "ExecuteRequest",
        MessageType.EXECUTE_REQUEST,
        7,
        ExecuteRequest("t", "run", (), {}, None, None, _mode, None),
        '{"task_id":"t","command":"run","args":[],"env":{},"working_dir":null,"timeout":null,'
        '"mode":"' + _wire + '","input_data":null}',
    )

# -- ExecuteResponse -------------------------------------------------------------------------

golden(
    "execute_response_with_resource_usage",
    "ExecuteResponse",
    MessageType.EXECUTE_RESPONSE,
    42,
    ExecuteResponse(
        task_id="task-1",
        status=ExecutionStatus.COMPLETED,
        output="hello\n",
        error=None,
        exit_code=0,
        duration_ms=1500,
        resource_usage=ResourceUsage(12.5, 1048576, 0, None, U64_MAX, None),
    ),
    r'{"task_id":"task-1","status":"Completed","output":"hello\n","error":null,"exit_code":0,'
    r'"duration_ms":1500,"resource_usage":{"cpu_percent":12.5,"memory_bytes":1048576,'
    r'"disk_read_bytes":0,"disk_write_bytes":null,"network_rx_bytes":18446744073709551615,'
    r'"network_tx_bytes":null}}',
)
golden(
    "execute_response_with_every_resource_figure",
    "ExecuteResponse",
    MessageType.EXECUTE_RESPONSE,
    43,
    ExecuteResponse(
        "t", ExecutionStatus.COMPLETED, "", "", 2147483647, U64_MAX, ResourceUsage(0.0, 1, 2, 3, 4, 5)
    ),
    '{"task_id":"t","status":"Completed","output":"","error":"","exit_code":2147483647,'
    '"duration_ms":18446744073709551615,"resource_usage":{"cpu_percent":0.0,"memory_bytes":1,'
    '"disk_read_bytes":2,"disk_write_bytes":3,"network_rx_bytes":4,"network_tx_bytes":5}}',
)
golden(
    "execute_response_with_control_characters_and_i32_min_exit_code",
    "ExecuteResponse",
    MessageType.EXECUTE_RESPONSE,
    44,
    ExecuteResponse(
        "t",
        ExecutionStatus.FAILED,
        'line1\nline2\t"quoted" back\\slash /',
        "boom\x01\x1f\x00 \x7f\u2028 é",
        -2147483648,
        None,
        None,
    ),
    # serde escapes " \ and the C0 controls (\n \t short, others \u00XX in lower
    # case); DEL, U+2028, '/' and non-ASCII are written as they are.
    r'{"task_id":"t","status":"Failed","output":"line1\nline2\t\"quoted\" back\\slash /",'
    r'"error":"boom\u0001\u001f\u0000 ' + "\x7f\u2028 é" + r'","exit_code":-2147483648,'
    r'"duration_ms":null,"resource_usage":null}',
)
for _wire, _status in [
    ("Received", ExecutionStatus.RECEIVED),
    ("Started", ExecutionStatus.STARTED),
    ("Running", ExecutionStatus.RUNNING),
    ("Completed", ExecutionStatus.COMPLETED),
    ("Failed", ExecutionStatus.FAILED),
    ("Cancelled", ExecutionStatus.CANCELLED),
    ("Timeout", ExecutionStatus.TIMEOUT),
]:
    golden(
        f"execute_response_status_{_wire.lower()}",
        "ExecuteResponse",
        MessageType.EXECUTE_RESPONSE,
        8,
        ExecuteResponse("t", _status),
        '{"task_id":"t","status":"' + _wire + '","output":null,"error":null,"exit_code":null,'
        '"duration_ms":null,"resource_usage":null}',
    )
# f64 as serde (ryu) writes it: shortest digits, ".0" on integral values,
# exponent without "+" from 1e16 up and below 1e-5.
for _label, _value, _text in [
    ("12_5", 12.5, "12.5"),
    ("100", 100.0, "100.0"),
    ("1e16", 1e16, "1e16"),
    ("1e15", 1e15, "1000000000000000.0"),
    ("1e_minus_7", 1e-7, "1e-7"),
    ("1e_minus_5", 1e-5, "0.00001"),
    ("0_1", 0.1, "0.1"),
    ("1_5e300", 1.5e300, "1.5e300"),
    ("17_digits", 1.2345678901234568e17, "1.2345678901234568e17"),
    ("negative_zero", -0.0, "-0.0"),
    ("smallest_subnormal", 5e-324, "5e-324"),
]:
    golden(
        f"execute_response_cpu_percent_{_label}",
        "ExecuteResponse",
        MessageType.EXECUTE_RESPONSE,
        9,
        ExecuteResponse("t", ExecutionStatus.RUNNING, resource_usage=ResourceUsage(cpu_percent=_value)),
        '{"task_id":"t","status":"Running","output":null,"error":null,"exit_code":null,"duration_ms":null,'
        '"resource_usage":{"cpu_percent":' + _text + ',"memory_bytes":null,"disk_read_bytes":null,'
        '"disk_write_bytes":null,"network_rx_bytes":null,"network_tx_bytes":null}}',
    )

# -- Signal --------------------------------------------------------------------------------------

for _wire, _signal in [
    ("Terminate", SignalType.TERMINATE),
    ("Pause", SignalType.PAUSE),
    ("Resume", SignalType.RESUME),
    ("Restart", SignalType.RESTART),
]:
    golden(
        f"signal_{_wire.lower()}",
        "Signal",
        MessageType.SIGNAL,
        3,
        SignalMessage(_signal),
        '{"signal_type":"' + _wire + '","task_id":null,"data":null}',
    )
golden(
    "signal_custom_with_task_and_data",
    "Signal",
    MessageType.SIGNAL,
    4,
    SignalMessage(CustomSignal("reload-config"), "task-1", b"\x00\xff"),
    '{"signal_type":{"Custom":"reload-config"},"task_id":"task-1","data":[0,255]}',
)
golden(
    "signal_custom_made_with_signal_type_custom",
    "Signal",
    MessageType.SIGNAL,
    5,
    SignalMessage(SignalType.custom("dump état"), None, None),
    '{"signal_type":{"Custom":"dump état"},"task_id":null,"data":null}',
)

# -- Heartbeat -------------------------------------------------------------------------------

for _wire, _status in [
    ("Active", ConnectionStatus.ACTIVE),
    ("Idle", ConnectionStatus.IDLE),
    ("Busy", ConnectionStatus.BUSY),
    ("Error", ConnectionStatus.ERROR),
]:
    golden(
        f"heartbeat_status_{_wire.lower()}",
        "Heartbeat",
        MessageType.HEARTBEAT,
        0,
        HeartbeatMessage(Timestamp(1700000001, 999999999), 42, _status),
        '{"timestamp":{"secs_since_epoch":1700000001,"nanos_since_epoch":999999999},"sequence":42,'
        '"status":"' + _wire + '"}',
    )
golden(
    "heartbeat_at_the_epoch_with_u64_max_sequence",
    "Heartbeat",
    MessageType.HEARTBEAT,
    0,
    HeartbeatMessage(Timestamp(0, 0), U64_MAX, ConnectionStatus.ACTIVE),
    '{"timestamp":{"secs_since_epoch":0,"nanos_since_epoch":0},"sequence":18446744073709551615,'
    '"status":"Active"}',
)

# -- Error ---------------------------------------------------------------------------------------

golden(
    "error_with_details_and_related_request",
    "Error",
    MessageType.ERROR,
    7,
    ErrorMessage(ErrorCode.MESSAGE_TOO_LARGE, "frame too large", "limit is 65536 bytes", 7),
    '{"error_code":1002,"message":"frame too large","details":"limit is 65536 bytes","related_request_id":7}',
)
golden(
    "error_without_optionals",
    "Error",
    MessageType.ERROR,
    0,
    ErrorMessage(1100, "not authenticated"),
    '{"error_code":1100,"message":"not authenticated","details":null,"related_request_id":null}',
)
golden(
    "error_with_u32_max_code",
    "Error",
    MessageType.ERROR,
    1,
    ErrorMessage(4294967295, "?", None, U64_MAX),
    '{"error_code":4294967295,"message":"?","details":null,"related_request_id":18446744073709551615}',
)

# -- StreamData ----------------------------------------------------------------------------

golden(
    "stream_data_last",
    "StreamData",
    MessageType.STREAM_DATA,
    12,
    StreamDataMessage("stream-1", b"\x00\x01\xfe\xff", True, 3),
    '{"stream_id":"stream-1","data":[0,1,254,255],"is_last":true,"sequence":3}',
)
golden(
    "stream_data_empty_not_last",
    "StreamData",
    MessageType.STREAM_DATA,
    12,
    StreamDataMessage("s", b"", False, 0),
    '{"stream_id":"s","data":[],"is_last":false,"sequence":0}',
)

# -- ConnectionClose ---------------------------------------------------------------------------

golden(
    "connection_close_with_reason",
    "ConnectionClose",
    MessageType.CONNECTION_CLOSE,
    0,
    CloseMessage("shutting down: ünïcode"),
    '{"reason":"shutting down: ünïcode"}',
)
golden(
    "connection_close_without_reason_is_an_empty_payload",
    "ConnectionClose",
    MessageType.CONNECTION_CLOSE,
    0,
    CloseMessage(None),
    "",
)


# -- the generated tests -------------------------------------------------------------------------------


class GoldenFrameTests(SynchronousTestCase):
    """Exact bytes, both ways, for every message type and every enum variant."""

    def check_body_encodes_exactly(self, kind: MessageType, request_id: int, body: Any, text: str) -> None:
        payload = SpearMessage.create(request_id, body, timestamp=TS).payload
        self.assertEqual(payload, text.encode("utf-8"))
        if text:
            self.assertEqual(codec.encode_body(body), text.encode("utf-8"))

    def check_body_decodes(self, kind: MessageType, request_id: int, body: Any, text: str) -> None:
        message = SpearMessage(kind, request_id, TS, text.encode("utf-8"), 1)
        decoded = message.parse_payload()
        self.assertIs(type(decoded), type(body))
        self.assertEqual(decoded, body)
        self.assertEqual(codec.decode_body(kind, text.encode("utf-8")), body)

    def check_envelope_and_frame_encode_exactly(
        self, type_name: str, request_id: int, body: Any, text: str
    ) -> None:
        expected_envelope = envelope_json(type_name, request_id, text.encode("utf-8"))
        message = SpearMessage.create(request_id, body, timestamp=TS)
        self.assertEqual(message.serialize(), expected_envelope)
        self.assertEqual(message.to_frame(), frame(expected_envelope))
        self.assertEqual(encode_frame(expected_envelope), frame(expected_envelope))

    def check_frame_decodes(
        self, type_name: str, kind: MessageType, request_id: int, body: Any, text: str
    ) -> None:
        expected_envelope = envelope_json(type_name, request_id, text.encode("utf-8"))
        decoder = FrameDecoder()
        bodies = decoder.feed(frame(expected_envelope))
        self.assertEqual(bodies, [expected_envelope])
        self.assertIsNone(decoder.end())
        message = SpearMessage.deserialize(bodies[0])
        self.assertEqual(message, SpearMessage(kind, request_id, TS, text.encode("utf-8"), 1))
        self.assertIs(message.message_type, kind)
        self.assertEqual(message.parse_payload(), body)


def _add_golden_tests() -> None:
    for name, type_name, kind, request_id, body, text in GOLDEN:

        def body_encodes(self: GoldenFrameTests, k=kind, r=request_id, b=body, t=text) -> None:
            self.check_body_encodes_exactly(k, r, b, t)

        def body_decodes(self: GoldenFrameTests, k=kind, r=request_id, b=body, t=text) -> None:
            self.check_body_decodes(k, r, b, t)

        def envelope_encodes(self: GoldenFrameTests, n=type_name, r=request_id, b=body, t=text) -> None:
            self.check_envelope_and_frame_encode_exactly(n, r, b, t)

        def frame_decodes(self: GoldenFrameTests, n=type_name, k=kind, r=request_id, b=body, t=text) -> None:
            self.check_frame_decodes(n, k, r, b, t)

        for suffix, method in [
            ("body_encodes_to_hand_written_json", body_encodes),
            ("body_decodes_from_hand_written_json", body_decodes),
            ("envelope_and_frame_encode_to_hand_written_bytes", envelope_encodes),
            ("hand_written_frame_decodes_to_the_message", frame_decodes),
        ]:
            test_name = f"test_{name}_{suffix}"
            assert not hasattr(GoldenFrameTests, test_name), test_name
            method.__name__ = test_name
            setattr(GoldenFrameTests, test_name, method)


_add_golden_tests()


class GoldenCoverageTests(SynchronousTestCase):
    """The golden cases cover every message type and every enum variant."""

    def test_golden_cases_cover_all_nine_message_types(self) -> None:
        self.assertEqual({kind for _, _, kind, _, _, _ in GOLDEN}, set(MessageType))
        self.assertEqual(len(MessageType), 9)

    def test_wire_names_of_message_types_are_the_protocol_names(self) -> None:
        names = {kind: type_name for _, type_name, kind, _, _, _ in GOLDEN}
        self.assertEqual(
            sorted(names.values()),
            sorted(
                [
                    "AuthRequest",
                    "AuthResponse",
                    "ExecuteRequest",
                    "ExecuteResponse",
                    "Signal",
                    "Heartbeat",
                    "Error",
                    "StreamData",
                    "ConnectionClose",
                ]
            ),
        )
        for kind, type_name in names.items():
            self.assertEqual(kind.value, type_name)

    def test_golden_cases_cover_every_enum_variant(self) -> None:
        bodies = [body for _, _, _, _, body, _ in GOLDEN]
        modes = {b.mode for b in bodies if isinstance(b, ExecuteRequest)}
        statuses = {b.status for b in bodies if isinstance(b, ExecuteResponse)}
        connection = {b.status for b in bodies if isinstance(b, HeartbeatMessage)}
        signals = {type(b.signal_type) for b in bodies if isinstance(b, SignalMessage)}
        units = {
            b.signal_type
            for b in bodies
            if isinstance(b, SignalMessage) and isinstance(b.signal_type, SignalType)
        }
        self.assertEqual(modes, set(ExecutionMode))
        self.assertEqual(len(ExecutionMode), 4)
        self.assertEqual(statuses, set(ExecutionStatus))
        self.assertEqual(len(ExecutionStatus), 7)
        self.assertEqual(connection, set(ConnectionStatus))
        self.assertEqual(len(ConnectionStatus), 4)
        self.assertEqual(units, set(SignalType))
        self.assertEqual(len(SignalType), 4)
        self.assertIn(CustomSignal, signals)


class HandWrittenEnvelopeTests(SynchronousTestCase):
    """Whole frames typed out byte by byte, prefix included."""

    CLOSE_ENVELOPE = (
        b'{"message_type":"ConnectionClose","request_id":0,'
        b'"timestamp":{"secs_since_epoch":0,"nanos_since_epoch":0},"payload":[],"version":1}'
    )
    CLOSE_FRAME = b"\x00\x00\x00\x83" + CLOSE_ENVELOPE

    REASON_ENVELOPE = (
        b'{"message_type":"ConnectionClose","request_id":9,'
        b'"timestamp":{"secs_since_epoch":1,"nanos_since_epoch":2},'
        b'"payload":[123,34,114,101,97,115,111,110,34,58,34,98,121,101,34,125],"version":1}'
    )
    REASON_FRAME = b"\x00\x00\x00\xbb" + REASON_ENVELOPE

    def test_empty_connection_close_frame_is_exactly_the_hand_written_bytes(self) -> None:
        message = SpearMessage.connection_close(0)
        message = SpearMessage(message.message_type, 0, Timestamp(0, 0), message.payload)
        self.assertEqual(message.to_frame(), self.CLOSE_FRAME)
        self.assertEqual(len(self.CLOSE_ENVELOPE), 0x83)

    def test_hand_written_empty_connection_close_frame_decodes_to_close_without_reason(self) -> None:
        [body] = FrameDecoder().feed(self.CLOSE_FRAME)
        message = SpearMessage.deserialize(body)
        self.assertEqual(message, SpearMessage(MessageType.CONNECTION_CLOSE, 0, Timestamp(0, 0), b"", 1))
        self.assertEqual(message.parse_payload(), CloseMessage(None))

    def test_connection_close_with_reason_frame_is_exactly_the_hand_written_bytes(self) -> None:
        message = SpearMessage.create(9, CloseMessage("bye"), timestamp=Timestamp(1, 2))
        self.assertEqual(message.to_frame(), self.REASON_FRAME)
        self.assertEqual(SpearMessage.connection_close(9, "bye").payload, b'{"reason":"bye"}')

    def test_hand_written_connection_close_with_reason_frame_decodes_to_the_reason(self) -> None:
        [body] = FrameDecoder().feed(self.REASON_FRAME)
        self.assertEqual(SpearMessage.deserialize(body).parse_payload(), CloseMessage("bye"))

    def test_envelope_with_extreme_values_encodes_exactly(self) -> None:
        message = SpearMessage(
            MessageType.HEARTBEAT, U64_MAX, Timestamp(U64_MAX, 999999999), b"\x00\xff", 255
        )
        expected = (
            b'{"message_type":"Heartbeat","request_id":18446744073709551615,'
            b'"timestamp":{"secs_since_epoch":18446744073709551615,"nanos_since_epoch":999999999},'
            b'"payload":[0,255],"version":255}'
        )
        self.assertEqual(message.serialize(), expected)
        self.assertEqual(SpearMessage.deserialize(expected), message)

    def test_protocol_md_example_envelope_decodes(self) -> None:
        body = (
            b'{"timestamp":{"secs_since_epoch":1700000000,"nanos_since_epoch":0},'
            b'"sequence":1,"status":"Idle"}'
        )
        text = envelope_json("Heartbeat", 7, body, TS_JSON)
        message = SpearMessage.deserialize(text)
        self.assertEqual(message.request_id, 7)
        self.assertEqual(message.timestamp, Timestamp(1700000000, 123456789))
        self.assertEqual(message.version, 1)
        self.assertEqual(
            message.parse_payload(), HeartbeatMessage(Timestamp(1700000000, 0), 1, ConnectionStatus.IDLE)
        )

    def test_envelope_fields_in_another_order_decode_the_same(self) -> None:
        reordered = (
            b'{"version":1,"payload":[],"timestamp":{"nanos_since_epoch":2,"secs_since_epoch":1},'
            b'"request_id":5,"message_type":"ConnectionClose"}'
        )
        self.assertEqual(
            SpearMessage.deserialize(reordered),
            SpearMessage(MessageType.CONNECTION_CLOSE, 5, Timestamp(1, 2), b"", 1),
        )

    def test_body_keys_in_another_order_and_with_whitespace_decode_the_same(self) -> None:
        text = (
            b' {\n "status" : "Busy",\t"sequence":3, '
            b'"timestamp":{"nanos_since_epoch":5,"secs_since_epoch":4}}\r\n'
        )
        self.assertEqual(
            codec.decode_body(MessageType.HEARTBEAT, text),
            HeartbeatMessage(Timestamp(4, 5), 3, ConnectionStatus.BUSY),
        )

    def test_escaped_text_a_peer_may_send_decodes_to_the_same_string(self) -> None:
        # serde_json accepts every JSON escape; \u00e9, \/ and a surrogate pair among them.
        text = rb'{"reason":"caf\u00e9 \/ \ud83d\ude00 \u0041\b\f\r"}'
        self.assertEqual(
            codec.decode_body(MessageType.CONNECTION_CLOSE, text), CloseMessage("café / 😀 A\b\f\r")
        )

    def test_integral_f64_written_as_an_integer_decodes_as_a_float(self) -> None:
        body = codec.decode_body(
            MessageType.EXECUTE_RESPONSE,
            b'{"task_id":"t","status":"Running","resource_usage":{"cpu_percent":100}}',
        )
        self.assertEqual(body.resource_usage.cpu_percent, 100.0)
        self.assertIs(type(body.resource_usage.cpu_percent), float)
