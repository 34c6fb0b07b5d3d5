"""How a source reaches an ``ssh://`` migration target: PeerConfig -> RemoteEngine -> tunnel.

The tunnel itself is faked (``migrate.remote.ssh.open_ssh_target``); what is checked is what the client
does with it: dial the tunnel's local end without TLS whatever TLS the peer config carries (SSH
authenticated the hop, and the daemon behind it serves a plain unix socket), hand the ``--ssh-*``
options to the tunnel, and close the tunnel with the engine.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

import migrate.remote.ssh
from migrate.engine import PeerConfig
from migrate.remote.tls import TlsConfig


class FakeTransport:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


class FakeTarget:
    def __init__(self, address: str) -> None:
        self.address = address
        self.closed = False
        self.transport = FakeTransport()
        self.config = SimpleNamespace(destination="root@host-b:22")

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, dict[str, Any], FakeTarget]]:
    calls: list[tuple[str, dict[str, Any], FakeTarget]] = []

    def fake_open(url: str, **options: Any) -> FakeTarget:
        target = FakeTarget(f"unix:{tmp_path / 'tunnel.sock'}")
        calls.append((url, options, target))
        return target

    monkeypatch.setattr(migrate.remote.ssh, "open_ssh_target", fake_open)
    return calls


def test_ssh_dest_is_dialled_without_tls_even_when_the_peer_has_tls(opened: list, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file.pem"  # TLS material is never read for an ssh:// target
    peer = PeerConfig(tls=TlsConfig(cert=missing, key=missing, ca=missing), ssh={"key_file": "/k", "remote_root": "/r"})
    engine = peer.connect("ssh://root@host-b")
    try:
        url, options, target = opened[0]
        assert url == "ssh://root@host-b"
        assert options == {"key_file": "/k", "remote_root": "/r"}
        assert engine.target == "ssh://root@host-b"
        assert engine._tls is False
    finally:
        engine.close()
    assert target.closed


def test_tcp_dest_keeps_tls_and_opens_no_tunnel(opened: list, tmp_path: Path) -> None:
    from runtime.errors import InvalidArgument

    missing = tmp_path / "no-such-file.pem"
    peer = PeerConfig(tls=TlsConfig(cert=missing, key=missing, ca=missing), ssh={"key_file": "/k"})
    with pytest.raises(InvalidArgument, match="cannot read tls certificate"):
        peer.connect("10.0.0.2:7443")
    assert opened == []


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "Stream removed"

    def trailing_metadata(self) -> tuple:
        return ()


def test_a_dropped_tunnel_says_so_instead_of_check_the_daemon(opened: list) -> None:
    from migrate.errors import TransferError

    engine = PeerConfig().connect("ssh://root@host-b")
    try:
        target = opened[0][2]
        error = engine._error(Unavailable(), "ReceiveCheckpoint")
        assert isinstance(error, TransferError)
        assert "the pymigrate daemon behind the ssh tunnel to root@host-b:22 went away" in (error.hint or "")
        target.transport.active = False
        error = engine._error(Unavailable(), "ReceiveCheckpoint")
        assert str(error).startswith("the daemon at ssh://root@host-b is unreachable")
        assert (error.hint or "").startswith("the ssh connection to root@host-b:22 ended")
    finally:
        engine.close()


def test_peer_config_reads_ssh_flags_only_when_given() -> None:
    """Defaults leave ssh None and do not import migrate.remote.ssh (paramiko) on a TCP migrate."""
    import subprocess
    import sys

    code = (
        "import argparse, sys\n"
        "from migrate.engine import PeerConfig\n"
        "args = argparse.Namespace(ssh_key=None, ssh_accept_new=False, ssh_known_hosts=None, ssh_remote_pymigrate='pymigrate', ssh_remote_root=None)\n"
        "peer = PeerConfig.from_args(args)\n"
        "assert peer.ssh is None, peer.ssh\n"
        "assert 'migrate.remote.ssh' not in sys.modules and 'paramiko' not in sys.modules\n"
        "args.ssh_remote_root = '/srv/pm'\n"
        "peer = PeerConfig.from_args(args)\n"
        "assert peer.ssh['remote_root'] == '/srv/pm' and peer.ssh['remote_pymigrate'] == 'pymigrate', peer.ssh\n"
        "args.ssh_remote_root = None; args.ssh_remote_pymigrate = '/opt/pm/bin/pymigrate'\n"
        "assert PeerConfig.from_args(args).ssh['remote_pymigrate'] == '/opt/pm/bin/pymigrate'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
