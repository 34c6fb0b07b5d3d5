"""Containers' life after run or create: start, restart, stop, kill, rm, pause, unpause, wait, rename.

Idempotent as docker where scripts rely on it: ``start`` of a running container, ``stop`` of a
created or exited one and ``rm -f`` of a missing one succeed (``rm -f`` prints nothing for it);
``kill`` of a created or exited one too (docker refuses that one; issue 14 asks for it:
runtime.runtime.Runtime.kill). ``rm`` of a missing container still fails (125).
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

from migrate.cli import EXIT_ERROR, EXIT_OK, add_json_flag


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("start", help="start created or stopped containers (a stopped one keeps its files)")
    p.add_argument("-a", "--attach", action="store_true",
                   help="stay attached: this run's output until it exits, then its exit code (one container)")
    p.add_argument("-i", "--interactive", action="store_true", help="with -a: send this terminal's input (a -i container)")
    p.add_argument("--detach-keys", default="ctrl-p,ctrl-q", metavar="KEYS",
                   help="with -a on a -t container: key sequence that detaches (default ctrl-p,ctrl-q)")
    add_json_flag(p)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler=cmd_start)

    p = subparsers.add_parser("restart", help="stop (when running), then start containers")
    p.add_argument("-t", "--time", type=float, default=10.0, metavar="SECONDS", help="seconds to wait before killing")
    add_json_flag(p)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler=cmd_restart)

    p = subparsers.add_parser("rename", help="give a container another name")
    add_json_flag(p)
    p.add_argument("name", metavar="OLD")
    p.add_argument("new_name", metavar="NEW")
    p.set_defaults(handler=cmd_rename)

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
            if action(name) is not False:  # False: nothing was there to act on (rm -f): not printed
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


def cmd_start(args: argparse.Namespace, ctx: Any) -> int:
    if not args.attach:
        return _each(ctx, args.names, ctx.engine.start)
    if len(args.names) > 1:
        from runtime.errors import InvalidArgument

        raise InvalidArgument(f"cannot attach to {len(args.names)} containers at once", hint="start -a one container, or drop -a")
    return _start_attached(args, ctx, args.names[0])


def _start_attached(args: argparse.Namespace, ctx: Any, name: str) -> int:
    """start -a: as a foreground run, but only this run's output (docker)."""
    from migrate.cli.attach import DETACHED, attach, forward_signals, parse_detach_keys, require_local

    engine = ctx.engine
    info = engine.inspect(name)
    if info.spec.tty:  # its terminal: the attach socket (its shim replays what came before we connect)
        require_local(engine, "start -a of a -t container")  # refused before it starts
        keys = parse_detach_keys(args.detach_keys)
        if (failed := _start_command(ctx, name)) is not None:
            return failed
        with forward_signals(engine, name):
            code = attach(ctx, name, detach_keys=keys, stdin=args.interactive)
        if ctx.json:
            ctx.emit_json({"name": name, "detached": code is DETACHED, "exit_code": code})
        return EXIT_OK if code is DETACHED else (code if code >= 0 else EXIT_ERROR)
    if args.interactive and info.spec.interactive:
        require_local(engine, "start -ai")
    if (failed := _start_command(ctx, name)) is not None:
        return failed
    sock = _stdin_to(engine, name) if args.interactive and info.spec.interactive else None
    with forward_signals(engine, name):
        _follow_this_run(engine, name, info.state, write=not ctx.json)
        code = engine.wait(name)
    if sock is not None:
        sock.close()
    if ctx.json:
        ctx.emit_json({"name": name, "exit_code": code})
    return code if code >= 0 else EXIT_ERROR


def _start_command(ctx: Any, name: str) -> int | None:
    """Start it; None, or 126/127 when its command cannot be invoked or was not found (reported
    here, as a foreground run returns them); any other failure is raised."""
    try:
        ctx.engine.start(name)
    except Exception as exc:
        code = getattr(exc, "exit_code", None)
        if code not in (126, 127):
            raise
        from migrate.cli import report_error

        report_error(exc, ctx)
        return int(code)
    return None


def _stdin_to(engine: Any, name: str) -> Any:
    """Our stdin to a ``-i`` container's (its attach socket); None when it ended before we got there."""
    from migrate.cli.attach import connect, forward_stdin
    from runtime.errors import InvalidState

    try:
        _, path = engine.attach_socket(name)
    except InvalidState:
        return None
    sock = connect(path, name)
    forward_stdin(sock)
    return sock


def _follow_this_run(engine: Any, name: str, before: Any, *, write: bool) -> None:
    """The output of the run just started, until it exits: the lines written after the previous
    run's recorded end (the host's own clock, so also right over --host); a created container's
    whole log (empty); a container that was running already: from now on (``tail=0``)."""
    from migrate.cli.logs import write_entries

    if before.status == "exited" and before.finished_at is not None:
        entries = engine.logs(name, follow=True, since=before.finished_at)
    else:
        entries = engine.logs(name, follow=True, tail=None if before.status == "created" else 0)
    if write:
        write_entries(entries)
    else:
        for _ in entries:
            pass


def cmd_restart(args: argparse.Namespace, ctx: Any) -> int:
    return _each(ctx, args.names, lambda n: ctx.engine.restart(n, timeout_s=args.time))


def cmd_rename(args: argparse.Namespace, ctx: Any) -> int:
    """Prints nothing, as docker rename (--json: the renamed container)."""
    info = ctx.engine.rename(args.name, args.new_name)
    if ctx.json:
        ctx.emit_json(info)
    return EXIT_OK


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
