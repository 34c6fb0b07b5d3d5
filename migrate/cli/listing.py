"""Listing containers: ps and inspect."""

from __future__ import annotations

import argparse
import time
from typing import Any

from migrate.cli import EXIT_OK, add_json_flag
from migrate.cli.containers import ports_column


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("ps", help="list containers")
    p.add_argument("-a", "--all", action="store_true", help="include exited containers")
    p.add_argument("-q", "--quiet", action="store_true", help="print names only")
    add_json_flag(p)
    p.set_defaults(handler=cmd_ps)

    p = subparsers.add_parser("inspect", help="show a container's spec and state")
    p.add_argument("name")
    add_json_flag(p)
    p.set_defaults(handler=cmd_inspect)


# -- listing --------------------------------------------------------------------------------------


def _status(info: Any) -> str:
    st = info.state
    if st.status == "exited":
        code = "?" if st.exit_code is None or st.exit_code < 0 else st.exit_code
        extra = ", oom-killed" if st.oom_killed else ""
        return f"exited ({code}{extra}) {_ago(st.finished_at)}".rstrip()
    if st.status in ("running", "paused"):
        restarts = f" (restarted {st.restart_count}x)" if st.restart_count else ""
        return f"{st.status} {_since(st.started_at)}".rstrip() + restarts
    return st.status


def _ago(t: float | None) -> str:
    return f"{_duration(time.time() - t)} ago" if t else ""


def _since(t: float | None) -> str:
    return f"for {_duration(time.time() - t)}" if t else ""


def _duration(s: float) -> str:
    s = max(0, int(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def cmd_ps(args: argparse.Namespace, ctx: Any) -> int:
    infos = ctx.engine.containers(all=args.all)
    if ctx.json:
        ctx.emit_json(infos)
        return EXIT_OK
    if args.quiet:
        for i in infos:
            print(i.spec.name)
        return EXIT_OK
    rows = [("CONTAINER ID", "NAME", "IMAGE", "COMMAND", "STATUS", "IP", "PORTS")]
    for i in infos:
        cmd = " ".join(i.spec.command)
        rows.append((i.spec.container_id[:12], i.spec.name, i.spec.image, cmd if len(cmd) <= 30 else cmd[:27] + "...", _status(i), i.spec.ip or i.state.shared_namespaces.get("net", "-"),
                     ports_column(i.spec.ports)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace, ctx: Any) -> int:
    ctx.emit_json(ctx.engine.inspect(args.name))
    return EXIT_OK
