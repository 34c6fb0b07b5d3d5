"""Export: a pymigrate checkpoint as the archive ``podman container restore --import`` restores.

``checkpoint NAME --export FILE --format podman`` takes a local checkpoint first (the usual dump,
frozen time unchanged), converts it with ``write_podman_archive`` and removes the local copy, as a
native ``--export`` leaves none. The layout (podman 4.3 / runc 1.1, the one CRI-O and
``checkpointctl`` read too)::

    checkpoint/        CRIU's images: the network namespace re-keyed for runc, cgroups re-rooted,
                       masked files keyed /dev/null, the log files turned into stdio pipes, and
                       descriptors.json (migrate/interop/export_images.py, export_stdio.py)
    spec.dump          OCI runtime spec of the container; config.dump  libpod's ContainerConfig
                       (migrate/interop/export_spec.py)
    rootfs-diff.tar    the upper layer without whiteouts; deleted.files  what they deleted
                       (migrate/interop/export_rootfs.py)
    stats-dump         CRIU's dump statistics; dump.log  CRIU's log (as CRI-O keeps it)
    devshm-checkpoint.tar  /dev/shm of a container pymigrate imported from podman (its bind)

The conversion itself reads an ``ExportSource`` (migrate/interop/export_convert.py): here a local
checkpoint with the image's tree from this host's store; over ``--host``, the native archive the
daemon sends (migrate/interop/export_remote.py).

What does not go: a container podman could not run as it ran here is refused before anything is
written (``Unsupported``, naming the reason): named volumes (podman keeps those in volumes of its
own), ``--init`` (tini bound from the host), ``--userns``,
``-t``/``-i`` (a terminal or stdin pipe its shim holds) and an image podman cannot know by id (one
made by ``image import`` or ``commit`` here has no config digest from another tool). The address
is not kept: podman gives the container one of its network's (no ``network.status`` is written,
so podman does not ask its network for ours). A bind volume (``-v HOST:TARGET``) becomes runc's
bind of HOST (its key in the images: TARGET, as runc's; pymigrate dumps it as ``volN``): HOST must
exist where podman restores. Capabilities on files in the upper layer survive
only as the xattrs ``write_layer`` keeps.

What round-trips (tests/integration/test_interop_export.py, real podman 4.3.1, runc 1.1.5, CRIU
4.1.1): the process tree and its memory (checksum), its counters going on, its root's changes
(new and changed files, deleted image files, replaced image directories), hostname, command,
environment, working dir, user, capabilities, rlimits, labels, published ports, memory/cpu/pids limits (the
spec's resources, which runc sets on podman's cgroup before CRIU runs), the cgroup namespace
(rooted at podman's cgroup for the container), stdout/stderr (what it printed before the
checkpoint stays in /.pymigrate/log and log.err in its root; what it prints after the restore
goes to conmon: ``podman logs``, migrate/interop/export_stdio.py). What does not: the
address and MAC (podman's network assigns them), the restart policy. Published ports go to
config.dump (``newPortMappings``): podman forwards them again to the new address. Restoring
established TCP connections needs podman's ``--tcp-established`` like any other podman checkpoint.

One limit of the host, not of the format: CRIU restores the dumped rlimits and, without
CAP_SYS_RESOURCE, cannot raise a hard limit above its own; under podman it runs with conmon's (here
NPROC 32768, NOFILE 20000), so a container whose init had higher hard limits fails in CRIU's
restorer ("Can't restore rlimit"). Run such a container with lower limits (the tests use podman
run's ``--ulimit nofile=1024:1024 --ulimit nproc=4096:4096`` through ``prlimit``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from migrate.archive.store import IMAGES_DIR, UPPER_ARCHIVE, UPPER_IMAGE, CheckpointStore
from migrate.interop.export_convert import (
    COMPRESSIONS,
    ExportSource,
    check_exportable,
    image_identity,
    pack_dir,
    pack_file,
    write_source,
)
from runtime.errors import InvalidArgument
from runtime.spec import ContainerSpec

__all__ = ["FORMATS", "check_exportable", "export_checkpoint", "image_identity", "pack_dir", "precheck",
           "write_podman_archive", "write_podman_dir"]

log = logging.getLogger(__name__)

FORMATS = ("native", "podman")


def check_options(options: Any) -> None:
    """What ``--format podman`` refuses in the options themselves.

    Raises:
        InvalidArgument: no --export FILE (or no directory for it), a signing key, or a compression
            podman does not read.
    """
    if options.export_path is None:
        raise InvalidArgument("--format podman writes an archive: give --export FILE")
    parent = Path(options.export_path).resolve().parent
    if not parent.is_dir():  # before the dump: a stopped container's checkpoint would wait in the store
        raise InvalidArgument(f"cannot write the podman archive {options.export_path}: {parent} is not a directory")
    if options.sign_key is not None:
        raise InvalidArgument("a podman archive carries no signature: --sign-key needs --format native",
                              hint="sign it apart (e.g. with ssh-keygen -Y sign) if it must be signed")
    if options.compress not in COMPRESSIONS:
        raise InvalidArgument(f"invalid compression {options.compress!r} for a podman archive: expected one of {', '.join(COMPRESSIONS)}")


def precheck(rt: Any, name: str, options: Any) -> None:
    """Before anything is frozen: what ``export_checkpoint`` would refuse later.

    Raises:
        InvalidArgument: ``check_options``.
        Unsupported: the container or its image (``check_exportable``, ``image_identity``).
    """
    from migrate.archive.store import image_record

    check_options(options)
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
        size = write_podman_archive(rt, result.checkpoint_id, out, compress=options.compress, level=options.level)
    except (ContainerError, MigrationError, OSError) as exc:
        kept = f"the checkpoint is kept: pymigrate restore {result.checkpoint_id}"
        if isinstance(exc, OSError):
            raise MigrationError(f"cannot write the podman archive {out} of container {name}: {exc.strerror or exc}",
                                 phase="export", hint=kept) from exc
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
    from runtime.scratch import scratch_dir

    store = CheckpointStore(rt.paths)
    cid = store.resolve(checkpoint_id)
    manifest = store.manifest(cid)
    spec = ContainerSpec.from_dict(manifest["container"])
    base = store.dir(cid)
    with scratch_dir(rt.paths.tmp, "export-") as work, _lower(rt, spec) as lower:
        upper = _local_upper(base, work)
        source = ExportSource(checkpoint_id=cid, manifest=manifest, images_dir=base / IMAGES_DIR, upper=upper, lower=lower,
                              shm=_engine_shm(rt, spec))
        write_source(source, out_dir, work, getattr(rt, "rt", rt).sys, image_ref=image_ref, image_id=image_id)


def _engine_shm(rt: Any, spec: ContainerSpec) -> Path | None:
    """An imported container's /dev/shm directory here (migrate/interop/import_mounts.py), if it has one."""
    from migrate.interop.import_mounts import ENGINE_DIR, SHM_DIR

    if "/dev/shm" not in spec.engine_mounts:
        return None
    shm = Path(rt.store.dir(spec.container_id)) / ENGINE_DIR / SHM_DIR
    return shm if shm.is_dir() else None


@contextmanager
def _lower(rt: Any, spec: ContainerSpec) -> Iterator[Path | None]:
    """The image's tree (read-only), or None when this host no longer has the image."""
    images = rt.images
    if not images.has_digest(spec.image_digest):
        yield None
        return
    with images.view(spec.image_digest) as tree:
        yield tree


def _local_upper(base: Path, work: Path) -> Path:
    """A local checkpoint's upper layer in ``work``: its upper.pma unpacked, or a copy of its upper.img."""
    from migrate.archive import read_archive
    from runtime import upperfs

    kept_image = base / UPPER_IMAGE
    if upperfs.is_image_file(kept_image):
        copy = work / UPPER_IMAGE
        upperfs.copy_sparse(kept_image, copy)  # mounted for the walk; the checkpoint's own stays untouched
        return copy
    with open(base / UPPER_ARCHIVE, "rb") as f:
        read_archive(f, work, allow_devices=True)  # our own local checkpoint
    upper = work / "upper"
    upper.mkdir(exist_ok=True)
    return upper


def write_podman_archive(rt: Any, checkpoint_id: str, out_file: Path, *, compress: str = "zstd",
                         image_ref: str | None = None, image_id: str | None = None, level: int = 1) -> int:
    """``write_podman_dir`` packed as one tar (``compress``: zstd, gzip or none, podman's
    ``--compress``; ``level``: zstd's) at ``out_file``, written under a temp name and renamed;
    returns its bytes."""
    if compress not in COMPRESSIONS:
        raise InvalidArgument(f"invalid compression {compress!r} for a podman archive: expected one of {', '.join(COMPRESSIONS)}")
    from runtime.scratch import scratch_dir

    with scratch_dir(rt.paths.tmp, "export-") as work:
        tree = work / "podman"
        write_podman_dir(rt, checkpoint_id, tree, image_ref=image_ref, image_id=image_id)
        return pack_file(tree, Path(out_file), compress, level)
