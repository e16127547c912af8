"""
:class:`CommunicationFactory`: a channel per instance, by strategy, pooled.

Each runtime type has a strategy, an ordered list of transports: process
prefers unix then tcp, kubernetes grpc (the gRPC bridge,
:class:`~spear_twisted.bridge.channel.GrpcChannel`) then tcp, wasm memory.
Making a channel tries them in order; a failure names the instance and every
transport tried with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from spear_twisted.auth import SecretValidator
from spear_twisted.channels.channel import Channel
from spear_twisted.channels.config import ChannelConfig
from spear_twisted.channels.memory import MemoryHub
from spear_twisted.channels.memory_channel import MemoryChannel
from spear_twisted.channels.tcp import TCPChannel
from spear_twisted.channels.unix import UnixChannel
from spear_twisted.errors import ConnectionFailed, SpearError
from spear_twisted.wire import RuntimeInstanceId, RuntimeType


@attrs.frozen
class CommunicationStrategy:
    """The transports a runtime type's channels try, in order."""

    runtime_type: RuntimeType
    transports: tuple[str, ...]

    @classmethod
    def for_runtime(cls, runtime_type: RuntimeType) -> CommunicationStrategy:
        """The default strategy of ``runtime_type``."""
        return cls(runtime_type, DEFAULT_TRANSPORTS[runtime_type])


#: The default transport order of each runtime type.
DEFAULT_TRANSPORTS: dict[RuntimeType, tuple[str, ...]] = {
    RuntimeType.PROCESS: ("unix", "tcp"),
    RuntimeType.KUBERNETES: ("grpc", "tcp"),
    RuntimeType.WASM: ("memory",),
}

#: Builds a listening channel for an instance over one transport.
ChannelMaker = Callable[[RuntimeInstanceId, ChannelConfig], "Deferred[Channel]"]


class CommunicationFactory:
    """
    Makes, pools and closes the spearlet side's channels.

    :param validator: checks each instance's token (usually a
        ``SecretRegistry``); without one every attempt is refused.
    :param config: the default ``ChannelConfig``; a per-call config replaces it.
    :param observer: receives every connection's events (the ConnectionManager).
    """

    log = Logger()

    def __init__(
        self,
        *,
        reactor: Any = None,
        config: ChannelConfig | None = None,
        validator: SecretValidator | None = None,
        strategies: dict[RuntimeType, CommunicationStrategy] | None = None,
        memory_hub: MemoryHub | None = None,
        observer: Any = None,
        observe_messages: bool = False,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        self.config = config or ChannelConfig()
        self.validator = validator
        self.strategies = {kind: CommunicationStrategy.for_runtime(kind) for kind in RuntimeType}
        self.strategies.update(strategies or {})
        self.memory_hub = memory_hub or MemoryHub(reactor)
        self.observer = observer
        self.observe_messages = observe_messages
        #: Called before each new connection of every channel: the error to
        #: refuse it with, or ``None`` (the ConnectionManager's limits).
        self.admission: Callable[[], SpearError | None] | None = None
        #: Whether a second authentication of a connected instance replaces
        #: the old connection (else it is refused).
        self.replace_duplicates = False
        self._channels: dict[RuntimeInstanceId, Channel] = {}
        self._makers: dict[str, ChannelMaker] = {
            "unix": self._maker(UnixChannel),
            "tcp": self._maker(TCPChannel),
            "grpc": self._make_grpc_channel,
            "memory": self._maker(MemoryChannel, hub=self.memory_hub),
        }

    def register_transport(self, name: str, maker: ChannelMaker) -> None:
        """Make ``name`` available to strategies, or replace how its channels are made."""
        self._makers[name] = maker

    def _make_grpc_channel(self, instance_id: RuntimeInstanceId, config: ChannelConfig) -> Deferred[Channel]:
        # Imported when first used: HTTP/2 and protobuf stay unloaded for
        # spearlets whose instances never use the gRPC bridge.
        from spear_twisted.bridge.channel import GrpcChannel

        return self._maker(GrpcChannel)(instance_id, config)

    def _maker(self, channel_type: type[Channel], **extra: Any) -> ChannelMaker:
        def make(instance_id: RuntimeInstanceId, config: ChannelConfig) -> Deferred[Channel]:
            channel = channel_type(
                instance_id,
                reactor=self.reactor,
                config=config,
                validator=self.validator,
                observer=self.observer,
                observe_messages=self.observe_messages,
                admission=self.admission,
                replace_duplicates=self.replace_duplicates,
                **extra,
            )
            return channel.listen().addCallback(lambda _: channel)

        return make

    # -- making channels ---------------------------------------------------------------------

    def transports_for(self, instance_id: RuntimeInstanceId, config: ChannelConfig) -> tuple[str, ...]:
        """The transports to try for ``instance_id``, in order."""
        if config.transports is not None:
            return config.transports
        return self.strategies[instance_id.runtime_type].transports

    @defer.inlineCallbacks
    def create_channel_for_instance(
        self, instance_id: RuntimeInstanceId, config: ChannelConfig | None = None
    ) -> Any:
        """
        A new listening channel for ``instance_id``, on the first transport of
        its strategy that works; it is pooled for ``get_or_create_channel``.

        :raises ValueError: when the instance already has an open channel.
        :raises ConnectionFailed: naming every transport tried and why.
        """
        existing = self._channels.get(instance_id)
        if existing is not None and not existing.closed:
            raise ValueError(f"instance {instance_id} already has an open channel; use get_or_create_channel")
        config = config or self.config
        attempts: list[tuple[str, str]] = []
        for transport in self.transports_for(instance_id, config):
            maker = self._makers.get(transport)
            if maker is None:
                attempts.append((transport, "not available in this version of spear_twisted"))
                self.log.warn(
                    "Transport {transport} is not available for {instance_id}; trying the next one",
                    transport=transport,
                    instance_id=str(instance_id),
                )
                continue
            try:
                channel = yield maker(instance_id, config)
            except Exception as e:
                attempts.append((transport, _reason(e)))
                self.log.warn(
                    "Transport {transport} failed for {instance_id}: {reason}",
                    transport=transport,
                    instance_id=str(instance_id),
                    reason=_reason(e),
                )
                continue
            if attempts:
                self.log.info(
                    "Instance {instance_id} uses {transport} after {tried}",
                    instance_id=str(instance_id),
                    transport=transport,
                    tried=", ".join(name for name, _ in attempts),
                )
            self._channels[instance_id] = channel
            return channel
        raise ConnectionFailed(
            "no transport could make a channel", attempts=attempts, instance_id=instance_id
        )

    def create_channel(
        self, runtime_type: RuntimeType, config: ChannelConfig | None = None
    ) -> Deferred[Channel]:
        """A channel for a fresh instance id of ``runtime_type`` (kept for older callers)."""
        return self.create_channel_for_instance(RuntimeInstanceId.generate(runtime_type), config)

    def get_or_create_channel(
        self, instance_id: RuntimeInstanceId, config: ChannelConfig | None = None
    ) -> Deferred[Channel]:
        """
        The pooled channel of ``instance_id`` if it is still usable, else a new one.

        A pooled channel is replaced when it is closed, or when it lost its
        connection and has no listener an instance could reconnect to.
        """
        channel = self._channels.get(instance_id)
        if channel is not None and not channel.closed:
            if channel.is_connected() or channel.ports:
                return defer.succeed(channel)
            self.log.info("Replacing disconnected channel of {instance_id}", instance_id=str(instance_id))
            channel.close()
        self._channels.pop(instance_id, None)
        return self.create_channel_for_instance(instance_id, config)

    def register_channel(self, channel: Channel) -> None:
        """Pool a channel made elsewhere (for example by a ConnectionManager)."""
        self._channels[channel.instance_id] = channel

    def get_channel(self, instance_id: RuntimeInstanceId) -> Channel | None:
        """The pooled channel of ``instance_id``, if any."""
        return self._channels.get(instance_id)

    @property
    def channels(self) -> dict[RuntimeInstanceId, Channel]:
        """The pooled channels (a copy)."""
        return dict(self._channels)

    def remove_channel(self, instance_id: RuntimeInstanceId) -> Deferred[None]:
        """Close and forget ``instance_id``'s channel."""
        channel = self._channels.pop(instance_id, None)
        if channel is None:
            return defer.succeed(None)
        return channel.close()

    def close_all(self) -> Deferred[None]:
        """Close every pooled channel; fires when all are closed."""
        channels = list(self._channels.values())
        self._channels.clear()
        done = defer.DeferredList([channel.close() for channel in channels], consumeErrors=True)
        return done.addCallback(lambda _: None)


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text.replace("\n", " ")
