"""
Unix socket channels: one socket per instance in a private runtime directory.

The directory is created with mode 0700 and must belong to us and be closed
to others; each socket is 0600 and named after its instance.  A socket file
left by a crashed run is detected (nobody accepts on it) and replaced; a live
one is never taken over.  On the listening side the peer's ``SO_PEERCRED``
(pid, uid, gid) is recorded on the connection.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import stat
from pathlib import Path

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError

from spear_twisted.channels._twisted import cannot_listen_error, unix_client_endpoint
from spear_twisted.channels.channel import Channel
from spear_twisted.channels.config import ChannelAddress
from spear_twisted.wire import RuntimeInstanceId

#: Longest socket path the kernel accepts (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR/spear`` when that exists, else ``/tmp/spear-<uid>``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, "spear")
    return os.path.join("/tmp", f"spear-{os.getuid()}")


def ensure_private_dir(path: str) -> str:
    """
    Create ``path`` (mode 0700) or check an existing one: a real directory
    (not a symlink), ours, closed to group and others (tightened if it is
    ours).

    :raises PermissionError: when it belongs to someone else or is not a
        directory.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"runtime directory {path} is not a directory")
    if info.st_uid != os.getuid():
        raise PermissionError(f"runtime directory {path} belongs to uid {info.st_uid}, not to us")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def socket_path_for(runtime_dir: str, instance_id: RuntimeInstanceId) -> str:
    """
    The socket path of ``instance_id``: readable, and unique even when two ids
    sanitise to the same text (a digest of the exact id is part of the name).
    """
    digest = hashlib.sha256(str(instance_id).encode()).hexdigest()[:16]
    readable = _UNSAFE.sub("_", instance_id.instance_id)[:48]
    for name in (f"{instance_id.runtime_type.value}-{readable}-{digest}.sock", f"{digest}.sock"):
        path = os.path.join(runtime_dir, name)
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
            return path
    raise ValueError(f"runtime directory {runtime_dir} is too long for Unix socket paths")


def clear_stale_socket(path: str) -> bool:
    """
    Remove ``path`` if it is a socket nobody accepts on; True if removed.

    :raises CannotListenError: when a live process listens there, or the
        file is not a socket.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode):
        raise cannot_listen_error(
            None, path, OSError(errno.EEXIST, "a file that is not a socket is in the way")
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return True
    except BlockingIOError:
        pass  # the listener's backlog is full: it is alive
    finally:
        probe.close()
    raise cannot_listen_error(None, path, OSError(errno.EADDRINUSE, "a live process listens on this socket"))


class UnixChannel(Channel):
    """A channel over a Unix socket (``SPEAR_COMMUNICATION_TYPE=unix``)."""

    transport_name = "unix"

    def listen(self) -> Deferred[ChannelAddress]:
        """Listen on this instance's socket in the private runtime directory."""
        try:
            path = self.config.socket_path
            if path is None:
                runtime_dir = ensure_private_dir(self.config.runtime_dir or default_runtime_dir())
                path = socket_path_for(runtime_dir, self.instance_id)
            else:
                ensure_private_dir(os.path.dirname(os.path.abspath(path)))
            clear_stale_socket(path)
            port = self.reactor.listenUNIX(path, self, backlog=self.config.backlog, mode=0o600)
        except (OSError, CannotListenError, ValueError) as e:
            return defer.fail(e)
        self.add_port(port)
        self.address = ChannelAddress("unix", path=path)
        self.log.info(
            "Channel {instance_id} listening on unix:{path}", instance_id=str(self.instance_id), path=path
        )
        return defer.succeed(self.address)

    def connect_to(self, path: str) -> Deferred[Channel]:
        """Dial the Unix socket at ``path``; fires once authenticated."""
        self.address = ChannelAddress("unix", path=path)
        endpoint = unix_client_endpoint(self.reactor, path, timeout=self.config.connect_timeout)
        return self.connect(endpoint)


def socket_files(runtime_dir: str) -> list[Path]:
    """The socket files in ``runtime_dir`` (for checks that nothing is left)."""
    directory = Path(runtime_dir)
    if not directory.is_dir():
        return []
    return [entry for entry in directory.iterdir() if entry.is_socket()]
