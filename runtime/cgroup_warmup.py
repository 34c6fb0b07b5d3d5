"""Keep the kernel's cgroup migration lock warm while ``run`` prepares a container.

Moving a process into a cgroup (a write to ``cgroup.procs``) takes the kernel's global
``cgroup_threadgroup_rwsem`` for writing. When nobody took it for a while, that first writer waits
a whole RCU grace period (``rcu_sync_enter`` -> ``synchronize_rcu``): 5-22 ms on this kind of
loaded 2-core VM, measured as the first of a container init's nine v1 ``cgroup.procs`` writes (the
other eight: ~0.03 ms each). For about one more grace period after a writer left, the next one
pays nothing (``GP_EXIT``/``GP_REPLAY``). runc pays that wait too; we need not: while ``run``
mounts the layers and builds the network, a thread moves this process into the cgroup it is
already in (a no-op for the process, but a writer for the lock) every few ms, so the grace period
passes meanwhile and the init's move right after the shim's fork finds the lock warm.

Only on cgroup v1 hierarchies (hybrid hosts too): see ``_own_procs_file``. A write of a pid that
does not exist returns before the lock is taken (6.18), so the subject is this process itself.
Best effort: a host where the write fails (no permission, no v1 hierarchy) pays the wait as before. ``stop`` joins the thread, so the shim is forked from a single-threaded process.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

INTERVAL_S = 0.003  # well under a grace period (>= ~3 ms): the lock never cools between writes
MAX_S = 5.0  # a start that takes longer has other problems; stop touching the lock then


class Warmup:
    """A thread rewriting this process's own ``cgroup.procs`` until ``stop`` (see the module doc)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: Path | bool | None = None  # False: none found

    def start(self) -> "Warmup":
        """Start (or restart after ``stop``) the thread; nothing when no v1 hierarchy has us."""
        if self._procs is None:
            self._procs = _own_procs_file() or False
        procs = self._procs
        if isinstance(procs, Path) and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, args=(procs,), name="cgroup-warmup", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and join: the caller may fork right after (the lock stays warm ~1 grace period)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self, procs: Path) -> None:
        pid = str(os.getpid()).encode()
        waited = 0.0
        while waited < MAX_S:
            try:
                fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, pid)
                finally:
                    os.close(fd)
            except OSError as exc:  # best effort: the start pays the grace period as before
                log.debug("cgroup warm-up through %s: %s", procs, exc)
                return
            if self._stop.wait(INTERVAL_S):
                return
            waited += INTERVAL_S


def _own_procs_file() -> Path | None:
    """``cgroup.procs`` of this process's own cgroup in one mounted hierarchy (None: none found)."""
    from runtime.cgroups import layout

    try:
        hierarchies = layout().hierarchies
    except (OSError, ValueError) as exc:
        log.debug("cgroup warm-up: no layout: %s", exc)
        return None
    for h in hierarchies:
        procs = h.own_dir / "cgroup.procs"
        # v1 only: cgroup2's manager may move this process into a leaf meanwhile (its
        # no-internal-processes rule), and a write here must never move it back
        if h.version == 1 and procs.exists():
            return procs
    return None
