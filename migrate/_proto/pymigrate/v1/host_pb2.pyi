import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NetworkMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NETWORK_MODE_UNSPECIFIED: _ClassVar[NetworkMode]
    NETWORK_MODE_BRIDGE: _ClassVar[NetworkMode]
    NETWORK_MODE_NONE: _ClassVar[NetworkMode]
    NETWORK_MODE_HOST: _ClassVar[NetworkMode]
    NETWORK_MODE_CONTAINER: _ClassVar[NetworkMode]

class ContainerStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTAINER_STATUS_UNSPECIFIED: _ClassVar[ContainerStatus]
    CONTAINER_STATUS_CREATED: _ClassVar[ContainerStatus]
    CONTAINER_STATUS_RUNNING: _ClassVar[ContainerStatus]
    CONTAINER_STATUS_PAUSED: _ClassVar[ContainerStatus]
    CONTAINER_STATUS_EXITED: _ClassVar[ContainerStatus]

class Compression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPRESSION_UNSPECIFIED: _ClassVar[Compression]
    COMPRESSION_ZSTD: _ClassVar[Compression]
    COMPRESSION_NONE: _ClassVar[Compression]

class MigrationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIGRATION_MODE_UNSPECIFIED: _ClassVar[MigrationMode]
    MIGRATION_MODE_COLD: _ClassVar[MigrationMode]
    MIGRATION_MODE_POSTCOPY: _ClassVar[MigrationMode]
    MIGRATION_MODE_PRECOPY: _ClassVar[MigrationMode]
    MIGRATION_MODE_AUTO: _ClassVar[MigrationMode]

class SettlementOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SETTLEMENT_OUTCOME_UNSPECIFIED: _ClassVar[SettlementOutcome]
    SETTLEMENT_OUTCOME_UNKNOWN: _ClassVar[SettlementOutcome]
    SETTLEMENT_OUTCOME_PENDING: _ClassVar[SettlementOutcome]
    SETTLEMENT_OUTCOME_COMMITTED: _ClassVar[SettlementOutcome]
    SETTLEMENT_OUTCOME_ABORTED: _ClassVar[SettlementOutcome]
    SETTLEMENT_OUTCOME_LOST: _ClassVar[SettlementOutcome]
NETWORK_MODE_UNSPECIFIED: NetworkMode
NETWORK_MODE_BRIDGE: NetworkMode
NETWORK_MODE_NONE: NetworkMode
NETWORK_MODE_HOST: NetworkMode
NETWORK_MODE_CONTAINER: NetworkMode
CONTAINER_STATUS_UNSPECIFIED: ContainerStatus
CONTAINER_STATUS_CREATED: ContainerStatus
CONTAINER_STATUS_RUNNING: ContainerStatus
CONTAINER_STATUS_PAUSED: ContainerStatus
CONTAINER_STATUS_EXITED: ContainerStatus
COMPRESSION_UNSPECIFIED: Compression
COMPRESSION_ZSTD: Compression
COMPRESSION_NONE: Compression
MIGRATION_MODE_UNSPECIFIED: MigrationMode
MIGRATION_MODE_COLD: MigrationMode
MIGRATION_MODE_POSTCOPY: MigrationMode
MIGRATION_MODE_PRECOPY: MigrationMode
MIGRATION_MODE_AUTO: MigrationMode
SETTLEMENT_OUTCOME_UNSPECIFIED: SettlementOutcome
SETTLEMENT_OUTCOME_UNKNOWN: SettlementOutcome
SETTLEMENT_OUTCOME_PENDING: SettlementOutcome
SETTLEMENT_OUTCOME_COMMITTED: SettlementOutcome
SETTLEMENT_OUTCOME_ABORTED: SettlementOutcome
SETTLEMENT_OUTCOME_LOST: SettlementOutcome

class Volume(_message.Message):
    __slots__ = ("source", "target", "readonly", "name")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    READONLY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    readonly: bool
    name: str
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ..., readonly: _Optional[bool] = ..., name: _Optional[str] = ...) -> None: ...

class PortMapping(_message.Message):
    __slots__ = ("container_port", "protocol", "host_port", "host_ip")
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    container_port: int
    protocol: str
    host_port: int
    host_ip: str
    def __init__(self, container_port: _Optional[int] = ..., protocol: _Optional[str] = ..., host_port: _Optional[int] = ..., host_ip: _Optional[str] = ...) -> None: ...

class PortList(_message.Message):
    __slots__ = ("ports",)
    PORTS_FIELD_NUMBER: _ClassVar[int]
    ports: _containers.RepeatedCompositeFieldContainer[PortMapping]
    def __init__(self, ports: _Optional[_Iterable[_Union[PortMapping, _Mapping]]] = ...) -> None: ...

class ContainerSpec(_message.Message):
    __slots__ = ("container_id", "name", "image", "image_digest", "command", "env", "workdir", "hostname", "memory_bytes", "cpus", "pids_limit", "network", "ip", "mac", "volumes", "cgroup_parent", "created_at", "seccomp", "seccomp_profile", "user", "stop_signal", "auto_remove", "read_only", "cap_add", "cap_drop", "ports", "restart", "init", "tty", "interactive", "pid_mode", "ipc_mode", "uts_mode", "cgroupns_mode", "network_container", "userns", "userns_base", "userns_size", "labels", "create_time", "engine_mounts")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    PIDS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    CGROUP_PARENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_PROFILE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    STOP_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    AUTO_REMOVE_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    CAP_ADD_FIELD_NUMBER: _ClassVar[int]
    CAP_DROP_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    INTERACTIVE_FIELD_NUMBER: _ClassVar[int]
    PID_MODE_FIELD_NUMBER: _ClassVar[int]
    IPC_MODE_FIELD_NUMBER: _ClassVar[int]
    UTS_MODE_FIELD_NUMBER: _ClassVar[int]
    CGROUPNS_MODE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_CONTAINER_FIELD_NUMBER: _ClassVar[int]
    USERNS_FIELD_NUMBER: _ClassVar[int]
    USERNS_BASE_FIELD_NUMBER: _ClassVar[int]
    USERNS_SIZE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ENGINE_MOUNTS_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    name: str
    image: str
    image_digest: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedScalarFieldContainer[str]
    workdir: str
    hostname: str
    memory_bytes: int
    cpus: float
    pids_limit: int
    network: NetworkMode
    ip: str
    mac: str
    volumes: _containers.RepeatedCompositeFieldContainer[Volume]
    cgroup_parent: str
    created_at: float
    seccomp: str
    seccomp_profile: str
    user: str
    stop_signal: str
    auto_remove: bool
    read_only: bool
    cap_add: _containers.RepeatedScalarFieldContainer[str]
    cap_drop: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[PortMapping]
    restart: str
    init: bool
    tty: bool
    interactive: bool
    pid_mode: str
    ipc_mode: str
    uts_mode: str
    cgroupns_mode: str
    network_container: str
    userns: str
    userns_base: int
    userns_size: int
    labels: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    engine_mounts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, container_id: _Optional[str] = ..., name: _Optional[str] = ..., image: _Optional[str] = ..., image_digest: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[str]] = ..., workdir: _Optional[str] = ..., hostname: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., cpus: _Optional[float] = ..., pids_limit: _Optional[int] = ..., network: _Optional[_Union[NetworkMode, str]] = ..., ip: _Optional[str] = ..., mac: _Optional[str] = ..., volumes: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., cgroup_parent: _Optional[str] = ..., created_at: _Optional[float] = ..., seccomp: _Optional[str] = ..., seccomp_profile: _Optional[str] = ..., user: _Optional[str] = ..., stop_signal: _Optional[str] = ..., auto_remove: _Optional[bool] = ..., read_only: _Optional[bool] = ..., cap_add: _Optional[_Iterable[str]] = ..., cap_drop: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[PortMapping, _Mapping]]] = ..., restart: _Optional[str] = ..., init: _Optional[bool] = ..., tty: _Optional[bool] = ..., interactive: _Optional[bool] = ..., pid_mode: _Optional[str] = ..., ipc_mode: _Optional[str] = ..., uts_mode: _Optional[str] = ..., cgroupns_mode: _Optional[str] = ..., network_container: _Optional[str] = ..., userns: _Optional[str] = ..., userns_base: _Optional[int] = ..., userns_size: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., engine_mounts: _Optional[_Iterable[str]] = ...) -> None: ...

class ContainerState(_message.Message):
    __slots__ = ("status", "pid", "shim_pid", "exit_code", "oom_killed", "started_at", "finished_at", "restored_from", "checkpointed", "frozen_by", "restart_count", "manually_stopped", "shared_namespaces", "namespace_users", "start_time", "finish_time")
    class SharedNamespacesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class NamespaceUsersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SHIM_PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FROM_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTED_FIELD_NUMBER: _ClassVar[int]
    FROZEN_BY_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    MANUALLY_STOPPED_FIELD_NUMBER: _ClassVar[int]
    SHARED_NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_USERS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    status: ContainerStatus
    pid: int
    shim_pid: int
    exit_code: int
    oom_killed: bool
    started_at: float
    finished_at: float
    restored_from: str
    checkpointed: str
    frozen_by: FreezeRecord
    restart_count: int
    manually_stopped: bool
    shared_namespaces: _containers.ScalarMap[str, str]
    namespace_users: _containers.ScalarMap[str, str]
    start_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    def __init__(self, status: _Optional[_Union[ContainerStatus, str]] = ..., pid: _Optional[int] = ..., shim_pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., restored_from: _Optional[str] = ..., checkpointed: _Optional[str] = ..., frozen_by: _Optional[_Union[FreezeRecord, _Mapping]] = ..., restart_count: _Optional[int] = ..., manually_stopped: _Optional[bool] = ..., shared_namespaces: _Optional[_Mapping[str, str]] = ..., namespace_users: _Optional[_Mapping[str, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FreezeRecord(_message.Message):
    __slots__ = ("pid", "pid_start", "operation", "since", "was_paused", "recover", "partial", "since_time")
    PID_FIELD_NUMBER: _ClassVar[int]
    PID_START_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    WAS_PAUSED_FIELD_NUMBER: _ClassVar[int]
    RECOVER_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    SINCE_TIME_FIELD_NUMBER: _ClassVar[int]
    pid: int
    pid_start: int
    operation: str
    since: float
    was_paused: bool
    recover: bool
    partial: _containers.RepeatedScalarFieldContainer[str]
    since_time: _timestamp_pb2.Timestamp
    def __init__(self, pid: _Optional[int] = ..., pid_start: _Optional[int] = ..., operation: _Optional[str] = ..., since: _Optional[float] = ..., was_paused: _Optional[bool] = ..., recover: _Optional[bool] = ..., partial: _Optional[_Iterable[str]] = ..., since_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ContainerInfo(_message.Message):
    __slots__ = ("spec", "state", "bundle_dir", "cgroup", "memory_current_bytes", "pids_current")
    class CgroupEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIR_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CURRENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_CURRENT_FIELD_NUMBER: _ClassVar[int]
    spec: ContainerSpec
    state: ContainerState
    bundle_dir: str
    cgroup: _containers.ScalarMap[str, str]
    memory_current_bytes: int
    pids_current: int
    def __init__(self, spec: _Optional[_Union[ContainerSpec, _Mapping]] = ..., state: _Optional[_Union[ContainerState, _Mapping]] = ..., bundle_dir: _Optional[str] = ..., cgroup: _Optional[_Mapping[str, str]] = ..., memory_current_bytes: _Optional[int] = ..., pids_current: _Optional[int] = ...) -> None: ...

class ImageInfo(_message.Message):
    __slots__ = ("name", "digest", "size_bytes", "created_at", "layers", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    size_bytes: int
    created_at: float
    layers: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., created_at: _Optional[float] = ..., layers: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ImageRemoval(_message.Message):
    __slots__ = ("untagged", "deleted", "layers_removed", "blobs_removed", "scratch_removed", "bytes_freed")
    UNTAGGED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    LAYERS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    BLOBS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    SCRATCH_REMOVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    untagged: _containers.RepeatedScalarFieldContainer[str]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    layers_removed: _containers.RepeatedScalarFieldContainer[str]
    blobs_removed: int
    scratch_removed: int
    bytes_freed: int
    def __init__(self, untagged: _Optional[_Iterable[str]] = ..., deleted: _Optional[_Iterable[str]] = ..., layers_removed: _Optional[_Iterable[str]] = ..., blobs_removed: _Optional[int] = ..., scratch_removed: _Optional[int] = ..., bytes_freed: _Optional[int] = ...) -> None: ...

class HostInfo(_message.Message):
    __slots__ = ("version", "hostname", "kernel", "criu_version", "features", "cgroup_mode", "cpu_digest", "images")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    CRIU_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CGROUP_MODE_FIELD_NUMBER: _ClassVar[int]
    CPU_DIGEST_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    version: str
    hostname: str
    kernel: str
    criu_version: str
    features: _containers.ScalarMap[str, bool]
    cgroup_mode: str
    cpu_digest: str
    images: _containers.RepeatedCompositeFieldContainer[ImageInfo]
    def __init__(self, version: _Optional[str] = ..., hostname: _Optional[str] = ..., kernel: _Optional[str] = ..., criu_version: _Optional[str] = ..., features: _Optional[_Mapping[str, bool]] = ..., cgroup_mode: _Optional[str] = ..., cpu_digest: _Optional[str] = ..., images: _Optional[_Iterable[_Union[ImageInfo, _Mapping]]] = ...) -> None: ...

class ProgressEvent(_message.Message):
    __slots__ = ("operation", "phase", "bytes_done", "bytes_total", "elapsed_s", "message", "elapsed")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    operation: str
    phase: str
    bytes_done: int
    bytes_total: int
    elapsed_s: float
    message: str
    elapsed: _duration_pb2.Duration
    def __init__(self, operation: _Optional[str] = ..., phase: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., elapsed_s: _Optional[float] = ..., message: _Optional[str] = ..., elapsed: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CheckpointStats(_message.Message):
    __slots__ = ("freezing_ms", "frozen_ms", "memdump_ms", "memwrite_ms", "pages_scanned", "pages_skipped_parent", "pages_written", "images_bytes", "upper_bytes", "archive_bytes", "archive_ms", "total_ms", "freezing_duration", "frozen_duration", "memdump_duration", "memwrite_duration", "archive_duration", "total_duration")
    FREEZING_MS_FIELD_NUMBER: _ClassVar[int]
    FROZEN_MS_FIELD_NUMBER: _ClassVar[int]
    MEMDUMP_MS_FIELD_NUMBER: _ClassVar[int]
    MEMWRITE_MS_FIELD_NUMBER: _ClassVar[int]
    PAGES_SCANNED_FIELD_NUMBER: _ClassVar[int]
    PAGES_SKIPPED_PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    IMAGES_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPPER_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    FREEZING_DURATION_FIELD_NUMBER: _ClassVar[int]
    FROZEN_DURATION_FIELD_NUMBER: _ClassVar[int]
    MEMDUMP_DURATION_FIELD_NUMBER: _ClassVar[int]
    MEMWRITE_DURATION_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_DURATION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    freezing_ms: float
    frozen_ms: float
    memdump_ms: float
    memwrite_ms: float
    pages_scanned: int
    pages_skipped_parent: int
    pages_written: int
    images_bytes: int
    upper_bytes: int
    archive_bytes: int
    archive_ms: float
    total_ms: float
    freezing_duration: _duration_pb2.Duration
    frozen_duration: _duration_pb2.Duration
    memdump_duration: _duration_pb2.Duration
    memwrite_duration: _duration_pb2.Duration
    archive_duration: _duration_pb2.Duration
    total_duration: _duration_pb2.Duration
    def __init__(self, freezing_ms: _Optional[float] = ..., frozen_ms: _Optional[float] = ..., memdump_ms: _Optional[float] = ..., memwrite_ms: _Optional[float] = ..., pages_scanned: _Optional[int] = ..., pages_skipped_parent: _Optional[int] = ..., pages_written: _Optional[int] = ..., images_bytes: _Optional[int] = ..., upper_bytes: _Optional[int] = ..., archive_bytes: _Optional[int] = ..., archive_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., freezing_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., frozen_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., memdump_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., memwrite_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., archive_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CheckpointResult(_message.Message):
    __slots__ = ("checkpoint_id", "container_name", "export_path", "stats", "signed_by", "image_ref", "image_digest")
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPORT_PATH_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    SIGNED_BY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_REF_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    checkpoint_id: str
    container_name: str
    export_path: str
    stats: CheckpointStats
    signed_by: str
    image_ref: str
    image_digest: str
    def __init__(self, checkpoint_id: _Optional[str] = ..., container_name: _Optional[str] = ..., export_path: _Optional[str] = ..., stats: _Optional[_Union[CheckpointStats, _Mapping]] = ..., signed_by: _Optional[str] = ..., image_ref: _Optional[str] = ..., image_digest: _Optional[str] = ...) -> None: ...

class CheckpointInfo(_message.Message):
    __slots__ = ("checkpoint_id", "container_name", "container_id", "image_digest", "created_at", "size_bytes", "criu_version", "labels", "create_time")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CRIU_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    checkpoint_id: str
    container_name: str
    container_id: str
    image_digest: str
    created_at: float
    size_bytes: int
    criu_version: str
    labels: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, checkpoint_id: _Optional[str] = ..., container_name: _Optional[str] = ..., container_id: _Optional[str] = ..., image_digest: _Optional[str] = ..., created_at: _Optional[float] = ..., size_bytes: _Optional[int] = ..., criu_version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RestoreStats(_message.Message):
    __slots__ = ("import_ms", "restore_ms", "total_ms", "archive_bytes", "images_bytes", "since_resume_ms", "import_duration", "restore_duration", "total_duration", "since_resume_duration")
    IMPORT_MS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_BYTES_FIELD_NUMBER: _ClassVar[int]
    SINCE_RESUME_MS_FIELD_NUMBER: _ClassVar[int]
    IMPORT_DURATION_FIELD_NUMBER: _ClassVar[int]
    RESTORE_DURATION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    SINCE_RESUME_DURATION_FIELD_NUMBER: _ClassVar[int]
    import_ms: float
    restore_ms: float
    total_ms: float
    archive_bytes: int
    images_bytes: int
    since_resume_ms: float
    import_duration: _duration_pb2.Duration
    restore_duration: _duration_pb2.Duration
    total_duration: _duration_pb2.Duration
    since_resume_duration: _duration_pb2.Duration
    def __init__(self, import_ms: _Optional[float] = ..., restore_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., archive_bytes: _Optional[int] = ..., images_bytes: _Optional[int] = ..., since_resume_ms: _Optional[float] = ..., import_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., restore_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., since_resume_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RestoreResult(_message.Message):
    __slots__ = ("container", "stats", "signed_by")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    SIGNED_BY_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    stats: RestoreStats
    signed_by: str
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ..., stats: _Optional[_Union[RestoreStats, _Mapping]] = ..., signed_by: _Optional[str] = ...) -> None: ...

class MigrationStats(_message.Message):
    __slots__ = ("frozen_ms", "total_ms", "bytes_on_wire", "raw_bytes", "phases_ms", "upper_entries_frozen", "image_bytes", "image_layers_sent", "frozen_duration", "total_duration", "phase_durations")
    class PhasesMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class PhaseDurationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _duration_pb2.Duration
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
    FROZEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BYTES_ON_WIRE_FIELD_NUMBER: _ClassVar[int]
    RAW_BYTES_FIELD_NUMBER: _ClassVar[int]
    PHASES_MS_FIELD_NUMBER: _ClassVar[int]
    UPPER_ENTRIES_FROZEN_FIELD_NUMBER: _ClassVar[int]
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_LAYERS_SENT_FIELD_NUMBER: _ClassVar[int]
    FROZEN_DURATION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    PHASE_DURATIONS_FIELD_NUMBER: _ClassVar[int]
    frozen_ms: float
    total_ms: float
    bytes_on_wire: int
    raw_bytes: int
    phases_ms: _containers.ScalarMap[str, float]
    upper_entries_frozen: int
    image_bytes: int
    image_layers_sent: int
    frozen_duration: _duration_pb2.Duration
    total_duration: _duration_pb2.Duration
    phase_durations: _containers.MessageMap[str, _duration_pb2.Duration]
    def __init__(self, frozen_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., bytes_on_wire: _Optional[int] = ..., raw_bytes: _Optional[int] = ..., phases_ms: _Optional[_Mapping[str, float]] = ..., upper_entries_frozen: _Optional[int] = ..., image_bytes: _Optional[int] = ..., image_layers_sent: _Optional[int] = ..., frozen_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., phase_durations: _Optional[_Mapping[str, _duration_pb2.Duration]] = ...) -> None: ...

class MigrateResult(_message.Message):
    __slots__ = ("container_name", "dest", "mode", "stats")
    CONTAINER_NAME_FIELD_NUMBER: _ClassVar[int]
    DEST_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    container_name: str
    dest: str
    mode: MigrationMode
    stats: MigrationStats
    def __init__(self, container_name: _Optional[str] = ..., dest: _Optional[str] = ..., mode: _Optional[_Union[MigrationMode, str]] = ..., stats: _Optional[_Union[MigrationStats, _Mapping]] = ...) -> None: ...

class MigrationEvent(_message.Message):
    __slots__ = ("phase", "bytes_done", "bytes_total", "throughput_bytes_per_s", "elapsed_s", "message", "elapsed")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    phase: str
    bytes_done: int
    bytes_total: int
    throughput_bytes_per_s: float
    elapsed_s: float
    message: str
    elapsed: _duration_pb2.Duration
    def __init__(self, phase: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., throughput_bytes_per_s: _Optional[float] = ..., elapsed_s: _Optional[float] = ..., message: _Optional[str] = ..., elapsed: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetHostInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetHostInfoResponse(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: HostInfo
    def __init__(self, host: _Optional[_Union[HostInfo, _Mapping]] = ...) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images", "next_page_token")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageInfo]
    next_page_token: str
    def __init__(self, images: _Optional[_Iterable[_Union[ImageInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ImportImageRequest(_message.Message):
    __slots__ = ("name", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ImportImageResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: ImageInfo
    def __init__(self, image: _Optional[_Union[ImageInfo, _Mapping]] = ...) -> None: ...

class RemoveImageRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveImageResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: ImageRemoval
    def __init__(self, removed: _Optional[_Union[ImageRemoval, _Mapping]] = ...) -> None: ...

class TagImageRequest(_message.Message):
    __slots__ = ("source", "target")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class TagImageResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: ImageInfo
    def __init__(self, image: _Optional[_Union[ImageInfo, _Mapping]] = ...) -> None: ...

class PruneImagesRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class PruneImagesResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: ImageRemoval
    def __init__(self, removed: _Optional[_Union[ImageRemoval, _Mapping]] = ...) -> None: ...

class BuildBusyboxImageRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class BuildBusyboxImageResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: ImageInfo
    def __init__(self, image: _Optional[_Union[ImageInfo, _Mapping]] = ...) -> None: ...

class CommitContainerRequest(_message.Message):
    __slots__ = ("name", "target", "changes", "message", "author", "no_pause")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    NO_PAUSE_FIELD_NUMBER: _ClassVar[int]
    name: str
    target: str
    changes: _containers.RepeatedScalarFieldContainer[str]
    message: str
    author: str
    no_pause: bool
    def __init__(self, name: _Optional[str] = ..., target: _Optional[str] = ..., changes: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ..., author: _Optional[str] = ..., no_pause: _Optional[bool] = ...) -> None: ...

class CommitContainerResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: CommitResult
    def __init__(self, result: _Optional[_Union[CommitResult, _Mapping]] = ...) -> None: ...

class CommitResult(_message.Message):
    __slots__ = ("image", "layer_diff_id", "layer_bytes", "whiteouts", "opaque_dirs", "skipped", "frozen_ms", "frozen_duration")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LAYER_DIFF_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_BYTES_FIELD_NUMBER: _ClassVar[int]
    WHITEOUTS_FIELD_NUMBER: _ClassVar[int]
    OPAQUE_DIRS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FROZEN_MS_FIELD_NUMBER: _ClassVar[int]
    FROZEN_DURATION_FIELD_NUMBER: _ClassVar[int]
    image: ImageInfo
    layer_diff_id: str
    layer_bytes: int
    whiteouts: int
    opaque_dirs: int
    skipped: _containers.RepeatedScalarFieldContainer[str]
    frozen_ms: float
    frozen_duration: _duration_pb2.Duration
    def __init__(self, image: _Optional[_Union[ImageInfo, _Mapping]] = ..., layer_diff_id: _Optional[str] = ..., layer_bytes: _Optional[int] = ..., whiteouts: _Optional[int] = ..., opaque_dirs: _Optional[int] = ..., skipped: _Optional[_Iterable[str]] = ..., frozen_ms: _Optional[float] = ..., frozen_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class InspectImageRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class InspectImageResponse(_message.Message):
    __slots__ = ("image", "config_json")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    image: ImageInfo
    config_json: str
    def __init__(self, image: _Optional[_Union[ImageInfo, _Mapping]] = ..., config_json: _Optional[str] = ...) -> None: ...

class LoadImageRequest(_message.Message):
    __slots__ = ("name", "platform", "data", "seq", "crc32")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    name: str
    platform: str
    data: bytes
    seq: int
    crc32: int
    def __init__(self, name: _Optional[str] = ..., platform: _Optional[str] = ..., data: _Optional[bytes] = ..., seq: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class LoadImageResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: ImageInfo
    def __init__(self, image: _Optional[_Union[ImageInfo, _Mapping]] = ...) -> None: ...

class RegistryOptions(_message.Message):
    __slots__ = ("tls_verify", "cert_dir", "creds", "authfile")
    TLS_VERIFY_FIELD_NUMBER: _ClassVar[int]
    CERT_DIR_FIELD_NUMBER: _ClassVar[int]
    CREDS_FIELD_NUMBER: _ClassVar[int]
    AUTHFILE_FIELD_NUMBER: _ClassVar[int]
    tls_verify: bool
    cert_dir: str
    creds: str
    authfile: str
    def __init__(self, tls_verify: _Optional[bool] = ..., cert_dir: _Optional[str] = ..., creds: _Optional[str] = ..., authfile: _Optional[str] = ...) -> None: ...

class PullImageRequest(_message.Message):
    __slots__ = ("reference", "name", "platform", "registry")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    reference: str
    name: str
    platform: str
    registry: RegistryOptions
    def __init__(self, reference: _Optional[str] = ..., name: _Optional[str] = ..., platform: _Optional[str] = ..., registry: _Optional[_Union[RegistryOptions, _Mapping]] = ...) -> None: ...

class PullImageResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: ProgressEvent
    result: ImageInfo
    def __init__(self, progress: _Optional[_Union[ProgressEvent, _Mapping]] = ..., result: _Optional[_Union[ImageInfo, _Mapping]] = ...) -> None: ...

class PushImageToRegistryRequest(_message.Message):
    __slots__ = ("name", "reference", "registry")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    name: str
    reference: str
    registry: RegistryOptions
    def __init__(self, name: _Optional[str] = ..., reference: _Optional[str] = ..., registry: _Optional[_Union[RegistryOptions, _Mapping]] = ...) -> None: ...

class RegistryPushResult(_message.Message):
    __slots__ = ("name", "reference", "digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    reference: str
    digest: str
    def __init__(self, name: _Optional[str] = ..., reference: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class PushImageToRegistryResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: ProgressEvent
    result: RegistryPushResult
    def __init__(self, progress: _Optional[_Union[ProgressEvent, _Mapping]] = ..., result: _Optional[_Union[RegistryPushResult, _Mapping]] = ...) -> None: ...

class ListContainersRequest(_message.Message):
    __slots__ = ("all", "filter", "page_size", "page_token")
    ALL_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    all: bool
    filter: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: str
    def __init__(self, all: _Optional[bool] = ..., filter: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListContainersResponse(_message.Message):
    __slots__ = ("containers", "next_page_token")
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    containers: _containers.RepeatedCompositeFieldContainer[ContainerInfo]
    next_page_token: str
    def __init__(self, containers: _Optional[_Iterable[_Union[ContainerInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class InspectContainerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class InspectContainerResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class RunContainerRequest(_message.Message):
    __slots__ = ("image", "command", "name", "hostname", "env", "workdir", "memory_bytes", "cpus", "pids_limit", "network", "ip", "volumes", "cgroup_parent", "seccomp", "seccomp_profile", "user", "entrypoint", "entrypoint_set", "stop_signal", "auto_remove", "read_only", "cap_add", "cap_drop", "ports", "publish_all", "restart", "init", "tty", "interactive", "pid_mode", "ipc_mode", "uts_mode", "cgroupns_mode", "network_container", "userns", "labels", "request_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    PIDS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    CGROUP_PARENT_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_PROFILE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_SET_FIELD_NUMBER: _ClassVar[int]
    STOP_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    AUTO_REMOVE_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    CAP_ADD_FIELD_NUMBER: _ClassVar[int]
    CAP_DROP_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_ALL_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    INTERACTIVE_FIELD_NUMBER: _ClassVar[int]
    PID_MODE_FIELD_NUMBER: _ClassVar[int]
    IPC_MODE_FIELD_NUMBER: _ClassVar[int]
    UTS_MODE_FIELD_NUMBER: _ClassVar[int]
    CGROUPNS_MODE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_CONTAINER_FIELD_NUMBER: _ClassVar[int]
    USERNS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    name: str
    hostname: str
    env: _containers.RepeatedScalarFieldContainer[str]
    workdir: str
    memory_bytes: int
    cpus: float
    pids_limit: int
    network: NetworkMode
    ip: str
    volumes: _containers.RepeatedCompositeFieldContainer[Volume]
    cgroup_parent: str
    seccomp: str
    seccomp_profile: str
    user: str
    entrypoint: _containers.RepeatedScalarFieldContainer[str]
    entrypoint_set: bool
    stop_signal: str
    auto_remove: bool
    read_only: bool
    cap_add: _containers.RepeatedScalarFieldContainer[str]
    cap_drop: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[PortMapping]
    publish_all: bool
    restart: str
    init: bool
    tty: bool
    interactive: bool
    pid_mode: str
    ipc_mode: str
    uts_mode: str
    cgroupns_mode: str
    network_container: str
    userns: str
    labels: _containers.ScalarMap[str, str]
    request_id: str
    def __init__(self, image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ..., hostname: _Optional[str] = ..., env: _Optional[_Iterable[str]] = ..., workdir: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., cpus: _Optional[float] = ..., pids_limit: _Optional[int] = ..., network: _Optional[_Union[NetworkMode, str]] = ..., ip: _Optional[str] = ..., volumes: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., cgroup_parent: _Optional[str] = ..., seccomp: _Optional[str] = ..., seccomp_profile: _Optional[str] = ..., user: _Optional[str] = ..., entrypoint: _Optional[_Iterable[str]] = ..., entrypoint_set: _Optional[bool] = ..., stop_signal: _Optional[str] = ..., auto_remove: _Optional[bool] = ..., read_only: _Optional[bool] = ..., cap_add: _Optional[_Iterable[str]] = ..., cap_drop: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[PortMapping, _Mapping]]] = ..., publish_all: _Optional[bool] = ..., restart: _Optional[str] = ..., init: _Optional[bool] = ..., tty: _Optional[bool] = ..., interactive: _Optional[bool] = ..., pid_mode: _Optional[str] = ..., ipc_mode: _Optional[str] = ..., uts_mode: _Optional[str] = ..., cgroupns_mode: _Optional[str] = ..., network_container: _Optional[str] = ..., userns: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RunContainerResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class StopContainerRequest(_message.Message):
    __slots__ = ("name", "timeout_s", "timeout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    timeout_s: float
    timeout: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., timeout_s: _Optional[float] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StopContainerResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class KillContainerRequest(_message.Message):
    __slots__ = ("name", "signal")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    signal: int
    def __init__(self, name: _Optional[str] = ..., signal: _Optional[int] = ...) -> None: ...

class KillContainerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RemoveContainerRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RemoveContainerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseContainerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PauseContainerResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class UnpauseContainerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnpauseContainerResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class CreateContainerRequest(_message.Message):
    __slots__ = ("options",)
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    options: RunContainerRequest
    def __init__(self, options: _Optional[_Union[RunContainerRequest, _Mapping]] = ...) -> None: ...

class CreateContainerResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class StartContainerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class StartContainerResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class RenameContainerRequest(_message.Message):
    __slots__ = ("name", "new_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NEW_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    new_name: str
    def __init__(self, name: _Optional[str] = ..., new_name: _Optional[str] = ...) -> None: ...

class RenameContainerResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class StreamLogsRequest(_message.Message):
    __slots__ = ("name", "follow", "tail", "since", "until", "timestamps", "since_time", "until_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    SINCE_TIME_FIELD_NUMBER: _ClassVar[int]
    UNTIL_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    follow: bool
    tail: int
    since: float
    until: float
    timestamps: bool
    since_time: _timestamp_pb2.Timestamp
    until_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., follow: _Optional[bool] = ..., tail: _Optional[int] = ..., since: _Optional[float] = ..., until: _Optional[float] = ..., timestamps: _Optional[bool] = ..., since_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StreamLogsResponse(_message.Message):
    __slots__ = ("data", "stream", "time", "write_time")
    DATA_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    WRITE_TIME_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    stream: str
    time: float
    write_time: _timestamp_pb2.Timestamp
    def __init__(self, data: _Optional[bytes] = ..., stream: _Optional[str] = ..., time: _Optional[float] = ..., write_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WaitContainerRequest(_message.Message):
    __slots__ = ("name", "timeout_s", "timeout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    timeout_s: float
    timeout: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., timeout_s: _Optional[float] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WaitContainerResponse(_message.Message):
    __slots__ = ("exit_code",)
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    def __init__(self, exit_code: _Optional[int] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("name", "leave_running", "compress", "level", "tcp_established", "file_locks", "ignore_volumes", "labels", "request_id", "create_image")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEAVE_RUNNING_FIELD_NUMBER: _ClassVar[int]
    COMPRESS_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TCP_ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    FILE_LOCKS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_VOLUMES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    leave_running: bool
    compress: Compression
    level: int
    tcp_established: bool
    file_locks: bool
    ignore_volumes: bool
    labels: _containers.ScalarMap[str, str]
    request_id: str
    create_image: str
    def __init__(self, name: _Optional[str] = ..., leave_running: _Optional[bool] = ..., compress: _Optional[_Union[Compression, str]] = ..., level: _Optional[int] = ..., tcp_established: _Optional[bool] = ..., file_locks: _Optional[bool] = ..., ignore_volumes: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ..., create_image: _Optional[str] = ...) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: ProgressEvent
    result: CheckpointResult
    def __init__(self, progress: _Optional[_Union[ProgressEvent, _Mapping]] = ..., result: _Optional[_Union[CheckpointResult, _Mapping]] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("checkpoint_id", "name", "ip", "tcp_established", "volumes", "timeout_s", "ports", "ports_set", "ignore_static_ip", "ignore_static_mac", "request_id", "image_ref", "timeout", "seccomp", "seccomp_profile")
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    TCP_ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    PORTS_SET_FIELD_NUMBER: _ClassVar[int]
    IGNORE_STATIC_IP_FIELD_NUMBER: _ClassVar[int]
    IGNORE_STATIC_MAC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_REF_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_PROFILE_FIELD_NUMBER: _ClassVar[int]
    checkpoint_id: str
    name: str
    ip: str
    tcp_established: bool
    volumes: _containers.RepeatedCompositeFieldContainer[Volume]
    timeout_s: float
    ports: _containers.RepeatedCompositeFieldContainer[PortMapping]
    ports_set: bool
    ignore_static_ip: bool
    ignore_static_mac: bool
    request_id: str
    image_ref: str
    timeout: _duration_pb2.Duration
    seccomp: str
    seccomp_profile: str
    def __init__(self, checkpoint_id: _Optional[str] = ..., name: _Optional[str] = ..., ip: _Optional[str] = ..., tcp_established: _Optional[bool] = ..., volumes: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., timeout_s: _Optional[float] = ..., ports: _Optional[_Iterable[_Union[PortMapping, _Mapping]]] = ..., ports_set: _Optional[bool] = ..., ignore_static_ip: _Optional[bool] = ..., ignore_static_mac: _Optional[bool] = ..., request_id: _Optional[str] = ..., image_ref: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., seccomp: _Optional[str] = ..., seccomp_profile: _Optional[str] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: ProgressEvent
    result: RestoreResult
    def __init__(self, progress: _Optional[_Union[ProgressEvent, _Mapping]] = ..., result: _Optional[_Union[RestoreResult, _Mapping]] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints", "next_page_token")
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointInfo]
    next_page_token: str
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[CheckpointInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RemoveCheckpointRequest(_message.Message):
    __slots__ = ("checkpoint_id",)
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    checkpoint_id: str
    def __init__(self, checkpoint_id: _Optional[str] = ...) -> None: ...

class RemoveCheckpointResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InspectCheckpointRequest(_message.Message):
    __slots__ = ("checkpoint_id",)
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    checkpoint_id: str
    def __init__(self, checkpoint_id: _Optional[str] = ...) -> None: ...

class InspectCheckpointResponse(_message.Message):
    __slots__ = ("manifest_json",)
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    manifest_json: str
    def __init__(self, manifest_json: _Optional[str] = ...) -> None: ...

class DownloadCheckpointRequest(_message.Message):
    __slots__ = ("checkpoint_id",)
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    checkpoint_id: str
    def __init__(self, checkpoint_id: _Optional[str] = ...) -> None: ...

class DownloadCheckpointResponse(_message.Message):
    __slots__ = ("data", "seq", "crc32")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    seq: int
    crc32: int
    def __init__(self, data: _Optional[bytes] = ..., seq: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class UploadCheckpointRequest(_message.Message):
    __slots__ = ("data", "seq", "crc32")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    seq: int
    crc32: int
    def __init__(self, data: _Optional[bytes] = ..., seq: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class UploadCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: CheckpointInfo
    def __init__(self, checkpoint: _Optional[_Union[CheckpointInfo, _Mapping]] = ...) -> None: ...

class MigrateRequest(_message.Message):
    __slots__ = ("name", "dest", "keep_source", "mode", "tcp_established", "file_locks", "ports", "compress", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEST_FIELD_NUMBER: _ClassVar[int]
    KEEP_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TCP_ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    FILE_LOCKS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    COMPRESS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    dest: str
    keep_source: bool
    mode: MigrationMode
    tcp_established: bool
    file_locks: bool
    ports: PortList
    compress: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., dest: _Optional[str] = ..., keep_source: _Optional[bool] = ..., mode: _Optional[_Union[MigrationMode, str]] = ..., tcp_established: _Optional[bool] = ..., file_locks: _Optional[bool] = ..., ports: _Optional[_Union[PortList, _Mapping]] = ..., compress: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class MigrateResponse(_message.Message):
    __slots__ = ("event", "result")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    event: MigrationEvent
    result: MigrateResult
    def __init__(self, event: _Optional[_Union[MigrationEvent, _Mapping]] = ..., result: _Optional[_Union[MigrateResult, _Mapping]] = ...) -> None: ...

class PrepareIncomingRequest(_message.Message):
    __slots__ = ("container_name", "spec_json", "image_digest", "criu_version", "cpu_digest", "ip", "mode", "page_server_address", "source_daemon", "image_layers", "compressed_pages")
    CONTAINER_NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CRIU_VERSION_FIELD_NUMBER: _ClassVar[int]
    CPU_DIGEST_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DAEMON_FIELD_NUMBER: _ClassVar[int]
    IMAGE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_PAGES_FIELD_NUMBER: _ClassVar[int]
    container_name: str
    spec_json: str
    image_digest: str
    criu_version: str
    cpu_digest: str
    ip: str
    mode: MigrationMode
    page_server_address: str
    source_daemon: str
    image_layers: _containers.RepeatedScalarFieldContainer[str]
    compressed_pages: bool
    def __init__(self, container_name: _Optional[str] = ..., spec_json: _Optional[str] = ..., image_digest: _Optional[str] = ..., criu_version: _Optional[str] = ..., cpu_digest: _Optional[str] = ..., ip: _Optional[str] = ..., mode: _Optional[_Union[MigrationMode, str]] = ..., page_server_address: _Optional[str] = ..., source_daemon: _Optional[str] = ..., image_layers: _Optional[_Iterable[str]] = ..., compressed_pages: _Optional[bool] = ...) -> None: ...

class PrepareIncomingResponse(_message.Message):
    __slots__ = ("migration_id", "need_image", "page_server_port", "stage_upper", "missing_layers", "layered_image", "pages_compressed")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    NEED_IMAGE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_PORT_FIELD_NUMBER: _ClassVar[int]
    STAGE_UPPER_FIELD_NUMBER: _ClassVar[int]
    MISSING_LAYERS_FIELD_NUMBER: _ClassVar[int]
    LAYERED_IMAGE_FIELD_NUMBER: _ClassVar[int]
    PAGES_COMPRESSED_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    need_image: bool
    page_server_port: int
    stage_upper: bool
    missing_layers: _containers.RepeatedScalarFieldContainer[str]
    layered_image: bool
    pages_compressed: bool
    def __init__(self, migration_id: _Optional[str] = ..., need_image: _Optional[bool] = ..., page_server_port: _Optional[int] = ..., stage_upper: _Optional[bool] = ..., missing_layers: _Optional[_Iterable[str]] = ..., layered_image: _Optional[bool] = ..., pages_compressed: _Optional[bool] = ...) -> None: ...

class PushImageRequest(_message.Message):
    __slots__ = ("migration_id", "data", "seq", "crc32")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    data: bytes
    seq: int
    crc32: int
    def __init__(self, migration_id: _Optional[str] = ..., data: _Optional[bytes] = ..., seq: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class PushImageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PushCheckpointRequest(_message.Message):
    __slots__ = ("migration_id", "data", "seq", "crc32")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    data: bytes
    seq: int
    crc32: int
    def __init__(self, migration_id: _Optional[str] = ..., data: _Optional[bytes] = ..., seq: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class PushCheckpointResponse(_message.Message):
    __slots__ = ("container", "stats")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    stats: RestoreStats
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ..., stats: _Optional[_Union[RestoreStats, _Mapping]] = ...) -> None: ...

class PushUpperRequest(_message.Message):
    __slots__ = ("migration_id", "data", "seq", "crc32")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    data: bytes
    seq: int
    crc32: int
    def __init__(self, migration_id: _Optional[str] = ..., data: _Optional[bytes] = ..., seq: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class PushUpperResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: int
    def __init__(self, entries: _Optional[int] = ...) -> None: ...

class AbortIncomingRequest(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class AbortIncomingResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CommitIncomingRequest(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class CommitIncomingResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SettleMigrationRequest(_message.Message):
    __slots__ = ("migration_id", "container_id", "ask_source")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    ASK_SOURCE_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    container_id: str
    ask_source: bool
    def __init__(self, migration_id: _Optional[str] = ..., container_id: _Optional[str] = ..., ask_source: _Optional[bool] = ...) -> None: ...

class SettleMigrationResponse(_message.Message):
    __slots__ = ("outcome", "container_running")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_RUNNING_FIELD_NUMBER: _ClassVar[int]
    outcome: SettlementOutcome
    container_running: bool
    def __init__(self, outcome: _Optional[_Union[SettlementOutcome, str]] = ..., container_running: _Optional[bool] = ...) -> None: ...

class StartPrecopyRoundRequest(_message.Message):
    __slots__ = ("migration_id", "round", "final")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    round: int
    final: bool
    def __init__(self, migration_id: _Optional[str] = ..., round: _Optional[int] = ..., final: _Optional[bool] = ...) -> None: ...

class StartPrecopyRoundResponse(_message.Message):
    __slots__ = ("page_server_port",)
    PAGE_SERVER_PORT_FIELD_NUMBER: _ClassVar[int]
    page_server_port: int
    def __init__(self, page_server_port: _Optional[int] = ...) -> None: ...

class VolumeInfo(_message.Message):
    __slots__ = ("name", "mountpoint", "created_at", "driver", "labels", "used_by", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MOUNTPOINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    USED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    mountpoint: str
    created_at: float
    driver: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    used_by: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., mountpoint: _Optional[str] = ..., created_at: _Optional[float] = ..., driver: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., used_by: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class VolumeCreateRequest(_message.Message):
    __slots__ = ("name", "labels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class VolumeCreateResponse(_message.Message):
    __slots__ = ("volume",)
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    volume: VolumeInfo
    def __init__(self, volume: _Optional[_Union[VolumeInfo, _Mapping]] = ...) -> None: ...

class VolumeListRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class VolumeListResponse(_message.Message):
    __slots__ = ("volumes", "next_page_token")
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    volumes: _containers.RepeatedCompositeFieldContainer[VolumeInfo]
    next_page_token: str
    def __init__(self, volumes: _Optional[_Iterable[_Union[VolumeInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VolumeInspectRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class VolumeInspectResponse(_message.Message):
    __slots__ = ("volume",)
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    volume: VolumeInfo
    def __init__(self, volume: _Optional[_Union[VolumeInfo, _Mapping]] = ...) -> None: ...

class VolumeRemoveRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class VolumeRemoveResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class VolumePruneRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VolumePruneResponse(_message.Message):
    __slots__ = ("removed", "bytes_freed")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    bytes_freed: int
    def __init__(self, removed: _Optional[_Iterable[str]] = ..., bytes_freed: _Optional[int] = ...) -> None: ...

class TerminalSize(_message.Message):
    __slots__ = ("rows", "cols")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class ExecStart(_message.Message):
    __slots__ = ("name", "command", "env", "workdir", "user", "tty", "interactive", "terminal_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    INTERACTIVE_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedScalarFieldContainer[str]
    workdir: str
    user: str
    tty: bool
    interactive: bool
    terminal_size: TerminalSize
    def __init__(self, name: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[str]] = ..., workdir: _Optional[str] = ..., user: _Optional[str] = ..., tty: _Optional[bool] = ..., interactive: _Optional[bool] = ..., terminal_size: _Optional[_Union[TerminalSize, _Mapping]] = ...) -> None: ...

class ExecRequest(_message.Message):
    __slots__ = ("start", "stdin", "resize", "close_stdin")
    START_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    start: ExecStart
    stdin: bytes
    resize: TerminalSize
    close_stdin: bool
    def __init__(self, start: _Optional[_Union[ExecStart, _Mapping]] = ..., stdin: _Optional[bytes] = ..., resize: _Optional[_Union[TerminalSize, _Mapping]] = ..., close_stdin: _Optional[bool] = ...) -> None: ...

class ExecResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_code")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit_code: int
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit_code: _Optional[int] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("name", "stdin", "resize", "close_stdin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    stdin: bytes
    resize: TerminalSize
    close_stdin: bool
    def __init__(self, name: _Optional[str] = ..., stdin: _Optional[bytes] = ..., resize: _Optional[_Union[TerminalSize, _Mapping]] = ..., close_stdin: _Optional[bool] = ...) -> None: ...

class AttachResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_code")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit_code: int
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit_code: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("names", "stream", "interval_s", "interval")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    stream: bool
    interval_s: float
    interval: _duration_pb2.Duration
    def __init__(self, names: _Optional[_Iterable[str]] = ..., stream: _Optional[bool] = ..., interval_s: _Optional[float] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ContainerStatsSample(_message.Message):
    __slots__ = ("name", "container_id", "status", "read_at_monotonic_s", "cpu_percent", "cpu_usage_us", "online_cpus", "memory_usage_bytes", "memory_limit_bytes", "memory_percent", "pids_current", "net_rx_bytes", "net_tx_bytes", "block_read_bytes", "block_write_bytes", "block_io_source", "read_at_unix_s", "read_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    READ_AT_MONOTONIC_S_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CPU_USAGE_US_FIELD_NUMBER: _ClassVar[int]
    ONLINE_CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PIDS_CURRENT_FIELD_NUMBER: _ClassVar[int]
    NET_RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    NET_TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_IO_SOURCE_FIELD_NUMBER: _ClassVar[int]
    READ_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    READ_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    container_id: str
    status: str
    read_at_monotonic_s: float
    cpu_percent: float
    cpu_usage_us: int
    online_cpus: int
    memory_usage_bytes: int
    memory_limit_bytes: int
    memory_percent: float
    pids_current: int
    net_rx_bytes: int
    net_tx_bytes: int
    block_read_bytes: int
    block_write_bytes: int
    block_io_source: str
    read_at_unix_s: float
    read_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., container_id: _Optional[str] = ..., status: _Optional[str] = ..., read_at_monotonic_s: _Optional[float] = ..., cpu_percent: _Optional[float] = ..., cpu_usage_us: _Optional[int] = ..., online_cpus: _Optional[int] = ..., memory_usage_bytes: _Optional[int] = ..., memory_limit_bytes: _Optional[int] = ..., memory_percent: _Optional[float] = ..., pids_current: _Optional[int] = ..., net_rx_bytes: _Optional[int] = ..., net_tx_bytes: _Optional[int] = ..., block_read_bytes: _Optional[int] = ..., block_write_bytes: _Optional[int] = ..., block_io_source: _Optional[str] = ..., read_at_unix_s: _Optional[float] = ..., read_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[ContainerStatsSample]
    def __init__(self, samples: _Optional[_Iterable[_Union[ContainerStatsSample, _Mapping]]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("since", "filter")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    since: int
    filter: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, since: _Optional[int] = ..., filter: _Optional[_Iterable[str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("sequence", "time", "type", "action", "object_id", "name", "attributes", "event_time")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: float
    type: str
    action: str
    object_id: str
    name: str
    attributes: _containers.ScalarMap[str, str]
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[float] = ..., type: _Optional[str] = ..., action: _Optional[str] = ..., object_id: _Optional[str] = ..., name: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: Event
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...
