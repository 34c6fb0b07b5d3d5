"""``checkpoint --leave-running --export`` with real CRIU (issue 17): the container thaws once CRIU
is done and its upper layer is captured, and the archive is compressed and written after that.

What is checked, each against the real kernel and CRIU: the container keeps running (memhog's
counter and a shell counter move on), the archive restores with ``restore --import`` after the
original is removed (same memory checksum, the counter continuing from where it was, the upper
layer and a named volume as they were), a signed one verifies, the archive is written while the
container already runs (held at the ``checkpoint.archive`` failpoint: the counter moves and the
archive is not there yet), and a failure while the archive is written (its file system full)
leaves the container running and no partial file anywhere.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from migrate.archive import read_archive
from tests.integration.cli_helpers import ok, unique
from tests.integration.conftest import PYMIGRATE, REPO
from tests.integration.test_checkpoint import COUNTER
from tests.integration.workloads import (  # noqa: F401  (fixtures)
    container_file,
    memhog_binary,
    memhog_command,
    memhog_image,
    memhog_report,
    memhog_tar,
    read_int,
    wait_for,
    wait_memhog_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "pycriu", "busybox")]



def status(pm: Callable[..., subprocess.CompletedProcess], name: str) -> str:
    for c in json.loads(ok(pm("ps", "-a", "--json"))):
        if c["spec"]["name"] == name:
            return str(c["state"]["status"])
    return "absent"


def leftovers(root: Path) -> list[str]:
    """Checkpoint scratch (staging dirs) left in ROOT/tmp."""
    return sorted(p.name for p in (root / "tmp").iterdir() if p.name.startswith("ckpt-")) if (root / "tmp").is_dir() else []


def counter(root: Path, name: str) -> Callable[[], int | None]:
    return lambda: read_int(container_file(root, name, "/tmp/cnt"))


def moves_on(get: Callable[[], int | None], by: int, what: str) -> int:
    start = wait_for(get, 10, f"{what} to be readable")
    return wait_for(lambda: (v := get()) is not None and v >= start + by and v, 20, f"{what} to move past {start + by}")


def consecutive(path: Path) -> list[int]:
    """The values the counter appended; 1, 2, 3, ... without a break (no restart, no lost step)."""
    values = [int(v) for v in path.read_text().split("\n")[:-1]]
    assert values == list(range(1, len(values) + 1)), f"{path.name}: the sequence breaks"
    return values


def same_members(archive: Path, plain: Path, scratch: Path, unchanged: tuple[str, ...] = ()) -> list[str]:
    """Extract both archives: the same member names, manifest fields and, for the ``unchanged``
    members, the same mode, owner and mtime; the names."""
    names, manifests = [], []
    for i, a in enumerate((archive, plain)):
        with open(a, "rb") as f:
            manifests.append(read_archive(f, scratch / str(i), allow_devices=True))
        # per-task images carry pids (a shell's short-lived children differ between two dumps)
        names.append(sorted({re.sub(r"-\d+\.img$", "-N.img", str(p.relative_to(scratch / str(i))))
                             for p in (scratch / str(i)).rglob("*")}))
    assert names[0] == names[1], "--leave-running --export wrote other members than a plain export"
    assert sorted(manifests[0]) == sorted(manifests[1])
    for member in unchanged:
        a, b = os.lstat(scratch / "0" / member), os.lstat(scratch / "1" / member)
        assert (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns) == (b.st_mode, b.st_uid, b.st_gid, b.st_mtime_ns), member
    return names[0]


def test_memhog_keeps_running_and_its_archive_restores_after_rm(pm, pm_root: Path, memhog_image: str,  # noqa: ANN001
                                                                 tmp_path: Path) -> None:
    name = unique("lrx")
    ok(pm("run", "-d", "--name", name, memhog_image, *memhog_command(64)))
    checksum, count_before = wait_memhog_ready(pm_root, name)
    archive = tmp_path / "hog.pma"

    result = json.loads(ok(pm("checkpoint", name, "--leave-running", "--export", str(archive), "--json", timeout=120)))
    assert result["export_path"] == str(archive) and archive.is_file()
    assert status(pm, name) == "running"
    _, count_at = memhog_report(pm_root, name)
    wait_for(lambda: memhog_report(pm_root, name)[1] > count_at, 20, "memhog to keep counting after the checkpoint")
    assert [p.name for p in tmp_path.iterdir()] == ["hog.pma"], "a temp archive was left beside the export"
    assert not leftovers(pm_root), "staging dir left in ROOT/tmp"

    # the members a plain export (streamed while frozen, then the container stops) has, exactly
    plain = tmp_path / "plain" / "hog.pma"
    plain.parent.mkdir()
    ok(pm("checkpoint", name, "--export", str(plain), timeout=120))
    assert status(pm, name) == "exited"
    names = same_members(archive, plain, tmp_path / "x")
    assert "images/pages-N.img" in names and "upper.img.data" in names

    ok(pm("rm", "-f", name))
    assert ok(pm("restore", "--import", str(archive), timeout=180)).strip() == name
    checksum_after, count_after = memhog_report(pm_root, name)
    assert checksum_after == checksum, "memory content changed across --leave-running --export and import"
    assert count_after >= count_before, f"memhog restarted: {count_before} before the checkpoint, {count_after} after import"
    assert not leftovers(pm_root)


def test_plain_upper_dir_and_a_volume_signed_verify_and_continue(pm, pm_root: Path, tmp_path: Path,  # noqa: ANN001
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMIGRATE_UPPER_SIZE", "0")  # a plain upper dir: the copy path (cp -a), not the image's
    key = tmp_path / "release"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "release@ci", "-f", str(key)], check=True)
    name, vol = unique("lrxd"), unique("lrxv")
    script = f"echo kept > /data/f; mkdir -p /tmp/d; echo upper > /tmp/d/g; ln /tmp/d/g /tmp/d/h; {COUNTER}"
    ok(pm("run", "-d", "--name", name, "-v", f"{vol}:/data", "busybox", "sh", "-c", script))
    try:
        get = counter(pm_root, name)
        moves_on(get, 20, "counter")
        from runtime.runtime import Runtime
        from runtime.upperfs import Layout

        assert Layout.of(Path(Runtime(pm_root).inspect(name).bundle_dir)).image is None, "expected a plain upper dir"
        archive = tmp_path / "cnt.pma"
        before = wait_for(get, 10, "counter")

        result = json.loads(ok(pm("checkpoint", name, "--leave-running", "--export", str(archive), "--sign-key", str(key),
                                  "--json", timeout=120)))
        assert result["signed_by"]
        assert status(pm, name) == "running"
        moves_on(get, 10, "counter after the checkpoint")
        answer = json.loads(ok(pm("checkpoint", "verify", str(archive), "--trusted-key", f"{key}.pub", "--json")))
        assert answer["signed_by"] == result["signed_by"]

        plain = tmp_path / "plain" / "cnt.pma"
        plain.parent.mkdir()
        ok(pm("checkpoint", name, "--export", str(plain), timeout=120))
        names = same_members(archive, plain, tmp_path / "x", ("upper/tmp/d", "upper/tmp/d/g", f"volumes/{vol}/f"))
        assert "upper/tmp/hist" in names and f"volumes/{vol}/f" in names

        ok(pm("rm", "-f", name))
        ok(pm("volume", "rm", vol))  # the archive carries it: the import fills it again
        ok(pm("restore", "--import", str(archive), "--trusted-key", f"{key}.pub", timeout=180))
        assert status(pm, name) == "running"
        at_restore = wait_for(get, 10, "restored counter")
        assert at_restore >= before, f"counter restarted: {before} before the checkpoint, {at_restore} after import"
        moves_on(get, 10, "restored counter")
        consecutive(container_file(pm_root, name, "/tmp/hist"))
        assert (pm_root / "volumes" / vol / "_data" / "f").read_text() == "kept\n", "the named volume did not come along"
        g, h = container_file(pm_root, name, "/tmp/d/g"), container_file(pm_root, name, "/tmp/d/h")
        assert g.read_text() == "upper\n" and os.stat(g).st_ino == os.stat(h).st_ino, "upper layer (hardlink) not kept"
        assert not leftovers(pm_root)
    finally:
        pm("rm", "-f", name)
        pm("volume", "rm", "-f", vol)


def test_trees_copied_before_the_freeze_come_back_as_frozen(pm, pm_root: Path, tmp_path: Path,  # noqa: ANN001
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # a plain upper dir and a volume, both written all the time: staged before the freeze, and only
    # their changes taken while frozen (migrate/checkpoint_presync.py); the import must find them
    # exactly as the frozen counter left them
    monkeypatch.setenv("PYMIGRATE_UPPER_SIZE", "0")
    name, vol = unique("lrxp"), unique("lrxpv")
    big = os.urandom(8 << 20)
    script = ("i=0; while true; do i=$((i+1)); echo $i > /tmp/cnt; echo $i >> /tmp/hist; echo $i >> /data/hist; "
              "echo $i > /data/tmp.$i; rm -f /data/tmp.$((i-1)); sleep 0.01; done")
    ok(pm("run", "-d", "--name", name, "-v", f"{vol}:/data", "busybox", "sh", "-c", script))
    try:
        (pm_root / "volumes" / vol / "_data" / "big").write_bytes(big)
        get = counter(pm_root, name)
        moves_on(get, 20, "counter")
        archive = tmp_path / "p.pma"
        r = pm("--debug", "checkpoint", name, "--leave-running", "--export", str(archive), "--json", timeout=120)
        logs = ok(r) and r.stderr.decode(errors="replace")
        assert re.search(rf"presync: upper, volumes/{vol} copied before the freeze", logs), logs[-3000:]
        assert "copied whole while frozen" not in logs
        moves_on(get, 10, "counter after the checkpoint")
        # the archive holds one moment: the volume's last hist line L, its temp files of L (and
        # L-1, if frozen between making one and removing the other), the upper's hist at L or L+1
        with open(archive, "rb") as f:
            read_archive(f, tmp_path / "x", allow_devices=True)
        frozen_vol = tmp_path / "x" / "volumes" / vol
        last = consecutive(frozen_vol / "hist")[-1]
        temps = sorted(int(p.name.split(".")[1]) for p in frozen_vol.iterdir() if p.name.startswith("tmp."))
        assert temps in ([last], [last - 1], [last - 1, last]), f"temp files {temps} beside hist ending at {last}"
        assert all((frozen_vol / f"tmp.{t}").read_text() == f"{t}\n" for t in temps)
        assert consecutive(tmp_path / "x" / "upper" / "tmp" / "hist")[-1] in (last, last + 1)
        assert (frozen_vol / "big").read_bytes() == big

        ok(pm("rm", "-f", name))
        ok(pm("volume", "rm", vol))
        ok(pm("restore", "--import", str(archive), timeout=180))
        moves_on(get, 10, "restored counter")
        upper_hist = consecutive(container_file(pm_root, name, "/tmp/hist"))
        data = pm_root / "volumes" / vol / "_data"
        vol_hist = consecutive(data / "hist")
        assert (data / "big").read_bytes() == big
        assert vol_hist[:last] == list(range(1, last + 1)) and upper_hist[-1] > last, "not continued from the frozen state"
    finally:
        pm("rm", "-f", name)
        pm("volume", "rm", "-f", vol)


def test_the_archive_is_written_while_the_container_runs(pm, pm_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    name = unique("lrxh")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", COUNTER))
    get = counter(pm_root, name)
    moves_on(get, 10, "counter")
    archive = tmp_path / "held.pma"
    # held far longer than the test looks: its SIGINT ends the hold
    env = {**os.environ, "PYMIGRATE_FAILPOINTS": "checkpoint.archive=sleep:600"}
    # SIGINT as at a terminal: a suite started in the background by a non-interactive shell inherits
    # it ignored (SigIgn), and Python keeps an ignored SIGINT ignored: the Ctrl-C would never arrive
    proc = subprocess.Popen([*PYMIGRATE, "--root", str(pm_root), "checkpoint", name, "--leave-running", "--export",
                             str(archive)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stderr is not None
        seen, deadline = b"", time.monotonic() + 60
        while b"failpoint checkpoint.archive hit" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, f"failpoint not reached: {seen.decode(errors='replace')}"
            if select.select([proc.stderr], [], [], 0.5)[0]:
                seen += os.read(proc.stderr.fileno(), 65536)
        # held after the thaw, before a byte of the archive: the container runs, the archive is absent
        moves_on(get, 10, "counter while the checkpoint is held before its archive")
        assert proc.poll() is None, "the checkpoint ended before the test looked"
        assert not archive.exists()
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the checkpoint fails here; it must leave the container and no file
        proc.wait(timeout=60)
        assert proc.returncode != 0
        assert status(pm, name) == "running"
        moves_on(get, 5, "counter after the interrupted checkpoint")
        assert not list(tmp_path.iterdir()), f"partial files left: {list(tmp_path.iterdir())}"
        assert not leftovers(pm_root)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # waits, closes the pipes
        pm("rm", "-f", name)


def test_an_export_killed_after_the_thaw_is_swept_by_the_next_checkpoint(pm, pm_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    # SIGKILL while the archive is written (thawed: no freeze record names its files any more)
    name = unique("lrxk")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", COUNTER))
    try:
        get = counter(pm_root, name)
        moves_on(get, 10, "counter")
        env = {**os.environ, "PYMIGRATE_FAILPOINTS": "checkpoint.archive=kill"}
        killed = subprocess.run([*PYMIGRATE, "--root", str(pm_root), "checkpoint", name, "--leave-running", "--export",
                                 str(tmp_path / "killed.pma")], capture_output=True, env=env, cwd=REPO, timeout=120)
        assert killed.returncode == -9, killed.stderr.decode(errors="replace")
        left = list(tmp_path.iterdir())
        assert [p.name for p in left if p.name.startswith(".killed.pma.")] and leftovers(pm_root), "nothing to sweep"
        moves_on(get, 5, "counter after the killed export")
        assert status(pm, name) == "running"
        # the next checkpoint (of any container) removes the dead export's temp file and staging dir
        ok(pm("checkpoint", name, "--leave-running", "--export", str(tmp_path / "next.pma")))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["next.pma"]
        assert not leftovers(pm_root)
        assert not list((pm_root / "run" / "exports").iterdir())
    finally:
        pm("rm", "-f", name)


def test_a_failure_after_the_thaw_leaves_it_running_and_no_files(pm, pm_root: Path, memhog_image: str,  # noqa: ANN001
                                                                 tmp_path: Path) -> None:
    full = tmp_path / "small"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(full)], check=True)
    name = unique("lrxf")
    try:
        ok(pm("run", "-d", "--name", name, memhog_image, *memhog_command(64)))
        checksum, _ = wait_memhog_ready(pm_root, name)

        r = pm("checkpoint", name, "--leave-running", "--export", str(full / "hog.pma"), "--json", timeout=120)
        assert r.returncode != 0, "64 MiB of random memory cannot fit a 4 MiB file system"
        assert "no space" in r.stdout.decode().lower() + r.stderr.decode().lower(), r.stdout.decode() + r.stderr.decode()
        assert status(pm, name) == "running"
        checksum_after, count_at = memhog_report(pm_root, name)
        assert checksum_after == checksum
        wait_for(lambda: memhog_report(pm_root, name)[1] > count_at, 20, "memhog to keep counting after the failure")
        assert not list(full.iterdir()), f"partial files left: {list(full.iterdir())}"
        assert not leftovers(pm_root), "staging dir left in ROOT/tmp"
    finally:
        pm("rm", "-f", name)
        subprocess.run(["umount", str(full)], check=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-m", "integration", "-q"]))
