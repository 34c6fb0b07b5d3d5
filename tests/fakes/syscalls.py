"""A recording ``Syscalls``: every call is appended to ``calls`` as (name, args...) and succeeds,
unless ``fail`` maps the call name to an errno to raise."""

from __future__ import annotations

import errno as _errno
from typing import Any


class FakeSyscalls:
    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = dict(fail or {})

    def _rec(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            code = self.fail[name]
            raise OSError(code, f"{name}: {_errno.errorcode.get(code, code)}", str(args[0]) if args else None)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def mount(self, source, target, fstype, flags=0, data=None) -> None:
        self._rec("mount", source, target, fstype, flags, data)

    def umount2(self, target, flags=0) -> None:
        self._rec("umount2", target, flags)

    def pivot_root(self, new_root, put_old) -> None:
        self._rec("pivot_root", new_root, put_old)

    def unshare(self, flags) -> None:
        self._rec("unshare", flags)

    def setns(self, fd, nstype=0) -> None:
        self._rec("setns", fd, nstype)

    def sethostname(self, name) -> None:
        self._rec("sethostname", name)

    def mknod(self, path, mode, major, minor) -> None:
        self._rec("mknod", path, mode, major, minor)

    def symlink(self, target, link) -> None:
        self._rec("symlink", target, link)

    def mkdir(self, path, mode=0o755) -> None:
        self._rec("mkdir", path, mode)

    def touch(self, path, mode=0o644) -> None:
        self._rec("touch", path, mode)

    def prctl(self, option, arg2=0, arg3=0, arg4=0, arg5=0) -> int:
        self._rec("prctl", option, arg2, arg3, arg4, arg5)
        return 0

    def capset(self, effective, permitted, inheritable) -> None:
        self._rec("capset", effective, permitted, inheritable)

    def setgroups(self, gids) -> None:
        self._rec("setgroups", tuple(gids))

    def setresgid(self, gid) -> None:
        self._rec("setresgid", gid)

    def setresuid(self, uid) -> None:
        self._rec("setresuid", uid)

    def open_tree(self, path, recursive=False) -> int:
        self._rec("open_tree", path, recursive)
        return 1000 + len(self.calls)

    def move_mount(self, fd, target) -> None:
        self._rec("move_mount", fd, target)

    def close_range(self, first, last=0xFFFFFFFF, flags=0) -> None:
        self._rec("close_range", first, last, flags)
