"""podman's checkpoints restored over ``--host`` (issue 16): real podman 4, runc, CRIU and a real daemon.

- ``pymigrate --host unix:SOCK restore --import FILE --security-opt seccomp=unconfined`` of a podman
  ``--export`` archive: the caller unpacks it by the archive rules, sends it as a temporary
  checkpoint image (LoadImage) and the daemon restores it by ``RestoreRequest.image_ref`` with the
  seccomp choice of ``RestoreRequest.seccomp`` (migrate/interop/remote_import.py); the counter goes
  on from the value podman froze, and the temporary image is gone afterwards.
- Without the flag podman's seccomp filter is refused by the daemon's policy and the refusal arrives
  typed (InvalidSpec) over gRPC: no container, no temporary image, no scratch is left.
- ``restore REF --security-opt seccomp=unconfined`` over ``--host`` of podman's ``--create-image``
  image (copied from podman's store with skopeo, loaded on the daemon with ``image load``).

podman runs on a private store (tests/integration/podman_store.py), removed at the end.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.cli_helpers import LOOP, ok, refused, start_daemon, stop_daemon, unique
from tests.integration.podman_store import PodmanStore, need, podman_store

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns", "criu")]

REPO = Path(__file__).resolve().parents[2]
PM = Callable[..., subprocess.CompletedProcess]
ACCEPT = ("--security-opt", "seccomp=unconfined")
TEMPORARY = "pm-ckpt-import-"  # migrate/interop/remote_import.py TEMPORARY_PREFIX


def _checkpointed(podman: PodmanStore, name: str, *how: str) -> int:
    """A counting container checkpointed by podman (``how``: --export FILE / --create-image REF);
    the counter's value CRIU froze (read from the stopped container's root)."""
    podman.start(name, "localhost/pmk-base:1", "sh", "-c", LOOP)
    time.sleep(1.5)
    podman("container", "checkpoint", *how, name)
    mount = Path(podman("mount", name))
    frozen_at = int((mount / "tmp/cnt").read_text().strip() or 0)  # empty: frozen between truncate and write
    podman("umount", name)
    podman("rm", "-f", name)
    return frozen_at


@dataclass
class Made:
    archive: Path  # podman's --export archive
    archive_at: int  # its counter value
    layout: Path  # podman's --create-image image as an OCI layout
    layout_at: int


@pytest.fixture(scope="module")
def made(pm_root: Path) -> Iterator[Made]:
    need("zstd")
    need("skopeo")
    try:
        with podman_store("pmk-") as podman:
            base = podman.busybox_tar()
            podman("import", str(base), "localhost/pmk-base:1")
            _local(pm_root, "image", "import", "pmk-base:1", str(base))  # the archive's image, by name
            archive_at = _checkpointed(podman, "ctr-export", "--export", str(podman.work / "ctr.tar.gz"))
            layout_at = _checkpointed(podman, "ctr-image", "--create-image", "localhost/ckpt-pmk:1")
            podman.copy_out("localhost/ckpt-pmk:1", f"oci:{podman.work / 'layout'}")
            yield Made(podman.work / "ctr.tar.gz", archive_at, podman.work / "layout", layout_at)
    finally:
        _local(pm_root, "image", "rm", "pmk-base:1", check=False)


def _local(pm_root: Path, *args: str, check: bool = True) -> str:
    from tests.integration.conftest import PYMIGRATE

    r = subprocess.run([*PYMIGRATE, "--root", str(pm_root), *args], capture_output=True, timeout=120, cwd=REPO)
    return ok(r) if check else ""


@pytest.fixture(scope="module")
def remote(pm_root: Path) -> Iterator[PM]:
    """``pymigrate --host unix:SOCK ...`` against a real daemon on pm_root."""
    from tests.integration.conftest import PYMIGRATE

    proc, sock = start_daemon(pm_root)

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*PYMIGRATE, "--host", f"unix:{sock}", *args], capture_output=True, timeout=timeout, cwd=REPO)

    try:
        yield run
    finally:
        stop_daemon(proc, sock)


def _counter(pm: PM, name: str) -> int:
    """The restored counter's value, read on this host (exec does not cross --host)."""
    deadline = time.monotonic() + 5
    while not (text := ok(pm("exec", name, "cat", "/tmp/cnt")).strip()):  # between the shell's truncate and write
        assert time.monotonic() < deadline, "the counter file stays empty"
        time.sleep(0.02)
    return int(text)


def _counts_on_from(pm: PM, name: str, frozen_at: int) -> None:
    """At (or past) ``frozen_at`` and counting: a fresh start would begin at 1."""
    first = _counter(pm, name)
    assert first >= frozen_at > 5, f"the counter restarted: {first} < {frozen_at} (the value at the checkpoint)"
    deadline = time.monotonic() + 10
    while _counter(pm, name) <= first:
        assert time.monotonic() < deadline, f"the restored counter stays at {first}"
        time.sleep(0.1)


def _state(remote: PM, pm_root: Path) -> dict[str, object]:
    """What a restore over --host must leave as it was (besides its own container)."""
    images = {i["name"] for i in json.loads(ok(remote("image", "ls", "--json")))}
    assert not [n for n in images if n.startswith(TEMPORARY)], f"temporary images on the daemon: {images}"
    scratch = {p.name for p in Path(tempfile.gettempdir()).glob("pymigrate-import-*")}
    return {"ps": {c["spec"]["name"] for c in json.loads(ok(remote("ps", "-a", "--json")))}, "images": images,
            "tmp": set((pm_root / "tmp").iterdir()) if (pm_root / "tmp").is_dir() else set(), "scratch": scratch}


def test_podman_export_restored_over_host_counts_on(made: Made, remote: PM, pm: PM, pm_root: Path) -> None:
    name = unique("rimp")
    before = _state(remote, pm_root)
    try:
        result = json.loads(ok(remote("restore", "--import", str(made.archive), "--name", name, *ACCEPT, "--json")))
        assert result["container"]["spec"]["name"] == name and result["container"]["state"]["status"] == "running"
        assert result["container"]["spec"]["seccomp"] == "unconfined"
        _counts_on_from(pm, name, made.archive_at)
        after = _state(remote, pm_root)
        assert after["ps"] == before["ps"] | {name}
        assert (after["images"], after["tmp"], after["scratch"]) == (before["images"], before["tmp"], before["scratch"])
    finally:
        pm("rm", "-f", name)


def test_without_seccomp_flag_the_refusal_arrives_typed_and_nothing_is_left(made: Made, remote: PM, pm_root: Path) -> None:
    name = unique("rref")
    before = _state(remote, pm_root)
    answer = refused(remote("restore", "--import", str(made.archive), "--name", name, "--json"), "InvalidSpec")
    assert "seccomp=unconfined" in json.dumps(answer), answer
    assert _state(remote, pm_root) == before


def test_podman_checkpoint_image_restored_over_host(made: Made, remote: PM, pm: PM, pm_root: Path) -> None:
    name = unique("rref-img")
    ok(remote("image", "load", str(made.layout), "--name", "ckpt-pmk:1"))
    try:
        # the same image without the flag: refused by the daemon's policy, typed, nothing restored
        answer = refused(remote("restore", "ckpt-pmk:1", "--name", name, "--json"), "InvalidSpec")
        assert "seccomp" in json.dumps(answer), answer
        result = json.loads(ok(remote("restore", "ckpt-pmk:1", "--name", name, *ACCEPT, "--json")))
        assert result["container"]["spec"]["name"] == name
        _counts_on_from(pm, name, made.layout_at)
    finally:
        pm("rm", "-f", name)
        pm("image", "rm", "ckpt-pmk:1")
