"""Where the runtime keeps things. Every root is a parameter; the defaults live here only.

A *state root* (``--root``, env ``PYMIGRATE_ROOT``, default /var/lib/pymigrate) holds everything one
"host" owns, so several independent hosts can share one machine (the tests do this)::

    ROOT/
      images/<digest>/rootfs/         read-only lower dirs, one per image (content addressed)
      images/index.json               name -> digest
      containers/<container_id>/      config.json, state.json, upper.img + layer/{upper,work}/ (or upper/, work/), merged/, logs
      checkpoints/<checkpoint_id>/    local checkpoints (CRIU images dir + upper layer + manifest)
      network/                        ipam.json (address leases), network.json (bridge, subnet)
      netns/<container_id>            bind-mounted network namespaces
      run/                            sockets, locks
      tmp/                            scratch (imports, partial transfers); same filesystem as the rest
      cache/                          made once, reused: the empty upper-layer image template (runtime/upperfs.py)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("/var/lib/pymigrate")
ENV_ROOT = "PYMIGRATE_ROOT"

DEFAULT_BRIDGE = "pmbr0"
DEFAULT_SUBNET = "10.77.0.0/16"


def root_tag(root: Path) -> str:
    """A short, stable tag of a state root (same through symlinks), for kernel object names that
    several roots on one machine share a namespace for (cgroups, veths)."""
    import zlib

    return f"{zlib.crc32(os.path.realpath(root).encode()) & 0xFFFFFFFF:08x}"


def default_cgroup_parent(root: Path) -> str:
    """Containers of a state root live in <own cgroup>/pymigrate/<root tag>/<container id>: two
    roots on one machine (the tests' "hosts") never collide when a migrated container keeps its id."""
    return f"pymigrate/{root_tag(root)}"


def default_root() -> Path:
    value = os.environ.get(ENV_ROOT)
    return Path(value) if value else DEFAULT_ROOT


@dataclass(frozen=True)
class Paths:
    """Every path under one state root."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def containers(self) -> Path:
        return self.root / "containers"

    def container(self, container_id: str) -> Path:
        return self.containers / container_id

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, checkpoint_id: str) -> Path:
        return self.checkpoints / checkpoint_id

    @property
    def network(self) -> Path:
        return self.root / "network"

    @property
    def netns(self) -> Path:
        return self.root / "netns"

    @property
    def userns(self) -> Path:
        """User namespaces of --userns containers, pinned as files (runtime/userns.py)."""
        return self.root / "userns"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def seccomp_cache(self) -> Path:
        """Compiled seccomp filters by profile, capabilities, kernel and libseccomp version."""
        return self.root / "cache" / "seccomp"

    def ensure(self) -> None:
        for p in (self.images, self.containers, self.checkpoints, self.network, self.netns, self.run, self.tmp):
            p.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
