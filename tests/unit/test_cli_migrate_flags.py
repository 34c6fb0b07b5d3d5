"""``pymigrate migrate`` takes the credential flags after the subcommand too (as the README shows)."""

from __future__ import annotations

from pathlib import Path

from migrate.cli import build_parser


def test_insecure_after_the_subcommand() -> None:
    args = build_parser().parse_args(["migrate", "web", "10.0.0.2:7070", "--insecure"])
    assert args.insecure is True and args.dest == "10.0.0.2:7070"


def test_global_flags_before_the_subcommand_are_kept() -> None:
    args = build_parser().parse_args(["--insecure", "--tls-ca", "/ca.pem", "migrate", "web", "h:1"])
    assert args.insecure is True and args.tls_ca == Path("/ca.pem")


def test_tls_flags_after_the_subcommand() -> None:
    args = build_parser().parse_args(
        ["migrate", "web", "h:1", "--tls-cert", "/c", "--tls-key", "/k", "--tls-ca", "/ca", "--token-file", "/t"]
    )
    assert (args.tls_cert, args.tls_key, args.tls_ca, args.token_file) == (Path("/c"), Path("/k"), Path("/ca"), Path("/t"))
    assert args.insecure is False


def test_ssh_flags_after_the_subcommand() -> None:
    args = build_parser().parse_args(
        ["migrate", "web", "ssh://root@hostb", "--ssh-key", "/k", "--ssh-accept-new", "--ssh-known-hosts", "/kh",
         "--ssh-remote-pymigrate", "/opt/pm", "--ssh-remote-root", "/srv/pm"]
    )
    assert (args.ssh_key, args.ssh_accept_new, args.ssh_known_hosts) == (Path("/k"), True, Path("/kh"))
    assert (args.ssh_remote_pymigrate, args.ssh_remote_root) == ("/opt/pm", "/srv/pm")


def test_ssh_flags_before_the_subcommand_are_kept() -> None:
    args = build_parser().parse_args(["--ssh-key", "/k", "migrate", "web", "ssh://hostb"])
    assert args.ssh_key == Path("/k") and args.ssh_accept_new is False
