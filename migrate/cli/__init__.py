"""The ``pymigrate`` command line: thin over the ``Engine`` API.

Each area lives in its own module with a ``register(subparsers)`` function that adds its
subcommands; a subcommand's handler receives ``(args, ctx)`` and returns an exit code.

Exit codes (podman's convention):
    0    success
    1    the check found something missing, or the command's own negative answer
    2    usage error (argparse)
    125  pymigrate itself failed (runtime/migration error, bad input)
    126  the container command cannot be invoked
    127  the container command was not found
    other: a foreground container's own exit code
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_ERROR = 125

# Modules that contribute subcommands, in help order. A module missing its dependencies (or not
# written yet) is skipped so the rest of the CLI keeps working.
COMMAND_MODULES = (
    "migrate.cli.check",
    "migrate.cli.containers",
    "migrate.cli.listing",
    "migrate.cli.logs",
    "migrate.cli.lifecycle",
    "migrate.cli.stats",
    "migrate.cli.copy",
    "migrate.cli.ports",
    "migrate.cli.attach",
    "migrate.cli.images",
    "migrate.cli.commit",
    "migrate.cli.volumes",
    "migrate.cli.checkpoints",
    "migrate.cli.daemon",
    "migrate.cli.version",
)

# Which module registers each subcommand (tests/unit/test_cli_dispatch.py keeps this in step with
# the modules' register()). A command line naming one of these builds only that module's part of
# the parser: importing and registering every area costs ~5 ms of `pymigrate run -d`, whose start
# latency is benchmarked. Anything else (no command, --help, an unknown name) builds all of it.
COMMANDS: dict[str, str] = {
    "check": "migrate.cli.check",
    **dict.fromkeys(("run", "create", "exec"), "migrate.cli.containers"),
    "ps": "migrate.cli.listing",
    "inspect": "migrate.cli.listing",
    "logs": "migrate.cli.logs",
    **dict.fromkeys(("start", "restart", "stop", "kill", "rm", "pause", "unpause", "wait", "rename"), "migrate.cli.lifecycle"),
    **dict.fromkeys(("stats", "top"), "migrate.cli.stats"),
    "cp": "migrate.cli.copy",
    "attach": "migrate.cli.attach",
    "port": "migrate.cli.ports",
    "image": "migrate.cli.images",
    "commit": "migrate.cli.commit",
    "volume": "migrate.cli.volumes",
    **dict.fromkeys(("checkpoint", "restore", "migrate"), "migrate.cli.checkpoints"),
    "daemon": "migrate.cli.daemon",
    "version": "migrate.cli.version",
}

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every subcommand gets: parsed globals and a lazily built engine."""

    root: Path | None
    json: bool
    debug: bool
    args: argparse.Namespace
    _engine: Any = field(default=None, repr=False)

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from migrate.engine import engine_for

            self._engine = engine_for(self.args)
        return self._engine

    def emit_json(self, value: Any) -> None:
        json.dump(value, sys.stdout, indent=2, sort_keys=True, default=_json_default)
        sys.stdout.write("\n")


def _json_default(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)  # type: ignore[arg-type]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", dest="json_sub", help="machine-readable output")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser: every subcommand, or only the module that registers ``command``.

    With ``command`` (a name from ``COMMANDS``) the parser parses that command's lines exactly as
    the full one does; ``--help`` and error messages that list the commands need the full one.
    """
    parser = _global_parser()
    _add_commands(parser, command)
    return parser


def _add_commands(parser: argparse.ArgumentParser, command: str | None) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(sub)


def command_of(argv: list[str], parser: argparse.ArgumentParser | None = None) -> str | None:
    """The subcommand named by ``argv`` (the first word after the global options), if it is sure.

    None when there is none, when ``-h``/``--help`` comes first, or when a token before it is
    not a global option spelled out in full (argparse would accept an abbreviation, and the
    full parser sorts out whatever this does not recognise).
    """
    options = (parser or _global_parser())._option_string_actions
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--" or not token.startswith("-") or token == "-":
            word = argv[i + 1] if token == "--" and i + 1 < len(argv) else token
            return word if word in COMMANDS else None
        name, eq, _value = token.partition("=")
        action = options.get(name)
        if action is None or action.dest == "help":
            return None
        if action.nargs == 0:
            if eq:
                return None
        elif action.nargs is None:
            i += 0 if eq else 1
        else:
            return None
        i += 1
    return None


def _global_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pymigrate", description="Run containers, checkpoint them with CRIU, restore and migrate them."
    )
    parser.add_argument("--root", type=Path, default=None, help="state root (env PYMIGRATE_ROOT, default /var/lib/pymigrate)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--debug", action="store_true", help="verbose logs and tracebacks")
    parser.add_argument("--host", default=None, help="act on a remote daemon: unix:PATH, HOST:PORT or ssh://[user@]host[:port]")
    parser.add_argument("--tls-cert", type=Path, default=None, help="client certificate for --host over TLS")
    parser.add_argument("--tls-key", type=Path, default=None, help="client key for --host over TLS")
    parser.add_argument("--tls-ca", type=Path, default=None, help="CA that signed the daemon's certificate")
    parser.add_argument("--token-file", type=Path, default=None, help="bearer token for the daemon")
    parser.add_argument("--insecure", action="store_true", help="plain TCP to the daemon (no TLS)")
    # ssh:// addresses (migrate/remote/ssh.py)
    parser.add_argument("--ssh-key", type=Path, default=None, metavar="FILE", help="for ssh:// hosts: use only this private key")
    parser.add_argument("--ssh-accept-new", action="store_true", help="for ssh:// hosts: record an unknown host key (a changed one is still refused)")
    parser.add_argument("--ssh-known-hosts", type=Path, default=None, metavar="FILE", help="for ssh:// hosts: known_hosts file (default ~/.ssh/known_hosts)")
    parser.add_argument("--ssh-remote-pymigrate", default="pymigrate", metavar="PATH", help="for ssh:// hosts: the pymigrate command there (default pymigrate)")
    parser.add_argument("--ssh-remote-root", default=None, metavar="DIR", help="for ssh:// hosts: the state root there (default its PYMIGRATE_ROOT or /var/lib/pymigrate)")
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the program (not a test calling main): its dataclasses' methods come compiled
        from runtime import dataclass_cache

        dataclass_cache.install()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _global_parser()
    _add_commands(parser, command_of(argv, parser))
    args = parser.parse_args(argv)
    args.json = bool(args.json or getattr(args, "json_sub", False))
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx = Context(root=args.root, json=args.json, debug=args.debug, args=args)
    handler: Callable[[argparse.Namespace, Context], int] = args.handler
    try:
        return handler(args, ctx)
    except KeyboardInterrupt:
        print("pymigrate: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`pymigrate ps | head`): not an error; silence the flush at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # the CLI's one real boundary
        return report_error(exc, ctx)


def report_error(exc: BaseException, ctx: Context) -> int:
    """One line and a hint for users; the traceback with --debug; JSON with --json."""
    if ctx.debug:
        import traceback

        traceback.print_exception(exc)
    hint = getattr(exc, "hint", None)
    known = _is_known(exc)
    message = str(exc) if known else f"internal error: {type(exc).__name__}: {exc}"
    if ctx.json:
        json.dump({"error": message, "type": type(exc).__name__, "hint": hint}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"pymigrate: {message}", file=sys.stderr)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
    return EXIT_ERROR


def _is_known(exc: BaseException) -> bool:
    from migrate.errors import MigrationError
    from runtime.errors import ContainerError

    return isinstance(exc, (ContainerError, MigrationError, OSError))


if __name__ == "__main__":
    sys.exit(main())
