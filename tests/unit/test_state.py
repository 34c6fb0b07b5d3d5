"""State store: atomic writes, locking, name reservation, lookups."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from runtime.config import Paths
from runtime.errors import ContainerError, ContainerExists, ContainerNotFound, InvalidArgument
from runtime.spec import ContainerSpec, ContainerState
from runtime.state import StateStore, atomic_write, new_container_id, validate_name


def spec(name: str, cid: str | None = None) -> ContainerSpec:
    return ContainerSpec(container_id=cid or new_container_id(), name=name, image="busybox", image_digest="sha256:" + "0" * 64, command=("true",))


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(Paths(tmp_path))


def test_create_load_update(store: StateStore) -> None:
    s = spec("web")
    store.create(s)
    assert store.load_spec(s.container_id) == s
    assert store.load_state(s.container_id).status == "created"
    new = store.update_state(s.container_id, lambda st: dataclasses.replace(st, status="running", pid=42))
    assert new.pid == 42 and store.load_state(s.container_id) == new
    assert json.loads((store.dir(s.container_id) / "state.json").read_text())["pid"] == 42


def test_duplicate_name_refused(store: StateStore) -> None:
    store.create(spec("web"))
    with pytest.raises(ContainerExists, match="web"):
        store.create(spec("web"))
    assert len(store.ids()) == 1


def test_lookup_by_name_id_and_unique_prefix(store: StateStore) -> None:
    a = spec("a", "ab" + "0" * 30)
    b = spec("b", "ac" + "0" * 30)
    store.create(a)
    store.create(b)
    assert store.resolve("a") == a.container_id  # a name wins over an id prefix
    assert store.resolve(b.container_id) == b.container_id
    assert store.resolve("ab") == a.container_id
    with pytest.raises(ContainerNotFound):
        store.resolve("zz")
    with pytest.raises(ContainerNotFound):
        store.resolve("")


def test_ambiguous_prefix(store: StateStore) -> None:
    store.create(spec("one", "ff" + "1" * 30))
    store.create(spec("two", "ff" + "2" * 30))
    with pytest.raises(ContainerError, match="ambiguous"):
        store.resolve("ff")
    assert store.resolve("ff1") == "ff" + "1" * 30


def test_delete_removes_everything(store: StateStore) -> None:
    s = spec("gone")
    store.create(s)
    (store.dir(s.container_id) / "upper").mkdir()
    store.delete(s.container_id)
    assert not store.dir(s.container_id).exists()
    with pytest.raises(ContainerNotFound):
        store.resolve("gone")
    with pytest.raises(ContainerNotFound):
        store.write_state(s.container_id, ContainerState())


def test_atomic_write_leaves_old_content_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.json"
    atomic_write(target, b"old")

    def boom(fd: int) -> None:
        raise OSError(5, "EIO")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp file left


def _reserve(root: str, name: str, q) -> None:  # noqa: ANN001
    try:
        StateStore(Paths(Path(root))).create(spec(name))
        q.put("ok")
    except ContainerExists:
        q.put("exists")


def test_concurrent_reservations_of_one_name_create_one_record(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_reserve, args=(str(tmp_path), "same", q)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    results = sorted(q.get(timeout=5) for _ in procs)
    q.close()
    q.join_thread()
    assert results == ["exists"] * 7 + ["ok"]
    assert len(StateStore(Paths(tmp_path)).ids()) == 1


@pytest.mark.parametrize("name", ["a", "web-1", "A.b_c", "x" * 63])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", ".a", "a b", "a/b", "x" * 64, "é"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid container name"):
        validate_name(name)


def test_generated_names_are_valid_and_free(store: StateStore) -> None:
    names = set()
    for _ in range(20):
        n = store.generate_name()
        validate_name(n)
        store.create(spec(n))
        names.add(n)
    assert len(names) == 20


def test_container_ids_are_32_hex() -> None:
    cid = new_container_id()
    assert len(cid) == 32 and int(cid, 16) >= 0
