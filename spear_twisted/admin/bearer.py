"""
The admin endpoint's optional bearer token (RFC 6750).

The token is compared in constant time and never logged: this object's
``repr`` masks it, and refusals say what was wrong without echoing what was
sent.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from spear_twisted.errors import AuthenticationFailed, NotAuthenticated, SpearError

#: ``WWW-Authenticate`` when no token was sent.
CHALLENGE = b'Bearer realm="spear"'
#: ``WWW-Authenticate`` when a token was sent but it is not the right one.
CHALLENGE_INVALID = b'Bearer realm="spear", error="invalid_token"'


class BearerToken:
    """The token every admin request must present as ``Authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        # HTTP strips blanks around a header value: a token's own could never match.
        token = token.strip()
        if not token or not token.isprintable():
            raise ValueError("a bearer token must be non-empty printable text")
        self._token = token.encode()

    def __repr__(self) -> str:
        return "BearerToken('***')"

    def check(self, authorization: Sequence[bytes] | None) -> SpearError | None:
        """
        The refusal for the ``Authorization`` header values ``authorization``
        (``None`` when absent), or ``None`` when they carry the token.
        """
        if not authorization:
            return NotAuthenticated(
                "this endpoint needs a bearer token: send 'Authorization: Bearer <token>'"
            )
        if len(authorization) != 1:
            return NotAuthenticated("send one Authorization header, not several")
        scheme, _, credentials = authorization[0].strip().partition(b" ")
        if scheme.lower() != b"bearer" or not credentials.strip():
            return NotAuthenticated("the Authorization header must be 'Bearer <token>'")
        if not hmac.compare_digest(credentials.strip(), self._token):
            return AuthenticationFailed("the bearer token is not the admin endpoint's")
        return None


def challenge_for(error: SpearError) -> bytes:
    """The ``WWW-Authenticate`` value that goes with a 401 for ``error``."""
    return CHALLENGE_INVALID if isinstance(error, AuthenticationFailed) else CHALLENGE
