"""A stored layered image written out as an OCI image layout, blobs as they are stored.

Two uses: ``image push`` hands skopeo a layout directory (``write_layout``: the blobs are hard
links into ROOT/blobs, nothing is copied), and a migration streams an OCI archive to a target
that lacks the image (``write_archive``: a tar written straight from the blob store, leaving out
the layers the target already has; the target loads it with the same verifying loader as
``image load``, finding the left-out blobs in its own store).

The manifest is made here from what the store keeps (the config blob as it came, each layer's
blob digest, size and media type), so its digest is not necessarily the registry's original
one; the config and layer digests are. A flat image (from ``image import``) has no layers to
write: runtime/registry.py flattens it into one.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from runtime.errors import ImageError
from runtime.image_store import Image, ImageStore

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
LAYOUT_FILE = b'{"imageLayoutVersion": "1.0.0"}'


@dataclass(frozen=True)
class Documents:
    manifest: bytes
    manifest_digest: str
    index: bytes
    blobs: tuple[tuple[str, Path], ...]  # (digest, stored path): config first, then the layers


def documents(store: ImageStore, image: Image, tag: str, *, skip_layers: frozenset[str] = frozenset()) -> Documents:
    """The manifest and index of a layered image, and the blobs to write (minus ``skip_layers``,
    by diff_id)."""
    import hashlib

    if not image.layers:
        raise ImageError(f"image {image.name} is a flat root filesystem, not layers")
    infos = [store.layers.layer(d) for d in image.layers]
    config_path = store.layers.blob_path(image.config_digest)
    document: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": image.config_digest, "size": config_path.stat().st_size},
        "layers": [{"mediaType": i.media_type, "digest": i.blob, "size": i.blob_size} for i in infos],
    }
    annotations = store.annotations(image.name)  # as loaded or built (a checkpoint image's marks)
    if annotations:
        document["annotations"] = annotations
    manifest = json.dumps(document, sort_keys=True).encode()
    digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}"
    index = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [
        {"mediaType": MEDIA_MANIFEST, "digest": digest, "size": len(manifest),
         "annotations": {REF_NAME_ANNOTATION: tag}}]}, sort_keys=True).encode()
    blobs = [(image.config_digest, config_path)]
    blobs += [(i.blob, store.layers.blob_path(i.blob)) for i in infos if i.diff_id not in skip_layers]
    return Documents(manifest, digest, index, tuple(blobs))


def write_layout(store: ImageStore, name: str, layout: Path, tag: str) -> str:
    """Write layered image ``name`` as an OCI layout at ``layout`` (must not exist); the manifest digest."""
    docs = documents(store, store.get(name), tag)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / docs.manifest_digest[7:]).write_bytes(docs.manifest)
    for digest, path in docs.blobs:
        target = blobs / digest[7:]
        if not target.exists():
            os.link(path, target)  # same file system (both under the state root): no copy
    (layout / "index.json").write_bytes(docs.index)
    (layout / "oci-layout").write_bytes(LAYOUT_FILE)
    return docs.manifest_digest


def write_archive(store: ImageStore, name_or_digest: str, sink: BinaryIO, *, skip_layers: frozenset[str] = frozenset()) -> int:
    """Write an OCI archive (an uncompressed tar of a layout) of the layered image to ``sink``,
    without the layer blobs whose diff_id is in ``skip_layers``; the number of layer blobs written."""
    image = store.get(name_or_digest)
    docs = documents(store, image, "migrated", skip_layers=skip_layers)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", LAYOUT_FILE)
        _add_bytes(tar, "index.json", docs.index)
        _add_bytes(tar, f"blobs/sha256/{docs.manifest_digest[7:]}", docs.manifest)
        seen: set[str] = set()
        for digest, path in docs.blobs:
            if digest in seen:
                continue
            seen.add(digest)
            info = tarfile.TarInfo(f"blobs/sha256/{digest[7:]}")
            info.size = path.stat().st_size
            info.mode = 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return len(docs.blobs) - 1


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
