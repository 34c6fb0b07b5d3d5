"""Shared fixtures for runtime integration tests (root, real kernel).

- ``pm_root``: a session-wide temporary state root with the busybox image built and its own
  bridge name and /24 subnet (so it never collides with other roots on this machine); at session
  end every container is removed, the bridge deleted, anything mounted below it unmounted.
- ``rt``: a ``runtime.Runtime`` on that root; after each test every container in the root is
  force-removed (the cleanup registry), and ``cleanup.add(callable)`` runs extra undo steps.
- ``pm``: runs the ``pymigrate`` CLI against that root in a subprocess, returns CompletedProcess.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
PYMIGRATE = [sys.executable, "-m", "migrate"]


def _can_run_runtime() -> bool:
    return os.geteuid() == 0 and Path("/bin/busybox").exists()


def _unmount_below(root: Path) -> None:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@pytest.fixture(scope="session")
def pm_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not _can_run_runtime():
        pytest.skip("runtime integration tests need root and busybox-static")
    from runtime.config import Paths
    from runtime.image_store import ImageStore
    from runtime.network import NetworkConfig, network_for

    root = Path(tmp_path_factory.mktemp("pmroot"))
    paths = Paths(root)
    paths.ensure()
    ImageStore(paths).build_busybox("busybox")
    tag = secrets.token_hex(3)
    subnet = f"10.{100 + secrets.randbelow(150)}.{secrets.randbelow(256)}.0/24"
    net = network_for(paths, "bridge", NetworkConfig(bridge=f"pmt{tag}", subnet=subnet))
    probe = "0" * 32
    net.lease(probe)  # stores network.json with our bridge and subnet
    net.release(probe)
    try:
        yield root
    finally:
        from runtime.runtime import Runtime

        _remove_all(Runtime(root))
        try:
            network_for(paths, "bridge").delete_bridge()
        except Exception as exc:  # teardown: report, keep cleaning
            print(f"pm_root teardown: cannot delete bridge: {exc}", file=sys.stderr)
        _unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)


def _remove_all(rt) -> None:  # noqa: ANN001
    for info in rt.list(all=True):
        try:
            rt.remove(info.spec.container_id, force=True)
        except Exception as exc:  # teardown: report, keep cleaning
            print(f"cleanup: cannot remove {info.spec.name}: {exc}", file=sys.stderr)


class Cleanup:
    """Undo steps run after the test, last added first."""

    def __init__(self) -> None:
        self.steps: list[Callable[[], object]] = []

    def add(self, step: Callable[[], object]) -> None:
        self.steps.append(step)

    def run(self) -> None:
        while self.steps:
            step = self.steps.pop()
            try:
                step()
            except Exception as exc:  # teardown: report, keep cleaning
                print(f"cleanup step failed: {exc}", file=sys.stderr)


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    c = Cleanup()
    yield c
    c.run()


@pytest.fixture
def rt(pm_root: Path, cleanup: Cleanup):  # noqa: ANN201
    from runtime.runtime import Runtime

    runtime = Runtime(pm_root)
    yield runtime
    cleanup.run()
    _remove_all(runtime)


@pytest.fixture
def pm(pm_root: Path) -> Callable[..., subprocess.CompletedProcess]:
    def run(*args: str, timeout: float = 60, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*PYMIGRATE, "--root", str(pm_root), *args],
            capture_output=True,
            timeout=timeout,
            input=input,
            cwd=REPO,
        )

    return run
