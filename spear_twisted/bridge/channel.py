"""
:class:`GrpcChannel`: an instance's channel over the gRPC bridge
(``SPEAR_COMMUNICATION_TYPE=grpc``).

The spearlet's side listens with a :class:`~spear_twisted.bridge.server.BridgeServer`
of its own that serves only ``Connect``: every ``Connect`` call is one Spear
connection of this channel (:class:`~spear_twisted.bridge.session.ConnectSession`),
authenticated exactly as over TCP (the ``AuthRequest`` must name this
channel's instance, with its token).  It binds like a
:class:`~spear_twisted.channels.tcp.TCPChannel`: ``config.port`` or the first
free port of ``config.port_range``, on a loopback ``config.host`` unless
``allow_remote`` is set; with ``config.tls_cert_path`` and
``config.tls_key_path`` it serves HTTP/2 over TLS (ALPN ``h2``).

The agent's side dials with a :class:`~spear_twisted.bridge.client.ConnectCall`
(:meth:`GrpcChannel.connect_to`), one HTTP/2 connection per session.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint

from spear_twisted.bridge import spear_pb2 as pb
from spear_twisted.bridge.client import ConnectCall
from spear_twisted.bridge.config import BridgeConfig
from spear_twisted.bridge.contract import CONNECT_PATH
from spear_twisted.bridge.endpoints import client_tls_options, h2_tls_options
from spear_twisted.bridge.methods import MethodRegistry
from spear_twisted.bridge.server import BridgeServer
from spear_twisted.bridge.session import ConnectSession, EnvelopeSessionProtocol, StreamTransport
from spear_twisted.bridge.status import GrpcError, StatusCode
from spear_twisted.channels.channel import Channel, _chain
from spear_twisted.channels.config import ChannelAddress
from spear_twisted.channels.ports import listen_in_range
from spear_twisted.channels.tcp import is_loopback
from spear_twisted.wire import Role


class GrpcChannel(Channel):
    """
    A channel over the gRPC bridge; see the module docstring.

    Takes the arguments of :class:`~spear_twisted.channels.channel.Channel`,
    and ``bridge_config``: the HTTP/2 settings of the listener (its message
    size limits always follow ``config.max_message_size``).
    """

    transport_name = "grpc"

    __slots__ = ("_bridge_config", "_server", "_shutdown")

    def __init__(self, *args: Any, bridge_config: BridgeConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bridge_config = bridge_config
        self._server: BridgeServer | None = None
        self._shutdown: Deferred[None] | None = None

    @property
    def bridge_config(self) -> BridgeConfig:
        """The listener's settings: ``bridge_config`` with this channel's message size limit."""
        limit = self.config.max_message_size
        return attrs.evolve(
            self._bridge_config or BridgeConfig(),
            max_receive_message_size=limit,
            max_send_message_size=limit,
            close_timeout=self.config.close_timeout,
        )

    @property
    def server(self) -> BridgeServer | None:
        """The listener's server, once listening."""
        return self._server

    # -- the spearlet's side ---------------------------------------------------------------------

    def listen(self) -> Deferred[ChannelAddress]:
        """Listen on ``config.port``, or on the first free port of ``config.port_range``."""
        config = self.config
        if self.role is not Role.SPEARLET:
            return defer.fail(ValueError("an agent-side gRPC channel dials the spearlet (connect_to)"))
        if not config.allow_remote and not is_loopback(config.host):
            return defer.fail(
                ValueError(f"refusing to listen on non-loopback address {config.host} without allow_remote")
            )
        try:
            tls = None
            if config.tls_cert_path is not None and config.tls_key_path is not None:
                tls = h2_tls_options(config.tls_cert_path, config.tls_key_path)
            server = self._server
            if server is None:
                server = self._server = self._make_server()

            def listen_on(number: int) -> IListeningPort:
                if tls is not None:
                    return self.reactor.listenSSL(  # type: ignore[no-any-return]
                        number, server, tls, backlog=config.backlog, interface=config.host
                    )
                return self.reactor.listenTCP(  # type: ignore[no-any-return]
                    number, server, backlog=config.backlog, interface=config.host
                )

            if config.port is not None:
                port = listen_on(config.port)
            else:
                port = listen_in_range(listen_on, host=config.host, port_range=config.port_range)
        except Exception as e:
            return defer.fail(e)
        self.add_port(port)
        bound: Any = port.getHost()
        ca_path = None if tls is None else (config.tls_ca_path or config.tls_cert_path)
        self.address = ChannelAddress("grpc", host=bound.host, port=bound.port, ca_path=ca_path)
        self.log.info(
            "Channel {instance_id} listening on grpc{tls}:{host}:{port}",
            instance_id=str(self.instance_id),
            tls="" if tls is None else "+tls",
            host=bound.host,
            port=bound.port,
        )
        return defer.succeed(self.address)

    def _make_server(self) -> BridgeServer:
        methods = MethodRegistry()
        methods.add_bidi_stream(CONNECT_PATH, pb.Envelope, pb.Envelope, ConnectSession(self).connect)
        return BridgeServer(methods, config=self.bridge_config, clock=self.clock)

    def close(self) -> Deferred[None]:
        """Close as any channel does, then shut the listener's HTTP/2 connections down (GOAWAY)."""
        if self._shutdown is None:
            closing = super().close()
            server = self._server
            if server is not None:
                grace = self.config.close_timeout
                closing.addCallback(lambda _: server.shutdown(grace))
            self._shutdown = closing
        return _chain(self._shutdown)

    # -- the agent's side -------------------------------------------------------------------------

    def connect_to(self, host: str, port: int, *, ca_path: str | None = None) -> Deferred[Channel]:
        """
        Dial the spearlet's gRPC channel at ``host:port`` (over TLS, trusting
        the PEM certificates of ``ca_path``, when it is given); fires once
        authenticated.
        """
        self.address = ChannelAddress("grpc", host=host, port=port, ca_path=ca_path)
        endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint: IStreamClientEndpoint = endpoint_type(
            self.reactor, host, port, timeout=self.config.connect_timeout
        )
        scheme = "http"
        if ca_path is not None:
            try:
                endpoint = wrapClientTLS(client_tls_options(host, ca_path), endpoint)
            except Exception as e:
                return defer.fail(e)
            scheme = "https"
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self.connect(endpoint, authority=authority, scheme=scheme)

    def connect(
        self, endpoint: IStreamClientEndpoint, *, authority: str = "localhost", scheme: str = "http"
    ) -> Deferred[Channel]:
        """
        Open a ``Connect`` call over ``endpoint`` (agent side); fires with the
        channel once the session has authenticated.
        """
        if self._closed:
            return defer.fail(self._closed_error())
        if self.role is not Role.AGENT:
            return defer.fail(ValueError("the spearlet side of a gRPC channel listens; agents dial it"))
        call = ConnectCall(
            clock=self.clock,
            authority=authority,
            scheme=scheme,
            max_receive_message_size=self.config.max_message_size,
            max_send_message_size=self.config.max_message_size,
            close_timeout=self.config.close_timeout,
        )
        connecting: Deferred[Any] = connectProtocol(endpoint, call)  # type: ignore[no-untyped-call]
        return connecting.addCallback(lambda _: self._start_session(call)).addCallback(lambda _: self)

    def _start_session(self, call: ConnectCall) -> Deferred[Any]:
        connection = self.build_connection(EnvelopeSessionProtocol)
        if connection is None:
            call.finish(GrpcError(StatusCode.CANCELLED, "the channel is closed"))
            return defer.fail(self._closed_error())
        assert isinstance(connection, EnvelopeSessionProtocol)
        transport: Any = call.transport
        StreamTransport(call, transport.getPeer(), transport.getHost()).attach(connection)
        return connection.when_ready()
