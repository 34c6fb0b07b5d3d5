"""Checkpoint images through a real registry (Debian's docker-registry), real podman, runc and CRIU.

- podman 4.3.1 makes a checkpoint image of a counting container (``podman container checkpoint
  --create-image``, private store), skopeo copies it from podman's store to the registry, and
  pymigrate pulls it, finds podman's marks, unpacks its layer with the checkpoint archive rules
  and restores it: the counter goes on from the value it had when podman froze it.
- pymigrate makes one (``checkpoint --create-image``) on host a (a network namespace of
  tests/integration/hosts.py), pushes it with ``image push``; host b pulls and restores it with
  ``restore REF``: the same counter goes on there.
- A Kubernetes-style image (the kubelet's CRI-O archive in a scratch image with only CRI-O's
  checkpoint.name annotation, built here from podman's checkpoint relabelled) restores too.
- Refusals: an ordinary image given to ``restore REF`` (NotACheckpointImage), a checkpoint-marked
  image whose layer has a ``..`` member (the pull refuses it) or a symlink and a member outside
  the checkpoint layout (the checkpoint rules refuse it): no image, no scratch, no file left.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest

from tests.integration.cli_helpers import LOOP, ok, unique
from tests.integration.hosts import make_hosts, pymigrate_command, two_hosts  # noqa: F401 (fixtures)
from tests.integration.podman_store import PodmanStore, need, podman_store
from tests.integration.test_image_registry import Registry, start_registry

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "busybox", "criu")]

REPO = Path(__file__).resolve().parents[2]
PM = Callable[..., subprocess.CompletedProcess]
CRIO_NAME = "io.kubernetes.cri-o.annotations.checkpoint.name"
PODMAN_NAME = "io.podman.annotations.checkpoint.name"


def _json(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stdout.decode(errors='replace')} {r.stderr.decode(errors='replace')}"
    return json.loads(r.stdout)


def _number(read: Callable[[], str]) -> int:
    """The counter file's value: ``echo $i > /tmp/cnt`` truncates before it writes, so a read may
    fall between the two and see nothing; read again then."""
    deadline = time.monotonic() + 5
    while not (text := read().strip()):
        assert time.monotonic() < deadline, "the counter file stays empty"
        time.sleep(0.02)
    return int(text)


def _counter(pm: PM, name: str) -> int:
    return _number(lambda: ok(pm("exec", name, "cat", "/tmp/cnt")))


def _counts_on_from(read: Callable[[], int], frozen_at: int) -> None:
    """The restored counter starts at (or just past) ``frozen_at`` and keeps counting: a fresh
    start would begin at 1."""
    first = read()
    assert first >= frozen_at, f"the counter restarted: {first} < {frozen_at} (the value at the checkpoint)"
    deadline = time.monotonic() + 10
    while read() <= first:
        assert time.monotonic() < deadline, f"the restored counter stays at {first}"
        time.sleep(0.1)


def _restored_counting_on(pm: PM, ref: str, name: str, frozen_at: int) -> None:
    """``restore REF --name NAME`` from the test registry, podman's seccomp choice accepted: the
    counter goes on from ``frozen_at``."""
    restored = _json(pm("restore", ref, "--tls-verify=false", "--name", name, "--security-opt", "seccomp=unconfined",
                        "--json", timeout=300))
    assert restored["container"]["spec"]["name"] == name
    _counts_on_from(lambda: _counter(pm, name), frozen_at)


def _nothing_left(pm: PM, pm_root: Path, names_before: set[str]) -> None:
    names = {i["name"] for i in json.loads(ok(pm("image", "ls", "--json")))}
    assert names == names_before, f"images left behind: {names - names_before}"
    leftovers = [p.name for p in (pm_root / "tmp").iterdir() if p.name.startswith(("pull-", "image-", "layer-", "blob-"))]
    assert not leftovers, f"scratch left behind: {leftovers}"
    assert not list(pm_root.rglob("evil*")), "a member of the hostile layer was written"


# --- a registry and podman -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("ckpt-registry"))
    try:
        yield reg
    finally:
        reg.stop()


@dataclass
class PodmanImage:
    podman: PodmanStore  # its private store holds the base image localhost/pmt-base:1
    ref: str  # podman's checkpoint image in the registry
    frozen_at: int  # the counter's value in that checkpoint


@pytest.fixture(scope="module")
def podman_image(registry: Registry, pm_root: Path) -> Iterator[PodmanImage]:
    """A podman checkpoint image of a counting container, in the registry. The base image is
    loaded into pymigrate too (as pmt-base:1)."""
    need("skopeo")
    with podman_store("pmc-") as podman:
        base = podman.busybox_tar()
        # one file more than pymigrate's busybox: a tree of the same digest would be stored once,
        # flat, and podman's layout names the image by its config digest
        with tarfile.open(base, "a") as tar:
            marker = tarfile.TarInfo("etc/pmt-base")
            marker.size, marker.mode = 3, 0o644
            tar.addfile(marker, io.BytesIO(b"pm\n"))
        podman("import", str(base), "localhost/pmt-base:1")
        podman.start("ctr", "localhost/pmt-base:1", "sh", "-c", LOOP)
        time.sleep(1.5)
        podman("container", "checkpoint", "--create-image", "localhost/ckpt-ctr:1", "ctr")
        mount = Path(podman("mount", "ctr"))  # the stopped container's root: the value CRIU froze
        # empty only if the freeze fell between the shell's truncate and write (rare): 0 then
        frozen_at = int((mount / "tmp/cnt").read_text().strip() or 0)
        podman("umount", "ctr")
        ref = f"{registry.address}/podman/ckpt-ctr:1"
        podman.copy_out("localhost/ckpt-ctr:1", f"docker://{ref}", "--dest-tls-verify=false")
        # the base as podman has it (an OCI archive keeps its config, whose digest is podman's image id)
        podman("save", "--format", "oci-archive", "-o", str(podman.work / "base-oci.tar"), "localhost/pmt-base:1")
        ok(subprocess.run([*pymigrate_command(), "--root", str(pm_root), "image", "load", str(podman.work / "base-oci.tar"),
                           "--name", "pmt-base:1"], capture_output=True, timeout=120, cwd=REPO))
        yield PodmanImage(podman, ref, frozen_at)


# --- podman's image in pymigrate ---------------------------------------------------------------


def test_podman_checkpoint_image_is_pulled_marked_and_unpacked(podman_image: PodmanImage, pm_root: Path) -> None:
    """The image side alone: pulled by reference, podman's marks kept, its layer read as podman's
    checkpoint layout by the foreign reader."""
    from migrate.interop.checkpoint_image import open_checkpoint_image
    from runtime.config import Paths
    from runtime.image_store import ImageStore
    from runtime.registry import RegistryOptions

    ref = podman_image.ref
    store = ImageStore(Paths(pm_root))
    with open_checkpoint_image(store, ref, options=RegistryOptions(tls_verify=False)) as fc:
        assert fc.engine == "podman" and fc.container_name == "ctr"
        assert fc.image_name == "localhost/pmt-base:1"
        assert (fc.root / "checkpoint" / "inventory.img").is_file()
        scratch = fc.root.parent
    assert not scratch.exists(), "the unpacked layer outlived its use"
    marks = store.annotations("ckpt-ctr:1")
    assert marks[PODMAN_NAME] == "ctr" and marks["io.podman.annotations.checkpoint.runtime.name"] == "runc"
    assert not [i.name for i in store.list() if i.name.startswith("pm-ckpt-pull-")]
    store.remove("ckpt-ctr:1")


def test_podman_checkpoint_image_restored_by_pymigrate_counts_on(podman_image: PodmanImage, pm: PM) -> None:
    pytest.importorskip("migrate.interop.podman_import", reason="the foreign import (issue 16, helper B) is not here")
    ref, frozen_at = podman_image.ref, podman_image.frozen_at
    name = unique("from-podman")
    try:
        _restored_counting_on(pm, ref, name, frozen_at)
    finally:
        pm("rm", "-f", name)
        pm("image", "rm", "ckpt-ctr:1")


def _kubelet_layout(podman_dir: Path) -> None:
    """podman's checkpoint directory in the layout of a kubelet/CRI-O checkpoint archive (the
    schema checkpointctl documents): CRI-O's config.dump and spec annotations, bind.mounts, no
    network.status or podman extras."""
    libpod = json.loads((podman_dir / "config.dump").read_text())
    spec = json.loads((podman_dir / "spec.dump").read_text())
    (podman_dir / "config.dump").write_text(json.dumps({
        "id": libpod["id"], "name": "k8s_counter_pod_default_0", "rootfsImage": libpod["rootfsImageName"],
        "rootfsImageRef": libpod["rootfsImageID"], "rootfsImageName": libpod["rootfsImageName"], "runtime": "runc",
        "createdTime": libpod["createdTime"], "checkpointedTime": "2026-12-04T21:00:00Z"}))
    spec["annotations"] = {"io.container.manager": "cri-o", "io.kubernetes.cri-o.Metadata": '{"name":"counter"}',
                           "io.kubernetes.pod.name": "pod", "io.kubernetes.pod.namespace": "default"}
    (podman_dir / "spec.dump").write_text(json.dumps(spec))
    (podman_dir / "bind.mounts").write_text(json.dumps([
        {"source": m["source"], "destination": m["destination"], "file_type": "file", "permissions": 0o644}
        for m in spec["mounts"] if m["type"] == "bind" and m["destination"] != "/dev/shm"]))
    for gone in ("network.status", "devshm-checkpoint.tar", "ctr.log"):
        (podman_dir / gone).unlink(missing_ok=True)
    shutil.rmtree(podman_dir / "artifacts", ignore_errors=True)


def test_kubernetes_style_checkpoint_image_is_restored(podman_image: PodmanImage, registry: Registry, pm: PM,
                                                       pm_root: Path, tmp_path: Path) -> None:
    """What Kubernetes users push (the kubelet's archive added to a scratch image carrying only
    CRI-O's checkpoint.name annotation): told by that mark, read as CRI-O's layout, counting on."""
    from migrate.interop.checkpoint_image import open_checkpoint_image
    from migrate.interop.checkpoint_image_layout import write_layout
    from runtime.config import Paths
    from runtime.image_store import ImageStore
    from runtime.registry import RegistryOptions

    ref, frozen_at = podman_image.ref, podman_image.frozen_at
    with open_checkpoint_image(ImageStore(Paths(pm_root)), ref, options=RegistryOptions(tls_verify=False)) as fc:
        shutil.copytree(fc.root, tmp_path / "ckpt")
    _kubelet_layout(tmp_path / "ckpt")
    write_layout(tmp_path / "ckpt", tmp_path / "oci", "1", {CRIO_NAME: "counter"})
    k8s_ref = f"{registry.address}/k8s/counter:1"
    r = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'oci'}:1", f"docker://{k8s_ref}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    name = unique("from-k8s")
    try:
        with open_checkpoint_image(ImageStore(Paths(pm_root)), k8s_ref, options=RegistryOptions(tls_verify=False)) as fc:
            assert (fc.engine, fc.container_name) == ("cri-o", "counter")  # pulled and kept: restore finds it here
        _restored_counting_on(pm, k8s_ref, name, frozen_at)
    finally:
        pm("rm", "-f", name)
        pm("image", "rm", "counter:1")
        pm("image", "rm", "ckpt-ctr:1")


def test_podman_restores_a_pymigrate_checkpoint_image(podman_image: PodmanImage, registry: Registry, pm: PM,
                                                      pm_root: Path) -> None:
    """``podman container restore IMAGE`` of pymigrate's --create-image: podman takes it for a
    checkpoint image (runtime.name runc, its own) and its counter goes on in podman."""
    podman = podman_image.podman
    name, copy = unique("to-podman"), unique("in-podman")
    ref = f"{registry.address}/pm/{name}:1"
    checkpoint_id = ""
    # podman's runc restores the rlimits as dumped; raising one needs CAP_SYS_RESOURCE, absent here
    limited = ["prlimit", "--nproc=4096:4096", "--nofile=1024:1024", *pymigrate_command(), "--root", str(pm_root)]
    try:
        ok(subprocess.run([*limited, "run", "-d", "--name", name, "--network", "none", "pmt-base:1", "sh", "-c", LOOP],
                          capture_output=True, timeout=120, cwd=REPO))
        time.sleep(2.0)
        counted = _counter(pm, name)
        checkpoint_id = _json(pm("checkpoint", name, "--create-image", ref, "--json", timeout=300))["checkpoint_id"]
        ok(pm("image", "push", f"{name}:1", ref, "--tls-verify=false", timeout=300))
        podman("pull", "--tls-verify=false", ref)
        podman("container", "restore", "--name", copy, ref)
        _counts_on_from(lambda: _number(lambda: podman("exec", copy, "cat", "/tmp/cnt")), counted)
    finally:
        podman("rm", "-f", copy, check=False)
        podman("rmi", "-f", ref, check=False)
        pm("rm", "-f", name)
        pm("image", "rm", f"{name}:1")
        if checkpoint_id:
            pm("checkpoint", "rm", checkpoint_id)


# --- pymigrate's image, pushed, restored on another host ---------------------------------------


def test_create_image_push_and_restore_on_a_second_host(two_hosts, tmp_path_factory: pytest.TempPathFactory) -> None:  # noqa: ANN001
    pytest.importorskip("migrate.interop.podman_import", reason="the foreign import (issue 16, helper B) is not here")
    a, b = two_hosts[0], two_hosts[1]
    reg = start_registry(tmp_path_factory.mktemp("hosts-registry"), bind=two_hosts.gateway)
    try:
        # a base both hosts know by the same config digest (podman's layout names the image by it)
        ok(a.cli(["image", "build-busybox"], timeout=120))
        base = f"{reg.address}/base/busybox:1"
        ok(a.cli(["image", "push", "busybox", base, "--tls-verify=false"], timeout=300))
        ok(a.cli(["image", "rm", "busybox"]))  # else the pull reuses its flat tree (same digest): no config digest
        for host in (a, b):
            ok(host.cli(["image", "pull", base, "--tls-verify=false"], timeout=300))
        name = unique("imgctr")
        ok(a.cli(["run", "-d", "--name", name, "busybox:1", "sh", "-c", LOOP]))
        time.sleep(3.0)  # ~60 counts: a copy started afresh would be far below that when first read
        counted = _number(lambda: ok(a.cli(["exec", name, "cat", "/tmp/cnt"])))  # at most the frozen value
        ref = f"{reg.address}/ckpt/{name}:1"
        made = _json(a.cli(["checkpoint", name, "--create-image", ref, "--json"], timeout=300))
        assert made["image_ref"] == ref and made["image_digest"].startswith("sha256:")
        listed = {i["name"]: i for i in _json_list(a.cli(["image", "ls", "--json"]))}
        assert listed[f"{name}:1"]["digest"] == made["image_digest"] and listed[f"{name}:1"]["layers"] == 1
        ok(a.cli(["image", "push", f"{name}:1", ref, "--tls-verify=false"], timeout=300))
        manifest = _registry_manifest(reg, f"ckpt/{name}", "1")
        assert manifest["annotations"][CRIO_NAME] == name and manifest["annotations"][PODMAN_NAME] == name

        restored = _json(b.cli(["restore", ref, "--tls-verify=false", "--security-opt", "seccomp=unconfined", "--json"],
                               timeout=300))
        assert restored["container"]["spec"]["name"] == name
        _counts_on_from(lambda: _number(lambda: ok(b.cli(["exec", name, "cat", "/tmp/cnt"]))), counted)
        assert f"{name}:1" in {i["name"] for i in _json_list(b.cli(["image", "ls", "--json"]))}
    finally:
        reg.stop()


def _json_list(r: subprocess.CompletedProcess) -> list[dict]:
    return json.loads(ok(r))


def _registry_manifest(reg: Registry, repository: str, tag: str) -> dict:
    r = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reg.address}/{repository}:{tag}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# --- over --host ------------------------------------------------------------------------------


def test_create_image_over_host_is_built_by_the_daemon_and_pushed(podman_image: PodmanImage, registry: Registry,
                                                                 pm: PM, pm_root: Path) -> None:
    """The daemon checkpoints and builds the image in its own store (CheckpointRequest.create_image);
    ``image push`` over --host sends it with the marks; ``restore REF`` over --host restores it there
    (RestoreRequest.image_ref), counting on."""
    from tests.integration.cli_helpers import start_daemon, stop_daemon

    proc, sock = start_daemon(pm_root)
    name = unique("remote-img")
    checkpoint_id = ""
    try:
        def remote(*args: str) -> subprocess.CompletedProcess:
            return pm("--host", f"unix:{sock}", *args, timeout=300)

        ok(remote("run", "-d", "--name", name, "pmt-base:1", "sh", "-c", LOOP))  # podman's base: it has a config digest
        time.sleep(2.0)
        counted = _counter(pm, name)
        ref = f"{registry.address}/remote/{name}:1"
        made = _json(remote("checkpoint", name, "--create-image", ref, "--json"))
        checkpoint_id = made["checkpoint_id"]
        assert made["image_ref"] == ref and made["image_digest"].startswith("sha256:")
        listed = {i["name"]: i for i in json.loads(ok(remote("image", "ls", "--json")))}
        assert listed[f"{name}:1"]["digest"] == made["image_digest"]
        ok(remote("image", "push", f"{name}:1", ref, "--tls-verify=false"))
        marks = _registry_manifest(registry, f"remote/{name}", "1")["annotations"]
        assert marks[CRIO_NAME] == marks[PODMAN_NAME] == name
        assert marks["io.podman.annotations.checkpoint.rootfsImageName"] == "pmt-base:1"
        # RestoreRequest.image_ref: the daemon finds the image in its store (no registry flags to send)
        restored = _json(remote("restore", ref, "--name", f"{name}-2", "--json"))
        assert restored["container"]["spec"]["name"] == f"{name}-2"
        _counts_on_from(lambda: _counter(pm, f"{name}-2"), counted)
        r = remote("restore", ref, "--tls-verify=false", "--json")  # flags a RestoreRequest cannot carry
        assert r.returncode != 0 and json.loads(r.stdout)["type"] == "Unsupported", r.stdout
    finally:
        pm("rm", "-f", f"{name}-2")
        pm("rm", "-f", name)
        pm("image", "rm", f"{name}:1")
        if checkpoint_id:
            pm("checkpoint", "rm", checkpoint_id)
        stop_daemon(proc, sock)


# --- refusals ----------------------------------------------------------------------------------


def test_an_ordinary_image_is_not_restored(registry: Registry, pm: PM, pm_root: Path) -> None:
    ref = f"{registry.address}/plain/busybox:1"
    ok(pm("image", "push", "busybox", ref, "--tls-verify=false", timeout=300))
    before = {i["name"] for i in json.loads(ok(pm("image", "ls", "--json")))}
    r = pm("restore", ref, "--tls-verify=false", "--json", timeout=300)
    assert r.returncode != 0
    answer = json.loads(r.stdout)
    assert answer["type"] == "NotACheckpointImage" and "is not a checkpoint image" in answer["error"], answer
    _nothing_left(pm, pm_root, before)


def _hostile_layout(out: Path, members: list[tarfile.TarInfo]) -> Path:
    """A checkpoint-marked OCI layout whose one layer holds ``members`` (files get a few bytes)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            data = b"evil\n" if info.isfile() else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    layer = gzip.compress(raw.getvalue(), 1)
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
        return {"digest": f"sha256:{hashlib.sha256(data).hexdigest()}", "size": len(data)}

    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(raw.getvalue()).hexdigest()}"]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(json.dumps(config).encode())},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(layer)}],
                "annotations": {CRIO_NAME: "evil", PODMAN_NAME: "evil"}}
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                **put(json.dumps(manifest).encode()),
                                                "annotations": {"org.opencontainers.image.ref.name": "1"}}]}
    (out / "index.json").write_text(json.dumps(index))
    (out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return out


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize("members, refused_as", [
    ([_file("config.dump"), _file("../evil-outside")], "UnsafeArchive"),  # the pull's layer rules
    ([_file("config.dump"), _file("spec.dump"), _symlink("checkpoint", "/etc")], "UnsafeMember"),  # checkpoint rules
    ([_file("config.dump"), _file("evil-etc-passwd")], "UnsafeMember"),  # not in the checkpoint layout
], ids=["dotdot", "symlink", "unknown-member"])
def test_a_hostile_checkpoint_image_is_refused_leaving_nothing(registry: Registry, pm: PM, pm_root: Path, tmp_path: Path,
                                                              members: list[tarfile.TarInfo], refused_as: str) -> None:
    layout = _hostile_layout(tmp_path / "oci", members)
    repo = unique("hostile")
    r = subprocess.run([need("skopeo"), "copy", "--dest-tls-verify=false", f"oci:{layout}:1",
                        f"docker://{registry.address}/evil/{repo}:1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    before = {i["name"] for i in json.loads(ok(pm("image", "ls", "--json")))}
    r = pm("restore", f"{registry.address}/evil/{repo}:1", "--tls-verify=false", "--json", timeout=300)
    assert r.returncode != 0, r.stdout
    answer = json.loads(r.stdout)
    assert answer["type"] == refused_as, answer
    _nothing_left(pm, pm_root, before)


def test_create_image_refusals_come_before_the_freeze(pm: PM, tmp_path: Path) -> None:
    """An image podman's layout cannot name (a flat busybox has no config digest) and a native
    --export (no local checkpoint to build from) are refused while the container runs on."""
    name = unique("no-image")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", LOOP))
    try:
        before = {c["checkpoint_id"] for c in json.loads(ok(pm("checkpoint", "ls", "--json")))}
        r = pm("checkpoint", name, "--create-image", "localhost/ckpt/x:1", "--json", timeout=120)
        assert r.returncode != 0 and json.loads(r.stdout)["type"] == "Unsupported", r.stdout
        assert "config digest" in json.loads(r.stdout)["error"]
        r = pm("checkpoint", name, "--create-image", "localhost/ckpt/x:1", "--export", str(tmp_path / "x.pma"), "--json",
               timeout=120)
        assert r.returncode != 0 and json.loads(r.stdout)["type"] == "InvalidArgument", r.stdout
        assert not (tmp_path / "x.pma").exists()
        assert {c["checkpoint_id"] for c in json.loads(ok(pm("checkpoint", "ls", "--json")))} == before
        assert json.loads(ok(pm("inspect", name, "--json")))[0]["state"]["status"] == "running"
    finally:
        pm("rm", "-f", name)
