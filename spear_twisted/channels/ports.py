"""Listening on the first free port of a range, by binding."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort

from spear_twisted.channels._twisted import cannot_listen_error

# Where the next search of each (host, range) starts, so that successive
# listeners do not all retry the ports taken by the ones before them.
_cursor: dict[tuple[str, int, int], int] = {}
_cursor_lock = threading.Lock()


def listen_in_range(
    listen_on: Callable[[int], IListeningPort], *, host: str, port_range: tuple[int, int]
) -> IListeningPort:
    """
    ``listen_on(port)`` for the first port of ``port_range`` that binds.

    Binding is the test: no port is probed and then bound, so two listeners
    started together never get the same port.  A port in use is skipped; any
    other failure (permission, no such address) is raised at once.

    :raises CannotListenError: naming the range when every port is taken.
    """
    low, high = port_range
    size = high - low + 1
    key = (host, low, high)
    with _cursor_lock:
        start = _cursor.get(key, 0)
    for step in range(size):
        offset = (start + step) % size
        try:
            listening = listen_on(low + offset)
        except CannotListenError as e:
            if getattr(e.socketError, "errno", None) == errno.EADDRINUSE:
                continue
            raise
        with _cursor_lock:
            _cursor[key] = (offset + 1) % size
        return listening
    raise cannot_listen_error(
        host, f"{low}-{high}", OSError(errno.EADDRINUSE, "every port of the range is in use")
    )


def listen_tcp_in_range(
    reactor: Any,
    factory: Any,
    *,
    host: str,
    port_range: tuple[int, int],
    backlog: int = 1024,
) -> IListeningPort:
    """:func:`listen_in_range` with plain TCP on ``host``."""

    def listen_on(port: int) -> IListeningPort:
        listening: IListeningPort = reactor.listenTCP(port, factory, backlog=backlog, interface=host)
        return listening

    return listen_in_range(listen_on, host=host, port_range=port_range)
