"""Content-addressed root filesystem images, the read-only lower dirs of every container.

Layout under a state root (see runtime/config.py)::

    ROOT/images/index.json            {"version": 1, "images": {name: {digest, size_bytes, created_at[, config]}}}
    ROOT/images/.lock                 fcntl.flock'ed while index.json or images/<hex> change
    ROOT/images/<hex>/                0700: host users cannot reach the image's setuid files
    ROOT/images/<hex>/image.json      {digest, size_bytes, created_at} of this rootfs
    ROOT/images/<hex>/rootfs/         the tree; used only as an overlayfs lowerdir, never written
    ROOT/tmp/image-*/                 imports in progress (same filesystem, so rename(2) is atomic)
    ROOT/tmp/view-*/                  an image's layers mounted read-only as one overlay (``view``)
    ROOT/tmp/remove-*/                an image or layer renamed out of sight, being deleted
    ROOT/tmp/pull-*/ ROOT/tmp/push-*/ skopeo's OCI layouts while pulling / pushing (runtime/registry.py)
    ROOT/tmp/layer-*/ ROOT/tmp/blob-* a layer being unpacked, a blob being copied (runtime/layer_store.py)

Every scratch entry is held (runtime/scratch.py: a shared flock) by the process working in it;
``sweep_scratch`` removes those whose process is gone (killed mid-operation), unmounting a
left-behind ``view-*`` overlay first. The daemon runs it when it starts, ``prune`` every time.

An import extracts into ROOT/tmp (runtime/tarsafe.py refuses unsafe members), computes the digest,
then renames the whole ``image-*`` directory to ``images/<hex>`` under the lock. rename(2) is
atomic within a filesystem, so a rootfs is either complete or absent; a digest already present is
reused and only the name is tagged. index.json is replaced by write-tmp + fsync + rename, so
readers never see a half-written index and need no lock. On any failure the scratch directory is
removed and index.json is untouched.

The digest is ``sha256:`` over a canonical walk of the tree, so it is the same on every host and
for every compression of the same content: entries in pre-order, children sorted by their name's
bytes, and for each one its path, type, permission bits (including setuid/sticky), uid, gid, size,
the sha256 of a file's content and a symlink's target. Mtimes, atimes, hard-link structure and
inode numbers are left out. An entry with extended attributes that extraction keeps
(``runtime.tarsafe.kept_xattr``: file capabilities, ``user.*``, ACLs) has ``x`` after its type
and a ninth field listing them, so a tree without any hashes as before.

``load_archive`` reads Docker and OCI image archives (runtime/oci_image.py), stores their layers
by digest (runtime/layer_store.py; as root) and keeps the image config (runtime/image_config.py)
in the name's index entry: the same rootfs may carry different configs under different names.
``export_stream`` writes a tar that re-imports to the same digest, which is how the migration
code ships an image to a host that lacks it.

Names and digests: ``tag`` gives a stored image another name, ``remove`` takes a name away, and
a digest no name refers to any more is deleted at once unless a container uses it (``in_use``)
or something else still refers to it (``referenced``: checkpoints); such an unnamed digest stays
until ``prune`` finds it unused. Layers and blobs no stored image refers to are collected
whenever an image is deleted (``Removal`` says what went), except while a pull runs.

Read-only in practice: after the rename nothing in this module opens the tree for writing, and
containers mount it only as an overlay lowerdir (overlayfs copies up to the upper dir before any
write). ``chattr +i`` is not used (it would block removal and needs CAP_LINUX_IMMUTABLE).

tarfile, subprocess and runtime.tarsafe are imported inside the functions that use them, so
importing this module stays cheap for CLI start-up.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator

from runtime.config import Paths
from runtime.errors import ImageError, ImageNotFound, InvalidArgument, Unsupported

if TYPE_CHECKING:
    from runtime.image_config import ImageConfig
    from runtime.scratch import Swept

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
LOCK_NAME = ".lock"
IMAGE_META_NAME = "image.json"
ROOTFS_NAME = "rootfs"
INDEX_VERSION = 1
DIGEST_VERSION = b"pymigrate-rootfs-digest-v1\0"

HOST_BUSYBOX = Path("/bin/busybox")
BUSYBOX_HINT = "apt-get install busybox-static"

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?")
DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
HEX_RE = re.compile(r"[0-9a-f]{64}")

# ROOT/tmp entries of image work, each held by its process while it works (runtime/scratch.py)
SCRATCH_PREFIXES = ("image-", "view-", "remove-", "pull-", "push-", "layer-", "blob-")

_CHUNK = 1 << 20


class NotARootfsTarball(ImageError):
    """``import`` was given a Docker or OCI image archive (``kind``), which ``load`` reads."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(f"cannot import {path} as a root filesystem: it is a {kind}, not a rootfs tarball",
                         hint=f"use: pymigrate image load {path}")
        self.path = path
        self.kind = kind


@dataclass(frozen=True)
class Image:
    name: str
    digest: str  # "sha256:<64 hex>": canonical digest of the rootfs tree
    size_bytes: int  # bytes of regular file content, each inode once
    created_at: float  # when this name was given to the digest (unix time)
    rootfs: Path  # ROOT/images/<hex>/rootfs: a flat image's tree (absent for a layered one)
    layers: tuple[str, ...] = ()  # a layered image's diff_ids, lowest first (runtime/layer_store.py)
    lowers: tuple[Path, ...] = ()  # the overlay lower dirs, top first: the layers' or (rootfs,)
    config_digest: str = ""  # a layered image's config blob (in the blob store)


@dataclass(frozen=True)
class Removal:
    """What ``remove``, ``prune`` and a name moved by ``tag`` or a load took off this host."""

    untagged: tuple[str, ...] = ()  # names removed
    deleted: tuple[str, ...] = ()  # image digests no longer stored (a flat image's tree with it)
    layers_removed: tuple[str, ...] = ()  # diff_ids of layers no stored image uses any more
    blobs_removed: int = 0  # layer blobs and configs no stored image refers to
    scratch_removed: int = 0  # leftovers of killed image work swept from ROOT/tmp (``prune``)
    bytes_freed: int = 0  # unpacked layers, blobs and flat trees (scratch not counted)

    def __add__(self, other: Removal) -> Removal:
        return Removal(self.untagged + other.untagged, self.deleted + other.deleted,
                       self.layers_removed + other.layers_removed, self.blobs_removed + other.blobs_removed,
                       self.scratch_removed + other.scratch_removed, self.bytes_freed + other.bytes_freed)


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid image name (``[a-z0-9][a-z0-9._-]{0,127}`` and optional ``:tag``)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid image name {name!r}: expected [a-z0-9][a-z0-9._-]{{0,127}} with an optional :tag",
        )
    return name


def validate_digest(digest: str) -> str:
    """Return the 64 hex digits of a ``sha256:<hex>`` digest."""
    m = DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    if not m:
        raise InvalidArgument(f"invalid image digest {digest!r}: expected sha256:<64 lower-case hex digits>")
    return m.group(1)


def _check_digest(name: str, source: object, digest: str, expected: str | None) -> None:
    if expected is not None and digest != expected:
        raise ImageError(f"cannot store image {name} from {source}: its digest is {digest}, expected {expected}",
                         hint="the image's content differs from what was announced; nothing was tagged")


# --- the canonical digest ----------------------------------------------------------------------


def walk_tree(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """The canonical walk: ``(".", root, lstat)`` then every entry in pre-order, names sorted by bytes.

    Never follows symlinks (lstat, and only real directories are descended into).
    """
    yield ".", root, os.lstat(root)
    yield from _walk_children("", root)


def _walk_children(prefix: str, here: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    with os.scandir(here) as it:
        names = sorted((e.name for e in it), key=os.fsencode)
    for name in names:
        path = here / name
        st = os.lstat(path)
        rel = f"{prefix}{name}"
        yield rel, path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_children(f"{rel}/", path)


_TYPE_CODES = (
    (stat.S_ISDIR, "d"),
    (stat.S_ISREG, "f"),
    (stat.S_ISLNK, "l"),
    (stat.S_ISFIFO, "p"),
    (stat.S_ISCHR, "c"),
    (stat.S_ISBLK, "b"),
    (stat.S_ISSOCK, "s"),
)


def _type_code(mode: int) -> str:
    for test, code in _TYPE_CODES:
        if test(mode):
            return code
    return "?"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def tree_xattrs(path: Path, st: os.stat_result) -> dict[str, bytes]:
    """The extended attributes of an entry that images keep (none for symlinks), by name."""
    from runtime.tarsafe import kept_xattr

    if stat.S_ISLNK(st.st_mode):
        return {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}  # a filesystem without xattrs has none to keep
        raise
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names) if kept_xattr(n)}


def tree_digest(root: Path) -> tuple[str, int]:
    """Canonical digest of the tree at ``root`` and its content size in bytes.

    Each entry contributes eight NUL-terminated fields (none can contain NUL):
    path, type (d f l p c b s), permission bits in octal (0 for symlinks), uid, gid,
    size (files, else 0), sha256 of the content (files, else empty), symlink target (else empty).
    An entry with kept xattrs has the type followed by ``x`` and a ninth field: the sha256 of
    its xattrs (name NUL length-in-decimal NUL value, sorted by name).
    """
    h = hashlib.sha256(DIGEST_VERSION)
    size = 0
    seen: set[tuple[int, int]] = set()
    for rel, path, st in walk_tree(root):
        code = _type_code(st.st_mode)
        mode = 0 if code == "l" else stat.S_IMODE(st.st_mode)
        fsize, content, target = 0, "", b""
        if code == "f":
            fsize = st.st_size
            content = _file_sha256(path)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                size += fsize
        elif code == "l":
            target = os.fsencode(os.readlink(path))
        xattrs = tree_xattrs(path, st)
        fields: tuple[bytes, ...] = (
            os.fsencode(rel),
            code.encode(),
            f"{mode:o}".encode(),
            str(st.st_uid).encode(),
            str(st.st_gid).encode(),
            str(fsize).encode(),
            content.encode(),
            target,
        )
        if xattrs:
            xh = hashlib.sha256()
            for key, value in xattrs.items():
                xh.update(key.encode() + b"\0" + str(len(value)).encode() + b"\0" + value)
            fields = (fields[0], fields[1] + b"x", *fields[2:], xh.hexdigest().encode())
        for field in fields:
            h.update(field)
            h.update(b"\0")
    return f"sha256:{h.hexdigest()}", size


# --- busybox -----------------------------------------------------------------------------------

PT_INTERP = 3

BUSYBOX_DIRS: dict[str, int] = {
    "bin": 0o755,
    "dev": 0o755,
    "etc": 0o755,
    "proc": 0o755,
    "root": 0o700,
    "run": 0o755,
    "sbin": 0o755,
    "sys": 0o755,
    "tmp": 0o1777,
    "usr": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "var": 0o755,
}

# keep in step with scripts/make-busybox-image.sh (an integration test compares the digests)
BUSYBOX_FILES: dict[str, str] = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "busybox\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
}


def is_static_elf(path: Path) -> bool:
    """Whether ``path`` is an ELF executable without a program interpreter (PT_INTERP)."""
    with open(path, "rb") as f:
        ident = f.read(16)
        if ident[:4] != b"\x7fELF":
            return False
        is64 = ident[4] == 2
        end = "<" if ident[5] == 1 else ">"
        if is64:
            f.seek(0x20)
            (phoff,) = struct.unpack(end + "Q", f.read(8))
            f.seek(0x36)
        else:
            f.seek(0x1C)
            (phoff,) = struct.unpack(end + "I", f.read(4))
            f.seek(0x2A)
        phentsize, phnum = struct.unpack(end + "HH", f.read(4))
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            (p_type,) = struct.unpack(end + "I", f.read(4))
            if p_type == PT_INTERP:
                return False
    return True


def busybox_applets(busybox: Path) -> list[str]:
    """Applet paths relative to the root (``bin/sh``, ``usr/bin/awk``...) from ``busybox --list-full``."""
    import subprocess

    out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True, timeout=30).stdout
    applets = []
    for line in out.splitlines():
        rel = line.strip().lstrip("/")
        if not rel or rel == "bin/busybox":
            continue
        parts = rel.split("/")
        if ".." in parts or "" in parts:
            raise ImageError(f"busybox at {busybox} lists an unexpected applet path {line!r}")
        applets.append(rel)
    return sorted(set(applets))


def _populate_busybox(rootfs: Path, busybox: Path, applets: list[str]) -> None:
    as_root = os.geteuid() == 0
    os.chmod(rootfs, 0o755)
    for rel in sorted(BUSYBOX_DIRS):
        (rootfs / rel).mkdir(exist_ok=True)
    for rel in applets:
        parent = (rootfs / rel).parent
        if not parent.exists():
            parent.mkdir(parents=True)
            os.chmod(parent, 0o755)
    target = rootfs / "bin" / "busybox"
    with open(busybox, "rb") as src, open(target, "xb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
    os.chmod(target, 0o755)
    for rel, text in BUSYBOX_FILES.items():
        p = rootfs / rel
        p.write_text(text)
        os.chmod(p, 0o644)
    for rel in applets:
        (rootfs / rel).symlink_to("/bin/busybox")
    for rel, mode in BUSYBOX_DIRS.items():
        os.chmod(rootfs / rel, mode)
    if as_root:
        for _rel, path, _st in walk_tree(rootfs):
            os.chown(path, 0, 0, follow_symlinks=False)


# --- the store ---------------------------------------------------------------------------------


class ImageStore:
    """Named, content-addressed rootfs images under one state root.

    Does not know about containers or checkpoints: ``in_use(digest)`` (optional) tells it whether
    a container still needs a rootfs, so ``remove`` refuses to delete one that is needed;
    ``referenced(digest)`` (optional) whether something else refers to it (a checkpoint, which
    restores onto it): an explicit ``remove`` goes ahead (restoring that checkpoint then says the
    image is missing), but an unnamed digest it refers to is kept, and ``prune --all`` keeps it.
    """

    def __init__(self, paths: Paths, *, in_use: Callable[[str], bool] | None = None,
                 referenced: Callable[[str], bool] | None = None) -> None:
        self.paths = paths
        self._in_use = in_use
        self._referenced = referenced
        self.images_dir = paths.images
        self.tmp_dir = paths.tmp
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.images_dir / INDEX_NAME
        from runtime.layer_store import LayerStore

        self.layers = LayerStore(paths)

    # --- queries -----------------------------------------------------------------------------

    def get(self, name_or_digest: str) -> Image:
        """The image with that name, or with that ``sha256:<hex>`` digest.

        Raises:
            ImageNotFound: no such name or digest here.
            InvalidArgument: neither a valid name nor a valid digest.
        """
        if name_or_digest.startswith("sha256:"):
            hexd = validate_digest(name_or_digest)
            meta = self._read_meta(hexd)
            if meta is None:
                raise ImageNotFound(name_or_digest)
            names = sorted(n for n, e in self._read_index().items() if e["digest"] == name_or_digest)
            if names:
                return self._image(names[0], self._read_index()[names[0]])
            return self._make(name_or_digest, name_or_digest, meta["size_bytes"], meta["created_at"], meta)
        validate_name(name_or_digest)
        entry = self._read_index().get(name_or_digest)
        if entry is None:
            raise ImageNotFound(name_or_digest)
        return self._image(name_or_digest, entry)

    def list(self) -> list[Image]:
        """Every named image, sorted by name (one entry per name; names may share a digest)."""
        return [self._image(n, e) for n, e in sorted(self._read_index().items())]

    def has_digest(self, digest: str) -> bool:
        """Whether an image with this digest is present (named or not; flat or layered)."""
        hexd = validate_digest(digest)
        meta = self._read_meta(hexd)
        if meta is None:
            return False
        return all(self.layers.has_layer(d) for d in meta.get("layers") or ()) or self._rootfs(hexd).is_dir()

    @contextlib.contextmanager
    def view(self, name_or_digest: str) -> Iterator[Path]:
        """The image's tree, read-only: a flat image's rootfs, or its layers mounted as one
        read-only overlay in ROOT/tmp for the duration (root only)."""
        image = self.get(name_or_digest)
        if not image.layers:
            yield image.rootfs
            return
        from runtime.layer_store import mounted_chain

        with self._scratch("view-") as work, mounted_chain(image.lowers, work) as merged:
            yield merged

    # --- imports -----------------------------------------------------------------------------

    def import_tarball(self, name: str, tarball: Path, *, expected_digest: str | None = None) -> Image:
        """Import a tar (plain, gzip or zstd; detected by magic bytes) as image ``name``.

        Raises:
            InvalidArgument: bad name or expected digest.
            UnsafeArchive: the archive (NotATarArchive) or one of its members was refused.
            ImageError: corrupt archive, or the digest differs from ``expected_digest``.
            OSError: the tarball cannot be opened.
        """
        validate_name(name)
        if expected_digest is not None:
            validate_digest(expected_digest)
        from runtime.oci_image import detect_archive

        kind = detect_archive(tarball)
        if kind is not None:
            raise NotARootfsTarball(tarball, kind)
        with open(tarball, "rb") as f:
            return self._import(name, f, str(tarball), expected_digest)

    def load_archive(self, path: Path, *, name: str | None = None, platform: str | None = None,
                     expected_digest: str | None = None, fallback_blobs: bool = False) -> Image:
        """Load a Docker archive, OCI archive or OCI layout directory as image ``name``.

        ``name`` defaults to the archive's own (``localhost/web:1.0`` -> ``web:1.0``); ``platform``
        (``OS/ARCH[/VARIANT]``) to this host's. Every blob is verified first, then the layers are
        applied in order into one rootfs (whiteouts, xattrs: runtime/tarsafe.py) and the image
        config is kept with the name. ``expected_digest``: refuse (before tagging) an image whose
        tree digest differs; ``fallback_blobs``: an OCI layout directory may leave out blobs this
        store has (a migration ships only the layers the target lacks).

        Raises:
            InvalidArgument: bad name or platform, or no name given and none in the archive.
            ImageFormatError, BlobDigestMismatch, PlatformNotFound: see runtime/oci_image.py.
            UnsafeArchive: a layer member was refused.
            ImageError: a corrupt layer.
        """
        from runtime import tarsafe
        from runtime.oci_image import ImageArchive, image_name_from_ref, parse_platform

        wanted = parse_platform(platform) if platform else None
        if name is not None:
            validate_name(name)
        t0 = time.monotonic()
        if expected_digest is not None:
            validate_digest(expected_digest)
        fallback = self.layers.blobs_dir if fallback_blobs else None
        with ImageArchive(Path(path), fallback_blobs=fallback) as archive:
            resolved = archive.resolve(wanted)
            if name is None:
                name = image_name_from_ref(resolved.ref_name)
                if name is None or not NAME_RE.fullmatch(name):
                    raise InvalidArgument(
                        f"cannot load image from {path}: the archive names no usable image "
                        f"({resolved.ref_name!r})", hint="give one with --name NAME[:TAG]")
            if os.geteuid() == 0:
                image, unpacked = self._load_layers(name, archive, resolved, expected_digest)
            else:  # overlayfs whiteouts need root: an unprivileged store keeps one flat tree
                with self._scratch("image-") as work:
                    rootfs = work / ROOTFS_NAME
                    rootfs.mkdir(mode=0o700)
                    tarsafe.apply_layers(archive.layer_streams(resolved), rootfs)
                    digest, size = tree_digest(rootfs)
                    _check_digest(name, path, digest, expected_digest)
                    image, unpacked = self._commit(name, work, digest, size, config=resolved.config.to_json()), -1
        log.info(
            "loaded image=%s from=%s kind=%s layers=%d unpacked=%d digest=%s elapsed_ms=%.0f",
            name, path, resolved.kind, len(resolved.layers), unpacked, image.digest, (time.monotonic() - t0) * 1000,
        )
        return image

    def _load_layers(self, name: str, archive: Any, resolved: Any, expected: str | None) -> tuple[Image, int]:
        """Store the config blob, then each layer this host lacks (blob, then unpacked, both
        verified), then the image as its chain of diff_ids; the image and how many layers were new."""
        from runtime.layer_store import MAX_LAYERS

        if len(resolved.layers) > MAX_LAYERS:
            raise ImageError(f"cannot load image {name}: it has {len(resolved.layers)} layers, at most {MAX_LAYERS} are supported",
                             hint="flatten the image (for example: podman build --squash)")
        if not self.layers.has_blob(resolved.config_digest):
            self.layers.put_blob_bytes(resolved.config_bytes, resolved.config_digest, what=f"config of {archive.source}")
        unpacked = 0
        for layer in resolved.layers:
            if self.layers.has_layer(layer.diff_id):
                continue
            with archive.blobs.open(layer.path) as stream:
                archive.check_compression(stream, layer)
                if layer.compression and self.layers.has_blob(layer.digest):
                    blob = layer.digest  # already here (a pull's shared blob dir); resolve() verified it
                else:
                    blob = self.layers.put_blob(stream, layer.digest if layer.compression else None, what=f"layer {layer.path}")
            self.layers.unpack(layer.diff_id, blob, source=f"{archive.source}:{layer.path}")
            unpacked += 1
        chain = tuple(layer.diff_id for layer in resolved.layers)
        return self.commit_layers(name, chain, resolved.config_digest, config=resolved.config.to_json(),
                                  expected_digest=expected, annotations=dict(resolved.annotations)), unpacked

    def commit_layers(self, name: str, chain: tuple[str, ...], config_digest: str, *, config: dict[str, Any] | None,
                      expected_digest: str | None = None, annotations: dict[str, str] | None = None) -> Image:
        """Tag ``name`` as the image made of the stored layers ``chain`` (lowest first); its digest is
        the canonical tree digest of the layers mounted as one overlay (the same as flattening).
        ``annotations``: the manifest's, kept in the image's record (``annotations()``) and written
        again by a push (runtime/image_layout.py): checkpoint images are marked by them."""
        from runtime.layer_store import layer_chain_dirs, mounted_chain

        with self._scratch("view-") as view, mounted_chain(layer_chain_dirs(self.layers, chain), view) as merged:
            digest, size = tree_digest(merged)
        _check_digest(name, "its layers", digest, expected_digest)
        with self._scratch("image-") as work:
            layered: dict[str, Any] = {"layers": list(chain), "config_digest": config_digest}
            if annotations:
                layered["annotations"] = dict(sorted(annotations.items()))
            return self._commit(name, work, digest, size, config=config, layered=layered)

    def config(self, name_or_digest: str) -> ImageConfig | None:
        """The run config of a named image (None: the image has none, e.g. a flat tarball)."""
        from runtime.image_config import ImageConfig

        image = self.get(name_or_digest)
        entry = self._read_index().get(image.name)
        data = entry.get("config") if entry is not None else None
        return None if data is None else ImageConfig.from_json(data, f"image index entry {image.name}")

    def annotations(self, name_or_digest: str) -> dict[str, str]:
        """The manifest annotations a layered image was stored with (empty: none, or a flat image)."""
        image = self.get(name_or_digest)
        meta = self._read_meta(validate_digest(image.digest)) or {}
        found = _named_meta(meta, self._read_index().get(image.name) or {}).get("annotations")
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

    def import_stream(self, name: str, stream: BinaryIO, *, expected_digest: str | None = None) -> Image:
        """Like ``import_tarball`` but reads the archive sequentially from ``stream`` (no seeking)."""
        validate_name(name)
        if expected_digest is not None:
            validate_digest(expected_digest)
        return self._import(name, stream, "stream", expected_digest)

    def _import(self, name: str, stream: BinaryIO, source: str, expected: str | None) -> Image:
        from runtime import tarsafe

        t0 = time.monotonic()
        with self._scratch("image-") as work:
            rootfs = work / ROOTFS_NAME
            rootfs.mkdir(mode=0o700)
            stats = tarsafe.extract(stream, rootfs, source=source)
            digest, size = tree_digest(rootfs)
            if expected is not None and digest != expected:
                raise ImageError(
                    f"cannot import image {name} from {source}: digest is {digest}, expected {expected}",
                )
            image = self._commit(name, work, digest, size)
        log.info(
            "imported image=%s digest=%s members=%d bytes=%d elapsed_ms=%.0f",
            name, digest, stats.members, size, (time.monotonic() - t0) * 1000,
        )
        return image

    def build_busybox(self, name: str = "busybox", *, busybox: Path = HOST_BUSYBOX) -> Image:
        """Build a minimal rootfs around the host's static busybox and tag it ``name``.

        Contents: /bin/busybox, a symlink to it for every applet (``busybox --list-full``),
        /etc/{passwd,group,hostname,hosts}, empty /proc /sys /dev /run /var /root (0700),
        /tmp (1777). ``scripts/make-busybox-image.sh`` builds the same tree as a tarball.

        Raises:
            Unsupported: no static busybox at ``busybox`` (hint: apt-get install busybox-static).
        """
        validate_name(name)
        if not busybox.is_file():
            raise Unsupported("busybox image", f"{busybox} not found", hint=BUSYBOX_HINT)
        if not is_static_elf(busybox):
            raise Unsupported("busybox image", f"{busybox} is not a statically linked executable", hint=BUSYBOX_HINT)
        applets = busybox_applets(busybox)
        with self._scratch("image-") as work:
            rootfs = work / ROOTFS_NAME
            rootfs.mkdir(mode=0o700)
            _populate_busybox(rootfs, busybox, applets)
            digest, size = tree_digest(rootfs)
            image = self._commit(name, work, digest, size)
        log.info("built busybox image=%s digest=%s applets=%d", name, digest, len(applets))
        return image

    # --- export ------------------------------------------------------------------------------

    def export_stream(self, name_or_digest: str, sink: BinaryIO) -> None:
        """Write the image's rootfs to ``sink`` as a plain (uncompressed) PAX tar.

        Members come in the canonical order with numeric owners, modes and mtimes; hard links are
        kept. Importing the stream gives the same digest. Compress by wrapping ``sink``.
        """
        import tarfile

        image = self.get(name_or_digest)
        first_path: dict[tuple[int, int], str] = {}
        with self.view(name_or_digest) as root, tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for rel, path, st in walk_tree(root):
                ti = tarfile.TarInfo(rel)
                ti.mode = stat.S_IMODE(st.st_mode)
                ti.uid, ti.gid = st.st_uid, st.st_gid
                ti.uname = ti.gname = ""
                ti.mtime = int(st.st_mtime)
                ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                  for k, v in tree_xattrs(path, st).items()}
                code = _type_code(st.st_mode)
                if code == "d":
                    ti.type = tarfile.DIRTYPE
                    tar.addfile(ti)
                elif code == "l":
                    ti.type = tarfile.SYMTYPE
                    ti.linkname = os.readlink(path)
                    tar.addfile(ti)
                elif code == "p":
                    ti.type = tarfile.FIFOTYPE
                    tar.addfile(ti)
                elif code == "f":
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in first_path:
                        ti.type = tarfile.LNKTYPE
                        ti.linkname = first_path[key]
                        tar.addfile(ti)
                        continue
                    first_path[key] = rel
                    ti.type = tarfile.REGTYPE
                    ti.size = st.st_size
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    with os.fdopen(fd, "rb") as f:
                        tar.addfile(ti, f)
                else:
                    raise ImageError(f"cannot export image {image.name}: {rel} is a {code!r} node, not allowed in images")

    # --- removal -----------------------------------------------------------------------------

    def tag(self, source: str, target: str) -> Image:
        """Give the stored image ``source`` (a name or a ``sha256:`` digest) the name ``target``.

        ``target`` may already name another image: the name moves (as ``docker tag`` does), and
        the digest it named is deleted when no other name, no container and no checkpoint has it
        (``_retire``, as when a load moves a name). The new name gets the source name's config
        (for a digest: that of a name it has, else its config blob's; none for a flat tarball).

        Raises:
            ImageNotFound: no image ``source`` here.
            InvalidArgument: ``target`` is not a valid name, or ``source`` neither name nor digest.
        """
        validate_name(target)
        with self._locked():
            image = self.get(source)  # under the lock: an rm cannot take it away meanwhile
            if not self.has_digest(image.digest):
                raise ImageError(f"cannot tag image {source}: its layers are not all on this host",
                                 hint="pull or load the image again")
            entry: dict[str, Any] = {"digest": image.digest, "size_bytes": image.size_bytes, "created_at": time.time()}
            config = self._config_json(image)
            if config is not None:
                entry["config"] = config
            old = self._name(target, entry)
            removal = self._retire(old, target)
        log.info("tagged image=%s as %s digest=%s deleted=%s", source, target, image.digest, removal.deleted)
        return self.get(target)

    def remove(self, name: str) -> Removal:
        """Remove the name; remove the image too when no other name refers to its digest, then
        the layers and blobs no stored image uses any more. A checkpoint (``referenced``) does
        not stop it: removing is what the user asked for.

        Raises:
            ImageNotFound: no image by that name.
            ImageError: this is the last name of an image a container uses (``in_use``); nothing changed.
        """
        validate_name(name)
        with self._locked():
            index = self._read_index()
            entry = index.pop(name, None)
            if entry is None:
                raise ImageNotFound(name)
            digest = entry["digest"]
            last = not any(e["digest"] == digest for e in index.values())
            if last and self._in_use is not None and self._in_use(digest):
                raise ImageError(
                    f"cannot remove image {name}: its rootfs {digest} is in use",
                    hint="remove the containers that use it first (pymigrate ps -a)",
                )
            self._write_index(index)
            removal = Removal(untagged=(name,)) + (self._delete([digest]) if last else Removal())
        log.info("removed image=%s digest=%s deleted=%s layers_removed=%d bytes_freed=%d", name, digest,
                 bool(removal.deleted), len(removal.layers_removed), removal.bytes_freed)
        return removal

    def prune(self, *, all: bool = False) -> Removal:
        """Delete the unnamed images no container or checkpoint uses (``all``: also the named ones,
        with all their names: Docker's ``image prune --all``), then every layer and blob no stored
        image refers to, then the scratch entries of killed image work (``sweep_scratch``).

        Unnamed images are the digests a name moved away from (``tag``, a load) while a container
        or checkpoint used them."""
        with self._locked():
            index = self._read_index()
            named = {e["digest"] for e in index.values()}
            doomed = [d for d in self._stored_digests() if d not in named and not self._needed(d)]
            untagged: list[str] = []
            if all:
                for digest in sorted(named):
                    if self._needed(digest):
                        continue
                    names = sorted(n for n, e in index.items() if e["digest"] == digest)
                    for n in names:
                        del index[n]
                    untagged += names
                    doomed.append(digest)
                if untagged:
                    self._write_index(index)
            removal = Removal(untagged=tuple(sorted(untagged))) + self._delete(doomed)
        swept = self.sweep_scratch()
        removal += Removal(scratch_removed=len(swept.removed))
        log.info("pruned images all=%s untagged=%d deleted=%d layers_removed=%d blobs_removed=%d scratch_removed=%d "
                 "bytes_freed=%d", all, len(removal.untagged), len(removal.deleted), len(removal.layers_removed),
                 removal.blobs_removed, removal.scratch_removed, removal.bytes_freed)
        return removal

    def sweep_scratch(self, *, grace_s: float | None = None) -> Swept:
        """Remove the ROOT/tmp entries of image work (``SCRATCH_PREFIXES``) whose process is gone
        and that are older than ``grace_s`` (default ``runtime.scratch.GRACE_S``), unmounting a
        ``view-*`` overlay left mounted first; a ``runtime.scratch.Swept``. Safe beside live
        image work in other processes: what they hold is kept."""
        from runtime import scratch

        return scratch.sweep(self.tmp_dir, SCRATCH_PREFIXES, grace_s=scratch.GRACE_S if grace_s is None else grace_s)

    # --- internals ---------------------------------------------------------------------------

    def _rootfs(self, hexd: str) -> Path:
        return self.images_dir / hexd / ROOTFS_NAME

    def _image(self, name: str, entry: dict[str, Any]) -> Image:
        meta = self._read_meta(validate_digest(entry["digest"])) or {}
        return self._make(name, entry["digest"], int(entry["size_bytes"]), float(entry["created_at"]), _named_meta(meta, entry))

    def _make(self, name: str, digest: str, size: int, created_at: float, meta: dict[str, Any]) -> Image:
        from runtime.layer_store import layer_chain_dirs

        rootfs = self._rootfs(validate_digest(digest))
        layers = tuple(meta.get("layers") or ())
        lowers = layer_chain_dirs(self.layers, layers) if layers else (rootfs,)
        return Image(name, digest, size, created_at, rootfs, layers, lowers, str(meta.get("config_digest", "")))

    def _read_meta(self, hexd: str) -> dict[str, Any] | None:
        try:
            meta: dict[str, Any] = json.loads((self.images_dir / hexd / IMAGE_META_NAME).read_text())
            return meta
        except FileNotFoundError:
            return None

    def _read_index(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ImageError(f"image index {self.index_path} is not valid json: {exc}") from exc
        if data.get("version") != INDEX_VERSION:
            raise ImageError(f"image index {self.index_path} has version {data.get('version')!r}, expected {INDEX_VERSION}")
        return dict(data.get("images", {}))

    def _write_index(self, images: dict[str, dict[str, Any]]) -> None:
        data = json.dumps({"version": INDEX_VERSION, "images": images}, indent=2, sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(prefix=".index-", dir=self.images_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.rename(tmp, self.index_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dfd = os.open(self.images_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.images_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _scratch(self, prefix: str) -> contextlib.AbstractContextManager[Path]:
        """A private directory under ROOT/tmp, held while in use (runtime/scratch.py), removed on
        the way out unless it was renamed away."""
        from runtime.scratch import scratch_dir

        return scratch_dir(self.tmp_dir, prefix)

    def _commit(self, name: str, work: Path, digest: str, size: int, *, config: dict[str, Any] | None = None,
                layered: dict[str, Any] | None = None) -> Image:
        """Move ``work`` (holding rootfs/, or nothing for a ``layered`` image: its layer chain and
        config digest) to images/<hex> unless present, then tag ``name``."""
        hexd = validate_digest(digest)
        now = time.time()
        meta: dict[str, Any] = {"digest": digest, "size_bytes": size, "created_at": now, **(layered or {})}
        (work / IMAGE_META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
        target = self.images_dir / hexd
        with self._locked():
            if layered is not None:
                self._check_stored(layered, name)
            created = False
            if not target.exists():
                os.chmod(work, 0o700)
                try:
                    os.rename(work, target)
                    created = True
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
            if not created:
                log.debug("image digest=%s already present, tagging %s", digest, name)
            entry: dict[str, Any] = {"digest": digest, "size_bytes": size, "created_at": now}
            if config is not None:
                entry["config"] = config
            # the name's own layers, config blob and annotations: images/<hex> is shared by every image
            # of the same tree, and its meta holds only the first one's (_image reads the entry first)
            if layered is not None:
                entry.update({k: v for k, v in layered.items() if k in _NAMED_FACTS})
                entry.setdefault("annotations", {})
            try:
                old = self._name(name, entry)
            except BaseException:
                if created:
                    self._delete([digest])
                raise
            self._retire(old, name)
        return self._make(name, digest, size, now, self._read_meta(hexd) or meta)

    def _name(self, name: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        """Under the lock: point ``name`` at ``entry`` in the index; the entry it had before."""
        index = self._read_index()
        old = index.get(name)
        index[name] = entry
        self._write_index(index)
        return old

    def _retire(self, old: dict[str, Any] | None, name: str) -> Removal:
        """Under the lock, once ``name`` moved away from ``old`` (a load, ``tag``): delete the
        digest it named unless another name, a container or a checkpoint still has it (then it
        stays, unnamed, for ``prune``)."""
        if old is None:
            return Removal()
        digest = old["digest"]
        if any(e["digest"] == digest for e in self._read_index().values()):
            return Removal()
        if self._needed(digest):
            log.info("image=%s moved; keeping unnamed digest %s (in use)", name, digest)
            return Removal()
        return self._delete([digest])

    def _needed(self, digest: str) -> bool:
        """A container uses it (``in_use``) or something else refers to it (``referenced``)."""
        return bool((self._in_use is not None and self._in_use(digest))
                    or (self._referenced is not None and self._referenced(digest)))

    def _stored_digests(self) -> builtins.list[str]:
        """Every image stored here, named or not (the images/<hex> dirs)."""
        return sorted(f"sha256:{p.name}" for p in self.images_dir.iterdir() if HEX_RE.fullmatch(p.name) and p.is_dir())

    def _check_stored(self, layered: dict[str, Any], name: str) -> None:
        """Under the lock: every layer and blob of the chain is still there (an ``image rm`` or
        ``prune`` running beside this load may have collected one it did not yet see used)."""
        missing = [d for d in layered["layers"] if not self.layers.has_layer(d)]
        missing += [] if self.layers.has_blob(layered["config_digest"]) else [layered["config_digest"]]
        if missing:
            raise ImageError(f"cannot store image {name}: {missing[0]} was removed while the image was loading",
                             hint="an image rm or prune ran at the same time; run the command again")

    def _delete(self, digests: builtins.list[str]) -> Removal:
        """Under the lock: remove these images (images/<hex>: the record, a flat image's tree),
        then the layers and blobs no stored image refers to any more."""
        deleted: list[str] = []
        freed = 0
        for digest in digests:
            size = self._drop_tree(validate_digest(digest))
            if size is not None:
                deleted.append(digest)
                freed += size
        return Removal(deleted=tuple(deleted), bytes_freed=freed) + self._collect_garbage()

    def _collect_garbage(self) -> Removal:
        """Under the lock: remove the layers and blobs no stored image refers to.

        Not while an ``image pull`` runs in another process or thread: skopeo writes the blobs
        it fetches straight into the blob store, where no image refers to them yet (the next
        ``remove`` or ``prune`` collects what is then still unreferenced)."""
        from runtime.scratch import busy

        pulls = busy(self.tmp_dir, ("pull-",))
        if pulls:
            log.info("not collecting layers and blobs: pulls in progress (%s)", ", ".join(pulls))
            return Removal()
        layers: set[str] = set()
        blobs: set[str] = set()
        for meta_path in self.images_dir.glob(f"*/{IMAGE_META_NAME}"):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            layers.update(meta.get("layers") or ())
            if meta.get("config_digest"):
                blobs.add(meta["config_digest"])
        for entry in self._read_index().values():  # a name's own facts (_commit) beside its tree's meta
            layers.update(entry.get("layers") or ())
            if entry.get("config_digest"):
                blobs.add(entry["config_digest"])
        for diff_id in layers:
            if self.layers.has_layer(diff_id):
                blobs.add(self.layers.layer(diff_id).blob)
        collected = self.layers.remove_unreferenced(layers, blobs)
        return Removal(layers_removed=collected.layers, blobs_removed=collected.blobs, bytes_freed=collected.bytes_freed)

    def _drop_tree(self, hexd: str) -> int | None:
        """Remove images/<hex> (first renamed into tmp, so no half-deleted image is ever
        visible); the bytes of a flat image's tree (0 for a layered one), None if it was not there."""
        from runtime.scratch import scratch_dir

        target = self.images_dir / hexd
        meta = self._read_meta(hexd)
        if not target.exists():
            return None
        with scratch_dir(self.tmp_dir, "remove-") as doomed:
            os.rename(target, doomed / hexd)
        if meta is None or meta.get("layers"):
            return 0
        return int(meta.get("size_bytes", 0))

    def _config_json(self, image: Image) -> dict[str, Any] | None:
        """The run config to copy with a name: the named image's, else (a digest) that of a name
        it has, else its config blob's."""
        entry = self._read_index().get(image.name)
        if entry is not None:
            config: dict[str, Any] | None = entry.get("config")
            return config
        if image.config_digest and self.layers.has_blob(image.config_digest):
            from runtime.image_config import ImageConfig

            blob = json.loads(self.layers.blob_path(image.config_digest).read_bytes())
            return ImageConfig.from_oci(blob, f"config blob {image.config_digest}").to_json()
        return None


# what a name keeps of its own in the index (``_commit``); older entries have none of them
_NAMED_FACTS = ("layers", "config_digest", "annotations")


def _named_meta(meta: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """``meta`` (of the shared images/<hex>) with the name's own layered facts over it. A flat name
    (no layers of its own) on a tree a layered image stored first keeps that tree's layers as its
    lowers: the same files, and no rootfs/ was written for it."""
    merged = dict(meta)
    if entry.get("layers"):
        merged["layers"] = entry["layers"]
    for key in ("config_digest", "annotations"):
        if key in entry:
            merged[key] = entry[key]
    return merged
