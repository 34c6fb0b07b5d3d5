"""The two ends of ``cp``'s tar stream: ``write_tree`` packs a source, ``extract`` unpacks into a
destination. Both run on either side: inside the container's root (a forked child, enter.py) or on
the host, and treat the other end's bytes as untrusted.

Extraction rules (each member, in stream order):
- renamed by ``paths.rebase`` (a member outside the copied tree is refused);
- character and block devices are refused inside a container and left out on the host (with
  a warning: a container's /dev); refused too are names that resolve outside the destination
  (tarfile's ``tar_filter``: absolute names, ``..``), and names whose directories pass through a
  symlink (``a -> /etc`` then ``a/passwd``): the parent directory of every member must be the
  directory it names, not a link elsewhere (what tar_filter's realpath check misses when the
  destination is ``/``);
- an existing non-directory at a member's path is removed first, so a file is never written
  through a symlink that is already there; hard links must point inside the copied tree;
- owners come from ``owner(uid, gid)`` (the caller's rule: kept with ``-a``, else root or the
  caller) and are set numerically: names are never looked up (in a container's root that would
  read its /etc/nsswitch.conf and load its NSS modules into this root process);
- on the host, set-user-ID and set-group-ID bits are dropped (a file from a container must not
  become a privileged program here).

Symlinks are copied as symlinks, whatever they point to (docker does the same); they are never
followed while packing, except the source itself with ``-L``.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
import tarfile
from typing import IO, Callable

from runtime.container_files.paths import Extraction, Source, rebase
from runtime.errors import InvalidArgument, UnsafeArchive

log = logging.getLogger(__name__)

IdMap = Callable[[int, int], tuple[int, int]]

# tarfile fills uname/gname from pwd/grp while packing: never inside a container's root (module doc)
_NO_NAMES: dict[str, object] = {"pwd": None, "grp": None}


def disable_name_lookups() -> None:
    """Stop tarfile from asking NSS for user and group names (called in the container's root)."""
    for key, value in _NO_NAMES.items():
        setattr(tarfile, key, value)


def write_tree(out: IO[bytes], src: Source, *, follow: bool, ids: IdMap, skip_below: tuple[str, ...] = ()) -> None:
    """Pack ``src`` as a tar stream named by ``src.top``; ``ids`` maps owners as written. The
    contents of ``skip_below`` (kernel file system mount points, such as /sys) are left out
    when they are inside the source (the mount point itself stays, empty).

    Raises:
        InvalidArgument: the source is missing, or not a directory where ``SRC/`` says it is.
    """
    path = os.path.realpath(src.path) if follow else src.path
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        raise InvalidArgument(f"no such file or directory: {src.path}") from None
    if src.must_be_dir and not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"source {src.path} is not a directory: expected one (the path ends in '/')")

    inside = src.path.rstrip("/") + "/"
    skipped = tuple(p.rstrip("/") + "/" for p in skip_below if p.startswith(inside))

    def view(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if skipped:
            rest = info.name[len(src.top):] if src.top != "." else "/" + info.name.lstrip("./")
            if posixpath.join(src.path, rest.lstrip("/")).startswith(skipped):
                return None
        info.uid, info.gid = ids(info.uid, info.gid)
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(path, arcname=src.top, recursive=True, filter=view)


def extract(stream: IO[bytes], top: str | None, plan: Callable[[bool], Extraction], *, ids: IdMap,
            host: bool) -> int:
    """Unpack a tar stream; ``plan(first_is_dir)`` says where (called once, at the first member).
    ``top``: the stream's top name (None: a user's tar from stdin, unpacked as it is into
    ``plan``'s directory). Returns the number of members written.

    Raises:
        UnsafeArchive: a member that breaks a rule of the module doc.
        InvalidArgument: what ``plan`` refuses.
    """
    written = 0
    devices: list[str] = []
    extraction: Extraction | None = None
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if extraction is None:
                extraction = plan(member.isdir())
                real_dest = os.path.realpath(extraction.directory)
            name = _renamed(member, top, extraction)
            if name is None:
                continue
            if host and (member.ischr() or member.isblk()):
                devices.append(name)  # a container's /dev: never recreated on the host
                continue
            member = _checked(member, name, top, extraction, real_dest, ids=ids, host=host)
            tar.extract(member, real_dest, set_attrs=True, numeric_owner=True, filter="fully_trusted")
            written += 1
    if extraction is None:
        plan(False)  # an empty stream: still refuse a destination that cannot take it
    if devices:
        log.warning("%d device node(s) left out (device nodes are not copied to the host): %s",
                    len(devices), ", ".join(devices[:5]) + (", ..." if len(devices) > 5 else ""))
    return written


def _renamed(member: tarfile.TarInfo, top: str | None, extraction: Extraction) -> str | None:
    if top is None:
        return member.name
    return rebase(member.name, top, extraction)


def _checked(member: tarfile.TarInfo, name: str, top: str | None, extraction: Extraction, real_dest: str,
             *, ids: IdMap, host: bool) -> tarfile.TarInfo:
    if member.ischr() or member.isblk():
        raise UnsafeArchive(member.name, "device nodes are not copied")
    mode = member.mode  # tar_filter clears group/other write; the source's mode is kept
    relative = posixpath.normpath(name.lstrip("/"))
    if relative == ".." or relative.startswith("../"):
        raise UnsafeArchive(name, "a member outside the destination")
    target = os.path.join(real_dest, relative)
    parent = os.path.dirname(target)
    if os.path.realpath(parent) != os.path.normpath(parent):
        raise UnsafeArchive(name, "its directory is a symlink (it would write elsewhere)")
    if os.path.lexists(target) and not (member.isdir() and os.path.isdir(target) and not os.path.islink(target)):
        _remove(target, name)  # never write through what is there (a symlink above all)
    try:
        member = tarfile.tar_filter(member.replace(name=relative, deep=False), real_dest)
    except tarfile.FilterError as exc:
        raise UnsafeArchive(name, str(exc)) from None
    uid, gid = ids(member.uid, member.gid)
    kept = member.mode if mode is None else mode & (0o1777 if host else 0o7777)  # no set-id bits on the host
    link = _hardlink_target(member.linkname, top, extraction, name) if member.islnk() else member.linkname
    return member.replace(uid=uid, gid=gid, uname="", gname="", mode=kept, linkname=link, deep=False)


def _hardlink_target(linkname: str, top: str | None, extraction: Extraction, name: str) -> str:
    try:
        target = linkname if top is None else rebase(linkname, top, extraction)
    except UnsafeArchive:
        target = None
    if target is None or posixpath.isabs(target) or posixpath.normpath(target).startswith(".."):
        raise UnsafeArchive(name, f"hard link to {linkname!r} outside the copied tree")
    return target


def _remove(target: str, name: str) -> None:
    if os.path.isdir(target) and not os.path.islink(target):
        raise UnsafeArchive(name, f"a directory is in the way at {target}")
    os.unlink(target)
