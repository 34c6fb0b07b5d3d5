"""``checkpoint inspect`` of checkpoints made by real podman, runc and CRIU, and by pymigrate (issue 16).

- podman 4.3.1 (private store) checkpoints a counting container with ``--export``: inspect shows
  engine podman, the container's name and id, its image's name and id (as ``podman image
  inspect`` reports them), the IP and MAC podman gave it, the CRIU images' and memory pages'
  sizes, CRIU's dump statistics and the runc-made mounts; text and ``--json``;
- the same export relabelled into CRI-O's layout (CRI-O is not installable here: its
  ``config.dump`` rebuilt from checkpointctl's schema, its ``spec.dump`` annotations, a plain tar
  with ``bind.mounts``): inspect shows engine cri-o and the Kubernetes names;
- a native ``checkpoint --export`` of a pymigrate container: its manifest's facts;
- podman's ``--create-image`` checkpoint image, sent to a real registry (docker-registry) with
  skopeo and pulled by pymigrate: ``checkpoint inspect REF`` shows podman's facts and the CRIU
  version from the image's annotation.
Nothing is left in the temporary directory by any of them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.cli_helpers import LOOP, ok, unique
from tests.integration.podman_store import PodmanStore, need, podman_store

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "busybox", "criu")]

PM = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def podman() -> Iterator[tuple[PodmanStore, dict[str, str]]]:
    """A private podman store with the busybox base image and an export of a counting container:
    (podman, facts: export path, ip, mac, container id, image id)."""
    with podman_store("pmi-") as pod:
        pod("import", str(pod.busybox_tar()), "localhost/pmi-base:1")
        pod.start("ctr1", "localhost/pmi-base:1", "sh", "-c", LOOP)
        time.sleep(1)
        facts = json.loads(pod("inspect", "ctr1"))[0]
        net = facts["NetworkSettings"]
        export = pod.work / "ctr1.tar.gz"
        pod("container", "checkpoint", "--export", str(export), "ctr1")
        yield pod, {"export": str(export), "ip": net["IPAddress"], "mac": net["MacAddress"], "id": facts["Id"],
                    "image_id": facts["Image"]}


def _scratch() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("pymigrate-inspect-*")}


def test_podman_export_inspected(podman: tuple[PodmanStore, dict[str, str]], pm: PM) -> None:
    _, facts = podman
    before = _scratch()
    assert facts["ip"] and facts["mac"], "podman gave the container no address: the test would prove nothing"
    summary = json.loads(ok(pm("checkpoint", "inspect", facts["export"], "--json")))
    assert (summary["format"], summary["engine"]) == ("podman", "podman")
    assert summary["container"] == {"name": "ctr1", "id": facts["id"]}
    assert summary["image"] == {"name": "localhost/pmi-base:1", "id": facts["image_id"]}
    assert summary["source"]["compression"] == "zstd"  # podman's default, whatever the file is called
    [iface] = summary["network"]
    assert (iface["ip"], iface["mac"]) == (facts["ip"], facts["mac"])
    assert summary["sizes"]["memory_pages_bytes"] > 0
    assert summary["sizes"]["images_bytes"] > summary["sizes"]["memory_pages_bytes"]
    assert summary["dump_stats"]["frozen_ms"] > 0 and summary["dump_stats"]["pages_written"] > 0
    assert {"/etc/hosts", "/etc/resolv.conf", "/dev/shm", "/proc"} <= {m["destination"] for m in summary["mounts"]}
    assert summary["command"][:2] == ["sh", "-c"]
    text = ok(pm("checkpoint", "inspect", facts["export"]))
    for fact in ("podman (runtime runc)", f"ctr1 ({facts['id'][:12]})", f"localhost/pmi-base:1 ({facts['image_id'][:12]})",
                 facts["ip"], facts["mac"], "/etc/resolv.conf"):
        assert fact in text, f"{fact!r} missing from:\n{text}"
    assert _scratch() == before


def _relabel_as_crio(export: Path, out: Path, work: Path) -> None:
    """podman's export rewritten in CRI-O's layout: checkpointctl's ContainerConfig as config.dump,
    CRI-O's annotations in spec.dump, bind.mounts, no network.status/artifacts/devshm, plain tar."""
    tree = work / "tree"
    tree.mkdir()
    subprocess.run(["tar", "-xf", str(export), "-C", str(tree)], check=True, timeout=60)  # tar sniffs zstd
    libpod = json.loads((tree / "config.dump").read_text())
    spec = json.loads((tree / "spec.dump").read_text())
    crio_config = {"id": libpod["id"], "name": "k8s_counter_counters_default_0123_0", "rootfsImage": libpod["rootfsImageName"],
                   "rootfsImageRef": libpod["rootfsImageID"], "rootfsImageName": libpod["rootfsImageName"],
                   "runtime": "runc", "createdTime": libpod["createdTime"], "checkpointedTime": "2026-12-04T21:00:00Z",
                   "restoredTime": "0001-01-01T00:00:00Z", "restored": False}
    spec["annotations"] = {"io.container.manager": "cri-o", "io.kubernetes.cri-o.Metadata": '{"name":"counter"}',
                           "io.kubernetes.pod.name": "counters", "io.kubernetes.pod.namespace": "default",
                           "io.kubernetes.cri-o.IP.0": "10.85.0.9"}
    binds = [{"source": m["source"], "destination": m["destination"], "file_type": "file", "permissions": 0o644}
             for m in spec["mounts"] if m["type"] == "bind" and m["destination"] != "/dev/shm"]
    (tree / "config.dump").write_text(json.dumps(crio_config))
    (tree / "spec.dump").write_text(json.dumps(spec))
    (tree / "bind.mounts").write_text(json.dumps(binds))
    (tree / "dump.log").write_text("(00.000000) Version: 4.1.1 (gitid 0)\n")
    for gone in ("network.status", "devshm-checkpoint.tar", "ctr.log"):
        (tree / gone).unlink(missing_ok=True)
    shutil.rmtree(tree / "artifacts", ignore_errors=True)
    with tarfile.open(out, "w") as tar:  # CRI-O: archive.Uncompressed
        for entry in sorted(tree.iterdir()):
            tar.add(entry, arcname=entry.name)


def test_podman_export_relabelled_as_crio(podman: tuple[PodmanStore, dict[str, str]], pm: PM, tmp_path: Path) -> None:
    _, facts = podman
    archive = tmp_path / "checkpoint-counters_default-counter.tar"
    _relabel_as_crio(Path(facts["export"]), archive, tmp_path)
    summary = json.loads(ok(pm("checkpoint", "inspect", str(archive), "--json")))
    assert (summary["engine"], summary["container"]["name"]) == ("cri-o", "counter")
    assert summary["image"] == {"name": "localhost/pmi-base:1", "id": facts["image_id"]}
    assert summary["pod"] == {"name": "counters", "namespace": "default"}
    assert summary["network"][0]["ip"] == "10.85.0.9" and summary["criu_version"] == "4.1.1"
    assert summary["source"]["compression"] == "none"
    assert {b["destination"] for b in summary["bind_mounts"]} >= {"/etc/hosts", "/etc/resolv.conf"}
    from migrate.interop.foreign import extract_foreign

    fc = extract_foreign(archive, tmp_path / "unpacked")  # the import side reads it whole, too
    assert fc.engine == "cri-o" and fc.has_rootfs_diff and (fc.root / "checkpoint" / "inventory.img").is_file()


def test_native_export_inspected(pm: PM, tmp_path: Path) -> None:
    name = unique("insp")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", LOOP))
    try:
        archive = tmp_path / "native.pma"
        ok(pm("checkpoint", name, "--export", str(archive), "--leave-running"))
        summary = json.loads(ok(pm("checkpoint", "inspect", str(archive), "--json")))
        assert (summary["format"], summary["container"]["name"]) == ("native", name)
        assert summary["criu_version"] and summary["manifest"]["container"]["name"] == name
        assert "Engine:       pymigrate" in ok(pm("checkpoint", "inspect", str(archive)))
    finally:
        pm("rm", "-f", name)


def test_podman_checkpoint_image_inspected_by_ref(podman: tuple[PodmanStore, dict[str, str]], pm: PM,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.integration.test_image_registry import start_registry

    need("skopeo")
    pod, facts = podman
    pod.start("ctr2", "localhost/pmi-base:1", "sh", "-c", LOOP)
    time.sleep(1)
    pod("container", "checkpoint", "--create-image", "localhost/pmi-ckpt:1", "ctr2")
    registry = start_registry(tmp_path_factory.mktemp("inspect-registry"))
    try:
        ref = f"{registry.address}/podman/pmi-ckpt:1"
        pod.copy_out("localhost/pmi-ckpt:1", f"docker://{ref}", "--dest-tls-verify=false")
        ok(pm("image", "pull", ref, "--tls-verify=false"))
        summary = json.loads(ok(pm("checkpoint", "inspect", ref, "--json")))
        assert (summary["engine"], summary["container"]["name"]) == ("podman", "ctr2")
        assert summary["image"]["id"] == facts["image_id"]
        assert summary["source"]["kind"] == "image" and summary["source"]["annotations"]
        assert summary["criu_version"].startswith("4.")  # podman's criu.version annotation
        assert summary["sizes"]["memory_pages_bytes"] > 0
    finally:
        registry.stop()
