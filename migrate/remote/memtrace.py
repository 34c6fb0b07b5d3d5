"""The daemon's memory (issue 17): fewer malloc arenas, and tracemalloc under a debug variable.

``limit_arenas()``: glibc gives each new thread its own malloc arena (up to 8 per core) and
keeps what is freed in each for reuse. The daemon runs dozens of threads when migrations overlap
(gRPC workers, relays, archive pools: ~55 with ten at once), and its peak RSS with ten concurrent
64 MiB migrations was 160-255 MiB (mean ~198, seven runs) on each side; with two arenas 138-155 MiB,
and no slower (the GIL serialises most of those threads' allocations anyway). Set before the server's threads
start; ``MALLOC_ARENA_MAX`` in the environment wins (glibc read it), ``PYMIGRATE_MALLOC_ARENAS=0``
keeps glibc's default, another number sets it.

``PYMIGRATE_TRACEMALLOC=N`` (N frames per allocation, 1 is enough for "which line") makes the
daemon trace Python allocations; a thread checks every half second and, whenever the traced total
passes its previous high by 10% (and 8 MiB), logs the top allocation sites of that moment as
``tracemalloc peak ...`` lines, with the process's VmRSS next to the traced total (what the traced
total does not explain is C-level: gRPC core, zstd contexts, thread stacks, malloc arenas).

Tracing costs CPU (allocations ~2x slower): a debugging aid, never on by default.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

ENV = "PYMIGRATE_TRACEMALLOC"
ARENAS_ENV = "PYMIGRATE_MALLOC_ARENAS"
ARENAS = 2
M_ARENA_MAX = -8  # malloc.h
TOP = 12
INTERVAL_S = 0.5


def _rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _report(tracemalloc, current: int) -> None:  # noqa: ANN001 (the module, imported lazily)
    snapshot = tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
    log.warning("tracemalloc peak traced=%.1f MiB rss=%.1f MiB", current / (1 << 20), _rss_mib())
    for stat in snapshot.statistics("lineno")[:TOP]:
        frame = stat.traceback[0]
        log.warning("tracemalloc peak   %8.1f MiB %6d blocks %s:%d", stat.size / (1 << 20), stat.count, frame.filename, frame.lineno)


def _watch(tracemalloc, stop: threading.Event) -> None:  # noqa: ANN001
    high = 0
    while not stop.wait(INTERVAL_S):
        current, _ = tracemalloc.get_traced_memory()
        if current > high * 1.1 and current > high + (8 << 20):
            high = current
            _report(tracemalloc, current)


def start_from_env() -> threading.Event | None:
    """Start tracing when ``PYMIGRATE_TRACEMALLOC`` is set; the event stops the watcher."""
    value = os.environ.get(ENV, "")
    if not value:
        return None
    import tracemalloc

    tracemalloc.start(max(1, int(value) if value.isdigit() else 1))
    stop = threading.Event()
    threading.Thread(target=_watch, args=(tracemalloc, stop), name="memtrace", daemon=True).start()
    log.warning("tracing python allocations (%s=%s): slower, for debugging only", ENV, value)
    return stop


def limit_arenas() -> int:
    """Cap glibc's malloc arenas for this process (see the module doc); the cap set, 0 if none."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return 0
    value = os.environ.get(ARENAS_ENV, "")
    arenas = int(value) if value.isdigit() else ARENAS
    if arenas <= 0:
        return 0
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no arenas to cap)
        return 0
    return arenas if mallopt(M_ARENA_MAX, arenas) == 1 else 0
