"""A helper process that makes or enters a namespace and stays in it until the caller pinned it.

Some namespaces cannot be made by a thread of a multi-threaded process (a user namespace:
unshare(2) and setns(2) with CLONE_NEWUSER need a single-threaded caller). A forked child is not
enough in the daemon: gRPC's fork handlers start threads in the child, and unshare(CLONE_NEWUSER)
then fails with EINVAL. So the namespace is made by util-linux's unshare/nsenter, exec'd, which
leave a shell waiting in it while the parent writes its id maps or bind-mounts
/proc/<pid>/ns/<kind>; the shell exits once the parent is done (its stdin closed).
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator, Sequence

WAIT = ("/bin/sh", "-c", "echo ready; read _")
TIMEOUT_S = 10.0


@contextlib.contextmanager
def holder(prefix: Sequence[str], what: str) -> Iterator[int]:
    """Run ``prefix`` + a waiting shell; yield the pid of the shell (inside the namespaces).

    Raises:
        OSError: the helper failed (its stderr in the message, naming ``what``).
    """
    proc = subprocess.Popen([*prefix, *WAIT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        if proc.stdout.readline() != b"ready\n":
            proc.wait(TIMEOUT_S)
            detail = proc.stderr.read().decode(errors="replace").strip()
            raise OSError(errno.EPERM, f"cannot {what}: {detail or 'the helper exited'}")
        yield proc.pid
    finally:
        proc.stdin.close()
        try:
            proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
