"""What runs inside a restored container's shim: its ``Starter`` (CRIU restores the process tree into
the container's cgroup and network namespace) and the CRIU notify handler that brings the link up.

It sits below ``runtime.checkpointing``, which builds the container and names these starters, and
below ``runtime.shim``, whose fork server imports it ahead of time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable

from runtime.errors import ContainerError

log = logging.getLogger(__name__)


LINK_UP_AT = "pre-resume"  # CRIU's last notification before the restored tasks run


def link_up_before_resume(veth: str | None, netns: str | None = None) -> Callable[[str, int], bool] | None:
    """A CRIU notify handler that sets the host end of the container's veth up at ``LINK_UP_AT``
    and forgets the neighbour entries still being resolved in the container's namespace.

    ``pre-resume`` comes after every socket is restored and out of repair mode and after the last
    step that can fail the restore and kill the tree (lazy-pages finish, catching the tasks): a
    restore that fails never had its link up, so its dying sockets cannot reset a client the
    source keeps serving. The tasks have not run yet.

    Why not after the restore (``join_network``, which still sets the link up, a no-op then, and
    announces the address): that cost every client ~1 s. The restored namespace is new and knows
    no neighbour; the first packet sent (the window probe of a socket leaving repair mode, or
    the server's reply) needs an ARP request, which is dropped at the down link, and the kernel
    retries an unanswered one only after neigh retrans_time (1 s), with the packets queued behind
    it. Setting the link up does not restart that resolution, so the incomplete entries are
    flushed (their queued packets dropped: TCP resends them): the next packet resolves at once.
    Measured (scripts/bench_client_pause.py): client-seen pause = frozen + ~1.0 s before, ≈ frozen
    after."""
    if veth is None:
        return None
    from runtime.network import set_link_up

    def on_notify(script: str, pid: int) -> bool:
        if script != LINK_UP_AT:
            return True
        try:
            set_link_up(veth, True)
        except OSError as exc:  # join_network tries again and fails the restore if it must
            log.warning("cannot set %s up before the restored tasks resume: %s", veth, exc)
            return True
        if netns is not None:
            _flush_incomplete_neighbours(netns)
        return True

    return on_notify


def before_resume(veth: str | None, netns: str | None, read_only_root: Callable[[], list[int]] | None
                  ) -> Callable[[str, int], bool] | None:
    """The restore's notify handler: ``link_up_before_resume``'s, and for a ``--read-only``
    container the root remounted read-only at ``LINK_UP_AT``, before any restored task runs.

    CRIU restores the container's mounts with their flags, except the root mount, which it makes
    from the ``root`` it is given (the merged overlay) as it is: writable. ``read_only_root``
    returns the pids in the container's cgroup; the first in another mount namespace than ours
    is a restored task (CRIU's own swrk stays in ours). A failure fails the restore: the
    container never runs with a writable root it was asked not to have."""
    link_up = link_up_before_resume(veth, netns)
    if read_only_root is None:
        return link_up

    def on_notify(script: str, pid: int) -> bool:
        if script == LINK_UP_AT:
            try:
                remount_root_read_only(read_only_root())
            except (OSError, ContainerError) as exc:
                log.error("cannot remount the restored root read-only: %s", exc)
                return False
        return link_up(script, pid) if link_up is not None else True

    return on_notify


def remount_root_read_only(pids: list[int]) -> None:
    """Remount / read-only (a bind remount: this mount only) in the mount namespace of the first
    of ``pids`` that is not in ours, from a forked child (setns(CLONE_NEWNS) needs a process
    that shares its fs_struct with no one: fork gives it its own).

    Raises:
        ContainerError: no such process, or the remount failed in the child.
    """
    from runtime.syscalls import CLONE_NEWNS, LINUX, MS_BIND, MS_RDONLY, MS_REMOUNT

    ours = os.stat("/proc/self/ns/mnt").st_ino
    target = None
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}/ns/mnt").st_ino != ours:
                target = pid
                break
        except OSError:
            continue  # gone meanwhile
    if target is None:
        raise ContainerError("cannot remount the restored root read-only: no restored task in the container's cgroup")
    fd = os.open(f"/proc/{target}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - the child
            code = 1
            try:
                LINUX.setns(fd, CLONE_NEWNS)
                LINUX.mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
                code = 0
            finally:
                os._exit(code)
    finally:
        os.close(fd)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise ContainerError(f"cannot remount the restored root of pid {target} read-only")


def _flush_incomplete_neighbours(netns: str) -> None:
    """``ip neigh flush nud incomplete`` in ``netns``, over rtnetlink: no nsenter + ip exec (~3 ms
    of the stopped time) at pre-resume."""
    import socket
    from pathlib import Path

    from runtime import _netlink as nl
    from runtime import _netns

    try:
        sock = _netns.socket_in(Path(netns), socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_ROUTE)
        with nl.RtNetlink(sock) as rtnl:
            flushed = rtnl.flush_neighbours(nl.NUD_INCOMPLETE)
    except OSError as exc:  # only slower: the kernel retries in 1 s
        log.warning("cannot flush incomplete neighbours in %s: %s", netns, exc)
        return
    log.debug("flushed %d incomplete neighbours in %s", flushed, netns)


def start_restore_on_go(go_path: str, netns: str, netns_key: str, cgroup_parent: str, container_id: str, criu: Any,
                        timeout_s: float, veth: str | None = None, read_only: bool = False, tty: bool = False,
                        interactive: bool = False, userns: dict[str, Any] | None = None) -> "int | Any":
    """The shim's starter for a restore begun before its images arrived (``RestoreShell``): spawn
    CRIU and move it into the container's cgroup now, then wait for the request on the FIFO at
    ``go_path`` (a pickled RestoreRequest; EOF without one = cancelled) and restore. ``userns``:
    a --userns container's wiring (runtime/userns_restore.py): no network namespace to pass."""
    import pickle
    import select

    from runtime.cgroups import detect

    cg = detect(cgroup_parent)
    fd = -1 if userns is not None else os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pending = criu.begin_restore(inherit_fds=(fd,) if fd >= 0 else (),
                                     on_spawn=lambda swrk_pid: cg.add_pid(container_id, swrk_pid))
        try:
            go = os.open(go_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # never blocks; poll below
            try:
                data = bytearray()
                deadline = time.monotonic() + timeout_s
                poller = select.poll()
                poller.register(go, select.POLLIN)
                poller.register(pending.sock.fileno(), select.POLLIN)  # the swrk died, or was killed with the cgroup
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ContainerError(f"restore of container {container_id[:12]}: no request within {timeout_s:g}s")
                    events = dict(poller.poll(left * 1000))
                    if pending.sock.fileno() in events:
                        raise ContainerError(f"restore of container {container_id[:12]}: criu exited before its request")
                    if go in events:
                        chunk = os.read(go, 1 << 20)
                        if not chunk and events[go] & select.POLLHUP:
                            break
                        data += chunk
            finally:
                os.close(go)
            if not data:
                raise ContainerError(f"restore of container {container_id[:12]} was cancelled before it began")
            request = pickle.loads(bytes(data))
            if fd >= 0:
                request = dataclasses.replace(request, inherit_fds=((netns_key, fd),))
        except BaseException:
            pending.cancel()
            raise
        pids = (lambda: list(cg.pids(container_id))) if read_only else None
        pid = int(pending.run(request, on_notify=_handler(request, before_resume(veth, netns, pids), tty, userns, netns)))
        return _started(pid, criu, request, container_id, tty=tty, interactive=interactive)
    finally:
        if fd >= 0:
            os.close(fd)


def start_restore(request: Any, netns: str, netns_key: str, cgroup_parent: str, container_id: str, criu: Any,
                  veth: str | None = None, read_only: bool = False, tty: bool = False,
                  interactive: bool = False, userns: dict[str, Any] | None = None) -> "int | Any":
    """The shim's starter for a restore: CRIU restores the tree into the container's cgroup and
    network namespace; returns the restored init's host pid (a child of the shim: rst_sibling).
    ``userns``: a --userns container's wiring (runtime/userns_restore.py): CRIU makes its network
    namespace, nothing to pass."""
    from runtime.cgroups import detect

    cg = detect(cgroup_parent)
    fd = -1 if userns is not None else os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if fd >= 0:
            request = dataclasses.replace(request, inherit_fds=((netns_key, fd),))
        pids = (lambda: list(cg.pids(container_id))) if read_only else None
        pid = int(criu.restore(request, on_spawn=lambda swrk_pid: cg.add_pid(container_id, swrk_pid),
                               on_notify=_handler(request, before_resume(veth, netns, pids), tty, userns, netns)))
        return _started(pid, criu, request, container_id, tty=tty, interactive=interactive)
    finally:
        if fd >= 0:
            os.close(fd)


def _handler(request: Any, on_notify: Callable[[str, int], bool] | None, tty: bool,
             userns: dict[str, Any] | None, netns: str) -> Callable[[str, int], bool] | None:
    """The restore's notify handler; for a --userns container its images' id maps are pointed at
    this host's range first and its namespaces wired at setup-namespaces (runtime/userns_restore.py).
    With not-sent TCP data in the images, loopback is locked until pre-resume (runtime/restore_lock.py)."""
    from runtime.restore_lock import lock, unsent_tcp_data

    lock_lo = unsent_tcp_data(request.images_dir)
    if userns is None:
        handler = _with_terminal(on_notify, tty)
        lock_lo = lock_lo and lock(netns)
        if lock_lo:
            log.info("restore into %s: loopback locked until the tasks resume (not-sent TCP data)", netns)
    else:
        from runtime.userns_restore import on_setup, prepare_images

        prepare_images(request.images_dir, userns)
        handler = on_setup(userns, on_notify, lock_lo=lock_lo)  # CRIU makes that netns: locked once wired
    return _unlocking(handler, netns) if lock_lo else handler


def _unlocking(on_notify: Callable[[str, int], bool] | None, netns: str) -> Callable[[str, int], bool]:
    """``on_notify``, with the loopback lock taken off at ``LINK_UP_AT`` first."""
    from runtime.restore_lock import unlock

    def handler(script: str, pid: int) -> bool:
        if script == LINK_UP_AT:
            unlock(netns)
        return on_notify(script, pid) if on_notify is not None else True

    return handler


def _with_terminal(on_notify: Callable[[str, int], bool] | None, tty: bool) -> Callable[[str, int], bool] | None:
    """A handler even when nothing else needs one: CRIU passes the new master of a ``run -t``
    container's terminal only as a notification ("orphan-pts-master"), and sends notifications
    only to a client that asked for them (criu/action-scripts.c rpc_send_fd)."""
    if on_notify is None and tty:
        return lambda _script, _pid: True
    return on_notify


def _started(pid: int, criu: Any, request: Any, container_id: str, *, tty: bool, interactive: bool) -> "int | Any":
    """The restored init, with the terminal CRIU made for it (``run -t``): the shim's console
    serves it from now on (runtime/console.py), appending to the container's log."""
    if not tty:
        return pid
    from pathlib import Path

    from runtime import console
    from runtime.overlay import LOG_PATH_IN_CONTAINER

    master = criu.take_orphan_pts_master()
    if master is None:
        raise ContainerError(f"restore of container {container_id[:12]}: criu restored no terminal for its tty")
    log_path = Path(request.root) / LOG_PATH_IN_CONTAINER.lstrip("/")
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # the terminal matters more than its copy in the log
        log.warning("container=%s: terminal output not logged: %s", container_id, exc)
        log_fd = None
    return console.Started(pid, master_fd=master, log_fd=log_fd, interactive=interactive)
