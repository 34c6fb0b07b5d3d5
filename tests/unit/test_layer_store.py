"""Layers by digest (runtime/layer_store.py, tarsafe.extract_layer): overlayfs whiteouts, digests
re-hashed from what was unpacked, forged layers and blobs refused with nothing stored, layers
shared between images and collected when no image needs them. Root: whiteouts are device nodes
and ``trusted.*`` xattrs."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from runtime.config import Paths
from runtime.errors import UnsafeArchive
from runtime.image_store import ImageStore
from runtime.layer_store import LayerDigestMismatch, LayerStore
from runtime.tarsafe import extract_layer
from tests.fakes.image_tars import Member, layer, make_tar
from tests.fakes.oci_layouts import write_oci_layout

pytestmark = pytest.mark.requires("root")

RUN = {"Cmd": ["sh"]}


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def test_whiteouts_become_overlayfs_whiteouts(tmp_path: Path) -> None:
    tar = layer([("etc", None), ("etc/.wh.passwd", ""), ("d", None), ("d/.wh..wh..opq", ""), ("d/kept", "k")])
    stats, diff_id = extract_layer(io.BytesIO(gzip.compress(tar)), tmp_path, source="l")
    assert diff_id == sha(tar)  # of the uncompressed tar, as the config's diff_ids
    st = os.lstat(tmp_path / "etc/passwd")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(tmp_path / "d", "trusted.overlay.opaque") == b"y"
    assert (tmp_path / "d/kept").read_text() == "k"
    assert stats.whiteouts == 2


def test_a_layer_entry_replacing_its_own_whiteout_is_a_fresh_directory(tmp_path: Path) -> None:
    tar = layer([(".wh.d", ""), ("d", None), ("d/new", "n")])
    extract_layer(io.BytesIO(tar), tmp_path, source="l")
    assert (tmp_path / "d").is_dir() and os.getxattr(tmp_path / "d", "trusted.overlay.opaque") == b"y"


def test_devices_and_trusted_xattrs_in_a_layer_are_still_refused_or_dropped(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(UnsafeArchive, match="device nodes"):
        extract_layer(io.BytesIO(make_tar([Member("null", kind="chr")])), tmp_path / "a", source="l")
    forged = io.BytesIO()
    import tarfile

    with tarfile.open(fileobj=forged, mode="w", format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo("d")
        ti.type = tarfile.DIRTYPE
        ti.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc"}
        t.addfile(ti)
    (tmp_path / "b").mkdir()
    extract_layer(io.BytesIO(forged.getvalue()), tmp_path / "b", source="l")
    assert "trusted.overlay.redirect" not in os.listxattr(tmp_path / "b/d")


def test_a_layer_that_is_not_its_diff_id_is_refused_and_not_stored(tmp_path: Path) -> None:
    store = LayerStore(Paths(tmp_path))
    data = layer([("f", "real")])
    blob = store.put_blob(io.BytesIO(data), sha(data), what="layer")
    with pytest.raises(LayerDigestMismatch) as err:
        store.unpack(sha(b"what the manifest claimed"), blob, source="peer")
    assert err.value.actual == sha(data)
    assert store.layer_ids() == [] and list(store.tmp_dir.iterdir()) == []


def test_a_blob_that_is_not_its_digest_is_refused(tmp_path: Path) -> None:
    store = LayerStore(Paths(tmp_path))
    with pytest.raises(LayerDigestMismatch):
        store.put_blob(io.BytesIO(b"forged"), sha(b"genuine"), what="layer 0")
    assert not any(store.blobs_dir.iterdir()) and list(store.tmp_dir.iterdir()) == []


def test_images_share_layers_and_rm_collects_only_unused_ones(tmp_path: Path) -> None:
    images = ImageStore(Paths(tmp_path / "state"))
    base = layer([("bin", None), ("bin/sh", "shell")])
    one = write_oci_layout(tmp_path / "one", [(base, True), (layer([("v", "1")]), False)], RUN)
    two = write_oci_layout(tmp_path / "two", [(base, True), (layer([("v", "2")]), False)], RUN)
    a = images.load_archive(one, name="a:1", platform="linux/amd64")
    b = images.load_archive(two, name="b:1", platform="linux/amd64")
    assert a.layers[0] == b.layers[0] == sha(base) and len(images.layers.layer_ids()) == 3
    # top first, each by its short link
    assert [p.resolve() for p in a.lowers] == [images.layers.diff_dir(d).resolve() for d in reversed(a.layers)]
    assert all(p.parent == images.layers.links_dir and len(p.name) == 16 for p in a.lowers)
    with images.view("b:1") as root:
        assert (root / "v").read_text() == "2" and (root / "bin/sh").read_text() == "shell"
    images.remove("a:1")
    assert images.layers.layer_ids() == sorted(b.layers)  # a's top went, the shared base stayed
    assert images.has_digest(b.digest) and not images.has_digest(a.digest)
    images.remove("b:1")
    assert images.layers.layer_ids() == [] and not any(images.layers.blobs_dir.iterdir())
    assert not any(images.layers.links_dir.iterdir())  # the short links went with their layers


def test_the_digest_of_layers_is_the_digest_of_the_same_tree_flattened(tmp_path: Path) -> None:
    lower = layer([("etc", None), ("etc/a", "a"), ("etc/b", "b"), ("d", None), ("d/x", "x")])
    upper = layer([("etc/.wh.a", ""), ("d", None), ("d/.wh..wh..opq", ""), ("d/y", "y")])
    images = ImageStore(Paths(tmp_path / "state"))
    layered = images.load_archive(write_oci_layout(tmp_path / "l", [(lower, False), (upper, True)], RUN), name="l",
                                  platform="linux/amd64")
    flat = io.BytesIO()
    images.export_stream("l", flat)
    other = ImageStore(Paths(tmp_path / "other"))
    assert other.import_stream("flat", io.BytesIO(flat.getvalue())).digest == layered.digest
    with images.view("l") as root:
        assert sorted(os.listdir(root / "etc")) == ["b"] and sorted(os.listdir(root / "d")) == ["y"]


def test_an_archive_whose_tree_is_not_the_announced_digest_is_not_tagged(tmp_path: Path) -> None:
    images = ImageStore(Paths(tmp_path / "state"))
    path = write_oci_layout(tmp_path / "l", [(layer([("f", "x")]), False)], RUN)
    with pytest.raises(Exception, match="expected sha256:0000"):
        images.load_archive(path, name="x", platform="linux/amd64", expected_digest="sha256:" + "0" * 64)
    assert images.list() == []


def test_an_image_of_sixty_layers_mounts(tmp_path: Path) -> None:
    """Sixty layers: more than the overlay's one-page mount option takes by the layers' full
    paths, which their short links make fit (a short state root, as /var/lib/pymigrate is)."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="pml", dir="/tmp"))
    try:
        images = ImageStore(Paths(root))
        layers = [(layer([(f"f{i:02d}", str(i))]), False) for i in range(60)]
        image = images.load_archive(write_oci_layout(tmp_path / "oci", layers, RUN), name="many", platform="linux/amd64")
        assert len(image.layers) == 60
        with images.view("many") as merged:
            assert sorted(os.listdir(merged)) == [f"f{i:02d}" for i in range(60)]
    finally:
        shutil.rmtree(root)


def test_a_corrupt_layer_is_an_image_error_and_its_reader_thread_ends(tmp_path: Path) -> None:
    import threading

    from runtime.errors import ImageError

    before = threading.active_count()
    data = gzip.compress(layer([("f", "x" * 100_000), ("g", "y")]))
    for bad in (data[: len(data) // 2], data[:-12] + b"\0" * 12):  # truncated; a broken CRC trailer
        target = tmp_path / f"t{len(bad)}"
        target.mkdir()
        with pytest.raises(ImageError, match="corrupt|truncated"):
            extract_layer(io.BytesIO(bad), target, source="l")
    assert threading.active_count() == before
