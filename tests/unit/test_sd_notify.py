"""sd_notify (migrate/remote/sd_notify.py) over a real unix datagram socket standing in for systemd's
``$NOTIFY_SOCKET``: path and abstract (``@``) addresses, nothing without the variable, and a real
gRPC server (FakeEngine) that says READY=1 only once it answers calls and STOPPING=1 on stop."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from migrate.remote import sd_notify
from migrate.remote.client import RemoteEngine
from migrate.remote.server import create_server
from tests.fakes.engine import FakeEngine


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pm-sdn-", dir="/tmp"))  # short: sun_path is 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _listener(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5.0)
    return sock


def _pending(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(5.0)


def test_path_socket(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _listener(str(sockdir / "notify")) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(sockdir / "notify"))
        assert sd_notify.ready("serving on x")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving on x"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"pymigrate-test-{os.getpid()}-{os.urandom(4).hex()}"
    with _listener(b"\0" + name.encode()) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        assert sd_notify.stopping("bye")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=bye"


def test_no_socket_no_op_and_failures_are_ignored(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sd_notify.ready("x")
    monkeypatch.setenv("NOTIFY_SOCKET", str(sockdir / "nobody-listens"))
    assert not sd_notify.ready("x")  # logged, not raised: notification is advisory
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not sd_notify.ready("x")


def test_server_is_ready_only_when_it_answers(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _listener(str(sockdir / "notify")) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(sockdir / "notify"))
        server, _ = create_server(FakeEngine(hostname="sd"), f"unix:{sockdir}/d.sock")
        try:
            assert _pending(sock) == []  # bound, not serving: no READY yet
            server.start()
            message = sock.recv(4096).decode()
            assert message.startswith("READY=1\nSTATUS=serving pymigrate.v1 on unix:"), message
            with RemoteEngine(f"unix:{sockdir}/d.sock", timeout_s=5) as client:  # right away: it answers
                assert client.host_info().hostname == "sd"
        finally:
            server.stop(0.5)
        assert sock.recv(4096).decode().startswith("STOPPING=1\nSTATUS=stopping")
        assert not (sockdir / "d.sock").exists()  # stopped for real
