"""The wire layer and the errors import and work without Twisted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

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


class NoTwistedTests(SynchronousTestCase):
    def test_wire_layer_and_errors_import_and_run_without_importing_twisted(self) -> None:
        workdir = self.mktemp()
        os.makedirs(workdir)
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        report = json.loads(result.stdout)
        self.assertEqual(report["twisted"], [])
        # Every submodule was imported, the ones named in the brief among them.
        for name in ("codec", "constants", "framing", "identity", "messages", "session", "strict_json"):
            self.assertIn(f"spear_twisted.wire.{name}", report["modules"])
