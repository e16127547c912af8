"""
The JSON of ``POST /tasks/{id}/execute``: the request body read into an
:class:`~spear_twisted.wire.ExecuteRequest`, and an
:class:`~spear_twisted.wire.ExecuteResponse` written as JSON.

The body is read by the one converter (:mod:`spear_twisted.wire.codec`) as a
settings class: a missing key takes its default, an unknown key is an error
(with a suggestion for a likely typo), and every problem names its path, as
in ``args[1]: expected string, found integer``.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import attrs
import orjson

from spear_twisted.errors import InvalidMessage
from spear_twisted.settings import setting
from spear_twisted.wire import ExecuteRequest, ExecuteResponse, ExecutionMode, RuntimeInstanceId
from spear_twisted.wire.codec import structure, unstructure
from spear_twisted.wire.strict_json import loads

_JSON_TYPES = {
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}

#: The longest ``timeout`` a request may ask for, in seconds (one day).
MAX_TIMEOUT = 86_400.0


@attrs.frozen
class ExecuteBody:
    """The body of ``POST /tasks/{id}/execute``; every key is optional."""

    __spear_settings__ = True

    command: str = setting("", doc="The command the instance runs.")
    args: tuple[str, ...] = setting((), doc="Its arguments, an array of strings.")
    input: str | None = setting(None, doc="Input data as text (sent UTF-8 encoded).")
    input_base64: str | None = setting(
        None, doc="Input data as base64, for bytes that are not text; not together with ``input``."
    )
    env: dict[str, str] = setting(attrs.Factory(dict), doc="Environment variables for this execution.")
    working_dir: str | None = setting(None, doc="Working directory for this execution.")
    timeout: float | None = setting(
        None,
        doc=(
            "Seconds the execution may take, above 0 and at most one day; the task's request "
            "timeout when absent."
        ),
    )
    mode: ExecutionMode = setting(
        ExecutionMode.SYNC, doc='``"Sync"``, ``"Async"``, ``"Stream"`` or ``"Interactive"``.'
    )


def _checked(body: ExecuteBody) -> tuple[list[tuple[str, str]], bytes | None]:
    """
    What the converter cannot check (rules across fields and on values),
    and the input as bytes (decoded once, here).
    """
    problems = []
    input_data = None if body.input is None else body.input.encode()
    if body.input is not None and body.input_base64 is not None:
        problems.append(("input_base64", "give input or input_base64, not both"))
    if body.input_base64 is not None:
        try:
            decoded = base64.b64decode(body.input_base64, validate=True)
        except (binascii.Error, ValueError) as e:
            problems.append(("input_base64", f"not valid base64: {e}"))
        else:
            input_data = decoded if input_data is None else input_data
    if body.timeout is not None and not 0 < body.timeout <= MAX_TIMEOUT:
        problems.append(
            ("timeout", f"must be above 0 and at most {MAX_TIMEOUT:g} seconds, not {body.timeout:g}")
        )
    return problems, input_data


def parse_execute_body(task_id: str, data: bytes) -> tuple[ExecuteRequest, float | None]:
    """
    The request for task ``task_id`` that the JSON text ``data`` asks for,
    and the timeout it gives (``None``: the task's own).

    The request's ``timeout`` (whole seconds, for the agent) is the body's,
    rounded up.

    :raises InvalidJson: ``data`` is not strict UTF-8 JSON.
    :raises InvalidMessage: it is not the schema, with every problem's path.
    """
    value = loads(data).value
    if type(value) is not dict:
        raise InvalidMessage([("", f"expected a JSON object, found {_JSON_TYPES[type(value)]}")])
    body = structure(value, ExecuteBody)
    problems, input_data = _checked(body)
    if problems:
        raise InvalidMessage(problems)
    request = ExecuteRequest(
        task_id=task_id,
        command=body.command,
        args=body.args,
        env=body.env,
        working_dir=body.working_dir,
        timeout=None if body.timeout is None else math.ceil(body.timeout),
        mode=body.mode,
        input_data=input_data,
    )
    return request, body.timeout


def response_document(
    response: ExecuteResponse, instance_id: RuntimeInstanceId | None = None
) -> dict[str, Any]:
    """
    ``response`` as JSON-ready data: the wire's body shape (``output`` and
    ``error`` are text), with ``instance_id``, the instance that gave it,
    when known.
    """
    document: dict[str, Any] = unstructure(response)
    if instance_id is not None:
        document["instance_id"] = str(instance_id)
    return document


def dump_json(document: Any) -> bytes:
    """``document`` as compact JSON text with a final newline."""
    return orjson.dumps(document, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
