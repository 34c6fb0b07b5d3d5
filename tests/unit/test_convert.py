"""Every conversion of migrate/remote/convert.py round-trips a value with every field set away from
its default (dataclass -> message -> wire -> message -> dataclass), so a field the converter drops
or misreads fails here; the fields that deliberately stay on the caller's side never cross."""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from pathlib import Path
from typing import Any, Callable

import pytest

from migrate import api
from migrate.remote import convert as cv
from migrate._proto.pymigrate.v1 import host_pb2 as pb
from runtime.events import Event
from runtime.logs import LogEntry
from runtime.ports import PortMapping
from runtime.registry import PushResult, RegistryOptions
from runtime.stats import ContainerStats
from runtime.spec import ContainerInfo, ContainerSpec, ContainerState, FreezeRecord, NetworkMode, Status, Volume

VOLUME = Volume("/data", "/mnt", readonly=True, name="data")
PORT = PortMapping(container_port=80, protocol="udp", host_port=8080, host_ip="127.0.0.1")
SPEC = ContainerSpec(
    container_id="a" * 32, name="web-1", image="busybox", image_digest="sha256:" + "b" * 64, command=("/bin/sh", "-c", "echo hi"),
    env=("A=1", "B=2"), workdir="/srv", hostname="web", memory_bytes=64 << 20, cpus=0.5, pids_limit=100, network="none",
    ip="10.77.0.9", mac="02:42:0a:4d:00:09", ports=(PORT,), volumes=(VOLUME, Volume("/x", "/y", readonly=True, name="y")), cgroup_parent="/custom",
    created_at=1700000000.25, seccomp="custom", seccomp_profile='{"defaultAction": "SCMP_ACT_ALLOW"}', user="app:staff",
    stop_signal="SIGQUIT",
    auto_remove=True,
    read_only=True,
    cap_add=("CAP_SYS_ADMIN", "ALL"),
    cap_drop=("CAP_NET_RAW",),
    restart="on-failure:3",
    init=True,
    tty=True,
    interactive=True,
    pid_mode="host",
    ipc_mode="container:" + "c" * 32,
    uts_mode="host",
    cgroupns_mode="host",
    network_container="c" * 32,
    userns="auto",
    labels={"tier": "web", "a.b": ""},
    engine_mounts=("/etc/hosts", "/sys/fs/cgroup/memory"),
    userns_base=1_000_065_536,
    userns_size=65536,
)
FREEZE = FreezeRecord(pid=41, pid_start=123456, operation="migrate", since=1700000001.5, was_paused=True, recover=False,
                      partial=("/var/lib/x", "/var/lib/y"))
STATE = ContainerState(status="paused", pid=40, shim_pid=12, exit_code=3, oom_killed=True, started_at=1.5, finished_at=2.5,
                       restored_from="ck", checkpointed="migrated", frozen_by=FREEZE,
                       restart_count=2, manually_stopped=True, shared_namespaces={"pid": "container:a"},
                       namespace_users={"b": "ipc,net"})
INFO = ContainerInfo(SPEC, STATE, bundle_dir="/b", cgroup={"memory": "/m", "unified": "/u"}, memory_current_bytes=4096, pids_current=3)
IMAGE = api.ImageInfo(name="busybox", digest="sha256:" + "d" * 64, size_bytes=123, created_at=4.5, layers=3)
IMAGE_REMOVAL = api.ImageRemoval(untagged=("a:1", "b"), deleted=("sha256:" + "e" * 64,), layers_removed=("sha256:1", "sha256:2"),
                                 blobs_removed=3, scratch_removed=4, bytes_freed=5 << 30)
CHECKPOINT_OPTIONS = api.CheckpointOptions(leave_running=True, compress="none", level=7, tcp_established=True, file_locks=True,
                                         ignore_volumes=True, labels={"k": "v"}, create_image="reg:5000/ck/web:1")
CHECKPOINT_STATS = api.CheckpointStats(1.5, 2.5, 3.5, 4.5, 5, 6, 7, 8, 9, 10, 11.5, 12.5)
RESTORE_OPTIONS = api.RestoreOptions(checkpoint_id="ck", name="n", ip="10.0.0.2", tcp_established=True, volumes=(VOLUME,), timeout_s=42.5,
                                     ports=(PORT,), ignore_static_ip=True, ignore_static_mac=True, image_ref="reg:5000/ck/web:1",
                                     seccomp="custom", seccomp_profile='{"defaultAction": "SCMP_ACT_ALLOW"}')
RESTORE_STATS = api.RestoreStats(1.5, 2.5, 3.5, 4, 5, 6.5)
MIGRATE_OPTIONS = api.MigrateOptions(dest="10.0.0.1:7070", keep_source=True, mode="auto", tcp_established=True, file_locks=True,
                                     ports=(PORT,), compress="on")
MIGRATION_STATS = api.MigrationStats(1.5, 2.5, 3, 4, {"dump": 5.5, "restore": 6.5}, upper_entries_frozen=7, image_bytes=8,
                                     image_layers_sent=9)
INCOMING = api.IncomingRequest(
    "web", json.loads(json.dumps(SPEC.to_dict())), "sha256:f", "4.1.1", "sha256:c", "10.77.0.9", "postcopy",
    page_server_address="10.77.0.1:0", source_daemon="10.0.0.1:7070", image_layers=("sha256:1", "sha256:2"),
    compressed_pages=True,
)

# the fields each conversion leaves out on purpose (read on the caller's side, or filled in by the receiver)
CHECKPOINT_LOCAL = ("export_path", "sign_key", "export_format")
RESTORE_LOCAL = ("import_path", "trusted_keys", "image_registry", "pull_image")
INCOMING_LOCAL = ("source_address",)

# (value, to_pb, from_pb, fields that do not cross)
ROUND_TRIPS: list[tuple[Any, Callable[[Any], Any], Callable[[Any], Any], tuple[str, ...]]] = [
    (VOLUME, cv.volume_to_pb, cv.volume_from_pb, ()),
    (SPEC, cv.spec_to_pb, cv.spec_from_pb, ()),
    (STATE, cv.state_to_pb, cv.state_from_pb, ()),
    (INFO, cv.container_to_pb, cv.container_from_pb, ()),
    (IMAGE, cv.image_to_pb, cv.image_from_pb, ()),
    (IMAGE_REMOVAL, cv.image_removal_to_pb, cv.image_removal_from_pb, ()),
    (api.VolumeInfo("db", "/r/volumes/db/_data", 1.5, "local2", ("a=b",), ("web",)), cv.volume_info_to_pb, cv.volume_info_from_pb, ()),
    (api.HostInfo("0.1", "h", "6.18", "4.1.1", {"a": True, "b": False}, "hybrid", "sha256:x", (IMAGE,)), cv.host_to_pb, cv.host_from_pb, ()),
    (api.ProgressEvent("checkpoint", "dump", 5, 10, 1.25, "msg"), cv.progress_to_pb, cv.progress_from_pb, ()),
    (LogEntry("stderr", 1_700_000_000_500_000_000, b"x\n"), cv.log_entry_to_pb, cv.log_entry_from_pb, ()),  # ns exact in a double
    (api.ProgressEvent("migrate", "transfer", 5, 10, 1.25, "msg"), cv.migration_event_to_pb, cv.migration_event_from_pb, ()),
    (
        api.RunOptions(image="busybox", command=("sleep", "1"), name="n", hostname="h", env=("A=1",), workdir="/w", memory_bytes=1,
                       cpus=1.5, pids_limit=2, network="none", ip="10.0.0.1", volumes=(VOLUME,), ports=(PORT,), publish_all=True, cgroup_parent="/p",
                       seccomp="custom", seccomp_profile="{}", user="1000:1000", entrypoint=("/bin/sh", "-c"),
                       stop_signal="USR1", auto_remove=True, read_only=True,
                       cap_add=("NET_ADMIN",), cap_drop=("ALL",), restart="always", init=True,
                       tty=True, interactive=True, pid_mode="container:a", ipc_mode="host", uts_mode="host",
                       cgroupns_mode="host", userns="auto:size=65536", labels={"tier": "web"}),
        cv.run_options_to_pb,
        cv.run_options_from_pb,
        (),
    ),
    (CHECKPOINT_OPTIONS, functools.partial(cv.checkpoint_request_to_pb, "web"), cv.checkpoint_options_from_pb, CHECKPOINT_LOCAL),
    (CHECKPOINT_STATS, cv.checkpoint_stats_to_pb, cv.checkpoint_stats_from_pb, ()),
    (api.CheckpointResult("ck", "web", "/tmp/x.tar.zst", CHECKPOINT_STATS, signed_by="SHA256:s", image_ref="reg:5000/ck/web:1",
                          image_digest="sha256:" + "d" * 64), cv.checkpoint_result_to_pb,
     cv.checkpoint_result_from_pb, ()),
    (api.CheckpointInfo("ck", "web", "a" * 32, "sha256:e", 7.5, 99, "4.1.1", labels={"tier": "web"}), cv.checkpoint_info_to_pb, cv.checkpoint_info_from_pb, ()),
    (RESTORE_OPTIONS, cv.restore_request_to_pb, cv.restore_options_from_pb, RESTORE_LOCAL),
    (RESTORE_STATS, cv.restore_stats_to_pb, cv.restore_stats_from_pb, ()),
    (api.RestoreResult(INFO, RESTORE_STATS, signed_by="SHA256:k"), cv.restore_result_to_pb, cv.restore_result_from_pb, ()),
    (MIGRATE_OPTIONS, functools.partial(cv.migrate_request_to_pb, "web"), cv.migrate_options_from_pb, ()),
    (MIGRATION_STATS, cv.migration_stats_to_pb, cv.migration_stats_from_pb, ()),
    (api.MigrateResult("web", "unix:/x", "precopy", MIGRATION_STATS), cv.migrate_result_to_pb, cv.migrate_result_from_pb, ()),
    (INCOMING, cv.incoming_request_to_pb, cv.incoming_request_from_pb, INCOMING_LOCAL),
    (api.Settlement("m1", "committed", container_running=True), cv.settlement_to_pb, functools.partial(cv.settlement_from_pb, "m1"), ()),
    (api.IncomingTicket("m1", True, page_server_port=27000, stage_upper=True, missing_layers=("sha256:2",), layered_image=True,
                        pages_compressed=True),
     cv.ticket_to_pb, cv.ticket_from_pb, ()),
    (api.ImageDetails(IMAGE, {"Cmd": ["sh"], "ExposedPorts": {"80/tcp": {}}}), cv.image_details_to_pb, cv.image_details_from_pb, ()),
    (api.CommitResult(IMAGE, "sha256:d", 10240, 2, 1, ("/.pymigrate",), 6.5), cv.commit_result_to_pb, cv.commit_result_from_pb, ()),
    # cert_dir and authfile are paths on the daemon's host; creds and authfile together are refused there, not here
    (RegistryOptions(tls_verify=False, cert_dir=Path("/etc/c"), creds="u:p", authfile=Path("/a.json")),
     cv.registry_options_to_pb, cv.registry_options_from_pb, ()),
    (PushResult("app:1", "localhost:5000/app:2", "sha256:" + "c" * 64), cv.push_result_to_pb, cv.push_result_from_pb, ()),
    (Event(7, 1.5, "container", "die", "c" * 32, "web", {"exitCode": "3", "app": "shop"}), cv.event_to_pb, cv.event_from_pb, ()),
    (ContainerStats("web", "c" * 32, "running", 12.5, cpu_percent=50.0, cpu_usage_us=900, online_cpus=2, memory_usage_bytes=1 << 20,
                    memory_limit_bytes=1 << 30, memory_percent=0.1, pids_current=3, net_rx_bytes=10, net_tx_bytes=20,
                    block_read_bytes=30, block_write_bytes=40, block_io_source="cgroup"),
     functools.partial(cv.stats_to_pb, read_at_unix_s=1.0), cv.stats_from_pb, ()),
]


def _left_at_default(value: Any, local: tuple[str, ...] = ()) -> list[str]:
    """Fields of ``value``, and of the dataclasses in it, still at their default, None or empty."""
    out = []
    for f in dataclasses.fields(value):
        if f.name in local:
            continue
        v = getattr(value, f.name)
        if f.default is not dataclasses.MISSING:
            unset = v == f.default
        elif f.default_factory is not dataclasses.MISSING:
            unset = v == f.default_factory()
        else:
            unset = not v
        if unset or v is None:
            out.append(f"{type(value).__name__}.{f.name}")
        for item in v if isinstance(v, tuple) else (v,):
            if dataclasses.is_dataclass(item):
                out += _left_at_default(item)
    return out


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "func", fn).__name__


@pytest.mark.parametrize("value, to_pb, from_pb, local", ROUND_TRIPS, ids=[_name(t[1]) for t in ROUND_TRIPS])
def test_round_trip_with_every_field_set(value: Any, to_pb: Callable, from_pb: Callable, local: tuple[str, ...]) -> None:
    assert not _left_at_default(value, local), "set every field to a non-default value"
    message = to_pb(value)
    wire = type(message).FromString(message.SerializeToString())
    assert from_pb(wire) == value


def test_every_public_conversion_is_round_tripped() -> None:
    covered = {_name(fn) for _, to_pb, from_pb, _ in ROUND_TRIPS for fn in (to_pb, from_pb)}
    enums = {f"{e}_{d}_pb" for e in ("status", "network", "compress", "mode") for d in ("to", "from")}
    public = {n for n in vars(cv) if n.endswith(("_to_pb", "_from_pb")) and not n.startswith("_")}
    assert public - enums - covered == set()


@pytest.mark.parametrize(
    "to_pb, from_pb, names, default",
    [
        (cv.status_to_pb, cv.status_from_pb, typing.get_args(Status), "created"),
        (cv.network_to_pb, cv.network_from_pb, typing.get_args(NetworkMode), "bridge"),
        # gzip: podman archives only, written on the caller's side (migrate/interop/export_remote.py), never sent
        (cv.compress_to_pb, cv.compress_from_pb,
         tuple(n for n in typing.get_args(typing.get_type_hints(api.CheckpointOptions)["compress"]) if n != "gzip"), "zstd"),
        (cv.mode_to_pb, cv.mode_from_pb, typing.get_args(api.MigrationMode), "cold"),
    ],
)
def test_enum_round_trip(to_pb: Callable, from_pb: Callable, names: tuple[str, ...], default: str) -> None:
    assert names and all(from_pb(to_pb(name)) == name for name in names)
    assert len({to_pb(name) for name in names}) == len(names)
    assert from_pb(0) == default  # _UNSPECIFIED
    assert from_pb(99) == default  # a newer peer's value


def test_caller_side_fields_never_cross() -> None:
    checkpoint = dataclasses.replace(CHECKPOINT_OPTIONS, export_path=Path("/srv/x.tar.zst"), sign_key=Path("/k"),
                                     export_format="podman")
    assert cv.checkpoint_options_from_pb(cv.checkpoint_request_to_pb("web", checkpoint)) == CHECKPOINT_OPTIONS
    restore = dataclasses.replace(RESTORE_OPTIONS, import_path=Path("/srv/x.tar.zst"), trusted_keys=(Path("/k.pub"),))
    assert cv.restore_options_from_pb(cv.restore_request_to_pb(restore)) == RESTORE_OPTIONS
    incoming = dataclasses.replace(INCOMING, source_address="10.0.0.9")
    assert cv.incoming_request_from_pb(cv.incoming_request_to_pb(incoming)) == INCOMING


def test_restore_seccomp_crosses_and_absent_keeps_the_checkpoints() -> None:
    # "" on the wire is "keep the checkpoint's choice" (None), never a choice of its own
    for seccomp, profile in ((None, None), ("default", None), ("unconfined", None), ("custom", '{"defaultAction": "SCMP_ACT_ERRNO"}')):
        options = api.RestoreOptions(checkpoint_id="ck", seccomp=seccomp, seccomp_profile=profile)
        message = cv.restore_request_to_pb(options)
        assert message.seccomp == (seccomp or "") and message.HasField("seccomp_profile") == (profile is not None)
        back = cv.restore_options_from_pb(pb.RestoreRequest.FromString(message.SerializeToString()))
        assert (back.seccomp, back.seccomp_profile) == (seccomp, profile)


def test_entrypoint_cleared_is_not_the_image_default() -> None:
    cleared = api.RunOptions(image="i", entrypoint=())
    assert cv.run_options_from_pb(cv.run_options_to_pb(cleared)).entrypoint == ()
    assert cv.run_options_from_pb(cv.run_options_to_pb(api.RunOptions(image="i"))).entrypoint is None


def test_empty_messages_read_as_defaults() -> None:
    from migrate._proto.pymigrate.v1 import host_pb2 as pb

    assert cv.checkpoint_options_from_pb(pb.CheckpointRequest()) == api.CheckpointOptions()
    assert cv.restore_options_from_pb(pb.RestoreRequest()) == api.RestoreOptions()
    assert cv.restore_options_from_pb(pb.RestoreRequest(timeout_s=-1)).timeout_s == api.DEFAULT_RESTORE_TIMEOUT_S
    assert cv.run_options_from_pb(pb.RunContainerRequest(image="i")) == api.RunOptions(image="i")
    assert cv.spec_from_pb(pb.ContainerSpec()).seccomp == "default"
    assert cv.container_from_pb(pb.ContainerInfo()).spec.seccomp == "default"  # nested: the same exception
    assert cv.state_from_pb(pb.ContainerState()) == ContainerState()
    assert cv.settlement_from_pb("m", pb.SettleMigrationResponse()) == api.Settlement("m", "pending")
