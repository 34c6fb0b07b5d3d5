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
from tests.integration.hosts import make_hosts  # noqa: F401  (fixture)
from tests.integration.migrate_helpers import names_by_status


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


def _node(node_modules: Path, target: Path | str, *argv: str, timeout: float = 60) -> tuple[int, list[dict[str, Any]]]:
    """The Node client's exit code and JSON lines; ``target``: a unix socket path or an address."""
    google_dir = Path(google.rpc.__path__[0]).parent.parent  # site-packages: google/rpc/*.proto
    proc = subprocess.run(
        ["node", str(CLIENT / "cli.js"), "--target", f"unix:{target}" if isinstance(target, Path) else target, "--protos", str(REPO / "protos"),
         "--google", str(google_dir), *argv],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "NODE_PATH": str(node_modules)},
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


@pytest.mark.requires("netns", "criu", "pycriu", "busybox", "overlay")
def test_node_scheduler_lists_by_label_watches_events_and_drains_a_host(make_hosts, node_modules: Path) -> None:  # noqa: ANN001
    """The issue's scheduler in another language, against two real daemons over TCP: the web tier
    found by its label, its containers migrated to the other host one by one (the db stays), and
    the source's WatchEvents from a cursor shows exactly those two migrations completed."""
    a, b = make_hosts(2)
    source, target = a.start_daemon("tcp"), b.start_daemon("tcp")
    a.cli(["image", "build-busybox", "busybox"], check=True)
    for name, tier in (("web1", "web"), ("web2", "web"), ("db", "db")):
        a.cli(["run", "-d", "--name", name, "--label", f"tier={tier}", "busybox", "sleep", "600"], check=True)

    rc, rows = _node(node_modules, source, "ls", "--filter", "label=tier=web")
    assert rc == 0 and sorted(r["name"] for r in rows) == ["web1", "web2"], rows
    assert all(r["labels"] == {"tier": "web"} for r in rows), rows
    rc, history = _node(node_modules, source, "watch", "--since", "0")
    assert rc == 0 and history, "the runs above are events already"
    cursor = max(int(e["sequence"]) for e in history)

    rc, outcomes = _node(node_modules, source, "drain", "--to", target, "--filter", "label=tier=web", timeout=600)
    assert rc == 0 and sorted(o["name"] for o in outcomes) == ["web1", "web2"], outcomes
    assert all(o["ok"] and o["frozen_ms"] > 0 for o in outcomes), outcomes

    rc, events = _node(node_modules, source, "watch", "--since", str(cursor), "--filter", "type=migration")
    assert rc == 0 and all(int(e["sequence"]) > cursor for e in events), events
    assert sorted(e["name"] for e in events if e["action"] == "completed") == ["web1", "web2"], events
    assert names_by_status(a) == {"db": "running"}
    assert {n: s for n, s in names_by_status(b).items()} == {"web1": "running", "web2": "running"}
