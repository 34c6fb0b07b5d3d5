"""A client in another language reads pymigrate's errors the standard way (docs/api.md).

tests/clients/node (Node.js, @grpc/grpc-js + @grpc/proto-loader from npm, installed with
``npm ci`` from its lockfile into a cache under /var/cache so reruns are fast) calls a real
``pymigrate daemon`` over its unix socket: a refused InspectContainer must come back NOT_FOUND
with ErrorInfo reason CONTAINER_NOT_FOUND naming the container; a RunContainer with a bad name
INVALID_ARGUMENT with a BadRequest; a container created on the host is listed with its id and status.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import google.rpc
import pytest

from tests.integration.cli_helpers import start_daemon, stop_daemon


pytestmark = [pytest.mark.integration, pytest.mark.requires("root")]

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "tests" / "clients" / "node"
CACHE = Path(os.environ.get("PYMIGRATE_NODE_CACHE", "/var/cache/pymigrate-tests/node"))


def _node_modules() -> Path:
    """``npm ci`` into CACHE/<lockfile hash>/ once; later runs reuse it."""
    lock = (CLIENT / "package-lock.json").read_bytes()
    where = CACHE / hashlib.sha256(lock).hexdigest()[:16]
    if not (where / "node_modules" / ".complete").exists():
        if shutil.which("npm") is None or shutil.which("node") is None:
            pytest.skip("needs node and npm")
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(CLIENT / name, where / name)
        # --ignore-scripts: nothing from the registry runs here (protobufjs' postinstall is a notice)
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=where, check=True,
                       capture_output=True, timeout=600)
        (where / "node_modules" / ".complete").touch()
    return where / "node_modules"


@pytest.fixture(scope="module")
def node_modules() -> Iterator[Path]:
    yield _node_modules()


@pytest.fixture
def daemon(pm_root: Path) -> Iterator[Path]:
    """A real ``pymigrate daemon`` on the session's state root (busybox loaded); yields its socket."""
    proc, sock = start_daemon(pm_root)
    try:
        yield sock
    finally:
        stop_daemon(proc, sock)


def _node(node_modules: Path, sock: Path, *argv: str) -> tuple[int, list[dict[str, Any]]]:
    google_dir = Path(google.rpc.__path__[0]).parent.parent  # site-packages: google/rpc/*.proto
    proc = subprocess.run(
        ["node", str(CLIENT / "cli.js"), "--target", f"unix:{sock}", "--protos", str(REPO / "protos"),
         "--google", str(google_dir), *argv],
        capture_output=True, text=True, timeout=60, env={**os.environ, "NODE_PATH": str(node_modules)},
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def test_node_reads_error_info_of_a_refused_call(daemon: Path, node_modules: Path) -> None:
    sock = daemon
    rc, (report,) = _node(node_modules, sock, "inspect", "no-such-box")
    assert rc == 1 and report["grpcCodeName"] == "NOT_FOUND"
    status = report["status"]
    assert status["code"] == 5 and status["message"] == report["details"]
    info = status["errorInfo"]
    assert info["reason"] == "CONTAINER_NOT_FOUND" and info["domain"] == "pymigrate.io"
    assert info["metadata"] == {"type": "ContainerNotFound", "name": "no-such-box"}
    assert status["badRequest"] is None


def test_node_reads_bad_request_of_a_bad_name(daemon: Path, node_modules: Path) -> None:
    sock = daemon  # busybox exists there: the name is what the daemon refuses
    rc, (report,) = _node(node_modules, sock, "run", "busybox", "bad name!")
    assert rc == 1 and report["grpcCodeName"] == "INVALID_ARGUMENT", report
    status = report["status"]
    assert status["errorInfo"]["reason"] in ("INVALID_ARGUMENT", "INVALID_SPEC")
    (violation,) = status["badRequest"]["field_violations"]
    assert "bad name!" in violation["description"]


def test_node_lists_containers(daemon: Path, node_modules: Path, pm: Callable[..., Any]) -> None:
    created = pm("create", "--name", "node-listed", "busybox", "sleep", "100")
    assert created.returncode == 0, created.stderr
    try:
        rc, lines = _node(node_modules, daemon, "ls")
        assert rc == 0
        (listed,) = [c for c in lines if c["name"] == "node-listed"]
        assert listed["id"] == created.stdout.decode().strip() and listed["status"] == "CONTAINER_STATUS_CREATED"
    finally:
        pm("rm", "-f", "node-listed")
