"""
CommunicationFactory: strategies per runtime type, fallback, pooling, closing,
and failures that name the instance and every transport tried.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from spear_twisted.auth import SecretRegistry
from spear_twisted.bridge.channel import GrpcChannel
from spear_twisted.channels.config import ChannelConfig
from spear_twisted.channels.factory import (
    DEFAULT_TRANSPORTS,
    CommunicationFactory,
    CommunicationStrategy,
)
from spear_twisted.channels.interfaces import ICommunicationChannel
from spear_twisted.channels.memory import MemoryHub
from spear_twisted.channels.memory_channel import MemoryChannel
from spear_twisted.channels.tcp import TCPChannel
from spear_twisted.channels.unix import UnixChannel, socket_files
from spear_twisted.errors import ConnectionFailed
from spear_twisted.wire import Role, RuntimeInstanceId, RuntimeType
from tests.channel_support import (
    EchoAgent,
    credentials,
    execute,
    instance,
    short_temp_dir,
    wait_until,
)

Gen = Generator[Deferred[Any], Any, None]


class LogCapture:
    """Every log event published while the test runs, formatted."""

    def __init__(self, test: TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self) -> list[str]:
        return [formatEvent(event) for event in self.events]


def taken_port() -> tuple[int, Any]:
    """A port on 127.0.0.1 held by a listener of ours (stop it when done)."""
    listening = real_reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    return listening.getHost().port, listening


class CommunicationFactoryTests(TestCase):
    def setUp(self) -> None:
        self.registry = SecretRegistry()
        self.runtime_dir = short_temp_dir(self)
        self.hub = MemoryHub(real_reactor)
        self.factory = CommunicationFactory(
            config=ChannelConfig(runtime_dir=self.runtime_dir),
            validator=self.registry,
            memory_hub=self.hub,
        )
        self.addCleanup(self.factory.close_all)

    def agent_for(self, channel: Any) -> Any:
        """An agent-side channel of ``channel``'s transport, cleaned up after the test."""
        iid = channel.instance_id
        token = self.registry.issue(iid)
        kwargs: dict[str, Any] = {"role": Role.AGENT, "credentials": credentials(iid, token)}
        if isinstance(channel, MemoryChannel):
            kwargs["hub"] = self.hub
        agent = type(channel)(iid, **kwargs)
        self.addCleanup(agent.close)
        return agent

    @defer.inlineCallbacks
    def dial(self, channel: Any) -> Gen:
        """Connect an echoing agent to ``channel`` and check one round trip."""
        agent = self.agent_for(channel)
        address = channel.address
        if address.path is not None:
            yield agent.connect_to(address.path)
        elif address.port is not None:
            yield agent.connect_to(address.host, address.port)
        else:
            yield agent.connect_to(address.name)
        EchoAgent(agent)
        response = yield channel.request_response(execute("t", "via", address.transport))
        self.assertEqual(response.parse_payload().output, f"{channel.instance_id}:via {address.transport}")
        return agent

    # -- strategies ------------------------------------------------------------------

    def test_default_strategies(self) -> None:
        self.assertEqual(DEFAULT_TRANSPORTS[RuntimeType.PROCESS], ("unix", "tcp"))
        self.assertEqual(DEFAULT_TRANSPORTS[RuntimeType.KUBERNETES], ("grpc", "tcp"))
        self.assertEqual(DEFAULT_TRANSPORTS[RuntimeType.WASM], ("memory",))
        strategy = CommunicationStrategy.for_runtime(RuntimeType.PROCESS)
        self.assertEqual(strategy, CommunicationStrategy(RuntimeType.PROCESS, ("unix", "tcp")))
        self.assertEqual(self.factory.transports_for(instance("w"), ChannelConfig()), ("unix", "tcp"))
        self.assertEqual(
            self.factory.transports_for(instance("w"), ChannelConfig(transports=["tcp"])), ("tcp",)
        )

    @defer.inlineCallbacks
    def test_process_instances_get_a_unix_channel(self) -> Gen:
        channel = yield self.factory.create_channel_for_instance(instance("w1"))
        self.assertIsInstance(channel, UnixChannel)
        self.assertTrue(verifyObject(ICommunicationChannel, channel))
        self.assertEqual(os.path.dirname(channel.address.path), self.runtime_dir)
        yield self.dial(channel)

    @defer.inlineCallbacks
    def test_process_falls_back_to_tcp_when_unix_is_impossible(self) -> Gen:
        log = LogCapture(self)
        # The runtime directory is a regular file: no socket can be made there.
        blocked = short_temp_dir(self)
        os.makedirs(os.path.dirname(blocked), exist_ok=True)
        with open(blocked, "w") as f:
            f.write("in the way")
        iid = instance("w1")
        channel = yield self.factory.create_channel_for_instance(iid, ChannelConfig(runtime_dir=blocked))
        self.assertIsInstance(channel, TCPChannel)
        self.assertEqual(channel.address.host, "127.0.0.1")
        texts = log.texts()
        self.assertTrue(any("Transport unix failed for process:w1" in t for t in texts), texts)
        self.assertTrue(any("process:w1 uses tcp after unix" in t for t in texts), texts)
        yield self.dial(channel)

    @defer.inlineCallbacks
    def test_kubernetes_instances_get_a_grpc_channel(self) -> Gen:
        channel = yield self.factory.create_channel_for_instance(instance("pod-1", RuntimeType.KUBERNETES))
        self.assertIsInstance(channel, GrpcChannel)
        self.assertTrue(verifyObject(ICommunicationChannel, channel))
        self.assertEqual(channel.address.host, "127.0.0.1")
        environment = channel.address.environment()
        self.assertEqual(environment["SPEAR_COMMUNICATION_TYPE"], "grpc")
        self.assertEqual(environment["SPEAR_COMMUNICATION_PORT"], str(channel.address.port))
        yield self.dial(channel)
        self.assertEqual(channel.get_stats().transport, "grpc")

    @defer.inlineCallbacks
    def test_kubernetes_falls_back_to_tcp_when_grpc_cannot_listen(self) -> Gen:
        log = LogCapture(self)
        # TLS is configured for the gRPC listener, but its certificate is missing.
        missing = os.path.join(short_temp_dir(self), "missing.pem")
        config = ChannelConfig(tls_cert_path=missing, tls_key_path=missing)
        iid = instance("pod-1", RuntimeType.KUBERNETES)
        channel = yield self.factory.create_channel_for_instance(iid, config)
        self.assertIsInstance(channel, TCPChannel)
        self.assertEqual(channel.address.environment()["SPEAR_COMMUNICATION_TYPE"], "tcp")
        texts = log.texts()
        self.assertTrue(
            any("Transport grpc failed for kubernetes:pod-1: cannot read TLS file" in t for t in texts), texts
        )
        self.assertTrue(any("kubernetes:pod-1 uses tcp after grpc" in t for t in texts), texts)
        yield self.dial(channel)

    @defer.inlineCallbacks
    def test_wasm_instances_get_an_in_process_memory_channel(self) -> Gen:
        channel = yield self.factory.create_channel_for_instance(instance("mod-1", RuntimeType.WASM))
        self.assertIsInstance(channel, MemoryChannel)
        self.assertEqual(channel.address.environment()["SPEAR_COMMUNICATION_TYPE"], "memory")
        self.assertTrue(self.hub.is_listening("wasm:mod-1"))
        yield self.dial(channel)

    @defer.inlineCallbacks
    def test_create_channel_makes_a_fresh_instance_id_each_time(self) -> Gen:
        first = yield self.factory.create_channel(RuntimeType.PROCESS)
        second = yield self.factory.create_channel(RuntimeType.PROCESS)
        self.assertNotEqual(first.instance_id, second.instance_id)
        self.assertEqual(first.instance_id.runtime_type, RuntimeType.PROCESS)
        self.assertNotEqual(first.address, second.address)
        self.assertEqual(self.factory.get_channel(first.instance_id), first)
        self.assertEqual(self.factory.get_channel(second.instance_id), second)

    @defer.inlineCallbacks
    def test_an_instance_has_one_open_channel(self) -> Gen:
        iid = instance("w1")
        yield self.factory.create_channel_for_instance(iid)
        yield self.assertFailure(self.factory.create_channel_for_instance(iid), ValueError)

    # -- failures ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_failure_names_the_instance_and_every_transport_tried(self) -> Gen:
        blocked = short_temp_dir(self)
        os.makedirs(os.path.dirname(blocked), exist_ok=True)
        with open(blocked, "w") as f:
            f.write("in the way")
        port, holder = taken_port()
        self.addCleanup(holder.stopListening)
        iid = instance("w1")
        config = ChannelConfig(runtime_dir=blocked, port_range=(port, port))
        error = yield self.assertFailure(
            self.factory.create_channel_for_instance(iid, config), ConnectionFailed
        )
        self.assertEqual(error.instance_id, iid)
        self.assertEqual([transport for transport, _ in error.attempts], ["unix", "tcp"])
        self.assertTrue(all(reason for _, reason in error.attempts))
        self.assertIn(str(port), dict(error.attempts)["tcp"])
        text = str(error)
        for part in ["process:w1", "unix:", "tcp:"]:
            self.assertIn(part, text)
        self.assertIsNone(self.factory.get_channel(iid))

    @defer.inlineCallbacks
    def test_kubernetes_failure_names_grpc_and_tcp_with_their_reasons(self) -> Gen:
        port, holder = taken_port()
        self.addCleanup(holder.stopListening)
        iid = instance("pod-1", RuntimeType.KUBERNETES)
        config = ChannelConfig(port_range=(port, port))
        error = yield self.assertFailure(
            self.factory.create_channel_for_instance(iid, config), ConnectionFailed
        )
        self.assertEqual([transport for transport, _ in error.attempts], ["grpc", "tcp"])
        for _transport, reason in error.attempts:
            self.assertIn(str(port), reason)

    @defer.inlineCallbacks
    def test_failure_lists_a_transport_that_is_not_available(self) -> Gen:
        factory = CommunicationFactory(
            strategies={RuntimeType.KUBERNETES: CommunicationStrategy(RuntimeType.KUBERNETES, ("quic",))}
        )
        iid = instance("pod-1", RuntimeType.KUBERNETES)
        error = yield self.assertFailure(factory.create_channel_for_instance(iid), ConnectionFailed)
        self.assertEqual([transport for transport, _ in error.attempts], ["quic"])
        self.assertIn("not available", dict(error.attempts)["quic"])

    # -- addresses ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_two_instances_never_share_a_socket_path_or_port(self) -> Gen:
        unix = []
        for n in range(6):
            unix.append((yield self.factory.create_channel_for_instance(instance(f"u{n}"))))
        tcp_config = ChannelConfig(transports=["tcp"])
        tcp = []
        for n in range(6):
            tcp.append((yield self.factory.create_channel_for_instance(instance(f"t{n}"), tcp_config)))
        self.assertEqual(len({c.address.path for c in unix}), 6)
        self.assertEqual(len({c.address.port for c in tcp}), 6)
        self.assertEqual(len(socket_files(self.runtime_dir)), 6)

    # -- pooling ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_get_or_create_returns_the_pooled_channel(self) -> Gen:
        iid = instance("w1")
        first = yield self.factory.get_or_create_channel(iid)
        again = yield self.factory.get_or_create_channel(iid)
        self.assertIs(again, first)
        # Disconnected but still listening: the instance can come back to it.
        self.assertFalse(first.is_connected())
        self.assertIs((yield self.factory.get_or_create_channel(iid)), first)
        yield self.dial(first)
        self.assertIs((yield self.factory.get_or_create_channel(iid)), first)
        self.assertEqual(self.factory.channels, {iid: first})

    @defer.inlineCallbacks
    def test_a_closed_pooled_channel_is_replaced(self) -> Gen:
        iid = instance("w1")
        first = yield self.factory.get_or_create_channel(iid)
        yield first.close()
        second = yield self.factory.get_or_create_channel(iid)
        self.assertIsNot(second, first)
        self.assertFalse(second.closed)
        yield self.dial(second)

    @defer.inlineCallbacks
    def test_a_disconnected_pooled_channel_without_a_listener_is_replaced(self) -> Gen:
        iid = instance("w1")
        token = self.registry.issue(iid)
        # The agent listens and the spearlet dials: the spearlet's channel has no listener.
        agent = UnixChannel(
            iid,
            role=Role.AGENT,
            credentials=credentials(iid, token),
            config=ChannelConfig(runtime_dir=self.runtime_dir),
        )
        self.addCleanup(agent.close)
        address = yield agent.listen()
        dialled = UnixChannel(iid, validator=self.registry)
        yield dialled.connect_to(address.path)
        self.factory.register_channel(dialled)
        self.assertIs((yield self.factory.get_or_create_channel(iid)), dialled)

        yield agent.when_connected()
        agent.connection.abort()
        yield wait_until(lambda: not dialled.is_connected(), "the dialled channel losing its connection")
        yield agent.close()
        replacement = yield self.factory.get_or_create_channel(iid)
        self.assertIsNot(replacement, dialled)
        self.assertTrue(dialled.closed)
        self.assertTrue(replacement.ports)
        self.assertIs(self.factory.get_channel(iid), replacement)
        yield self.dial(replacement)

    @defer.inlineCallbacks
    def test_remove_channel_closes_and_forgets_it(self) -> Gen:
        iid = instance("w1")
        channel = yield self.factory.create_channel_for_instance(iid)
        yield self.factory.remove_channel(iid)
        self.assertTrue(channel.closed)
        self.assertIsNone(self.factory.get_channel(iid))
        yield self.factory.remove_channel(iid)  # nothing left: still fine

    @defer.inlineCallbacks
    def test_close_all_closes_every_channel_and_removes_the_sockets(self) -> Gen:
        made = []
        for n in range(3):
            made.append((yield self.factory.create_channel_for_instance(instance(f"u{n}"))))
        made.append((yield self.factory.create_channel_for_instance(instance("m", RuntimeType.WASM))))
        tcp = yield self.factory.create_channel_for_instance(instance("t"), ChannelConfig(transports=["tcp"]))
        made.append(tcp)
        agent = yield self.dial(made[0])
        port = tcp.address.port
        yield self.factory.close_all()
        self.assertEqual(self.factory.channels, {})
        self.assertTrue(all(channel.closed for channel in made))
        self.assertFalse(made[0].is_connected())
        yield wait_until(lambda: not agent.is_connected(), "the agent seeing the close")
        self.assertEqual(socket_files(self.runtime_dir), [])
        self.assertFalse(self.hub.is_listening("wasm:m"))
        with socket.socket() as probe:
            self.assertNotEqual(probe.connect_ex(("127.0.0.1", port)), 0)

    @defer.inlineCallbacks
    def test_channels_of_the_factory_share_its_validator(self) -> Gen:
        iid = RuntimeInstanceId.generate(RuntimeType.PROCESS)
        channel = yield self.factory.create_channel_for_instance(iid)
        yield self.dial(channel)
        self.assertTrue(channel.is_connected())
