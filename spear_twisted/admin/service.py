"""
:class:`AdminService`: the admin endpoint as a service, listening on a
Twisted endpoint description (``tcp:7732:interface=127.0.0.1`` by default).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from spear_twisted.admin.bearer import BearerToken
from spear_twisted.admin.resource import Administered, AdminResource
from spear_twisted.admin.site import IDLE_TIMEOUT, MAX_BODY_BYTES, AdminSite
from spear_twisted.config import DEFAULT_ADMIN_ENDPOINT, AdminConfig

#: Where the admin endpoint listens unless configured otherwise: loopback only.
DEFAULT_ENDPOINT = DEFAULT_ADMIN_ENDPOINT

log = Logger()


def address_url(address: Any) -> str:
    """An admin listening address as a URL: ``http://127.0.0.1:7732``, ``unix:/path``."""
    host = getattr(address, "host", None)
    if host is not None:
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{address.port}"
    name = getattr(address, "name", None)
    if name is not None:
        return f"unix:{name.decode() if isinstance(name, bytes) else name}"
    return str(address)


class AdminService(Service):
    """
    Serves the admin endpoint for ``target`` (a ``SpearService``) on
    ``endpoint`` while running.

    A port that cannot be bound makes :meth:`startService` raise at once
    (twistd then exits with the error).  Once listening, one log line gives
    the bound address (``admin_url``), which is how a caller learns the port
    chosen for ``tcp:0``.
    """

    name = "admin"

    def __init__(
        self,
        target: Administered,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        token: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        idle_timeout: float = IDLE_TIMEOUT,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.endpoint_description = endpoint
        self.resource = AdminResource(target, token=None if token is None else BearerToken(token))
        self.site = AdminSite(
            self.resource, max_body_bytes=max_body_bytes, idle_timeout=idle_timeout, reactor=reactor
        )
        self.port: IListeningPort | None = None

    @classmethod
    def from_config(cls, target: Administered, config: AdminConfig, *, reactor: Any = None) -> AdminService:
        """
        The admin endpoint that ``config`` (a ``SpearConfig``'s ``admin``
        table) describes, for ``target``.

        :raises ConfigError: the token file cannot be read.
        """
        return cls(target, config.endpoint, token=config.bearer_token(), reactor=reactor)

    @property
    def url(self) -> str | None:
        """The bound address as a URL, while listening."""
        return None if self.port is None else address_url(self.port.getHost())

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        description = self.endpoint_description
        endpoint = serverFromString(self.reactor, description)  # type: ignore[no-untyped-call]
        failures: list[Failure] = []
        starting = True

        def failed(failure: Failure) -> None:
            if starting:
                failures.append(failure)
            else:
                log.failure(
                    "admin endpoint could not listen on {endpoint}",
                    failure,
                    endpoint=self.endpoint_description,
                )

        endpoint.listen(self.site).addCallbacks(self._listening, failed)
        starting = False
        if failures:
            # TCP and Unix endpoints bind synchronously: surface the error to twistd.
            self.running = False
            failures[0].raiseException()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        url = address_url(port.getHost())
        log.info("admin endpoint listening on {admin_url}", admin_url=url)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopping: Any = port.stopListening
        stopped: Deferred[None] = maybeDeferred(stopping)
        return stopped
