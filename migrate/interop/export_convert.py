"""One checkpoint, whatever holds it, written in podman's layout (migrate/interop/podman_export.py).

An ``ExportSource`` is what the conversion reads: the manifest, CRIU's images dir, the upper layer
(a directory, or its file-system image, mounted read-only for the walk) and the image's tree (the
lower layer), or None where the image is not at hand: a checkpoint downloaded from another host
(migrate/interop/export_remote.py). Without the image the two things that need it are refused
rather than guessed: a directory the container made (overlayfs marks each one opaque, so whether
it replaced one of the image's, whose old entries go to deleted.files, only the image can tell;
pymigrate's own /.pymigrate excepted) and a USER given by name (looked up in the image's /etc/passwd; the container's
own upper layer is never read for it: it could point a symlink at a host file).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from migrate.interop import export_images, export_rootfs
from migrate.interop.export_spec import libpod_config, oci_spec
from runtime.errors import InvalidArgument, Unsupported
from runtime.rootfs import LOG_DIR
from runtime.spec import ContainerSpec

log = logging.getLogger(__name__)

COMPRESSIONS = ("zstd", "gzip", "none")  # podman checkpoint --compress
SPEC_DUMP = "spec.dump"
CONFIG_DUMP = "config.dump"
CHECKPOINT_DIR = "checkpoint"
LEGACY_NETNS_KEY = "extnet"  # what manifests without options.netns_key were dumped with
FEATURE = "podman export"
NATIVE_HINT = "export it in pymigrate's own format (--format native) and restore it with pymigrate"


@dataclass(frozen=True)
class ExportSource:
    """A checkpoint to convert (module docstring)."""

    checkpoint_id: str
    manifest: dict[str, Any]
    images_dir: Path
    upper: Path  # the upper dir, or its file-system image (upper.img)
    lower: Path | None  # the image's tree, read-only; None: not at hand
    shm: Path | None = None  # an imported container's /dev/shm (its engine bind's directory), if at hand


def check_exportable(spec: ContainerSpec) -> None:
    """Refuse what podman could not restore (podman_export's docstring), naming it.

    Raises:
        Unsupported: the container has named volumes, --init, --userns, -t or -i.
    """
    reasons = []
    strange = [m for m in spec.engine_mounts if engine_mount_kind(m) == "other"]
    if strange:
        reasons.append(f"its engine binds {', '.join(strange)} are none podman makes")
    named = [v.target for v in spec.volumes if v.name]
    if named:
        reasons.append(f"it has named volumes ({', '.join(named)}), which podman keeps in volumes of its own")
    if spec.init:
        reasons.append("it runs with --init (tini bound from this host)")
    if spec.userns:
        reasons.append("it runs in a user namespace (--userns)")
    if spec.tty or spec.interactive:
        reasons.append("its stdio is a terminal or pipe held by its shim (-t/-i)")
    if spec.network not in ("bridge", "none"):
        reasons.append(f"its network mode is {spec.network}")
    if reasons:
        raise Unsupported(f"{FEATURE} of container {spec.name}", "; ".join(reasons), hint=NATIVE_HINT)


def bind_keys(spec: ContainerSpec) -> dict[str, str]:
    """A bind volume's (-v HOST:TARGET) key in pymigrate's dump (``volN``: migrate/checkpoint.py
    ``volume_key``) -> runc's (its destination), which the exported images get."""
    from migrate.checkpoint import volume_key

    return {volume_key(i): v.target for i, v in enumerate(spec.volumes) if not v.name}


def engine_mount_kind(destination: str) -> str:
    """What a bind of a container imported from podman (``ContainerSpec.engine_mounts``) is to
    podman: ``file`` (/etc/hosts and the others it binds itself on restore), ``shm``, ``cgroup``
    (runc's v1 binds), ``masked`` (a masked file below /proc or /sys), else ``other``."""
    from migrate.interop.import_mounts import CGROUP_ROOT, ENGINE_FILES, SHM

    if destination in ENGINE_FILES:
        return "file"
    if destination == SHM:
        return "shm"
    if destination == CGROUP_ROOT or destination.startswith(CGROUP_ROOT + "/"):
        return "cgroup"
    if destination.startswith(("/proc/", "/sys/")):
        return "masked"
    return "other"


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
        raise Unsupported(f"{FEATURE} of image {name or '?'}",
                          "the checkpoint's image has no config digest podman could know it by",
                          hint="run the container from an image loaded from a docker/OCI archive or pulled from a registry, "
                          "the same one podman has")
    if not name:
        raise InvalidArgument("the checkpoint names no image: give the name podman knows it by")
    return name, hex_id


def write_source(src: ExportSource, out_dir: Path, work: Path, sys: Any, *, image_ref: str | None = None,
                 image_id: str | None = None) -> None:
    """``src`` in podman's layout in ``out_dir`` (made here: absent or empty); ``work``: a private
    scratch dir for the layer and the image's mount; ``sys``: runtime.syscalls.Syscalls.

    Raises:
        Unsupported: a container, image or layer podman could not restore (module docstring).
        ArchiveError: a CRIU image that cannot be read.
    """
    spec = ContainerSpec.from_dict(src.manifest["container"])
    check_exportable(spec)
    image_name, hex_id = image_identity(src.manifest, image_ref, image_id)
    creds = _credentials(spec, src.lower)
    out_dir.mkdir(mode=0o700, exist_ok=True)
    if any(out_dir.iterdir()):
        raise InvalidArgument(f"cannot write the podman checkpoint into {out_dir}: the directory is not empty")
    netns_key = str((src.manifest.get("options") or {}).get("netns_key") or LEGACY_NETNS_KEY)
    masked = frozenset(m for m in spec.engine_mounts if engine_mount_kind(m) == "masked")
    binds = bind_keys(spec)
    if export_images.copy_images(src.images_dir, out_dir / CHECKPOINT_DIR, netns_key=netns_key, masked=masked,
                                 binds=binds) != 1:
        raise Unsupported(f"{FEATURE} of container {spec.name}", f"its dump holds no network namespace declared as {netns_key}",
                          hint=NATIVE_HINT)
    for name in (export_images.STATS_DUMP, export_images.DUMP_LOG):
        beside = src.images_dir / name
        if beside.is_file() and not beside.is_symlink():
            (out_dir / name).write_bytes(beside.read_bytes())
    _write_rootfs(spec, src, out_dir, work, sys)
    if "/dev/shm" in spec.engine_mounts:
        _write_shm(spec, src.shm, out_dir)
    oci = oci_spec(spec, creds, checkpoint_id=src.checkpoint_id, netns_path=f"/run/netns/pymigrate-{spec.container_id}",
                   rlimits=export_images.init_rlimits(src.images_dir), masked=masked,
                   cgroupns=export_images.cgroup_namespaced(src.images_dir / export_images.CGROUP_IMAGE))
    created = src.manifest.get("created_at")
    config = libpod_config(spec, oci, image_name=image_name, image_id=hex_id, created_at=spec.created_at,
                           checkpointed_at=float(created) if isinstance(created, (int, float)) else None)
    write_json(out_dir / SPEC_DUMP, oci)
    write_json(out_dir / CONFIG_DUMP, config)
    log.info("checkpoint=%s container=%s written in podman's layout to %s (image %s %s)", src.checkpoint_id, spec.name,
             out_dir, image_name, hex_id[:12])


def write_json(path: Path, value: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=1)


def _credentials(spec: ContainerSpec, lower: Path | None) -> Any:
    """The container's USER resolved in the image's passwd and group files (root when unset)."""
    from runtime import users

    if not spec.user:
        return users.ROOT
    want = users.parse_user(spec.user)
    if lower is None:
        if (want.user and not want.user.isdigit()) or (want.group and not want.group.isdigit()):
            raise Unsupported(f"{FEATURE} of container {spec.name}", f"its user {spec.user} is a name and its image is not here",
                              hint="run the export on the container's host")
        return users.resolve(want, [], [])
    passwd, group = _image_file(lower, "etc/passwd"), _image_file(lower, "etc/group")
    return users.resolve(want, users.parse_passwd(passwd), users.parse_group(group))


_DB_MAX_BYTES = 4 << 20


def _image_file(lower: Path, rel: str) -> bytes:
    """A regular file of the image's tree, reached without following symlinks (the image's
    /etc/passwd may be one with a host path); empty when there is none."""
    import stat

    try:
        fd = export_rootfs.open_in_tree(lower, rel, directory=False)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, _DB_MAX_BYTES)
    finally:
        os.close(fd)


def _write_rootfs(spec: ContainerSpec, src: ExportSource, out_dir: Path, work: Path, sys: Any) -> None:
    """rootfs-diff.tar and deleted.files from the upper layer (via an OCI layer in ``work``)."""
    from runtime.extract_limits import current_limits
    from runtime.upper_layer_tar import Exclusions, write_layer

    layer = work / "layer.tar"
    with mounted(src.upper, work, sys) as upper:
        fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            with open(layer, "wb") as sink:
                write_layer(fd, sink, exclude=Exclusions(), limits=current_limits())
        finally:
            os.close(fd)
    with open(layer, "rb") as f, open(out_dir / export_rootfs.ROOTFS_DIFF, "wb") as diff:
        split = export_rootfs.split_layer(f, diff, export_rootfs.lower_lister(src.lower))
    layer.unlink()
    # overlayfs marks every directory made in the upper layer opaque, over an image's or not; only
    # pymigrate's own log dir is known to be in no image
    unknown = [d for d in split.opaque_dirs if d != LOG_DIR]
    if unknown and src.lower is None:
        raise Unsupported(f"{FEATURE} of container {spec.name}",
                          f"it made the directories {', '.join(unknown)} and the image is not here to tell which of them "
                          "replace one of its own (and what that deleted)", hint="run the export on the container's host")
    export_rootfs.write_deleted(out_dir, split.deleted)


DEVSHM_TAR = "devshm-checkpoint.tar"  # podman unpacks it into the new /dev/shm before the restore


def _write_shm(spec: ContainerSpec, shm: Path | None, out_dir: Path) -> None:
    """An imported container's /dev/shm (a bind of a directory, like podman's) as podman's
    ``devshm-checkpoint.tar``, walked like an upper layer (the container writes there)."""
    from runtime.extract_limits import current_limits
    from runtime.upper_layer_tar import Exclusions, write_layer

    if shm is None or not shm.is_dir():
        raise Unsupported(f"{FEATURE} of container {spec.name}", "its /dev/shm is a directory on the container's host, not here",
                          hint="run the export on the container's host")
    fd = os.open(shm, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with open(out_dir / DEVSHM_TAR, "wb") as sink:
            write_layer(fd, sink, exclude=Exclusions(), limits=current_limits())
    finally:
        os.close(fd)


@contextmanager
def mounted(upper: Path, work: Path, sys: Any) -> Iterator[Path]:
    """The upper dir: ``upper`` itself, or the ``upper/`` of its file-system image mounted
    read-only on ``work/view`` meanwhile."""
    from runtime import upperfs

    if not upperfs.is_image_file(upper):
        yield upper
        return
    view = work / "view"
    view.mkdir()
    upperfs.mount_read_only(sys, upper, view)
    try:
        yield view / upperfs.UPPER
    finally:
        upperfs.unmount(sys, view)


def pack_file(tree: Path, out_file: Path, compress: str, level: int = 1) -> int:
    """``tree`` packed (``pack_dir``) at ``out_file``, written under a temp name beside it, fsynced
    and renamed: the file appears complete or not at all. Returns its bytes."""
    if compress not in COMPRESSIONS:
        raise InvalidArgument(f"invalid compression {compress!r} for a podman archive: expected one of {', '.join(COMPRESSIONS)}")
    tmp = out_file.with_name(f".{out_file.name}.{os.urandom(4).hex()}.partial")
    try:
        # 0600 as podman's: it holds the container's memory
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as f:
            pack_dir(tree, f, compress, level)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, out_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_file.stat().st_size


def pack_dir(tree: Path, sink: BinaryIO, compress: str, level: int = 1) -> None:
    """The files of ``tree`` as a tar (members relative to it, as podman writes them) into ``sink``;
    ``level``: zstd's (gzip's is the default, 9)."""
    if compress == "zstd":
        import zstandard

        with zstandard.ZstdCompressor(level=level).stream_writer(sink, closefd=False) as z:
            _tar(tree, z, "w|")
    elif compress == "gzip":
        _tar(tree, sink, "w|gz")
    else:
        _tar(tree, sink, "w|")


def _tar(tree: Path, sink: Any, mode: str) -> None:
    with tarfile.open(fileobj=sink, mode=mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for path in sorted(tree.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(tree)), recursive=False)
