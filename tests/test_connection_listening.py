"""The ConnectionManager's listeners: the port range, endpoint descriptions, TLS, the service."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import stat
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, ssl
from twisted.internet import reactor as real_reactor
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from spear_twisted.channels.channel import Channel
from spear_twisted.connections import MIN_BACKLOG, TLSConfigurationError, parse_description
from tests.channel_support import EchoAgent, execute
from tests.connection_support import (
    Gen,
    agent_channel,
    auth_request,
    connect_raw,
    dial,
    free_ports,
    instance,
    make_manager,
    socket_dir,
)


def self_signed(directory: str, *, host: str = "127.0.0.1") -> tuple[str, str, bytes]:
    """Write a fresh self-signed certificate for ``host`` and its key; ``(cert path, key path, cert PEM)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(directory, exist_ok=True)
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    with open(cert_path, "wb") as f:
        f.write(pem)
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path, pem


def tls_client(host: str, port: int, cert_pem: bytes) -> SSL4ClientEndpoint:
    """A TLS client endpoint that trusts exactly ``cert_pem`` and checks the host name."""
    options = ssl.optionsForClientTLS(host, trustRoot=ssl.Certificate.loadPEM(cert_pem))
    return SSL4ClientEndpoint(real_reactor, host, port, options)


class PortRangeTests(TestCase):
    def occupy(self, port: int) -> None:
        listening = real_reactor.listenTCP(port, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)

    @defer.inlineCallbacks
    def test_takes_the_first_free_port_of_the_range_and_reports_it(self) -> Gen:
        low, high = free_ports(3)
        manager = make_manager(self, port_range=(low, high))
        self.assertIsNone(manager.listen_addr)
        address = yield manager.start_listening()
        self.assertEqual((address.transport, address.host, address.port), ("tcp", "127.0.0.1", low))
        self.assertEqual(manager.listen_addr, address)
        self.assertEqual(str(address), f"tcp:127.0.0.1:{low}")
        self.assertEqual(address.environment()["SPEAR_COMMUNICATION_PORT"], str(low))

    @defer.inlineCallbacks
    def test_a_taken_port_is_skipped(self) -> Gen:
        low, high = free_ports(3)
        self.occupy(low)
        manager = make_manager(self, port_range=(low, high))
        address = yield manager.start_listening()
        self.assertEqual(address.port, low + 1)

    @defer.inlineCallbacks
    def test_managers_started_together_never_share_a_port_and_a_full_range_is_named(self) -> Gen:
        low, high = free_ports(3)
        managers = [make_manager(self, port_range=(low, high)) for _ in range(4)]
        results = yield defer.DeferredList([m.start_listening() for m in managers], consumeErrors=True)
        ports = [result.port for ok, result in results if ok]
        self.assertEqual(sorted(ports), [low, low + 1, low + 2])
        [failure] = [result for ok, result in results if not ok]
        failure.trap(CannotListenError)
        self.assertIn(f"{low}-{high}", str(failure.value))

    @defer.inlineCallbacks
    def test_an_explicit_port_is_used(self) -> Gen:
        low, _ = free_ports(1)
        manager = make_manager(self)
        address = yield manager.start_listening(low)
        self.assertEqual(address.port, low)

    @defer.inlineCallbacks
    def test_the_backlog_is_at_least_1024(self) -> Gen:
        directory = socket_dir(self)
        manager = make_manager(self)
        yield manager.start_listening()
        yield manager.start_listening("tcp:0:interface=127.0.0.1")
        yield manager.start_listening(f"unix:{directory}/a.sock")
        for port in manager.listeners.ports:
            self.assertGreaterEqual(port.backlog, MIN_BACKLOG)
        self.assertGreaterEqual(len(manager.listeners.ports), 3)
        error = yield self.assertFailure(
            manager.start_listening("tcp:0:interface=127.0.0.1:backlog=50"), ValueError
        )
        self.assertIn("backlog must be at least 1024", str(error))

    @defer.inlineCallbacks
    def test_stop_listening_releases_the_port(self) -> Gen:
        low, high = free_ports(1)
        manager = make_manager(self, port_range=(low, high))
        yield manager.start_listening()
        yield manager.stop_listening()
        self.assertEqual(manager.listening_addresses, [])
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", low))


class DescriptionTests(TestCase):
    @defer.inlineCallbacks
    def test_tcp_description_listens_and_authenticates(self) -> Gen:
        manager = make_manager(self)
        assert manager.secrets is not None
        address = yield manager.start_listening("tcp:0:interface=127.0.0.1")
        self.assertEqual((address.transport, address.host), ("tcp", "127.0.0.1"))
        worker = instance("w")
        agent = agent_channel(self, worker, manager.secrets.issue(worker))
        yield dial(agent, address)
        self.assertTrue(manager.channel_for(worker).is_connected())

    @defer.inlineCallbacks
    def test_a_tcp_description_on_every_interface_is_refused_without_allow_remote(self) -> Gen:
        manager = make_manager(self)
        for description in ("tcp:0", "tcp:0:interface=0.0.0.0", "ssl:0:privateKey=k.pem"):
            error = yield self.assertFailure(manager.start_listening(description), ValueError)
            self.assertIn("not loopback", str(error))
        self.assertEqual(manager.listening_addresses, [])

    @defer.inlineCallbacks
    def test_a_unix_description_without_a_path_is_refused(self) -> Gen:
        manager = make_manager(self)
        error = yield self.assertFailure(manager.start_listening("unix:"), ValueError)
        self.assertIn("names no socket path", str(error))
        self.assertEqual(manager.listening_addresses, [])

    @defer.inlineCallbacks
    def test_unix_description_replaces_a_stale_socket_and_stop_removes_the_file(self) -> Gen:
        directory = socket_dir(self)
        path = os.path.join(directory, "agents.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
        manager = make_manager(self)
        assert manager.secrets is not None
        address = yield manager.start_listening(f"unix:{path}:mode=600")
        self.assertEqual((address.transport, address.path), ("unix", path))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        worker = instance("w")
        agent = agent_channel(self, worker, manager.secrets.issue(worker))
        yield dial(agent, address)
        yield manager.stop_listening()
        self.assertEqual(os.listdir(directory), [])
        self.assertTrue(manager.channel_for(worker).is_connected(), "connections outlive their listener")

    @defer.inlineCallbacks
    def test_a_live_unix_socket_is_never_taken_over(self) -> Gen:
        directory = socket_dir(self)
        path = os.path.join(directory, "agents.sock")
        first = make_manager(self)
        yield first.start_listening(f"unix:{path}")
        second = make_manager(self)
        yield self.assertFailure(second.start_listening(f"unix:{path}"), CannotListenError)
        self.assertEqual(len(first.listening_addresses), 1)

    def test_parse_description(self) -> None:
        self.assertEqual(
            parse_description(r"unix:/run/a\:b.sock:mode=600"), ("unix", ["/run/a:b.sock"], {"mode": "600"})
        )
        self.assertEqual(
            parse_description("TCP:9100:interface=127.0.0.1:backlog=2048"),
            ("tcp", ["9100"], {"interface": "127.0.0.1", "backlog": "2048"}),
        )
        for bad in ("", "tcp", ":9100"):
            with self.assertRaises(ValueError):
                parse_description(bad)


class TLSTests(TestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        self.cert_path, self.key_path, self.cert_pem = self_signed(self.directory)

    @defer.inlineCallbacks
    def handshake_and_round_trip(self, manager: Any, address: Any) -> Gen:
        worker = instance("tls-worker")
        agent = agent_channel(self, worker, manager.secrets.issue(worker))
        yield agent.connect(tls_client("127.0.0.1", address.port, self.cert_pem))
        channel: Channel = yield manager.channel_for(worker).when_connected()
        EchoAgent(agent)
        response = yield channel.request_response(execute("t", "secure"))
        self.assertEqual(response.parse_payload().output, "process:tls-worker:secure")
        return channel

    @defer.inlineCallbacks
    def test_enable_tls_serves_the_port_range_over_tls(self) -> Gen:
        manager = make_manager(
            self, enable_tls=True, tls_cert_path=self.cert_path, tls_key_path=self.key_path
        )
        address = yield manager.start_listening()
        self.assertEqual(address.transport, "ssl")
        channel = yield self.handshake_and_round_trip(manager, address)
        self.assertEqual(channel.transport_name, "ssl")
        state = manager.get_connection_by_instance(channel.instance_id)
        self.assertEqual(state.transport, "ssl")

    @defer.inlineCallbacks
    def test_plain_frames_on_a_tls_port_never_authenticate(self) -> Gen:
        manager = make_manager(
            self, enable_tls=True, tls_cert_path=self.cert_path, tls_key_path=self.key_path
        )
        assert manager.secrets is not None
        address = yield manager.start_listening()
        worker = instance("w")
        raw = yield connect_raw(self, address)
        raw.send(auth_request(worker, manager.secrets.issue(worker)))
        yield raw.lost
        self.assertEqual(raw.messages, [])
        self.assertIsNone(manager.get_connection_by_instance(worker))

    @defer.inlineCallbacks
    def test_ssl_description(self) -> Gen:
        manager = make_manager(self)
        description = f"ssl:0:interface=127.0.0.1:privateKey={self.key_path}:certKey={self.cert_path}"
        address = yield manager.start_listening(description)
        self.assertEqual(address.transport, "ssl")
        yield self.handshake_and_round_trip(manager, address)

    @defer.inlineCallbacks
    def test_unusable_certificate_files_fail_naming_the_file(self) -> Gen:
        with open(self.cert_path, "w") as f:
            f.write("not a certificate\n")
        manager = make_manager(
            self, enable_tls=True, tls_cert_path=self.cert_path, tls_key_path=self.key_path
        )
        error = yield self.assertFailure(manager.start_listening(), TLSConfigurationError)
        self.assertIn(self.cert_path, str(error))
        self.assertEqual(manager.listening_addresses, [])


class ServiceTests(TestCase):
    @defer.inlineCallbacks
    def test_start_listens_on_the_range_and_stop_closes_everything(self) -> Gen:
        low, high = free_ports(2)
        manager = make_manager(self, port_range=(low, high))
        assert manager.secrets is not None
        manager.startService()
        self.assertEqual(manager.listen_addr.port, low)
        worker = instance("w")
        agent = agent_channel(self, worker, manager.secrets.issue(worker))
        yield dial(agent, manager.listen_addr)
        waiting = agent.connection.when_lost()
        yield manager.stopService()
        yield waiting
        self.assertEqual(manager.get_connection_count(), 0)
        self.assertEqual(manager.listening_addresses, [])

    @defer.inlineCallbacks
    def test_start_listens_on_the_configured_endpoints(self) -> Gen:
        directory = socket_dir(self)
        path = os.path.join(directory, "agents.sock")
        manager = make_manager(self, endpoints=(f"unix:{path}", "tcp:0:interface=127.0.0.1"))
        manager.startService()
        transports = [address.transport for address in manager.listening_addresses]
        self.assertEqual(transports, ["unix", "tcp"])
        yield manager.stopService()
        self.assertFalse(os.path.exists(path))

    def test_a_listener_that_cannot_start_fails_the_start_up(self) -> None:
        low, high = free_ports(1)
        listening = real_reactor.listenTCP(low, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        manager = make_manager(self, port_range=(low, high))
        self.assertRaises(CannotListenError, manager.startService)
