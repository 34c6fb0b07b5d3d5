"""``checkpoint --leave-running --export``: plain trees copied mostly before the freeze.

A plain upper dir and the named volumes an export carries must be captured as they are while
the container is frozen. Copying them whole then (``cp -a``) kept the container frozen for as
long as the copy took (a 256 MiB volume beside a 64 MiB memhog: frozen 100-500 ms where a plain
checkpoint, which carries no volume, took ~100 ms). So, with what a live migration uses for the
same trees (migrate/migration/upper_sync.py: its delta, its ctime reasoning and racy margin):

1. ``stage``, before the freeze, while the container runs: per tree, ``syncfs``, every entry's
   signature (lstat: inode, ctime, ...), then ``cp -a`` into the staging dir. Read after its
   signature, a copied entry is right unless its signature moves by the freeze (or falls in the
   racy margin). An entry in the copy without a signature (made after the walk) never matches;
   an entry gone by the freeze is deleted from the copy. A ``cp`` that fails (an entry vanished
   under it) leaves the tree to the frozen whole copy;
2. ``capture``, frozen: one stat walk per tree, and only what changed into an uncompressed
   archive (``write_delta``); a tree a delta cannot express (a hardlinked file changed) is
   copied whole, as before;
3. ``merge``, after the thaw: the delta extracted and applied to the copy (``apply_delta``),
   leaving each tree at ``staging/<prefix>`` as it was frozen; the export archives it from there.

``PYMIGRATE_EXPORT_PRESYNC=0`` turns it off (the trees copied whole while frozen, as before;
``scripts/bench.py checkpoint --only frozen --volume-mib N`` compares both).

Every file lives in the staging dir, so a failure anywhere leaves only what the staging dir's
owner removes already (rollback, or the sweep of an export killed after its thaw).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

DELTA = "presync-delta.pma"  # what changed between the stage and the freeze, written while frozen
_RECEIVED = "presync-delta"  # where ``merge`` extracts it
_STALE = "presync-stale"  # copies a frozen whole copy replaced (removed with the staging dir)


@dataclass
class Presync:
    """The trees copied before the freeze (path in the staging dir -> source dir), their
    snapshots and, once frozen, their deltas (a tree without one was copied whole then)."""

    staging: Path
    trees: dict[str, Path]
    snapshots: dict[str, Any]  # rel -> upper_sync.UpperSnapshot
    deltas: dict[str, Any] = field(default_factory=dict)  # rel -> upper_sync.UpperDelta


def stage(staging: Path, trees: dict[str, Path]) -> Presync | None:
    """Before the freeze: copy ``trees`` (path in ``staging`` -> source dir) as they are now;
    None when no tree could be staged."""
    started = time.monotonic()
    snapshots = {}
    for rel, src in trees.items():
        snapshot = _stage_tree(src, staging / rel)
        if snapshot is not None:
            snapshots[rel] = snapshot
    if not snapshots:
        return None
    log.info("presync: %s copied before the freeze in %.1f ms", ", ".join(snapshots), (time.monotonic() - started) * 1000)
    return Presync(staging, {rel: trees[rel] for rel in snapshots}, snapshots)


def _stage_tree(src: Path, dst: Path) -> Any:
    """``src`` copied to ``dst``; the snapshot ``compute_delta`` compares with, or None (no copy)."""
    from migrate.migration.upper_sync import Signature, UpperSnapshot, scan
    from runtime.fstree import remove_tree
    from runtime.upperfs import syncfs

    taken_ns = time.time_ns()
    syncfs(src)  # later stores through shared mmaps fault, and so move ctime (upper_sync's docstring)
    signatures = {rel: Signature.of(st) for rel, st in scan(src, running=True)}
    dst.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["cp", "-a", "--no-target-directory", "--", str(src), str(dst)], capture_output=True, text=True)
    if proc.returncode != 0:  # e.g. a file vanished under cp: the frozen copy takes the whole tree
        log.info("presync: %s not staged (cp: %s)", src, proc.stderr.strip()[:300])
        remove_tree(dst)
        return None
    entries = {}
    for rel, st in scan(dst, running=True):  # what the copy holds; an entry without its own signature never matches
        copied = Signature.of(st)
        known = signatures.get(rel)
        entries[rel] = known if known is not None and known.kind == copied.kind else dataclasses.replace(copied, ino=-1)
    return UpperSnapshot(root=src, taken_ns=taken_ns, entries=entries)


def capture(presync: Presync, copy_tree: Callable[[Path, Path], None]) -> None:
    """Frozen: each tree's changes since ``stage`` into ``staging/DELTA``; a tree no delta can
    express goes whole to ``staging/<rel>`` through ``copy_tree(src, dst)``."""
    from migrate.archive import ArchiveWriter
    from migrate.migration.upper_sync import compute_delta, write_delta

    with open(presync.staging / DELTA, "wb") as out, ArchiveWriter(out, compress="none") as writer:
        writer.write_manifest({"kind": "presync-delta"})
        for rel, src in presync.trees.items():
            delta = compute_delta(presync.snapshots[rel], src)
            if delta is None:  # hardlinks changed: the whole tree, as it is now
                log.info("presync: %s copied whole while frozen", rel)
                stale = presync.staging / _STALE
                stale.mkdir(exist_ok=True)
                os.rename(presync.staging / rel, stale / str(len(os.listdir(stale))))  # removed after the thaw
                copy_tree(src, presync.staging / rel)
                continue
            write_delta(writer, rel, src, delta)
            presync.deltas[rel] = delta


def merge(presync: Presync) -> None:
    """After the thaw: each tree with a delta at ``staging/<rel>``, as it was frozen."""
    from migrate.archive import read_archive
    from migrate.migration.upper_sync import apply_delta

    staging = presync.staging
    got = staging / _RECEIVED
    with open(staging / DELTA, "rb") as f:  # our own bytes, read by the usual rules anyway
        read_archive(f, got, allow_devices=True)
    for rel, delta in presync.deltas.items():
        received = got / rel
        received.mkdir(parents=True, exist_ok=True)  # nothing changed: no member at all
        apply_delta(staging / rel, received, delta)
    shutil.rmtree(got)
    (staging / DELTA).unlink()
    shutil.rmtree(staging / _STALE, ignore_errors=True)
