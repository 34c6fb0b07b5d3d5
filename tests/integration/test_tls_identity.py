"""mTLS identity checks a scheduler and a peer daemon rely on, over real TCP in a netns host:
a daemon whose certificate does not name the address dialed, or has expired, is refused by the
client (AuthError: the handshake failed, not "unreachable"); an expired client certificate is
refused by the daemon. test_migrate_security.py covers the other CA, no client certificate,
trusting another CA and the bearer token."""

from __future__ import annotations

from pathlib import Path

import pytest
from migrate.remote.client import RemoteEngine
from migrate.errors import AuthError, TransferError
from tests.fakes.certs import Pem
from tests.integration.hosts import Host, make_hosts  # noqa: F401  (fixture)
from tests.integration.migrate_helpers import DAEMON_PORT
from tests.integration.test_migrate_security import TOKEN, Pki, _pki, _refused, issue

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "netns")]


def _daemon(host: Host, pki: Pki, pem: Pem) -> str:
    return host.start_daemon(
        f"{host.address}:{DAEMON_PORT}",
        extra_args=["--tls-cert", str(pem.cert), "--tls-key", str(pem.key), "--tls-ca", str(pki.ca.ca_path),
                    "--token-file", str(pki.token_file)],
    )


def test_daemon_certificate_must_name_the_address_dialed(make_hosts, tmp_path: Path) -> None:  # noqa: ANN001
    a = make_hosts(1)[0]
    pki = _pki(tmp_path, [a])
    addr = _daemon(a, pki, issue(pki.ca, "elsewhere", ("10.250.250.250",)))  # right CA, wrong address
    with RemoteEngine(addr, tls=pki.tls(), token=TOKEN, timeout_s=5) as client:
        error = _refused(client.host_info, AuthError)
    assert "tls handshake" in str(error), error
    a.stop_daemon()
    addr = _daemon(a, pki, pki.hosts[a.letter])  # the right one works
    with RemoteEngine(addr, tls=pki.tls(), token=TOKEN, timeout_s=5) as client:
        assert client.host_info().criu_version


def test_expired_certificates_are_refused_on_both_ends(make_hosts, tmp_path: Path) -> None:  # noqa: ANN001
    a = make_hosts(1)[0]
    pki = _pki(tmp_path, [a])
    addr = _daemon(a, pki, issue(pki.ca, "old-daemon", (a.address,), expired=True))
    with RemoteEngine(addr, tls=pki.tls(), token=TOKEN, timeout_s=5) as client:
        error = _refused(client.host_info, AuthError)
    assert "tls handshake" in str(error), error
    a.stop_daemon()

    addr = _daemon(a, pki, pki.hosts[a.letter])
    old_client = issue(pki.ca, "old-scheduler", expired=True)
    with RemoteEngine(addr, tls=pki.tls(old_client), token=TOKEN, timeout_s=5) as client:
        error = _refused(client.host_info, TransferError)
    assert "client certificate" in (getattr(error, "hint", None) or ""), error
    with RemoteEngine(addr, tls=pki.tls(), token=TOKEN, timeout_s=5) as client:
        assert client.host_info().criu_version
