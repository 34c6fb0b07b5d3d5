"""Image layers stored once by digest, and the blobs they came from.

Layout under a state root (beside images/, runtime/image_store.py)::

    ROOT/layers/<hex>/diff/         one layer unpacked as an overlayfs lower dir (hex: its diff_id)
    ROOT/layers/<hex>/layer.json    {diff_id, blob, media_type, blob_size, size_bytes, link}
    ROOT/l/<link>                   -> ../layers/<hex>/diff: a short name for the overlay's mount option
    ROOT/blobs/sha256/<hex>         the layer's blob as it came (compressed or not) and image configs

A layer is keyed by its **diff_id** (sha256 of the uncompressed tar, the config's
``rootfs.diff_ids``): the same layer compressed two ways is stored and unpacked once. It is
unpacked by ``runtime.tarsafe.extract_layer`` into ROOT/tmp, its diff_id computed from the bytes
actually unpacked and compared with the one claimed, and only then renamed into place (rename(2):
present whole or not at all; a concurrent unpack of the same layer loses the rename and is
dropped). Whiteouts become overlayfs whiteouts, so a container's root is an overlay of the
layers' diff dirs plus its own upper dir, with no flattening copy.

Why keep the blobs too: a push sends the layers as they are, and a migration ships the blobs the
target lacks; both are then verifiable by digest end to end (the target re-hashes each blob and
each unpacked layer). The cost is the compressed size once more on disk (docs/images.md).

The store never decides what is in use: ``ImageStore`` (which knows the images' layer chains)
calls ``remove_unreferenced`` with the digests still needed, under its own lock.

Scratch: a layer is unpacked in ROOT/tmp/layer-*, a blob copied to ROOT/tmp/blob-*, and a
removed layer deleted from ROOT/tmp/remove-*; each is held by its process while it works there
(runtime/scratch.py), so a sweep removes only those left by a killed process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from runtime.config import Paths
from runtime.errors import ImageError, InvalidArgument

log = logging.getLogger(__name__)

LAYER_META = "layer.json"
DIFF_DIR = "diff"
MAX_LAYERS = 127  # Docker's limit (the mount option fits ~75 short links: runtime/overlay.py)
LINKS_DIR = "l"  # ROOT/l/<16 hex> -> ../layers/<diff_id hex>/diff
_CHUNK = 1 << 20


class LayerDigestMismatch(ImageError):
    """A layer or blob's content does not hash to the digest it was named by."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: content hashes to {actual}, expected {expected}",
                         hint="the image or the peer sent corrupt or forged data; nothing was stored")
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class Collected:
    """What ``remove_unreferenced`` removed."""

    layers: tuple[str, ...] = ()  # diff_ids
    blobs: int = 0
    bytes_freed: int = 0  # the layers' unpacked bytes and the blobs' sizes


@dataclass(frozen=True)
class LayerInfo:
    diff_id: str  # sha256 of the uncompressed tar
    blob: str  # the stored blob's digest (what a manifest lists)
    media_type: str  # the blob's OCI media type (its compression)
    blob_size: int
    size_bytes: int  # bytes unpacked


MEDIA_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")


def _hex(digest: str) -> str:
    m = _DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    if m is None:
        raise InvalidArgument(f"invalid layer or blob digest {digest!r}: expected sha256:<64 lower-case hex digits>")
    return m.group(1)


class LayerStore:
    """Unpacked layers by diff_id and blobs by digest under one state root."""

    def __init__(self, paths: Paths) -> None:
        self.layers_dir = paths.root / "layers"
        self.links_dir = paths.root / LINKS_DIR
        self.blobs_dir = paths.root / "blobs" / "sha256"
        self.tmp_dir = paths.tmp
        for d in (self.layers_dir, self.links_dir, self.blobs_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    # --- queries -----------------------------------------------------------------------------

    def diff_dir(self, diff_id: str) -> Path:
        return self.layers_dir / _hex(diff_id) / DIFF_DIR

    def lower_dir(self, diff_id: str) -> Path:
        """The layer's diff dir by its short link, ROOT/l/<16 hex> (made again if missing): a
        container's overlay names every lower dir in one mount option, which is one page, so
        ~40-byte paths fit three times as many layers as the ~95-byte diff dir paths."""
        hexd = _hex(diff_id)
        link = _link_name(self.layers_dir / hexd)
        if link is None:  # a layer from before short links
            return self.diff_dir(diff_id)
        path = self.links_dir / link
        if not path.is_symlink():
            with contextlib.suppress(FileExistsError):
                os.symlink(f"../{self.layers_dir.name}/{hexd}/{DIFF_DIR}", path)
        return path

    def has_layer(self, diff_id: str) -> bool:
        return (self.layers_dir / _hex(diff_id) / LAYER_META).is_file()

    def layer(self, diff_id: str) -> LayerInfo:
        path = self.layers_dir / _hex(diff_id) / LAYER_META
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ImageError(f"layer {diff_id} is not in this host's layer store",
                             hint="pull or load the image again") from None
        return LayerInfo(data["diff_id"], data["blob"], data["media_type"], int(data["blob_size"]), int(data["size_bytes"]))

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / _hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def layer_ids(self) -> list[str]:
        return sorted(f"sha256:{p.name}" for p in self.layers_dir.iterdir() if (p / LAYER_META).is_file())

    # --- adding ------------------------------------------------------------------------------

    def put_blob(self, stream: BinaryIO, digest: str | None, *, what: str) -> str:
        """Copy ``stream`` into the blob store, verified against ``digest`` (None: named by what it
        hashes to); the blob's digest. A blob already there is kept."""
        fd, tmp = tempfile.mkstemp(prefix="blob-", dir=self.tmp_dir)
        h = hashlib.sha256()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # held while written: a sweep keeps it (runtime/scratch.py)
            with os.fdopen(fd, "wb") as f:
                while chunk := stream.read(_CHUNK):
                    h.update(chunk)
                    f.write(chunk)
            actual = f"sha256:{h.hexdigest()}"
            if digest is not None and actual != digest:
                raise LayerDigestMismatch(what, digest, actual)
            os.chmod(tmp, 0o600)
            if not self.has_blob(actual):
                os.rename(tmp, self.blob_path(actual))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return actual

    def put_blob_bytes(self, data: bytes, digest: str, *, what: str) -> None:
        import io

        self.put_blob(io.BytesIO(data), digest, what=what)

    def unpack(self, diff_id: str, blob: str, *, source: str) -> LayerInfo:
        """Unpack the stored blob ``blob`` as layer ``diff_id`` (a directory the layer does not list
        but needs is made 0755 root, as Docker's overlay driver does: a layer's tree depends on its
        tar alone, never on what it is stacked on).

        Raises:
            LayerDigestMismatch: the unpacked tar does not hash to ``diff_id``.
            UnsafeArchive, ImageLimitExceeded, ImageError: as ``runtime.tarsafe.extract_layer``.
        """
        from runtime import tarsafe
        from runtime.scratch import held

        if self.has_layer(diff_id):
            return self.layer(diff_id)
        work = Path(tempfile.mkdtemp(prefix="layer-", dir=self.tmp_dir))
        with held(work):  # a sweep leaves it alone while this process works in it
            try:
                diff = work / DIFF_DIR
                diff.mkdir(mode=0o755)
                with open(self.blob_path(blob), "rb") as f:
                    stats, actual = tarsafe.extract_layer(f, diff, source=source)
                if actual != diff_id:
                    raise LayerDigestMismatch(f"layer {source}", diff_id, actual)
                info = LayerInfo(diff_id, blob, _media_type(self.blob_path(blob)), self.blob_path(blob).stat().st_size,
                                 stats.bytes_written)
                # the short link's name: random, so no layer content can choose or collide with it
                meta = {**info.__dict__, "link": secrets.token_hex(8)}
                (work / LAYER_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
                os.chmod(work, 0o700)  # host users must not reach setuid files of the layer
                try:
                    os.rename(work, self.layers_dir / _hex(diff_id))
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    log.debug("layer %s unpacked concurrently; keeping the first", diff_id)
            finally:
                if work.exists():
                    tarsafe.rmtree(work)
        log.info("unpacked layer %s from %s: members=%d whiteouts=%d bytes=%d", diff_id[:19], source,
                 stats.members, stats.whiteouts, stats.bytes_written)
        return info

    # --- removal -----------------------------------------------------------------------------

    def remove_unreferenced(self, layers: Iterable[str], blobs: Iterable[str]) -> Collected:
        """Delete every layer and blob not named in ``layers`` / ``blobs``.

        The caller holds the image store's lock, so no image can start referring to one now."""
        from runtime.scratch import scratch_dir

        keep_layers = {_hex(d) for d in layers}
        keep_blobs = {_hex(d) for d in blobs}
        removed: list[str] = []
        blobs_removed = freed = 0
        for p in sorted(self.layers_dir.iterdir()):
            if p.name in keep_layers:
                continue
            freed += _layer_size(p)
            link = _link_name(p)
            if link is not None:
                with contextlib.suppress(FileNotFoundError):
                    (self.links_dir / link).unlink()
            with scratch_dir(self.tmp_dir, "remove-") as doomed:
                os.rename(p, doomed / p.name)  # gone from layers/ at once, then deleted
            removed.append(f"sha256:{p.name}")
        for p in list(self.blobs_dir.iterdir()):
            if p.name not in keep_blobs:
                freed += p.stat().st_size
                p.unlink()
                blobs_removed += 1
        return Collected(tuple(removed), blobs_removed, freed)


def _media_type(blob: Path) -> str:
    """The OCI layer media type for a stored blob, by its magic bytes."""
    from runtime.tarsafe import GZIP_MAGIC, ZSTD_MAGIC

    with open(blob, "rb") as f:
        head = f.read(4)
    return MEDIA_TYPES["gzip" if head.startswith(GZIP_MAGIC) else "zstd" if head.startswith(ZSTD_MAGIC) else "none"]


def _link_name(layer_dir: Path) -> str | None:
    """The short link's name recorded in a layer's layer.json (None: none, or unreadable)."""
    try:
        link = json.loads((layer_dir / LAYER_META).read_text()).get("link")
    except (OSError, ValueError, AttributeError):
        return None
    return link if isinstance(link, str) and re.fullmatch(r"[0-9a-f]{16}", link) else None


def _layer_size(path: Path) -> int:
    try:
        return int(json.loads((path / LAYER_META).read_text()).get("size_bytes", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def layer_chain_dirs(store: LayerStore, diff_ids: Iterable[str]) -> tuple[Path, ...]:
    """The lower dirs of a chain given lowest first (by their short links), returned top first
    (overlayfs' lowerdir order)."""
    return tuple(reversed([store.lower_dir(d) for d in diff_ids]))


@contextlib.contextmanager
def mounted_chain(lowers: tuple[Path, ...], where: Path) -> Iterator[Path]:
    """The layers (top first) as one read-only overlay on ``where``; unmounted on the way out.

    A single layer is mounted over an empty bottom dir: overlayfs without an upper dir wants two
    lower dirs on older kernels."""
    from runtime.overlay import lowerdir_option
    from runtime.syscalls import LINUX as sys
    from runtime.syscalls import MNT_DETACH, MS_RDONLY

    merged = where / "merged"
    merged.mkdir(mode=0o700)
    dirs = lowers
    if len(dirs) == 1:
        empty = where / "empty"
        empty.mkdir(mode=0o755)
        dirs = (*dirs, empty)
    try:
        sys.mount("overlay", str(merged), "overlay", MS_RDONLY, lowerdir_option(dirs))
    except OSError as exc:
        raise ImageError(f"cannot mount the image's layers read-only on {merged}: {exc.strerror}") from exc
    try:
        yield merged
    finally:
        sys.umount2(str(merged), MNT_DETACH)
