"""``pymigrate volume``: named volumes (runtime/volumes.py), docker's verbs.

    pymigrate volume create [NAME] [--label KEY=VALUE]...   a random name when none is given
    pymigrate volume ls [-q]                                DRIVER, VOLUME NAME (docker's columns)
    pymigrate volume inspect NAME...                        the record: mountpoint, created, labels, users
    pymigrate volume rm [-f] NAME...                        refused while a container (any state) uses it;
                                                            -f: a missing name is no error (docker)
    pymigrate volume prune [-f]                             every volume no container uses

A container mounts one with ``run -v NAME:/path[:ro]`` or ``--mount type=volume,source=NAME,target=/path``
(made on first use, with the image's content at /path). Exit codes: 0 success, 1 prune not
confirmed, 125 the engine refused (bad name, no such volume, in use).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from migrate.cli import EXIT_ERROR, EXIT_FAIL, EXIT_OK, add_json_flag


def register(subparsers: Any) -> None:
    volume = subparsers.add_parser("volume", help="manage named volumes",
                                   description="Create, list, inspect and remove named volumes.")
    sub = volume.add_subparsers(dest="volume_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("create", help="create a volume (an existing one is kept as it is)")
    p.add_argument("name", metavar="NAME", nargs="?", default=None, help="[a-zA-Z0-9][a-zA-Z0-9_.-]* (default: random)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeatable)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_create)

    p = sub.add_parser("ls", help="list volumes")
    p.add_argument("-q", "--quiet", action="store_true", help="names only")
    add_json_flag(p)
    p.set_defaults(handler=cmd_ls)

    p = sub.add_parser("inspect", help="show volumes (json)")
    p.add_argument("names", nargs="+", metavar="NAME")
    add_json_flag(p)
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("rm", help="remove volumes no container uses")
    p.add_argument("-f", "--force", action="store_true", help="a missing volume is no error")
    p.add_argument("names", nargs="+", metavar="NAME")
    add_json_flag(p)
    p.set_defaults(handler=cmd_rm)

    p = sub.add_parser("prune", help="remove every volume no container uses")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation (asked only on a terminal)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_prune)


def _engine_method(ctx: Any, method: str) -> Any:
    fn = getattr(ctx.engine, method, None)
    if fn is None:
        from runtime.errors import Unsupported

        raise Unsupported("volume commands", "not over a daemon connection", hint="run them on the daemon's host")
    return fn


def _as_dict(info: Any) -> dict[str, Any]:
    return {"name": info.name, "driver": info.driver, "mountpoint": info.mountpoint, "created_at": info.created_at,
            "labels": dict(item.partition("=")[::2] for item in info.labels), "used_by": list(info.used_by)}


def cmd_create(args: argparse.Namespace, ctx: Any) -> int:
    info = _engine_method(ctx, "volume_create")(args.name, tuple(args.label))
    if ctx.json:
        ctx.emit_json(_as_dict(info))
    else:
        print(info.name)
    return EXIT_OK


def cmd_ls(args: argparse.Namespace, ctx: Any) -> int:
    infos = _engine_method(ctx, "volumes")()
    if ctx.json:
        ctx.emit_json([_as_dict(i) for i in infos])
    elif args.quiet:
        for i in infos:
            print(i.name)
    else:
        print(f"{'DRIVER':<10}VOLUME NAME")
        for i in infos:
            print(f"{i.driver:<10}{i.name}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace, ctx: Any) -> int:
    inspect = _engine_method(ctx, "volume_inspect")
    ctx.emit_json([_as_dict(inspect(name)) for name in args.names])
    return EXIT_OK


def cmd_rm(args: argparse.Namespace, ctx: Any) -> int:
    """Each name in turn (docker's way): a refused one is reported and the rest still go."""
    from runtime.errors import ContainerError

    remove = _engine_method(ctx, "volume_remove")
    removed, failed = [], []
    for name in args.names:
        try:
            if remove(name, force=args.force):
                removed.append(name)
        except ContainerError as exc:
            failed.append({"name": name, "error": exc.message, "hint": exc.hint})
    if ctx.json:
        ctx.emit_json({"removed": removed, "failed": failed})
    else:
        for name in removed:
            print(name)
        for f in failed:
            print(f"error: {f['error']}" + (f"\nhint: {f['hint']}" if f["hint"] else ""), file=sys.stderr)
    return EXIT_ERROR if failed else EXIT_OK


def cmd_prune(args: argparse.Namespace, ctx: Any) -> int:
    if not args.force and not ctx.json and sys.stdin.isatty():
        answer = input("This removes every volume no container uses. Continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return EXIT_FAIL
    result = _engine_method(ctx, "volume_prune")()
    if ctx.json:
        ctx.emit_json({"removed": list(result.removed), "bytes_freed": result.bytes_freed})
    else:
        for name in result.removed:
            print(name)
        print(f"Total reclaimed space: {result.bytes_freed} B")
    return EXIT_OK
