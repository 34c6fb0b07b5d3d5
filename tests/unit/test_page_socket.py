"""migrate/migration/page_socket.py without CRIU: which paths a target takes, the relay behind the
socket (a fake page server), the socket file gone after, and the source's connect."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from migrate.errors import TransferError
from migrate.migration import page_socket
from migrate.migration.page_relay import SourceRelay
from runtime.errors import InvalidArgument
from tests.unit.test_page_relay import fake_page_servers


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    return run


def _address(run: Path, name: str = "0123456789abcdef.sock") -> str:
    return f"unix:{run / 'pages' / name}"


def test_remote_path_is_a_fresh_token_beside_the_daemon_socket(tmp_path: Path) -> None:
    first = page_socket.remote_path(str(tmp_path / "run" / "pymigrate.sock"))
    assert Path(first).parent == tmp_path / "run" / "pages"
    assert page_socket.TOKEN_RE.fullmatch(Path(first).name)
    assert first != page_socket.remote_path(str(tmp_path / "run" / "pymigrate.sock"))
    local = page_socket.for_local_daemon(str(tmp_path / "run" / "pymigrate.sock"))
    assert local.local == local.remote and local.address == f"unix:{local.remote}" and local.via == "unix"


@pytest.mark.parametrize("where", ["other dir", "bad token", "relative"])
def test_a_path_outside_the_daemons_pages_dir_is_refused(tmp_path: Path, where: str) -> None:
    run = _run_dir(tmp_path)
    address = {
        "other dir": f"unix:{tmp_path / 'elsewhere' / 'pages' / '0123456789abcdef.sock'}",
        "bad token": _address(run, "../pymigrate.sock"),
        "relative": "unix:pages/0123456789abcdef.sock",
    }[where]
    with pytest.raises(InvalidArgument):
        page_socket.start(tmp_path / "images", address, run, relay=True, timeout_s=5)
    assert not (tmp_path / "elsewhere").exists()
    assert not any((run / "pages").glob("*")) if (run / "pages").exists() else True


def test_pages_dir_is_private_and_a_token_is_taken_once(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    (run / "pages").mkdir(mode=0o755)
    relay = page_socket.start(tmp_path / "images", _address(run), run, relay=True, timeout_s=5)
    try:
        assert (run / "pages").stat().st_mode & 0o777 == 0o700
        assert (run / "pages" / "0123456789abcdef.sock").stat().st_mode & 0o777 == 0o600
        with pytest.raises(OSError):
            page_socket.start(tmp_path / "images", _address(run), run, relay=True, timeout_s=5)
    finally:
        relay.stop()
    assert list((run / "pages").iterdir()) == []


def test_a_pages_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    (tmp_path / "other").mkdir(mode=0o700)
    (run / "pages").symlink_to(tmp_path / "other")
    with pytest.raises(InvalidArgument):
        page_socket.start(tmp_path / "images", _address(run), run, relay=True, timeout_s=5)
    assert list((tmp_path / "other").iterdir()) == []


class Target:
    """What ColdMode's ``move.target`` offers: a RemoteEngine's ``page_socket``."""

    def __init__(self, channel: page_socket.PageSocket | None) -> None:
        self.page_socket = channel


def test_pages_cross_the_socket_to_the_page_server_and_the_file_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = fake_page_servers(monkeypatch)
    run = _run_dir(tmp_path)
    channel = page_socket.for_local_daemon(str(run / "pymigrate.sock"))
    target = page_socket.start(tmp_path / "images", channel.address, run, relay=True, timeout_s=5)
    source = SourceRelay(page_socket.connect(Target(channel), channel.address), "auto")
    decision = source.open()
    assert not decision.compressed and source.direct  # a local socket: raw, CRIU's fd is the socket itself
    criu = socket.socket(fileno=os.dup(source.criu_fd))
    data = b"page " * 10_000  # within a unix socket's buffer: nobody reads before the send ends
    criu.sendall(data)
    criu.close()
    source.join(10)  # our copy closes: the page server's end sees EOF
    for _ in range(100):
        if started:
            break
        time.sleep(0.05)
    got = bytearray()
    while chunk := started[0].sock.recv(1 << 20):
        got += chunk
    assert bytes(got) == data
    assert target.wait(10) == 0
    assert not Path(channel.remote).exists(), "the socket file goes once the source connected"
    source.close()
    target.stop()


def test_connect_needs_the_targets_own_channel(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    channel = page_socket.for_local_daemon(str(run / "pymigrate.sock"))
    with pytest.raises(TransferError, match="no page channel"):
        page_socket.connect(Target(None), channel.address)
    with pytest.raises(TransferError, match="cannot reach the target's page socket"):
        page_socket.connect(Target(channel), channel.address)  # nobody listens


def test_without_the_relay_the_page_server_gets_the_connection_as_it_comes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``--compress on``: no probe, no handshake; CRIU's first bytes reach the page server."""
    started = fake_page_servers(monkeypatch)
    run = _run_dir(tmp_path)
    channel = page_socket.for_local_daemon(str(run / "pymigrate.sock"))
    target = page_socket.start(tmp_path / "images", channel.address, run, relay=False, timeout_s=5)
    criu = page_socket.connect(Target(channel), channel.address)
    criu.sendall(b"PMR1 is not a hello here")
    criu.close()
    for _ in range(100):
        if started:
            break
        time.sleep(0.05)
    assert started, "no page server started"
    got = bytearray()
    while chunk := started[0].sock.recv(1 << 20):
        got += chunk
    assert bytes(got) == b"PMR1 is not a hello here"
    assert target.wait(10) == 0 and target.compressed is False
    assert not Path(channel.remote).exists()
    target.stop()


def test_a_dead_daemons_page_sockets_are_swept_and_nothing_else(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    assert page_socket.sweep(run) == 0  # no pages dir yet
    pages = run / page_socket.DIR_NAME
    pages.mkdir(mode=0o700)
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(pages / "0123456789abcdef.sock"))
    left.close()  # the file stays, as after a daemon's death
    (pages / "fedcba9876543210.sock").write_text("not a socket")
    (pages / "notes").write_text("")
    assert page_socket.sweep(run) == 1
    assert sorted(p.name for p in pages.iterdir()) == ["fedcba9876543210.sock", "notes"]
