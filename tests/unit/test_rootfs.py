"""The rootfs plan and its application, without root (FakeSyscalls records the calls)."""

from __future__ import annotations

import stat

import pytest

from runtime import rootfs
from runtime.errors import MountError
from runtime.spec import Volume
from runtime.syscalls import MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT
from tests.fakes.syscalls import FakeSyscalls


def _mounts(ops):  # noqa: ANN001, ANN202
    return [op for op in ops if isinstance(op, rootfs.Mount)]


def test_plan_mounts_the_container_filesystems_in_order() -> None:
    ops = rootfs.plan()
    targets = [m.target for m in _mounts(ops)]
    assert targets == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"]
    by_target = {m.target: m for m in _mounts(ops)}
    assert by_target["/dev"].fstype == "tmpfs" and "mode=755" in by_target["/dev"].data
    assert "newinstance" in by_target["/dev/pts"].data and "ptmxmode=0666" in by_target["/dev/pts"].data
    assert by_target["/sys"].flags & MS_RDONLY
    assert "mode=1777" in by_target["/dev/shm"].data


def test_devices_are_mknod_not_host_binds() -> None:
    ops = rootfs.plan()
    nodes = {op.path: (op.major, op.minor, op.mode) for op in ops if isinstance(op, rootfs.MakeNode)}
    assert nodes == {
        "/dev/null": (1, 3, 0o666),
        "/dev/zero": (1, 5, 0o666),
        "/dev/full": (1, 7, 0o666),
        "/dev/random": (1, 8, 0o666),
        "/dev/urandom": (1, 9, 0o666),
        "/dev/tty": (5, 0, 0o666),
    }
    # no bind mount takes its source from outside the container (there are no volumes here)
    assert all(not (m.flags & MS_BIND) or m.source is None for m in _mounts(ops))
    links = {op.path: op.target for op in ops if isinstance(op, rootfs.Symlink)}
    assert links["/dev/ptmx"] == "pts/ptmx" and links["/dev/fd"] == "/proc/self/fd"


def test_masks_and_readonly_paths_follow_runc() -> None:
    ops = rootfs.plan()
    masked = {op.path for op in ops if isinstance(op, rootfs.Mask)}
    assert {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/acpi", "/proc/scsi", "/sys/firmware"} <= masked
    ro = {op.path for op in ops if isinstance(op, rootfs.ReadOnly)}
    assert ro == {"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"}
    # masks come after the /dev/null they bind
    idx_null = next(i for i, op in enumerate(ops) if isinstance(op, rootfs.MakeNode) and op.path == "/dev/null")
    assert all(i > idx_null for i, op in enumerate(ops) if isinstance(op, rootfs.Mask))


def test_volumes_are_recursive_binds_readonly_by_remount(tmp_path) -> None:  # noqa: ANN001
    src = tmp_path / "data"
    src.mkdir()
    ops = rootfs.plan((Volume(str(src), "/data", readonly=True), Volume(str(src), "/rw")))
    vol = [m for m in _mounts(ops) if m.target in ("/data", "/rw")]
    assert vol[0] == rootfs.Mount("/data", None, str(src), MS_BIND | MS_REC)
    assert vol[1].flags == MS_BIND | MS_REMOUNT | MS_RDONLY
    assert not any(m.target == "/rw" and m.flags & MS_RDONLY for m in vol)
    # volumes come before the masks, so a volume cannot unmask a path
    first_mask = next(i for i, op in enumerate(ops) if isinstance(op, rootfs.Mask))
    assert all(i < first_mask for i, op in enumerate(ops) if isinstance(op, rootfs.Mount) and op.target == "/data")


def test_read_only_binds_the_log_dir_on_itself_and_nothing_else_changes() -> None:
    plain, ro = rootfs.plan(), rootfs.plan(read_only=True)
    extra = [op for op in ro if op not in plain]
    assert extra == [rootfs.Mount("/.pymigrate", None, "/.pymigrate", MS_BIND, source_in_root=True)]
    assert len(ro) == len(plain) + 1  # the root itself is remounted by the init, after pivot_root


def test_apply_performs_the_plan_below_root(tmp_path) -> None:  # noqa: ANN001
    sys = FakeSyscalls()
    root = tmp_path / "merged"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "keys").write_text("")  # a masked file that exists
    rootfs.apply(rootfs.plan(), str(root), sys)
    mounts = [c for c in sys.calls if c[0] == "mount"]
    assert mounts[0] == ("mount", "proc", f"{root}/proc", "proc", mounts[0][4], None)
    keys = [c for c in mounts if c[2] == f"{root}/proc/keys"]
    assert keys == [("mount", f"{root}/dev/null", f"{root}/proc/keys", None, MS_BIND, None)]
    nodes = [c for c in sys.calls if c[0] == "mknod"]
    assert ("mknod", f"{root}/dev/null", stat.S_IFCHR | 0o666, 1, 3) in nodes
    # paths that do not exist here are skipped, not failed
    assert not any(c[2] == f"{root}/proc/kcore" for c in mounts)


def test_a_masked_directory_gets_the_empty_dev_dir_read_only(tmp_path) -> None:  # noqa: ANN001
    """Not a tmpfs: CRIU runs tar for every tmpfs it dumps or restores (rootfs module doc)."""
    sys = FakeSyscalls()
    root = tmp_path / "merged"
    (root / "proc" / "acpi").mkdir(parents=True)
    rootfs.apply(rootfs.plan(), str(root), sys)
    acpi = [c for c in sys.calls if c[0] == "mount" and c[2] == f"{root}/proc/acpi"]
    assert acpi[0] == ("mount", f"{root}{rootfs.MASK_DIR}", f"{root}/proc/acpi", None, MS_BIND, None)
    assert acpi[1][4] & MS_RDONLY and acpi[1][4] & MS_REMOUNT and acpi[1][4] & MS_BIND
    tmpfs = sorted(c[2] for c in sys.calls if c[0] == "mount" and c[3] == "tmpfs")
    assert tmpfs == [f"{root}/dev", f"{root}/dev/shm"]  # no tmpfs for masks: /dev/shm holds the container's data
    assert ("mkdir", f"{root}{rootfs.MASK_DIR}") in [c[:2] for c in sys.calls]


def test_apply_names_the_failing_mount(tmp_path) -> None:  # noqa: ANN001
    sys = FakeSyscalls(fail={"mount": 1})
    with pytest.raises(MountError, match="cannot set up /proc"):
        rootfs.apply(rootfs.plan(), str(tmp_path), sys)


def test_container_paths_cannot_escape_the_root() -> None:
    sys = FakeSyscalls()
    rootfs.apply([rootfs.MakeDir("/../../etc"), rootfs.MakeDir("a/../../b")], "/tmp/x", sys)
    assert [c[1] for c in sys.calls] == ["/tmp/x/etc", "/tmp/x/b"]
