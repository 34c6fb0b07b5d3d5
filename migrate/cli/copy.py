"""``cp``: files between a container and the host, docker's way (local only)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from migrate.cli import EXIT_OK, add_json_flag


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "cp", help="copy files between a container and the host",
        description="cp [-a] [-L] NAME:SRC DEST | SRC NAME:DEST. '-' as DEST writes a tar to stdout, "
        "'-' as SRC reads one from stdin (unpacked into DEST, an existing directory). "
        "SRC/. copies a directory's contents. Container paths resolve inside the container "
        "(its symlinks never lead to host files); relative ones are below its working directory. "
        "Works on running, paused, created and exited containers (out of a checkpointed one too). "
        "Files copied in belong to root unless -a; copied out, to you unless -a. "
        "A local path with a colon: write ./a:b. Only on the container's host (not with --host).",
    )
    p.add_argument("-a", "--archive", action="store_true", help="keep the files' uid/gid")
    p.add_argument("-L", "--follow-link", action="store_true", help="copy what SRC links to when it is a symlink")
    add_json_flag(p)
    p.add_argument("src", metavar="SRC")
    p.add_argument("dest", metavar="DEST")
    p.set_defaults(handler=cmd_cp)


def cmd_cp(args: argparse.Namespace, ctx: Any) -> int:
    from runtime.container_files.paths import parse_location
    from runtime.errors import InvalidArgument

    src_name, src_path = parse_location(args.src)
    dest_name, dest_path = parse_location(args.dest)
    if src_name and dest_name:
        raise InvalidArgument("cannot copy between two containers: expected NAME:PATH on one side only",
                              hint="copy out to the host, then in")
    if not src_name and not dest_name:
        raise InvalidArgument(f"neither {args.src!r} nor {args.dest!r} names a container: expected NAME:PATH on one side")
    if ctx.json and dest_path == "-" and src_name:
        raise InvalidArgument("--json cannot share stdout with the tar stream of DEST '-'")
    if src_name:
        dest: Any = sys.stdout.buffer if dest_path == "-" else dest_path
        result = ctx.engine.copy_from_container(src_name, src_path, dest, archive=args.archive, follow=args.follow_link)
        if dest_path == "-":
            sys.stdout.buffer.flush()
    elif dest_name is not None:
        src: Any = sys.stdin.buffer if src_path == "-" else src_path
        result = ctx.engine.copy_to_container(dest_name, src, dest_path, archive=args.archive, follow=args.follow_link)
    if ctx.json:
        ctx.emit_json({"container": result.container, "source": result.source, "destination": result.destination})
    return EXIT_OK
