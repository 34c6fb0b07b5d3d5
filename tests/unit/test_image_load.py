"""Image archives by hand: whiteouts, digests, platforms, compression, config, the import refusal."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from runtime.config import Paths
from runtime.image_config import ImageConfig, resolve_run
from runtime.image_store import ImageStore, NotARootfsTarball
from runtime.oci_image import BlobDigestMismatch, ImageFormatError, PlatformNotFound
from runtime.tarsafe import apply_layers
from tests.fakes.image_tars import layer


def test_whiteouts_and_opaque_dirs_apply_to_lower_layers(tmp_path: Path) -> None:
    lower = layer([("etc", None), ("etc/a", "a"), ("etc/b", "b"), ("d", None), ("d/x", "x"), ("d/sub", None), ("d/sub/y", "y"), ("f", "file")])
    upper = layer([("etc/.wh.a", ""), ("d", None), ("d/new", "n"), ("d/.wh..wh..opq", ""), ("f", None), ("f/inside", "i"),
                   ("etc/.wh.missing", "")])
    root = tmp_path / "r"
    root.mkdir()
    stats = apply_layers([(io.BytesIO(lower), "l0"), (io.BytesIO(upper), "l1")], root)
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["b"]
    assert sorted(p.name for p in (root / "d").iterdir()) == ["new"]  # opaque: lower gone, same layer kept
    assert (root / "f/inside").read_text() == "i"  # a dir replaces a lower file
    assert stats.whiteouts == 3


def test_whiteout_with_a_bad_name_is_refused(tmp_path: Path) -> None:
    from runtime.errors import UnsafeArchive

    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(UnsafeArchive, match="whiteout"):
        apply_layers([(io.BytesIO(layer([("a", "1")])), "l0"), (io.BytesIO(layer([(".wh...", "")])), "l1")], root)


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _uncompressed(data: bytes, media: str) -> bytes:
    if media.endswith("+gzip") and data.startswith(b"\x1f\x8b"):
        return gzip.decompress(data)
    if media.endswith("+zstd") and data.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def oci_layout(path: Path, layers: list[tuple[bytes, str]], *, platforms: list[str] | None = None,
               corrupt: bytes | None = None, config_run: dict[str, object] | None = None) -> Path:
    blobs = path / "blobs/sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = sha(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    manifests = []
    for plat in platforms or ["linux/amd64"]:
        os_name, arch = plat.split("/")
        diff_ids = [sha(_uncompressed(data, media)) for data, media in layers]
        config = json.dumps({"os": os_name, "architecture": arch, "config": config_run or {"Cmd": ["sh"]},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        descs = []
        for data, media in layers:
            descs.append({"mediaType": media, "digest": put(data), "size": len(data)})
        manifest = json.dumps({"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": put(config), "size": len(config)}, "layers": descs}).encode()
        manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest),
                          "size": len(manifest), "platform": {"os": os_name, "architecture": arch}})
    if corrupt is not None:
        (blobs / sha(layers[0][0])[7:]).write_bytes(corrupt)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    return path


TAR = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(Paths(tmp_path / "state"))


@pytest.mark.parametrize("compress,media", [
    (lambda b: b, TAR),
    (gzip.compress, TAR + "+gzip"),
    (lambda b: zstandard.ZstdCompressor().compress(b), TAR + "+zstd"),
])
def test_compressions_load(store: ImageStore, tmp_path: Path, compress, media: str) -> None:  # noqa: ANN001
    data = compress(layer([("hello", "world")]))
    img = store.load_archive(oci_layout(tmp_path / "oci", [(data, media)]), name="c:1", platform="linux/amd64")
    with store.view(img.name) as root:
        assert (root / "hello").read_text() == "world"
    assert len(img.layers) == 1 and [p.resolve() for p in img.lowers] == [store.layers.diff_dir(img.layers[0]).resolve()]
    config = store.config("c:1")
    assert config is not None and config.cmd == ("sh",)


def test_media_type_and_magic_must_agree(store: ImageStore, tmp_path: Path) -> None:
    data = layer([("hello", "world")])
    with pytest.raises(ImageFormatError, match="none data but its media type says gzip"):
        store.load_archive(oci_layout(tmp_path / "oci", [(data, TAR + "+gzip")]), name="c", platform="linux/amd64")


def test_digest_mismatch_names_the_blob(store: ImageStore, tmp_path: Path) -> None:
    data = layer([("hello", "world")])
    with pytest.raises(BlobDigestMismatch) as err:
        store.load_archive(oci_layout(tmp_path / "oci", [(data, TAR)], corrupt=b"evil" + data[4:]), name="c", platform="linux/amd64")
    assert err.value.blob.startswith("layer 0 blobs/sha256/") and err.value.expected == sha(data)
    assert store.list() == []


def test_platform_selection(store: ImageStore, tmp_path: Path) -> None:
    path = oci_layout(tmp_path / "oci", [(layer([("f", "x")]), TAR)], platforms=["linux/amd64", "linux/arm64"])
    img = store.load_archive(path, name="multi", platform="linux/arm64")
    config = store.config("multi")
    assert config is not None and config.architecture == "arm64" and img.name == "multi"
    with pytest.raises(PlatformNotFound) as err:
        store.load_archive(path, name="multi", platform="linux/s390x")
    assert err.value.available == ("linux/amd64", "linux/arm64")
    assert "linux/amd64, linux/arm64" in str(err.value)


def test_import_refuses_an_image_archive(store: ImageStore, tmp_path: Path) -> None:
    oci = oci_layout(tmp_path / "oci", [(layer([("f", "x")]), TAR)])
    archive = tmp_path / "o.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(oci, arcname=".")
    with pytest.raises(NotARootfsTarball) as err:
        store.import_tarball("x", archive)
    assert err.value.hint == f"use: pymigrate image load {archive}"
    img = store.load_archive(archive, name="fromtar", platform="linux/amd64")
    with store.view(img.name) as root:
        assert (root / "f").read_text() == "x"


def test_resolve_run() -> None:
    config = ImageConfig(entrypoint=("/bin/sh", "-c"), cmd=("echo hi",), env=("A=1", "B=2"), working_dir="/w")
    r = resolve_run(config, (), ("B=3",), None)
    assert (r.command, r.env, r.workdir) == (("/bin/sh", "-c", "echo hi"), ("A=1", "B=2", "B=3"), "/w")
    r = resolve_run(config, ("echo other",), (), "/x")
    assert (r.command, r.workdir) == (("/bin/sh", "-c", "echo other"), "/x")
    r = resolve_run(None, (), (), None)
    assert r.command == ()
    assert ImageConfig.from_json(config.to_json()) == config


def test_images_of_the_same_tree_keep_their_own_config_and_annotations(store: ImageStore, tmp_path: Path) -> None:
    """images/<hex> is shared by every image of one tree: a flat import first, then two layered loads
    of the same files with other configs; each name keeps its own config blob, layers and marks."""
    data = layer([("hello", "world")])
    (tmp_path / "flat.tar").write_bytes(data)
    flat = store.import_tarball("flat:1", tmp_path / "flat.tar")
    first = store.load_archive(oci_layout(tmp_path / "a", [(data, TAR)], config_run={"Cmd": ["a"]}), name="a:1")
    second_layout = oci_layout(tmp_path / "b", [(gzip.compress(data), TAR + "+gzip")], config_run={"Cmd": ["b"]})
    index = json.loads((second_layout / "index.json").read_text())
    manifest_path = second_layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]
    manifest = json.loads(manifest_path.read_text())
    manifest["annotations"] = {"io.example.mark": "b"}
    raw = json.dumps(manifest).encode()
    (second_layout / "blobs/sha256" / sha(raw)[7:]).write_bytes(raw)
    index["manifests"][0].update(digest=sha(raw), size=len(raw))
    (second_layout / "index.json").write_text(json.dumps(index))
    second = store.load_archive(second_layout, name="b:1")
    assert flat.digest == first.digest == second.digest  # one tree
    a, b = store.get("a:1"), store.get("b:1")
    assert a.config_digest and b.config_digest and a.config_digest != b.config_digest
    assert store.annotations("b:1") == {"io.example.mark": "b"} and store.annotations("a:1") == {}
    assert store.get("flat:1").config_digest == ""  # the flat import has no config blob of its own
    assert [c.cmd for c in (store.config("a:1"), store.config("b:1"))] == [("a",), ("b",)]  # type: ignore[union-attr]
    store.remove("b:1")
    assert store.layers.has_blob(a.config_digest)  # a name's own config blob is not collected with another's
