"""
Connecting and presenting the ``AuthRequest`` with a plain blocking socket,
before the event loop framework is imported.

An agent's start-up is dominated by imports: Python itself, then asyncio or
Twisted and the wire layer.  The spearlet considers the instance
authenticated as soon as it has validated the ``AuthRequest``; so the entry
point connects and sends that one frame first, with nothing but the
standard library's C module ``_socket``, waits (:func:`await_answer`) until the
spearlet's answer has arrived, and only then imports its framework, adopts
the connected socket, and reads the ``AuthResponse`` through the wire
layer's session as usual.  Whatever the spearlet sends meanwhile waits in
the socket.

The frame is written here by hand (serde's shapes of PROTOCOL.md sections 2
and 3) because the codec that would write it is what takes long to import;
the session checks it once the wire layer is loaded, by decoding it.
"""

from __future__ import annotations

import time

from spear_twisted.agent.config import AgentConfig, say

try:
    # The C module: ``socket`` (its enums, ``selectors``) would add some
    # 8 ms to a start of 20; the framework imports it after authenticating.
    import _socket as sockets
except ImportError:  # another Python than CPython
    import socket as sockets  # type: ignore[no-redef]

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

try:
    from _json import encode_basestring_ascii as _quote
except ImportError:  # another Python than CPython
    from json import dumps as _quote

#: ``request_id`` of the bootstrap's ``AuthRequest`` (the handshake's control id).
AUTH_REQUEST_ID = 0

#: The protocol version written in the envelope.
PROTOCOL_VERSION = 1


def auth_request_frame(config: AgentConfig, *, now_ns: int | None = None) -> bytes:
    """The whole frame (length prefix and JSON text) of ``config``'s ``AuthRequest``."""
    params = ",".join(f"{_quote(key)}:{_quote(value)}" for key, value in config.extra_params.items())
    body = (
        f'{{"instance_id":{_quote(config.instance_id)},"token":{_quote(config.secret)},'
        f'"client_version":{_quote(config.client_version)},"client_type":{_quote(config.client_type)},'
        f'"extra_params":{{{params}}}}}'
    ).encode("ascii")
    seconds, nanos = divmod(time.time_ns() if now_ns is None else now_ns, 10**9)
    envelope = (
        f'{{"message_type":"AuthRequest","request_id":{AUTH_REQUEST_ID},'
        f'"timestamp":{{"secs_since_epoch":{seconds},"nanos_since_epoch":{nanos}}},'
        f'"payload":[{",".join(map(str, body))}],"version":{PROTOCOL_VERSION}}}'
    ).encode("ascii")
    return len(envelope).to_bytes(4, "big") + envelope


class Bootstrap:
    """
    A connected socket on which the ``AuthRequest`` ``frame`` has been sent
    (``sock``: over unix, the C module's socket, without the methods
    :mod:`socket` adds).
    """

    __slots__ = ("frame", "sock")

    def __init__(self, sock: sockets.socket, frame: bytes) -> None:
        self.sock = sock
        self.frame = frame

    def as_socket(self) -> socket.socket:
        """The connection as a :class:`socket.socket` (which ``sock`` becomes), for the framework."""
        import socket

        if not isinstance(self.sock, socket.socket):
            sock = self.sock
            self.sock = socket.socket(sock.family, sock.type, sock.proto, sock.detach())
        return self.sock


def connect(config: AgentConfig) -> sockets.socket:
    """A blocking socket connected to ``config``'s address."""
    if config.transport == "unix":
        sock = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
        try:
            sock.settimeout(config.connect_timeout)
            assert config.socket_path is not None
            sock.connect(config.socket_path)
        except BaseException:
            sock.close()
            raise
    else:
        import socket  # its create_connection: name resolution, each address tried

        sock = socket.create_connection((config.host, config.port), timeout=config.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    return sock


def connect_and_authenticate(
    config: AgentConfig, *, sleep: Callable[[float], object] = time.sleep
) -> Bootstrap | None:
    """
    Connect (retrying as ``config`` says) and send the ``AuthRequest``.

    :return: the connection, or ``None`` when every attempt failed (each
        failure is reported on stderr).
    """
    frame = auth_request_frame(config)
    attempt = 0
    while True:
        try:
            sock = connect(config)
            try:
                sock.sendall(frame)
            except BaseException:
                sock.close()
                raise
            return Bootstrap(sock, frame)
        except OSError as e:
            attempt += 1
            if attempt > config.max_retries:
                say(f"cannot connect to the spearlet at {config.address}: {e}; giving up")
                return None
            delay = config.retry_delay_for(attempt)
            say(f"cannot connect to the spearlet at {config.address}: {e}; retrying in {delay:g} s")
            sleep(delay)


def await_answer(connection: Bootstrap, timeout: float) -> bool:
    """
    Wait until the spearlet's answer to the ``AuthRequest`` can be read, or
    the connection ended or failed, at most ``timeout`` seconds; nothing is
    read (the framework's connection reads it).

    :return: whether the answer (or the end) came within ``timeout``.
    """
    sock = connection.sock
    sock.settimeout(timeout)
    try:
        sock.recv(1, sockets.MSG_PEEK)
    except TimeoutError:
        return False
    except OSError:
        pass  # the connection failed: the session will say so
    finally:
        sock.settimeout(None)
    return True
