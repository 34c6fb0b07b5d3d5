"""User namespaces (``run --userns=auto``): id ranges from a host pool, the namespace kept as a file.

A container with a user namespace sees ids 0..size-1; the host sees them as base..base+size-1,
an unprivileged range no host user owns. Pieces:

- **The pool.** Ranges of ``size`` ids (65536 by default) carved from one host-wide span: the
  ``pymigrate`` line of /etc/subuid (``pymigrate:START:COUNT``, the same span for gids), else
  1,000,000,000 + 2^28 ids. Claims are files ``/run/pymigrate/userns/<base>`` holding the state
  root and container id, made under an flock, so two state roots on one machine never hand out one
  range twice. A claim whose container record is gone is free again (a root deleted without a
  release frees its ranges, as bridge_pool does for addresses). /run is a tmpfs: after a reboot no
  container runs and the claims start empty.
- **The namespace file.** The namespace is made by a short-lived helper (runtime/ns_holder.py), the
  parent writes uid_map/gid_map (root in the parent namespace may write any mapping) and
  bind-mounts /proc/<child>/ns/user on ROOT/userns/<id>: the network namespace is made *inside*
  it (runtime._netns.create with ``userns``) so the container's root owns its network (sysfs
  mounts, ports below 1024, ping sockets) as a rootful container's does, and the shim's
  intermediate process joins it before making the other namespaces, which it then owns too.
- **The image, unshifted.** The image's layers are shared by every container: they are mounted
  into the overlay through *idmapped* mounts (mount_setattr MOUNT_ATTR_IDMAP with the container's
  namespace), so a file root owns on disk is owned by base inside the overlay, without a copy.
  The upper layer is a plain directory: what the container writes lands on disk with host-range
  ids (base+N), which is what the host sees and what ``shift_tree`` translates when a restore or
  migration gives the container a different range.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ContainerError, InvalidArgument, Unsupported

DEFAULT_SIZE = 65536
DEFAULT_START = 1_000_000_000
DEFAULT_COUNT = 1 << 28  # 4096 ranges of 65536
POOL_DIR_ENV = "PYMIGRATE_USERNS_DIR"
DEFAULT_ENV = "PYMIGRATE_USERNS"  # the host's default for run (a daemon's environment): auto or host
DEFAULT_POOL_DIR = "/run/pymigrate/userns"
SUBUID_FILE = "/etc/subuid"
SUBUID_USER = "pymigrate"
MODES = ("", "host", "auto")
CLONE_NEWUSER = 0x10000000

# new mount API (x86_64 numbers; include/uapi/asm-generic/unistd.h)
_SYS_MOUNT_SETATTR = 442  # open_tree and move_mount: runtime/syscalls.py
_AT_EMPTY_PATH = 0x1000
_MOUNT_ATTR_IDMAP = 0x00100000
_MNT_DETACH = 2
_MS_BIND = 0x1000


@dataclass(frozen=True)
class Range:
    """Container ids 0..size-1 are host ids base..base+size-1 (uids and gids alike)."""

    base: int
    size: int = DEFAULT_SIZE

    def to_host(self, inner: int) -> int:
        return self.base + inner if 0 <= inner < self.size else inner

    def map_line(self) -> str:
        return f"0 {self.base} {self.size}\n"

    def to_dict(self) -> dict[str, int]:
        return {"base": self.base, "size": self.size}


def parse_mode(text: str) -> tuple[str, int]:
    """``--userns`` → (mode, size): ``""``/``host`` (the host's ids), ``auto`` or ``auto:size=N``.

    Raises:
        InvalidArgument: anything else, naming what is accepted.
    """
    mode, _, opts = (text or "").partition(":")
    if mode in ("", "host") and not opts:
        return "", 0
    if mode == "auto":
        size = DEFAULT_SIZE
        if opts:
            key, _, value = opts.partition("=")
            if key != "size" or not value.isdigit():
                raise InvalidArgument(f"invalid --userns {text!r}: the only option of auto is size=N",
                                      hint="use --userns auto or --userns auto:size=65536")
            size = int(value)
        if not 1024 <= size <= DEFAULT_SIZE * 16 or size % 1024:
            raise InvalidArgument(f"invalid --userns {text!r}: size must be a multiple of 1024 from 1024 to {DEFAULT_SIZE * 16}",
                                  hint="the default, 65536, covers every id a Debian image uses")
        return "auto", size
    raise InvalidArgument(f"invalid --userns {text!r}: expected host or auto[:size=N]",
                          hint="--userns auto gives the container its own unprivileged id range")


def validate_spec_fields(mode: object, base: object, size: object) -> None:
    """A spec's ``userns``/``userns_base``/``userns_size`` from an untrusted manifest: shapes only
    (a restore picks its own range from its own pool).

    Raises:
        InvalidSpec: naming the field.
    """
    from runtime.errors import InvalidSpec

    if mode not in ("", "auto"):
        raise InvalidSpec("userns", f"invalid userns {mode!r}: expected \"\" or \"auto\"")
    for name, value in (("userns_base", base), ("userns_size", size)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
            raise InvalidSpec(name, f"invalid {name} {value!r}: expected an id from 0 to 4294967295")
    if (mode == "auto") != bool(size) or (size and (size % 1024 or size > DEFAULT_SIZE * 16)):  # type: ignore[operator]
        raise InvalidSpec("userns_size", f"invalid userns_size {size!r} for userns {mode!r}: expected a multiple of 1024 "
                                         f"up to {DEFAULT_SIZE * 16} with auto, 0 without")


# -- the pool -----------------------------------------------------------------------------------


def pool_dir() -> Path:
    return Path(os.environ.get(POOL_DIR_ENV) or DEFAULT_POOL_DIR)


def pool_span(subuid: str | None = None) -> tuple[int, int]:
    """(start, count) of ids the pool hands out: /etc/subuid's ``pymigrate`` line, else the default."""
    try:
        with open(subuid or SUBUID_FILE, encoding="utf-8") as fh:
            for line in fh:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] == SUBUID_USER and parts[1].isdigit() and parts[2].isdigit():
                    return int(parts[1]), int(parts[2])
    except OSError:
        pass
    return DEFAULT_START, DEFAULT_COUNT


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


CLAIM_GRACE_S = 300.0  # a claim this young holds even before its container's record is written


def _claims(directory: Path) -> dict[int, dict[str, str]]:
    out: dict[int, dict[str, str]] = {}
    for entry in directory.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            data = json.loads(entry.read_text(encoding="utf-8"))
            out[int(entry.name)] = {"root": str(data["root"]), "container_id": str(data["container_id"]),
                                    "size": str(data.get("size", DEFAULT_SIZE)), "mtime": str(entry.stat().st_mtime)}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def _alive(claim: dict[str, str]) -> bool:
    """A claim holds while its container's record exists in its state root (or while it is young:
    a run or restore claims before it writes the record)."""
    if time.time() - float(claim["mtime"]) < CLAIM_GRACE_S:
        return True
    return (Path(claim["root"]) / "containers" / claim["container_id"]).is_dir()


def allocate(root: Path, container_id: str, size: int = DEFAULT_SIZE, prefer: int | None = None) -> Range:
    """Claim a free range for the container (``prefer``'s base when free); an existing claim of
    the same container in the same root is returned as it is.

    Raises:
        Unsupported: every range of the pool is held (the message says how many).
    """
    directory = pool_dir()
    start, count = pool_span()
    with _locked(directory):
        held = _claims(directory)
        for base, claim in held.items():
            if claim["root"] == str(root) and claim["container_id"] == container_id:
                return Range(base, int(claim["size"]))
        taken = [(b, int(c["size"])) for b, c in held.items() if _alive(c)]
        found = _free_base(start, count, size, taken, prefer)
        if found is None:
            raise Unsupported("--userns auto", f"no free range of {size} ids: {len(taken)} containers hold the pool "
                              f"of {count} ids from {start}",
                              hint=f"remove containers, or give pymigrate a larger span in {SUBUID_FILE} ({SUBUID_USER}:START:COUNT)")
        for stale in [b for b, c in held.items() if not _alive(c)]:
            (directory / str(stale)).unlink(missing_ok=True)
        tmp = directory / f".{found}.tmp"
        tmp.write_text(json.dumps({"root": str(root), "container_id": container_id, "size": size}), encoding="utf-8")
        os.replace(tmp, directory / str(found))
    return Range(found, size)


def _free_base(start: int, count: int, size: int, taken: list[tuple[int, int]], prefer: int | None) -> int | None:
    def free(base: int) -> bool:
        return start <= base and base + size <= start + count and all(base + size <= b or b + s <= base for b, s in taken)

    if prefer is not None and free(prefer):
        return prefer
    for base in range(start, start + count - size + 1, DEFAULT_SIZE if size <= DEFAULT_SIZE else size):
        if free(base):
            return base
    return None


def reclaim(root: Path, container_id: str, rng: Range) -> None:
    """Claim again the range a container's record names (its claim went with /run at a reboot).

    Raises:
        ContainerError: another container holds it now (the restart is refused, the record kept).
    """
    got = allocate(root, container_id, rng.size, prefer=rng.base)
    if got.base != rng.base:
        release(root, container_id)
        raise ContainerError(f"cannot start container {container_id[:12]} again: its id range {rng.base}-"
                             f"{rng.base + rng.size - 1} is held by another container",
                             hint="remove the container holding it, or checkpoint and restore this one (it gets a free range)")


def release(root: Path, container_id: str) -> None:
    """Drop the container's claim, if any. Idempotent."""
    directory = pool_dir()
    if not directory.is_dir():
        return
    with _locked(directory):
        for base, claim in _claims(directory).items():
            if claim["root"] == str(root) and claim["container_id"] == container_id:
                (directory / str(base)).unlink(missing_ok=True)


def claimed_ranges() -> list[Range]:
    """Every live claim on this machine (tests and `pymigrate check`)."""
    directory = pool_dir()
    if not directory.is_dir():
        return []
    return [Range(b, int(c["size"])) for b, c in sorted(_claims(directory).items()) if _alive(c)]


# -- the namespace file -------------------------------------------------------------------------


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, path: object = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", None if path is None else str(path))
    return result


def create(path: Path, rng: Range) -> None:
    """A new user namespace mapping 0..size-1 to ``rng``, pinned at ``path`` (a new file).

    Raises:
        ContainerError: the kernel refused (the message says which step); nothing is left behind.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    from runtime.ns_holder import holder

    libc = _libc()
    try:
        with holder(["unshare", "--user", "--"], "unshare(CLONE_NEWUSER)") as child:
            for kind in ("uid_map", "gid_map"):
                with open(f"/proc/{child}/{kind}", "w", encoding="ascii") as fh:
                    fh.write(rng.map_line())
            _check(libc.mount(f"/proc/{child}/ns/user".encode(), os.fsencode(path), None, _MS_BIND, None),
                   "bind mount the user namespace", path)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise ContainerError(f"cannot create a user namespace for ids {rng.base}-{rng.base + rng.size - 1}: "
                             f"{exc.strerror or exc}", hint="`unshare -U true` shows whether this kernel allows user namespaces") from exc


def remove(path: Path) -> None:
    """Unmount and delete a namespace file. Idempotent."""
    libc = _libc()
    if libc.umount2(os.fsencode(path), _MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        err = ctypes.get_errno()
        raise ContainerError(f"cannot unmount user namespace {path}: {os.strerror(err)}")
    path.unlink(missing_ok=True)


def mapping_of(pid: int | str) -> list[tuple[int, int, int]]:
    """/proc/PID/uid_map as (inside, outside, count) lines."""
    with open(f"/proc/{pid}/uid_map", encoding="ascii") as fh:
        return [tuple(int(x) for x in line.split()) for line in fh if line.strip()]  # type: ignore[misc]


# -- idmapped image layers ----------------------------------------------------------------------


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def idmap_tree(tree: int, userns_path: str | Path, what: object) -> None:
    """Give the detached mount tree ``tree`` (open_tree) the id mapping of ``userns_path``.

    Raises:
        Unsupported: the file system or kernel has no idmapped mounts (message names ``what``).
    """
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ns_fd = os.open(userns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP, 0, 0, ns_fd)
        _check(libc.syscall(_SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)),
               "mount_setattr(MOUNT_ATTR_IDMAP)", what)
    except OSError as exc:
        raise Unsupported("--userns auto", f"{what} cannot be mounted with the container's ids ({exc.strerror})",
                          hint="--userns auto needs idmapped mounts (Linux >= 5.12, on ext4, xfs, btrfs or tmpfs); use --userns host") from exc
    finally:
        os.close(ns_fd)


def idmapped_bind(source: Path, target: Path, userns_path: Path) -> None:
    """Mount ``source`` on ``target`` (a new empty dir) with the ids of ``userns_path``'s mapping:
    host id N shows as base+N (the image's root files belong to the container's root).

    Raises:
        Unsupported: the file system or kernel has no idmapped mounts (message names it).
    """
    from runtime.syscalls import LINUX

    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    tree = -1
    try:
        tree = LINUX.open_tree(str(source))
        idmap_tree(tree, userns_path, f"image layer {source}")
        LINUX.move_mount(tree, str(target))
    except OSError as exc:
        raise Unsupported("--userns auto", f"image layer {source} cannot be mounted with the container's ids ({exc.strerror})",
                          hint="--userns auto needs idmapped mounts (Linux >= 5.12, on ext4, xfs, btrfs or tmpfs); use --userns host") from exc
    finally:
        if tree >= 0:
            os.close(tree)


def detach(target: Path) -> None:
    """Lazily unmount an idmapped layer (the overlay keeps its own reference) and drop its dir."""
    libc = _libc()
    libc.umount2(os.fsencode(target), _MNT_DETACH)
    with contextlib.suppress(OSError):
        target.rmdir()


# -- ownership ----------------------------------------------------------------------------------


def own(path: Path, rng: Range) -> None:
    """chown ``path`` (not following a symlink) from host ids to the range: N -> base+N."""
    st = os.lstat(path)
    os.lchown(path, rng.to_host(st.st_uid), rng.to_host(st.st_gid))
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))  # chown clears set-id bits; keep what was asked


def shift_tree(top: Path, old: Range | None, new: Range | None) -> int:
    """Move every id of ``old``'s range under ``top`` to ``new``'s (None: the host's own ids), in
    place, never following symlinks or leaving the file system; the number of entries changed.

    A restore or migration calls it on the upper layer (and named volumes) when the container
    gets a different range than it had. Ids outside ``old`` stay as they are.
    """
    if old == new:
        return 0
    dev = os.lstat(top).st_dev
    changed = 0
    stack = [top]
    while stack:
        current = stack.pop()
        st = os.lstat(current)
        uid, gid = _moved(st.st_uid, old, new), _moved(st.st_gid, old, new)
        if (uid, gid) != (st.st_uid, st.st_gid):
            os.lchown(current, uid, gid)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(current, stat.S_IMODE(st.st_mode))  # chown cleared set-id bits
            changed += 1
        if stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
            with os.scandir(current) as it:
                stack.extend(Path(e.path) for e in it)
    return changed


def _moved(value: int, old: Range | None, new: Range | None) -> int:
    inner = value - old.base if old is not None and old.base <= value < old.base + old.size else (value if old is None else None)
    if inner is None:
        return value
    if new is None:
        return inner
    return new.base + inner if inner < new.size else value
