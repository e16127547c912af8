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
    _write_if_changed(out / "error_codes.rst", "\n".join(lines) + "\n")

    from spear_twisted.bridge.config import BridgeConfig, BridgeServiceConfig
    from spear_twisted.connections import ConnectionManagerConfig
    from spear_twisted.monitoring import MonitoringConfig

    for name, settings_class in [
        ("connections", ConnectionManagerConfig),
        ("monitoring", MonitoringConfig),
        ("bridge", BridgeConfig),
        ("bridge_service", BridgeServiceConfig),
    ]:
        _write_if_changed(out / f"settings_{name}.rst", _settings_table(settings_class))
    _write_bridge_statuses(out)

    from spear_twisted.config import SpearConfig

    _write_if_changed(out / "configuration.rst", _configuration_reference(SpearConfig))
    _write_if_changed(out / "admin_http_status.rst", _admin_http_status_table())
    _write_if_changed(out / "cli_exit_statuses.rst", _cli_exit_status_table())


def _configuration_reference(config_class: type) -> str:
    """Every key of the configuration file, tables included, with its kind, default and documentation."""
    from spear_twisted.settings import settings_reference

    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 30 18 14 38",
        "",
        "   * - key",
        "     - kind",
        "     - default",
        "     - meaning",
    ]
    for row in settings_reference(config_class):
        lines += [
            f"   * - ``{row.key}``",
            f"     - {row.kind}",
            f"     - {_shown(row.default)}",
            f"     - {row.doc}",
        ]
    return "\n".join(lines) + "\n"


def _admin_http_status_table() -> str:
    """The admin endpoint's HTTP status for every error code."""
    from spear_twisted.admin.problems import HTTP_STATUS

    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 10 10 40",
        "",
        "   * - HTTP status",
        "     - code",
        "     - name",
    ]
    for code, status in sorted(HTTP_STATUS.items(), key=lambda item: (item[1], item[0])):
        lines += [f"   * - {status}", f"     - {int(code)}", f"     - ``{code.name}``"]
    return "\n".join(lines) + "\n"


def _cli_exit_status_table() -> str:
    """The ``spear`` command's exit statuses."""
    from spear_twisted.cli import EXIT_STATUSES

    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 8 60",
        "",
        "   * - status",
        "     - meaning",
    ]
    for code, meaning in EXIT_STATUSES:
        lines += [f"   * - {code}", f"     - {meaning}"]
    return "\n".join(lines) + "\n"


def _write_if_changed(target: Path, text: str) -> None:
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def _settings_table(settings_class: type) -> str:
    """The keys of a settings class (``spear_twisted.settings``) with defaults and documentation."""
    from spear_twisted.settings import settings_reference

    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 24 16 60",
        "",
        "   * - key",
        "     - default",
        "     - meaning",
    ]
    for row in settings_reference(settings_class):
        lines += [f"   * - ``{row.key}``", f"     - {_shown(row.default)}", f"     - {row.doc}"]
    return "\n".join(lines) + "\n"


def _write_bridge_statuses(out: Path) -> None:
    """The gRPC bridge's error-to-status table (docs/bridge.rst)."""
    from spear_twisted.bridge.status import STATUS_FOR_CODE

    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 10 40 50", ""]
    lines += ["   * - code", "     - Spear error", "     - gRPC status"]
    for code, status in STATUS_FOR_CODE.items():
        lines += [
            f"   * - {int(code)}",
            f"     - ``{code.name}``",
            f"     - ``{status.name}`` ({int(status)})",
        ]
    _write_if_changed(out / "bridge_statuses.rst", "\n".join(lines) + "\n")


def _shown(default: str) -> str:
    """A default as the reference writes it: literal, or a note such as ``(unset)`` as it is."""
    return f"``{default}``" if default and not default.startswith("(") else default


if not os.environ.get("SPEAR_DOCS_SKIP_GENERATED"):
    _write_generated()
