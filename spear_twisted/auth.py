"""
Instance secrets and the validator contract of the handshake.

A validator is any callable ``(instance_id, token) -> bool`` or
``-> Deferred[bool]``.  The default one is a :class:`SecretRegistry`: one
random secret per instance, stored only as a digest, compared in constant
time over fixed-length digests, so a token valid for instance A never
authenticates B and timing says nothing about the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from spear_twisted.wire import RuntimeInstanceId

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

#: A handshake validator: is ``token`` the secret of ``instance_id``?
SecretValidator = Callable[[RuntimeInstanceId, Any], "bool | Deferred[bool]"]

#: Shorter tokens are refused (the seed's rule).
MIN_TOKEN_LENGTH = 8

#: Longer tokens are refused without being hashed.
MAX_TOKEN_LENGTH = 4096

_DIGEST_SIZE = hashlib.sha256().digest_size


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def read_token_file(path: str) -> str:
    """
    The token held in the file ``path``, its surrounding blanks removed.

    :raises ValueError: ``cannot read <path>: <reason>`` or ``<path> is empty``.
    """
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ValueError(f"cannot read {path}: {reason}") from None
    if not token:
        raise ValueError(f"{path} is empty")
    return token


def token_problem(token: object) -> str | None:
    """Why ``token`` can never be valid, or ``None`` when it is well formed."""
    if not isinstance(token, str):
        return f"token must be a string, not {type(token).__name__}"
    if not token.isascii():
        return "token must be ASCII"
    if len(token) < MIN_TOKEN_LENGTH:
        return f"token is shorter than {MIN_TOKEN_LENGTH} characters"
    if len(token) > MAX_TOKEN_LENGTH:
        return f"token is longer than {MAX_TOKEN_LENGTH} characters"
    return None


class SecretRegistry:
    """
    Per-instance secrets; calling the registry validates a token.

    ``issue(instance_id)`` makes a fresh secret (from :mod:`secrets`) and
    returns it once; only its SHA-256 digest is kept.
    """

    def __init__(self) -> None:
        self._digests: dict[RuntimeInstanceId, bytes] = {}

    def issue(self, instance_id: RuntimeInstanceId) -> str:
        """A fresh secret for ``instance_id``, replacing any earlier one."""
        secret = secrets.token_urlsafe(32)
        self.register(instance_id, secret)
        return secret

    def register(self, instance_id: RuntimeInstanceId, secret: str) -> None:
        """Make ``secret`` the one valid token of ``instance_id``."""
        problem = token_problem(secret)
        if problem is not None:
            raise ValueError(f"cannot register secret for {instance_id}: {problem}")
        self._digests[instance_id] = _digest(secret)

    def revoke(self, instance_id: RuntimeInstanceId) -> None:
        """Forget ``instance_id``'s secret; its token no longer authenticates."""
        self._digests.pop(instance_id, None)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._digests

    def __len__(self) -> int:
        return len(self._digests)

    def validate(self, instance_id: RuntimeInstanceId, token: object) -> bool:
        """Whether ``token`` is ``instance_id``'s secret, in constant time."""
        if token_problem(token) is not None:
            return False
        assert isinstance(token, str)
        expected = self._digests.get(instance_id)
        presented = _digest(token)
        if expected is None:
            # Compare anyway, so an unknown instance costs the same time.
            hmac.compare_digest(presented, bytes(_DIGEST_SIZE))
            return False
        return hmac.compare_digest(presented, expected)

    __call__ = validate


def refuse_all(instance_id: RuntimeInstanceId, token: object) -> bool:
    """The validator used when none is configured: every attempt is refused."""
    return False
