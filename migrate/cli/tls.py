"""``pymigrate tls``: a CA and certificates for daemons and clients (mutual TLS).

    pymigrate tls init [--dir DIR] [--days N] [--force]
        DIR/ca.crt and DIR/ca.key (0600); DIR defaults to /etc/pymigrate/tls
    pymigrate tls issue HOST [--ip IP]... [--dns NAME]... [--dir DIR] [--days N] [--client-only] [--force]
        DIR/HOST.crt and DIR/HOST.key signed by DIR's CA. HOST and every --ip/--dns are the names
        peers dial (subjectAltName); serverAuth + clientAuth, since a daemon dials other daemons
        with the same certificate. --client-only: clientAuth only, no SAN from HOST (schedulers).

Use them as ``daemon --tls-cert DIR/HOST.crt --tls-key DIR/HOST.key --tls-ca DIR/ca.crt``
(docs/operations.md). Local only: nothing here talks to a daemon. Exit codes: 0, 125 (no CA,
bad address, files that exist without --force).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from migrate.cli import EXIT_OK, add_json_flag

DEFAULT_DIR = "/etc/pymigrate/tls"  # migrate.remote.tls_issue.DEFAULT_DIR (not imported: cryptography is heavy)


def register(subparsers: Any) -> None:
    tls = subparsers.add_parser("tls", help="make a CA and host/client certificates for mutual TLS",
                                description="Create a CA and certificates that daemons and clients use for mutual TLS.")
    sub = tls.add_subparsers(dest="tls_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("init", help="create a CA (ca.crt, ca.key) in DIR")
    _common(p, days_default=3650)
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("issue", help="issue a certificate for HOST signed by DIR's CA")
    p.add_argument("host", metavar="HOST", help="host name or address: the common name, a SAN and the file name")
    p.add_argument("--ip", dest="ips", action="append", default=[], metavar="IP", help="another address peers dial (repeatable)")
    p.add_argument("--dns", dest="dns", action="append", default=[], metavar="NAME", help="another name peers dial (repeatable)")
    p.add_argument("--client-only", action="store_true", help="a client certificate (clientAuth only, HOST is no SAN)")
    _common(p, days_default=825)
    p.set_defaults(handler=cmd_issue)


def _common(p: argparse.ArgumentParser, *, days_default: int) -> None:
    p.add_argument("--dir", type=Path, default=Path(DEFAULT_DIR), metavar="DIR", help=f"the PKI directory (default {DEFAULT_DIR})")
    p.add_argument("--days", type=int, default=days_default, metavar="N", help=f"validity in days (default {days_default})")
    p.add_argument("--force", action="store_true", help="replace existing files")
    add_json_flag(p)


def _report(issued: Any, ctx: Any) -> int:
    if ctx.json:
        ctx.emit_json({"cert": issued.cert, "key": issued.key, "common_name": issued.common_name,
                       "not_after": issued.not_after.isoformat(), "ips": issued.ips, "dns": issued.dns})
        return EXIT_OK
    sans = ", ".join([*issued.ips, *issued.dns]) or "none"
    print(f"{issued.cert}\n{issued.key}\n(valid until {issued.not_after:%Y-%m-%d}; names: {sans})")
    return EXIT_OK


def cmd_init(args: argparse.Namespace, ctx: Any) -> int:
    from migrate.remote.tls_issue import init_ca

    return _report(init_ca(args.dir, days=args.days, force=args.force), ctx)


def cmd_issue(args: argparse.Namespace, ctx: Any) -> int:
    from migrate.remote.tls_issue import issue

    issued = issue(args.host, args.dir, ips=tuple(args.ips), dns=tuple(args.dns), days=args.days,
                   client_only=args.client_only, force=args.force)
    return _report(issued, ctx)
