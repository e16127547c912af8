"""
Helpers shared by the ConnectionManager tests (``tests/test_connection*.py``).

Everything crosses real sockets on loopback (or real Unix sockets in a
temporary directory).  Time-driven behaviour uses
:class:`~tests.channel_support.ClockReactor`: the real reactor's sockets,
a ``task.Clock``'s time.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Generator
from typing import Any

import orjson
from twisted.internet import defer
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory

from spear_twisted.channels.channel import Channel
from spear_twisted.channels.config import ChannelAddress, ChannelConfig
from spear_twisted.connections import ConnectionManager, ConnectionManagerConfig
from spear_twisted.monitoring import MonitoringService
from spear_twisted.wire import (
    AuthRequest,
    AuthResponse,
    ErrorMessage,
    FrameDecoder,
    MessageType,
    Role,
    RuntimeInstanceId,
    SpearMessage,
)
from tests.channel_support import FrameCollector, credentials, instance, short_temp_dir

Gen = Generator[Deferred[Any], Any, None]

__all__ = ["FrameCollector", "credentials", "instance"]


def free_ports(count: int) -> tuple[int, int]:
    """A range ``(low, low + count - 1)`` of ports that were all free on 127.0.0.1 just now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            low = probe.getsockname()[1]
        if low + count - 1 > 65535:
            continue
        held = []
        try:
            for port in range(low + 1, low + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return (low, low + count - 1)
    raise AssertionError(f"no {count} adjacent free ports")


def socket_dir(test: Any) -> str:
    """A fresh private directory short enough for Unix socket paths, removed after ``test``."""
    directory = short_temp_dir(test)
    os.makedirs(directory, mode=0o700)
    return directory


def make_manager(
    test: Any,
    *,
    reactor: Any = None,
    validator: Any = None,
    monitoring: MonitoringService | None = None,
    **settings: Any,
) -> ConnectionManager:
    """A manager whose shutdown is a cleanup of ``test``."""
    manager = ConnectionManager(
        ConnectionManagerConfig(**settings),
        reactor=reactor or real_reactor,
        validator=validator,
        monitoring=monitoring,
    )
    test.addCleanup(manager.stopService)
    return manager


def agent_channel(
    test: Any,
    instance_id: RuntimeInstanceId,
    token: str,
    *,
    reactor: Any = None,
    observer: Any = None,
    observe_messages: bool = False,
    **config: Any,
) -> Channel:
    """An agent-side channel presenting ``token``, closed after ``test``."""
    channel = Channel(
        instance_id,
        reactor=reactor or real_reactor,
        config=ChannelConfig(**config),
        role=Role.AGENT,
        credentials=credentials(instance_id, token),
        observer=observer,
        observe_messages=observe_messages,
    )
    test.addCleanup(channel.close)
    return channel


def client_endpoint(address: ChannelAddress) -> Any:
    if address.path is not None:
        return UNIXClientEndpoint(real_reactor, address.path)
    assert address.host is not None and address.port is not None
    return TCP4ClientEndpoint(real_reactor, address.host, address.port)


def dial(channel: Channel, address: ChannelAddress) -> Deferred[Channel]:
    """Connect an agent channel to one of the manager's listeners; fires once authenticated."""
    return channel.connect(client_endpoint(address))


@defer.inlineCallbacks
def connect_raw(
    test: Any, address: ChannelAddress, endpoint: Any = None
) -> Generator[Any, Any, FrameCollector]:
    """A bare frame-speaking peer connected to ``address``, disconnected after ``test``."""
    endpoint = endpoint or client_endpoint(address)
    collector = yield endpoint.connect(Factory.forProtocol(FrameCollector))

    def disconnect() -> Deferred[Any]:
        if collector.lost.called:
            return defer.succeed(None)
        collector.transport.abortConnection()
        return collector.lost

    test.addCleanup(disconnect)
    return collector  # type: ignore[no-any-return]


def auth_request(instance_id: RuntimeInstanceId | str, token: str, request_id: int = 1) -> SpearMessage:
    return SpearMessage.auth_request(request_id, AuthRequest(str(instance_id), token, "test/1", "test"))


def raw_auth_request(body: dict[str, Any], request_id: int = 1) -> SpearMessage:
    """An ``AuthRequest`` whose payload is exactly ``body`` (valid or not)."""
    return SpearMessage(MessageType.AUTH_REQUEST, request_id, payload=orjson.dumps(body))


def auth_response(message: SpearMessage) -> AuthResponse:
    assert message.message_type is MessageType.AUTH_RESPONSE, message
    body = message.parse_payload()
    assert isinstance(body, AuthResponse)
    return body


def error_of(message: SpearMessage) -> ErrorMessage:
    assert message.message_type is MessageType.ERROR, message
    body = message.parse_payload()
    assert isinstance(body, ErrorMessage)
    return body


class LaterValidator:
    """A validator whose answers the test gives later: each call adds a Deferred to :attr:`answers`."""

    def __init__(self) -> None:
        self.answers: list[Deferred[bool]] = []

    def __call__(self, instance_id: RuntimeInstanceId, token: object) -> Deferred[bool]:
        self.answers.append(Deferred())
        return self.answers[-1]


class RawSocket:
    """
    A non-blocking client socket driven by the test, not by the reactor: it
    can connect (the kernel completes the handshake into the listener's
    backlog) and send before the reactor has accepted anything.
    """

    def __init__(self, address: ChannelAddress) -> None:
        assert address.host is not None and address.port is not None
        self.sock = socket.create_connection((address.host, address.port))
        self.sock.setblocking(False)
        self.decoder = FrameDecoder()
        self.messages: list[SpearMessage] = []
        self.closed = False

    def send(self, message: SpearMessage) -> None:
        self.sock.sendall(message.to_frame())

    def poll(self) -> None:
        """Read whatever has arrived."""
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                self.closed = True
                return
            if not data:
                self.closed = True
                return
            for body in self.decoder.feed(data):
                self.messages.append(SpearMessage.deserialize(body))

    def close(self) -> None:
        self.sock.close()
