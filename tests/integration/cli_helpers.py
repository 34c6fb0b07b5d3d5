"""Small helpers for tests that drive the ``pymigrate`` CLI as a subprocess."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any, Sequence

import grpc

from tests.integration.conftest import PYMIGRATE, REPO

# a counter a restored copy must go on from (busybox sh; /tmp/cnt in the container)
LOOP = "i=0; while true; do i=$((i+1)); echo $i > /tmp/cnt; sleep 0.05; done"


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def ok(r: subprocess.CompletedProcess) -> str:
    """stdout of a command that must have succeeded (its stderr in the failure message)."""
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode(errors='replace')}"
    return r.stdout.decode()


def refused(r: subprocess.CompletedProcess, error_type: str) -> dict[str, Any]:
    """The ``--json`` error of a command that must have failed with ``error_type``."""
    assert r.returncode != 0, f"accepted: {r.stdout.decode()}"
    answer = json.loads(r.stdout)
    assert answer["type"] == error_type, answer
    return answer


def start_daemon(root: Path, extra_args: Sequence[str] = ()) -> tuple[subprocess.Popen, Path]:
    """A real daemon on state root ``root`` on its own unix socket, serving once reconcile() is done."""
    from migrate.remote.server import wait_for_serving

    sock = Path(f"/tmp/pm-test-{secrets.token_hex(3)}.sock")
    proc = subprocess.Popen([*PYMIGRATE, "--root", str(root), "daemon", "--listen", f"unix:{sock}", "--grace", "5",
                             *extra_args], stderr=subprocess.DEVNULL, cwd=REPO)
    channel = grpc.insecure_channel(f"unix:{sock}")
    try:
        wait_for_serving(channel, timeout_s=180.0)
    finally:
        channel.close()
    return proc, sock


def stop_daemon(proc: subprocess.Popen, sock: Path | None = None) -> None:
    """SIGTERM (its grace period), SIGKILL if it is still there after 30 s; the socket removed."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if sock is not None:
        sock.unlink(missing_ok=True)
