"""
:class:`MonitoringService`: connection, message and performance events into
bounded buffers, aggregated into metrics.

Metrics are exposed two ways: Prometheus text from a registry of the
service's own (never the process-global one, so two spearlets in one process
do not collide), and a JSON-able :meth:`MonitoringService.snapshot`.  Each
buffer keeps the latest ``metrics_buffer_size`` events; older ones are
dropped and the drops counted.  A disabled service, or a disabled kind of
tracking, records nothing; the ConnectionManager then asks connections for
no per-message events at all.

Message events are recorded on the hot path (every frame, both ways), so
recording only counts, in plain attributes: the Prometheus counters and
gauges are read from those same figures when the registry is collected
(scraped), so the snapshot and the exposition always agree and a frame costs
no metric locks.  Only the two histograms (processing times, timed
operations) are Prometheus objects updated as events arrive.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any, NamedTuple

import attrs
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.service import Service

from spear_twisted.channels.events import ConnectionEvent, ConnectionEventKind
from spear_twisted.channels.stats import LatencyWindow
from spear_twisted.settings import positive, setting
from spear_twisted.wire import MessageType


class MessageDirection(enum.Enum):
    """Which way a message went, from the spearlet's side."""

    INCOMING = "incoming"
    OUTGOING = "outgoing"


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
    enable_performance_tracking: bool = setting(
        True, doc="Record timed operations (handshakes, round trips, spawns)."
    )
    metrics_buffer_size: int = setting(
        10_000,
        doc="Events kept per buffer; the oldest are dropped (and counted) beyond.",
        validator=positive,
    )


class MessageEvent(NamedTuple):
    """
    One message seen on a connection (a tuple rather than an attrs class:
    one is made per frame, and a tuple is the cheapest immutable record).
    """

    connection_id: str
    message_type: MessageType
    direction: MessageDirection
    size: int
    processing_time: float | None


@attrs.frozen
class PerformanceEvent:
    """One timed operation (a handshake, a request's round trip, a spawn, ...)."""

    name: str
    duration: float
    labels: tuple[tuple[str, str], ...] = ()


@attrs.define
class ConnectionMetrics:
    """Running figures of one connection; times are on the reactor's clock."""

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
    """Running figures of one message type in one direction (bytes are whole frames)."""

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


class EventBuffer:
    """The latest ``size`` events, and how many older ones were dropped."""

    def __init__(self, size: int) -> None:
        self.items: deque[Any] = deque(maxlen=size)
        self.dropped = 0
        self._size = size

    def append(self, item: Any) -> None:
        if len(self.items) == self._size:
            self.dropped += 1
        self.items.append(item)


#: Connections whose figures are kept after they end, for the snapshot.
CLOSED_CONNECTIONS_KEPT = 256

_MESSAGE_KINDS = {
    ConnectionEventKind.MESSAGE_RECEIVED: MessageDirection.INCOMING,
    ConnectionEventKind.MESSAGE_SENT: MessageDirection.OUTGOING,
}


class MonitoringService(Service):
    """See the module docstring."""

    name = "monitoring"

    def __init__(self, config: MonitoringConfig | None = None) -> None:
        self.config = config = config or MonitoringConfig()
        #: Whether each kind of event is recorded (fixed: the config is frozen).
        self.tracks_connections = config.enabled and config.enable_connection_tracking
        self.tracks_messages = config.enabled and config.enable_message_tracking
        self.tracks_performance = config.enabled and config.enable_performance_tracking

        size = config.metrics_buffer_size
        self.connection_events = EventBuffer(size)
        self.message_events = EventBuffer(size)
        self.performance_events = EventBuffer(size)
        #: Figures of open connections, and of the latest closed ones.
        self.connections: dict[str, ConnectionMetrics] = {}
        self._closed_order: deque[str] = deque()
        #: Figures by ``(direction, message type)`` names.
        self.message_types: dict[tuple[str, str], MessageTypeMetrics] = {}
        # The same figures by enum members.
        self._by_kind: dict[tuple[MessageDirection, MessageType], MessageTypeMetrics] = {}
        self.system = SystemMetrics()
        #: Errors by error code.
        self.errors_by_code: dict[int, int] = {}
        #: The latest ``metrics_buffer_size`` durations of each timed operation.
        self.performance: dict[str, LatencyWindow] = {}

        #: The service's own Prometheus registry (never the global one).
        self.registry = registry = CollectorRegistry()
        registry.register(_FiguresCollector(self))
        self._processing = Histogram(
            "spear_message_processing_seconds",
            "Processing time of messages by type",
            ["message_type"],
            registry=registry,
        )
        self._performance = Histogram(
            "spear_operation_seconds", "Duration of timed operations", ["operation"], registry=registry
        )
        self._operations: dict[str, tuple[LatencyWindow, Any]] = {}

    # -- recording -------------------------------------------------------------------------

    def record_connection_event(self, connection_id: str, event: ConnectionEvent) -> None:
        """Record one :class:`~spear_twisted.channels.events.ConnectionEvent` of ``connection_id``."""
        kind = event.kind
        direction = _MESSAGE_KINDS.get(kind)
        if direction is not None:
            if event.message_type is not None and event.size is not None:
                self.record_message_event(connection_id, event.message_type, direction, event.size)
            return
        if not self.tracks_connections:
            return
        self.connection_events.append(event)
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
        elif kind is ConnectionEventKind.AUTHENTICATED:
            metrics.authenticated = True
            system.authentications += 1
        elif kind is ConnectionEventKind.AUTHENTICATION_FAILED:
            system.authentication_failures += 1
        elif kind is ConnectionEventKind.HEARTBEAT_TIMEOUT:
            system.heartbeat_timeouts += 1
        elif kind is ConnectionEventKind.ERROR:
            metrics.errors += 1
            system.errors += 1
            code = event.error_code or 0
            self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1
        elif kind is ConnectionEventKind.DISCONNECTED:
            metrics.disconnected_at = event.time
            # Never below zero, even for a connection that opened before tracking began.
            system.connections_active = max(0, system.connections_active - 1)
            self._closed_order.append(connection_id)
            if len(self._closed_order) > CLOSED_CONNECTIONS_KEPT:
                self.connections.pop(self._closed_order.popleft(), None)

    def record_message_event(
        self,
        connection_id: str,
        message_type: MessageType,
        direction: MessageDirection,
        size: int,
        processing_time: float | None = None,
    ) -> None:
        """
        Record one message of ``size`` frame bytes on ``connection_id``;
        ``processing_time`` (seconds) when the caller timed its handling.
        """
        if not self.tracks_messages:
            return
        self.message_events.append(
            MessageEvent(connection_id, message_type, direction, size, processing_time)
        )
        figures = self._by_kind.get((direction, message_type))
        if figures is None:
            figures = self._by_kind[(direction, message_type)] = MessageTypeMetrics()
            self.message_types[(direction.value, message_type.value)] = figures
        figures.count += 1
        figures.bytes += size
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
        """Record that operation ``name`` took ``duration`` seconds (``labels`` describe it)."""
        if not self.tracks_performance:
            return
        self.performance_events.append(PerformanceEvent(name, duration, tuple(sorted(labels.items()))))
        entry = self._operations.get(name)
        if entry is None:
            samples = self.performance[name] = LatencyWindow(self.config.metrics_buffer_size)
            entry = self._operations[name] = (samples, self._performance.labels(name))
        samples, histogram = entry
        samples.add(duration)
        histogram.observe(duration)

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
            "errors_by_code": {str(code): count for code, count in sorted(self.errors_by_code.items())},
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


class _FiguresCollector:
    """The service's counters and gauges, read from its figures at each collection."""

    def __init__(self, service: MonitoringService) -> None:
        self.service = service

    def describe(self) -> list[Metric]:
        # Names are fixed and cannot collide within the service's own registry.
        return []

    def collect(self) -> list[Metric]:
        service = self.service
        system = service.system
        auth = CounterMetricFamily(
            "spear_authentications", "Authentication attempts by outcome", labels=["outcome"]
        )
        auth.add_metric(["success"], system.authentications)
        auth.add_metric(["failure"], system.authentication_failures)
        errors = CounterMetricFamily("spear_errors", "Errors sent or met, by error code", labels=["code"])
        for code, count in sorted(service.errors_by_code.items()):
            errors.add_metric([str(code)], count)
        labels = ["direction", "message_type"]
        messages = CounterMetricFamily("spear_messages", "Messages by direction and type", labels=labels)
        frame_bytes = CounterMetricFamily(
            "spear_message_bytes", "Frame bytes by direction and message type", labels=labels
        )
        for names, figures in sorted(service.message_types.items()):
            messages.add_metric(list(names), figures.count)
            frame_bytes.add_metric(list(names), figures.bytes)
        dropped = CounterMetricFamily(
            "spear_monitoring_events_dropped", "Events dropped from full buffers", labels=["buffer"]
        )
        for name, buffer in (
            ("connection", service.connection_events),
            ("message", service.message_events),
            ("performance", service.performance_events),
        ):
            dropped.add_metric([name], buffer.dropped)
        return [
            CounterMetricFamily("spear_connections", "Connections accepted", value=system.connections_total),
            GaugeMetricFamily(
                "spear_connections_active", "Connections open", value=system.connections_active
            ),
            auth,
            CounterMetricFamily(
                "spear_heartbeat_timeouts",
                "Connections closed for heartbeat timeout",
                value=system.heartbeat_timeouts,
            ),
            errors,
            messages,
            frame_bytes,
            dropped,
        ]
