"""The container's writable layer on a file system of its own: a sparse ext4 image, loop-mounted.

Why: a program that keeps file identity (SQLite's ``unixFileHasMoved`` compares the st_ino it
cached with ``stat(path)`` before every write) must see the same inode numbers after a restore or
a migration. Files re-created from an archive get new inodes; blocks of a file system image keep
them. So each container's upper layer lives in ``<container dir>/upper.img`` (ext4, no journal,
sparse), mounted on ``<container dir>/layer`` with ``upper/`` and ``work/`` inside, and it is the
image's blocks that a checkpoint keeps and a migration moves (docs/migration.md, "file identity").

Kernel facts this relies on (measured on 6.18, see docs/migration.md):

- overlayfs with lower and upper on different file systems reports, with ``xino=on``, an upper
  file's real inode number (the upper layer has fsid 0, so no high bits are added) and one st_dev
  for every file; without xino the inode of a copied-up file changes across a remount. So the
  overlay is mounted ``xino=on`` (runtime/overlay.py). Files copied up from the image keep the
  image file's number, as before (it is the lower file's on this host).
- ext4 is made without a journal and mounted ``noinit_itable`` (no lazyinit thread writing inode
  tables behind our back while a frozen container's image is copied) and ``nobarrier``
  (``syncfs`` does not turn into an fsync of the backing file; the image needs no more
  durability than the plain upper dir it replaces). After ``syncfs`` of the inner file system
  the backing file holds every block (the loop driver completes a write once it is in the
  backing file's page cache), so a frozen container's image can be copied consistently.
- The loop device is configured with LO_FLAGS_AUTOCLEAR: unmounting the file system detaches it,
  so there is nothing to leak besides the mount itself.

An image that did not come from this host (``restore --import``) is an untrusted file-system
image; ``check_untrusted`` must pass before it is mounted (docs/security.md).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import shutil
import stat
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import MountError, Unsupported
from runtime.syscalls import MNT_DETACH, MS_NODEV, MS_NOSUID, Syscalls

log = logging.getLogger(__name__)

IMAGE_NAME = "upper.img"  # in a container's dir, a local checkpoint's dir and an archive
MOUNT_DIR = "layer"  # the image's mount point in a container's dir
UPPER = "upper"  # overlay upperdir, inside the image
WORK = "work"  # overlay workdir, inside the image

ENV_SIZE = "PYMIGRATE_UPPER_SIZE"  # bytes (suffix K/M/G/T allowed); "0" or "dir": plain directory
DEFAULT_SIZE_BYTES = 16 << 30  # sparse: costs ~4.3 MiB of metadata, not 16 GiB
MIN_SIZE_BYTES = 64 << 20
MAX_SIZE_BYTES = 16 << 40

FS_TYPE = "ext4"
MOUNT_OPTIONS = "noinit_itable,nobarrier,errors=remount-ro"
# Exactly the features ``create`` gives an image: an imported image with any other is refused.
FEATURES = frozenset({
    "ext_attr", "resize_inode", "dir_index", "filetype", "extent", "64bit", "flex_bg", "sparse_super",
    "large_file", "huge_file", "dir_nlink", "extra_isize", "metadata_csum",
})
_MKFS_ARGS = ("-q", "-F", "-t", "ext4", "-O", "^has_journal", "-E", "nodiscard,lazy_itable_init=1", "-m", "0",
              "-b", "4096")

# linux/loop.h
_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LO_FLAGS_AUTOCLEAR = 4
# struct loop_config { __u32 fd; __u32 block_size; struct loop_info64 info; __u64 __reserved[8]; }
# struct loop_info64 is 232 bytes; lo_flags sits at offset 52 in it.
_LOOP_CONFIG = struct.Struct("<II232s64s")
_LO_FLAGS_OFFSET = 52
_LOOP_GET_STATUS64 = 0x4C05  # struct loop_info64 starts with lo_device, lo_inode (u64 each)
_BLKFLSBUF = 0x1261
_SYS_CACHESTAT = 451  # the same number on every architecture (it came after the syscall table unification)


@dataclass(frozen=True)
class Layout:
    """Where a container's writable layer is: on an image (``image`` set) or a plain directory."""

    container_dir: Path
    image: Path | None

    @classmethod
    def of(cls, container_dir: Path) -> Layout:
        """The layout a container's dir has now (an image file present or not)."""
        image = container_dir / IMAGE_NAME
        return cls(container_dir, image if is_image_file(image) else None)

    @property
    def mountpoint(self) -> Path:
        return self.container_dir / MOUNT_DIR

    @property
    def upper(self) -> Path:
        return self.mountpoint / UPPER if self.image else self.container_dir / UPPER

    @property
    def work(self) -> Path:
        return self.mountpoint / WORK if self.image else self.container_dir / WORK


def configured_size() -> int:
    """The image size for new containers (env PYMIGRATE_UPPER_SIZE); 0: a plain directory.

    Raises:
        ValueError: an unreadable value or one out of range.
    """
    raw = os.environ.get(ENV_SIZE, "").strip()
    if not raw:
        return DEFAULT_SIZE_BYTES
    if raw.lower() in ("0", "dir"):
        return 0
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}.get(raw[-1].lower(), 1)
    number = raw[:-1] if scale > 1 else raw
    if not number.isdigit():
        raise ValueError(f"{ENV_SIZE}={raw!r}: expected bytes with an optional K/M/G/T suffix, or 0")
    size = int(number) * scale
    if not MIN_SIZE_BYTES <= size <= MAX_SIZE_BYTES:
        raise ValueError(f"{ENV_SIZE}={raw!r}: expected between {MIN_SIZE_BYTES >> 20} MiB and {MAX_SIZE_BYTES >> 40} TiB")
    return size


def is_image_file(path: Path) -> bool:
    """Whether ``path`` itself (not what a symlink names) is a regular file: an archive could
    carry a symlink called upper.img pointing at a host file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def unavailable_reason() -> str | None:
    """Why this host cannot put upper layers on images (None: it can)."""
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control (loop devices unavailable)"
    if shutil.which("mkfs.ext4") is None:
        return "mkfs.ext4 not found (install e2fsprogs)"
    return None


# -- create, mount, unmount ----------------------------------------------------------------------
def create(image: Path, size_bytes: int, *, template_dir: Path | None = None) -> None:
    """Make a sparse, empty ext4 image of ``size_bytes`` (~4.3 MiB allocated for 16 GiB).

    With ``template_dir``, the first image of a size is made there once (``mkfs.ext4``: 20-45 ms
    here) and later ones are sparse copies of it (copy_file_range of its ~4 MiB: 5-10 ms here),
    or a copy made ahead (``make_spares``, by a shim after its start) renamed into place. The
    copies share the file-system UUID, which nothing here relies on (overlayfs keys its origin
    handles by the *lower* file system's UUID)."""
    if template_dir is None:
        _mkfs(image, size_bytes)
        return
    template = template_dir / f"upperfs-template-{size_bytes}-v1.img"
    if not is_image_file(template):
        partial = template_dir / f".upperfs-template-{size_bytes}.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            _mkfs(partial, size_bytes)
            os.rename(partial, template)  # atomic: a concurrent run sees all of it or none
        finally:
            partial.unlink(missing_ok=True)
    if not _claim_spare(template_dir, size_bytes, image):
        copy_sparse(template, image)


SPARES = 2  # copies of a template kept ready beside it (4.3 MiB of disk each at 16 GiB)


def _spare_prefix(size_bytes: int) -> str:
    return f"upperfs-spare-{size_bytes}-v1."


def _claim_spare(template_dir: Path, size_bytes: int, image: Path) -> bool:
    """Move a copy ``make_spares`` made into place as ``image``: one rename, which only one of
    several concurrent runs wins for each copy. False: none left (copy the template then)."""
    prefix = _spare_prefix(size_bytes)
    try:
        names = [n for n in os.listdir(template_dir) if n.startswith(prefix)]
    except OSError:
        return False
    for name in names:
        if os.path.lexists(image):  # never replace an image (copy_sparse refuses it: O_EXCL)
            return False
        try:
            os.rename(template_dir / name, image)
        except FileNotFoundError:  # another run took this one
            continue
        except OSError as exc:  # EXDEV (a cache on another file system) and the like: copy
            log.debug("cannot take the spare upper image %s: %s", name, exc)
            return False
        return True
    return False


def make_spares(template_dir: str, size_bytes: int) -> None:
    """Copy the template of ``size_bytes`` until ``SPARES`` copies are ready for the next starts
    (off their path: a shim calls it after its report). Each copy is an unnamed file until it is
    complete (O_TMPFILE, then linked), so a killed copier leaves nothing and a run never takes
    half a copy. No template yet: nothing to do."""
    directory = Path(template_dir)
    template = directory / f"upperfs-template-{size_bytes}-v1.img"
    prefix = _spare_prefix(size_bytes)
    try:
        have = sum(1 for n in os.listdir(directory) if n.startswith(prefix))
    except OSError:
        return
    if have >= SPARES or not is_image_file(template):
        return
    sfd = os.open(template, os.O_RDONLY | os.O_CLOEXEC)
    dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for _ in range(SPARES - have):
            dfd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            try:
                _copy_extents(sfd, dfd)
                # linkat(AT_SYMLINK_FOLLOW) through /proc names the unnamed file (a dir fd makes
                # Python call linkat, not link, which would not follow the magic link)
                os.link(f"/proc/self/fd/{dfd}", f"{prefix}{os.urandom(6).hex()}.img", dst_dir_fd=dirfd)
            finally:
                os.close(dfd)
    finally:
        os.close(dirfd)
        os.close(sfd)


def _mkfs(image: Path, size_bytes: int) -> None:
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size_bytes)
    finally:
        os.close(fd)
    done = subprocess.run(["mkfs.ext4", *_MKFS_ARGS, str(image)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        image.unlink(missing_ok=True)
        raise MountError(f"cannot make the upper-layer file system {image}: mkfs.ext4: {done.stderr.strip()}")


def attach(image: Path) -> tuple[str, int]:
    """Bind ``image`` to a free loop device with LO_FLAGS_AUTOCLEAR; (its path, an open fd).

    The device stays configured while the fd (or, later, a mount) holds it: closing the fd before
    mounting detaches it again. Raises MountError (ioctl refused), Unsupported (no loop-control)."""
    for _ in range(16):  # another process may take the free device between the two ioctls
        try:
            ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise Unsupported("upper-layer images", f"cannot open /dev/loop-control: {exc.strerror}",
                              hint=f"load the loop module, or set {ENV_SIZE}=0 for plain upper directories") from exc
        try:
            number = fcntl.ioctl(ctl, _LOOP_CTL_GET_FREE)
        finally:
            os.close(ctl)
        device = f"/dev/loop{number}"
        dev = _open_device(device)
        try:
            _configure(dev, image)
        except OSError as exc:
            os.close(dev)
            if exc.errno == errno.EBUSY:
                continue
            raise MountError(f"cannot attach {image} to {device}: {exc.strerror}") from exc
        return device, dev
    raise MountError(f"cannot attach {image}: every free loop device was taken first (16 tries)")


def _configure(dev: int, image: Path) -> None:
    backing = os.open(image, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = bytearray(232)
        struct.pack_into("<I", info, _LO_FLAGS_OFFSET, _LO_FLAGS_AUTOCLEAR)
        fcntl.ioctl(dev, _LOOP_CONFIGURE, _LOOP_CONFIG.pack(backing, 0, bytes(info), bytes(64)))
    finally:
        os.close(backing)  # the loop device holds its own reference


def _open_device(device: str) -> int:
    # devtmpfs creates the node on LOOP_CTL_GET_FREE; without udev it may lag a moment
    for _ in range(50):
        try:
            return os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            time.sleep(0.001)
    raise MountError(f"loop device {device} did not appear")


class Attached:
    """A loop device bound to an image ahead of its mount (``attach_ahead``): a migration's target
    binds the staged image while the source still dumps, and ``mount`` uses the device once the
    frozen delta is written into the image (through the file, not the device). ``release``
    detaches an unused one (LO_FLAGS_AUTOCLEAR: closing its fd does)."""

    def __init__(self, device: str, fd: int) -> None:
        self.device = device
        self.fd = fd

    def take(self, image: Path) -> tuple[str, int] | None:
        """(device, fd) for mounting ``image`` (the fd is the caller's from now on), or None (and
        released): the device is bound to another file, or its page cache holds blocks read
        before the image changed. Nothing mounted or read the device since ``attach_ahead``
        but, on hosts with udev, a probe (blkid): a cached block may predate the delta, and
        the mount would read it instead of the file's. No cached block (the usual case), or
        none left after a flush, means every read goes to the file as it is now."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return None
        try:
            st = os.stat(image)
            info = bytearray(232)
            fcntl.ioctl(fd, _LOOP_GET_STATUS64, info)
            if struct.unpack_from("<QQ", info) != (st.st_dev, st.st_ino):
                raise OSError(errno.ESTALE, "bound to another file")
            if _cached_pages(fd):
                fcntl.ioctl(fd, _BLKFLSBUF, 0)  # drops clean cached blocks; a busy one stays...
                if _cached_pages(fd):  # ...and then this device is not used
                    raise OSError(errno.ESTALE, "blocks cached before the image changed")
        except OSError as exc:
            log.debug("loop device %s bound ahead not used for %s: %s", self.device, image, exc)
            os.close(fd)
            return None
        return self.device, fd

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def attach_ahead(image: Path) -> Attached | None:
    """Bind ``image`` to a loop device now, for a ``mount`` later (see ``Attached``); None if that
    fails (the mount attaches then, and meets the error there)."""
    try:
        return Attached(*attach(image))
    except (OSError, MountError, Unsupported) as exc:
        log.debug("cannot bind %s to a loop device ahead: %s", image, exc)
        return None


def attach_staged(image: Path | None) -> Attached | None:
    """A migration target's staged upper image bound to its loop device while the source still
    dumps (``attach_ahead``), out of the pause (0.6 ms idle; at load 3-4 the layer's mount in a
    post-copy pause went from medians 15/12-18 to 9/6-12 ms at 64 MiB/1 GiB). Its mount, after the
    archive's blocks are written into the image, checks the device still fits (``Attached``).
    None: nothing staged, a staged directory rather than an image, or the binding failed."""
    if image is None or not is_image_file(image):
        return None
    return attach_ahead(image)


def _cached_pages(fd: int) -> int:
    """Pages of ``fd``'s file (here: a block device) in the page cache: cachestat(2), Linux 6.5."""
    rng = (ctypes.c_uint64 * 2)(0, 0)  # off, len (0: to the end)
    out = (ctypes.c_uint64 * 5)()  # nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted
    if _libc.syscall(_SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(out), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cachestat: {os.strerror(err)}")
    return int(out[0])


def mount(sys: Syscalls, image: Path, mountpoint: Path, *, attached: Attached | None = None) -> None:
    """Attach ``image`` (or use the device ``attached`` bound ahead, if it still fits) and mount
    it on ``mountpoint`` (nosuid, nodev: it is only the layer's storage; the overlay above decides
    what the container may do)."""
    mountpoint.mkdir(mode=0o700, exist_ok=True)
    taken = attached.take(image) if attached is not None else None
    device, dev = taken if taken is not None else attach(image)
    try:
        log.debug("mount %s (%s) on %s", image, device, mountpoint)
        sys.mount(device, str(mountpoint), FS_TYPE, MS_NOSUID | MS_NODEV, MOUNT_OPTIONS)
    except OSError as exc:
        raise MountError(f"cannot mount the upper-layer image {image} on {mountpoint}: {exc.strerror}",
                         hint="the image may be damaged: e2fsck -fn IMAGE") from exc
    finally:
        os.close(dev)  # the mount holds the device now; after a failure this detaches it


def mount_read_only(sys: Syscalls, image: Path, where: Path) -> None:
    """Mount a layer's image read-only and ``noload`` (an ext4 without a journal to replay) on
    ``where``: to read a stopped or checkpointed container's changes (commit, podman export)."""
    from runtime.syscalls import MS_NOEXEC, MS_RDONLY

    device, dev = attach(image)
    try:
        sys.mount(device, str(where), FS_TYPE, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "noload")
    except OSError as exc:
        raise MountError(f"cannot mount the upper-layer image {image} read-only on {where}: {exc.strerror}") from exc
    finally:
        os.close(dev)  # the mount holds the device now (LO_FLAGS_AUTOCLEAR)


def unmount(sys: Syscalls, mountpoint: Path) -> None:
    """Unmount the layer (lazily if busy); the loop device detaches with it. Not mounted is fine."""
    try:
        sys.umount2(str(mountpoint), 0)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return
        if exc.errno != errno.EBUSY:
            raise MountError(f"cannot unmount the upper layer {mountpoint}: {exc.strerror}") from exc
        log.warning("upper layer %s busy, detaching it", mountpoint)
        sys.umount2(str(mountpoint), MNT_DETACH)


def mount_existing(sys: Syscalls, container_dir: Path) -> None:
    """Mount a container's image again if it has one that is not mounted (an original put back
    after a failed restore over it)."""
    layout = Layout.of(container_dir)
    if layout.image is not None and not os.path.ismount(layout.mountpoint):
        mount(sys, layout.image, layout.mountpoint)


def prepare(sys: Syscalls, container_dir: Path, size_bytes: int, *, template_dir: Path | None = None) -> Layout:
    """A new container's writable layer: an image made (see ``create``) and mounted with empty
    upper/ and work/ (``size_bytes`` 0: plain directories). Undo with ``unmount`` (the image
    stays in the dir)."""
    if size_bytes == 0:
        layout = Layout(container_dir, None)
    else:
        layout = Layout(container_dir, container_dir / IMAGE_NAME)
        create(layout.image, size_bytes, template_dir=template_dir)  # type: ignore[arg-type]
        mount(sys, layout.image, layout.mountpoint)  # type: ignore[arg-type]
    for d in (layout.upper, layout.work):
        d.mkdir(mode=0o755, exist_ok=True)
    return layout


def install(sys: Syscalls, source: Path, container_dir: Path, *, attached: Attached | None = None) -> Layout:
    """Put a restored writable layer into a new container's dir and mount it: ``source`` is an
    image (moved to upper.img and mounted, through ``attached`` if it was bound ahead) or an
    upper directory (moved to upper/). Same file system (ROOT/tmp -> ROOT/containers): a rename.
    Undo with ``unmount``."""
    if not is_image_file(source):
        os.rename(source, container_dir / UPPER)
        layout = Layout(container_dir, None)
        layout.work.mkdir(mode=0o755, exist_ok=True)
        return layout
    layout = Layout(container_dir, container_dir / IMAGE_NAME)
    os.rename(source, layout.image)  # type: ignore[arg-type]
    mount(sys, layout.image, layout.mountpoint, attached=attached)  # type: ignore[arg-type]
    for d in (layout.upper, layout.work):
        d.mkdir(mode=0o755, exist_ok=True)
    return layout


# -- copies --------------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    """syncfs(2) on the file system holding ``path``: every dirty block reaches the image file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}", os.fspath(path))
    finally:
        os.close(fd)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the data extents of an open file (SEEK_DATA/SEEK_HOLE)."""
    out, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        out.append((start, end - start))
        pos = end
    return out


def copy_sparse(src: Path, dst: Path) -> int:
    """Copy the data extents of ``src`` into a new ``dst`` of the same size (holes stay holes;
    copy_file_range, in the kernel). Returns the bytes copied."""
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(sfd).st_size
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            return _copy_extents(sfd, dfd, size)
        except BaseException:
            os.close(dfd)
            dfd = -1
            dst.unlink(missing_ok=True)
            raise
        finally:
            if dfd >= 0:
                os.close(dfd)
    finally:
        os.close(sfd)


def _copy_extents(sfd: int, dfd: int, size: int | None = None) -> int:
    """The data extents of ``sfd`` copied into the empty ``dfd``, made as long; the bytes copied."""
    if size is None:
        size = os.fstat(sfd).st_size
    os.ftruncate(dfd, size)
    copied = 0
    for start, length in data_extents(sfd, size):
        copied += _copy_range(sfd, dfd, start, length)
    return copied


def _copy_range(sfd: int, dfd: int, start: int, length: int) -> int:
    done = 0
    while done < length:
        n = os.copy_file_range(sfd, dfd, length - done, start + done, start + done)
        if n == 0:  # the source shrank
            break
        done += n
    return done


# -- untrusted images ----------------------------------------------------------------------------
class UntrustedImage(MountError):
    """An upper-layer image from elsewhere failed the checks that come before mounting it."""


def check_untrusted(image: Path, *, max_size_bytes: int = MAX_SIZE_BYTES, timeout_s: float = 120.0) -> None:
    """Refuse to mount an image this host did not make unless it is what ``create`` makes: a
    regular file of sane size whose ext4 superblock lists exactly our features, and which a full
    read-only ``e2fsck -fn`` finds clean. This narrows, not closes, the kernel's exposure to a
    crafted file system (docs/security.md).

    Raises:
        UntrustedImage: any check failed (the message names it).
    """
    st = os.stat(image, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedImage(f"upper-layer image {image}: not a regular file")
    if not (MIN_SIZE_BYTES <= st.st_size <= max_size_bytes) or st.st_size % 4096:
        raise UntrustedImage(f"upper-layer image {image}: size {st.st_size} is not a multiple of 4096 within bounds")
    features = _superblock_features(image)
    extra = features - FEATURES
    if extra:
        raise UntrustedImage(f"upper-layer image {image}: unexpected ext4 features {sorted(extra)}",
                             hint="only images made by pymigrate are mounted")
    done = _e2fsck(image, "-fn", timeout_s)
    if done.returncode != 0:
        # A layer saved from a running container (no journal, so no orphan list) legitimately
        # holds the inodes of files deleted while open (databases' temporary files): CRIU carries
        # their contents itself (ghost files), so the kernel's copy is garbage. e2fsck's preen
        # mode releases such inodes and fixes nothing it could get wrong; it works on our own
        # copy (the unpacked import). Then the image must check clean.
        preen = _e2fsck(image, "-fp", timeout_s)
        if preen.returncode in (0, 1):
            log.info("upper-layer image %s: e2fsck -fp released what a live file system leaves behind", image)
            done = _e2fsck(image, "-fn", timeout_s)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        raise UntrustedImage(f"upper-layer image {image}: e2fsck -fn found problems (exit {done.returncode}): {' / '.join(tail)}")


def _e2fsck(image: Path, flags: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["e2fsck", flags, str(image)], capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise UntrustedImage(f"upper-layer image {image}: e2fsck did not finish within {timeout_s:g}s") from exc


def _superblock_features(image: Path) -> frozenset[str]:
    done = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise UntrustedImage(f"upper-layer image {image}: not an ext4 file system ({done.stderr.strip()[:200]})")
    for line in done.stdout.splitlines():
        if line.startswith("Filesystem features:"):
            return frozenset(line.split(":", 1)[1].split())
    raise UntrustedImage(f"upper-layer image {image}: no feature list in its superblock")
