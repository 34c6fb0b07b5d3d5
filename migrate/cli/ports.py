"""``pymigrate port NAME [PRIVATE_PORT[/PROTO]] [--json]``: a container's published ports.

One line per mapping, as docker prints them (``80/tcp -> 0.0.0.0:8080``); with a private port
only that port's host addresses (``0.0.0.0:8080``). Exit 1 when the filter matches nothing
(docker: "no public port '81/tcp' published"). Works through ``--host`` (inspect carries the spec).
"""

from __future__ import annotations

import argparse
from typing import Any

from migrate.cli import EXIT_FAIL, EXIT_OK, add_json_flag


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("port", help="list a container's published ports")
    add_json_flag(p)
    p.add_argument("name")
    p.add_argument("private_port", nargs="?", metavar="PRIVATE_PORT[/PROTO]", help="only this container port")
    p.set_defaults(handler=cmd_port)


def cmd_port(args: argparse.Namespace, ctx: Any) -> int:
    from runtime.ports import format_mapping, port_filter

    wanted = port_filter(args.private_port) if args.private_port else None  # bad input: before the call
    ports = ctx.engine.inspect(args.name).spec.ports
    if wanted is not None:
        port, proto = wanted
        ports = tuple(m for m in ports if m.container_port == port and (proto is None or m.protocol == proto))
    if ctx.json:
        ctx.emit_json([m.to_dict() for m in ports])
        return EXIT_OK if ports or wanted is None else EXIT_FAIL
    if not ports and wanted is not None:
        print(f"no public port {args.private_port} published for {args.name}")
        return EXIT_FAIL
    for m in ports:
        print(m.host_label if wanted is not None else format_mapping(m))
    return EXIT_OK
