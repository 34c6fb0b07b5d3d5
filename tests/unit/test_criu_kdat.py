"""runtime.criu_kdat: finding CRIU's kdat path in its binary, and judging the directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runtime import criu_kdat


def _binary(tmp_path: Path, *strings: bytes) -> Path:
    path = tmp_path / "criu"
    path.write_bytes(b"\x7fELF\x00junk\x00" + b"\x00".join(strings) + b"\x00tail\x00")
    return path


def test_path_is_read_from_the_binary(tmp_path: Path) -> None:
    binary = _binary(tmp_path, b"Loaded kdat cache from %s", b"/run/pymigrate-criu/criu.kdat", b"other")
    assert criu_kdat.cache_path(binary) == Path("/run/pymigrate-criu/criu.kdat")


def test_a_relative_or_odd_match_is_skipped(tmp_path: Path) -> None:
    binary = _binary(tmp_path, b"x\x01/criu.kdat", b"/run/criu.kdat")
    assert criu_kdat.cache_path(binary) == Path("/run/criu.kdat")


def test_no_path_in_the_binary(tmp_path: Path) -> None:
    binary = _binary(tmp_path, b"nothing here")
    assert criu_kdat.cache_path(binary) is None
    st = criu_kdat.status(binary)
    assert not st.ok and "no kdat cache path" in st.detail
    assert criu_kdat.cache_path(tmp_path / "missing") is None


def test_status_of_a_directory_not_on_tmpfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rundir = tmp_path / "rundir"
    binary = _binary(tmp_path, str(rundir / "criu.kdat").encode())
    st = criu_kdat.status(binary)
    assert not st.ok and "does not exist" in st.detail
    rundir.mkdir()
    monkeypatch.setattr(criu_kdat, "is_tmpfs", lambda path: False)
    st = criu_kdat.status(binary)
    assert not st.ok and "not on a tmpfs" in st.detail and "30 ms" in st.detail
    monkeypatch.setattr(criu_kdat, "is_tmpfs", lambda path: True)
    (rundir / "criu.kdat").write_bytes(b"k")
    st = criu_kdat.status(binary)
    assert st.ok and st.cached


def test_a_used_directory_is_never_mounted_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rundir = tmp_path / "run"
    rundir.mkdir()
    (rundir / "something.pid").write_text("1")
    binary = _binary(tmp_path, str(rundir / "criu.kdat").encode())
    monkeypatch.setattr(criu_kdat, "is_tmpfs", lambda path: False)
    mounted: list[str] = []
    monkeypatch.setattr("runtime.syscalls.LinuxSyscalls.mount", lambda self, *a: mounted.append(a[1]))
    st = criu_kdat.ensure_cache_dir(binary)
    assert mounted == [] and not st.ok


def test_an_empty_directory_gets_a_tmpfs_and_a_stale_tmp_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rundir = tmp_path / "kdat"
    binary = _binary(tmp_path, str(rundir / "criu.kdat").encode())
    mounted: list[tuple] = []
    monkeypatch.setattr(criu_kdat, "is_tmpfs", lambda path: bool(mounted))
    monkeypatch.setattr("runtime.syscalls.LinuxSyscalls.mount", lambda self, *a: mounted.append(a))
    st = criu_kdat.ensure_cache_dir(binary)
    assert mounted and mounted[0][1] == str(rundir) and mounted[0][2] == "tmpfs" and st.ok
    stale = rundir / "criu.kdat.tmp"
    stale.write_bytes(b"")
    os.utime(stale, (time.time() - 600, time.time() - 600))
    criu_kdat.ensure_cache_dir(binary)
    assert not stale.exists()
    fresh = rundir / "criu.kdat.tmp"
    fresh.write_bytes(b"")  # a criu writing right now: left alone
    criu_kdat.ensure_cache_dir(binary)
    assert fresh.exists()


def test_is_tmpfs_on_real_filesystems() -> None:
    assert criu_kdat.is_tmpfs(Path("/dev/shm"))
    assert not criu_kdat.is_tmpfs(Path("/proc"))
