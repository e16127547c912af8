"""
Helpers of the task execution tests.

:class:`FakePool` runs a :class:`TaskExecutionManager` over the memory
reactor of ``runtime_support.FakeRuntime``: processes are fakes, time is the
reactor's clock, and each instance's agent is a real agent-side memory
channel (:class:`FakeAgent`) whose requests the test answers, or not.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from spear_twisted.channels.config import ChannelConfig
from spear_twisted.channels.memory_channel import MemoryChannel
from spear_twisted.config import TaskConfig
from spear_twisted.errors import SpearError
from spear_twisted.execution import TaskExecutionManager
from spear_twisted.monitoring import MonitoringService
from spear_twisted.runtime import BackoffPolicy, ProcessRuntimeConfig, TaskInstance
from spear_twisted.wire import (
    AuthRequest,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionStatus,
    MessageType,
    Role,
    RuntimeInstanceId,
    SignalMessage,
    SpearMessage,
)
from tests.runtime_support import FakeProcess, FakeRuntime


class FakeAgent:
    """The agent side of one fake process: records what it receives; the test answers."""

    def __init__(self, fake: FakeRuntime, process: FakeProcess) -> None:
        env = process.env
        self.fake = fake
        self.process = process
        self.channel = MemoryChannel(
            RuntimeInstanceId.parse(env["SPEAR_INSTANCE_ID"]),
            reactor=fake.reactor,
            config=ChannelConfig(heartbeat_interval=None, heartbeat_timeout=None),
            role=Role.AGENT,
            credentials=AuthRequest(env["SPEAR_INSTANCE_ID"], env["SPEAR_SECRET"], "1", "test"),
            hub=fake.hub,
        )
        fake.agents.append(self.channel)
        process.agent = self.channel
        #: Every message received, in order.
        self.received: list[SpearMessage] = []
        self._answered: set[int] = set()
        self.connected = self.channel.connect_to(env["SPEAR_MEMORY_NAME"])
        self._listen()

    def _listen(self) -> None:
        self.channel.receive().addCallbacks(self._got, lambda _: None)

    def _got(self, message: SpearMessage) -> None:
        self.received.append(message)
        self._listen()

    @property
    def requests(self) -> list[SpearMessage]:
        """The ``ExecuteRequest`` messages received."""
        return [message for message in self.received if message.message_type is MessageType.EXECUTE_REQUEST]

    @property
    def signals(self) -> list[tuple[int, SignalMessage]]:
        """``(request id, body)`` of the ``Signal`` messages received."""
        return [
            (message.request_id, message.parse_payload())  # type: ignore[misc]
            for message in self.received
            if message.message_type is MessageType.SIGNAL
        ]

    def refuse(self, request: SpearMessage, error: SpearError) -> None:
        """Answer ``request`` with an ``Error`` message."""
        error.request_id = request.request_id
        self.channel.send(SpearMessage.from_error(error))
        self.fake.reactor.pump()

    def answer_all(self) -> None:
        """Answer every request received and not yet answered (answering may bring more: not those)."""
        for request in [request for request in self.requests if request.request_id not in self._answered]:
            self.answer(request)

    def answer(self, request: SpearMessage, output: str | None = None, **changes: Any) -> None:
        """Answer ``request`` (Completed, its command as output, unless ``changes`` say otherwise)."""
        self._answered.add(request.request_id)
        body = request.parse_payload()
        assert isinstance(body, ExecuteRequest)
        fields: dict[str, Any] = {
            "task_id": body.task_id,
            "status": ExecutionStatus.COMPLETED,
            "output": body.command if output is None else output,
            "exit_code": 0,
        }
        fields.update(changes)
        self.channel.send(SpearMessage.execute_response(request.request_id, ExecuteResponse(**fields)))
        self.fake.reactor.pump()


class FakePool:
    """A TaskExecutionManager of one task on a :class:`FakeRuntime`."""

    def __init__(self, test: Any, *, backoff: BackoffPolicy | None = None, **task: Any) -> None:
        self.fake = FakeRuntime(
            test,
            config=ProcessRuntimeConfig(
                launcher="python", backoff=backoff or BackoffPolicy(min_delay=1, max_delay=8)
            ),
        )
        self.reactor = self.fake.reactor
        settings: dict[str, Any] = {"id": "work", "executable": "/bin/true", "stop_grace_period": 1}
        settings.update(task)
        self.task = TaskConfig(**settings)
        self.monitoring = MonitoringService()
        self.manager = TaskExecutionManager(self.fake.runtime, [self.task], monitoring=self.monitoring)
        self.pool = self.manager.pools[self.task.id]
        #: Every execute result, so that those a test leaves pending are consumed when it ends.
        self.results: list[Deferred[ExecuteResponse]] = []
        #: Agents by process pid.
        self.agents: dict[int, FakeAgent] = {}
        test.addCleanup(self.stop)

    def start(self, *, connect: bool = True) -> None:
        """Start the manager (and, with ``connect``, connect every agent)."""
        self.manager.startService()
        self.reactor.pump()
        if connect:
            self.connect()

    def connect(self) -> list[FakeAgent]:
        """Connect an agent for each running process that has none; the new agents."""
        made = []
        for process in self.reactor.processes:
            if process.running and process.original_pid not in self.agents:
                agent = self.agents[process.original_pid] = FakeAgent(self.fake, process)
                made.append(agent)
        self.reactor.pump()
        return made

    def agent(self, instance: TaskInstance) -> FakeAgent:
        """The agent of ``instance``'s current process."""
        assert instance.pid is not None
        return self.agents[instance.pid]

    def execute(
        self, command: str = "run", timeout: float | None = None, **request: Any
    ) -> Deferred[ExecuteResponse]:
        result = self.manager.execute(self.task.id, ExecuteRequest(self.task.id, command, **request), timeout)
        self.results.append(result)
        self.reactor.pump()
        return result

    @property
    def instances(self) -> list[TaskInstance]:
        return [member.instance for member in self.pool.members]

    def loads(self) -> list[int]:
        """Requests each agent received, in the pool's order."""
        return [len(self.agent(instance).requests) for instance in self.instances]

    def stop(self) -> None:
        """
        Stop the manager, driving the fake clock until every instance is
        gone; the requests still pending fail then, and are consumed.
        """
        if self.manager.running:
            stopping = self.manager.stopService()
            for _ in range(200):
                self.reactor.advance(1)
                if stopping.called:
                    break
            else:
                raise AssertionError("the manager did not stop")
        for result in self.results:
            result.addErrback(lambda _: None)
