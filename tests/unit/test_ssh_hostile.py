"""The SSH transport against a hostile or broken server (an in-process paramiko server that
authenticates us, then misbehaves): a remote command that floods, one that trickles forever, one
that prints terminal escapes, a daemon start script that prints garbage and hangs, and a TCP
server that never sends its banner. Each ends in a typed error within its bound; nothing hangs
and nothing unbounded is buffered."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import paramiko
import pytest

from migrate.remote import ssh
from migrate.remote.ssh_errors import RemoteDaemonFailed, SshUnreachable
from migrate.errors import PeerError, TransferError

Behaviour = Callable[[paramiko.Channel], None]


class _Hostile(paramiko.ServerInterface):
    """Accepts any public key and session; runs ``behaviour`` on every exec request."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=self._run, args=(channel,), daemon=True).start()
        return True

    def _run(self, channel: paramiko.Channel) -> None:
        time.sleep(0.1)  # paramiko answers the exec request only after check_channel_exec_request returned
        try:
            self.behaviour(channel)
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the client hung up on us: that is the point


@pytest.fixture
def hostile() -> Iterator[Callable[[Behaviour], paramiko.Transport]]:
    made: list[paramiko.Transport] = []

    def connect(behaviour: Behaviour) -> paramiko.Transport:
        client_sock, server_sock = socket.socketpair()
        st = paramiko.Transport(server_sock)
        st.add_server_key(paramiko.ECDSAKey.generate())
        serving = threading.Thread(target=st.start_server, kwargs={"server": _Hostile(behaviour)}, daemon=True)
        serving.start()
        ct = paramiko.Transport(client_sock)
        ct.start_client(timeout=10)
        serving.join(10)
        ct.auth_publickey("root", paramiko.ECDSAKey.generate())
        made.extend((ct, st))
        return ct

    yield connect
    for t in made:
        ssh.close_transport(t)


def _flood(chan: paramiko.Channel) -> None:
    block = b"A" * 32768
    while True:
        chan.sendall(block)


def _trickle(chan: paramiko.Channel) -> None:
    while True:
        chan.sendall(b".")
        time.sleep(0.05)


def _escapes(chan: paramiko.Channel) -> None:
    chan.sendall(b"\x1b]0;owned\x07/var/lib/\x1b[2Jpymigrate\n")
    chan.sendall_stderr(b"\x1b[31mred\x1b[0m\n")
    chan.send_exit_status(0)
    chan.shutdown_write()
    chan.close()


def _garbage_then_hang(chan: paramiko.Channel) -> None:
    chan.sendall(b"\x1b[1mnot a pid\n")
    time.sleep(60)


def test_a_flood_is_cut_at_the_output_limit(hostile) -> None:  # noqa: ANN001
    ct = hostile(_flood)
    started = time.monotonic()
    with pytest.raises(PeerError, match="more than"):
        ssh._run(ct, "true", timeout_s=10)
    assert time.monotonic() - started < 5


def test_a_trickle_ends_at_the_deadline(hostile) -> None:  # noqa: ANN001
    ct = hostile(_trickle)
    started = time.monotonic()
    with pytest.raises(TransferError, match="did not finish within 1s"):
        ssh._run(ct, "true", timeout_s=1)
    assert time.monotonic() - started < 3


def test_terminal_escapes_never_reach_the_user(hostile) -> None:  # noqa: ANN001
    ct = hostile(_escapes)
    status, out, err = ssh._run(ct, "true", timeout_s=10)
    assert status == 0
    assert "\x1b" not in out and "\x07" not in out and "\x1b" not in err
    assert "/var/lib/" in out and "pymigrate" in out and out.endswith("\n")


def test_a_start_script_printing_garbage_then_hanging_fails_at_once(hostile) -> None:  # noqa: ANN001
    ct = hostile(_garbage_then_hang)
    started = time.monotonic()
    with pytest.raises(RemoteDaemonFailed) as info:
        ssh._RemoteDaemon(ct, "root@h", "/usr/bin/pymigrate", "/var/lib/pymigrate", "/var/lib/pymigrate/run/pymigrate.sock")
    assert time.monotonic() - started < 5
    assert "\x1b" not in str(info.value)


def test_a_server_that_never_sends_its_banner_is_unreachable_in_time(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(SshUnreachable):
            ssh.open_ssh_target(f"ssh://root@127.0.0.1:{port}", config_file=tmp_path / "none", known_hosts=tmp_path / "kh",
                                connect_timeout_s=2)
        assert time.monotonic() - started < 6
    finally:
        for s in held:
            s.close()
        listener.close()
