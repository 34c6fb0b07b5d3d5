"""A container's /dev and /dev/shm moved as CRIU external mounts instead of CRIU's tar copies.

CRIU dumps and restores every tmpfs by running ``tar`` (CRIU-NOTES.md): inside a post-copy
migration's pause that is /dev (8-12 ms each way: it has child mounts, so the dump first makes a
clean bind of it) and /dev/shm (3-4 ms each way). Yet a container's /dev nearly always holds
exactly what ``rootfs.plan`` made, and its /dev/shm nothing. Then the dump declares them external
(``dump_externals``) and the target builds the same two tmpfs mounts from the plan
(``TargetDevMounts``), which CRIU binds in their place; the masks bound from /dev stay binds of it.

What keeps it correct:
- the check runs on the frozen container, so nothing in it changes /dev afterwards;
- /dev must list exactly the plan's entries (names, types, modes, owners, device numbers, link
  targets; its own directories empty, /dev/.masked above all, whose content the masks show),
  with pts, shm and mqueue mounted on their directories and no other mount below /dev; the
  directories under those mounts cannot hold anything without CAP_SYS_ADMIN (unmounting them),
  so a container whose bounding set has it keeps CRIU's copies;
- /dev/shm must be the plan's tmpfs and empty; a file in it (POSIX shared memory) keeps the copy;
- a --userns container's /dev holds binds of the host's nodes (``rootfs.device_externals``) and
  an imported container's may hold its engine's binds: both keep CRIU's way.
A target that maps the keys but gets a dump without them restores from the images as before (CRIU
ignores an unused external). ``PYMIGRATE_DEV_EXTERNAL=0`` on the source keeps CRIU's copies.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

from runtime.fstree import remove_tree_quietly
from runtime.rootfs import MakeDir, MakeNode, Mount, Symlink, plan
from runtime.syscalls import MNT_DETACH, MS_BIND, MS_PRIVATE, MS_REC, Syscalls

log = logging.getLogger(__name__)

DEV_KEY = "pymigrate-dev"  # CRIU's external mount keys
SHM_KEY = "pymigrate-dev-shm"
CHILD_MOUNTS = ("pts", "shm", "mqueue")  # mounted on directories of /dev by the plan
CAP_SYS_ADMIN = 21


def _dev_ops() -> tuple[Mount, Mount, list[Any]]:
    """The plan's /dev tmpfs, its /dev/shm tmpfs, and what it makes in /dev (non-userns)."""
    ops = plan()
    mounts = {op.target: op for op in ops if isinstance(op, Mount)}
    made = [op for op in ops if isinstance(op, (MakeDir, MakeNode, Symlink))
            and os.path.dirname(op.path) == "/dev"]
    return mounts["/dev"], mounts["/dev/shm"], made


def expected_entries() -> dict[str, tuple[Any, ...]]:
    """name -> (kind, ...) of what the plan makes directly in /dev; the child mounts' directories
    are ("mount",): what shows there is the mounted file system."""
    out: dict[str, tuple[Any, ...]] = {}
    for op in _dev_ops()[2]:
        name = os.path.basename(op.path)
        if isinstance(op, MakeNode):
            out[name] = ("chr", op.mode, op.major, op.minor)
        elif isinstance(op, Symlink):
            out[name] = ("lnk", op.target)
        else:
            out[name] = ("mount",) if name in CHILD_MOUNTS else ("dir", op.mode)
    return out


def _entry(path: str) -> tuple[Any, ...] | None:
    st = os.lstat(path)
    if st.st_uid != 0 or st.st_gid != 0:
        return None
    if stat.S_ISCHR(st.st_mode):
        return ("chr", stat.S_IMODE(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev))
    if stat.S_ISLNK(st.st_mode):
        return ("lnk", os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return ("dir", stat.S_IMODE(st.st_mode))
    return None


def _mounts_below_dev(pid: int) -> dict[str, tuple[str, str]] | None:
    """mount point -> (fstype, source) of /dev and every mount below it; None if one point is
    mounted twice (an overmount hides what is under it)."""
    out: dict[str, tuple[str, str]] = {}
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4]
            if point != "/dev" and not point.startswith("/dev/"):
                continue
            if point in out:
                return None
            sep = fields.index("-")
            out[point] = (fields[sep + 1], fields[sep + 2])
    return out


def _has_sys_admin(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):  # what any process of the container may ever hold
                return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return True


def dump_externals(pid: int, spec: Any) -> tuple[str, ...]:
    """CRIU ``external`` entries for the frozen container of init ``pid``: its /dev, and its
    /dev/shm when empty, where they hold what the plan made (module doc); () otherwise."""
    if os.environ.get("PYMIGRATE_DEV_EXTERNAL") == "0":  # CRIU's copies (benchmarks compare both)
        return ()
    if getattr(spec, "userns_size", 0) or any(m == "/dev" or m.startswith("/dev/") for m in getattr(spec, "engine_mounts", ())):
        return ()
    try:
        mounts = _mounts_below_dev(pid)
        dev_op, shm_op, _made = _dev_ops()
        wanted = {"/dev": (dev_op.fstype, dev_op.source), "/dev/shm": (shm_op.fstype, shm_op.source)}
        if mounts is None or any(mounts.get(p) != v for p, v in wanted.items()):
            return ()
        if set(mounts) != {"/dev", *(f"/dev/{n}" for n in CHILD_MOUNTS)} or _has_sys_admin(pid):
            return ()
        root = f"/proc/{pid}/root/dev"
        expected = expected_entries()
        names = set(os.listdir(root))
        if names != set(expected) or os.listdir(f"{root}/shm"):
            return ()
        for name, want in expected.items():
            got = _entry(f"{root}/{name}")
            if got is None or (want != ("mount",) and got != want) or (want == ("mount",) and got[0] != "dir"):
                return ()
            if want[0] == "dir" and os.listdir(f"{root}/{name}"):  # the masks' empty dir, written into
                return ()
    except (OSError, ValueError, IndexError) as exc:  # the container went: CRIU's dump says why
        log.debug("pid=%d: /dev stays CRIU's to copy: %s", pid, exc)
        return ()
    return (f"mnt[/dev]:{DEV_KEY}", f"mnt[/dev/shm]:{SHM_KEY}")


class TargetDevMounts:
    """The plan's /dev and /dev/shm tmpfs mounts made below ``base`` (a scratch dir the daemon's
    sweep detaches mounts in), for CRIU to bind in place of the dumped ones.

    ``base`` is first bound on itself and made private, so the two mounts do not propagate into
    other mount namespaces (CRIU's bind of them is then private too). ``release`` detaches it all
    once CRIU restored: the container keeps its own mounts."""

    def __init__(self, sys: Syscalls, base: Path) -> None:
        self.sys = sys
        self.base = base
        self.externals: tuple[str, ...] = ()

    @classmethod
    def made_in(cls, sys: Syscalls, base: Path) -> TargetDevMounts:
        """``make`` below ``base``; where that fails, none (warned): a dump that declared /dev
        external then fails its restore naming the key, and the source resumes."""
        mounts = cls(sys, base)
        try:
            mounts.make()
        except OSError as exc:
            log.warning("%s: cannot make /dev for a restore (its dump's copy is needed): %s", base, exc)
        return mounts

    def make(self) -> None:
        dev_op, shm_op, made = _dev_ops()
        base, dev, shm = str(self.base), str(self.base / "dev"), str(self.base / "shm")
        os.makedirs(base, mode=0o700)
        self.sys.mount(base, base, None, MS_BIND)
        self.sys.mount(None, base, None, MS_PRIVATE | MS_REC)
        try:
            for path, op in ((dev, dev_op), (shm, shm_op)):
                os.mkdir(path, 0o700)
                self.sys.mount(op.source, path, op.fstype, op.flags, op.data)
            for op in made:
                path = os.path.join(dev, os.path.basename(op.path))
                if isinstance(op, MakeNode):
                    self.sys.mknod(path, stat.S_IFCHR | op.mode, op.major, op.minor)
                elif isinstance(op, Symlink):
                    os.symlink(op.target, path)
                else:  # the daemon's umask must not change it
                    os.mkdir(path)
                    os.chmod(path, op.mode)
        except BaseException:
            self.release()
            raise
        self.externals = (f"mnt[{DEV_KEY}]:{dev}", f"mnt[{SHM_KEY}]:{shm}")

    def release(self) -> None:
        """Detach the mounts and remove ``base`` (the container keeps its binds of them); again: nothing."""
        if not os.path.lexists(self.base):
            return
        try:
            self.sys.umount2(str(self.base), MNT_DETACH)
        except OSError as exc:  # not mounted: make failed before the bind
            log.debug("%s: %s", self.base, exc)
        if any(os.path.ismount(self.base / name) for name in ("dev", "shm")):  # never remove through a mount
            log.warning("%s: still mounted, left for the next start's sweep", self.base)
            return
        remove_tree_quietly(self.base)
