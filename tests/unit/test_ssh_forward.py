"""migrate/remote/ssh_forward.py without sshd: the pinning in ssh's argv, and start/probe/close
with a fake ``ssh`` (a script that serves the -L socket like a gRPC server's first frame)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from migrate.remote.ssh_forward import HOST_KEY_ALIAS, REMOTE_COMMAND, Identity, OpenSshForwarder

FAKE_SSH = """\
import os, socket, sys
args = sys.argv[1:]
local, _, remote = args[args.index("-L") + 1].partition(":")
if os.environ.get("FAKE_SSH_FAIL"):
    print("Host key verification failed.", file=sys.stderr)
    sys.exit(255)
open(os.environ["FAKE_SSH_PIDFILE"], "w").write(str(os.getpid()))
s = socket.socket(socket.AF_UNIX)
s.bind(local)
s.listen(4)
if "-tt" in args and os.environ.get("FAKE_SSH_NO_PTY"):  # sshd refused the forced pty: ssh ends
    print("PTY allocation request failed on channel 0", file=sys.stderr)
    sys.exit(1)
if "-tt" in args:
    print(os.environ.get("FAKE_SSH_CHATTER", "") + "pty\\r", flush=True)  # the session's marker, through the pty
while True:
    c, _ = s.accept()
    c.recv(64)
    c.sendall(bytes.fromhex(os.environ.get("FAKE_SSH_FRAME", "000000040000000000")))
    c.close()
"""


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ssh"
    path.write_text(f"#!{sys.executable}\n{FAKE_SSH}")
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_SSH_PIDFILE", str(tmp_path / "ssh.pid"))
    return path


def _forwarder(binary: Path, workdir: Path, identity: Identity | None = None) -> OpenSshForwarder:
    key = paramiko.ECDSAKey.generate()
    return OpenSshForwarder(str(binary), workdir, hostname="10.0.0.2", port=2222, user="root", host_key=key,
                            identity=identity or Identity(key=key, path=workdir / "id_ecdsa"), connect_timeout_s=5)  # fmt: skip


def _option(argv: list[str], name: str) -> str:
    values = [argv[i + 1].partition("=")[2] for i, a in enumerate(argv) if a == "-o" and argv[i + 1].startswith(f"{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def test_argv_pins_the_verified_host_key_and_the_identity(tmp_path: Path) -> None:
    host_key = paramiko.ECDSAKey.generate()
    forwarder = OpenSshForwarder("/usr/bin/ssh", tmp_path, hostname="10.0.0.2", port=2222, user="root", host_key=host_key,
                                 identity=Identity(key=host_key, path=tmp_path / "id"), connect_timeout_s=5)  # fmt: skip
    argv = forwarder.argv(tmp_path / "ssh.sock", "/var/lib/pymigrate/run/pymigrate.sock")
    assert argv[:3] == ["/usr/bin/ssh", "-F", "/dev/null"]  # no user config: no ProxyCommand, no other HostName
    assert _option(argv, "StrictHostKeyChecking") == "yes" and _option(argv, "BatchMode") == "yes"
    assert _option(argv, "GlobalKnownHostsFile") == "/dev/null" and _option(argv, "HostKeyAlias") == HOST_KEY_ALIAS
    known = Path(_option(argv, "UserKnownHostsFile"))
    assert known.parent == tmp_path and known.stat().st_mode & 0o777 == 0o600
    lines = known.read_text().splitlines()
    assert lines == [f"{HOST_KEY_ALIAS} {host_key.get_name()} {host_key.get_base64()}",
                     f"[{HOST_KEY_ALIAS}]:2222 {host_key.get_name()} {host_key.get_base64()}"]  # fmt: skip
    assert _option(argv, "HostKeyAlgorithms") == host_key.get_name()
    assert argv[argv.index("-i") + 1] == str(tmp_path / "id") and _option(argv, "IdentitiesOnly") == "yes"
    assert _option(argv, "IdentityAgent") == "none" and _option(argv, "PreferredAuthentications") == "publickey"
    assert _option(argv, "Ciphers").startswith("aes128-gcm@openssh.com,")
    port = argv.index("-p")
    assert argv[port : port + 4] == ["-p", "2222", "-l", "root"]
    assert argv[argv.index("-L") :] == ["-L", f"{tmp_path / 'ssh.sock'}:/var/lib/pymigrate/run/pymigrate.sock", "--", "10.0.0.2",
                                        REMOTE_COMMAND]  # fmt: skip
    assert REMOTE_COMMAND.endswith("; exec sleep 2147483647")
    assert "-tt" in argv and "-N" not in argv  # a pty session: OpenSSH's TCP_NODELAY (ssh_forward's docstring)


def test_an_agent_key_is_named_by_its_public_half(tmp_path: Path) -> None:
    key = paramiko.ECDSAKey.generate()
    forwarder = _forwarder(Path("/usr/bin/ssh"), tmp_path, Identity(key=key, path=None, agent_socket="/run/agent.sock"))
    argv = forwarder.argv(tmp_path / "ssh.sock", "/r.sock")
    pub = Path(argv[argv.index("-i") + 1])
    assert pub.read_text() == f"{key.get_name()} {key.get_base64()}\n" and pub.stat().st_mode & 0o777 == 0o600
    assert _option(argv, "IdentityAgent") == "/run/agent.sock" and _option(argv, "IdentitiesOnly") == "yes"


def test_a_host_that_refuses_the_pty_gets_a_forward_without_a_session(fake_ssh: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("FAKE_SSH_NO_PTY", "1")
    forwarder = _forwarder(fake_ssh, tmp_path)
    try:
        assert forwarder.start(tmp_path / "ssh.sock", "/r.sock", 10.0) is None
        assert forwarder.pty is False
        argv = forwarder.argv(tmp_path / "ssh.sock", "/r.sock")
        assert "-tt" not in argv and argv[argv.index("-N") - 1 : argv.index("-N") + 2] == ["-T", "-N", "-L"]
        assert argv[-2:] == ["--", "10.0.0.2"]  # no remote command
    finally:
        forwarder.close()


def test_a_login_shells_chatter_before_the_pty_marker_is_skipped(fake_ssh: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("FAKE_SSH_CHATTER", "welcome to pty land\r\nno-pty is not what this line is\r\n")
    forwarder = _forwarder(fake_ssh, tmp_path)
    try:
        assert forwarder.start(tmp_path / "ssh.sock", "/r.sock", 10.0) is None and forwarder.pty
    finally:
        forwarder.close()


def test_start_probes_and_close_ends_the_process_group(fake_ssh: Path, tmp_path: Path) -> None:
    forwarder = _forwarder(fake_ssh, tmp_path)
    assert forwarder.start(tmp_path / "ssh.sock", "/r.sock", 10.0) is None
    ssh_pid = int((tmp_path / "ssh.pid").read_text())
    assert os.getpgid(ssh_pid) == forwarder.pid != os.getpgid(0)  # its own group, led by the watcher
    forwarder.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(ssh_pid):
        time.sleep(0.02)  # SIGTERM sent to the whole group; the watcher was waited for
    assert forwarder.pid is None and not _alive(ssh_pid)


def test_the_watcher_ends_ssh_when_its_starter_dies(fake_ssh: Path, tmp_path: Path) -> None:
    """A child starts the forwarder and is SIGKILLed: no close() runs, the pipe ends, ssh ends."""
    script = (
        "import sys, time, paramiko\n"
        "from pathlib import Path\n"
        "from migrate.remote.ssh_forward import Identity, OpenSshForwarder\n"
        "k = paramiko.ECDSAKey.generate()\n"
        "f = OpenSshForwarder(sys.argv[1], Path(sys.argv[2]), hostname='h', port=22, user='u', host_key=k,\n"
        "                     identity=Identity(key=k, path=Path('/id')), connect_timeout_s=5)\n"
        "print(f.start(Path(sys.argv[2]) / 'ssh.sock', '/r.sock', 10.0), flush=True)\n"
        "time.sleep(60)\n"
    )
    work = tmp_path / "w"
    work.mkdir()
    starter = subprocess.Popen([sys.executable, "-c", script, str(fake_ssh), str(work)], stdout=subprocess.PIPE,
                               cwd=str(Path(__file__).resolve().parents[2]))  # fmt: skip
    try:
        assert starter.stdout is not None and starter.stdout.readline().strip() == b"None"
        ssh_pid = int((tmp_path / "ssh.pid").read_text())
        os.kill(ssh_pid, 0)
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(ssh_pid):
            time.sleep(0.02)
        assert not _alive(ssh_pid), "ssh outlived the process that started it"
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait(10)
        if starter.stdout is not None:
            starter.stdout.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_refusal_is_reported_with_ssh_message_and_nothing_is_left(fake_ssh: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("FAKE_SSH_FAIL", "1")
    forwarder = _forwarder(fake_ssh, tmp_path)
    reason = forwarder.start(tmp_path / "ssh.sock", "/r.sock", 10.0)
    assert reason == "ssh exited with status 255: Host key verification failed."
    assert forwarder.pid is None


def test_a_socket_that_is_not_http2_fails_the_probe(fake_ssh: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SSH_FRAME", "504f4e47000000000a")  # 9 bytes, frame type 0x47
    forwarder = _forwarder(fake_ssh, tmp_path)
    reason = forwarder.start(tmp_path / "ssh.sock", "/r.sock", 10.0)
    assert reason is not None and "not HTTP/2 SETTINGS" in reason and forwarder.pid is None
    ssh_pid = int((tmp_path / "ssh.pid").read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(ssh_pid):
        time.sleep(0.02)
    assert not _alive(ssh_pid)
    # without the probe (a socket that is not the daemon's, as tests retarget it) it is used as is
    assert forwarder.start(tmp_path / "ssh.sock", "/r.sock", 10.0, probe=False) is None
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(tmp_path / "ssh.sock"))
    forwarder.close()
