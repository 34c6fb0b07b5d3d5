"""Network namespaces kept as files: create, remove, and briefly enter one to open sockets in it.

Kernel facts (unshare(2), setns(2), network_namespaces(7), mount(2)):

- CLONE_NEWNET is per thread: unshare() and setns() with it move only the calling thread and are
  allowed in a multi-threaded process. So a namespace is created in the calling thread, pinned by
  bind-mounting ``/proc/thread-self/ns/net`` onto a file, and the thread setns()es straight back --
  what ``ip netns add`` does, without a fork or an exec. Python 3.11 has neither os.unshare nor
  os.setns, hence the ctypes calls.
- A namespace lives while anything references it: a process, an open fd, a bind mount. Once the last
  bind mount is gone and no process is inside, the kernel tears it down (asynchronously) and its
  veth ends disappear with it.
- A socket stays in the namespace it was created in; ``socket_in()`` relies on that to configure a
  container's namespace from the host thread.
- Since Linux 3.18 unlink() of a file that is a mount point only in *other* mount namespaces succeeds
  and detaches those copies (EBUSY only for the caller's own namespace). A container's mount
  namespace that still holds a copy of the bind mount therefore cannot keep ``remove()`` from working.
- Mount propagation: iproute2 turns /run/netns into a shared mount point of its own so the bind
  mounts propagate to mount namespaces created later. We do not make ROOT/netns a mount point: the
  bind mount simply follows the propagation of the filesystem the state root lives on (private on
  this machine, shared under systemd, where unmounts propagate to peers as well), there is nothing
  extra to unmount per state root, and the unlink rule above covers copies in private namespaces.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
THREAD_NETNS = "/proc/thread-self/ns/net"

_libc: Any = None


def _c() -> Any:
    """libc through ctypes, loaded on first use (ctypes costs ~2 ms to import)."""
    global _libc
    if _libc is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.unshare.argtypes = (ctypes.c_int,)
        libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
        libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
        _libc = libc
    return _libc


def _raise_errno(what: str, path: str | os.PathLike[str] | None = None) -> None:
    import ctypes

    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}", None if path is None else str(path))


def setns(fd: int, what: str) -> None:
    if _c().setns(fd, CLONE_NEWNET) != 0:
        _raise_errno(f"setns into {what}")


def unshare_net() -> None:
    if _c().unshare(CLONE_NEWNET) != 0:
        _raise_errno("unshare(CLONE_NEWNET)")


def bind_mount(source: str, target: Path) -> None:
    if _c().mount(source.encode(), os.fsencode(target), None, MS_BIND, None) != 0:
        _raise_errno(f"bind mount {source}", target)


def umount_detach(target: Path) -> bool:
    """Lazily unmount ``target``; False if it was not a mount point (EINVAL) or is gone (ENOENT)."""
    import ctypes

    if _c().umount2(os.fsencode(target), MNT_DETACH) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return False
    raise OSError(err, f"umount: {os.strerror(err)}", str(target))


def is_netns_mount(path: Path) -> bool:
    """True if ``path`` is a bind-mounted namespace (its device differs from its directory's)."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def entered(path: Path) -> Iterator[None]:
    """Run the body with the calling thread inside the network namespace at ``path``.

    Only for short, non-blocking work such as opening sockets: everything else the thread does in
    the body happens in that namespace too, and threads or processes it starts there inherit it.
    Other threads of the process are not affected.
    """
    own = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target, f"network namespace {path}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(own, "the thread's own network namespace")
    finally:
        os.close(own)


def socket_in(path: Path, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket that lives in the network namespace at ``path``."""
    with entered(path):
        return socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)


def create(path: Path, *, loopback_up: bool = True, userns: Path | None = None) -> None:
    """Create a new network namespace pinned at ``path`` (a new empty file), loopback up; owned by
    the user namespace pinned at ``userns`` when given (else by the caller's).

    Raises:
        FileExistsError: ``path`` already exists.
        OSError: unshare, mount or netlink failed (errno and path kept); nothing is left behind.
    """
    from runtime._netlink import LOOPBACK_IFINDEX, NETLINK_ROUTE, RtNetlink

    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
    os.close(fd)
    own = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    mounted = False
    try:
        if userns is not None:
            _pin_in_userns(path, userns)
            mounted = True
        else:
            unshare_net()
        try:
            if userns is None:
                bind_mount(THREAD_NETNS, path)
            else:
                setns_path(path)
            mounted = True
            if loopback_up:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
                with RtNetlink(sock) as nl:
                    nl.link_up(LOOPBACK_IFINDEX, "loopback")
        finally:
            setns(own, "the thread's own network namespace")
    except BaseException:
        if mounted:
            umount_detach(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    finally:
        os.close(own)
    log.debug("created network namespace %s", path)


def pin(source: str, path: Path, *, loopback_up: bool = True) -> None:
    """Bind-mount the namespace file ``source`` (/proc/PID/ns/KIND) on ``path`` (a new file);
    for a network namespace, its loopback up. Nothing is left behind on failure."""
    from runtime._netlink import LOOPBACK_IFINDEX, NETLINK_ROUTE, RtNetlink

    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
    os.close(fd)
    try:
        bind_mount(source, path)
        if loopback_up:
            with entered(path):
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
            with RtNetlink(sock) as nl:
                nl.link_up(LOOPBACK_IFINDEX, "loopback")
    except BaseException:
        umount_detach(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise


def setns_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, f"network namespace {path}")
    finally:
        os.close(fd)


def _pin_in_userns(path: Path, userns: Path) -> None:
    """A new network namespace owned by the user namespace at ``userns``, bind-mounted on ``path``
    (made by a helper process: runtime/ns_holder.py says why not by this thread)."""
    from runtime.ns_holder import holder

    # nsenter becomes the namespace's root (its setuid(0) there), so unshare keeps the
    # capabilities it needs across its exec
    with holder(["nsenter", f"--user={userns}", "--", "unshare", "--net", "--"],
                f"make a network namespace in user namespace {userns}") as pid:
        bind_mount(f"/proc/{pid}/ns/net", path)


def remove(path: Path) -> bool:
    """Unmount and delete the namespace file at ``path``; False if there was nothing to remove."""
    if not os.path.lexists(path):
        return False
    found = False
    while umount_detach(path):  # a file can carry stacked bind mounts; take them all off
        found = True
    try:
        path.unlink()
        found = True
    except FileNotFoundError:
        pass
    if found:
        log.debug("removed network namespace %s", path)
    return found
