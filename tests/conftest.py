"""Shared test vocabulary.

``@pytest.mark.integration`` marks tests that need the real kernel; they are deselected unless
``-m integration`` (or ``-m "integration or not integration"``) is given.
``@pytest.mark.requires("root", "criu", ...)`` skips with the missing requirement named.
Known requirements: root, cgroup2 (a writable cgroup2 with cgroup.freeze), overlay, criu (CRIU >= 4
that passes ``criu check``), pycriu, netns, busybox (busybox-static installed), sshd, lazy_pages,
dirty_tracking.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest


@functools.cache
def _has_criu() -> str | None:
    criu = shutil.which("criu")
    if not criu:
        return "criu not installed (run scripts/setup.sh)"
    try:
        out = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError as exc:
        return f"criu not runnable: {exc}"
    ver = out.split("Version:")[-1].split()[0] if "Version:" in out else "0"
    major = int(ver.split(".")[0]) if ver.split(".")[0].isdigit() else 0
    if major < 4:
        return f"criu {ver} is older than 4.0 (run scripts/setup.sh)"
    return None


@functools.cache
def _has_pycriu() -> str | None:
    try:
        import pycriu  # noqa: F401
    except ImportError:
        return "pycriu not importable (run scripts/setup.sh)"
    return None


@functools.cache
def _has_cgroup2() -> str | None:
    for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (base / "cgroup.procs").exists() and (base / "cgroup.subtree_control").exists():
            return None
    return "no cgroup2 hierarchy mounted"


@functools.cache
def _has_overlay() -> str | None:
    if "overlay" in Path("/proc/filesystems").read_text():
        return None
    return "overlayfs not available in this kernel"


@functools.cache
def _has_lazy_pages() -> str | None:
    if _has_criu():
        return _has_criu()
    r = subprocess.run(["criu", "check", "--feature", "uffd-noncoop"], capture_output=True, text=True)
    return None if r.returncode == 0 else "kernel lacks non-cooperative userfaultfd (lazy pages)"


@functools.cache
def _has_dirty_tracking() -> str | None:
    if _has_criu():
        return _has_criu()
    r = subprocess.run(["criu", "check", "--feature", "mem_dirty_track"], capture_output=True, text=True)
    return None if r.returncode == 0 else "kernel lacks soft-dirty memory tracking (pre-copy)"


def _which(binary: str, hint: str):
    return lambda: None if shutil.which(binary) else f"{binary} not installed ({hint})"


REQUIREMENTS = {
    "root": lambda: None if os.geteuid() == 0 else "needs root",
    "cgroup2": _has_cgroup2,
    "overlay": _has_overlay,
    "criu": _has_criu,
    "pycriu": _has_pycriu,
    "netns": _which("ip", "apt-get install iproute2"),
    "busybox": lambda: None if Path("/bin/busybox").exists() else "busybox-static not installed (run scripts/setup.sh)",
    "sshd": _which("sshd", "apt-get install openssh-server"),
    "nftables": _which("nft", "apt-get install nftables"),
    "lazy_pages": _has_lazy_pages,
    "dirty_tracking": _has_dirty_tracking,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for mark in item.iter_markers("requires"):
            for name in mark.args:
                probe = REQUIREMENTS.get(name)
                if probe is None:
                    raise pytest.UsageError(f"unknown requirement {name!r} on {item.nodeid}")
                reason = probe()
                if reason:
                    item.add_marker(pytest.mark.skip(reason=f"requires {name}: {reason}"))
                    break
