"""
:class:`MonitoringService`: connection, message and performance events into
bounded buffers, aggregated into metrics.

Metrics are exposed two ways: Prometheus text from a registry of the
service's own (never the process-global one, so two spearlets in one process
do not collide), and a JSON-able :meth:`MonitoringService.snapshot`.  Each
buffer keeps the latest ``metrics_buffer_size`` events; older ones are
dropped and the drops counted.  A disabled service, or a disabled kind of
tracking, records nothing.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from twisted.application.service import Service

from spear_twisted.channels.events import ConnectionEvent, ConnectionEventKind
from spear_twisted.channels.stats import LatencyWindow
from spear_twisted.settings import setting
from spear_twisted.wire import MessageType


class MessageDirection(enum.Enum):
    """Which way a message went, from the spearlet's side."""

    INCOMING = "incoming"
    OUTGOING = "outgoing"


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@attrs.frozen
class MonitoringConfig:
    """What the monitoring service records, and how much it keeps."""

    __spear_settings__ = True

    enabled: bool = setting(True, doc="Record anything at all; false makes monitoring free.")
    enable_connection_tracking: bool = setting(
        True, doc="Record connection events and per-connection figures."
    )
    enable_message_tracking: bool = setting(
        True, doc="Record every message (type, direction, size); costs a little per message."
    )
    enable_performance_tracking: bool = setting(True, doc="Record timed operations (round trips, spawns).")
    metrics_buffer_size: int = setting(
        10_000,
        doc="Events kept per buffer; the oldest are dropped (and counted) beyond.",
        validator=_positive,
    )


@attrs.frozen
class MessageEvent:
    """One message seen on a connection."""

    connection_id: str
    message_type: MessageType
    direction: MessageDirection
    size: int
    processing_time: float | None


@attrs.frozen
class PerformanceEvent:
    """One timed operation (a request's round trip, a spawn, ...)."""

    name: str
    duration: float
    labels: tuple[tuple[str, str], ...] = ()


@attrs.define
class ConnectionMetrics:
    """Running figures of one connection."""

    connection_id: str
    instance_id: str | None = None
    remote_addr: str | None = None
    connected_at: float | None = None
    disconnected_at: float | None = None
    authenticated: bool = False
    messages_received: int = 0
    messages_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    errors: int = 0
    last_event: str | None = None


@attrs.define
class MessageTypeMetrics:
    """Running figures of one message type in one direction."""

    count: int = 0
    bytes: int = 0
    processing_time_total: float = 0.0
    processing_time_samples: int = 0


@attrs.define
class SystemMetrics:
    """Figures of the whole spearlet."""

    connections_total: int = 0
    connections_active: int = 0
    authentications: int = 0
    authentication_failures: int = 0
    heartbeat_timeouts: int = 0
    errors: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0


class _Buffer:
    """A bounded buffer that counts what it drops."""

    def __init__(self, size: int) -> None:
        self.items: deque[Any] = deque(maxlen=size)
        self.dropped = 0

    def append(self, item: Any) -> bool:
        """Keep ``item``; True when the oldest item was dropped to make room."""
        full = len(self.items) == self.items.maxlen
        if full:
            self.dropped += 1
        self.items.append(item)
        return full


#: Connections whose figures are kept after they end, for the snapshot.
_CLOSED_CONNECTIONS_KEPT = 256


class MonitoringService(Service):
    """See the module docstring."""

    name = "monitoring"

    def __init__(self, config: MonitoringConfig | None = None) -> None:
        self.config = config or MonitoringConfig()
        size = self.config.metrics_buffer_size
        self.connection_events = _Buffer(size)
        self.message_events = _Buffer(size)
        self.performance_events = _Buffer(size)
        self.connections: dict[str, ConnectionMetrics] = {}
        self._closed_order: deque[str] = deque()
        self.message_types: dict[tuple[str, str], MessageTypeMetrics] = {}
        self.system = SystemMetrics()
        #: The latest ``metrics_buffer_size`` durations of each timed operation.
        self.performance: dict[str, LatencyWindow] = {}

        self.registry = CollectorRegistry(auto_describe=True)
        self._connections_total = Counter(
            "spear_connections", "Connections accepted or made", registry=self.registry
        )
        self._connections_active = Gauge(
            "spear_connections_active", "Connections currently open", registry=self.registry
        )
        self._auth = Counter(
            "spear_authentications", "Authentication attempts by outcome", ["outcome"], registry=self.registry
        )
        self._heartbeat_timeouts = Counter(
            "spear_heartbeat_timeouts", "Connections closed for heartbeat timeout", registry=self.registry
        )
        self._errors = Counter("spear_errors", "Errors by code", ["code"], registry=self.registry)
        self._messages = Counter(
            "spear_messages",
            "Messages by direction and type",
            ["direction", "message_type"],
            registry=self.registry,
        )
        self._message_bytes = Counter(
            "spear_message_bytes",
            "Frame bytes by direction and type",
            ["direction", "message_type"],
            registry=self.registry,
        )
        self._processing = Histogram(
            "spear_message_processing_seconds",
            "Processing time of messages by type",
            ["message_type"],
            registry=self.registry,
        )
        self._performance = Histogram(
            "spear_operation_seconds", "Duration of timed operations", ["operation"], registry=self.registry
        )
        self._dropped = Counter(
            "spear_monitoring_events_dropped",
            "Events dropped from full buffers",
            ["buffer"],
            registry=self.registry,
        )

    # -- recording -------------------------------------------------------------------------

    @property
    def tracks_connections(self) -> bool:
        return self.config.enabled and self.config.enable_connection_tracking

    @property
    def tracks_messages(self) -> bool:
        return self.config.enabled and self.config.enable_message_tracking

    @property
    def tracks_performance(self) -> bool:
        return self.config.enabled and self.config.enable_performance_tracking

    def record_connection_event(self, connection_id: str, event: ConnectionEvent) -> None:
        """Record one event of ``connection_id``."""
        kind = event.kind
        if kind in (ConnectionEventKind.MESSAGE_RECEIVED, ConnectionEventKind.MESSAGE_SENT):
            if event.message_type is not None and event.size is not None:
                direction = (
                    MessageDirection.INCOMING
                    if kind is ConnectionEventKind.MESSAGE_RECEIVED
                    else MessageDirection.OUTGOING
                )
                self.record_message_event(connection_id, event.message_type, direction, event.size, None)
            return
        if not self.tracks_connections:
            return
        if self.connection_events.append(event):
            self._dropped.labels("connection").inc()
        metrics = self.connections.get(connection_id)
        if metrics is None:
            metrics = self.connections[connection_id] = ConnectionMetrics(connection_id)
        metrics.last_event = kind.value
        if event.instance_id is not None:
            metrics.instance_id = str(event.instance_id)
        system = self.system
        if kind is ConnectionEventKind.CONNECTED:
            metrics.connected_at = event.time
            metrics.remote_addr = event.remote_addr
            system.connections_total += 1
            system.connections_active += 1
            self._connections_total.inc()
            self._connections_active.set(system.connections_active)
        elif kind is ConnectionEventKind.AUTHENTICATED:
            metrics.authenticated = True
            system.authentications += 1
            self._auth.labels("success").inc()
        elif kind is ConnectionEventKind.AUTHENTICATION_FAILED:
            system.authentication_failures += 1
            self._auth.labels("failure").inc()
        elif kind is ConnectionEventKind.HEARTBEAT_TIMEOUT:
            system.heartbeat_timeouts += 1
            self._heartbeat_timeouts.inc()
        elif kind is ConnectionEventKind.ERROR:
            metrics.errors += 1
            system.errors += 1
            self._errors.labels(str(event.error_code)).inc()
        elif kind is ConnectionEventKind.DISCONNECTED:
            metrics.disconnected_at = event.time
            # Never below zero, even for a connection that opened before tracking began.
            system.connections_active = max(0, system.connections_active - 1)
            self._connections_active.set(system.connections_active)
            self._closed_order.append(connection_id)
            while len(self._closed_order) > _CLOSED_CONNECTIONS_KEPT:
                self.connections.pop(self._closed_order.popleft(), None)

    def record_message_event(
        self,
        connection_id: str,
        message_type: MessageType,
        direction: MessageDirection,
        size: int,
        processing_time: float | None = None,
    ) -> None:
        """Record one message of ``size`` frame bytes on ``connection_id``."""
        if not self.tracks_messages:
            return
        if self.message_events.append(
            MessageEvent(connection_id, message_type, direction, size, processing_time)
        ):
            self._dropped.labels("message").inc()
        key = (direction.value, message_type.value)
        figures = self.message_types.get(key)
        if figures is None:
            figures = self.message_types[key] = MessageTypeMetrics()
        figures.count += 1
        figures.bytes += size
        self._messages.labels(*key).inc()
        self._message_bytes.labels(*key).inc(size)
        if processing_time is not None:
            figures.processing_time_total += processing_time
            figures.processing_time_samples += 1
            self._processing.labels(message_type.value).observe(processing_time)
        system = self.system
        metrics = self.connections.get(connection_id)
        if direction is MessageDirection.INCOMING:
            system.messages_received += 1
            system.bytes_received += size
            if metrics is not None:
                metrics.messages_received += 1
                metrics.bytes_received += size
        else:
            system.messages_sent += 1
            system.bytes_sent += size
            if metrics is not None:
                metrics.messages_sent += 1
                metrics.bytes_sent += size

    def record_performance_event(self, name: str, duration: float, **labels: str) -> None:
        """Record that operation ``name`` took ``duration`` seconds."""
        if not self.tracks_performance:
            return
        if self.performance_events.append(PerformanceEvent(name, duration, tuple(sorted(labels.items())))):
            self._dropped.labels("performance").inc()
        samples = self.performance.get(name)
        if samples is None:
            samples = self.performance[name] = LatencyWindow(self.config.metrics_buffer_size)
        samples.add(duration)
        self._performance.labels(name).observe(duration)

    # -- reading ---------------------------------------------------------------------------------

    def metrics_text(self) -> bytes:
        """The metrics in the Prometheus text exposition format."""
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, Any]:
        """Every figure as plain JSON-able data."""
        performance = {}
        for name, samples in self.performance.items():
            mean, p50, p99 = samples.summary()
            performance[name] = {"count": len(samples), "mean": mean, "p50": p50, "p99": p99}
        return {
            "enabled": self.config.enabled,
            "system": attrs.asdict(self.system),
            "connections": {cid: attrs.asdict(m) for cid, m in self.connections.items()},
            "message_types": {
                f"{direction}:{kind}": attrs.asdict(figures)
                for (direction, kind), figures in self.message_types.items()
            },
            "performance": performance,
            "buffers": {
                "size": self.config.metrics_buffer_size,
                "connection_events": len(self.connection_events.items),
                "message_events": len(self.message_events.items),
                "performance_events": len(self.performance_events.items),
                "dropped": {
                    "connection": self.connection_events.dropped,
                    "message": self.message_events.dropped,
                    "performance": self.performance_events.dropped,
                },
            },
        }
