"""
Configuration fields that document themselves.

A configuration class is an attrs class with ``__spear_settings__ = True``:
the one converter reads it from TOML with defaults for missing keys and an
error for unknown ones.  Each field made with :func:`setting` carries its
documentation, from which the configuration reference in the docs is
generated.
"""

from __future__ import annotations

from typing import Any

import attrs


def setting(default: Any = attrs.NOTHING, *, doc: str, **kwargs: Any) -> Any:
    """An attrs field documented with ``doc``."""
    metadata = dict(kwargs.pop("metadata", {}))
    metadata["doc"] = doc
    return attrs.field(default=default, metadata=metadata, **kwargs)


def field_doc(field: attrs.Attribute[Any]) -> str | None:
    """The documentation of a field made with :func:`setting`."""
    doc = field.metadata.get("doc")
    return doc if isinstance(doc, str) else None
