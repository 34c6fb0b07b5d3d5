"""The CLI's ``ArgumentParser``: podman's habits for every subcommand, without touching the modules.

``CliParser`` is the top parser's class and, through ``add_subparsers``' default
``parser_class``, every subcommand's (nested ones too: ``image ls``). It gives each of them:

- exit code 125 for a usage error, with that subcommand's usage (not the top-level one) and a
  pointer to its ``--help``;
- ``allow_abbrev=False``: ``--mem`` is not ``--memory``;
- "did you mean" for an unknown command, choice or flag (difflib over what that parser knows);
- the global options (``GLOBAL_OPTIONS``) after the subcommand too (``pymigrate ps --root R``),
  added to a subcommand's parser only when it parses (most parsers of a run are never used, and
  ``run -d`` start time is benchmarked). A module that defines one of those flags itself keeps its
  own (``daemon``'s ``--tls-cert`` is the daemon's certificate). Added with ``SUPPRESS`` defaults:
  a value given before the subcommand is not overwritten by the subcommand's default;
- an "Examples" section in ``--help`` from ``migrate/cli/examples.py`` (read only when help is
  printed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

EXIT_USAGE = 125  # podman and docker: the command line itself is wrong

# (flags, keyword arguments) of the global options; the top parser gets them with these defaults
GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--root",), dict(type=Path, default=None, metavar="DIR", help="state root (env PYMIGRATE_ROOT, default /var/lib/pymigrate)")),
    (("--json",), dict(action="store_true", help="machine-readable output")),
    (("--debug",), dict(action="store_true", help="verbose logs and tracebacks")),
    (("--host",), dict(default=None, help="act on a remote daemon: unix:PATH, HOST:PORT or ssh://[user@]host[:port]")),
    (("--tls-cert",), dict(type=Path, default=None, metavar="FILE", help="client certificate for --host over TLS")),
    (("--tls-key",), dict(type=Path, default=None, metavar="FILE", help="client key for --host over TLS")),
    (("--tls-ca",), dict(type=Path, default=None, metavar="FILE", help="CA that signed the daemon's certificate")),
    (("--token-file",), dict(type=Path, default=None, metavar="FILE", help="bearer token for the daemon")),
    (("--insecure",), dict(action="store_true", help="plain TCP to the daemon (no TLS)")),
    # ssh:// addresses (migrate/remote/ssh.py)
    (("--ssh-key",), dict(type=Path, default=None, metavar="FILE", help="for ssh:// hosts: use only this private key")),
    (("--ssh-accept-new",), dict(action="store_true", help="for ssh:// hosts: record an unknown host key (a changed one is still refused)")),
    (("--ssh-known-hosts",), dict(type=Path, default=None, metavar="FILE", help="for ssh:// hosts: known_hosts file (default ~/.ssh/known_hosts)")),
    (("--ssh-remote-pymigrate",), dict(default="pymigrate", metavar="PATH", help="for ssh:// hosts: the pymigrate command there (default pymigrate)")),
    (("--ssh-remote-root",), dict(default=None, metavar="DIR", help="for ssh:// hosts: the state root there (default its PYMIGRATE_ROOT or /var/lib/pymigrate)")),
)
# shown in every subcommand's help; the others are listed once, in `pymigrate --help`
SHOWN_IN_SUBCOMMANDS = frozenset({"--json"})


class CliParser(argparse.ArgumentParser):
    """See the module docstring. ``top=True`` for the ``pymigrate`` parser itself."""

    def __init__(self, *args: Any, top: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._top = top
        self._has_globals = top
        if top:
            for flags, options in GLOBAL_OPTIONS:
                self.add_argument(*flags, **options)

    def add_global_options(self) -> None:
        """The global options this subcommand does not define itself (once)."""
        if self._has_globals:
            return
        self._has_globals = True
        for flags, options in GLOBAL_OPTIONS:
            if any(flag in self._option_string_actions for flag in flags):
                continue  # the module's own meaning wins
            shown = flags[0] in SHOWN_IN_SUBCOMMANDS
            self.add_argument(*flags, **{**options, "default": argparse.SUPPRESS,
                                         "help": options["help"] if shown else argparse.SUPPRESS})

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        self.add_global_options()
        parsed, extras = super().parse_known_args(args, namespace)
        # A subcommand gets every word after its name, so what it leaves over is unrecognised for
        # good; saying so here (not in the top parser) prints this subcommand's usage.
        if extras and not self._top:
            self.error(unrecognized_message(self, extras))
        return parsed, extras

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(unrecognized_message(self, extras))
        return parsed

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse's own message, plus the closest choice
        if action.choices is not None and value not in action.choices and isinstance(value, str):
            choices = ", ".join(map(repr, action.choices))
            message = f"invalid choice: {value!r} (choose from {choices})"
            guess = closest(value, [c for c in action.choices if isinstance(c, str)])
            raise argparse.ArgumentError(action, message + (f"; did you mean {guess!r}?" if guess else ""))
        super()._check_value(action, value)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nSee '{self.prog} --help'.\n")

    def format_help(self) -> str:
        text = super().format_help()
        if self.epilog is None:
            from migrate.cli.examples import examples_for

            block = examples_for(command_path(self))
            if block:
                text += "\nexamples:\n" + block.rstrip("\n") + "\n"
        return text


def command_path(parser: argparse.ArgumentParser) -> str:
    """``"image ls"`` for the parser of ``pymigrate image ls``; "" for the top parser."""
    return " ".join(parser.prog.split()[1:])


def closest(word: str, candidates: Sequence[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.7)  # 0.6 offered --host for --bogus
    return found[0] if found else None


def unrecognized_message(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    message = f"unrecognized arguments: {' '.join(extras)}"
    flag = next((e.partition("=")[0] for e in extras if e.startswith("-") and e != "-"), None)
    if flag is not None:
        guess = closest(flag, [s for s in parser._option_string_actions if s != flag])
        if guess:
            message += f"; did you mean {guess}?"
    return message


def walk(parser: argparse.ArgumentParser) -> Any:
    """``(path, parser)`` for ``parser`` and every subcommand's parser under it, depth first."""
    yield command_path(parser), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for sub in action.choices.values():
                if id(sub) not in seen:  # aliases share one parser
                    seen.add(id(sub))
                    yield from walk(sub)


def with_all_globals(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every subcommand with its global options (for completion and man pages, not a run)."""
    for _path, sub in walk(parser):
        if isinstance(sub, CliParser):
            sub.add_global_options()
    return parser
