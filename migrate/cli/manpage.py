"""Man pages (roff) from the parser: ``pymigrate(1)`` and one ``pymigrate-COMMAND(1)`` per command.

A small writer of our own rather than a dependency: the pages need the synopsis argparse
already prints, the options with their help, the examples table (migrate/cli/examples.py) and,
for commands with subcommands (``image``, ``volume``), a section per subcommand. No date in the
header, so regenerating an unchanged CLI writes the same bytes (setup.sh's re-run changes nothing).
"""

from __future__ import annotations

import argparse
from typing import Iterator

from migrate.cli.parser_walk import help_text, shown_actions, subcommands

EXIT_CODES = (
    ("0", "success"),
    ("1", "the command's own negative answer (a check found something missing)"),
    ("125", "usage error (with the command's usage), or pymigrate itself failed"),
    ("126", "the container command cannot be invoked"),
    ("127", "the container command was not found"),
)


def _escape(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines())


def _usage(parser: argparse.ArgumentParser) -> str:
    lines = parser.format_usage().removeprefix("usage: ").strip().splitlines()
    return "\n".join([lines[0], *("    " + line.strip() for line in lines[1:])])


def _options(parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in shown_actions(parser):
        if action.option_strings:
            metavar = ""
            if action.nargs != 0:
                metavar = " " + (action.metavar if isinstance(action.metavar, str) else action.dest.upper())
            names = ", ".join(f"\\fB{_escape(flag)}\\fR" for flag in action.option_strings)
            yield f".TP\n{names}{_escape(metavar)}\n{_escape(help_text(parser, action))}"
        else:
            name = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
            yield f".TP\n\\fI{_escape(name)}\\fR\n{_escape(help_text(parser, action))}"


def _examples(path: str, epilog: str | None) -> list[str]:
    """The command's own "examples:" epilog if it has one (as its --help shows), else the table's."""
    from migrate.cli.examples import examples_for

    own = epilog is not None and epilog.lower().startswith("examples:")
    text = epilog.split("\n", 1)[-1] if own and epilog else examples_for(path)
    return [".SH EXAMPLES", ".nf", _escape("\n".join(line.strip() for line in text.splitlines())), ".fi"] if text else []


def _page(title: str, summary: str, parser: argparse.ArgumentParser, path: str, *, nested: bool = True) -> str:
    from migrate import __version__

    lines = [f'.TH {title.upper()} 1 "" "pymigrate {__version__}" "pymigrate Manual"', ".SH NAME",
             f"{_escape(title)} \\- {_escape(summary)}", ".SH SYNOPSIS", ".nf", _escape(_usage(parser)), ".fi"]
    if parser.description:
        lines += [".SH DESCRIPTION", _escape(parser.description)]
    options = list(_options(parser))
    if options:
        lines += [".SH OPTIONS", *options]
    for name, child_summary, sub in subcommands(parser) if nested else ():
        lines += [f".SH {_escape(f'{path} {name}'.upper())}", _escape(child_summary), ".PP", ".nf", _escape(_usage(sub)), ".fi",
                  *_options(sub)]
    lines += _examples(path, parser.epilog)
    if parser.epilog and path and not parser.epilog.lower().startswith("examples:"):
        lines += [".SH NOTES", ".nf", _escape(parser.epilog), ".fi"]
    return "\n".join(lines) + "\n"


def man_pages(parser: argparse.ArgumentParser) -> dict[str, str]:
    """File name -> roff text for ``pymigrate.1`` and every ``pymigrate-COMMAND.1``."""
    pages = {}
    commands = list(subcommands(parser))
    for name, summary, sub in commands:
        page = _page(f"pymigrate-{name}", summary, sub, name)
        pages[f"pymigrate-{name}.1"] = page + ".SH SEE ALSO\n\\fBpymigrate\\fR(1)\n"
    top = _page("pymigrate", parser.description or "", parser, "", nested=False)
    top += ".SH COMMANDS\n" + "\n".join(f".TP\n\\fBpymigrate\\-{_escape(n)}\\fR(1)\n{_escape(h)}" for n, h, _ in commands) + "\n"
    top += ".SH EXIT STATUS\n" + "\n".join(f".TP\n{code}\n{_escape(meaning)}" for code, meaning in EXIT_CODES) + "\n"
    if parser.epilog:
        top += ".SH NOTES\n" + _escape(parser.epilog) + "\n"
    pages["pymigrate.1"] = top
    return pages
