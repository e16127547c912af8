"""
:class:`ConnectionManager`: the spearlet's listeners and every connection.

It owns

* listeners (:class:`~spear_twisted.connections.listeners.Listeners`): the
  first free port of the configured range, or Twisted endpoint descriptions
  (``tcp:``, ``unix:``, ``ssl:``), TLS when enabled;
* the handshake's policy: the secret validator (by default a per-instance
  :class:`~spear_twisted.auth.SecretRegistry`), one live connection per
  instance (:class:`~spear_twisted.connections.config.DuplicatePolicy`), and
  the limits of :class:`~spear_twisted.connections.admission.Admission`;
* the :class:`~spear_twisted.channels.factory.CommunicationFactory` whose
  channels the authenticated connections join, so callers find an instance's
  channel whichever listener it connected to;
* connection states and events, delivered in order to subscribers and to the
  :class:`~spear_twisted.monitoring.MonitoringService`.

Message events (``MessageReceived``/``MessageSent``) cost work per message,
so connections produce them only while someone wants them: the monitoring
service with message tracking on, or a subscriber that asked for them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spear_twisted.auth import SecretRegistry, SecretValidator, token_problem
from spear_twisted.channels.channel import Channel
from spear_twisted.channels.config import ChannelAddress
from spear_twisted.channels.events import ConnectionEvent, ConnectionEventKind
from spear_twisted.channels.factory import CommunicationFactory
from spear_twisted.channels.protocol import IConnectionGatekeeper, SpearProtocol, SpearSessionProtocol
from spear_twisted.connections.admission import Admission
from spear_twisted.connections.config import ConnectionManagerConfig, DuplicatePolicy
from spear_twisted.connections.listeners import Listeners
from spear_twisted.connections.state import ConnectionState
from spear_twisted.connections.tls import server_tls_options
from spear_twisted.errors import AlreadyConnected, AuthenticationFailed, SpearError
from spear_twisted.monitoring import MonitoringConfig, MonitoringService
from spear_twisted.wire import AuthRequest, Role, RuntimeInstanceId

#: A subscriber of connection events.
EventSubscriber = Callable[[ConnectionEvent], None]

_MESSAGE_EVENTS = frozenset({ConnectionEventKind.MESSAGE_RECEIVED, ConnectionEventKind.MESSAGE_SENT})


class _ListenerFactory(Factory):
    """Builds the connections of the manager's own listeners."""

    noisy = False

    def __init__(self, manager: ConnectionManager, transport_name: str) -> None:
        self.manager = manager
        self.transport_name = transport_name

    def buildProtocol(self, addr: Any) -> SpearSessionProtocol:
        protocol = self.manager.build_connection(SpearProtocol, transport_name=self.transport_name)
        protocol.factory = self
        return protocol


_channel_classes: dict[str, type[Channel]] = {}


def _channel_class(transport_name: str) -> type[Channel]:
    """
    The channel class whose ``transport_name`` is ``transport_name``.

    A class attribute, not an instance one: a Channel already has as many
    instance attributes as CPython 3.11 keeps inline, and one more would give
    every channel a full ``__dict__`` (about 1.3 KB each).
    """
    made = _channel_classes.get(transport_name)
    if made is None:
        made = _channel_classes[transport_name] = type(
            f"Channel[{transport_name}]",
            (Channel,),
            {"transport_name": transport_name, "__module__": __name__},
        )
    return made


@implementer(IConnectionGatekeeper)
class ConnectionManager(Service):
    """
    See the module docstring.

    :param validator: ``(instance_id, token) -> bool | Deferred[bool]``; by
        default a fresh :class:`~spear_twisted.auth.SecretRegistry`
        (:attr:`secrets`), which refuses everyone until secrets are issued.
        ``remove_instance`` revokes secrets from a registry.
        Tokens that can never be valid (not a string, not ASCII, shorter
        than 8 or longer than 4096 characters) are refused before any
        validator sees them.
    :param monitoring: the service fed with events; one is made if not given.
    :param communication_factory: where instances' channels are pooled; its
        channels report to this manager and obey its limits and validator.
    """

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
        self.config = config = config or ConnectionManagerConfig()
        self.reactor = reactor
        if validator is None:
            validator = SecretRegistry()
        self.validator: SecretValidator = validator
        #: The validator when it is a secret registry (the default), else ``None``.
        self.secrets: SecretRegistry | None = validator if isinstance(validator, SecretRegistry) else None
        if monitoring is None:
            monitoring = MonitoringService(MonitoringConfig(enabled=config.enable_monitoring))
        self.monitoring = monitoring
        self.channel_config = config.channel_config()
        self.session_config = self.channel_config.session_config()
        self.admission = Admission(config.max_connections, config.max_pending_auth)
        self.listeners = Listeners(
            reactor, self._listener_factory, backlog=config.backlog, allow_remote=config.allow_remote
        )
        self._subscribers: list[tuple[EventSubscriber, bool]] = []
        self._outbox: deque[tuple[ConnectionEvent, bool]] = deque()
        self._delivering = False
        self._by_instance: dict[RuntimeInstanceId, SpearSessionProtocol] = {}
        self._tls_options: Any = None
        self.factory = communication_factory or CommunicationFactory(
            reactor=reactor, config=self.channel_config
        )
        # The factory's channels report to us, obey our limits and use our validator.
        self.factory.validator = self._validate
        self.factory.observer = self.observe
        self.factory.admission = self.admission.admit
        self.factory.replace_duplicates = config.duplicate_policy is DuplicatePolicy.REPLACE_OLD
        self._monitor: MonitoringService | None = None
        self._update_observation()

    @classmethod
    def new_with_validator(
        cls, config: ConnectionManagerConfig, validator: SecretValidator, **kwargs: Any
    ) -> ConnectionManager:
        """A manager that authenticates with ``validator`` (the seed's constructor)."""
        return cls(config, validator=validator, **kwargs)

    # -- listening ------------------------------------------------------------------------------

    def _listener_factory(self, transport_name: str) -> _ListenerFactory:
        return _ListenerFactory(self, transport_name)

    def build_connection(
        self, protocol_type: type[SpearSessionProtocol], *, transport_name: str = "grpc"
    ) -> SpearSessionProtocol:
        """
        A new connection of ``protocol_type`` for one of our listeners: it
        obeys our limits, authenticates with our validator and joins its
        instance's channel.  Our own listeners use it; so does a listener of
        another kind, such as the gRPC bridge's ``Connect``
        (:class:`~spear_twisted.bridge.session.ConnectSession` of this manager).
        """
        return protocol_type(
            role=Role.SPEARLET,
            clock=self.reactor,
            session_config=self.session_config,
            gatekeeper=self,
            observer=self.observe,
            observe_messages=self.observes_messages,
            refuse=self.admission.admit(),
            transport_name=transport_name,
            close_timeout=self.config.close_timeout,
        )

    def start_listening(self, port: int | str | None = None) -> Deferred[ChannelAddress]:
        """
        Start a listener; fires with the address bound.

        :param port: ``None``: the first port of ``port_range`` on
            ``listen_addr`` that binds (TLS when ``enable_tls``); an ``int``:
            that port; a ``str``: a Twisted endpoint description such as
            ``tcp:9100:interface=127.0.0.1``, ``unix:/run/spear/agents.sock``
            or ``ssl:9443:interface=127.0.0.1:privateKey=key.pem:certKey=cert.pem``.
        """
        if isinstance(port, str):
            return self.listeners.listen_description(port)
        config = self.config
        try:
            tls = None
            if config.enable_tls:
                if self._tls_options is None:
                    assert config.tls_cert_path is not None and config.tls_key_path is not None
                    self._tls_options = server_tls_options(config.tls_cert_path, config.tls_key_path)
                tls = self._tls_options
            address = self.listeners.listen_tcp(config.listen_addr, port, config.port_range, tls)
        except Exception as e:
            return defer.fail(e)
        return defer.succeed(address)

    @property
    def listen_addr(self) -> ChannelAddress | None:
        """The address of the first listener started (what was bound), or ``None``."""
        addresses = self.listeners.addresses
        return addresses[0] if addresses else None

    @property
    def listening_addresses(self) -> list[ChannelAddress]:
        """Every address listened on, in the order they were bound."""
        return self.listeners.addresses

    def stop_listening(self) -> Deferred[None]:
        """Stop every listener (Unix socket files are removed); connections stay open."""
        return self.listeners.stop()

    # -- authentication ---------------------------------------------------------------------------

    def _validate(self, instance_id: RuntimeInstanceId, token: object) -> Any:
        """The validator, behind the checks no token can skip."""
        problem = token_problem(token)
        if problem is not None:
            return defer.fail(AuthenticationFailed(f"invalid token: {problem}", instance_id=instance_id))
        return self.validator(instance_id, token)

    def authenticate(self, connection: SpearSessionProtocol, request: AuthRequest) -> Deferred[Channel]:
        """
        Validate ``request`` received on one of our listeners; fires with the
        instance's channel, which the connection then joins.
        """
        instance_id = connection.instance_id
        assert instance_id is not None
        checked = defer.maybeDeferred(self._validate, instance_id, request.token)
        return checked.addCallback(self._validated, connection, instance_id)

    def _validated(
        self, valid: object, connection: SpearSessionProtocol, instance_id: RuntimeInstanceId
    ) -> Channel:
        if valid is not True:
            raise AuthenticationFailed("invalid token", instance_id=instance_id)
        channel = self.channel_for(instance_id, transport_name=connection.transport_name)
        live = channel.connection
        if (
            live is not None
            and not live.is_lost
            and self.config.duplicate_policy is DuplicatePolicy.REFUSE_NEW
        ):
            raise AlreadyConnected(f"instance {instance_id} already has a live connection")
        return channel

    def connection_lost_before_auth(self, connection: SpearSessionProtocol, error: SpearError | None) -> None:
        """Nothing to undo: :meth:`observe` forgets the connection on ``Disconnected``."""

    # -- channels ------------------------------------------------------------------------------------

    def channel_for(self, instance_id: RuntimeInstanceId, *, transport_name: str = "stream") -> Channel:
        """
        The pooled channel of ``instance_id``, made if it has none.

        Callers may wait on its ``when_connected()`` before the instance
        connects: the first connection that authenticates as the instance on
        any of our listeners joins this channel.
        """
        channel = self.factory.get_channel(instance_id)
        if channel is not None and not channel.closed:
            return channel
        channel = _channel_class(transport_name)(
            instance_id,
            reactor=self.reactor,
            config=self.channel_config,
            validator=self._validate,
            observer=self.observe,
            observe_messages=self.observes_messages,
            admission=self.admission.admit,
            replace_duplicates=self.config.duplicate_policy is DuplicatePolicy.REPLACE_OLD,
        )
        self.factory.register_channel(channel)
        return channel

    def remove_instance(self, instance_id: RuntimeInstanceId) -> Deferred[None]:
        """
        Forget ``instance_id``: revoke its secret (when the validator is a registry) and
        close its channel and connection; fires once they are closed.
        """
        if self.secrets is not None:
            self.secrets.revoke(instance_id)
        return self.factory.remove_channel(instance_id)

    # -- events ---------------------------------------------------------------------------------

    @property
    def observes_messages(self) -> bool:
        """Whether connections report each message (only while someone wants them)."""
        return (self._monitor is not None and self._monitor.tracks_messages) or any(
            messages for _, messages in self._subscribers
        )

    def _update_observation(self) -> None:
        """Start or stop message events on every connection and channel, per who listens."""
        config = self.config
        monitor = self.monitoring if config.enable_monitoring and self.monitoring.config.enabled else None
        self._monitor = monitor
        wanted = self.observes_messages
        self.factory.observe_messages = wanted
        for channel in self.factory.channels.values():
            channel.observe_messages = wanted
        for connection in self.admission.open.values():
            connection.observe_messages = wanted

    def subscribe(self, subscriber: EventSubscriber, *, messages: bool = False) -> Callable[[], None]:
        """
        Deliver every connection event to ``subscriber``, in order.

        ``MessageReceived``/``MessageSent`` only with ``messages=True``.
        A subscriber that raises is logged and kept.

        :return: a function that unsubscribes.
        """
        entry = (subscriber, messages)
        self._subscribers.append(entry)
        if messages:
            self._update_observation()

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)
                if messages:
                    self._update_observation()

        return unsubscribe

    def observe(self, connection: SpearSessionProtocol, event: ConnectionEvent) -> None:
        """Track ``connection`` by ``event`` and pass the event on (every connection's observer)."""
        kind = event.kind
        if kind in _MESSAGE_EVENTS:
            monitor = self._monitor
            if monitor is not None:
                monitor.record_connection_event(event.connection_id, event)
            self._deliver(event, message=True)
            return
        if kind is ConnectionEventKind.CONNECTED:
            if connection.refuse is None:
                self.admission.started(connection)
        elif kind is ConnectionEventKind.AUTHENTICATED:
            self.admission.authenticated(connection)
            if connection.instance_id is not None:
                self._by_instance[connection.instance_id] = connection
        elif kind is ConnectionEventKind.DISCONNECTED:
            self.admission.ended(connection)
            if (
                connection.instance_id is not None
                and self._by_instance.get(connection.instance_id) is connection
            ):
                del self._by_instance[connection.instance_id]
        monitor = self._monitor
        if monitor is not None:
            monitor.record_connection_event(event.connection_id, event)
            if kind is ConnectionEventKind.AUTHENTICATED and connection.connected_at is not None:
                monitor.record_performance_event(
                    "authentication",
                    event.time - connection.connected_at,
                    transport=connection.transport_name,
                )
        self._deliver(event, message=False)

    def _deliver(self, event: ConnectionEvent, *, message: bool) -> None:
        if not self._subscribers:
            return
        # A subscriber may cause events (by closing a connection, say) while
        # it is being told of one: those wait in line, so that every
        # subscriber sees every event in the same order.
        self._outbox.append((event, message))
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._outbox:
                event, message = self._outbox.popleft()
                for subscriber, messages in list(self._subscribers):
                    if message and not messages:
                        continue
                    try:
                        subscriber(event)
                    except Exception:
                        self.log.failure(
                            "Connection event subscriber failed on {kind} of {connection_id}",
                            kind=event.kind.value,
                            connection_id=event.connection_id,
                        )
        finally:
            self._delivering = False

    # -- connections ----------------------------------------------------------------------------------

    def get_connection_by_instance(self, instance_id: RuntimeInstanceId) -> ConnectionState | None:
        """The state of ``instance_id``'s authenticated connection, if it has one."""
        connection = self._by_instance.get(instance_id)
        if connection is None or not connection.authenticated:
            return None
        return ConnectionState.of(connection)

    def get_connection(self, connection_id: str) -> ConnectionState | None:
        """The state of one open connection, if it is open."""
        connection = self.admission.open.get(connection_id)
        return None if connection is None else ConnectionState.of(connection)

    def get_all_connections(self) -> list[ConnectionState]:
        """The states of every open connection, authenticated or not, oldest first."""
        return [ConnectionState.of(connection) for connection in self.admission.open.values()]

    def get_connection_count(self) -> int:
        """How many connections are open."""
        return len(self.admission.open)

    def close_connection(self, connection_id: str, reason: str = "closed by the spearlet") -> Deferred[None]:
        """
        Close one connection in order (``ConnectionClose`` with ``reason``);
        fires once it is gone.

        :raises KeyError: when no such connection is open.
        """
        connection = self.admission.open.get(connection_id)
        if connection is None:
            raise KeyError(f"no open connection {connection_id!r}")
        return connection.close(reason)

    def close_all_connections(self, reason: str = "the spearlet is closing") -> Deferred[None]:
        """Close every open connection; fires once all are gone."""
        closing = [connection.close(reason) for connection in list(self.admission.open.values())]
        return defer.DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)

    # -- IService ---------------------------------------------------------------------------------

    def startService(self) -> None:
        """
        Listen on ``config.endpoints``, or on the first free port of
        ``port_range``; a listener that cannot start fails the start-up.
        """
        super().startService()  # type: ignore[no-untyped-call]
        failures: list[Failure] = []
        for description in self.config.endpoints or (None,):
            self.start_listening(description).addErrback(failures.append)
        if failures:
            failures[0].raiseException()

    def stopService(self) -> Deferred[None]:
        """Stop listening, then close every channel and connection."""
        super().stopService()  # type: ignore[no-untyped-call]
        steps = [self.stop_listening(), self.factory.close_all(), self.close_all_connections()]
        return defer.DeferredList(steps, consumeErrors=True).addCallback(lambda _: None)
