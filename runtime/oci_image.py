"""Reading image archives: Docker archives, OCI archives and OCI image layout directories.

What ``pymigrate image load`` accepts (docs/images.md):

* a Docker archive (``docker save``, ``podman save --format docker-archive``): a tar with
  ``manifest.json`` (``Config``, ``Layers``, ``RepoTags``), the config blob and the layer tars;
  layers are verified against the config's ``rootfs.diff_ids`` (sha256 of the uncompressed tar),
  the config against its file name when that is a digest;
* an OCI archive (a tar of an OCI image layout) or an OCI image layout directory: ``index.json``
  (nested indexes followed, a multi-platform one resolved to one platform), manifests, config and
  layers under ``blobs/sha256/``, each verified against the digest and size of its descriptor.

Every blob is verified before it is used (one hashing pass, then the use), and a mismatch is a
``BlobDigestMismatch`` naming the blob. Layers may be plain, gzip or zstd tars: the media type
says which, the magic bytes must agree (``runtime.tarsafe.open_decompressed`` detects them);
Docker archives carry no media types, so there the magic decides.

The archive is untrusted (docs/security.md): json documents are size-capped before parsing,
member names are checked like image members (no absolute paths, no ``..``), layers are applied
by ``runtime.tarsafe.apply_layers`` with all its rules. A directory is the caller's own files, but
blob paths are still resolved and refused if they lead outside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform as platform_module
import re
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, cast

from runtime.errors import ImageError, InvalidArgument
from runtime.image_config import ImageConfig
from runtime.tarsafe import GZIP_MAGIC, ZSTD_MAGIC

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 4 << 20  # an index, manifest or config: small documents
MAX_INDEX_DEPTH = 4  # nested indexes followed
_CHUNK = 1 << 20

OCI_LAYOUT = "oci-layout"
OCI_INDEX = "index.json"
DOCKER_MANIFEST = "manifest.json"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

INDEX_TYPES = frozenset({
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
})
MANIFEST_TYPES = frozenset({
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
})
# layer media type -> compression ("none", "gzip", "zstd"), the names open_decompressed reports
LAYER_TYPES: dict[str, str] = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")

# platform.machine() -> (GOARCH, variant): the names OCI platforms use
_MACHINES: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", ""), "arm64": ("arm64", ""),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i686": ("386", ""), "i386": ("386", ""),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
}


# --- errors ------------------------------------------------------------------------------------


class ImageFormatError(ImageError):
    """The input is not a readable image archive or layout, or a document in it is malformed."""

    def __init__(self, source: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"cannot load image from {source}: {reason}", hint=hint)
        self.source = source
        self.reason = reason


class BlobDigestMismatch(ImageError):
    """A blob's content does not match the digest (or size) its reference names."""

    def __init__(self, source: str, blob: str, expected: str, actual: str) -> None:
        super().__init__(f"cannot load image from {source}: blob {blob} has {actual}, expected {expected}",
                         hint="the archive is corrupt or was tampered with")
        self.source = source
        self.blob = blob
        self.expected = expected
        self.actual = actual


class PlatformNotFound(ImageError):
    """The image has no variant for the wanted platform; ``available`` names those it has."""

    def __init__(self, source: str, wanted: str, available: tuple[str, ...]) -> None:
        there = ", ".join(available) if available else "none named"
        super().__init__(f"cannot load image from {source}: no image for platform {wanted}; the archive has {there}",
                         hint="choose one with --platform OS/ARCH[/VARIANT]")
        self.source = source
        self.wanted = wanted
        self.available = available


# --- platforms ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, os_name: str, architecture: str, variant: str) -> bool:
        """Whether an image for ``os_name/architecture/variant`` is this platform (a missing variant
        in either matches any)."""
        return (os_name, architecture) == (self.os, self.architecture) and (
            not self.variant or not variant or variant == self.variant
        )


def host_platform() -> Platform:
    """This host's platform in OCI words (linux/amd64, linux/arm64/v8 -> linux/arm64...)."""
    machine = platform_module.machine()
    arch, variant = _MACHINES.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


def parse_platform(text: str) -> Platform:
    """``OS/ARCH[/VARIANT]`` (``linux/amd64``, ``linux/arm/v7``)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(re.fullmatch(r"[a-z0-9_]+", p) for p in parts):
        raise InvalidArgument(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")
    return Platform(*parts)


# --- the archive or directory ------------------------------------------------------------------


def _member_path(name: str, source: str) -> str:
    """A relative path inside the archive, normalised; refuses absolute paths and '..'."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts or "\0" in name:
        raise ImageFormatError(source, f"path {name!r} is not inside the archive")
    return "/".join(parts)


class _Blobs:
    """Read-only access to files of an image layout, by relative path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def has(self, path: str) -> bool:
        raise NotImplementedError

    def open(self, path: str) -> BinaryIO:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def read_json(self, path: str, what: str) -> Any:
        with self.open(path) as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise ImageFormatError(self.source, f"{what} {path} is larger than {MAX_JSON_BYTES} bytes")
        return self.parse_json(data, path, what)

    def parse_json(self, data: bytes, path: str, what: str) -> Any:
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ImageFormatError(self.source, f"{what} {path} is not valid json: {exc}") from None

    def sha256(self, path: str, *, decompress: bool = False) -> tuple[str, int]:
        """``sha256:<hex>`` of the file (of its decompressed content with ``decompress``) and its size."""
        from runtime.tarsafe import open_decompressed

        h = hashlib.sha256()
        size = 0
        with self.open(path) as f:
            reader: BinaryIO = f
            if decompress:
                reader, compression, corrupt = open_decompressed(f)
            try:
                while chunk := reader.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
            except Exception as exc:  # decompressors raise their own types (zlib.error, ZstdError...)
                raise ImageFormatError(self.source, f"layer {path} is corrupt: {exc}") from exc
        return f"sha256:{h.hexdigest()}", size


class _DirBlobs(_Blobs):
    def __init__(self, root: Path, fallback: Path | None = None) -> None:
        super().__init__(str(root))
        self.root = root.resolve()
        self.fallback = fallback

    def _path(self, path: str) -> Path:
        real = (self.root / _member_path(path, self.source)).resolve()
        if not real.is_relative_to(self.root):
            raise ImageFormatError(self.source, f"{path} leads outside the directory")
        if self.fallback is not None and not real.exists():
            # a blob left out of a migration's archive because this host has it (verified as any other)
            m = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", _member_path(path, self.source))
            if m is not None:
                return self.fallback / m.group(1)
        return real

    def has(self, path: str) -> bool:
        return self._path(path).is_file()

    def open(self, path: str) -> BinaryIO:
        try:
            return open(self._path(path), "rb")
        except FileNotFoundError:
            raise ImageFormatError(self.source, f"{path} is missing") from None


class _TarBlobs(_Blobs):
    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        try:
            self.tar = tarfile.open(path, "r:*")
        except tarfile.TarError as exc:
            raise ImageFormatError(self.source, f"not a tar archive: {exc}") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            for m in self.tar:
                if m.isreg():
                    self.members[_member_path(m.name, self.source)] = m
        except tarfile.TarError as exc:
            self.tar.close()
            raise ImageFormatError(self.source, f"corrupt tar archive: {exc}") from None

    def has(self, path: str) -> bool:
        return _member_path(path, self.source) in self.members

    def open(self, path: str) -> BinaryIO:
        m = self.members.get(_member_path(path, self.source))
        f = self.tar.extractfile(m) if m is not None else None
        if f is None:
            raise ImageFormatError(self.source, f"{path} is missing")
        return cast(BinaryIO, f)

    def close(self) -> None:
        self.tar.close()


# --- the loaded image ---------------------------------------------------------------------------


MAX_ANNOTATIONS = 256
MAX_ANNOTATION_CHARS = 8192


def _manifest_annotations(value: Any) -> tuple[tuple[str, str], ...]:
    """A manifest's ``annotations``: the string pairs kept, bounded (an image is untrusted), sorted."""
    if not isinstance(value, dict):
        return ()
    pairs = [(k, v) for k, v in value.items() if isinstance(k, str) and isinstance(v, str)
             and len(k) + len(v) <= MAX_ANNOTATION_CHARS]
    return tuple(sorted(pairs)[:MAX_ANNOTATIONS])


@dataclass(frozen=True)
class Layer:
    path: str  # inside the archive or directory
    compression: str  # "none" | "gzip" | "zstd" | "" (unknown: Docker archives; the magic decides)
    digest: str  # what the blob was verified against (OCI: the blob's digest; Docker: its diff_id)
    diff_id: str  # sha256 of the uncompressed tar (the config's rootfs.diff_ids): the layer's identity


@dataclass(frozen=True)
class ResolvedImage:
    """One image of an archive: its config, layers (lowest first) and the name it carries."""

    kind: str  # "docker-archive" | "oci-archive" | "oci-dir"
    config: ImageConfig
    config_digest: str
    layers: tuple[Layer, ...]
    ref_name: str | None  # the name in the archive (RepoTags / ref.name annotation), if any
    config_bytes: bytes = b""  # the config blob as it is (hashes to config_digest)
    # the OCI manifest's annotations (strings only; a checkpoint image is marked by them:
    # migrate/interop/checkpoint_image.py); a Docker archive has none
    annotations: tuple[tuple[str, str], ...] = ()


class ImageArchive:
    """An opened archive or layout directory. Use as a context manager.

    ``resolve()`` finds the one image (for ``platform``), verifies the config and every layer
    blob, and returns what to apply; ``layer_streams()`` then opens the layers in order.
    """

    def __init__(self, path: Path, *, fallback_blobs: Path | None = None) -> None:
        self.path = path
        self.blobs: _Blobs
        if path.is_dir():
            self.blobs = _DirBlobs(path, fallback_blobs)
        elif path.is_file():
            self.blobs = _TarBlobs(path)
        else:
            raise InvalidArgument(f"cannot load image from {path}: not a file or directory")
        self.source = str(path)
        if self.blobs.has(OCI_INDEX):
            self.kind = "oci-dir" if path.is_dir() else "oci-archive"
        elif self.blobs.has(DOCKER_MANIFEST):
            self.kind = "docker-archive"
        else:
            self.blobs.close()
            raise ImageFormatError(self.source, f"neither {OCI_INDEX} (OCI layout) nor {DOCKER_MANIFEST} (Docker archive) found",
                                   hint="a flat root filesystem tarball is imported with: pymigrate image import NAME FILE")

    def __enter__(self) -> ImageArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.blobs.close()

    def resolve(self, platform: Platform | None = None) -> ResolvedImage:
        """The image for ``platform`` (default: this host's), all its blobs verified.

        Raises:
            ImageFormatError: a document is missing or malformed, a media type is unknown.
            BlobDigestMismatch: a blob's sha256 or size differs from its reference.
            PlatformNotFound: no image for the platform (``available`` lists the archive's).
        """
        wanted = platform or host_platform()
        resolved = self._resolve_docker(wanted) if self.kind == "docker-archive" else self._resolve_oci(wanted)
        log.debug("resolved %s %s: config=%s layers=%d", self.kind, self.source, resolved.config_digest, len(resolved.layers))
        return resolved

    def layer_streams(self, image: ResolvedImage) -> Iterator[tuple[BinaryIO, str]]:
        """Open each layer in order (for ``runtime.tarsafe.apply_layers``); each is closed after use."""
        for layer in image.layers:
            stream = self.blobs.open(layer.path)
            try:
                self.check_compression(stream, layer)
                yield stream, f"{self.source}:{layer.path}"
            finally:
                stream.close()

    # --- OCI ---------------------------------------------------------------------------------

    def _blob_path(self, descriptor: Any, what: str) -> tuple[str, str]:
        if not isinstance(descriptor, dict):
            raise ImageFormatError(self.source, f"{what} descriptor is not an object")
        digest = descriptor.get("digest")
        m = DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
        if m is None:
            raise ImageFormatError(self.source, f"{what} digest {digest!r} is not sha256:<64 hex digits>")
        return f"blobs/sha256/{m.group(1)}", digest  # type: ignore[return-value]

    def _verified(self, descriptor: dict[str, Any], what: str) -> str:
        """The blob path of ``descriptor`` after checking its sha256 and size."""
        path, digest = self._blob_path(descriptor, what)
        actual, size = self.blobs.sha256(path)
        if actual != digest:
            raise BlobDigestMismatch(self.source, f"{what} {path}", digest, actual)
        want_size = descriptor.get("size")
        if isinstance(want_size, int) and want_size != size:
            raise BlobDigestMismatch(self.source, f"{what} {path}", f"size {want_size}", f"size {size}")
        return path

    def _verified_json(self, descriptor: dict[str, Any], what: str) -> Any:
        return self._verified_document(descriptor, what)[0]

    def _verified_document(self, descriptor: dict[str, Any], what: str) -> tuple[Any, bytes]:
        """A json blob parsed, and its bytes, after checking its size cap and digest."""
        size = descriptor.get("size") if isinstance(descriptor, dict) else None
        if isinstance(size, int) and size > MAX_JSON_BYTES:
            raise ImageFormatError(self.source, f"{what} is {size} bytes, expected at most {MAX_JSON_BYTES}")
        path, digest = self._blob_path(descriptor, what)
        with self.blobs.open(path) as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise ImageFormatError(self.source, f"{what} {path} is larger than {MAX_JSON_BYTES} bytes")
        actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if actual != digest:
            raise BlobDigestMismatch(self.source, f"{what} {path}", digest, actual)
        return self.blobs.parse_json(data, path, what), data

    def _resolve_oci(self, wanted: Platform) -> ResolvedImage:
        index = self.blobs.read_json(OCI_INDEX, "index")
        manifest_desc, ref_name = self._pick(index, wanted, OCI_INDEX, depth=0)
        manifest = self._verified_json(manifest_desc, "manifest")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
            raise ImageFormatError(self.source, "the manifest has no 'layers' list")
        config_desc = manifest.get("config")
        if not isinstance(config_desc, dict):
            raise ImageFormatError(self.source, "the manifest has no 'config' descriptor")
        config_blob, config_bytes = self._verified_document(config_desc, "config")
        config = ImageConfig.from_oci(config_blob, f"{self.source} config")
        self._check_platform(config, wanted)
        diff_ids = _diff_ids(config_blob, len(manifest["layers"]), self.source)
        layers = []
        for i, desc in enumerate(manifest["layers"]):
            media = desc.get("mediaType") if isinstance(desc, dict) else None
            if media not in LAYER_TYPES:
                raise ImageFormatError(self.source, f"layer {i} has media type {media!r}, expected one of the OCI or Docker layer tar types")
            path = self._verified(desc, f"layer {i}")
            layers.append(Layer(path, LAYER_TYPES[media], desc["digest"], diff_ids[i]))
        _, config_digest = self._blob_path(config_desc, "config")
        return ResolvedImage(self.kind, config, config_digest, tuple(layers), ref_name, config_bytes,
                             _manifest_annotations(manifest.get("annotations")))

    def _pick(self, index: Any, wanted: Platform, where: str, depth: int) -> tuple[dict[str, Any], str | None]:
        """The manifest descriptor for ``wanted`` in ``index`` (following nested indexes)."""
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list) or not index["manifests"]:
            raise ImageFormatError(self.source, f"{where} has no 'manifests'")
        entries = [d for d in index["manifests"] if isinstance(d, dict)]
        with_platform = [d for d in entries if isinstance(d.get("platform"), dict)]
        if with_platform:
            def plat(d: dict[str, Any]) -> tuple[str, str, str]:
                p = d["platform"]
                return str(p.get("os", "")), str(p.get("architecture", "")), str(p.get("variant", ""))

            matching = [d for d in with_platform if wanted.matches(*plat(d))]
            if not matching:
                available = tuple(sorted({"/".join(x for x in plat(d) if x) for d in with_platform}))
                raise PlatformNotFound(self.source, str(wanted), available)
            chosen = matching[0]
        elif len(entries) == 1:
            chosen = entries[0]
        else:
            raise ImageFormatError(self.source, f"{where} lists {len(entries)} images without platforms; expected one")
        annotations = chosen.get("annotations")
        ref = annotations.get(REF_NAME_ANNOTATION) if isinstance(annotations, dict) else None
        media = chosen.get("mediaType")
        if media in INDEX_TYPES:
            if depth >= MAX_INDEX_DEPTH:
                raise ImageFormatError(self.source, f"indexes nested deeper than {MAX_INDEX_DEPTH}")
            nested = self._verified_json(chosen, "index")
            desc, nested_ref = self._pick(nested, wanted, f"index {chosen.get('digest')}", depth + 1)
            return desc, ref if isinstance(ref, str) else nested_ref
        if media is not None and media not in MANIFEST_TYPES:
            raise ImageFormatError(self.source, f"{where} points to media type {media!r}, expected an image manifest or index")
        return chosen, ref if isinstance(ref, str) else None

    def _check_platform(self, config: ImageConfig, wanted: Platform) -> None:
        if config.os and config.architecture and not wanted.matches(config.os, config.architecture, config.variant):
            there = "/".join(p for p in (config.os, config.architecture, config.variant) if p)
            raise PlatformNotFound(self.source, str(wanted), (there,))

    # --- Docker ------------------------------------------------------------------------------

    def _resolve_docker(self, wanted: Platform) -> ResolvedImage:
        manifest = self.blobs.read_json(DOCKER_MANIFEST, "manifest")
        if not isinstance(manifest, list) or not manifest or not all(isinstance(e, dict) for e in manifest):
            raise ImageFormatError(self.source, f"{DOCKER_MANIFEST} is not a list of images")
        if len(manifest) != 1:
            raise ImageFormatError(self.source, f"{DOCKER_MANIFEST} lists {len(manifest)} images, expected one",
                                   hint="save one image per archive")
        entry = manifest[0]
        config_path, layer_paths = entry.get("Config"), entry.get("Layers")
        if not isinstance(config_path, str) or not isinstance(layer_paths, list) or not all(isinstance(p, str) for p in layer_paths):
            raise ImageFormatError(self.source, f"{DOCKER_MANIFEST} lacks 'Config' or 'Layers'")
        with self.blobs.open(config_path) as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise ImageFormatError(self.source, f"config {config_path} is larger than {MAX_JSON_BYTES} bytes")
        config_digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        named = re.search(r"([0-9a-f]{64})(\.json)?$", config_path)
        if named and config_digest != f"sha256:{named.group(1)}":
            raise BlobDigestMismatch(self.source, f"config {config_path}", f"sha256:{named.group(1)}", config_digest)
        blob = self.blobs.parse_json(data, config_path, "config")
        config = ImageConfig.from_oci(blob, f"{self.source} config")
        self._check_platform(config, wanted)
        diff_ids = _diff_ids(blob, len(layer_paths), f"{self.source} config {config_path}")
        layers = []
        for i, (path, diff_id) in enumerate(zip(layer_paths, diff_ids)):
            actual, _ = self.blobs.sha256(path, decompress=True)
            if actual != diff_id:
                raise BlobDigestMismatch(self.source, f"layer {i} {path}", diff_id, actual)
            layers.append(Layer(path, "", diff_id, diff_id))
        tags = entry.get("RepoTags")
        ref = tags[0] if isinstance(tags, list) and tags and isinstance(tags[0], str) else None
        return ResolvedImage(self.kind, config, config_digest, tuple(layers), ref, data)

    # --- layers ------------------------------------------------------------------------------

    def check_compression(self, stream: BinaryIO, layer: Layer) -> None:
        """The media type's compression must be the one the magic bytes show."""
        if not layer.compression:
            return
        head = stream.read(4)
        stream.seek(0)
        found = "gzip" if head.startswith(GZIP_MAGIC) else "zstd" if head.startswith(ZSTD_MAGIC) else "none"
        if found != layer.compression:
            raise ImageFormatError(self.source, f"layer {layer.path} is {found} data but its media type says {layer.compression}")


def _diff_ids(config: Any, layers: int, source: str) -> tuple[str, ...]:
    """The config's ``rootfs.diff_ids``: one valid sha256 digest per layer of the manifest."""
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != layers:
        count = len(diff_ids) if isinstance(diff_ids, list) else 0
        raise ImageFormatError(source, f"the config lists {count} rootfs.diff_ids for {layers} layers")
    for i, diff_id in enumerate(diff_ids):
        if not isinstance(diff_id, str) or not DIGEST_RE.fullmatch(diff_id):
            raise ImageFormatError(source, f"diff_id {i} {diff_id!r} is not sha256:<64 hex digits>")
    return tuple(diff_ids)


def detect_archive(path: Path) -> str | None:
    """"docker-archive", "oci-archive" or None: whether a file is an image archive, not a rootfs.

    Reads only the member names (``image import`` uses it to refuse them with a hint).
    """
    try:
        with tarfile.open(path, "r:*") as tar:
            names = set()
            for i, m in enumerate(tar):
                names.add(m.name.lstrip("./").rstrip("/"))
                if i > 64 and not ({OCI_INDEX, DOCKER_MANIFEST, OCI_LAYOUT} & names):
                    return None  # a rootfs has bin/, etc/ ... early; archives list their json first or near
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return None
    if OCI_INDEX in names and OCI_LAYOUT in names:
        return "oci-archive"
    if DOCKER_MANIFEST in names and any(n.endswith((".tar", ".json")) or n.startswith("blobs/") for n in names if n != DOCKER_MANIFEST):
        return "docker-archive"
    return None


def layout_tar(root: Path, *, chunk_bytes: int = _CHUNK) -> Iterator[bytes]:
    """An OCI image layout directory as an uncompressed tar stream, for ``image load --host`` to
    upload (the daemon loads it as an OCI archive). Read safely, as the caller's files may not all
    be what they seem: directories are walked without following symlinks; a regular file goes in
    with its content (read through an ``O_NOFOLLOW`` fd, exactly the size fstat gave); a symlink
    goes in as the regular file it resolves to only when that is inside ``root`` (the local loader
    resolves links the same way, ``_DirBlobs``); anything else (a link out of the directory or to a
    directory, a fifo, a socket, a device) is refused before its bytes are read.

    Raises:
        ImageFormatError: not a directory, or an entry refused (named).
    """
    source = str(root)
    top = os.path.realpath(root)
    if not os.path.isdir(top):
        raise ImageFormatError(source, "not a directory")
    # the whole walk first, in the caller: an entry refused raises here, before a byte is sent
    # (raised inside a gRPC upload's request iterator, the daemon could see a short stream end)
    return _layout_stream(list(_layout_files(top, source)), source, chunk_bytes)


def _layout_stream(files: list[tuple[str, str]], source: str, chunk_bytes: int) -> Iterator[bytes]:
    for rel, path in files:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ImageFormatError(source, f"{rel} is not a regular file")
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = st.st_size, 0o644, int(st.st_mtime)
            yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            left = st.st_size
            while left:
                data = os.read(fd, min(chunk_bytes, left))
                if not data:
                    raise ImageFormatError(source, f"{rel} shrank while it was read")
                left -= len(data)
                yield data
            if st.st_size % tarfile.BLOCKSIZE:
                yield b"\0" * (tarfile.BLOCKSIZE - st.st_size % tarfile.BLOCKSIZE)
        finally:
            os.close(fd)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)  # the end-of-archive marker


def _layout_files(top: str, source: str) -> Iterator[tuple[str, str]]:
    """(member name, path to read) of every file under ``top``, in a stable order, without recursion."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(top, rel_dir) if rel_dir else top) as it:
            entries = sorted(it, key=lambda e: e.name, reverse=True)
        for entry in reversed(entries):
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append(rel)
            elif entry.is_file(follow_symlinks=False):
                yield rel, entry.path
            elif entry.is_symlink():
                real = os.path.realpath(entry.path)
                if os.path.commonpath([top, real]) != top:
                    raise ImageFormatError(source, f"{rel} is a symbolic link out of the directory",
                                           hint="copy the file it points to into the layout")
                if not os.path.isfile(real):
                    raise ImageFormatError(source, f"{rel} is a symbolic link to something not a regular file")
                yield rel, real
            else:
                raise ImageFormatError(source, f"{rel} is not a regular file, a directory or a symbolic link")


def image_name_from_ref(ref: str | None) -> str | None:
    """A store name from an archive's reference: ``localhost/web:1.0`` -> ``web:1.0``; None if unusable."""
    if not ref:
        return None
    last = ref.rsplit("/", 1)[-1].lower() if "/" in ref else ref.lower()
    if "@" in last:
        last = last.split("@", 1)[0]
    return last or None

