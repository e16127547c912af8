"""
Helpers shared by the process runtime and agent tests.

Two kinds of test use them:

* unit tests of the supervisor, in the style of Twisted's procmon tests: a
  memory reactor whose ``spawnProcess`` makes :class:`FakeProcess` es, time
  from its ``Clock``, and :class:`FakeGroups` recording the signals sent;
  the instances' channels are real, over the in-process memory transport,
  and a real agent-side channel authenticates on them;
* end-to-end tests with real children: :func:`real_runtime` spawns real
  Python programs that import this worktree's source.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from spear_twisted.auth import SecretRegistry
from spear_twisted.channels.channel import Channel
from spear_twisted.channels.config import ChannelConfig
from spear_twisted.channels.factory import CommunicationFactory
from spear_twisted.channels.memory import MemoryHub
from spear_twisted.channels.memory_channel import MemoryChannel
from spear_twisted.runtime.events import RuntimeEvent, RuntimeEventKind
from spear_twisted.runtime.model import InstanceStatus, TaskInstance
from spear_twisted.runtime.process import ProcessRuntime, ProcessRuntimeConfig
from spear_twisted.runtime.reaping import ProcessGroups
from spear_twisted.wire import AuthRequest, Role
from tests.channel_support import short_temp_dir

#: The worktree root: children import spear_twisted from here.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The environment real children inherit: enough to run this Python on this source.
CHILD_ENV = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": ROOT, "LANG": "C.UTF-8"}

#: ``inherit_env`` for real children.
CHILD_INHERIT = ("PATH", "PYTHONPATH", "LANG")

#: An agent that answers "alive", and dies with status 3 on the command "crash".
CRASHING_AGENT = """
import os
from spear_twisted.agent import run

def handle(request):
    if request.command == "crash":
        os._exit(3)
    return "alive"

raise SystemExit(run(handle))
"""


# -- the memory reactor ------------------------------------------------------------------------


@implementer(IProcessTransport)
class FakeProcess:
    """A process of :class:`FakeProcessReactor`: it ends when the test says so."""

    def __init__(
        self, reactor: FakeProcessReactor, executable: str, args: list[str], env: Any, path: Any, proto: Any
    ) -> None:
        self.reactor = reactor
        self.executable = executable
        self.args = args
        self.env = env
        self.path = path
        self.proto = proto
        self.pid: int | None = reactor.next_pid()
        self.original_pid = self.pid
        self.stdin_closed = False
        self.lost = False
        #: The agent-side channel of this process, if the test made one.
        self.agent: Channel | None = None
        proto.makeConnection(self)

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def reapProcess(self) -> None:
        """Nothing to reap: the test ends fake processes with :meth:`exit`."""

    def loseConnection(self) -> None:
        self.lost = True

    def signalProcess(self, signal_id: Any) -> None:
        raise AssertionError("the runtime signals process groups, not processes")

    def exit(self, code: int | None = 0, signal_number: int | None = None) -> None:
        """End the process with exit status ``code`` or by ``signal_number``."""
        assert self.pid is not None, "already exited"
        self.pid = None
        # A real process's connection dies with it.
        if self.agent is not None and self.agent.connection is not None:
            self.agent.connection.abort()
        if signal_number is None and code == 0:
            reason: Failure = Failure(ProcessDone(0))
        else:
            status = (code or 0) << 8 if signal_number is None else signal_number
            reason = Failure(
                ProcessTerminated(code if signal_number is None else None, signal_number, status)
            )
        self.proto.processExited(reason)
        self.proto.processEnded(reason)

    @property
    def running(self) -> bool:
        return self.pid is not None


class FakeProcessReactor(MemoryReactorClock):
    """A memory reactor with a clock whose ``spawnProcess`` makes :class:`FakeProcess` es."""

    def __init__(self) -> None:
        super().__init__()
        self.running = True
        self.processes: list[FakeProcess] = []
        self._pids = iter(range(50000, 60000))

    def next_pid(self) -> int:
        return next(self._pids)

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: str,
        args: list[str] = (),  # type: ignore[assignment]
        env: Any = None,
        path: Any = None,
        uid: Any = None,
        gid: Any = None,
        usePTY: Any = False,
        childFDs: Any = None,
    ) -> FakeProcess:
        process = FakeProcess(self, executable, args, env, path, processProtocol)
        self.processes.append(process)
        return process

    def pump(self, turns: int = 50) -> None:
        """Run what is due now, repeatedly (the memory transport delivers on later turns)."""
        for _ in range(turns):
            if not any(call.getTime() <= self.seconds() for call in self.getDelayedCalls()):
                return
            self.advance(0)

    def process(self, pid: int) -> FakeProcess:
        for process in self.processes:
            if process.original_pid == pid:
                return process
        raise KeyError(pid)


class FakeGroups(ProcessGroups):
    """
    Process groups of :class:`FakeProcess` es: signals are recorded; SIGKILL
    ends the process at once, SIGTERM too unless it is in ``stubborn``.
    """

    def __init__(self, reactor: FakeProcessReactor) -> None:
        self.reactor = reactor
        self.sent: list[tuple[int, int]] = []
        self.stubborn: set[int] = set()

    def watch_exit(self, reactor: Any, pid: int, on_exit: Callable[[], object]) -> Callable[[], None]:
        return lambda: None

    def signal(self, pgid: int, number: int) -> bool:
        process = self.reactor.process(pgid)
        if not process.running:
            return False
        self.sent.append((pgid, number))
        if number == signal.SIGKILL or (number == signal.SIGTERM and pgid not in self.stubborn):
            self.reactor.callLater(0, process.exit, None, number)
        return True

    def signal_process(self, pid: int, number: int) -> bool:
        raise AssertionError("fake processes always have their group")

    def alive(self, pgid: int) -> bool:
        return self.reactor.process(pgid).running

    def reap(self, pgid: int) -> int:
        return 0


class FakeRuntime:
    """A ProcessRuntime on a :class:`FakeProcessReactor`, its channels on a memory hub."""

    def __init__(self, test: Any, *, config: ProcessRuntimeConfig | None = None, **channel: Any) -> None:
        self.reactor = FakeProcessReactor()
        self.hub = MemoryHub(self.reactor)
        self.registry = SecretRegistry()
        settings: dict[str, Any] = {
            "transports": ("memory",),
            "heartbeat_interval": None,
            "heartbeat_timeout": None,
        }
        settings.update(channel)
        self.factory = CommunicationFactory(
            reactor=self.reactor,
            validator=self.registry,
            config=ChannelConfig(**settings),
            memory_hub=self.hub,
        )
        self.groups = FakeGroups(self.reactor)
        self.runtime = ProcessRuntime(
            self.factory,
            self.registry,
            reactor=self.reactor,
            config=config or ProcessRuntimeConfig(launcher="python"),
            parent_environment={"PATH": "/usr/bin:/bin", "HOME": "/home/spear", "SECRET_OF_SPEARLET": "x"},
            groups=self.groups,
        )
        self.events: list[RuntimeEvent] = []
        self.runtime.subscribe(self.events.append)
        #: The agent-side channels made by :meth:`agent`.
        self.agents: list[Channel] = []
        test.addCleanup(self.close)

    def close(self) -> None:
        """Close every channel, driving the fake reactor until they are closed."""
        closing = [self.factory.close_all(), *(agent.close() for agent in self.agents)]
        for _ in range(100):
            self.reactor.advance(1)
            if all(step.called for step in closing):
                return
        raise AssertionError("channels did not close")

    def agent(self, instance: TaskInstance, *, token: str | None = None) -> Deferred[Channel]:
        """A real agent-side memory channel for ``instance``'s last process; fires once it authenticated."""
        process = self.reactor.processes[-1]
        env = process.env
        channel = MemoryChannel(
            instance.instance_id,
            reactor=self.reactor,
            config=ChannelConfig(heartbeat_interval=None, heartbeat_timeout=None),
            role=Role.AGENT,
            credentials=AuthRequest(env["SPEAR_INSTANCE_ID"], token or env["SPEAR_SECRET"], "1", "test"),
            hub=self.hub,
        )
        self.agents.append(channel)
        process.agent = channel
        connecting = channel.connect_to(env["SPEAR_MEMORY_NAME"])
        self.reactor.pump()
        return connecting

    def events_of(self, kind: RuntimeEventKind) -> list[RuntimeEvent]:
        return [event for event in self.events if event.kind is kind]


def statuses(instance: TaskInstance) -> list[InstanceStatus]:
    """The statuses ``instance`` went through, in order."""
    return [change.new for change in instance.history]


# -- real children ------------------------------------------------------------------------------


def real_runtime(
    test: Any,
    *,
    config: ProcessRuntimeConfig | None = None,
    validator: Callable[[SecretRegistry], Any] | None = None,
    **channel: Any,
) -> ProcessRuntime:
    """
    A ProcessRuntime on the real reactor, its Unix sockets in a short
    temporary directory; ``validator``, if given, makes the handshake's
    validator from the runtime's secret registry.
    """
    registry = SecretRegistry()
    settings: dict[str, Any] = {"runtime_dir": short_temp_dir(test)}
    settings.update(channel)
    factory = CommunicationFactory(
        validator=registry if validator is None else validator(registry), config=ChannelConfig(**settings)
    )
    runtime = ProcessRuntime(
        factory,
        registry,
        config=config or ProcessRuntimeConfig(reap_orphans=True),
        parent_environment=CHILD_ENV,
    )
    test.addCleanup(factory.close_all)
    test.addCleanup(runtime.stopService)
    return runtime


def write_script(test: Any, source: str, name: str = "child.py") -> str:
    """A Python script file with ``source`` (dedented), for a child to run."""
    directory = test.mktemp()
    os.makedirs(directory)
    path = os.path.join(directory, name)
    with open(path, "w") as file:
        file.write(textwrap.dedent(source))
    return path


def python_args(script: str, *args: str) -> tuple[str, ...]:
    """``InstanceConfig.args`` that run ``script`` with this Python (unbuffered)."""
    return ("-u", script, *args)


PYTHON = sys.executable


@implementer(ILogObserver)
class LogCapture:
    """Every log event while installed, formatted and raw."""

    def __init__(self, test: Any) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)
        self._waiting: list[tuple[Callable[[LogEvent], bool], Deferred[LogEvent]]] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)
        waiting, self._waiting = self._waiting, []
        for condition, waiter in waiting:
            if condition(event):
                waiter.callback(event)
            else:
                self._waiting.append((condition, waiter))

    def text(self) -> str:
        return "\n".join(formatEvent(event) or "" for event in self.events)

    def output_lines(self, instance: TaskInstance, stream: str | None = None) -> list[str]:
        """The lines of ``instance``'s output that were logged."""
        return [
            event["line"]
            for event in self.events
            if event.get("instance_id") == str(instance.instance_id)
            and "line" in event
            and (stream is None or event.get("stream") == stream)
        ]

    def when(self, condition: Callable[[LogEvent], bool]) -> Deferred[LogEvent]:
        """Fires with the first event (from now on, or already seen) for which ``condition`` holds."""
        for event in self.events:
            if condition(event):
                return defer.succeed(event)
        waiter: Deferred[LogEvent] = Deferred()
        self._waiting.append((condition, waiter))
        return waiter

    def when_output(self, instance: TaskInstance, text: str) -> Deferred[LogEvent]:
        """Fires once ``instance`` printed a line containing ``text``."""
        instance_id = str(instance.instance_id)
        return self.when(
            lambda event: event.get("instance_id") == instance_id and text in event.get("line", "")
        )


def when_status(runtime: ProcessRuntime, instance: TaskInstance, *wanted: InstanceStatus) -> Deferred[None]:
    """Fires once ``instance`` is in one of ``wanted`` (at once if it is)."""
    if instance.status in wanted:
        return defer.succeed(None)
    done: Deferred[None] = Deferred()

    def watch(event: RuntimeEvent) -> None:
        if event.instance_id == instance.instance_id and instance.status in wanted and not done.called:
            unsubscribe()
            done.callback(None)

    unsubscribe = runtime.subscribe(watch)
    return done


def when_event(
    runtime: ProcessRuntime, instance: TaskInstance, kind: RuntimeEventKind, count: int = 1
) -> Deferred[RuntimeEvent]:
    """Fires with the ``count``-th ``kind`` event of ``instance`` from now on."""
    done: Deferred[RuntimeEvent] = Deferred()
    seen = []

    def watch(event: RuntimeEvent) -> None:
        if event.instance_id == instance.instance_id and event.kind is kind and not done.called:
            seen.append(event)
            if len(seen) >= count:
                unsubscribe()
                done.callback(event)

    unsubscribe = runtime.subscribe(watch)
    return done


def with_timeout(deferred: Deferred[Any], seconds: float, what: str) -> Deferred[Any]:
    """``deferred``, failing the test with ``what`` if it has not fired within ``seconds`` (wall time)."""
    timer = real_reactor.callLater(seconds, lambda: deferred.cancel())

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        elif isinstance(result, Failure) and result.check(defer.CancelledError):
            raise AssertionError(f"{what} did not happen within {seconds:g} s")
        return result

    return deferred.addBoth(done)


def pids_in_group(pgid: int) -> list[int]:
    """The live (non-zombie) processes of group ``pgid``."""
    import psutil

    found = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except (OSError, psutil.Error):
            continue
    return found


@defer.inlineCallbacks
def execute(
    runtime: ProcessRuntime, instance: TaskInstance, *args: str, command: str = "run"
) -> Generator[Any, Any, Any]:
    """Send an ExecuteRequest to ``instance`` and return the ExecuteResponse body."""
    from spear_twisted.wire import ExecuteRequest, SpearMessage

    channel = runtime.factory.get_channel(instance.instance_id)
    assert channel is not None
    response = yield channel.request_response(
        SpearMessage.execute_request(0, ExecuteRequest(instance.task_id, command, args)), 30
    )
    return response.parse_payload()
