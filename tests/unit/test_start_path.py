"""Pieces of ``run -d``'s start path (issue 17): the cgroup lock warm-up, the state record whose
fsync comes after the shim's report, and spare upper-layer images."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from runtime import cgroup_warmup, upperfs
from runtime.cgroups import Hierarchy

needs_e2fsprogs = pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4")


# -- cgroup warm-up --------------------------------------------------------------------------------
class _Layout:
    def __init__(self, hierarchies: tuple[Hierarchy, ...]) -> None:
        self.hierarchies = hierarchies


def _hierarchy(tmp_path: Path, name: str, version: int) -> Hierarchy:
    own = tmp_path / name
    own.mkdir()
    (own / "cgroup.procs").write_text("")
    return Hierarchy(name=name, version=version, controllers=(), mount_point=tmp_path, own_path="/", own_dir=own)


def test_warmup_writes_only_into_a_v1_hierarchy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v2, v1 = _hierarchy(tmp_path, "unified", 2), _hierarchy(tmp_path, "pids", 1)
    monkeypatch.setattr("runtime.cgroups.layout", lambda: _Layout((v2, v1)))
    assert cgroup_warmup._own_procs_file() == v1.own_dir / "cgroup.procs"
    monkeypatch.setattr("runtime.cgroups.layout", lambda: _Layout((v2,)))
    assert cgroup_warmup._own_procs_file() is None  # cgroup2's manager may move us: never written


def test_warmup_rewrites_our_pid_until_stopped_and_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    monkeypatch.setattr(cgroup_warmup, "_own_procs_file", lambda: procs)
    writes: list[bytes] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(cgroup_warmup.os, "write", counting_write)
    w = cgroup_warmup.Warmup().start()
    time.sleep(0.05)
    w.stop()
    assert w._thread is None and len(writes) >= 3 and set(writes) == {str(os.getpid()).encode()}
    stopped_at = len(writes)
    time.sleep(0.02)
    assert len(writes) == stopped_at, "nothing written once stopped"
    w.start()  # launch_shim: stopped across its fork, started again after it
    time.sleep(0.02)
    w.stop()
    assert len(writes) > stopped_at


def test_warmup_without_a_v1_hierarchy_starts_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup_warmup, "_own_procs_file", lambda: None)
    w = cgroup_warmup.Warmup().start()
    assert w._thread is None
    w.stop()


def test_warmup_gives_up_quietly_when_the_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup_warmup, "_own_procs_file", lambda: tmp_path / "missing" / "cgroup.procs")
    w = cgroup_warmup.Warmup().start()
    assert w._thread is not None
    w._thread.join(timeout=5)
    assert not w._thread.is_alive()  # ended by itself: the start pays the wait as before
    w.stop()


# -- the state written before the shim's report, fsynced after it ---------------------------------
def test_state_written_without_sync_is_visible_and_synced_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from runtime.config import Paths
    from runtime.spec import ContainerSpec
    from runtime.state import StateStore, new_container_id

    store = StateStore(Paths(tmp_path))
    cid = new_container_id()
    store.create(ContainerSpec(container_id=cid, name="s1", image="busybox", image_digest="sha256:" + "0" * 64, command=("true",)))
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    store.update_state(cid, lambda s: dataclasses.replace(s, status="running", pid=42), sync=False)
    assert synced == [] and store.load_state(cid).pid == 42
    store.sync_state(cid)
    assert len(synced) == 1
    store.update_state(cid, lambda s: dataclasses.replace(s, pid=43))  # the default still syncs
    assert len(synced) == 2
    store.delete(cid)
    store.sync_state(cid)  # gone meanwhile: nothing to do
    assert len(synced) == 2


# -- spare upper-layer images ----------------------------------------------------------------------
def _spares(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.name.startswith("upperfs-spare-"))


@needs_e2fsprogs
def test_spares_are_complete_copies_taken_one_per_image(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    size = 256 << 20
    upperfs.make_spares(str(cache), size)
    assert _spares(cache) == [], "no template yet: nothing to copy"
    upperfs.create(tmp_path / "a.img", size, template_dir=cache)  # makes the template
    upperfs.make_spares(str(cache), size)
    spares = _spares(cache)
    template = cache / f"upperfs-template-{size}-v1.img"
    assert len(spares) == upperfs.SPARES and all(p.read_bytes() == template.read_bytes() for p in spares)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in spares)
    upperfs.make_spares(str(cache), size)
    assert _spares(cache) == spares, "topped up only to SPARES"
    inodes = {p.stat().st_ino for p in spares}
    upperfs.create(tmp_path / "b.img", size, template_dir=cache)
    assert (tmp_path / "b.img").stat().st_ino in inodes, "a spare renamed into place, not a new copy"
    assert len(_spares(cache)) == upperfs.SPARES - 1
    upperfs.check_untrusted(tmp_path / "b.img")
    upperfs.make_spares(str(cache), 512 << 20)  # another size has no template: nothing
    assert len(_spares(cache)) == upperfs.SPARES - 1


@needs_e2fsprogs
def test_a_spare_never_replaces_an_existing_image(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    size = 256 << 20
    upperfs.create(tmp_path / "a.img", size, template_dir=cache)
    upperfs.make_spares(str(cache), size)
    (tmp_path / "taken.img").write_bytes(b"someone's")
    with pytest.raises(FileExistsError):
        upperfs.create(tmp_path / "taken.img", size, template_dir=cache)
    assert (tmp_path / "taken.img").read_bytes() == b"someone's"
    assert len(_spares(cache)) == upperfs.SPARES
