"""The wire layer and the errors import and work without Twisted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import orjson
from twisted.trial.unittest import SynchronousTestCase

import spear_twisted
from spear_twisted.wire import AuthResponse, ExecuteRequest, SpearMessage, Timestamp, codec, get_converter

#: The directory holding the spear_twisted under test, for child processes.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(spear_twisted.__file__)))

SCRIPT = r"""
import importlib, json, pkgutil, sys

import spear_twisted
import spear_twisted.errors
import spear_twisted.wire

modules = sorted(
    "spear_twisted.wire." + info.name for info in pkgutil.iter_modules(spear_twisted.wire.__path__)
)
for name in modules:
    importlib.import_module(name)

from spear_twisted.wire import (
    ExecuteRequest, FrameDecoder, Role, Session, SpearMessage, Timestamp,
)

message = SpearMessage.create(7, ExecuteRequest("task", "echo", ("hi",)), timestamp=Timestamp(1, 2))
[body] = FrameDecoder().feed(message.to_frame())
decoded = SpearMessage.deserialize(body)
assert decoded == message, decoded
assert decoded.parse_payload() == ExecuteRequest("task", "echo", ("hi",))
Session(Role.SPEARLET, now=0.0).receive(decoded, 1.0)

print(json.dumps({
    "modules": modules,
    "twisted": sorted(m for m in sys.modules if m == "twisted" or m.startswith("twisted.")),
}))
"""


#: An agent's first steps: encode its AuthRequest frame, decode the AuthResponse.
AGENT_SCRIPT = r"""
import json, sys

from spear_twisted.wire import AuthRequest, AuthResponse, FrameDecoder, SpearMessage

frame = SpearMessage.auth_request(0, AuthRequest("process:a", "secret", "1.0", "python")).to_frame()
accepted = AuthResponse(True, None, "s-1", "spear", ("heartbeat",))
[body] = FrameDecoder().feed(SpearMessage.auth_response(0, accepted).to_frame())
assert SpearMessage.deserialize(body).parse_payload() == accepted
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("cattrs", "twisted", "secrets"))))
"""


def run_child(test: SynchronousTestCase, script: str) -> str:
    """Run ``script`` in a fresh interpreter that imports the spear_twisted under test."""
    workdir = test.mktemp()
    os.makedirs(workdir)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SOURCE_ROOT, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    test.assertEqual(result.returncode, 0, result.stderr)
    return result.stdout


class NoTwistedTests(SynchronousTestCase):
    def test_wire_layer_and_errors_import_and_run_without_importing_twisted(self) -> None:
        report = json.loads(run_child(self, SCRIPT))
        self.assertEqual(report["twisted"], [])
        # Every submodule was imported, the ones named in the brief among them.
        for name in ("codec", "constants", "framing", "identity", "messages", "session", "strict_json"):
            self.assertIn(f"spear_twisted.wire.{name}", report["modules"])


class LazyConverterTests(SynchronousTestCase):
    def test_an_agent_authenticating_imports_neither_cattrs_nor_twisted(self) -> None:
        self.assertEqual(json.loads(run_child(self, AGENT_SCRIPT)), [])

    def test_the_converter_uses_the_codec_hooks(self) -> None:
        converter = get_converter()
        self.assertIs(converter, get_converter())
        self.assertIs(converter, codec.converter)
        message = SpearMessage.create(
            3, ExecuteRequest("t", "run", ("a",), input_data=b"\x00\xff"), timestamp=Timestamp(1, 2)
        )
        plain = codec.unstructure(message)
        self.assertEqual(converter.unstructure(message), plain)
        self.assertEqual(converter.structure(plain, SpearMessage), message)
        response = AuthResponse(True, None, "s", "v", ("x",))
        # As JSON would carry it (tuples become arrays).
        data = orjson.loads(orjson.dumps(codec.unstructure(response)))
        self.assertEqual(converter.structure(data, AuthResponse), response)

    def test_the_converter_refuses_what_the_codec_refuses(self) -> None:
        with self.assertRaises(codec.SchemaError) as caught:
            get_converter().structure({"success": 1}, AuthResponse)
        self.assertEqual(
            caught.exception.problems,
            [
                (("success",), "expected boolean, found integer"),
                (("server_version",), "missing field"),
                (("supported_features",), "missing field"),
            ],
        )

    def test_types_the_codec_does_not_know_fall_back_to_cattrs(self) -> None:
        self.assertEqual(codec.structure([1, 2], list[int]), [1, 2])
        self.assertEqual(codec.structure({"a": [True]}, dict[str, list[bool]]), {"a": [True]})
