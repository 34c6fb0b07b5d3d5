"""A bridge's shared pool belongs to one network namespace, even when the kernel reuses the inode
number of a deleted one (runtime/bridge_pool.py). CI found it: a lab "host" made after another was
deleted got the same inode, inherited the dead host's registry and refused an address that only a
leftover state root of the dead host still listed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

LEASE = r"""
import os, sys
from pathlib import Path
from runtime._ipam import Ipam
from runtime.bridge_pool import BridgePool
from runtime.errors import ContainerExists
base, root, cid = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ipam = Ipam(root / "network", "10.9.0.0/24", "pmbr0", pool=BridgePool("pmbr0", base))
try:
    got = ipam.lease(cid, "10.9.0.2")[0]
except ContainerExists as exc:
    got = f"refused: {exc}"
print(os.stat("/proc/self/ns/net").st_ino, got)
"""


def _lease_in_new_netns(base: Path, root: Path, cid: str) -> tuple[int, str]:
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", LEASE, str(base), str(root), cid],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    return int(out[0]), out[1].strip()


def test_a_new_namespace_with_a_reused_inode_does_not_inherit_a_dead_ones_leases(tmp_path: Path) -> None:
    base = tmp_path / "bridges"
    first_inode, got = _lease_in_new_netns(base, tmp_path / "dead-host-root", "c-dead")
    assert got == "10.9.0.2"
    # the dead namespace's root stays on disk with its lease (a test or a host that never cleaned up);
    # namespaces made after it get its inode number again sooner or later (the kernel reuses them)
    for attempt in range(20):
        inode, got = _lease_in_new_netns(base, tmp_path / f"new-host-root-{attempt}", f"c-new-{attempt}")
        if inode == first_inode:
            break
    else:
        pytest.skip("the kernel did not reuse the namespace inode in 20 tries")
    assert got == "10.9.0.2", got
    assert len(list(base.iterdir())) == attempt + 2  # one registry per namespace, none shared
