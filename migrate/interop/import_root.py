"""A foreign checkpoint's root changes as pymigrate's upper layer (``podman_import``).

podman and CRI-O carry the container's writable layer as ``rootfs-diff.tar`` (the files added or
changed, no whiteouts) plus ``deleted.files`` (a JSON list of paths removed from the image). Here
the tar is unpacked with the rules of every untrusted layer (``runtime.tarsafe.extract_layer``:
no paths out, no devices, budgets) into a new upper dir, and each deleted path becomes an overlay
whiteout (a 0/0 character device) in it, its missing parent directories made with the owner and
mode the image gives them, so the merged view shows the image minus those files. ``/.pymigrate`` (the logs of a
container pymigrate exported in podman's layout) may come with the diff: the restore accepts it
only as a directory holding regular files (``import_mounts.ensure_path``), never deletes it.

``devshm-checkpoint.tar`` (the content of podman's /dev/shm) is unpacked by the same rules into
the directory that becomes the container's /dev/shm.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from migrate.errors import UnsafeMember
from runtime.errors import ImageError

ROOTFS_DIFF = "rootfs-diff.tar"
DEVSHM_TAR = "devshm-checkpoint.tar"
RESERVED = ".pymigrate"  # runtime.overlay.LOG_DIR_IN_CONTAINER
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def build_upper(fc_root: Path, upper: Path, lowers: tuple[Path, ...], deleted: tuple[str, ...]) -> None:
    """``upper`` (an empty directory) filled from ``fc_root``'s rootfs-diff.tar and deleted.files.

    Raises:
        UnsafeMember: a corrupted or refused rootfs-diff.tar (naming it and the reason), or a
            deleted path that is not clean.
    """
    diff = fc_root / ROOTFS_DIFF
    if diff.is_file() and not diff.is_symlink():
        unpack_tar(diff, upper, ROOTFS_DIFF)
    for rel in deleted:
        whiteout(upper, lowers, rel)


def unpack_tar(tar: Path, dest: Path, member: str) -> None:
    """An untrusted tar (rootfs-diff.tar, devshm-checkpoint.tar) unpacked into ``dest``; any
    refusal or corruption becomes UnsafeMember naming the archive member."""
    from runtime.tarsafe import extract_layer

    try:
        with open(tar, "rb") as f:
            extract_layer(f, dest, source=member)
    except ImageError as exc:
        raise UnsafeMember(member, f"cannot be unpacked as the container's files: {exc.message}") from None


def whiteout(upper: Path, lowers: tuple[Path, ...], rel: str) -> None:
    """Hide ``rel`` (relative to the container's root) of the image: a 0/0 character device at
    its place in ``upper``; nothing when no lower has it or the upper dir has its own entry."""
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts) or parts[0] == RESERVED:
        raise UnsafeMember("deleted.files", f"path {rel!r} is not a clean path inside the container")
    if not any(os.path.lexists(low.joinpath(*parts)) for low in lowers):
        return
    fd = os.open(upper, _DIR_FLAGS)
    try:
        for i, part in enumerate(parts[:-1]):
            fd = _upper_dir(fd, part, lowers, parts[: i + 1], rel)
        try:
            os.mknod(parts[-1], stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=fd)
        except FileExistsError:
            pass  # the diff has its own entry there, which hides the image's anyway
    finally:
        os.close(fd)


def _upper_dir(fd: int, part: str, lowers: tuple[Path, ...], parts: list[str], rel: str) -> int:
    """The upper dir's directory ``part`` under ``fd`` (made like the image's if missing)."""
    like = None
    try:
        os.stat(part, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        like = next((os.lstat(low.joinpath(*parts)) for low in lowers if os.path.lexists(low.joinpath(*parts))), None)
        if like is None or not stat.S_ISDIR(like.st_mode):
            raise UnsafeMember("deleted.files", f"path {rel!r}: {'/'.join(parts)} is not a directory of the image") from None
        os.mkdir(part, 0o700, dir_fd=fd)
    try:
        nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
    except OSError:
        raise UnsafeMember("deleted.files", f"path {rel!r} passes through {'/'.join(parts)}, which is not a directory") from None
    os.close(fd)
    if like is not None:  # the upper dir's metadata is what the merged view shows
        if os.geteuid() == 0:
            os.fchown(nfd, like.st_uid, like.st_gid)
        os.fchmod(nfd, stat.S_IMODE(like.st_mode))
    return nfd
