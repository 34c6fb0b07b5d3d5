"""Removing directory trees that came from outside, without recursion and without following links.

Trees under ROOT/tmp (unpacked archives, image tarballs, pushed upper layers) are built from
untrusted input, so their shape is the attacker's: ``shutil.rmtree`` (Python 3.11/3.12) recurses
once per directory level and raises ``RecursionError`` on a tree ~1,000 levels deep, an error
that ``ignore_errors=True`` does not catch; a scratch dir left that way broke every later daemon
start. This module walks with an explicit stack and holds one directory fd at a time:

- it descends with ``openat(name, O_DIRECTORY | O_NOFOLLOW)`` from the parent's fd, so a symlink
  is removed, never followed (open(2), O_NOFOLLOW), and path length never matters (PATH_MAX does
  not limit fd-relative names);
- it climbs back with ``openat("..")`` and checks that the parent it reached is the one it left
  (same device and inode), so a directory renamed while we work is an error, not a walk
  elsewhere;
- a directory without write or search permission (a read-only layer, e.g. ``0555``) is made
  ``0700`` first, so an unprivileged caller can remove what it extracted.

``remove_tree`` raises ``OSError`` naming the path; ``remove_tree_quietly`` logs and goes on, for
cleanup paths where the original error matters more.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PERM_ERRNOS = (errno.EACCES, errno.EPERM)

__all__ = ["remove_tree", "remove_tree_quietly"]


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` and everything below it; a missing path is fine, a symlink is unlinked.

    Raises:
        OSError: something could not be removed (errno and the path of the entry).
    """
    path = os.fspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    fd = _open_dir(path, None)
    try:
        _empty_dir(fd, path)
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def remove_tree_quietly(path: str | os.PathLike[str]) -> bool:
    """``remove_tree``, logging a warning instead of raising; True when ``path`` is gone."""
    try:
        remove_tree(path)
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)
        return False
    return True


def _open_dir(name: str, dir_fd: int | None) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        # No search permission (mode 0000 or 0600): let the owner in. Needs the parent's fd.
        os.chmod(name, stat.S_IRWXU, dir_fd=dir_fd, follow_symlinks=False)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _unlink(name: str, dir_fd: int, made_writable: list[bool]) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in _PERM_ERRNOS or made_writable[0]:
            raise
        os.fchmod(dir_fd, stat.S_IRWXU)  # a read-only directory: entries cannot go without this
        made_writable[0] = True
        os.unlink(name, dir_fd=dir_fd)


def _rmdir(name: str, dir_fd: int, made_writable: list[bool]) -> None:
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in _PERM_ERRNOS or made_writable[0]:
            raise
        os.fchmod(dir_fd, stat.S_IRWXU)
        made_writable[0] = True
        os.rmdir(name, dir_fd=dir_fd)


class _Level:
    """One directory on the way down: its name in the parent, identity, and subdirs still to do."""

    __slots__ = ("name", "dev", "ino", "pending", "writable")

    def __init__(self, name: str, fd: int) -> None:
        st = os.fstat(fd)
        self.name = name
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.writable = [False]
        self.pending = _scan(fd, self.writable)


def _scan(fd: int, writable: list[bool]) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; return the names of its subdirs."""
    subdirs: list[str] = []
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        if is_dir:
            subdirs.append(name)
        else:
            try:
                _unlink(name, fd, writable)
            except FileNotFoundError:
                pass
    return subdirs


def _empty_dir(top_fd: int, top: str) -> None:
    """Remove everything inside the directory ``top_fd`` (named ``top`` in errors)."""
    stack = [_Level("", top_fd)]
    fd = os.dup(top_fd)
    try:
        while stack:
            level = stack[-1]
            if level.pending:
                name = level.pending.pop()
                try:
                    child = _open_dir(name, fd)
                except FileNotFoundError:
                    continue
                os.close(fd)
                fd = child
                stack.append(_Level(name, fd))
                continue
            stack.pop()
            if not stack:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            pst = os.fstat(parent)
            os.close(fd)
            fd = parent
            up = stack[-1]
            if (pst.st_dev, pst.st_ino) != (up.dev, up.ino):
                where = "/".join([top] + [lv.name for lv in stack[1:]])
                raise OSError(errno.ESTALE, "directory moved while its tree was being removed", where)
            _rmdir(level.name, fd, up.writable)
    except OSError as exc:
        if exc.filename is None or not os.path.isabs(os.fsdecode(exc.filename)):
            where = "/".join([top] + [lv.name for lv in stack[1:]])
            raise OSError(exc.errno, exc.strerror, where) from exc
        raise
    finally:
        os.close(fd)

