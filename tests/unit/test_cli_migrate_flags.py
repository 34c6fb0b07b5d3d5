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
