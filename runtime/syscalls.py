"""Thin wrappers over the kernel calls Python 3.11 does not expose (mount, pivot_root, unshare, ...).

One wrapper per kernel call, no policy: each makes one call and, on failure, raises ``OSError``
carrying ``errno`` and the path it was about. Higher layers receive a ``Syscalls`` object, so unit
tests can pass a recorder (tests/fakes/syscalls.py) instead of touching the kernel.

Kernel facts that matter here:
- the syscall numbers below are x86_64's (pivot_root 155, capset 126, close_range 436);
  ``libc.syscall`` is used where glibc has no wrapper.
- ``capset`` takes version 3 headers (_LINUX_CAPABILITY_VERSION_3) with two 32-bit data words.
- every function here is safe to call between fork and exec (no allocation beyond ctypes', no
  imports at call time), which is where most of them run.
"""

from __future__ import annotations

import ctypes
import os
import stat
from typing import Protocol

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_STRICTATIME = 0x1000000

# umount2(2) flags
MNT_DETACH = 0x2

# clone(2)/unshare(2)/setns(2) flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# prctl(2) options
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_SYS_PIVOT_ROOT = 155
_SYS_CAPSET = 126
_SYS_CLOSE_RANGE = 436
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = 0o2000000
_AT_RECURSIVE = 0x8000
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_libc.syscall.restype = ctypes.c_long


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


class Syscalls(Protocol):
    """The kernel calls the runtime makes directly; the real one is ``LinuxSyscalls``."""

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None: ...
    def umount2(self, target: str, flags: int = 0) -> None: ...
    def pivot_root(self, new_root: str, put_old: str) -> None: ...
    def unshare(self, flags: int) -> None: ...
    def setns(self, fd: int, nstype: int = 0) -> None: ...
    def sethostname(self, name: str) -> None: ...
    def mknod(self, path: str, mode: int, major: int, minor: int) -> None: ...
    def symlink(self, target: str, link: str) -> None: ...
    def mkdir(self, path: str, mode: int = 0o755) -> None: ...
    def touch(self, path: str, mode: int = 0o644) -> None: ...
    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int: ...
    def capset(self, effective: int, permitted: int, inheritable: int) -> None: ...
    def close_range(self, first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None: ...
    def setgroups(self, gids: tuple[int, ...]) -> None: ...
    def setresgid(self, gid: int) -> None: ...
    def setresuid(self, uid: int) -> None: ...
    def open_tree(self, path: str, recursive: bool = False) -> int: ...
    def move_mount(self, fd: int, target: str) -> None: ...


class LinuxSyscalls:
    """The real kernel."""

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
        _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {fstype or ''} {source or ''}", target)

    def umount2(self, target: str, flags: int = 0) -> None:
        _check(_libc.umount2(_b(target), flags), "umount2", target)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        _check(_libc.syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), "pivot_root", new_root)

    def unshare(self, flags: int) -> None:
        _check(_libc.unshare(flags), f"unshare 0x{flags:x}")

    def setns(self, fd: int, nstype: int = 0) -> None:
        _check(_libc.setns(fd, nstype), f"setns fd {fd} type 0x{nstype:x}")

    def sethostname(self, name: str) -> None:
        raw = name.encode()
        _check(_libc.sethostname(raw, len(raw)), "sethostname", name)

    def mknod(self, path: str, mode: int, major: int, minor: int) -> None:
        os.mknod(path, mode, os.makedev(major, minor))
        # mknod(2) applies the caller's umask: set the asked mode exactly (0666 for /dev/null, as
        # runc makes it; a 0644 node cannot be written by a server that dropped root).
        os.chmod(path, stat.S_IMODE(mode))

    def symlink(self, target: str, link: str) -> None:
        os.symlink(target, link)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        os.makedirs(path, mode=mode, exist_ok=True)

    def touch(self, path: str, mode: int = 0o644) -> None:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, mode))

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl {option}")

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        for i in range(2):
            shift = 32 * i
            data[i].effective = (effective >> shift) & 0xFFFFFFFF
            data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
            data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
        _check(_libc.syscall(_SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)), "capset")

    def close_range(self, first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
        _check(_libc.syscall(_SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags)), "close_range")

    # glibc's set*id wrappers apply to every thread of the process (nptl's setxid broadcast); the
    # callers are single-threaded children between fork and exec anyway
    def setgroups(self, gids: tuple[int, ...]) -> None:
        os.setgroups(list(gids))

    def setresgid(self, gid: int) -> None:
        os.setresgid(gid, gid, gid)

    def setresuid(self, uid: int) -> None:
        os.setresuid(uid, uid, uid)

    def open_tree(self, path: str, recursive: bool = False) -> int:
        """A detached copy of the mount tree at ``path`` (a bind not yet attached), as an fd."""
        flags = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
        return _check(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, _b(path), flags), "open_tree", path)

    def move_mount(self, fd: int, target: str) -> None:
        """Attach the detached tree ``fd`` (open_tree) at ``target``."""
        _check(_libc.syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, _b(target), _MOVE_MOUNT_F_EMPTY_PATH), "move_mount", target)


LINUX = LinuxSyscalls()
