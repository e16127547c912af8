"""
:class:`Listeners`: the ConnectionManager's listening ports.

A port of the configured range is found by binding (never probed first), so
two listeners started together never share it.  Endpoint descriptions
(``tcp:``, ``unix:``, ``ssl:``) go through Twisted's ``serverFromString``
after two checks of ours: the backlog is at least
:data:`~spear_twisted.connections.config.MIN_BACKLOG` (added when the
description sets none), and a TCP or TLS listener binds a loopback interface
unless remote listening is allowed.  A stale Unix socket file is replaced, a
live one never; stopping a Unix listener removes its file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from spear_twisted.channels.config import ChannelAddress
from spear_twisted.channels.ports import listen_in_range
from spear_twisted.channels.tcp import is_loopback
from spear_twisted.channels.unix import clear_stale_socket
from spear_twisted.connections.config import MIN_BACKLOG

#: Builds the protocol factory of a listener, given its transport name.
FactoryMaker = Callable[[str], IProtocolFactory]

_INET_KINDS = frozenset({"tcp", "tcp6", "ssl"})
_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def parse_description(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    ``(kind, positional arguments, keyword arguments)`` of an endpoint
    description, in Twisted's grammar (``:`` separates, ``\\:`` escapes).

    :raises ValueError: when there is no kind before the first ``:``.
    """
    parts = [part.replace("\\:", ":") for part in _UNESCAPED_COLON.split(description)]
    kind = parts[0].lower()
    if not kind or len(parts) < 2:
        raise ValueError(f"{description!r} is not an endpoint description (kind:arguments)")
    positional: list[str] = []
    keywords: dict[str, str] = {}
    for part in parts[1:]:
        name, sep, value = part.partition("=")
        if sep and re.fullmatch(r"[A-Za-z_]\w*", name):
            keywords[name] = value
        else:
            positional.append(part)
    return kind, positional, keywords


def refuse_remote(description: str, allow_remote: bool) -> None:
    """
    Refuse, before anything is bound, an endpoint description that would
    listen on an address that is not loopback (``tcp:9100`` binds every
    interface) unless ``allow_remote``.

    :raises ValueError: naming the description and the interface.
    """
    if allow_remote:
        return
    kind, _positional, keywords = parse_description(description)
    if kind in _INET_KINDS:
        interface = keywords.get("interface", "")
        if not is_loopback(interface):
            raise ValueError(
                f"{description!r} listens on {interface or 'every interface'}, not loopback; "
                "name a loopback interface (interface=127.0.0.1) or set allow_remote"
            )


class Listeners:
    """
    The ports one manager listens on.

    :param reactor: provides ``listenTCP``/``listenSSL`` and the endpoint
        machinery.
    :param make_factory: the protocol factory of a new listener.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        make_factory: FactoryMaker,
        *,
        backlog: int = MIN_BACKLOG,
        allow_remote: bool = False,
    ) -> None:
        self.reactor = reactor
        self.make_factory = make_factory
        self.backlog = backlog
        self.allow_remote = allow_remote
        self._ports: list[tuple[IListeningPort, ChannelAddress]] = []

    @property
    def addresses(self) -> list[ChannelAddress]:
        """Every address listened on, in the order they were bound."""
        return [address for _, address in self._ports]

    @property
    def ports(self) -> list[IListeningPort]:
        """Every listening port, in the order they were bound."""
        return [port for port, _ in self._ports]

    def listen_tcp(
        self,
        host: str,
        port: int | None,
        port_range: tuple[int, int],
        tls_options: Any = None,
    ) -> ChannelAddress:
        """
        Listen on ``host`` at ``port``, or at the first port of ``port_range``
        that binds; over TLS when ``tls_options`` is given.

        :raises CannotListenError: when the port (or every port of the range) is taken.
        """
        transport = "tcp" if tls_options is None else "ssl"
        factory = self.make_factory(transport)

        def listen_on(number: int) -> IListeningPort:
            if tls_options is not None:
                return self.reactor.listenSSL(  # type: ignore[no-any-return]
                    number, factory, tls_options, backlog=self.backlog, interface=host
                )
            return self.reactor.listenTCP(  # type: ignore[no-any-return]
                number, factory, backlog=self.backlog, interface=host
            )

        if port is not None:
            listening = listen_on(port)
        else:
            listening = listen_in_range(listen_on, host=host, port_range=port_range)
        bound: Any = listening.getHost()
        return self._add(listening, ChannelAddress(transport, host=bound.host, port=bound.port))

    def listen_description(self, description: str) -> Deferred[ChannelAddress]:
        """Listen on a Twisted endpoint description; fires with the address bound."""
        try:
            kind, positional, keywords = parse_description(description)
            backlog = keywords.get("backlog")
            if backlog is None:
                description += f":backlog={self.backlog}"
            elif not backlog.isdigit() or int(backlog) < MIN_BACKLOG:
                raise ValueError(f"{description!r}: backlog must be at least {MIN_BACKLOG}")
            refuse_remote(description, self.allow_remote)
            if kind == "unix":
                path = keywords.get("address") or (positional[0] if positional else None)
                if not path:
                    raise ValueError(f"{description!r} names no socket path")
                clear_stale_socket(path)
            endpoint = serverFromString(self.reactor, description)  # type: ignore[no-untyped-call]
        except Exception as e:
            return defer.fail(e)
        listening: Deferred[IListeningPort] = endpoint.listen(self.make_factory(kind))
        return listening.addCallback(self._described, kind)

    def _described(self, port: IListeningPort, kind: str) -> ChannelAddress:
        bound: Any = port.getHost()
        name = getattr(bound, "name", None)
        if name is not None:
            path = name.decode() if isinstance(name, bytes) else str(name)
            return self._add(port, ChannelAddress("unix", path=path))
        return self._add(port, ChannelAddress(kind, host=bound.host, port=bound.port))

    def _add(self, port: IListeningPort, address: ChannelAddress) -> ChannelAddress:
        self._ports.append((port, address))
        self.log.info("Connection manager listening on {address}", address=str(address))
        return address

    def stop(self) -> Deferred[None]:
        """Stop every listener (a Unix one removes its socket file); fires when all are stopped."""
        ports, self._ports = self._ports, []
        stops = [
            defer.maybeDeferred(port.stopListening).addErrback(self._stop_failed, address)
            for port, address in ports
        ]
        return defer.DeferredList(stops).addCallback(lambda _: None)

    def _stop_failed(self, failure: Failure, address: ChannelAddress) -> None:
        self.log.failure("Listener {address} did not stop cleanly", failure, address=str(address))
