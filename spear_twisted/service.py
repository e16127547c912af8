"""
:class:`SpearService`: a whole spearlet as one Twisted service.

It assembles, from one :class:`~spear_twisted.config.SpearConfig`, the
:class:`~spear_twisted.monitoring.MonitoringService`, the
:class:`~spear_twisted.connections.ConnectionManager`, the
:class:`~spear_twisted.runtime.ProcessRuntime` and the
:class:`~spear_twisted.execution.TaskExecutionManager`, as child services
that start in that order, and the gRPC bridge last when the ``bridge``
table says where it listens (:func:`make_bridge_service`).  They stop in the
reverse order, each once the one before it has finished: the bridge stops
taking calls first, the tasks' instances are stopped (their requests in
flight finish while they do) before the runtime, and the connections are
closed last.  ``twistd spear`` runs one; any Twisted application can hold
one::

    SpearService(load_config("spear.toml")).setServiceParent(application)
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from spear_twisted._version import __version__
from spear_twisted.channels.factory import CommunicationFactory
from spear_twisted.config import SpearConfig
from spear_twisted.connections import ConnectionManager, ConnectionState
from spear_twisted.execution import TaskExecutionManager
from spear_twisted.monitoring import MonitoringService
from spear_twisted.runtime import ProcessRuntime

if TYPE_CHECKING:
    from spear_twisted.admin import AdminService
    from spear_twisted.bridge.server import BridgeService


class SpearService(MultiService):
    """
    See the module docstring.

    :param config: everything the spearlet runs with.
    :param reactor: the reactor of every part (the global one by default).
    """

    name = "spear"
    log = Logger()

    def __init__(self, config: SpearConfig, *, reactor: Any = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.config = config
        self.reactor = reactor
        #: When the service started, on the reactor's clock.
        self.started_at: float | None = None
        self.monitoring = MonitoringService(config.monitoring)
        factory = CommunicationFactory(
            reactor=reactor, config=config.connections.channel_config(runtime_dir=config.runtime_dir)
        )
        self.connections = ConnectionManager(
            config.connections, reactor=reactor, monitoring=self.monitoring, communication_factory=factory
        )
        self.runtime = ProcessRuntime.from_connection_manager(self.connections, config=config.runtime)
        self.tasks = TaskExecutionManager(
            self.runtime, config.tasks, reactor=reactor, monitoring=self.monitoring
        )
        #: The admin HTTP endpoint, when ``config.admin`` enables it.
        self.admin: AdminService | None = None
        if config.admin.enabled:
            # First: it listens before anything is spawned (a port in use fails the
            # start-up at once), and it is stopped last, answering 503 meanwhile.
            self.add_admin()
        # Children start in this order and stop in the reverse order.
        for child in (self.monitoring, self.connections, self.runtime, self.tasks):
            child.setServiceParent(self)  # type: ignore[no-untyped-call]
        #: The gRPC bridge, when ``bridge.listen`` names where: started last,
        #: it stops first (no new calls while the tasks stop).
        self.bridge: BridgeService | None = None
        if config.bridge.listen:
            self.bridge = make_bridge_service(self)
            self.bridge.setServiceParent(self)  # type: ignore[no-untyped-call]

    def add_admin(self) -> AdminService:
        """Serve the admin HTTP endpoint of ``config.admin`` (a child service named ``admin``)."""
        from spear_twisted.admin import AdminService

        self.admin = AdminService.from_config(self, self.config.admin, reactor=self.reactor)
        self.admin.setServiceParent(self)  # type: ignore[no-untyped-call]
        return self.admin

    # -- IService ------------------------------------------------------------------------------------

    def startService(self) -> None:
        """Start every part; a listener that cannot start fails the start-up."""
        self.started_at = self.reactor.seconds()
        try:
            super().startService()  # type: ignore[no-untyped-call]
        except Exception as e:
            self.log.critical("The spearlet could not start: {error}", error=str(e))
            raise
        tasks = ", ".join(
            f"{task.id} ({task.min_instances}-{task.max_instances} instances)" for task in self.config.tasks
        )
        self.log.info(
            "spear_twisted {version} running; tasks: {tasks}; agents may connect on {addresses}",
            version=__version__,
            tasks=tasks or "none",
            addresses=", ".join(str(address) for address in self.connections.listening_addresses)
            or "nothing",
        )

    def stopService(self) -> Deferred[None]:
        """Stop the parts one after the other, last started first; fires once all have stopped."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        return self._stop_children()

    @defer.inlineCallbacks
    def _stop_children(self) -> Generator[Deferred[Any], Any, None]:
        for child in reversed(list(self)):
            try:
                yield defer.maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("Stopping {service} failed", service=child.name)

    # -- observation ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """
        A JSON-able snapshot: ``version``, ``uptime`` (seconds), ``tasks``
        (each with its instances: status, pid, restarts, resource use, ...)
        and ``connections``.
        """
        now = self.reactor.seconds()
        return {
            "version": __version__,
            "uptime": 0.0 if self.started_at is None else round(now - self.started_at, 3),
            "tasks": self.tasks.status(),
            "connections": [describe_connection(state) for state in self.connections.get_all_connections()],
        }

    def metrics_text(self) -> bytes:
        """Every metric (connections, messages, operations, tasks) in the Prometheus text format."""
        return self.monitoring.metrics_text()


def make_bridge_service(service: SpearService) -> BridgeService:
    """
    The gRPC bridge of ``service``, as its ``bridge`` table says: ``Execute``
    and ``Status`` on its tasks (:class:`~spear_twisted.bridge.backend.TaskExecutionBackend`)
    for the callers it names, and ``Connect`` through its ConnectionManager.

    :raises ValueError: when a caller's token file cannot be used.
    """
    from spear_twisted.bridge.auth import BearerTokenAuthenticator, allow_any_caller
    from spear_twisted.bridge.backend import TaskExecutionBackend
    from spear_twisted.bridge.server import BridgeService, make_spear_bridge
    from spear_twisted.bridge.session import ConnectSession

    settings = service.config.bridge
    tokens = settings.caller_tokens()
    authenticator: Any = allow_any_caller if settings.allow_any_caller else None
    if tokens:
        authenticator = BearerTokenAuthenticator(tokens)
    server = make_spear_bridge(
        TaskExecutionBackend(service),
        ConnectSession(service.connections) if settings.connect else None,
        config=settings.http2,
        authenticator=authenticator,
        clock=service.reactor,
    )
    return BridgeService(server, settings.listen, reactor=service.reactor, allow_remote=settings.allow_remote)


def describe_connection(state: ConnectionState) -> dict[str, Any]:
    """One connection of :meth:`SpearService.status`."""
    return {
        "connection_id": state.connection_id,
        "instance_id": None if state.instance_id is None else str(state.instance_id),
        "transport": state.transport,
        "remote_addr": state.remote_addr,
        "peer": None if state.peer_credentials is None else attrs.asdict(state.peer_credentials),
        "authenticated": state.authenticated,
        "status": state.status.value,
        "session_state": state.session_state.value,
        "connected_at": state.connected_at,
        "last_activity": state.last_activity,
    }
