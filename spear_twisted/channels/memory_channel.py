"""In-process channels over a memory transport (the ``wasm`` strategy)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError

from spear_twisted.channels.channel import Channel
from spear_twisted.channels.config import ChannelAddress
from spear_twisted.channels.memory import DEFAULT_HUB, MemoryClientEndpoint, MemoryHub


class MemoryChannel(Channel):
    """
    A channel whose connections stay inside this process.

    It listens on a name (the instance id) in a :class:`MemoryHub`; the
    in-process agent dials that name.  Framing, the handshake, back-pressure
    and closing work exactly as over a socket.
    """

    transport_name = "memory"

    def __init__(self, *args: Any, hub: MemoryHub | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub = hub or DEFAULT_HUB

    def listen(self) -> Deferred[ChannelAddress]:
        """Listen on the instance's name in the hub."""
        name = str(self.instance_id)
        try:
            port = self.hub.listen(name, self)
        except CannotListenError as e:
            return defer.fail(e)
        self.add_port(port)
        self.address = ChannelAddress("memory", name=name)
        return defer.succeed(self.address)

    def connect_to(self, name: str) -> Deferred[Channel]:
        """Dial ``name`` in the hub; fires once authenticated."""
        self.address = ChannelAddress("memory", name=name)
        return self.connect(MemoryClientEndpoint(self.hub, name))
