"""migrate/remote/ssh.py without a network: URLs, ~/.ssh/config, known_hosts, keys, messages, and the
streamlocal channel and key authentication against an in-process paramiko server (socketpair)."""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import paramiko
import pytest

from migrate.remote import ssh
from migrate.remote.ssh_errors import HostKeyMismatch, HostKeyUnknown, RemotePymigrateMissing, SshAuthFailed, SshUnreachable
from migrate.errors import AuthError, PeerError, TransferError
from runtime.errors import InvalidArgument

# --- URLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ssh://host-b", ssh.SshUrl("host-b")),
        ("ssh://root@host-b", ssh.SshUrl("host-b", user="root")),
        ("ssh://root@10.0.0.2:2222", ssh.SshUrl("10.0.0.2", user="root", port=2222)),
        ("ssh://host-b/", ssh.SshUrl("host-b")),
        ("ssh://[::1]:22", ssh.SshUrl("::1", port=22)),
        ("ssh://admin@[fe80::1]", ssh.SshUrl("fe80::1", user="admin")),
        ("ssh://first.last@example.org:22", ssh.SshUrl("example.org", user="first.last", port=22)),
    ],
)
def test_parse_ssh_url(url: str, expected: ssh.SshUrl) -> None:
    assert ssh.parse_ssh_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("host-b", "expected ssh://[user@]host[:port]"),
        ("http://host-b", "expected ssh://[user@]host[:port]"),
        ("ssh://", "empty or invalid host"),
        ("ssh://@host", "empty or invalid user name"),
        ("ssh://root@", "empty or invalid host"),
        ("ssh://host:0", "port must be a number in 1..65535"),
        ("ssh://host:65536", "port must be a number in 1..65535"),
        ("ssh://host:ssh", "port must be a number in 1..65535"),
        ("ssh://host:", "port must be a number in 1..65535"),
        ("ssh://host/var/lib", "no path, query or spaces"),
        ("ssh://host?x=1", "no path, query or spaces"),
        ("ssh://ho st", "no path, query or spaces"),
        ("ssh://::1", "put an IPv6 address in brackets"),
        ("ssh://[::1", "unbalanced brackets"),
        ("ssh://-oProxyCommand=x", "empty or invalid host"),
    ],
)
def test_parse_ssh_url_refuses(url: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]").replace("?", r"\?")):
        ssh.parse_ssh_url(url)


def test_url_round_trips() -> None:
    for url in ("ssh://root@host-b:2222", "ssh://[::1]:22", "ssh://host-b"):
        assert str(ssh.parse_ssh_url(url)) == url


# --- ~/.ssh/config ---------------------------------------------------------------------------------


def test_resolve_host_applies_ssh_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tmp_path / "config"
    config.write_text(
        "Host hostb\n    HostName 10.1.2.3\n    User deploy\n    Port 2200\n    IdentityFile ~/keys/b_key\n"
        "    UserKnownHostsFile ~/kh\n\nHost *\n    User fallback\n"
    )
    cfg = ssh.resolve_host(ssh.parse_ssh_url("ssh://hostb"), config_file=config)
    assert (cfg.hostname, cfg.port, cfg.user) == ("10.1.2.3", 2200, "deploy")
    assert cfg.identity_files == (tmp_path / "keys" / "b_key",)
    assert cfg.known_hosts == tmp_path / "kh"
    assert cfg.destination == "deploy@10.1.2.3:2200"
    # the URL's user and port win; an explicit known_hosts wins
    cfg = ssh.resolve_host(ssh.parse_ssh_url("ssh://root@hostb:22"), config_file=config, known_hosts=tmp_path / "other")
    assert (cfg.user, cfg.port, cfg.known_hosts) == ("root", 22, tmp_path / "other")
    # other hosts: defaults, OpenSSH's default identities
    cfg = ssh.resolve_host(ssh.parse_ssh_url("ssh://elsewhere"), config_file=config)
    assert (cfg.hostname, cfg.port, cfg.user) == ("elsewhere", 22, "fallback")
    assert cfg.identity_files == tuple(tmp_path / ".ssh" / n for n in ("id_ed25519", "id_ecdsa", "id_rsa"))
    assert cfg.known_hosts == tmp_path / ".ssh" / "known_hosts"


def test_resolve_host_without_config(tmp_path: Path) -> None:
    cfg = ssh.resolve_host(ssh.parse_ssh_url("ssh://h"), config_file=tmp_path / "missing")
    assert (cfg.hostname, cfg.port) == ("h", 22) and cfg.user


def test_bad_port_in_config(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host h\n    Port many\n")
    with pytest.raises(InvalidArgument, match="invalid Port for host h"):
        ssh.resolve_host(ssh.parse_ssh_url("ssh://h"), config_file=config)


# --- host keys -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> list[paramiko.PKey]:
    return [paramiko.ECDSAKey.generate() for _ in range(2)]


def test_known_hosts_names() -> None:
    assert ssh.known_hosts_name("10.0.0.2", 22) == "10.0.0.2"
    assert ssh.known_hosts_name("10.0.0.2", 2222) == "[10.0.0.2]:2222"


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_fingerprint_matches_ssh_keygen(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    pub = tmp_path / "k.pub"
    pub.write_text(f"{keys[0].get_name()} {keys[0].get_base64()} test\n")
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True, check=True).stdout
    assert ssh.fingerprint(keys[0]) == out.split()[1]


def test_unknown_host_key_is_refused(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    kh = tmp_path / "known_hosts"
    with pytest.raises(HostKeyUnknown) as info:
        ssh.verify_host_key(kh, "10.0.0.2", keys[0])
    assert isinstance(info.value, AuthError)
    assert str(info.value) == (
        f"host key of 10.0.0.2 is not known: {keys[0].get_name()} {ssh.fingerprint(keys[0])} is not in {kh} (phase: connect)"
    )
    assert "--ssh-accept-new" in info.value.hint
    assert not kh.exists()


def test_accept_new_records_then_knows(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    kh = tmp_path / "sub" / "known_hosts"
    assert ssh.verify_host_key(kh, "[10.0.0.2]:2222", keys[0], accept_new=True) is True
    assert kh.read_text() == f"[10.0.0.2]:2222 {keys[0].get_name()} {keys[0].get_base64()}\n"
    assert kh.stat().st_mode & 0o777 == 0o600 and kh.parent.stat().st_mode & 0o777 == 0o700
    assert ssh.verify_host_key(kh, "[10.0.0.2]:2222", keys[0]) is False
    assert ssh.verify_host_key(kh, "[10.0.0.2]:2222", keys[0], accept_new=True) is False
    assert kh.read_text().count("\n") == 1
    # the same address on another port is another host
    with pytest.raises(HostKeyUnknown):
        ssh.verify_host_key(kh, "10.0.0.2", keys[0])


def test_changed_key_is_refused_even_with_accept_new(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    kh = tmp_path / "known_hosts"
    ssh.verify_host_key(kh, "hostb", keys[0], accept_new=True)
    before = kh.read_text()
    with pytest.raises(HostKeyMismatch) as info:
        ssh.verify_host_key(kh, "hostb", keys[1], accept_new=True)
    old, new = ssh.fingerprint(keys[0]), ssh.fingerprint(keys[1])
    assert info.value.expected == f"ecdsa-sha2-nistp256 {old}"
    assert info.value.actual == f"ecdsa-sha2-nistp256 {new}"
    assert str(info.value).startswith(f"host key of hostb has changed: {kh} records ecdsa-sha2-nistp256 {old}, the host presented")
    assert "ssh-keygen -R" in info.value.hint
    assert kh.read_text() == before


def test_another_key_type_on_record_counts_as_changed(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    kh = tmp_path / "known_hosts"
    rsa = paramiko.RSAKey.generate(1024)
    kh.write_text(f"hostb ssh-rsa {rsa.get_base64()}\n")
    with pytest.raises(HostKeyMismatch, match=re.escape(f"records ssh-rsa {ssh.fingerprint(rsa)}")):
        ssh.verify_host_key(kh, "hostb", keys[0], accept_new=True)


def test_hashed_known_hosts_entries(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(f"# a comment\n{paramiko.HostKeys.hash_host('hostb')} {keys[0].get_name()} {keys[0].get_base64()}\n")
    assert ssh.verify_host_key(kh, "hostb", keys[0]) is False
    with pytest.raises(HostKeyMismatch):
        ssh.verify_host_key(kh, "hostb", keys[1])


def test_known_key_types_are_offered_first(keys: list[paramiko.PKey]) -> None:
    default = list(paramiko.Transport._preferred_keys)
    assert ssh._host_key_algorithms({}) == default
    assert ssh._host_key_algorithms({"ecdsa-sha2-nistp256": keys[0]})[0] == "ecdsa-sha2-nistp256"
    rsa_first = ssh._host_key_algorithms({"ssh-rsa": keys[0]})
    assert rsa_first[:2] == ["rsa-sha2-512", "rsa-sha2-256"] and sorted(rsa_first) == sorted(default)


# --- user keys -------------------------------------------------------------------------------------


def test_explicit_key_file_is_the_only_key(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    path = tmp_path / "id_ecdsa"
    keys[0].write_private_key_file(str(path))
    offered, skipped = ssh._user_keys(path, (tmp_path / "other",))
    assert [label for label, _ in offered] == [f"{path} (ecdsa-sha2-nistp256 {ssh.fingerprint(keys[0])})"]
    assert skipped == []


def test_explicit_key_file_errors(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    with pytest.raises(InvalidArgument, match=f"cannot read ssh key {tmp_path / 'missing'}"):
        ssh._user_keys(tmp_path / "missing", ())
    encrypted = tmp_path / "enc"
    keys[0].write_private_key_file(str(encrypted), password="secret")
    with pytest.raises(InvalidArgument, match="it is encrypted") as info:
        ssh._user_keys(encrypted, ())
    assert "ssh-agent" in info.value.hint


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_openssh_format_encrypted_key(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pass phrase", "-f", str(path)], check=True)
    with pytest.raises(InvalidArgument, match="it is encrypted"):
        ssh._user_keys(path, ())
    assert ssh._user_keys(None, (path,))[1] == [f"{path} (encrypted, load it into ssh-agent)"]


def test_default_keys_skip_missing_and_encrypted(tmp_path: Path, keys: list[paramiko.PKey], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    good, enc = tmp_path / "id_ecdsa", tmp_path / "id_rsa"
    keys[0].write_private_key_file(str(good))
    keys[1].write_private_key_file(str(enc), password="secret")
    offered, skipped = ssh._user_keys(None, (tmp_path / "id_ed25519", good, enc))
    assert [k for _, k in offered] == [keys[0]] or [k.asbytes() for _, k in offered] == [keys[0].asbytes()]
    assert skipped == [f"{enc} (encrypted, load it into ssh-agent)"]


# --- messages ------------------------------------------------------------------------------------------


def test_error_classes_and_messages() -> None:
    e = SshAuthFailed("root@h:22", ["/k1 (ssh-ed25519 SHA256:x)", "agent key ssh-rsa SHA256:y"])
    assert isinstance(e, AuthError)
    assert str(e) == "ssh authentication to root@h:22 failed; tried /k1 (ssh-ed25519 SHA256:x), agent key ssh-rsa SHA256:y (phase: connect)"
    assert "--ssh-key" in e.hint
    assert "tried no keys (none given, none in the agent or ~/.ssh)" in str(SshAuthFailed("root@h:22", []))
    e = RemotePymigrateMissing("root@h:22", "pymigrate", "h")
    assert isinstance(e, PeerError)
    assert "git clone" in e.hint and "scripts/setup.sh" in e.hint and "--ssh-remote-pymigrate" in e.hint
    e = SshUnreachable("root@h:22", "connection refused")
    assert isinstance(e, TransferError) and str(e) == "cannot reach ssh host root@h:22: connection refused (phase: connect)"


def test_unreachable_port_on_loopback(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with pytest.raises(SshUnreachable, match=f"cannot reach ssh host root@127.0.0.1:{port}: connection refused"):
        ssh.open_ssh_target(f"ssh://root@127.0.0.1:{port}", config_file=tmp_path / "none", known_hosts=tmp_path / "kh")


def test_not_an_ssh_server_is_unreachable(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(SshUnreachable, match="ssh handshake failed"):
            ssh.open_ssh_target(f"ssh://root@127.0.0.1:{port}", config_file=tmp_path / "none", known_hosts=tmp_path / "kh", connect_timeout_s=5)
    finally:
        listener.close()


def test_options_from_cli_flags(tmp_path: Path) -> None:
    from migrate.cli import build_parser

    args = build_parser().parse_args(
        ["--host", "ssh://h", "--ssh-key", "/k", "--ssh-accept-new", "--ssh-known-hosts", "/kh", "--ssh-remote-pymigrate", "/opt/pm", "--ssh-remote-root", "/srv/pm", "ps"]
    )
    assert ssh.ssh_options_from_args(args) == {
        "key_file": Path("/k"),
        "accept_new": True,
        "known_hosts": Path("/kh"),
        "remote_pymigrate": "/opt/pm",
        "remote_root": "/srv/pm",
    }
    assert ssh.ssh_options_from_args(argparse.Namespace()) == {
        "key_file": None,
        "accept_new": False,
        "known_hosts": None,
        "remote_pymigrate": "pymigrate",
        "remote_root": None,
    }


def test_remote_paths_match_the_daemon() -> None:
    from migrate.remote.server import SOCKET_NAME
    from runtime.config import DEFAULT_ROOT, ENV_ROOT, Paths

    assert ssh.SOCKET_NAME == SOCKET_NAME
    assert Paths(Path("/r")).run == Path("/r") / ssh.RUN_DIR
    assert ssh.DEFAULT_REMOTE_ROOT == f"${{{ENV_ROOT}:-{DEFAULT_ROOT}}}"


def test_public_names() -> None:
    assert sorted(ssh.__all__) == sorted(
        [
            "DEFAULT_PORT", "HostKeyError", "HostKeyMismatch", "HostKeyUnknown", "RemoteDaemonFailed",
            "RemotePymigrateMissing", "SshAuthFailed", "SshHostConfig", "SshTarget", "SshUnreachable", "SshUrl",
            "fingerprint", "known_hosts_name", "open_ssh_target", "open_streamlocal", "parse_ssh_url",
            "resolve_host", "ssh_options_from_args", "verify_host_key",
        ]
    )  # fmt: skip
    for name in ssh.__all__:
        assert hasattr(ssh, name)


# --- against an in-process paramiko server ---------------------------------------------------------------


class _Server(paramiko.ServerInterface):
    def __init__(self, allowed: paramiko.PKey) -> None:
        self.allowed = allowed
        self.kinds: list[str] = []
        self.offered: list[str] = []

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self.offered.append(ssh.fingerprint(key))
        ok = username == "root" and key.asbytes() == self.allowed.asbytes()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        self.kinds.append(kind)
        if kind == ssh.STREAMLOCAL:
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


@pytest.fixture
def server_pair(keys: list[paramiko.PKey]) -> Iterator[tuple[paramiko.Transport, paramiko.Transport, _Server]]:
    client_sock, server_sock = socket.socketpair()
    server = _Server(allowed=keys[0])
    st = paramiko.Transport(server_sock)
    st.add_server_key(keys[1])
    # start_server blocks until the key exchange is done, so it needs the client running
    serving = threading.Thread(target=st.start_server, kwargs={"server": server}, daemon=True)
    serving.start()
    ct = paramiko.Transport(client_sock)
    ct.set_log_channel(ssh.PARAMIKO_LOG)
    ct.start_client(timeout=10)
    serving.join(10)
    try:
        yield ct, st, server
    finally:
        ssh.close_transport(ct)
        ssh.close_transport(st)


def _config() -> ssh.SshHostConfig:
    return ssh.SshHostConfig(alias="h", hostname="h", port=22, user="root", identity_files=(), known_hosts=Path("/nonexistent"))


def test_auth_failure_names_every_key_tried(server_pair, keys: list[paramiko.PKey]) -> None:  # noqa: ANN001
    ct, _, server = server_pair
    wrong = paramiko.ECDSAKey.generate()
    with pytest.raises(SshAuthFailed) as info:
        ssh._authenticate(ct, _config(), [("/wrong-key", wrong)], ["/enc (encrypted, load it into ssh-agent)"])
    assert info.value.keys_tried == ["/wrong-key", "/enc (encrypted, load it into ssh-agent)"]
    assert server.offered == [ssh.fingerprint(wrong)]


def test_auth_tries_keys_in_order(server_pair, keys: list[paramiko.PKey]) -> None:  # noqa: ANN001
    ct, _, _ = server_pair
    wrong = paramiko.ECDSAKey.generate()
    assert ssh._authenticate(ct, _config(), [("/wrong", wrong), ("/right", keys[0])], []) == "/right"
    assert ct.is_authenticated()


def test_streamlocal_channel_carries_bytes(server_pair, keys: list[paramiko.PKey]) -> None:  # noqa: ANN001
    ct, st, server = server_pair
    ssh._authenticate(ct, _config(), [("/right", keys[0])], [])
    chan = ssh.open_streamlocal(ct, "/run/x.sock")
    peer = st.accept(10)
    assert server.kinds == [ssh.STREAMLOCAL] and peer is not None
    chan.sendall(b"hello")
    assert peer.recv(5) == b"hello"
    peer.sendall(b"world")
    assert chan.recv(5) == b"world"
    chan.close()
    peer.close()


def test_refused_channel_raises_channel_exception(server_pair, keys: list[paramiko.PKey]) -> None:  # noqa: ANN001
    ct, _, server = server_pair
    ssh._authenticate(ct, _config(), [("/right", keys[0])], [])
    server.check_channel_request = lambda kind, chanid: paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED  # type: ignore[method-assign]
    with pytest.raises(paramiko.ChannelException) as info:
        ssh.open_streamlocal(ct, "/run/x.sock")
    assert info.value.code == ssh.OPEN_ADMINISTRATIVELY_PROHIBITED
    with pytest.raises(PeerError, match="refuses forwarding to unix sockets"):
        ssh._probe_socket(ct, "/run/x.sock", "root@h:22")
