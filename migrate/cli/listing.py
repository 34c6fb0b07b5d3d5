"""Listing containers: ps and inspect, with docker's and podman's flags.

``ps`` builds one row per container (podman's field names: ID, Names, Status...) that the
default table, ``--format TEMPLATE`` (migrate/cli/gotemplate.py) and ``--format json`` all
print; ``--filter`` is migrate/container_filter.py. ``inspect`` prints a JSON array (docker's),
each object with RFC 3339 times beside the numeric ones (migrate/cli/inspect_json.py).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from migrate.cli import EXIT_ERROR, EXIT_OK, add_json_flag
from migrate.cli.containers import ports_column

SHORT_ID = 12  # docker's short container id

PS_FIELDS = ("ID", "Names", "Image", "ImageID", "Command", "CreatedAt", "Created", "RunningFor", "Status",
             "State", "ExitCode", "Exited", "StartedAt", "Ports", "Labels", "Size", "Networks", "IP", "Pid",
             "Mounts", "Restarts")
PS_HEADERS = {"ID": "CONTAINER ID", "ImageID": "IMAGE ID", "CreatedAt": "CREATED AT", "RunningFor": "CREATED",
              "ExitCode": "EXIT CODE", "StartedAt": "STARTED AT"}
_PS_TABLE = "table {{.ID}}\t{{.Names}}\t{{.Image}}\t{{.Command}}\t{{.Created}}\t{{.Status}}\t{{.IP}}\t{{.Ports}}"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("ps", help="list containers")  # examples: migrate/cli/examples.py
    p.add_argument("-a", "--all", action="store_true", help="include containers that are not running")
    p.add_argument("-q", "--quiet", action="store_true", help="print container ids only")
    p.add_argument("--no-trunc", action="store_true", help="full ids and commands")
    p.add_argument("-n", "--last", type=int, default=None, metavar="N", help="the N containers created last (any state)")
    p.add_argument("-l", "--latest", action="store_true", help="the container created last (any state)")
    p.add_argument("-s", "--size", action="store_true", help="SIZE: bytes in the writable layer (virtual: plus the image)")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="status=, name=, label=KEY[=VALUE], ancestor=, id=, exited=, volume=, network= (a key twice: or, but label: and; two keys: and)")
    p.add_argument("--format", default=None, metavar="table|json|TEMPLATE",
                   help="Go-template-style fields, e.g. '{{.ID}} {{.Names}} {{.Labels.tier}}'; 'table ...' adds a header")
    add_json_flag(p)
    p.set_defaults(handler=cmd_ps)

    p = subparsers.add_parser("inspect", help="show containers, images or checkpoints as a JSON array")
    p.add_argument("--type", choices=("container", "image", "checkpoint"), default=None,
                   help="what NAME is (default: a container, else an image, else a checkpoint)")
    p.add_argument("-f", "--format", default=None, metavar="TEMPLATE", help="one line per object, e.g. '{{.State.Status}}'")
    add_json_flag(p)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler=cmd_inspect)


# -- status and times -----------------------------------------------------------------------------


def _status(info: Any) -> str:
    st = info.state
    if st.status == "exited":
        if st.checkpointed:  # the dump's kill, not the workload's: not "exited (137)"
            return f"exited (checkpointed) {_ago(st.finished_at)}".rstrip()
        code = "?" if st.exit_code is None or st.exit_code < 0 else st.exit_code
        extra = ", oom-killed" if st.oom_killed else ""
        return f"exited ({code}{extra}) {_ago(st.finished_at)}".rstrip()
    if st.status in ("running", "paused"):
        restarts = f" (restarted {st.restart_count}x)" if st.restart_count else ""
        return f"{st.status} {_since(st.started_at)}".rstrip() + restarts
    return str(st.status)


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


def human_duration(seconds: float) -> str:
    """docker's CREATED wording: "Less than a second", "5 seconds", "About a minute", "3 hours"..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    steps = ((60, 1, "second"), (3600, 60, "minute"), (86400 * 2, 3600, "hour"), (86400 * 14, 86400, "day"),
             (86400 * 60, 86400 * 7, "week"), (86400 * 365 * 2, 86400 * 30, "month"))
    for limit, unit, word in steps:
        if s < limit:
            n = s // unit
            if n == 1 and word in ("minute", "hour"):
                return f"About {'an' if word == 'hour' else 'a'} {word}"
            return f"{n} {word}{'s' if n != 1 else ''}"
    return f"{s // (86400 * 365)} years"


def human_size(n: int) -> str:
    """docker's sizes: decimal units, three significant digits ("12B", "4.27MB")."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{n}B"  # unreachable


def _time_text(t: float | None) -> str:
    if not t:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(t))


# -- ps -------------------------------------------------------------------------------------------


def ps_row(info: Any, *, now: float, no_trunc: bool = False, size: str = "") -> dict[str, Any]:
    """One container as ps shows it: podman's field names, text values as the table prints them."""
    spec, st = info.spec, info.state
    command = " ".join(spec.command)
    if not no_trunc and len(command) > 30:
        command = command[:27] + "..."
    created = f"{human_duration(now - spec.created_at)} ago" if spec.created_at else ""
    return {
        "ID": spec.container_id if no_trunc else spec.container_id[:SHORT_ID],
        "Names": spec.name,
        "Image": spec.image,
        "ImageID": spec.image_digest,
        "Command": command,
        "CreatedAt": _time_text(spec.created_at),
        "Created": created,
        "RunningFor": created,
        "Status": _status(info),
        "State": st.status,
        "ExitCode": st.exit_code if st.exit_code is not None else 0,
        "Exited": st.status == "exited",
        "StartedAt": _time_text(st.started_at),
        "Ports": ports_column(spec.ports),
        "Labels": dict(spec.labels or {}),
        "Size": size,
        "Networks": spec.network if spec.network != "container" else st.shared_namespaces.get("net", "container"),
        "IP": spec.ip or st.shared_namespaces.get("net", "-"),
        "Pid": st.pid,
        "Mounts": [v.target for v in spec.volumes],
        "Restarts": st.restart_count,
    }


def _ps_template(args: argparse.Namespace) -> Any:
    """The checked --format template (None: JSON rows); refused before the engine is asked."""
    from migrate.cli import gotemplate

    fmt = args.format
    if fmt == "json":
        return None
    if fmt in (None, "table"):
        fmt = _PS_TABLE + ("\t{{.Size}}" if args.size else "")
    return gotemplate.parse(fmt, PS_FIELDS, PS_HEADERS)


def _selected(args: argparse.Namespace, ctx: Any) -> list[Any]:
    """The containers ps shows: filtered, newest first, the first -n of them."""
    from migrate.container_filter import parse_filters, select

    filters = parse_filters(args.filter)
    last = 1 if args.latest else args.last
    if last is not None and last < 0:
        from runtime.errors import InvalidArgument

        raise InvalidArgument(f"invalid --last {last}: expected 0 or more")
    # docker lists stopped containers for -n/-l and for a filter that asks for them, without -a
    include_stopped = args.all or last is not None or filters.wants_stopped()
    # over --host the daemon filters (a scheduler's list stays small on the wire); selecting here
    # too costs little and keeps an older daemon, which ignores the filters, right
    remote = {"filters": tuple(args.filter)} if getattr(args, "host", None) and filters else {}
    infos = ctx.engine.containers(all=include_stopped, **remote)
    infos = select(infos, filters) if filters else list(infos)
    infos = sorted(infos, key=lambda i: i.spec.created_at, reverse=True)  # newest first, as docker
    return infos[:last] if last is not None else infos


def cmd_ps(args: argparse.Namespace, ctx: Any) -> int:
    template = None if ctx.json or args.quiet else _ps_template(args)
    infos = _selected(args, ctx)
    if ctx.json:
        from migrate.cli.inspect_json import container_json

        ctx.emit_json([container_json(i) for i in infos])
        return EXIT_OK
    if args.quiet:
        for i in infos:
            print(i.spec.container_id if args.no_trunc else i.spec.container_id[:SHORT_ID])
        return EXIT_OK
    sizes = _sizes(infos, ctx) if args.size else {}
    now = time.time()
    rows = [ps_row(i, now=now, no_trunc=args.no_trunc, size=sizes.get(i.spec.container_id, "")) for i in infos]
    if template is None:
        ctx.emit_json(rows)
        return EXIT_OK
    _print_rows(template, rows)
    return EXIT_OK


def _print_rows(template: Any, rows: list[dict[str, Any]]) -> None:
    from migrate.cli import gotemplate

    lines = [template.render(r) for r in rows]
    if template.table:
        lines = [line.rstrip() for line in gotemplate.align([template.header(), *lines])]
    for line in lines:
        print(line)


def _sizes(infos: list[Any], ctx: Any) -> dict[str, str]:
    """SIZE for each container: its writable layer's bytes, and (virtual) plus its image's."""
    if getattr(ctx.args, "host", None):
        from runtime.errors import Unsupported

        raise Unsupported("ps --size", "a remote daemon's writable layers are measured only on its host",
                          hint="run ps -s on the daemon's host, or drop -s")
    from pathlib import Path

    image_bytes = {i.digest: i.size_bytes for i in ctx.engine.images()}
    out = {}
    for info in infos:
        rw = upper_bytes(Path(info.bundle_dir))
        virtual = rw + image_bytes.get(info.spec.image_digest, 0)
        out[info.spec.container_id] = f"{human_size(rw)} (virtual {human_size(virtual)})"
    return out


def upper_bytes(container_dir: Any) -> int:
    """Bytes of the files a container wrote (its overlay upper dir), as docker's SizeRw counts them.

    Only lstat: the upper dir holds the container's files, so no link is followed and nothing
    is opened. A layer that is not there (removed meanwhile) counts 0."""
    import os

    from runtime.upperfs import Layout

    total = 0
    for top, dirs, files in os.walk(Layout.of(container_dir).upper, followlinks=False):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                continue  # removed while we walked
    return total


# -- inspect --------------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace, ctx: Any) -> int:
    from migrate.cli import report_error
    from migrate.cli.inspect_json import inspect_one, template_row
    from migrate.errors import CheckpointNotFound
    from runtime.errors import ContainerNotFound, ImageNotFound

    found: list[dict[str, Any]] = []
    failed = False
    for name in args.names:
        try:
            found.append(inspect_one(ctx.engine, name, args.type))
        except (ContainerNotFound, ImageNotFound, CheckpointNotFound) as exc:
            failed = True  # reported; the others still print (docker's)
            report_error(exc, _stderr_ctx(ctx))
    if args.format and not ctx.json:
        from migrate.cli import gotemplate

        for obj in found:
            row = template_row(obj)
            print(gotemplate.parse(args.format, tuple(row)).render(row))
    else:
        ctx.emit_json(found)
    return EXIT_ERROR if failed else EXIT_OK


def _stderr_ctx(ctx: Any) -> Any:
    """A missing name is reported on stderr even with --json: stdout holds the array."""
    import dataclasses

    return dataclasses.replace(ctx, json=False) if ctx.json else ctx
