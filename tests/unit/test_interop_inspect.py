"""checkpoint inspect FILE|REF: one summary for podman, CRI-O and native archives (issue 16)."""

from __future__ import annotations

import io
import struct
import tempfile
from pathlib import Path

import pytest

from migrate.archive import ArchiveWriter
from migrate.errors import UnsafeMember
from migrate.interop import inspect
from runtime.errors import InvalidArgument, Unsupported
from tests.fakes.foreign_archives import IMAGE_ID, Member, crio_members, podman_members, write_archive


def _no_leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("pymigrate-inspect-*")}


def test_podman_archive_summary_and_text(tmp_path: Path) -> None:
    before = _no_leftovers()
    path = write_archive(tmp_path / "ck.tar.gz", podman_members())
    s = inspect.inspect_file(path)
    assert (s["format"], s["engine"]) == ("podman", "podman")
    assert s["container"] == {"name": "web", "id": "0" * 64}
    assert s["image"] == {"name": "localhost/pma-base:1", "id": IMAGE_ID}
    assert s["sizes"]["memory_pages_bytes"] == 8192 and s["sizes"]["rootfs_diff_bytes"] == 2048
    assert s["sizes"]["images_bytes"] == sum(len(m.data) for m in podman_members() if m.name.startswith("checkpoint/"))
    assert s["network"][0]["ip"] == "10.88.0.5" and s["network"][0]["mac"] == "b2:4d:5c:b2:54:ab"
    assert {m["destination"] for m in s["mounts"]} == {"/proc", "/etc/hosts"}
    assert s["source"] == {"kind": "file", "path": str(path), "bytes": path.stat().st_size, "compression": "zstd"}
    assert s["dump_stats"] == {}  # the placeholder stats-dump is not a CRIU image: shown as nothing
    text = inspect.render(s)
    for fact in ("Engine:       podman", "web (000000000000)", "localhost/pma-base:1 (21c27723d3b3)",
                 "memory pages 8.0 KiB", "10.88.0.5/16 gw 10.88.0.1 mac b2:4d:5c:b2:54:ab", "/etc/hosts"):
        assert fact in text
    assert _no_leftovers() == before


def test_crio_archive_summary(tmp_path: Path) -> None:
    s = inspect.inspect_file(write_archive(tmp_path / "k.tar", crio_members(), compress="none"))
    assert s["engine"] == "cri-o" and s["container"]["name"] == "counter"
    assert s["criu_version"] == "4.1.1"  # from dump.log, which CRI-O keeps
    assert s["pod"] == {"name": "counters", "namespace": "default"}
    assert s["network"] == [{"network": "pod", "interface": "", "ip": "10.85.0.7", "prefix": "", "gateway": "", "mac": ""}]
    assert s["runtime"] == "runc" and s["checkpointed_at"] is not None
    assert "Pod:" in inspect.render(s)


def test_stats_dump_decoded(tmp_path: Path) -> None:
    pytest.importorskip("google.protobuf")
    try:
        from runtime.criu import _pycriu_module

        stats_pb2 = _pycriu_module("images/stats_pb2")
        magic = _pycriu_module("images/magic")
    except (ImportError, OSError):
        pytest.skip("pycriu is not installed")
    entry = stats_pb2.stats_entry()
    entry.dump.freezing_time = 1500
    entry.dump.frozen_time = 20000
    entry.dump.memdump_time = 300
    entry.dump.memwrite_time = 400
    entry.dump.pages_scanned = 47
    entry.dump.pages_skipped_parent = 0
    entry.dump.pages_written = 33
    entry.dump.pages_lazy = 0
    raw = entry.SerializeToString()
    data = struct.pack("<II", magic.by_name["IMG_SERVICE"], magic.by_name["STATS"]) + struct.pack("<I", len(raw)) + raw
    members = [m for m in podman_members() if m.name != "stats-dump"] + [Member("stats-dump", data)]
    s = inspect.inspect_file(write_archive(tmp_path / "ck.tar", members))
    assert s["dump_stats"]["frozen_ms"] == 20.0 and s["dump_stats"]["pages_written"] == 33
    assert "frozen 20.0 ms" in inspect.render(s)


def test_hostile_archive_refused_and_nothing_left(tmp_path: Path) -> None:
    before = _no_leftovers()
    with pytest.raises(UnsafeMember, match="evil"):
        inspect.inspect_file(write_archive(tmp_path / "x.tar", [*podman_members(), Member("evil", b"x")]))
    assert _no_leftovers() == before


def test_native_archive_summary(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with ArchiveWriter(buf) as w:
        w.write_manifest({"checkpoint_id": "abcd1234", "criu_version": "4.1.1", "container": {"name": "web-1"},
                          "image": {"name": "busybox", "digest": "sha256:1"}})
        w.close({})
    path = tmp_path / "n.pma"
    path.write_bytes(buf.getvalue())
    s = inspect.inspect_file(path)
    assert (s["format"], s["container"]["name"], s["criu_version"], s["image"]["name"]) == ("native", "web-1", "4.1.1", "busybox")
    assert "Engine:       pymigrate" in inspect.render(s)


def test_target_dispatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert inspect.inspect_target(object(), "abcd1234") is None  # a checkpoint id: the manifest, as before
    with pytest.raises(InvalidArgument, match="no such file"):
        inspect.inspect_target(object(), str(tmp_path / "gone.tar.gz"))
    with pytest.raises(InvalidArgument, match="not a checkpoint id"):
        inspect.inspect_target(object(), "web")  # a bare word is never pulled from Docker Hub
    with pytest.raises(Unsupported):
        inspect.inspect_target(object(), "localhost:5000/ckpt/web:1")  # a remote engine has no image store
    write_archive(tmp_path / "ck.tar.gz", podman_members())
    monkeypatch.chdir(tmp_path)
    assert inspect.inspect_target(object(), "ck.tar.gz")["engine"] == "podman"
