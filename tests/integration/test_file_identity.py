"""File identity across restore and migration (issue 19): SQLite's "attempt to write a readonly
database" after a restore, because every upper-layer file came back with a new inode.

The workload is tests/workloads/inodecheck.c, SQLite's check (``unixFileHasMoved``) without
SQLite: it keeps its database file open, and before each append compares the inode number it
cached with ``stat(path)`` and ``fstat(fd)``; on a mismatch it stops writing and says "moved".
Each test runs it, moves the container one way, and requires it to go on writing with the inode
it started with, on the four paths: local checkpoint + restore, export + import on another
state root, cold migration and post-copy migration between two network-namespace hosts (real
CRIU, real daemons over TCP). A control runs the same local path with plain upper directories
(PYMIGRATE_UPPER_SIZE=0) and must see the checker report "moved": the test can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import REPO, Host
from tests.integration.migration_lab import Lab, memhog_image_tar

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "criu", "pycriu", "netns", "busybox", "overlay"),
]

SRC = REPO / "tests" / "workloads" / "inodecheck.c"
IMAGE = "inodecheck"
DB, STATUS = "/data/db", "/data/status"
COMMAND = ["sh", "-c", f"mkdir -p /data && exec /bin/inodecheck {DB} {STATUS} 10"]


def image_tar(workdir: Path) -> Path:
    """busybox (+ memhog, the lab's base image) + a static /bin/inodecheck, as a plain tar."""
    tar = workdir / "inodecheck-image.tar"
    if tar.exists():
        return tar
    base = memhog_image_tar(workdir)
    stage = workdir / "inodecheck-stage"
    (stage / "bin").mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O2", "-static", "-o", str(stage / "bin" / "inodecheck"), str(SRC)], check=True, capture_output=True)
    shutil.copyfile(base, tar)
    subprocess.run(["tar", "-rf", str(tar), "--owner=0", "--group=0", "--numeric-owner", "-C", str(stage), "bin/inodecheck"],
                   check=True, capture_output=True)
    return tar


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = Path(tmp_path_factory.mktemp("file-identity"))
    tar = image_tar(workdir)
    with Lab.create(workdir) as made:
        for host in made.hosts:
            r = host.cli(["image", "import", IMAGE, str(tar)])
            assert r.returncode == 0, r.stderr.decode()
        yield made


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode(errors='replace')}"
    return r.stdout.decode()


def bundle(host: Host, name: str) -> Path:
    from runtime.runtime import Runtime

    return Path(Runtime(host.root).inspect(name).bundle_dir)


def bundle_ip(host: Host, name: str) -> str:
    from runtime.runtime import Runtime

    return str(Runtime(host.root).inspect(name).spec.ip)


def status(host: Host, name: str) -> list[str] | None:
    try:
        return (bundle(host, name) / "merged" / STATUS.lstrip("/")).read_text().split()
    except Exception:  # not written yet, or the container is gone
        return None


def wait_writing(host: Host, name: str, above: int, timeout_s: float = 30.0) -> tuple[int, int]:
    """Wait until the checker wrote past ``above``; (count, inode). Fails at once on "moved"."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = status(host, name)
        if last and last[0] == "moved":
            raise AssertionError(f"{name} on host {host.letter}: the database moved (cached, path, fd inodes): {last}")
        if last and last[0] == "ok" and int(last[1]) > above:
            return int(last[1]), int(last[2])
        time.sleep(0.02)
    raise AssertionError(f"{name} on host {host.letter}: no write past {above} within {timeout_s}s (status {last})")


def wait_moved(host: Host, name: str, timeout_s: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = status(host, name)
        if last and last[0] == "moved":
            return last
        time.sleep(0.02)
    raise AssertionError(f"{name} on host {host.letter}: the checker never reported a moved file (status {last})")


def db_lines(host: Host, name: str) -> list[int]:
    return [int(x) for x in (bundle(host, name) / "merged" / DB.lstrip("/")).read_text().split()]


def assert_continuous(host: Host, name: str) -> None:
    """Every number once, in order: nothing written before the move lost or doubled."""
    lines = db_lines(host, name)
    assert lines[: len(lines) - 1] == list(range(1, len(lines))), "the database has a gap or a duplicate"


def start(host: Host, name: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    r = host.cli(["run", "-d", "--name", name, IMAGE, *COMMAND], env={**os.environ, **env} if env else None)
    assert r.returncode == 0, r.stderr.decode()
    return wait_writing(host, name, 5)


def remove(lab: Lab, name: str) -> None:
    for host in lab.hosts:
        host.cli(["rm", "-f", name])


def test_local_checkpoint_and_restore_keep_the_inode(lab: Lab) -> None:
    a = lab.hosts[0]
    name = "ident-local"
    try:
        count, ino = start(a, name)
        assert (bundle(a, name) / "upper.img").is_file(), "the upper layer should live on its image"
        cid = ok(a.cli(["checkpoint", name])).strip().splitlines()[0]
        ok(a.cli(["restore", cid], timeout=120))
        after, ino_after = wait_writing(a, name, count + 5)
        assert ino_after == ino
        assert_continuous(a, name)
        # a second restore of the same checkpoint starts from the checkpoint, not from the first copy
        a.cli(["rm", "-f", name])
        ok(a.cli(["restore", cid], timeout=120))
        _, ino_again = wait_writing(a, name, count)
        assert ino_again == ino
        assert db_lines(a, name)[0] == 1
    finally:
        remove(lab, name)


def test_leave_running_checkpoint_keeps_the_inode_on_both_copies(lab: Lab) -> None:
    a = lab.hosts[0]
    name = "ident-leave"
    try:
        count, ino = start(a, name)
        cid = ok(a.cli(["checkpoint", name, "--leave-running"])).strip().splitlines()[0]
        wait_writing(a, name, count + 5)  # the original goes on
        free_ip = bundle_ip(a, name).rsplit(".", 1)[0] + ".213"
        ok(a.cli(["restore", cid, "--name", "ident-leave-copy", "--ip", free_ip], timeout=120))
        _, ino_copy = wait_writing(a, "ident-leave-copy", 0)
        assert ino_copy == ino
    finally:
        remove(lab, name)
        remove(lab, "ident-leave-copy")


def test_plain_upper_directories_lose_the_inode(lab: Lab) -> None:
    """The control: without an image the checker must notice (this is what SQLite hit)."""
    a = lab.hosts[0]
    name = "ident-plain"
    try:
        count, _ino = start(a, name, env={"PYMIGRATE_UPPER_SIZE": "0"})
        assert not (bundle(a, name) / "upper.img").exists()
        cid = ok(a.cli(["checkpoint", name])).strip().splitlines()[0]
        ok(a.cli(["restore", cid], timeout=120))
        moved = wait_moved(a, name)
        assert int(moved[1]) >= count and moved[2] != moved[3]
    finally:
        remove(lab, name)


def test_export_and_import_on_another_root_keep_the_inode(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    name = "ident-export"
    archive = tmp_path / "ident.pma"
    try:
        count, ino = start(a, name)
        ok(a.cli(["checkpoint", name, "--export", str(archive)]))
        ok(b.cli(["restore", "--import", str(archive)], timeout=120))
        _, ino_after = wait_writing(b, name, count + 5)
        assert ino_after == ino
        assert_continuous(b, name)
        assert not any((b.root / "tmp").iterdir()), "import scratch left in ROOT/tmp"
    finally:
        remove(lab, name)


def test_an_imported_image_that_is_damaged_is_refused_before_any_mount(lab: Lab, tmp_path: Path) -> None:
    """restore --import of an archive whose upper.img fails e2fsck: a typed error, nothing mounted."""
    from migrate.archive import upper_image
    from migrate.archive import ArchiveWriter, read_archive

    a, b = lab.hosts[0], lab.hosts[1]
    name = "ident-bad"
    archive, bad = tmp_path / "good.pma", tmp_path / "bad.pma"
    try:
        start(a, name)
        ok(a.cli(["checkpoint", name, "--export", str(archive)]))
        tree = tmp_path / "tree"
        with open(archive, "rb") as f:
            manifest = read_archive(f, tree, allow_devices=False)
        image = tmp_path / "upper.img"
        assert upper_image.unpack_members(tree, image), "the export should carry the image packed"
        with open(image, "r+b") as f:  # scribble over the first group descriptors
            f.seek(4096)
            f.write(os.urandom(8192))
        with open(bad, "wb") as out, ArchiveWriter(out) as writer:
            writer.write_manifest({k: v for k, v in manifest.items() if k not in ("members", "raw_bytes")})
            upper_image.add_image(writer, image, tmp_path)
            for p in sorted((tree / "images").iterdir()):
                writer.add_file(f"images/{p.name}", p)
            if (tree / "upper").is_dir():
                writer.add_tree("upper", tree / "upper")
        b.cli(["rm", "-f", name])
        r = b.cli(["restore", "--import", str(bad)], timeout=120)
        assert r.returncode != 0
        assert b"upper-layer image" in r.stderr, r.stderr.decode()
        assert name not in lab.running_names(b)
        with open("/proc/self/mountinfo") as f:
            assert f"{b.root}/containers/" not in f.read(), "a mount of the refused restore was left"
    finally:
        remove(lab, name)


@pytest.mark.parametrize("mode", ["cold", "postcopy"])
def test_migration_keeps_the_inode(lab: Lab, mode: str) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    name = f"ident-{mode}"
    try:
        count, ino = start(a, name)
        r = lab.remote(a, ["migrate", name, lab.addr(b), "--mode", mode, "--json"], timeout=300)
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
        stats = json.loads(r.stdout)["stats"]
        # the image went before the freeze; during it only changed blocks (a few 64 KiB ones)
        assert stats["phases_ms"].get("stage", 0) > 0, stats
        assert 0 <= stats["upper_entries_frozen"] <= 64, stats
        _, ino_after = wait_writing(b, name, count + 5)
        assert ino_after == ino
        assert_continuous(b, name)
        assert status(a, name) is None, "the source copy must be gone"
    finally:
        remove(lab, name)
