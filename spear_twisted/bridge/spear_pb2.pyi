from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MessageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_TYPE_UNSPECIFIED: _ClassVar[MessageType]
    MESSAGE_TYPE_AUTH_REQUEST: _ClassVar[MessageType]
    MESSAGE_TYPE_AUTH_RESPONSE: _ClassVar[MessageType]
    MESSAGE_TYPE_EXECUTE_REQUEST: _ClassVar[MessageType]
    MESSAGE_TYPE_EXECUTE_RESPONSE: _ClassVar[MessageType]
    MESSAGE_TYPE_SIGNAL: _ClassVar[MessageType]
    MESSAGE_TYPE_HEARTBEAT: _ClassVar[MessageType]
    MESSAGE_TYPE_ERROR: _ClassVar[MessageType]
    MESSAGE_TYPE_STREAM_DATA: _ClassVar[MessageType]
    MESSAGE_TYPE_CONNECTION_CLOSE: _ClassVar[MessageType]

class ExecutionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_MODE_UNSPECIFIED: _ClassVar[ExecutionMode]
    EXECUTION_MODE_SYNC: _ClassVar[ExecutionMode]
    EXECUTION_MODE_ASYNC: _ClassVar[ExecutionMode]
    EXECUTION_MODE_STREAM: _ClassVar[ExecutionMode]
    EXECUTION_MODE_INTERACTIVE: _ClassVar[ExecutionMode]

class ExecutionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_STATUS_UNSPECIFIED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_RECEIVED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_STARTED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_RUNNING: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_COMPLETED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_FAILED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_CANCELLED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_TIMEOUT: _ClassVar[ExecutionStatus]
MESSAGE_TYPE_UNSPECIFIED: MessageType
MESSAGE_TYPE_AUTH_REQUEST: MessageType
MESSAGE_TYPE_AUTH_RESPONSE: MessageType
MESSAGE_TYPE_EXECUTE_REQUEST: MessageType
MESSAGE_TYPE_EXECUTE_RESPONSE: MessageType
MESSAGE_TYPE_SIGNAL: MessageType
MESSAGE_TYPE_HEARTBEAT: MessageType
MESSAGE_TYPE_ERROR: MessageType
MESSAGE_TYPE_STREAM_DATA: MessageType
MESSAGE_TYPE_CONNECTION_CLOSE: MessageType
EXECUTION_MODE_UNSPECIFIED: ExecutionMode
EXECUTION_MODE_SYNC: ExecutionMode
EXECUTION_MODE_ASYNC: ExecutionMode
EXECUTION_MODE_STREAM: ExecutionMode
EXECUTION_MODE_INTERACTIVE: ExecutionMode
EXECUTION_STATUS_UNSPECIFIED: ExecutionStatus
EXECUTION_STATUS_RECEIVED: ExecutionStatus
EXECUTION_STATUS_STARTED: ExecutionStatus
EXECUTION_STATUS_RUNNING: ExecutionStatus
EXECUTION_STATUS_COMPLETED: ExecutionStatus
EXECUTION_STATUS_FAILED: ExecutionStatus
EXECUTION_STATUS_CANCELLED: ExecutionStatus
EXECUTION_STATUS_TIMEOUT: ExecutionStatus

class Timestamp(_message.Message):
    __slots__ = ("secs_since_epoch", "nanos_since_epoch")
    SECS_SINCE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    NANOS_SINCE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    secs_since_epoch: int
    nanos_since_epoch: int
    def __init__(self, secs_since_epoch: _Optional[int] = ..., nanos_since_epoch: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("message_type", "request_id", "timestamp", "payload", "version")
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    message_type: MessageType
    request_id: int
    timestamp: Timestamp
    payload: bytes
    version: int
    def __init__(self, message_type: _Optional[_Union[MessageType, str]] = ..., request_id: _Optional[int] = ..., timestamp: _Optional[_Union[Timestamp, _Mapping]] = ..., payload: _Optional[bytes] = ..., version: _Optional[int] = ...) -> None: ...

class ExecuteCall(_message.Message):
    __slots__ = ("task_id", "command", "args", "input", "timeout_seconds", "env", "working_dir", "mode")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    command: str
    args: _containers.RepeatedScalarFieldContainer[str]
    input: bytes
    timeout_seconds: int
    env: _containers.ScalarMap[str, str]
    working_dir: str
    mode: ExecutionMode
    def __init__(self, task_id: _Optional[str] = ..., command: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., input: _Optional[bytes] = ..., timeout_seconds: _Optional[int] = ..., env: _Optional[_Mapping[str, str]] = ..., working_dir: _Optional[str] = ..., mode: _Optional[_Union[ExecutionMode, str]] = ...) -> None: ...

class ResourceUsage(_message.Message):
    __slots__ = ("cpu_percent", "memory_bytes", "disk_read_bytes", "disk_write_bytes", "network_rx_bytes", "network_tx_bytes")
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    cpu_percent: float
    memory_bytes: int
    disk_read_bytes: int
    disk_write_bytes: int
    network_rx_bytes: int
    network_tx_bytes: int
    def __init__(self, cpu_percent: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., disk_read_bytes: _Optional[int] = ..., disk_write_bytes: _Optional[int] = ..., network_rx_bytes: _Optional[int] = ..., network_tx_bytes: _Optional[int] = ...) -> None: ...

class ExecuteResult(_message.Message):
    __slots__ = ("task_id", "status", "output", "error", "exit_code", "duration_ms", "instance_id", "resource_usage")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_USAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    status: ExecutionStatus
    output: str
    error: str
    exit_code: int
    duration_ms: int
    instance_id: str
    resource_usage: ResourceUsage
    def __init__(self, task_id: _Optional[str] = ..., status: _Optional[_Union[ExecutionStatus, str]] = ..., output: _Optional[str] = ..., error: _Optional[str] = ..., exit_code: _Optional[int] = ..., duration_ms: _Optional[int] = ..., instance_id: _Optional[str] = ..., resource_usage: _Optional[_Union[ResourceUsage, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("task_id", "instances", "ready_instances", "in_flight", "executions", "failures", "min_instances", "max_instances")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    READY_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    MIN_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    MAX_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    instances: int
    ready_instances: int
    in_flight: int
    executions: int
    failures: int
    min_instances: int
    max_instances: int
    def __init__(self, task_id: _Optional[str] = ..., instances: _Optional[int] = ..., ready_instances: _Optional[int] = ..., in_flight: _Optional[int] = ..., executions: _Optional[int] = ..., failures: _Optional[int] = ..., min_instances: _Optional[int] = ..., max_instances: _Optional[int] = ...) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("instance_id", "task_id", "state", "transport", "connected", "in_flight", "executions", "uptime_seconds")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    task_id: str
    state: str
    transport: str
    connected: bool
    in_flight: int
    executions: int
    uptime_seconds: float
    def __init__(self, instance_id: _Optional[str] = ..., task_id: _Optional[str] = ..., state: _Optional[str] = ..., transport: _Optional[str] = ..., connected: _Optional[bool] = ..., in_flight: _Optional[int] = ..., executions: _Optional[int] = ..., uptime_seconds: _Optional[float] = ...) -> None: ...

class ConnectionCounts(_message.Message):
    __slots__ = ("active", "authenticating", "total", "by_transport")
    class ByTransportEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATING_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    BY_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    active: int
    authenticating: int
    total: int
    by_transport: _containers.ScalarMap[str, int]
    def __init__(self, active: _Optional[int] = ..., authenticating: _Optional[int] = ..., total: _Optional[int] = ..., by_transport: _Optional[_Mapping[str, int]] = ...) -> None: ...

class BridgeStats(_message.Message):
    __slots__ = ("connections", "active_calls", "calls", "failed_calls", "resets")
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_CALLS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    FAILED_CALLS_FIELD_NUMBER: _ClassVar[int]
    RESETS_FIELD_NUMBER: _ClassVar[int]
    connections: int
    active_calls: int
    calls: int
    failed_calls: int
    resets: int
    def __init__(self, connections: _Optional[int] = ..., active_calls: _Optional[int] = ..., calls: _Optional[int] = ..., failed_calls: _Optional[int] = ..., resets: _Optional[int] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("server_version", "protocol_version", "uptime_seconds", "tasks", "instances", "connections", "bridge")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    protocol_version: int
    uptime_seconds: float
    tasks: _containers.RepeatedCompositeFieldContainer[TaskStatus]
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    connections: ConnectionCounts
    bridge: BridgeStats
    def __init__(self, server_version: _Optional[str] = ..., protocol_version: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., tasks: _Optional[_Iterable[_Union[TaskStatus, _Mapping]]] = ..., instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ..., connections: _Optional[_Union[ConnectionCounts, _Mapping]] = ..., bridge: _Optional[_Union[BridgeStats, _Mapping]] = ...) -> None: ...
