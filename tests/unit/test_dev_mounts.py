"""runtime/dev_mounts.py without root: the entries the source checks come from the plan, the target
builds exactly those (whatever its umask), and its mounts never outlive a release or get removed
through. The check of a real container and the move itself: tests/integration/test_postcopy_dev.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runtime import dev_mounts
from runtime.dev_mounts import TargetDevMounts, _entry, dump_externals, expected_entries
from runtime.rootfs import DEVICES, MASK_DIR
from runtime.spec import ContainerSpec
from runtime.syscalls import MNT_DETACH, MS_BIND, MS_PRIVATE, MS_REC
from tests.fakes.syscalls import FakeSyscalls


def test_expected_entries_are_the_plans() -> None:
    got = expected_entries()
    for name, major, minor in DEVICES:
        assert got[name] == ("chr", 0o666, major, minor)
    assert got[os.path.basename(MASK_DIR)] == ("dir", 0o555)
    assert got["ptmx"] == ("lnk", "pts/ptmx") and got["fd"] == ("lnk", "/proc/self/fd")
    assert {n for n, e in got.items() if e == ("mount",)} == {"pts", "shm", "mqueue"}


def test_the_target_builds_what_the_source_checks(tmp_path: Path) -> None:
    sys = FakeSyscalls()
    base = tmp_path / "restore-m1-dev"
    old = os.umask(0o077)  # a daemon's umask must not show in the modes
    try:
        mounts = TargetDevMounts.made_in(sys, base)
    finally:
        os.umask(old)
    assert mounts.externals == (f"mnt[pymigrate-dev]:{base}/dev", f"mnt[pymigrate-dev-shm]:{base}/shm")
    assert sys.calls[:4] == [
        ("mount", str(base), str(base), None, MS_BIND, None),
        ("mount", None, str(base), None, MS_PRIVATE | MS_REC, None),  # nothing propagates out of it
        ("mount", "tmpfs", f"{base}/dev", "tmpfs", dev_mounts._dev_ops()[0].flags, "mode=755,size=65536k"),
        ("mount", "shm", f"{base}/shm", "tmpfs", dev_mounts._dev_ops()[1].flags, "mode=1777,size=65536k"),
    ]
    nodes = {c[1]: (stat.S_IMODE(c[2]), c[3], c[4]) for c in sys.calls if c[0] == "mknod"}
    for name, want in expected_entries().items():
        path = f"{base}/dev/{name}"
        if want[0] == "chr":
            assert nodes[path] == want[1:]
        elif want == ("mount",):
            assert os.path.isdir(path)
        else:
            assert _entry(path) == want, name


def test_a_failed_make_maps_nothing_and_leaves_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sys = FakeSyscalls(fail={"mknod": 1})
    base = tmp_path / "restore-m2-dev"
    mounts = TargetDevMounts.made_in(sys, base)
    assert mounts.externals == ()
    assert ("umount2", str(base), MNT_DETACH) in sys.calls
    assert not base.exists()
    assert "cannot make /dev" in caplog.text


def test_release_never_removes_through_a_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys = FakeSyscalls()
    mounts = TargetDevMounts.made_in(sys, tmp_path / "restore-m3-dev")
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p).endswith("/dev"))  # the detach did not take
    mounts.release()
    assert (tmp_path / "restore-m3-dev" / "dev" / os.path.basename(MASK_DIR)).is_dir()
    monkeypatch.undo()
    mounts.release()
    mounts.release()  # again: nothing
    assert not (tmp_path / "restore-m3-dev").exists()


def _spec(**changes: object) -> ContainerSpec:
    return ContainerSpec(container_id="c" * 32, name="x", image="x", image_digest="sha256:" + "0" * 64,
                         command=("true",), **changes)  # type: ignore[arg-type]


def test_dump_keeps_criu_copies_where_it_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dump_externals(2**22 + 7, _spec()) == ()  # no such process
    assert dump_externals(os.getpid(), _spec()) == ()  # its /dev is not the plan's
    monkeypatch.setattr(dev_mounts, "_mounts_below_dev", lambda pid: pytest.fail("asked"))
    for spec in (_spec(userns_size=65536, userns_base=100000), _spec(engine_mounts=("/dev/shm",))):
        assert dump_externals(os.getpid(), spec) == ()
    monkeypatch.setenv("PYMIGRATE_DEV_EXTERNAL", "0")
    assert dump_externals(os.getpid(), _spec()) == ()
