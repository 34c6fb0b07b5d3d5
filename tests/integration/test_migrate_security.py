"""Authentication and path safety of real daemons in network namespaces, over real TCP sockets.

- Two daemons listen on TCP with mutual TLS and a bearer token. A client without TLS, without a
  client certificate, with a certificate from another CA, trusting another CA, without the token
  or with a wrong token is refused (and the refusal says nothing about the host); the right
  credentials work.
- A migration between the two mTLS daemons works: the scheduler calls Migrate on the source
  daemon, which dials the target with its own ``--tls-cert/--tls-key/--tls-ca`` and token (the
  daemon's flags are also its peer credentials). A source without credentials for the target is
  refused in pre-flight and its container keeps running.
- Names and ids that try to leave the state root (``../../etc``, absolute paths) are refused with
  a clear error, through the CLI, through a daemon, and in the daemon-to-daemon API a migration
  source uses; nothing is created or removed (decoys outside the root prove it).

Certificates come from a throwaway CA (tests/fakes/certs.py's ``TestCA``); each host's certificate
names its address (the peer dials 10.251.x.y) and serves as both server and client certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from migrate.api import IncomingRequest, MigrateOptions
from migrate.remote.client import RemoteEngine
from migrate.errors import AuthError, MigrationError, TransferError
from migrate.remote.tls import TlsConfig
from runtime.errors import ContainerError, InvalidArgument
from tests.fakes.certs import Pem, TestCA, _write
from tests.integration.hosts import Host, make_hosts  # noqa: F401  (fixture)
from tests.integration.migrate_helpers import (
    COUNTER_CMD,
    DAEMON_PORT,
    leftovers,
    names_by_status,
    wait_counting_past,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay"),
]

TOKEN = "s3cret-token-for-tests"
NAME = "counter"


def issue(ca: TestCA, common_name: str, addresses: tuple[str, ...] = (), *, expired: bool = False) -> Pem:
    """A certificate for both ends of mTLS (serverAuth + clientAuth), naming ``addresses``;
    valid from 5 minutes ago for a day, or (``expired``) from 3 days ago until yesterday."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(days=3), now - datetime.timedelta(days=1)) if expired else (
        now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if addresses:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]), critical=False
        )
    return _write(ca.directory, f"{ca.name.replace(' ', '-')}-{common_name}", builder.sign(ca.key, hashes.SHA256()), key)


@dataclass
class Pki:
    ca: TestCA
    other_ca: TestCA
    hosts: dict[str, Pem]  # letter -> the daemon's cert
    client: Pem
    stranger: Pem  # a client certificate from the other CA
    token_file: Path
    wrong_token_file: Path

    def tls(self, pem: Pem | None = None, ca: TestCA | None = None) -> TlsConfig:
        pem = pem or self.client
        return TlsConfig(cert=pem.cert, key=pem.key, ca=(ca or self.ca).ca_path)


def _pki(directory: Path, hosts: list[Host]) -> Pki:
    ca = TestCA(directory / "ca", "pymigrate test ca")
    other = TestCA(directory / "other", "other ca")
    token_file = directory / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    wrong = directory / "wrong-token"
    wrong.write_text("not-the-token\n")
    return Pki(
        ca=ca,
        other_ca=other,
        hosts={h.letter: issue(ca, f"host-{h.letter}", (h.address,)) for h in hosts},
        client=issue(ca, "scheduler"),
        stranger=issue(other, "stranger"),
        token_file=token_file,
        wrong_token_file=wrong,
    )


def _start_mtls_daemon(host: Host, pki: Pki) -> str:
    pem = pki.hosts[host.letter]
    return host.start_daemon(
        f"{host.address}:{DAEMON_PORT}",
        extra_args=["--tls-cert", str(pem.cert), "--tls-key", str(pem.key), "--tls-ca", str(pki.ca.ca_path),
                    "--token-file", str(pki.token_file)],
    )


def _refused(call, expected: type[BaseException]) -> BaseException:  # noqa: ANN001
    with pytest.raises(expected) as info:
        call()
    return info.value


def test_credentials_are_checked(make_hosts, tmp_path: Path) -> None:  # noqa: ANN001
    hosts = make_hosts(1)
    a = hosts[0]
    pki = _pki(tmp_path, [a])
    addr = _start_mtls_daemon(a, pki)

    # the right credentials work
    with RemoteEngine(addr, tls=pki.tls(), token=TOKEN) as ok:
        assert ok.host_info().criu_version
        assert ok.containers() == []

    # no TLS at all: the handshake fails, the client sees an unreachable daemon
    with RemoteEngine(addr, insecure=True, token=TOKEN, timeout_s=5) as plain:
        _refused(plain.host_info, TransferError)
    # TLS without a client certificate
    channel = grpc.secure_channel(addr, grpc.ssl_channel_credentials(root_certificates=pki.ca.ca_path.read_bytes()))
    try:
        from migrate._proto.pymigrate.v1 import host_pb2 as pb
        from migrate._proto.pymigrate.v1 import host_pb2_grpc as pb_grpc

        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.HostStub(channel).GetHostInfo(pb.GetHostInfoRequest(), timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    finally:
        channel.close()
    # a client certificate signed by another CA
    with RemoteEngine(addr, tls=pki.tls(pki.stranger), token=TOKEN, timeout_s=5) as stranger:
        error = _refused(stranger.host_info, TransferError)
        assert "client certificate" in (error.hint or "")  # type: ignore[attr-defined]
    # trusting another CA: the client refuses the daemon's certificate (AuthError, not "unreachable")
    with RemoteEngine(addr, tls=pki.tls(ca=pki.other_ca), token=TOKEN, timeout_s=5) as wrong_ca:
        error = _refused(wrong_ca.host_info, AuthError)
        assert "tls handshake" in str(error)
    # mTLS right, token missing or wrong: UNAUTHENTICATED, and nothing about the host in the message
    for token in (None, "not-the-token"):
        with RemoteEngine(addr, tls=pki.tls(), token=token) as no_token:
            error = _refused(no_token.containers, AuthError)
            assert "refused our credentials" in str(error), error
            rpc = error.__cause__  # what the daemon itself said
            assert rpc.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[union-attr]
            assert rpc.details() == "missing or invalid credentials"  # type: ignore[union-attr]

    # the CLI says the same in one line (exit 125)
    base = ["--host", addr, "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key), "--tls-ca", str(pki.ca.ca_path)]
    r = a.cli([*base, "--token-file", str(pki.wrong_token_file), "ps"])
    assert r.returncode == 125 and b"credentials" in r.stderr, r.stderr
    r = a.cli(["--host", addr, "--insecure", "--token-file", str(pki.token_file), "ps"])
    assert r.returncode == 125 and b"unreachable" in r.stderr, r.stderr
    r = a.cli([*base, "--token-file", str(pki.token_file), "ps", "--json"])
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr

    log = (a.workdir / "daemon.log").read_text()
    assert "missing or wrong bearer token" in log


def test_migration_between_mtls_daemons(make_hosts, tmp_path: Path) -> None:  # noqa: ANN001
    hosts = make_hosts(2)
    a, b = hosts[0], hosts[1]
    pki = _pki(tmp_path, [a, b])
    addr = {h.letter: _start_mtls_daemon(h, pki) for h in (a, b)}
    a.cli(["image", "build-busybox", "busybox"], check=True)
    a.cli(["run", "-d", "--name", NAME, "busybox", "sh", "-c", COUNTER_CMD], check=True)
    before = wait_counting_past(a, NAME, 3)[-1]

    # A source engine without credentials for B's daemon: refused in pre-flight, A keeps it.
    r = a.cli(["migrate", NAME, addr["b"], "--insecure", "--json"])
    assert r.returncode == 125
    error = json.loads(r.stdout)
    assert addr["b"] in error["error"], error
    assert names_by_status(a) == {NAME: "running"} and names_by_status(b) == {}
    # ... and with certificates from another CA
    r = a.cli(["migrate", NAME, addr["b"], "--tls-cert", str(pki.stranger.cert), "--tls-key", str(pki.stranger.key),
               "--tls-ca", str(pki.ca.ca_path), "--token-file", str(pki.token_file), "--json"])
    assert r.returncode == 125, r.stdout
    assert names_by_status(a) == {NAME: "running"} and names_by_status(b) == {}

    # The scheduler asks A's daemon (mTLS + token); A dials B with its own certificate and token.
    with RemoteEngine(addr["a"], tls=pki.tls(), token=TOKEN) as source:
        result = source.migrate(NAME, MigrateOptions(dest=addr["b"]))
    assert result.stats.frozen_ms > 0 and result.stats.bytes_on_wire > 0
    assert names_by_status(b) == {NAME: "running"} and names_by_status(a) == {}
    wait_counting_past(b, NAME, before)
    assert leftovers(a) == [] and leftovers(b) == []
    print(f"mTLS A->B: downtime {result.stats.frozen_ms:.0f} ms, total {result.stats.total_ms:.0f} ms, "
          f"{result.stats.bytes_on_wire} bytes on the wire")


# -- paths ------------------------------------------------------------------------------------------


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.name not in ("daemon.log",)}


def test_names_and_ids_that_escape_the_root_are_refused(make_hosts, tmp_path: Path) -> None:  # noqa: ANN001
    hosts = make_hosts(1)
    a = hosts[0]
    sock = a.start_daemon()
    a.cli(["image", "build-busybox", "busybox"], check=True)
    a.cli(["run", "-d", "--name", "ok", "busybox", "sleep", "1000"], check=True)
    spec = json.loads(a.cli(["inspect", "ok"], check=True).stdout)[0]["spec"]

    # Decoys where an escaping path would land: next to the state root (ROOT/<dir>/../../decoy)
    # and at an absolute path. They must survive, and nothing may appear next to them.
    decoy_rel = a.root.parent / "decoy"
    decoy_abs = tmp_path / "decoy"
    for d in (decoy_rel, decoy_abs):
        d.mkdir()
        (d / "keep").write_text("keep")
    escapes = ["../../decoy", str(decoy_abs), "../decoy", "..", "a/../../decoy"]
    base_dir = a.workdir.parent
    before = _tree(base_dir) | {f"abs/{p}" for p in _tree(tmp_path)}

    for via in ([], ["--host", sock]):
        for bad in escapes:
            for args, expect in (
                (["run", "-d", "--name", bad, "busybox", "true"], b"invalid container name"),
                # inspect takes ID|FILE|REF and restore ID|REF: a path is a (missing) file of the
                # caller's or an (invalid) image reference there, never a path below the root
                (["checkpoint", "inspect", bad], (b"invalid checkpoint id", b"cannot inspect", b"invalid image reference",
                                                 b"with --host is not supported")),
                (["checkpoint", "rm", bad], b"invalid checkpoint id"),
                (["restore", bad], (b"invalid checkpoint id", b"invalid image reference")),
                (["restore", "0123abcd", "--name", bad], None),
                (["image", "build-busybox", bad], b"invalid image name"),
                (["image", "rm", bad], b"invalid image name"),
                (["rm", "-f", bad], b"invalid container name"),
                (["logs", bad], b"no such container"),
                (["checkpoint", bad], b"no such container"),
                (["migrate", bad, "unix:/nonexistent.sock"], None),
            ):
                r = a.cli([*via, *args])
                assert r.returncode == 125, f"{via} {args}: exit {r.returncode}"
                message = r.stderr.strip().splitlines()[0] if r.stderr.strip() else b""
                assert message.startswith(b"pymigrate: ") or b"usage:" in r.stderr, f"{via} {args}: {r.stderr!r}"
                if expect is not None:
                    wanted = expect if isinstance(expect, tuple) else (expect,)
                    assert any(w in r.stderr for w in wanted), f"{via} {args}: {r.stderr!r}"
                assert b"Traceback" not in r.stderr

    # The daemon-to-daemon API: what a (compromised or buggy) migration source could send.
    with RemoteEngine(sock) as target:
        for field, bad in (("name", "../../decoy"), ("name", str(decoy_abs)), ("container_id", "../../decoy"),
                           ("container_id", str(decoy_abs)), ("image", "../../decoy")):
            evil = dict(spec, **{field: bad}, ip="10.77.0.99")
            request = IncomingRequest(container_name=evil["name"], spec=evil, image_digest=spec["image_digest"],
                                      criu_version="4.1.1", cpu_digest="", ip=evil["ip"])
            error = _refused(lambda: target.prepare_incoming(request), InvalidArgument)
            assert "invalid" in str(error), error
        for bad in ("../../decoy", str(decoy_abs), "abc/../def"):
            for call in (target.abort_incoming, target.commit_incoming):
                error = _refused(lambda: call(bad), (InvalidArgument, MigrationError, ContainerError))  # type: ignore[arg-type]
                assert "invalid migration id" in str(error), error

    after = _tree(base_dir) | {f"abs/{p}" for p in _tree(tmp_path)}
    created = {p for p in after - before if not p.endswith("run/incoming") and not p.endswith("run/incoming/.lock")}
    assert created == set(), f"created: {sorted(created)}"
    assert before - after == set(), f"removed: {sorted(before - after)}"
    for d in (decoy_rel, decoy_abs):
        assert (d / "keep").read_text() == "keep"
    assert names_by_status(a) == {"ok": "running"}
    assert leftovers(a) == []
