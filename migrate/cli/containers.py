"""Container subcommands: run, create and exec (listing.py: ps, inspect; logs.py; lifecycle.py: the rest).

Exit codes: 0 ok; 125 pymigrate failed (bad input, runtime error); 126/127 the container command
could not be invoked / was not found; a foreground ``run``, ``exec`` and ``wait`` return the
container command's own exit code (128+N when killed by signal N).
Imports are lazy: ``pymigrate run -d`` start latency is benchmarked against runc.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from migrate.cli import EXIT_ERROR, EXIT_OK, add_json_flag, use_request_id


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="create and start a container")
    p.add_argument("-d", "--detach", action="store_true", help="run in the background and print the name")
    add_run_flags(p)
    use_request_id(p)
    p.set_defaults(handler=cmd_run)

    # docker create: run's flags but -d; the container starts later (`start`), so it is a detached
    # one: --rm is its shim's removal after the exit, as with run -d --rm
    p = subparsers.add_parser("create", help="create a container without starting it (start runs it)")
    add_run_flags(p)
    p.set_defaults(handler=cmd_create, detach=True)

    _register_exec(subparsers)


def add_run_flags(p: Any) -> None:
    """The flags ``run`` and ``create`` share (all of run's but ``-d``)."""
    p.add_argument("-i", "--interactive", action="store_true",
                   help="keep the container's stdin open: this terminal's input (or `attach`'s) goes to it")
    p.add_argument("-t", "--tty", action="store_true",
                   help="give the container a terminal (a pty its shim holds; `attach` reaches it)")
    p.add_argument("--detach-keys", default="ctrl-p,ctrl-q", metavar="KEYS",
                   help="with -it: key sequence that detaches and leaves it running (default ctrl-p,ctrl-q)")
    p.add_argument("--name", help="container name ([a-zA-Z0-9][a-zA-Z0-9_.-]{0,62})")
    p.add_argument("--hostname", help="hostname inside the container (default: short id)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="environment variable; KEY alone: its value here (skipped when unset here)")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="KEY=VALUE lines ('#' comments, blank lines, KEY alone as for -e); -e comes after")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("-u", "--user", default="", metavar="USER[:GROUP]",
                   help="user (name or uid) and group (name or gid) from the container's /etc/passwd and /etc/group "
                        "(default: the image's User, else root)")
    p.add_argument("--stop-signal", default="", metavar="SIGNAL",
                   help="what stop sends first (SIGQUIT, QUIT, 3; default: the image's StopSignal, else SIGTERM)")
    p.add_argument("--entrypoint", metavar="CMD",
                   help="replace the image's Entrypoint (and drop its Cmd): one executable, or a JSON array; '' clears it")
    p.add_argument("--memory", "-m", help="memory limit, e.g. 256m, 1g, 512KiB")
    p.add_argument("--cpus", type=float, help="cpu limit in cores, e.g. 0.5")
    p.add_argument("--pids-limit", type=int, help="maximum number of processes")
    p.add_argument("--network", type=_network_mode, default="bridge",
                   help="bridge (own address), none (loopback only), host (the host's network namespace) "
                        "or container:NAME (that running container's)")
    for flag, kind in (("--pid", "pid"), ("--ipc", "ipc"), ("--uts", "uts")):
        p.add_argument(flag, dest=f"{kind}_mode", default="private", metavar="private|host|container:NAME",
                       help=f"the {kind} namespace: its own (default), the host's or a running container's")
    p.add_argument("--userns", default="", metavar="auto|host",
                   help="auto[:size=N]: the container's root is an unprivileged id range of the host "
                        "(default: the host's PYMIGRATE_USERNS, else host)")
    p.add_argument("--cgroupns", dest="cgroupns_mode", default="private", choices=("private", "host"),
                   help="the cgroup namespace: its own (default) or the host's")
    p.add_argument("--ip", help="address on the bridge (default: the next free one)")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[HOST_IP:][HOST_PORT]:PORT[/tcp|udp]",
                   help="forward a host port to a container port (repeatable; ranges 8000-8001:80-81; no host port: a free one)")
    p.add_argument("-P", "--publish-all", action="store_true", help="publish the image's exposed ports on free host ports")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOSTDIR|NAME:CTRDIR[:ro]",
                   help="bind mount a host directory (an absolute or ./ path), or mount named volume NAME (made if missing)")
    p.add_argument("--mount", action="append", default=[], metavar="type=volume|bind,source=S,target=/p[,readonly]",
                   help="a named volume or a bind mount, docker's --mount syntax")
    p.add_argument("--read-only", action="store_true",
                   help="mount the container's root read-only (volumes keep their mode; /dev, /dev/shm stay writable)")
    p.add_argument("--cap-add", action="append", default=[], metavar="CAP",
                   help="add a capability to the default set (NET_ADMIN, CAP_SYS_ADMIN, ALL)")
    p.add_argument("--cap-drop", action="append", default=[], metavar="CAP",
                   help="drop a capability from the default set (NET_RAW, ALL); an add wins")
    p.add_argument("--cgroup-parent", help="cgroup below our own to create the container's cgroup in")
    p.add_argument("--restart", default="no", metavar="POLICY",
                   help="no, on-failure[:MAX-RETRIES], always or unless-stopped (kept by the container's shim)")
    p.add_argument("--init", action="store_true",
                   help="run tini as PID 1: it forwards signals to the command and reaps orphaned zombies")
    p.add_argument("--rm", action="store_true",
                   help="remove the container when it exits (with -d: by its shim on the host, recorded in the spec)")
    p.add_argument("--security-opt", action="append", default=[], metavar="seccomp=unconfined|default|FILE",
                   help="seccomp filter: the host's default profile (the default), none, or a Docker/OCI JSON profile FILE")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE",
                   help="set metadata on the container (repeatable; ps --filter label=KEY[=VALUE])")
    p.add_argument("--label-file", action="append", default=[], metavar="FILE",
                   help="read labels from a file of KEY=VALUE lines")
    add_json_flag(p)
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)


def _register_exec(subparsers: Any) -> None:
    p = subparsers.add_parser("exec", help="run a command inside a running container")
    p.add_argument("-i", "--interactive", action="store_true", help="with -t: send this terminal's input")
    p.add_argument("-t", "--tty", action="store_true", help="give the command a terminal (resized with this one)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="environment variable; KEY alone: its value here (skipped when unset here)")
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]", help="run as this user (default: the container's)")
    add_json_flag(p)
    p.add_argument("name")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_exec)


# -- run ------------------------------------------------------------------------------------------


def run_options(args: argparse.Namespace) -> Any:
    """RunOptions from parsed arguments; InvalidArgument names the bad value."""
    from migrate.api import RunOptions
    from runtime.container import parse_mount, parse_size, parse_volume
    from runtime.image_config import parse_entrypoint
    from runtime.labels import parse_labels

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    from runtime.seccomp import parse_security_options

    seccomp, seccomp_profile = parse_security_options(args.security_opt) or ("default", None)
    return RunOptions(
        image=args.image,
        command=tuple(command),
        name=args.name,
        hostname=args.hostname,
        env=resolve_env(args.env, args.env_file),
        workdir=args.workdir,
        memory_bytes=None if args.memory is None else parse_size(args.memory, "memory size"),
        cpus=args.cpus,
        pids_limit=args.pids_limit,
        network=args.network,
        ip=args.ip,
        ports=parse_publish_args(args.publish),
        publish_all=args.publish_all,
        volumes=tuple(parse_volume(v) for v in args.volume) + tuple(parse_mount(m) for m in getattr(args, "mount", ())),
        cgroup_parent=args.cgroup_parent,
        seccomp=seccomp,
        seccomp_profile=seccomp_profile,
        user=args.user,
        stop_signal=args.stop_signal,
        entrypoint=parse_entrypoint(args.entrypoint),
        # a foreground run reports the exit code first, then removes it itself (_foreground)
        auto_remove=bool(args.rm and args.detach),
        read_only=args.read_only,
        cap_add=tuple(args.cap_add),
        cap_drop=tuple(args.cap_drop),
        restart=args.restart,
        init=args.init,
        tty=args.tty,
        interactive=args.interactive,
        pid_mode=args.pid_mode,
        ipc_mode=args.ipc_mode,
        uts_mode=args.uts_mode,
        cgroupns_mode=args.cgroupns_mode,
        userns=args.userns,
        labels=parse_labels(getattr(args, "label", ()), getattr(args, "label_file", ())),
    )


def _network_mode(text: str) -> str:
    """``--network``: bridge, none, host or container:NAME (the name is resolved by run)."""
    if text in ("bridge", "none", "host") or (text.startswith("container:") and len(text) > len("container:")):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose bridge, none, host or container:NAME)")


def parse_publish_args(values: Iterable[str]) -> tuple[Any, ...]:
    """Every ``-p`` value's mappings (runtime.ports.parse_publish); InvalidArgument names the bad one."""
    from runtime.ports import parse_publish

    return tuple(m for v in values for m in parse_publish(v))


def ports_column(ports: Iterable[Any]) -> str:
    """ps's PORTS: ``0.0.0.0:8080->80/tcp, ...`` (at most three, then how many more)."""
    shown = [f"{m.host_label}->{m.container_port}/{m.protocol}" for m in ports]
    return ", ".join(shown[:3]) + (f" (+{len(shown) - 3})" if len(shown) > 3 else "") if shown else ""


def resolve_env(entries: Iterable[str], env_files: Iterable[str],
                environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """KEY=VALUE entries for the request: --env-file lines first, then -e (docker's order, later wins).

    Resolved here, on the CLI's side, so the library and the daemon only ever see KEY=VALUE:
    ``KEY`` alone takes its value from ``environ`` (the CLI's environment) and is skipped when
    unset there, as docker does. Env files use docker's format: one entry a line, leading white
    space dropped, lines starting with ``#`` and blank lines skipped, the value taken literally
    (no quotes removed, no expansion).

    Raises:
        InvalidArgument: an unreadable file, a line without a name or with white space in it.
    """
    from runtime.errors import InvalidArgument

    environ = os.environ if environ is None else environ
    out: list[str] = []
    for path in env_files:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"cannot read env file {path}: {exc}") from exc
        for number, line in enumerate(lines, 1):
            line = line.lstrip(" \t").lstrip("\ufeff") if number == 1 else line.lstrip(" \t")
            if not line or line.startswith("#"):
                continue
            key = line.split("=", 1)[0]
            if not key:
                raise InvalidArgument(f"invalid line {number} in env file {path}: no variable name before '='")
            if any(c.isspace() for c in key):
                raise InvalidArgument(f"invalid line {number} in env file {path}: "
                                      f"variable name {key!r} contains white space")
            out.extend(_from_environ(line, environ))
    for entry in entries:
        if not entry.split("=", 1)[0]:
            raise InvalidArgument(f"invalid environment variable {entry!r}: expected KEY=VALUE or KEY")
        out.extend(_from_environ(entry, environ))
    return tuple(out)


def _from_environ(entry: str, environ: Mapping[str, str]) -> list[str]:
    if "=" in entry:
        return [entry]
    return [f"{entry}={environ[entry]}"] if entry in environ else []


def cmd_run(args: argparse.Namespace, ctx: Any) -> int:
    options = run_options(args)
    attached = (args.tty or args.interactive) and not args.detach
    if attached:
        _check_attachable(args, ctx)
    use_request_id(args=args, ctx=ctx)
    try:
        info = ctx.engine.run(options)
    except Exception as exc:
        code = getattr(exc, "exit_code", None)
        if code in (126, 127):  # the command itself: podman's convention
            from migrate.cli import report_error

            report_error(exc, ctx)
            return int(code)
        raise
    name = info.spec.name
    if args.detach:
        if ctx.json:
            ctx.emit_json(info)
        else:
            print(name)
        return EXIT_OK
    if attached:
        return _attached(args, ctx, name)
    return _foreground(ctx, name, remove=args.rm)


def cmd_create(args: argparse.Namespace, ctx: Any) -> int:
    """Print the full id, as docker create does (run -d prints the name)."""
    info = ctx.engine.create(run_options(args))
    if ctx.json:
        ctx.emit_json(info)
    else:
        print(info.spec.container_id)
    return EXIT_OK


def _check_attachable(args: argparse.Namespace, ctx: Any) -> None:
    """Refuse a foreground -t/-i run that could not attach, before anything is created."""
    from migrate.cli.attach import parse_detach_keys, require_local
    from runtime.errors import InvalidArgument

    require_local(ctx.engine, "run -t/-i in the foreground")
    parse_detach_keys(args.detach_keys)
    if args.tty and args.interactive and not os.isatty(0):
        raise InvalidArgument("the input device is not a TTY", hint="drop -t to pipe stdin, or run from a terminal")


def _attached(args: argparse.Namespace, ctx: Any, name: str) -> int:
    """run -it / -i / -t in the foreground: attach until it exits or the user detaches."""
    from migrate.cli.attach import DETACHED, attach, forward_signals, parse_detach_keys

    with forward_signals(ctx.engine, name):
        code = attach(ctx, name, detach_keys=parse_detach_keys(args.detach_keys), whole_log=True)
    if ctx.json:
        ctx.emit_json({"name": name, "detached": code is DETACHED, "exit_code": code})
    if code is DETACHED:
        return EXIT_OK
    if args.rm:
        ctx.engine.remove(name, force=True)
    return code if code >= 0 else EXIT_ERROR


def _foreground(ctx: Any, name: str, *, remove: bool) -> int:
    """Stream the log until the container exits (its stdout to ours, its stderr to ours); forward
    SIGINT/SIGTERM/SIGHUP to it. ``--json``: the output passes through all the same, and the result
    is the last line of stdout, one compact JSON object (``tail -n1 | jq``)."""
    import json

    from migrate.cli.attach import follow_output, forward_signals

    with forward_signals(ctx.engine, name):
        mid_line = follow_output(ctx.engine, name)
        code = ctx.engine.wait(name)
    if ctx.json:
        sys.stdout.write(("\n" if mid_line else "") + json.dumps({"name": name, "exit_code": code}, sort_keys=True) + "\n")
        sys.stdout.flush()
    if remove:
        ctx.engine.remove(name, force=True)
    return code if code >= 0 else EXIT_ERROR


# -- processes ------------------------------------------------------------------------------------


def cmd_exec(args: argparse.Namespace, ctx: Any) -> int:
    from runtime.errors import InvalidArgument

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidArgument(f"no command given to exec in container {args.name}")
    engine = ctx.engine
    if not hasattr(engine, "exec"):
        from runtime.errors import Unsupported

        raise Unsupported("exec", "only on the local host", hint="run pymigrate exec on the container's host")
    sys.stdout.flush()
    if not hasattr(engine, "attach_socket"):  # --host: the daemon's Exec call (migrate/remote/attach_stream.py)
        from migrate.cli.attach import remote_terminal

        return int(engine.exec(args.name, tuple(command), env=resolve_env(args.env, ()), workdir=args.workdir,
                               user=args.user, tty=args.tty, interactive=args.interactive,
                               terminal=remote_terminal()))
    console = None
    if args.tty:
        from migrate.cli.attach import exec_console

        console = exec_console(args.interactive)
    try:
        code = engine.exec(args.name, tuple(command), env=resolve_env(args.env, ()), workdir=args.workdir,
                           user=args.user, **({"console": console} if console is not None else {}))
    except Exception as exc:
        code = getattr(exc, "exit_code", None)
        if code in (126, 127):
            from migrate.cli import report_error

            report_error(exc, ctx)
            return int(code)
        raise
    return code
