"""Unit tests never share a bridge's address pool with real state roots nor send ARP probes
(runtime/bridge_pool.py): each test gets its own pool registry under its tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_bridge_pools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMIGRATE_BRIDGES_DIR", str(tmp_path / "bridges"))
    monkeypatch.setenv("PYMIGRATE_ARP_PROBE_MS", "0")
