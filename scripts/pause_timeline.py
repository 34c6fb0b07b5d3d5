#!/usr/bin/env python3
"""The pause of each post-copy migration, step by step, from the daemons' --debug logs.

    scripts/pause_timeline.py [--summary] SOURCE_DAEMON.log TARGET_DAEMON.log [...]

Both daemons of a migration on one machine share the monotonic clock, so the ``at_ms=`` lines
(migrate/migration/sequence.py, postcopy.py and the restore shell in runtime/checkpointing.py)
line up: each step in ms since the source froze, and since the step before it.

``--summary``: one line per migration with the pause cut into its stages (freeze -> CRIU's dump
starts, CRIU's lazy dump of all but memory, its images to the target and unpacked, the target's
checks and root mount, CRIU's restore, the resume: link up and the record), then their medians.
"""

from __future__ import annotations

import re
import statistics
import sys
from collections import defaultdict

LINE = re.compile(r"(migration|container)=(\S+) .*at_ms=([\d.]+) (.*)$")
# (stage, the step that ends it); each stage starts where the one before it ended
STAGES = (
    ("to_dump", "source: criu lazy dump started"),
    ("criu_dump", "source: criu post-dump (images written)"),
    ("images", "target: archive unpacked"),
    ("target_prep", "request sent to the waiting criu"),
    ("criu_restore", "shim started (criu restore done)"),
    ("resume", "target: restored (running)"),
)


def timelines(paths: list[str]) -> dict[str, list[tuple[float, str]]]:
    marks = []
    for path in paths:
        with open(path, errors="replace") as f:
            marks += [(float(m[3]), m[1], m[2], m[4].strip()) for m in map(LINE.search, f) if m]
    marks.sort()
    steps: dict[str, list[tuple[float, str]]] = defaultdict(list)
    current = "?"
    for at, kind, ident, what in marks:
        if kind == "migration":
            current = ident
        steps[current].append((at, what))  # a restore shell's lines belong to the migration around them
    return steps


def stages(timeline: list[tuple[float, str]]) -> dict[str, float] | None:
    """ms per stage of one migration's pause (None if a step is missing: not a post-copy pause)."""
    at = {what: t for t, what in timeline}
    start = at.get("source: frozen")
    if start is None or any(step not in at for _, step in STAGES):
        return None
    out, before = {}, start
    for name, step in STAGES:
        out[name] = at[step] - before
        before = at[step]
    out["pause"] = before - start
    return out


def summary(steps: dict[str, list[tuple[float, str]]]) -> None:
    names = [n for n, _ in STAGES] + ["pause"]
    print(f"{'migration':<18}" + "".join(f"{n:>13}" for n in names))
    rows = []
    for migration, timeline in steps.items():
        row = stages(timeline)
        if row is not None:
            rows.append(row)
            print(f"{migration:<18}" + "".join(f"{row[n]:>13.1f}" for n in names))
    if rows:
        print(f"{'median':<18}" + "".join(f"{statistics.median(r[n] for r in rows):>13.1f}" for n in names))


def main(argv: list[str]) -> int:
    paths = [a for a in argv if a != "--summary"]
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    steps = timelines(paths)
    if "--summary" in argv:
        summary(steps)
        return 0
    for migration, timeline in steps.items():
        start = next((at for at, what in timeline if what == "source: frozen"), timeline[0][0])
        before = start
        print(f"== migration {migration}")
        for at, what in timeline:
            print(f"  {at - start:8.1f} (+{at - before:6.1f}) {what}")
            before = at
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
