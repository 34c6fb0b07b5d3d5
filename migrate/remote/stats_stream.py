"""The daemon's side of the Stats RPC: samples of ``engine.stats`` (runtime/stats.py), once or every
``interval_s`` until the call ends; CPU % between consecutive samples of the same call."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

DEFAULT_INTERVAL_S = 1.0
MIN_INTERVAL_S = 0.1  # a caller cannot make the daemon spin


def _sample(engine: Any, names: list[str], previous: dict[str, Any]) -> dict[str, Any]:
    """name -> ContainerStats. Named containers must exist (NOT_FOUND); listed ones may go meanwhile."""
    from runtime.errors import ContainerNotFound

    listed = names or [info.spec.name for info in engine.containers(all=False)]
    out = {}
    for name in listed:
        try:
            out[name] = engine.stats(name, previous.get(name))
        except ContainerNotFound:
            if names:
                raise
    return out


def serve_stats(engine: Any, request: Any, context: Any) -> Iterator[Any]:
    from migrate._proto.pymigrate.v1 import host_pb2 as pb
    from migrate.remote import convert as cv

    ended = threading.Event()
    if context is not None:
        context.add_callback(ended.set)
    interval = max(MIN_INTERVAL_S, cv.seconds_of(request, "interval", "interval_s") or DEFAULT_INTERVAL_S)
    previous: dict[str, Any] = {}
    while True:
        current = _sample(engine, list(request.names), previous)
        now = time.time()
        yield pb.StatsResponse(samples=[cv.stats_to_pb(s, now) for s in current.values()])
        if not request.stream or ended.wait(interval):
            return
        previous = current
