"""Crash-safe freezes: who froze a container, and what a later command does when it died.

An operation that freezes a container (checkpoint, a migration's source) records itself in the
container's state (``ContainerState.frozen_by``: pid, the pid's start time, operation, the
partial files it writes) *before* writing ``cgroup.freeze``, and clears the record after the
thaw. If the process is killed in between (SIGKILL, OOM, a lost terminal), the cgroup stays
frozen (the kernel keeps it so) while nothing will ever thaw it. Every later look at the
container (``pymigrate ps``, ``inspect``, ``unpause``, the daemon's start) calls ``settle``:

- the recorded process still runs (same pid *and* start time): nothing to do, it is busy;
- a CRIU still has one of the partial paths open (an orphaned ``criu swrk`` finishing its dump
  with ``leave_running``, which puts back the freezer state it found when it ends): wait for
  the next look, thawing now would be undone;
- otherwise: thaw (unless the container was paused before), remove the partial files, clear the
  record. Records with ``recover`` false belong to a migration: its outgoing record decides
  whether the copy here may run again (migrate/migration/recovery.py), so they are left to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from runtime.spec import ContainerState, FreezeRecord

log = logging.getLogger(__name__)


def process_start(pid: int, proc: Path = Path("/proc")) -> int:
    """The start time of ``pid`` (clock ticks since boot, /proc/PID/stat field 22); 0 if gone."""
    try:
        stat = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return 0
    # comm (field 2) may hold spaces and parentheses: split after its last ')'
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0


def new_record(operation: str, *, was_paused: bool, recover: bool = True, partial: tuple[Path, ...] = ()) -> FreezeRecord:
    """The record of this process freezing a container for ``operation``."""
    pid = os.getpid()
    return FreezeRecord(pid=pid, pid_start=process_start(pid), operation=operation, since=time.time(),
                        was_paused=was_paused, recover=recover, partial=tuple(str(p) for p in partial))


def holder_alive(record: FreezeRecord, proc: Path = Path("/proc")) -> bool:
    """Whether the process that froze the container still runs (the same one, not a reuse)."""
    start = process_start(record.pid, proc)
    return start != 0 and (record.pid_start == 0 or start == record.pid_start)


def partial_in_use(record: FreezeRecord, proc: Path = Path("/proc")) -> list[int]:
    """Pids (other than ours) with a cwd or an open fd inside one of the record's partial paths."""
    paths = [os.path.realpath(p) for p in record.partial]
    if not paths:
        return []
    me = os.getpid()
    found = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if any(_inside(link, paths) for link in _links(Path(entry.path))):
            found.append(int(entry.name))
    return found


def _links(pid_dir: Path) -> list[str]:
    out = []
    with contextlib.suppress(OSError):
        out.append(os.readlink(pid_dir / "cwd"))
    with contextlib.suppress(OSError):
        for fd in os.scandir(pid_dir / "fd"):
            with contextlib.suppress(OSError):
                out.append(os.readlink(fd.path))
    return out


def _inside(link: str, paths: list[str]) -> bool:
    return any(link == p or link.startswith(p + "/") for p in paths)


def remove_partial(record: FreezeRecord) -> None:
    """Remove what the dead operation left (its export temp file, its scratch dir)."""
    for path in record.partial:
        p = Path(path)
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            log.info("removed %s left by a %s that died", p, record.operation)
        except FileNotFoundError:
            pass
        except OSError as exc:  # keep going: the thaw matters more
            log.warning("cannot remove %s left by a %s that died: %s", p, record.operation, exc)


def orphaned(state: ContainerState) -> FreezeRecord | None:
    """The freeze record of ``state`` if its operation died and this runtime should settle it."""
    record = state.frozen_by
    if record is None or not record.recover or holder_alive(record):
        return None
    return record


def settle(rt: Any, container_id: str, cgroup_parent: str | None, *, wait_s: float = 0.0) -> ContainerState | None:
    """Thaw a container whose freezing operation died, remove its partial files and clear the
    record (see the module doc); the new state, or None when there was nothing to settle now.
    ``wait_s``: how long to wait for an orphaned CRIU to let go of the partial files (a command
    does not wait, the next one tries again; the daemon's start waits)."""
    state = rt.store.load_state(container_id)
    record = orphaned(state)
    if record is None:
        return None
    deadline = time.monotonic() + wait_s
    users = partial_in_use(record)
    while users and time.monotonic() < deadline:
        time.sleep(0.1)
        users = partial_in_use(record)
    if users:
        log.info("container=%s: the %s that froze it died, but pids %s still use its files: thawing later",
                 container_id, record.operation, users)
        return None
    if not record.was_paused:
        rt.cgroups(cgroup_parent).thaw(container_id)
    remove_partial(record)

    def clear(s: ContainerState) -> ContainerState:
        return dataclasses.replace(s, frozen_by=None) if s.frozen_by == record else s

    new = rt.store.update_state(container_id, clear)
    log.warning("container=%s: the %s (pid %d) that froze it died; %s", container_id, record.operation, record.pid,
                "kept paused" if record.was_paused else "thawed")
    return new  # type: ignore[no-any-return]
