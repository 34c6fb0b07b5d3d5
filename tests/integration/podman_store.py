"""podman on a private store, for the interop tests: the host's podman storage is never touched.

Every call names its own ``--root``, ``--runroot`` and ``--tmpdir`` under one directory in /tmp
(podman refuses a runroot longer than 50 characters, so not under pytest's tmp dirs), with the
vfs driver, cgroupfs and no events. ``--tmpdir`` of its own above all: in the shared /run/libpod,
another test's store going away (``system reset``) makes this one "refresh" and re-take its
locks mid-test (seen: "acquiring lock 5 ... file exists", "/run/libpod/alive: no such file or
directory"). Containers start with the rlimits podman needs on this machine (``ULIMITS``):
without CAP_SYS_RESOURCE runc's CRIU cannot raise a hard limit above conmon's.

``podman_store(prefix)`` makes one and, on the way out, removes its containers, resets it and
deletes the directory.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")


class PodmanStore:
    """podman on the private store in ``work``; ``store(*args)`` is its output, checked."""

    def __init__(self, podman: str, work: Path) -> None:
        self.work = work
        self.storage = f"vfs@{work / 'root'}+{work / 'runroot'}"  # containers-storage:[...] for skopeo
        self.base = [podman, "--root", str(work / "root"), "--runroot", str(work / "runroot"), "--tmpdir", str(work / "tmp"),
                     "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        r = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout, cwd=self.work)
        if check:
            assert r.returncode == 0, f"podman {' '.join(args)}: exit {r.returncode}: {r.stderr}"
        return r

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        return self.run(*args, check=check, timeout=timeout).stdout.strip()

    def start(self, name: str, image: str, *cmd: str, extra: tuple[str, ...] = ()) -> None:
        """``podman run -d`` with this machine's rlimits."""
        self("run", "-d", "--name", name, *ULIMITS, *extra, image, *cmd)

    def remove(self, name: str) -> None:
        self.run("stop", "-t", "0", name, check=False)
        self.run("rm", "-f", name, check=False)

    def busybox_tar(self, name: str = "base.tar") -> Path:
        """scripts/make-busybox-image.sh's image tar in the store's directory (for ``import``)."""
        tar = self.work / name
        subprocess.run([str(REPO / "scripts/make-busybox-image.sh"), str(tar)], check=True, capture_output=True, timeout=120)
        return tar

    def copy_out(self, image: str, dest: str, *flags: str) -> None:
        """``skopeo copy`` of one of the store's images to ``dest`` (docker://..., oci:...)."""
        r = subprocess.run([need("skopeo"), "copy", *flags, f"containers-storage:[{self.storage}]{image}", dest],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr


def need(tool: str) -> str:
    """The tool's path; the test is skipped without it."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (apt-get install {tool})")
    return path


@contextlib.contextmanager
def podman_store(prefix: str) -> Iterator[PodmanStore]:
    """A private store in a new /tmp/PREFIX* directory (skips without podman); removed with all
    its containers and images at the end."""
    store = PodmanStore(need("podman"), Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")))
    try:
        yield store
    finally:
        try:
            store.run("rm", "-af", "-t", "0", check=False)
            store.run("system", "reset", "-f", check=False)
        finally:
            shutil.rmtree(store.work, ignore_errors=True)
