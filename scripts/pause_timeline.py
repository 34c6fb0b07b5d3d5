#!/usr/bin/env python3
"""The pause of each post-copy migration, step by step, from the daemons' --debug logs.

    scripts/pause_timeline.py SOURCE_DAEMON.log TARGET_DAEMON.log [...]

Both daemons of a migration on one machine share the monotonic clock, so the ``at_ms=`` lines
(migrate/migration/sequence.py, postcopy.py and the restore shell in runtime/checkpointing.py)
line up: each step in ms since the source froze, and since the step before it.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict

LINE = re.compile(r"(migration|container)=(\S+) .*at_ms=([\d.]+) (.*)$")


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
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
