"""runtime/criu_boot_facts.py: CRIU's version and cpuinfo.img asked once per boot and binary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime import criu, criu_boot_facts


@pytest.fixture
def kept_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for CRIU's RUNDIR tmpfs and a boot id we control."""
    rundir = tmp_path / "rundir"
    rundir.mkdir()
    boot = tmp_path / "boot_id"
    boot.write_text("boot-1\n")
    monkeypatch.setattr(criu_boot_facts, "_dir", lambda binary: rundir)
    monkeypatch.setattr(criu_boot_facts, "BOOT_ID", boot)
    return rundir


def _fake_criu(path: Path, version: str) -> str:
    path.write_text(f"#!/bin/sh\necho 'Version: {version}'\n")
    path.chmod(0o755)
    return str(path)


def test_kept_per_boot_and_binary(kept_dir: Path, tmp_path: Path) -> None:
    binary = _fake_criu(tmp_path / "criu", "4.1.1")
    assert criu_boot_facts.get(binary, "version") is None
    criu_boot_facts.put(binary, "version", b"4.1.1")
    assert criu_boot_facts.get(binary, "version") == b"4.1.1"
    [entry] = kept_dir.iterdir()
    assert entry.stat().st_mode & 0o777 == 0o600

    (tmp_path / "boot_id").write_text("boot-2\n")  # a reboot (the directory survived it)
    assert criu_boot_facts.get(binary, "version") is None
    (tmp_path / "boot_id").write_text("boot-1\n")
    st = os.stat(binary)
    os.utime(binary, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a rebuilt binary
    assert criu_boot_facts.get(binary, "version") is None


def test_nothing_kept_without_the_tmpfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(criu_boot_facts, "_dir", lambda binary: None)
    binary = _fake_criu(tmp_path / "criu", "4.1.1")
    criu_boot_facts.put(binary, "version", b"4.1.1")
    assert criu_boot_facts.get(binary, "version") is None


def test_version_is_asked_once_per_boot(kept_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = _fake_criu(tmp_path / "criu", "4.1.1")
    monkeypatch.setattr(criu, "_VERSIONS", {})
    assert criu.SwrkCriu(binary).version() == "4.1.1"
    monkeypatch.setattr(criu, "_VERSIONS", {})  # another process, which must not run CRIU

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("criu --version ran again")

    monkeypatch.setattr(criu.subprocess, "run", no_run)
    assert criu.SwrkCriu(binary).version() == "4.1.1"


def test_cpuinfo_dump_runs_criu_once_per_boot(kept_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = _fake_criu(tmp_path / "criu", "4.1.1")
    runs: list[list[str]] = []

    def fake_cli(argv: list[str], operation: str, log_path: Path) -> None:
        runs.append(argv)
        (Path(argv[argv.index("-D") + 1]) / "cpuinfo.img").write_bytes(b"\x01cpu")

    monkeypatch.setattr(criu, "_run_cli", fake_cli)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    criu.cpuinfo_dump(first, binary)
    criu.cpuinfo_dump(second, binary)
    assert len(runs) == 1
    assert (second / "cpuinfo.img").read_bytes() == (first / "cpuinfo.img").read_bytes() == b"\x01cpu"
