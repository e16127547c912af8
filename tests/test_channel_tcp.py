"""TCP channels: loopback by default, a port from the configured range."""

from __future__ import annotations

import socket
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from spear_twisted.channels.tcp import is_loopback
from spear_twisted.wire import PORT_RANGE
from tests.channel_support import ChannelMaker, EchoAgent, execute, instance

Gen = Generator[Deferred[Any], Any, None]


def free_port_pair() -> int:
    """A port ``p`` such that ``p`` and ``p + 1`` were both free on 127.0.0.1 just now."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as neighbour:
            try:
                neighbour.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return int(port)
    raise AssertionError("no two adjacent free ports")


class TCPChannelTests(TestCase):
    def setUp(self) -> None:
        self.maker = ChannelMaker(self, "tcp")

    def occupy(self, port: int) -> None:
        listening = real_reactor.listenTCP(port, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)

    @defer.inlineCallbacks
    def test_binds_loopback_on_a_port_of_the_default_range(self) -> Gen:
        server, client = yield self.maker.pair()
        address = server.address
        self.assertEqual(address.host, "127.0.0.1")
        self.assertEqual(server.ports[0].getHost().host, "127.0.0.1")
        low, high = PORT_RANGE
        self.assertTrue(low <= address.port <= high, address.port)
        self.assertEqual(
            address.environment(),
            {
                "SPEAR_COMMUNICATION_TYPE": "tcp",
                "SPEAR_COMMUNICATION_PORT": str(address.port),
                "SERVICE_ADDR": f"127.0.0.1:{address.port}",
            },
        )
        EchoAgent(client)
        response = yield server.request_response(execute("t", "tcp"))
        self.assertEqual(response.parse_payload().output, "process:worker-1:tcp")

    @defer.inlineCallbacks
    def test_a_port_in_use_is_skipped_within_the_range(self) -> Gen:
        port = free_port_pair()
        self.occupy(port)
        server = self.maker.channel(instance("w1"), port_range=(port, port + 1))
        address = yield server.listen()
        self.assertEqual(address.port, port + 1)

    @defer.inlineCallbacks
    def test_a_full_range_fails_naming_it(self) -> Gen:
        port = free_port_pair()
        self.occupy(port)
        server = self.maker.channel(instance("w1"), port_range=(port, port))
        error = yield self.assertFailure(server.listen(), CannotListenError)
        self.assertIn(f"{port}-{port}", str(error))

    @defer.inlineCallbacks
    def test_pinned_port_is_used(self) -> Gen:
        port = free_port_pair()
        server, _client = yield self.maker.pair(spearlet={"port": port})
        self.assertEqual(server.address.port, port)

    @defer.inlineCallbacks
    def test_two_instances_never_share_a_port(self) -> Gen:
        ports = []
        for n in range(5):
            server = self.maker.channel(instance(f"w{n}"))
            ports.append((yield server.listen()).port)
        self.assertEqual(len(set(ports)), 5)

    @defer.inlineCallbacks
    def test_a_non_loopback_address_is_refused_without_allow_remote(self) -> Gen:
        server = self.maker.channel(instance("w1"), host="0.0.0.0")
        error = yield self.assertFailure(server.listen(), ValueError)
        self.assertIn("allow_remote", str(error))
        self.assertEqual(server.ports, ())

    def test_is_loopback(self) -> None:
        for host in ["127.0.0.1", "127.5.0.1", "::1", "localhost"]:
            self.assertTrue(is_loopback(host), host)
        for host in ["0.0.0.0", "10.0.0.1", "::", "example.com", ""]:
            self.assertFalse(is_loopback(host), host)
