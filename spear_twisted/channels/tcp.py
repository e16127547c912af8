"""TCP channels: loopback by default, a port from the configured range."""

from __future__ import annotations

import ipaddress

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import CannotListenError

from spear_twisted.channels.channel import Channel
from spear_twisted.channels.config import ChannelAddress
from spear_twisted.channels.ports import listen_tcp_in_range


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TCPChannel(Channel):
    """
    A channel over TCP (``SPEAR_COMMUNICATION_TYPE=tcp``).

    It binds the configured ``host`` (127.0.0.1 by default) and refuses a
    non-loopback address unless ``allow_remote`` is set.
    """

    transport_name = "tcp"

    def listen(self) -> Deferred[ChannelAddress]:
        """Listen on ``config.port``, or on the first free port of ``config.port_range``."""
        config = self.config
        if not config.allow_remote and not is_loopback(config.host):
            return defer.fail(
                ValueError(f"refusing to listen on non-loopback address {config.host} without allow_remote")
            )
        try:
            if config.port is not None:
                port = self.reactor.listenTCP(
                    config.port, self, backlog=config.backlog, interface=config.host
                )
            else:
                port = listen_tcp_in_range(
                    self.reactor, self, host=config.host, port_range=config.port_range, backlog=config.backlog
                )
        except CannotListenError as e:
            return defer.fail(e)
        self.add_port(port)
        bound = port.getHost()
        self.address = ChannelAddress("tcp", host=bound.host, port=bound.port)
        self.log.info(
            "Channel {instance_id} listening on tcp:{host}:{port}",
            instance_id=str(self.instance_id),
            host=bound.host,
            port=bound.port,
        )
        return defer.succeed(self.address)

    def connect_to(self, host: str, port: int) -> Deferred[Channel]:
        """Dial ``host:port``; fires once authenticated."""
        self.address = ChannelAddress("tcp", host=host, port=port)
        endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = endpoint_type(self.reactor, host, port, timeout=self.config.connect_timeout)
        return self.connect(endpoint)
