"""The bridge over h2c on TCP, a Unix socket, and TLS with ALPN ``h2``; the listening service."""

from __future__ import annotations

import os
import socket
from collections.abc import Generator
from typing import Any

import grpc
import grpc.aio
from twisted.internet import defer
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import TestCase

from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.endpoints import ALPN_H2, H2TLSServerParser, h2_tls_endpoint
from spear_twisted.bridge.server import BridgeService
from spear_twisted.connections.tls import TLSConfigurationError
from tests.bridge_support import (
    ALICE,
    CALL_TIMEOUT,
    ServerFixture,
    connect_stub,
    execute_stub,
    in_thread,
    run_aio,
    self_signed_certificate,
)
from tests.channel_support import short_temp_dir

Gen = Generator[Deferred[Any], Any, None]


def echo_over(channel: Any, text: str) -> str:
    result = execute_stub(channel)(
        pb.ExecuteCall(task_id="echo", input=text.encode()), metadata=ALICE, timeout=CALL_TIMEOUT
    )
    return str(result.output)


def secure_echo(target: str, cert_pem: bytes, text: str) -> str:
    credentials = grpc.ssl_channel_credentials(root_certificates=cert_pem)
    with grpc.secure_channel(target, credentials) as channel:
        return echo_over(channel, text)


def insecure_echo(target: str, text: str) -> str:
    with grpc.insecure_channel(target) as channel:
        return echo_over(channel, text)


class TLSTests(TestCase):
    def setUp(self) -> None:
        self.cert_path, self.key_path, self.cert_pem = self_signed_certificate(self.mktemp())
        self.fixture = ServerFixture(self)

    @defer.inlineCallbacks
    def test_grpcio_negotiates_h2_with_alpn(self) -> Gen:
        endpoint = h2_tls_endpoint(real_reactor, 0, self.cert_path, self.key_path)
        port = yield endpoint.listen(self.fixture.server)
        self.fixture.port = port
        target = f"localhost:{port.getHost().port}"
        credentials = grpc.ssl_channel_credentials(root_certificates=self.cert_pem)
        channel = grpc.secure_channel(target, credentials)
        self.addCleanup(in_thread, channel.close)
        output = yield in_thread(echo_over, channel, "over tls")
        self.assertEqual(output, "over tls")
        connection = next(iter(self.fixture.server.connections))
        self.assertEqual(connection.transport.negotiatedProtocol, ALPN_H2)

    @defer.inlineCallbacks
    def test_the_h2tls_description_and_grpc_aio(self) -> Gen:
        description = f"h2tls:port=0:certKey={self.cert_path}:privateKey={self.key_path}"
        port = yield serverFromString(real_reactor, description).listen(self.fixture.server)
        self.fixture.port = port
        self.assertEqual(port.getHost().host, "127.0.0.1")
        target = f"localhost:{port.getHost().port}"
        cert_pem = self.cert_pem

        async def scenario() -> list[int]:
            credentials = grpc.ssl_channel_credentials(root_certificates=cert_pem)
            async with grpc.aio.secure_channel(target, credentials) as channel:
                call = connect_stub(channel)(timeout=CALL_TIMEOUT)
                seen = []
                for n in range(20):
                    await call.write(pb.Envelope(request_id=n))
                    seen.append((await call.read()).request_id)
                await call.done_writing()
                return seen

        seen = yield run_aio(scenario)
        self.assertEqual(seen, list(range(20)))

    def test_bad_descriptions_say_what_is_missing(self) -> None:
        parser = H2TLSServerParser()
        with self.assertRaises(ValueError) as caught:
            parser.parseStreamServer(real_reactor, privateKey=self.key_path)
        self.assertIn("port", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            parser.parseStreamServer(real_reactor, "0")
        self.assertIn("privateKey", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            parser.parseStreamServer(real_reactor, "0", privateKey=self.key_path, sslmethod="TLSv1")
        self.assertIn("sslmethod", str(caught.exception))
        with self.assertRaises(TLSConfigurationError) as raised:
            parser.parseStreamServer(real_reactor, "0", privateKey=os.path.join(self.mktemp(), "missing.pem"))
        self.assertIn("missing.pem", str(raised.exception))

    @defer.inlineCallbacks
    def test_a_plaintext_client_cannot_talk_to_the_tls_port(self) -> Gen:
        endpoint = h2_tls_endpoint(real_reactor, 0, self.cert_path, self.key_path)
        port = yield endpoint.listen(self.fixture.server)
        self.fixture.port = port
        target = f"127.0.0.1:{port.getHost().port}"

        def attempt() -> Any:
            with grpc.insecure_channel(target) as channel:
                try:
                    echo_over_short(channel)
                except grpc.RpcError as e:
                    return e.code()
            return None

        code = yield in_thread(attempt)
        self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)


def echo_over_short(channel: Any) -> None:
    execute_stub(channel)(pb.ExecuteCall(task_id="echo"), metadata=ALICE, timeout=CALL_TIMEOUT)


class UnixSocketTests(TestCase):
    @defer.inlineCallbacks
    def test_grpcio_over_a_unix_socket(self) -> Gen:
        # The directory first: cleanups run last-in first-out, the port must close before it goes.
        path = os.path.join(short_temp_dir(self) + "-b", "bridge.sock")
        os.makedirs(os.path.dirname(path), mode=0o700)
        fixture = ServerFixture(self)
        fixture.port = real_reactor.listenUNIX(path, fixture.server, mode=0o600)
        output = yield in_thread(insecure_echo, f"unix:{path}", "over unix")
        self.assertEqual(output, "over unix")
        self.assertEqual(fixture.backend.calls[0][1].caller, "alice")


class ServiceTests(TestCase):
    @defer.inlineCallbacks
    def test_listens_on_every_description_and_stops_gracefully(self) -> Gen:
        cert_path, key_path, cert_pem = self_signed_certificate(self.mktemp())
        path = os.path.join(short_temp_dir(self) + "-s", "bridge.sock")
        os.makedirs(os.path.dirname(path), mode=0o700)
        fixture = ServerFixture(self)
        service = BridgeService(
            fixture.server,
            [
                "tcp:0:interface=127.0.0.1",
                f"unix:{path}:mode=600",
                f"h2tls:port=0:certKey={cert_path}:privateKey={key_path}",
            ],
            reactor=real_reactor,
        )
        service.startService()
        ports = yield service.when_listening()
        self.assertEqual(len(ports), 3)
        tcp, _unix, tls = ports
        outputs = yield in_thread(
            lambda: [
                insecure_echo(f"127.0.0.1:{tcp.getHost().port}", "tcp"),
                insecure_echo(f"unix:{path}", "unix"),
                secure_echo(f"localhost:{tls.getHost().port}", cert_pem, "tls"),
            ]
        )
        self.assertEqual(outputs, ["tcp", "unix", "tls"])
        yield service.stopService()
        self.assertEqual(service.ports, [])
        self.assertEqual(fixture.server.connections, set())
        self.assertFalse(os.path.exists(path))
        self.assertIsNone(fixture.server.buildProtocol(None))

    def test_a_non_loopback_address_needs_allow_remote(self) -> None:
        fixture = ServerFixture(self)
        service = BridgeService(fixture.server, ["tcp:0"], reactor=real_reactor)
        with self.assertRaises(ValueError) as caught:
            service.startService()
        self.assertIn("allow_remote", str(caught.exception))
        self.assertEqual(service.ports, [])
        service = BridgeService(fixture.server, ["tcp:0"], reactor=real_reactor, allow_remote=True)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(service.ports[0].getHost().host, "0.0.0.0")

    def test_a_bind_error_is_raised_at_start(self) -> None:
        fixture = ServerFixture(self)
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        service = BridgeService(
            fixture.server,
            ["tcp:0:interface=127.0.0.1", f"tcp:{busy}:interface=127.0.0.1"],
            reactor=real_reactor,
        )
        with self.assertRaises(CannotListenError):
            service.startService()
        self.assertFalse(service.running)
        self.assertEqual(service.ports, [])
