"""
The one cattrs converter, and message encoding and decoding with it.

Writing produces exactly the JSON of PROTOCOL.md, byte for byte what the Rust
spearlet's serde_json writes: compact, keys in struct order, every key present
(``null`` for an absent optional), byte arrays as arrays of numbers, ``f64`` in
serde's shortest form (``1e16``, not ``1e+16``).

Reading follows serde's rules: unknown keys are ignored; a missing key whose
type is ``T | None`` reads as ``None``; a missing key of any other type, a
wrong JSON type, an integer out of range or an unknown enum name is an error
naming the field's path, e.g. ``payload.args[2]: expected string, found
integer``.  Reading is strict where Python's defaults are lenient: a string is
never a list, a boolean is never an integer, a float is never an integer.
"""

from __future__ import annotations

import contextvars
import enum
import re
import struct
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import attrs
import orjson

from spear_twisted.errors import InvalidJson, InvalidMessage
from spear_twisted.settings import can_turn_off, is_settings_class, optional_of
from spear_twisted.wire import strict_json
from spear_twisted.wire.messages import (
    BODY_TYPES,
    AnySignal,
    CloseMessage,
    ConnectionStatus,
    CustomSignal,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionMode,
    ExecutionStatus,
    FloatKind,
    HeartbeatMessage,
    IntRange,
    MessageType,
    ResourceUsage,
    SignalMessage,
    SignalType,
    SpearMessage,
    _make_message,
    _make_timestamp,
    _unchecked_maker,
)

__all__ = [
    "converter",
    "decode_body",
    "decode_message",
    "encode_body",
    "encode_frame_for",
    "encode_message",
    "structure",
    "unstructure",
]

if TYPE_CHECKING:
    import cattrs

    #: The converter (built on first use; see :func:`get_converter`).
    converter: cattrs.Converter

T = TypeVar("T")
PathPart = str | int
Problem = tuple[tuple[PathPart, ...], str]
StructureHook = Callable[[Any, Any], Any]
UnstructureHook = Callable[[Any], Any]


class SchemaError(Exception):
    """Raised by structure hooks: every problem found, each with its path."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems)
        self.problems = problems

    @classmethod
    def at_root(cls, reason: str) -> SchemaError:
        return cls([((), reason)])

    def under(self, part: PathPart) -> list[Problem]:
        return [((part, *path), reason) for path, reason in self.problems]


def format_path(path: Iterable[PathPart]) -> str:
    """``("payload", "args", 2)`` as ``payload.args[2]``; map keys as ``env["K"]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += "[" + orjson.dumps(part).decode() + "]"
    return text


def _json_type(value: object) -> str:
    kind = type(value)
    if kind is str:
        return "string"
    if kind is bool:
        return "boolean"
    if kind is int:
        return "integer"
    if kind is float:
        return f"floating point number {value!r}"
    if value is None:
        return "null"
    if kind is list:
        return "array"
    if kind is dict:
        return "object"
    return kind.__name__


def _expected(what: str, value: object) -> SchemaError:
    return SchemaError.at_root(f"expected {what}, found {_json_type(value)}")


# Whether the document being read may hold true/false literals; when it
# provably does not, byte arrays skip the per-element boolean check.
_maybe_booleans: contextvars.ContextVar[bool] = contextvars.ContextVar("spear_maybe_booleans", default=True)


# -- structure hooks: scalars ---------------------------------------------------------


def _structure_str(value: Any, _type: Any) -> str:
    if type(value) is str:
        return value
    raise _expected("string", value)


def _structure_bool(value: Any, _type: Any) -> bool:
    if type(value) is bool:
        return value
    raise _expected("boolean", value)


def _is_annotated(marker_type: type) -> Callable[[Any], bool]:
    def predicate(kind: Any) -> bool:
        return typing.get_origin(kind) is Annotated and isinstance(kind.__metadata__[0], marker_type)

    return predicate


def _int_hook(kind: Any) -> Callable[[Any, Any], int]:
    marker: IntRange = kind.__metadata__[0]
    low, high, name = marker.low, marker.high, marker.name

    def structure_int(value: Any, _type: Any) -> int:
        if type(value) is int:
            if low <= value <= high:
                return value
            raise SchemaError.at_root(f"integer {value} out of range for {name}")
        raise _expected(name, value)

    return structure_int


def _structure_f64(value: Any, _type: Any) -> float:
    kind = type(value)
    if kind is float:
        return float(value)  # already a float: the same object
    if kind is int:
        return float(value)
    raise _expected("f64", value)


def _structure_bytes(value: Any, _type: Any) -> bytes:
    if type(value) is not list:
        raise _expected("array of bytes", value)
    try:
        data = bytes(bytearray(value))
    except (TypeError, ValueError):
        raise SchemaError(_byte_problems(value)) from None
    if value and _maybe_booleans.get() and _has_booleans(value):
        raise SchemaError(_byte_problems(value))
    return data


def _has_booleans(values: list[Any]) -> bool:
    if len(values) < 64:
        return any(type(item) is bool for item in values)
    # orjson writes integers as bare digits; only booleans bring an "e".
    return b"e" in orjson.dumps(values)


def _byte_problems(values: list[Any]) -> list[Problem]:
    problems: list[Problem] = []
    for index, item in enumerate(values):
        if type(item) is not int:
            problems.append(((index,), f"expected u8, found {_json_type(item)}"))
        elif not 0 <= item <= 255:
            problems.append(((index,), f"integer {item} out of range for u8"))
        if len(problems) >= 10:
            break
    return problems


# -- structure hooks: containers -----------------------------------------------------


def _is_tuple_of(kind: Any) -> bool:
    return typing.get_origin(kind) is tuple and typing.get_args(kind)[1:] == (Ellipsis,)


def _tuple_hook(kind: Any) -> Callable[[Any, Any], tuple[Any, ...]]:
    item_type = typing.get_args(kind)[0]
    item_hook = structure_hook(item_type)

    def structure_tuple(value: Any, _type: Any) -> tuple[Any, ...]:
        if type(value) is not list:
            raise _expected("array", value)
        items = []
        problems: list[Problem] = []
        for index, item in enumerate(value):
            try:
                items.append(item_hook(item, item_type))
            except SchemaError as e:
                problems.extend(e.under(index))
        if problems:
            raise SchemaError(problems)
        return tuple(items)

    return structure_tuple


def _is_string_map(kind: Any) -> bool:
    return typing.get_origin(kind) is dict and typing.get_args(kind) == (str, str)


def _structure_string_map(value: Any, _type: Any) -> dict[str, str]:
    if type(value) is not dict:
        raise _expected("object", value)
    problems: list[Problem] = [
        ((key,), f"expected string, found {_json_type(item)}")
        for key, item in value.items()
        if type(item) is not str
    ]
    if problems:
        raise SchemaError(problems)
    return value


def _is_optional(kind: Any) -> bool:
    return optional_of(kind) is not None


def _optional_hook(kind: Any) -> Callable[[Any, Any], Any]:
    inner = optional_of(kind)
    inner_hook = structure_hook(inner)

    def structure_optional(value: Any, _type: Any) -> Any:
        if value is None:
            return None
        return inner_hook(value, inner)

    return structure_optional


def _is_our_enum(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, enum.Enum) and not issubclass(kind, int)


def _enum_hook(kind: type[enum.Enum]) -> Callable[[Any, Any], enum.Enum]:
    members = {member.value: member for member in kind}
    names = ", ".join(f'"{value}"' for value in members)

    def structure_enum(value: Any, _type: Any) -> enum.Enum:
        if type(value) is str:
            member = members.get(value)
            if member is not None:
                return member
            variant = orjson.dumps(value).decode()
            raise SchemaError.at_root(f"unknown variant {variant}, expected one of {names}")
        raise _expected(f"one of {names}", value)

    return structure_enum


_signal_from_name = _enum_hook(SignalType)


def _structure_signal(value: Any, _type: Any) -> AnySignal:
    if type(value) is dict:
        if len(value) == 1 and "Custom" in value:
            name = value["Custom"]
            if type(name) is str:
                return CustomSignal(name)
            raise SchemaError([(("Custom",), f"expected string, found {_json_type(name)}")])
        keys = ", ".join(orjson.dumps(key).decode() for key in value)
        raise SchemaError.at_root(
            f'expected a signal name or {{"Custom": name}}, found object with keys {keys}'
        )
    signal = _signal_from_name(value, SignalType)
    assert isinstance(signal, SignalType)  # the hook of the SignalType enum
    return signal


# -- structure hooks: attrs classes ---------------------------------------------------


def _class_hook(cls: Any) -> Callable[[Any, Any], Any]:
    specs: list[tuple[str, Any, Callable[[Any, Any], Any], bool]] | None = None

    def prepare() -> list[tuple[str, Any, Callable[[Any, Any], Any], bool]]:
        attrs.resolve_types(cls)
        return [
            (field.name, field.type, structure_hook(field.type), _is_optional(field.type))
            for field in attrs.fields(cls)
        ]

    def structure_class(value: Any, _type: Any) -> Any:
        nonlocal specs
        if type(value) is not dict:
            raise _expected("object", value)
        if specs is None:
            specs = prepare()
        kwargs = {}
        problems: list[Problem] = []
        for name, field_type, hook, optional in specs:
            if name in value:
                try:
                    kwargs[name] = hook(value[name], field_type)
                except SchemaError as e:
                    problems.extend(e.under(name))
            elif optional:
                kwargs[name] = None
            else:
                problems.append(((name,), "missing field"))
        if problems:
            raise SchemaError(problems)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            # A cross-field rule of the class itself.
            raise SchemaError.at_root(str(e)) from None

    return structure_class


def _settings_hook(cls: Any) -> Callable[[Any, Any], Any]:
    """
    Configuration is read unlike the wire: a missing key takes the field's
    default, and an unknown key is an error (a typo must not pass silently).
    """
    specs: dict[str, tuple[Any, Callable[[Any, Any], Any]]] | None = None
    required: list[str] = []

    def prepare() -> dict[str, tuple[Any, Callable[[Any, Any], Any]]]:
        attrs.resolve_types(cls)
        fields = attrs.fields(cls)
        required.extend(field.name for field in fields if field.default is attrs.NOTHING)
        return {
            field.name: (
                field.type,
                _off_hook(field.type) if can_turn_off(field) else structure_hook(field.type),
            )
            for field in fields
        }

    def structure_settings(value: Any, _type: Any) -> Any:
        nonlocal specs
        if type(value) is not dict:
            raise _expected("table", value)
        if specs is None:
            specs = prepare()
        kwargs = {}
        problems: list[Problem] = []
        for key, item in value.items():
            spec = specs.get(key)
            if spec is None:
                import difflib

                close = difflib.get_close_matches(key, specs, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(specs)}"
                problems.append(((key,), f"unknown key{hint}"))
                continue
            field_type, hook = spec
            try:
                kwargs[key] = hook(item, field_type)
            except SchemaError as e:
                problems.extend(e.under(key))
        problems.extend(((name,), "missing key") for name in required if name not in value)
        if problems:
            raise SchemaError(problems)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise _field_error(str(e), specs) from None

    return structure_settings


# A validator's message names its field first: "max_instances must be
# positive", "timeout: ...", "id 'a b' must be ...".
_LEADING_KEY = re.compile(r"([a-z_]+)(?::| must| is|(?= ['\"]))")


def _field_error(reason: str, fields: Mapping[str, Any]) -> SchemaError:
    """
    The error of a settings class refusing its values: under the key the
    message names first when that is one of ``fields`` (``max_instances``,
    ``must be positive, not 0``), else at the table itself.
    """
    match = _LEADING_KEY.match(reason)
    if match is not None and match.group(1) in fields:
        return SchemaError([((match.group(1),), reason[match.end(1) :].lstrip(": "))])
    return SchemaError.at_root(reason)


def _off_hook(kind: Any) -> Callable[[Any, Any], Any]:
    """
    A setting of type ``T | None`` whose default is not ``None``: ``false``
    turns it off (``None``), as TOML has no null; anything else is a ``T``,
    and an error says that ``false`` is accepted too.
    """
    inner = optional_of(kind)
    inner_hook = structure_hook(inner)

    def structure_off(value: Any, _type: Any) -> Any:
        if value is False:
            return None
        try:
            return inner_hook(value, inner)
        except SchemaError as e:
            raise SchemaError(
                [(path, _or_false(reason) if not path else reason) for path, reason in e.problems]
            ) from None

    return structure_off


def _or_false(reason: str) -> str:
    """``expected number, found string`` as ``expected number or false, found string``."""
    head, found, rest = reason.partition(", found ")
    if not head.startswith("expected ") or not found:
        return reason
    return f"{head} or false, found {rest}"


def _structure_int(value: Any, _type: Any) -> int:
    if type(value) is int:
        return value
    raise _expected("integer", value)


def _structure_float(value: Any, _type: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _expected("number", value)


def _is_fixed_tuple(kind: Any) -> bool:
    args = typing.get_args(kind)
    return typing.get_origin(kind) is tuple and bool(args) and Ellipsis not in args


def _fixed_tuple_hook(kind: Any) -> Callable[[Any, Any], tuple[Any, ...]]:
    item_types = typing.get_args(kind)
    hooks = [structure_hook(item) for item in item_types]

    def structure_fixed(value: Any, _type: Any) -> tuple[Any, ...]:
        if type(value) is not list or len(value) != len(item_types):
            raise _expected(f"array of {len(item_types)} items", value)
        items = []
        problems: list[Problem] = []
        for index, (item, item_type, hook) in enumerate(zip(value, item_types, hooks, strict=True)):
            try:
                items.append(hook(item, item_type))
            except SchemaError as e:
                problems.extend(e.under(index))
        if problems:
            raise SchemaError(problems)
        return tuple(items)

    return structure_fixed


# -- unstructure hooks ---------------------------------------------------------------------


#: Bytes per piece when a large byte array is written or read: short lists
#: stay in the CPU's caches, which makes large arrays two to three times faster.
_PIECE = 64 * 1024

#: Byte arrays longer than this are written in pieces.  Below it the extra
#: temporary buffers cost more (in allocator traffic) than the caches save.
_PIECEWISE = 1024 * 1024


def encode_byte_array(data: bytes) -> bytes:
    """``data`` as a JSON array of numbers (serde's ``Vec<u8>``): ``[1,2,3]``."""
    if len(data) <= _PIECEWISE:
        return orjson.dumps(list(data))
    return b"".join(_byte_array_parts(data))


def _byte_array_parts(data: bytes) -> list[bytes]:
    """The text of a large byte array as parts to join (brackets and commas included)."""
    parts = [b"["]
    for start in range(0, len(data), _PIECE):
        if start:
            parts.append(b",")
        parts.append(orjson.dumps(list(data[start : start + _PIECE]))[1:-1])
    parts.append(b"]")
    return parts


def _unstructure_bytes(value: bytes) -> list[int] | orjson.Fragment:
    if len(value) <= _PIECEWISE:
        return list(value)
    return orjson.Fragment(encode_byte_array(value))


def _unstructure_f64(value: float) -> orjson.Fragment:
    # serde writes the exponent without a sign: 1e16, 1e-7.
    return orjson.Fragment(orjson.dumps(value).replace(b"+", b""))


def _unstructure_signal(value: AnySignal) -> Any:
    if isinstance(value, CustomSignal):
        return {"Custom": value.name}
    return value.value


def _unstructure_hook_for(kind: Any) -> Callable[[Any], Any] | None:
    """The hook for a declared field type, or None when the value is written as it is."""
    if kind in (str, bool, float) or _is_string_map(kind) or _is_tuple_of(kind):
        return None
    if _is_annotated(IntRange)(kind):
        return None
    if _is_optional(kind):
        inner = optional_of(kind)
        inner_hook = _unstructure_hook_for(inner)
        if inner_hook is None:
            return None

        def unstructure_optional(value: Any) -> Any:
            return None if value is None else inner_hook(value)

        return unstructure_optional
    return unstructure_hook(kind)


def _class_unstructure_hook(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    specs: list[tuple[str, Callable[[Any], Any] | None]] | None = None

    def unstructure_class(value: Any) -> dict[str, Any]:
        nonlocal specs
        if specs is None:
            attrs.resolve_types(cls)
            specs = [(field.name, _unstructure_hook_for(field.type)) for field in attrs.fields(cls)]
        result = {}
        for name, hook in specs:
            item = getattr(value, name)
            result[name] = item if hook is None else hook(item)
        return result

    return unstructure_class


# -- the hook tables ----------------------------------------------------------------------
#
# These tables are the converter's hooks.  The wire path looks its hooks up
# here directly, so that decoding a message never imports cattrs; the cattrs
# converter (:func:`get_converter`) registers the same hooks, and is the
# fallback for any type these tables do not know.

_SCALAR_STRUCTURE: dict[type, StructureHook] = {
    str: _structure_str,
    bool: _structure_bool,
    bytes: _structure_bytes,
    int: _structure_int,
    float: _structure_float,
}


def _is_signal(kind: Any) -> bool:
    return bool(kind == AnySignal)


def _hook(function: StructureHook) -> Callable[[Any], StructureHook]:
    return lambda _kind: function


# Predicate and hook factory, most specific first (the order cattrs gives the
# same registrations: the latest registered predicate wins).
_STRUCTURE_FACTORIES: tuple[tuple[Callable[[Any], bool], Callable[[Any], StructureHook]], ...] = (
    (_is_fixed_tuple, _fixed_tuple_hook),
    (is_settings_class, _settings_hook),
    (attrs.has, _class_hook),
    (_is_our_enum, _enum_hook),
    (_is_signal, _hook(_structure_signal)),
    (_is_optional, _optional_hook),
    (_is_string_map, _hook(_structure_string_map)),
    (_is_tuple_of, _tuple_hook),
    (_is_annotated(FloatKind), _hook(_structure_f64)),
    (_is_annotated(IntRange), _int_hook),
)

_UNSTRUCTURE_FACTORIES: tuple[tuple[Callable[[Any], bool], Callable[[Any], UnstructureHook]], ...] = (
    (attrs.has, _class_unstructure_hook),
    (_is_our_enum, lambda _kind: _enum_value),
    (_is_signal, lambda _kind: _unstructure_signal),
    (_is_annotated(FloatKind), lambda _kind: _unstructure_f64),
)

_structure_hooks: dict[Any, StructureHook] = {}
_unstructure_hooks: dict[Any, UnstructureHook] = {}


def _enum_value(value: enum.Enum) -> Any:
    return value.value


def _scalar_subclass(kind: Any) -> bool:
    # A subclass of a scalar (an IntEnum, say) is left to cattrs, which
    # dispatches it by its base class as it always did.
    return (
        isinstance(kind, type)
        and kind not in _SCALAR_STRUCTURE
        and issubclass(kind, tuple(_SCALAR_STRUCTURE))
    )


Hook = TypeVar("Hook", StructureHook, UnstructureHook)


def _find_hook(
    kind: Any,
    cache: dict[Any, Hook],
    scalar: Hook | None,
    factories: tuple[tuple[Callable[[Any], bool], Callable[[Any], Hook]], ...],
    fallback: Callable[[Any], Hook],
) -> Hook:
    try:
        return cache[kind]
    except KeyError:
        pass
    except TypeError:  # an unhashable type annotation
        return fallback(kind)
    hook = scalar
    if hook is None and not _scalar_subclass(kind):
        for predicate, factory in factories:
            if predicate(kind):
                hook = factory(kind)
                break
    if hook is None:
        hook = fallback(kind)
    cache[kind] = hook
    return hook


def structure_hook(kind: Any) -> StructureHook:
    """The structure hook for ``kind`` (the converter's, without importing cattrs for ours)."""
    scalar = _SCALAR_STRUCTURE.get(kind) if isinstance(kind, type) else None
    return _find_hook(kind, _structure_hooks, scalar, _STRUCTURE_FACTORIES, _cattrs_structure_hook)


def unstructure_hook(kind: Any) -> UnstructureHook:
    """The unstructure hook for ``kind`` (the converter's, without importing cattrs for ours)."""
    scalar = _unstructure_bytes if kind is bytes else None
    return _find_hook(kind, _unstructure_hooks, scalar, _UNSTRUCTURE_FACTORIES, _cattrs_unstructure_hook)


def _cattrs_structure_hook(kind: Any) -> StructureHook:
    return get_converter().get_structure_hook(kind)


def _cattrs_unstructure_hook(kind: Any) -> UnstructureHook:
    return get_converter().get_unstructure_hook(kind)


_converter: cattrs.Converter | None = None


def get_converter() -> cattrs.Converter:
    """
    The one cattrs converter for everything spear_twisted (de)serialises.

    Built on first use, with the hooks of this module registered; the wire
    path uses the same hooks without it, so an agent that only speaks the
    protocol never imports cattrs.
    """
    global _converter
    if _converter is None:
        import cattrs

        made = cattrs.Converter()
        for scalar, scalar_hook in _SCALAR_STRUCTURE.items():
            made.register_structure_hook(scalar, scalar_hook)
        for predicate, _ in reversed(_STRUCTURE_FACTORIES):
            made.register_structure_hook_factory(predicate, structure_hook)
        made.register_unstructure_hook(bytes, _unstructure_bytes)
        for predicate, _ in reversed(_UNSTRUCTURE_FACTORIES):
            made.register_unstructure_hook_factory(predicate, unstructure_hook)
        _converter = made
    return _converter


def __getattr__(name: str) -> Any:
    # ``converter`` is built on first use (see get_converter).
    if name == "converter":
        return get_converter()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def structure(value: Any, kind: type[T], *, root: str = "") -> T:
    """
    Build a ``kind`` from parsed JSON ``value`` with serde's rules.

    :raises InvalidMessage: naming the path of every problem, under ``root``.
    """
    try:
        built: T = structure_hook(kind)(value, kind)
        return built
    except SchemaError as e:
        prefix: tuple[PathPart, ...] = (root,) if root else ()
        raise InvalidMessage([(format_path(prefix + path), reason) for path, reason in e.problems]) from None


def unstructure(value: Any) -> Any:
    """``value`` as plain JSON-ready data, as PROTOCOL.md writes it."""
    return unstructure_hook(value.__class__)(value)


# -- messages -----------------------------------------------------------------------------


def encode_body(body: Any) -> bytes:
    """The JSON text of a message body (what goes into ``payload``)."""
    return orjson.dumps(unstructure_hook(body.__class__)(body))


def _parse(data: bytes, kind: type[T], root: str) -> T:
    return _structure_document(strict_json.loads(data), kind, root)


def _structure_document(document: strict_json.Document, kind: type[T], root: str) -> T:
    token = _maybe_booleans.set(document.may_contain_booleans)
    try:
        return structure(document.value, kind, root=root)
    finally:
        _maybe_booleans.reset(token)


def decode_body(message_type: MessageType, payload: bytes, *, request_id: int | None = None) -> Any:
    """
    The typed body of a ``message_type`` message from its payload bytes.

    An empty ``ConnectionClose`` payload reads as ``CloseMessage(None)``.
    The hot bodies (execute requests and responses, heartbeats, signals) in
    the shape every writer produces take a fast path that accepts and
    builds exactly what the general reader does; anything else, and every
    error, is the general reader's.

    :raises InvalidJson, InvalidMessage: with ``request_id`` set and every
        path under ``payload``.
    """
    if not payload:
        if message_type is MessageType.CONNECTION_CLOSE:
            return CloseMessage(None)
        raise InvalidJson(f"payload: empty, expected a {message_type.value} body", request_id=request_id)
    fast = _BODY_FAST_PATHS.get(message_type)
    if fast is not None and type(payload) is bytes:
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass  # the general reader below explains what is wrong
        else:
            body = fast(value, payload)
            if body is not None:
                return body
    return _decode_body_generally(message_type, payload, request_id)


def _decode_body_generally(message_type: MessageType, payload: bytes, request_id: int | None) -> Any:
    """A non-empty payload through the general reader (the reference the fast paths agree with)."""
    try:
        return _parse(payload, BODY_TYPES[message_type], "payload")
    except InvalidMessage as e:
        e.request_id = request_id
        raise
    except InvalidJson as e:
        raise InvalidJson(f"payload: {e.message}", request_id=request_id) from None


def encode_message(message: SpearMessage) -> bytes:
    """The JSON text of ``message``."""
    return b"".join(_message_parts(message))


_FRAME_HEADER = struct.Struct(">I")
_pack_length = _FRAME_HEADER.pack

# The envelope's text before its request id, per message type.
_ENVELOPE_HEADS = {kind: b'{"message_type":"%s","request_id":' % kind.value.encode() for kind in MessageType}


def encode_frame_for(message: SpearMessage) -> bytes:
    """``message`` as a whole frame: big-endian length, then its JSON text."""
    parts = _message_parts(message)
    if len(parts) == 3:
        head, payload, tail = parts
        return b"".join((_pack_length(len(head) + len(payload) + len(tail)), head, payload, tail))
    # A large payload: its pieces are joined once, with the rest of the frame.
    return b"".join([_pack_length(sum(map(len, parts))), *parts])


def _message_parts(message: SpearMessage) -> list[bytes]:
    # Written by hand: this is the hot path, and the payload (an array of
    # numbers) goes straight from bytes to text without an envelope dict.
    timestamp = message.timestamp
    payload = message.payload
    head = _ENVELOPE_HEADS[message.message_type] + (
        b'%d,"timestamp":{"secs_since_epoch":%d,"nanos_since_epoch":%d},"payload":'
        % (message.request_id, timestamp.secs_since_epoch, timestamp.nanos_since_epoch)
    )
    tail = b',"version":%d}' % message.version
    if len(payload) <= _PIECEWISE:
        return [head, orjson.dumps(list(payload)), tail]
    return [head, *_byte_array_parts(payload), tail]


def decode_message(data: bytes) -> SpearMessage:
    """
    Read a ``SpearMessage`` from its JSON text (a frame's body).

    The envelope is checked; the payload is not parsed (see
    :meth:`SpearMessage.parse_payload`).

    :raises InvalidJson: the text is not strict JSON.
    :raises InvalidMessage: the JSON is not an envelope; ``request_id`` is
        set on the error when the envelope's own ``request_id`` was readable.
    """
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) > _LARGE_MESSAGE:
        message = _large_envelope(data)
        if message is not None:
            return message
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InvalidJson(f"invalid JSON: {e}") from None
    message = _envelope_fast_path(value, data)
    if message is not None:
        return message
    # Anything unusual: the general reader, which also explains what is wrong.
    document = strict_json.parse(data)
    document.check_duplicates()
    try:
        return _structure_document(document, SpearMessage, "")
    except InvalidMessage as e:
        e.request_id = _readable_request_id(data)
        raise


_MESSAGE_TYPES_BY_NAME = {kind.value: kind for kind in MessageType}
_U64_MAX = 2**64 - 1


# Above this size an envelope is first read in two parts: the envelope
# around its payload, and the payload's array in pieces.
_LARGE_MESSAGE = 1024 * 1024
_LARGE_HEAD = re.compile(
    rb'\{"message_type":"[A-Za-z]+","request_id":[0-9]+,"timestamp":'
    rb'\{"secs_since_epoch":[0-9]+,"nanos_since_epoch":[0-9]+\},"payload":\['
)
_LARGE_TAIL = re.compile(rb'\],"version":[0-9]+\}\Z')


def _large_envelope(data: bytes) -> SpearMessage | None:
    """
    A large message in the compact shape every writer produces, read as
    strictly as the whole text would be but with its payload array in pieces;
    ``None`` for anything else (the general reader then decides).
    """
    head = _LARGE_HEAD.match(data)
    tail = _LARGE_TAIL.search(data, max(0, len(data) - 32))
    if head is None or tail is None or head.end() > tail.start():
        return None
    start, end = head.end(), tail.start()
    # The envelope without its payload goes through the hot path's checks
    # (numbers and their ranges, the type name, the 7 members).
    skeleton = data[:start] + data[end:]
    try:
        value = orjson.loads(skeleton)
    except orjson.JSONDecodeError:
        return None
    message = _envelope_fast_path(value, skeleton)
    if message is None:
        return None
    payload = _byte_array_pieces(data, start, end)
    if payload is None:
        return None
    return _make_message(
        message.message_type, message.request_id, message.timestamp, payload, message.version
    )


def _byte_array_pieces(data: bytes, start: int, end: int) -> bytes | None:
    """
    The bytes of the array elements in ``data[start:end]`` (the text between
    the brackets), or ``None`` if it is not an array of integers 0..255.

    Each piece is cut at a comma and parsed as an array of its own, so every
    number is checked by the JSON reader; a comma at a cut that has no number
    on one side leaves a piece that does not parse.
    """
    if data.find(b"e", start, end) >= 0:
        return None  # true or false: bytearray would take them as 1 and 0
    step = 4 * _PIECE
    pieces = []
    position = start
    while position < end:
        cut = data.find(b",", position + step, end) if position + step < end else -1
        if cut < 0:
            cut = end
        elif cut == end - 1:
            return None  # a trailing comma
        try:
            pieces.append(bytes(bytearray(orjson.loads(b"[" + data[position:cut] + b"]"))))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None
        position = cut + 1
    return b"".join(pieces)


def _envelope_fast_path(value: Any, data: bytes) -> SpearMessage | None:
    """
    The message, when ``value`` (``data`` as orjson parsed it, which already
    refused invalid UTF-8, lone surrogates, a BOM, non-finite numbers and
    trailing data) is an envelope of exactly the expected shape with valid
    values; ``None`` sends the caller to the general reader.  The hot path:
    every frame goes through it.
    """
    if type(value) is not dict or len(value) != 5:
        return None
    try:
        name = value["message_type"]
        request_id = value["request_id"]
        timestamp = value["timestamp"]
        payload = value["payload"]
        version = value["version"]
        if type(timestamp) is not dict or len(timestamp) != 2:
            return None
        secs = timestamp["secs_since_epoch"]
        nanos = timestamp["nanos_since_epoch"]
    except KeyError:
        return None
    message_type = _MESSAGE_TYPES_BY_NAME.get(name) if type(name) is str else None
    if (
        message_type is None
        or type(request_id) is not int
        or not 0 <= request_id <= _U64_MAX
        or type(secs) is not int
        or not 0 <= secs <= _U64_MAX
        or type(nanos) is not int
        or not 0 <= nanos < 1_000_000_000
        or type(version) is not int
        or not 0 <= version <= 255
        or type(payload) is not list
    ):
        return None
    try:
        payload_bytes = bytes(bytearray(payload))
    except (TypeError, ValueError):
        return None
    # The shape above is two levels deep (within serde's depth limit) and
    # holds exactly 7 members; a duplicate key would add a member, whose ":"
    # no escape can hide, so 7 colons in the text prove there was none.  They
    # are counted around the text from the first "[" to the last "]" (the
    # payload array, when there is no duplicate), and that stretch, the bulk
    # of the text, is only searched (memchr): for a colon, which must not be
    # there, and for an "e", which a true or false literal has and numbers
    # do not (``bytearray`` takes booleans as 1 and 0).
    start = data.find(b"[")
    end = data.rfind(b"]")
    if (
        start < 0
        or end < start
        or data.count(b":", 0, start) + data.count(b":", end) != 7
        or data.find(b":", start, end) >= 0
    ):
        return None
    if data.find(b"e", start, end) >= 0 and _has_booleans(payload):
        return None
    # Every value is checked above: build without re-running the validators.
    return _make_message(message_type, request_id, _make_timestamp(secs, nanos), payload_bytes, version)


def _readable_request_id(data: bytes) -> int | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(value) is dict:
        request_id = value.get("request_id")
        if type(request_id) is int and 0 <= request_id < 2**64:
            return request_id
    return None


# -- the hot bodies' fast paths ---------------------------------------------------------
#
# Like the envelope's: ``value`` is the payload as orjson parsed it (which
# already refused invalid UTF-8, lone surrogates, a BOM, non-finite numbers,
# out-of-range integers and trailing data).  A fast path returns the body only
# when ``value`` has exactly the shape every writer produces (each key present
# once, nothing unknown) with valid values, and proves on the text what
# orjson does not check; anything else returns ``None`` and the general
# reader decides, and explains.  Every accepted shape is at most three levels
# deep, well within serde's depth limit, once duplicate keys are ruled out.

_EXECUTION_MODES = {member.value: member for member in ExecutionMode}
_EXECUTION_STATUSES = {member.value: member for member in ExecutionStatus}
_CONNECTION_STATUSES = {member.value: member for member in ConnectionStatus}
_SIGNAL_TYPES = {member.value: member for member in SignalType}
_I32_LOW, _I32_HIGH = -(2**31), 2**31 - 1


_make_execute_request = _unchecked_maker(ExecuteRequest)
_make_execute_response = _unchecked_maker(ExecuteResponse)
_make_resource_usage = _unchecked_maker(ResourceUsage)
_make_heartbeat = _unchecked_maker(HeartbeatMessage)
_make_signal = _unchecked_maker(SignalMessage)


def _no_duplicates(data: bytes, members: int, strings: Callable[[], int]) -> bool:
    """
    Whether the text ``data`` had no duplicate keys, given that its parsed
    value holds ``members`` object members and ``strings()`` colons inside
    its strings (keys included).

    Every colon of the text separates a member or sits in a string, and a
    dropped duplicate takes its member and its strings away from the value,
    never adding any: equal counts prove nothing was dropped.  The escape
    ``\\u003a`` spells a colon the text count misses, but only in a string:
    the first comparison (no colon in any string) holds regardless.
    """
    colons = data.count(b":")
    if colons == members:
        return True
    # (A backslash is found at memchr speed; most texts have none.)
    return (b"\\" not in data or b"\\u003" not in data) and colons == members + strings()


def _fast_bytes(data: bytes, items: Any, key: bytes) -> bytes | None:
    """
    The bytes of the byte array ``items``, the value of the member ``key``
    (its JSON text with the quotes and colon: ``b'"data":'``) of the root
    object of ``data``, when that text has no duplicate keys.

    ``bytearray`` takes ``true`` and ``false`` as 1 and 0, so the array's text
    must have none: writers put the byte array last, so the last ``[`` of the
    text, right after ``key``, opens it, and no ``e`` (which a number never
    has) from there on proves it.  That ``[`` is not in a string: the ``"``
    before the colon ends a string (a letter cannot precede an opening one),
    so it ends a key spelled ``key``'s way, and only the root's own key may be
    followed by an array.  Otherwise the elements are looked at.
    """
    if type(items) is not list:
        return None
    try:
        made = bytes(bytearray(items))
    except (TypeError, ValueError):
        return None
    if items:
        start = data.rfind(b"[")
        if (data.find(b"e", start) >= 0 or not data.endswith(key, 0, start)) and _has_booleans(items):
            return None
    return made


def _is_u64_or_none(item: Any) -> bool:
    return item is None or (type(item) is int and 0 <= item <= _U64_MAX)


def _is_str_or_none(item: Any) -> bool:
    return item is None or type(item) is str


def _colons_in(*texts: str | None) -> int:
    count = 0
    for text in texts:
        if text:
            count += text.count(":")
    return count


def _execute_request_fast(value: Any, data: bytes) -> ExecuteRequest | None:
    """An ``ExecuteRequest`` of the usual shape (see above), or ``None``."""
    if type(value) is not dict or len(value) != 8:
        return None
    try:
        task_id = value["task_id"]
        command = value["command"]
        args = value["args"]
        env = value["env"]
        working_dir = value["working_dir"]
        timeout = value["timeout"]
        mode = _EXECUTION_MODES.get(value["mode"])
        input_data = value["input_data"]
    except (KeyError, TypeError):  # a missing key; an unhashable mode
        return None
    if (
        type(task_id) is not str
        or type(command) is not str
        or type(args) is not list
        or type(env) is not dict
        or not _is_str_or_none(working_dir)
        or not _is_u64_or_none(timeout)
        or mode is None
    ):
        return None
    for arg in args:
        if type(arg) is not str:
            return None
    for item in env.values():
        if type(item) is not str:
            return None
    if input_data is not None:
        input_data = _fast_bytes(data, input_data, b'"input_data":')
        if input_data is None:
            return None

    def strings() -> int:
        return _colons_in(task_id, command, working_dir, *args, *env, *env.values())

    if not _no_duplicates(data, 8 + len(env), strings):
        return None
    return _make_execute_request(task_id, command, tuple(args), env, working_dir, timeout, mode, input_data)


def _resource_usage_fast(value: Any) -> ResourceUsage | None:
    if type(value) is not dict or len(value) != 6:
        return None
    try:
        cpu = value["cpu_percent"]
        figures = (
            value["memory_bytes"],
            value["disk_read_bytes"],
            value["disk_write_bytes"],
            value["network_rx_bytes"],
            value["network_tx_bytes"],
        )
    except KeyError:
        return None
    cpu_type = type(cpu)
    if cpu_type is int:
        cpu = float(cpu)
    elif cpu is not None and cpu_type is not float:
        return None
    for figure in figures:
        if figure is not None and (type(figure) is not int or not 0 <= figure <= _U64_MAX):
            return None
    return _make_resource_usage(cpu, *figures)


def _execute_response_fast(value: Any, data: bytes) -> ExecuteResponse | None:
    """An ``ExecuteResponse`` of the usual shape (see above), or ``None``."""
    if type(value) is not dict or len(value) != 7:
        return None
    try:
        task_id = value["task_id"]
        status = _EXECUTION_STATUSES.get(value["status"])
        output = value["output"]
        error = value["error"]
        exit_code = value["exit_code"]
        duration_ms = value["duration_ms"]
        usage = value["resource_usage"]
    except (KeyError, TypeError):
        return None
    if (
        type(task_id) is not str
        or status is None
        or not _is_str_or_none(output)
        or not _is_str_or_none(error)
        or not (exit_code is None or (type(exit_code) is int and _I32_LOW <= exit_code <= _I32_HIGH))
        or not _is_u64_or_none(duration_ms)
    ):
        return None
    members = 7
    if usage is not None:
        usage = _resource_usage_fast(usage)
        if usage is None:
            return None
        members += 6
    if not _no_duplicates(data, members, lambda: _colons_in(task_id, output, error)):
        return None
    return _make_execute_response(task_id, status, output, error, exit_code, duration_ms, usage)


def _heartbeat_fast(value: Any, data: bytes) -> HeartbeatMessage | None:
    """A ``HeartbeatMessage`` of the usual shape (see above), or ``None``."""
    if type(value) is not dict or len(value) != 3:
        return None
    try:
        timestamp = value["timestamp"]
        sequence = value["sequence"]
        status = _CONNECTION_STATUSES.get(value["status"])
        if type(timestamp) is not dict or len(timestamp) != 2:
            return None
        secs = timestamp["secs_since_epoch"]
        nanos = timestamp["nanos_since_epoch"]
    except (KeyError, TypeError):
        return None
    if (
        status is None
        or type(secs) is not int
        or not 0 <= secs <= _U64_MAX
        or type(nanos) is not int
        or not 0 <= nanos < 1_000_000_000
        or type(sequence) is not int
        or not 0 <= sequence <= _U64_MAX
        or data.count(b":") != 5  # no strings but the status name: no colon in strings
    ):
        return None
    return _make_heartbeat(_make_timestamp(secs, nanos), sequence, status)


def _signal_fast(value: Any, data: bytes) -> SignalMessage | None:
    """A ``SignalMessage`` of the usual shape (see above), or ``None``."""
    if type(value) is not dict or len(value) != 3:
        return None
    try:
        name = value["signal_type"]
        task_id = value["task_id"]
        payload = value["data"]
    except KeyError:
        return None
    members = 3
    signal: AnySignal | None
    if type(name) is str:
        signal = _SIGNAL_TYPES.get(name)
        custom = None
    elif type(name) is dict and len(name) == 1 and type(name.get("Custom")) is str:
        custom = name["Custom"]
        signal = CustomSignal(custom)
        members += 1
    else:
        return None
    if signal is None or not _is_str_or_none(task_id):
        return None
    if payload is not None:
        payload = _fast_bytes(data, payload, b'"data":')
        if payload is None:
            return None
    if not _no_duplicates(data, members, lambda: _colons_in(custom, task_id)):
        return None
    return _make_signal(signal, task_id, payload)


_BODY_FAST_PATHS: dict[MessageType, Callable[[Any, bytes], Any]] = {
    MessageType.EXECUTE_REQUEST: _execute_request_fast,
    MessageType.EXECUTE_RESPONSE: _execute_response_fast,
    MessageType.HEARTBEAT: _heartbeat_fast,
    MessageType.SIGNAL: _signal_fast,
}
