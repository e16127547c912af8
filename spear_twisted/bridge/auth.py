"""
Caller authentication for the bridge's unary methods.

``Execute`` and ``Status`` are for callers, not instances: they present a
bearer token in the ``authorization`` metadata (``Bearer <token>``), checked
by an :class:`ICallAuthenticator` before the request is read.  ``Connect``
needs none here: the instance authenticates inside the Spear session with
``AuthRequest``, as on the other transports.

A method that needs authentication on a server without an authenticator is
refused (UNAUTHENTICATED): open access is a choice, made with
:data:`allow_any_caller`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer

from spear_twisted.auth import token_problem
from spear_twisted.errors import AuthenticationFailed, NotAuthenticated

if TYPE_CHECKING:
    from spear_twisted.bridge.methods import CallContext

#: The metadata key holding the caller's credentials.
AUTHORIZATION_KEY = "authorization"

_BEARER = "bearer "


class ICallAuthenticator(Interface):
    """Decides who a caller is from its call's metadata."""

    def authenticate(context):  # type: ignore[no-untyped-def]
        """
        Check the credentials of the call described by ``context``.

        :return: a Deferred firing with the caller's name, or failing with
            ``NotAuthenticated`` (no credentials) or ``AuthenticationFailed``
            (wrong ones); the failure's message is sent to the caller.
        """


def bearer_token(context: CallContext) -> str | None:
    """The token of the call's ``authorization: Bearer <token>`` metadata, if any."""
    value = context.metadata_value(AUTHORIZATION_KEY)
    if not isinstance(value, str) or value[: len(_BEARER)].lower() != _BEARER:
        return None
    return value[len(_BEARER) :].strip()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@implementer(ICallAuthenticator)
class BearerTokenAuthenticator:
    """
    Callers named by their bearer tokens: ``{caller name: token}``.

    Only digests are kept; a presented token is compared with every known
    one in constant time, so timing tells nothing about which exists.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        digests = []
        for name, token in tokens.items():
            problem = token_problem(token)
            if problem is not None:
                raise ValueError(f"bad token for caller {name!r}: {problem}")
            digests.append((name, _digest(token)))
        self._digests = tuple(digests)

    def authenticate(self, context: CallContext) -> Deferred[str]:
        token = bearer_token(context)
        if token is None:
            return defer.fail(NotAuthenticated("missing 'authorization: Bearer <token>' metadata"))
        presented = _digest(token)
        caller = None
        for name, digest in self._digests:
            if hmac.compare_digest(presented, digest) and caller is None:
                caller = name
        if caller is None:
            return defer.fail(AuthenticationFailed("invalid bearer token"))
        return defer.succeed(caller)


@implementer(ICallAuthenticator)
class _AnyCaller:
    """Every call is accepted, as caller ``anonymous``."""

    def authenticate(self, context: CallContext) -> Deferred[str]:
        return defer.succeed("anonymous")

    def __repr__(self) -> str:
        return "allow_any_caller"


#: Accepts every caller: for a loopback-only server whose callers are trusted.
allow_any_caller = _AnyCaller()
