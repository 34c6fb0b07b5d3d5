"""CLI: checkpoint, restore, checkpoint ls/inspect/rm, migrate.

    pymigrate checkpoint NAME [--leave-running] [--export FILE] [--compress zstd|none] [--level N]
                              [--tcp-established] [--file-locks] [--print-stats] [--json]
                              [--sign-key KEY]
    pymigrate checkpoint ls [--json] | checkpoint inspect ID|FILE|REF [--json] | checkpoint rm ID...
    pymigrate checkpoint sign FILE --sign-key KEY | checkpoint verify FILE --trusted-key PUB... [--json]
    pymigrate checkpoint NAME --export FILE --format podman [--compress zstd|gzip|none]   an archive that
                              podman container restore --import restores (migrate/interop/podman_export.py)
    pymigrate checkpoint NAME --create-image REF   also an OCI checkpoint image (podman's/CRI-O's), stored
                              as a pull of REF names it; send it with: image push NAME:TAG REF
    pymigrate restore (CHECKPOINT_ID | REF | --image REF [REGISTRY FLAGS] | --import FILE [--pull] [--trusted-key PUB]...)
                      [--name NEW] [--ip ADDR]
                      [-p [HOST_IP:][HOST_PORT]:PORT[/PROTO]]...
                      [--tcp-established] [--print-stats] [--json]
    pymigrate migrate NAME DEST [--keep-source] [--mode cold|postcopy|precopy|auto] [--file-locks]
                      [--compress auto|on|off] [--tcp-established] [--insecure | --tls-cert F --tls-key F --tls-ca F]
                      [--token-file F] [--json]

Progress goes to stderr (rich) while the command runs; results go to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from migrate.cli import EXIT_OK, EXIT_USAGE, Context, add_json_flag, use_request_id

CHECKPOINT_VERBS = ("ls", "inspect", "rm", "sign", "verify")


def register(sub: Any) -> None:
    p = sub.add_parser("checkpoint", help="checkpoint a running container (or: checkpoint ls | inspect ID|FILE|REF | "
                                          "rm ID | sign FILE | verify FILE)")
    p.add_argument("args", nargs="+", metavar="NAME | ls | inspect ID|FILE|REF | rm ID | sign FILE | verify FILE")
    p.add_argument("--leave-running", action="store_true", help="keep the container running after the dump")
    p.add_argument("--export", type=Path, default=None, metavar="FILE", help="write the checkpoint to one archive file")
    p.add_argument("--compress", choices=("zstd", "gzip", "none"), default="zstd",
                   help="archive compression (with --export; gzip with --format podman only)")
    p.add_argument("--level", type=int, default=1, help="zstd level (with --export)")
    p.add_argument("--format", dest="export_format", choices=("native", "podman"), default="native",
                   help="--export's format: pymigrate's own, or an archive podman container restore --import restores")
    p.add_argument("--ignore-volumes", action="store_true",
                   help="leave the named volumes' contents out of the export (a restore then needs volumes of those names)")
    p.add_argument("--tcp-established", action="store_true", help="checkpoint established TCP connections")
    p.add_argument("--file-locks", action="store_true", help="checkpoint file locks")
    p.add_argument("--sign-key", type=Path, default=None, metavar="KEY",
                   help="sign the export (or the FILE of 'checkpoint sign') with this ed25519 private key "
                        "(OpenSSH or PEM, e.g. from ssh-keygen -t ed25519)")
    p.add_argument("--trusted-key", dest="trusted_keys", type=Path, action="append", default=[], metavar="PUB",
                   help="for 'checkpoint verify': public keys (ssh-ed25519 lines or PEM) the archive may be signed by")
    p.add_argument("--print-stats", action="store_true", help="print timing and size statistics")
    p.add_argument("--label", dest="labels", action="append", default=[], metavar="KEY=VALUE",
                   help="a label on the checkpoint (checkpoint ls shows it, --filter label=KEY[=VALUE] selects it)")
    p.add_argument("--filter", dest="filters", action="append", default=[], metavar="KEY=VALUE",
                   help="checkpoint ls: container=NAME, id=PREFIX or label=KEY[=VALUE]")
    p.add_argument("--create-image", default="", metavar="REF",
                   help="also store the checkpoint as an OCI checkpoint image (podman's and CRI-O's layout and "
                        "annotations), named as 'image pull REF' names images; then: image push NAME:TAG REF")
    use_request_id(p)
    add_json_flag(p)
    p.set_defaults(handler=cmd_checkpoint)

    p = sub.add_parser("restore", help="restore a checkpoint into a running container")
    p.add_argument("checkpoint_id", nargs="?", metavar="CHECKPOINT_ID|REF",
                   help="a checkpoint id (4-64 hex digits), or a checkpoint image reference naming a registry, "
                        "path or tag (as --image)")
    p.add_argument("--image", dest="image_ref", default=None, metavar="REF",
                   help="restore a checkpoint image (podman's, CRI-O's or ours): the stored one of that name, else pulled")
    # restore REF's pull: the registry flags of image pull (images.py; kept here so restore's
    # parser does not import the image commands)
    p.add_argument("--tls-verify", metavar="BOOL", default=None, type=_registry_bool,
                   nargs="?", const=True, help="with REF: verify the registry's TLS certificate; false also allows plain http")
    p.add_argument("--cert-dir", metavar="DIR", type=Path, default=None, help="with REF: the registry's CA certificates")
    p.add_argument("--creds", metavar="USER:PASS", default=None, help="with REF: registry credentials")
    p.add_argument("--authfile", metavar="FILE", type=Path, default=None, help="with REF: a registry auth file")
    p.add_argument("--import", dest="import_path", type=Path, default=None, metavar="FILE",
                   help="restore from an exported archive: pymigrate's, or a podman/CRI-O checkpoint (tar, tar.gz, "
                        "tar.zst; told by its content; podman's own seccomp filter needs --security-opt seccomp=unconfined, "
                        "docs/interop.md)")
    p.add_argument("--pull", dest="pull_image", action="store_true",
                   help="with --import of a podman/CRI-O archive: pull the image it names when it is not here "
                        "(--tls-verify, --cert-dir, --creds, --authfile apply)")
    p.add_argument("--trusted-key", dest="trusted_keys", type=Path, action="append", default=[], metavar="PUB",
                   help="with --import: the archive must be signed by one of these ed25519 public keys (ssh-ed25519 "
                        "lines or PEM; repeatable), checked before anything is extracted")
    p.add_argument("--name", default=None, help="name of the restored container (default: the original)")
    p.add_argument("--ip", default=None, help="address of the restored container (default: the original); another address brings its own MAC")
    p.add_argument("--ignore-static-ip", action="store_true",
                   help="take a fresh address from the pool (and a fresh MAC), not the checkpoint's")
    p.add_argument("--ignore-static-mac", action="store_true", help="take a fresh random MAC, not the checkpoint's")
    p.add_argument("--tcp-established", action="store_true", help="restore established TCP connections")
    p.add_argument("-p", "--publish", action="append", default=None, metavar="[HOST_IP:][HOST_PORT]:PORT[/tcp|udp]",
                   help="publish these ports instead of the checkpoint's (repeatable; as run -p)")
    p.add_argument("--volume", "-v", dest="volumes", action="append", default=[], metavar="HOSTDIR:CTRDIR",
                   help="host directory for the checkpoint's volume at CTRDIR (repeatable; an imported archive's "
                        "volumes must all be mapped: it cannot choose host paths)")
    p.add_argument("--security-opt", action="append", default=[], metavar="seccomp=unconfined|default|FILE",
                   help="seccomp filter for the restored container's later execs, replacing the checkpoint's "
                        "(needed to accept an imported archive's unconfined or custom profile)")
    p.add_argument("--restore-timeout", dest="restore_timeout_s", type=float, default=None, metavar="SECONDS",
                   help="kill CRIU's restore after this long and undo it (default 300)")
    p.add_argument("--print-stats", action="store_true", help="print timing and size statistics")
    use_request_id(p)
    add_json_flag(p)
    p.set_defaults(handler=cmd_restore)

    p = sub.add_parser("migrate", help="move a running container to another host")
    p.add_argument("name", metavar="NAME")
    p.add_argument("dest", metavar="DEST", help="target daemon: unix:PATH, HOST:PORT or ssh://[user@]host[:port]")
    p.add_argument("--keep-source", action="store_true", help="keep the stopped source copy")
    p.add_argument("--mode", choices=("cold", "postcopy", "precopy", "auto"), default="cold")
    p.add_argument("--tcp-established", action="store_true", help="keep established TCP connections")
    p.add_argument("--file-locks", action="store_true", help="keep the file locks the container's processes hold")
    p.add_argument("--compress", choices=("auto", "on", "off"), default="auto",
                   help="zstd on the memory pages' stream: auto (when it beats the measured link), on, off")
    p.add_argument("-p", "--publish", action="append", default=None, metavar="[HOST_IP:][HOST_PORT]:PORT[/tcp|udp]",
                   help="the target publishes these ports instead of the container's (repeatable; as run -p)")
    # The global credential flags, also accepted after the subcommand (`migrate NAME HOST:PORT
    # --insecure`); SUPPRESS keeps a value given before the subcommand. Without --host they are
    # how this process dials DEST; with --host, how it dials that daemon (which dials DEST with
    # its own credentials).
    p.add_argument("--insecure", action="store_true", default=argparse.SUPPRESS, help="plain TCP (no TLS)")
    p.add_argument("--tls-cert", type=Path, default=argparse.SUPPRESS, help="client certificate (PEM)")
    p.add_argument("--tls-key", type=Path, default=argparse.SUPPRESS, help="client key (PEM)")
    p.add_argument("--tls-ca", type=Path, default=argparse.SUPPRESS, help="CA the daemon's certificate must chain to")
    p.add_argument("--token-file", type=Path, default=argparse.SUPPRESS, help="bearer token file")
    # ssh:// DEST: the global --ssh-* flags, also accepted after the subcommand
    p.add_argument("--ssh-key", type=Path, default=argparse.SUPPRESS, help="private key for ssh:// (only this key is tried)")
    p.add_argument("--ssh-accept-new", action="store_true", default=argparse.SUPPRESS, help="record an unknown ssh host key")
    p.add_argument("--ssh-known-hosts", type=Path, default=argparse.SUPPRESS, help="known_hosts file for ssh://")
    p.add_argument("--ssh-remote-pymigrate", default=argparse.SUPPRESS, help="pymigrate on the ssh:// host")
    p.add_argument("--ssh-remote-root", default=argparse.SUPPRESS, help="state root on the ssh:// host")
    use_request_id(p)
    add_json_flag(p)
    p.set_defaults(handler=cmd_migrate)


# -- rendering ------------------------------------------------------------------------------------


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _stats_rows(stats: Any) -> list[tuple[str, str]]:
    rows = []
    for field in dataclasses.fields(stats):
        value = getattr(stats, field.name)
        if isinstance(value, dict):
            for k, v in value.items():
                rows.append((f"{field.name[:-3] if field.name.endswith('_ms') else field.name}.{k} (ms)", f"{v:.1f}"))
            continue
        if field.name.endswith("_ms"):
            rows.append((field.name[:-3].replace("_", " ") + " (ms)", f"{value:.1f}"))
        elif field.name.endswith("_bytes"):
            rows.append((field.name[:-6].replace("_", " "), _human_bytes(value)))
        elif field.name.startswith("bytes_"):
            rows.append((field.name.replace("_", " "), _human_bytes(value)))
        else:
            rows.append((field.name.replace("_", " "), str(value)))
    return rows


def print_stats(title: str, stats: Any) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency; plain text keeps scripts working without it
        print(title)
        for k, v in _stats_rows(stats):
            print(f"  {k:32} {v}")
        return
    table = Table(title=title)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for k, v in _stats_rows(stats):
        table.add_row(k, v)
    Console().print(table)


class Progress:
    """A transient rich progress line on stderr (nothing when stderr is not a terminal or --json)."""

    def __init__(self, ctx: Context, operation: str) -> None:
        self.enabled = not ctx.json and sys.stderr.isatty()
        self.operation = operation
        self._progress: Any = None
        self._task: Any = None
        self._last = 0.0

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.progress import BarColumn, DownloadColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

            self._progress = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeElapsedColumn(),
                transient=True,
                console=__import__("rich.console", fromlist=["Console"]).Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task(self.operation, total=None)
        return self

    def __call__(self, event: Any) -> None:
        if not self.enabled or self._progress is None:
            return
        self._progress.update(
            self._task,
            description=f"{self.operation}: {event.phase}",
            completed=event.bytes_done or None,
            total=event.bytes_total or None,
        )

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()


# -- commands -------------------------------------------------------------------------------------


def cmd_checkpoint(args: argparse.Namespace, ctx: Context) -> int:
    verb, rest = args.args[0], args.args[1:]
    if verb in CHECKPOINT_VERBS:
        return _checkpoint_verb(verb, rest, ctx, args)
    if rest:
        print(f"pymigrate: checkpoint takes one container name, got {len(args.args)} arguments", file=sys.stderr)
        return EXIT_USAGE
    if args.level < 1 or args.level > 22:
        print(f"pymigrate: invalid --level {args.level}: expected 1-22", file=sys.stderr)
        return EXIT_USAGE
    if args.compress == "gzip" and args.export_format != "podman":
        print("pymigrate: --compress gzip is for --format podman (podman's --compress); native archives: zstd or none",
              file=sys.stderr)
        return EXIT_USAGE
    from migrate.api import CheckpointOptions
    from runtime.labels import parse_labels

    options = CheckpointOptions(
        leave_running=args.leave_running,
        export_path=args.export.resolve() if args.export else None,
        compress=args.compress,
        level=args.level,
        tcp_established=args.tcp_established,
        file_locks=args.file_locks,
        sign_key=args.sign_key,
        ignore_volumes=args.ignore_volumes,
        labels=parse_labels(args.labels),
        create_image=args.create_image,
        export_format=args.export_format,
    )
    use_request_id(args=args, ctx=ctx)
    with Progress(ctx, f"checkpoint {verb}") as progress:
        result = ctx.engine.checkpoint(verb, options, progress)
    if ctx.json:
        ctx.emit_json(result)
        return EXIT_OK
    print(result.export_path or result.checkpoint_id)
    if result.image_ref:
        print(f"checkpoint image {result.image_ref} {result.image_digest}", file=sys.stderr)
    if result.signed_by:
        print(f"signed by {result.signed_by}", file=sys.stderr)
    if args.print_stats:
        print_stats(f"checkpoint of {result.container_name}", result.stats)
    return EXIT_OK


def _checkpoint_verb(verb: str, rest: list[str], ctx: Context, args: argparse.Namespace) -> int:
    if verb in ("sign", "verify"):
        return _signature_verb(verb, rest, ctx, args)
    if verb == "ls":
        from migrate import list_filters

        items = list_filters.select(ctx.engine.checkpoints(), args.filters, list_filters.CHECKPOINT_KEYS, "checkpoints")
        if ctx.json:
            ctx.emit_json(items)
            return EXIT_OK
        rows = [("CHECKPOINT ID", "CONTAINER", "CREATED", "SIZE", "LABELS")]
        rows += [(c.checkpoint_id, c.container_name, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.created_at)),
                  _human_bytes(c.size_bytes), ",".join(f"{k}={v}" for k, v in sorted(c.labels.items()))) for c in items]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]  # from the data: long names stay aligned
        for r in rows:
            print(f"{r[0]:{widths[0]}}  {r[1]:{widths[1]}}  {r[2]:{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}".rstrip())
        return EXIT_OK
    if not rest:
        print(f"pymigrate: checkpoint {verb} needs a checkpoint id", file=sys.stderr)
        return EXIT_USAGE
    if verb == "inspect":
        if len(rest) != 1:
            print("pymigrate: checkpoint inspect takes one checkpoint id, archive FILE or image REF", file=sys.stderr)
            return EXIT_USAGE
        from migrate.interop.inspect import inspect_target, render

        summary = inspect_target(ctx.engine, rest[0])  # FILE (podman, CRI-O, native) or REF; None: an id
        if summary is None:
            ctx.emit_json(ctx.engine.checkpoint_inspect(rest[0]))  # a local checkpoint: its manifest
        elif ctx.json:
            ctx.emit_json(summary)
        else:
            print(render(summary))
        return EXIT_OK
    removed = []
    for cid in rest:
        ctx.engine.checkpoint_remove(cid)
        removed.append(cid)
        if not ctx.json:
            print(cid)
    if ctx.json:
        ctx.emit_json({"removed": removed})
    return EXIT_OK


def _signature_verb(verb: str, rest: list[str], ctx: Context, args: argparse.Namespace) -> int:
    """``checkpoint sign FILE --sign-key KEY`` and ``checkpoint verify FILE --trusted-key PUB``:
    files on this side, whichever host a --host names."""
    from migrate.archive import signing

    if len(rest) != 1:
        print(f"pymigrate: checkpoint {verb} takes one archive file", file=sys.stderr)
        return EXIT_USAGE
    path = Path(rest[0])
    if verb == "sign":
        if args.sign_key is None:
            print("pymigrate: checkpoint sign needs --sign-key KEY", file=sys.stderr)
            return EXIT_USAGE
        signer = signing.ArchiveSigner.from_file(args.sign_key)
        digest = signing.sign_file(path, signer)
        result = {"archive": str(path), "signed_by": signer.fingerprint, "sha256": digest}
    else:
        if not args.trusted_keys:
            print("pymigrate: checkpoint verify needs --trusted-key PUB (repeatable)", file=sys.stderr)
            return EXIT_USAGE
        verified = signing.verify_file(path, signing.SignaturePolicy(signing.load_trusted_keys(args.trusted_keys)))
        result = {"archive": str(path), "signed_by": verified.signer.fingerprint, "comment": verified.signer.comment,
                  "key_source": verified.signer.source, "sha256": verified.sha256.hex()}
    if ctx.json:
        ctx.emit_json(result)
    else:
        print(f"{path}: {'signed by' if verb == 'sign' else 'good signature by'} {result['signed_by']}"
              + (f" ({result['comment']})" if result.get("comment") else ""))
    return EXIT_OK


def restore_seccomp(values: list[str]) -> dict[str, Any]:
    """RestoreOptions fields for ``--security-opt`` (none given: the checkpoint's choice)."""
    from runtime.seccomp import parse_security_options

    chosen = parse_security_options(values)
    return {} if chosen is None else {"seccomp": chosen[0], "seccomp_profile": chosen[1]}


def _registry_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "false", "0", "no"):
        return text.lower() in ("true", "1", "yes")
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _image_restore(args: argparse.Namespace) -> tuple[str, Any]:
    """restore REF / --image REF: (the reference or "", the registry options); a positional with a
    registry, path or tag is a reference (migrate/interop/checkpoint_image.py looks_like_reference)."""
    from migrate.interop.checkpoint_image import looks_like_reference

    ref = args.image_ref or ""
    if not ref and args.checkpoint_id is not None and looks_like_reference(args.checkpoint_id):
        ref, args.checkpoint_id = args.checkpoint_id, None
    if not ref and not args.pull_image:
        return "", None
    from runtime.registry import RegistryOptions

    return ref, RegistryOptions(tls_verify=args.tls_verify, cert_dir=args.cert_dir, creds=args.creds, authfile=args.authfile)


def cmd_restore(args: argparse.Namespace, ctx: Context) -> int:
    image_ref, registry = _image_restore(args)
    if sum((args.checkpoint_id is not None, args.import_path is not None, bool(image_ref))) != 1:
        print("pymigrate: restore needs exactly one of CHECKPOINT_ID, REF (--image REF) or --import FILE", file=sys.stderr)
        return EXIT_USAGE
    if args.pull_image and args.import_path is None:
        print("pymigrate: --pull fetches the image of an archive given with --import FILE", file=sys.stderr)
        return EXIT_USAGE
    if args.trusted_keys and args.import_path is None:
        print("pymigrate: --trusted-key checks an archive given with --import FILE", file=sys.stderr)
        return EXIT_USAGE
    from migrate.api import DEFAULT_RESTORE_TIMEOUT_S, RestoreOptions
    from runtime.container import parse_volume_mapping
    from runtime.ports import parse_publish

    if args.restore_timeout_s is not None and not args.restore_timeout_s > 0:
        print("pymigrate: --restore-timeout needs a number of seconds above 0", file=sys.stderr)
        return EXIT_USAGE
    options = RestoreOptions(
        checkpoint_id=args.checkpoint_id,
        import_path=args.import_path.resolve() if args.import_path else None,
        name=args.name,
        ip=args.ip,
        ignore_static_ip=args.ignore_static_ip,
        ignore_static_mac=args.ignore_static_mac,
        tcp_established=args.tcp_established,
        ports=None if args.publish is None else tuple(m for v in args.publish for m in parse_publish(v)),
        # paths on the restoring host (a remote daemon's own): checked there, not here
        volumes=tuple(parse_volume_mapping(v) for v in args.volumes),
        timeout_s=args.restore_timeout_s or DEFAULT_RESTORE_TIMEOUT_S,
        trusted_keys=tuple(args.trusted_keys),
        image_ref=image_ref,
        image_registry=registry,
        pull_image=args.pull_image,
        **restore_seccomp(args.security_opt),
    )
    use_request_id(args=args, ctx=ctx)
    with Progress(ctx, "restore") as progress:
        result = ctx.engine.restore(options, progress)
    if ctx.json:
        ctx.emit_json(result)
        return EXIT_OK
    print(result.container.spec.name)
    if result.signed_by:
        print(f"good signature by {result.signed_by}", file=sys.stderr)
    if args.print_stats:
        print_stats(f"restore of {result.container.spec.name}", result.stats)
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace, ctx: Context) -> int:
    from migrate.api import MigrateOptions

    from runtime.ports import parse_publish

    options = MigrateOptions(dest=args.dest, keep_source=args.keep_source, mode=args.mode,
                             tcp_established=args.tcp_established, file_locks=args.file_locks, compress=args.compress,
                             ports=None if args.publish is None else tuple(m for v in args.publish for m in parse_publish(v)))
    use_request_id(args=args, ctx=ctx)
    with Progress(ctx, f"migrate {args.name}") as progress:
        result = ctx.engine.migrate(args.name, options, progress)
    if ctx.json:
        ctx.emit_json(result)
        return EXIT_OK
    s = result.stats
    ratio = (s.raw_bytes / s.bytes_on_wire) if s.bytes_on_wire and s.raw_bytes else 0.0
    print(f"{result.container_name} migrated to {result.dest} ({result.mode}): downtime {s.frozen_ms:.0f} ms, "
          f"total {s.total_ms:.0f} ms, {_human_bytes(s.bytes_on_wire)} on the wire"
          + (f", compression {ratio:.1f}x" if ratio else ""))
    last_page = s.phases_ms.get("last_page")
    if result.mode == "postcopy" and last_page is not None:
        print(f"  memory: the last page arrived {last_page:.0f} ms after the resume (until then the container "
              f"depended on this host)")
    if s.upper_entries_frozen >= 0:
        print(f"  upper layer: sent before the freeze, {s.upper_entries_frozen} changed entries during the pause")
    print_stats(f"migration of {result.container_name}", s)
    return EXIT_OK
