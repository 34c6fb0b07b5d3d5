"""Conversion between the library's frozen dataclasses and pymigrate.v1 messages.

Most types cross field by field under the same names (migrate/api.py and runtime/spec.py on one
side, protos/pymigrate/v1/host.proto on the other), so one generic pair, ``_to_pb`` and ``_from_pb``,
walks the dataclass's fields and the message's descriptor:

- str, int, float and bool fields are copied;
- ``None`` in a dataclass is an absent ``optional`` field in the message; an ``optional`` scalar
  behind a dataclass field that cannot be None (``CheckpointOptions.level``) reads as that field's
  default when absent;
- a nested dataclass is a nested message, a tuple a ``repeated`` field, a dict a ``map``;
- string literals (status, network, compression, migration mode) are proto enums, through the
  tables below; their ``_UNSPECIFIED`` zero value decodes to the table's default.

The public ``*_to_pb`` / ``*_from_pb`` pairs wrap the generic pair and spell out what differs:
fields that never cross (paths and keys read on the caller's side), names that differ, defaults for
empty values. A dataclass field the message lacks is an error, not a silent loss. Used by
migrate/remote/service.py and migrate/remote/client.py only; nothing else sees protobuf.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, TypeVar

from google.protobuf.message import Message

from migrate import api
from migrate._proto.pymigrate.v1 import host_pb2 as pb
from runtime import spec as rspec
from runtime.logs import LogEntry
from runtime.ports import PortMapping
from runtime.registry import PushResult, RegistryOptions

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

M = TypeVar("M", bound=Message)
D = TypeVar("D", bound="DataclassInstance")

# --- enums ------------------------------------------------------------------------------------

_STATUS = {
    "created": pb.CONTAINER_STATUS_CREATED,
    "running": pb.CONTAINER_STATUS_RUNNING,
    "paused": pb.CONTAINER_STATUS_PAUSED,
    "exited": pb.CONTAINER_STATUS_EXITED,
}
_NETWORK = {"bridge": pb.NETWORK_MODE_BRIDGE, "none": pb.NETWORK_MODE_NONE, "host": pb.NETWORK_MODE_HOST,
            "container": pb.NETWORK_MODE_CONTAINER}
_COMPRESS = {"zstd": pb.COMPRESSION_ZSTD, "none": pb.COMPRESSION_NONE}
_MODE = {
    "cold": pb.MIGRATION_MODE_COLD,
    "postcopy": pb.MIGRATION_MODE_POSTCOPY,
    "precopy": pb.MIGRATION_MODE_PRECOPY,
    "auto": pb.MIGRATION_MODE_AUTO,
}

# the enums the generic converter meets, by proto type: (table, what an error calls it, what 0 reads as)
_ENUMS: dict[str, tuple[Mapping[str, int], str, str]] = {
    pb.ContainerStatus.DESCRIPTOR.full_name: (_STATUS, "container status", "created"),
    pb.NetworkMode.DESCRIPTOR.full_name: (_NETWORK, "network mode", "bridge"),
    pb.Compression.DESCRIPTOR.full_name: (_COMPRESS, "compression", "zstd"),
    pb.MigrationMode.DESCRIPTOR.full_name: (_MODE, "migration mode", "cold"),
}


def _enum_to_pb(table: Mapping[str, int], value: str, what: str) -> int:
    try:
        return table[value]
    except KeyError:
        from runtime.errors import InvalidArgument

        raise InvalidArgument(f"unknown {what} {value!r}, expected one of {', '.join(table)}") from None


def _enum_from_pb(table: Mapping[str, int], value: int, default: str) -> Any:
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


# --- the generic pair -------------------------------------------------------------------------


def _to_pb(obj: Any, message_type: type[M], skip: Iterable[str] = (), **given: Any) -> M:
    """A ``message_type`` holding the fields of dataclass ``obj``, but those named in ``skip``;
    ``given`` are message fields set as they are (a name that differs, a parameter)."""
    message = message_type(**given)
    _fill(message, obj, skip=(*skip, *given))
    return message


# unix-seconds fields that messages also carry as a google.protobuf.Timestamp (issue 15: the
# standard type beside the double older clients read; docs/api.md "Times")
_TIMESTAMPS = {"created_at": "create_time", "started_at": "start_time", "finished_at": "finish_time",
               "since": "since_time"}


def _fill(message: Message, obj: Any, skip: Iterable[str] = ()) -> None:
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        field = _field(message, f.name)
        if value is None:
            continue  # an absent optional
        _fill_timestamp(message, f.name, value)
        _fill_duration(message, f.name, value)
        if field.enum_type is not None:
            table, what, _ = _ENUMS[field.enum_type.full_name]
            setattr(message, f.name, _enum_to_pb(table, value, what))
        elif isinstance(value, dict):
            getattr(message, f.name).update(value)
        elif isinstance(value, (tuple, list)) and field.message_type is None:
            getattr(message, f.name).extend(value)
        elif isinstance(value, (tuple, list)):
            for item in value:
                _fill(getattr(message, f.name).add(), item)
        elif field.message_type is not None:
            getattr(message, f.name).SetInParent()  # present even when every field is a default
            _fill(getattr(message, f.name), value)
        else:
            setattr(message, f.name, value)


def _fill_timestamp(message: Message, name: str, seconds: Any) -> None:
    stamp = _TIMESTAMPS.get(name)
    if stamp is not None and stamp in message.DESCRIPTOR.fields_by_name and isinstance(seconds, (int, float)) and seconds:
        timestamp_from_seconds(getattr(message, stamp), seconds)


def timestamp_from_seconds(timestamp: Any, seconds: float) -> None:
    """Set a ``google.protobuf.Timestamp`` from unix seconds (whole seconds apart: ``seconds * 1e9``
    would lose the nanoseconds a double of today's time still holds)."""
    whole = math.floor(seconds)
    nanos = min(round((seconds - whole) * 1e9), 999_999_999)
    timestamp.seconds, timestamp.nanos = whole, nanos


# durations the dataclasses hold as doubles named for their unit, which messages also carry as a
# google.protobuf.Duration (issue 15; docs/api.md "Durations"): name -> (Duration field, ns per unit).
# The daemon always fills both (a zero too: the Duration's presence says the sender knows it); a
# reader takes the Duration when present, else the double an older peer sent.
_NS_PER_S, _NS_PER_MS = 1_000_000_000, 1_000_000
_DURATIONS = {
    "elapsed_s": ("elapsed", _NS_PER_S), "timeout_s": ("timeout", _NS_PER_S), "interval_s": ("interval", _NS_PER_S),
    "freezing_ms": ("freezing_duration", _NS_PER_MS), "frozen_ms": ("frozen_duration", _NS_PER_MS),
    "memdump_ms": ("memdump_duration", _NS_PER_MS), "memwrite_ms": ("memwrite_duration", _NS_PER_MS),
    "archive_ms": ("archive_duration", _NS_PER_MS), "total_ms": ("total_duration", _NS_PER_MS),
    "import_ms": ("import_duration", _NS_PER_MS), "restore_ms": ("restore_duration", _NS_PER_MS),
    "since_resume_ms": ("since_resume_duration", _NS_PER_MS), "phases_ms": ("phase_durations", _NS_PER_MS),
}
_DURATION = "google.protobuf.Duration"
_DURATION_MAX_S = 315_576_000_000  # the range google.protobuf.Duration allows (+-10,000 years)


def _duration_field(message: Message, name: str) -> tuple[Any, int] | None:
    """The Duration field (or map of Durations) ``message`` carries beside its double ``name``."""
    target = _DURATIONS.get(name)
    field = message.DESCRIPTOR.fields_by_name.get(target[0]) if target else None
    if field is None or field.message_type is None:
        return None
    kind = field.message_type
    if kind.GetOptions().map_entry:
        kind = kind.fields_by_name["value"].message_type
    return (field, target[1]) if kind is not None and kind.full_name == _DURATION else None  # type: ignore[index]


def _fill_duration(message: Message, name: str, value: Any) -> None:
    found = _duration_field(message, name)
    if found is None:
        return
    field, ns_per_unit = found
    if isinstance(value, dict):
        for key, amount in value.items():
            if _finite(amount):
                set_duration(getattr(message, field.name)[key], amount, ns_per_unit)
    elif _finite(value):
        set_duration(getattr(message, field.name), value, ns_per_unit)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def set_duration(duration: Any, amount: float, ns_per_unit: int = _NS_PER_S) -> None:
    """Set a ``google.protobuf.Duration`` from ``amount`` units (seconds by default), to the
    nanosecond; seconds and nanos share the sign, as the type requires; clamped to its range."""
    if abs(amount) * ns_per_unit > _DURATION_MAX_S * _NS_PER_S:
        amount = math.copysign(_DURATION_MAX_S * _NS_PER_S / ns_per_unit, amount)
    total = round(amount * ns_per_unit)
    whole, nanos = divmod(abs(total), _NS_PER_S)
    sign = -1 if total < 0 else 1
    duration.seconds, duration.nanos = sign * whole, sign * nanos


def as_duration(seconds: float) -> Any:
    """A ``google.protobuf.Duration`` of ``seconds`` (what a client sends beside a ``*_s`` double)."""
    from google.protobuf.duration_pb2 import Duration

    duration = Duration()
    if _finite(seconds):
        set_duration(duration, seconds)
    return duration


def duration_amount(duration: Any, ns_per_unit: int = _NS_PER_S) -> float:
    """A ``google.protobuf.Duration`` in units of ``ns_per_unit`` nanoseconds (seconds by default)."""
    return (duration.seconds * _NS_PER_S + duration.nanos) / ns_per_unit


def seconds_of(request: Message, duration: str, double: str) -> float | None:
    """A request's duration in seconds: its Duration field when set, else its double (an older
    client's), else None (neither sent; a non-``optional`` double reads as its value, 0 included)."""
    if request.HasField(duration):
        return duration_amount(getattr(request, duration))
    if request.DESCRIPTOR.fields_by_name[double].has_presence and not request.HasField(double):
        return None
    return float(getattr(request, double))


def _read_duration(message: Message, name: str) -> Any:
    """The value of double ``name`` read from its Duration beside it, when the sender set one; else None."""
    found = _duration_field(message, name)
    if found is None:
        return None
    field, ns_per_unit = found
    value = getattr(message, field.name)
    if field.message_type.GetOptions().map_entry:
        return {key: duration_amount(d, ns_per_unit) for key, d in value.items()} if value else None
    return duration_amount(value, ns_per_unit) if message.HasField(field.name) else None


def _from_pb(cls: type[D], message: Message, skip: Iterable[str] = (), **given: Any) -> D:
    """A ``cls`` from the same-named fields of ``message``; fields named in ``skip`` keep their
    defaults, ``given`` are dataclass fields used as they are."""
    hints = _hints(cls)
    kwargs = dict(given)
    for f in dataclasses.fields(cls):
        if f.name not in given and f.name not in skip:
            kwargs[f.name] = _read(message, f, hints[f.name])
    return cls(**kwargs)


def _read(message: Message, f: dataclasses.Field, hint: Any) -> Any:
    field = _field(message, f.name)
    duration = _read_duration(message, f.name)
    if duration is not None:
        return duration
    nullable = type(None) in typing.get_args(hint)
    if nullable or (field.has_presence and field.message_type is None):
        if not message.HasField(f.name):
            return None if nullable else f.default
    if nullable:
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
    value = getattr(message, f.name)
    if field.enum_type is not None:
        table, _, default = _ENUMS[field.enum_type.full_name]
        return _enum_from_pb(table, value, default)
    if _is_dataclass(hint):
        return _nested_from_pb(hint, value)
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]  # tuple[X, ...]
        return tuple(_nested_from_pb(item, v) for v in value) if _is_dataclass(item) else tuple(value)
    if typing.get_origin(hint) is dict:
        return dict(value)
    return value


# nested types whose reading has an exception of its own: the generic pair reads them with it
_OWN_FROM_PB: dict[type, Callable[[Any], Any]] = {}


def _nested_from_pb(cls: type, message: Message) -> Any:
    own = _OWN_FROM_PB.get(cls)
    return own(message) if own is not None else _from_pb(cls, message)


def _is_dataclass(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _field(message: Message, name: str) -> Any:
    try:
        return message.DESCRIPTOR.fields_by_name[name]
    except KeyError:
        raise TypeError(f"{message.DESCRIPTOR.name} has no field {name!r}: skip it or convert it by hand") from None


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# --- runtime.spec -----------------------------------------------------------------------------


def volume_to_pb(v: rspec.Volume) -> pb.Volume:
    return _to_pb(v, pb.Volume)


def volume_from_pb(m: pb.Volume) -> rspec.Volume:
    return _from_pb(rspec.Volume, m)


def spec_to_pb(s: rspec.ContainerSpec) -> pb.ContainerSpec:
    return _to_pb(s, pb.ContainerSpec)


def spec_from_pb(m: pb.ContainerSpec) -> rspec.ContainerSpec:
    # empty (an older peer): the host's default profile
    return _from_pb(rspec.ContainerSpec, m, seccomp=m.seccomp or "default", restart=m.restart or "no",
                    **_ns_modes_from_pb(m))


def _ns_modes_from_pb(m: Any) -> dict[str, str]:
    """Shared-namespace modes (runtime/ns_modes.py): empty (an older peer or client) is private."""
    return {f: getattr(m, f) or "private" for f in ("pid_mode", "ipc_mode", "uts_mode", "cgroupns_mode")}


_OWN_FROM_PB[rspec.ContainerSpec] = spec_from_pb  # in ContainerInfo


def state_to_pb(s: rspec.ContainerState) -> pb.ContainerState:
    return _to_pb(s, pb.ContainerState)


def state_from_pb(m: pb.ContainerState) -> rspec.ContainerState:
    return _from_pb(rspec.ContainerState, m)


def container_to_pb(c: rspec.ContainerInfo) -> pb.ContainerInfo:
    return _to_pb(c, pb.ContainerInfo)


def container_from_pb(m: pb.ContainerInfo) -> rspec.ContainerInfo:
    return _from_pb(rspec.ContainerInfo, m)


# --- migrate.api ------------------------------------------------------------------------------


def image_to_pb(i: api.ImageInfo) -> pb.ImageInfo:
    return _to_pb(i, pb.ImageInfo)


def image_from_pb(m: pb.ImageInfo) -> api.ImageInfo:
    return _from_pb(api.ImageInfo, m)


def commit_result_to_pb(r: api.CommitResult) -> pb.CommitResult:
    return _to_pb(r, pb.CommitResult, image=image_to_pb(r.image))


def commit_result_from_pb(m: pb.CommitResult) -> api.CommitResult:
    return _from_pb(api.CommitResult, m, image=image_from_pb(m.image))


def volume_info_to_pb(v: api.VolumeInfo) -> pb.VolumeInfo:
    return _to_pb(v, pb.VolumeInfo)


def volume_info_from_pb(m: pb.VolumeInfo) -> api.VolumeInfo:
    return _from_pb(api.VolumeInfo, m)


def image_removal_to_pb(r: api.ImageRemoval) -> pb.ImageRemoval:
    return _to_pb(r, pb.ImageRemoval)


def image_removal_from_pb(m: pb.ImageRemoval) -> api.ImageRemoval:
    return _from_pb(api.ImageRemoval, m)


def image_details_to_pb(d: api.ImageDetails) -> pb.InspectImageResponse:
    """The config travels as JSON (absent: the image has none)."""
    reply = pb.InspectImageResponse(image=image_to_pb(d.image))
    if d.config is not None:
        reply.config_json = json.dumps(d.config, sort_keys=True)
    return reply


def image_details_from_pb(m: pb.InspectImageResponse) -> api.ImageDetails:
    from runtime.errors import InvalidArgument

    config = None
    if m.HasField("config_json"):
        try:
            config = json.loads(m.config_json)
        except ValueError as exc:
            raise InvalidArgument(f"invalid image config json for {m.image.name}: {exc}") from exc
        if not isinstance(config, dict):
            raise InvalidArgument(f"invalid image config json for {m.image.name}: expected an object")
    return api.ImageDetails(image=image_from_pb(m.image), config=config)


# paths on the daemon's host: strings on the wire
_REGISTRY_PATHS = ("cert_dir", "authfile")


def registry_options_to_pb(o: RegistryOptions | None) -> pb.RegistryOptions:
    message = _to_pb(o or RegistryOptions(), pb.RegistryOptions, skip=_REGISTRY_PATHS)
    for name in _REGISTRY_PATHS:
        value = getattr(o, name, None)
        if value is not None:
            setattr(message, name, str(value))
    return message


def registry_options_from_pb(m: pb.RegistryOptions) -> RegistryOptions:
    def path(name: str) -> Path | None:
        return Path(getattr(m, name)) if m.HasField(name) else None

    return _from_pb(RegistryOptions, m, cert_dir=path("cert_dir"), authfile=path("authfile"))


def push_result_to_pb(r: PushResult) -> pb.RegistryPushResult:
    return _to_pb(r, pb.RegistryPushResult)


def push_result_from_pb(m: pb.RegistryPushResult) -> PushResult:
    return _from_pb(PushResult, m)


def host_to_pb(h: api.HostInfo) -> pb.HostInfo:
    return _to_pb(h, pb.HostInfo)


def host_from_pb(m: pb.HostInfo) -> api.HostInfo:
    return _from_pb(api.HostInfo, m)


def log_entry_to_pb(e: LogEntry) -> pb.StreamLogsResponse:
    m = pb.StreamLogsResponse(data=e.data, stream=e.stream, time=e.time_ns / 1e9)
    if e.time_ns > 0:  # write_time: the nanoseconds the double cannot hold
        m.write_time.seconds, m.write_time.nanos = divmod(e.time_ns, 1_000_000_000)
    return m


def log_entry_from_pb(m: pb.StreamLogsResponse) -> LogEntry:
    """An older server's response (no stream, no time): stdout, time unknown."""
    time_ns = m.write_time.seconds * 1_000_000_000 + m.write_time.nanos if m.HasField("write_time") else round(m.time * 1e9)
    return LogEntry(stream=m.stream if m.stream in ("stdout", "stderr") else "stdout", time_ns=time_ns, data=m.data)


def logs_request(name: str, follow: bool, tail: int | None, since: float | None, until: float | None,
                 timestamps: bool = False) -> pb.StreamLogsRequest:
    request = pb.StreamLogsRequest(name=name, follow=follow, timestamps=timestamps)
    for field, value in (("tail", tail), ("since", since), ("until", until)):
        if value is not None:
            setattr(request, field, value)
    for field, value in (("since_time", since), ("until_time", until)):  # both: an older daemon reads the doubles
        if value is not None and math.isfinite(value):
            timestamp_from_seconds(getattr(request, field), value)
    return request


def logs_arguments(m: pb.StreamLogsRequest) -> dict[str, Any]:
    """The engine's ``logs`` keyword arguments of a request (an older client's has no filters); a
    Timestamp wins over the double beside it."""
    def seconds(stamp: str, double: str) -> float | None:
        if m.HasField(stamp):
            return getattr(m, stamp).seconds + getattr(m, stamp).nanos / 1e9
        return getattr(m, double) if m.HasField(double) else None

    return {"follow": m.follow, "tail": m.tail if m.HasField("tail") else None,
            "since": seconds("since_time", "since"), "until": seconds("until_time", "until")}


def progress_to_pb(e: api.ProgressEvent) -> pb.ProgressEvent:
    return _to_pb(e, pb.ProgressEvent)


def progress_from_pb(m: pb.ProgressEvent) -> api.ProgressEvent:
    return _from_pb(api.ProgressEvent, m)


def migration_event_to_pb(e: api.ProgressEvent, throughput_bytes_per_s: float = 0.0) -> pb.MigrationEvent:
    """A MigrationEvent has no operation (it is always "migrate") but the phase's throughput."""
    return _to_pb(e, pb.MigrationEvent, skip=("operation",), throughput_bytes_per_s=throughput_bytes_per_s)


def migration_event_from_pb(m: pb.MigrationEvent) -> api.ProgressEvent:
    return _from_pb(api.ProgressEvent, m, operation="migrate")


def run_options_to_pb(o: api.RunOptions) -> pb.RunContainerRequest:
    # None (the image's) and () (cleared) both are an empty repeated field: entrypoint_set tells them apart
    # --network container:NAME travels as NETWORK_MODE_CONTAINER + network_container NAME
    network, _, peer = o.network.partition(":") if o.network.startswith("container:") else (o.network, "", "")
    return _to_pb(o, pb.RunContainerRequest, entrypoint=o.entrypoint or (), entrypoint_set=o.entrypoint is not None,
                  network=network_to_pb(network), network_container=peer)


def run_options_from_pb(m: pb.RunContainerRequest) -> api.RunOptions:
    network = network_from_pb(m.network)
    return _from_pb(api.RunOptions, m, seccomp=m.seccomp or "default", restart=m.restart or "no",  # as in spec_from_pb
                    entrypoint=tuple(m.entrypoint) if m.entrypoint_set else None, **_ns_modes_from_pb(m),
                    network=f"container:{m.network_container}" if network == "container" else network)


# read on the caller's side, never sent to a daemon: the archive is downloaded by the client
# (DownloadCheckpoint) and signed there
_CHECKPOINT_LOCAL = ("export_path", "sign_key", "export_format")  # export_format: the caller converts (migrate/interop/export_remote.py)


def checkpoint_request_to_pb(name: str, o: api.CheckpointOptions) -> pb.CheckpointRequest:
    return _to_pb(o, pb.CheckpointRequest, skip=_CHECKPOINT_LOCAL, name=name)


def checkpoint_options_from_pb(m: pb.CheckpointRequest) -> api.CheckpointOptions:
    return _from_pb(api.CheckpointOptions, m, skip=_CHECKPOINT_LOCAL)


def checkpoint_stats_to_pb(s: api.CheckpointStats) -> pb.CheckpointStats:
    return _to_pb(s, pb.CheckpointStats)


def checkpoint_stats_from_pb(m: pb.CheckpointStats) -> api.CheckpointStats:
    return _from_pb(api.CheckpointStats, m)


def checkpoint_result_to_pb(r: api.CheckpointResult) -> pb.CheckpointResult:
    return _to_pb(r, pb.CheckpointResult)


def checkpoint_result_from_pb(m: pb.CheckpointResult) -> api.CheckpointResult:
    return _from_pb(api.CheckpointResult, m)


def checkpoint_info_to_pb(c: api.CheckpointInfo) -> pb.CheckpointInfo:
    return _to_pb(c, pb.CheckpointInfo)


def checkpoint_info_from_pb(m: pb.CheckpointInfo) -> api.CheckpointInfo:
    return _from_pb(api.CheckpointInfo, m)


# not sent: the archive is uploaded first (UploadCheckpoint) and its signature checked on the caller's
# side; the seccomp choice crosses as RestoreRequest.seccomp ("" keeps the checkpoint's)
_RESTORE_LOCAL = ("import_path", "trusted_keys",
                  "image_registry",  # restore REF's registry flags: the client refuses them remotely
                  "pull_image")  # restore --import --pull: foreign archives are restored locally only


def restore_request_to_pb(o: api.RestoreOptions) -> pb.RestoreRequest:
    # restore --publish: None (keep the checkpoint's) and () (publish none) differ by ports_set
    ports = [_to_pb(m, pb.PortMapping) for m in o.ports or ()]
    return _to_pb(o, pb.RestoreRequest, skip=_RESTORE_LOCAL, checkpoint_id=o.checkpoint_id or "",
                  ports=ports, ports_set=o.ports is not None)


def restore_options_from_pb(m: pb.RestoreRequest) -> api.RestoreOptions:
    # an absent, zero, negative or NaN timeout is the default; the Duration wins over the double
    given = seconds_of(m, "timeout", "timeout_s")
    timeout_s = float(given) if given is not None and given > 0 else api.DEFAULT_RESTORE_TIMEOUT_S
    ports = tuple(_from_pb(PortMapping, p) for p in m.ports) if m.ports_set else None
    # seccomp "" is the caller's "keep the checkpoint's" (None); the daemon's restore applies the same
    # policy as a local one to what it is told (migrate/restore.py seccomp_policy)
    return _from_pb(api.RestoreOptions, m, skip=_RESTORE_LOCAL, checkpoint_id=m.checkpoint_id or None, timeout_s=timeout_s,
                    ports=ports, seccomp=m.seccomp or None)


def restore_stats_to_pb(s: api.RestoreStats) -> pb.RestoreStats:
    return _to_pb(s, pb.RestoreStats)


def restore_stats_from_pb(m: pb.RestoreStats) -> api.RestoreStats:
    return _from_pb(api.RestoreStats, m)


def restore_result_to_pb(r: api.RestoreResult) -> pb.RestoreResult:
    return _to_pb(r, pb.RestoreResult)


def restore_result_from_pb(m: pb.RestoreResult) -> api.RestoreResult:
    return _from_pb(api.RestoreResult, m)


def migrate_request_to_pb(name: str, o: api.MigrateOptions) -> pb.MigrateRequest:
    # migrate -p: a present PortList (even empty) replaces the ports, an absent one keeps them
    ports = None if o.ports is None else pb.PortList(ports=[_to_pb(m, pb.PortMapping) for m in o.ports])
    return _to_pb(o, pb.MigrateRequest, skip=("ports",), name=name, ports=ports)


def migrate_options_from_pb(m: pb.MigrateRequest) -> api.MigrateOptions:
    ports = tuple(_from_pb(PortMapping, p) for p in m.ports.ports) if m.HasField("ports") else None
    return _from_pb(api.MigrateOptions, m, ports=ports)


def migration_stats_to_pb(s: api.MigrationStats) -> pb.MigrationStats:
    return _to_pb(s, pb.MigrationStats)


def migration_stats_from_pb(m: pb.MigrationStats) -> api.MigrationStats:
    return _from_pb(api.MigrationStats, m)


def migrate_result_to_pb(r: api.MigrateResult) -> pb.MigrateResult:
    return _to_pb(r, pb.MigrateResult)


def migrate_result_from_pb(m: pb.MigrateResult) -> api.MigrateResult:
    return _from_pb(api.MigrateResult, m)


def incoming_request_to_pb(r: api.IncomingRequest) -> pb.PrepareIncomingRequest:
    """The spec travels as JSON; ``source_address`` is filled in by the target's service, never sent."""
    return _to_pb(r, pb.PrepareIncomingRequest, skip=("spec", "source_address"), spec_json=json.dumps(r.spec, sort_keys=True))


def incoming_request_from_pb(m: pb.PrepareIncomingRequest) -> api.IncomingRequest:
    from runtime.errors import InvalidArgument

    try:
        spec = json.loads(m.spec_json) if m.spec_json else {}
    except ValueError as exc:
        raise InvalidArgument(f"invalid container spec json for {m.container_name}: {exc}") from exc
    if not isinstance(spec, dict):
        raise InvalidArgument(f"invalid container spec json for {m.container_name}: expected an object")
    return _from_pb(api.IncomingRequest, m, skip=("source_address",), spec=spec)


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
    return _to_pb(t, pb.PrepareIncomingResponse)


def ticket_from_pb(m: pb.PrepareIncomingResponse) -> api.IncomingTicket:
    return _from_pb(api.IncomingTicket, m)


# --- stats (issue 15) ----------------------------------------------------------------------------

_STATS_OPTIONAL = ("cpu_percent", "cpu_usage_us", "memory_usage_bytes", "memory_limit_bytes", "memory_percent",
                   "pids_current", "net_rx_bytes", "net_tx_bytes", "block_read_bytes", "block_write_bytes")


def stats_to_pb(s: Any, read_at_unix_s: float) -> pb.ContainerStatsSample:
    """A ``runtime.stats.ContainerStats``; None fields stay unset."""
    m = pb.ContainerStatsSample(name=s.name, container_id=s.container_id, status=s.status,
                                read_at_monotonic_s=s.read_at_s, online_cpus=s.online_cpus,
                                block_io_source=s.block_io_source, read_at_unix_s=read_at_unix_s)
    if read_at_unix_s:
        timestamp_from_seconds(m.read_time, read_at_unix_s)
    for field in _STATS_OPTIONAL:
        value = getattr(s, field)
        if value is not None:
            setattr(m, field, value)
    return m


def stats_from_pb(m: pb.ContainerStatsSample) -> Any:
    """The ``ContainerStats``; its ``read_at_s`` is the daemon's monotonic clock (only differences
    between samples of one daemon mean anything)."""
    from runtime.stats import ContainerStats

    optional = {f: getattr(m, f) if m.HasField(f) else None for f in _STATS_OPTIONAL}
    return ContainerStats(name=m.name, container_id=m.container_id, status=m.status, read_at_s=m.read_at_monotonic_s,
                          online_cpus=m.online_cpus or 1, block_io_source=m.block_io_source, **optional)


# --- events (issue 15: WatchEvents, runtime/events.py) -------------------------------------------


def event_to_pb(e: Any) -> pb.Event:
    """A ``runtime.events.Event``."""
    message = pb.Event(sequence=e.sequence, time=e.time, type=e.type, action=e.action, object_id=e.id, name=e.name,
                       attributes=dict(e.attributes))
    if e.time:
        timestamp_from_seconds(message.event_time, e.time)
    return message


def event_from_pb(m: pb.Event) -> Any:
    from runtime.events import Event

    return Event(sequence=m.sequence, time=m.time, type=m.type, action=m.action, id=m.object_id, name=m.name,
                 attributes=dict(m.attributes))


def watch_events_request(since: int | None, filters: Iterable[str]) -> pb.WatchEventsRequest:
    request = pb.WatchEventsRequest(filter=list(filters))
    if since is not None:
        request.since = since
    return request
