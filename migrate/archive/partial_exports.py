"""Exports being written: their temp files, and the sweep of those a killed process left.

``checkpoint --export F`` writes the archive to ``.F.<checkpoint id>.tmp`` beside F and renames
it when complete. While the container is frozen its freeze record names that file, so the next
command removes it when the writer was killed (runtime/freeze_record.py). After a
``--leave-running`` thaw the archive is still being written — compressed from the staging dir —
and the freeze record is gone. So every export also records its temp path and its staging dir
here (``ROOT/run/exports/<checkpoint id>``, JSON) and holds a shared flock(2) on the temp file
while it writes: the kernel drops the lock when the writer dies, however it dies, and not before.
``sweep`` removes the temp files nobody holds, their staging dirs and their records: at the
start of every checkpoint and of the daemon.

The sweep removes only paths its own record names, and only ones shaped like an export's for
that checkpoint id: a temp file ``.NAME.<id>.tmp`` (unlink never follows a symlink) and a
staging dir ``ckpt-<id>`` directly in the state root's tmp dir.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

EXPORTS_DIR = "exports"
_ID = re.compile(r"[0-9a-f]{24}")


def temp_path(archive: Path, checkpoint_id: str) -> Path:
    """Where the export of ``checkpoint_id`` to ``archive`` is written until it is complete."""
    return archive.with_name(f".{archive.name}.{checkpoint_id}.tmp")


def begin(run_dir: Path, checkpoint_id: str, temp: Path, fd: int, staging: Path) -> None:
    """The export writing ``temp`` (open as ``fd``) from ``staging`` is under way: lock it, then
    record it (in that order: a record a sweep sees has its lock held while the writer lives)."""
    fcntl.flock(fd, fcntl.LOCK_SH)
    exports = run_dir / EXPORTS_DIR
    exports.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = exports / checkpoint_id
    staged = record.with_name(f".{checkpoint_id}.new")
    staged.write_text(json.dumps({"temp": str(temp), "staging": str(staging)}))
    os.replace(staged, record)


def end(run_dir: Path, checkpoint_id: str) -> None:
    """The export is renamed into place or rolled back: forget it."""
    (run_dir / EXPORTS_DIR / checkpoint_id).unlink(missing_ok=True)


def sweep(run_dir: Path, tmp_dir: Path) -> list[Path]:
    """Remove what exports whose writer died left (temp file, staging dir under ``tmp_dir``) and
    their records; the paths removed."""
    exports = run_dir / EXPORTS_DIR
    try:
        records = [p for p in exports.iterdir() if _ID.fullmatch(p.name)]
    except FileNotFoundError:
        return []
    removed: list[Path] = []
    for record in records:
        temp, staging = _read(record)
        if temp is None or not _is_temp_of(temp, record.name):
            log.warning("export record %s names no export temp file: record dropped", record)
            record.unlink(missing_ok=True)
            continue
        if _written_now(temp):
            continue
        try:
            temp.unlink(missing_ok=True)
        except OSError as exc:  # e.g. its directory went read-only: try again next time
            log.warning("cannot remove %s, left by an interrupted export: %s", temp, exc)
            continue
        removed.append(temp)
        if staging is not None and staging == tmp_dir / f"ckpt-{record.name}" and staging.is_dir() and not staging.is_symlink():
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
        log.info("removed %s: its export was interrupted", ", ".join(map(str, removed[-2:])))
        record.unlink(missing_ok=True)
    return removed


def _read(record: Path) -> tuple[Path | None, Path | None]:
    try:
        data = json.loads(record.read_text())
        return Path(data["temp"]), (Path(data["staging"]) if data.get("staging") else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def _is_temp_of(temp: Path, checkpoint_id: str) -> bool:
    name = temp.name
    return temp.is_absolute() and name.startswith(".") and name.endswith(f".{checkpoint_id}.tmp") and len(name) > 30


def _written_now(temp: Path) -> bool:
    """A live process holds the temp file's lock (a second open conflicts even within one process,
    so a checkpoint running in this process counts as live too)."""
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:  # gone, or not a regular file we may open: nobody writes it through this path
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
