"""``pymigrate tls init/issue`` (migrate/remote/tls_issue.py): what the certificates carry, file
modes, refusals. The integration test test_tls_init_issue.py uses them for an mTLS migration."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from migrate.cli import main
from migrate.remote.tls_issue import init_ca, issue
from runtime.errors import InvalidArgument


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_is_self_signed_and_its_key_private(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "pki", days=10)
    cert = _cert(ca.cert)
    assert cert.issuer == cert.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert stat.S_IMODE(ca.key.stat().st_mode) == 0o600
    assert 9 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 10
    cert.verify_directly_issued_by(cert)


def test_host_certificate_names_what_peers_dial_with_both_usages(tmp_path: Path) -> None:
    init_ca(tmp_path)
    host = issue("10.1.2.3", tmp_path, ips=("fd00::7",), dns=("node-1.example",))
    cert = _cert(host.cert)
    cert.verify_directly_issued_by(_cert(tmp_path / "ca.crt"))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("fd00::7")}
    assert sans.get_values_for_type(x509.DNSName) == ["node-1.example"]
    usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert key_usage.digital_signature and key_usage.key_encipherment and not key_usage.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE(host.key.stat().st_mode) == 0o600


def test_a_name_as_host_is_a_dns_san_and_client_only_has_no_server_auth(tmp_path: Path) -> None:
    init_ca(tmp_path)
    sans = _cert(issue("node-2", tmp_path).cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["node-2"]
    client = _cert(issue("scheduler", tmp_path, client_only=True).cert)
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        client.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no ca in") as info:
        issue("h", tmp_path)
    assert "tls init" in (info.value.hint or "")
    init_ca(tmp_path)
    first = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(InvalidArgument, match="a ca already exists"):
        init_ca(tmp_path)
    assert (tmp_path / "ca.key").read_bytes() == first  # not overwritten
    with pytest.raises(InvalidArgument, match="invalid --ip 'nope'"):
        issue("h", tmp_path, ips=("nope",))
    with pytest.raises(InvalidArgument, match="invalid host"):
        issue("../evil", tmp_path)
    issue("h", tmp_path)
    with pytest.raises(InvalidArgument, match="a certificate for h already exists"):
        issue("h", tmp_path)
    issue("h", tmp_path, force=True)


def test_cli_init_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tls", "init", "--dir", str(tmp_path), "--days", "30"]) == 0
    assert main(["tls", "issue", "node-3", "--ip", "192.0.2.9", "--dir", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"ips": [\n    "192.0.2.9"' in out and '"dns": [\n    "node-3"' in out
    assert main(["tls", "issue", "node-3", "--dir", str(tmp_path)]) == 125  # exists


def test_usages_are_enforced_by_grpc(tmp_path: Path) -> None:
    """Over real TCP with gRPC's TLS: a host certificate serves and dials (a daemon is a client of
    the daemon it migrates to); a --client-only one is refused as a server (extended key usage)."""
    from migrate.errors import AuthError
    from migrate.remote.client import RemoteEngine
    from migrate.remote.server import create_server
    from migrate.remote.tls import TlsConfig
    from tests.fakes.engine import FakeEngine

    init_ca(tmp_path)
    issue("127.0.0.1", tmp_path)
    issue("server-as-client", tmp_path, ips=("127.0.0.1",), client_only=True)

    def tls(stem: str) -> TlsConfig:
        return TlsConfig(tmp_path / f"{stem}.crt", tmp_path / f"{stem}.key", tmp_path / "ca.crt")

    def host_info(server_stem: str, client_stem: str) -> str:
        server, port = create_server(FakeEngine(hostname="h"), "127.0.0.1:0", tls=tls(server_stem))
        server.start()
        try:
            with RemoteEngine(f"127.0.0.1:{port}", tls=tls(client_stem), timeout_s=5) as client:
                return client.host_info().hostname  # type: ignore[no-any-return]
        finally:
            server.stop(0)

    assert host_info("127.0.0.1", "127.0.0.1") == "h"
    with pytest.raises(AuthError, match="tls handshake"):
        host_info("server-as-client", "127.0.0.1")
