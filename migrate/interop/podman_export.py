"""Export: a pymigrate checkpoint as the archive ``podman container restore --import`` restores.

``checkpoint NAME --export FILE --format podman`` takes a local checkpoint first (the usual dump,
frozen time unchanged), converts it with ``write_podman_archive`` and removes the local copy, as a
native ``--export`` leaves none. The layout (podman 4.3 / runc 1.1, the one CRI-O and
``checkpointctl`` read too)::

    checkpoint/        CRIU's images: the network namespace re-keyed for runc and descriptors.json
                       (migrate/interop/export_images.py)
    spec.dump          OCI runtime spec of the container; config.dump  libpod's ContainerConfig
                       (migrate/interop/export_spec.py)
    rootfs-diff.tar    the upper layer without whiteouts; deleted.files  what they deleted
                       (migrate/interop/export_rootfs.py)
    stats-dump         CRIU's dump statistics

What does not go: a container podman could not run as it ran here is refused before anything is
written (``Unsupported``, naming the reason): volumes (runc keys external bind mounts by their
destination, pymigrate's dump by ``volN``), ``--init`` (tini bound from the host), ``--userns``,
``-t``/``-i`` (a terminal or stdin pipe its shim holds) and an image podman cannot know by id (one
made by ``image import`` or ``commit`` here has no config digest from another tool). The address
is not kept: podman gives the container one of its network's (no ``network.status`` is written,
so podman does not ask its network for ours). Capabilities on files in the upper layer survive
only as the xattrs ``write_layer`` keeps.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from migrate.archive.store import IMAGES_DIR, UPPER_ARCHIVE, UPPER_IMAGE, CheckpointStore
from migrate.interop import export_images, export_rootfs
from migrate.interop.export_spec import libpod_config, oci_spec
from runtime.errors import InvalidArgument, Unsupported
from runtime.spec import ContainerSpec

log = logging.getLogger(__name__)

FORMATS = ("native", "podman")
COMPRESSIONS = ("zstd", "gzip", "none")  # podman checkpoint --compress
SPEC_DUMP = "spec.dump"
CONFIG_DUMP = "config.dump"
CHECKPOINT_DIR = "checkpoint"
LEGACY_NETNS_KEY = "extnet"  # what manifests without options.netns_key were dumped with
_FEATURE = "podman export"
_NATIVE_HINT = "export it in pymigrate's own format (--format native) and restore it with pymigrate"


def check_exportable(spec: ContainerSpec) -> None:
    """Refuse what podman could not restore (module docstring), naming it.

    Raises:
        Unsupported: the container has volumes, --init, --userns, -t or -i.
    """
    reasons = []
    if spec.volumes:
        reasons.append(f"it has volumes ({', '.join(v.target for v in spec.volumes)}), which runc maps by path")
    if spec.init:
        reasons.append("it runs with --init (tini bound from this host)")
    if spec.userns:
        reasons.append("it runs in a user namespace (--userns)")
    if spec.tty or spec.interactive:
        reasons.append("its stdio is a terminal or pipe held by its shim (-t/-i)")
    if spec.network not in ("bridge", "none"):
        reasons.append(f"its network mode is {spec.network}")
    if reasons:
        raise Unsupported(f"{_FEATURE} of container {spec.name}", "; ".join(reasons), hint=_NATIVE_HINT)


def image_identity(manifest: dict[str, Any], image_ref: str | None, image_id: str | None) -> tuple[str, str]:
    """(name, 64-hex id) podman should know the container's image by.

    Raises:
        Unsupported: no id given and the checkpoint's image has no config digest.
    """
    image = manifest.get("image") or {}
    name = image_ref or str(image.get("name") or "")
    digest = image_id or str(image.get("config_digest") or "")
    hex_id = digest.split(":", 1)[1] if digest.startswith("sha256:") else digest
    if len(hex_id) != 64 or any(c not in "0123456789abcdef" for c in hex_id):
        raise Unsupported(f"{_FEATURE} of image {name or '?'}",
                          "the checkpoint's image has no config digest podman could know it by",
                          hint="run the container from an image loaded from a docker/OCI archive or pulled from a registry, "
                          "the same one podman has")
    if not name:
        raise InvalidArgument("the checkpoint names no image: give the name podman knows it by")
    return name, hex_id


def precheck(rt: Any, name: str, options: Any) -> None:
    """Before anything is frozen: what ``export_checkpoint`` would refuse later.

    Raises:
        InvalidArgument: no --export FILE, a signing key, or a compression podman does not read.
        Unsupported: the container or its image (``check_exportable``, ``image_identity``).
    """
    from migrate.archive.store import image_record

    if options.export_path is None:
        raise InvalidArgument("--format podman writes an archive: give --export FILE")
    if options.sign_key is not None:
        raise InvalidArgument("a podman archive carries no signature: --sign-key needs --format native",
                              hint="sign it apart (e.g. with ssh-keygen -Y sign) if it must be signed")
    if options.compress not in COMPRESSIONS:
        raise InvalidArgument(f"invalid compression {options.compress!r} for a podman archive: expected one of {', '.join(COMPRESSIONS)}")
    spec = rt.get(name).spec
    check_exportable(spec)
    image_identity({"image": image_record(rt.images, spec)}, None, None)


def export_checkpoint(rt: Any, name: str, options: Any, *, progress: Any = None) -> Any:
    """``checkpoint NAME --export FILE --format podman``: a local checkpoint (``options`` without the
    export: the usual dump), converted by ``write_podman_archive``, then removed (a native export
    leaves none either). If the conversion fails the local checkpoint is kept and the error's hint
    names it: a container stopped by the checkpoint is never left without one. Returns the
    checkpoint's CheckpointResult with ``export_path`` and ``archive_bytes`` set. With
    ``--create-image`` the local checkpoint stays: the image is built from it afterwards.
    """
    import dataclasses
    import time

    from migrate.checkpoint import checkpoint_container
    from migrate.errors import MigrationError
    from runtime.errors import ContainerError

    precheck(rt, name, options)
    out = Path(options.export_path).resolve()
    local = dataclasses.replace(options, export_path=None, export_format="native", compress="zstd")
    result = checkpoint_container(rt, name, local, progress=progress)
    started = time.monotonic()
    if progress is not None:
        from migrate.api import ProgressEvent

        progress(ProgressEvent("export", "convert", message=f"podman archive {out}"))
    try:
        size = write_podman_archive(rt, result.checkpoint_id, out, compress=options.compress)
    except (ContainerError, MigrationError, OSError) as exc:
        kept = f"the checkpoint is kept: pymigrate restore {result.checkpoint_id}"
        if isinstance(exc, OSError):
            raise Unsupported(f"{_FEATURE} of container {name}", f"cannot write {out}: {exc.strerror or exc}", hint=kept) from exc
        exc.hint = f"{exc.hint + '; ' if exc.hint else ''}{kept}"
        raise
    if not options.create_image:  # --create-image builds its image from the local checkpoint next
        CheckpointStore(rt.paths).remove(result.checkpoint_id)
    stats = dataclasses.replace(result.stats, archive_bytes=size,
                                total_ms=round(result.stats.total_ms + (time.monotonic() - started) * 1000, 3))
    return dataclasses.replace(result, export_path=str(out), stats=stats)


def write_podman_dir(rt: Any, checkpoint_id: str, out_dir: Path, *, image_ref: str | None = None,
                     image_id: str | None = None) -> None:
    """Local checkpoint ``checkpoint_id`` of ``rt`` (a runtime.checkpointing.CheckpointHost) in
    podman's layout in ``out_dir`` (made here; it must not exist or be empty). ``image_ref``/``image_id``:
    the name and id podman knows the image by (default: the checkpoint's image name and its config digest).

    Raises:
        CheckpointNotFound: no such checkpoint.
        Unsupported: a container or image podman could not restore (``check_exportable``, ``image_identity``).
        ArchiveError: a CRIU image that cannot be read.
    """
    store = CheckpointStore(rt.paths)
    cid = store.resolve(checkpoint_id)
    manifest = store.manifest(cid)
    spec = ContainerSpec.from_dict(manifest["container"])
    check_exportable(spec)
    image_name, hex_id = image_identity(manifest, image_ref, image_id)
    out_dir.mkdir(mode=0o700, exist_ok=True)
    if any(out_dir.iterdir()):
        raise InvalidArgument(f"cannot write the podman checkpoint into {out_dir}: the directory is not empty")
    base = store.dir(cid)
    netns_key = str((manifest.get("options") or {}).get("netns_key") or LEGACY_NETNS_KEY)
    if export_images.copy_images(base / IMAGES_DIR, out_dir / CHECKPOINT_DIR, netns_key=netns_key) != 1:
        raise Unsupported(f"{_FEATURE} of container {spec.name}", f"its dump holds no network namespace declared as {netns_key}",
                          hint=_NATIVE_HINT)
    stats = base / IMAGES_DIR / export_images.STATS_DUMP
    if stats.is_file():
        (out_dir / export_images.STATS_DUMP).write_bytes(stats.read_bytes())
    with _lower(rt, spec) as lower:
        creds = _credentials(spec, lower)
        _write_rootfs(rt, base, out_dir, lower)
    oci = oci_spec(spec, creds, checkpoint_id=cid, netns_path=f"/run/netns/pymigrate-{spec.container_id}",
                   rlimits=export_images.init_rlimits(base / IMAGES_DIR))
    config = libpod_config(spec, oci, image_name=image_name, image_id=hex_id, created_at=spec.created_at)
    _write_json(out_dir / SPEC_DUMP, oci)
    _write_json(out_dir / CONFIG_DUMP, config)
    log.info("checkpoint=%s container=%s written in podman's layout to %s (image %s %s)", cid, spec.name, out_dir,
             image_name, hex_id[:12])


def _write_json(path: Path, value: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=1)


@contextmanager
def _lower(rt: Any, spec: ContainerSpec) -> Iterator[Path | None]:
    """The image's tree (read-only), or None when this host no longer has the image."""
    images = rt.images
    if not images.has_digest(spec.image_digest):
        yield None
        return
    with images.view(spec.image_digest) as tree:
        yield tree


def _credentials(spec: ContainerSpec, lower: Path | None) -> Any:
    """The container's USER resolved in the image's passwd and group files (root when unset)."""
    from runtime import users

    if not spec.user:
        return users.ROOT
    want = users.parse_user(spec.user)
    passwd = users.read_db(str(lower / "etc/passwd")) if lower is not None else None
    group = users.read_db(str(lower / "etc/group")) if lower is not None else None
    return users.resolve(want, users.parse_passwd(passwd or b""), users.parse_group(group or b""))


def _write_rootfs(rt: Any, base: Path, out_dir: Path, lower: Path | None) -> None:
    """rootfs-diff.tar and deleted.files from the checkpoint's upper layer (via an OCI layer in scratch)."""
    from runtime.extract_limits import current_limits
    from runtime.scratch import scratch_dir
    from runtime.upper_layer_tar import Exclusions, write_layer

    with scratch_dir(rt.paths.tmp, "export-") as work, _upper(rt, base, work) as upper:
        layer = work / "layer.tar"
        fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            with open(layer, "wb") as sink:
                write_layer(fd, sink, exclude=Exclusions(), limits=current_limits())
        finally:
            os.close(fd)
        with open(layer, "rb") as src, open(out_dir / export_rootfs.ROOTFS_DIFF, "wb") as diff:
            split = export_rootfs.split_layer(src, diff, export_rootfs.lower_lister(lower))
        export_rootfs.write_deleted(out_dir, split.deleted)


@contextmanager
def _upper(rt: Any, base: Path, work: Path) -> Iterator[Path]:
    """The checkpoint's upper dir: its upper.pma unpacked, or a copy of its upper.img mounted read-only."""
    from migrate.archive import read_archive
    from runtime import upperfs

    kept_image = base / UPPER_IMAGE
    if not upperfs.is_image_file(kept_image):
        with open(base / UPPER_ARCHIVE, "rb") as f:
            read_archive(f, work, allow_devices=True)  # our own local checkpoint
        upper = work / "upper"
        upper.mkdir(exist_ok=True)
        yield upper
        return
    copy = work / UPPER_IMAGE
    upperfs.copy_sparse(kept_image, copy)
    view = work / "view"
    view.mkdir()
    sys = getattr(rt, "rt", rt).sys
    _mount_read_only(sys, copy, view)
    try:
        yield view / upperfs.UPPER
    finally:
        upperfs.unmount(sys, view)


def _mount_read_only(sys: Any, image: Path, where: Path) -> None:
    """Mount the copy of the layer's image read-only, ``noload`` (an ext4 without a journal to replay)."""
    from runtime import upperfs
    from runtime.errors import MountError
    from runtime.syscalls import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY

    device, dev = upperfs.attach(image)
    try:
        sys.mount(device, str(where), upperfs.FS_TYPE, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "noload")
    except OSError as exc:
        raise MountError(f"cannot mount the upper-layer image {image} read-only on {where}: {exc.strerror}") from exc
    finally:
        os.close(dev)  # the mount holds the device now (LO_FLAGS_AUTOCLEAR)


def write_podman_archive(rt: Any, checkpoint_id: str, out_file: Path, *, compress: str = "zstd",
                         image_ref: str | None = None, image_id: str | None = None) -> int:
    """``write_podman_dir`` packed as one tar (``compress``: zstd, gzip or none, podman's
    ``--compress``) at ``out_file``, written under a temp name and renamed; returns its bytes."""
    if compress not in COMPRESSIONS:
        raise InvalidArgument(f"invalid compression {compress!r} for a podman archive: expected one of {', '.join(COMPRESSIONS)}")
    from runtime.scratch import scratch_dir

    out_file = Path(out_file)
    tmp = out_file.with_name(f".{out_file.name}.{os.urandom(4).hex()}.partial")
    with scratch_dir(rt.paths.tmp, "export-") as work:
        tree = work / "podman"
        write_podman_dir(rt, checkpoint_id, tree, image_ref=image_ref, image_id=image_id)
        try:
            with open(tmp, "xb") as f:
                pack_dir(tree, f, compress)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, out_file)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return out_file.stat().st_size


def pack_dir(tree: Path, sink: BinaryIO, compress: str) -> None:
    """The files of ``tree`` as a tar (members relative to it, as podman writes them) into ``sink``."""
    if compress == "zstd":
        import zstandard

        with zstandard.ZstdCompressor(level=3).stream_writer(sink, closefd=False) as z:
            _tar(tree, z, "w|")
    elif compress == "gzip":
        _tar(tree, sink, "w|gz")
    else:
        _tar(tree, sink, "w|")


def _tar(tree: Path, sink: Any, mode: str) -> None:
    with tarfile.open(fileobj=sink, mode=mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for path in sorted(tree.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(tree)), recursive=False)
