"""``MonitoringService``: recording, bounded buffers, metrics on its own registry, the snapshot."""

from __future__ import annotations

import json

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.channels.events import ConnectionEvent, ConnectionEventKind
from spear_twisted.errors import ErrorCode, InvalidMessage
from spear_twisted.monitoring import MessageDirection, MonitoringConfig, MonitoringService
from spear_twisted.wire import MessageType, RuntimeInstanceId, RuntimeType
from spear_twisted.wire.codec import structure

K = ConnectionEventKind
IN, OUT = MessageDirection.INCOMING, MessageDirection.OUTGOING
WORKER = RuntimeInstanceId(RuntimeType.PROCESS, "w")


def event(
    kind: ConnectionEventKind, connection_id: str = "conn-1", time: float = 0.0, **fields: object
) -> ConnectionEvent:
    return ConnectionEvent(kind, connection_id, time, **fields)  # type: ignore[arg-type]


def samples(service: MonitoringService) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the service's Prometheus text, parsed back."""
    found = {}
    for family in text_string_to_metric_families(service.metrics_text().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def lifecycle(service: MonitoringService, connection_id: str = "conn-1") -> None:
    service.record_connection_event(
        connection_id, event(K.CONNECTED, connection_id, 1.0, remote_addr="127.0.0.1:5")
    )
    service.record_connection_event(
        connection_id, event(K.AUTHENTICATED, connection_id, 1.5, instance_id=WORKER)
    )


class MonitoringConfigTests(SynchronousTestCase):
    def test_defaults_and_validation(self) -> None:
        config = MonitoringConfig()
        self.assertEqual(
            (
                config.enabled,
                config.enable_connection_tracking,
                config.enable_message_tracking,
                config.enable_performance_tracking,
            ),
            (True, True, True, True),
        )
        self.assertEqual(config.metrics_buffer_size, 10_000)
        with self.assertRaises(ValueError) as caught:
            MonitoringConfig(metrics_buffer_size=0)
        self.assertIn("metrics_buffer_size", str(caught.exception))

    def test_read_from_configuration(self) -> None:
        config = structure({"enable_message_tracking": False, "metrics_buffer_size": 50}, MonitoringConfig)
        self.assertEqual((config.enable_message_tracking, config.metrics_buffer_size), (False, 50))
        with self.assertRaises(InvalidMessage):
            structure({"enable_mesage_tracking": False}, MonitoringConfig)


class RecordingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = MonitoringService()

    def test_connection_events_make_per_connection_and_system_figures(self) -> None:
        service = self.service
        lifecycle(service)
        service.record_connection_event(
            "conn-1", event(K.HEARTBEAT_TIMEOUT, time=91, instance_id=WORKER, reason="nothing received")
        )
        service.record_connection_event(
            "conn-1", event(K.ERROR, time=91, instance_id=WORKER, error_code=int(ErrorCode.HEARTBEAT_TIMEOUT))
        )
        service.record_connection_event("conn-1", event(K.DISCONNECTED, time=92, instance_id=WORKER))
        service.record_connection_event("conn-2", event(K.CONNECTED, "conn-2", 3.0))
        service.record_connection_event(
            "conn-2",
            event(K.AUTHENTICATION_FAILED, "conn-2", 3.1, error_code=int(ErrorCode.AUTHENTICATION_FAILED)),
        )
        figures = service.connections["conn-1"]
        self.assertEqual(
            (figures.instance_id, figures.remote_addr, figures.connected_at, figures.disconnected_at),
            ("process:w", "127.0.0.1:5", 1.0, 92),
        )
        self.assertTrue(figures.authenticated)
        self.assertEqual((figures.errors, figures.last_event), (1, "Disconnected"))
        system = service.system
        self.assertEqual((system.connections_total, system.connections_active), (2, 1))
        self.assertEqual((system.authentications, system.authentication_failures), (1, 1))
        self.assertEqual((system.heartbeat_timeouts, system.errors), (1, 1))
        found = samples(service)
        self.assertEqual(found[("spear_connections_total", ())], 2)
        self.assertEqual(found[("spear_connections_active", ())], 1)
        self.assertEqual(found[("spear_authentications_total", (("outcome", "failure"),))], 1)
        self.assertEqual(found[("spear_heartbeat_timeouts_total", ())], 1)
        self.assertEqual(found[("spear_errors_total", (("code", "1202"),))], 1)

    def test_message_events_make_per_type_and_per_connection_figures(self) -> None:
        service = self.service
        lifecycle(service)
        service.record_message_event("conn-1", MessageType.EXECUTE_REQUEST, OUT, 300)
        service.record_message_event("conn-1", MessageType.EXECUTE_RESPONSE, IN, 200, processing_time=0.25)
        service.record_message_event("conn-1", MessageType.EXECUTE_RESPONSE, IN, 100, processing_time=0.75)
        service.record_connection_event(
            "conn-1", event(K.MESSAGE_SENT, message_type=MessageType.HEARTBEAT, size=80)
        )
        response = service.message_types[("incoming", "ExecuteResponse")]
        self.assertEqual((response.count, response.bytes), (2, 300))
        self.assertEqual((response.processing_time_total, response.processing_time_samples), (1.0, 2))
        self.assertEqual(service.message_types[("outgoing", "Heartbeat")].bytes, 80)
        figures = service.connections["conn-1"]
        self.assertEqual((figures.messages_sent, figures.bytes_sent), (2, 380))
        self.assertEqual((figures.messages_received, figures.bytes_received), (2, 300))
        self.assertEqual((service.system.messages_received, service.system.bytes_sent), (2, 380))
        found = samples(service)
        labels = (("direction", "incoming"), ("message_type", "ExecuteResponse"))
        self.assertEqual(found[("spear_messages_total", labels)], 2)
        self.assertEqual(found[("spear_message_bytes_total", labels)], 300)
        self.assertEqual(
            found[("spear_message_processing_seconds_count", (("message_type", "ExecuteResponse"),))], 2
        )
        self.assertEqual(
            found[("spear_message_processing_seconds_sum", (("message_type", "ExecuteResponse"),))], 1.0
        )

    def test_performance_events(self) -> None:
        for duration in (0.1, 0.2, 0.3, 0.4):
            self.service.record_performance_event("authentication", duration, transport="tcp")
        snapshot = self.service.snapshot()["performance"]["authentication"]
        self.assertEqual((snapshot["count"], snapshot["p50"], snapshot["p99"]), (4, 0.2, 0.4))
        self.assertAlmostEqual(snapshot["mean"], 0.25)
        self.assertEqual(self.service.performance_events.items[0].labels, (("transport", "tcp"),))
        self.assertEqual(
            samples(self.service)[("spear_operation_seconds_count", (("operation", "authentication"),))], 4
        )

    def test_buffers_keep_the_latest_events_and_count_the_drops(self) -> None:
        service = MonitoringService(MonitoringConfig(metrics_buffer_size=3))
        for n in range(5):
            service.record_message_event("conn-1", MessageType.STREAM_DATA, IN, n + 10)
            service.record_performance_event("op", float(n))
            service.record_connection_event(f"c{n}", event(K.CONNECTED, f"c{n}"))
        self.assertEqual([e.size for e in service.message_events.items], [12, 13, 14])
        self.assertEqual(len(service.performance["op"]), 3)
        buffers = service.snapshot()["buffers"]
        self.assertEqual(buffers["dropped"], {"connection": 2, "message": 2, "performance": 2})
        self.assertEqual((buffers["message_events"], buffers["size"]), (3, 3))
        self.assertEqual(
            samples(service)[("spear_monitoring_events_dropped_total", (("buffer", "message"),))], 2
        )
        # The aggregates still count everything.
        self.assertEqual(service.message_types[("incoming", "StreamData")].count, 5)

    def test_figures_of_closed_connections_are_bounded(self) -> None:
        for n in range(300):
            self.service.record_connection_event(f"c{n}", event(K.CONNECTED, f"c{n}"))
            self.service.record_connection_event(f"c{n}", event(K.DISCONNECTED, f"c{n}"))
        self.assertEqual(len(self.service.connections), 256)
        self.assertIn("c299", self.service.connections)
        self.assertNotIn("c0", self.service.connections)

    def test_the_snapshot_is_json(self) -> None:
        lifecycle(self.service)
        self.service.record_message_event("conn-1", MessageType.EXECUTE_REQUEST, OUT, 300, 0.5)
        self.service.record_performance_event("authentication", 0.01)
        snapshot = self.service.snapshot()
        self.assertEqual(json.loads(json.dumps(snapshot)), snapshot)
        self.assertEqual(snapshot["connections"]["conn-1"]["instance_id"], "process:w")
        self.assertEqual(snapshot["message_types"]["outgoing:ExecuteRequest"]["count"], 1)
        self.assertTrue(snapshot["enabled"])

    def test_each_service_has_its_own_registry(self) -> None:
        other = MonitoringService()
        lifecycle(self.service)
        self.assertEqual(samples(self.service)[("spear_connections_total", ())], 1)
        self.assertEqual(samples(other)[("spear_connections_total", ())], 0)
        self.assertNotIn("spear_connections_total", {s.name for f in REGISTRY.collect() for s in f.samples})


class DisabledTests(SynchronousTestCase):
    def record_everything(self, service: MonitoringService) -> None:
        lifecycle(service)
        service.record_message_event("conn-1", MessageType.EXECUTE_REQUEST, OUT, 300)
        service.record_performance_event("authentication", 0.01)

    def test_a_disabled_service_records_nothing(self) -> None:
        service = MonitoringService(MonitoringConfig(enabled=False))
        self.record_everything(service)
        snapshot = service.snapshot()
        self.assertFalse(snapshot["enabled"])
        self.assertEqual(
            (snapshot["connections"], snapshot["message_types"], snapshot["performance"]), ({}, {}, {})
        )
        self.assertEqual(snapshot["system"]["connections_total"], 0)
        self.assertFalse(service.tracks_messages or service.tracks_connections or service.tracks_performance)

    def test_each_kind_of_tracking_can_be_turned_off(self) -> None:
        service = MonitoringService(
            MonitoringConfig(
                enable_connection_tracking=False,
                enable_message_tracking=True,
                enable_performance_tracking=False,
            )
        )
        self.record_everything(service)
        self.assertEqual((service.connections, service.performance), ({}, {}))
        self.assertEqual(service.system.messages_sent, 1)
        service = MonitoringService(MonitoringConfig(enable_message_tracking=False))
        self.record_everything(service)
        self.assertEqual(service.message_types, {})
        self.assertEqual(service.system.authentications, 1)
