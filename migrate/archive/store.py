"""Local checkpoints under a state root, and the manifest every checkpoint carries.

Layout of one local checkpoint (ROOT/checkpoints/<checkpoint_id>/)::

    manifest.json     the manifest (see docs/archive-format.md), with the dump stats merged in
    images/           CRIU's images dir, uncompressed, so a local restore reads it in place
    upper.pma         the container's overlay upper layer as an archive (migrate.archive format)
    upper.img         where the layer lives on a file system image (runtime/upperfs.py): a sparse
                      copy of that image (upper.pma then holds no members); it keeps inode numbers

A checkpoint directory appears atomically: it is built under ROOT/tmp and renamed into place,
so a crash never leaves a half-written checkpoint visible.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import platform
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from migrate.api import CheckpointInfo
from migrate.errors import ArchiveError, ArchiveLimitExceeded, CheckpointNotFound
from migrate.archive.signing import SignaturePolicy, verify_file
from runtime.config import Paths
from runtime.errors import InvalidArgument
from runtime.extract_limits import current_limits
from runtime.fstree import remove_tree_quietly
from runtime.spec import ContainerSpec

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
IMAGES_DIR = "images"
UPPER_ARCHIVE = "upper.pma"
UPPER_IMAGE = "upper.img"  # runtime.upperfs.IMAGE_NAME; also the archive member's name
MANIFEST_KIND = "pymigrate-checkpoint"
UPPER_STAGE_KIND = "pymigrate-upper-stage"  # a live migration's upper layer sent before the freeze
ORIGIN_KEY = "origin"  # in a stored manifest: "upload" for UploadCheckpoint (migrate.restore's Origin)
ORIGIN_UPLOAD = "upload"

_ID_RE = re.compile(r"^[0-9a-f]{4,64}$")


def new_checkpoint_id() -> str:
    return secrets.token_hex(12)


def validate_checkpoint_id(checkpoint_id: str) -> str:
    """Refuse ids that could name anything outside the checkpoints dir."""
    if not _ID_RE.match(checkpoint_id):
        raise InvalidArgument(f"invalid checkpoint id {checkpoint_id!r}: expected 4-64 lower-case hex characters")
    return checkpoint_id


def host_facts() -> dict[str, Any]:
    """What a target compares before restoring: kernel, CPU digest, cgroup layout, CRIU version."""
    from runtime import host

    model, cpu_digest, _nflags = host.read_cpu()
    try:
        cgroup_mode = host.read_cgroup().mode
    except Exception:  # informative only; the cgroup layout is re-probed on the target
        cgroup_mode = "unknown"
    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "cpu_model": model,
        "cpu_digest": cpu_digest,
        "cgroup_layout": cgroup_mode,
        "machine": platform.machine(),
    }


def image_record(images: Any, spec: ContainerSpec) -> dict[str, Any]:
    """The manifest's ``image``: the base image by digest and, when stored as layers, its chain
    (diff_ids lowest first) and config digest, so a host lacking it knows what to fetch."""
    record: dict[str, Any] = {"name": spec.image, "digest": spec.image_digest}
    if images.has_digest(spec.image_digest):
        image = images.get(spec.image_digest)
        if image.layers:
            record.update(layers=list(image.layers), config_digest=image.config_digest)
    return record


def build_manifest(spec: ContainerSpec, checkpoint_id: str, *, criu_version: str, options: dict[str, Any],
                   image: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": MANIFEST_KIND,
        "checkpoint_id": checkpoint_id,
        "created_at": time.time(),
        "container": spec.to_dict(),
        "image_digest": spec.image_digest,
        "image": image or {"name": spec.image, "digest": spec.image_digest},
        "criu_version": criu_version,
        "host": host_facts(),
        "options": options,
        "uid": os.geteuid(),
        "devices": build_devices(),
    }


def build_devices() -> dict[str, bool]:
    """The manifest's ``devices``: device nodes a container made (it has CAP_MKNOD) are restored
    only from archives written by root on a pymigrate host; see devices_allowed()."""
    return {"taken_as_root": os.geteuid() == 0, "trusted_host": True}


def devices_allowed(manifest: dict[str, Any]) -> bool:
    """The device-node policy for an archive's upper layer: overlay whiteouts are always fine;
    other device nodes only when the manifest says root took the checkpoint on a trusted host."""
    devices = manifest.get("devices")
    if not isinstance(devices, dict):  # an archive's manifest: any JSON at all
        return False
    return bool(devices.get("taken_as_root") and devices.get("trusted_host"))


class CheckpointStore:
    """Local checkpoints of one state root."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def dir(self, checkpoint_id: str) -> Path:
        return self.paths.checkpoint(validate_checkpoint_id(checkpoint_id))

    def resolve(self, checkpoint_id: str) -> str:
        """Full id from an id or a unique prefix; CheckpointNotFound otherwise."""
        validate_checkpoint_id(checkpoint_id)
        if (self.paths.checkpoints / checkpoint_id / MANIFEST).exists():
            return checkpoint_id
        matches = [p.name for p in self._dirs() if p.name.startswith(checkpoint_id)]
        if len(matches) == 1:
            return matches[0]
        raise CheckpointNotFound(checkpoint_id)

    def manifest(self, checkpoint_id: str) -> dict[str, Any]:
        path = self.dir(self.resolve(checkpoint_id)) / MANIFEST
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError) as exc:
            raise ArchiveError(f"cannot read checkpoint manifest {path}: {exc}") from exc

    def staging_dir(self, checkpoint_id: str) -> Path:
        self.paths.tmp.mkdir(parents=True, exist_ok=True)
        path = self.paths.tmp / f"ckpt-{checkpoint_id}"
        path.mkdir(mode=0o700)
        return path

    def commit(self, staging: Path, checkpoint_id: str, manifest: dict[str, Any]) -> Path:
        """Write the manifest and move a staged checkpoint into place atomically."""
        _write_json_atomic(staging / MANIFEST, manifest)
        final = self.dir(checkpoint_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
        _fsync_dir(final.parent)
        return final

    def list(self) -> list[CheckpointInfo]:
        out = []
        for d in self._dirs():
            try:
                m = json.loads((d / MANIFEST).read_text())
            except (OSError, ValueError):
                log.warning("skipping unreadable checkpoint %s", d)
                continue
            out.append(info_from_manifest(m, size_bytes=_tree_size(d)))
        return sorted(out, key=lambda c: c.created_at)

    def remove(self, checkpoint_id: str) -> None:
        d = self.dir(self.resolve(checkpoint_id))
        trash = self.paths.tmp / f"rm-{d.name}-{secrets.token_hex(4)}"
        os.rename(d, trash)  # disappears atomically, then the slow part
        remove_tree_quietly(trash)

    def image_digests(self) -> set[str]:
        """The base image digests of the local checkpoints (restoring one needs its image)."""
        digests: set[str] = set()
        for d in self._dirs():
            try:
                digests.add(json.loads((d / MANIFEST).read_text())["image_digest"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable: list() skips it too
        return digests

    def _dirs(self) -> builtins.list[Path]:
        if not self.paths.checkpoints.is_dir():
            return []
        return [p for p in self.paths.checkpoints.iterdir() if p.is_dir() and (p / MANIFEST).exists()]


def info_from_manifest(m: dict[str, Any], *, size_bytes: int = 0) -> CheckpointInfo:
    container = m.get("container", {})
    return CheckpointInfo(
        checkpoint_id=m.get("checkpoint_id", ""),
        container_name=container.get("name", ""),
        container_id=container.get("container_id", ""),
        image_digest=m.get("image_digest", ""),
        created_at=float(m.get("created_at", 0.0)),
        size_bytes=size_bytes,
        criu_version=m.get("criu_version", ""),
        labels=_manifest_labels(m),
    )


def _manifest_labels(m: dict[str, Any]) -> dict[str, str]:
    """The checkpoint's own labels (checkpoint --label); an archive's bad ones are left out, not trusted."""
    from runtime.errors import InvalidArgument
    from runtime.labels import validate_labels

    try:
        return validate_labels(m.get("labels") or {})
    except InvalidArgument:
        return {}


def _tree_size(path: Path) -> int:
    """The bytes the files under ``path`` take on disk (st_blocks * 512, stat(2)), not their
    apparent size: a checkpoint's upper.img is a sparse file of the container's whole upper-layer
    budget (16 GiB by default) holding only what was written."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_DIRECTORY | os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export_stream(paths: Paths, checkpoint_id: str, *, compress: str = "zstd", level: int = 1) -> Iterator[bytes]:
    """A local checkpoint as one archive byte stream (the same format as ``checkpoint --export``)."""
    import threading

    from migrate.archive import ArchiveWriter, read_archive
    from migrate.archive.streams import ChunkSink

    store = CheckpointStore(paths)
    cid = store.resolve(checkpoint_id)
    base = store.dir(cid)
    manifest = store.manifest(cid)
    sink = ChunkSink()

    def produce() -> None:
        scratch = paths.tmp / f"export-{secrets.token_hex(6)}"
        try:
            scratch.mkdir(mode=0o700, parents=True)
            with open(base / UPPER_ARCHIVE, "rb") as f:
                read_archive(f, scratch, allow_devices=True)  # our own local checkpoint
            (scratch / "upper").mkdir(exist_ok=True)
            writer = ArchiveWriter(sink, compress=compress, level=level)  # type: ignore[arg-type]
            writer.write_manifest({k: v for k, v in manifest.items() if k != "dump_stats"})
            writer.add_tree("upper", scratch / "upper")
            if (base / UPPER_IMAGE).exists():  # written by this host's checkpoint
                from migrate.archive.upper_image import add_image

                add_image(writer, base / UPPER_IMAGE, scratch)
            for p in sorted((base / IMAGES_DIR).iterdir()):
                if p.is_file():
                    writer.add_file(f"{IMAGES_DIR}/{p.name}", p)
            writer.close(trailer={"dump_stats": manifest.get("dump_stats", {})})
            sink.close()
        except BaseException as exc:  # handed to the consumer through the stream
            sink.abort(exc)
        finally:
            remove_tree_quietly(scratch)

    threading.Thread(target=produce, name=f"export-{cid[:8]}", daemon=True).start()
    return sink.chunks()


def _check_uploaded_spec(manifest: dict[str, Any]) -> None:
    """Refuse an upload whose container spec ``run`` would refuse (InvalidSpec names the field),
    before it is kept. Its volumes are judged at restore, where they must be mapped."""
    from dataclasses import replace

    from runtime.container import parse_spec, validate_spec
    from runtime.ns_modes import refuse_in_manifest

    refuse_in_manifest(validate_spec(replace(parse_spec(manifest.get("container")), volumes=())))  # no shared namespace either


def import_stream(paths: Paths, chunks: Iterator[bytes], policy: SignaturePolicy | None = None) -> CheckpointInfo:
    """Verify an archive stream and keep it as a local checkpoint (new id if the old one exists).

    With a ``policy`` that requires signatures, the stream is first spooled to the scratch dir
    and its signature verified (SignatureError) before a single member is extracted."""
    from migrate.archive import ArchiveWriter, read_archive
    from migrate.archive.streams import IteratorReader

    store = CheckpointStore(paths)
    scratch = paths.tmp / f"import-{secrets.token_hex(6)}"
    scratch.mkdir(mode=0o700, parents=True)
    try:
        with _verified_source(IteratorReader(chunks), scratch, policy) as (source, expect_sha256):
            manifest = read_archive(source, scratch / "archive", allow_devices=devices_allowed, expect_sha256=expect_sha256)
        if manifest.get("kind") != MANIFEST_KIND:
            raise ArchiveError(f"not a pymigrate checkpoint archive (kind {manifest.get('kind')!r})")
        _check_uploaded_spec(manifest)
        checkpoint_id = manifest.get("checkpoint_id")
        if not isinstance(checkpoint_id, str) or not _ID_RE.match(checkpoint_id) or (paths.checkpoints / checkpoint_id).exists():
            checkpoint_id = new_checkpoint_id()
        manifest["checkpoint_id"] = checkpoint_id
        manifest[ORIGIN_KEY] = ORIGIN_UPLOAD  # whatever the archive said: its restore maps volumes
        staging = store.staging_dir(checkpoint_id)
        try:
            os.rename(scratch / "archive" / IMAGES_DIR, staging / IMAGES_DIR)
            from migrate.archive.upper_image import unpack_members
            from runtime.upperfs import check_untrusted

            try:
                unpacked = unpack_members(scratch / "archive", staging / UPPER_IMAGE)
            except ValueError as exc:
                raise ArchiveError(f"checkpoint archive: {exc}") from exc
            if unpacked:  # anyone could have made it: checked before it is kept (and later mounted)
                check_untrusted(staging / UPPER_IMAGE)
            upper = scratch / "archive" / "upper"
            upper.mkdir(exist_ok=True)
            with open(staging / UPPER_ARCHIVE, "wb") as f:
                with ArchiveWriter(f, compress="none") as writer:
                    writer.write_manifest({"kind": "upper-layer", "checkpoint_id": checkpoint_id})
                    writer.add_tree("upper", upper)
            final = store.commit(staging, checkpoint_id, manifest)
        except BaseException:
            remove_tree_quietly(staging)
            raise
    finally:
        remove_tree_quietly(scratch)
    return info_from_manifest(manifest, size_bytes=_tree_size(final))


@contextlib.contextmanager
def _verified_source(stream: Any, scratch: Path, policy: SignaturePolicy | None) -> Iterator[tuple[Any, bytes | None]]:
    """The archive to extract and the digest its signature covers: the stream itself when no
    signature is required, else a spooled copy whose signature was verified."""
    if policy is None or not policy.required:
        yield stream, None
        return
    spooled = scratch / "upload.archive"
    _spool(stream, spooled, current_limits().max_total_bytes)
    verified = verify_file(spooled, policy)
    log.info("upload signed by %s accepted (sha256 %s)", verified.describe(), verified.sha256.hex())
    try:
        with open(spooled, "rb") as f:
            yield f, verified.sha256
    finally:
        spooled.unlink(missing_ok=True)  # its members are extracted: the copy is not kept twice


def _spool(stream: Any, path: Path, limit_bytes: int) -> None:
    size = 0
    with open(path, "xb") as out:
        while chunk := stream.read(4 << 20):
            size += len(chunk)
            if size > limit_bytes:
                raise ArchiveLimitExceeded(f"the upload is larger than max_total_bytes ({limit_bytes} bytes)",
                                           limit="max_total_bytes", value=limit_bytes, actual=size,
                                           hint="raise it in PYMIGRATE_EXTRACT_LIMITS if this archive is expected")
            out.write(chunk)
