"""A checkpointed container's teardown after the command answered (issue 17).

Once a checkpoint is committed and the container's tree is killed (its cgroup empty) and recorded
``exited``, what is left is the host's side: the shim's own exit record, the veth, the mounts, the
network namespace and the cgroup (runtime/checkpointing.py ``stop_checkpointed``: 25-35 ms of every
``checkpoint`` here, mostly waiting for the shim and the veth's RCU grace period). ``detach`` runs it
in a detached process holding the container's teardown lock, ROOT/run/teardown/<id>.lock (an
flock, dropped by the kernel when its holder dies, so a crash never leaves it held), taken before
the command answers. Whoever touches the same container next (a restore over it, ``rm``) waits for
that lock first (``wait``), so it never builds or removes what the teardown is still releasing;
after a crash the lock is free and that command's own release (idempotent) finishes the job.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from runtime.config import Paths

log = logging.getLogger(__name__)

DIR = "teardown"
WAIT_S = 15.0  # a teardown waits up to 10 s for the shim; then its release
POLL_S = 0.005


def lock_path(paths: Paths, container_id: str) -> Path:
    return paths.run / DIR / f"{container_id}.lock"


def detach(paths: Paths, container_id: str, work: Callable[[], None]) -> bool:
    """Run ``work`` in a forked child that holds the container's teardown lock until it is done;
    returns once the lock is held for it. False (nothing started) when this process runs other
    threads: a fork copies only the calling one, with whatever locks the others held, so the caller
    then runs ``work`` itself.

    One fork, not two (a double fork's wait for the middle child cost 3-9 ms here): the child is
    the caller's until the caller exits (a CLI or zygote worker, within milliseconds), then init's;
    a caller that lives on reaps it at its next ``detach`` or ``wait``."""
    if threading.active_count() != 1:
        return False
    _reap()
    path = lock_path(paths, container_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # before the answer: the next command finds it held
        pid = os.fork()
        if pid == 0:
            _child(path, work)  # never returns
        _children.append(pid)
    finally:
        os.close(fd)  # the child's copy keeps the lock
    return True


_children: list[int] = []


def _reap() -> None:
    for pid in list(_children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _children.remove(pid)


def _child(path: Path, work: Callable[[], None]) -> None:
    code = 1
    try:
        os.setsid()  # out of the caller's session: a Ctrl-C at the terminal does not cut it short
        null = os.open(os.devnull, os.O_RDWR)
        for n in (0, 1, 2):  # the caller's pipes close when the command exits, not when this does
            os.dup2(null, n)
        try:
            work()
            code = 0
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
    except BaseException:  # a detached process: nobody to raise to
        log.exception("teardown of %s", path.stem)
    finally:
        os._exit(code)


def wait(paths: Paths, container_id: str, timeout_s: float = WAIT_S) -> None:
    """Until no detached teardown of ``container_id`` runs (at most ``timeout_s``; then the caller
    goes on, its own release being idempotent)."""
    try:
        fd = os.open(lock_path(paths, container_id), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                _reap()
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    log.warning("container=%s: its teardown still runs after %gs; going on", container_id, timeout_s)
                    return
                time.sleep(POLL_S)
    finally:
        os.close(fd)


def wait_all(paths: Paths, timeout_s: float = WAIT_S) -> None:
    """``wait`` for every container whose teardown may still run (a listdir: usually none)."""
    try:
        names = os.listdir(paths.run / DIR)
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(".lock"):
            wait(paths, name[: -len(".lock")], timeout_s)
