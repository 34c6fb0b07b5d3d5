"""``pymigrate check [--json]``: report whether this host can run, checkpoint and migrate.

Exit codes: 0 when everything the core needs is present (optional features may be missing and are
shown as warnings), 1 when something needed is missing (each named with how to get it).
The probe runs on this machine (it does not go through ``--host``).
"""

from __future__ import annotations

import argparse
from typing import Any

from migrate.cli import EXIT_FAIL, EXIT_OK, add_json_flag


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check this host: kernel, cgroups, CRIU and its features",
        description="Probe this host (kernel, namespaces, overlayfs, cgroups, CAP_SYS_RESOURCE, CRIU and its features, "
        "pycriu) and say whether it can run, checkpoint and migrate containers. "
        "Exit 0 when ready, 1 when something needed is missing.",
    )
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx: Any) -> int:
    from migrate.check import evaluate, render_text
    from runtime.host import host_report

    result = evaluate(host_report())
    if ctx.json:
        ctx.emit_json(result.as_dict())
    else:
        print(render_text(result))
    return EXIT_OK if result.ok else EXIT_FAIL
