"""
The messages of PROTOCOL.md sections 2 and 3 as attrs classes.

Field order is the Rust structs' order, which is the order the codec writes.
Python-side defaults exist for convenience only: on the wire every key is
written, and when reading only the keys whose type is ``T | None`` may be
missing (serde's rule).

Secrets never appear in a ``repr``: ``AuthRequest.token`` is masked and a
``SpearMessage`` shows only its payload's length.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, TypeVar

import attrs

from spear_twisted.errors import (
    ERROR_CLASSES,
    ErrorCode,
    PeerError,
    SpearError,
)
from spear_twisted.wire.constants import PROTOCOL_VERSION
from spear_twisted.wire.identity import RuntimeInstanceId

_new = object.__new__
T = TypeVar("T")
_U64_MAX = 2**64 - 1

# -- scalar types -------------------------------------------------------------


@attrs.frozen
class IntRange:
    """Marks an ``int`` field with the Rust integer type it has on the wire."""

    name: str
    low: int
    high: int


@attrs.frozen
class FloatKind:
    """Marks a ``float`` field as a Rust ``f64`` (finite; integers accepted)."""

    name: str = "f64"


U8 = Annotated[int, IntRange("u8", 0, 2**8 - 1)]
U32 = Annotated[int, IntRange("u32", 0, 2**32 - 1)]
U64 = Annotated[int, IntRange("u64", 0, 2**64 - 1)]
I32 = Annotated[int, IntRange("i32", -(2**31), 2**31 - 1)]
Nanos = Annotated[int, IntRange("nanoseconds", 0, 10**9 - 1)]
F64 = Annotated[float, FloatKind()]

_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _type_name(value: object) -> str:
    return type(value).__name__


def _int_in(kind: Any) -> _Validator:
    marker: IntRange = kind.__metadata__[0]
    low, high, name = marker.low, marker.high, marker.name

    def check(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{attribute.name} must be an integer ({name}), not {_type_name(value)}")
        if not low <= value <= high:
            raise ValueError(f"{attribute.name}={value} is out of range for {name} ({low}..{high})")

    return check


def _finite_float(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a number, not {_type_name(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be finite, not {value!r}")


def _string(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a string, not {_type_name(value)}")


def _boolean(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a bool, not {_type_name(value)}")


def _strings(_instance: object, attribute: attrs.Attribute[Any], value: tuple[object, ...]) -> None:
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise TypeError(f"{attribute.name}[{index}] must be a string, not {_type_name(item)}")


def _string_map(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, dict):
        raise TypeError(f"{attribute.name} must be a dict of strings, not {_type_name(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise TypeError(f"{attribute.name} must map strings to strings: {key!r}: {item!r}")


def _optional(check: _Validator) -> _Validator:
    def optional_check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            check(instance, attribute, value)

    return optional_check


def _instance_of(kind: type) -> _Validator:
    def check(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, kind):
            raise TypeError(f"{attribute.name} must be a {kind.__name__}, not {_type_name(value)}")

    return check


def _to_tuple(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)):
        raise TypeError(f"expected a sequence of strings, not a single {_type_name(value)}")
    return tuple(value)


def _to_bytes(value: bytes | bytearray | memoryview) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected bytes, not {_type_name(value)}")


def _to_optional_bytes(value: bytes | bytearray | memoryview | None) -> bytes | None:
    return None if value is None else _to_bytes(value)


def _to_dict(value: Mapping[str, str]) -> dict[str, str]:
    return value if type(value) is dict else dict(value)


def _plain_int(value: int) -> int:
    # An IntEnum (ErrorCode) is stored as the number it stands for.
    return int(value) if isinstance(value, enum.IntEnum) else value


def _optional_plain_int(value: int | None) -> int | None:
    return None if value is None else _plain_int(value)


def _masked(_value: object) -> str:
    return "'***'"


def _byte_count(value: bytes | None) -> str:
    return "None" if value is None else f"<{len(value)} bytes>"


# -- enums ----------------------------------------------------------------------


class MessageType(enum.Enum):
    """The nine message types of PROTOCOL.md section 2.1."""

    AUTH_REQUEST = "AuthRequest"
    AUTH_RESPONSE = "AuthResponse"
    EXECUTE_REQUEST = "ExecuteRequest"
    EXECUTE_RESPONSE = "ExecuteResponse"
    SIGNAL = "Signal"
    HEARTBEAT = "Heartbeat"
    ERROR = "Error"
    STREAM_DATA = "StreamData"
    CONNECTION_CLOSE = "ConnectionClose"

    # Members are singletons, equal only to themselves: the identity hash
    # agrees with equality, and is computed in C where Enum's hashes the
    # name in Python (every message passes a few dicts and sets keyed by its
    # type on the hot path).
    __hash__ = object.__hash__


class ExecutionMode(enum.Enum):
    """How an execution runs."""

    SYNC = "Sync"
    ASYNC = "Async"
    STREAM = "Stream"
    INTERACTIVE = "Interactive"


class ExecutionStatus(enum.Enum):
    """Where an execution stands."""

    RECEIVED = "Received"
    STARTED = "Started"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    TIMEOUT = "Timeout"


class ConnectionStatus(enum.Enum):
    """A side's state as reported in its heartbeats."""

    ACTIVE = "Active"
    IDLE = "Idle"
    BUSY = "Busy"
    ERROR = "Error"


@attrs.frozen
class CustomSignal:
    """The ``Custom(String)`` variant of ``SignalType``: ``{"Custom": name}`` on the wire."""

    name: str = attrs.field(validator=_string)


class SignalType(enum.Enum):
    """
    The unit variants of Rust's ``SignalType``.

    The data-carrying variant is :class:`CustomSignal`; make one with
    ``SignalType.custom("reload")``.
    """

    TERMINATE = "Terminate"
    PAUSE = "Pause"
    RESUME = "Resume"
    RESTART = "Restart"

    @staticmethod
    def custom(name: str) -> CustomSignal:
        """The ``Custom`` signal called ``name``."""
        return CustomSignal(name)


#: Any signal: a unit variant or a custom one.
AnySignal = SignalType | CustomSignal

#: The name of the custom signal asking an instance to abandon a request
#: (the signal's request id is the request's).
CANCEL_SIGNAL = "cancel"


# -- bodies ---------------------------------------------------------------------------


@attrs.frozen
class Timestamp:
    """Rust's ``SystemTime`` as serde writes it: seconds and nanoseconds since the epoch."""

    secs_since_epoch: U64 = attrs.field(validator=_int_in(U64))
    nanos_since_epoch: Nanos = attrs.field(default=0, validator=_int_in(Nanos))

    @classmethod
    def now(cls) -> Timestamp:
        """The wall-clock time now."""
        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        if cls is not Timestamp:
            return cls(seconds, nanos)
        # In range by construction: skip the validators (every message is stamped).
        return _make_timestamp(seconds, nanos)

    @classmethod
    def from_ns(cls, nanoseconds: int) -> Timestamp:
        """The time ``nanoseconds`` after the epoch."""
        seconds, nanos = divmod(nanoseconds, 10**9)
        return cls(seconds, nanos)

    @classmethod
    def from_seconds(cls, seconds: float) -> Timestamp:
        """The time ``seconds`` (a float, as from ``time.time()``) after the epoch."""
        return cls.from_ns(round(seconds * 10**9))

    def to_ns(self) -> int:
        """Nanoseconds since the epoch."""
        return self.secs_since_epoch * 10**9 + self.nanos_since_epoch

    def to_seconds(self) -> float:
        """Seconds since the epoch, as a float."""
        return self.secs_since_epoch + self.nanos_since_epoch / 10**9


@attrs.frozen
class AuthRequest:
    """The agent's first frame: who it is and the token that proves it."""

    instance_id: str = attrs.field(validator=_string)
    token: str = attrs.field(validator=_string, repr=_masked)
    client_version: str = attrs.field(default="", validator=_string)
    client_type: str = attrs.field(default="", validator=_string)
    extra_params: dict[str, str] = attrs.field(
        factory=dict, converter=_to_dict, validator=_string_map, hash=False
    )


@attrs.frozen
class AuthResponse:
    """The spearlet's answer to ``AuthRequest``."""

    success: bool = attrs.field(validator=_boolean)
    error_message: str | None = attrs.field(default=None, validator=_optional(_string))
    session_id: str | None = attrs.field(default=None, validator=_optional(_string))
    server_version: str = attrs.field(default="", validator=_string)
    supported_features: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple, validator=_strings)


@attrs.frozen
class ExecuteRequest:
    """Run ``command`` with ``args`` for ``task_id``; ``timeout`` is in seconds."""

    task_id: str = attrs.field(validator=_string)
    command: str = attrs.field(default="", validator=_string)
    args: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple, validator=_strings)
    env: dict[str, str] = attrs.field(factory=dict, converter=_to_dict, validator=_string_map, hash=False)
    working_dir: str | None = attrs.field(default=None, validator=_optional(_string))
    timeout: U64 | None = attrs.field(default=None, validator=_optional(_int_in(U64)))
    mode: ExecutionMode = attrs.field(default=ExecutionMode.SYNC, validator=_instance_of(ExecutionMode))
    input_data: bytes | None = attrs.field(default=None, converter=_to_optional_bytes, repr=_byte_count)


@attrs.frozen
class ResourceUsage:
    """What an execution used; every figure is optional."""

    cpu_percent: F64 | None = attrs.field(default=None, validator=_optional(_finite_float))
    memory_bytes: U64 | None = attrs.field(default=None, validator=_optional(_int_in(U64)))
    disk_read_bytes: U64 | None = attrs.field(default=None, validator=_optional(_int_in(U64)))
    disk_write_bytes: U64 | None = attrs.field(default=None, validator=_optional(_int_in(U64)))
    network_rx_bytes: U64 | None = attrs.field(default=None, validator=_optional(_int_in(U64)))
    network_tx_bytes: U64 | None = attrs.field(default=None, validator=_optional(_int_in(U64)))


@attrs.frozen
class ExecuteResponse:
    """The outcome of an ``ExecuteRequest``."""

    task_id: str = attrs.field(validator=_string)
    status: ExecutionStatus = attrs.field(validator=_instance_of(ExecutionStatus))
    output: str | None = attrs.field(default=None, validator=_optional(_string))
    error: str | None = attrs.field(default=None, validator=_optional(_string))
    exit_code: I32 | None = attrs.field(default=None, validator=_optional(_int_in(I32)))
    duration_ms: U64 | None = attrs.field(default=None, validator=_optional(_int_in(U64)))
    resource_usage: ResourceUsage | None = attrs.field(
        default=None, validator=_optional(_instance_of(ResourceUsage))
    )


@attrs.frozen
class SignalMessage:
    """A signal for the agent, optionally about one task, with optional data."""

    signal_type: AnySignal = attrs.field(validator=_instance_of((SignalType, CustomSignal)))  # type: ignore[arg-type]
    task_id: str | None = attrs.field(default=None, validator=_optional(_string))
    data: bytes | None = attrs.field(default=None, converter=_to_optional_bytes, repr=_byte_count)


@attrs.frozen
class HeartbeatMessage:
    """A liveness beat with the sender's status."""

    timestamp: Timestamp = attrs.field(validator=_instance_of(Timestamp))
    sequence: U64 = attrs.field(validator=_int_in(U64))
    status: ConnectionStatus = attrs.field(
        default=ConnectionStatus.ACTIVE, validator=_instance_of(ConnectionStatus)
    )


@attrs.frozen
class ErrorMessage:
    """A refusal or failure, with a code from :class:`~spear_twisted.errors.ErrorCode`."""

    error_code: U32 = attrs.field(converter=_plain_int, validator=_int_in(U32))
    message: str = attrs.field(validator=_string)
    details: str | None = attrs.field(default=None, validator=_optional(_string))
    related_request_id: U64 | None = attrs.field(
        default=None, converter=_optional_plain_int, validator=_optional(_int_in(U64))
    )

    @classmethod
    def from_error(cls, error: SpearError) -> ErrorMessage:
        """The message that reports ``error`` to the peer."""
        return cls(
            error_code=error.code,
            message=error.message,
            details=error.details,
            related_request_id=error.request_id,
        )

    def to_error(self, instance_id: RuntimeInstanceId | None = None) -> SpearError:
        """This message as the exception of its code (``PeerError`` for an unknown code)."""
        try:
            code = ErrorCode(self.error_code)
        except ValueError:
            return PeerError(
                self.error_code,
                self.message,
                instance_id=instance_id,
                request_id=self.related_request_id,
                details=self.details,
            )
        return ERROR_CLASSES[code](
            self.message,
            instance_id=instance_id,
            request_id=self.related_request_id,
            details=self.details,
            code=code,
        )


@attrs.frozen
class StreamDataMessage:
    """One piece of a stream; ``is_last`` ends it."""

    stream_id: str = attrs.field(validator=_string)
    data: bytes = attrs.field(converter=_to_bytes, repr=_byte_count)
    is_last: bool = attrs.field(default=False, validator=_boolean)
    sequence: U64 = attrs.field(default=0, validator=_int_in(U64))


@attrs.frozen
class CloseMessage:
    """
    The optional body of ``ConnectionClose`` (spear_twisted).

    With no reason the payload is empty, as the Rust spearlet sends it.
    """

    reason: str | None = attrs.field(default=None, validator=_optional(_string))


#: Any message body.
Body = (
    AuthRequest
    | AuthResponse
    | ExecuteRequest
    | ExecuteResponse
    | SignalMessage
    | HeartbeatMessage
    | ErrorMessage
    | StreamDataMessage
    | CloseMessage
)

#: The body class each message type carries.
BODY_TYPES: dict[MessageType, type[Any]] = {
    MessageType.AUTH_REQUEST: AuthRequest,
    MessageType.AUTH_RESPONSE: AuthResponse,
    MessageType.EXECUTE_REQUEST: ExecuteRequest,
    MessageType.EXECUTE_RESPONSE: ExecuteResponse,
    MessageType.SIGNAL: SignalMessage,
    MessageType.HEARTBEAT: HeartbeatMessage,
    MessageType.ERROR: ErrorMessage,
    MessageType.STREAM_DATA: StreamDataMessage,
    MessageType.CONNECTION_CLOSE: CloseMessage,
}

_MESSAGE_TYPES: dict[type[Any], MessageType] = {body: kind for kind, body in BODY_TYPES.items()}

# An enum's members are slow to reach through the class (its metaclass has a
# __getattr__): the hot paths use module aliases.
_CONNECTION_CLOSE = MessageType.CONNECTION_CLOSE


# -- the envelope ----------------------------------------------------------------------


@attrs.frozen
class SpearMessage:
    """
    One frame's message: the envelope of PROTOCOL.md section 2.

    ``payload`` holds the body's JSON text; :meth:`parse_payload` turns it into
    the typed body.  Build messages with the named constructors
    (``SpearMessage.execute_request(request_id, body)``, ...), which mirror
    the Rust API and encode the body for you.
    """

    message_type: MessageType = attrs.field(validator=_instance_of(MessageType))
    request_id: U64 = attrs.field(validator=_int_in(U64))
    timestamp: Timestamp = attrs.field(factory=Timestamp.now, validator=_instance_of(Timestamp))
    payload: bytes = attrs.field(default=b"", converter=_to_bytes, repr=_byte_count)
    version: U8 = attrs.field(default=PROTOCOL_VERSION, validator=_int_in(U8))

    @classmethod
    def create(
        cls,
        request_id: int,
        body: Body,
        *,
        timestamp: Timestamp | None = None,
    ) -> SpearMessage:
        """The message carrying ``body``, its type taken from the body's class."""
        message_type = _MESSAGE_TYPES.get(type(body))
        if message_type is None:
            raise TypeError(f"{type(body).__name__} is not a message body")
        if message_type is _CONNECTION_CLOSE and body.reason is None:  # type: ignore[union-attr]
            payload = b""
        else:
            payload = codec.encode_body(body)
        if (
            cls is not SpearMessage
            or type(request_id) is not int
            or not 0 <= request_id <= _U64_MAX
            or (timestamp is not None and type(timestamp) is not Timestamp)
        ):
            return cls(message_type, request_id, timestamp or Timestamp.now(), payload)
        # Every field is valid (checked above, or made here): the hot path
        # of every send skips the validators.
        stamp = timestamp or Timestamp.now()
        return _make_message(message_type, request_id, stamp, payload, PROTOCOL_VERSION)

    @classmethod
    def auth_request(cls, request_id: int, body: AuthRequest) -> SpearMessage:
        """An ``AuthRequest`` message."""
        return cls._typed(request_id, body, AuthRequest)

    @classmethod
    def auth_response(cls, request_id: int, body: AuthResponse) -> SpearMessage:
        """An ``AuthResponse`` message."""
        return cls._typed(request_id, body, AuthResponse)

    @classmethod
    def execute_request(cls, request_id: int, body: ExecuteRequest) -> SpearMessage:
        """An ``ExecuteRequest`` message."""
        return cls._typed(request_id, body, ExecuteRequest)

    @classmethod
    def execute_response(cls, request_id: int, body: ExecuteResponse) -> SpearMessage:
        """An ``ExecuteResponse`` message."""
        return cls._typed(request_id, body, ExecuteResponse)

    @classmethod
    def signal(cls, request_id: int, body: SignalMessage) -> SpearMessage:
        """A ``Signal`` message."""
        return cls._typed(request_id, body, SignalMessage)

    @classmethod
    def heartbeat(cls, request_id: int, body: HeartbeatMessage) -> SpearMessage:
        """A ``Heartbeat`` message."""
        return cls._typed(request_id, body, HeartbeatMessage)

    @classmethod
    def error(cls, request_id: int, body: ErrorMessage) -> SpearMessage:
        """An ``Error`` message."""
        return cls._typed(request_id, body, ErrorMessage)

    @classmethod
    def stream_data(cls, request_id: int, body: StreamDataMessage) -> SpearMessage:
        """A ``StreamData`` message."""
        return cls._typed(request_id, body, StreamDataMessage)

    @classmethod
    def connection_close(cls, request_id: int, reason: str | None = None) -> SpearMessage:
        """A ``ConnectionClose`` message: empty payload, or a reason (spear_twisted)."""
        return cls.create(request_id, CloseMessage(reason))

    @classmethod
    def from_error(cls, error: SpearError, request_id: int = 0) -> SpearMessage:
        """The ``Error`` message reporting ``error`` (its request id, if it has one)."""
        rid = error.request_id if error.request_id is not None else request_id
        return cls.create(rid, ErrorMessage.from_error(error))

    @classmethod
    def _typed(cls, request_id: int, body: Any, expected: type[Any]) -> SpearMessage:
        if type(body) is not expected:
            raise TypeError(f"expected a {expected.__name__} body, not {type(body).__name__}")
        return cls.create(request_id, body)

    def with_request_id(self, request_id: int) -> SpearMessage:
        """This message under another request id."""
        if type(request_id) is not int or not 0 <= request_id <= _U64_MAX:
            raise ValueError(f"request_id={request_id!r} is out of range for u64")
        # Every other field is already valid: copy without re-validating.
        return _make_message(self.message_type, request_id, self.timestamp, self.payload, self.version)

    def parse_payload(self) -> Body:
        """
        The typed body of this message.

        :raises InvalidJson, InvalidMessage: when the payload does not decode;
            the error carries this message's ``request_id`` and its paths
            start with ``payload``.
        """
        body: Body = codec.decode_body(self.message_type, self.payload, request_id=self.request_id)
        return body

    def serialize(self) -> bytes:
        """The JSON text of this message (the body of its frame)."""
        return codec.encode_message(self)

    @classmethod
    def deserialize(cls, data: bytes) -> SpearMessage:
        """
        Read a message from its JSON text.

        The ``version`` is not checked here: the session does that.

        :raises InvalidJson, InvalidMessage: see
            :func:`spear_twisted.wire.codec.decode_message`.
        """
        return codec.decode_message(data)

    def to_frame(self) -> bytes:
        """This message as a whole frame: length prefix and JSON text."""
        return codec.encode_frame_for(self)


# -- unchecked construction, for values already known to be valid ----------------------------
#
# The hot paths (every message sent, every message decoded) build messages
# whose fields they have checked or made themselves; the validators would
# check them again.  The slots' own setters are the fastest way in.


def _unchecked_maker(cls: type[T]) -> Callable[..., T]:
    """
    A function building a ``cls`` from checked values of its fields, in
    order, without its validators.

    Its body calls the slots' setters one by one, written out as
    ``namedtuple`` and attrs write their methods: a third faster than a loop
    over the setters, on the path of every execute request and response.
    """
    fields = attrs.fields(cls)  # type: ignore[arg-type]
    namespace: dict[str, Any] = {
        f"set{index}": cls.__dict__[field.name].__set__ for index, field in enumerate(fields)
    }
    namespace.update(new=_new, cls=cls)
    values = [f"value{index}" for index in range(len(fields))]
    lines = [f"def make({', '.join(values)}):", "    instance = new(cls)"]
    lines += [f"    set{index}(instance, {value})" for index, value in enumerate(values)]
    lines.append("    return instance")
    exec("\n".join(lines), namespace)
    make: Callable[..., T] = namespace["make"]
    make.__qualname__ = f"_make_{cls.__name__}"
    return make


_make_timestamp = _unchecked_maker(Timestamp)
_make_message = _unchecked_maker(SpearMessage)


# Imported last: the codec needs the classes above, the methods above need it.
from spear_twisted.wire import codec  # noqa: E402
