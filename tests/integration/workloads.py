"""Workloads for checkpoint/restore tests and benchmarks (root, real kernel).

- ``build_memhog(dir)``: compiles tests/workloads/memhog.c with ``gcc -O2 -static`` (it must run
  inside a busybox rootfs, which has no libc).
- ``memhog_image_tar(root, memhog, out)``: the busybox image of state root ``root`` exported as a
  tar with ``/bin/memhog`` appended; ``image import`` of the same tar gives the same digest on every
  root, so a checkpoint taken on one root restores on another.
- ``memhog_report(root, name)``: asks a running memhog (SIGUSR1 from the host to its init pid) for
  "<fnv64 of its memory> <counter>" and waits for the answer it writes into its upper layer.
- ``container_file(root, name, path)``: a path inside a running container, seen from the host
  through its merged overlay dir (only for paths on the overlay, not on /dev, /proc or /dev/shm).

Plain functions, plus pytest fixtures (``memhog_tar``, ``memhog_image``) for test modules that
import them. Nothing here is a fake: the tests that use it run real CRIU on real containers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
MEMHOG_SRC = REPO / "tests" / "workloads" / "memhog.c"
MEMHOG_IMAGE = "memhog"
MEMHOG_OUT = "/tmp/memhog.out"
_REPORT_RE = re.compile(r"^([0-9a-f]{16}) (\d+)\n$")

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.02) -> T:
    """Poll ``probe`` until it returns something truthy; AssertionError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what} (last: {last!r})")


def build_memhog(out_dir: Path) -> Path:
    """Compile the memhog workload statically into ``out_dir``; its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "memhog"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(MEMHOG_SRC)], check=True, capture_output=True, timeout=120)
    return binary


def static_workload_tar(workdir: Path, name: str) -> Path:
    """busybox (scripts/make-busybox-image.sh) with tests/workloads/NAME.c compiled statically to
    /bin/NAME, as a plain tar for ``image import`` (owners 0:0)."""
    tar, stage = workdir / f"{name}.tar", workdir / f"{name}-stage"
    (stage / "bin").mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O2", "-static", "-o", str(stage / "bin" / name), str(REPO / "tests" / "workloads" / f"{name}.c")],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([str(REPO / "scripts" / "make-busybox-image.sh"), str(tar)], check=True, capture_output=True, timeout=120)
    subprocess.run(["tar", "-rf", str(tar), "--owner=0", "--group=0", "--numeric-owner", "-C", str(stage), f"bin/{name}"],
                   check=True, capture_output=True, timeout=60)
    return tar


def memhog_image_tar(root: Path, memhog: Path, out: Path, base: str = "busybox") -> Path:
    """Image ``base`` of state root ``root`` as a plain tar, with ``/bin/memhog`` added."""
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    store = ImageStore(Paths(root))
    with open(out, "wb") as f:
        store.export_stream(base, f)
    with tarfile.open(out, "a", format=tarfile.PAX_FORMAT) as tar:
        info = tar.gettarinfo(str(memhog), arcname="bin/memhog")
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        with open(memhog, "rb") as f:
            tar.addfile(info, f)
    return out


def import_image(root: Path, name: str, tar: Path) -> str:
    """Import ``tar`` as image ``name`` into state root ``root``; its digest."""
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    paths = Paths(root)
    paths.ensure()
    return ImageStore(paths).import_tarball(name, tar).digest  # type: ignore[no-any-return]


def inspect(root: Path, name: str):  # noqa: ANN201
    from runtime.runtime import Runtime

    return Runtime(root).inspect(name)


def container_file(root: Path, name: str, path: str) -> Path:
    """``path`` inside container ``name`` as seen from the host (its merged overlay dir)."""
    info = inspect(root, name)
    return Path(info.bundle_dir) / "merged" / path.lstrip("/")


def init_pid(root: Path, name: str) -> int:
    return int(inspect(root, name).state.pid)


def read_int(path: Path) -> int | None:
    """The integer a workload keeps rewriting into ``path``; None while it is absent or mid-write."""
    try:
        text = path.read_text()
    except OSError:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def memhog_report(root: Path, name: str, timeout_s: float = 30.0) -> tuple[str, int]:
    """(checksum of memhog's memory, its counter), asked for with SIGUSR1 from the host."""
    out = container_file(root, name, MEMHOG_OUT)
    out.unlink(missing_ok=True)
    os.kill(init_pid(root, name), signal.SIGUSR1)

    def probe() -> tuple[str, int] | None:
        try:
            m = _REPORT_RE.match(out.read_text())
        except OSError:
            return None
        return (m.group(1), int(m.group(2))) if m else None

    return wait_for(probe, timeout_s, f"memhog report of {name}")


def memhog_command(size_mib: int) -> list[str]:
    return ["/bin/memhog", str(size_mib), MEMHOG_OUT]


def wait_memhog_ready(root: Path, name: str, timeout_s: float = 60.0) -> tuple[str, int]:
    """Wait until memhog has filled its memory (it answers reports only after that)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return memhog_report(root, name, timeout_s=min(5.0, max(0.5, deadline - time.monotonic())))
        except AssertionError:
            if time.monotonic() > deadline:
                raise


# -- pytest fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def memhog_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if subprocess.run(["which", "gcc"], capture_output=True).returncode != 0:
        pytest.skip("memhog workload needs gcc")
    return build_memhog(Path(tmp_path_factory.mktemp("memhog")))


@pytest.fixture(scope="session")
def memhog_tar(pm_root: Path, memhog_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """busybox + /bin/memhog as an image tar (the same bytes for every state root)."""
    return memhog_image_tar(pm_root, memhog_binary, Path(tmp_path_factory.mktemp("memhog-img")) / "memhog.tar")


@pytest.fixture(scope="session")
def memhog_image(pm_root: Path, memhog_tar: Path) -> Iterator[str]:
    """The memhog image imported into ``pm_root``; its name."""
    import_image(pm_root, MEMHOG_IMAGE, memhog_tar)
    yield MEMHOG_IMAGE
