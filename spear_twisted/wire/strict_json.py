"""
A JSON reader as strict as serde_json, and the matching writer.

orjson already refuses invalid UTF-8, lone surrogates, a byte order mark,
``NaN``/``Infinity``, numbers that overflow a double and trailing data.  It
keeps the last of duplicate keys silently and nests up to 1024 levels, so this
module adds the duplicate check and serde_json's depth limit of 127, without
walking large byte arrays element by element (see
:func:`_duplicate_keys_possible`).

Nothing here recurses on the input: a hostile document cannot raise
``RecursionError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import orjson

from spear_twisted.errors import InvalidJson

# Deleting these leaves a short "residue" of a typical message (whose bulk is
# arrays of small integers) in which the facts below are cheap to look for.
_DIGITS_AND_COMMAS = b"0123456789,"

#: serde_json's recursion limit (128 levels counted down to zero): at most
#: 127 nested arrays and objects are read.
MAX_DEPTH = 127

# Lists at least this long are first tried as byte arrays (C speed) before
# being walked element by element.
_BULK_LIST = 16


@attrs.define
class Document:
    """
    A parsed JSON document, checked for everything but duplicate keys.

    ``may_contain_booleans`` is false only when the text provably holds no
    ``true`` or ``false`` literal, which lets byte-array checks skip looking
    for booleans disguised as 1 and 0.  Call :meth:`check_duplicates` before
    trusting ``value`` (:func:`loads` does).
    """

    value: Any
    may_contain_booleans: bool
    data: bytes = attrs.field(repr=False)
    residue: bytes = attrs.field(repr=False)

    def check_duplicates(self) -> None:
        """
        Refuse a document that had duplicate keys.

        :raises InvalidJson: naming the duplicate key.
        """
        if _duplicate_keys_possible(self.residue, self.value):
            _check_duplicate_keys(self.data)


def parse(data: bytes) -> Document:
    """
    Parse ``data`` (UTF-8 JSON text) strictly, but for duplicate keys (see
    :meth:`Document.check_duplicates`).

    :raises InvalidJson: for anything else serde_json would refuse.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InvalidJson(f"invalid JSON: {e}") from None
    except TypeError as e:
        raise InvalidJson(f"invalid JSON input: {e}") from None
    data = bytes(data)
    residue = data.translate(None, _DIGITS_AND_COMMAS)
    # Every nesting level opens a bracket, so few brackets means shallow.
    if residue.count(b"[") + residue.count(b"{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise InvalidJson(f"invalid JSON: nesting deeper than {MAX_DEPTH}")
    may_contain_booleans = b"true" in residue or b"false" in residue
    return Document(value, may_contain_booleans, data, residue)


def loads(data: bytes) -> Document:
    """
    Parse ``data`` (UTF-8 JSON text) strictly.

    :raises InvalidJson: for anything serde_json would refuse, and for
        duplicate object keys anywhere in the document.
    """
    document = parse(data)
    document.check_duplicates()
    return document


def dumps(value: Any) -> bytes:
    """Compact JSON, escaped the way serde_json escapes (orjson does the same)."""
    return orjson.dumps(value)


def _duplicate_keys_possible(residue: bytes, value: Any) -> bool:
    """
    Whether the parsed ``value`` may have lost duplicate keys.

    Every ``:`` of the text is either an object member's separator or a
    character inside a string.  Parsing drops one member per duplicate key but
    keeps every string, so when the colons counted in the parsed value (one
    per member plus those inside strings) reach the colons in the text, no key
    was dropped.  A ``\\u`` escape could spell a colon the text count misses,
    so its presence sends the caller to the exact check.

    The first count skips arrays (in our messages they hold bytes or plain
    strings); only when it falls short are arrays searched too.
    """
    if b"\\u" in residue:
        return True
    colons = residue.count(b":")
    if _count_colons(value, into_arrays=False) == colons:
        return False
    return _count_colons(value, into_arrays=True) != colons


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value``, iteratively."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        members: Iterable[Any]
        if type(item) is dict:
            members = item.values()
        elif type(item) is list:
            members = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((member, depth + 1) for member in members if type(member) in (dict, list))
    return deepest


def _count_colons(value: Any, *, into_arrays: bool) -> int:
    """Object members plus colons inside strings, iteratively."""
    count = 0
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        kind = type(item)
        if kind is dict:
            count += len(item)
            for key, member in item.items():
                count += key.count(":")
                member_kind = type(member)
                if member_kind is str:
                    count += member.count(":")
                elif member_kind is dict or (into_arrays and member_kind is list):
                    push(member)
        elif kind is list:
            if len(item) >= _BULK_LIST:
                try:
                    bytearray(item)
                except (TypeError, ValueError):
                    pass
                else:
                    continue  # only small integers (or booleans): no colons
            for member in item:
                member_kind = type(member)
                if member_kind is str:
                    count += member.count(":")
                elif member_kind is dict or member_kind is list:
                    push(member)
        elif kind is str:
            count += item.count(":")
    return count


def _check_duplicate_keys(data: bytes) -> None:
    """The exact (slow) check, used only when the fast one is inconclusive."""
    import json

    def refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, member in pairs:
            if key in seen:
                raise InvalidJson(f"invalid JSON: duplicate key {key!r}")
            seen[key] = member
        return seen

    # loads() has bounded the depth at MAX_DEPTH, well inside the recursion
    # limit of the stdlib scanner.
    json.loads(data, object_pairs_hook=refuse_duplicates)
