"""The agent's configuration: the environment of PROTOCOL.md section 7, overridden by arguments."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.agent import AgentConfig, AgentConfigError
from spear_twisted.agent import config as agent_config
from spear_twisted.wire import constants

UNIX = {
    "SPEAR_INSTANCE_ID": "process:echo-1",
    "SPEAR_SECRET": "a-secret-of-some-length",
    "SPEAR_COMMUNICATION_TYPE": "unix",
    "SPEAR_SOCKET_PATH": "/run/spear/echo-1.sock",
}

TCP = {
    "SPEAR_INSTANCE_ID": "process:echo-1",
    "SPEAR_SECRET": "a-secret-of-some-length",
    "SECRET": "a-secret-of-some-length",
    "SPEAR_COMMUNICATION_TYPE": "tcp",
    "SPEAR_COMMUNICATION_PORT": "9123",
    "SERVICE_ADDR": "127.0.0.1:9123",
}


class FromEnvironmentTests(SynchronousTestCase):
    def test_a_unix_instance(self) -> None:
        config = AgentConfig.from_environment(UNIX)
        self.assertEqual(
            (config.instance_id, config.secret, config.transport, config.socket_path),
            ("process:echo-1", "a-secret-of-some-length", "unix", "/run/spear/echo-1.sock"),
        )
        self.assertEqual(config.address, "unix:/run/spear/echo-1.sock")

    def test_a_tcp_instance(self) -> None:
        config = AgentConfig.from_environment(TCP)
        self.assertEqual((config.transport, config.host, config.port), ("tcp", "127.0.0.1", 9123))
        self.assertEqual(config.address, "tcp:127.0.0.1:9123")

    def test_a_grpc_instance_with_and_without_tls(self) -> None:
        grpc = {**TCP, "SPEAR_COMMUNICATION_TYPE": "grpc"}
        config = AgentConfig.from_environment(grpc)
        self.assertEqual((config.transport, config.host, config.port), ("grpc", "127.0.0.1", 9123))
        self.assertEqual((config.address, config.tls_ca_path), ("grpc:127.0.0.1:9123", None))
        config = AgentConfig.from_environment({**grpc, "SPEAR_TLS_CA_PATH": "/etc/spear/ca.pem"})
        self.assertEqual(config.tls_ca_path, "/etc/spear/ca.pem")

    def test_the_older_spellings_alone_are_enough(self) -> None:
        config = AgentConfig.from_environment(
            {
                "SPEAR_INSTANCE_ID": "process:a",
                "SECRET": "older-secret-spelling",
                "SERVICE_ADDR": "10.0.0.2:9200",
            }
        )
        self.assertEqual(
            (config.secret, config.transport, config.host, config.port),
            ("older-secret-spelling", "tcp", "10.0.0.2", 9200),
        )

    def test_an_ipv6_service_address(self) -> None:
        config = AgentConfig.from_environment(
            {**TCP, "SERVICE_ADDR": "[::1]:9124", "SPEAR_COMMUNICATION_PORT": ""}
        )
        self.assertEqual((config.host, config.port), ("::1", 9124))

    def test_arguments_override_the_environment(self) -> None:
        config = AgentConfig.from_environment(
            UNIX, secret="another-secret-value", max_retries=2, retry_delay=0.1
        )
        self.assertEqual(
            (config.secret, config.max_retries, config.retry_delay), ("another-secret-value", 2, 0.1)
        )
        config = AgentConfig.from_environment(UNIX, transport="tcp", port=9300)
        self.assertEqual(config.address, "tcp:127.0.0.1:9300")

    def test_no_environment_at_all_says_what_to_set(self) -> None:
        with self.assertRaises(AgentConfigError) as caught:
            AgentConfig.from_environment({})
        self.assertEqual(
            str(caught.exception),
            "SPEAR_INSTANCE_ID is not set (nor was instance_id passed): is this a Spear instance?",
        )

    def test_what_is_missing_or_wrong_is_named(self) -> None:
        cases = [
            ({**UNIX, "SPEAR_SECRET": ""}, "SPEAR_SECRET is not set"),
            ({**UNIX, "SPEAR_SOCKET_PATH": ""}, "a unix transport needs socket_path (SPEAR_SOCKET_PATH)"),
            ({**UNIX, "SPEAR_COMMUNICATION_TYPE": "quic"}, "transport 'quic' is not supported"),
            (
                {**UNIX, "SPEAR_COMMUNICATION_TYPE": "grpc"},
                "a grpc transport needs port (SPEAR_COMMUNICATION_PORT",
            ),
            (
                {**TCP, "SPEAR_TLS_CA_PATH": "/etc/ca.pem"},
                "SPEAR_TLS_CA_PATH) is for the grpc transport only",
            ),
            (
                {**TCP, "SPEAR_COMMUNICATION_PORT": "http"},
                "SPEAR_COMMUNICATION_PORT='http' is not a port number",
            ),
            (
                {**TCP, "SPEAR_COMMUNICATION_PORT": "70000"},
                "SPEAR_COMMUNICATION_PORT='70000' is not in 1..65535",
            ),
            ({**TCP, "SERVICE_ADDR": "nowhere"}, "SERVICE_ADDR='nowhere' is not host:port"),
        ]
        for environ, message in cases:
            with self.assertRaises(AgentConfigError) as caught:
                AgentConfig.from_environment(environ)
            self.assertIn(message, str(caught.exception))

    def test_bad_arguments_are_refused(self) -> None:
        self.assertRaises(TypeError, AgentConfig.from_environment, UNIX, retries=3)
        for name, value in [("max_retries", -1), ("retry_delay", -1), ("connect_timeout", 0), ("port", 0)]:
            with self.assertRaises(AgentConfigError) as caught:
                AgentConfig.from_environment(TCP, **{name: value})
            self.assertIn(name, str(caught.exception))
        with self.assertRaises(AgentConfigError):
            AgentConfig.from_environment(UNIX, retry_delay=5, max_retry_delay=1)
        with self.assertRaises(AgentConfigError) as caught:
            AgentConfig.from_environment(UNIX, await_auth_response="no")
        self.assertEqual(str(caught.exception), "await_auth_response must be True or False, not str")

    def test_retry_delays_double_up_to_the_maximum(self) -> None:
        config = AgentConfig.from_environment(UNIX, retry_delay=0.5, max_retry_delay=3)
        self.assertEqual(
            [config.retry_delay_for(attempt) for attempt in range(1, 6)], [0.5, 1.0, 2.0, 3.0, 3.0]
        )

    def test_the_defaults_are_the_protocols(self) -> None:
        config = AgentConfig.from_environment(UNIX)
        self.assertEqual(config.heartbeat_interval, constants.HEARTBEAT_INTERVAL)
        self.assertEqual(config.heartbeat_timeout, constants.HEARTBEAT_TIMEOUT)
        self.assertEqual(config.max_message_size, constants.MAX_MESSAGE_SIZE)
        self.assertEqual((config.max_retries, config.retry_delay, config.max_retry_delay), (5, 0.5, 10.0))
        self.assertTrue(config.await_auth_response)
        self.assertFalse(AgentConfig.from_environment(UNIX, await_auth_response=False).await_auth_response)
        self.assertEqual(agent_config.HEARTBEAT_INTERVAL, constants.HEARTBEAT_INTERVAL)

    def test_the_secret_is_not_in_the_repr(self) -> None:
        self.assertNotIn("a-secret", repr(AgentConfig.from_environment(UNIX)))
