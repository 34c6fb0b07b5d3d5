"""``pymigrate daemon --config FILE`` (migrate/remote/daemon_config.py): keys are the daemon's long
flags, the command line wins, unknown keys and bad values are errors naming the key and the file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from migrate.cli import build_parser, main
from migrate import daemon_config
from migrate.daemon_config import apply, apply_file, record_argv
from runtime.errors import InvalidArgument


def _args(tmp_path: Path, toml: str, *argv: str) -> tuple[argparse.Namespace, Path]:
    config = tmp_path / "daemon.toml"
    config.write_text(toml)
    parser = build_parser("daemon")
    args = parser.parse_args([*argv[: argv.index("daemon")], "daemon", "--config", str(config), *argv[argv.index("daemon") + 1:]]
                             if "daemon" in argv else ["daemon", "--config", str(config), *argv])
    return args, config


FILE = """
listen = "10.0.0.11:7443"
root = "/srv/pymigrate"
tls-cert = "tls/node-1.crt"
tls-key = "/etc/pymigrate/tls/node-1.key"
tls-ca = "/etc/pymigrate/tls/ca.crt"
grace = 5
max-workers = 8
allow-peer-volumes = true
insecure = false
trusted-key = ["/k/a.pub", "/k/b.pub"]
debug = true
"""


def test_the_file_sets_every_kind_of_flag(tmp_path: Path) -> None:
    args, config = _args(tmp_path, FILE)
    path, taken = apply_file(args)
    assert path == config and "listen" in taken
    assert args.listen == "10.0.0.11:7443" and args.root == Path("/srv/pymigrate")
    assert args.tls_cert == tmp_path / "tls/node-1.crt"  # relative to the file, not the cwd
    assert args.tls_key == Path("/etc/pymigrate/tls/node-1.key")
    assert args.grace == 5.0 and isinstance(args.grace, float) and args.max_workers == 8
    assert args.allow_peer_volumes is True and args.insecure is False and args.debug is True
    assert args.trusted_keys == [Path("/k/a.pub"), Path("/k/b.pub")]


def test_the_command_line_wins_even_with_a_default_value(tmp_path: Path) -> None:
    args, _ = _args(tmp_path, FILE, "--root", "/cli-root", "--tls-cert", "/cli.crt", "daemon",
                    "--grace", "30", "--listen=unix:/cli.sock", "--trusted-key", "/k/cli.pub")
    apply_file(args)
    assert args.root == Path("/cli-root") and args.tls_cert == Path("/cli.crt")
    assert args.grace == 30.0  # 30 is the default: given on the command line all the same
    assert args.listen == "unix:/cli.sock" and args.trusted_keys == [Path("/k/cli.pub")]
    assert args.max_workers == 8  # not given: from the file


def test_generic_over_flags_added_later(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--metrics-listen", default=None)
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--retries", type=int, default=3)
    record_argv(parser)
    args = parser.parse_args(["--retries", "3"])
    config = tmp_path / "c.toml"
    assert apply(parser, args, {"metrics-listen": "127.0.0.1:9100", "log-format": "json", "retries": 9}, config) == [
        "metrics-listen", "log-format"]
    assert (args.metrics_listen, args.log_format, args.retries) == ("127.0.0.1:9100", "json", 3)
    with pytest.raises(InvalidArgument, match=r"invalid value for 'log-format' in daemon config .*c.toml: 'xml'"):
        apply(parser, parser.parse_args([]), {"log-format": "xml"}, config)


@pytest.mark.parametrize(("toml", "message", "hint"), [
    ('tls_cert = "/a"', "unknown key 'tls_cert' in daemon config", "did you mean 'tls-cert'?"),
    ('colour = "red"', "unknown key 'colour' in daemon config", "keys are the daemon's long flags"),
    ('host = "10.0.0.1:7443"', "unknown key 'host'", None),
    ('grace = "soon"', "invalid value for 'grace' in daemon config", None),
    ('allow-peer-volumes = "yes"', "expected true or false", None),
    ('listen = ["a", "b"]', "expected one value", None),
    ("listen = ", "invalid daemon config", "the file is TOML"),
])
def test_errors_name_the_key_and_the_file(tmp_path: Path, toml: str, message: str, hint: str | None) -> None:
    args, config = _args(tmp_path, toml)
    with pytest.raises(InvalidArgument, match=message) as info:
        apply_file(args)
    assert str(config) in str(info.value)
    if hint:
        assert hint in (info.value.hint or "")


def test_default_file_only_when_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_config, "DEFAULT_CONFIG", tmp_path / "missing.toml")
    args = build_parser("daemon").parse_args(["daemon"])
    assert apply_file(args) == (None, [])
    default = tmp_path / "daemon.toml"
    default.write_text('listen = "unix:/x.sock"\n')
    monkeypatch.setattr(daemon_config, "DEFAULT_CONFIG", default)
    args = build_parser("daemon").parse_args(["daemon"])
    assert apply_file(args) == (default, ["listen"]) and args.listen == "unix:/x.sock"


def test_daemon_refuses_a_bad_file_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "daemon.toml"
    config.write_text('listne = "unix:/x.sock"\n')
    assert main(["--root", str(tmp_path / "root"), "daemon", "--config", str(config)]) == 125
    err = capsys.readouterr().err
    assert f"unknown key 'listne' in daemon config {config}" in err and "did you mean 'listen'" in err
    assert main(["daemon", "--config", str(tmp_path / "nope.toml")]) == 125
    assert "cannot read daemon config" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()  # nothing started
