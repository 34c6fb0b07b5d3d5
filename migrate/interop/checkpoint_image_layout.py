"""A checkpoint directory (podman's layout) as an OCI image: the layer, config and manifest.

What ``podman container checkpoint --create-image REF`` makes (podman 4.3.1, measured here with
``skopeo copy containers-storage:REF oci:DIR``), and what this module writes the same way:

- one layer, ``application/vnd.oci.image.layer.v1.tar+gzip``: the checkpoint directory itself,
  members relative to it (``checkpoint/``, ``checkpoint/pages-1.img``, ``config.dump``,
  ``spec.dump``, ``network.status``, ``stats-dump``, ``artifacts/`` ...), owner 0:0;
- a config with ``architecture``/``os`` of the host, an empty ``config`` (a checkpoint image is
  not run), ``rootfs.diff_ids`` and one ``history`` entry;
- the marks on the **manifest** (``annotations``): podman's ``io.podman.annotations.checkpoint.*``
  (``name``, ``rawImageName``, ``rootfsImageID``, ``rootfsImageName``, ``criu.version`` as
  MAJOR*10000+MINOR*100+SUBLEVEL, ``runtime.name``, ``runtime.version``, ``host.arch``,
  ``host.kernel``, ``cgroups.version``, ``distribution.name``/``version``), and CRI-O's
  ``io.kubernetes.cri-o.annotations.checkpoint.name`` (what CRI-O and the kubelet's checkpoint
  images carry). podman tells a checkpoint image by ``runtime.name`` and compares it with its own
  OCI runtime; CRI-O by its ``checkpoint.name``. We write ``runtime.name`` ``runc``: the CRIU
  images follow runc's externals (migrate/interop/podman_export.py), so runc is what restores them;
  ``io.pymigrate.checkpoint.version`` says who made the image.

``is_checkpoint`` accepts either family of marks, so images made by podman, CRI-O/buildah (the
kubelet's archive added to a scratch image with the CRI-O annotation) and pymigrate all restore.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform as platform_module
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from runtime.errors import ImageError

PODMAN_PREFIX = "io.podman.annotations.checkpoint."
PODMAN_NAME = PODMAN_PREFIX + "name"
PODMAN_RUNTIME_NAME = PODMAN_PREFIX + "runtime.name"
PODMAN_ROOTFS_IMAGE_NAME = PODMAN_PREFIX + "rootfsImageName"
PODMAN_ROOTFS_IMAGE_ID = PODMAN_PREFIX + "rootfsImageID"
CRIO_NAME = "io.kubernetes.cri-o.annotations.checkpoint.name"
PYMIGRATE_VERSION = "io.pymigrate.checkpoint.version"
# the marks that make an image a checkpoint image (any one of them)
CHECKPOINT_MARKS = (CRIO_NAME, PODMAN_NAME, PODMAN_RUNTIME_NAME)

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
OCI_LAYOUT = '{"imageLayoutVersion": "1.0.0"}'
RESTORING_RUNTIME = "runc"  # module docstring: the runtime whose externals the images follow
GZIP_LEVEL = 1  # pages compress well even at 1; a higher level costs seconds per 100 MiB
_CHUNK = 1 << 20


def is_checkpoint(annotations: Mapping[str, str]) -> bool:
    """Whether a manifest's annotations mark a checkpoint image (podman's or CRI-O's marks)."""
    return any(annotations.get(key) for key in CHECKPOINT_MARKS)


def checkpoint_name(annotations: Mapping[str, str]) -> str:
    """The checkpointed container's name the image records ("" if none)."""
    return annotations.get(CRIO_NAME) or annotations.get(PODMAN_NAME) or ""


def criu_version_number(version: str) -> str:
    """``4.1.1`` -> ``40101`` (podman's form: CRIU's MAJOR*10000+MINOR*100+SUBLEVEL); "" if unknown."""
    parts = version.strip().split(".")
    if not version or not all(p.isdigit() for p in parts) or len(parts) > 3:
        return ""
    major, minor, sub = (int(p) for p in (*parts, "0", "0")[:3])
    return str(major * 10000 + minor * 100 + sub)


def _os_release() -> tuple[str, str]:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "", ""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return fields.get("ID", "").strip('"'), fields.get("VERSION_ID", "").strip('"')


def host_annotations(*, container_name: str, image_name: str, image_id: str, criu_version: str,
                     pymigrate_version: str) -> dict[str, str]:
    """podman's and CRI-O's checkpoint marks for a checkpoint taken on this host."""
    from runtime.oci_image import host_platform

    distribution, distribution_version = _os_release()
    cgroups = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    return {
        PODMAN_NAME: container_name,
        PODMAN_PREFIX + "rawImageName": image_name,
        PODMAN_ROOTFS_IMAGE_ID: image_id,
        PODMAN_ROOTFS_IMAGE_NAME: image_name,
        PODMAN_PREFIX + "criu.version": criu_version_number(criu_version),
        PODMAN_RUNTIME_NAME: RESTORING_RUNTIME,
        PODMAN_PREFIX + "runtime.version": f"pymigrate {pymigrate_version}",
        PODMAN_PREFIX + "host.arch": host_platform().architecture,
        PODMAN_PREFIX + "host.kernel": platform_module.release(),
        PODMAN_PREFIX + "cgroups.version": cgroups,
        PODMAN_PREFIX + "distribution.name": distribution,
        PODMAN_PREFIX + "distribution.version": distribution_version,
        CRIO_NAME: container_name,
        PYMIGRATE_VERSION: pymigrate_version,
    }


class _Hashing:
    """A write-only file that hashes and counts what passes through to ``out``."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    def digest(self) -> str:
        return f"sha256:{self.h.hexdigest()}"


def _members(source: Path) -> list[tuple[str, Path]]:
    """Every entry below ``source`` (relative name, path), parents first, names sorted: a
    reproducible layer. Only directories and regular files: the layout has nothing else."""
    found: list[tuple[str, Path]] = []

    def walk(here: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(here), key=lambda e: os.fsencode(e.name)):
            rel = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                found.append((rel, Path(entry.path)))
                walk(Path(entry.path), f"{rel}/")
            elif entry.is_file(follow_symlinks=False):
                found.append((rel, Path(entry.path)))
            else:
                raise ImageError(f"checkpoint directory {source} holds {rel}, neither a file nor a directory")

    walk(source, "")
    return found


def write_layer(source: Path, blob: Path, *, mtime: float) -> tuple[str, str, int]:
    """``source``'s tree as a gzip'd tar at ``blob``: (diff_id, blob digest, blob size)."""
    with open(blob, "xb") as f:
        outer = _Hashing(f)
        with gzip.GzipFile(fileobj=outer, mode="wb", compresslevel=GZIP_LEVEL, mtime=int(mtime)) as gz:  # type: ignore[arg-type]
            inner = _Hashing(gz)
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for rel, path in _members(source):
                    st = os.lstat(path)
                    info = tarfile.TarInfo(rel)
                    info.mode = st.st_mode & 0o7777
                    info.mtime = int(st.st_mtime)
                    info.uid = info.gid = 0
                    if os.path.isdir(path):
                        info.type = tarfile.DIRTYPE
                        tar.addfile(info)
                        continue
                    info.size = st.st_size
                    with open(path, "rb") as content:
                        tar.addfile(info, content)
    return inner.digest(), outer.digest(), outer.size


@dataclass(frozen=True)
class LayoutWritten:
    manifest_digest: str
    diff_id: str
    layer_bytes: int


def _blob(blobs: Path, data: bytes) -> dict[str, Any]:
    hexd = hashlib.sha256(data).hexdigest()
    (blobs / hexd).write_bytes(data)
    return {"digest": f"sha256:{hexd}", "size": len(data)}


def image_config(diff_id: str, created: str) -> dict[str, Any]:
    """The config blob podman writes for a checkpoint image (nothing to run)."""
    from runtime.oci_image import host_platform

    host = host_platform()
    config: dict[str, Any] = {
        "created": created,
        "architecture": host.architecture,
        "os": host.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "pymigrate checkpoint --create-image"}],
    }
    if host.variant:
        config["variant"] = host.variant
    return config


def write_layout(source: Path, layout: Path, tag: str, annotations: Mapping[str, str], *,
                 created_at: float | None = None) -> LayoutWritten:
    """The checkpoint directory ``source`` as an OCI image layout at ``layout`` (must not exist)
    with one image tagged ``tag``: the layer, config and manifest described in the module docstring."""
    now = time.time() if created_at is None else created_at
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    partial = blobs / ".layer.partial"
    diff_id, layer_digest, layer_size = write_layer(source, partial, mtime=now)
    os.rename(partial, blobs / layer_digest[7:])
    config = _blob(blobs, json.dumps(image_config(diff_id, created), sort_keys=True).encode())
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, **config},
        "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": layer_digest, "size": layer_size}],
        "annotations": dict(sorted(annotations.items())),
    }, sort_keys=True).encode()
    described = _blob(blobs, manifest)
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [
        {"mediaType": MEDIA_MANIFEST, **described, "annotations": {REF_NAME_ANNOTATION: tag}}]}
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
    (layout / "oci-layout").write_text(OCI_LAYOUT)
    return LayoutWritten(str(described["digest"]), diff_id, layer_size)
