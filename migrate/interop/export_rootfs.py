"""A container's upper layer as podman's ``rootfs-diff.tar`` and ``deleted.files``.

podman restores a container's root as the image, then ``rootfs-diff.tar`` unpacked on top (a plain
tar, no whiteouts: containers/storage ``archive.Untar``), then every path of ``deleted.files`` (a
JSON list of absolute paths) removed with ``os.RemoveAll`` (pkg/checkpoint/crutils
``CRApplyRootFsDiffTar``, ``CRRemoveDeletedFiles``), in that order.

The upper dir is first written as an OCI layer by ``runtime.upper_layer_tar.write_layer`` (it walks
the untrusted tree without following links, within the extraction limits, and turns overlayfs'
whiteouts into the image spec's), then split here:

- ``DIR/.wh.NAME`` (a deleted lower entry) -> ``/DIR/NAME`` in deleted.files;
- ``DIR/.wh..wh..opq`` (a directory made anew over a lower one) -> each entry of the lower
  ``DIR`` that the layer does not hold again, in deleted.files: a removal runs after the tar is
  unpacked, so the directory itself cannot be listed;
- every other member goes into rootfs-diff.tar as it is (owners, modes, times, kept xattrs, hard
  links), the container's log files among them: its fds 1 and 2 are open on them and CRIU
  checks their size on restore.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from runtime.tarsafe import OPAQUE_WHITEOUT, WHITEOUT_PREFIX

ROOTFS_DIFF = "rootfs-diff.tar"
DELETED_FILES = "deleted.files"

ListLower = Callable[[str], Iterable[str]]  # names in the image's directory (container path), [] if none


@dataclass
class Split:
    """What ``split_layer`` wrote and found."""

    members: int = 0
    deleted: list[str] = field(default_factory=list)  # absolute container paths, sorted
    opaque_dirs: list[str] = field(default_factory=list)


def _norm(name: str) -> str:
    """A member name relative to the root, without ``./`` or a leading ``/``."""
    return posixpath.normpath("/" + name).lstrip("/")


def split_layer(layer: BinaryIO, diff: BinaryIO, list_lower: ListLower) -> Split:
    """Copy OCI layer ``layer`` (a tar stream) to ``diff`` without its whiteouts, and return the
    paths those whiteouts delete (module docstring). ``list_lower(dir)`` lists the image's entries
    of a container directory (``/etc``), for opaque directories."""
    out = Split()
    kept: set[str] = set()
    deleted: set[str] = set()
    opaque: list[str] = []
    with tarfile.open(fileobj=layer, mode="r|") as src, tarfile.open(fileobj=diff, mode="w|", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            name = _norm(member.name)
            parent, base = posixpath.split(name)
            if base == OPAQUE_WHITEOUT:
                opaque.append(parent)
                continue
            if base.startswith(WHITEOUT_PREFIX):
                deleted.add("/" + posixpath.join(parent, base[len(WHITEOUT_PREFIX):]))
                continue
            kept.add(name)
            member.name = name
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
            out.members += 1
    for parent in opaque:
        for entry in list_lower("/" + parent):
            rel = posixpath.join(parent, entry) if parent else entry
            if rel not in kept:
                deleted.add("/" + rel)
    out.deleted = sorted(deleted)
    out.opaque_dirs = sorted("/" + p for p in opaque)
    return out


def open_in_tree(root: Path, rel: str, *, directory: bool = True) -> int:
    """An fd of ``rel`` below ``root``, opened one component at a time without following a symlink
    (an image's absolute symlink would name a host path). Raises OSError (ELOOP, ENOTDIR, ENOENT)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    parts = [p for p in rel.split("/") if p]
    try:
        for i, part in enumerate(parts):
            if part in (".", ".."):
                raise OSError(errno.ENOENT, "not below the tree", rel)
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if directory or not last else os.O_NONBLOCK)
            nfd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def lower_lister(lower_root: Path | None) -> ListLower:
    """``list_lower`` over the image's tree at ``lower_root``; a path that is not a directory there
    (or reaches it through a symlink: an opaque directory then replaced the link itself) lists nothing."""

    def list_lower(path: str) -> list[str]:
        if lower_root is None:
            return []
        try:
            fd = open_in_tree(lower_root, posixpath.normpath("/" + path))
        except OSError:
            return []
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    return list_lower


def write_deleted(out_dir: Path, deleted: list[str]) -> None:
    """``deleted.files`` in ``out_dir`` (only when something was deleted, as podman does)."""
    if deleted:
        (out_dir / DELETED_FILES).write_text(json.dumps(deleted))
