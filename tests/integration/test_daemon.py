"""`pymigrate daemon` as a real process: unix socket 0600, the CLI acting through --host, host
info, typed errors across the wire, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from migrate.remote.client import RemoteEngine
from migrate.remote.server import wait_for_serving

pytestmark = [pytest.mark.integration, pytest.mark.requires("root")]


def _pymigrate(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrate", *argv], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def daemon() -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    root = Path(tempfile.mkdtemp(prefix="pm-int-", dir="/tmp"))
    sock = root / "run" / "pymigrate.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrate", "--root", str(root), "daemon", "--listen", f"unix:{sock}", "--grace", "5"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        channel = grpc.insecure_channel(f"unix:{sock}")
        try:
            wait_for_serving(channel, timeout_s=30.0)
        finally:
            channel.close()
        yield proc, root, sock
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(root, ignore_errors=True)


def test_daemon_serves_the_cli_and_stops_on_sigterm(daemon: tuple[subprocess.Popen[str], Path, Path]) -> None:
    proc, root, sock = daemon
    mode = sock.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600

    ps = _pymigrate("--host", f"unix:{sock}", "ps", "--json")
    assert ps.returncode == 0, ps.stderr
    assert json.loads(ps.stdout) == []

    missing = _pymigrate("--host", f"unix:{sock}", "inspect", "no-such-container")
    assert missing.returncode == 125
    assert "no such container: no-such-container" in missing.stderr

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert proc.stderr is not None
    log = proc.stderr.read()
    assert "received SIGTERM" in log and "stopped" in log
    assert not sock.exists(), "the daemon removes its socket on stop"


def test_host_info_over_the_socket(daemon: tuple[subprocess.Popen[str], Path, Path]) -> None:
    _, _, sock = daemon
    with RemoteEngine(f"unix:{sock}") as client:
        host = client.host_info()
    assert host.hostname == socket.gethostname()
    assert host.kernel == os.uname().release
    assert host.cgroup_mode


def test_tcp_without_tls_is_refused_at_startup() -> None:
    root = Path(tempfile.mkdtemp(prefix="pm-int-", dir="/tmp"))
    try:
        started = time.monotonic()
        r = _pymigrate("--root", str(root), "daemon", "--listen", "127.0.0.1:0")
        assert r.returncode == 125
        assert "refusing to listen on 127.0.0.1:0 without tls" in r.stderr
        assert time.monotonic() - started < 30
    finally:
        shutil.rmtree(root, ignore_errors=True)
