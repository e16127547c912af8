"""
The bootstrap: the ``AuthRequest`` frame written without the codec must be
what the codec writes, and it is sent on a plain socket, with retries.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.agent import AgentConfig
from spear_twisted.agent.bootstrap import (
    AUTH_REQUEST_ID,
    Bootstrap,
    auth_request_frame,
    await_answer,
    connect_and_authenticate,
)
from spear_twisted.wire import AuthRequest, FrameDecoder, MessageType, SpearMessage, Timestamp
from tests.runtime_support import CHILD_ENV

SECRET = "a-secret-of-some-length"


def config(**overrides: object) -> AgentConfig:
    settings: dict[str, object] = {
        "instance_id": "process:echo-1",
        "secret": SECRET,
        "transport": "unix",
        "socket_path": "/nonexistent/spear.sock",
    }
    settings.update(overrides)
    return AgentConfig(**settings)  # type: ignore[arg-type]


def decode(frame: bytes) -> SpearMessage:
    [body] = FrameDecoder().feed(frame)
    return SpearMessage.deserialize(body)


class FrameTests(SynchronousTestCase):
    def test_the_frame_is_the_codecs_auth_request(self) -> None:
        now = 1_700_000_000_123_456_789
        frame = auth_request_frame(config(extra_params={"zone": "a"}), now_ns=now)
        request = AuthRequest(
            "process:echo-1", SECRET, config().client_version, "spear_twisted-python", {"zone": "a"}
        )
        expected = SpearMessage.auth_request(AUTH_REQUEST_ID, request)
        expected = SpearMessage(
            expected.message_type,
            expected.request_id,
            Timestamp.from_ns(now),
            expected.payload,
            expected.version,
        )
        self.assertEqual(frame, expected.to_frame())
        message = decode(frame)
        self.assertEqual(message.message_type, MessageType.AUTH_REQUEST)
        self.assertEqual(message.parse_payload(), request)

    @given(
        instance_id=st.text(min_size=1, max_size=40),
        secret=st.text(min_size=1, max_size=40),
        client_type=st.text(max_size=10),
        extra=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    )
    def test_any_text_is_encoded_as_the_codec_reads_it(
        self, instance_id: str, secret: str, client_type: str, extra: dict[str, str]
    ) -> None:
        settings = config(instance_id=instance_id, secret=secret, client_type=client_type, extra_params=extra)
        body = decode(auth_request_frame(settings)).parse_payload()
        self.assertEqual(body, AuthRequest(instance_id, secret, settings.client_version, client_type, extra))


class ConnectTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="spear-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.path = os.path.join(directory, "s.sock")

    def listen(self, family: int = socket.AF_UNIX) -> socket.socket:
        server = socket.socket(family, socket.SOCK_STREAM)
        self.addCleanup(server.close)
        server.bind(self.path if family == socket.AF_UNIX else ("127.0.0.1", 0))
        server.listen(1)
        return server

    def accepted(self, server: socket.socket) -> socket.socket:
        peer, _ = server.accept()
        self.addCleanup(peer.close)
        return peer

    def received(self, server: socket.socket) -> bytes:
        peer = self.accepted(server)
        peer.settimeout(10)
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            data += peer.recv(65536)
        return data

    def test_the_auth_request_is_sent_over_unix(self) -> None:
        server = self.listen()
        connection = connect_and_authenticate(config(socket_path=self.path))
        assert connection is not None
        self.addCleanup(connection.sock.close)
        self.assertEqual(self.received(server), connection.frame)
        self.assertEqual(connection.sock.gettimeout(), None)

    def test_over_unix_the_socket_module_waits_for_the_framework(self) -> None:
        server = self.listen()
        connection = connect_and_authenticate(config(socket_path=self.path))
        assert connection is not None
        self.addCleanup(connection.sock.close)
        self.assertNotIsInstance(connection.sock, socket.socket)
        peer = self.accepted(server)
        sock = connection.as_socket()
        self.assertIsInstance(sock, socket.socket)
        self.assertIs(connection.sock, sock)
        self.assertIs(connection.as_socket(), sock)
        peer.sendall(b"answer")
        self.assertEqual(sock.recv(100), b"answer")

    def test_the_bootstrap_imports_neither_socket_nor_the_wire_layer(self) -> None:
        code = (
            "import sys\n"
            "import spear_twisted.agent.bootstrap\n"
            "heavy = ('socket', 'selectors', 'txaio', 'attrs', 'spear_twisted.wire')\n"
            "loaded = [name for name in heavy if name in sys.modules]\n"
            "import json\n"
            "print(json.dumps(loaded))\n"
        )
        output = subprocess.run(
            [sys.executable, "-c", code], env=CHILD_ENV, capture_output=True, text=True, check=True
        ).stdout
        self.assertEqual(json.loads(output), [])

    def test_the_auth_request_is_sent_over_tcp(self) -> None:
        server = self.listen(socket.AF_INET)
        port = server.getsockname()[1]
        connection = connect_and_authenticate(config(transport="tcp", port=port))
        assert connection is not None
        self.addCleanup(connection.sock.close)
        self.assertEqual(decode(self.received(server)).message_type, MessageType.AUTH_REQUEST)
        self.assertEqual(connection.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)

    def test_it_retries_with_growing_delays_then_gives_up(self) -> None:
        delays: list[float] = []
        connection = connect_and_authenticate(
            config(socket_path=self.path, max_retries=3, retry_delay=0.25, max_retry_delay=0.75),
            sleep=delays.append,
        )
        self.assertIsNone(connection)
        self.assertEqual(delays, [0.25, 0.5, 0.75])

    def test_a_listener_that_appears_is_reached(self) -> None:
        attempts: list[float] = []

        def sleep(delay: float) -> None:
            attempts.append(delay)
            if len(attempts) == 2:
                self.server = self.listen()

        connection = connect_and_authenticate(config(socket_path=self.path, retry_delay=0.01), sleep=sleep)
        assert connection is not None
        self.addCleanup(connection.sock.close)
        self.assertEqual(len(attempts), 2)
        self.assertEqual(self.received(self.server), connection.frame)


class AwaitAnswerTests(SynchronousTestCase):
    """``await_answer`` waits for the spearlet's first bytes without reading them."""

    def setUp(self) -> None:
        self.agent, self.spearlet = socket.socketpair()
        self.addCleanup(self.agent.close)
        self.addCleanup(self.spearlet.close)
        self.connection = Bootstrap(self.agent, b"frame")

    def test_an_answer_is_left_for_the_framework_to_read(self) -> None:
        self.spearlet.sendall(b"answer")
        self.assertTrue(await_answer(self.connection, 10))
        self.assertEqual(self.agent.gettimeout(), None)
        self.assertEqual(self.agent.recv(100), b"answer")

    def test_a_closed_connection_ends_the_wait(self) -> None:
        self.spearlet.close()
        self.assertTrue(await_answer(self.connection, 10))
        self.assertEqual(self.agent.recv(100), b"")

    def test_without_an_answer_it_gives_up_after_the_timeout(self) -> None:
        self.assertFalse(await_answer(self.connection, 0.05))
        self.assertEqual(self.agent.gettimeout(), None)
        self.spearlet.sendall(b"late")
        self.assertEqual(self.agent.recv(100), b"late")
