"""
One test per bad-input class of PROTOCOL.md sections 1 and 3: each asserts
the error class, its code, and what the error says (and where).
"""

from __future__ import annotations

import struct
from typing import Any

import orjson
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.errors import (
    DecodeError,
    EmptyFrame,
    ErrorCode,
    FrameTooLarge,
    InvalidJson,
    InvalidMessage,
    TruncatedFrame,
)
from spear_twisted.wire import (
    FrameDecoder,
    MessageType,
    SpearMessage,
    Timestamp,
    codec,
    decode_message,
)

TS_JSON = '{"secs_since_epoch":1700000000,"nanos_since_epoch":5}'
HEARTBEAT = b'{"timestamp":{"secs_since_epoch":1,"nanos_since_epoch":2},"sequence":3,"status":"Active"}'
EXECUTE_REQUEST = (
    '{"task_id":"t","command":"c","args":["a","b"],"env":{"K":"V"},"working_dir":null,'
    '"timeout":null,"mode":"Sync","input_data":null}'
)
EXECUTE_RESPONSE = (
    '{"task_id":"t","status":"Completed","output":null,"error":null,"exit_code":0,'
    '"duration_ms":null,"resource_usage":{"cpu_percent":1.5,"memory_bytes":null,"disk_read_bytes":null,'
    '"disk_write_bytes":null,"network_rx_bytes":null,"network_tx_bytes":null}}'
)


def envelope(
    *,
    message_type: str = '"Heartbeat"',
    request_id: str = "7",
    timestamp: str = TS_JSON,
    payload: str | None = None,
    version: str = "1",
) -> bytes:
    """An envelope with any field's JSON text replaced."""
    if payload is None:
        payload = "[" + ",".join(map(str, HEARTBEAT)) + "]"
    return (
        '{"message_type":'
        + message_type
        + ',"request_id":'
        + request_id
        + ',"timestamp":'
        + timestamp
        + ',"payload":'
        + payload
        + ',"version":'
        + version
        + "}"
    ).encode()


def carrying(kind: MessageType, body: bytes | str, request_id: int = 42) -> SpearMessage:
    """A message of ``kind`` whose payload is exactly ``body``."""
    data = body.encode() if isinstance(body, str) else body
    return SpearMessage(kind, request_id, Timestamp(1, 0), data, 1)


class BadInputTestCase(SynchronousTestCase):
    def assert_envelope_refused(self, data: bytes, error_class: type[DecodeError]) -> Any:
        error = self.assertRaises(error_class, decode_message, data)
        self.assertIs(type(error), error_class)
        self.assertEqual(
            error.code, ErrorCode.INVALID_JSON if error_class is InvalidJson else ErrorCode.INVALID_MESSAGE
        )
        # SpearMessage.deserialize is the same reader.
        self.assertIs(type(self.assertRaises(DecodeError, SpearMessage.deserialize, data)), error_class)
        return error

    def assert_invalid_json(self, data: bytes, *fragments: str) -> InvalidJson:
        error = self.assert_envelope_refused(data, InvalidJson)
        self.assertEqual(error.code, ErrorCode.INVALID_JSON)
        self.assertTrue(str(error).startswith("invalid JSON"), str(error))
        for fragment in fragments:
            self.assertIn(fragment, str(error))
        return error  # type: ignore[no-any-return]

    def assert_invalid_message(self, data: bytes, path: str, reason: str) -> InvalidMessage:
        error = self.assert_envelope_refused(data, InvalidMessage)
        self.assertIn((path, reason), error.problems)
        self.assertIn(f"{path}: {reason}" if path else reason, str(error))
        return error  # type: ignore[no-any-return]

    def assert_payload_invalid_json(self, message: SpearMessage, *fragments: str) -> InvalidJson:
        error = self.assertRaises(DecodeError, message.parse_payload)
        self.assertIs(type(error), InvalidJson)
        self.assertEqual(error.code, ErrorCode.INVALID_JSON)
        self.assertEqual(error.request_id, message.request_id)
        self.assertTrue(error.message.startswith("payload: "), error.message)
        for fragment in fragments:
            self.assertIn(fragment, str(error))
        return error

    def assert_payload_invalid(self, message: SpearMessage, path: str, reason: str) -> InvalidMessage:
        error = self.assertRaises(DecodeError, message.parse_payload)
        self.assertIs(type(error), InvalidMessage)
        self.assertEqual(error.code, ErrorCode.INVALID_MESSAGE)
        self.assertEqual(error.request_id, message.request_id)
        self.assertIn((path, reason), error.problems)
        self.assertIn(f"{path}: {reason}", str(error))
        self.assertIn(f"(request {message.request_id})", str(error))
        return error


# -- section 1: framing ------------------------------------------------------------------------


class FramingViolationTests(SynchronousTestCase):
    def test_oversize_length_is_refused_as_frame_too_large_with_message_too_large_code(self) -> None:
        decoder = FrameDecoder(max_message_size=65536)
        self.assertEqual(decoder.feed(struct.pack(">I", 65537) + b"{"), [])
        error = decoder.error
        self.assertIs(type(error), FrameTooLarge)
        self.assertEqual(error.code, ErrorCode.MESSAGE_TOO_LARGE)
        self.assertEqual(str(error), "frame of 65537 bytes exceeds the limit of 65536 bytes")
        self.assertEqual(decoder.buffered, 0)

    def test_zero_length_is_refused_as_empty_frame_with_malformed_frame_code(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(b"\x00\x00\x00\x00")
        self.assertIs(type(decoder.error), EmptyFrame)
        self.assertEqual(decoder.error.code, ErrorCode.MALFORMED_FRAME)
        self.assertEqual(str(decoder.error), "frame with a zero length")

    def test_frame_truncated_at_close_is_a_truncated_frame_with_malformed_frame_code(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(b"\x00\x00\x01\x00" + b"{" * 10)
        error = decoder.end()
        self.assertIs(type(error), TruncatedFrame)
        self.assertEqual(error.code, ErrorCode.MALFORMED_FRAME)
        self.assertEqual(str(error), "connection ended inside a frame (10 of 256 body bytes)")


# -- section 3: not strict JSON -------------------------------------------------------------------


class InvalidJsonTests(BadInputTestCase):
    def test_invalid_utf8_in_the_envelope_is_invalid_json(self) -> None:
        self.assert_invalid_json(envelope(message_type='"Heart@beat"').replace(b"@", b"\xff"), "UTF-8")

    def test_invalid_utf8_bytes_are_invalid_json(self) -> None:
        for data in (
            b'{"a":"\xff"}',
            b'{"a":"\xc3"}',
            b'{"a":"\xed\xa0\x80"}',
            b'{"a":"\xf8\x88\x80\x80\x80"}',
        ):
            self.assert_invalid_json(data, "UTF-8")

    def test_invalid_utf8_in_a_payload_is_invalid_json_with_request_id(self) -> None:
        body = b'{"reason":"caf\xe9"}'  # Latin-1, not UTF-8
        self.assert_payload_invalid_json(carrying(MessageType.CONNECTION_CLOSE, body), "UTF-8")

    def test_syntax_errors_are_invalid_json(self) -> None:
        for data in (
            b'{"message_type":',
            b"",
            b"{'message_type':'Heartbeat'}",
            b'{"a":1,}',
            b"[1,2,]",
            b'{"a":01}',
            b'{"a":"tab\there"}',  # raw control character in a string
            b'{"a":"\\x41"}',
            b'{"a":1} // comment',
            b'{"a":undefined}',
        ):
            self.assert_invalid_json(data)

    def test_syntax_error_in_a_payload_is_invalid_json_with_request_id(self) -> None:
        self.assert_payload_invalid_json(carrying(MessageType.HEARTBEAT, b'{"timestamp":'), "invalid JSON")

    def test_empty_payload_of_a_type_that_needs_a_body_is_invalid_json(self) -> None:
        error = self.assert_payload_invalid_json(carrying(MessageType.EXECUTE_REQUEST, b""))
        self.assertEqual(error.message, "payload: empty, expected a ExecuteRequest body")

    def test_duplicate_top_level_key_is_invalid_json(self) -> None:
        data = envelope(version='1,"version":1')
        self.assert_invalid_json(data, "duplicate key 'version'")
        data = b'{"request_id":7,' + envelope()[1:]
        self.assert_invalid_json(data, "duplicate key 'request_id'")

    def test_duplicate_nested_key_is_invalid_json(self) -> None:
        data = envelope(timestamp='{"secs_since_epoch":1,"nanos_since_epoch":2,"secs_since_epoch":1}')
        self.assert_invalid_json(data, "duplicate key 'secs_since_epoch'")

    def test_duplicate_key_in_an_unknown_nested_object_is_invalid_json(self) -> None:
        data = b'{"extra":[{"a":1},{"b":[{"c":1,"c":1}]}],' + envelope()[1:]
        self.assert_invalid_json(data, "duplicate key 'c'")

    def test_duplicate_key_inside_a_payload_body_is_invalid_json(self) -> None:
        body = '{"task_id":"a",' + EXECUTE_REQUEST[1:]
        self.assert_payload_invalid_json(
            carrying(MessageType.EXECUTE_REQUEST, body), "duplicate key 'task_id'"
        )
        body = EXECUTE_REQUEST.replace('"env":{"K":"V"}', '"env":{"K":"V","K":"W"}')
        self.assert_payload_invalid_json(carrying(MessageType.EXECUTE_REQUEST, body), "duplicate key 'K'")

    def test_duplicate_key_hidden_behind_an_escaped_colon_is_invalid_json(self) -> None:
        # Dropping a duplicate loses one ':' of the text; "\u003a" decodes to a
        # ':' the text does not show.  Counting colons alone would miss this.
        body = '{"note":"\\u003a","command":"x",' + EXECUTE_REQUEST[1:]
        self.assert_payload_invalid_json(
            carrying(MessageType.EXECUTE_REQUEST, body), "duplicate key 'command'"
        )
        data = b'{"note":"\\u003a","version":1,' + envelope()[1:]
        self.assert_invalid_json(data, "duplicate key 'version'")
        self.assert_invalid_json(b'{"k\\u003a":1,"k\\u003a":2}', "duplicate key 'k:'")

    def test_duplicate_key_among_strings_with_colons_in_arrays_is_invalid_json(self) -> None:
        body = EXECUTE_REQUEST.replace('"args":["a","b"]', '"args":["a:b","::"],"mode":"Sync"')
        self.assert_payload_invalid_json(carrying(MessageType.EXECUTE_REQUEST, body), "duplicate key 'mode'")

    def test_duplicate_key_next_to_a_large_byte_array_is_invalid_json(self) -> None:
        payload = "[" + ",".join(["58"] * 500) + "]"  # 500 bytes of ':' (58) as numbers
        data = b'{"version":1,' + envelope(payload=payload)[1:]
        self.assert_invalid_json(data, "duplicate key 'version'")

    def test_duplicate_key_whose_lost_value_hides_brackets_and_colons_is_invalid_json(self) -> None:
        # The envelope's colons are counted around the stretch from the first
        # "[" to the last "]" (the payload array): a lost value that puts
        # brackets or colons anywhere must not move a member out of the count.
        payload = "[" + ",".join(map(str, HEARTBEAT)) + "]"
        for data, key in (
            (b'{"version":"[:]",' + envelope()[1:], "version"),
            (b'{"version":"[",' + envelope()[1:-1] + b',"request_id":"]"}', "version"),
            (envelope(payload=payload + ',"payload":' + payload), "payload"),
            (envelope(payload='[1],"payload":' + payload), "payload"),
            (envelope(payload=payload, version='"]:",' + '"version":1'), "version"),
        ):
            self.assert_invalid_json(data, f"duplicate key '{key}'")

    def test_nan_and_infinities_are_invalid_json(self) -> None:
        for number in ("NaN", "Infinity", "-Infinity", "1e400", "-1e400"):
            body = EXECUTE_RESPONSE.replace('"cpu_percent":1.5', '"cpu_percent":' + number)
            error = self.assert_payload_invalid_json(carrying(MessageType.EXECUTE_RESPONSE, body))
            self.assertEqual(error.request_id, 42)
            self.assert_invalid_json(envelope(request_id=number))

    def test_lone_surrogate_escape_is_invalid_json(self) -> None:
        for escape in ("\\ud800", "\\udfff", "\\ud800x", "\\ud800\\u0041"):
            body = '{"reason":"' + escape + '"}'
            self.assert_payload_invalid_json(carrying(MessageType.CONNECTION_CLOSE, body), "surrogate")
        self.assert_invalid_json(b'{"x":"\\udc00",' + envelope()[1:], "surrogate")

    def test_utf8_byte_order_mark_is_invalid_json(self) -> None:
        self.assert_invalid_json(b"\xef\xbb\xbf" + envelope(), "byte order mark")
        self.assert_payload_invalid_json(carrying(MessageType.HEARTBEAT, b"\xef\xbb\xbf" + HEARTBEAT), "BOM")

    def test_trailing_data_after_the_object_is_invalid_json(self) -> None:
        for trailer in (b"x", b"{}", b" 1", b"\x00", b"]"):
            self.assert_invalid_json(envelope() + trailer)
        self.assert_payload_invalid_json(carrying(MessageType.HEARTBEAT, HEARTBEAT + b"{}"), "after document")

    def test_surrounding_whitespace_is_not_trailing_data(self) -> None:
        self.assertEqual(decode_message(b" \n" + envelope() + b"\r\n\t ").request_id, 7)

    def test_100000_nested_arrays_are_invalid_json_not_recursion_error(self) -> None:
        deep = b"[" * 100000 + b"]" * 100000
        self.assert_invalid_json(deep)
        self.assert_invalid_json(b'{"x":' + deep + b"," + envelope()[1:])
        self.assert_payload_invalid_json(carrying(MessageType.HEARTBEAT, deep))
        self.assert_invalid_json(b"[" * 100000)  # unclosed
        self.assert_invalid_json(b'{"a":' * 100000)

    def test_200_nested_arrays_inside_an_unknown_key_are_invalid_json(self) -> None:
        deep = "[" * 200 + "]" * 200
        self.assert_invalid_json(b'{"x":' + deep.encode() + b"," + envelope()[1:], "nesting deeper than 127")
        body = '{"x":' + deep + "," + HEARTBEAT.decode()[1:]
        self.assert_payload_invalid_json(carrying(MessageType.HEARTBEAT, body), "nesting deeper than 127")

    def test_nesting_limit_admits_127_levels_and_refuses_128(self) -> None:
        # serde_json reads 127 levels (its budget is 128) and refuses deeper.
        def nested(levels: int) -> bytes:
            inner = "[" * (levels - 1) + "]" * (levels - 1)  # the envelope itself is level 1
            return b'{"x":' + inner.encode() + b"," + envelope()[1:]

        self.assertEqual(decode_message(nested(127)).request_id, 7)
        self.assert_invalid_json(nested(128), "nesting deeper than 127")
        self.assert_invalid_json(nested(1000))


# -- section 3: JSON that is not the schema -----------------------------------------------------------


class InvalidMessageTests(BadInputTestCase):
    def test_envelope_that_is_not_an_object_is_an_invalid_message(self) -> None:
        for data, found in (
            (b"[]", "array"),
            (b'"Heartbeat"', "string"),
            (b"7", "integer"),
            (b"1.5", "floating point number 1.5"),
            (b"null", "null"),
            (b"true", "boolean"),
        ):
            error = self.assert_invalid_message(data, "", f"expected object, found {found}")
            self.assertIsNone(error.request_id)

    def test_payload_that_is_not_an_object_is_an_invalid_message(self) -> None:
        for body, found in ((b"[]", "array"), (b'"x"', "string"), (b"5", "integer"), (b"null", "null")):
            self.assert_payload_invalid(
                carrying(MessageType.HEARTBEAT, body), "payload", f"expected object, found {found}"
            )

    def test_envelope_payload_that_is_not_a_byte_array_is_an_invalid_message(self) -> None:
        self.assert_invalid_message(
            envelope(payload='"e30="'), "payload", "expected array of bytes, found string"
        )
        self.assert_invalid_message(
            envelope(payload="{}"), "payload", "expected array of bytes, found object"
        )

    def test_wrong_json_type_is_an_invalid_message_naming_the_path(self) -> None:
        body = EXECUTE_REQUEST.replace('"args":["a","b"]', '"args":["a","b",3]')
        message = carrying(MessageType.EXECUTE_REQUEST, body)
        self.assert_payload_invalid(message, "payload.args[2]", "expected string, found integer")
        self.assertIn(
            "payload.args[2]: expected string", str(self.assertRaises(InvalidMessage, message.parse_payload))
        )

    def test_wrong_json_types_in_bodies_name_each_path(self) -> None:
        cases = [
            (
                MessageType.EXECUTE_REQUEST,
                EXECUTE_REQUEST.replace('"args":["a","b"]', '"args":"a b"'),
                "payload.args",
                "expected array, found string",
            ),
            (
                MessageType.EXECUTE_REQUEST,
                EXECUTE_REQUEST.replace('"env":{"K":"V"}', '"env":{"K":1}'),
                "payload.env.K",
                "expected string, found integer",
            ),
            (
                MessageType.EXECUTE_REQUEST,
                EXECUTE_REQUEST.replace('"env":{"K":"V"}', '"env":{"K-2":null}'),
                'payload.env["K-2"]',
                "expected string, found null",
            ),
            (
                MessageType.EXECUTE_REQUEST,
                EXECUTE_REQUEST.replace('"timeout":null', '"timeout":"30"'),
                "payload.timeout",
                "expected u64, found string",
            ),
            (
                MessageType.AUTH_RESPONSE,
                '{"success":1,"error_message":null,"session_id":null,"server_version":"","supported_features":[]}',
                "payload.success",
                "expected boolean, found integer",
            ),
            (
                MessageType.STREAM_DATA,
                '{"stream_id":"s","data":"AAEC","is_last":false,"sequence":0}',
                "payload.data",
                "expected array of bytes, found string",
            ),
            (
                MessageType.SIGNAL,
                '{"signal_type":{"Custom":5}}',
                "payload.signal_type.Custom",
                "expected string, found integer",
            ),
            (
                MessageType.SIGNAL,
                '{"signal_type":{"Custom":"a","Other":"b"}}',
                "payload.signal_type",
                'expected a signal name or {"Custom": name}, found object with keys "Custom", "Other"',
            ),
            (
                MessageType.EXECUTE_RESPONSE,
                EXECUTE_RESPONSE.replace('"cpu_percent":1.5', '"cpu_percent":"1.5"'),
                "payload.resource_usage.cpu_percent",
                "expected f64, found string",
            ),
            (
                MessageType.ERROR,
                '{"error_code":1000,"message":["x"]}',
                "payload.message",
                "expected string, found array",
            ),
        ]
        for kind, body, path, reason in cases:
            self.assert_payload_invalid(carrying(kind, body), path, reason)

    def test_wrong_json_type_in_the_envelope_names_the_path_and_keeps_the_request_id(self) -> None:
        error = self.assert_invalid_message(
            envelope(message_type="1"),
            "message_type",
            "expected one of "
            '"AuthRequest", "AuthResponse", "ExecuteRequest", "ExecuteResponse", "Signal", "Heartbeat", '
            '"Error", "StreamData", "ConnectionClose", found integer',
        )
        self.assertEqual(error.request_id, 7)
        self.assert_invalid_message(
            envelope(timestamp="1700000000"), "timestamp", "expected object, found integer"
        )
        self.assert_invalid_message(envelope(request_id='"7"'), "request_id", "expected u64, found string")

    def test_every_problem_is_reported_not_only_the_first(self) -> None:
        error = self.assert_invalid_message(
            envelope(request_id="-1", version="256", payload="[1,300]"),
            "request_id",
            "integer -1 out of range for u64",
        )
        self.assertIn(("version", "integer 256 out of range for u8"), error.problems)
        self.assertIn(("payload[1]", "integer 300 out of range for u8"), error.problems)

    def test_unknown_enum_name_is_an_invalid_message(self) -> None:
        error = self.assert_invalid_message(
            envelope(message_type='"Ping"'),
            "message_type",
            'unknown variant "Ping", expected one of "AuthRequest", "AuthResponse", "ExecuteRequest", '
            '"ExecuteResponse", "Signal", "Heartbeat", "Error", "StreamData", "ConnectionClose"',
        )
        self.assertEqual(error.request_id, 7)
        self.assert_invalid_message(
            envelope(message_type='"heartbeat"'),
            "message_type",
            'unknown variant "heartbeat", expected one of "AuthRequest", "AuthResponse", "ExecuteRequest", '
            '"ExecuteResponse", "Signal", "Heartbeat", "Error", "StreamData", "ConnectionClose"',
        )
        cases = [
            (
                MessageType.EXECUTE_REQUEST,
                EXECUTE_REQUEST.replace('"Sync"', '"Batch"'),
                "payload.mode",
                'unknown variant "Batch", expected one of "Sync", "Async", "Stream", "Interactive"',
            ),
            (
                MessageType.EXECUTE_RESPONSE,
                EXECUTE_RESPONSE.replace('"Completed"', '"Done"'),
                "payload.status",
                'unknown variant "Done", expected one of "Received", "Started", "Running", "Completed", '
                '"Failed", "Cancelled", "Timeout"',
            ),
            (
                MessageType.HEARTBEAT,
                HEARTBEAT.decode().replace('"Active"', '"Sleeping"'),
                "payload.status",
                'unknown variant "Sleeping", expected one of "Active", "Idle", "Busy", "Error"',
            ),
            (
                MessageType.SIGNAL,
                '{"signal_type":"Kill"}',
                "payload.signal_type",
                'unknown variant "Kill", expected one of "Terminate", "Pause", "Resume", "Restart"',
            ),
            (
                MessageType.SIGNAL,
                '{"signal_type":"Custom"}',
                "payload.signal_type",
                'unknown variant "Custom", expected one of "Terminate", "Pause", "Resume", "Restart"',
            ),
        ]
        for kind, body, path, reason in cases:
            self.assert_payload_invalid(carrying(kind, body), path, reason)

    def test_integer_out_of_range_is_an_invalid_message(self) -> None:
        error = self.assert_invalid_message(
            envelope(version="256"), "version", "integer 256 out of range for u8"
        )
        self.assertEqual(error.request_id, 7)
        self.assert_invalid_message(envelope(version="-1"), "version", "integer -1 out of range for u8")
        self.assert_invalid_message(
            envelope(request_id="-1"), "request_id", "integer -1 out of range for u64"
        )
        self.assert_invalid_message(
            envelope(timestamp='{"secs_since_epoch":1,"nanos_since_epoch":1000000000}'),
            "timestamp.nanos_since_epoch",
            "integer 1000000000 out of range for nanoseconds",
        )
        self.assert_invalid_message(
            envelope(timestamp='{"secs_since_epoch":-1,"nanos_since_epoch":0}'),
            "timestamp.secs_since_epoch",
            "integer -1 out of range for u64",
        )
        self.assert_invalid_message(
            envelope(payload="[0,256]"), "payload[1]", "integer 256 out of range for u8"
        )
        self.assert_invalid_message(envelope(payload="[-1]"), "payload[0]", "integer -1 out of range for u8")

    def test_u64_request_id_of_2_to_the_64_is_an_invalid_message(self) -> None:
        # The JSON reader turns integers beyond 64 bits into doubles (as serde_json does),
        # so the complaint is the type; either way the value is refused.
        error = self.assert_envelope_refused(envelope(request_id=str(2**64)), InvalidMessage)
        [(path, reason)] = error.problems
        self.assertEqual(path, "request_id")
        self.assertTrue(reason.startswith("expected u64, found floating point number"), reason)
        self.assertIsNone(error.request_id)  # not readable
        self.assertEqual(decode_message(envelope(request_id=str(2**64 - 1))).request_id, 2**64 - 1)

    def test_integer_out_of_range_in_bodies_is_an_invalid_message(self) -> None:
        cases = [
            (
                MessageType.EXECUTE_RESPONSE,
                EXECUTE_RESPONSE.replace('"exit_code":0', '"exit_code":2147483648'),
                "payload.exit_code",
                "integer 2147483648 out of range for i32",
            ),
            (
                MessageType.EXECUTE_RESPONSE,
                EXECUTE_RESPONSE.replace('"exit_code":0', '"exit_code":-2147483649'),
                "payload.exit_code",
                "integer -2147483649 out of range for i32",
            ),
            (
                MessageType.EXECUTE_REQUEST,
                EXECUTE_REQUEST.replace('"timeout":null', '"timeout":-1'),
                "payload.timeout",
                "integer -1 out of range for u64",
            ),
            (
                MessageType.ERROR,
                '{"error_code":4294967296,"message":"m"}',
                "payload.error_code",
                "integer 4294967296 out of range for u32",
            ),
            (
                MessageType.HEARTBEAT,
                HEARTBEAT.decode().replace('"nanos_since_epoch":2', '"nanos_since_epoch":1000000000'),
                "payload.timestamp.nanos_since_epoch",
                "integer 1000000000 out of range for nanoseconds",
            ),
            (
                MessageType.STREAM_DATA,
                '{"stream_id":"s","data":[1,2,1000],"is_last":false,"sequence":0}',
                "payload.data[2]",
                "integer 1000 out of range for u8",
            ),
        ]
        for kind, body, path, reason in cases:
            self.assert_payload_invalid(carrying(kind, body), path, reason)

    def test_float_where_an_integer_is_expected_is_an_invalid_message(self) -> None:
        self.assert_invalid_message(
            envelope(request_id="7.0"), "request_id", "expected u64, found floating point number 7.0"
        )
        self.assert_invalid_message(
            envelope(version="1e0"), "version", "expected u8, found floating point number 1.0"
        )
        self.assert_invalid_message(
            envelope(payload="[1.0]"), "payload[0]", "expected u8, found floating point number 1.0"
        )
        body = EXECUTE_REQUEST.replace('"timeout":null', '"timeout":1.5')
        self.assert_payload_invalid(
            carrying(MessageType.EXECUTE_REQUEST, body),
            "payload.timeout",
            "expected u64, found floating point number 1.5",
        )

    def test_boolean_where_an_integer_is_expected_is_an_invalid_message(self) -> None:
        self.assert_invalid_message(envelope(version="true"), "version", "expected u8, found boolean")
        body = '{"error_code":false,"message":"m"}'
        self.assert_payload_invalid(
            carrying(MessageType.ERROR, body), "payload.error_code", "expected u32, found boolean"
        )

    def test_boolean_in_a_byte_array_is_an_invalid_message(self) -> None:
        error = self.assert_invalid_message(
            envelope(payload="[1,true]"), "payload[1]", "expected u8, found boolean"
        )
        self.assertEqual(error.request_id, 7)
        self.assert_invalid_message(envelope(payload="[false]"), "payload[0]", "expected u8, found boolean")
        body = '{"signal_type":"Pause","task_id":null,"data":[1,true]}'
        self.assert_payload_invalid(
            carrying(MessageType.SIGNAL, body), "payload.data[1]", "expected u8, found boolean"
        )

    def test_boolean_in_a_large_byte_array_is_an_invalid_message(self) -> None:
        numbers = [str(i % 256) for i in range(300)]
        for index, literal in ((77, "true"), (0, "false"), (299, "true"), (64, "false")):
            items = list(numbers)
            items[index] = literal
            payload = "[" + ",".join(items) + "]"
            self.assert_invalid_message(
                envelope(payload=payload), f"payload[{index}]", "expected u8, found boolean"
            )
            body = '{"stream_id":"s","data":' + payload + ',"is_last":false,"sequence":0}'
            self.assert_payload_invalid(
                carrying(MessageType.STREAM_DATA, body),
                f"payload.data[{index}]",
                "expected u8, found boolean",
            )

    def test_boolean_in_a_large_byte_array_is_refused_even_when_a_string_spells_true(self) -> None:
        items = ["1"] * 100
        items[50] = "true"
        body = '{"stream_id":"true false","data":[' + ",".join(items) + '],"is_last":true,"sequence":0}'
        self.assert_payload_invalid(
            carrying(MessageType.STREAM_DATA, body), "payload.data[50]", "expected u8, found boolean"
        )

    def test_missing_required_key_is_an_invalid_message(self) -> None:
        error = self.assert_invalid_message(b'{"request_id":9}', "message_type", "missing field")
        self.assertEqual(
            error.problems,
            (
                ("message_type", "missing field"),
                ("timestamp", "missing field"),
                ("payload", "missing field"),
                ("version", "missing field"),
            ),
        )
        self.assertEqual(error.request_id, 9)
        self.assert_invalid_message(
            envelope(timestamp='{"secs_since_epoch":1}'), "timestamp.nanos_since_epoch", "missing field"
        )

    def test_every_required_body_key_is_refused_when_missing(self) -> None:
        # The keys of PROTOCOL.md section 3 whose type is not T|null.
        required = {
            MessageType.AUTH_REQUEST: (
                '{"instance_id":"i","token":"t","client_version":"v","client_type":"c","extra_params":{}}',
                ["instance_id", "token", "client_version", "client_type", "extra_params"],
            ),
            MessageType.AUTH_RESPONSE: (
                '{"success":true,"error_message":null,"session_id":null,"server_version":"s","supported_features":[]}',
                ["success", "server_version", "supported_features"],
            ),
            MessageType.EXECUTE_REQUEST: (EXECUTE_REQUEST, ["task_id", "command", "args", "env", "mode"]),
            MessageType.EXECUTE_RESPONSE: (EXECUTE_RESPONSE, ["task_id", "status"]),
            MessageType.SIGNAL: ('{"signal_type":"Pause","task_id":null,"data":null}', ["signal_type"]),
            MessageType.HEARTBEAT: (HEARTBEAT.decode(), ["timestamp", "sequence", "status"]),
            MessageType.ERROR: (
                '{"error_code":1,"message":"m","details":null,"related_request_id":null}',
                ["error_code", "message"],
            ),
            MessageType.STREAM_DATA: (
                '{"stream_id":"s","data":[],"is_last":false,"sequence":0}',
                ["stream_id", "data", "is_last", "sequence"],
            ),
        }
        for kind, (text, keys) in required.items():
            codec.decode_body(kind, text.encode())  # the complete body is valid
            for key in keys:
                fields = orjson.loads(text)
                del fields[key]
                self.assert_payload_invalid(
                    carrying(kind, orjson.dumps(fields)), f"payload.{key}", "missing field"
                )

    def test_null_for_a_required_key_is_an_invalid_message(self) -> None:
        body = EXECUTE_REQUEST.replace('"command":"c"', '"command":null')
        self.assert_payload_invalid(
            carrying(MessageType.EXECUTE_REQUEST, body), "payload.command", "expected string, found null"
        )

    def test_decode_error_from_parse_payload_carries_the_message_request_id(self) -> None:
        for request_id in (0, 1, 2**64 - 1):
            message = carrying(MessageType.HEARTBEAT, b"[]", request_id)
            self.assertEqual(self.assertRaises(InvalidMessage, message.parse_payload).request_id, request_id)
            message = carrying(MessageType.HEARTBEAT, b"[", request_id)
            self.assertEqual(self.assertRaises(InvalidJson, message.parse_payload).request_id, request_id)

    def test_envelope_invalid_message_carries_request_id_only_when_readable(self) -> None:
        self.assertEqual(self.assert_envelope_refused(envelope(version="2.5"), InvalidMessage).request_id, 7)
        self.assertIsNone(
            self.assert_envelope_refused(envelope(request_id="null"), InvalidMessage).request_id
        )
        self.assertIsNone(self.assert_envelope_refused(envelope(request_id='"7"'), InvalidMessage).request_id)
        self.assertIsNone(self.assert_envelope_refused(b"[7]", InvalidMessage).request_id)
        self.assertIsNone(self.assert_invalid_json(b'{"request_id":7,').request_id)

    def test_decode_message_tells_invalid_json_from_invalid_message_by_code(self) -> None:
        json_error = self.assertRaises(DecodeError, decode_message, b"{")
        schema_error = self.assertRaises(DecodeError, decode_message, b"{}")
        self.assertIsInstance(json_error, InvalidJson)
        self.assertIsInstance(schema_error, InvalidMessage)
        self.assertEqual(
            (json_error.code, schema_error.code), (ErrorCode.INVALID_JSON, ErrorCode.INVALID_MESSAGE)
        )
        self.assertEqual((int(json_error.code), int(schema_error.code)), (1003, 1004))


class ConstructionTests(SynchronousTestCase):
    """The hot constructors skip the validators only for values they checked themselves."""

    def test_create_refuses_a_request_id_that_is_not_a_u64(self) -> None:
        body = codec.decode_body(MessageType.HEARTBEAT, HEARTBEAT)
        for request_id, error in [(-1, ValueError), (2**64, ValueError), (True, TypeError), (1.0, TypeError)]:
            with self.assertRaises(error) as caught:
                SpearMessage.create(request_id, body)  # type: ignore[arg-type]
            self.assertIn("request_id", str(caught.exception))

    def test_create_refuses_a_timestamp_that_is_not_a_timestamp(self) -> None:
        body = codec.decode_body(MessageType.HEARTBEAT, HEARTBEAT)
        with self.assertRaises(TypeError) as caught:
            SpearMessage.create(1, body, timestamp=(1, 2))  # type: ignore[arg-type]
        self.assertIn("timestamp must be a Timestamp", str(caught.exception))

    def test_with_request_id_refuses_a_request_id_that_is_not_a_u64(self) -> None:
        message = SpearMessage.create(1, codec.decode_body(MessageType.HEARTBEAT, HEARTBEAT))
        for request_id in (-1, 2**64, True):
            with self.assertRaises(ValueError) as caught:
                message.with_request_id(request_id)
            self.assertIn("out of range for u64", str(caught.exception))
