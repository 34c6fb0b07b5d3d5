"""CLI dispatch: a command line builds only the parser part of the module that owns its command.

The table ``migrate.cli.COMMANDS`` is static (importing every area costs start latency), so these
tests keep it in step with what the modules register, and check that a partial parser parses
exactly like the full one.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from migrate import cli
from migrate.cli import COMMAND_MODULES, COMMANDS, build_parser, command_of

REPO = Path(__file__).resolve().parents[2]


def _registered(module_name: str) -> list[str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(module_name).register(sub)
    return list(sub.choices)


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def test_table_matches_what_the_modules_register() -> None:
    for module_name in COMMAND_MODULES:
        names = _registered(module_name)
        assert names, module_name
        assert {n: COMMANDS.get(n) for n in names} == dict.fromkeys(names, module_name)
    assert set(COMMANDS.values()) == set(COMMAND_MODULES)
    assert sorted(COMMANDS) == sorted(_subcommands(build_parser()))


def test_full_parser_lists_every_command_in_help_order() -> None:
    expected = [n for m in COMMAND_MODULES for n in _registered(m)]
    assert _subcommands(build_parser()) == expected
    assert _subcommands(build_parser(None)) == expected
    assert _subcommands(build_parser("no-such-command")) == expected


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_partial_parser_has_the_commands_module(command: str) -> None:
    assert _subcommands(build_parser(command)) == _registered(COMMANDS[command])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "-d", "busybox", "sleep", "1"], "run"),
        (["--root", "/r", "run", "busybox"], "run"),
        (["--root=/r", "--json", "ps"], "ps"),
        (["--root", "ps", "inspect", "x"], "inspect"),  # "ps" is --root's value
        (["--debug", "--insecure", "--host", "10.0.0.1:7070", "--token-file", "/t", "migrate", "a", "b"], "migrate"),
        (["--ssh-key", "/k", "--ssh-accept-new", "checkpoint", "ls"], "checkpoint"),
        (["--", "check"], "check"),
        (["image", "ls"], "image"),
        (["daemon", "--listen", "unix:/s"], "daemon"),
        ([], None),
        (["--root", "/r"], None),
        (["--root"], None),
        (["--help"], None),
        (["-h", "run"], None),  # the main help: every command
        (["--help", "run"], None),
        (["--ro", "/r", "run"], None),  # an abbreviation: left to argparse and the full parser
        (["--json=1", "run"], None),
        (["-x", "run"], None),
        (["frobnicate"], None),
        (["-", "run"], None),
    ],
)
def test_command_of(argv: list[str], expected: str | None) -> None:
    assert command_of(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["--root", "/r", "run", "-d", "--name", "web", "--memory", "256M", "-v", "/a:/b:ro", "busybox", "sleep", "1"],
        ["--json", "ps", "-a"],
        ["stop", "-t", "3", "a", "b"],
        ["image", "ls", "--json"],
        ["checkpoint", "web", "--leave-running"],
        ["restore", "--import", "/f.tar", "--name", "n"],
        ["migrate", "web", "h:1", "--insecure"],
        ["check"],
    ],
)
def test_partial_parser_parses_like_the_full_one(argv: list[str]) -> None:
    command = command_of(argv)
    assert command is not None
    full = vars(build_parser().parse_args(argv))
    partial = vars(build_parser(command).parse_args(argv))
    assert partial == full


def test_main_builds_only_the_commands_module(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []
    real = cli._add_commands

    def spy(parser: argparse.ArgumentParser, command: str | None) -> None:
        seen.append(command)
        real(parser, command)

    monkeypatch.setattr(cli, "_add_commands", spy)
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--help"])
    assert exc.value.code == 0
    assert seen == ["run"]


def test_help_lists_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "migrate", "--help"], capture_output=True, text=True, cwd=REPO, check=True).stdout
    for name in COMMANDS:
        assert f"    {name} " in out or f"    {name}\n" in out, name


def test_unknown_command_error_lists_every_command() -> None:
    r = subprocess.run([sys.executable, "-m", "migrate", "frobnicate"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 125
    assert "invalid choice: 'frobnicate'" in r.stderr
    for name in COMMANDS:
        assert repr(name) in r.stderr, name


def test_run_does_not_import_the_other_areas() -> None:
    code = (
        "import sys\n"
        "from migrate import cli\n"
        "try:\n"
        "    cli.main(['run', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(m for m in sys.modules if m.startswith('migrate.cli.')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    loaded = r.stdout.split("\n")[-2].split()
    # the parser every command shares, and the examples its --help prints
    assert sorted(loaded) == ["migrate.cli.containers", "migrate.cli.examples", "migrate.cli.parser"]
