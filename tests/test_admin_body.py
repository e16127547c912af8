"""The execute body of the admin endpoint: JSON in, ExecuteRequest out; ExecuteResponse as JSON."""

from __future__ import annotations

import base64
import json

import orjson
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.admin.body import MAX_TIMEOUT, parse_execute_body, response_document
from spear_twisted.errors import InvalidJson, InvalidMessage
from spear_twisted.wire import ExecuteRequest, ExecutionMode, RuntimeInstanceId, RuntimeType, encode_body
from tests.strategies import execute_responses, small_bytes, string_map, strings, text


def parse(document: object, task_id: str = "echo") -> tuple[ExecuteRequest, float | None]:
    return parse_execute_body(task_id, json.dumps(document).encode())


class ExecuteBodyTests(SynchronousTestCase):
    def test_an_empty_object_is_a_request_with_every_default(self) -> None:
        request, timeout = parse({})
        self.assertEqual(request, ExecuteRequest(task_id="echo"))
        self.assertIsNone(timeout)

    def test_every_key_reaches_the_request(self) -> None:
        request, timeout = parse(
            {
                "command": "hello",
                "args": ["world", "again"],
                "input": "héllo\n",
                "env": {"A": "1"},
                "working_dir": "/tmp",
                "timeout": 2.5,
                "mode": "Async",
            },
            task_id="t",
        )
        self.assertEqual(
            request,
            ExecuteRequest(
                task_id="t",
                command="hello",
                args=("world", "again"),
                env={"A": "1"},
                working_dir="/tmp",
                timeout=3,
                mode=ExecutionMode.ASYNC,
                input_data="héllo\n".encode(),
            ),
        )
        self.assertEqual(timeout, 2.5)

    def test_the_request_timeout_is_the_body_timeout_rounded_up_to_whole_seconds(self) -> None:
        self.assertEqual(parse({"timeout": 0.001})[0].timeout, 1)
        self.assertEqual(parse({"timeout": 7})[0].timeout, 7)
        self.assertEqual(parse({"timeout": MAX_TIMEOUT})[1], MAX_TIMEOUT)

    @given(command=text, args=strings, env=string_map, data=text)
    def test_any_text_reaches_the_request_unchanged(
        self, command: str, args: tuple[str, ...], env: dict[str, str], data: str
    ) -> None:
        request, _ = parse({"command": command, "args": list(args), "env": env, "input": data})
        self.assertEqual((request.command, request.args, request.env), (command, args, env))
        self.assertEqual(request.input_data, data.encode())

    @given(small_bytes)
    def test_any_bytes_arrive_through_input_base64(self, data: bytes) -> None:
        request, _ = parse({"input_base64": base64.b64encode(data).decode()})
        self.assertEqual(request.input_data, data)

    def assertProblems(self, data: bytes, expected: list[tuple[str, str]]) -> None:
        with self.assertRaises(InvalidMessage) as raised:
            parse_execute_body("echo", data)
        self.assertEqual(list(raised.exception.problems), expected)

    def test_a_problem_names_its_field_path(self) -> None:
        self.assertProblems(
            b'{"args": ["a", 2, true], "env": {"A": 1}}',
            [
                ("args[1]", "expected string, found integer"),
                ("args[2]", "expected string, found boolean"),
                ("env.A", "expected string, found integer"),
            ],
        )

    def test_an_unknown_key_is_an_error_with_a_suggestion(self) -> None:
        self.assertProblems(b'{"comand": "x"}', [("comand", "unknown key (did you mean 'command'?)")])
        self.assertProblems(
            b'{"task_id": "x"}',
            [
                (
                    "task_id",
                    "unknown key; known keys: command, args, input, input_base64, env, working_dir, "
                    "timeout, mode",
                )
            ],
        )

    def test_an_unknown_mode_lists_the_modes(self) -> None:
        self.assertProblems(
            b'{"mode": "Fast"}',
            [("mode", 'unknown variant "Fast", expected one of "Sync", "Async", "Stream", "Interactive"')],
        )

    def test_input_and_input_base64_together_are_refused(self) -> None:
        self.assertProblems(
            b'{"input": "a", "input_base64": "YQ=="}',
            [("input_base64", "give input or input_base64, not both")],
        )

    def test_input_base64_must_be_base64(self) -> None:
        with self.assertRaises(InvalidMessage) as raised:
            parse_execute_body("echo", b'{"input_base64": "not base64!"}')
        [(path, reason)] = raised.exception.problems
        self.assertEqual(path, "input_base64")
        self.assertIn("not valid base64", reason)

    def test_the_timeout_must_be_a_positive_number_of_at_most_a_day(self) -> None:
        limit = "must be above 0 and at most 86400 seconds"
        self.assertProblems(b'{"timeout": 0}', [("timeout", f"{limit}, not 0")])
        self.assertProblems(b'{"timeout": -1.5}', [("timeout", f"{limit}, not -1.5")])
        self.assertProblems(b'{"timeout": 86401}', [("timeout", f"{limit}, not 86401")])
        self.assertProblems(b'{"timeout": true}', [("timeout", "expected number, found boolean")])
        self.assertProblems(b'{"timeout": "5"}', [("timeout", "expected number, found string")])

    def test_the_body_must_be_an_object(self) -> None:
        self.assertProblems(b"[]", [("", "expected a JSON object, found array")])
        self.assertProblems(b'"x"', [("", "expected a JSON object, found string")])
        self.assertProblems(b"null", [("", "expected a JSON object, found null")])

    def test_text_that_is_not_strict_json_is_invalid_json(self) -> None:
        for data in (b"", b"{", b'{"command": "a", "command": "b"}', b"{} x", b'{"timeout": NaN}', b"\xff"):
            with self.assertRaises(InvalidJson, msg=data):
                parse_execute_body("echo", data)

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | text,
            lambda inner: st.lists(inner) | st.dictionaries(text, inner),
        )
    )
    def test_any_json_is_a_request_or_an_error_naming_the_problem(self, value: object) -> None:
        try:
            request, _ = parse_execute_body("t", json.dumps(value).encode())
        except InvalidMessage as e:
            self.assertTrue(e.problems)
        except InvalidJson as e:
            # Only an integer beyond 64 bits is valid JSON that the strict reader refuses.
            self.assertIn("64-bit", str(e))
        else:
            self.assertEqual(request.task_id, "t")


class ResponseDocumentTests(SynchronousTestCase):
    @given(execute_responses)
    def test_the_response_is_the_wire_body_as_json(self, response: object) -> None:
        document = response_document(response)  # type: ignore[arg-type]
        self.assertEqual(orjson.loads(orjson.dumps(document)), orjson.loads(encode_body(response)))

    @given(execute_responses)
    def test_the_instance_that_gave_it_is_added(self, response: object) -> None:
        instance_id = RuntimeInstanceId(RuntimeType.PROCESS, "echo-1")
        document = response_document(response, instance_id)  # type: ignore[arg-type]
        expected = orjson.loads(encode_body(response))
        expected["instance_id"] = "process:echo-1"
        self.assertEqual(orjson.loads(orjson.dumps(document)), expected)
