"""Shell completion and man pages, generated from the parser itself (so they never drift).

    pymigrate completion bash|zsh|fish          print the script
    python -m migrate.cli.completion install [--destdir DIR]
                                                write the scripts and man pages where shells and
                                                man look (scripts/setup.sh runs it)

bash and zsh come from shtab; shtab has no fish, so ``fish_script`` writes fish's ``complete``
lines from the same parser. A container argument completes the names ``ps -a`` lists, a volume
one ``volume ls -q``'s, a path argument files (``annotate``). ``install`` rewrites a file only when its text changed, and removes
man pages of commands that no longer exist, so a second run changes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterator

from migrate.cli import EXIT_OK, Context
from migrate.cli.parser_walk import help_text, shown_actions, subcommands

SHELLS = ("bash", "zsh", "fish")
# where each file goes below DESTDIR (Debian's bash-completion, zsh's and fish's vendor dirs)
TARGETS = {
    "bash": "usr/share/bash-completion/completions/pymigrate",
    "zsh": "usr/local/share/zsh/site-functions/_pymigrate",
    "fish": "usr/share/fish/vendor_completions.d/pymigrate.fish",
}
MAN_DIR = "usr/local/share/man/man1"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("completion", help="print the shell completion script (bash, zsh or fish)",
                              description="Print the completion script for SHELL; scripts/setup.sh installs all three.")
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")
    p.set_defaults(handler=cmd_completion)


def cmd_completion(args: Any, ctx: Context) -> int:
    sys.stdout.write(script(args.shell))
    return EXIT_OK


# commands whose first NAME is a container (docker's habit: <TAB> offers the containers)
CONTAINER_COMMANDS = frozenset({"exec", "inspect", "logs", "start", "restart", "rename", "stop", "kill", "rm", "pause",
                                "unpause", "wait", "stats", "top", "port", "attach", "commit", "checkpoint", "migrate"})
VOLUME_COMMANDS = frozenset({"volume inspect", "volume rm"})
NAME_DESTS = ("name", "names", "container", "args")
LISTERS = {"containers": "pymigrate ps -a --format '{{.Names}}' 2>/dev/null", "volumes": "pymigrate volume ls -q 2>/dev/null"}
PREAMBLE = {
    "bash": "\n".join(f'_pymigrate_{what}() {{ compgen -W "$({lister})" -- "$1"; }}' for what, lister in LISTERS.items()),
    "zsh": "\n".join(f'_pymigrate_{what}() {{ compadd -- ${{(f)"$({lister})"}} }}' for what, lister in LISTERS.items()),
}


def full_parser() -> argparse.ArgumentParser:
    from migrate.cli import build_parser
    from migrate.cli.parser import with_all_globals

    return annotate(with_all_globals(build_parser()))


def _completes(action: argparse.Action) -> str | None:
    """"files", "containers", "volumes" or None: what a shell should offer for ``action``."""
    kind = getattr(action, "pymigrate_completes", None)
    if kind is None and (action.type is Path or getattr(action.type, "__name__", "") == "_path"):
        kind = "files"
    return kind


def annotate(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Mark what each name and path argument completes (shtab's ``complete`` attribute too)."""
    import shtab

    from migrate.cli.parser import walk

    for path, sub in walk(parser):
        kind = "containers" if path in CONTAINER_COMMANDS else "volumes" if path in VOLUME_COMMANDS else None
        first = next((a for a in sub._actions if not a.option_strings and a.dest in NAME_DESTS), None)
        if kind and first is not None:
            first.pymigrate_completes = kind  # type: ignore[attr-defined]
        for action in sub._actions:
            what = _completes(action)
            if what == "files":
                action.complete = shtab.FILE  # type: ignore[attr-defined]
            elif what:
                action.complete = {"bash": f"_pymigrate_{what}", "zsh": f"_pymigrate_{what}"}  # type: ignore[attr-defined]
    return parser


def script(shell: str, parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or full_parser()
    if shell == "fish":
        return fish_script(parser)
    import shtab

    return str(shtab.complete(parser, shell=shell, preamble=PREAMBLE))  # type: ignore[arg-type]  # a dict per shell is documented


# -- fish -------------------------------------------------------------------------------------------


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_names(parser: argparse.ArgumentParser, condition: str) -> Iterator[str]:
    """What fish offers for the command's positional arguments: names, or files."""
    positionals = [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    kinds = {_completes(a) or "files" for a in positionals}  # an IMAGE, a command line: paths are a fair guess
    for kind in sorted(kinds - {"files"}):
        yield f"complete -c pymigrate -n {_fish_quote(condition)} -a {_fish_quote(f'({LISTERS[kind]})')}"
    if "files" in kinds:
        yield f"complete -c pymigrate -n {_fish_quote(condition)} -F"


def _fish_options(parser: argparse.ArgumentParser, condition: str) -> Iterator[str]:
    for action in shown_actions(parser):
        if not action.option_strings:
            continue
        parts = ["complete -c pymigrate"]
        if condition:
            parts.append(f"-n {_fish_quote(condition)}")
        for flag in action.option_strings:
            parts.append(f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}")
        if action.nargs != 0:
            parts.append("-r" if _completes(action) == "files" else "-x")
            if action.choices:
                parts.append(f"-a {_fish_quote(' '.join(map(str, action.choices)))}")
        if action.help:
            parts.append(f"-d {_fish_quote(help_text(parser, action).splitlines()[0][:80])}")
        yield " ".join(parts)


def fish_script(parser: argparse.ArgumentParser) -> str:
    lines = ["# pymigrate completion for fish, generated from its parser (pymigrate completion fish)",
             "complete -c pymigrate -f"]
    top = list(subcommands(parser))
    lines += _fish_options(parser, "__fish_use_subcommand")
    for name, summary, sub in top:
        lines.append(f"complete -c pymigrate -n __fish_use_subcommand -a {name} -d {_fish_quote(summary[:80])}")
        seen = f"__fish_seen_subcommand_from {name}"
        nested = list(subcommands(sub))
        nested_names = " ".join(n for n, _, _ in nested)
        for child, child_help, child_parser in nested:
            lines.append(f"complete -c pymigrate -n {_fish_quote(f'{seen}; and not __fish_seen_subcommand_from {nested_names}')} "
                         f"-a {child} -d {_fish_quote(child_help[:80])}")
            lines += _fish_options(child_parser, f"{seen}; and __fish_seen_subcommand_from {child}")
            lines += _fish_names(child_parser, f"{seen}; and __fish_seen_subcommand_from {child}")
        lines += _fish_options(sub, seen)
        if not nested:
            lines += _fish_names(sub, seen)
    return "\n".join(lines) + "\n"


# -- install ----------------------------------------------------------------------------------------


def wanted_files(parser: argparse.ArgumentParser | None = None) -> dict[str, str]:
    """Path below DESTDIR -> text: the three completion scripts and the man pages."""
    from migrate.cli.manpage import man_pages

    parser = parser or full_parser()
    files = {TARGETS[shell]: script(shell, parser) for shell in SHELLS}
    files.update({f"{MAN_DIR}/{name}": text for name, text in man_pages(parser).items()})
    return files


def install(destdir: Path) -> list[str]:
    """Write what changed under ``destdir``; remove stale pymigrate-*.1 pages. What it did, by line."""
    done = []
    files = wanted_files()
    for relative, text in files.items():
        path = destdir / relative
        if path.is_file() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".new")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(path)
        done.append(f"writing {path}")
    man_dir = destdir / MAN_DIR
    for stale in sorted(man_dir.glob("pymigrate-*.1")) if man_dir.is_dir() else ():
        if f"{MAN_DIR}/{stale.name}" not in files:
            stale.unlink()
            done.append(f"removing {stale}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m migrate.cli.completion")
    parser.add_argument("action", choices=("install",))
    parser.add_argument("--destdir", type=Path, default=Path("/"), help="root to install below (default /)")
    args = parser.parse_args(argv)
    done = install(args.destdir)
    print("\n".join(done) if done else f"completion and man pages up to date under {args.destdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
