"""Syscall wrappers keep errno and path; capability drop order; the fake records."""

from __future__ import annotations

import errno

import pytest

from runtime import capabilities
from runtime.syscalls import LINUX, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS
from tests.fakes.syscalls import FakeSyscalls


def test_umount_error_keeps_errno_and_path(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(OSError) as info:
        LINUX.umount2(str(tmp_path / "not-a-mount"))
    assert info.value.errno in (errno.EINVAL, errno.ENOENT, errno.EPERM)
    assert info.value.filename == str(tmp_path / "not-a-mount")


def test_setns_bad_fd() -> None:
    with pytest.raises(OSError) as info:
        LINUX.setns(987654, 0)
    assert info.value.errno == errno.EBADF


def test_drop_privileges_order_and_masks() -> None:
    sys = FakeSyscalls()
    capabilities.drop_privileges(sys, cap_last=40)
    dropped = [c[2] for c in sys.calls if c[0] == "prctl" and c[1] == PR_CAPBSET_DROP]
    assert sorted(dropped) == sorted(set(range(41)) - capabilities.DEFAULT_CAPS)
    capset = [c for c in sys.calls if c[0] == "capset"]
    assert capset == [("capset", 0xA80425FB, 0xA80425FB, 0xA80425FB)]
    assert sys.calls[-1] == ("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # last, before exec
    assert sys.names().index("capset") > max(i for i, c in enumerate(sys.calls) if c[0] == "prctl" and c[1] == PR_CAPBSET_DROP)


def test_fake_raises_configured_errno() -> None:
    sys = FakeSyscalls(fail={"pivot_root": errno.EINVAL})
    with pytest.raises(OSError) as info:
        sys.pivot_root(".", ".")
    assert info.value.errno == errno.EINVAL
