"""Freezing: parsing the kernel's freezer state and waiting (bounded) until it is reached.

Used by both cgroup backends; ``Container.pause/unpause`` and checkpointing reach it through the
``CgroupManager``.

Kernel facts:
- cgroup2 (Documentation/admin-guide/cgroup-v2.rst, "Core Interface Files"): writing 1 to
  ``cgroup.freeze`` *requests* a freeze; ``cgroup.events`` says ``frozen 1`` once every task is
  stopped, and the kernel notifies a change of cgroup.events to poll(2) waiters as
  POLLPRI|POLLERR (kernfs_notify). The same holds for thaw and ``frozen 0``.
- v1 (Documentation/admin-guide/cgroup-v1/freezer-subsystem.rst): ``freezer.state`` reads
  THAWED, FREEZING or FROZEN; there is no notification, and writing FROZEN again while FREEZING
  retries the freeze of tasks that were busy (runc's freezer does the same), so we poll it.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from runtime.errors import CgroupError, FreezeTimeout

log = logging.getLogger(__name__)

FreezerState = Literal["thawed", "freezing", "frozen"]  # as CgroupManager.freezer_state reports it

V1_STATES: dict[str, FreezerState] = {"THAWED": "thawed", "FREEZING": "freezing", "FROZEN": "frozen"}

# poll(2) on cgroup.events wakes at once on a change; this caps each wait so a missed or
# unsupported notification (a tmp_path fake, an old kernel) costs at most this long.
POLL_SLICE_S = 0.05


def parse_v1_state(text: str) -> FreezerState:
    """``freezer.state`` content -> our state; CgroupError for anything unknown."""
    word = text.strip()
    try:
        return V1_STATES[word]
    except KeyError:
        raise CgroupError(f"unexpected freezer.state {word!r}: expected THAWED, FREEZING or FROZEN") from None


def parse_events_frozen(text: str) -> bool | None:
    """The ``frozen`` key of ``cgroup.events`` (None when the kernel has no such key)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "frozen":
            return parts[1] == "1"
    return None


def v2_state(freeze_text: str, events_text: str) -> FreezerState:
    """Our state from cgroup.freeze (what was asked) and cgroup.events (what the kernel did)."""
    wanted = freeze_text.strip() == "1"
    frozen = bool(parse_events_frozen(events_text))
    if wanted:
        return "frozen" if frozen else "freezing"
    # frozen while not asked means an ancestor is frozen; report the effective state
    return "frozen" if frozen else "thawed"


def wait_until(
    reached: Callable[[], bool],
    *,
    cgroup: str,
    wanted: str,
    timeout_s: float,
    events_path: Path | None = None,
    retry: Callable[[], None] | None = None,
) -> float:
    """Wait until ``reached()`` is true, at most ``timeout_s``; return the seconds waited.

    Args:
        reached: re-reads the kernel's state and says whether it is the wanted one
        cgroup: name for the error
        wanted: "frozen" or "thawed", for the error
        events_path: a cgroup2 ``cgroup.events`` to poll(2) for change notifications; without it
            (v1) a short, growing sleep is used
        retry: called before each further check (v1: write FROZEN again)

    Raises:
        FreezeTimeout: the state was not reached in time
    """
    start = time.monotonic()
    deadline = start + timeout_s
    fd = None
    poller = None
    if events_path is not None:
        try:
            fd = os.open(events_path, os.O_RDONLY)
            os.read(fd, 4096)  # kernfs arms the notification for pollers that have read once
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
        except OSError:
            fd = None  # harmless: fall back to sleeping
    delay = 0.001
    try:
        while True:
            if reached():
                waited = time.monotonic() - start
                log.debug("cgroup %s %s after %.1f ms", cgroup, wanted, waited * 1000)
                return waited
            now = time.monotonic()
            if now >= deadline:
                raise FreezeTimeout(cgroup, wanted, timeout_s)
            slice_s = min(deadline - now, POLL_SLICE_S)
            if poller is not None and fd is not None:
                if poller.poll(slice_s * 1000):
                    os.lseek(fd, 0, os.SEEK_SET)
                    os.read(fd, 4096)
            else:
                time.sleep(min(delay, slice_s))
                delay = min(delay * 2, 0.02)
            if retry is not None:
                retry()
    finally:
        if fd is not None:
            os.close(fd)


# -- a freeze CRIU can seize ------------------------------------------------------------------
# A task frozen in uninterruptible sleep (state D) cannot be seized by ptrace until it wakes: the
# classic case is a shell's vfork() parent, waiting in the kernel until its child execs or exits,
# while that child is frozen too. CRIU then waits out its whole timeout (10 s, the workload frozen
# all along) and fails "Unseizable non-zombie ... state D". Such waits are short when the tree
# runs, so thawing for a moment and freezing again almost always catches it elsewhere.
UNSEIZABLE_STATES = frozenset("D")
SETTLE_ATTEMPTS = 8
SETTLE_PAUSE_S = 0.002  # doubled on each attempt: at most ~0.5 s thawed in all


def task_state(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The one-letter state of ``pid`` from /proc/PID/stat (None if it is gone).

    The state follows the last ')' (the command name may itself contain parentheses)."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = text[text.rfind(")") + 1:].split()
    return rest[0] if rest else None


def unseizable(pids: list[int], proc: Path = Path("/proc")) -> list[int]:
    """The pids among ``pids`` in a state ptrace cannot seize (see above)."""
    return [pid for pid in pids if task_state(pid, proc) in UNSEIZABLE_STATES]


def freeze_seizable(
    freeze: Callable[[], None],
    thaw: Callable[[], None],
    pids: Callable[[], list[int]],
    *,
    attempts: int = SETTLE_ATTEMPTS,
    pause_s: float = SETTLE_PAUSE_S,
    sleep: Callable[[float], None] = time.sleep,
    proc: Path = Path("/proc"),
) -> list[int]:
    """Freeze; while some frozen task sits in uninterruptible sleep, thaw, wait a little and
    freeze again (bounded). Returns the pids still unseizable after the last attempt (empty on
    success): the caller goes on, and CRIU reports them."""
    freeze()
    stuck = unseizable(pids(), proc)
    for attempt in range(attempts):
        if not stuck:
            return []
        log.debug("frozen tasks in uninterruptible sleep %s: thaw and retry (%d)", stuck, attempt + 1)
        thaw()
        sleep(pause_s * (2**attempt))
        freeze()
        stuck = unseizable(pids(), proc)
    if stuck:
        log.warning("tasks %s stay in uninterruptible sleep after %d freezes: the dump may fail", stuck, attempts + 1)
    return stuck
