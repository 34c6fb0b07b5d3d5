"""The ``pymigrate`` command line: thin over the ``Engine`` API.

Each area lives in its own module with a ``register(subparsers)`` function that adds its
subcommands; a subcommand's handler receives ``(args, ctx)`` and returns an exit code. Every
parser is a ``migrate.cli.parser.CliParser``: usage errors, "did you mean", the global options
after the subcommand, examples in ``--help``.

Exit codes (podman's and docker's convention):
    0    success
    1    the check found something missing, or the command's own negative answer
    125  usage error (printed with the subcommand's usage), or pymigrate itself failed
         (runtime/migration error, bad input)
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

from migrate.cli.parser import EXIT_USAGE as EXIT_USAGE  # re-exported: modules return it
from migrate.cli.parser import CliParser

EXIT_OK = 0
EXIT_FAIL = 1
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
    "migrate.cli.tls",
    "migrate.cli.events",
    "migrate.cli.version",
    "migrate.cli.completion",
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
    "tls": "migrate.cli.tls",
    "events": "migrate.cli.events",
    "version": "migrate.cli.version",
    "completion": "migrate.cli.completion",
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
    """The global ``--json`` on this subcommand (every ``CliParser`` subcommand gets it anyway;
    this keeps it in its place in the module's help). SUPPRESS: ``--json ps`` is not undone."""
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")


def use_request_id(p: Any = None, *, args: Any = None, ctx: Any = None) -> None:
    """``--request-id ID``: with a parser ``p``, add the flag; with ``args`` and ``ctx``, hand the id
    to the remote engine, which sends it with the call (docs/api.md "request_id")."""
    if p is not None:
        p.add_argument("--request-id", default=None, metavar="ID",
                       help="with --host: a retry with the same ID gets the first call's result (no second one)")
        return
    request_id = getattr(args, "request_id", None)
    if not request_id:
        return
    if not hasattr(ctx.engine, "request_id"):
        from runtime.errors import Unsupported

        raise Unsupported("--request-id without --host", "request ids are kept by a daemon (its ROOT/requests)",
                          hint="pass --host ADDRESS, or look with ps / checkpoint ls before running it again")
    ctx.engine.request_id = request_id


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser: every subcommand, or only the module that registers ``command``.

    With ``command`` (a name from ``COMMANDS``) the parser parses that command's lines exactly as
    the full one does; ``--help`` and error messages that list the commands need the full one.
    """
    parser = _global_parser()
    _add_commands(parser, command)
    return parser


def _add_commands(parser: argparse.ArgumentParser, command: str | None) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliParser)
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
    not a global option (the full parser then reports it, with a guess from every flag it knows).
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
    parser = CliParser(
        prog="pymigrate", top=True, description="Run containers, checkpoint them with CRIU, restore and migrate them.",
        epilog="Global options may also follow the command (pymigrate ps --root DIR). Exit code 125: usage error or "
               "pymigrate failed; see 'pymigrate COMMAND --help'.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the client's version and exit (with --host: "
                        "see 'pymigrate version')")
    return parser


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from migrate import __version__

        print(f"pymigrate version {__version__}")
        parser.exit(EXIT_OK)


# Parsers a zygote built before forking its workers (``prebuild_parser``, from migrate/zygote/server.py):
# a worker parses with its own copy of one instead of building it (3-6 ms of every command here).
# Key None: the bare global parser ``command_of`` reads the options from (never given commands).
_PREBUILT: dict[str | None, argparse.ArgumentParser] = {}


def prebuild_parser(argv: list[str]) -> None:
    """Build and keep the parser of ``argv``'s command, for the processes forked from this one.
    Never parse with a kept parser in this process: parsing adds options to subparsers."""
    bare = _PREBUILT.setdefault(None, _global_parser())
    command = command_of(argv, bare)
    if command is not None and command not in _PREBUILT:
        parser = _global_parser()
        _add_commands(parser, command)
        _PREBUILT[command] = parser


def _parser_for(argv: list[str]) -> argparse.ArgumentParser:
    bare = _PREBUILT.get(None)
    command = command_of(argv, bare) if bare is not None else None
    if command is not None and command in _PREBUILT:
        return _PREBUILT[command]
    parser = _global_parser()
    _add_commands(parser, command_of(argv, parser))
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the program (not a test calling main): its dataclasses' methods come compiled
        from runtime import dataclass_cache

        dataclass_cache.install()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser_for(argv).parse_args(argv)
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
    from migrate.cli.errors_text import clean_text, describe_os_error

    hint = getattr(exc, "hint", None)
    if isinstance(exc, OSError) and not _is_known(exc):
        message, hint = describe_os_error(exc)
    elif _is_known(exc):
        message = clean_text(str(exc))  # the net for a message that quoted an OSError
    else:
        message = f"internal error: {type(exc).__name__}: {exc}"
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

    return isinstance(exc, (ContainerError, MigrationError))


if __name__ == "__main__":
    sys.exit(main())
