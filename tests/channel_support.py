"""
Helpers shared by the channel tests (``tests/test_channel*.py``).

Transport behaviour is tested over real sockets with the real reactor: tests
wait on Deferreds, or on a bounded number of reactor turns to show that
something did *not* happen; nothing sleeps on wall time.  Time-driven
behaviour (timeouts, heartbeats, latency, uptime) uses :class:`ClockReactor`:
sockets from the real reactor, time from a ``task.Clock``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from spear_twisted.auth import SecretRegistry
from spear_twisted.bridge.call import DATA
from spear_twisted.bridge.channel import GrpcChannel
from spear_twisted.bridge.client import ConnectCall
from spear_twisted.bridge.contract import envelope_from_message, message_from_envelope
from spear_twisted.bridge.session import StreamTransport
from spear_twisted.channels.channel import Channel
from spear_twisted.channels.config import ChannelAddress, ChannelConfig
from spear_twisted.channels.memory import MemoryHub
from spear_twisted.channels.memory_channel import MemoryChannel
from spear_twisted.channels.tcp import TCPChannel
from spear_twisted.channels.unix import UnixChannel
from spear_twisted.errors import ConnectionClosed, ConnectionLost
from spear_twisted.wire import (
    AuthRequest,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionStatus,
    FrameDecoder,
    MessageType,
    Role,
    RuntimeInstanceId,
    RuntimeType,
    SpearMessage,
    StreamDataMessage,
)

CHANNEL_TYPES: dict[str, type[Channel]] = {
    "unix": UnixChannel,
    "tcp": TCPChannel,
    "grpc": GrpcChannel,
    "memory": MemoryChannel,
}

#: Reactor turns after which something that has not happened is taken not to happen.
QUIET_TURNS = 50

#: Seconds :func:`wait_until` gives a condition before failing the test: a
#: loaded machine's margin (what is waited for may be another thread or
#: process, starved of CPU).
WAIT_SECONDS = 60.0

#: Reactor turns :func:`wait_until` checks its condition after each turn,
#: before it checks every :data:`POLL_INTERVAL` seconds instead.
EAGER_TURNS = 100

#: Seconds between checks once the eager turns are over: the reactor sleeps
#: in between, leaving the CPU (and the GIL) to whatever it waits for.
POLL_INTERVAL = 0.002


@implementer(IReactorTime)
class ClockReactor:
    """
    A reactor whose sockets are the real reactor's and whose time is ``clock``.

    ``listenTCP``, ``connectUNIX`` and the rest go to the real reactor, so the
    bytes really cross sockets; ``callLater`` and ``seconds`` go to the
    ``task.Clock``, so timeouts fire only when the test advances it.
    """

    def __init__(self, clock: task.Clock | None = None, real: Any = real_reactor) -> None:
        self.clock = clock or task.Clock()
        self._real = real

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kw)

    def seconds(self) -> float:
        return self.clock.seconds()

    def getDelayedCalls(self) -> Any:
        return self.clock.getDelayedCalls()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def turns(count: int = QUIET_TURNS) -> Deferred[None]:
    """Fires after ``count`` turns of the real reactor."""

    @defer.inlineCallbacks
    def run() -> Generator[Deferred[Any], Any, None]:
        for _ in range(count):
            yield task.deferLater(real_reactor, 0, lambda: None)

    return run()  # type: ignore[no-any-return]


@defer.inlineCallbacks
def wait_until(
    condition: Callable[[], bool], what: str, seconds: float = WAIT_SECONDS
) -> Generator[Deferred[Any], Any, None]:
    """
    Run the reactor until ``condition()`` holds; fail naming ``what`` if it
    does not within ``seconds`` of real time.

    The limit is time, not reactor turns: turns pass as fast as the reactor
    can spin, while what the condition waits for (a grpcio thread, another
    process) may be starved on a loaded machine.  The condition is checked
    after each of the first turns (most conditions hold within a few), then
    every :data:`POLL_INTERVAL` seconds so that the reactor does not spin.
    """
    deadline = real_reactor.seconds() + seconds
    for _ in range(EAGER_TURNS):
        if condition():
            return
        yield task.deferLater(real_reactor, 0, lambda: None)
    while not condition():
        if real_reactor.seconds() >= deadline:
            raise AssertionError(f"{what} did not happen within {seconds:g} s")
        yield task.deferLater(real_reactor, POLL_INTERVAL, lambda: None)


def instance(name: str, runtime_type: RuntimeType = RuntimeType.PROCESS) -> RuntimeInstanceId:
    return RuntimeInstanceId(runtime_type, name)


def credentials(instance_id: RuntimeInstanceId, token: str) -> AuthRequest:
    return AuthRequest(str(instance_id), token, "test/1", "test")


def execute(task_id: str = "task", *args: str, data: bytes | None = None) -> SpearMessage:
    """An ``ExecuteRequest`` message (its request id is replaced by ``request_response``)."""
    return SpearMessage.execute_request(0, ExecuteRequest(task_id, "run", args, input_data=data))


def stream(sequence: int, data: bytes = b"", stream_id: str = "s") -> SpearMessage:
    """A ``StreamData`` message numbered ``sequence`` (allowed in both directions)."""
    return SpearMessage.stream_data(0, StreamDataMessage(stream_id, data, False, sequence))


def answer(request: SpearMessage, output: str) -> SpearMessage:
    """The ``ExecuteResponse`` to ``request`` with ``output``."""
    body = request.parse_payload()
    assert isinstance(body, ExecuteRequest)
    return SpearMessage.execute_response(
        request.request_id, ExecuteResponse(body.task_id, ExecutionStatus.COMPLETED, output)
    )


def buffered_bytes(transport: Any) -> int:
    """
    Bytes written to ``transport`` and not yet handed to the kernel (or, for
    a memory transport, not yet read by the peer).

    Socket transports have no public view of their write buffer: this reads
    ``FileDescriptor``'s private ``dataBuffer``/``offset``/``_tempDataLen``.
    A gRPC stream's are the messages it holds back from HTTP/2 (the peer's
    window is closed).
    """
    if isinstance(transport, StreamTransport):
        outbox = transport.stream.outbox  # type: ignore[attr-defined]
        return sum(len(payload) for kind, payload, _ in outbox if kind == DATA)
    if hasattr(transport, "buffered_bytes"):
        return int(transport.buffered_bytes)
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def high_water(transport: Any) -> int:
    """The buffered size above which ``transport`` pauses its producer."""
    if isinstance(transport, StreamTransport):
        return 0  # a session's send waits as soon as HTTP/2 cannot take the message
    hub = getattr(transport, "hub", None)
    if hub is not None:
        return int(hub.high_water)
    return int(transport.bufferSize)


class EchoAgent:
    """
    Serves an agent-side channel: each ``ExecuteRequest`` is answered with
    ``"<instance id>:<args joined by spaces>"``; every other message is kept
    in :attr:`other`.  Stops when the channel is closed.
    """

    def __init__(self, channel: Channel, *, answering: bool = True) -> None:
        self.channel = channel
        self.answering = answering
        self.requests: list[SpearMessage] = []
        self.other: list[SpearMessage] = []
        self._arrivals: list[tuple[Callable[[], bool], Deferred[None]]] = []
        self.done = self._serve()

    @defer.inlineCallbacks
    def _serve(self) -> Generator[Deferred[Any], Any, None]:
        while True:
            try:
                message = yield self.channel.receive()
            except ConnectionClosed:
                return
            if message.message_type is MessageType.EXECUTE_REQUEST:
                self.requests.append(message)
                if self.answering:
                    body = message.parse_payload()
                    assert isinstance(body, ExecuteRequest)
                    output = f"{self.channel.instance_id}:{' '.join(body.args)}"
                    try:
                        yield self.channel.send(answer(message, output))
                    except (ConnectionLost, ConnectionClosed):
                        pass
            else:
                self.other.append(message)
            self._check_arrivals()

    def _check_arrivals(self) -> None:
        waiting, self._arrivals = self._arrivals, []
        for condition, waiter in waiting:
            if condition():
                waiter.callback(None)
            else:
                self._arrivals.append((condition, waiter))

    def when(self, condition: Callable[[], bool]) -> Deferred[None]:
        """Fires once ``condition()`` holds after a message arrived (or at once)."""
        if condition():
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._arrivals.append((condition, waiter))
        return waiter

    def when_requests(self, count: int) -> Deferred[None]:
        return self.when(lambda: len(self.requests) >= count)


class FrameCollector(protocol.Protocol):
    """
    A bare peer that speaks frames, not the session: it writes what the test
    gives it and keeps every message it receives.
    """

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.messages: list[SpearMessage] = []
        self.made: Deferred[FrameCollector] = Deferred()
        self.lost: Deferred[Any] = Deferred()
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        for body in self.decoder.feed(data):
            self.messages.append(SpearMessage.deserialize(body))
        waiting, self._waiting = self._waiting, []
        for count, waiter in waiting:
            if len(self.messages) >= count:
                waiter.callback(None)
            else:
                self._waiting.append((count, waiter))

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self.lost.callback(reason.value)

    def send(self, message: SpearMessage) -> None:
        self.transport.write(message.to_frame())  # type: ignore[union-attr]

    def when_messages(self, count: int) -> Deferred[None]:
        if len(self.messages) >= count:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting.append((count, waiter))
        return waiter


class EnvelopeCollector:
    """
    :class:`FrameCollector` for the gRPC bridge: a bare ``Connect`` call that
    sends what the test gives it and keeps every message it receives;
    ``lost`` fires when the call ends.
    """

    def __init__(self, call: ConnectCall) -> None:
        self.call = call
        self.messages: list[SpearMessage] = []
        self.lost: Deferred[Any] = Deferred()
        self._waiting: list[tuple[int, Deferred[None]]] = []
        call.set_receiver(self._received, self.lost.callback)

    def _received(self, envelope: Any, _size: int) -> None:
        self.messages.append(message_from_envelope(envelope))
        waiting, self._waiting = self._waiting, []
        for count, waiter in waiting:
            if len(self.messages) >= count:
                waiter.callback(None)
            else:
                self._waiting.append((count, waiter))

    def send(self, message: SpearMessage) -> None:
        self.call.send(envelope_from_message(message)).addErrback(lambda _: None)

    def when_messages(self, count: int) -> Deferred[None]:
        if len(self.messages) >= count:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting.append((count, waiter))
        return waiter


def connect_raw(address: ChannelAddress, hub: MemoryHub | None = None) -> Deferred[Any]:
    """Connect a :class:`FrameCollector` (an :class:`EnvelopeCollector` for gRPC) to ``address``."""
    factory = protocol.Factory.forProtocol(FrameCollector)
    if address.transport == "grpc":
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        assert address.host is not None and address.port is not None
        call = ConnectCall(clock=real_reactor, authority=f"{address.host}:{address.port}")
        endpoint = TCP4ClientEndpoint(real_reactor, address.host, address.port)
        return connectProtocol(endpoint, call).addCallback(  # type: ignore[no-any-return]
            lambda _: EnvelopeCollector(call)
        )
    if address.path is not None:
        from twisted.internet.endpoints import UNIXClientEndpoint

        connecting = UNIXClientEndpoint(real_reactor, address.path).connect(factory)
    elif address.port is not None:
        from twisted.internet.endpoints import TCP4ClientEndpoint

        connecting = TCP4ClientEndpoint(real_reactor, address.host, address.port).connect(factory)
    else:
        assert hub is not None and address.name is not None
        connecting = hub.connect(address.name, factory)
    return connecting  # type: ignore[no-any-return]


def short_temp_dir(test: Any) -> str:
    """
    A runtime directory path (not yet created) under a fresh private temporary
    directory, removed after ``test``.

    ``TestCase.mktemp()`` paths are longer than a Unix socket address may be
    (108 bytes), so this one lives directly under the system's temp directory.
    """
    base = tempfile.mkdtemp(prefix="spear-test-")
    test.addCleanup(shutil.rmtree, base, True)
    return os.path.join(base, "run")


class ChannelMaker:
    """
    Makes channels for one transport and registers their closing as cleanups
    of ``test``; :meth:`pair` connects a spearlet-side and an agent-side one.
    """

    def __init__(self, test: Any, transport: str) -> None:
        self.test = test
        self.transport = transport
        self.registry = SecretRegistry()
        self.hub = MemoryHub(real_reactor)
        self.runtime_dir = short_temp_dir(test)

    def config(self, **overrides: Any) -> ChannelConfig:
        settings: dict[str, Any] = {"runtime_dir": self.runtime_dir}
        settings.update(overrides)
        return ChannelConfig(**settings)

    def channel(
        self,
        instance_id: RuntimeInstanceId,
        *,
        role: Role = Role.SPEARLET,
        token: str | None = None,
        reactor: Any = None,
        observer: Any = None,
        observe_messages: bool = False,
        **config: Any,
    ) -> Channel:
        """A channel of this transport; agent-side channels present ``token``."""
        extra: dict[str, Any] = {"hub": self.hub} if self.transport == "memory" else {}
        if role is Role.SPEARLET:
            extra["validator"] = self.registry
        else:
            assert token is not None
            extra["credentials"] = credentials(instance_id, token)
        made = CHANNEL_TYPES[self.transport](
            instance_id,
            reactor=reactor or real_reactor,
            config=self.config(**config),
            role=role,
            observer=observer,
            observe_messages=observe_messages,
            **extra,
        )
        self.test.addCleanup(made.close)
        return made

    def dial(self, channel: Channel, address: ChannelAddress) -> Deferred[Channel]:
        """``channel.connect_to(address)`` in this transport's terms."""
        if address.path is not None:
            return channel.connect_to(address.path)  # type: ignore[attr-defined,no-any-return]
        if address.port is not None:
            return channel.connect_to(address.host, address.port)  # type: ignore[attr-defined,no-any-return]
        return channel.connect_to(address.name)  # type: ignore[attr-defined,no-any-return]

    @defer.inlineCallbacks
    def pair(
        self,
        instance_id: RuntimeInstanceId | None = None,
        *,
        agent_dials: bool = True,
        reactor: Any = None,
        spearlet: dict[str, Any] | None = None,
        agent: dict[str, Any] | None = None,
    ) -> Generator[Deferred[Any], Any, tuple[Channel, Channel]]:
        """
        A connected ``(spearlet channel, agent channel)`` for ``instance_id``;
        the agent dials the spearlet, or the spearlet dials the agent.
        """
        instance_id = instance_id or instance("worker-1")
        token = self.registry.issue(instance_id)
        server = self.channel(instance_id, reactor=reactor, **(spearlet or {}))
        client = self.channel(instance_id, role=Role.AGENT, token=token, reactor=reactor, **(agent or {}))
        listener, dialler = (server, client) if agent_dials else (client, server)
        address = yield listener.listen()
        yield self.dial(dialler, address)
        yield server.when_connected()
        yield client.when_connected()
        return server, client
