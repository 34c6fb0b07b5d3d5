"""Operators' way to run daemons, end to end on real sockets: certificates from ``pymigrate tls
init/issue`` (nothing hand-made) carry two daemons in network-namespace hosts through an mTLS
migration, a scheduler certificate from ``tls issue --client-only`` drives it, host a's daemon
takes its TLS settings from a ``--config`` file (relative paths) and tells a stand-in for systemd
(a unix datagram socket as ``$NOTIFY_SOCKET``) READY=1 once it answers and STOPPING=1 on SIGTERM.
A certificate that does not name the address dialed is refused, so the SANs matter."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from migrate.api import MigrateOptions
from migrate.errors import AuthError
from migrate.remote.client import RemoteEngine
from migrate.remote.tls import TlsConfig
from tests.integration.hosts import Host, make_hosts, pymigrate_command  # noqa: F401  (fixture)
from tests.integration.migrate_helpers import COUNTER_CMD, DAEMON_PORT, leftovers, names_by_status, wait_counting_past

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay"),
]

NAME = "counter"


def _tls(*args: str) -> None:
    subprocess.run([*pymigrate_command(), "tls", *args], check=True, capture_output=True, timeout=60)


def _start(host: Host, pki: Path, *, config: Path | None = None, env: dict[str, str] | None = None) -> str:
    if config is not None:
        return host.start_daemon(f"{host.address}:{DAEMON_PORT}", extra_args=["--config", str(config)], env=env)
    return host.start_daemon(f"{host.address}:{DAEMON_PORT}", extra_args=[
        "--tls-cert", str(pki / f"{host.address}.crt"), "--tls-key", str(pki / f"{host.address}.key"),
        "--tls-ca", str(pki / "ca.crt")])


def test_tls_init_issue_certificates_carry_an_mtls_migration(make_hosts, tmp_path: Path) -> None:  # noqa: ANN001
    a, b = make_hosts(2)
    pki = tmp_path / "pki"
    _tls("init", "--dir", str(pki), "--days", "2")
    for host in (a, b):
        _tls("issue", host.address, "--dns", f"host-{host.letter}.test", "--dir", str(pki))
    _tls("issue", "scheduler", "--client-only", "--dir", str(pki))
    _tls("issue", "10.250.250.250", "--dir", str(pki))  # right CA, an address nobody dials
    scheduler = TlsConfig(cert=pki / "scheduler.crt", key=pki / "scheduler.key", ca=pki / "ca.crt")

    config = pki / "daemon-a.toml"  # paths relative to the file
    config.write_text(f'tls-cert = "{a.address}.crt"\ntls-key = "{a.address}.key"\ntls-ca = "ca.crt"\n')
    notify_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(20)
        addr_a = _start(a, pki, config=config, env={"NOTIFY_SOCKET": str(notify_path)})
        assert notify.recv(4096).decode().startswith(f"READY=1\nSTATUS=serving pymigrate.v1 on {a.address}:{DAEMON_PORT}")
        addr_b = _start(b, pki)
        assert f"read {config}: tls-cert, tls-key, tls-ca" in (a.workdir / "daemon.log").read_text()

        a.cli(["image", "build-busybox", "busybox"], check=True)
        a.cli(["run", "-d", "--name", NAME, "busybox", "sh", "-c", COUNTER_CMD], check=True)
        before = wait_counting_past(a, NAME, 3)[-1]
        with RemoteEngine(addr_a, tls=scheduler, timeout_s=60) as source:
            result = source.migrate(NAME, MigrateOptions(dest=addr_b))  # a dials b with a's certificate
        assert result.stats.frozen_ms > 0 and result.stats.bytes_on_wire > 0
        assert names_by_status(b) == {NAME: "running"} and names_by_status(a) == {}
        wait_counting_past(b, NAME, before)
        assert leftovers(a) == [] and leftovers(b) == []

        assert a.stop_daemon() == 0
        assert notify.recv(4096).decode().startswith("STOPPING=1\nSTATUS=stopping")

    # the SANs are what is checked: a's daemon with a certificate naming another address
    wrong = pki / "daemon-wrong.toml"
    wrong.write_text('tls-cert = "10.250.250.250.crt"\ntls-key = "10.250.250.250.key"\ntls-ca = "ca.crt"\n')
    addr_a = _start(a, pki, config=wrong)
    with RemoteEngine(addr_a, tls=scheduler, timeout_s=5) as client, pytest.raises(AuthError, match="tls handshake"):
        client.host_info()
    print(f"mTLS A->B with tls init/issue certificates: downtime {result.stats.frozen_ms:.0f} ms, "
          f"total {result.stats.total_ms:.0f} ms")
