"""Mechanical conversion between the library's frozen dataclasses and pymigrate.v1 messages.

One ``*_to_pb`` / ``*_from_pb`` pair per type, field by field, named as in migrate/api.py and
runtime/spec.py. ``None`` in a dataclass is an absent ``optional`` field in the message; string
literals (status, network, compression, migration mode) are proto enums whose ``_UNSPECIFIED``
zero value decodes to the dataclass default. Used by migrate/remote/service.py and migrate/remote/client.py
only; nothing else sees protobuf.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from migrate import api
from migrate._proto.pymigrate.v1 import host_pb2 as pb
from runtime import spec as rspec

# --- enums ------------------------------------------------------------------------------------

_STATUS = {
    "created": pb.CONTAINER_STATUS_CREATED,
    "running": pb.CONTAINER_STATUS_RUNNING,
    "paused": pb.CONTAINER_STATUS_PAUSED,
    "exited": pb.CONTAINER_STATUS_EXITED,
}
_NETWORK = {"bridge": pb.NETWORK_MODE_BRIDGE, "none": pb.NETWORK_MODE_NONE}
_COMPRESS = {"zstd": pb.COMPRESSION_ZSTD, "none": pb.COMPRESSION_NONE}
_MODE = {
    "cold": pb.MIGRATION_MODE_COLD,
    "postcopy": pb.MIGRATION_MODE_POSTCOPY,
    "precopy": pb.MIGRATION_MODE_PRECOPY,
    "auto": pb.MIGRATION_MODE_AUTO,
}


def _enum_to_pb(table: dict[str, int], value: str, what: str) -> int:
    try:
        return table[value]
    except KeyError:
        from runtime.errors import InvalidArgument

        raise InvalidArgument(f"unknown {what} {value!r}, expected one of {', '.join(table)}") from None


def _enum_from_pb(table: dict[str, int], value: int, default: str) -> Any:
    for name, number in table.items():
        if number == value:
            return name
    return default


def status_to_pb(value: str) -> int:
    return _enum_to_pb(_STATUS, value, "container status")


def status_from_pb(value: int) -> rspec.Status:
    return _enum_from_pb(_STATUS, value, "created")


def network_to_pb(value: str) -> int:
    return _enum_to_pb(_NETWORK, value, "network mode")


def network_from_pb(value: int) -> rspec.NetworkMode:
    return _enum_from_pb(_NETWORK, value, "bridge")


def compress_to_pb(value: str) -> int:
    return _enum_to_pb(_COMPRESS, value, "compression")


def compress_from_pb(value: int) -> Any:
    return _enum_from_pb(_COMPRESS, value, "zstd")


def mode_to_pb(value: str) -> int:
    return _enum_to_pb(_MODE, value, "migration mode")


def mode_from_pb(value: int) -> api.MigrationMode:
    return _enum_from_pb(_MODE, value, "cold")


def _opt(msg: Any, name: str) -> Any:
    """The value of an ``optional`` field, or None when absent."""
    return getattr(msg, name) if msg.HasField(name) else None


def _set_opt(kwargs: dict[str, Any], name: str, value: Any) -> None:
    if value is not None:
        kwargs[name] = value


# --- runtime.spec -----------------------------------------------------------------------------


def volume_to_pb(v: rspec.Volume) -> pb.Volume:
    return pb.Volume(source=v.source, target=v.target, readonly=v.readonly)


def volume_from_pb(m: pb.Volume) -> rspec.Volume:
    return rspec.Volume(source=m.source, target=m.target, readonly=m.readonly)


def spec_to_pb(s: rspec.ContainerSpec) -> pb.ContainerSpec:
    kw: dict[str, Any] = dict(
        container_id=s.container_id,
        name=s.name,
        image=s.image,
        image_digest=s.image_digest,
        command=list(s.command),
        env=list(s.env),
        workdir=s.workdir,
        hostname=s.hostname,
        network=network_to_pb(s.network),
        volumes=[volume_to_pb(v) for v in s.volumes],
        created_at=s.created_at,
        seccomp=s.seccomp,
    )
    for name in ("memory_bytes", "cpus", "pids_limit", "ip", "mac", "cgroup_parent", "seccomp_profile"):
        _set_opt(kw, name, getattr(s, name))
    return pb.ContainerSpec(**kw)


def spec_from_pb(m: pb.ContainerSpec) -> rspec.ContainerSpec:
    return rspec.ContainerSpec(
        container_id=m.container_id,
        name=m.name,
        image=m.image,
        image_digest=m.image_digest,
        command=tuple(m.command),
        env=tuple(m.env),
        workdir=m.workdir,
        hostname=m.hostname,
        memory_bytes=_opt(m, "memory_bytes"),
        cpus=_opt(m, "cpus"),
        pids_limit=_opt(m, "pids_limit"),
        network=network_from_pb(m.network),
        ip=_opt(m, "ip"),
        mac=_opt(m, "mac"),
        volumes=tuple(volume_from_pb(v) for v in m.volumes),
        cgroup_parent=_opt(m, "cgroup_parent"),
        created_at=m.created_at,
        seccomp=m.seccomp or "default",
        seccomp_profile=_opt(m, "seccomp_profile"),
    )


def state_to_pb(s: rspec.ContainerState) -> pb.ContainerState:
    kw: dict[str, Any] = dict(status=status_to_pb(s.status), pid=s.pid, shim_pid=s.shim_pid, oom_killed=s.oom_killed)
    for name in ("exit_code", "started_at", "finished_at", "restored_from", "checkpointed"):
        _set_opt(kw, name, getattr(s, name))
    if s.frozen_by is not None:
        kw["frozen_by"] = pb.FreezeRecord(**dataclasses.asdict(s.frozen_by))
    return pb.ContainerState(**kw)


def state_from_pb(m: pb.ContainerState) -> rspec.ContainerState:
    return rspec.ContainerState(
        status=status_from_pb(m.status),
        pid=m.pid,
        shim_pid=m.shim_pid,
        exit_code=_opt(m, "exit_code"),
        oom_killed=m.oom_killed,
        started_at=_opt(m, "started_at"),
        finished_at=_opt(m, "finished_at"),
        restored_from=_opt(m, "restored_from"),
        checkpointed=_opt(m, "checkpointed"),
        frozen_by=_freeze_record_from_pb(m.frozen_by) if m.HasField("frozen_by") else None,
    )


def _freeze_record_from_pb(m: pb.FreezeRecord) -> rspec.FreezeRecord:
    return rspec.FreezeRecord(pid=m.pid, pid_start=m.pid_start, operation=m.operation, since=m.since,
                              was_paused=m.was_paused, recover=m.recover, partial=tuple(m.partial))


def container_to_pb(c: rspec.ContainerInfo) -> pb.ContainerInfo:
    kw: dict[str, Any] = dict(
        spec=spec_to_pb(c.spec), state=state_to_pb(c.state), bundle_dir=c.bundle_dir, cgroup=dict(c.cgroup)
    )
    _set_opt(kw, "memory_current_bytes", c.memory_current_bytes)
    _set_opt(kw, "pids_current", c.pids_current)
    return pb.ContainerInfo(**kw)


def container_from_pb(m: pb.ContainerInfo) -> rspec.ContainerInfo:
    return rspec.ContainerInfo(
        spec=spec_from_pb(m.spec),
        state=state_from_pb(m.state),
        bundle_dir=m.bundle_dir,
        cgroup=dict(m.cgroup),
        memory_current_bytes=_opt(m, "memory_current_bytes"),
        pids_current=_opt(m, "pids_current"),
    )


# --- migrate.api ------------------------------------------------------------------------------


def image_to_pb(i: api.ImageInfo) -> pb.ImageInfo:
    return pb.ImageInfo(name=i.name, digest=i.digest, size_bytes=i.size_bytes, created_at=i.created_at)


def image_from_pb(m: pb.ImageInfo) -> api.ImageInfo:
    return api.ImageInfo(name=m.name, digest=m.digest, size_bytes=m.size_bytes, created_at=m.created_at)


def host_to_pb(h: api.HostInfo) -> pb.HostInfo:
    kw: dict[str, Any] = dict(
        version=h.version,
        hostname=h.hostname,
        kernel=h.kernel,
        features=dict(h.features),
        cgroup_mode=h.cgroup_mode,
        cpu_digest=h.cpu_digest,
        images=[image_to_pb(i) for i in h.images],
    )
    _set_opt(kw, "criu_version", h.criu_version)
    return pb.HostInfo(**kw)


def host_from_pb(m: pb.HostInfo) -> api.HostInfo:
    return api.HostInfo(
        version=m.version,
        hostname=m.hostname,
        kernel=m.kernel,
        criu_version=_opt(m, "criu_version"),
        features=dict(m.features),
        cgroup_mode=m.cgroup_mode,
        cpu_digest=m.cpu_digest,
        images=tuple(image_from_pb(i) for i in m.images),
    )


def progress_to_pb(e: api.ProgressEvent) -> pb.ProgressEvent:
    return pb.ProgressEvent(
        operation=e.operation,
        phase=e.phase,
        bytes_done=e.bytes_done,
        bytes_total=e.bytes_total,
        elapsed_s=e.elapsed_s,
        message=e.message,
    )


def progress_from_pb(m: pb.ProgressEvent) -> api.ProgressEvent:
    return api.ProgressEvent(
        operation=m.operation,
        phase=m.phase,
        bytes_done=m.bytes_done,
        bytes_total=m.bytes_total,
        elapsed_s=m.elapsed_s,
        message=m.message,
    )


def migration_event_to_pb(e: api.ProgressEvent, throughput_bytes_per_s: float = 0.0) -> pb.MigrationEvent:
    return pb.MigrationEvent(
        phase=e.phase,
        bytes_done=e.bytes_done,
        bytes_total=e.bytes_total,
        throughput_bytes_per_s=throughput_bytes_per_s,
        elapsed_s=e.elapsed_s,
        message=e.message,
    )


def migration_event_from_pb(m: pb.MigrationEvent) -> api.ProgressEvent:
    return api.ProgressEvent(
        operation="migrate",
        phase=m.phase,
        bytes_done=m.bytes_done,
        bytes_total=m.bytes_total,
        elapsed_s=m.elapsed_s,
        message=m.message,
    )


def run_options_to_pb(o: api.RunOptions) -> pb.RunContainerRequest:
    kw: dict[str, Any] = dict(
        image=o.image,
        command=list(o.command),
        env=list(o.env),
        network=network_to_pb(o.network),
        volumes=[volume_to_pb(v) for v in o.volumes],
        seccomp=o.seccomp,
    )
    for name in ("name", "hostname", "workdir", "memory_bytes", "cpus", "pids_limit", "ip", "cgroup_parent", "seccomp_profile"):
        _set_opt(kw, name, getattr(o, name))
    return pb.RunContainerRequest(**kw)


def run_options_from_pb(m: pb.RunContainerRequest) -> api.RunOptions:
    return api.RunOptions(
        image=m.image,
        command=tuple(m.command),
        name=_opt(m, "name"),
        hostname=_opt(m, "hostname"),
        env=tuple(m.env),
        workdir=_opt(m, "workdir"),
        memory_bytes=_opt(m, "memory_bytes"),
        cpus=_opt(m, "cpus"),
        pids_limit=_opt(m, "pids_limit"),
        network=network_from_pb(m.network),
        ip=_opt(m, "ip"),
        volumes=tuple(volume_from_pb(v) for v in m.volumes),
        cgroup_parent=_opt(m, "cgroup_parent"),
        seccomp=m.seccomp or "default",
        seccomp_profile=_opt(m, "seccomp_profile"),
    )


def checkpoint_request_to_pb(name: str, o: api.CheckpointOptions) -> pb.CheckpointRequest:
    """``export_path`` is not sent: a client downloads the archive itself (DownloadCheckpoint)."""
    return pb.CheckpointRequest(
        name=name,
        leave_running=o.leave_running,
        compress=compress_to_pb(o.compress),
        level=o.level,
        tcp_established=o.tcp_established,
        file_locks=o.file_locks,
    )


def checkpoint_options_from_pb(m: pb.CheckpointRequest) -> api.CheckpointOptions:
    return api.CheckpointOptions(
        leave_running=m.leave_running,
        compress=compress_from_pb(m.compress),
        level=m.level if m.HasField("level") else api.CheckpointOptions.level,
        tcp_established=m.tcp_established,
        file_locks=m.file_locks,
    )


_CHECKPOINT_STATS = tuple(f for f in api.CheckpointStats.__dataclass_fields__)
_RESTORE_STATS = tuple(f for f in api.RestoreStats.__dataclass_fields__)


def checkpoint_stats_to_pb(s: api.CheckpointStats) -> pb.CheckpointStats:
    return pb.CheckpointStats(**{name: getattr(s, name) for name in _CHECKPOINT_STATS})


def checkpoint_stats_from_pb(m: pb.CheckpointStats) -> api.CheckpointStats:
    return api.CheckpointStats(**{name: getattr(m, name) for name in _CHECKPOINT_STATS})


def checkpoint_result_to_pb(r: api.CheckpointResult) -> pb.CheckpointResult:
    kw: dict[str, Any] = dict(
        checkpoint_id=r.checkpoint_id, container_name=r.container_name, stats=checkpoint_stats_to_pb(r.stats),
        signed_by=r.signed_by,
    )
    _set_opt(kw, "export_path", r.export_path)
    return pb.CheckpointResult(**kw)


def checkpoint_result_from_pb(m: pb.CheckpointResult) -> api.CheckpointResult:
    return api.CheckpointResult(
        checkpoint_id=m.checkpoint_id,
        container_name=m.container_name,
        export_path=_opt(m, "export_path"),
        stats=checkpoint_stats_from_pb(m.stats),
        signed_by=m.signed_by,
    )


def checkpoint_info_to_pb(c: api.CheckpointInfo) -> pb.CheckpointInfo:
    return pb.CheckpointInfo(
        checkpoint_id=c.checkpoint_id,
        container_name=c.container_name,
        container_id=c.container_id,
        image_digest=c.image_digest,
        created_at=c.created_at,
        size_bytes=c.size_bytes,
        criu_version=c.criu_version,
    )


def checkpoint_info_from_pb(m: pb.CheckpointInfo) -> api.CheckpointInfo:
    return api.CheckpointInfo(
        checkpoint_id=m.checkpoint_id,
        container_name=m.container_name,
        container_id=m.container_id,
        image_digest=m.image_digest,
        created_at=m.created_at,
        size_bytes=m.size_bytes,
        criu_version=m.criu_version,
    )


def restore_request_to_pb(o: api.RestoreOptions) -> pb.RestoreRequest:
    """``import_path`` is not sent: a client uploads the archive first (UploadCheckpoint)."""
    if o.seccomp is not None:
        from runtime.errors import Unsupported

        # RestoreRequest has no seccomp field: never let the daemon restore without the caller's choice
        raise Unsupported("restore --security-opt over the API", "the daemon cannot be told a seccomp choice for a restore",
                          hint="restore on that host without --host")
    kw: dict[str, Any] = dict(checkpoint_id=o.checkpoint_id or "", tcp_established=o.tcp_established,
                              volumes=[volume_to_pb(v) for v in o.volumes], timeout_s=o.timeout_s)
    _set_opt(kw, "name", o.name)
    _set_opt(kw, "ip", o.ip)
    return pb.RestoreRequest(**kw)


def restore_options_from_pb(m: pb.RestoreRequest) -> api.RestoreOptions:
    timeout_s = _opt(m, "timeout_s")
    return api.RestoreOptions(
        checkpoint_id=m.checkpoint_id or None,
        name=_opt(m, "name"),
        ip=_opt(m, "ip"),
        tcp_established=m.tcp_established,
        volumes=tuple(volume_from_pb(v) for v in m.volumes),
        timeout_s=api.DEFAULT_RESTORE_TIMEOUT_S if timeout_s is None or not timeout_s > 0 else float(timeout_s),
    )


def restore_stats_to_pb(s: api.RestoreStats) -> pb.RestoreStats:
    return pb.RestoreStats(**{name: getattr(s, name) for name in _RESTORE_STATS})


def restore_stats_from_pb(m: pb.RestoreStats) -> api.RestoreStats:
    return api.RestoreStats(**{name: getattr(m, name) for name in _RESTORE_STATS})


def restore_result_to_pb(r: api.RestoreResult) -> pb.RestoreResult:
    return pb.RestoreResult(container=container_to_pb(r.container), stats=restore_stats_to_pb(r.stats), signed_by=r.signed_by)


def restore_result_from_pb(m: pb.RestoreResult) -> api.RestoreResult:
    return api.RestoreResult(container=container_from_pb(m.container), stats=restore_stats_from_pb(m.stats),
                             signed_by=m.signed_by)


def migrate_request_to_pb(name: str, o: api.MigrateOptions) -> pb.MigrateRequest:
    return pb.MigrateRequest(
        name=name,
        dest=o.dest,
        keep_source=o.keep_source,
        mode=mode_to_pb(o.mode),
        tcp_established=o.tcp_established,
        file_locks=o.file_locks,
    )


def migrate_options_from_pb(m: pb.MigrateRequest) -> api.MigrateOptions:
    return api.MigrateOptions(
        dest=m.dest, keep_source=m.keep_source, mode=mode_from_pb(m.mode), tcp_established=m.tcp_established,
        file_locks=m.file_locks,
    )


def migration_stats_to_pb(s: api.MigrationStats) -> pb.MigrationStats:
    return pb.MigrationStats(
        frozen_ms=s.frozen_ms,
        total_ms=s.total_ms,
        bytes_on_wire=s.bytes_on_wire,
        raw_bytes=s.raw_bytes,
        phases_ms=dict(s.phases_ms),
        upper_entries_frozen=s.upper_entries_frozen,
    )


def migration_stats_from_pb(m: pb.MigrationStats) -> api.MigrationStats:
    return api.MigrationStats(
        frozen_ms=m.frozen_ms,
        total_ms=m.total_ms,
        bytes_on_wire=m.bytes_on_wire,
        raw_bytes=m.raw_bytes,
        phases_ms=dict(m.phases_ms),
        upper_entries_frozen=m.upper_entries_frozen,
    )


def migrate_result_to_pb(r: api.MigrateResult) -> pb.MigrateResult:
    return pb.MigrateResult(
        container_name=r.container_name, dest=r.dest, mode=mode_to_pb(r.mode), stats=migration_stats_to_pb(r.stats)
    )


def migrate_result_from_pb(m: pb.MigrateResult) -> api.MigrateResult:
    return api.MigrateResult(
        container_name=m.container_name, dest=m.dest, mode=mode_from_pb(m.mode), stats=migration_stats_from_pb(m.stats)
    )


def incoming_request_to_pb(r: api.IncomingRequest) -> pb.PrepareIncomingRequest:
    kw: dict[str, Any] = dict(
        container_name=r.container_name,
        spec_json=json.dumps(r.spec, sort_keys=True),
        image_digest=r.image_digest,
        cpu_digest=r.cpu_digest,
        mode=mode_to_pb(r.mode),
    )
    _set_opt(kw, "criu_version", r.criu_version)
    _set_opt(kw, "ip", r.ip)
    _set_opt(kw, "page_server_address", r.page_server_address)
    _set_opt(kw, "source_daemon", r.source_daemon)
    return pb.PrepareIncomingRequest(**kw)


def incoming_request_from_pb(m: pb.PrepareIncomingRequest) -> api.IncomingRequest:
    from runtime.errors import InvalidArgument

    try:
        spec = json.loads(m.spec_json) if m.spec_json else {}
    except ValueError as exc:
        raise InvalidArgument(f"invalid container spec json for {m.container_name}: {exc}") from exc
    if not isinstance(spec, dict):
        raise InvalidArgument(f"invalid container spec json for {m.container_name}: expected an object")
    return api.IncomingRequest(
        container_name=m.container_name,
        spec=spec,
        image_digest=m.image_digest,
        criu_version=_opt(m, "criu_version"),
        cpu_digest=m.cpu_digest,
        ip=_opt(m, "ip"),
        mode=mode_from_pb(m.mode),
        page_server_address=_opt(m, "page_server_address"),
        source_daemon=_opt(m, "source_daemon"),
    )


_OUTCOMES = {
    "unknown": pb.SETTLEMENT_OUTCOME_UNKNOWN,
    "pending": pb.SETTLEMENT_OUTCOME_PENDING,
    "committed": pb.SETTLEMENT_OUTCOME_COMMITTED,
    "aborted": pb.SETTLEMENT_OUTCOME_ABORTED,
    "lost": pb.SETTLEMENT_OUTCOME_LOST,
}


def settlement_to_pb(s: api.Settlement) -> pb.SettleMigrationResponse:
    return pb.SettleMigrationResponse(outcome=_OUTCOMES[s.outcome], container_running=s.container_running)


def settlement_from_pb(migration_id: str, m: pb.SettleMigrationResponse) -> api.Settlement:
    """An unspecified or unknown outcome (a newer peer) reads as "pending": never as a verdict."""
    names = {v: k for k, v in _OUTCOMES.items()}
    return api.Settlement(migration_id, names.get(m.outcome, "pending"), bool(m.container_running))  # type: ignore[arg-type]


def ticket_to_pb(t: api.IncomingTicket) -> pb.PrepareIncomingResponse:
    return pb.PrepareIncomingResponse(migration_id=t.migration_id, need_image=t.need_image, page_server_port=t.page_server_port,
                                      stage_upper=t.stage_upper)


def ticket_from_pb(m: pb.PrepareIncomingResponse) -> api.IncomingTicket:
    return api.IncomingTicket(migration_id=m.migration_id, need_image=m.need_image, page_server_port=m.page_server_port,
                              stage_upper=m.stage_upper)
