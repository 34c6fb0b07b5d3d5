"""``pymigrate image``: import, list, remove and build root filesystem images.

Subcommands (all call the engine; nothing here touches the image store directly)::

    pymigrate image import NAME TARBALL     tar, tar.gz or tar.zst (detected by content)
    pymigrate image load FILE|DIR [--name NAME[:TAG]] [--platform OS/ARCH[/VARIANT]]
                                            Docker archive, OCI archive or OCI layout (docs/images.md)
    pymigrate image inspect NAME            the image and its config (json)
    pymigrate image ls [--json]
    pymigrate image rm NAME
    pymigrate image build-busybox [NAME]    from the host's busybox-static (default name: busybox)

Exit codes: 0 success, 125 the engine refused (bad name, unsafe archive, no such image...).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from migrate.cli import EXIT_OK, add_json_flag

SHORT_DIGEST = 12


def register(subparsers: Any) -> None:
    image = subparsers.add_parser(
        "image", help="manage root filesystem images", description="Import, list, remove and build root filesystem images."
    )
    sub = image.add_subparsers(dest="image_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("import", help="import a tarball (plain, gzip or zstd) as an image")
    p.add_argument("name", metavar="NAME", help="image name, [a-z0-9][a-z0-9._-]* with an optional :tag")
    p.add_argument("tarball", metavar="TARBALL", type=Path, help="the root filesystem as a tar archive")
    add_json_flag(p)
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("load", help="load a Docker archive, OCI archive or OCI layout directory")
    p.add_argument("path", metavar="FILE|DIR", type=Path, help="docker save / podman save output, or an OCI image layout")
    p.add_argument("--name", metavar="NAME[:TAG]", default=None, help="image name (default: the archive's own)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", default=None,
                   help="which image of a multi-platform archive (default: this host's)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_load)

    p = sub.add_parser("inspect", help="show an image and its config (json)")
    p.add_argument("name", metavar="NAME")
    add_json_flag(p)
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("ls", help="list images")
    add_json_flag(p)
    p.set_defaults(handler=cmd_ls)

    p = sub.add_parser("rm", help="remove an image name (and its rootfs when no other name uses it)")
    p.add_argument("name", metavar="NAME")
    add_json_flag(p)
    p.set_defaults(handler=cmd_rm)

    p = sub.add_parser("build-busybox", help="build a minimal image from the host's busybox-static")
    p.add_argument("name", metavar="NAME", nargs="?", default="busybox")
    add_json_flag(p)
    p.set_defaults(handler=cmd_build_busybox)


def cmd_import(args: argparse.Namespace, ctx: Any) -> int:
    info = ctx.engine.image_import(args.name, args.tarball)
    _emit_one(ctx, info, "imported")
    return EXIT_OK


def _local_only(ctx: Any, method: str, verb: str) -> Any:
    fn = getattr(ctx.engine, method, None)
    if fn is None:
        from runtime.errors import Unsupported

        raise Unsupported(f"image {verb}", "not over a daemon connection yet", hint=f"run 'pymigrate image {verb}' on the host itself")
    return fn


def cmd_load(args: argparse.Namespace, ctx: Any) -> int:
    info = _local_only(ctx, "image_load", "load")(args.path, name=args.name, platform=args.platform)
    _emit_one(ctx, info, "loaded")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace, ctx: Any) -> int:
    details = _local_only(ctx, "image_inspect", "inspect")(args.name)
    data = dict(_as_dict(details.image), config=details.config)
    if ctx.json:
        ctx.emit_json(data)
    else:
        import json

        print(json.dumps(data, indent=2, sort_keys=True))
    return EXIT_OK


def cmd_ls(args: argparse.Namespace, ctx: Any) -> int:
    images = sorted(ctx.engine.images(), key=lambda i: i.name)
    if ctx.json:
        ctx.emit_json([_as_dict(i) for i in images])
        return EXIT_OK
    rows = [("NAME", "DIGEST", "SIZE", "CREATED")]
    rows += [(i.name, short_digest(i.digest), human_bytes(i.size_bytes), human_age(i.created_at)) for i in images]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip())
    return EXIT_OK


def cmd_rm(args: argparse.Namespace, ctx: Any) -> int:
    ctx.engine.image_remove(args.name)
    if ctx.json:
        ctx.emit_json({"removed": args.name})
    else:
        print(args.name)
    return EXIT_OK


def cmd_build_busybox(args: argparse.Namespace, ctx: Any) -> int:
    info = ctx.engine.image_build_busybox(args.name)
    _emit_one(ctx, info, "built")
    return EXIT_OK


def _emit_one(ctx: Any, info: Any, verb: str) -> None:
    if ctx.json:
        ctx.emit_json(_as_dict(info))
    else:
        print(f"{verb} {info.name} {info.digest} ({human_bytes(info.size_bytes)})")


def _as_dict(info: Any) -> dict[str, Any]:
    return {"name": info.name, "digest": info.digest, "size_bytes": info.size_bytes, "created_at": info.created_at}


def short_digest(digest: str) -> str:
    return digest.split(":", 1)[-1][:SHORT_DIGEST]


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(created_at: float, now: float | None = None) -> str:
    seconds = max(0.0, (time.time() if now is None else now) - created_at)
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"
