"""Linux namespaces: which ones a container gets and how another process joins them.

A container's init gets new mount, uts, ipc, pid and cgroup namespaces (unshare(2) in an
intermediate process, then fork: CLONE_NEWPID only affects children) and joins a network
namespace prepared by ``runtime.network`` (a bind-mounted nsfs file). The user namespace is the
host's unless the container has one of its own (``--userns auto``, runtime/userns.py): then the
intermediate process joins it first, becomes its root (uid/gid 0 inside, an unprivileged id
outside), and the namespaces it then unshares are owned by it.

Joining (``pymigrate exec``): open every /proc/<pid>/ns/<kind> file *first*, then setns(2) them in
``JOIN_ORDER``: mnt comes last because after it the host's /proc is no longer reachable; pid only
affects children, so the caller must fork after joining. The cgroup namespace must be joined after
the process moved into the container's cgroup, or its cgroup root view would be wrong.
"""

from __future__ import annotations

import os

from runtime.syscalls import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    Syscalls,
)

# Namespaces a container's init unshares (net is joined, not unshared).
CONTAINER_UNSHARE_FLAGS = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWCGROUP

NS_TYPES: dict[str, int] = {
    "ipc": CLONE_NEWIPC,
    "uts": CLONE_NEWUTS,
    "net": CLONE_NEWNET,
    "pid": CLONE_NEWPID,
    "cgroup": CLONE_NEWCGROUP,
    "mnt": CLONE_NEWNS,
    "user": CLONE_NEWUSER,
}
JOIN_ORDER: tuple[str, ...] = ("cgroup", "ipc", "uts", "net", "pid", "mnt")


def ns_path(pid: int, kind: str) -> str:
    return f"/proc/{pid}/ns/{kind}"


def ns_inode(pid: int | str, kind: str) -> int:
    """Inode number of a namespace (what `ls -l /proc/PID/ns` shows in brackets)."""
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def open_namespaces(pid: int, kinds: tuple[str, ...] = JOIN_ORDER) -> list[tuple[str, int]]:
    """Open the namespace files of ``pid`` (O_CLOEXEC) in join order; the caller closes them."""
    fds: list[tuple[str, int]] = []
    try:
        for kind in kinds:
            fds.append((kind, os.open(ns_path(pid, kind), os.O_RDONLY | os.O_CLOEXEC)))
    except OSError:
        for _, fd in fds:
            os.close(fd)
        raise
    return fds


def join_order(pid: int) -> tuple[str, ...]:
    """``JOIN_ORDER``, then "user" when ``pid`` has a user namespace other than ours (setns(2)
    into one's own user namespace is EINVAL). Last: the other joins are made with the host's
    privilege, which covers every owner (a restored container's cgroup namespace is not owned by
    the user namespace CRIU restored, and its root could not join it); the caller then becomes
    the namespace's root."""
    if ns_inode(pid, "user") == ns_inode("self", "user"):
        return JOIN_ORDER
    return (*JOIN_ORDER, "user")


def join(sys: Syscalls, fds: list[tuple[str, int]]) -> None:
    """setns into every opened namespace, in the given order, closing each fd after use; in a
    user namespace the caller becomes its root."""
    for kind, fd in fds:
        try:
            sys.setns(fd, NS_TYPES[kind])
        finally:
            os.close(fd)
        if kind == "user":
            become_root(sys)


def become_root(sys: Syscalls) -> None:
    """uid and gid 0 of the user namespace just joined (the caller's host ids are not mapped in it,
    so its files would show as nobody's)."""
    sys.setresgid(0)
    sys.setgroups(())
    sys.setresuid(0)


def join_userns_file(sys: Syscalls, path: str) -> None:
    """Join the user namespace pinned at ``path`` (runtime/userns.py) as its root."""
    _join_file(sys, path, CLONE_NEWUSER)
    become_root(sys)


def join_netns_file(sys: Syscalls, path: str) -> None:
    """Join the network namespace bind-mounted at ``path``."""
    _join_file(sys, path, CLONE_NEWNET)


def _join_file(sys: Syscalls, path: str, kind: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sys.setns(fd, kind)
    finally:
        os.close(fd)
