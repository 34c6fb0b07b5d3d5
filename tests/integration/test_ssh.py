"""ssh:// against Debian's real sshd running inside a "host" network namespace.

Each test gets a host (tests/integration/hosts.py) with sshd on ADDRESS:22, a generated ed25519
host key and one authorized client key; HOME points at an empty temporary directory and
SSH_AUTH_SOCK is unset, so nothing from the machine's own ~/.ssh or agent takes part. Host key
fingerprints are checked against ``ssh-keygen -l`` and the recorded known_hosts line against
``ssh-keygen -F``, not against our own code.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import PYMIGRATE_BIN, REPO, Host, Hosts, make_hosts, pymigrate_command  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "netns", "sshd")]


def _keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def _fingerprint_of(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


@dataclass
class SshSetup:
    host: Host
    key: Path  # authorized private key
    known_hosts: Path
    home: Path

    def options(self, **overrides: object) -> dict:
        options: dict = {
            "key_file": self.key,
            "known_hosts": self.known_hosts,
            "remote_pymigrate": str(PYMIGRATE_BIN),
            "remote_root": str(self.host.root),
            "config_file": self.home / ".ssh" / "config",
        }
        options.update(overrides)
        return options

    def cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env["HOME"] = str(self.home)
        return env

    def cli(self, *args: str, accept_new: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        """The client CLI in the root namespace, acting on the host through ssh://."""
        flags = [
            "--host", self.host.ssh_url(),
            "--ssh-key", str(self.key),
            "--ssh-known-hosts", str(self.known_hosts),
            "--ssh-remote-pymigrate", str(PYMIGRATE_BIN),
            "--ssh-remote-root", str(self.host.root),
        ]  # fmt: skip
        if accept_new:
            flags.append("--ssh-accept-new")
        return subprocess.run(
            [*pymigrate_command(), *flags, *args], capture_output=True, text=True, timeout=timeout, env=self.cli_env(), cwd=REPO
        )


@pytest.fixture
def ssh_setup(make_hosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SshSetup]:  # noqa: ANN001
    hosts: Hosts = make_hosts(1)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    key = _keygen(tmp_path / "id_ed25519", "pymigrate-test")
    host = hosts[0]
    host.start_sshd(Path(f"{key}.pub"))
    yield SshSetup(host=host, key=key, known_hosts=tmp_path / "known_hosts", home=home)


def _daemon_pids(host: Host) -> list[int]:
    pids = []
    for pid in host.pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"daemon" in argv and str(host.root).encode() in argv:
            pids.append(pid)
    return pids


def _wait_until(predicate, timeout_s: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --- host keys ----------------------------------------------------------------------------------


def test_unknown_host_key_is_refused(ssh_setup: SshSetup) -> None:
    from migrate.remote.ssh import HostKeyUnknown, open_ssh_target

    with pytest.raises(HostKeyUnknown) as info:
        open_ssh_target(ssh_setup.host.ssh_url(), **ssh_setup.options())
    expected = ssh_setup.host.host_key_fingerprint()
    assert info.value.fingerprint == expected
    assert f"host key of {ssh_setup.host.address} is not known: ssh-ed25519 {expected}" in str(info.value)
    assert "--ssh-accept-new" in info.value.hint
    assert not ssh_setup.known_hosts.exists()
    assert _daemon_pids(ssh_setup.host) == []


def test_accept_new_records_the_key_and_later_connections_use_it(ssh_setup: SshSetup) -> None:
    from migrate.remote.ssh import open_ssh_target

    with open_ssh_target(ssh_setup.host.ssh_url(), accept_new=True, **ssh_setup.options()):
        pass
    found = subprocess.run(
        ["ssh-keygen", "-F", ssh_setup.host.address, "-f", str(ssh_setup.known_hosts)], capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr
    assert (ssh_setup.known_hosts.stat().st_mode & 0o777) == 0o600
    # the recorded line is the host's public key, as OpenSSH would have written it
    pub = Path(f"{ssh_setup.host.host_key}.pub").read_text().split()[:2]
    assert ssh_setup.known_hosts.read_text().split() == [ssh_setup.host.address, *pub]
    # known now: no --ssh-accept-new needed, nothing appended
    before = ssh_setup.known_hosts.read_text()
    with open_ssh_target(ssh_setup.host.ssh_url(), **ssh_setup.options()):
        pass
    assert ssh_setup.known_hosts.read_text() == before


def test_changed_host_key_is_refused_even_with_accept_new(ssh_setup: SshSetup) -> None:
    from migrate.remote.ssh import HostKeyMismatch, open_ssh_target

    host = ssh_setup.host
    with open_ssh_target(host.ssh_url(), accept_new=True, **ssh_setup.options()):
        pass
    old = host.host_key_fingerprint()
    recorded = ssh_setup.known_hosts.read_text()
    host.stop_sshd()
    host.regenerate_host_key()
    host.start_sshd(Path(f"{ssh_setup.key}.pub"))
    new = host.host_key_fingerprint()
    assert old != new
    with pytest.raises(HostKeyMismatch) as info:
        open_ssh_target(host.ssh_url(), accept_new=True, **ssh_setup.options())
    assert info.value.expected == f"ssh-ed25519 {old}"
    assert info.value.actual == f"ssh-ed25519 {new}"
    assert f"host key of {host.address} has changed" in str(info.value)
    assert old in str(info.value) and new in str(info.value)
    assert ssh_setup.known_hosts.read_text() == recorded  # not overwritten
    assert _daemon_pids(host) == []


def test_cli_reports_unknown_host_key_with_fingerprint(ssh_setup: SshSetup) -> None:
    r = ssh_setup.cli("ps")
    assert r.returncode == 125, r.stderr
    assert f"pymigrate: host key of {ssh_setup.host.address} is not known: ssh-ed25519 {ssh_setup.host.host_key_fingerprint()}" in r.stderr
    assert "hint:" in r.stderr and "Traceback" not in r.stderr


# --- user authentication -----------------------------------------------------------------------


def test_wrong_user_key_fails_naming_the_key(ssh_setup: SshSetup, tmp_path: Path) -> None:
    from migrate.errors import AuthError
    from migrate.remote.ssh import SshAuthFailed, open_ssh_target

    wrong = _keygen(tmp_path / "id_wrong", "not-authorized")
    with pytest.raises(SshAuthFailed) as info:
        open_ssh_target(ssh_setup.host.ssh_url(), accept_new=True, **ssh_setup.options(key_file=wrong))
    assert isinstance(info.value, AuthError)
    fp = _fingerprint_of(Path(f"{wrong}.pub"))
    assert info.value.keys_tried == [f"{wrong} (ssh-ed25519 {fp})"]
    assert str(info.value).startswith(f"ssh authentication to root@{ssh_setup.host.address}:22 failed; tried {wrong} (ssh-ed25519 {fp})")
    assert _daemon_pids(ssh_setup.host) == []
    # sshd saw exactly that key
    assert fp in ssh_setup.host.sshd_log


def test_keys_from_ssh_config_and_default_identity(ssh_setup: SshSetup) -> None:
    """Without --ssh-key: ~/.ssh/config's HostName/User/IdentityFile decide."""
    from migrate.remote.ssh import open_ssh_target

    config = ssh_setup.home / ".ssh" / "config"
    config.write_text(f"Host hosta\n    HostName {ssh_setup.host.address}\n    User root\n    IdentityFile {ssh_setup.key}\n")
    options = ssh_setup.options(key_file=None)
    with open_ssh_target("ssh://hosta", accept_new=True, **options) as target:
        assert target.config.hostname == ssh_setup.host.address
        assert target.config.user == "root"


def test_unreachable_host(ssh_setup: SshSetup) -> None:
    from migrate.errors import TransferError
    from migrate.remote.ssh import SshUnreachable, open_ssh_target

    with pytest.raises(SshUnreachable) as info:
        open_ssh_target(f"ssh://root@{ssh_setup.host.address}:2222", **ssh_setup.options())
    assert isinstance(info.value, TransferError)
    assert str(info.value).startswith(f"cannot reach ssh host root@{ssh_setup.host.address}:2222: connection refused")


def test_missing_remote_pymigrate_says_how_to_install(ssh_setup: SshSetup) -> None:
    from migrate.remote.ssh import RemotePymigrateMissing, open_ssh_target

    with pytest.raises(RemotePymigrateMissing) as info:
        open_ssh_target(ssh_setup.host.ssh_url(), accept_new=True, **ssh_setup.options(remote_pymigrate="pymigrate-not-here"))
    assert "command 'pymigrate-not-here' not found there" in str(info.value)
    assert "scripts/setup.sh" in info.value.hint and "--ssh-remote-pymigrate" in info.value.hint


# --- the tunnel and the daemon ------------------------------------------------------------------


def test_cli_reaches_a_daemon_started_on_demand_and_stops_it(ssh_setup: SshSetup) -> None:
    host = ssh_setup.host
    tunnels_before = set(Path("/tmp").glob("pymigrate-tunnel-*"))
    r = ssh_setup.cli("ps", "--all", "--json", accept_new=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
    # the daemon started for the command is gone again, and so is its socket
    assert _wait_until(lambda: _daemon_pids(host) == [], 10.0), _daemon_pids(host)
    assert not host.socket_path.exists()
    # no local forward sockets left behind
    assert set(Path("/tmp").glob("pymigrate-tunnel-*")) <= tunnels_before


def test_remote_engine_over_ssh_started_daemon_serves_unix_socket_0600(ssh_setup: SshSetup) -> None:
    from migrate.remote.client import RemoteEngine

    host = ssh_setup.host
    engine = RemoteEngine(host.ssh_url(), ssh=ssh_setup.options(accept_new=True))
    try:
        assert engine.target == host.ssh_url()
        assert engine.containers(all=True) == []
        pid = engine._ssh.daemon_pid
        assert pid is not None and pid in _daemon_pids(host)
        assert (host.socket_path.stat().st_mode & 0o777) == 0o600
        address = engine._ssh.address
        assert address.startswith("unix:")
        local = Path(address[len("unix:") :])
        assert (local.parent.stat().st_mode & 0o777) == 0o700
        # the daemon listens only on the unix socket: nothing new on TCP in the host
        listening = host.run(["ss", "-Htln"]).stdout.decode()
        assert ":22 " in listening and len(listening.strip().splitlines()) == 1, listening
    finally:
        engine.close()
    assert _wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10.0)
    assert not local.exists()


def test_a_running_daemon_is_used_and_left_running(ssh_setup: SshSetup) -> None:
    from migrate.remote.ssh import open_ssh_target

    host = ssh_setup.host
    host.start_daemon()
    daemon_pid = host.daemon.pid
    with open_ssh_target(host.ssh_url(), accept_new=True, **ssh_setup.options()) as target:
        assert not target.started_daemon and target.daemon_pid is None
        from migrate.remote.client import RemoteEngine

        with RemoteEngine(target.address) as engine:
            assert engine.containers(all=True) == []
    assert host.daemon.poll() is None
    assert daemon_pid in _daemon_pids(host)


def test_daemon_that_fails_to_start_reports_its_log(ssh_setup: SshSetup) -> None:
    from migrate.remote.ssh import RemoteDaemonFailed, open_ssh_target

    host = ssh_setup.host
    # the daemon itself refuses: its socket path is taken by a regular file
    host.socket_path.parent.mkdir(parents=True, exist_ok=True)
    host.socket_path.write_text("not a socket\n")
    with pytest.raises(RemoteDaemonFailed) as info:
        open_ssh_target(host.ssh_url(), accept_new=True, **ssh_setup.options())
    assert "did not serve: it exited with status 125" in str(info.value)
    assert any("the path exists and is not a socket" in line for line in info.value.log_lines), info.value.log_lines
    # the start script cannot even make ROOT/run
    bad_root = host.workdir / "not-a-dir"
    bad_root.write_text("a file where the state root should be\n")
    with pytest.raises(RemoteDaemonFailed) as info:
        open_ssh_target(host.ssh_url(), **ssh_setup.options(remote_root=str(bad_root)))
    assert "the start script failed with status 125" in str(info.value)
    assert any("Not a directory" in line for line in info.value.log_lines), info.value.log_lines
    assert _daemon_pids(host) == []


def test_sshd_killed_during_a_stream_is_a_clean_transfer_error(ssh_setup: SshSetup, tmp_path: Path) -> None:
    """An upload stream (ImportImage of a 4 GiB sparse file) runs through the tunnel when every
    sshd of the host dies: the client gets TransferError naming the ssh:// address, and the
    daemon started for the connection stops (its watcher saw the session end)."""
    from migrate.remote.client import RemoteEngine
    from migrate.errors import TransferError

    host = ssh_setup.host
    big = tmp_path / "big.tar"
    with open(big, "wb") as f:
        f.truncate(4 << 30)
    engine = RemoteEngine(host.ssh_url(), ssh=ssh_setup.options(accept_new=True))
    killed = threading.Event()
    try:
        daemon_pid = engine._ssh.daemon_pid

        def kill_when_streaming() -> None:
            time.sleep(1.5)
            killed.set()
            host.kill_sshd()

        killer = threading.Thread(target=kill_when_streaming, daemon=True)
        killer.start()
        started = time.monotonic()
        with pytest.raises(TransferError) as info:
            engine.image_import("big", big)
        elapsed = time.monotonic() - started
        assert killed.is_set(), "the upload ended before sshd was killed"
        killer.join(20)
        assert host.ssh_url() in str(info.value)
        assert elapsed < 30.0
    finally:
        engine.close()
    # the daemon first finishes the spooled upload it was writing (GBs of zeros, under a full CI's
    # load once longer than 40 s): it must stop, but the bound allows for a slow disk
    assert _wait_until(lambda: not os.path.exists(f"/proc/{daemon_pid}"), 90.0)
    assert not host.socket_path.exists()


def test_forward_closes_local_connections_when_the_session_dies(ssh_setup: SshSetup) -> None:
    """Raw bytes through the forward to a unix echo server in the host; then sshd dies."""
    from migrate.remote.ssh import open_ssh_target

    host = ssh_setup.host
    echo_path = host.workdir / "echo.sock"
    echo = host.popen(
        [
            "python3", "-c",
            "import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)\n"
            "c,_=s.accept()\n"
            "while d:=c.recv(65536): c.sendall(d)\n",
            str(echo_path),
        ]
    )  # fmt: skip
    try:
        assert _wait_until(echo_path.exists, 10.0)
        with open_ssh_target(host.ssh_url(), accept_new=True, **ssh_setup.options()) as target:
            forward = target._forward
            forward._remote_socket = str(echo_path)  # point the forward at the echo server
            client = socket.socket(socket.AF_UNIX)
            client.connect(target.address[len("unix:") :])
            client.settimeout(20.0)
            client.sendall(b"ping")
            assert client.recv(4) == b"ping"
            host.kill_sshd()
            started = time.monotonic()
            try:
                data = client.recv(4)
            except ConnectionResetError:
                data = b""
            assert data == b"" and time.monotonic() - started < 20.0
            client.close()
    finally:
        echo.kill()
        echo.wait(5)
