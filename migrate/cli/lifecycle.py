"""Containers' life after run: stop, kill, rm, pause, unpause, wait."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from migrate.cli import EXIT_ERROR, EXIT_OK, add_json_flag


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("stop", help="SIGTERM, then SIGKILL after a timeout")
    p.add_argument("-t", "--time", type=float, default=10.0, metavar="SECONDS", help="seconds to wait before killing")
    add_json_flag(p)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler=cmd_stop)

    p = subparsers.add_parser("kill", help="send a signal to a container's init")
    p.add_argument("-s", "--signal", default="KILL", help="signal name or number (default KILL)")
    add_json_flag(p)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler=cmd_kill)

    p = subparsers.add_parser("rm", help="remove containers")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    add_json_flag(p)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler=cmd_rm)

    for verb, helptext in (("pause", "freeze every process of a container"), ("unpause", "thaw a paused container")):
        p = subparsers.add_parser(verb, help=helptext)
        add_json_flag(p)
        p.add_argument("names", nargs="+", metavar="NAME")
        p.set_defaults(handler=cmd_pause if verb == "pause" else cmd_unpause)

    p = subparsers.add_parser("wait", help="wait for a container to exit and print its exit code")
    p.add_argument("-t", "--timeout", type=float, default=None, metavar="SECONDS")
    add_json_flag(p)
    p.add_argument("name")
    p.set_defaults(handler=cmd_wait)


def _each(ctx: Any, names: list[str], action: Any) -> int:
    """Apply ``action`` to every name; report each failure, exit 125 if any failed."""
    from migrate.cli import report_error

    failed = False
    done = []
    for name in names:
        try:
            action(name)
            done.append(name)
        except Exception as exc:  # one line per failed name, like docker
            report_error(exc, ctx)
            failed = True
    if ctx.json and not failed:
        ctx.emit_json({"names": done})
    elif not ctx.json:
        for name in done:
            print(name)
    return EXIT_ERROR if failed else EXIT_OK


def cmd_stop(args: argparse.Namespace, ctx: Any) -> int:
    return _each(ctx, args.names, lambda n: ctx.engine.stop(n, timeout_s=args.time))


def parse_signal(text: str) -> int:
    from runtime.errors import InvalidArgument

    if text.isdigit():
        num = int(text)
        if 0 < num < signal.NSIG:
            return num
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        sig = getattr(signal.Signals, name, None) if name in signal.Signals.__members__ else None
        if sig is not None:
            return int(sig)
    raise InvalidArgument(f"invalid signal {text!r}: expected a name such as TERM or a number")


def cmd_kill(args: argparse.Namespace, ctx: Any) -> int:
    sig = parse_signal(args.signal)
    return _each(ctx, args.names, lambda n: ctx.engine.kill(n, sig))


def cmd_rm(args: argparse.Namespace, ctx: Any) -> int:
    return _each(ctx, args.names, lambda n: ctx.engine.remove(n, force=args.force))


def cmd_pause(args: argparse.Namespace, ctx: Any) -> int:
    return _each(ctx, args.names, ctx.engine.pause)


def cmd_unpause(args: argparse.Namespace, ctx: Any) -> int:
    return _each(ctx, args.names, ctx.engine.unpause)


def cmd_wait(args: argparse.Namespace, ctx: Any) -> int:
    code = ctx.engine.wait(args.name, timeout_s=args.timeout)
    if ctx.json:
        ctx.emit_json({"name": args.name, "exit_code": code})
    else:
        print(code)
    return EXIT_OK
