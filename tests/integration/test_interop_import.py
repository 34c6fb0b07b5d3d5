"""``restore --import`` of real podman checkpoints (issue 16): podman 4 + runc + CRIU on this host.

A counter container (a shell printing 0, 1, 2 ... every 100 ms, beside tests/workloads/memhog
holding 16 MiB of random bytes) is started and checkpointed by podman (``--export``), restored by
pymigrate: its output continues in ``pymigrate logs`` from the number after podman's last (not
restarted), memhog's checksum is the same and its own counter went on. Then pymigrate
checkpoints the imported container and restores it again: the engine's binds are declared and
mapped once more, the log runs on without a gap.

Refusals, each leaving no container, scratch dir, mount or network namespace behind: the image
is not here; a bind mount (podman -v) not mapped with --volume; a corrupted rootfs-diff.tar; a
user namespace; --network none; podman's seccomp filter not accepted. Also: --volume mapping,
root changes and deletions, the CRI-O layout, --pull from a real registry, a move on to a second
host, and pymigrate's own podman-layout export coming back. podman runs on a private store
(tests/integration/podman_store.py), removed at the end.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.integration.cli_helpers import ok, refused, unique
from tests.integration.hosts import make_hosts  # noqa: F401  (fixture)
from tests.integration.podman_store import ULIMITS, PodmanStore, need, podman_store
from tests.integration.workloads import static_workload_tar, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns", "criu")]

IMAGE = "pmt-memhog:1"  # pymigrate's name; podman's is localhost/pmt-memhog:1
COUNTER = "/bin/memhog 16 /tmp/memhog.out & i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done"
REPORT = "rm -f /tmp/memhog.out; kill -USR1 $(pidof memhog); sleep 0.5; cat /tmp/memhog.out"
ACCEPT = ("--security-opt", "seccomp=unconfined")
_REPORT = re.compile(r"^([0-9a-f]{16}) (\d+)$")


def _export(podman: PodmanStore, name: str, out: Path) -> Path:
    # seen under load: "created" right after run -d returned, and checkpoint refuses that
    wait_for(lambda: podman("inspect", "-f", "{{.State.Status}}", name) == "running", 30, f"podman's {name} running")
    podman("container", "checkpoint", "--export", str(out), name)
    return out


@pytest.fixture(scope="module")
def podman(pm: Callable[..., Any]) -> Iterator[PodmanStore]:
    need("zstd")
    with podman_store("pmi-") as p:
        tar = static_workload_tar(p.work, "memhog")
        p("import", str(tar), "localhost/pmt-memhog:1")
        p("import", str(tar), "localhost/pmt-absent:1")  # never loaded into pymigrate
        ok(pm("image", "import", IMAGE, str(tar)))
        yield p


@pytest.fixture(scope="module")
def pm(pm_root: Path) -> Callable[..., subprocess.CompletedProcess]:  # module scope: the podman fixture uses it
    from tests.integration.conftest import PYMIGRATE, REPO

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*PYMIGRATE, "--root", str(pm_root), *args], capture_output=True, timeout=timeout, cwd=REPO)

    return run


def _numbers(text: str) -> list[int]:
    return [int(line) for line in text.split() if line.isdigit()]


def _report(run_in: Callable[[str], str]) -> tuple[str, int]:
    def probe() -> tuple[str, int] | None:
        m = _REPORT.match(run_in(REPORT).strip())
        return (m.group(1), int(m.group(2))) if m else None

    return wait_for(probe, 60, "memhog's report", interval_s=0.2)


def _pm_exec(pm: Callable[..., Any], name: str) -> Callable[[str], str]:
    return lambda script: pm("exec", name, "sh", "-c", script).stdout.decode()


def _logs(pm: Callable[..., Any], name: str) -> list[int]:
    return _numbers(ok(pm("logs", name)))


def test_podman_counter_continues_in_pymigrate_and_checkpoints_again(podman: PodmanStore, pm: Callable[..., Any], tmp_path: Path) -> None:
    ctr = unique("pod")
    podman.start(ctr, "localhost/pmt-memhog:1", "sh", "-c", COUNTER)
    wait_for(lambda: len(_numbers(podman("logs", ctr))) >= 10, 30, "podman's counter")
    before = _report(lambda script: podman("exec", ctr, "sh", "-c", script, check=False))
    archive = _export(podman, ctr, tmp_path / "ctr.tar.gz")
    last = _numbers(podman("logs", ctr))[-1]
    podman("rm", "-f", ctr)

    name = unique("imp")
    result = json.loads(ok(pm("restore", "--import", str(archive), "--name", name, *ACCEPT, "--json")))
    info = result["container"]
    assert info["state"]["status"] == "running" and info["spec"]["ip"] and not info["spec"]["ip"].startswith("10.88.")
    assert "/etc/hosts" in info["spec"]["engine_mounts"] and "/dev/shm" in info["spec"]["engine_mounts"]
    wait_for(lambda: len(_logs(pm, name)) >= 5, 30, "the imported counter's output")
    out = _logs(pm, name)
    assert out[0] == last + 1, f"podman's last line was {last}, pymigrate's first {out[0]}: restarted, not restored"
    assert out == list(range(out[0], out[0] + len(out)))
    after = _report(_pm_exec(pm, name))
    assert after[0] == before[0], "memhog's memory changed across podman -> pymigrate"
    assert after[1] > before[1]

    # pymigrate's own checkpoint of the imported container, and its restore
    ckpt = json.loads(ok(pm("checkpoint", name, "--json")))["checkpoint_id"]
    ok(pm("restore", ckpt))
    seen = len(_logs(pm, name))
    wait_for(lambda: len(_logs(pm, name)) >= seen + 5, 30, "the counter after pymigrate's restore")
    out = _logs(pm, name)
    assert out == list(range(last + 1, last + 1 + len(out))), "the log has a gap or a restart"
    again = _report(_pm_exec(pm, name))
    assert again[0] == before[0] and again[1] > after[1]
    ok(pm("rm", "-f", name))
    ok(pm("checkpoint", "rm", ckpt))


# -- refusals ---------------------------------------------------------------------------------------


def _repack(archive: Path, out: Path, change: Callable[[Path], None]) -> Path:
    """``archive`` (podman's tar.zst) unpacked, changed, packed again as tar.zst."""
    d = out.with_suffix(".d")
    d.mkdir()
    subprocess.run(f"zstd -dc {archive} | tar -x -C {d}", shell=True, check=True, timeout=60)
    change(d)
    subprocess.run(f"tar -C {d} -cf - . | zstd -q -o {out}", shell=True, check=True, timeout=60)
    shutil.rmtree(d)
    return out


def _corrupt_diff(d: Path) -> None:
    data = (d / "rootfs-diff.tar").read_bytes()
    (d / "rootfs-diff.tar").write_bytes(data[:600] + b"\xff" * 100)  # the first member's data cut short


def _user_namespace(d: Path) -> None:
    spec = json.loads((d / "spec.dump").read_text())
    spec["linux"]["namespaces"].append({"type": "user"})
    spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    (d / "spec.dump").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def refused_archives(podman: PodmanStore, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("refused")
    (out / "vol").mkdir()
    podman.start("r-absent", "localhost/pmt-absent:1", "sleep", "1000")
    podman.start("r-volume", "localhost/pmt-memhog:1", "sleep", "1000", extra=("-v", f"{out / 'vol'}:/data"))
    podman.start("r-nonet", "localhost/pmt-memhog:1", "sleep", "1000", extra=("--network", "none"))
    podman.start("r-plain", "localhost/pmt-memhog:1", "sh", "-c", "echo changed > /new-file; rm /bin/vi; sleep 1000")
    wait_for(lambda: podman("exec", "r-plain", "sh", "-c", "cat /new-file; ls /bin/vi", check=False) == "changed", 30,
             "the shell's changes")
    plain = _export(podman, "r-plain", out / "plain.tar.zst")
    return {
        "absent": _export(podman, "r-absent", out / "absent.tar.zst"),
        "volume": _export(podman, "r-volume", out / "volume.tar.zst"),
        "nonet": _export(podman, "r-nonet", out / "nonet.tar.zst"),
        "plain": plain,
        "corrupt": _repack(plain, out / "corrupt.tar.zst", _corrupt_diff),
        "userns": _repack(plain, out / "userns.tar.zst", _user_namespace),
    }


def _leftovers(pm_root: Path, pm: Callable[..., Any]) -> dict[str, Any]:
    """What a refused import must not change: containers, scratch, state dirs, netns, mounts."""
    def names(sub: str) -> set[str]:
        p = pm_root / sub
        return set(p.iterdir()) if p.is_dir() else set()

    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(pm_root) in line]
    listed = {c["spec"]["name"] for c in json.loads(ok(pm("ps", "-a", "--json")))}
    return {"ps": listed, "tmp": names("tmp"), "containers": names("containers"), "netns": names("netns"),
            "mounts": sorted(mounts)}


@pytest.mark.parametrize(("case", "args", "error", "words"), [
    ("absent", ACCEPT, "ImageNotFound", ["pmt-absent:1", "image pull"]),
    ("volume", ACCEPT, "InvalidSpec", ["/data", "--volume"]),
    ("corrupt", ACCEPT, "UnsafeMember", ["rootfs-diff.tar"]),
    ("userns", ACCEPT, "Unsupported", ["user namespace"]),
    ("nonet", ACCEPT, "Unsupported", ["--network none"]),
    ("plain", (), "InvalidSpec", ["seccomp=unconfined"]),
])
def test_refused_import_leaves_nothing_behind(refused_archives: dict[str, Path], pm: Callable[..., Any], pm_root: Path,
                                              case: str, args: tuple[str, ...], error: str, words: list[str]) -> None:
    name = unique("ref")
    before = _leftovers(pm_root, pm)
    answer = refused(pm("restore", "--import", str(refused_archives[case]), "--name", name, *args, "--json"), error)
    text = json.dumps(answer)
    assert all(w in text for w in words), answer
    assert _leftovers(pm_root, pm) == before


def test_volume_mapped_with_volume_flag_is_restored(refused_archives: dict[str, Path], pm: Callable[..., Any],
                                                    tmp_path: Path) -> None:
    name = unique("vol")
    ok(pm("restore", "--import", str(refused_archives["volume"]), "--name", name, "--volume", f"{tmp_path}:/data", *ACCEPT))
    try:
        ok(pm("exec", name, "sh", "-c", "echo from-container > /data/f"))
        assert (tmp_path / "f").read_text() == "from-container\n"
    finally:
        pm("rm", "-f", name)


def test_root_changes_and_deletions_are_restored(refused_archives: dict[str, Path], pm: Callable[..., Any]) -> None:
    name = unique("root")
    ok(pm("restore", "--import", str(refused_archives["plain"]), "--name", name, *ACCEPT))
    try:
        out = ok(pm("exec", name, "sh", "-c", "cat /new-file; test -e /bin/vi && echo vi-still-there; ls /bin/sh"))
        assert out.split() == ["changed", "/bin/sh"]
    finally:
        pm("rm", "-f", name)


def _as_crio(d: Path) -> None:
    """podman's export in CRI-O's layout (as tests/integration/test_interop_inspect.py relabels it):
    CRI-O's config.dump and annotations, bind.mounts, no network.status, devshm or artifacts."""
    libpod = json.loads((d / "config.dump").read_text())
    spec = json.loads((d / "spec.dump").read_text())
    config = {"id": libpod["id"], "name": "k8s_web_pod_default_0123_0", "rootfsImage": libpod["rootfsImageName"],
              "rootfsImageRef": libpod["rootfsImageID"], "rootfsImageName": libpod["rootfsImageName"], "runtime": "runc",
              "createdTime": libpod["createdTime"], "checkpointedTime": "2026-12-04T21:00:00Z",
              "restoredTime": "0001-01-01T00:00:00Z", "restored": False}
    spec["annotations"] = {"io.container.manager": "cri-o", "io.kubernetes.cri-o.Metadata": '{"name":"web"}',
                           "io.kubernetes.pod.name": "pod", "io.kubernetes.pod.namespace": "default"}
    for ns in spec["linux"]["namespaces"]:  # a pod's: the pause container's, pinned by CRI-O
        if ns["type"] in ("ipc", "uts"):
            ns["path"] = f"/var/run/{ns['type']}ns/0123-pod"
    binds = [{"source": m["source"], "destination": m["destination"], "file_type": "file", "permissions": 0o644}
             for m in spec["mounts"] if m["type"] == "bind" and m["destination"] != "/dev/shm"]
    (d / "config.dump").write_text(json.dumps(config))
    (d / "spec.dump").write_text(json.dumps(spec))
    (d / "bind.mounts").write_text(json.dumps(binds))
    for gone in ("network.status", "devshm-checkpoint.tar", "ctr.log"):
        (d / gone).unlink(missing_ok=True)
    shutil.rmtree(d / "artifacts", ignore_errors=True)


def test_crio_layout_is_restored_too(refused_archives: dict[str, Path], pm: Callable[..., Any], tmp_path: Path) -> None:
    archive = _repack(refused_archives["plain"], tmp_path / "crio.tar.zst", _as_crio)
    name = unique("crio")
    info = json.loads(ok(pm("restore", "--import", str(archive), "--name", name, *ACCEPT, "--json")))["container"]
    try:
        assert info["state"]["status"] == "running" and info["spec"]["image"] == IMAGE
        assert ok(pm("exec", name, "cat", "/new-file")) == "changed\n"
    finally:
        pm("rm", "-f", name)


def test_pull_fetches_the_image_the_archive_names(podman: PodmanStore, pm: Callable[..., Any], pm_root: Path, tmp_path: Path) -> None:
    """podman's image pushed to a real local registry (docker-registry) and run from there; the
    export names it; pymigrate does not have it: refused without --pull, pulled and restored with it."""
    from tests.integration.test_image_registry import start_registry

    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        pytest.skip("needs docker-registry and skopeo")
    reg = start_registry(tmp_path / "registry")
    ref = f"{reg.address}/pmi/pulled-{unique('p')}:1"
    name = unique("pull")
    try:
        podman("push", "--tls-verify=false", "localhost/pmt-memhog:1", ref)
        podman("tag", "localhost/pmt-memhog:1", ref)
        ctr = unique("pod")
        podman.start(ctr, ref, "sh", "-c", "echo pulled > /mark; sleep 1000")
        wait_for(lambda: podman("exec", ctr, "cat", "/mark", check=False) == "pulled", 30, "the container's file")
        archive = _export(podman, ctr, tmp_path / "pulled.tar.zst")
        podman("rm", "-f", ctr)
        refused(pm("restore", "--import", str(archive), "--name", name, *ACCEPT, "--json"), "ImageNotFound")
        ok(pm("restore", "--import", str(archive), "--name", name, "--pull", "--tls-verify=false", *ACCEPT))
        assert ok(pm("exec", name, "cat", "/mark")) == "pulled\n"
        info = json.loads(ok(pm("inspect", name)))[0]
        assert info["spec"]["image"] != IMAGE  # the pulled one, not the image imported by name before
    finally:
        pm("rm", "-f", name)
        reg.stop()


def test_imported_container_moves_on_to_another_host(podman: PodmanStore, make_hosts, tmp_path: Path) -> None:  # noqa: ANN001
    """podman -> pymigrate on host A -> host B. A live migration is refused by B (a peer's
    container may only bring B's default seccomp profile; podman's filter was accepted on A only),
    and A keeps it running; pymigrate's own export from A restored on B with the same acceptance
    carries the engine's binds in the spec, B maps them onto its own files and cgroups, and the
    count goes on across podman, A and B."""
    from tests.integration.migrate_helpers import leftovers, start_tcp_daemons

    ctr = unique("pod")
    podman.start(ctr, "localhost/pmt-memhog:1", "sh", "-c", COUNTER)
    wait_for(lambda: len(_numbers(podman("logs", ctr))) >= 5, 30, "podman's counter")
    archive = _export(podman, ctr, tmp_path / "mig.tar.zst")
    last = _numbers(podman("logs", ctr))[-1]
    podman("rm", "-f", ctr)
    tar = static_workload_tar(tmp_path, "memhog")
    a, b = make_hosts(2)
    addr = start_tcp_daemons([a, b])
    name = unique("mig")

    def counts(host) -> list[int]:  # noqa: ANN001
        return _numbers(host.cli(["logs", name]).stdout.decode())

    for host in (a, b):
        assert host.cli(["image", "import", IMAGE, str(tar)]).returncode == 0
    r = a.cli(["restore", "--import", str(archive), "--name", name, *ACCEPT])
    assert r.returncode == 0, r.stderr.decode()
    wait_for(lambda: len(counts(a)) >= 3, 30, "the count on A")
    r = a.cli(["migrate", name, addr["b"], "--insecure", "--json"])
    assert r.returncode != 0 and "seccomp" in r.stdout.decode() + r.stderr.decode()
    seen = len(counts(a))
    wait_for(lambda: len(counts(a)) >= seen + 3, 30, "the count on A after the refused migration")

    export = tmp_path / "moved.pma"
    r = a.cli(["checkpoint", name, "--export", str(export)])
    assert r.returncode == 0, r.stderr.decode()
    r = b.cli(["restore", "--import", str(export), *ACCEPT])
    assert r.returncode == 0, r.stderr.decode()
    seen = len(counts(b))
    wait_for(lambda: len(counts(b)) >= seen + 5, 30, "the count on B")
    out = counts(b)
    assert out == list(range(last + 1, last + 1 + len(out))), "the count restarted or skipped across podman, A and B"
    info = json.loads(b.cli(["inspect", name]).stdout)[0]
    assert info["state"]["status"] == "running" and "/etc/hosts" in info["spec"]["engine_mounts"]
    assert b.cli(["rm", "-f", name]).returncode == 0 and a.cli(["rm", "-f", name]).returncode == 0
    assert leftovers(a) == [] and leftovers(b) == []


def test_pymigrate_export_in_podman_layout_comes_back(podman: PodmanStore, pm: Callable[..., Any], tmp_path: Path) -> None:
    """pymigrate -> podman's layout (checkpoint --export --format podman) -> restore --import: the
    images hold pymigrate's own seccomp filter and log files, so no acceptance is needed and the
    log runs on from 0."""
    saved = tmp_path / "saved.tar"
    tmp = unique("mk")  # an image of its own tree: the flat one imported by name has no config digest
    podman("run", "--name", tmp, *ULIMITS, "localhost/pmt-memhog:1", "touch", "/round-trip")
    podman("commit", "-q", tmp, "localhost/pmt-rt:1")
    podman("rm", tmp)
    podman("save", "-o", str(saved), "localhost/pmt-rt:1")
    loaded = f"{unique('ld')}:1"
    ok(pm("image", "load", "--name", loaded, str(saved)))  # with its config digest: podman's image id
    name = unique("rt")
    ok(pm("run", "-d", "--name", name, loaded, "sh", "-c", "i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done"))
    try:
        wait_for(lambda: len(_logs(pm, name)) >= 5, 30, "the counter")
        ok(pm("checkpoint", name, "--export", str(tmp_path / "rt.tar.zst"), "--format", "podman"))
        ok(pm("rm", "-f", name))
        ok(pm("restore", "--import", str(tmp_path / "rt.tar.zst")))
        seen = len(_logs(pm, name))
        wait_for(lambda: len(_logs(pm, name)) >= seen + 5, 30, "the counter after the round trip")
        out = _logs(pm, name)
        assert out == list(range(len(out))), "the log restarted or skipped"
    finally:
        pm("rm", "-f", name)
