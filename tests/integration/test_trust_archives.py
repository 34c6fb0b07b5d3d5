"""Untrusted archives never reach the host (issue 11, docs/security.md), against a real daemon.

Each attack is built here (tests/fakes/hostile_archives.py) and sent every way outside bytes
reach a host:

- ``pymigrate restore --import FILE`` run locally (the CLI's own engine unpacks it);
- ``UploadCheckpoint`` over gRPC to the daemon (``restore --import`` through ``--host`` uses it);
- a migration peer's ``PrepareIncoming`` + ``PushCheckpoint`` over gRPC, as an authenticated but
  hostile source would send them.

Each is refused with a typed error (never "internal error"), writes nothing outside the state
root (a host file the archive's symlinks point at and a canary keep their content), leaves
nothing in ROOT/tmp, and the daemon keeps serving and still starts after a restart, even with a
scratch tree 3,000 directories deep left in ROOT/tmp (what used to keep it down).

The daemon runs with ``PYMIGRATE_EXTRACT_LIMITS=max_total_bytes=256M``: the one place that sets the
extraction budget, so the 13 KB / 384 MiB zip bomb is refused by it. A real CRIU dump of a busybox
container is checked against the member whitelist (every name it writes must be allowed).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from migrate.api import CheckpointOptions, IncomingRequest
from migrate.archive.members import check_member
from migrate.remote.client import RemoteEngine
from migrate.errors import ArchiveError, ArchiveLimitExceeded, MigrationError, UnsafeMember
from runtime.errors import ContainerError, ImageLimitExceeded, UnsafeArchive

from runtime.extract_limits import ENV_LIMITS
from tests.fakes import hostile_archives as ha
from tests.integration.hosts import Host, make_hosts  # noqa: F401  (fixture)
from tests.integration.migrate_helpers import names_by_status

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay"),
]

PRECIOUS = "precious host data\n"
# what the first line of the CLI's error says for each type
WORDS = {UnsafeMember: "refusing archive member", ArchiveLimitExceeded: "exceeds the extraction limit", ArchiveError: "archive"}

def attacks(target: Path) -> dict[str, tuple[bytes, type[ArchiveError]]]:
    """name -> (archive bytes, the typed error it must end in)."""
    out: dict[str, tuple[bytes, type[ArchiveError]]] = {
        f"symlink-{member.split('/')[-1]}": (ha.symlink_archive(member, str(target)), UnsafeMember)
        for member in ("images/cpuinfo-check.log", "images/restore.log", "images/stats-restore", "images/inventory.img")
    }
    out["hardlink-in-images"] = (ha.kind_archive("images/core-1.img", "hardlink", target="images/inventory.img"), UnsafeMember)
    out["work-dir-member"] = (ha.kind_archive("criu-work", "dir"), UnsafeMember)
    out["deep-tree"] = (ha.deep_archive(1500), ArchiveLimitExceeded)
    out["huge-hole"] = (ha.hole_archive(1 << 62), ArchiveLimitExceeded)
    out["zip-bomb"] = (ha.bomb_archive(384 << 20), ArchiveLimitExceeded)
    out["trailer-format-version"] = (ha.trailer_version_archive(), ArchiveError)
    for key, data in ha.crafted_entries().items():
        out[f"crafted-{key}"] = (data, ArchiveError)
    return out

def _tmp_leftovers(host: Host) -> list[str]:
    tmp = host.root / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []

def _deep_scratch(host: Host, depth: int) -> Path:
    """What a crash during an old-style unpack of a deep archive left in ROOT/tmp."""
    top = host.root / "tmp" / f"import-{secrets.token_hex(6)}"
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    return top

def test_hostile_archives_are_refused_every_way_in(make_hosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv(ENV_LIMITS, "max_total_bytes=256M")  # inherited by the daemon and the CLI
    a = make_hosts(1)[0]
    sock = a.start_daemon()
    a.cli(["image", "build-busybox", "busybox"], check=True)
    a.cli(["run", "-d", "--name", "bystander", "busybox", "sleep", "1000"], check=True)
    spec = json.loads(a.cli(["inspect", "bystander"], check=True).stdout)[0]["spec"]

    host_file = tmp_path / "host-file"  # what the symlinks point at
    host_file.write_text(PRECIOUS)
    canary = a.root.parent / "canary"  # beside the state root
    canary.write_text(PRECIOUS)

    with RemoteEngine(sock) as daemon:
        # Every name a real dump writes passes the whitelist.
        result = daemon.checkpoint("bystander", CheckpointOptions(leave_running=True))
        images = a.root / "checkpoints" / result.checkpoint_id / "images"
        names = sorted(p.name for p in images.iterdir())
        assert "inventory.img" in names and any(n.startswith("pages-") for n in names), names
        for name in names:
            check_member(f"images/{name}", "file")
        print(f"a real dump's images dir: {' '.join(names)}")

        for attack, (data, expected) in attacks(host_file).items():
            archive = tmp_path / f"{attack}.pma"
            archive.write_bytes(data)

            # 1. restore --import, unpacked by the CLI's local engine
            r = a.cli(["restore", "--import", str(archive), "--name", "imported"])
            stderr = r.stderr.decode(errors="replace")
            assert r.returncode != 0, f"{attack}: local import succeeded"
            assert stderr.startswith("pymigrate: ") and "Traceback" not in stderr, f"{attack}: {stderr}"
            assert "internal error" not in stderr, f"{attack}: {stderr}"
            assert WORDS[expected] in stderr.splitlines()[0], f"{attack}: {stderr}"

            # 2. UploadCheckpoint to the daemon
            with pytest.raises(expected) as err:
                daemon.import_checkpoint(iter([data]))
            assert "internal error" not in str(err.value), f"{attack}: {err.value}"

            # 3. a peer's PrepareIncoming + PushCheckpoint
            evil = dict(spec, name="pushed", container_id=secrets.token_hex(16), ip=None)
            ticket = daemon.prepare_incoming(IncomingRequest(
                container_name="pushed", spec=evil, image_digest=spec["image_digest"], criu_version=None,
                cpu_digest="", ip=None))
            with pytest.raises(expected) as err:
                daemon.receive_checkpoint(ticket.migration_id, iter([data]))
            assert "internal error" not in str(err.value), f"{attack}: {err.value}"

            assert host_file.read_text() == PRECIOUS, f"{attack} overwrote the host file"
            assert canary.read_text() == PRECIOUS, f"{attack} touched the canary"
            assert _tmp_leftovers(a) == [], f"{attack} left {_tmp_leftovers(a)} in ROOT/tmp"
            assert daemon.host_info() is not None  # still serving

        # The other ways a peer pushes bytes: its upper layer before the freeze (PushUpper) and
        # its image (PushImage, a tarball).
        pushes = (
            ("upper: symlink in images", lambda mid: daemon.receive_upper(mid, iter([ha.symlink_archive("images/restore.log", str(host_file))])),
             UnsafeMember),
            ("upper: deep tree", lambda mid: daemon.receive_upper(mid, iter([ha.deep_archive(1500)])), ArchiveLimitExceeded),
            ("upper: huge hole", lambda mid: daemon.receive_upper(mid, iter([ha.hole_archive(1 << 62, "upper.img")])), ArchiveError),
            ("image: deep tar", lambda mid: daemon.receive_image(mid, iter([ha.zstd(ha.deep_tar(3000))])), ImageLimitExceeded),
            ("image: pax header bomb", lambda mid: daemon.receive_image(mid, iter([ha.zstd(ha.pax_header_tar(8 << 30))])),
             UnsafeArchive),
        )
        for what, push, expected in pushes:
            evil = dict(spec, name="pushed", container_id=secrets.token_hex(16), ip=None)
            ticket = daemon.prepare_incoming(IncomingRequest(
                container_name="pushed", spec=evil, image_digest=spec["image_digest"], criu_version=None,
                cpu_digest="", ip=None))
            with pytest.raises(expected) as err:
                push(ticket.migration_id)
            assert "internal error" not in str(err.value), f"{what}: {err.value}"
            try:
                daemon.abort_incoming(ticket.migration_id)
            except (MigrationError, ContainerError):
                pass  # already dropped by the failed push
            assert host_file.read_text() == PRECIOUS, what
            assert _tmp_leftovers(a) == [], f"{what} left {_tmp_leftovers(a)} in ROOT/tmp"

        assert names_by_status(a) == {"bystander": "running"}
        assert [c.checkpoint_id for c in daemon.checkpoints()] == [result.checkpoint_id]  # no upload was kept

    # A scratch tree deeper than Python's recursion limit (the old failure mode) does not keep the
    # daemon from starting: reconcile removes it.
    deep = _deep_scratch(a, 3000)
    assert a.stop_daemon() == 0
    sock = a.start_daemon()
    with RemoteEngine(sock) as daemon:
        assert daemon.host_info() is not None
    assert not deep.exists()
    assert _tmp_leftovers(a) == []
    assert names_by_status(a) == {"bystander": "running"}

def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrate", "--root", str(root), *args], capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items() if k != ENV_LIMITS})

@pytest.mark.requires("root")
def test_inputs_bigger_than_the_disk_end_in_typed_errors_and_sparse_tars_stay_sparse(tmp_path: Path) -> None:
    """A state root on a 64 MiB tmpfs, default limits: the 14 KB archive that expands to 384 MiB
    and a tarball with a 384 MiB file of zeros fail with a "no space" error naming the member and
    a hint (not a bare [Errno 28]) and leave nothing in ROOT/tmp; a 10 KB sparse tarball claiming
    2 GiB imports in a few KB of disk."""
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(root)], check=True)
    try:
        bomb = tmp_path / "bomb.pma"
        bomb.write_bytes(ha.bomb_archive(384 << 20))
        assert bomb.stat().st_size < 16_000
        r = _cli(root, "restore", "--import", str(bomb))
        assert r.returncode != 0
        first = r.stderr.splitlines()[0]
        assert first.startswith("pymigrate: cannot extract archive member images/pages-1.img") and "No space left" in first, r.stderr
        assert "Traceback" not in r.stderr and "more space" in r.stderr, r.stderr
        assert sorted(p.name for p in (root / "tmp").iterdir()) == []

        dense = tmp_path / "dense.tar.zst"
        dense.write_bytes(ha.zstd(ha.file_tar("zeros", 384 << 20)))
        r = _cli(root, "image", "import", "dense", str(dense))
        assert r.returncode != 0 and "No space left" in r.stderr.splitlines()[0] and "Traceback" not in r.stderr, r.stderr
        assert sorted(p.name for p in (root / "tmp").iterdir()) == []

        sparse = tmp_path / "sparse.tar"
        sparse.write_bytes(ha.sparse_tar(2 << 30))
        assert sparse.stat().st_size < 12_000
        r = _cli(root, "image", "import", "sparse", str(sparse))
        assert r.returncode == 0, r.stderr
        (imported,) = list((root / "images").glob("*/rootfs/sparse"))
        assert imported.stat().st_size == 2 << 30
        assert imported.stat().st_blocks * 512 <= 2 << 20
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
