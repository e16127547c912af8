"""Sphinx configuration for spear_twisted."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from spear_twisted import __version__  # noqa: E402

project = "spear_twisted"
author = "the spear_twisted developers"
release = version = __version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
suppress_warnings = ["ref.python"]


def _write_generated() -> None:
    """Tables generated from the code, so the docs cannot drift from it."""
    from spear_twisted.errors import ERROR_CLASSES, ErrorCode

    out = HERE / "_generated"
    out.mkdir(exist_ok=True)
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 8 28 22 42",
        "",
        "   * - code",
        "     - name",
        "     - exception",
        "     - meaning",
    ]
    for code in ErrorCode:
        lines += [
            f"   * - {int(code)}",
            f"     - ``{code.name}``",
            f"     - :class:`~spear_twisted.errors.{ERROR_CLASSES[code].__name__}`",
            f"     - {code.description}",
        ]
    text = "\n".join(lines) + "\n"
    target = out / "error_codes.rst"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def _write_text(name: str, lines: list[str]) -> None:
    out = HERE / "_generated"
    out.mkdir(exist_ok=True)
    text = "\n".join(lines) + "\n"
    target = out / name
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def _write_bridge_tables() -> None:
    """The gRPC bridge's settings and error-to-status table (docs/bridge.rst)."""
    import attrs

    from spear_twisted.bridge.config import BridgeConfig
    from spear_twisted.bridge.status import STATUS_FOR_CODE
    from spear_twisted.settings import field_doc

    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 26 12 62", ""]
    lines += ["   * - setting", "     - default", "     - meaning"]
    for field in attrs.fields(BridgeConfig):
        lines += [f"   * - ``{field.name}``", f"     - ``{field.default!r}``", f"     - {field_doc(field)}"]
    _write_text("bridge_settings.rst", lines)

    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 10 40 50", ""]
    lines += ["   * - code", "     - Spear error", "     - gRPC status"]
    for code, status in STATUS_FOR_CODE.items():
        lines += [
            f"   * - {int(code)}",
            f"     - ``{code.name}``",
            f"     - ``{status.name}`` ({int(status)})",
        ]
    _write_text("bridge_statuses.rst", lines)


if not os.environ.get("SPEAR_DOCS_SKIP_GENERATED"):
    _write_generated()
    _write_bridge_tables()
