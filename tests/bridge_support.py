"""
Helpers shared by the gRPC bridge tests (``tests/test_bridge_*.py``).

The server runs in the trial reactor on real loopback (or Unix) sockets; the
client is the real grpcio, whose calls block or run their own event loop, so
every client call runs in a thread (:func:`in_thread`, :func:`run_aio`) and
the reactor thread never blocks.  Time-driven server behaviour (deadlines,
reset rates, shutdown grace) runs on an injected ``task.Clock``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import hyperframe.frame
from twisted.internet import defer, threads
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.auth import BearerTokenAuthenticator
from spear_twisted.bridge.config import BridgeConfig
from spear_twisted.bridge.contract import CONNECT_PATH, EXECUTE_PATH, STATUS_PATH
from spear_twisted.bridge.framing import frame_message
from spear_twisted.bridge.methods import CallContext, IBridgeBackend, IConnectHandler
from spear_twisted.bridge.server import BridgeServer, make_spear_bridge
from spear_twisted.errors import UnknownTask

T = TypeVar("T")

#: The token of the test caller ``alice``.
ALICE_TOKEN = "alice-secret-token"

#: Metadata presenting ``alice``'s token.
ALICE = (("authorization", f"Bearer {ALICE_TOKEN}"),)

#: Generous real-time limit for a client call in a test (2 shared cores).
CALL_TIMEOUT = 60.0


def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
    """Run a blocking grpcio call in the reactor's thread pool."""
    return threads.deferToThread(function, *args, **kwargs)


def run_aio(make: Callable[[], Coroutine[Any, Any, T]]) -> Deferred[T]:
    """Run a ``grpc.aio`` coroutine in its own event loop, in a thread."""
    return threads.deferToThread(lambda: asyncio.run(make()))


# -- the server side ---------------------------------------------------------------------


@implementer(IBridgeBackend)
class EchoBackend:
    """
    A small real backend.

    Tasks: ``echo`` answers with the input (or the command and args);
    ``slow`` answers only when :meth:`release` is called, and records a
    cancellation; ``big`` answers with ``int(args[0])`` bytes of output;
    ``crash`` raises a bug; any other task is unknown.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[pb.ExecuteCall, CallContext]] = []
        self.pending: list[Deferred[pb.ExecuteResult]] = []
        self.cancelled = 0
        self._started: list[Deferred[None]] = []
        self._cancels: list[Deferred[None]] = []

    def execute(self, call: pb.ExecuteCall, context: CallContext) -> Any:
        self.calls.append((call, context))
        if call.task_id == "echo":
            if call.HasField("input"):
                output = call.input.decode("utf-8", "backslashreplace")
            else:
                output = " ".join([call.command, *call.args])
            return pb.ExecuteResult(
                task_id="echo",
                status=pb.EXECUTION_STATUS_COMPLETED,
                output=output,
                exit_code=0,
                duration_ms=1,
                instance_id="process:echo-1",
            )
        if call.task_id == "big":
            return pb.ExecuteResult(
                task_id="big", status=pb.EXECUTION_STATUS_COMPLETED, output="x" * int(call.args[0])
            )
        if call.task_id == "crash":
            raise RuntimeError("a bug in the backend")
        if call.task_id == "slow":
            waiter: Deferred[pb.ExecuteResult] = Deferred(self._cancelled)
            self.pending.append(waiter)
            self._fire(self._started)
            return waiter
        raise UnknownTask(f"no task {call.task_id!r}")

    def _cancelled(self, waiter: Deferred[Any]) -> None:
        self.cancelled += 1
        self._fire(self._cancels)

    @staticmethod
    def _fire(waiters: list[Deferred[None]]) -> None:
        # On the next reactor turn, not inside the server's call into the
        # backend: the test must see the server as it is once that call is over.
        def fire() -> None:
            ready = list(waiters)
            waiters.clear()
            for waiter in ready:
                waiter.callback(None)

        real_reactor.callLater(0, fire)

    def when_started(self, count: int = 1) -> Deferred[None]:
        """Fires once ``count`` slow calls are pending."""
        return self._until(lambda: len(self.pending) >= count, self._started)

    def when_cancelled(self, count: int = 1) -> Deferred[None]:
        """Fires once ``count`` slow calls were cancelled."""
        return self._until(lambda: self.cancelled >= count, self._cancels)

    @defer.inlineCallbacks
    def _until(
        self, condition: Callable[[], bool], waiters: list[Deferred[None]]
    ) -> Generator[Any, Any, None]:
        while not condition():
            waiter: Deferred[None] = Deferred()
            waiters.append(waiter)
            yield waiter

    def release(self, output: str = "released") -> None:
        """Answer every pending slow call."""
        pending, self.pending = self.pending, []
        for waiter in pending:
            if not waiter.called:
                waiter.callback(
                    pb.ExecuteResult(task_id="slow", status=pb.EXECUTION_STATUS_COMPLETED, output=output)
                )

    def status(self, request: pb.StatusRequest, context: CallContext) -> Deferred[pb.StatusReply]:
        tasks = [pb.TaskStatus(task_id="echo", instances=1, ready_instances=1, executions=len(self.calls))]
        if request.task_id:
            tasks = [task for task in tasks if task.task_id == request.task_id]
        return defer.succeed(
            pb.StatusReply(server_version="spear_twisted/test", protocol_version=1, tasks=tasks)
        )


@implementer(IConnectHandler)
class EchoConnect:
    """Answers each ``Envelope`` of a ``Connect`` stream with itself, until the client ends."""

    def __init__(self) -> None:
        self.streams: list[Any] = []
        self.errors: list[BaseException] = []

    @defer.inlineCallbacks
    def connect(self, stream: Any, context: CallContext) -> Generator[Deferred[Any], Any, None]:
        self.streams.append(stream)
        try:
            while True:
                envelope = yield stream.receive()
                if envelope is None:
                    return
                yield stream.send(envelope)
        except CancelledError:
            raise
        except Exception as e:
            self.errors.append(e)
            raise


class ServerFixture:
    """
    A bridge server listening on loopback for one test; :meth:`stop` (a
    cleanup) shuts it down and waits until every connection is gone.
    """

    def __init__(
        self,
        test: Any,
        *,
        backend: Any = None,
        connect: Any = None,
        config: BridgeConfig | None = None,
        clock: Any = None,
        authenticator: Any = "default",
        server: BridgeServer | None = None,
    ) -> None:
        self.backend = backend if backend is not None else EchoBackend()
        self.connect = connect if connect is not None else EchoConnect()
        if authenticator == "default":
            authenticator = BearerTokenAuthenticator({"alice": ALICE_TOKEN})
        self.clock = clock
        self.server = server or make_spear_bridge(
            self.backend, self.connect, config=config, authenticator=authenticator, clock=clock
        )
        self.port: IListeningPort | None = None
        test.addCleanup(self.stop)

    def listen_tcp(self) -> str:
        """Listen on 127.0.0.1, a free port; the grpcio target."""
        self.port = real_reactor.listenTCP(0, self.server, interface="127.0.0.1")
        return f"127.0.0.1:{self.port.getHost().port}"

    @defer.inlineCallbacks
    def stop(self) -> Generator[Deferred[Any], Any, None]:
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        for connection in list(self.server.connections):
            connection.abort()
        lost = [connection.when_lost() for connection in list(self.server.connections)]
        yield defer.DeferredList(lost)


# -- the grpcio client side -----------------------------------------------------------------


def execute_stub(channel: Any) -> Any:
    return channel.unary_unary(
        EXECUTE_PATH,
        request_serializer=pb.ExecuteCall.SerializeToString,
        response_deserializer=pb.ExecuteResult.FromString,
    )


def status_stub(channel: Any) -> Any:
    return channel.unary_unary(
        STATUS_PATH,
        request_serializer=pb.StatusRequest.SerializeToString,
        response_deserializer=pb.StatusReply.FromString,
    )


def connect_stub(channel: Any) -> Any:
    return channel.stream_stream(
        CONNECT_PATH,
        request_serializer=pb.Envelope.SerializeToString,
        response_deserializer=pb.Envelope.FromString,
    )


def raw_stub(channel: Any, path: str) -> Any:
    """A unary method of ``path`` that sends and returns raw bytes."""
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


def rpc_failure(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]:
    """Run a sync grpcio ``call`` that must fail: its code, details and trailing metadata."""
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details(), tuple(e.trailing_metadata() or ())
    raise AssertionError("the call succeeded")


class SyncClient:
    """A grpcio channel to ``target`` kept for one test; every call goes through a thread."""

    def __init__(self, test: Any, target: str, **options: Any) -> None:
        self.channel = grpc.insecure_channel(target, **options)
        test.addCleanup(lambda: in_thread(self.channel.close))
        self.execute = execute_stub(self.channel)
        self.status = status_stub(self.channel)
        self.connect = connect_stub(self.channel)

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        return in_thread(function, *args, **kwargs)

    def fails(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Fires with ``(code, details, trailing metadata)`` of a call that must fail."""
        return in_thread(rpc_failure, lambda: function(*args, **kwargs))


def self_signed_certificate(directory: str) -> tuple[str, str, bytes]:
    """
    A fresh self-signed certificate for ``localhost`` and 127.0.0.1 in
    ``directory``: ``(certificate path, key path, certificate PEM)``.
    """
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
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
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    os.makedirs(directory, exist_ok=True)
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    with open(key_path, "wb") as f:
        f.write(key_pem)
    return cert_path, key_path, cert_pem


# -- a raw HTTP/2 client, for what grpcio never sends -----------------------------------------


class RawH2Client(Protocol):
    """
    An HTTP/2 client on a real socket that sends whatever the test says
    (requests grpcio would not make, resets, pings) and records what comes
    back: every frame as parsed by hyperframe, headers, data, ends and resets
    per stream.

    Frames go to h2 until the server's first GOAWAY (h2 allows nothing to be
    received after one); from then on this client reads them itself, and its
    h2 still lets it send, as a peer whose requests cross the GOAWAY would.
    ``deaf`` stops answering PINGs.  ``auto_ack`` gives window back as data
    arrives.
    """

    def __init__(self, *, initial_window: int | None = None, auto_ack: bool = True) -> None:
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.initial_window = initial_window
        self.auto_ack = auto_ack
        self.deaf = False
        self.after_goaway = False
        self.frames: list[Any] = []
        self.headers: dict[int, list[list[tuple[bytes, bytes]]]] = {}
        self.data: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.made: Deferred[RawH2Client] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.closed = False
        self._buffer = b""
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def connectionMade(self) -> None:
        self.h2.initiate_connection()
        if self.initial_window is not None:
            self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.initial_window})
        self.flush()
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 9:
            frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(self._buffer[:9]))
            if len(self._buffer) < 9 + length:
                break
            raw, self._buffer = self._buffer[: 9 + length], self._buffer[9 + length :]
            frame.parse_body(memoryview(raw[9:]))
            self.frames.append(frame)
            if isinstance(frame, hyperframe.frame.GoAwayFrame):
                self.after_goaway = True
            if self.after_goaway:
                self._read_myself(frame)
            else:
                for event in self.h2.receive_data(raw):
                    self._event(event)
        self.flush()
        self._check()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self._check()
        self.lost.callback(None)

    def _event(self, event: Any) -> None:
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            self.headers.setdefault(event.stream_id, []).append(list(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            self.data[event.stream_id] = self.data.get(event.stream_id, b"") + event.data
            if self.auto_ack:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended.add(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.resets[event.stream_id] = int(event.error_code)

    def _read_myself(self, frame: Any) -> None:
        stream_id = frame.stream_id
        if isinstance(frame, hyperframe.frame.HeadersFrame):
            block = self.h2.decoder.decode(bytes(frame.data), raw=True)
            self.headers.setdefault(stream_id, []).append(list(block))
        elif isinstance(frame, hyperframe.frame.DataFrame):
            self.data[stream_id] = self.data.get(stream_id, b"") + bytes(frame.data)
        elif isinstance(frame, hyperframe.frame.RstStreamFrame):
            self.resets[stream_id] = frame.error_code
        elif isinstance(frame, hyperframe.frame.PingFrame) and "ACK" not in frame.flags and not self.deaf:
            assert self.transport is not None
            self.transport.write(
                hyperframe.frame.PingFrame(0, flags=["ACK"], opaque_data=frame.opaque_data).serialize()
            )
        if "END_STREAM" in frame.flags and isinstance(
            frame, (hyperframe.frame.HeadersFrame, hyperframe.frame.DataFrame)
        ):
            self.ended.add(stream_id)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _check(self) -> None:
        waiting, self._waiters = self._waiters, []
        for condition, waiter in waiting:
            if condition():
                waiter.callback(None)
            else:
                self._waiters.append((condition, waiter))

    def when(self, condition: Callable[[], bool]) -> Deferred[None]:
        """Fires once ``condition()`` holds after something arrived (or at once)."""
        if condition():
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append((condition, waiter))
        return waiter

    # -- sending -------------------------------------------------------------------------

    def request(
        self,
        path: str,
        body: bytes | None = None,
        *,
        method: bytes = b"POST",
        content_type: bytes | None = b"application/grpc",
        extra: list[tuple[bytes, bytes]] | None = None,
        end: bool = True,
    ) -> int:
        """Open a stream with a request; ``body`` is sent as DATA (framing is the caller's)."""
        stream_id = self.h2.get_next_available_stream_id()
        headers = [
            (b":method", method),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", b"localhost"),
            (b"te", b"trailers"),
        ]
        if content_type is not None:
            headers.append((b"content-type", content_type))
        headers += extra or []
        self.h2.send_headers(stream_id, headers, end_stream=end and body is None)
        if body is not None:
            size = self.h2.max_outbound_frame_size
            chunks = [body[offset : offset + size] for offset in range(0, len(body), size)] or [b""]
            for index, chunk in enumerate(chunks):
                self.h2.send_data(stream_id, chunk, end_stream=end and index == len(chunks) - 1)
        self.flush()
        return stream_id

    def grpc(
        self, path: str, message: Any, *, metadata: tuple[tuple[str, str], ...] = ALICE, end: bool = True
    ) -> int:
        """A gRPC request carrying ``message`` (a protobuf message)."""
        extra = [(key.encode(), value.encode()) for key, value in metadata]
        return self.request(path, frame_message(message.SerializeToString()), extra=extra, end=end)

    def reset(self, stream_id: int, code: int = 8) -> None:
        self.h2.reset_stream(stream_id, code)
        self.flush()

    # -- reading ------------------------------------------------------------------------------

    def response_headers(self, stream_id: int) -> dict[bytes, bytes]:
        """Every header field the stream received (response headers and trailers), by name."""
        return {name: value for block in self.headers.get(stream_id, []) for name, value in block}

    def frames_of(self, kind: type, stream_id: int | None = None) -> list[Any]:
        return [
            frame
            for frame in self.frames
            if isinstance(frame, kind) and (stream_id is None or frame.stream_id == stream_id)
        ]


def connect_raw_h2(port: int, **options: Any) -> Deferred[RawH2Client]:
    """A :class:`RawH2Client` connected to 127.0.0.1:``port``; fires once connected."""
    client = RawH2Client(**options)
    endpoint = TCP4ClientEndpoint(real_reactor, "127.0.0.1", port)
    return connectProtocol(endpoint, client).addCallback(lambda _: client.made)
