"""``pymigrate commit``: a new image from a container's changes (docker commit's options).

    pymigrate commit [-c CHANGE]... [-m MESSAGE] [--author A] [--pause=false] NAME IMAGE[:TAG]

The image is the container's image layers plus one layer of what the container changed, with
the config it runs with and the ``--change`` instructions applied (runtime/commit.py,
runtime/commit_changes.py); ``run`` and ``image push`` take it like any pulled image.
"""

from __future__ import annotations

import argparse
from typing import Any

from migrate.cli import EXIT_OK, add_json_flag


def register(sub: Any) -> None:
    p = sub.add_parser("commit", help="create an image from a container's changes")
    p.add_argument("container", metavar="NAME", help="container name or id (running, paused or stopped)")
    p.add_argument("image", metavar="IMAGE[:TAG]", help="the new image's name, [a-z0-9][a-z0-9._-]* with an optional :tag")
    p.add_argument("-c", "--change", action="append", default=[], metavar="INSTRUCTION",
                   help="apply a Dockerfile instruction to the config: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, "
                        "WORKDIR, VOLUME, STOPSIGNAL (repeatable)")
    p.add_argument("-m", "--message", default="", help="commit message (the image history's comment)")
    p.add_argument("-a", "--author", default="", help='author, e.g. "Jane Doe <jane@example.com>"')
    p.add_argument("-p", "--pause", type=_boolean, default=True, metavar="true|false",
                   help="freeze a running container while its changes are read (default true; --pause=false reads "
                        "it running)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_commit)


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def cmd_commit(args: argparse.Namespace, ctx: Any) -> int:
    from migrate.api import CommitOptions

    options = CommitOptions(changes=tuple(args.change), message=args.message, author=args.author, pause=args.pause)
    result = ctx.engine.commit(args.container, args.image, options)
    if ctx.json:
        ctx.emit_json(result)
    else:
        print(f"committed {args.container} as {result.image.name} {result.image.digest}")
        if result.skipped:
            print(f"left out (not allowed in images): {', '.join(result.skipped)}")
    return EXIT_OK
