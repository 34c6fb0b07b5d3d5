"""ImageStore.tag, what remove reports, and prune (issue 12): names move as docker tag moves them,
an old digest is kept while a container or a checkpoint uses it and dropped otherwise, prune
removes unnamed images nothing uses (--all: every image nothing uses) and then the layers and
blobs no image refers to. Root: layered images are mounted as overlays to get their digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from runtime.config import Paths
from runtime.errors import ImageError, ImageNotFound, InvalidArgument
from runtime.image_store import ImageStore, Removal
from tests.fakes.image_tars import layer
from tests.fakes.oci_layouts import write_oci_layout

pytestmark = pytest.mark.requires("root")

RUN = {"Cmd": ["sh"], "Env": ["A=1"]}
BASE = layer([("bin", None), ("bin/sh", "shell" * 100)])


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class Users:
    """What in_use / referenced answer: digests containers use, digests checkpoints refer to."""

    def __init__(self) -> None:
        self.containers: set[str] = set()
        self.checkpoints: set[str] = set()


@pytest.fixture
def users() -> Users:
    return Users()


@pytest.fixture
def store(tmp_path: Path, users: Users) -> ImageStore:
    return ImageStore(Paths(tmp_path / "root"), in_use=users.containers.__contains__,
                      referenced=users.checkpoints.__contains__)


def load(store: ImageStore, tmp_path: Path, name: str, top: str) -> tuple[str, str]:
    """A two-layer image (the shared BASE and a top layer of its own); (digest, top diff_id)."""
    top_tar = layer([("v", top)])
    path = write_oci_layout(tmp_path / f"layout-{top}", [(BASE, True), (top_tar, False)], RUN)
    return store.load_archive(path, name=name, platform="linux/amd64").digest, sha(top_tar)


def stored(store: ImageStore) -> list[str]:
    return sorted(p.name for p in store.images_dir.iterdir() if p.is_dir())


# --- tag -------------------------------------------------------------------------------------------


def test_tag_gives_a_name_by_name_or_digest_with_the_config(store: ImageStore, tmp_path: Path) -> None:
    digest, _ = load(store, tmp_path, "app:1", "one")
    tagged = store.tag("app:1", "app:latest")
    assert (tagged.name, tagged.digest, tagged.layers) == ("app:latest", digest, store.get("app:1").layers)
    assert store.config("app:latest") == store.config("app:1")
    assert store.tag(digest, "other").digest == digest and store.config("other") == store.config("app:1")
    assert [i.name for i in store.list()] == ["app:1", "app:latest", "other"]


def test_retagging_moves_the_name_and_drops_the_old_image_with_its_own_layer(store: ImageStore, tmp_path: Path) -> None:
    one, top_one = load(store, tmp_path, "app:1", "one")
    two, top_two = load(store, tmp_path, "app:2", "two")
    assert store.tag("app:2", "app:1").digest == two  # app:1 moved: nothing else has `one`
    assert stored(store) == [two[7:]]
    assert store.layers.layer_ids() == sorted([sha(BASE), top_two])  # one's top layer went, the base stayed
    assert not store.layers.has_layer(top_one)


def test_retagging_keeps_an_old_image_a_container_or_a_checkpoint_uses(store: ImageStore, tmp_path: Path,
                                                                       users: Users) -> None:
    one, top_one = load(store, tmp_path, "app:1", "one")
    load(store, tmp_path, "app:2", "two")
    users.checkpoints.add(one)
    store.tag("app:2", "app:1")
    assert one[7:] in stored(store) and store.layers.has_layer(top_one)  # unnamed, kept for the checkpoint
    assert store.get(one).digest == one  # still reachable by digest (restore finds it so)
    assert store.tag(one, "app:old").digest == one  # and can be named again, config from its blob
    assert store.config("app:old") is not None and store.config("app:old").env == ("A=1",)  # type: ignore[union-attr]


def test_tag_refuses_bad_names_and_unknown_sources(store: ImageStore, tmp_path: Path) -> None:
    load(store, tmp_path, "app:1", "one")
    with pytest.raises(InvalidArgument, match="invalid image name 'Bad/Name'"):
        store.tag("app:1", "Bad/Name")
    with pytest.raises(ImageNotFound, match="no such image: nope"):
        store.tag("nope", "x")
    with pytest.raises(ImageNotFound):
        store.tag("sha256:" + "0" * 64, "x")
    assert [i.name for i in store.list()] == ["app:1"]


def test_tagging_a_name_to_itself_changes_nothing(store: ImageStore, tmp_path: Path) -> None:
    digest, _ = load(store, tmp_path, "app:1", "one")
    assert store.tag("app:1", "app:1").digest == digest and stored(store) == [digest[7:]]


# --- rm --------------------------------------------------------------------------------------------


def test_remove_reports_names_images_layers_blobs_and_bytes(store: ImageStore, tmp_path: Path) -> None:
    one, top_one = load(store, tmp_path, "app:1", "one")
    two, _ = load(store, tmp_path, "app:2", "two")
    store.tag("app:1", "alias")
    assert store.remove("alias") == Removal(untagged=("alias",))  # app:1 still names it
    removal = store.remove("app:1")
    assert removal.untagged == ("app:1",) and removal.deleted == (one,)
    assert removal.layers_removed == (top_one,) and removal.blobs_removed == 2  # the top layer's blob and the config
    assert removal.bytes_freed > len("one")
    last = store.remove("app:2")
    assert last.deleted == (two,) and len(last.layers_removed) == 2 and last.blobs_removed == 3
    assert store.layers.layer_ids() == [] and not any(store.layers.blobs_dir.iterdir())


def test_remove_refuses_the_last_name_of_an_image_a_container_uses_not_one_a_checkpoint_uses(
        store: ImageStore, tmp_path: Path, users: Users) -> None:
    one, _ = load(store, tmp_path, "app:1", "one")
    users.containers.add(one)
    with pytest.raises(ImageError, match="in use") as err:
        store.remove("app:1")
    assert err.value.hint == "remove the containers that use it first (pymigrate ps -a)"
    users.containers.clear()
    users.checkpoints.add(one)
    assert store.remove("app:1").deleted == (one,)  # asked for by name: restoring that checkpoint then says so


# --- prune -----------------------------------------------------------------------------------------


def test_prune_removes_unnamed_images_nothing_uses_then_their_layers(store: ImageStore, tmp_path: Path,
                                                                     users: Users) -> None:
    one, top_one = load(store, tmp_path, "app:1", "one")
    two, _ = load(store, tmp_path, "app:2", "two")
    three, top_three = load(store, tmp_path, "app:3", "three")
    users.containers.add(one)
    users.checkpoints.add(three)
    store.tag("app:2", "app:1")  # one: unnamed, a container uses it
    store.tag("app:2", "app:3")  # three: unnamed, a checkpoint uses it
    assert store.prune() == Removal()  # nothing unnamed is unused
    users.containers.clear()
    removal = store.prune()
    assert removal.deleted == (one,) and removal.untagged == () and removal.layers_removed == (top_one,)
    assert sorted(stored(store)) == sorted([two[7:], three[7:]]) and store.layers.has_layer(top_three)
    assert [i.name for i in store.list()] == ["app:1", "app:2", "app:3"]


def test_prune_all_removes_every_image_nothing_uses_with_all_its_names(store: ImageStore, tmp_path: Path,
                                                                       users: Users) -> None:
    one, _ = load(store, tmp_path, "app:1", "one")
    two, _ = load(store, tmp_path, "app:2", "two")
    three, _ = load(store, tmp_path, "app:3", "three")
    store.tag("app:1", "alias")
    users.containers.add(two)
    users.checkpoints.add(three)
    removal = store.prune(all=True)
    assert removal.untagged == ("alias", "app:1") and removal.deleted == (one,)
    assert [i.name for i in store.list()] == ["app:2", "app:3"]
    users.containers.clear()
    users.checkpoints.clear()
    removal = store.prune(all=True)
    assert removal.untagged == ("app:2", "app:3") and sorted(removal.deleted) == sorted([two, three])
    assert store.list() == [] and store.layers.layer_ids() == [] and not any(store.layers.blobs_dir.iterdir())
    assert stored(store) == []


def test_prune_collects_blobs_and_layers_no_image_refers_to(store: ImageStore, tmp_path: Path) -> None:
    """What a pull killed after skopeo fetched (blobs) or after a layer was unpacked leaves."""
    load(store, tmp_path, "app:1", "one")
    orphan = layer([("x", "orphan")])
    store.layers.put_blob_bytes(orphan, sha(orphan), what="orphan")
    store.layers.unpack(sha(orphan), sha(orphan), source="orphan")
    removal = store.prune()
    assert removal.layers_removed == (sha(orphan),) and removal.blobs_removed == 1
    assert removal.deleted == () and [i.name for i in store.list()] == ["app:1"]


def test_prune_of_flat_images_counts_their_trees(tmp_path: Path, users: Users) -> None:
    from tests.fakes.image_tars import make_tar, sample_tree

    store = ImageStore(Paths(tmp_path / "root"), in_use=users.containers.__contains__)
    tar = tmp_path / "flat.tar"
    tar.write_bytes(make_tar(sample_tree()))
    flat = store.import_tarball("flat", tar)
    removal = store.prune(all=True)
    assert removal == Removal(untagged=("flat",), deleted=(flat.digest,), bytes_freed=flat.size_bytes)
