"""RemoteEngine: addresses, CLI flags, unreachable daemons, and authentication (mTLS + token).

TLS material is generated per test module with ``cryptography``: one CA that the daemon trusts,
a daemon certificate for localhost/127.0.0.1, a good client certificate, and a second CA with a
client certificate the daemon must refuse.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate._proto.pymigrate.v1 import host_pb2_grpc as pb_grpc
from migrate.remote.client import RemoteEngine, channel_target, read_token
from migrate.errors import AuthError, TransferError
from migrate.remote.server import DaemonServer, create_server, parse_listen
from migrate.remote.tls import TlsConfig, tls_from_paths
from runtime.errors import InvalidArgument, Unsupported
from tests.fakes.certs import TestCA
from tests.fakes.engine import FakeEngine

TOKEN = "s3cret-token-value"


# --- addresses and flags ---------------------------------------------------------------------------


def test_channel_targets() -> None:
    assert channel_target("unix:/run/x.sock") == ("unix:/run/x.sock", True)
    assert channel_target("unix:///run/x.sock") == ("unix:/run/x.sock", True)
    assert channel_target("10.0.0.1:7070") == ("10.0.0.1:7070", False)
    assert channel_target("[::1]:7070") == ("[::1]:7070", False)
    for bad in ("localhost", "http://x:1", "unix:", "host:port"):
        with pytest.raises(InvalidArgument, match="invalid daemon address"):
            channel_target(bad)


def test_ssh_addresses_go_through_migrate_ssh(tmp_path: Path) -> None:
    # gRPC never dials ssh:// itself; RemoteEngine opens the tunnel (migrate/remote/ssh.py) first.
    with pytest.raises(Unsupported, match="ssh daemon addresses"):
        channel_target("ssh://root@h")
    with pytest.raises(TransferError, match="cannot reach ssh host root@127.0.0.1:1: connection refused"):
        RemoteEngine("ssh://root@127.0.0.1:1", ssh={"config_file": tmp_path / "none", "known_hosts": tmp_path / "kh"})


def test_tcp_without_tls_needs_insecure() -> None:
    with pytest.raises(InvalidArgument, match="refusing to talk to 127.0.0.1:1 without tls"):
        RemoteEngine("127.0.0.1:1")
    RemoteEngine("127.0.0.1:1", insecure=True).close()


def test_listen_addresses() -> None:
    assert parse_listen("unix:/run/p.sock").path == Path("/run/p.sock")
    assert parse_listen("0.0.0.0:7070").grpc_address == "0.0.0.0:7070"
    assert parse_listen("[::]:0").grpc_address == "[::]:0"
    for bad in ("7070", "::1:7070", "h:99999", "tcp://h:1", "unix:"):
        with pytest.raises(InvalidArgument):
            parse_listen(bad)
    with pytest.raises(InvalidArgument, match="longer than 107 bytes"):
        parse_listen("unix:/" + "x" * 200)


def test_unreachable_daemon_is_a_transfer_error(tmp_path: Path) -> None:
    client = RemoteEngine(f"unix:{tmp_path}/none.sock")
    with pytest.raises(TransferError, match=f"the daemon at unix:{tmp_path}/none.sock is unreachable") as exc_info:
        client.containers()
    assert "pymigrate daemon" in (exc_info.value.hint or "")
    # the cause, not gRPC's resolver text ("failed to connect to all addresses; last error: ...")
    assert str(exc_info.value).endswith("is unreachable: no such file or directory"), exc_info.value


def test_from_args_and_token_files(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    assert read_token(token) == TOKEN
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InvalidArgument, match="is empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(InvalidArgument, match="cannot read token file"):
        read_token(tmp_path / "missing")
    args = argparse.Namespace(host=f"unix:{tmp_path}/d.sock", tls_cert=None, tls_key=None, tls_ca=None, token_file=token, insecure=False)
    client = RemoteEngine.from_args(args)
    assert client.target == args.host and client._metadata == (("authorization", f"Bearer {TOKEN}"),)
    with pytest.raises(InvalidArgument, match="--tls-cert, --tls-key and --tls-ca together"):
        tls_from_paths(tmp_path, None, None, who="client")


def test_cli_global_flags_reach_remote_engine(tmp_path: Path) -> None:
    from migrate.cli import build_parser

    parser = build_parser()
    # any subcommand will do; the globals come first
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = next(iter(sub.choices))
    args, _ = parser.parse_known_args(["--host", "10.0.0.1:7070", "--insecure", command])
    client = RemoteEngine.from_args(args)
    assert client.target == "10.0.0.1:7070"
    client.close()


# --- mTLS and token ----------------------------------------------------------------------------------


class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = TestCA(directory / "good", "pymigrate test ca")
        self.server = self.ca.issue("daemon", server=True)
        self.client = self.ca.issue("scheduler", server=False)
        self.other_ca = TestCA(directory / "bad", "rogue ca")
        self.rogue_client = self.other_ca.issue("intruder", server=False)
        self.daemon_tls = TlsConfig(cert=self.server.cert, key=self.server.key, ca=self.ca.ca_path)
        self.client_tls = TlsConfig(cert=self.client.cert, key=self.client.key, ca=self.ca.ca_path)


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    d = Path(tempfile.mkdtemp(prefix="pm-pki-"))
    yield Pki(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tls_daemon(pki: Pki) -> Iterator[DaemonServer]:
    server, port = create_server(FakeEngine(hostname="very-secret-hostname"), "127.0.0.1:0", tls=pki.daemon_tls, token=TOKEN)
    server.start()
    yield server
    server.stop(0)


def _raw_channel(target: str, pki: Pki, *, cert: Path | None, key: Path | None, ca: Path) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(target, creds)


def test_mtls_with_token_works(tls_daemon: DaemonServer, pki: Pki) -> None:
    client = RemoteEngine(tls_daemon.target, tls=pki.client_tls, token=TOKEN)
    assert client.host_info().hostname == "very-secret-hostname"
    assert client.containers() == []
    client.close()


@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x", ""])
def test_missing_or_wrong_token_is_unauthenticated(tls_daemon: DaemonServer, pki: Pki, token: str | None) -> None:
    channel = _raw_channel(tls_daemon.target, pki, cert=pki.client.cert, key=pki.client.key, ca=pki.ca.ca_path)
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    with pytest.raises(grpc.RpcError) as raw:
        pb_grpc.HostStub(channel).GetHostInfo(pb.GetHostInfoRequest(), metadata=metadata, timeout=5)
    assert raw.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert raw.value.details() == "missing or invalid credentials"
    assert "very-secret-hostname" not in str(raw.value) and not raw.value.trailing_metadata()
    # streaming methods are guarded too
    with pytest.raises(grpc.RpcError) as raw:
        list(pb_grpc.HostStub(channel).Checkpoint(pb.CheckpointRequest(name="x"), metadata=metadata, timeout=5))
    assert raw.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel.close()
    client = RemoteEngine(tls_daemon.target, tls=pki.client_tls, token=token or None)
    with pytest.raises(AuthError, match="refused our credentials"):
        client.containers()
    client.close()


def test_health_needs_no_token(tls_daemon: DaemonServer, pki: Pki) -> None:
    channel = _raw_channel(tls_daemon.target, pki, cert=pki.client.cert, key=pki.client.key, ca=pki.ca.ca_path)
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="pymigrate.v1.Host"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def _refused(channel: grpc.Channel) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raw:
        pb_grpc.HostStub(channel).GetHostInfo(pb.GetHostInfoRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5)
    channel.close()
    return raw.value


def test_no_client_certificate_is_refused(tls_daemon: DaemonServer, pki: Pki) -> None:
    err = _refused(_raw_channel(tls_daemon.target, pki, cert=None, key=None, ca=pki.ca.ca_path))
    # The TLS handshake fails before any RPC exists, so gRPC reports UNAVAILABLE; RemoteEngine
    # turns a handshake failure into AuthError.
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "very-secret-hostname" not in str(err)


def test_client_certificate_from_another_ca_is_refused(tls_daemon: DaemonServer, pki: Pki) -> None:
    err = _refused(_raw_channel(tls_daemon.target, pki, cert=pki.rogue_client.cert, key=pki.rogue_client.key, ca=pki.ca.ca_path))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    rogue = TlsConfig(cert=pki.rogue_client.cert, key=pki.rogue_client.key, ca=pki.ca.ca_path)
    # The daemon refuses after the client finished its side of the TLS 1.3 handshake: the client
    # only sees a closed socket, so it says "unreachable" and hints at the certificate.
    with pytest.raises((TransferError, AuthError)) as exc_info:
        RemoteEngine(tls_daemon.target, tls=rogue, token=TOKEN).host_info()
    assert "client certificate" in (exc_info.value.hint or "")


def test_daemon_certificate_from_another_ca_is_refused_by_the_client(tls_daemon: DaemonServer, pki: Pki) -> None:
    wrong_trust = TlsConfig(cert=pki.client.cert, key=pki.client.key, ca=pki.other_ca.ca_path)
    with pytest.raises(AuthError, match="refused the tls handshake"):
        RemoteEngine(tls_daemon.target, tls=wrong_trust, token=TOKEN).host_info()


def test_plaintext_client_cannot_talk_to_a_tls_daemon(tls_daemon: DaemonServer) -> None:
    with pytest.raises((TransferError, AuthError)):
        RemoteEngine(tls_daemon.target, insecure=True, token=TOKEN).host_info()


def test_token_on_unix_socket(tmp_path: Path) -> None:
    d = Path(tempfile.mkdtemp(prefix="pm-tok-", dir="/tmp"))
    try:
        server, path = create_server(FakeEngine(), f"unix:{d}/s.sock", token=TOKEN)
        server.start()
        assert RemoteEngine(f"unix:{path}", token=TOKEN).containers() == []
        with pytest.raises(AuthError):
            RemoteEngine(f"unix:{path}").containers()
        server.stop(0)
    finally:
        shutil.rmtree(d, ignore_errors=True)
