"""A container's output: logs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from migrate.cli import EXIT_OK, add_json_flag


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("logs", help="print a container's output")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the container exits")
    add_json_flag(p)
    p.add_argument("name")
    p.set_defaults(handler=cmd_logs)


def cmd_logs(args: argparse.Namespace, ctx: Any) -> int:
    if ctx.json:
        data = b"".join(ctx.engine.logs(args.name, follow=args.follow))
        ctx.emit_json({"name": args.name, "log": data.decode(errors="replace")})
        return EXIT_OK
    out = sys.stdout.buffer
    for chunk in ctx.engine.logs(args.name, follow=args.follow):
        out.write(chunk)
        out.flush()
    return EXIT_OK
