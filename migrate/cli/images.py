"""``pymigrate image``: import, load, pull, push, list, remove and build images; registry logins.

Subcommands (all call the engine; nothing here touches the image store directly)::

    pymigrate image import NAME TARBALL     tar, tar.gz or tar.zst (detected by content)
    pymigrate image load FILE|DIR [--name NAME[:TAG]] [--platform OS/ARCH[/VARIANT]]
                                            Docker archive, OCI archive or OCI layout (docs/images.md)
    pymigrate image pull REF [--name NAME[:TAG]] [--platform P] [REGISTRY FLAGS]
                                            from a registry, with skopeo (docs/images.md)
    pymigrate image push NAME REF [REGISTRY FLAGS]
                                            to a registry: the stored layers (a flat image: one) and config
        REGISTRY FLAGS: --tls-verify=false, --cert-dir DIR, --creds USER:PASS | --authfile FILE
                        (over --host: DIR and FILE are paths on the daemon's host)
    pymigrate image login REGISTRY [-u USER] [--password-stdin] [--authfile FILE] [--tls-verify=false] [--cert-dir DIR]
    pymigrate image logout REGISTRY [--authfile FILE]
                                            credentials in skopeo's auth file (local only)
    pymigrate image inspect NAME            the image and its config (json)
    pymigrate image ls [--json]             REPOSITORY, TAG, IMAGE ID, CREATED, SIZE (docker's columns)
    pymigrate image tag SOURCE TARGET       another name (SOURCE a name or sha256 digest; TARGET moves)
    pymigrate image rm NAME                 the name; the image, its unused layers and blobs with its last name
    pymigrate image prune [--all] [-f]      unnamed images nothing uses (--all: every image nothing uses),
                                            unused layers and blobs, leftovers of killed image work
    pymigrate image build-busybox [NAME]    from the host's busybox-static (default name: busybox)

Exit codes: 0 success, 1 prune not confirmed, 125 the engine refused (bad name, unsafe archive, no
such image...).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from migrate.cli import EXIT_FAIL, EXIT_OK, add_json_flag

SHORT_DIGEST = 12
NO_TAG = "<none>"


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

    p = sub.add_parser("pull", help="pull an image from a registry (skopeo)")
    p.add_argument("reference", metavar="REF", help="[REGISTRY/]PATH[:TAG][@sha256:DIGEST]; redis:7 is docker.io/library/redis:7")
    p.add_argument("--name", metavar="NAME[:TAG]", default=None, help="image name (default: the last path component and tag)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", default=None,
                   help="which image of a multi-platform index (default: this host's)")
    _add_registry_flags(p)
    add_json_flag(p)
    p.set_defaults(handler=cmd_pull)

    p = sub.add_parser("push", help="push an image to a registry (skopeo)")
    p.add_argument("name", metavar="NAME", help="the stored image")
    p.add_argument("reference", metavar="REF", help="[REGISTRY/]PATH[:TAG]")
    _add_registry_flags(p)
    add_json_flag(p)
    p.set_defaults(handler=cmd_push)

    p = sub.add_parser("login", help="log in to a registry (skopeo login): later pulls and pushes use the credentials")
    p.add_argument("registry", metavar="REGISTRY", help="HOST[:PORT], e.g. quay.io or localhost:5000")
    p.add_argument("-u", "--username", metavar="USER", default=None, help="user name (asked on a terminal if not given)")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from stdin (otherwise it is asked on a terminal; never an argument)")
    p.add_argument("--authfile", metavar="FILE", type=Path, default=None,
                   help="where to keep the credentials (default: $REGISTRY_AUTH_FILE, else "
                        "${XDG_RUNTIME_DIR}/containers/auth.json, else /run/containers/UID/auth.json: skopeo's and podman's)")
    p.add_argument("--tls-verify", metavar="BOOL", type=_bool, nargs="?", const=True, default=None,
                   help="verify the registry's TLS certificate; false also allows plain http (default: true)")
    p.add_argument("--cert-dir", metavar="DIR", type=Path, default=None,
                   help="the registry's CA certificates (*.crt) and client certificate (*.cert, *.key)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_login)

    p = sub.add_parser("logout", help="remove a registry's credentials from the auth file (skopeo logout)")
    p.add_argument("registry", metavar="REGISTRY", help="HOST[:PORT]")
    p.add_argument("--authfile", metavar="FILE", type=Path, default=None, help="the auth file (default: as for login)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_logout)

    p = sub.add_parser("inspect", help="show an image and its config (json)")
    p.add_argument("name", metavar="NAME")
    add_json_flag(p)
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("ls", help="list images")
    add_json_flag(p)
    p.set_defaults(handler=cmd_ls)

    p = sub.add_parser("tag", help="give an image another name (an existing TARGET moves to it)")
    p.add_argument("source", metavar="SOURCE", help="an image name, or its digest sha256:<hex>")
    p.add_argument("target", metavar="TARGET", help="the new name, [a-z0-9][a-z0-9._-]* with an optional :tag")
    add_json_flag(p)
    p.set_defaults(handler=cmd_tag)

    p = sub.add_parser("rm", help="remove an image name (and the image, its unused layers and blobs, with its last name)")
    p.add_argument("name", metavar="NAME")
    add_json_flag(p)
    p.set_defaults(handler=cmd_rm)

    p = sub.add_parser("prune", help="remove unnamed images no container or checkpoint uses, and unused layers")
    p.add_argument("-a", "--all", action="store_true",
                   help="remove every image no container or checkpoint uses, named or not (docker image prune -a)")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation (asked only on a terminal)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_prune)

    p = sub.add_parser("build-busybox", help="build a minimal image from the host's busybox-static")
    p.add_argument("name", metavar="NAME", nargs="?", default="busybox")
    add_json_flag(p)
    p.set_defaults(handler=cmd_build_busybox)


def cmd_import(args: argparse.Namespace, ctx: Any) -> int:
    info = ctx.engine.image_import(args.name, args.tarball)
    _emit_one(ctx, info, "imported")
    return EXIT_OK


def _local_only(ctx: Any, method: str, verb: str, hint: str) -> Any:
    fn = getattr(ctx.engine, method, None)
    if fn is None:
        from runtime.errors import Unsupported

        raise Unsupported(f"image {verb}", "not over a daemon connection", hint=hint)
    return fn


def cmd_load(args: argparse.Namespace, ctx: Any) -> int:
    info = ctx.engine.image_load(args.path, name=args.name, platform=args.platform)
    _emit_one(ctx, info, "loaded")
    return EXIT_OK


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_registry_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-verify", metavar="BOOL", type=_bool, nargs="?", const=True, default=None,
                   help="verify the registry's TLS certificate; false also allows plain http (default: true)")
    p.add_argument("--cert-dir", metavar="DIR", type=Path, default=None,
                   help="the registry's CA certificates (*.crt) and client certificate (*.cert, *.key); "
                        "over --host: a directory on the daemon's host")
    creds = p.add_mutually_exclusive_group()
    creds.add_argument("--creds", metavar="USER:PASS", default=None, help="registry credentials")
    creds.add_argument("--authfile", metavar="FILE", type=Path, default=None,
                       help="an auth file (image login's, skopeo login's, or ~/.docker/config.json); default: "
                            "skopeo's own ($REGISTRY_AUTH_FILE, then the usual places); over --host: a file on the daemon's host")


def _registry_options(args: argparse.Namespace) -> Any:
    from runtime.registry import RegistryOptions

    return RegistryOptions(tls_verify=args.tls_verify, cert_dir=args.cert_dir, creds=args.creds, authfile=args.authfile)


class CopyProgress:
    """A transient rich line on stderr with skopeo's last report line while it copies (none when
    stderr is not a terminal or with --json)."""

    def __init__(self, ctx: Any, operation: str) -> None:
        self.enabled = not ctx.json and sys.stderr.isatty()
        self.operation = operation
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> "CopyProgress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(),
                                      transient=True, console=Console(stderr=True))
            self._progress.start()
            self._task = self._progress.add_task(self.operation, total=None)
        return self

    def __call__(self, line: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=f"{self.operation}: {line[:100]}")

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()


def cmd_pull(args: argparse.Namespace, ctx: Any) -> int:
    from runtime.registry import parse_reference

    ref = parse_reference(args.reference)
    with CopyProgress(ctx, f"pull {ref}") as progress:
        info = ctx.engine.image_pull(args.reference, name=args.name, platform=args.platform, options=_registry_options(args),
                    progress=progress)
    if ctx.json:
        ctx.emit_json(dict(_as_dict(info), reference=str(ref)))
    else:
        print(f"pulled {ref} as {info.name} {info.digest} ({human_bytes(info.size_bytes)})")
    return EXIT_OK


def cmd_push(args: argparse.Namespace, ctx: Any) -> int:
    with CopyProgress(ctx, f"push {args.name}") as progress:
        result = ctx.engine.image_push(args.name, args.reference, options=_registry_options(args), progress=progress)
    if ctx.json:
        ctx.emit_json({"name": result.name, "reference": result.reference, "digest": result.digest})
    else:
        print(f"pushed {result.name} to {result.reference} (manifest {result.digest})")
    return EXIT_OK


_LOGIN_REMOTE_HINT = ("run it on the daemon's host, in the daemon's environment (its pulls read $REGISTRY_AUTH_FILE or "
                      "${XDG_RUNTIME_DIR}/containers/auth.json there), or give --creds USER:PASS to image pull and push")


def cmd_login(args: argparse.Namespace, ctx: Any) -> int:
    from runtime.registry import RegistryOptions

    login = _local_only(ctx, "image_login", "login", _LOGIN_REMOTE_HINT)
    username, password = _login_credentials(args)
    options = RegistryOptions(tls_verify=args.tls_verify, cert_dir=args.cert_dir, authfile=args.authfile)
    authfile = login(args.registry, username, password, options)
    if ctx.json:
        ctx.emit_json({"registry": args.registry, "username": username, "authfile": str(authfile)})
    else:
        print(f"login succeeded: {username} at {args.registry} (credentials in {authfile})")
    return EXIT_OK


def _login_credentials(args: argparse.Namespace) -> tuple[str, str]:
    """The user name (-u, else asked on a terminal) and the password (stdin with --password-stdin,
    else asked on a terminal without echo): never from an argument, so never in any argv."""
    from runtime.errors import InvalidArgument

    username = args.username
    if args.password_stdin:
        if not username:
            raise InvalidArgument("--password-stdin needs the user name: give -u USER")
        # what skopeo --password-stdin and podman do: the text, less the final line break
        password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
        return username, password
    if not sys.stdin.isatty():
        raise InvalidArgument(f"no terminal to ask for the password for {args.registry}",
                              hint="pipe it in: pymigrate image login -u USER --password-stdin REGISTRY")
    if not username:
        print("Username: ", end="", file=sys.stderr, flush=True)
        username = sys.stdin.readline().strip()
    import getpass

    return username, getpass.getpass("Password: ")


def cmd_logout(args: argparse.Namespace, ctx: Any) -> int:
    logout = _local_only(ctx, "image_logout", "logout", _LOGIN_REMOTE_HINT)
    authfile = logout(args.registry, args.authfile)
    if ctx.json:
        ctx.emit_json({"registry": args.registry, "authfile": str(authfile)})
    else:
        print(f"removed the credentials for {args.registry} from {authfile}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace, ctx: Any) -> int:
    details = ctx.engine.image_inspect(args.name)
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
        ctx.emit_json([dict(_as_dict(i), layers=i.layers) for i in images])
        return EXIT_OK
    rows = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")]
    rows += [(*display_name(i.name), short_digest(i.digest), human_age(i.created_at), human_bytes(i.size_bytes))
             for i in images]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        print("   ".join(f"{r[c]:<{widths[c]}}" for c in range(4)) + f"   {r[4]}")
    return EXIT_OK


def display_name(name: str) -> tuple[str, str]:
    """REPOSITORY and TAG of a name: ``app:1`` is ``app`` ``1``. A name without a tag shows TAG
    ``<none>``: names resolve exactly as given (``busybox`` is not ``busybox:latest`` here), so
    what ls shows is what ``run`` takes."""
    repository, _sep, tag = name.partition(":")
    return repository, tag or NO_TAG


def cmd_tag(args: argparse.Namespace, ctx: Any) -> int:
    info = ctx.engine.image_tag(args.source, args.target)
    if ctx.json:
        ctx.emit_json(dict(_as_dict(info), layers=info.layers))
    else:
        print(f"tagged {args.source} as {info.name} {info.digest}")
    return EXIT_OK


def cmd_rm(args: argparse.Namespace, ctx: Any) -> int:
    removal = ctx.engine.image_remove(args.name)
    if ctx.json:
        ctx.emit_json(dict(_removal_dict(removal), removed=args.name))
    else:
        _print_removal(removal)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, ctx: Any) -> int:
    if not args.force and sys.stdin.isatty():
        what = ("every image no container or checkpoint uses, named or not" if args.all
                else "the unnamed images no container or checkpoint uses")
        print(f"this removes {what}, and the layers and blobs no image uses. continue? [y/N] ", end="",
              file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing removed", file=sys.stderr)
            return EXIT_FAIL
    removal = ctx.engine.image_prune(all=args.all)
    if ctx.json:
        ctx.emit_json(_removal_dict(removal))
    else:
        _print_removal(removal)
    return EXIT_OK


def _removal_dict(removal: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(removal)


def _print_removal(removal: Any) -> None:
    """Docker's lines: what was untagged, then deleted; ours add the layers and the space freed."""
    for name in removal.untagged:
        print(f"untagged: {name}")
    for digest in removal.deleted:
        print(f"deleted: {digest}")
    for diff_id in removal.layers_removed:
        print(f"deleted layer: {diff_id}")
    extra = [f"{n} {what}{'s' if n != 1 else ''}" for n, what in
             ((len(removal.layers_removed), "layer"), (removal.blobs_removed, "blob"),
              (removal.scratch_removed, "scratch leftover")) if n]
    print(f"total reclaimed space: {human_bytes(removal.bytes_freed)}" + (f" ({', '.join(extra)})" if extra else ""))


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
