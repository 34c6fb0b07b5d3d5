"""Nothing lost: failed dumps, failed restores and bad archives, with real CRIU.

- A dump CRIU refuses leaves the container running and thawed, with no staging dir in ROOT/tmp,
  no checkpoint and no export file; the error quotes CRIU's first error lines and names a log
  that still exists. CRIU is made to fail for real, two ways: a wrapper (``PYMIGRATE_CRIU``) that
  runs the real criu with a failing ``--action-script``, and a container process already ptraced
  by someone else (CRIU cannot seize it).
- A restore that fails (CRIU fails, or the base image is gone) leaves no container record,
  cgroup, mount, veth, network namespace or address lease, and the checkpoint byte for byte as
  it was; the same checkpoint then restores fine.
- Bad archives (a flipped bit, truncation, an unknown format version, crafted members escaping
  the root) are refused before anything is written outside ROOT/tmp, which is empty afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Iterator

import pytest

from migrate.archive import format as fmt
from tests.integration.conftest import PYMIGRATE, REPO
from tests.integration.workloads import container_file, import_image, init_pid, inspect, read_int, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "criu", "pycriu", "busybox"),
    pytest.mark.usefixtures("rt"),
]

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/cnt; sleep 0.02; done"


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def cli(root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PYMIGRATE, "--root", str(root), *args],
        capture_output=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})},
    )


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode(errors='replace')}"
    return r.stdout.decode()


def failed(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, f"expected a failure, got exit 0: {r.stdout.decode()}"
    return r.stderr.decode(errors="replace")


def start_counter(root: Path, name: str) -> None:
    ok(cli(root, "run", "-d", "--name", name, "busybox", "sh", "-c", COUNTER))
    wait_for(lambda: (read_int(container_file(root, name, "/tmp/cnt")) or 0) >= 10, 20, f"{name} counting")


def assert_running_and_thawed(root: Path, name: str) -> None:
    info = inspect(root, name)
    assert info.state.status == "running"
    events = (Path(info.cgroup["unified"]) / "cgroup.events").read_text()
    assert "frozen 0" in events, f"container {name} left frozen: {events!r}"
    get = lambda: read_int(container_file(root, name, "/tmp/cnt")) or 0  # noqa: E731
    now = get()
    wait_for(lambda: get() > now + 3, 10, f"{name} to keep counting")


def tmp_entries(root: Path) -> list[str]:
    tmp = root / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def checkpoint_ids(root: Path) -> list[str]:
    return [c["checkpoint_id"] for c in json.loads(ok(cli(root, "checkpoint", "ls", "--json")))]


def assert_criu_error_reported(stderr: str, operation: str) -> Path:
    """The CLI quotes CRIU's first error lines and names a log file that exists."""
    assert f"criu {operation} failed" in stderr, stderr
    assert "Error (" in stderr, f"no CRIU error line quoted: {stderr}"
    log_line = next((line for line in stderr.splitlines() if line.strip().startswith("(log: ")), None)
    assert log_line is not None, f"no log path in: {stderr}"
    log_path = Path(log_line.strip()[len("(log: ") : -1])
    assert log_path.is_file(), f"the log the error names does not exist: {log_path}"
    assert "Error (" in log_path.read_text(errors="replace")
    return log_path


@pytest.fixture
def failing_criu(tmp_path: Path) -> dict[str, str]:
    """PYMIGRATE_CRIU: the real criu plus an action script that fails (pre-dump / pre-restore)."""
    from runtime.criu import criu_binary

    script = tmp_path / "fail.sh"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(0o755)
    wrapper = tmp_path / "criu"
    wrapper.write_text(f'#!/bin/sh\nexec {criu_binary()} "$@" --action-script {script}\n')
    wrapper.chmod(0o755)
    return {"PYMIGRATE_CRIU": str(wrapper)}


# -- failed dumps ------------------------------------------------------------------------------------


def test_failed_dump_leaves_the_container_running_and_nothing_behind(
    pm_root: Path, failing_criu: dict[str, str], tmp_path: Path
) -> None:
    name = unique("dumpfail")
    start_counter(pm_root, name)
    before = checkpoint_ids(pm_root)

    stderr = failed(cli(pm_root, "checkpoint", name, env=failing_criu))
    assert_criu_error_reported(stderr, "dump")
    assert_running_and_thawed(pm_root, name)
    assert checkpoint_ids(pm_root) == before
    assert not [e for e in tmp_entries(pm_root) if e.startswith("ckpt-")], tmp_entries(pm_root)

    export = tmp_path / "out" / "c.pma"
    export.parent.mkdir()
    stderr = failed(cli(pm_root, "checkpoint", name, "--export", str(export), env=failing_criu))
    assert_criu_error_reported(stderr, "dump")
    assert_running_and_thawed(pm_root, name)
    assert list(export.parent.iterdir()) == [], "a failed export left a file"
    assert not [e for e in tmp_entries(pm_root) if e.startswith("ckpt-")]

    # and the container can still be checkpointed for real afterwards
    ok(cli(pm_root, "checkpoint", name, "--leave-running"))
    assert_running_and_thawed(pm_root, name)


SEIZE = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_SEIZE = 0x4206
if libc.ptrace(PTRACE_SEIZE, int(sys.argv[1]), None, None) != 0:
    print("seize failed", ctypes.get_errno(), flush=True); sys.exit(1)
print("seized", flush=True)
time.sleep(600)
"""


@pytest.fixture
def tracer() -> Iterator:  # noqa: ANN201
    procs: list[subprocess.Popen] = []

    def attach(pid: int) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", SEIZE, str(pid)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "seized"
        return p

    yield attach
    for p in procs:
        p.kill()  # the tracer's exit detaches it
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


def test_dump_of_a_process_ptraced_by_someone_else_fails_and_the_container_keeps_running(pm_root: Path, tracer) -> None:  # noqa: ANN001
    name = unique("traced")
    start_counter(pm_root, name)
    t = tracer(init_pid(pm_root, name))
    before = checkpoint_ids(pm_root)

    stderr = failed(cli(pm_root, "checkpoint", name))
    assert_criu_error_reported(stderr, "dump")
    assert not [e for e in tmp_entries(pm_root) if e.startswith("ckpt-")]
    assert checkpoint_ids(pm_root) == before
    # The tracee sits in a signal-delivery stop (SIGCHLD) until its tracer goes away; counting
    # resumes only then, so the tracer leaves before the running-and-thawed check.
    t.kill()
    t.wait()
    assert_running_and_thawed(pm_root, name)


# -- failed restores ---------------------------------------------------------------------------------


def host_snapshot(root: Path) -> dict[str, object]:
    """What a restore creates on the host: records, cgroups, mounts, veths, netns, leases; taken
    once no checkpoint's detached teardown (runtime/teardown.py) still releases any of them."""
    from runtime import teardown
    from runtime.config import Paths

    paths = Paths(root)
    locks = paths.run / teardown.DIR
    for lock in locks.glob("*.lock") if locks.exists() else ():
        teardown.wait(paths, lock.stem)
    records = sorted(p.name for p in (root / "containers").iterdir()) if (root / "containers").exists() else []
    cgroups = sorted(str(p) for p in _container_cgroups(root))
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(line.split()[4] for line in f if str(root) in line.split()[4])
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    tag = f"pmv{zlib.crc32(os.path.realpath(root).encode()) & 0xFFFF:04x}"  # runtime.network's veth names
    veths = sorted(n for n in (line.split(":")[1].strip().split("@")[0] for line in links.splitlines()) if n.startswith(tag))
    netns = sorted(p.name for p in paths.netns.iterdir()) if paths.netns.exists() else []
    # the bridge pool's leases through the runtime (a walk of the whole root took over a minute on a
    # session root full of images, and its "leases*" pattern matched no file: ipam.json holds them)
    from runtime.runtime import Runtime

    leases = sorted(Runtime(root).network("bridge").leases().items())
    return {"records": records, "cgroups": cgroups, "mounts": mounts, "veths": veths, "netns": netns, "leases": leases}


def _container_cgroups(root: Path) -> list[Path]:
    """Every cgroup (any hierarchy) below this state root's cgroup parent, which the runtime makes
    below the cgroup the caller runs in (so: below ours)."""
    from runtime.config import default_cgroup_parent

    parent = default_cgroup_parent(root).strip("/")
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        mount = "unified" if controllers == "" else controllers.split(",")[0].removeprefix("name=")
        base = Path("/sys/fs/cgroup") / mount / rel.lstrip("/") / parent
        if base.is_dir():
            found += [p for p in base.iterdir() if p.is_dir()]
    return found


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): _sparse_digest(p) for p in sorted(path.rglob("*")) if p.is_file()}


def _sparse_digest(path: Path) -> str:
    """sha256 over the file's size and its data extents with their offsets: the checkpoint's upper
    layer image is a sparse file of GiBs (reading its holes took a minute per digest)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(str(size).encode())
        offset = 0
        while offset < size:
            try:
                offset = os.lseek(f.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(f.fileno(), offset, os.SEEK_HOLE)
            f.seek(offset)
            h.update(f"@{offset}".encode())
            remaining = end - offset
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                h.update(chunk)
                remaining -= len(chunk)
            offset = end
    return h.hexdigest()


def test_failed_restore_leaves_nothing_and_the_checkpoint_intact(pm_root: Path, failing_criu: dict[str, str]) -> None:
    name, copy = unique("rstfail"), unique("rstcopy")
    start_counter(pm_root, name)
    cid = ok(cli(pm_root, "checkpoint", name, "--leave-running")).strip()
    ckpt_dir = pm_root / "checkpoints" / cid
    digest = tree_digest(ckpt_dir)
    snapshot = host_snapshot(pm_root)
    ip = inspect(pm_root, name).spec.ip.rsplit(".", 1)[0] + ".214"

    stderr = failed(cli(pm_root, "restore", cid, "--name", copy, "--ip", ip, env=failing_criu))
    assert_criu_error_reported(stderr, "restore")
    assert host_snapshot(pm_root) == snapshot
    assert tree_digest(ckpt_dir) == digest, "the failed restore changed the checkpoint"
    assert not tmp_entries(pm_root), tmp_entries(pm_root)
    assert_running_and_thawed(pm_root, name)

    # the checkpoint is intact: the same restore works with the real CRIU
    ok(cli(pm_root, "restore", cid, "--name", copy, "--ip", ip))
    assert inspect(pm_root, copy).state.status == "running"


def test_failed_restore_over_the_exited_original_keeps_its_record(pm_root: Path, failing_criu: dict[str, str]) -> None:
    """Restoring in place replaces the exited original; a failed attempt must not lose it."""
    name = unique("inplace")
    start_counter(pm_root, name)
    cid = ok(cli(pm_root, "checkpoint", name)).strip()
    snapshot = host_snapshot(pm_root)

    failed(cli(pm_root, "restore", cid, env=failing_criu))
    assert host_snapshot(pm_root) == snapshot
    assert inspect(pm_root, name).state.status == "exited"
    ok(cli(pm_root, "restore", cid))
    assert inspect(pm_root, name).state.status == "running"


# -- the teardown after a checkpoint answered ---------------------------------------------------------


def _teardown_running(root: Path, name: str) -> bool:
    """Whether the detached teardown of ``name``'s checkpoint holds its lock now."""
    import fcntl

    from runtime import teardown
    from runtime.config import Paths

    try:
        fd = os.open(teardown.lock_path(Paths(root), inspect(root, name).spec.container_id), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _gone(pid: int) -> bool:
    """Not running: no such process, or a zombie its shim has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def test_a_restore_right_after_the_checkpoint_waits_for_its_teardown(pm_root: Path) -> None:
    """The checkpoint answers with the tree gone and recorded; its host side (veth, netns, mounts,
    cgroup: the same names a restore in place builds) goes after, detached. A restore must not
    build before that is done, or the late teardown removes what the restored container runs in."""
    name = unique("tdrestore")
    start_counter(pm_root, name)
    slow = {"PYMIGRATE_FAILPOINTS": "checkpoint.teardown=sleep:2"}
    cid = ok(cli(pm_root, "checkpoint", name, env=slow)).strip()
    assert _teardown_running(pm_root, name), "the checkpoint waited for its own teardown"
    assert inspect(pm_root, name).state.status == "exited"
    assert _gone(init_pid(pm_root, name)), "the checkpoint answered with its tree still running"

    ok(cli(pm_root, "restore", cid))
    assert not _teardown_running(pm_root, name)
    wait_for(lambda: not _teardown_running(pm_root, name), 10, "the teardown to end")
    assert_running_and_thawed(pm_root, name)  # nothing of the new run was taken down by the old teardown
    from runtime.runtime import Runtime

    spec = inspect(pm_root, name).spec
    assert Runtime(pm_root).network(spec.network).netns_path(spec.container_id).exists(), "the restored container's netns is gone"


def test_a_copy_restored_right_after_the_checkpoint_gets_its_address(pm_root: Path) -> None:
    """Under a new name (a new id), a restore still waits for the original's teardown: its address
    lease goes there, and the copy asks for the same address."""
    name, copy = unique("tdaddr"), unique("tdcopy")
    start_counter(pm_root, name)
    ip = inspect(pm_root, name).spec.ip
    cid = ok(cli(pm_root, "checkpoint", name, env={"PYMIGRATE_FAILPOINTS": "checkpoint.teardown=sleep:1.5"})).strip()
    assert _teardown_running(pm_root, name)
    ok(cli(pm_root, "restore", cid, "--name", copy, "--ip", ip))
    assert inspect(pm_root, copy).spec.ip == ip
    assert_running_and_thawed(pm_root, copy)


def test_a_run_right_after_the_checkpoint_gets_its_address(pm_root: Path) -> None:
    """A new container asking for the checkpointed one's address waits for that teardown too (the
    lease is released there); without the wait it failed with the address in use."""
    name, other = unique("tdrunip"), unique("tdrunnew")
    start_counter(pm_root, name)
    ip = inspect(pm_root, name).spec.ip
    ok(cli(pm_root, "checkpoint", name, env={"PYMIGRATE_FAILPOINTS": "checkpoint.teardown=sleep:1.5"}))
    assert _teardown_running(pm_root, name)
    ok(cli(pm_root, "run", "-d", "--name", other, "--ip", ip, "busybox", "sh", "-c", COUNTER))
    assert inspect(pm_root, other).spec.ip == ip
    assert_running_and_thawed(pm_root, other)


def test_rm_right_after_the_checkpoint_waits_for_its_teardown_and_leaves_nothing(pm_root: Path) -> None:
    before = host_snapshot(pm_root)
    name = unique("tdrm")
    start_counter(pm_root, name)
    ok(cli(pm_root, "checkpoint", name, env={"PYMIGRATE_FAILPOINTS": "checkpoint.teardown=sleep:1.5"}))
    assert _teardown_running(pm_root, name)
    ok(cli(pm_root, "rm", name))
    assert not any(lock.suffix == ".lock" for lock in (pm_root / "run" / "teardown").iterdir())
    assert host_snapshot(pm_root) == before


def test_a_teardown_killed_before_it_ran_is_finished_by_the_next_restore_and_rm(pm_root: Path) -> None:
    before = host_snapshot(pm_root)
    name = unique("tdkill")
    start_counter(pm_root, name)
    cid = ok(cli(pm_root, "checkpoint", name, env={"PYMIGRATE_FAILPOINTS": "checkpoint.teardown=kill"})).strip()
    wait_for(lambda: not _teardown_running(pm_root, name), 10, "the teardown to be killed")
    left = host_snapshot(pm_root)
    assert left["mounts"] != before["mounts"] and left["netns"] != before["netns"], "the killed teardown released it all"
    assert inspect(pm_root, name).state.status == "exited"

    ok(cli(pm_root, "restore", cid))
    assert_running_and_thawed(pm_root, name)
    ok(cli(pm_root, "rm", "-f", name))
    assert host_snapshot(pm_root) == before


def test_restore_refused_when_the_base_image_is_gone(pm_root: Path, tmp_path: Path) -> None:
    from tests.integration.workloads import memhog_image_tar

    # a private image (unique digest) so removing it touches nothing else in the session root
    marker = tmp_path / "marker"
    marker.write_bytes(secrets.token_bytes(32))
    tar = memhog_image_tar(pm_root, marker, tmp_path / "img.tar")
    image = unique("img")
    import_image(pm_root, image, tar)
    name = unique("noimg")
    ok(cli(pm_root, "run", "-d", "--name", name, image, "sh", "-c", COUNTER))
    wait_for(lambda: (read_int(container_file(pm_root, name, "/tmp/cnt")) or 0) >= 5, 20, "counting")
    cid = ok(cli(pm_root, "checkpoint", name)).strip()
    ok(cli(pm_root, "rm", name))
    ok(cli(pm_root, "image", "rm", image))
    digest = tree_digest(pm_root / "checkpoints" / cid)
    snapshot = host_snapshot(pm_root)

    stderr = failed(cli(pm_root, "restore", cid))
    assert "no such image" in stderr and image in stderr, stderr
    assert host_snapshot(pm_root) == snapshot
    assert tree_digest(pm_root / "checkpoints" / cid) == digest
    assert not tmp_entries(pm_root)

    import_image(pm_root, image, tar)  # same bytes, same digest: the checkpoint restores again
    ok(cli(pm_root, "restore", cid))
    assert inspect(pm_root, name).state.status == "running"


# -- bad archives ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_archive(pm_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An exported checkpoint of a container with 4 MiB of random data in its memory and upper layer."""
    from runtime.runtime import Runtime

    name = unique("arch")
    script = "head -c 4194304 /dev/urandom > /tmp/blob; x=$(cat /tmp/blob | md5sum); while true; do sleep 0.05; done"
    ok(cli(pm_root, "run", "-d", "--name", name, "busybox", "sh", "-c", script))
    wait_for(lambda: container_file(pm_root, name, "/tmp/blob").exists(), 20, "blob")
    path = Path(tmp_path_factory.mktemp("archives")) / "good.pma"
    ok(cli(pm_root, "checkpoint", name, "--export", str(path)))
    Runtime(pm_root).remove(name, force=True)
    yield path


def records(data: bytes) -> Iterator[tuple[int, int, int, str | None]]:
    """(kind, payload offset, stored_len, member name) of every record of an archive."""
    pos = fmt.STREAM_HEADER.size
    member = None
    while pos < len(data):
        header = fmt.unpack_record_header(data[pos : pos + fmt.RECORD_HEADER_SIZE])
        assert header is not None
        kind, flags, stored, _raw, _off, _crc = header
        payload = pos + fmt.RECORD_HEADER_SIZE
        if kind == fmt.REC_ENTRY:
            member = _json_payload(data[payload : payload + stored], flags)["name"]
        yield kind, payload, stored, member
        pos = payload + stored


def _json_payload(payload: bytes, flags: int) -> dict:
    if flags & fmt.FLAG_ZSTD:
        import zstandard

        payload = zstandard.ZstdDecompressor().decompress(payload)
    return fmt.decode_json(payload)  # type: ignore[no-any-return]


def _manifest(data: bytes) -> dict:
    kind, flags, stored, *_ = fmt.unpack_record_header(data[fmt.STREAM_HEADER.size : fmt.STREAM_HEADER.size + fmt.RECORD_HEADER_SIZE])  # type: ignore[misc]
    assert kind == fmt.REC_MANIFEST
    start = fmt.STREAM_HEADER.size + fmt.RECORD_HEADER_SIZE
    return _json_payload(data[start : start + stored], flags)


def root_files(root: Path) -> set[str]:
    """Every path under the state root except ROOT/tmp (where a refused import may scribble) and logs."""
    out = set()
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split("/")[0] in ("tmp", "logs"):
            continue
        out.update(os.path.join(rel, f) for f in files + dirs)
    return out


def refused_import(root: Path, archive: Path) -> str:
    before = root_files(root)
    snapshot = host_snapshot(root)
    stderr = failed(cli(root, "restore", "--import", str(archive)))
    assert root_files(root) == before, "a refused archive wrote outside ROOT/tmp"
    assert host_snapshot(root) == snapshot
    assert not tmp_entries(root), f"scratch left in ROOT/tmp: {tmp_entries(root)}"
    return stderr


def test_flipped_bit_is_refused_naming_the_member(pm_root: Path, good_archive: Path, tmp_path: Path) -> None:
    data = bytearray(good_archive.read_bytes())
    # the container's files travel as its upper-layer image's data (runtime/upperfs.py), or as
    # the tree where layers are plain directories
    names = {r[3] for r in records(bytes(data)) if r[0] == fmt.REC_DATA}
    upper = "upper.img.data" if "upper.img.data" in names else "upper/tmp/blob"
    for want in ("images/pages-1.img", upper):
        kind, payload, stored, member = next(r for r in records(bytes(data)) if r[0] == fmt.REC_DATA and r[3] == want)
        bad = bytearray(data)
        bad[payload + stored // 2] ^= 0x10
        path = tmp_path / f"flip-{want.replace('/', '_')}.pma"
        path.write_bytes(bad)
        stderr = refused_import(pm_root, path)
        assert want in stderr, f"the error does not name {want}: {stderr}"


def test_truncated_archive_is_refused(pm_root: Path, good_archive: Path, tmp_path: Path) -> None:
    data = good_archive.read_bytes()
    for cut in (len(data) // 3, len(data) - 7):
        path = tmp_path / f"cut-{cut}.pma"
        path.write_bytes(data[:cut])
        stderr = refused_import(pm_root, path)
        assert "truncated" in stderr, stderr


def test_unknown_format_version_is_refused(pm_root: Path, good_archive: Path, tmp_path: Path) -> None:
    data = bytearray(good_archive.read_bytes())
    struct.pack_into("<I", data, len(fmt.MAGIC), fmt.FORMAT_VERSION + 98)
    path = tmp_path / "v99.pma"
    path.write_bytes(data)
    stderr = refused_import(pm_root, path)
    assert "version" in stderr and str(fmt.FORMAT_VERSION + 98) in stderr, stderr


def _crafted(manifest: dict, members: list[tuple[dict, bytes | None]]) -> bytes:
    out = bytearray(fmt.pack_stream_header())

    def rec(kind: int, payload: bytes, offset: int = 0) -> None:
        out.extend(fmt.pack_record_header(kind, 0, len(payload), len(payload), offset, zlib.crc32(payload)))
        out.extend(payload)

    rec(fmt.REC_MANIFEST, fmt.encode_json(manifest))
    listed = []
    for meta, content in members:
        base = {"mode": 0o644, "uid": 0, "gid": 0, "atime_ns": 0, "mtime_ns": 0}
        rec(fmt.REC_ENTRY, fmt.encode_json({**base, **meta}))
        if meta["kind"] == fmt.KIND_FILE:
            assert content is not None
            rec(fmt.REC_DATA, content)
            sha = hashlib.sha256(content).hexdigest()
            rec(fmt.REC_END, fmt.encode_json({"size_bytes": len(content), "sha256": sha}))
            listed.append({"name": meta["name"], "kind": meta["kind"], "size_bytes": len(content), "sha256": sha})
        else:
            listed.append({"name": meta["name"], "kind": meta["kind"], "size_bytes": 0, "sha256": None})
    rec(fmt.REC_TRAILER, fmt.encode_json({"members": listed, "raw_bytes": 0, "trailer": {}}))
    return bytes(out)


@pytest.mark.parametrize(
    "members, reason",
    [
        ([({"name": "/etc/pm-escape", "kind": "file"}, b"x")], "absolute"),
        ([({"name": "upper/../../pm-escape", "kind": "file"}, b"x")], ".."),
        (
            [
                ({"name": "upper", "kind": "dir", "mode": 0o755}, None),
                ({"name": "upper/link", "kind": "symlink", "target": "../../../../../../tmp"}, None),
            ],
            "escape",
        ),
        (
            [
                ({"name": "upper", "kind": "dir", "mode": 0o755}, None),
                ({"name": "upper/dev-sda", "kind": "block", "rdev": [8, 0]}, None),
            ],
            "device",
        ),
    ],
    ids=["absolute", "dotdot", "symlink-escape", "device-node"],
)
def test_crafted_unsafe_members_are_refused(pm_root: Path, good_archive: Path, tmp_path: Path, members: list, reason: str) -> None:
    manifest = _manifest(good_archive.read_bytes())
    # device nodes are allowed only from a manifest saying root took it on a trusted host
    manifest["devices"] = {"taken_as_root": True, "trusted_host": False}
    path = tmp_path / "crafted.pma"
    path.write_bytes(_crafted(manifest, members))
    stderr = refused_import(pm_root, path)
    assert reason in stderr, stderr
    assert not Path("/etc/pm-escape").exists() and not Path("/pm-escape").exists()
