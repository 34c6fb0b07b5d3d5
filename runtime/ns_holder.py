"""A forked child that enters or makes a namespace and stays in it until the caller has pinned it.

Some namespaces cannot be made by a thread of a multi-threaded process (a user namespace: unshare(2)
and setns(2) with CLONE_NEWUSER need a single-threaded caller), so a child makes it, reports, and
waits while the parent writes its id maps or bind-mounts /proc/<child>/ns/<kind>; the child exits
once the parent is done (its end of the pipe closed), never before.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def holder(enter: Callable[[], bool], what: str) -> Iterator[int]:
    """Fork a child that runs ``enter`` (True: it worked) and yields its pid while it waits.

    Raises:
        OSError: ``enter`` failed in the child (EPERM, naming ``what``).
    """
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # pragma: no cover - the holder
        try:
            os.close(ready_r)
            os.close(done_w)
            os.write(ready_w, b"1" if enter() else b"0")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError(errno.EPERM, f"cannot {what}")
        yield child
    finally:
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(child, 0)
