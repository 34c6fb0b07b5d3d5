"""The device-node policy for upper layers: whiteouts always, other devices only when the manifest
says root took the checkpoint on a trusted host (migrate.archive.store.devices_allowed)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from migrate.errors import UnsafeMember
from migrate.archive import ArchiveWriter, read_archive
from migrate.archive.store import devices_allowed


def _archive_with_device(tmp_path: Path, manifest: dict) -> bytes:
    tree = tmp_path / "tree"
    tree.mkdir()
    os.mknod(tree / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    buf = io.BytesIO()
    with ArchiveWriter(buf, compress="none") as w:
        w.write_manifest(manifest)
        w.add_tree("upper", tree)
    return buf.getvalue()


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
@pytest.mark.parametrize(
    ("devices", "allowed"),
    [
        ({"taken_as_root": True, "trusted_host": True}, True),
        ({"taken_as_root": False, "trusted_host": True}, False),
        ({"taken_as_root": True, "trusted_host": False}, False),
        (None, False),
    ],
)
def test_device_nodes_follow_the_manifest(tmp_path: Path, devices: dict | None, allowed: bool) -> None:
    manifest = {"kind": "pymigrate-checkpoint"}
    if devices is not None:
        manifest["devices"] = devices
    data = _archive_with_device(tmp_path, manifest)
    dest = tmp_path / "out"
    if allowed:
        read_archive(io.BytesIO(data), dest, allow_devices=devices_allowed)
        st = os.lstat(dest / "upper" / "null")
        assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    else:
        with pytest.raises(UnsafeMember, match="upper/null"):
            read_archive(io.BytesIO(data), dest, allow_devices=devices_allowed)


def test_policy_reads_nothing_but_the_manifest() -> None:
    assert devices_allowed({"devices": {"taken_as_root": True, "trusted_host": True}}) is True
    assert devices_allowed({}) is False
