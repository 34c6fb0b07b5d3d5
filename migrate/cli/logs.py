"""A container's output: logs.

The container's stdout goes to our stdout and its stderr to our stderr (``2>/dev/null`` hides
the container's stderr), merged in the order they were written (runtime/logs.py: times from the
shim's index). A ``-t`` container has one stream, its terminal, as with docker.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable

from migrate.cli import EXIT_OK, add_json_flag

def register(subparsers: Any) -> None:
    p = subparsers.add_parser("logs", help="print a container's output",
                              description="Print a container's stdout (to stdout) and stderr (to stderr) in the order "
                                          "they were written.")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the container exits")
    p.add_argument("-n", "--tail", default="all", metavar="N|all", help="only the last N lines (default all)")
    p.add_argument("--since", metavar="TIME",
                   help="lines written at or after TIME: RFC 3339, unix seconds, or a duration ago (10m, 1h30m)")
    p.add_argument("--until", metavar="TIME", help="lines written before TIME (same forms as --since)")
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix each line with its RFC 3339 time (ns)")
    add_json_flag(p)
    p.add_argument("name")
    p.set_defaults(handler=cmd_logs)


def parse_tail(text: str) -> int | None:
    """``--tail``: a count >= 0, or ``all`` (None)."""
    from runtime.errors import InvalidArgument

    if text.strip().lower() == "all":
        return None
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise InvalidArgument(f"invalid --tail {text!r}: expected a number of lines or all", hint="e.g. --tail 20")
    return count


def cmd_logs(args: argparse.Namespace, ctx: Any) -> int:
    from runtime.logs import parse_time

    entries = ctx.engine.logs(
        args.name, follow=args.follow, tail=parse_tail(args.tail),
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
    )
    if ctx.json:
        ctx.emit_json(entries_json(entries))
        return EXIT_OK
    write_entries(entries, timestamps=args.timestamps, follow=args.follow)
    return EXIT_OK


def entries_json(entries: Iterable[Any]) -> list[dict[str, Any]]:
    """``logs --json``: [{stream, time (RFC 3339, "" when unknown), time_ns, line}]."""
    from runtime.logs import format_time

    return [{"stream": e.stream, "time": format_time(e.time_ns) if e.time_ns else "", "time_ns": e.time_ns,
             "line": e.data.decode(errors="replace")} for e in entries if e.data]


def write_entries(entries: Iterable[Any], *, timestamps: bool = False, follow: bool = True) -> bool:
    """Each entry to our stdout or stderr as its stream; flushed at once when following, else
    when the stream changes (a terminal shows both in order) and at the end. Returns whether our
    stdout was left in the middle of a line."""
    from runtime.logs import format_time

    outs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    mid_line = False
    last: Any = None
    stamp_ns, stamp = -1, b""  # lines seen by one scan of the shim share their time: format it once
    for e in entries:
        if not e.data:
            continue  # a follower's keep-alive
        out = outs.get(e.stream, outs["stdout"])
        if timestamps:
            if e.time_ns != stamp_ns:
                stamp_ns, stamp = e.time_ns, format_time(e.time_ns).encode() + b" "
            out.write(stamp)
        if out is not last and last is not None:
            last.flush()
        out.write(e.data)
        if follow:
            out.flush()
        last = out
        if out is outs["stdout"]:
            mid_line = not e.data.endswith(b"\n")
    for out in outs.values():
        out.flush()
    return mid_line
