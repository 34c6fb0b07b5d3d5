"""scripts/drain_host.py against two in-process daemons (FakeEngine): every running container
moves, paused ones are skipped, failures are reported with status code and error type."""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from migrate import api
from migrate.remote.client import RemoteEngine
from migrate.errors import TransferError
from migrate.remote.server import create_server
from tests.fakes.engine import FakeEngine

REPO = Path(__file__).resolve().parents[2]


def _load_drain():
    spec = importlib.util.spec_from_file_location("drain_host", REPO / "scripts" / "drain_host.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture
def hosts() -> Iterator[tuple[RemoteEngine, RemoteEngine, FakeEngine, str, str]]:
    d = Path(tempfile.mkdtemp(prefix="pm-drain-", dir="/tmp"))
    source_engine = FakeEngine(hostname="a", peer_factory=lambda dest: RemoteEngine(dest))
    target_engine = FakeEngine(hostname="b")
    a, a_path = create_server(source_engine, f"unix:{d}/a.sock")
    b, b_path = create_server(target_engine, f"unix:{d}/b.sock")
    a.start()
    b.start()
    try:
        yield RemoteEngine(f"unix:{a_path}"), RemoteEngine(f"unix:{b_path}"), target_engine, f"unix:{a_path}", f"unix:{b_path}"
    finally:
        a.stop(0)
        b.stop(0)
        shutil.rmtree(d, ignore_errors=True)


def test_drain_moves_every_running_container(hosts, capsys: pytest.CaptureFixture[str]) -> None:
    source, target, target_engine, a, b = hosts
    source.image_build_busybox()
    for name in ("web-1", "web-2", "web-3", "idle"):
        source.run(api.RunOptions(image="busybox", name=name))
    source.pause("idle")
    target_engine.fail["receive_checkpoint"] = TransferError("link cut after 1 MiB", phase="transfer")

    code = _load_drain().main([a, b, "--parallel", "1", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [f["name"] for f in report["failed"]] == ["web-1"]
    assert report["failed"][0]["code"] == "UNAVAILABLE" and report["failed"][0]["type"] == "TransferError"
    assert sorted(m["name"] for m in report["moved"]) == ["web-2", "web-3"]
    assert report["skipped"] == ["idle"]
    assert sorted(c.spec.name for c in target.containers()) == ["web-2", "web-3"]
    assert sorted(c.spec.name for c in source.containers()) == ["idle", "web-1"]

    assert _load_drain().main([a, b, "--parallel", "2"]) == 0
    assert sorted(c.spec.name for c in target.containers()) == ["web-1", "web-2", "web-3"]
