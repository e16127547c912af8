"""``ConnectionState``: what is known about one connection, read from it live."""

from __future__ import annotations

import attrs

from spear_twisted.channels.session_protocol import PeerCredentials, SpearSessionProtocol
from spear_twisted.wire import ConnectionStatus, RuntimeInstanceId, SessionState


@attrs.frozen
class ConnectionState:
    """
    A snapshot of one connection (the seed's ``ConnectionState``), read
    from the live connection when asked for, so it is always current.

    Times are on the reactor's clock.  ``status`` is what the connection
    reports in its heartbeats; ``session_state`` where its session stands
    (``awaiting_auth``, ``active``, ``closing``, ``closed``);
    ``heartbeat_sequence`` the number of the last heartbeat sent.
    """

    connection_id: str
    instance_id: RuntimeInstanceId | None
    remote_addr: str | None
    connected_at: float | None
    last_activity: float | None
    authenticated: bool
    client_type: str | None
    client_version: str | None
    session_id: str | None
    status: ConnectionStatus
    heartbeat_sequence: int
    transport: str
    session_state: SessionState
    peer_credentials: PeerCredentials | None = None

    @classmethod
    def of(cls, connection: SpearSessionProtocol) -> ConnectionState:
        """The current state of ``connection``."""
        return cls(
            connection_id=connection.connection_id,
            instance_id=connection.instance_id,
            remote_addr=connection.remote_addr,
            connected_at=connection.connected_at,
            last_activity=connection.last_activity,
            authenticated=connection.authenticated,
            client_type=connection.client_type,
            client_version=connection.client_version,
            session_id=connection.session_id,
            status=connection.status,
            heartbeat_sequence=connection.heartbeat_sequence,
            transport=connection.transport_name,
            session_state=SessionState.AWAITING_AUTH
            if connection.session is None
            else connection.session.state,
            peer_credentials=connection.peer_credentials,
        )
