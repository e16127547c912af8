"""
The fast paths of the hot bodies (ExecuteRequest, ExecuteResponse, Heartbeat,
Signal) accept exactly what the general reader accepts, build the same body,
and leave everything else to it, so every error is the general reader's.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.errors import InvalidJson, InvalidMessage
from spear_twisted.wire import ExecuteResponse, ExecutionStatus, MessageType, codec
from spear_twisted.wire.messages import BODY_TYPES

from .strategies import execute_requests, execute_responses, heartbeats, signal_messages, text

SETTINGS = settings(max_examples=300, deadline=None)

FAST_KINDS = (
    MessageType.EXECUTE_REQUEST,
    MessageType.EXECUTE_RESPONSE,
    MessageType.HEARTBEAT,
    MessageType.SIGNAL,
)
_KIND_OF = {BODY_TYPES[kind]: kind for kind in FAST_KINDS}

hot_bodies: st.SearchStrategy[Any] = st.one_of(
    execute_requests, execute_responses, heartbeats, signal_messages
)

# JSON values a mutation puts in place of a field (or an element): every JSON
# type, out-of-range and boundary integers, booleans, strings with colons,
# escapes and enum-like names, nesting.
replacement_values = st.recursive(
    st.none()
    | st.booleans()
    | st.sampled_from([0, 1, 255, 256, -1, 2**31, -(2**31) - 1, 2**64 - 1, 1.0, 1.5, -0.0])
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
    | st.sampled_from(
        ["Sync", "Stream", "Completed", "Active", "Pause", "Nope", ":", '"input_data":[', "true"]
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
    max_leaves=6,
)

# Bytes a text mutation inserts: structure, literals' letters, escapes,
# invalid UTF-8, a BOM, a lone-surrogate escape.
interesting_bytes = st.sampled_from(
    [b'"', b":", b",", b"[", b"]", b"{", b"}", b"e", b"t", b"\\", b"\\u003a", b"\xff", b"\xef\xbb\xbf",
     b"true", b"1", b" ", b"\\ud800", b"NaN", b"1e400"]
)  # fmt: skip


def outcome(decode: Any, kind: MessageType, payload: bytes) -> tuple[Any, ...]:
    """What reading ``payload`` gives: the body, or the error's class, text, problems and request id."""
    try:
        return ("body", decode(kind, payload))
    except Exception as e:
        return ("error", type(e), str(e), getattr(e, "problems", None), getattr(e, "request_id", None))


def fast(kind: MessageType, payload: bytes) -> Any:
    return codec.decode_body(kind, payload, request_id=9)


def general(kind: MessageType, payload: bytes) -> Any:
    if not payload:  # not a body: decode_body answers before any reader
        return codec.decode_body(kind, payload, request_id=9)
    return codec._decode_body_generally(kind, payload, 9)


def fast_path_taken(kind: MessageType, payload: bytes) -> bool:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return codec._BODY_FAST_PATHS[kind](value, payload) is not None


def paths_in(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a member or element of ``value``, root first."""
    found = [path]
    if type(value) is dict:
        for key, item in value.items():
            found.extend(paths_in(item, (*path, key)))
    elif type(value) is list:
        for index, item in enumerate(value[:4]):  # a byte array's first few are enough
            found.extend(paths_in(item, (*path, index)))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if type(value) is dict:
        return {**value, head: replaced(value[head], rest, new)}
    copy = list(value)
    copy[head] = replaced(copy[head], rest, new)
    return copy


def removed(value: Any, path: tuple[Any, ...]) -> Any:
    head, rest = path[0], path[1:]
    if rest:
        return replaced(value, (head,), removed(value[head], rest))
    if type(value) is dict:
        return {key: item for key, item in value.items() if key != head}
    return value[:head] + value[head + 1 :]


@st.composite
def mutated_payloads(draw: st.DrawFn) -> tuple[MessageType, bytes]:
    """A valid hot body's payload with one or two mutations, of its value or of its text."""
    body = draw(hot_bodies)
    kind = _KIND_OF[type(body)]
    payload = codec.encode_body(body)
    for _ in range(draw(st.integers(1, 2))):
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            value = None
        how = draw(st.sampled_from(["replace", "remove", "add", "duplicate", "bytes", "boolean", "order"]))
        if value is not None and how in ("replace", "remove", "add", "order"):
            paths = paths_in(value)
            path = draw(st.sampled_from(paths))
            if how == "replace":
                value = replaced(value, path, draw(replacement_values))
            elif how == "remove" and path:
                value = removed(value, path)
            elif how == "add":
                target = replaced(value, (), value)
                parent = path if path and type(_at(value, path)) is dict else ()
                if type(_at(value, parent)) is dict:
                    extra = {
                        draw(text | st.sampled_from(["task_id", "env", "Custom"])): draw(replacement_values)
                    }
                    target = replaced(value, parent, {**_at(value, parent), **extra})
                value = target
            elif how == "order" and type(value) is dict:
                keys = draw(st.permutations(list(value)))
                value = {key: value[key] for key in keys}
            payload = orjson.dumps(value)
        elif how == "duplicate":
            # A key again, in front of the object's first member (orjson
            # keeps the last, so the parsed value looks valid).
            opening = [index for index, byte in enumerate(payload) if byte == ord("{")]
            at = draw(st.sampled_from(opening)) if opening else 0
            keys = [
                "task_id",
                "status",
                "env",
                "input_data",
                "data",
                "sequence",
                "secs_since_epoch",
                "Custom",
                "K",
            ]
            key = draw(st.sampled_from(keys) | text)
            member = orjson.dumps({key: draw(replacement_values)})[1:-1]
            payload = payload[: at + 1] + member + b"," + payload[at + 1 :]
            if draw(st.booleans()):
                # A colon spelled as an escape in a string, as if to make up
                # for the extra member's colon in the count.
                payload = payload.replace(b'":"', b'":"\\u003a', 1)
        elif how == "boolean":
            numbers = [index for index in range(1, len(payload)) if payload[index - 1 : index] in (b"[", b",")
                       and payload[index : index + 1].isdigit()]  # fmt: skip
            if numbers:
                at = draw(st.sampled_from(numbers))
                end = at
                while payload[end : end + 1].isdigit():
                    end += 1
                payload = payload[:at] + draw(st.sampled_from([b"true", b"false"])) + payload[end:]
        else:
            at = draw(st.integers(0, len(payload)))
            cut = draw(st.integers(0, 2))
            payload = payload[:at] + draw(interesting_bytes) + payload[at + cut :]
    return kind, payload


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


class FastPathEquivalenceTests(SynchronousTestCase):
    """Hypothesis: the fast paths and the general reader agree on every input."""

    @SETTINGS
    @given(hot_bodies)
    def test_every_written_body_takes_the_fast_path_and_reads_back_equal(self, body: Any) -> None:
        kind = _KIND_OF[type(body)]
        payload = codec.encode_body(body)
        self.assertTrue(fast_path_taken(kind, payload))
        self.assertEqual(fast(kind, payload), body)
        self.assertEqual(general(kind, payload), body)

    @SETTINGS
    @given(mutated_payloads())
    def test_a_mutated_body_reads_as_the_general_reader_reads_it(
        self, case: tuple[MessageType, bytes]
    ) -> None:
        kind, payload = case
        self.assertEqual(outcome(fast, kind, payload), outcome(general, kind, payload))

    @SETTINGS
    @given(st.sampled_from(FAST_KINDS), st.binary(max_size=60))
    def test_any_bytes_read_as_the_general_reader_reads_them(self, kind: MessageType, payload: bytes) -> None:
        self.assertEqual(outcome(fast, kind, payload), outcome(general, kind, payload))


REQUEST = (
    b'{"task_id":"t","command":"c","args":["a"],"env":{"K":"V"},"working_dir":null,'
    b'"timeout":30,"mode":"Sync","input_data":[1,2,3]}'
)
RESPONSE = (
    b'{"task_id":"t","status":"Completed","output":"o","error":null,"exit_code":0,'
    b'"duration_ms":5,"resource_usage":{"cpu_percent":1,"memory_bytes":null,"disk_read_bytes":null,'
    b'"disk_write_bytes":null,"network_rx_bytes":null,"network_tx_bytes":null}}'
)
HEARTBEAT = b'{"timestamp":{"secs_since_epoch":1,"nanos_since_epoch":2},"sequence":3,"status":"Active"}'
SIGNAL = b'{"signal_type":{"Custom":"reload"},"task_id":null,"data":[7,8]}'

BASES = {
    MessageType.EXECUTE_REQUEST: REQUEST,
    MessageType.EXECUTE_RESPONSE: RESPONSE,
    MessageType.HEARTBEAT: HEARTBEAT,
    MessageType.SIGNAL: SIGNAL,
}


class FastPathStrictnessTests(SynchronousTestCase):
    """Each strictness class, on payloads the fast paths would otherwise take."""

    def test_the_bases_take_the_fast_path(self) -> None:
        for kind, payload in BASES.items():
            self.assertTrue(fast_path_taken(kind, payload), kind)
        self.assertEqual(fast(MessageType.EXECUTE_REQUEST, REQUEST).input_data, b"\x01\x02\x03")
        self.assertEqual(fast(MessageType.EXECUTE_RESPONSE, RESPONSE).resource_usage.cpu_percent, 1.0)

    def refused(self, kind: MessageType, payload: bytes, error: type[Exception], text: str) -> None:
        """``payload`` is refused with ``error`` saying ``text``, exactly as the general reader refuses it."""
        result = outcome(fast, kind, payload)
        self.assertEqual(result, outcome(general, kind, payload))
        self.assertEqual(result[:2], ("error", error), payload)
        self.assertIn(text, result[2])
        self.assertEqual(result[4], 9)

    def test_duplicate_keys_are_refused_at_every_level(self) -> None:
        cases = [
            (
                MessageType.EXECUTE_REQUEST,
                REQUEST.replace(b'{"task_id":"t"', b'{"task_id":"x","task_id":"t"'),
            ),
            (MessageType.EXECUTE_REQUEST, REQUEST.replace(b'{"K":"V"}', b'{"K":"W","K":"V"}')),
            (MessageType.EXECUTE_REQUEST, REQUEST.replace(b'"mode"', b'"input_data":[true],"mode"')),
            (
                MessageType.EXECUTE_RESPONSE,
                RESPONSE.replace(b'{"cpu_percent"', b'{"cpu_percent":2,"cpu_percent"'),
            ),
            (MessageType.HEARTBEAT, HEARTBEAT.replace(b'"sequence":3', b'"sequence":4,"sequence":3')),
            (MessageType.SIGNAL, SIGNAL.replace(b'{"Custom"', b'{"Custom":"a","Custom"')),
        ]
        for kind, payload in cases:
            self.refused(kind, payload, InvalidJson, "duplicate key")

    def test_a_duplicate_hidden_by_an_escaped_colon_is_refused(self) -> None:
        # One colon more in the value's strings than the text shows, one
        # member more in the text than in the value: the counts would agree.
        payload = REQUEST.replace(b'{"task_id":"t"', b'{"task_id":"x","task_id":"t\\u003a"')
        self.refused(MessageType.EXECUTE_REQUEST, payload, InvalidJson, "duplicate key 'task_id'")
        payload = REQUEST.replace(b'"command":"c"', b'"command":"c:"')
        self.assertEqual(fast(MessageType.EXECUTE_REQUEST, payload).command, "c:")

    def test_non_finite_numbers_surrogates_bad_utf8_bom_and_trailing_data_are_refused(self) -> None:
        cases = [
            REQUEST.replace(b'"timeout":30', b'"timeout":NaN'),
            REQUEST.replace(b'"timeout":30', b'"timeout":1e400'),
            REQUEST.replace(b'"t"', b'"\\ud800"', 1),
            REQUEST.replace(b'"t"', b'"\xff"', 1),
            b"\xef\xbb\xbf" + REQUEST,
            REQUEST + b"{}",
        ]
        for payload in cases:
            self.refused(MessageType.EXECUTE_REQUEST, payload, InvalidJson, "payload: invalid JSON")

    def test_nesting_deeper_than_serde_reads_is_refused(self) -> None:
        payload = REQUEST[:-1] + b',"extra":' + b"[" * 200 + b"]" * 200 + b"}"
        self.refused(MessageType.EXECUTE_REQUEST, payload, InvalidJson, "nesting deeper than 127")

    def test_wrong_types_are_refused_with_their_paths(self) -> None:
        cases = [
            (REQUEST.replace(b'["a"]', b'["a",1]'), "payload.args[1]: expected string, found integer"),
            (REQUEST.replace(b'"V"', b"true"), "payload.env.K: expected string, found boolean"),
            (
                REQUEST.replace(b'"timeout":30', b'"timeout":30.0'),
                "payload.timeout: expected u64, found floating",
            ),
            (REQUEST.replace(b'"t"', b"null", 1), "payload.task_id: expected string, found null"),
            (
                REQUEST.replace(b"[1,2,3]", b'"abc"'),
                "payload.input_data: expected array of bytes, found string",
            ),
        ]
        for payload, says in cases:
            self.refused(MessageType.EXECUTE_REQUEST, payload, InvalidMessage, says)
        self.refused(
            MessageType.EXECUTE_RESPONSE,
            RESPONSE.replace(b'"cpu_percent":1', b'"cpu_percent":"1"'),
            InvalidMessage,
            "payload.resource_usage.cpu_percent: expected f64, found string",
        )
        self.refused(
            MessageType.SIGNAL,
            SIGNAL.replace(b'"reload"', b"5"),
            InvalidMessage,
            "payload.signal_type.Custom: expected string, found integer",
        )

    def test_booleans_in_byte_arrays_are_refused_wherever_the_array_is(self) -> None:
        last = REQUEST.replace(b"[1,2,3]", b"[1,true,3]")
        self.refused(MessageType.EXECUTE_REQUEST, last, InvalidMessage, "payload.input_data[1]: expected u8")
        first = b'{"input_data":[false],' + REQUEST[1:].replace(b',"input_data":[1,2,3]', b"")
        self.refused(MessageType.EXECUTE_REQUEST, first, InvalidMessage, "payload.input_data[0]: expected u8")
        # The key's text in a string after the array does not vouch for it.
        decoy = first.replace(b'"args":["a"]', b'"args":["a\\"input_data\\":[1"]')
        self.refused(MessageType.EXECUTE_REQUEST, decoy, InvalidMessage, "payload.input_data[0]: expected u8")
        self.refused(
            MessageType.SIGNAL,
            SIGNAL.replace(b"[7,8]", b"[true]"),
            InvalidMessage,
            "payload.data[0]: expected u8",
        )
        # A "true" elsewhere (in a string) does not make bytes booleans.
        self.assertEqual(
            fast(MessageType.EXECUTE_REQUEST, REQUEST.replace(b'"c"', b'"true"')).command, "true"
        )

    def test_out_of_range_integers_are_refused(self) -> None:
        cases = [
            (MessageType.EXECUTE_REQUEST, REQUEST.replace(b"[1,2,3]", b"[1,256]"), "input_data[1]: integer"),
            (MessageType.EXECUTE_REQUEST, REQUEST.replace(b":30", b":-1"), "timeout: integer -1 out of"),
            (MessageType.EXECUTE_RESPONSE, RESPONSE.replace(b":0", b":2147483648"), "exit_code: integer"),
            (MessageType.HEARTBEAT, HEARTBEAT.replace(b":2}", b":1000000000}"), "for nanoseconds"),
            # Beyond u64 orjson reads a float: refused for its type.
            (MessageType.HEARTBEAT, HEARTBEAT.replace(b":3", b":18446744073709551616"), "u64, found float"),
        ]  # fmt: skip
        for kind, payload, says in cases:
            self.refused(kind, payload, InvalidMessage, says)

    def test_unknown_enum_names_are_refused(self) -> None:
        cases = [
            (
                MessageType.EXECUTE_REQUEST,
                REQUEST.replace(b'"Sync"', b'"sync"'),
                "payload.mode: unknown variant",
            ),
            (
                MessageType.EXECUTE_RESPONSE,
                RESPONSE.replace(b'"Completed"', b'"Done"'),
                "payload.status: unknown",
            ),
            (
                MessageType.HEARTBEAT,
                HEARTBEAT.replace(b'"Active"', b'["Active"]'),
                "payload.status: expected one",
            ),
            (
                MessageType.SIGNAL,
                SIGNAL.replace(b'{"Custom":"reload"}', b'"Stop"'),
                "payload.signal_type: unknown",
            ),
        ]
        for kind, payload, says in cases:
            self.refused(kind, payload, InvalidMessage, says)

    def test_missing_required_keys_are_refused_with_their_paths(self) -> None:
        self.refused(
            MessageType.EXECUTE_REQUEST,
            REQUEST.replace(b'"command":"c",', b""),
            InvalidMessage,
            "payload.command: missing field",
        )
        self.refused(
            MessageType.HEARTBEAT,
            HEARTBEAT.replace(b',"nanos_since_epoch":2', b""),
            InvalidMessage,
            "payload.timestamp.nanos_since_epoch: missing field",
        )

    def test_unknown_keys_are_ignored_and_missing_nullable_keys_read_as_null(self) -> None:
        extra = REQUEST.replace(b'"mode"', b'"later":{"a":[true]},"mode"')
        self.assertEqual(fast(MessageType.EXECUTE_REQUEST, extra), fast(MessageType.EXECUTE_REQUEST, REQUEST))
        short = RESPONSE.replace(b',"resource_usage"', b',"x":1,"y"').replace(b'"output":"o",', b"")
        response = fast(MessageType.EXECUTE_RESPONSE, short)
        self.assertEqual(
            response,
            ExecuteResponse(task_id="t", status=ExecutionStatus.COMPLETED, exit_code=0, duration_ms=5),
        )
        self.assertEqual(
            outcome(fast, MessageType.EXECUTE_RESPONSE, short),
            outcome(general, MessageType.EXECUTE_RESPONSE, short),
        )

    def test_the_fast_bodies_are_the_classes_own_and_pass_their_validators(self) -> None:
        for kind, payload in BASES.items():
            body = fast(kind, payload)
            self.assertIs(type(body), BODY_TYPES[kind])
            self.assertEqual(body, general(kind, payload))
            attrs.validate(body)
