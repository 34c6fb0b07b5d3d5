"""A Migrate retried with its ``request_id`` after the source daemon died mid-call (issue 15).

The request record (migrate/remote/idempotency.py) holds the answer only once a call finished. A
daemon killed while it migrated leaves no answer; after its restart the outgoing record settles
the migration (migrate/migration/recovery.py: committed, the copy here removed; or rolled back)
and journals how it ended. Without more, the retry would run the migration again and, the
container having moved, fail with NOT_FOUND although the first call did what was asked.

So a Migrate with an id first leaves a pending note (the container's id, when it started); a
retry that finds one reads the journal (runtime/events.py) for that container's migration to the
same destination since then: "completed" answers with a MigrateResult (the stats the journal kept:
frozen and total time of a driver's own event, none of a settlement's); anything else runs the
migration again (the container is still here: rolled back, or waiting for its settlement, which
the engine refuses to move, so the retry fails and the note stays for the next one).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from migrate import api


def note(engine: Any, request: Any, interrupted: dict[str, Any] | None) -> dict[str, Any]:
    """The pending note of a Migrate call: the container's id and the first call's start time."""
    container_id = engine.inspect(request.name).spec.container_id
    since = float(interrupted["since"]) if interrupted and interrupted.get("container_id") == container_id else time.time()
    return {"container_id": container_id, "since": since, "dest": request.dest}


def settled_result(root: Path | None, request: Any, interrupted: dict[str, Any] | None) -> api.MigrateResult | None:
    """The result of the interrupted call ``interrupted`` (its note) when the journal shows its
    migration completed; None: not known to have (run it again)."""
    if root is None or not interrupted or not interrupted.get("container_id"):
        return None
    from runtime.errors import EventsLost
    from runtime.events import Journal

    try:
        events = Journal(root).read()
    except EventsLost:
        return None
    since = float(interrupted.get("since", 0.0)) - 1.0  # the journal's clock, as the note's: one second's slack
    ended = [e for e in events
             if e.type == "migration" and e.action in ("completed", "failed") and e.time >= since
             and e.attributes.get("container_id") == interrupted["container_id"] and e.attributes.get("dest") == request.dest]
    if not ended or ended[-1].action != "completed":
        return None
    last = ended[-1]
    mode = last.attributes.get("mode", "")
    stats = api.MigrationStats(frozen_ms=_float(last.attributes.get("frozen_ms")), total_ms=_float(last.attributes.get("total_ms")))
    return api.MigrateResult(container_name=last.name, dest=request.dest,
                             mode=mode if mode in ("cold", "postcopy", "precopy", "auto") else "cold",
                             stats=stats)


def _float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0
