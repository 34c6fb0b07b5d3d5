"""Lifecycle events: events.

Container, checkpoint, image and migration events of this host's state root (runtime/events.py),
or with ``--host`` of a daemon's (WatchEvents). As ``docker events``: follows until Ctrl-C;
``--since`` prints the history from then first, ``--until`` stops. Each event carries its
sequence number: ``--since SEQUENCE`` resumes exactly after it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from migrate.cli import EXIT_OK, add_json_flag

# --since N below this is a sequence number (a cursor); at or above it, unix seconds
_CURSOR_BELOW = 1_000_000_000


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("events", help="print container, checkpoint, image and migration events",
                              description="Print events as they happen (until Ctrl-C): container lifecycle, checkpoints, "
                                          "images and migrations, each with its sequence number.")
    p.add_argument("--since", metavar="CURSOR|TIME",
                   help="first the events after sequence number CURSOR (a number below 10^9), or since TIME "
                        "(RFC 3339, unix seconds, or a duration ago: 10m)")
    p.add_argument("--until", metavar="TIME", help="stop at TIME (same forms as --since's TIME)")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="type=container|checkpoint|image|migration, container=NAME|ID, event=ACTION, label=KEY[=VALUE] "
                        "(repeat: one key's values are alternatives, different keys all apply)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="json: one JSON object per line")
    add_json_flag(p)
    p.set_defaults(handler=cmd_events)


def parse_since(text: str | None) -> tuple[int | None, float | None]:
    """``--since``: (cursor, None), (None, unix time) or (None, None) when not given."""
    if text is None:
        return None, None
    text = text.strip()
    if text.isdigit() and int(text) < _CURSOR_BELOW:
        return int(text), None
    from runtime.logs import parse_time

    return None, parse_time(text)


def cmd_events(args: argparse.Namespace, ctx: Any) -> int:
    from runtime.logs import parse_time

    cursor, since_time = parse_since(args.since)
    until = parse_time(args.until) if args.until else None
    as_json = ctx.json or args.format == "json"
    try:
        for event in _events(ctx.engine, cursor, since_time, tuple(args.filter)):
            if event is None:
                if until is not None and time.time() >= until:
                    break
                continue
            if until is not None and event.time >= until:
                break
            if since_time is not None and event.time < since_time:
                continue
            sys.stdout.write(json.dumps(event.to_json(), sort_keys=True) if as_json else format_event(event))
            sys.stdout.write("\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a follow: success, as docker's
    return EXIT_OK


def _events(engine: Any, cursor: int | None, since_time: float | None, filters: tuple[str, ...]) -> Any:
    """The engine's events; ``--since TIME``: every kept one (then filtered by time), starting at the
    oldest kept when older ones were rotated out (a time asks for no exact cursor)."""
    from runtime.errors import EventsLost

    if since_time is None:
        return engine.events(cursor, filters)
    stream = engine.events(0, filters)
    try:
        first = next(stream)
    except EventsLost as exc:
        stream = engine.events(exc.oldest - 1, filters)
        first = next(stream)

    def chained() -> Any:
        yield first
        yield from stream

    return chained()


def format_event(event: Any) -> str:
    """docker's line: TIME TYPE ACTION ID (name=..., attributes), the sequence first."""
    from runtime.logs import format_time

    attrs = {"name": event.name, **event.attributes} if event.name else dict(event.attributes)
    detail = ", ".join(f"{k}={v}" for k, v in attrs.items())
    stamp = format_time(int(event.time * 1e9))
    return f"{event.sequence} {stamp} {event.type} {event.action} {event.id or '-'} ({detail})"
