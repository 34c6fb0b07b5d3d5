"""Named volumes on the real runtime (issue 13): volume create/ls/inspect/rm/prune, ``-v NAME:/path``
kept across containers, ``--mount``, and checkpoint ``--export`` with (or without) the volumes'
contents imported on a fresh state root."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.cli_helpers import ok, unique
from tests.integration.conftest import PYMIGRATE, REPO

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]


def _vols(pm) -> dict[str, dict]:  # noqa: ANN001
    return {v["name"]: v for v in json.loads(ok(pm("volume", "ls", "--json")))}


def test_volume_commands_round_trip(pm) -> None:  # noqa: ANN001
    name = unique("vol")
    created = json.loads(ok(pm("volume", "create", "--json", "--label", "tier=db", name)))
    assert created["name"] == name and created["labels"] == {"tier": "db"} and created["driver"] == "local"
    assert Path(created["mountpoint"]).is_dir()
    assert name in _vols(pm)
    [inspected] = json.loads(ok(pm("volume", "inspect", name)))
    assert inspected["mountpoint"] == created["mountpoint"] and inspected["used_by"] == []
    anonymous = json.loads(ok(pm("volume", "create", "--json")))["name"]
    assert len(anonymous) == 64
    bad = pm("volume", "create", "../etc")
    assert bad.returncode == 125 and b"invalid volume name" in bad.stderr
    removed = json.loads(ok(pm("volume", "rm", "--json", name)))
    assert removed == {"removed": [name], "failed": []} and name not in _vols(pm)
    missing = pm("volume", "rm", name)
    assert missing.returncode == 125 and b"no such volume" in missing.stderr
    ok(pm("volume", "rm", "-f", name))  # docker: -f makes a missing name no error
    pruned = json.loads(ok(pm("volume", "prune", "-f", "--json")))
    assert anonymous in pruned["removed"] and anonymous not in _vols(pm)


def test_run_v_name_persists_data_across_containers_and_rm_refuses_while_used(pm) -> None:  # noqa: ANN001
    vol, first, second = unique("data"), unique("w"), unique("r")
    try:
        ok(pm("run", "-d", "--name", first, "-v", f"{vol}:/data", "busybox", "sh", "-c", "echo kept > /data/f; sleep 1000"))
        assert _vols(pm)[vol]["used_by"] == [first]  # made on first use
        in_use = pm("volume", "rm", "--json", vol)
        assert in_use.returncode == 125
        [failure] = json.loads(in_use.stdout)["failed"]
        assert f"in use by container {first}" in failure["error"] and failure["hint"]
        ok(pm("stop", "-t", "1", first))
        assert pm("volume", "rm", vol).returncode == 125  # a stopped container still uses it (docker)
        assert vol in [v for v, info in _vols(pm).items() if info["used_by"]]
        ok(pm("rm", first))
        assert _vols(pm)[vol]["used_by"] == []  # the container went, the volume stays
        out = ok(pm("run", "--rm", "--name", second, "--mount", f"type=volume,source={vol},target=/mnt,readonly",
                    "busybox", "sh", "-c", "cat /mnt/f; touch /mnt/x 2>&1 || true"))
        assert out.splitlines()[0] == "kept" and "Read-only file system" in out
    finally:
        pm("rm", "-f", first)
        pm("volume", "rm", "-f", vol)


def _counter(read: Callable[[], str]) -> int:
    """The counter the loop writes, read again while it is between truncating and writing."""
    deadline = time.monotonic() + 5
    while not (text := read().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return int(text)


@pytest.mark.requires("criu", "pycriu")
def test_export_carries_named_volumes_to_a_fresh_root_and_ignore_volumes_leaves_them_out(pm, pm_root, tmp_path) -> None:  # noqa: ANN001
    vol, name = unique("ckv"), unique("ck")
    fresh = tmp_path / "fresh-root"

    def pm2(*args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "PYMIGRATE_ROOT"}
        return subprocess.run([*PYMIGRATE, "--root", str(fresh), *args], capture_output=True, cwd=REPO, env=env, timeout=120)

    full, bare = tmp_path / "full.pmc", tmp_path / "bare.pmc"
    try:
        ok(pm("run", "-d", "--name", name, "--network", "none", "-v", f"{vol}:/data", "busybox", "sh", "-c",
              "i=0; while true; do i=$((i+1)); echo $i > /data/n; sleep 0.05; done"))
        os.makedirs(Path(_vols(pm)[vol]["mountpoint"]) / "sub")
        (Path(_vols(pm)[vol]["mountpoint"]) / "sub" / "big").write_bytes(os.urandom(1 << 20))
        # a second user of the volume, with no file open on it (CRIU checks an open file's size at
        # restore, so a writer's checkpoint only restores with the volume as it was then)
        ok(pm("run", "-d", "--name", name + "-bare", "--network", "none", "-v", f"{vol}:/data", "busybox", "sh", "-c",
              "while true; do sleep 0.1; done"))
        ok(pm("checkpoint", name + "-bare", "--export", str(bare), "--ignore-volumes"))
        ok(pm("checkpoint", name, "--export", str(full)))  # stops it: the counter is final now
        # the loop's `echo > /data/n` truncates before it writes: a freeze in between leaves it empty
        written = int((Path(_vols(pm)[vol]["mountpoint"]) / "n").read_text() or 0)
        big = (Path(_vols(pm)[vol]["mountpoint"]) / "sub" / "big").read_bytes()
        ok(pm2("image", "build-busybox"))
        # without the volume's data, the fresh root has no volume of that name: refused, naming it
        refused = pm2("--json", "restore", "--import", str(bare))
        assert refused.returncode == 125, refused.stdout
        answer = json.loads(refused.stdout)
        assert f"no such volume: {vol}" in answer["error"] and "--ignore-volumes" in answer["hint"], answer
        assert not json.loads(ok(pm2("volume", "ls", "--json")))
        ok(pm2("restore", "--import", str(full)))
        data = Path(json.loads(ok(pm2("volume", "inspect", vol)))[0]["mountpoint"])
        assert (data / "sub" / "big").read_bytes() == big
        assert _counter(lambda: ok(pm2("exec", name, "cat", "/data/n"))) >= written  # the restored loop goes on in the volume it brought
        # the same archive again: the volume now holds data here, so it is refused, not overwritten
        ok(pm2("rm", "-f", name))
        again = pm2("--json", "restore", "--import", str(full))
        assert again.returncode == 125 and f"volume {vol} exists with content" in json.loads(again.stdout)["error"]
        # --ignore-volumes' archive restores once the volume exists here
        ok(pm2("restore", "--import", str(bare)))
        assert _counter(lambda: ok(pm2("exec", name + "-bare", "cat", "/data/n"))) >= written  # the volume it found here
    finally:
        pm2("rm", "-f", name)
        pm2("rm", "-f", name + "-bare")
        pm("rm", "-f", name)
        pm("rm", "-f", name + "-bare")
        pm("volume", "rm", "-f", vol)
        subprocess.run(["umount", "-R", str(fresh)], capture_output=True)
