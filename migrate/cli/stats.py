"""Containers' resource usage and processes: stats (also over --host: the daemon's Stats call), top
(local only), as docker shows them."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from migrate.cli import EXIT_OK, add_json_flag

SAMPLE_GAP_S = 0.5  # --no-stream: the two readings the CPU % is computed between
REFRESH_S = 1.0  # live: one table a second, as docker
CLEAR = "\033[2J\033[H"

STATS_TITLES = ("CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "stats", help="resource usage of containers: CPU, memory, pids, network and block I/O",
        description="Live resource usage, redrawn every second until Ctrl-C (--no-stream: one sample). "
        "CPU %: 100 is one core busy. MEM USAGE: without the page cache the kernel can drop; "
        "LIMIT: the container's, else the host's memory. With --json (streaming): one JSON array per line.",
    )
    p.add_argument("-a", "--all", action="store_true", help="all containers (default: running ones)")
    p.add_argument("--no-stream", action="store_true", help="print one sample and exit")
    add_json_flag(p)
    p.add_argument("names", nargs="*", metavar="NAME", help="containers (default: every running one)")
    p.set_defaults(handler=cmd_stats)

    p = subparsers.add_parser(
        "top", help="the processes of a container, as the host's ps shows them",
        description="Runs ps on the host with PS-OPTIONS (default -ef) and keeps the rows of the "
        "container's processes (its cgroup's). The options must print a PID column.",
    )
    add_json_flag(p)
    p.add_argument("name", metavar="NAME")
    p.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="PS-OPTION", help="options for ps (default -ef)")
    p.set_defaults(handler=cmd_top)


# --- stats -------------------------------------------------------------------------------------


def cmd_stats(args: argparse.Namespace, ctx: Any) -> int:
    engine = ctx.engine
    previous = _sample(engine, args, {})
    if args.no_stream:
        time.sleep(SAMPLE_GAP_S)
        _show(_sample(engine, args, previous), ctx, live=False)
        return EXIT_OK
    gap = SAMPLE_GAP_S  # the first table soon, then one a second
    while True:  # until Ctrl-C (main reports it and exits 130)
        time.sleep(gap)
        current = _sample(engine, args, previous)
        _show(current, ctx, live=True)
        previous, gap = current, REFRESH_S


def _sample(engine: Any, args: argparse.Namespace, previous: dict[str, Any]) -> dict[str, Any]:
    """name -> ContainerStats. Named containers must exist; listed ones may go meanwhile."""
    from runtime.errors import ContainerNotFound

    names = args.names or [info.spec.name for info in engine.containers(all=args.all)]
    out = {}
    for name in names:
        try:
            out[name] = engine.stats(name, previous.get(name))
        except ContainerNotFound:
            if args.names:
                raise
    return out


def _show(samples: dict[str, Any], ctx: Any, *, live: bool) -> None:
    import dataclasses
    import json

    rows = list(samples.values())
    if ctx.json:
        data = [dataclasses.asdict(s) for s in rows]
        if live:
            print(json.dumps(data, sort_keys=True), flush=True)
        else:
            ctx.emit_json(data)
        return
    text = render_stats(rows)
    if live and sys.stdout.isatty():
        text = CLEAR + text
    sys.stdout.write(text)
    sys.stdout.flush()


def render_stats(rows: list[Any]) -> str:
    """docker's stats table; ``--`` for what is not known (a stopped container)."""
    table = [list(STATS_TITLES)]
    for s in rows:
        table.append([
            s.container_id[:12],
            s.name,
            _pct(s.cpu_percent),
            f"{binary_size(s.memory_usage_bytes)} / {binary_size(s.memory_limit_bytes)}",
            _pct(s.memory_percent),
            f"{decimal_size(s.net_rx_bytes)} / {decimal_size(s.net_tx_bytes)}",
            f"{decimal_size(s.block_read_bytes)} / {decimal_size(s.block_write_bytes)}",
            "--" if s.pids_current is None else str(s.pids_current),
        ])
    return columns(table)


def _pct(value: float | None) -> str:
    return "--" if value is None else f"{value:.2f}%"


def binary_size(n: int | None) -> str:
    """1536 -> 1.5KiB (docker's memory column)."""
    return _size(n, 1024.0, ("B", "KiB", "MiB", "GiB", "TiB"))


def decimal_size(n: int | None) -> str:
    """1500 -> 1.5kB (docker's network and block I/O columns)."""
    return _size(n, 1000.0, ("B", "kB", "MB", "GB", "TB"), digits=3)


def _size(n: int | None, step: float, units: tuple[str, ...], digits: int = 4) -> str:
    if n is None:
        return "--"
    value = float(n)
    for unit in units[:-1]:
        if value < step:
            return f"{value:.{digits}g}{unit}"
        value /= step
    return f"{value:.{digits}g}{units[-1]}"


def columns(table: list[list[str]]) -> str:
    """Left-aligned columns three spaces apart; the last one unpadded."""
    n = len(table[0])
    table = [row + [""] * (n - len(row)) for row in table]
    widths = [max(len(row[i]) for row in table) for i in range(n)]
    lines = []
    for row in table:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


# --- top ---------------------------------------------------------------------------------------


def cmd_top(args: argparse.Namespace, ctx: Any) -> int:
    result = ctx.engine.top(args.name, tuple(args.ps_args))
    if ctx.json:
        ctx.emit_json({"titles": result.titles, "processes": result.processes})
        return EXIT_OK
    sys.stdout.write(columns([result.titles, *result.processes]))
    return EXIT_OK
