"""Issue 11 without root: one spec validator for run and manifests, the volume policy of restores,
the per-resource operation lock, freeze records, the restore timeout's error crossing the shim,
the daemon's token-file check and its rate-limited refusal log."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from migrate.api import RestoreOptions
from migrate.restore import checked_spec
from migrate.remote.server import check_token_file
from migrate.remote.service import RefusalLog
from runtime.config import Paths
from runtime.container import parse_spec, parse_volume_mapping, validate_fields, validate_spec
from runtime.errors import Busy, CriuTimeout, InvalidArgument, InvalidSpec
from runtime.freeze_record import holder_alive, new_record, orphaned, process_start, remove_partial
from runtime.spec import ContainerSpec, ContainerState, FreezeRecord, Volume
from runtime.state import StateStore

GOOD = ContainerSpec(
    container_id="a" * 32, name="web", image="busybox", image_digest="sha256:" + "b" * 64, command=("sh",),
    hostname="web", ip="10.77.0.5", mac="02:42:0a:4d:00:05",
)


def manifest(**changes: Any) -> dict[str, Any]:
    spec = GOOD.to_dict()
    spec.update(changes)
    return {"container": spec}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"container_id": "../../x"}, "container_id"),
        ({"container_id": 7}, "container_id"),
        ({"name": "../x"}, "name"),
        ({"name": ["web"]}, "name"),
        ({"image_digest": "sha256:../../etc"}, "image_digest"),
        ({"command": []}, "command"),
        ({"command": ["sh", 5]}, "command"),
        ({"env": ["NOEQUALS"]}, "env"),
        ({"env": "A=1"}, "env"),
        ({"workdir": "relative"}, "workdir"),
        ({"hostname": "a b"}, "hostname"),
        ({"memory_bytes": "lots"}, "memory_bytes"),
        ({"memory_bytes": 1}, "memory_bytes"),
        ({"memory_bytes": True}, "memory_bytes"),
        ({"cpus": float("nan")}, "cpus"),
        ({"cpus": 10_000.0}, "cpus"),
        ({"pids_limit": -1}, "pids_limit"),
        ({"network": "macvlan"}, "network"),
        ({"restart": "sometimes"}, "restart"),
        ({"restart": "always:3"}, "restart"),
        ({"restart": 3}, "restart"),
        ({"restart": "always", "auto_remove": True}, "restart"),
        ({"init": "yes"}, "init"),
        ({"ip": "300.1.1.1"}, "ip"),
        ({"ip": "127.0.0.1"}, "ip"),
        ({"network": "none", "ip": "10.77.0.5"}, "ip"),
        ({"mac": "01:00:5e:00:00:01"}, "mac"),
        ({"mac": "zz"}, "mac"),
        ({"cgroup_parent": "../../evil"}, "cgroup_parent"),
        ({"cgroup_parent": "/sys/fs/cgroup"}, "cgroup_parent"),
        ({"volumes": [{"source": "/", "target": "/"}]}, "volumes[0].target"),
        ({"volumes": [{"source": "relative", "target": "/data"}]}, "volumes[0].source"),
        ({"volumes": [{"source": "/", "target": "/data", "readonly": "no"}]}, "volumes[0]"),
        ({"volumes": "/"}, "volumes"),
        ({"volumes": [{"source": "/", "target": "/data", "evil": 1}]}, "container"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"user": "a b"}, "user"),
        ({"user": "root:"}, "user"),
        ({"user": 0}, "user"),
        ({"user": ["root"]}, "user"),
        ({"user": "4294967295"}, "user"),
        ({"auto_remove": "yes"}, "auto_remove"),
        ({"auto_remove": 1}, "auto_remove"),
        ({"read_only": "true"}, "read_only"),
        ({"cap_add": ["CAP_NOPE"]}, "cap_add"),
        ({"cap_drop": "NET_RAW"}, "cap_drop"),
        ({"cap_drop": [1]}, "cap_drop"),
    ],
)
def test_a_bad_field_is_named(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        checked_spec(manifest(**changes), RestoreOptions(), origin="local")
    assert info.value.field == field, info.value.message


def test_a_good_spec_passes_and_run_uses_the_same_checks() -> None:
    assert validate_spec(GOOD) == GOOD
    assert parse_spec(GOOD.to_dict()) == GOOD
    with pytest.raises(InvalidSpec) as info:  # what run() calls
        validate_fields(name="../x", hostname=None, env=(), workdir="/", memory_bytes=None, cpus=None, pids_limit=None,
                        network="bridge", ip=None, volumes=(), cgroup_parent=None)
    assert info.value.field == "name" and isinstance(info.value, InvalidArgument)
    with pytest.raises(InvalidSpec):
        parse_spec(["not", "an", "object"])
    with pytest.raises(InvalidSpec):
        parse_spec({"name": "web"})  # required fields missing


def test_imported_volumes_must_be_mapped(tmp_path: Path) -> None:
    vols = [{"source": "/", "target": "/host", "readonly": False}]
    with pytest.raises(InvalidSpec) as info:
        checked_spec(manifest(volumes=vols), RestoreOptions(), origin="import")
    assert info.value.field == "volumes[0].source" and "--volume HOSTDIR:/host" in (info.value.hint or "")
    spec = checked_spec(manifest(volumes=vols), RestoreOptions(volumes=(Volume(str(tmp_path), "/host/"),)), origin="import")
    assert spec.volumes == (Volume(str(tmp_path), "/host", False),)
    with pytest.raises(InvalidArgument, match="names no volume of the checkpoint"):
        checked_spec(manifest(volumes=vols), RestoreOptions(volumes=(Volume(str(tmp_path), "/host"), Volume(str(tmp_path), "/x"))),
                     origin="import")
    with pytest.raises(InvalidSpec, match="does not exist"):
        checked_spec(manifest(volumes=vols), RestoreOptions(volumes=(Volume(str(tmp_path / "nope"), "/host"),)), origin="import")


def test_peer_volumes_need_the_operators_consent(tmp_path: Path) -> None:
    vols = [{"source": str(tmp_path), "target": "/data", "readonly": False}]
    with pytest.raises(InvalidSpec, match="does not take volumes from peers") as info:
        checked_spec(manifest(volumes=vols), RestoreOptions(), origin="peer")
    assert "--allow-peer-volumes" in (info.value.hint or "")
    assert checked_spec(manifest(volumes=vols), RestoreOptions(), origin="peer", allow_peer_volumes=True).volumes[0].source == str(tmp_path)
    assert checked_spec(manifest(volumes=vols), RestoreOptions(), origin="local").volumes[0].source == str(tmp_path)


def test_volume_mappings_are_parsed_without_looking_at_this_host() -> None:
    assert parse_volume_mapping("/srv/x:/data:ro") == Volume("/srv/x", "/data", True)
    for bad in ("x:/data", "/srv:/", "/srv", "/srv:/data:rx", "/srv:data"):
        with pytest.raises(InvalidArgument):
            parse_volume_mapping(bad)


def test_hold_refuses_a_second_holder_and_leaves_no_file(tmp_path: Path) -> None:
    store = StateStore(Paths(tmp_path))
    with store.hold("name:web", "restore container"):
        with pytest.raises(Busy) as info:
            with store.hold("name:web", "restore container"):
                pass
        assert info.value.holder_pid == os.getpid() and "another operation holds it" in info.value.message
        # another process sees it held too (flock, not a thread-local flag)
        code = "from pathlib import Path; from runtime.config import Paths; from runtime.state import StateStore\n" \
               f"s = StateStore(Paths(Path({str(tmp_path)!r})))\n" \
               "try:\n    s.hold('name:web', 'x').__enter__()\nexcept Exception as e:\n    print(type(e).__name__)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
        assert out.stdout.strip() == "Busy", out.stderr
        with store.hold("name:other", "restore container"):
            pass
    assert list((tmp_path / "run" / "locks").iterdir()) == []
    with store.hold("name:web", "restore container"):
        pass
    with pytest.raises(InvalidArgument):
        with store.hold("name:../x", "restore"):
            pass


def test_freeze_records_survive_json_and_know_dead_holders(tmp_path: Path) -> None:
    partial = tmp_path / ".x.pma.tmp"
    partial.write_bytes(b"half")
    scratch = tmp_path / "ckpt-1"
    (scratch / "images").mkdir(parents=True)
    record = new_record("checkpoint", was_paused=False, partial=(partial, scratch))
    state = ContainerState(status="running", pid=1, frozen_by=record)
    assert ContainerState.from_dict(state.to_dict()) == state
    assert holder_alive(record) and orphaned(state) is None  # we are alive
    assert process_start(os.getpid()) > 0
    child = subprocess.Popen(["true"])
    child.wait()
    dead = dataclasses.replace(record, pid=child.pid, pid_start=1)
    assert not holder_alive(dead) and orphaned(dataclasses.replace(state, frozen_by=dead)) == dead
    reused = dataclasses.replace(record, pid_start=record.pid_start + 1)  # our pid, another start time
    assert not holder_alive(reused)
    assert orphaned(dataclasses.replace(state, frozen_by=dataclasses.replace(dead, recover=False))) is None
    remove_partial(dead)
    assert not partial.exists() and not scratch.exists()
    remove_partial(dead)  # idempotent
    assert FreezeRecord.from_dict({**dataclasses.asdict(record), "future": 1}) == record


def test_a_restore_timeout_crosses_the_shim_as_itself() -> None:
    from runtime.shim import _plain_attrs, _rebuild_error

    exc = CriuTimeout("restore", 3.0, log_path=Path("/x/restore.log"), log_lines=("Error (criu/cr-restore.c)",))
    back = _rebuild_error({"error": str(exc), "hint": exc.hint, "type": "CriuTimeout", "attrs": _plain_attrs(exc)})
    assert isinstance(back, CriuTimeout) and back.timeout_s == 3.0 and back.log_path == Path("/x/restore.log")
    assert "no answer within 3s" in back.message and back.operation == "restore"
    other = _rebuild_error({"error": "boom", "type": "NotOurs"})
    assert type(other).__name__ == "ContainerError" and other.message == "boom"


def test_criu_that_never_answers_is_killed_at_the_timeout(tmp_path: Path) -> None:
    pytest.importorskip("pycriu")
    from runtime.criu import SwrkCriu, _rpc

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(["sleep", "60"], pass_fds=[theirs.fileno()])  # holds its end, never answers
    theirs.close()
    rpc = _rpc()
    opts = rpc.criu_opts()
    opts.images_dir_fd = 0
    with pytest.raises(CriuTimeout, match="no answer within 0.3s"):
        SwrkCriu("/bin/false")._exchange(proc, ours, rpc, rpc.RESTORE, opts, "restore", tmp_path / "restore.log",
                                          timeout_s=0.3)
    assert proc.poll() is not None, "the silent swrk must be killed"


def test_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret")
    token.chmod(0o644)
    with pytest.raises(PermissionError, match="mode 0644") as info:
        check_token_file(token)
    assert info.value.hint == f"chmod 600 {token}"  # type: ignore[attr-defined]
    token.chmod(0o640)
    with pytest.raises(PermissionError):
        check_token_file(token)
    token.chmod(0o600)
    check_token_file(token)
    with pytest.raises(InvalidArgument):
        check_token_file(tmp_path / "missing")


def test_refusals_are_logged_a_few_per_peer_then_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    refusals = RefusalLog(burst=3, window_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="migrate.remote.service"):
        for _ in range(1000):
            refusals.refused("ipv4:10.0.0.9:4242", "/pymigrate.v1.Host/Checkpoint", "missing or wrong bearer token")
        refusals.refused("ipv6:[::1]:5000", "/pymigrate.v1.Host/Restore", "missing or wrong bearer token")
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 3 + 1 + 1, lines  # 3 one by one, the "counted" notice, the other peer
        assert all("10.0.0.9" in line for line in lines[:4]) and "::1" in lines[4]
        now[0] = 61.0
        refusals.refused("ipv4:10.0.0.9:4243", "/pymigrate.v1.Host/Checkpoint", "missing or wrong bearer token")
        summary = [r.getMessage() for r in caplog.records][5]
        assert "refused 997 more calls from 10.0.0.9" in summary, summary


def test_busy_and_criu_timeout_have_their_own_status_codes() -> None:
    import grpc

    from migrate.remote import _rpc_errors

    assert _rpc_errors.status_for(Busy("web", "restore container"))[0] == grpc.StatusCode.ABORTED
    timeout = CriuTimeout("restore", 3.0)
    code, details, metadata = _rpc_errors.encode(timeout)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert dict(metadata)[_rpc_errors.TYPE_KEY] == "CriuTimeout" and "no answer within 3s" in details
