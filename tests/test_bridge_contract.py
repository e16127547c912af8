"""The spear.v1 contract: the shipped .proto, its generated code, and the protobuf <-> wire conversions."""

from __future__ import annotations

import ast
import importlib
import importlib.resources
import os
import re
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import spear_twisted.bridge
from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.contract import (
    CONNECT_PATH,
    EXECUTE_PATH,
    STATUS_PATH,
    envelope_from_message,
    execute_call_from_request,
    execute_request_from_call,
    execute_response_from_result,
    execute_result_from_response,
    message_from_envelope,
)
from spear_twisted.errors import InvalidMessage
from spear_twisted.wire import ExecutionMode, MessageType, SpearMessage
from tests.strategies import execute_requests, execute_responses, raw_messages, typed_messages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRIDGE = os.path.join(ROOT, "spear_twisted", "bridge")

#: The command that regenerates the committed code (docs/bridge.rst gives it too).
REGENERATE = [
    "-m",
    "grpc_tools.protoc",
    "--proto_path=.",
    "--python_out=OUT",
    "--pyi_out=OUT",
    "spear_twisted/bridge/spear.proto",
]


def run_python(code: str, cwd: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a child Python that imports this worktree's source."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        check=False,
    )


def _generated_version(text: str) -> str:
    match = re.search(r"# Protobuf Python Version: (\S+)", text)
    assert match is not None, "no version line in the generated code"
    return match.group(1)


class GeneratedCodeTests(SynchronousTestCase):
    def test_the_proto_ships_in_the_package(self) -> None:
        text = importlib.resources.files("spear_twisted.bridge").joinpath("spear.proto").read_text()
        self.assertIn("package spear.v1;", text)
        self.assertIn("rpc Connect(stream Envelope) returns (stream Envelope);", text)

    def test_regenerating_gives_the_committed_code(self) -> None:
        """
        protoc from grpcio-tools (the test extra) rebuilds spear_pb2 from
        spear.proto: byte for byte when it is the protoc that made the
        committed files, else the same descriptor.
        """
        with tempfile.TemporaryDirectory() as out:
            command = [arg.replace("OUT", out) for arg in REGENERATE]
            subprocess.run([sys.executable, *command], cwd=ROOT, check=True, capture_output=True)
            generated = os.path.join(out, "spear_twisted", "bridge")
            with open(os.path.join(generated, "spear_pb2.py")) as f:
                fresh = f.read()
            with open(os.path.join(generated, "spear_pb2.pyi")) as f:
                fresh_stub = f.read()
        with open(os.path.join(BRIDGE, "spear_pb2.py")) as f:
            committed = f.read()
        with open(os.path.join(BRIDGE, "spear_pb2.pyi")) as f:
            committed_stub = f.read()
        if _generated_version(fresh) == _generated_version(committed):
            self.assertEqual(fresh, committed, "spear_pb2.py is stale: regenerate it (docs/bridge.rst)")
            self.assertEqual(fresh_stub, committed_stub, "spear_pb2.pyi is stale: regenerate it")
        else:
            match = re.search(r"AddSerializedFile\((b'.*?')\)\n", fresh)
            assert match is not None
            serialized = ast.literal_eval(match.group(1))  # the bytes literal protoc wrote
            fresh_descriptor = descriptor_pb2.FileDescriptorProto.FromString(serialized)
            committed_descriptor = descriptor_pb2.FileDescriptorProto()
            pb.DESCRIPTOR.CopyToProto(committed_descriptor)
            self.assertEqual(fresh_descriptor, committed_descriptor, "spear_pb2.py is stale: regenerate it")

    def test_the_generated_code_passes_the_protobuf_runtime_check(self) -> None:
        """setup.cfg's protobuf lower bound is the version the code was generated for."""
        with open(os.path.join(BRIDGE, "spear_pb2.py")) as f:
            version = _generated_version(f.read())
        with open(os.path.join(ROOT, "setup.cfg")) as f:
            self.assertIn(f"protobuf>={version}", f.read())

    def test_the_service_and_method_paths(self) -> None:
        service = pb.DESCRIPTOR.services_by_name["SpearBridge"]
        self.assertEqual(service.full_name, "spear.v1.SpearBridge")
        methods = {method.name: method for method in service.methods}
        self.assertTrue(methods["Connect"].client_streaming and methods["Connect"].server_streaming)
        self.assertFalse(methods["Execute"].client_streaming or methods["Execute"].server_streaming)
        self.assertEqual(methods["Execute"].input_type.full_name, "spear.v1.ExecuteCall")
        self.assertEqual(methods["Status"].output_type.full_name, "spear.v1.StatusReply")
        self.assertEqual(
            [CONNECT_PATH, EXECUTE_PATH, STATUS_PATH],
            [f"/spear.v1.SpearBridge/{name}" for name in ["Connect", "Execute", "Status"]],
        )

    def test_message_types_are_numbered_in_protocol_order(self) -> None:
        for number, kind in enumerate(MessageType, start=1):
            self.assertEqual(pb.MessageType.Name(number), f"MESSAGE_TYPE_{kind.name}")


class PublicSurfaceTests(SynchronousTestCase):
    def test_every_export_resolves_to_its_module_object(self) -> None:
        for module_name, names in spear_twisted.bridge._EXPORTS.items():
            module = importlib.import_module(f"spear_twisted.bridge.{module_name}")
            for name in names:
                self.assertIs(getattr(spear_twisted.bridge, name), getattr(module, name), name)
        self.assertEqual(sorted(spear_twisted.bridge.__all__), sorted(spear_twisted.bridge._MODULE_OF))

    def test_an_unknown_name_is_an_attribute_error(self) -> None:
        with self.assertRaises(AttributeError):
            spear_twisted.bridge.NoSuchThing  # noqa: B018

    def test_the_endpoint_plugin_does_not_load_http2(self) -> None:
        code = (
            "import sys, spear_twisted.bridge.endpoints;"
            " print(sorted(m for m in ('h2', 'google.protobuf') if m in sys.modules))"
        )
        result = run_python(code, ROOT)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "[]")


NO_TWISTED = r"""
import json, sys
from spear_twisted.bridge.contract import envelope_from_message, message_from_envelope
from spear_twisted.bridge.framing import MessageDecoder, frame_message
from spear_twisted.bridge.headers import format_timeout, parse_timeout
from spear_twisted.bridge.status import StatusCode, status_for_error
from spear_twisted.bridge import spear_pb2
from spear_twisted.wire import HeartbeatMessage, SpearMessage, Timestamp

message = SpearMessage.heartbeat(3, HeartbeatMessage(Timestamp(1, 2), 4))
wire = frame_message(envelope_from_message(message).SerializeToString())
[data] = MessageDecoder(1024).feed(wire)
assert message_from_envelope(spear_pb2.Envelope.FromString(data)) == message
assert parse_timeout(format_timeout(1.5)) == 1.5
print(json.dumps(sorted(m for m in sys.modules if m == "twisted" or m.startswith("twisted."))))
"""


class NoTwistedTests(SynchronousTestCase):
    def test_the_contract_and_the_grpc_rules_work_without_twisted(self) -> None:
        """The asyncio side of the agent SDK (issue 7, part 2) converts envelopes with these."""
        workdir = self.mktemp()
        os.makedirs(workdir)
        result = run_python(NO_TWISTED, workdir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "[]")


class EnvelopeConversionTests(SynchronousTestCase):
    @given(raw_messages)
    def test_envelope_round_trip_keeps_every_field_and_the_payload_bytes(self, message: SpearMessage) -> None:
        envelope = envelope_from_message(message)
        self.assertEqual(envelope.payload, message.payload)
        self.assertEqual(message_from_envelope(envelope), message)
        over_the_wire = pb.Envelope.FromString(envelope.SerializeToString())
        self.assertEqual(message_from_envelope(over_the_wire), message)

    @given(typed_messages)
    def test_the_payload_is_the_json_body_unchanged(self, message: SpearMessage) -> None:
        back = message_from_envelope(
            pb.Envelope.FromString(envelope_from_message(message).SerializeToString())
        )
        self.assertEqual(back.payload, message.payload)
        self.assertEqual(back.parse_payload(), message.parse_payload())

    @given(
        message_type=st.integers(0, 12),
        version=st.integers(0, 300),
        nanos=st.integers(0, 2 * 10**9),
        has_timestamp=st.booleans(),
        request_id=st.integers(0, 2**64 - 1),
    )
    def test_what_protobuf_cannot_check_is_refused_by_name(
        self, message_type: int, version: int, nanos: int, has_timestamp: bool, request_id: int
    ) -> None:
        envelope = pb.Envelope(message_type=message_type, request_id=request_id, version=version)  # type: ignore[arg-type]
        if has_timestamp:
            envelope.timestamp.secs_since_epoch = 1
            envelope.timestamp.nanos_since_epoch = nanos
        expected = []
        if not 1 <= message_type <= 9:
            expected.append("message_type")
        if version > 255:
            expected.append("version")
        if not has_timestamp:
            expected.append("timestamp")
        elif nanos >= 10**9:
            expected.append("timestamp.nanos_since_epoch")
        if not expected:
            message = message_from_envelope(envelope)
            self.assertEqual(message.version, version)
            self.assertEqual(message.timestamp.nanos_since_epoch, nanos)
            return
        with self.assertRaises(InvalidMessage) as caught:
            message_from_envelope(envelope)
        self.assertEqual([path for path, _ in caught.exception.problems], expected)
        self.assertEqual(caught.exception.request_id, request_id)

    def test_refusals_say_what_is_wrong(self) -> None:
        with self.assertRaises(InvalidMessage) as caught:
            message_from_envelope(pb.Envelope(message_type=42, version=256))  # type: ignore[arg-type]
        self.assertEqual(
            caught.exception.problems,
            (
                ("message_type", "unknown message type 42"),
                ("version", "integer 256 out of range for u8"),
                ("timestamp", "missing field"),
            ),
        )
        with self.assertRaises(InvalidMessage) as caught:
            message_from_envelope(pb.Envelope(timestamp=pb.Timestamp(secs_since_epoch=1)))
        self.assertEqual(caught.exception.problems, (("message_type", "unspecified message type (0)"),))


class ExecuteConversionTests(SynchronousTestCase):
    @given(execute_requests)
    def test_execute_call_round_trip(self, request: object) -> None:
        call = execute_call_from_request(request)  # type: ignore[arg-type]
        again = pb.ExecuteCall.FromString(call.SerializeToString())
        self.assertEqual(execute_request_from_call(again), request)

    @given(execute_responses, st.text(max_size=20))
    def test_execute_result_round_trip(self, response: object, instance_id: str) -> None:
        result = execute_result_from_response(response, instance_id)  # type: ignore[arg-type]
        again = pb.ExecuteResult.FromString(result.SerializeToString())
        self.assertEqual(again.instance_id, instance_id)
        self.assertEqual(execute_response_from_result(again), response)

    def test_an_unspecified_mode_reads_as_sync(self) -> None:
        self.assertIs(execute_request_from_call(pb.ExecuteCall(task_id="t")).mode, ExecutionMode.SYNC)

    def test_unknown_enums_are_refused(self) -> None:
        with self.assertRaises(InvalidMessage) as caught:
            execute_request_from_call(pb.ExecuteCall(mode=17))  # type: ignore[arg-type]
        self.assertEqual(caught.exception.problems, (("mode", "unknown execution mode 17"),))
        with self.assertRaises(InvalidMessage) as caught:
            execute_response_from_result(pb.ExecuteResult())
        self.assertEqual(caught.exception.problems, (("status", "unspecified execution status (0)"),))

    def test_a_non_finite_cpu_figure_is_refused(self) -> None:
        result = pb.ExecuteResult(status=pb.EXECUTION_STATUS_COMPLETED)
        result.resource_usage.cpu_percent = float("nan")
        with self.assertRaises(InvalidMessage) as caught:
            execute_response_from_result(result)
        self.assertEqual(caught.exception.problems[0][0], "resource_usage")
