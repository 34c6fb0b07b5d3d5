"""``checkpoint NAME --export FILE --format podman``, restored by real podman 4.3 (runc 1.1, CRIU).

One image is made once per module: busybox (scripts/make-busybox-image.sh) with /bin/memhog and a
few files of its own, ``podman import``-ed into a private podman store
(tests/integration/podman_store.py: the host's podman storage is untouched), ``podman save``-d as a
docker archive and ``image load``-ed into pymigrate: the same image in both, known to podman by the
config digest pymigrate records.

The pymigrate container runs memhog (random memory, a counter every 10 ms) under the rlimits
podman needs on this machine (``--ulimit nofile=1024:1024 --ulimit nproc=4096:4096``: without
CAP_SYS_RESOURCE runc's CRIU cannot raise a hard limit above conmon's, and CRIU restores the
dumped ones), changes its root (a file added, an image file deleted, an image directory replaced),
is checkpointed with ``--format podman`` and restored by ``podman container restore --import``: its
memory checksum is the same, its counter goes on from where it was, the root changes are there,
and it sits in podman's cgroup, not pymigrate's. Also: --leave-running with gzip, the export over
``--host`` (converted on the caller's side), a container born in podman going podman -> pymigrate
-> podman, and the refusals.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.cli_helpers import ok, refused, start_daemon, stop_daemon, unique
from tests.integration.conftest import PYMIGRATE, REPO
from tests.integration.podman_store import PodmanStore, podman_store
from tests.integration.workloads import MEMHOG_OUT, memhog_command, memhog_report, wait_for, wait_memhog_ready

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "busybox", "overlay")]

IMAGE = "localhost/pmt-export:1"
LIMITS = ("--nproc=4096:4096", "--nofile=1024:1024")  # podman run's --ulimit values on this machine


def _report(podman: PodmanStore, name: str) -> tuple[str, int]:
    """memhog's (checksum, counter), asked for through podman exec (it is PID 1 in there)."""
    podman.run("exec", name, "rm", "-f", MEMHOG_OUT)
    podman.run("exec", name, "kill", "-USR1", "1")

    def probe() -> tuple[str, int] | None:
        r = podman.run("exec", name, "cat", MEMHOG_OUT, check=False)
        parts = r.stdout.split()
        return (parts[0], int(parts[1])) if r.returncode == 0 and len(parts) == 2 else None

    return wait_for(probe, 30, f"memhog report of podman container {name}", interval_s=0.1)


def _image_tar(work: Path) -> Path:
    """busybox + /bin/memhog + /etc/pmt/{a,b} and /opt/old/x, owned by root."""
    tar, stage = work / "image.tar", work / "stage"
    (stage / "bin").mkdir(parents=True)
    subprocess.run(["gcc", "-O2", "-static", "-o", str(stage / "bin/memhog"), str(REPO / "tests/workloads/memhog.c")],
                   check=True, capture_output=True, timeout=120)
    (stage / "etc/pmt").mkdir(parents=True)
    (stage / "etc/pmt/a").write_text("a\n")
    (stage / "etc/pmt/b").write_text("b\n")
    (stage / "opt/old").mkdir(parents=True)
    (stage / "opt/old/x").write_text("x\n")
    subprocess.run([str(REPO / "scripts/make-busybox-image.sh"), str(tar)], check=True, capture_output=True, timeout=120)
    subprocess.run(["tar", "-rf", str(tar), "--owner=0", "--group=0", "--numeric-owner", "-C", str(stage),
                    "bin/memhog", "etc/pmt", "opt"], check=True, capture_output=True, timeout=60)
    return tar


@pytest.fixture(scope="module")
def podman(pm_root: Path) -> Iterator[PodmanStore]:
    if shutil.which("gcc") is None:
        pytest.skip("memhog needs gcc")
    with podman_store("pmx-") as p:
        p.run("import", str(_image_tar(p.work)), IMAGE)
        p.run("save", "--format", "docker-archive", "-o", str(p.work / "saved.tar"), IMAGE)
        r = subprocess.run([*PYMIGRATE, "--root", str(pm_root), "image", "load", str(p.work / "saved.tar"), "--json"],
                           capture_output=True, timeout=300, cwd=REPO)
        assert json.loads(ok(r))["name"] == "pmt-export:1"
        yield p


def _run_limited(pm_root: Path, *args: str) -> subprocess.CompletedProcess:
    """pymigrate under prlimit: the container inherits the limits (podman run --ulimit's)."""
    return subprocess.run(["prlimit", *LIMITS, *PYMIGRATE, "--root", str(pm_root), *args],
                          capture_output=True, timeout=120, cwd=REPO)


def test_podman_restores_a_pymigrate_container(podman: PodmanStore, pm: Callable[..., subprocess.CompletedProcess],
                                               pm_root: Path, tmp_path: Path) -> None:
    name = unique("exp")
    ok(_run_limited(pm_root, "run", "-d", "--name", name, "--memory", "96m", "--label", "tier=batch", "pmt-export:1",
                    *memhog_command(16)))
    try:
        wait_memhog_ready(pm_root, name)
        ok(pm("exec", name, "sh", "-c", "echo note > /note.txt && rm /etc/pmt/a && rm -rf /opt/old && mkdir /opt/old "
                                        "&& echo y > /opt/old/y"))
        checksum, before = memhog_report(pm_root, name)
        archive = tmp_path / "ctr.tar.zst"
        answer = json.loads(ok(pm("checkpoint", name, "--export", str(archive), "--format", "podman", "--json", timeout=300)))
        checkpointed_at = time.monotonic()
        assert answer["export_path"] == str(archive) and answer["stats"]["archive_bytes"] == archive.stat().st_size
        assert archive.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd, podman's default
        assert answer["checkpoint_id"] not in ok(pm("checkpoint", "ls"))  # converted, then removed (as a native export)
        inspected = json.loads(ok(pm("inspect", name, "--json")))
        assert (inspected[0] if isinstance(inspected, list) else inspected)["state"]["status"] == "exited"

        try:
            podman.run("container", "restore", "--import", str(archive))  # same name as here
            after_checksum, after = _report(podman, name)
            elapsed_ticks = (time.monotonic() - checkpointed_at) / 0.010
            assert after_checksum == checksum, "memory changed across the export"
            assert before <= after <= before + elapsed_ticks + 100, (before, after)  # counting on from where it was
            assert wait_for(lambda: _report(podman, name)[1] > after or None, 10, "memhog counting on in podman")

            def cat(path: str) -> str:
                return podman.run("exec", name, "cat", path).stdout

            assert cat("/note.txt") == "note\n"
            assert cat("/etc/pmt/b") == "b\n"
            assert podman.run("exec", name, "test", "-e", "/etc/pmt/a", check=False).returncode == 1  # deleted.files
            assert podman.run("exec", name, "ls", "/opt/old").stdout.split() == ["y"]  # the opaque dir: x gone
            state = json.loads(podman.run("inspect", name).stdout)[0]
            assert state["State"]["Running"] is True and state["ImageName"].endswith("pmt-export:1")
            cgroups = Path(f"/proc/{state['State']['Pid']}/cgroup").read_text()
            assert "libpod" in cgroups and "pymigrate" not in cgroups, cgroups
            # runc mapped the images' one cgroup dir onto its own: CRIU made none at a hierarchy's root
            assert not list(Path("/sys/fs/cgroup").glob("*/pymigrate-export"))
            limits = Path(f"/proc/{state['State']['Pid']}/limits").read_text()
            assert any(line.startswith("Max processes") and "4096" in line for line in limits.splitlines())
            assert state["Config"]["Labels"] == {"tier": "batch"}
            memory = next(line.split(":", 2)[2] for line in cgroups.splitlines() if line.split(":")[1] in ("memory", ""))
            limit = Path(f"/sys/fs/cgroup/memory{memory}/memory.limit_in_bytes")
            if limit.exists():  # cgroup v1 (this machine); v2 hosts keep it in memory.max
                assert int(limit.read_text()) == 96 << 20  # the spec's resources, set by runc on podman's cgroup
        finally:
            podman.remove(name)
    finally:
        pm("rm", "-f", name)


def test_leave_running_gzip_export_runs_on_in_both(podman: PodmanStore, pm: Callable[..., subprocess.CompletedProcess],
                                                    pm_root: Path, tmp_path: Path) -> None:
    """--leave-running: the original runs on here, podman's copy (restored under another name, so
    podman gives it a new id) runs from the same memory; gzip is podman's other --compress."""
    name, copy = unique("expl"), unique("copy")
    ok(_run_limited(pm_root, "run", "-d", "--name", name, "pmt-export:1", *memhog_command(8)))
    try:
        wait_memhog_ready(pm_root, name)
        checksum, before = memhog_report(pm_root, name)
        archive = tmp_path / "ctr.tar.gz"
        ok(pm("checkpoint", name, "--leave-running", "--export", str(archive), "--format", "podman", "--compress", "gzip",
              timeout=300))
        assert archive.read_bytes()[:2] == b"\x1f\x8b"
        try:
            podman.run("container", "restore", "--import", str(archive), "--name", copy)
            copy_checksum, copy_count = _report(podman, copy)
            here_checksum, here_count = memhog_report(pm_root, name)
            assert copy_checksum == checksum == here_checksum
            assert copy_count >= before and here_count > before
        finally:
            podman.remove(copy)
    finally:
        pm("rm", "-f", name)


def test_over_host_the_caller_converts(podman: PodmanStore, pm: Callable[..., subprocess.CompletedProcess], pm_root: Path,
                                      tmp_path: Path) -> None:
    """--host: the daemon checkpoints, the caller downloads the native archive and writes podman's;
    a container that made a directory is refused there (only the image, on the daemon's host, tells
    whether it replaced one of the image's) and its checkpoint stays on the daemon, named."""
    proc, sock = start_daemon(pm_root)
    name, made_dir = unique("exph"), unique("exphd")
    try:
        ok(_run_limited(pm_root, "run", "-d", "--name", name, "pmt-export:1", *memhog_command(8)))
        ok(_run_limited(pm_root, "run", "-d", "--name", made_dir, "pmt-export:1", *memhog_command(8)))
        wait_memhog_ready(pm_root, name)
        checksum, before = memhog_report(pm_root, name)
        archive = tmp_path / "remote.tar.zst"
        answer = json.loads(ok(pm("--host", f"unix:{sock}", "checkpoint", name, "--export", str(archive), "--format", "podman",
                                  "--json", timeout=300)))
        assert answer["export_path"] == str(archive) and archive.stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in tmp_path.iterdir()) == ["remote.tar.zst"]  # the scratch dir beside it is gone
        try:
            podman.run("container", "restore", "--import", str(archive))
            after_checksum, after = _report(podman, name)
            assert after_checksum == checksum and after >= before
        finally:
            podman.remove(name)

        ok(pm("exec", made_dir, "mkdir", "/newdir"))
        answer = refused(pm("--host", f"unix:{sock}", "checkpoint", made_dir, "--export", str(tmp_path / "no.tar"), "--format",
                            "podman", "--json", timeout=300), "Unsupported")
        assert "/newdir" in answer["error"] and "container's host" in answer["hint"], answer
        kept = answer["hint"].rsplit(" ", 1)[1]
        assert kept in ok(pm("checkpoint", "ls"))  # the daemon's checkpoint, named in the hint
        assert sorted(p.name for p in tmp_path.iterdir()) == ["remote.tar.zst"]
        ok(pm("checkpoint", "rm", kept))
    finally:
        stop_daemon(proc, sock)
        pm("rm", "-f", name, made_dir)


def test_round_trip_podman_pymigrate_podman(podman: PodmanStore, pm: Callable[..., subprocess.CompletedProcess], pm_root: Path,
                                           tmp_path: Path) -> None:
    """A container born in podman, restored by pymigrate (migrate/interop/podman_import.py), exported
    with --format podman and restored by podman again: the same memory all the way, its counter
    going on. Its engine binds (/etc/hosts ..., /dev/shm, the cgroup v1 binds, masked files) go
    back to being runc's."""
    first, middle, back = unique("born"), unique("mid"), unique("back")
    podman.start(first, IMAGE, *memhog_command(16))
    try:
        checksum, born = _report(podman, first)
        from_podman = tmp_path / "from-podman.tar.zst"
        podman.run("container", "checkpoint", "--export", str(from_podman), first)
    finally:
        podman.remove(first)
    try:
        ok(pm("restore", "--import", str(from_podman), "--name", middle, "--security-opt", "seccomp=unconfined", timeout=300))
        here_checksum, here = memhog_report(pm_root, middle)
        assert here_checksum == checksum and here >= born
        to_podman = tmp_path / "to-podman.tar.zst"
        ok(pm("checkpoint", middle, "--export", str(to_podman), "--format", "podman", timeout=300))
        try:
            podman.run("container", "restore", "--import", str(to_podman), "--name", back)
            back_checksum, again = _report(podman, back)
            assert back_checksum == checksum and again >= here
            assert wait_for(lambda: _report(podman, back)[1] > again or None, 10, "memhog counting on in podman again")
        finally:
            podman.remove(back)
    finally:
        pm("rm", "-f", middle)


def test_a_failed_conversion_keeps_the_checkpoint(podman: PodmanStore, pm: Callable[..., subprocess.CompletedProcess],
                                                  pm_root: Path, tmp_path: Path) -> None:
    """Nothing lost: the conversion fails after the dump stopped the container (here: its layer over
    an extraction limit); the local checkpoint stays, named in the hint, and restores."""
    name = unique("expfail")
    ok(_run_limited(pm_root, "run", "-d", "--name", name, "pmt-export:1", *memhog_command(8)))
    try:
        wait_memhog_ready(pm_root, name)
        ok(pm("exec", name, "dd", "if=/dev/zero", "of=/big", "bs=1k", "count=64"))
        checksum, before = memhog_report(pm_root, name)
        archive = tmp_path / "no.tar.zst"
        r = subprocess.run([*PYMIGRATE, "--root", str(pm_root), "checkpoint", name, "--export", str(archive), "--format", "podman",
                            "--json"], capture_output=True, timeout=300, cwd=REPO,
                           env={**os.environ, "PYMIGRATE_EXTRACT_LIMITS": "max_member_bytes=16K"})
        answer = refused(r, "ImageLimitExceeded")
        kept = answer["hint"].rsplit(" ", 1)[1]
        assert "the checkpoint is kept: pymigrate restore" in answer["hint"] and kept in ok(pm("checkpoint", "ls"))
        assert not archive.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
        ok(pm("restore", kept))
        after_checksum, after = memhog_report(pm_root, name)
        assert after_checksum == checksum and after >= before
        ok(pm("checkpoint", "rm", kept))
    finally:
        pm("rm", "-f", name)


def test_podman_logs_show_what_it_prints_after_the_restore(podman: PodmanStore, pm: Callable[..., subprocess.CompletedProcess],
                                                           pm_root: Path, tmp_path: Path) -> None:
    """stdout/stderr: what was printed before the checkpoint stays in its log files (pymigrate's
    logs); what it prints in podman goes to conmon's pipes: ``podman logs``."""
    name = unique("explog")
    ok(_run_limited(pm_root, "run", "-d", "--name", name, "pmt-export:1", "sh", "-c",
                    "i=0; while true; do i=$((i+1)); echo out $i; echo err $i >&2; sleep 0.05; done"))
    try:
        wait_for(lambda: "out 5" in ok(pm("logs", name)) or None, 20, "output before the checkpoint")
        archive = tmp_path / "log.tar.zst"
        ok(pm("checkpoint", name, "--export", str(archive), "--format", "podman", timeout=300))
        last = max(int(line.split()[1]) for line in ok(pm("logs", name)).splitlines() if line.startswith("out "))
        try:
            podman.run("container", "restore", "--import", str(archive))

            def after() -> list[int] | None:
                r = podman.run("logs", name)
                outs = [int(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("out ")]
                errs = [line for line in r.stderr.splitlines() if line.startswith("err ")]
                return outs if len(outs) > 3 and errs else None

            outs = wait_for(after, 20, "podman logs of the restored container")
            assert outs[0] == last + 1, (last, outs[:3])  # the very next line, nothing lost or repeated
            fds = podman.run("exec", name, "ls", "-l", "/proc/1/fd/").stdout
            assert fds.count("pipe:[") == 2 and "/dev/null" in fds
        finally:
            podman.remove(name)
    finally:
        pm("rm", "-f", name)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fetch(port: int, path: str) -> str | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def test_a_web_server_keeps_its_published_port_in_podman(podman: PodmanStore, pm: Callable[..., subprocess.CompletedProcess],
                                                         pm_root: Path, tmp_path: Path) -> None:
    """busybox httpd published with -p: its listening socket restored by CRIU in podman's network
    namespace, podman forwarding the same host port to it (config.dump's newPortMappings)."""
    name, port = unique("expweb"), _free_port()
    ok(_run_limited(pm_root, "run", "-d", "--name", name, "-p", f"{port}:80", "pmt-export:1", "httpd", "-f", "-p", "80", "-h", "/"))
    try:
        ok(pm("exec", name, "sh", "-c", "echo served-by-the-same-process > /page.txt"))
        assert wait_for(lambda: _fetch(port, "/page.txt"), 20, "httpd in pymigrate") == "served-by-the-same-process\n"
        archive = tmp_path / "web.tar.zst"
        ok(pm("checkpoint", name, "--export", str(archive), "--format", "podman", timeout=300))
        assert _fetch(port, "/page.txt") is None  # stopped here, its port released
        try:
            podman.run("container", "restore", "--import", str(archive))
            assert wait_for(lambda: _fetch(port, "/page.txt"), 20, "httpd in podman") == "served-by-the-same-process\n"
            assert f"0.0.0.0:{port}" in podman.run("port", name).stdout
            assert "socket:[" in podman.run("exec", name, "ls", "-l", "/proc/1/fd/").stdout  # the restored listener, not a new httpd
        finally:
            podman.remove(name)
    finally:
        pm("rm", "-f", name)


def test_a_bind_volume_is_bound_again_by_runc(podman: PodmanStore, pm: Callable[..., subprocess.CompletedProcess],
                                              pm_root: Path, tmp_path: Path) -> None:
    """-v HOST:TARGET: the exported images key the bind by its destination as runc does, spec.dump
    binds HOST there again; the process goes on appending through the fd it holds on it."""
    name = unique("expbind")
    data = tmp_path / "data"
    data.mkdir()
    ok(_run_limited(pm_root, "run", "-d", "--name", name, "-v", f"{data}:/data", "pmt-export:1", "sh", "-c",
                    "exec 3>>/data/out.txt; i=0; while true; do i=$((i+1)); echo $i >&3; sleep 0.05; done"))
    try:
        wait_for(lambda: (read_int_last(data / "out.txt") or 0) > 5 or None, 20, "the counter in the volume")
        archive = tmp_path / "bind.tar.zst"
        ok(pm("checkpoint", name, "--export", str(archive), "--format", "podman", timeout=300))
        last = read_int_last(data / "out.txt")
        try:
            podman.run("container", "restore", "--import", str(archive))
            assert wait_for(lambda: (read_int_last(data / "out.txt") or 0) > (last or 0) + 3 or None, 20, "appending on in podman")
            lines = [int(x) for x in (data / "out.txt").read_text().split()]
            assert lines == list(range(1, len(lines) + 1))  # nothing lost or repeated across the move
        finally:
            podman.remove(name)
    finally:
        pm("rm", "-f", name)


def read_int_last(path: Path) -> int | None:
    """The last complete number in ``path`` (a counter appending lines)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    lines = text.split("\n")[:-1]
    return int(lines[-1]) if lines and lines[-1].isdigit() else None


def test_export_refuses_a_container_with_a_named_volume(podman: PodmanStore, pm: Callable[..., subprocess.CompletedProcess],
                                                        pm_root: Path, tmp_path: Path) -> None:
    name, volume = unique("expvol"), unique("vol")
    ok(_run_limited(pm_root, "run", "-d", "--name", name, "-v", f"{volume}:/data", "pmt-export:1", "sleep", "1000"))
    try:
        before = ok(pm("checkpoint", "ls"))
        archive = tmp_path / "no.tar.zst"
        answer = refused(pm("checkpoint", name, "--export", str(archive), "--format", "podman", "--json"), "Unsupported")
        assert "named volumes (/data)" in answer["error"] and "--format native" in (answer.get("hint") or "")
        assert not archive.exists() and not any(p.name.startswith(".no.tar") for p in tmp_path.iterdir())
        assert ok(pm("checkpoint", "ls")) == before  # refused before the dump
        inspected = json.loads(ok(pm("inspect", name, "--json")))
        assert (inspected[0] if isinstance(inspected, list) else inspected)["state"]["status"] == "running"
    finally:
        pm("rm", "-f", name)
        pm("volume", "rm", volume)


def test_export_refuses_an_image_podman_cannot_know(pm: Callable[..., subprocess.CompletedProcess], pm_root: Path,
                                                    tmp_path: Path) -> None:
    tar = tmp_path / "plain.tar"
    subprocess.run([str(REPO / "scripts/make-busybox-image.sh"), str(tar)], check=True, capture_output=True, timeout=120)
    ok(pm("image", "import", "pmt-plain:1", str(tar)))
    name = unique("expplain")
    ok(_run_limited(pm_root, "run", "-d", "--name", name, "pmt-plain:1", "sleep", "1000"))
    try:
        archive = tmp_path / "no.tar"
        answer = refused(pm("checkpoint", name, "--export", str(archive), "--format", "podman", "--compress", "none",
                            "--json"), "Unsupported")
        assert "config digest" in answer["error"], answer
        assert not archive.exists()
        assert pm("checkpoint", name, "--export", str(archive), "--compress", "gzip").returncode == 125  # gzip: podman's only
        answer = refused(pm("checkpoint", name, "--export", str(tmp_path / "missing" / "x.tar"), "--format", "podman", "--json"),
                         "InvalidArgument")
        assert "is not a directory" in answer["error"]
    finally:
        pm("rm", "-f", name)
        pm("image", "rm", "pmt-plain:1")

