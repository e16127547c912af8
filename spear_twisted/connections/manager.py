"""
:class:`ConnectionManager`: the spearlet's listeners and every connection.

It owns

* listeners: a port from the configured range (by binding), or any Twisted
  endpoint description (``tcp:``, ``unix:``, ``ssl:``), TLS when enabled;
* the handshake's policy: the secret validator, one live connection per
  instance (:class:`~spear_twisted.connections.config.DuplicatePolicy`),
  ``max_connections`` and ``max_pending_auth``;
* the :class:`~spear_twisted.channels.factory.CommunicationFactory` whose
  channels the authenticated connections join, so callers find an instance's
  channel wherever it connected (its own address or a shared listener);
* connection states and events, delivered in order to subscribers and to the
  :class:`~spear_twisted.monitoring.MonitoringService`.

Pre-authentication connections are bounded two ways: frames of at most
``max_preauth_message_size`` bytes, and at most ``max_pending_auth`` such
connections.  When a new connection would exceed the latter, the *oldest*
unauthenticated connection is closed (``Error`` 1201): a flood of silent
connections cannot lock out an instance that authenticates promptly, because
an honest agent sends ``AuthRequest`` with its first packet.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from spear_twisted.auth import SecretValidator, refuse_all
from spear_twisted.channels.channel import Channel
from spear_twisted.channels.events import ConnectionEvent, ConnectionEventKind
from spear_twisted.channels.factory import CommunicationFactory
from spear_twisted.channels.ports import listen_in_range
from spear_twisted.channels.protocol import IConnectionGatekeeper, SpearProtocol
from spear_twisted.channels.unix import clear_stale_socket
from spear_twisted.connections.config import ConnectionManagerConfig, DuplicatePolicy
from spear_twisted.connections.state import ConnectionState
from spear_twisted.connections.tls import server_tls_options
from spear_twisted.errors import (
    AlreadyConnected,
    AuthenticationFailed,
    SpearError,
    TooManyConnections,
    TooManyPendingAuth,
)
from spear_twisted.monitoring import MonitoringConfig, MonitoringService
from spear_twisted.wire import AuthRequest, Role, RuntimeInstanceId

#: A subscriber of connection events.
EventSubscriber = Callable[[ConnectionEvent], None]


@attrs.frozen
class ListeningAddress:
    """One address the manager listens on."""

    transport: str
    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"{self.transport}:{self.host}:{self.port}"


class _ListenerFactory(Factory):
    """Builds the connections of the manager's shared listeners."""

    noisy = False

    def __init__(self, manager: ConnectionManager, transport_name: str) -> None:
        self.manager = manager
        self.transport_name = transport_name

    def buildProtocol(self, addr: Any) -> SpearProtocol:
        manager = self.manager
        protocol = SpearProtocol(
            role=Role.SPEARLET,
            clock=manager.reactor,
            session_config=manager.channel_config.session_config(),
            gatekeeper=manager,
            observer=manager.observe,
            observe_messages=manager.observes_messages,
            refuse=manager.admit(),
            transport_name=self.transport_name,
            close_timeout=manager.channel_config.close_timeout,
        )
        protocol.factory = self
        return protocol


@implementer(IConnectionGatekeeper)
class ConnectionManager(Service):
    """See the module docstring."""

    name = "connections"
    log = Logger()

    def __init__(
        self,
        config: ConnectionManagerConfig | None = None,
        *,
        reactor: Any = None,
        validator: SecretValidator | None = None,
        monitoring: MonitoringService | None = None,
        communication_factory: CommunicationFactory | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.config = config or ConnectionManagerConfig()
        self.reactor = reactor
        self.validator: SecretValidator = refuse_all if validator is None else validator
        self.monitoring = monitoring or MonitoringService(
            MonitoringConfig(enabled=self.config.enable_monitoring)
        )
        self.channel_config = self.config.channel_config()
        self._subscribers: list[tuple[EventSubscriber, bool]] = []
        self._connections: dict[str, SpearProtocol] = {}
        self._pending_auth: OrderedDict[str, SpearProtocol] = OrderedDict()
        self._ports: list[tuple[IListeningPort, ListeningAddress]] = []
        self._tls_options: Any = None
        self.factory = communication_factory or CommunicationFactory(
            reactor=reactor, config=self.channel_config, validator=self._validate
        )
        # Channels made by the factory report to us and obey our limits.
        self.factory.observer = self.observe
        self.factory.observe_messages = self.observes_messages
        self.factory.admission = self.admit
        self.factory.replace_duplicates = self.config.duplicate_policy is DuplicatePolicy.REPLACE_OLD

    @classmethod
    def new_with_validator(
        cls, config: ConnectionManagerConfig, validator: SecretValidator, **kwargs: Any
    ) -> ConnectionManager:
        """A manager that authenticates with ``validator`` (the seed's constructor)."""
        return cls(config, validator=validator, **kwargs)

    # -- listening ------------------------------------------------------------------------------

    @property
    def observes_messages(self) -> bool:
        """Whether connections report each message (costly; only when someone listens)."""
        return self.monitoring.tracks_messages or any(messages for _, messages in self._subscribers)

    def start_listening(self, port: int | None = None) -> Deferred[ListeningAddress]:
        """
        Listen on ``listen_addr``: at ``port``, or the first port of
        ``port_range`` that binds; TLS when enabled.

        :return: a Deferred firing with the address bound.
        """
        config = self.config
        transport = "ssl" if config.enable_tls else "tcp"
        factory = _ListenerFactory(self, transport)
        try:
            if config.enable_tls and self._tls_options is None:
                assert config.tls_cert_path and config.tls_key_path
                self._tls_options = server_tls_options(config.tls_cert_path, config.tls_key_path)

            def listen_on(number: int) -> IListeningPort:
                if config.enable_tls:
                    return self.reactor.listenSSL(  # type: ignore[no-any-return]
                        number,
                        factory,
                        self._tls_options,
                        backlog=config.backlog,
                        interface=config.listen_addr,
                    )
                return self.reactor.listenTCP(  # type: ignore[no-any-return]
                    number, factory, backlog=config.backlog, interface=config.listen_addr
                )

            if port is not None:
                listening = listen_on(port)
            else:
                listening = listen_in_range(listen_on, host=config.listen_addr, port_range=config.port_range)
        except Exception as e:
            return defer.fail(e)
        bound = listening.getHost()
        address = ListeningAddress(transport, bound.host, bound.port)
        self._ports.append((listening, address))
        self.log.info("Connection manager listening on {address}", address=str(address))
        return defer.succeed(address)

    def listen(self, description: str) -> Deferred[ListeningAddress]:
        """
        Listen on a Twisted endpoint description (``tcp:9100:interface=127.0.0.1``,
        ``unix:/run/spear/agents.sock``, ``ssl:9443:privateKey=...``).

        A backlog of at least 1024 is used unless the description sets one; a
        stale Unix socket file is replaced, a live one never.
        """
        kind = description.split(":", 1)[0].lower()
        if "backlog=" not in description:
            description += f":backlog={self.config.backlog}"
        try:
            if kind == "unix":
                path = _unix_path(description)
                clear_stale_socket(path)
            endpoint = serverFromString(self.reactor, description)
        except Exception as e:
            return defer.fail(e)
        listening = endpoint.listen(_ListenerFactory(self, kind))

        def listened(port: IListeningPort) -> ListeningAddress:
            bound = port.getHost()
            name = getattr(bound, "name", None)
            if name is not None:
                path = name.decode() if isinstance(name, bytes) else str(name)
                address = ListeningAddress(kind, path=path)
            else:
                address = ListeningAddress(kind, bound.host, bound.port)
            self._ports.append((port, address))
            self.log.info("Connection manager listening on {address}", address=str(address))
            return address

        return listening.addCallback(listened)

    @property
    def listening_addresses(self) -> list[ListeningAddress]:
        """Every address listened on, in the order they were bound."""
        return [address for _, address in self._ports]

    @property
    def listen_addr(self) -> str | None:
        """The first address bound (``host:port`` or ``unix:path``), or ``None``."""
        if not self._ports:
            return None
        address = self._ports[0][1]
        return f"unix:{address.path}" if address.path else f"{address.host}:{address.port}"

    def stop_listening(self) -> Deferred[None]:
        """Stop every listener (Unix socket files are removed); connections stay."""
        ports, self._ports = self._ports, []
        stops = [defer.maybeDeferred(port.stopListening) for port, _ in ports]
        return defer.DeferredList(stops, consumeErrors=True).addCallback(lambda _: None)

    # -- admission and authentication --------------------------------------------------------

    def admit(self) -> SpearError | None:
        """The error to refuse a new connection with, or ``None`` to let it in."""
        if len(self._connections) >= self.config.max_connections:
            return TooManyConnections(
                f"the spearlet is at its limit of {self.config.max_connections} connections"
            )
        return None

    def _validate(self, instance_id: RuntimeInstanceId, token: object) -> Any:
        return self.validator(instance_id, token)

    def authenticate(self, connection: SpearProtocol, request: AuthRequest) -> Deferred[Channel]:
        """Validate ``request`` on a shared listener; the instance's channel on success."""
        instance_id = connection.instance_id
        assert instance_id is not None
        checked = defer.maybeDeferred(self.validator, instance_id, request.token)
        return checked.addCallback(self._authenticated, connection, instance_id)

    def _authenticated(
        self, valid: bool, connection: SpearProtocol, instance_id: RuntimeInstanceId
    ) -> Channel:
        if valid is not True:
            raise AuthenticationFailed("invalid token", instance_id=instance_id)
        channel = self.factory.get_channel(instance_id)
        if channel is not None and not channel.closed:
            live = channel.connection
            if (
                live is not None
                and not live.is_lost
                and self.config.duplicate_policy is DuplicatePolicy.REFUSE_NEW
            ):
                raise AlreadyConnected("the instance already has a live connection", instance_id=instance_id)
            return channel
        channel = Channel(
            instance_id,
            reactor=self.reactor,
            config=self.channel_config,
            validator=self._validate,
            observer=self.observe,
            observe_messages=self.observes_messages,
            admission=self.admit,
            replace_duplicates=self.config.duplicate_policy is DuplicatePolicy.REPLACE_OLD,
        )
        channel.transport_name = connection.transport_name
        self.factory.register_channel(channel)
        return channel

    def connection_lost_before_auth(self, connection: SpearProtocol, error: SpearError | None) -> None:
        """Nothing to undo: ``observe`` forgets the connection on ``Disconnected``."""

    # -- events -------------------------------------------------------------------------------

    def subscribe(self, subscriber: EventSubscriber, *, messages: bool = False) -> Callable[[], None]:
        """
        Deliver every connection event to ``subscriber``, in order.

        Message events (``MessageReceived``/``MessageSent``) only with
        ``messages=True``, for connections made from then on.
        :return: a function that unsubscribes.
        """
        entry = (subscriber, messages)
        self._subscribers.append(entry)
        if messages:
            self.factory.observe_messages = True

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)
            self.factory.observe_messages = self.observes_messages

        return unsubscribe

    def observe(self, connection: SpearProtocol, event: ConnectionEvent) -> None:
        """Track ``connection`` by ``event`` and pass the event on (the connections' observer)."""
        kind = event.kind
        connection_id = event.connection_id
        if kind is ConnectionEventKind.CONNECTED:
            if connection.refuse is None:
                self._connections[connection_id] = connection
                self._pending_auth[connection_id] = connection
                self._limit_pending_auth()
        elif kind is ConnectionEventKind.AUTHENTICATED:
            self._pending_auth.pop(connection_id, None)
        elif kind is ConnectionEventKind.DISCONNECTED:
            self._connections.pop(connection_id, None)
            self._pending_auth.pop(connection_id, None)
        if self.monitoring.config.enabled:
            self.monitoring.record_connection_event(connection_id, event)
        message_event = kind in (ConnectionEventKind.MESSAGE_RECEIVED, ConnectionEventKind.MESSAGE_SENT)
        for subscriber, messages in list(self._subscribers):
            if message_event and not messages:
                continue
            try:
                subscriber(event)
            except Exception:
                self.log.failure("Connection event subscriber failed on {kind}", kind=kind.value)

    def _limit_pending_auth(self) -> None:
        while len(self._pending_auth) > self.config.max_pending_auth:
            _, oldest = self._pending_auth.popitem(last=False)
            oldest.fail(
                TooManyPendingAuth(
                    f"more than {self.config.max_pending_auth} connections are waiting to authenticate;"
                    " the oldest is closed"
                )
            )

    # -- connections ----------------------------------------------------------------------------------

    def get_connection_by_instance(self, instance_id: RuntimeInstanceId) -> ConnectionState | None:
        """The authenticated connection of ``instance_id``, if any."""
        for connection in self._connections.values():
            if connection.instance_id == instance_id and connection.authenticated:
                return ConnectionState.of(connection)
        return None

    def get_all_connections(self) -> list[ConnectionState]:
        """Every open connection, authenticated or not."""
        return [ConnectionState.of(connection) for connection in self._connections.values()]

    def get_connection_count(self) -> int:
        """How many connections are open."""
        return len(self._connections)

    def close_connection(self, connection_id: str) -> Deferred[None]:
        """Close one connection in order; fires when it is gone.  KeyError if unknown."""
        connection = self._connections.get(connection_id)
        if connection is None:
            return defer.fail(KeyError(f"no open connection {connection_id!r}"))
        return connection.close("closed by the spearlet")

    def close_all_connections(self) -> Deferred[None]:
        """Close every connection; fires when all are gone."""
        closing = [
            connection.close("the spearlet is closing") for connection in list(self._connections.values())
        ]
        return defer.DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)

    # -- IService ---------------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """Stop listening, close channels and connections."""
        super().stopService()
        steps = [self.stop_listening(), self.factory.close_all(), self.close_all_connections()]
        return defer.DeferredList(steps, consumeErrors=True).addCallback(lambda _: None)


def _unix_path(description: str) -> str:
    """The path of a ``unix:`` endpoint description."""
    rest = description.split(":", 1)[1]
    match = re.match(r"(?:address=)?((?:\\:|[^:])+)", rest)
    if match is None:
        raise ValueError(f"no path in {description!r}")
    return match.group(1).replace("\\:", ":")
