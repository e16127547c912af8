"""
Configuration fields that document themselves.

A configuration class is an attrs class with ``__spear_settings__ = True``:
the one converter reads it from TOML with defaults for missing keys and an
error for unknown ones.  Each field made with :func:`setting` carries its
documentation, from which the configuration reference in the docs is
generated.
"""

from __future__ import annotations

import enum
import typing
from typing import Any

import attrs


def setting(default: Any = attrs.NOTHING, *, doc: str, **kwargs: Any) -> Any:
    """An attrs field documented with ``doc``."""
    metadata = dict(kwargs.pop("metadata", {}))
    metadata["doc"] = doc
    return attrs.field(default=default, metadata=metadata, **kwargs)


def can_turn_off(field: attrs.Attribute[Any]) -> bool:
    """
    Whether the file may turn the setting ``field`` off with ``false``: its
    type is ``T | None`` (``None``: off) and its default is not ``None``
    (TOML has no null, so leaving the key out cannot turn it off).
    """
    return (
        optional_of(field.type) not in (None, bool)
        and field.default is not None
        and field.default is not attrs.NOTHING
    )


def positive(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An attrs validator: ``value`` is above zero."""
    if value is None or value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def not_negative(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An attrs validator: ``value`` is zero or above."""
    if value is None or value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


def valid_port_range(_instance: object, attribute: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    """An attrs validator: ``value`` is ``(low, high)``, TCP ports, not empty."""
    if len(value) != 2:
        raise ValueError(f"{attribute.name} must be (low, high), not {value!r}")
    low, high = value
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        raise ValueError(f"{attribute.name} ports must be within 1..65535, not {value!r}")
    if low > high:
        raise ValueError(f"{attribute.name} is empty: {low} > {high}")


def positive_or_off(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An attrs validator: ``value`` is ``None`` (off) or above zero."""
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive, or false (None) to turn it off, not {value!r}")


_UnionType = type(int | None)


def optional_of(kind: Any) -> Any:
    """``T`` for a type ``T | None`` (or ``Optional[T]``); ``None`` for any other type."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, _UnionType) and len(args) == 2 and type(None) in args:
        return args[0] if args[1] is type(None) else args[1]
    return None


def is_settings_class(kind: Any) -> bool:
    """Whether ``kind`` is read as configuration (defaults for missing keys, unknown keys refused)."""
    return attrs.has(kind) and bool(getattr(kind, "__spear_settings__", False))


def field_doc(field: attrs.Attribute[Any]) -> str | None:
    """The documentation of a field made with :func:`setting`."""
    doc = field.metadata.get("doc")
    return doc if isinstance(doc, str) else None


@attrs.frozen
class SettingRow:
    """One key of a configuration reference."""

    #: The key's path in the file: ``connections.port_range``, ``tasks[].id``.
    key: str
    #: What the value is, in TOML's terms: ``integer``, ``array of strings``, ``table``, ...
    kind: str
    #: The default as it would be written in the file; ``(required)`` when there is none.
    default: str
    doc: str


def settings_reference(cls: type[Any], prefix: str = "") -> list[SettingRow]:
    """
    Every key of the settings class ``cls`` and of the tables within it, in
    order, with its kind, default and documentation: the configuration
    reference, generated so that it cannot drift from the code.
    """
    rows: list[SettingRow] = []
    for field in attrs.fields(attrs.resolve_types(cls)):
        key = f"{prefix}{field.name}"
        kind = field.type
        nested = _table_of(kind)
        if nested is not None:
            array = typing.get_origin(kind) is tuple
            rows.append(SettingRow(key, "array of tables" if array else "table", "", field_doc(field) or ""))
            rows.extend(settings_reference(nested, f"{key}[]." if array else f"{key}."))
            continue
        default: Any = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        kind_name = _kind_name(kind)
        if can_turn_off(field):
            kind_name += ", or false (off)"
        rows.append(SettingRow(key, kind_name, _default_text(default), field_doc(field) or ""))
    return rows


def _table_of(kind: Any) -> type[Any] | None:
    """The settings class read from a table (or an array of tables) of type ``kind``."""
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        kind = args[0] if args[1:] == (Ellipsis,) else None
    return kind if is_settings_class(kind) else None


_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _kind_name(kind: Any) -> str:
    if kind in _SCALARS:
        return _SCALARS[kind]
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "one of " + ", ".join(f'"{member.value}"' for member in kind)
    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    if optional_of(kind) is not None:
        # TOML has no null: an optional key is simply left out.
        return _kind_name(optional_of(kind))
    if origin is tuple and args[1:] == (Ellipsis,):
        return f"array of {_kind_name(args[0])}s"
    if origin is tuple:
        return f"array of {len(args)} {_kind_name(args[0])}s"
    if origin is dict:
        return f"table of {_kind_name(args[1])}s"
    return str(kind)


def _default_text(value: Any) -> str:
    if value is attrs.NOTHING:
        return "(required)"
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return f'"{value.value}"'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_default_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{name} = {_default_text(item)}" for name, item in value.items()) + "}"
    return str(value)
