"""
Who an instance is: its runtime type and its id.

:class:`RuntimeInstanceId` is the key of everything per-instance (channels,
secrets, connections, processes), so it is a frozen, hashable, ordered value
with a stable string form, ``process:worker-001``.
"""

from __future__ import annotations

import enum
import functools

import attrs


class RuntimeType(enum.Enum):
    """The kind of runtime an instance runs in (the seed's ``RuntimeType``)."""

    PROCESS = "process"
    KUBERNETES = "kubernetes"
    WASM = "wasm"

    def as_str(self) -> str:
        """The lower-case name used in ids, configuration and logs."""
        return self.value

    @classmethod
    def parse(cls, text: str) -> RuntimeType:
        """Read a runtime type from its name, ignoring case and surrounding blanks."""
        if not isinstance(text, str):
            raise TypeError(f"runtime type must be a string, not {type(text).__name__}")
        try:
            return cls(text.strip().lower())
        except ValueError:
            names = ", ".join(member.value for member in cls)
            raise ValueError(f"unknown runtime type {text!r}: expected one of {names}") from None

    def __str__(self) -> str:
        return self.value


MAX_INSTANCE_ID_LENGTH = 255


def _check_instance_id(_instance: object, _attribute: object, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"instance id must be a string, not {type(value).__name__}")
    if not value:
        raise ValueError("instance id must not be empty")
    if len(value) > MAX_INSTANCE_ID_LENGTH:
        raise ValueError(f"instance id is longer than {MAX_INSTANCE_ID_LENGTH} characters")
    if not value.isprintable() or value != value.strip():
        raise ValueError(f"instance id {value!r} has control characters or surrounding blanks")


def _check_runtime_type(_instance: object, _attribute: object, value: RuntimeType) -> None:
    if not isinstance(value, RuntimeType):
        raise TypeError(f"runtime_type must be a RuntimeType, not {type(value).__name__}")


@functools.total_ordering
@attrs.frozen(order=False)
class RuntimeInstanceId:
    """
    One runtime instance: ``RuntimeInstanceId(RuntimeType.PROCESS, "worker-001")``.

    ``str()`` gives ``process:worker-001`` and :meth:`parse` reads it back.
    Ids order by runtime type name, then by instance id.
    """

    runtime_type: RuntimeType = attrs.field(validator=_check_runtime_type)
    instance_id: str = attrs.field(validator=_check_instance_id)

    @classmethod
    def parse(cls, text: str) -> RuntimeInstanceId:
        """Read the ``<runtime type>:<instance id>`` form produced by ``str()``."""
        if not isinstance(text, str):
            raise TypeError(f"instance id must be a string, not {type(text).__name__}")
        runtime, sep, instance = text.partition(":")
        if not sep:
            raise ValueError(f"{text!r} is not of the form '<runtime type>:<instance id>'")
        return cls(RuntimeType.parse(runtime), instance)

    @classmethod
    def generate(cls, runtime_type: RuntimeType, prefix: str = "instance") -> RuntimeInstanceId:
        """A fresh id of ``runtime_type`` that no other call returns."""
        import secrets  # here: an agent that never generates ids does not pay for it

        return cls(runtime_type, f"{prefix}-{secrets.token_hex(8)}")

    def _key(self) -> tuple[str, str]:
        return (self.runtime_type.value, self.instance_id)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, RuntimeInstanceId):
            return NotImplemented
        return self._key() < other._key()

    def __str__(self) -> str:
        return f"{self.runtime_type.value}:{self.instance_id}"
