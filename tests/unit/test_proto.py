"""The generated code is current, the proto follows the style rules, and every dataclass
survives dataclass -> proto -> dataclass unchanged (with optional fields set and unset)."""

from __future__ import annotations

import dataclasses
import filecmp
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from migrate import api
from migrate.remote import convert as cv
from migrate._proto.pymigrate.v1 import host_pb2 as pb
from runtime.registry import PushResult, RegistryOptions
from runtime.spec import ContainerInfo, ContainerSpec, ContainerState, Volume

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash missing")
    out = tmp_path / "_proto"
    subprocess.run([str(REPO / "scripts" / "gen_protos.sh"), str(out)], check=True, capture_output=True)
    committed = REPO / "migrate" / "_proto"
    generated = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    existing = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert generated == existing, "run scripts/gen_protos.sh: the set of generated files changed"
    stale = [str(p) for p in generated if not filecmp.cmp(out / p, committed / p, shallow=False)]
    assert not stale, f"run scripts/gen_protos.sh: {stale} differ from protos/"


def test_proto_style() -> None:
    service = pb.DESCRIPTOR.services_by_name["Host"]
    assert pb.DESCRIPTOR.package == "pymigrate.v1"
    for method in service.methods:
        assert method.input_type.name == f"{method.name}Request", method.name
        assert method.output_type.name == f"{method.name}Response", method.name
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), enum.name
    for message in pb.DESCRIPTOR.message_types_by_name.values():
        for f in message.fields:
            if f.message_type is not None and f.message_type.full_name == "google.protobuf.Duration":
                continue  # the type is the unit (issue 15: `timeout` beside `timeout_s`)
            assert f.name not in ("id", "size", "timeout", "bytes"), f"{message.name}.{f.name} needs a unit or a qualifier"


def test_service_covers_the_issue() -> None:
    names = {m.name for m in pb.DESCRIPTOR.services_by_name["Host"].methods}
    assert {
        "GetHostInfo", "ListImages", "ImportImage", "RemoveImage", "ListContainers", "InspectContainer",
        "RunContainer", "StopContainer", "KillContainer", "RemoveContainer", "PauseContainer", "UnpauseContainer",
        "StreamLogs", "WaitContainer", "BuildBusyboxImage", "InspectCheckpoint", "Checkpoint", "Restore", "ListCheckpoints", "RemoveCheckpoint", "DownloadCheckpoint",
        "UploadCheckpoint", "Migrate", "PrepareIncoming", "PushImage", "PushUpper", "PushCheckpoint", "AbortIncoming", "CommitIncoming",
        "StartPrecopyRound", "SettleMigration", "TagImage", "PruneImages",
        "InspectImage", "LoadImage", "PullImage", "PushImageToRegistry",
        "VolumeCreate", "VolumeList", "VolumeInspect", "VolumeRemove", "VolumePrune", "CommitContainer",
        "CreateContainer", "StartContainer", "RenameContainer",
        "Exec", "Attach", "Stats",
        "WatchEvents",
    } == names


SPEC_FULL = ContainerSpec(
    container_id="a" * 32,
    name="web-1",
    image="busybox",
    image_digest="sha256:" + "b" * 64,
    command=("/bin/sh", "-c", "echo hi"),
    env=("A=1", "B=2"),
    workdir="/srv",
    hostname="web",
    memory_bytes=64 << 20,
    cpus=0.5,
    pids_limit=100,
    network="none",
    ip="10.77.0.9",
    mac="02:42:0a:4d:00:09",
    volumes=(Volume("/data", "/mnt", readonly=True), Volume("/x", "/y")),
    cgroup_parent="/custom",
    created_at=1700000000.25,
)
SPEC_MIN = ContainerSpec(container_id="c" * 32, name="m", image="i", image_digest="sha256:0", command=())
STATE_FULL = ContainerState(
    status="exited", pid=0, shim_pid=12, exit_code=0, oom_killed=True, started_at=1.5, finished_at=2.5, restored_from="ck",
    checkpointed="migrated",
)
INFO_FULL = ContainerInfo(SPEC_FULL, STATE_FULL, bundle_dir="/b", cgroup={"memory": "/m", "unified": "/u"}, memory_current_bytes=0, pids_current=3)
INFO_MIN = ContainerInfo(SPEC_MIN, ContainerState())
IMAGE = api.ImageInfo(name="busybox", digest="sha256:" + "d" * 64, size_bytes=123, created_at=4.5)


@pytest.mark.parametrize(
    "value, to_pb, from_pb",
    [
        (SPEC_FULL, cv.spec_to_pb, cv.spec_from_pb),
        (SPEC_MIN, cv.spec_to_pb, cv.spec_from_pb),
        (STATE_FULL, cv.state_to_pb, cv.state_from_pb),
        (ContainerState(status="paused"), cv.state_to_pb, cv.state_from_pb),
        (INFO_FULL, cv.container_to_pb, cv.container_from_pb),
        (INFO_MIN, cv.container_to_pb, cv.container_from_pb),
        (IMAGE, cv.image_to_pb, cv.image_from_pb),
        (
            api.HostInfo("0.1", "h", "6.18", "4.1.1", {"a": True, "b": False}, "hybrid", "sha256:x", (IMAGE,)),
            cv.host_to_pb,
            cv.host_from_pb,
        ),
        (api.HostInfo("0.1", "h", "6.18", None, {}, "v2", ""), cv.host_to_pb, cv.host_from_pb),
        (api.ProgressEvent("checkpoint", "dump", 5, 10, 1.25, "msg"), cv.progress_to_pb, cv.progress_from_pb),
        (
            api.RunOptions(
                image="busybox", command=("sleep", "1"), name="n", hostname="h", env=("A=1",), workdir="/w",
                memory_bytes=1, cpus=1.5, pids_limit=2, network="none", ip="10.0.0.1", volumes=(Volume("/a", "/b"),),
                cgroup_parent="/p",
            ),
            cv.run_options_to_pb,
            cv.run_options_from_pb,
        ),
        (api.RunOptions(image="busybox"), cv.run_options_to_pb, cv.run_options_from_pb),
        (
            api.CheckpointResult("ck", "web", "/tmp/x.tar.zst", api.CheckpointStats(*range(1, 13))),
            cv.checkpoint_result_to_pb,
            cv.checkpoint_result_from_pb,
        ),
        (api.CheckpointResult("ck", "web", None, api.CheckpointStats()), cv.checkpoint_result_to_pb, cv.checkpoint_result_from_pb),
        (api.CheckpointInfo("ck", "web", "a" * 32, "sha256:e", 7.5, 99, "4.1.1"), cv.checkpoint_info_to_pb, cv.checkpoint_info_from_pb),
        (api.RestoreResult(INFO_FULL, api.RestoreStats(1.0, 2.0, 3.0, 4, 5)), cv.restore_result_to_pb, cv.restore_result_from_pb),
        (
            api.MigrateResult("web", "unix:/x", "precopy", api.MigrationStats(1.0, 2.0, 3, 4, {"dump": 5.5})),
            cv.migrate_result_to_pb,
            cv.migrate_result_from_pb,
        ),
        (
            api.IncomingRequest("web", json.loads(json.dumps(SPEC_FULL.to_dict())), "sha256:f", "4.1.1", "sha256:c", "10.77.0.9", "postcopy"),
            cv.incoming_request_to_pb,
            cv.incoming_request_from_pb,
        ),
        (api.IncomingRequest("web", {}, "sha256:f", None, "", None), cv.incoming_request_to_pb, cv.incoming_request_from_pb),
        (api.IncomingTicket("m1", True), cv.ticket_to_pb, cv.ticket_from_pb),
        (api.ImageDetails(IMAGE, {"Cmd": ["sh"], "Env": ["A=1"], "os": "linux"}), cv.image_details_to_pb, cv.image_details_from_pb),
        (api.ImageDetails(IMAGE, None), cv.image_details_to_pb, cv.image_details_from_pb),
        (api.ImageDetails(IMAGE, {}), cv.image_details_to_pb, cv.image_details_from_pb),
        (RegistryOptions(), cv.registry_options_to_pb, cv.registry_options_from_pb),
        (RegistryOptions(tls_verify=False, cert_dir=Path("/etc/certs.d/r"), creds="u:p:q"),
         cv.registry_options_to_pb, cv.registry_options_from_pb),
        (RegistryOptions(tls_verify=True, authfile=Path("/run/containers/0/auth.json")),
         cv.registry_options_to_pb, cv.registry_options_from_pb),
        (PushResult("app:1", "localhost:5000/app:2", "sha256:" + "e" * 64), cv.push_result_to_pb, cv.push_result_from_pb),
    ],
)
def test_round_trip(value: object, to_pb, from_pb) -> None:
    message = to_pb(value)
    wire = type(message).FromString(message.SerializeToString())
    assert from_pb(wire) == value


def test_options_round_trip_through_requests() -> None:
    options = api.CheckpointOptions(leave_running=True, compress="none", level=7, tcp_established=True, file_locks=True)
    assert cv.checkpoint_options_from_pb(cv.checkpoint_request_to_pb("web", options)) == options
    assert cv.checkpoint_options_from_pb(pb.CheckpointRequest(name="web")) == api.CheckpointOptions()
    restore = api.RestoreOptions(checkpoint_id="ck", name="n", ip="10.0.0.2", tcp_established=True)
    assert cv.restore_options_from_pb(cv.restore_request_to_pb(restore)) == restore
    migrate = api.MigrateOptions(dest="10.0.0.1:7070", keep_source=True, mode="auto", tcp_established=True)
    assert cv.migrate_options_from_pb(cv.migrate_request_to_pb("web", migrate)) == migrate
    assert cv.migrate_options_from_pb(pb.MigrateRequest(name="web", dest="d")).mode == "cold"


def test_every_dataclass_field_is_in_its_message() -> None:
    pairs = [
        (ContainerSpec, pb.ContainerSpec), (ContainerState, pb.ContainerState), (ContainerInfo, pb.ContainerInfo),
        (api.ImageInfo, pb.ImageInfo), (api.ImageRemoval, pb.ImageRemoval), (api.HostInfo, pb.HostInfo), (api.ProgressEvent, pb.ProgressEvent),
        (api.CheckpointStats, pb.CheckpointStats), (api.CheckpointResult, pb.CheckpointResult),
        (api.CheckpointInfo, pb.CheckpointInfo), (api.RestoreStats, pb.RestoreStats), (api.RestoreResult, pb.RestoreResult),
        (api.MigrationStats, pb.MigrationStats), (api.MigrateResult, pb.MigrateResult), (api.RunOptions, pb.RunContainerRequest),
        (api.IncomingTicket, pb.PrepareIncomingResponse), (RegistryOptions, pb.RegistryOptions),
        (PushResult, pb.RegistryPushResult), (api.CommitResult, pb.CommitResult),
    ]
    for cls, message in pairs:
        missing = {f.name for f in dataclasses.fields(cls)} - set(message.DESCRIPTOR.fields_by_name)
        assert not missing, f"{message.DESCRIPTOR.name} lacks {missing}"


def test_incoming_spec_rebuilds_the_container_spec() -> None:
    request = api.IncomingRequest("web", SPEC_FULL.to_dict(), "sha256:f", None, "", None)
    back = cv.incoming_request_from_pb(cv.incoming_request_to_pb(request))
    assert ContainerSpec.from_dict(back.spec) == SPEC_FULL


def test_registry_options_keep_unset_apart_from_false() -> None:
    message = cv.registry_options_to_pb(None)
    assert not message.HasField("tls_verify") and not message.HasField("creds")
    assert cv.registry_options_to_pb(RegistryOptions(tls_verify=False)).HasField("tls_verify")
    assert "u:p" not in repr(RegistryOptions(creds="u:p"))  # a logged repr never shows the password


def test_unknown_enum_value_is_invalid_argument() -> None:
    from runtime.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="unknown migration mode 'warp'"):
        cv.mode_to_pb("warp")
    with pytest.raises(InvalidArgument, match="invalid container spec json"):
        cv.incoming_request_from_pb(pb.PrepareIncomingRequest(container_name="x", spec_json="[1"))
