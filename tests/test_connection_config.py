"""``ConnectionManagerConfig``: defaults, validation naming the field, reading from configuration."""

from __future__ import annotations

import inspect
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import spear_twisted.connections as connections
from spear_twisted.connections import MIN_BACKLOG, ConnectionManagerConfig, DuplicatePolicy
from spear_twisted.errors import InvalidMessage
from spear_twisted.wire.codec import structure


class ConfigTests(SynchronousTestCase):
    def test_defaults_are_the_protocols(self) -> None:
        config = ConnectionManagerConfig()
        self.assertEqual(config.listen_addr, "127.0.0.1")
        self.assertEqual(config.port_range, (9100, 9999))
        self.assertEqual(config.max_connections, 1000)
        self.assertEqual(config.connection_timeout, 300.0)
        self.assertEqual(config.auth_timeout, 30.0)
        self.assertEqual(config.heartbeat_interval, 30.0)
        self.assertEqual(config.heartbeat_timeout, 90.0)
        self.assertEqual(config.max_message_size, 64 * 1024 * 1024)
        self.assertEqual(config.max_preauth_message_size, 64 * 1024)
        self.assertEqual(config.max_pending_auth, 64)
        self.assertEqual(config.backlog, MIN_BACKLOG)
        self.assertEqual((config.enable_tls, config.tls_cert_path, config.tls_key_path), (False, None, None))
        self.assertTrue(config.enable_monitoring)
        self.assertIs(config.duplicate_policy, DuplicatePolicy.REFUSE_NEW)

    def assertRefused(self, field: str, expected: str, **settings: Any) -> None:
        with self.assertRaises(ValueError) as caught:
            ConnectionManagerConfig(**settings)
        message = str(caught.exception)
        self.assertIn(field, message)
        self.assertIn(expected, message)

    def test_invalid_values_are_refused_naming_the_field(self) -> None:
        self.assertRefused("port_range", "is empty: 9999 > 9100", port_range=(9999, 9100))
        self.assertRefused("port_range", "within 1..65535", port_range=(0, 10))
        self.assertRefused("port_range", "(low, high)", port_range=(9100,))
        for field in ("connection_timeout", "auth_timeout", "heartbeat_interval", "heartbeat_timeout"):
            for bad in (0, -1.5):
                self.assertRefused(field, "must be positive", **{field: bad})
        for field in ("max_connections", "max_pending_auth", "max_message_size", "max_preauth_message_size"):
            self.assertRefused(field, "must be positive", **{field: 0})
        self.assertRefused("backlog", "at least 1024", backlog=128)
        self.assertRefused("heartbeat_timeout", "longer than heartbeat_interval", heartbeat_timeout=30)
        self.assertRefused(
            "max_preauth_message_size", "must not exceed max_message_size", max_message_size=1000
        )
        self.assertRefused("listen_addr", "not a loopback address", listen_addr="0.0.0.0")
        self.assertRefused("listen_addr", "must not be empty", listen_addr="")
        self.assertRefused("endpoints", "not an endpoint description", endpoints=("9100",))

    def test_tls_needs_both_files(self) -> None:
        self.assertRefused("tls_cert_path", "required when enable_tls", enable_tls=True)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("x")
        self.assertRefused("tls_key_path", "required when enable_tls", enable_tls=True, tls_cert_path=path)
        self.assertRefused(
            "tls_key_path",
            "no such file",
            enable_tls=True,
            tls_cert_path=path,
            tls_key_path=path + ".missing",
        )
        config = ConnectionManagerConfig(enable_tls=True, tls_cert_path=path, tls_key_path=path)
        self.assertTrue(config.enable_tls)

    def test_remote_listening_and_no_idle_timeout_are_allowed_when_asked_for(self) -> None:
        config = ConnectionManagerConfig(listen_addr="0.0.0.0", allow_remote=True, connection_timeout=None)
        self.assertEqual(config.channel_config().idle_timeout, None)
        self.assertEqual(config.channel_config().host, "0.0.0.0")

    def test_read_from_configuration_with_defaults_and_unknown_keys_refused(self) -> None:
        config = structure(
            {"port_range": [9200, 9300], "duplicate_policy": "replace-old", "connection_timeout": 60},
            ConnectionManagerConfig,
        )
        self.assertEqual(config.port_range, (9200, 9300))
        self.assertIs(config.duplicate_policy, DuplicatePolicy.REPLACE_OLD)
        self.assertEqual(config.connection_timeout, 60.0)
        self.assertEqual(config.auth_timeout, 30.0)
        with self.assertRaises(InvalidMessage) as caught:
            structure({"max_conections": 5}, ConnectionManagerConfig)
        self.assertIn("did you mean 'max_connections'", str(caught.exception))
        with self.assertRaises(InvalidMessage) as caught:
            structure({"duplicate_policy": "keep-both"}, ConnectionManagerConfig)
        self.assertIn("duplicate_policy", str(caught.exception))
        with self.assertRaises(InvalidMessage) as caught:
            structure({"port_range": [9300, 9200]}, ConnectionManagerConfig)
        self.assertIn("port_range: is empty", str(caught.exception))

    def test_channel_config_carries_the_session_settings(self) -> None:
        config = ConnectionManagerConfig(
            auth_timeout=5, heartbeat_interval=7, heartbeat_timeout=21, connection_timeout=100, backlog=2048
        )
        session = config.channel_config().session_config()
        self.assertEqual(
            (
                session.auth_timeout,
                session.heartbeat_interval,
                session.heartbeat_timeout,
                session.idle_timeout,
            ),
            (5, 7, 21, 100),
        )
        self.assertEqual(session.max_preauth_message_size, 64 * 1024)
        self.assertEqual(config.channel_config().backlog, 2048)

    def test_the_package_exports_what_it_lists(self) -> None:
        for name in connections.__all__:
            value = getattr(connections, name)
            if isinstance(value, type) or inspect.isfunction(value):
                self.assertTrue(value.__module__.startswith("spear_twisted.connections."), name)
        self.assertEqual(connections.MIN_BACKLOG, 1024)
