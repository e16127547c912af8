"""
The ``spear.v1`` contract in Python: method paths, and conversions between
the protobuf messages of ``spear.proto`` and the wire layer's attrs classes.

``Envelope`` and :class:`~spear_twisted.wire.SpearMessage` map 1:1: the
``payload`` bytes are the body's JSON text in both, never re-encoded.
Reading checks what protobuf cannot express (a ``u8`` version, nanoseconds
below 10^9, a known message type, a timestamp present) and refuses the rest
with :class:`~spear_twisted.errors.InvalidMessage` naming the field.

No Twisted here.
"""

from __future__ import annotations

from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.errors import InvalidMessage
from spear_twisted.wire import (
    ExecuteRequest,
    ExecuteResponse,
    ExecutionMode,
    ExecutionStatus,
    MessageType,
    ResourceUsage,
    SpearMessage,
)
from spear_twisted.wire.messages import _make_message, _make_timestamp

#: The protobuf package of the contract.
PACKAGE = "spear.v1"

#: The full name of the service.
SERVICE = f"{PACKAGE}.SpearBridge"

#: The HTTP/2 ``:path`` of each method.
CONNECT_PATH = f"/{SERVICE}/Connect"
EXECUTE_PATH = f"/{SERVICE}/Execute"
STATUS_PATH = f"/{SERVICE}/Status"

#: Where ``spear.proto`` is, relative to the ``spear_twisted.bridge`` package.
PROTO_RESOURCE = "spear.proto"


def _by_name(enum_type: object, prefix: str, members: type) -> tuple[dict[object, int], dict[int, object]]:
    to_number = {member: enum_type.Value(f"{prefix}_{member.name}") for member in members}  # type: ignore[attr-defined]
    return to_number, {number: member for member, number in to_number.items()}


_TYPE_NUMBERS, _TYPES_BY_NUMBER = _by_name(pb.MessageType, "MESSAGE_TYPE", MessageType)
_MODE_NUMBERS, _MODES_BY_NUMBER = _by_name(pb.ExecutionMode, "EXECUTION_MODE", ExecutionMode)
_STATUS_NUMBERS, _STATUSES_BY_NUMBER = _by_name(pb.ExecutionStatus, "EXECUTION_STATUS", ExecutionStatus)
_MODES_BY_NUMBER[pb.EXECUTION_MODE_UNSPECIFIED] = ExecutionMode.SYNC

_U8_MAX = 255
_NANOS_LIMIT = 10**9


# -- the session envelope ---------------------------------------------------------------


def envelope_from_message(message: SpearMessage) -> pb.Envelope:
    """The ``Envelope`` carrying ``message``; its payload bytes are shared, not re-encoded."""
    stamp = message.timestamp
    return pb.Envelope(
        message_type=_TYPE_NUMBERS[message.message_type],  # type: ignore[arg-type]
        request_id=message.request_id,
        timestamp=pb.Timestamp(
            secs_since_epoch=stamp.secs_since_epoch, nanos_since_epoch=stamp.nanos_since_epoch
        ),
        payload=message.payload,
        version=message.version,
    )


def message_from_envelope(envelope: pb.Envelope) -> SpearMessage:
    """
    The ``SpearMessage`` an ``Envelope`` carries (the payload is not parsed).

    :raises InvalidMessage: naming every field protobuf could not check,
        with ``request_id`` set to the envelope's.
    """
    problems: list[tuple[str, str]] = []
    message_type = _TYPES_BY_NUMBER.get(envelope.message_type)
    if message_type is None:
        problems.append(("message_type", _unknown_enum(envelope.message_type, "message type")))
    version = envelope.version
    if version > _U8_MAX:
        problems.append(("version", f"integer {version} out of range for u8"))
    if not envelope.HasField("timestamp"):
        problems.append(("timestamp", "missing field"))
    else:
        nanos = envelope.timestamp.nanos_since_epoch
        if nanos >= _NANOS_LIMIT:
            problems.append(("timestamp.nanos_since_epoch", f"integer {nanos} out of range for nanoseconds"))
    if problems:
        raise InvalidMessage(problems, request_id=envelope.request_id)
    # Every value is checked: build without re-running the validators (the hot path).
    stamp = _make_timestamp(envelope.timestamp.secs_since_epoch, envelope.timestamp.nanos_since_epoch)
    return _make_message(message_type, envelope.request_id, stamp, envelope.payload, version)


def _unknown_enum(number: int, what: str) -> str:
    if number == 0:
        return f"unspecified {what} (0)"
    return f"unknown {what} {number}"


# -- Execute ------------------------------------------------------------------------------------


def execute_request_from_call(call: pb.ExecuteCall) -> ExecuteRequest:
    """
    The ``ExecuteRequest`` an ``ExecuteCall`` asks for (an unspecified mode is ``Sync``).

    :raises InvalidMessage: for an unknown mode.
    """
    mode = _MODES_BY_NUMBER.get(call.mode)
    if mode is None:
        raise InvalidMessage([("mode", _unknown_enum(call.mode, "execution mode"))])
    return ExecuteRequest(
        task_id=call.task_id,
        command=call.command,
        args=tuple(call.args),
        env=dict(call.env),
        working_dir=call.working_dir if call.HasField("working_dir") else None,
        timeout=call.timeout_seconds if call.HasField("timeout_seconds") else None,
        mode=mode,  # type: ignore[arg-type]
        input_data=call.input if call.HasField("input") else None,
    )


def execute_call_from_request(request: ExecuteRequest) -> pb.ExecuteCall:
    """The ``ExecuteCall`` that asks for ``request`` (what a caller sends)."""
    call = pb.ExecuteCall(
        task_id=request.task_id,
        command=request.command,
        args=request.args,
        env=request.env,
        mode=_MODE_NUMBERS[request.mode],  # type: ignore[arg-type]
    )
    if request.working_dir is not None:
        call.working_dir = request.working_dir
    if request.timeout is not None:
        call.timeout_seconds = request.timeout
    if request.input_data is not None:
        call.input = request.input_data
    return call


_USAGE_FIELDS = tuple(field.name for field in pb.ResourceUsage.DESCRIPTOR.fields)


def execute_result_from_response(response: ExecuteResponse, instance_id: str = "") -> pb.ExecuteResult:
    """The ``ExecuteResult`` reporting ``response``, run by ``instance_id``."""
    result = pb.ExecuteResult(
        task_id=response.task_id,
        status=_STATUS_NUMBERS[response.status],  # type: ignore[arg-type]
        instance_id=instance_id,
    )
    if response.output is not None:
        result.output = response.output
    if response.error is not None:
        result.error = response.error
    if response.exit_code is not None:
        result.exit_code = response.exit_code
    if response.duration_ms is not None:
        result.duration_ms = response.duration_ms
    usage = response.resource_usage
    if usage is not None:
        result.resource_usage.SetInParent()
        for name in _USAGE_FIELDS:
            value = getattr(usage, name)
            if value is not None:
                setattr(result.resource_usage, name, value)
    return result


def execute_response_from_result(result: pb.ExecuteResult) -> ExecuteResponse:
    """
    The ``ExecuteResponse`` an ``ExecuteResult`` reports (what a caller reads).

    :raises InvalidMessage: for an unspecified or unknown status.
    """
    status = _STATUSES_BY_NUMBER.get(result.status)
    if status is None:
        raise InvalidMessage([("status", _unknown_enum(result.status, "execution status"))])
    usage = None
    if result.HasField("resource_usage"):
        source = result.resource_usage
        try:
            usage = ResourceUsage(
                **{name: getattr(source, name) if source.HasField(name) else None for name in _USAGE_FIELDS}
            )
        except (TypeError, ValueError) as e:
            raise InvalidMessage([("resource_usage", str(e))]) from None
    return ExecuteResponse(
        task_id=result.task_id,
        status=status,  # type: ignore[arg-type]
        output=result.output if result.HasField("output") else None,
        error=result.error if result.HasField("error") else None,
        exit_code=result.exit_code if result.HasField("exit_code") else None,
        duration_ms=result.duration_ms if result.HasField("duration_ms") else None,
        resource_usage=usage,
    )
