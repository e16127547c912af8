"""The constants of PROTOCOL.md section 6."""

from __future__ import annotations

#: The protocol version this implementation speaks and sends.
PROTOCOL_VERSION = 1

#: Default largest frame body accepted (64 MiB).
MAX_MESSAGE_SIZE = 64 * 1024 * 1024

#: Default largest frame body accepted before authentication (64 KiB).
MAX_PREAUTH_MESSAGE_SIZE = 64 * 1024

#: Seconds of silence after which a side sends a heartbeat.
HEARTBEAT_INTERVAL = 30.0

#: Seconds without any frame received after which the spearlet closes.
HEARTBEAT_TIMEOUT = 90.0

#: Seconds an authenticated connection may carry no traffic.
CONNECTION_TIMEOUT = 300.0

#: Seconds from connecting within which ``AuthRequest`` must arrive.
AUTH_TIMEOUT = 30.0

#: The default range of ports the spearlet listens on.
PORT_RANGE = (9100, 9999)

#: Length of the big-endian length prefix of a frame.
FRAME_HEADER_SIZE = 4
