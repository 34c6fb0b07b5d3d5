"""Named volumes: the store (runtime/volumes.py), -v/--mount parsing and spec validation (issue 13)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from migrate.migration.upper_sync import RACY_MARGIN_NS
from migrate.volumes import VolumeSync, check_incoming, install, merge_staged
from runtime.config import Paths
from runtime.container import parse_mount, parse_volume, validate_fields
from runtime.errors import InvalidArgument, InvalidSpec, VolumeInUse, VolumeNotFound
from runtime.spec import ContainerSpec, Volume
from runtime.volumes import VolumeConflict, VolumeStore, seed_from_tree, validate_volume_name
from tests.unit.test_service import sockdir  # noqa: F401 (a fixture)


def _store(tmp_path: Path, users: dict[str, list[str]] | None = None) -> VolumeStore:
    users = users or {}
    return VolumeStore(Paths(tmp_path), users=lambda name: users.get(name, []))


def test_create_list_inspect_remove(tmp_path: Path) -> None:
    store = _store(tmp_path)
    record, made = store.create("data", {"tier": "db"})
    assert made and record.name == "data" and record.labels == {"tier": "db"}
    assert Path(record.mountpoint) == tmp_path / "volumes" / "data" / "_data" and Path(record.mountpoint).is_dir()
    assert json.loads((tmp_path / "volumes" / "data" / "volume.json").read_text())["driver"] == "local"
    again, made_again = store.create("data")
    assert not made_again and again.created_at == record.created_at  # docker: an existing one is kept
    random_one, _ = store.create()
    assert len(random_one.name) == 64
    assert [r.name for r in store.list()] == sorted(["data", random_one.name])
    assert store.remove("data") and not store.exists("data")
    with pytest.raises(VolumeNotFound, match="no such volume: data"):
        store.remove("data")
    assert store.remove("data", force=True) is False
    assert not [p for p in (tmp_path / "volumes").iterdir() if p.name.startswith((".new-", ".rm-"))]


def test_remove_and_prune_keep_volumes_in_use(tmp_path: Path) -> None:
    store = _store(tmp_path, {"db": ["redis-1"]})
    store.create("db")
    store.create("spare")
    (Path(store.data_dir("spare")) / "f").write_bytes(b"x" * 10)
    with pytest.raises(VolumeInUse, match="volume db is in use by container redis-1") as exc:
        store.remove("db", force=True)  # -f does not take a used volume (docker)
    assert exc.value.hint
    assert store.get("db").used_by == ("redis-1",)
    result = store.prune()
    assert result.removed == ("spare",) and result.bytes_freed == 10
    assert store.exists("db")


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "-x", "a" * 129, "a\0b", 7])
def test_names_are_never_paths(name: object) -> None:
    with pytest.raises(InvalidArgument):
        validate_volume_name(name)


def test_parse_volume_name_or_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_volume("data:/data:ro") == Volume(source="", target="/data", readonly=True, name="data")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    assert parse_volume("./d:/x") == Volume(source=str(tmp_path / "d"), target="/x")
    with pytest.raises(InvalidArgument, match="invalid volume name"):
        parse_volume("bad$name:/x")


def test_parse_mount(tmp_path: Path) -> None:
    assert parse_mount("type=volume,source=db,target=/var/lib/db,readonly") == Volume("", "/var/lib/db", True, "db")
    assert parse_mount("src=db,dst=/d,ro=false") == Volume("", "/d", False, "db")
    assert parse_mount(f"type=bind,source={tmp_path},target=/h") == Volume(str(tmp_path), "/h", False)
    assert len(parse_mount("type=volume,target=/anon").name) == 64
    for bad in ("type=bind,source=rel,target=/x", "type=tmpfs,target=/x", "source=db", "type=volume,target=/x,size=1"):
        with pytest.raises(InvalidArgument):
            parse_mount(bad)


def _fields(volumes: tuple[Volume, ...]) -> tuple[Volume, ...]:
    return validate_fields(name=None, hostname=None, env=(), workdir="/", memory_bytes=None, cpus=None, pids_limit=None,
                           network="none", ip=None, volumes=volumes, cgroup_parent=None)["volumes"]


def test_validate_fields_checks_names(tmp_path: Path) -> None:
    assert _fields((Volume("", "/d", name="db"),)) == (Volume("", "/d", name="db"),)
    assert _fields((Volume(str(tmp_path), "/d", name="db"),))[0].source == str(tmp_path)
    with pytest.raises(InvalidSpec) as exc:
        _fields((Volume("", "/d", name="../../etc"),))
    assert exc.value.field == "volumes[0].name"
    with pytest.raises(InvalidSpec):
        _fields((Volume("", "/d", name=3),))  # type: ignore[arg-type]


def test_old_records_load_without_a_name() -> None:
    spec = ContainerSpec.from_dict({"container_id": "a" * 32, "name": "x", "image": "i", "image_digest": "sha256:" + "0" * 64,
                                    "command": ["sh"], "volumes": [{"source": "/srv", "target": "/srv", "readonly": False}]})
    assert spec.volumes == (Volume("/srv", "/srv", False, ""),)


def test_resolve_makes_missing_volumes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    vols, made = store.resolve((Volume("", "/d", name="db"), Volume("/srv", "/srv")))
    assert made == ("db",) and vols[0].source == str(store.data_dir("db")) and vols[1] == Volume("/srv", "/srv")
    with pytest.raises(VolumeNotFound):
        store.resolve((Volume("", "/d", name="other"),), create=False)


def test_seed_copies_the_image_content_once(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "data" / "sub").mkdir(parents=True)
    (tree / "data" / "sub" / "f").write_text("seed")
    os.symlink("/etc", tree / "escape")
    store = _store(tmp_path / "root")
    store.create("v")
    data = store.data_dir("v")
    seed_from_tree(data, tree, "/data")
    assert (data / "sub" / "f").read_text() == "seed"
    (data / "sub" / "f").write_text("mine")
    seed_from_tree(data, tree, "/data")  # not empty any more: kept
    assert (data / "sub" / "f").read_text() == "mine"
    store.create("w")
    seed_from_tree(store.data_dir("w"), tree, "/escape")  # out of the tree: nothing
    assert not os.listdir(store.data_dir("w"))


# -- restore and migration (migrate/volumes.py) -------------------------------------------------

_SPEC = ContainerSpec(container_id="a" * 32, name="db", image="i", image_digest="sha256:" + "0" * 64, command=("sh",))


def _carried(tmp_path: Path, name: str, content: str) -> Path:
    tree = tmp_path / "root" / "tmp" / "scratch" / "volumes" / name
    tree.mkdir(parents=True)
    (tree / "f").write_text(content)
    return tree.parent


def test_install_adopts_carried_volumes_and_uninstall_gives_them_back(tmp_path: Path) -> None:
    from migrate.volumes import uninstall

    store = _store(tmp_path / "root")
    carried = _carried(tmp_path, "db", "from the archive")
    spec = dataclasses_replace(_SPEC, volumes=(Volume("", "/data", name="db"), Volume("/srv", "/srv")))
    resolved, adopted = install(store, spec, carried, migration_id="m1")
    assert adopted == [("db", "made")] and resolved.volumes[1] == Volume("/srv", "/srv")
    assert (Path(resolved.volumes[0].source) / "f").read_text() == "from the archive"
    assert store.adopted_by("m1") == [("db", "made")] and store.adopted_by("m2") == []
    uninstall(store, adopted)
    assert not store.exists("db")


def test_install_fills_an_empty_volume_refuses_one_with_data_and_needs_missing_ones(tmp_path: Path) -> None:
    store = _store(tmp_path / "root")
    store.create("db")
    spec = dataclasses_replace(_SPEC, volumes=(Volume("", "/data", name="db"),))
    _, adopted = install(store, spec, _carried(tmp_path, "db", "x"))
    assert adopted == [("db", "filled")]
    store.unadopt("db", "filled")  # a failed restore: empty again, the volume stays
    assert store.exists("db") and not any(store.data_dir("db").iterdir())
    (store.data_dir("db") / "mine").write_text("keep")
    with pytest.raises(VolumeConflict, match="volume db exists with content"):
        install(store, spec, _carried(tmp_path / "2", "db", "y"))
    assert (store.data_dir("db") / "mine").read_text() == "keep"
    other = dataclasses_replace(_SPEC, volumes=(Volume("", "/o", name="other"),))
    with pytest.raises(VolumeNotFound) as exc:
        install(store, other, None)
    assert "--ignore-volumes" in (exc.value.hint or "")


def test_check_incoming_refuses_before_the_freeze(tmp_path: Path) -> None:
    from migrate.errors import IncompatibleHost
    from runtime.errors import Unsupported

    store = _store(tmp_path / "root", {"db": ["web"]})
    store.create("db")
    named_spec = dataclasses_replace(_SPEC, volumes=(Volume("/elsewhere/_data", "/data", name="db"),))
    with pytest.raises(VolumeConflict, match="in use by container web"):
        check_incoming(store, named_spec, mode="cold", allow_peer_volumes=False)
    fresh = dataclasses_replace(_SPEC, volumes=(Volume("", "/data", name="new"),))
    check_incoming(store, fresh, mode="cold", allow_peer_volumes=False)
    with pytest.raises(Unsupported):
        check_incoming(store, fresh, mode="postcopy", allow_peer_volumes=False)
    bind = dataclasses_replace(_SPEC, volumes=(Volume(str(tmp_path / "missing"), "/b"),))
    with pytest.raises(InvalidSpec, match="does not take volumes from peers"):
        check_incoming(store, bind, mode="cold", allow_peer_volumes=False)
    with pytest.raises(IncompatibleHost, match="bind mount /b .* does not exist"):
        check_incoming(store, bind, mode="cold", allow_peer_volumes=True)
    with pytest.raises(InvalidArgument):
        check_incoming(store, dataclasses_replace(_SPEC, volumes=(Volume("", "/d", name="../x"),)), mode="cold",
                       allow_peer_volumes=True)


def test_volume_sync_sends_only_the_changes_and_the_target_merges_them(tmp_path: Path) -> None:
    from migrate.archive import ArchiveWriter, read_archive

    src = tmp_path / "src"
    src.mkdir()
    (src / "keep").write_text("same")
    (src / "gone").write_text("old")
    (src / "grow").write_text("1")
    spec = dataclasses_replace(_SPEC, volumes=(Volume(str(src), "/data", name="db"),))
    time.sleep(RACY_MARGIN_NS / 1e9 + 0.05)  # older than the racy margin: unchanged entries stay out
    sync = VolumeSync(spec)
    stage_file, final_file = tmp_path / "stage.pmc", tmp_path / "final.pmc"
    with open(stage_file, "wb") as f:
        writer = ArchiveWriter(f, compress="none")
        writer.write_manifest({"kind": "test"})
        sync.stage(writer)
        writer.close()
    (src / "gone").unlink()
    (src / "grow").write_text("12")
    (src / "new").write_text("n")
    with open(final_file, "wb") as f:
        writer = ArchiveWriter(f, compress="none")
        writer.write_manifest({"kind": "test"})
        trailer = sync.add_final(writer)
        summary = writer.close(trailer=trailer)
    sent = {m.name for m in summary.members}
    assert "volumes/db/keep" not in sent and {"volumes/db/grow", "volumes/db/new"} <= sent
    assert trailer["volume_deltas"]["db"]["deleted"] == ["gone"]
    staged, scratch = tmp_path / "t" / "staged", tmp_path / "t" / "scratch"
    with open(stage_file, "rb") as f:
        read_archive(f, staged)
    with open(final_file, "rb") as f:
        manifest = read_archive(f, scratch)
    merge_staged(scratch, manifest["volume_deltas"], staged / "volumes")
    merged = scratch / "volumes" / "db"
    assert sorted(p.name for p in merged.iterdir()) == ["grow", "keep", "new"]
    assert (merged / "grow").read_text() == "12" and (merged / "keep").read_text() == "same"


def test_merge_staged_refuses_peer_names_that_are_paths(tmp_path: Path) -> None:
    from migrate.errors import ArchiveError

    with pytest.raises(ArchiveError, match="invalid volume name"):
        merge_staged(tmp_path, {"../../etc": {"changed": [], "deleted": []}}, tmp_path)


def dataclasses_replace(spec: ContainerSpec, **changes: object) -> ContainerSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def test_volume_rpcs_over_a_unix_socket(tmp_path: Path, sockdir: Path) -> None:  # noqa: F811
    from migrate.api import VolumePruneResult
    from migrate.engine import LocalEngine
    from runtime.errors import ContainerNotFound
    from tests.unit.test_service import start_daemon

    d = start_daemon(f"unix:{sockdir}/v.sock", LocalEngine(tmp_path / "root"), spool_dir=sockdir / "spool")  # type: ignore[arg-type]
    try:
        client = d.client
        info = client.volume_create("db", ("tier=db",))
        assert (info.name, info.labels, info.used_by) == ("db", ("tier=db",), ())
        assert len(client.volume_create().name) == 64  # no name: a random one
        (Path(info.mountpoint) / "f").write_bytes(b"x" * 5)
        assert client.volume_inspect("db") == info and "db" in [v.name for v in client.volumes()]
        with pytest.raises(ContainerNotFound, match="no such volume: nope") as exc:
            client.volume_inspect("nope")
        assert exc.value.hint
        with pytest.raises(InvalidArgument, match="invalid volume name"):
            client.volume_create("../x")
        assert client.volume_remove("nope", force=True) is False
        result = client.volume_prune()
        assert "db" in result.removed and result.bytes_freed == 5 and isinstance(result, VolumePruneResult)
        assert client.volumes() == []
    finally:
        d.close()


def test_a_volume_a_restore_holds_is_in_use_for_remove_and_prune(tmp_path: Path) -> None:
    from runtime.state import StateStore

    paths = Paths(tmp_path)
    state = StateStore(paths)
    store = VolumeStore(paths, users=lambda name: [], hold=state.hold)
    store.create("db")
    with state.hold("volume:db", "restore container"):  # from install until the record exists
        with pytest.raises(VolumeInUse, match="a restore installing it"):
            store.remove("db")
        assert store.prune().removed == ()
    assert store.remove("db")
