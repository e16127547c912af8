"""
Typed spellings of the Twisted calls the channel layer makes.

Twisted's exception constructors, ``Failure`` and a few endpoints carry no
annotations, so a strictly checked caller cannot call them as they are.  Each
name here is the Twisted callable itself, cast to the signature its
documentation gives; nothing is wrapped at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.internet import error
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.python.failure import Failure

#: ``CannotListenError(interface, port, socketError)``.
cannot_listen_error = cast(
    "Callable[[str | None, object, BaseException], error.CannotListenError]", error.CannotListenError
)

#: ``ConnectionRefusedError(*reason)``.
connection_refused_error = cast("Callable[..., error.ConnectionRefusedError]", error.ConnectionRefusedError)

#: ``ConnectingCancelledError(address)``.
connecting_cancelled_error = cast(
    "Callable[[object], error.ConnectingCancelledError]", error.ConnectingCancelledError
)

#: ``Failure()`` (the exception being handled) or ``Failure(exception)``.
failure = cast("Callable[..., Failure]", Failure)

#: ``UNIXClientEndpoint(reactor, path, timeout=30, checkPID=0)``.
unix_client_endpoint = cast("Callable[..., UNIXClientEndpoint]", UNIXClientEndpoint)


def failure_is(reason: Failure, *kinds: type[BaseException]) -> bool:
    """Whether ``reason`` wraps one of ``kinds`` (``Failure.check``, typed)."""
    check = cast("Callable[..., type[BaseException] | None]", reason.check)
    return check(*kinds) is not None


class Producer(Protocol):
    """
    A producer as a consumer drives it: a streaming producer (``IPushProducer``)
    is paused and resumed, a pull producer (``IPullProducer``) resumed, and
    either stopped.  Twisted's ``IProducer`` declares only ``stopProducing``.
    """

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


def as_producer(producer: Any) -> Producer:
    """``producer`` (registered as an ``IProducer``) as the consumer calls it."""
    return cast(Producer, producer)
