"""
:class:`BridgeServer`, the Factory of :class:`BridgeProtocol` connections,
and :class:`BridgeService`, which listens on endpoint descriptions and shuts
the server down gracefully when it stops.

The server is the same over every transport: h2c with prior knowledge on
TCP (``tcp:port=50051:interface=127.0.0.1``) or a Unix socket
(``unix:/run/spear/bridge.sock``), or h2 over TLS with ALPN ``h2``
(``spear-h2-tls:...``, see :mod:`spear_twisted.bridge.endpoints`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.config import BridgeConfig
from spear_twisted.bridge.methods import MethodRegistry, spear_bridge_methods
from spear_twisted.bridge.protocol import BridgeProtocol
from spear_twisted.bridge.status import StatusCode
from spear_twisted.channels.tcp import is_loopback
from spear_twisted.connections.listeners import refuse_remote


@attrs.frozen
class BridgeCounters:
    """A server's figures at one moment."""

    connections: int
    active_calls: int
    calls: int
    failed_calls: int
    resets: int

    def to_proto(self) -> pb.BridgeStats:
        """These figures as ``StatusReply.bridge``."""
        return pb.BridgeStats(
            connections=self.connections,
            active_calls=self.active_calls,
            calls=self.calls,
            failed_calls=self.failed_calls,
            resets=self.resets,
        )


class BridgeServer(Factory):
    """
    Serves ``methods`` on every connection it builds.

    :param clock: time for deadlines and timers (the reactor by default).
    :param authenticator: an ``ICallAuthenticator`` for the methods that need
        one (without it they are refused with UNAUTHENTICATED).
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        methods: MethodRegistry,
        *,
        config: BridgeConfig | None = None,
        authenticator: Any = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.methods = methods
        self.config = config or BridgeConfig()
        self.authenticator = authenticator
        self.clock: IReactorTime = clock
        self.connections: set[BridgeProtocol] = set()
        self._stopping = False
        self._calls = 0
        self._ended = 0
        self._failed = 0
        self._resets = 0

    def buildProtocol(self, addr: Any) -> BridgeProtocol | None:
        if self._stopping:
            return None
        protocol = BridgeProtocol(
            self.methods,
            clock=self.clock,
            config=self.config,
            authenticator=self.authenticator,
            server=self,
        )
        protocol.factory = self
        return protocol

    # -- what connections report ---------------------------------------------------------

    def connection_made(self, connection: BridgeProtocol) -> None:
        self.connections.add(connection)
        if self._stopping:
            connection.shutdown(0)

    def connection_lost(self, connection: BridgeProtocol) -> None:
        self.connections.discard(connection)

    def call_started(self, connection: BridgeProtocol) -> None:
        self._calls += 1

    def call_ended(self, connection: BridgeProtocol, status: StatusCode | None) -> None:
        self._ended += 1
        if status is not StatusCode.OK:
            self._failed += 1

    def call_reset(self, connection: BridgeProtocol) -> None:
        self._resets += 1

    def counters(self) -> BridgeCounters:
        """The server's figures now."""
        return BridgeCounters(
            connections=len(self.connections),
            active_calls=self._calls - self._ended,
            calls=self._calls,
            failed_calls=self._failed,
            resets=self._resets,
        )

    # -- stopping ----------------------------------------------------------------------------

    def shutdown(self, grace: float | None = None) -> Deferred[None]:
        """
        Refuse new connections, send every connection GOAWAY, let calls in
        flight finish within ``grace`` seconds (``config.shutdown_grace`` by
        default) and close.  Fires once every connection is gone.
        """
        self._stopping = True
        closing = [connection.shutdown(grace) for connection in list(self.connections)]
        return defer.DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)


def make_spear_bridge(
    backend: Any,
    connect: Any = None,
    *,
    config: BridgeConfig | None = None,
    authenticator: Any = None,
    clock: IReactorTime | None = None,
    authenticate_callers: bool = True,
) -> BridgeServer:
    """
    A server of ``spear.v1.SpearBridge`` on ``backend`` (an ``IBridgeBackend``)
    and ``connect`` (an ``IConnectHandler``), its ``Status`` replies carrying
    the server's own figures.
    """
    server: BridgeServer | None = None

    def stats() -> pb.BridgeStats:
        assert server is not None
        return server.counters().to_proto()

    methods = spear_bridge_methods(
        backend, connect, bridge_stats=stats, authenticate_callers=authenticate_callers
    )
    server = BridgeServer(methods, config=config, authenticator=authenticator, clock=clock)
    return server


class BridgeService(Service):
    """
    Listens with ``server`` on each endpoint (an ``IStreamServerEndpoint`` or
    a description string) while running; a bind error is raised by
    ``startService`` (as ``twistd`` wants it).  Stopping stops listening, then
    shuts the server down gracefully (see :meth:`BridgeServer.shutdown`).

    An address that is not loopback (``tcp:50051`` binds every interface) is
    refused unless ``allow_remote`` is set.
    """

    log = Logger()

    def __init__(
        self,
        server: BridgeServer,
        endpoints: Iterable[IStreamServerEndpoint | str],
        *,
        reactor: Any = None,
        allow_remote: bool = False,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.server = server
        self.allow_remote = allow_remote
        endpoints = list(endpoints)
        #: The descriptions among ``endpoints``, checked before anything is bound.
        self._descriptions = [endpoint for endpoint in endpoints if isinstance(endpoint, str)]
        self.endpoints: list[IStreamServerEndpoint] = [
            serverFromString(reactor, endpoint)  # type: ignore[no-untyped-call]
            if isinstance(endpoint, str)
            else endpoint
            for endpoint in endpoints
        ]
        #: The listening ports, once listening.
        self.ports: list[IListeningPort] = []
        self._listening: list[Deferred[Any]] = []

    def startService(self) -> None:
        for description in self._descriptions:
            refuse_remote(description, self.allow_remote)
        super().startService()  # type: ignore[no-untyped-call]
        failures: list[Failure] = []
        self._listening = []
        for endpoint in self.endpoints:
            listening = endpoint.listen(self.server).addCallback(self._check_address)
            listening.addCallbacks(self._listened, failures.append)
            self._listening.append(listening)
        if failures:
            # Stream endpoints (tcp, unix, ssl) listen synchronously: report now.
            for port in self.ports:
                port.stopListening()
            self.ports = []
            super().stopService()  # type: ignore[no-untyped-call]
            failures[0].raiseException()

    def _check_address(self, port: IListeningPort) -> IListeningPort:
        # For endpoint objects, whose address is only known once bound.
        host = getattr(port.getHost(), "host", None)
        if host is not None and not self.allow_remote and not is_loopback(host):
            port.stopListening()
            raise ValueError(f"refusing to listen on non-loopback address {host} without allow_remote")
        return port

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.ports.append(port)
        self.log.info("gRPC bridge listening on {address}", address=port.getHost())
        return port

    def when_listening(self) -> Deferred[list[IListeningPort]]:
        """Fires with the ports once every endpoint listens."""
        return defer.gatherResults(self._listening, consumeErrors=True)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        ports, self.ports = self.ports, []
        stopping = [defer.maybeDeferred(port.stopListening) for port in ports]
        stopped = defer.DeferredList(stopping, consumeErrors=True)
        return stopped.addCallback(lambda _: self.server.shutdown())
