"""
Unix socket channels: the private runtime directory, one socket per
instance, stale and live socket files, and the peer's credentials.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import TestCase

from spear_twisted.channels.protocol import PeerCredentials
from spear_twisted.channels.unix import (
    MAX_SOCKET_PATH,
    clear_stale_socket,
    ensure_private_dir,
    socket_files,
    socket_path_for,
)
from spear_twisted.errors import AuthenticationFailed
from spear_twisted.wire import Role, RuntimeInstanceId, RuntimeType
from tests.channel_support import ChannelMaker, EchoAgent, execute, instance

Gen = Generator[Deferred[Any], Any, None]


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


class UnixChannelTests(TestCase):
    def setUp(self) -> None:
        self.maker = ChannelMaker(self, "unix")

    @defer.inlineCallbacks
    def test_runtime_dir_is_created_0700_and_the_socket_is_0600(self) -> Gen:
        self.assertFalse(os.path.exists(self.maker.runtime_dir))
        server = self.maker.channel(instance("w1"))
        address = yield server.listen()
        self.assertEqual(os.path.dirname(address.path), self.maker.runtime_dir)
        self.assertEqual(mode_of(self.maker.runtime_dir), 0o700)
        self.assertTrue(stat.S_ISSOCK(os.lstat(address.path).st_mode))
        self.assertEqual(mode_of(address.path), 0o600)
        self.assertEqual(
            address.environment(), {"SPEAR_COMMUNICATION_TYPE": "unix", "SPEAR_SOCKET_PATH": address.path}
        )

    @defer.inlineCallbacks
    def test_existing_runtime_dir_open_to_others_is_tightened(self) -> Gen:
        os.makedirs(self.maker.runtime_dir)
        os.chmod(self.maker.runtime_dir, 0o755)
        server = self.maker.channel(instance("w1"))
        yield server.listen()
        self.assertEqual(mode_of(self.maker.runtime_dir), 0o700)

    @defer.inlineCallbacks
    def test_runtime_dir_that_is_a_symlink_is_refused(self) -> Gen:
        real = self.maker.runtime_dir + "-real"
        os.makedirs(real, mode=0o700)
        os.symlink(real, self.maker.runtime_dir)
        server = self.maker.channel(instance("w1"))
        yield self.assertFailure(server.listen(), PermissionError)
        self.assertEqual(os.listdir(real), [])

    def test_ensure_private_dir_refuses_a_file(self) -> None:
        path = self.maker.runtime_dir
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("not a directory")
        self.assertRaises(OSError, ensure_private_dir, path)

    @defer.inlineCallbacks
    def test_each_instance_gets_its_own_socket_in_the_runtime_dir(self) -> Gen:
        addresses = []
        for name in ["w1", "w2", "w/1", "w_1"]:
            server = self.maker.channel(instance(name))
            addresses.append((yield server.listen()))
        paths = [a.path for a in addresses]
        self.assertEqual(len(set(paths)), 4)
        self.assertEqual({os.path.dirname(p) for p in paths}, {self.maker.runtime_dir})
        self.assertEqual(sorted(str(p) for p in socket_files(self.maker.runtime_dir)), sorted(paths))
        self.assertIn("process-w1-", os.path.basename(paths[0]))

    def test_socket_paths_stay_unique_and_within_the_address_limit(self) -> None:
        runtime_dir = "/tmp/" + "d" * 40
        ids = [
            instance("a/b"),
            instance("a_b"),
            instance("a b"),
            RuntimeInstanceId(RuntimeType.WASM, "a_b"),
            instance("x" * 200),
            instance("x" * 201),
        ]
        paths = [socket_path_for(runtime_dir, i) for i in ids]
        self.assertEqual(len(set(paths)), len(ids))
        for path in paths:
            self.assertLessEqual(len(os.fsencode(path)), MAX_SOCKET_PATH)
            self.assertEqual(os.path.dirname(path), runtime_dir)
        self.assertRaises(ValueError, socket_path_for, "/tmp/" + "d" * 100, instance("w1"))

    @defer.inlineCallbacks
    def test_socket_file_is_removed_on_close(self) -> Gen:
        server, _client = yield self.maker.pair()
        path = server.address.path
        self.assertTrue(os.path.exists(path))
        yield server.close()
        self.assertFalse(os.path.exists(path))
        self.assertEqual(socket_files(self.maker.runtime_dir), [])

    @defer.inlineCallbacks
    def test_stale_socket_from_a_crashed_run_is_replaced(self) -> Gen:
        iid = instance("w1")
        path = socket_path_for(ensure_private_dir(self.maker.runtime_dir), iid)
        # A crashed run: bound and listened, then gone without unlinking.
        crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        crashed.bind(path)
        crashed.listen(1)
        crashed.close()
        self.assertTrue(stat.S_ISSOCK(os.lstat(path).st_mode))
        server, client = yield self.maker.pair(iid)
        self.assertEqual(server.address.path, path)
        EchoAgent(client)
        response = yield server.request_response(execute("t", "fresh"))
        self.assertEqual(response.parse_payload().output, "process:w1:fresh")

    @defer.inlineCallbacks
    def test_a_live_socket_is_never_stolen(self) -> Gen:
        iid = instance("w1")
        server, client = yield self.maker.pair(iid)
        EchoAgent(client)
        rival = self.maker.channel(iid)
        yield self.assertFailure(rival.listen(), CannotListenError)
        self.assertRaises(CannotListenError, clear_stale_socket, server.address.path)
        # The owner still listens and serves.
        self.assertTrue(os.path.exists(server.address.path))
        response = yield server.request_response(execute("t", "mine"))
        self.assertEqual(response.parse_payload().output, "process:w1:mine")
        self.assertTrue(server.is_connected())

    @defer.inlineCallbacks
    def test_a_file_that_is_not_a_socket_is_left_alone(self) -> Gen:
        path = os.path.join(ensure_private_dir(self.maker.runtime_dir), "in-the-way")
        with open(path, "w") as f:
            f.write("precious")
        server = self.maker.channel(instance("w1"), socket_path=path)
        yield self.assertFailure(server.listen(), CannotListenError)
        with open(path) as f:
            self.assertEqual(f.read(), "precious")

    @defer.inlineCallbacks
    def test_pinned_socket_path_is_used(self) -> Gen:
        path = os.path.join(os.path.dirname(self.maker.runtime_dir), "pinned", "agent.sock")
        server, _client = yield self.maker.pair(spearlet={"socket_path": path})
        self.assertEqual(server.address.path, path)
        self.assertEqual(mode_of(os.path.dirname(path)), 0o700)
        self.assertEqual(mode_of(path), 0o600)

    @defer.inlineCallbacks
    def test_listening_side_records_the_peers_credentials(self) -> Gen:
        ours = PeerCredentials(os.getpid(), os.getuid(), os.getgid())
        server, _client = yield self.maker.pair()
        self.assertEqual(server.connection.peer_credentials, ours)
        # Also when the agent listens and the spearlet dials.
        other = instance("w2")
        server2, client2 = yield self.maker.pair(other, agent_dials=False)
        self.assertEqual(client2.connection.peer_credentials, ours)
        self.assertTrue(server2.is_connected())

    @defer.inlineCallbacks
    def test_allowed_uids_refuse_other_users(self) -> Gen:
        iid = instance("w1")
        token = self.maker.registry.issue(iid)
        server = self.maker.channel(iid, allowed_uids={os.getuid() + 1})
        address = yield server.listen()
        client = self.maker.channel(iid, role=Role.AGENT, token=token)
        error = yield self.assertFailure(self.maker.dial(client, address), AuthenticationFailed)
        self.assertIn("not allowed", str(error))
        self.assertFalse(server.is_connected())

        allowed, _ = yield self.maker.pair(instance("w2"), spearlet={"allowed_uids": {os.getuid()}})
        self.assertTrue(allowed.is_connected())
