"""The parser every command shares (migrate/cli/parser.py): podman's exit code and usage for a
wrong command line, no abbreviations, "did you mean", the global options on either side of the
command, --version / version, examples in --help, completion and man pages, OSError text."""

from __future__ import annotations

import argparse
import errno
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from migrate import __version__, cli
from migrate.cli import Context, build_parser, report_error
from migrate.cli.parser import CliParser, walk

REPO = Path(__file__).resolve().parents[2]


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 125
    return capsys.readouterr().err


def _commands() -> list[str]:
    return [path for path, _ in walk(build_parser()) if path and " " not in path]


# -- usage errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "usage"), [
    (["ps", "--bogus"], "usage: pymigrate ps "),
    (["stop"], "usage: pymigrate stop "),  # a missing NAME
    (["image", "ls", "--bogus"], "usage: pymigrate image ls "),
    (["run", "--cpus", "lots", "busybox"], "usage: pymigrate run "),  # a bad value
])
def test_usage_error_exits_125_with_the_subcommands_usage(argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(argv, capsys)
    assert err.startswith(usage), err
    assert "usage: pymigrate [-h]" not in err  # not the top-level one
    assert f"See '{usage.removeprefix('usage: ').strip()} --help'." in err


def test_usage_error_as_a_program(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "migrate", "--root", str(tmp_path), "ps", "--no-such-flag"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 125
    assert r.stderr.startswith("usage: pymigrate ps ") and "unrecognized arguments: --no-such-flag" in r.stderr


def test_abbreviations_are_refused_with_the_full_name_suggested(capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(["run", "--mem", "64m", "busybox", "true"], capsys)
    assert "unrecognized arguments: --mem" in err and "did you mean --memory?" in err
    assert build_parser("run").parse_args(["run", "--memory", "64m", "busybox"]).memory == "64m"
    err = _fails(["--debu", "ps"], capsys)  # a global one too
    assert "did you mean --debug?" in err


def test_every_parser_refuses_abbreviations() -> None:
    for path, parser in walk(build_parser()):
        assert isinstance(parser, CliParser), path
        assert parser.allow_abbrev is False, path


@pytest.mark.parametrize(("argv", "guess"), [
    (["psx"], "did you mean 'ps'?"),
    (["chekpoint", "ls"], "did you mean 'checkpoint'?"),
    (["image", "lss"], "did you mean 'ls'?"),
    (["volume", "crate", "v"], "did you mean 'create'?"),
    (["run", "--cgroupns", "privat", "busybox"], "did you mean 'private'?"),
])
def test_did_you_mean_for_commands_and_choices(argv: list[str], guess: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(argv, capsys)
    assert "invalid choice" in err and guess in err


def test_flag_suggestion_comes_from_that_subcommands_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert "did you mean --force?" in _fails(["rm", "--forse", "x"], capsys)
    assert "did you mean --leave-running?" in _fails(["checkpoint", "--leave-runing", "x"], capsys)
    for far in ("--zzzzzz", "--bogus"):  # nothing close (--host is not): no guess
        assert "did you mean" not in _fails(["ps", far], capsys)


# -- global options on either side of the command ---------------------------------------------


@pytest.mark.parametrize("command", [
    ["ps"], ["ps", "-a"], ["inspect", "c1"], ["logs", "c1"], ["stop", "c1"], ["rm", "-f", "c1"], ["image", "ls"],
    ["volume", "ls"], ["checkpoint", "ls"], ["restore", "abc"], ["version"], ["exec", "c1", "true"], ["daemon"],
    ["run", "busybox", "true"], ["commit", "c1", "img"], ["port", "c1"],
])
def test_globals_before_or_after_the_command(command: list[str], tmp_path: Path) -> None:
    globals_ = ["--root", str(tmp_path), "--json", "--debug", "--ssh-key", "/k", "--token-file", "/t"]
    name = command[0]
    # after the options and before any positional (exec/run pass everything after them on)
    split = 1 + next((i for i, word in enumerate(command[1:]) if not word.startswith("-")), len(command) - 1)
    if name in ("image", "volume", "checkpoint") and command[1] == "ls":
        split = 2
    def parsed(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, Any]:
        # a module's private defaults (daemon keeps its own command line) are not options
        return {k: v for k, v in vars(parser.parse_args(argv)).items() if not k.startswith("_")}

    before = parsed(build_parser(), [*globals_, *command])
    after = parsed(build_parser(), [*command[:split], *globals_, *command[split:]])
    partial = parsed(build_parser(name), [*command[:split], *globals_, *command[split:]])
    assert before == after == partial
    assert (before["root"], before["json"], before["debug"]) == (tmp_path, True, True)
    assert (before["ssh_key"], before["token_file"]) == (Path("/k"), Path("/t"))


def _leaf_argv(parser: argparse.ArgumentParser) -> list[str]:
    """Values for ``parser``'s required positionals (a choice where there are choices)."""
    values = []
    for action in parser._actions:
        if action.option_strings or isinstance(action, argparse._SubParsersAction):
            continue
        if action.nargs in (None, "+", argparse.PARSER) or isinstance(action.nargs, int):
            values.append(str(next(iter(action.choices))) if action.choices else "x")
    return values


def test_every_command_takes_the_globals_right_after_its_name(tmp_path: Path) -> None:
    checked = []
    for path, parser in walk(build_parser()):
        if not path or any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            continue
        argv = [*path.split(), "--root", str(tmp_path), "--json", "--debug", *_leaf_argv(parser)]
        args = build_parser(path.split()[0]).parse_args(argv)
        assert (args.root, args.json, args.debug) == (tmp_path, True, True), path
        checked.append(path)
    assert {"run", "ps", "daemon", "image ls", "volume rm", "version", "completion"} <= set(checked)


def test_without_globals_the_defaults_hold() -> None:
    args = build_parser().parse_args(["ps"])
    assert (args.root, args.json, args.debug, args.host, args.ssh_remote_pymigrate) == (None, False, False, None, "pymigrate")


def test_a_value_after_the_command_wins_and_one_before_is_kept() -> None:
    assert build_parser().parse_args(["--root", "/a", "ps", "--root", "/b"]).root == Path("/b")
    assert build_parser().parse_args(["--host", "h:1", "ps", "-a"]).host == "h:1"
    assert build_parser().parse_args(["--json", "ps", "-a"]).json is True


def test_a_containers_command_line_is_not_read_as_global_options() -> None:
    args = build_parser().parse_args(["exec", "c1", "ls", "--root", "/x", "--json"])
    assert args.command == ["ls", "--root", "/x", "--json"]
    assert (args.root, args.json) == (None, False)
    args = build_parser().parse_args(["run", "busybox", "sh", "--debug"])
    assert (args.command, args.debug) == (["sh", "--debug"], False)


def test_a_commands_own_flag_of_a_global_name_keeps_its_meaning() -> None:
    # daemon's --tls-cert is the daemon's own certificate; migrate's credentials dial DEST
    daemon = next(p for path, p in walk(build_parser("daemon")) if path == "daemon")
    daemon.add_global_options()  # type: ignore[attr-defined]
    assert "the daemon's certificate" in (daemon._option_string_actions["--tls-cert"].help or "")
    args = build_parser().parse_args(["migrate", "c1", "h:1", "--insecure", "--tls-ca", "/ca"])
    assert (args.insecure, args.tls_ca) == (True, Path("/ca"))


def test_every_command_takes_json() -> None:
    from migrate.cli.parser import with_all_globals

    for path, parser in walk(with_all_globals(build_parser())):
        assert "--json" in parser._option_string_actions, path


# -- version ----------------------------------------------------------------------------------------


def test_dash_dash_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"pymigrate version {__version__}\n"


def test_version_json_has_the_client_and_no_server_without_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["server"] is None
    assert report["client"]["version"] == __version__
    assert report["client"]["api_version"] == "pymigrate.v1"
    assert report["client"]["python"] == ".".join(map(str, sys.version_info[:3]))


def test_version_with_host_asks_the_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    from migrate.api import HostInfo
    from migrate.cli.version import cmd_version

    class Daemon:
        def host_info(self) -> HostInfo:
            return HostInfo(version="9.9.9", hostname="far", kernel="6.1.0", criu_version="4.1.1", features={},
                            cgroup_mode="v2", cpu_digest="")

    args = build_parser().parse_args(["--host", "far:7070", "version"])
    ctx = Context(root=None, json=False, debug=False, args=args, _engine=Daemon())
    assert cmd_version(args, ctx) == 0
    out = capsys.readouterr().out
    for needle in (f"Version:      {__version__}", "Server: far:7070", "Version:      9.9.9", "CRIU:         4.1.1", "Kernel:       6.1.0"):
        assert needle in out, out


def test_engine_reports_the_same_version() -> None:
    from migrate.engine import _version

    assert _version() == __version__
    assert 'attr = "migrate.__version__"' in (REPO / "pyproject.toml").read_text()


# -- examples ------------------------------------------------------------------------------------


def test_every_command_has_examples_in_its_help() -> None:
    from migrate.cli.examples import examples_for

    for path, parser in walk(build_parser()):
        if not path:
            continue
        assert parser.epilog or examples_for(path), f"no examples for {path}"
        assert "examples" in parser.format_help().lower(), path


def test_examples_cover_the_new_commands_before_their_modules_land() -> None:
    from migrate.cli.examples import EXAMPLES

    for name in ("create", "start", "restart", "rename", "stats", "top", "cp", "version", "completion"):
        assert name in EXAMPLES


def _example_lines() -> list[list[str]]:
    from migrate.cli.examples import EXAMPLES

    lines = []
    for text in EXAMPLES.values():
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            cut = next((i for i, w in enumerate(words) if w in ("|", "<", ">") or w.startswith("2>")), len(words))
            lines.append(words[1:cut])
    return lines


@pytest.mark.parametrize("argv", _example_lines(), ids=lambda argv: " ".join(argv)[:60])
def test_each_example_parses(argv: list[str]) -> None:
    """An example names flags the command really has (a command not written yet is skipped)."""
    parser = build_parser()
    command = cli.command_of(argv)
    assert command is not None, argv
    if command not in _commands():
        pytest.skip(f"{command}: not registered yet")
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"example does not parse ({exc.code}): pymigrate {' '.join(argv)}")


# -- completion and man pages --------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_mentions_every_command(shell: str) -> None:
    from migrate.cli.completion import script

    text = script(shell)
    for name in _commands():
        assert name in text, (shell, name)
    for flag in ("--memory", "--leave-running", "--filter", "--root"):
        assert flag.removeprefix("--") in text, (shell, flag)


def test_completion_command_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["completion", "bash"]) == 0
    out = capsys.readouterr().out
    assert "complete" in out and "_shtab_pymigrate" in out
    result = subprocess.run(["bash", "-n"], input=out, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_is_valid_for_its_shell(shell: str, tmp_path: Path) -> None:
    import shutil

    from migrate.cli.completion import script

    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    (tmp_path / "script").write_text(script(shell))
    r = subprocess.run([shell, "-n", str(tmp_path / "script")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _bash_completes(script_text: str, line: str) -> list[str]:
    """What bash offers at the end of ``line``, with ``pymigrate`` a function that lists web and db."""
    words = line.split(" ")
    program = (f"{script_text}\npymigrate() {{ printf 'web\\ndb\\n'; }}\n"
               f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}; "
               f"COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}; _shtab_pymigrate; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    r = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return sorted(filter(None, r.stdout.splitlines()))


def test_bash_completes_commands_flags_and_container_names() -> None:
    from migrate.cli.completion import script

    text = script("bash")
    assert _bash_completes(text, "pymigrate che") == ["check", "checkpoint"]
    assert _bash_completes(text, "pymigrate ps --f") == ["--filter", "--format"]
    assert _bash_completes(text, "pymigrate stop ") == ["db", "web"]  # `ps -a`'s names
    assert _bash_completes(text, "pymigrate logs w") == ["web"]
    assert "--root" in _bash_completes(text, "pymigrate --r")


def test_install_writes_once_and_then_changes_nothing(tmp_path: Path) -> None:
    from migrate.cli.completion import MAN_DIR, TARGETS, install, script

    first = install(tmp_path)
    assert any("pymigrate.1" in line for line in first)
    assert (tmp_path / TARGETS["bash"]).read_text() == script("bash")
    assert (tmp_path / TARGETS["fish"]).is_file() and (tmp_path / TARGETS["zsh"]).is_file()
    pages = {p.name for p in (tmp_path / MAN_DIR).iterdir()}
    assert {f"pymigrate-{name}.1" for name in _commands()} | {"pymigrate.1"} == pages
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    stale = tmp_path / MAN_DIR / "pymigrate-gone.1"
    stale.write_text("old")
    assert install(tmp_path) == [f"removing {stale}"]
    assert install(tmp_path) == []
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == mtimes


def test_man_page_renders(tmp_path: Path) -> None:
    import shutil

    from migrate.cli.manpage import man_pages

    pages = man_pages(build_parser())
    ps = pages["pymigrate-ps.1"]
    assert ps.startswith(".TH PYMIGRATE-PS 1") and ".SH EXAMPLES" in ps and "\\-\\-all" in ps
    assert "pymigrate\\-checkpoint" in pages["pymigrate.1"] and ".SH EXIT STATUS" in pages["pymigrate.1"]
    if shutil.which("man") is None:
        pytest.skip("no man here to render with")
    (tmp_path / "ps.1").write_text(ps)
    r = subprocess.run(["man", "-l", str(tmp_path / "ps.1")], capture_output=True, text=True, env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and "pymigrate-ps" in r.stdout and "--all" in r.stdout, r.stderr


# -- error text ------------------------------------------------------------------------------------


def _report(exc: BaseException, capsys: pytest.CaptureFixture[str], *, as_json: bool = False) -> tuple[int, Any]:
    ctx = Context(root=None, json=as_json, debug=False, args=argparse.Namespace())
    rc = report_error(exc, ctx)
    out = capsys.readouterr()
    return rc, json.loads(out.out) if as_json else out.err


def test_oserror_is_rendered_without_its_errno(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        open("/no/such/dir/file")  # noqa: SIM115
    except OSError as exc:
        rc, err = _report(exc, capsys)
    assert rc == 125
    assert err.splitlines()[0] == "pymigrate: cannot open /no/such/dir/file: no such file or directory"
    assert "Errno" not in err and "hint: check the path" in err


def test_oserror_hides_temporary_file_names(capsys: pytest.CaptureFixture[str]) -> None:
    exc = PermissionError(errno.EACCES, "Permission denied", "/var/lib/pymigrate/tmp/tmpk2j4x9_a/config.json.tmp")
    rc, answer = _report(exc, capsys, as_json=True)
    assert answer["error"] == "cannot open a temporary file in /var/lib/pymigrate/tmp: permission denied"
    assert "tmpk2j4x9_a" not in answer["error"] and answer["hint"]
    exc2 = OSError(errno.EXDEV, "Invalid cross-device link", "/a/b", None, "/c/.d.part")
    assert _report(exc2, capsys)[1].startswith("pymigrate: cannot move /a/b to a temporary file in /c: invalid cross-device link")


def test_a_quoted_oserror_inside_a_known_error_is_cleaned(capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.errors import InvalidArgument, MountError

    inner = FileNotFoundError(errno.ENOENT, "No such file or directory", "/var/lib/pymigrate/x")
    rc, err = _report(MountError(f"cannot mount the rootfs: {inner}", hint="run pymigrate check"), capsys)
    assert err.splitlines() == ["pymigrate: cannot mount the rootfs: /var/lib/pymigrate/x: no such file or directory",
                                "hint: run pymigrate check"]
    named = FileNotFoundError(errno.ENOENT, "No such file or directory", "/etc/app.env")
    rc, err = _report(InvalidArgument(f"cannot read env file /etc/app.env: {named}"), capsys)
    assert err == "pymigrate: cannot read env file /etc/app.env: no such file or directory\n"
    busy = OSError(errno.EADDRINUSE, "Address already in use")
    rc, err = _report(InvalidArgument(f"cannot listen on 0.0.0.0:7070: {busy}"), capsys)
    assert err == "pymigrate: cannot listen on 0.0.0.0:7070: address already in use\n"
