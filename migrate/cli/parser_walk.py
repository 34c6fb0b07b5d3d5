"""Walking a built parser: what the man pages (manpage.py) and shell completions (completion.py) both read.

argparse keeps subcommands and help text in private attributes (``_actions``, ``_choices_actions``,
``_expand_help``); reading them in one place keeps the two generators in step when argparse changes.
"""

from __future__ import annotations

import argparse
from typing import Iterator


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of ``parser``'s direct subcommands, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def shown_actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The options and positionals ``--help`` shows (not suppressed ones, not the subcommand chooser)."""
    for action in parser._actions:
        if action.help != argparse.SUPPRESS and not isinstance(action, argparse._SubParsersAction):
            yield action


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """``action``'s help as --help prints it (``%(default)s`` filled in, ``%%`` a percent sign)."""
    return parser._get_formatter()._expand_help(action) if action.help else ""
