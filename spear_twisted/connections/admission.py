"""
:class:`Admission`: the connection limits, ``max_connections`` and
``max_pending_auth``.

A connection is *pending* from accept until its session leaves
``AWAITING_AUTH``.  When a new connection would make more than
``max_pending_auth`` pending, room is made by closing the oldest *silent*
pending connection: one that has delivered no complete frame and has no
unread byte waiting in its socket.  Only when every pending connection is
busy authenticating is the newcomer refused.

Why silence, and why the peek at the socket: an honest agent sends its
``AuthRequest`` as soon as it connects, so its bytes are usually in the
socket before the connection is even accepted.  Under a flood of connections
that say nothing, the reactor accepts them in batches of a hundred or more
before it reads any of them; closing simply the oldest pending connection
would close an honest one accepted early in such a batch, unread.  Looking
at the socket (``MSG_PEEK``, which consumes nothing) tells the honest
connection from the silent ones, so a flood cannot starve instances that
authenticate properly.  A peer that trickles its bytes is silent whenever
its socket is drained, and is closed like the rest.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from typing import Any

from spear_twisted.channels.session_protocol import SpearSessionProtocol
from spear_twisted.errors import SpearError, TooManyConnections, TooManyPendingAuth
from spear_twisted.wire import SessionState


def underlying_socket(transport: Any) -> socket.socket | None:
    """The socket under ``transport`` (through a TLS layer), if it has one."""
    for _ in range(3):
        if transport is None:
            return None
        sock = getattr(transport, "socket", None)
        if isinstance(sock, socket.socket):
            return sock
        transport = getattr(transport, "transport", None)
    return None


def has_unread_bytes(transport: Any) -> bool:
    """Whether bytes from the peer wait unread in ``transport``'s socket (consumes nothing)."""
    sock = underlying_socket(transport)
    if sock is None:
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        # Nothing to read (EAGAIN), or the socket is failing: silent either way.
        return False


class Admission:
    """
    Counts open and pending connections and decides who gets in.

    :param max_connections: connections open at once.
    :param max_pending_auth: connections awaiting authentication at once.
    """

    def __init__(self, max_connections: int, max_pending_auth: int) -> None:
        self.max_connections = max_connections
        self.max_pending_auth = max_pending_auth
        #: Every open connection admitted, by connection id.
        self.open: dict[str, SpearSessionProtocol] = {}
        # Admitted connections awaiting authentication, oldest first.
        self._pending: OrderedDict[str, SpearSessionProtocol] = OrderedDict()
        #: Connections closed to make room for newcomers.
        self.evicted = 0

    def admit(self) -> SpearError | None:
        """
        Decide on a connection about to start: the error to refuse it with,
        or ``None`` to let it in (having closed a silent pending connection
        if that was needed to make room).
        """
        if len(self.open) >= self.max_connections:
            return TooManyConnections(f"the spearlet is at its limit of {self.max_connections} connections")
        # Only a full table is worth sweeping for connections that stopped waiting.
        if len(self._pending) >= self.max_pending_auth and self.pending_count() >= self.max_pending_auth:
            victim = self._silent_pending()
            if victim is None:
                return TooManyPendingAuth(
                    f"{self.max_pending_auth} connections are already authenticating; try again"
                )
            del self._pending[victim.connection_id]
            self.evicted += 1
            victim.fail(
                TooManyPendingAuth(
                    f"closed to make room: more than {self.max_pending_auth} connections were waiting to"
                    " authenticate and this one had sent nothing"
                )
            )
        return None

    def pending_count(self) -> int:
        """Connections admitted and still awaiting authentication."""
        self._forget_settled()
        return len(self._pending)

    def started(self, connection: SpearSessionProtocol) -> None:
        """``connection`` was admitted and is now open."""
        self.open[connection.connection_id] = connection
        self._pending[connection.connection_id] = connection

    def authenticated(self, connection: SpearSessionProtocol) -> None:
        """``connection`` is no longer waiting to authenticate."""
        self._pending.pop(connection.connection_id, None)

    def ended(self, connection: SpearSessionProtocol) -> None:
        """``connection`` is gone."""
        self.open.pop(connection.connection_id, None)
        self._pending.pop(connection.connection_id, None)

    def _forget_settled(self) -> None:
        # Connections refused or failed before authenticating stay open while
        # they flush their Error, but they no longer wait for anything.
        settled = [
            connection_id
            for connection_id, connection in self._pending.items()
            if connection.session is not None and connection.session.state is not SessionState.AWAITING_AUTH
        ]
        for connection_id in settled:
            del self._pending[connection_id]

    def _silent_pending(self) -> SpearSessionProtocol | None:
        for connection in self._pending.values():
            session = connection.session
            if session is not None and session.auth_request is not None:
                continue  # its AuthRequest is being validated
            if has_unread_bytes(connection.transport):
                continue
            return connection
        return None
