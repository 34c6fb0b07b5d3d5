"""Issue 11 (2, 7, 8, 9, 11): crafted manifests, crash-safe checkpoints, concurrent and hanging
restores, the daemon's token file. Real CRIU, kernel namespaces and cgroups, a real daemon.

Each crafted archive starts as a genuine export whose manifest is rewritten (volumes naming the
host's /, ids and names with '..', a cgroup parent leaving the tree, bad limits): every one must be
refused with a typed error naming the field, through ``restore --import`` and through a daemon
(UploadCheckpoint + Restore), leaving nothing behind and nothing outside the state root.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.integration.cli_helpers import LOOP, ok, start_daemon, stop_daemon, unique
from tests.integration.conftest import PYMIGRATE, REPO
from tests.integration.migration_lab import cgroup_dirs
from tests.integration.workloads import (  # noqa: F401  (fixtures)
    import_image,
    inspect,
    memhog_binary,
    memhog_command,
    memhog_image,
    memhog_tar,
    wait_for,
    wait_memhog_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "pycriu", "busybox")]



def status(pm: Callable[..., Any], name: str) -> str:
    return str(json.loads(ok(pm("inspect", name, "--json")))[0]["state"]["status"])


def frozen(root: Path, container_id: str) -> bool:
    dirs = [d for d in cgroup_dirs(root, container_id) if (d / "cgroup.events").exists()]
    return bool(dirs) and "frozen 1" in (dirs[0] / "cgroup.events").read_text()


def craft(genuine: Path, out: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """``genuine`` with its manifest's container spec changed by ``change`` (images and upper
    layer copied as they are)."""
    import shutil
    import tempfile

    from migrate.archive import ArchiveWriter, read_archive

    scratch = Path(tempfile.mkdtemp(dir=out.parent))
    try:
        with open(genuine, "rb") as f:
            manifest = read_archive(f, scratch / "x")
        change(manifest["container"])
        with open(out, "wb") as f, ArchiveWriter(f, compress="none") as writer:
            writer.write_manifest(manifest)
            for path in sorted((scratch / "x" / "images").iterdir()):
                writer.add_file(f"images/{path.name}", path)
            if (scratch / "x" / "upper").is_dir():
                writer.add_tree("upper", scratch / "x" / "upper")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def leftovers(root: Path) -> list[str]:
    """Scratch, replaced originals and lock files: a finished or refused restore leaves none."""
    found = [p.name for p in (root / "tmp").iterdir()] if (root / "tmp").is_dir() else []
    locks = root / "run" / "locks"
    found += [f"locks/{p.name}" for p in locks.iterdir()] if locks.is_dir() else []
    return sorted(found)


def mounts_below(root: Path) -> set[str]:
    below = str(root / "containers") + "/"
    return {p for p in (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()) if p.startswith(below)}


def stray_mounts(pm: Callable[..., Any], root: Path, before: set[str]) -> list[str]:
    """Mounts below ROOT/containers/<id>/ made since ``before`` whose container is not running."""
    running = {c["spec"]["container_id"] for c in json.loads(ok(pm("ps", "--json")))}
    below = str(root / "containers") + "/"
    return sorted(p for p in mounts_below(root) - before if p[len(below):].split("/")[0] not in running)


def set_volumes_root(spec: dict[str, Any]) -> None:
    spec["volumes"] = [{"source": "/", "target": "/host", "readonly": False}]


CRAFTED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "host root volume": (set_volumes_root, "volumes[0].source"),
    "id with ..": (lambda s: s.update(container_id="../../x"), "container_id"),
    "name with ..": (lambda s: s.update(name="../../y"), "name"),
    "cgroup parent escaping": (lambda s: s.update(cgroup_parent="../../../evil"), "cgroup_parent"),
    "absolute cgroup parent": (lambda s: s.update(cgroup_parent="/sys/fs/cgroup"), "cgroup_parent"),
    "hostname": (lambda s: s.update(hostname="a b/c"), "hostname"),
    "env": (lambda s: s.update(env=["NOEQUALS"]), "env"),
    "memory": (lambda s: s.update(memory_bytes="lots"), "memory_bytes"),
    "pids": (lambda s: s.update(pids_limit=-5), "pids_limit"),
    "ip": (lambda s: s.update(ip="300.1.1.1"), "ip"),
    "mac": (lambda s: s.update(mac="01:00:5e:00:00:01"), "mac"),
    "digest": (lambda s: s.update(image_digest="sha256:../../etc"), "image_digest"),
    "volumes shape": (lambda s: s.update(volumes="/"), "volumes"),
    # shared namespaces (runtime/ns_modes.py): never from an archive or a peer
    "host pid namespace": (lambda s: s.update(pid_mode="host"), "pid_mode"),
    "another container's network": (lambda s: s.update(network="container", network_container="c" * 32, ip=None, mac=None,
                                                       ports=[]), "network"),
}


@pytest.fixture
def genuine(pm: Callable[..., Any], pm_root: Path, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A genuine export of a running busybox loop (the container keeps running)."""
    name = unique("trust")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", LOOP))
    archive = tmp_path / "genuine.pma"
    try:
        ok(pm("checkpoint", name, "--export", str(archive), "--leave-running"))
        yield archive, name
    finally:
        pm("rm", "-f", name)


def test_crafted_manifests_are_refused_by_restore_import(pm: Callable[..., Any], pm_root: Path, tmp_path: Path,
                                                         genuine: tuple[Path, str]) -> None:
    archive, _ = genuine
    outside = [pm_root.parent / "x", pm_root.parent.parent / "x", Path("/x"), Path("/y")]
    before = {p: p.exists() for p in outside}
    for what, (change, field) in CRAFTED.items():
        crafted = craft(archive, tmp_path / f"{what.replace(' ', '-')}.pma", change)
        name = unique("crafted")
        r = pm("restore", "--import", str(crafted), "--name", name, "--json")
        assert r.returncode != 0, f"{what}: restored anyway"
        answer = json.loads(r.stdout)
        assert answer["type"] == "InvalidSpec", f"{what}: {answer}"
        assert field.split("[")[0] in answer["error"] or field in (answer.get("hint") or "") or what, answer
        assert pm("inspect", name).returncode != 0, f"{what}: a container record was made"
        assert leftovers(pm_root) == [], f"{what}: left {leftovers(pm_root)}"
    assert {p: p.exists() for p in outside} == before, "something was created outside the state root"


def test_refusal_names_the_field(pm: Callable[..., Any], tmp_path: Path, genuine: tuple[Path, str]) -> None:
    archive, _ = genuine
    crafted = craft(archive, tmp_path / "root.pma", set_volumes_root)
    r = pm("restore", "--import", str(crafted), "--name", unique("v"))
    err = r.stderr.decode()
    assert r.returncode != 0 and "volume /host names host path '/'" in err and "--volume HOSTDIR:/host" in err, err
    crafted = craft(archive, tmp_path / "id.pma", lambda s: s.update(container_id="../../x"))
    err = pm("restore", "--import", str(crafted)).stderr.decode()
    assert "invalid container id '../../x'" in err, err


def test_restore_import_maps_a_volume_explicitly(pm: Callable[..., Any], pm_root: Path, tmp_path: Path) -> None:
    src, other = tmp_path / "src", tmp_path / "other"
    src.mkdir()
    other.mkdir()
    name = unique("vol")
    ok(pm("run", "-d", "--name", name, "-v", f"{src}:/data", "busybox", "sh", "-c",
          "while true; do echo x >> /data/log; sleep 0.05; done"))
    archive = tmp_path / "vol.pma"
    try:
        wait_for(lambda: (src / "log").exists(), 10, "the writer's first line")
        ok(pm("checkpoint", name, "--export", str(archive)))  # the container stops
        r = pm("restore", "--import", str(archive), "--json", timeout=180)
        assert r.returncode != 0 and json.loads(r.stdout)["type"] == "InvalidSpec", r.stdout
        assert "--volume HOSTDIR:/data" in json.loads(r.stdout)["hint"]
        assert status(pm, name) == "exited" and leftovers(pm_root) == []
        ok(pm("restore", "--import", str(archive), "--volume", f"{other}:/data"))
        assert status(pm, name) == "running"
        wait_for(lambda: (other / "log").exists() and (other / "log").stat().st_size > 20, 10, "writes into the mapped dir")
        size = (src / "log").stat().st_size
        time.sleep(0.3)
        assert (src / "log").stat().st_size == size, "the original host dir must not be written any more"
        assert json.loads(ok(pm("inspect", name, "--json")))[0]["spec"]["volumes"][0]["source"] == str(other)
        r = pm("restore", "--import", str(archive), "--name", unique("v2"), "--volume", f"{other}:/elsewhere")
        assert r.returncode != 0 and "names no volume of the checkpoint" in r.stderr.decode()
    finally:
        pm("rm", "-f", name)
    assert leftovers(pm_root) == []


@pytest.fixture
def daemon(pm_root: Path, tmp_path: Path) -> Iterator[str]:
    """A real daemon on the test root, on its own unix socket."""
    proc, sock = start_daemon(pm_root)
    try:
        yield f"unix:{sock}"
    finally:
        stop_daemon(proc, sock)


def test_crafted_manifests_are_refused_by_a_daemon(pm: Callable[..., Any], pm_root: Path, tmp_path: Path,
                                                   genuine: tuple[Path, str], daemon: str) -> None:
    """Through gRPC: UploadCheckpoint refuses what it can judge alone; the host-root volume is
    kept (volumes are judged at restore) and Restore refuses it unless mapped."""
    from migrate.api import RestoreOptions
    from migrate.remote.client import RemoteEngine
    from runtime.errors import InvalidSpec

    archive, _ = genuine
    engine = RemoteEngine(daemon)
    try:
        for what, (change, field) in CRAFTED.items():
            crafted = craft(archive, tmp_path / f"d-{what.replace(' ', '-')}.pma", change)
            with pytest.raises(InvalidSpec) as info:
                engine.restore(RestoreOptions(import_path=crafted, name=unique("grpc")))
            assert info.value.field.split("[")[0] == field.split("[")[0] or info.value.field == field, (what, info.value.field)
            assert leftovers(pm_root) == [], f"{what}: left {leftovers(pm_root)}"
        kept = [c for c in engine.checkpoints()]
        assert all(c.container_name != "../../y" for c in kept)
        for c in kept:  # the host-root one was stored (judged at restore): remove it
            engine.checkpoint_remove(c.checkpoint_id)
    finally:
        engine.close()


def test_a_daemon_restores_an_upload_with_a_mapped_volume(pm: Callable[..., Any], pm_root: Path, tmp_path: Path,
                                                           daemon: str) -> None:
    """RestoreRequest.volumes over gRPC (the CLI's --volume through RemoteEngine)."""
    src, other = tmp_path / "src", tmp_path / "other"
    src.mkdir()
    other.mkdir()
    name = unique("gvol")
    ok(pm("run", "-d", "--name", name, "-v", f"{src}:/data", "busybox", "sh", "-c",
          "while true; do echo x >> /data/log; sleep 0.05; done"))
    archive = tmp_path / "gvol.pma"
    try:
        wait_for(lambda: (src / "log").exists(), 10, "the writer's first line")
        ok(pm("checkpoint", name, "--export", str(archive)))
        ok(pm("rm", name))
        r = pm("--host", daemon, "restore", "--import", str(archive), "--json", timeout=180)
        assert r.returncode != 0 and json.loads(r.stdout)["type"] == "InvalidSpec", r.stdout
        ok(pm("--host", daemon, "restore", "--import", str(archive), "--volume", f"{other}:/data", timeout=180))
        wait_for(lambda: (other / "log").exists() and (other / "log").stat().st_size > 20, 10, "writes into the mapped dir")
        assert status(pm, name) == "running"
    finally:
        pm("rm", "-f", name)
        for c in json.loads(ok(pm("checkpoint", "ls", "--json"))):  # the two uploads
            pm("checkpoint", "rm", c["checkpoint_id"])


@pytest.mark.parametrize("settler", ["next command", "daemon start"])
def test_sigkill_of_checkpoint_export_while_frozen_is_settled(
    pm: Callable[..., Any], pm_root: Path, tmp_path: Path, memhog_image: str, settler: str
) -> None:
    name = unique("killed")
    ok(pm("run", "-d", "--name", name, "--network", "none", memhog_image, *memhog_command(768)))
    try:
        wait_memhog_ready(pm_root, name)
        cid = inspect(pm_root, name).spec.container_id
        archive = tmp_path / "big.pma"
        proc = subprocess.Popen([*PYMIGRATE, "--root", str(pm_root), "checkpoint", name, "--export", str(archive)],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: frozen(pm_root, cid), 30, "the checkpoint's freeze", interval_s=0.002)
        state = json.loads((pm_root / "containers" / cid / "state.json").read_text())
        assert state["frozen_by"]["operation"] == "checkpoint" and state["frozen_by"]["pid"] == proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = time.monotonic()
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(".big.pma.")]
        assert partial, "the export's temp file should be there after the kill"
        if settler == "next command":  # once the orphaned CRIU has let go of the files
            wait_for(lambda: name in ok(pm("ps")) and not frozen(pm_root, cid), 120, "ps thawing the container")
        else:  # the daemon's start waits for the orphaned CRIU, then thaws
            assert frozen(pm_root, cid)
            daemon_proc, sock = start_daemon(pm_root)
            try:
                assert not frozen(pm_root, cid), "the daemon's start must thaw it"
            finally:
                stop_daemon(daemon_proc, sock)
        print(f"{settler}: thawed {time.monotonic() - killed_at:.2f}s after the kill")
        assert status(pm, name) == "running"
        assert not any(p.exists() for p in partial), "the partial export must be removed"
        assert not archive.exists()
        assert [p for p in (pm_root / "tmp").iterdir() if p.name.startswith("ckpt-")] == []
        state = json.loads((pm_root / "containers" / cid / "state.json").read_text())
        assert state["frozen_by"] is None
        wait_memhog_ready(pm_root, name, timeout_s=10)  # it runs and answers again
    finally:
        pm("rm", "-f", name)


def test_unpause_thaws_a_frozen_container_recorded_running(pm: Callable[..., Any], pm_root: Path) -> None:
    name = unique("frz")
    ok(pm("run", "-d", "--name", name, "--network", "none", "busybox", "sh", "-c", LOOP))
    try:
        cid = inspect(pm_root, name).spec.container_id
        (cgdir,) = [d for d in cgroup_dirs(pm_root, cid) if (d / "cgroup.freeze").exists()]
        (cgdir / "cgroup.freeze").write_text("1")  # what a process killed in its freeze leaves
        wait_for(lambda: frozen(pm_root, cid), 5, "frozen")
        assert status(pm, name) == "running"
        ok(pm("unpause", name))
        assert not frozen(pm_root, cid) and status(pm, name) == "running"
    finally:
        pm("rm", "-f", name)


def test_concurrent_restores_of_one_checkpoint_one_wins(pm: Callable[..., Any], pm_root: Path) -> None:
    name = unique("race")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", LOOP))
    try:
        checkpoint_id = ok(pm("checkpoint", name)).strip().splitlines()[0]
        before = mounts_below(pm_root)
        procs = [subprocess.Popen([*PYMIGRATE, "--root", str(pm_root), "restore", checkpoint_id, "--json"], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        outputs = [p.communicate(timeout=120) for p in procs]
        results = [(p.returncode, out.decode(), err.decode()) for p, (out, err) in zip(procs, outputs)]
        codes = sorted(rc for rc, _, _ in results)
        assert codes[0] == 0 and codes[1] != 0, results
        loser = next(json.loads(out) for rc, out, _ in results if rc != 0)
        assert loser["type"] in ("Busy", "InvalidState"), loser
        print("loser:", loser["error"])
        assert status(pm, name) == "running"
        listed = [c for c in json.loads(ok(pm("ps", "-a", "--json"))) if c["spec"]["name"] == name]
        assert len(listed) == 1
        assert leftovers(pm_root) == [], leftovers(pm_root)
        assert stray_mounts(pm, pm_root, before) == []
        # a later restore is refused cleanly (the container runs), not broken
        r = pm("restore", checkpoint_id, "--json")
        assert r.returncode != 0 and json.loads(r.stdout)["type"] == "InvalidState"
    finally:
        pm("rm", "-f", name)


def test_a_restore_that_hangs_times_out_and_leaves_nothing(pm: Callable[..., Any], pm_root: Path) -> None:
    """CRIU's restore made to hang for real: its cgroup (where CRIU and the restored tree live) is
    frozen as soon as it exists, so CRIU never answers, like a restore whose restored task
    crashed. The timeout kills CRIU and undoes everything; the checkpoint stays restorable."""
    name = unique("hang")
    ok(pm("run", "-d", "--name", name, "--network", "none", "busybox", "sh", "-c", LOOP))
    try:
        cid = inspect(pm_root, name).spec.container_id
        checkpoint_id = ok(pm("checkpoint", name)).strip().splitlines()[0]
        before = mounts_below(pm_root)
        stop = threading.Event()
        froze: list[Path] = []

        def freezer() -> None:
            while not stop.is_set():
                for d in cgroup_dirs(pm_root, cid):
                    if (d / "cgroup.freeze").exists() and not froze:
                        try:
                            (d / "cgroup.freeze").write_text("1")
                            froze.append(d)
                        except OSError:
                            pass
                time.sleep(0.0005)

        t = threading.Thread(target=freezer, daemon=True)
        t.start()
        started = time.monotonic()
        r = pm("restore", checkpoint_id, "--restore-timeout", "3", "--json", timeout=60)
        took = time.monotonic() - started
        stop.set()
        t.join()
        assert froze, "the restore's cgroup was never seen"
        assert r.returncode != 0, r.stdout
        answer = json.loads(r.stdout)
        assert answer["type"] == "CriuTimeout" and "no answer within 3s" in answer["error"], answer
        assert 3 <= took < 30, took
        print(f"restore gave up after {took:.1f}s")
        assert status(pm, name) == "exited"
        assert cgroup_dirs(pm_root, cid) == [], "the restore's cgroup must be removed"
        assert leftovers(pm_root) == []
        assert stray_mounts(pm, pm_root, before) == []
        criu = subprocess.run(["pgrep", "-f", "criu swrk"], capture_output=True, text=True).stdout.split()
        for pid in criu:  # no CRIU of ours is left in a cgroup of this root
            assert str(pm_root) not in Path(f"/proc/{pid}/cgroup").read_text() if Path(f"/proc/{pid}").exists() else True
        ok(pm("restore", checkpoint_id))  # the checkpoint is intact
        assert status(pm, name) == "running"
    finally:
        pm("rm", "-f", name)


def test_daemon_refuses_a_token_file_others_can_read(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(16))
    token.chmod(0o644)
    root = tmp_path / "root"
    sock = f"/tmp/pm-tok-{secrets.token_hex(3)}.sock"
    r = subprocess.run([*PYMIGRATE, "--root", str(root), "daemon", "--listen", f"unix:{sock}", "--token-file", str(token)],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode != 0
    assert "accessible by group or others (mode 0644)" in r.stderr and "chmod 600" in r.stderr, r.stderr
    assert not Path(sock).exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-m", "integration"]))
