"""RuntimeType, RuntimeInstanceId, the error-code table and the exceptions."""

from __future__ import annotations

import inspect

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted import errors
from spear_twisted.errors import (
    ERROR_CLASSES,
    ConnectionFailed,
    ErrorCode,
    FrameTooLarge,
    InvalidMessage,
    PeerError,
    SpearError,
    TruncatedFrame,
)
from spear_twisted.wire import (
    AuthRequest,
    AuthRequested,
    ErrorMessage,
    ExecuteRequest,
    MessageType,
    RuntimeInstanceId,
    RuntimeType,
    SpearMessage,
    Timestamp,
)

WORKER = RuntimeInstanceId(RuntimeType.PROCESS, "worker-001")

instance_names = st.text(min_size=1, max_size=40).filter(lambda s: s.isprintable() and s == s.strip())


def make_error(cls: type[SpearError], message: str = "it broke", **kwargs: object) -> SpearError:
    """An instance of any SpearError class, whatever its constructor needs."""
    if cls is TruncatedFrame:
        return cls(message, received=3, expected=10, **kwargs)  # type: ignore[call-arg]
    if cls is FrameTooLarge:
        return cls(message, length=11, limit=10, **kwargs)  # type: ignore[call-arg]
    if cls is InvalidMessage:
        return cls([("payload.x", message)], **kwargs)  # type: ignore[arg-type]
    if cls is PeerError:
        return cls(4242, message, **kwargs)  # type: ignore[arg-type]
    return cls(message, **kwargs)  # type: ignore[arg-type]


ALL_ERROR_CLASSES = sorted(
    (obj for obj in vars(errors).values() if inspect.isclass(obj) and issubclass(obj, SpearError)),
    key=lambda cls: cls.__name__,
)


class RuntimeTypeTests(SynchronousTestCase):
    def test_as_str_is_the_lower_case_name(self) -> None:
        self.assertEqual([t.as_str() for t in RuntimeType], ["process", "kubernetes", "wasm"])
        self.assertEqual(str(RuntimeType.WASM), "wasm")

    def test_parse_ignores_case_and_surrounding_blanks(self) -> None:
        for text, expected in (
            ("process", RuntimeType.PROCESS),
            ("PROCESS", RuntimeType.PROCESS),
            ("Kubernetes", RuntimeType.KUBERNETES),
            (" wAsM\n", RuntimeType.WASM),
        ):
            self.assertIs(RuntimeType.parse(text), expected)

    def test_parse_of_an_unknown_type_names_the_valid_types(self) -> None:
        error = self.assertRaises(ValueError, RuntimeType.parse, "docker")
        self.assertIn("'docker'", str(error))
        for name in ("process", "kubernetes", "wasm"):
            self.assertIn(name, str(error))
        self.assertRaises(ValueError, RuntimeType.parse, "")

    def test_parse_of_a_non_string_is_a_type_error(self) -> None:
        self.assertRaises(TypeError, RuntimeType.parse, 1)


class RuntimeInstanceIdTests(SynchronousTestCase):
    def test_string_form_is_runtime_type_colon_instance_id(self) -> None:
        self.assertEqual(str(WORKER), "process:worker-001")
        self.assertEqual(str(RuntimeInstanceId(RuntimeType.KUBERNETES, "pod-7")), "kubernetes:pod-7")

    def test_parse_reads_the_string_form_back(self) -> None:
        self.assertEqual(RuntimeInstanceId.parse("process:worker-001"), WORKER)
        self.assertEqual(RuntimeInstanceId.parse("WASM:mod"), RuntimeInstanceId(RuntimeType.WASM, "mod"))

    def test_parse_keeps_colons_inside_the_instance_id(self) -> None:
        parsed = RuntimeInstanceId.parse("kubernetes:ns:pod:0")
        self.assertEqual(parsed, RuntimeInstanceId(RuntimeType.KUBERNETES, "ns:pod:0"))
        self.assertEqual(str(parsed), "kubernetes:ns:pod:0")

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(list(RuntimeType)), instance_names)
    def test_any_valid_id_survives_str_then_parse(self, runtime_type: RuntimeType, name: str) -> None:
        instance = RuntimeInstanceId(runtime_type, name)
        self.assertEqual(RuntimeInstanceId.parse(str(instance)), instance)

    def test_parse_refuses_text_without_a_runtime_type(self) -> None:
        for text in ("worker-001", "docker:worker", "process:", ":worker"):
            self.assertRaises(ValueError, RuntimeInstanceId.parse, text)
        self.assertRaises(TypeError, RuntimeInstanceId.parse, None)

    def test_invalid_instance_ids_are_refused(self) -> None:
        for bad in ("", "a\nb", "tab\there", "nul\x00", "\x7f", " padded", "padded ", "x" * 256):
            self.assertRaises(ValueError, RuntimeInstanceId, RuntimeType.PROCESS, bad)
        self.assertEqual(RuntimeInstanceId(RuntimeType.PROCESS, "x" * 255).instance_id, "x" * 255)
        self.assertRaises(TypeError, RuntimeInstanceId, RuntimeType.PROCESS, 7)
        self.assertRaises(TypeError, RuntimeInstanceId, "process", "w")

    def test_ids_are_frozen(self) -> None:
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, WORKER, "instance_id", "other")

    def test_ids_are_hashable_and_usable_as_dict_keys(self) -> None:
        table = {WORKER: 1, RuntimeInstanceId(RuntimeType.WASM, "worker-001"): 2}
        self.assertEqual(table[RuntimeInstanceId.parse("process:worker-001")], 1)
        self.assertEqual(len(table), 2)
        self.assertEqual(hash(WORKER), hash(RuntimeInstanceId(RuntimeType.PROCESS, "worker-001")))
        self.assertEqual(len({WORKER, RuntimeInstanceId.parse(str(WORKER))}), 1)

    def test_ids_sort_by_runtime_type_name_then_instance_id(self) -> None:
        ids = [
            RuntimeInstanceId(RuntimeType.WASM, "a"),
            RuntimeInstanceId(RuntimeType.PROCESS, "worker-010"),
            RuntimeInstanceId(RuntimeType.KUBERNETES, "z"),
            RuntimeInstanceId(RuntimeType.PROCESS, "worker-002"),
        ]
        self.assertEqual(
            [str(i) for i in sorted(ids)],
            ["kubernetes:z", "process:worker-002", "process:worker-010", "wasm:a"],
        )
        self.assertTrue(ids[3] <= ids[1] < ids[0])
        self.assertTrue(ids[0] > ids[2] >= ids[2])

    def test_ids_do_not_compare_with_other_types(self) -> None:
        self.assertNotEqual(WORKER, "process:worker-001")
        self.assertRaises(TypeError, lambda: WORKER < "process:worker-002")

    def test_generate_gives_distinct_valid_ids_with_the_prefix(self) -> None:
        ids = {RuntimeInstanceId.generate(RuntimeType.PROCESS, "job") for _ in range(1000)}
        self.assertEqual(len(ids), 1000)
        for instance in ids:
            self.assertIs(instance.runtime_type, RuntimeType.PROCESS)
            self.assertTrue(instance.instance_id.startswith("job-"))
            self.assertEqual(RuntimeInstanceId.parse(str(instance)), instance)
        self.assertTrue(RuntimeInstanceId.generate(RuntimeType.WASM).instance_id.startswith("instance-"))


class ErrorCodeTests(SynchronousTestCase):
    def test_every_error_code_has_a_unique_value(self) -> None:
        values = [code.value for code in ErrorCode]
        self.assertEqual(len(values), len(set(values)))
        # An IntEnum alias would hide a duplicate from iteration; __members__ shows it.
        self.assertEqual(len(ErrorCode.__members__), len(ErrorCode))

    def test_error_codes_are_the_documented_stable_numbers(self) -> None:
        self.assertEqual(
            {code.name: code.value for code in ErrorCode},
            {
                "PROTOCOL_VIOLATION": 1000,
                "MALFORMED_FRAME": 1001,
                "MESSAGE_TOO_LARGE": 1002,
                "INVALID_JSON": 1003,
                "INVALID_MESSAGE": 1004,
                "UNSUPPORTED_VERSION": 1005,
                "UNEXPECTED_MESSAGE": 1006,
                "NOT_AUTHENTICATED": 1100,
                "AUTHENTICATION_FAILED": 1101,
                "AUTHENTICATION_TIMEOUT": 1102,
                "ALREADY_CONNECTED": 1103,
                "TOO_MANY_CONNECTIONS": 1200,
                "TOO_MANY_PENDING_AUTH": 1201,
                "HEARTBEAT_TIMEOUT": 1202,
                "IDLE_TIMEOUT": 1203,
                "CONNECTION_LOST": 1204,
                "CONNECTION_CLOSED": 1205,
                "CONNECTION_FAILED": 1206,
                "REQUEST_TIMEOUT": 1300,
                "REQUEST_CANCELLED": 1301,
                "UNKNOWN_TASK": 1302,
                "NO_INSTANCE_AVAILABLE": 1303,
                "EXECUTION_TIMEOUT": 1304,
                "INSTANCE_LOST": 1305,
                "EXECUTION_FAILED": 1306,
                "SERVER_BUSY": 1307,
                "INSTANCE_START_FAILED": 1308,
                "INTERNAL_ERROR": 1400,
                "SHUTTING_DOWN": 1401,
                "UNKNOWN_ROUTE": 1500,
                "METHOD_NOT_ALLOWED": 1501,
            },
        )

    def test_every_error_code_has_a_description(self) -> None:
        for code in ErrorCode:
            self.assertIsInstance(code.description, str)
            self.assertTrue(code.description.strip(), code)

    def test_error_classes_cover_every_code_with_a_class_of_that_code(self) -> None:
        self.assertEqual(set(ERROR_CLASSES), set(ErrorCode))
        for code, cls in ERROR_CLASSES.items():
            self.assertTrue(issubclass(cls, SpearError), code)
            error = cls("m", code=code)
            self.assertEqual(error.code, code)

    def test_every_error_class_code_maps_to_a_related_class(self) -> None:
        for cls in ALL_ERROR_CLASSES:
            if cls is PeerError:
                continue
            mapped = ERROR_CLASSES[cls.code]
            # A leaf refines its code's class; a base class's code maps to its leaf.
            self.assertTrue(issubclass(cls, mapped) or issubclass(mapped, cls), cls)

    def test_protocol_refusals_carry_their_documented_codes(self) -> None:
        self.assertEqual(errors.EmptyFrame.code, ErrorCode.MALFORMED_FRAME)
        self.assertEqual(errors.TruncatedFrame.code, ErrorCode.MALFORMED_FRAME)
        self.assertEqual(errors.FrameTooLarge.code, ErrorCode.MESSAGE_TOO_LARGE)
        self.assertEqual(errors.InvalidJson.code, ErrorCode.INVALID_JSON)
        self.assertEqual(errors.InvalidMessage.code, ErrorCode.INVALID_MESSAGE)
        self.assertEqual(errors.UnsupportedVersion.code, ErrorCode.UNSUPPORTED_VERSION)
        self.assertEqual(errors.NotAuthenticated.code, ErrorCode.NOT_AUTHENTICATED)


class ErrorMessageTests(SynchronousTestCase):
    def test_error_message_round_trip_keeps_class_code_message_details_and_request(self) -> None:
        refined: set[type[SpearError]] = set()
        for cls in ALL_ERROR_CLASSES:
            if cls is PeerError:
                continue
            original = make_error(cls, request_id=77, details="more")
            body = ErrorMessage.from_error(original)
            self.assertEqual(body.error_code, int(original.code))
            self.assertEqual(body.related_request_id, 77)
            restored = body.to_error()
            self.assertIs(type(restored), ERROR_CLASSES[original.code], cls)
            self.assertTrue(isinstance(original, type(restored)) or isinstance(restored, cls), cls)
            if type(restored) is not cls:
                refined.add(cls)
            self.assertEqual(restored.code, original.code)
            self.assertEqual(restored.message, original.message)
            self.assertEqual(restored.details, "more")
            self.assertEqual(restored.request_id, 77)
        # The class itself comes back for every leaf but these, which share a code
        # with their base (the peer cannot tell them apart); base classes come back
        # as their code's leaf.
        leaves_not_preserved = {cls for cls in refined if not cls.__subclasses__()}
        self.assertEqual(
            leaves_not_preserved,
            {errors.EmptyFrame, errors.TruncatedFrame, FrameTooLarge, errors.InvalidJson, InvalidMessage},
        )

    def test_error_message_round_trip_through_the_wire_keeps_the_error(self) -> None:
        original = errors.UnknownTask("no task 'x'", request_id=5)
        message = SpearMessage.from_error(original)
        self.assertEqual(message.request_id, 5)
        decoded = SpearMessage.deserialize(message.serialize()).parse_payload()
        restored = decoded.to_error(instance_id=WORKER)
        self.assertIs(type(restored), errors.UnknownTask)
        self.assertEqual(restored.code, ErrorCode.UNKNOWN_TASK)
        self.assertEqual(str(restored), "no task 'x' (instance process:worker-001, request 5)")

    def test_from_error_uses_the_fallback_request_id_only_when_the_error_has_none(self) -> None:
        self.assertEqual(SpearMessage.from_error(errors.InternalError("x"), 9).request_id, 9)
        self.assertEqual(SpearMessage.from_error(errors.InternalError("x", request_id=3), 9).request_id, 3)
        self.assertIsNone(
            SpearMessage.from_error(errors.InternalError("x"), 9).parse_payload().related_request_id
        )

    def test_error_message_stores_the_error_code_as_a_plain_integer(self) -> None:
        body = ErrorMessage(ErrorCode.SERVER_BUSY, "busy")
        self.assertIs(type(body.error_code), int)
        self.assertEqual(body.error_code, 1307)

    def test_unknown_code_becomes_a_peer_error(self) -> None:
        error = ErrorMessage(9999, "from the future", "d", 4).to_error(instance_id=WORKER)
        self.assertIs(type(error), PeerError)
        self.assertEqual(error.error_code, 9999)
        self.assertIsNone(error.known_code)
        self.assertEqual((error.message, error.details, error.request_id), ("from the future", "d", 4))
        self.assertEqual(
            str(error), "peer error 9999: from the future (instance process:worker-001, request 4)"
        )

    def test_peer_error_knows_a_known_code(self) -> None:
        self.assertIs(PeerError(1101, "x").known_code, ErrorCode.AUTHENTICATION_FAILED)

    def test_every_error_can_carry_an_instance_id_shown_in_its_string(self) -> None:
        for cls in ALL_ERROR_CLASSES:
            error = make_error(cls, instance_id=WORKER)
            self.assertIs(error.instance_id, WORKER)
            self.assertIn("instance process:worker-001", str(error), cls)
            self.assertIn("process:worker-001", repr(error), cls)
            later = make_error(cls)
            self.assertNotIn("instance", str(later))
            later.instance_id = WORKER
            self.assertIn("instance process:worker-001", str(later), cls)

    def test_error_string_without_context_is_the_message(self) -> None:
        self.assertEqual(str(errors.ServerBusy("busy")), "busy")
        self.assertEqual(str(errors.ServerBusy("busy", request_id=0)), "busy (request 0)")

    def test_invalid_message_lists_every_problem_and_can_be_prefixed(self) -> None:
        error = InvalidMessage([("a", "bad"), ("", "root bad")], request_id=1)
        self.assertEqual(error.message, "a: bad; root bad")
        prefixed = error.prefixed("payload")
        self.assertEqual(prefixed.problems, (("payload.a", "bad"), ("payload", "root bad")))
        self.assertEqual(prefixed.request_id, 1)

    def test_connection_failed_lists_every_attempt(self) -> None:
        error = ConnectionFailed("cannot connect", attempts=[("unix", "no socket"), ("tcp", "refused")])
        self.assertEqual(str(error), "cannot connect (tried unix: no socket; tcp: refused)")
        self.assertEqual(error.code, ErrorCode.CONNECTION_FAILED)


class SecretsInReprTests(SynchronousTestCase):
    def test_auth_request_repr_never_shows_the_token(self) -> None:
        request = AuthRequest("process:w", "hunter2-very-secret", "1", "py", {})
        self.assertNotIn("hunter2", repr(request))
        self.assertIn("token='***'", repr(request))
        self.assertIn("process:w", repr(request))
        self.assertNotIn("hunter2", repr(AuthRequested(1, request)))

    def test_spear_message_repr_shows_the_payload_length_not_its_content(self) -> None:
        message = SpearMessage.create(
            1, AuthRequest("process:w", "hunter2", "1", "py", {}), timestamp=Timestamp(1, 2)
        )
        text = repr(message)
        self.assertNotIn("hunter2", text)
        self.assertNotIn("104, 117", text)  # not as numbers either
        self.assertIn(f"payload=<{len(message.payload)} bytes>", text)

    def test_byte_fields_show_their_length_not_their_content(self) -> None:
        request = ExecuteRequest("t", input_data=b"password=hunter2")
        self.assertIn("input_data=<16 bytes>", repr(request))
        self.assertNotIn("hunter2", repr(request))
        self.assertIn("payload=<0 bytes>", repr(SpearMessage(MessageType.HEARTBEAT, 0, Timestamp(0), b"")))
