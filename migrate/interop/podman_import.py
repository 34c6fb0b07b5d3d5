"""Import: a podman or CRI-O checkpoint restored by pymigrate (``restore --import FILE``).

``import_archive`` extracts the archive safely (``foreign.extract_foreign``) into a scratch dir
under ROOT/tmp; ``restore_foreign`` (also the entry point of checkpoint images) turns the
unpacked checkpoint into what migrate/restore.py's one restore path takes (``Prepared``), which
builds the container like any import: record, address from this host's pool, cgroup, network
namespace, upper layer, overlay, then CRIU in the container's shim.

What is mapped, and how (docs/interop.md "Import"):

- the image: found here by podman's image id (a loaded image's config digest, or its digest) or
  else by name (``rootfsImageName``); absent: ``ImageNotFound`` with ``image pull``/``image load``
  hints, before anything is built, unless ``--pull`` fetches it by that name;
- the root: the image's layers plus an upper dir from ``rootfs-diff.tar`` minus ``deleted.files``
  (``import_root``), /dev/shm's content from ``devshm-checkpoint.tar``;
- the spec: ``import_spec`` (args, env, cwd, user, hostname, limits, capabilities, binds as
  volumes that ``--volume`` must map), validated by ``checked_spec`` as every import;
- the mounts CRIU restores: every external bind of the images gets a source of ours
  (``import_mounts``); their destinations are kept in ``ContainerSpec.engine_mounts`` so a later
  ``checkpoint``/``migrate`` of the container declares them again and its restore maps them;
- the network namespace: runc's key ``extRootNetNS``, given the container's new namespace. The
  address is this host's (podman's 10.88.x does not travel): TCP connections are not restored
  (``--tcp-established`` is refused), listening sockets are;
- stdio: each ``pipe:[N]`` of ``checkpoint/descriptors.json`` (conmon's pipes) becomes the
  container's log file ``/.pymigrate/log`` (stdout) or ``log.err`` (stderr), which ``logs``
  reads, by a rewrite of the images (``import_stdio``: CRIU opens them in the container's root,
  as a native container has them); a stdin pipe (``-i``) is refused;
- seccomp: as for every import, the images' filters must hold this host's default profile
  (runtime/seccomp.py check_image_filters): a checkpoint pymigrate exported passes; podman's own
  filter does not, and ``--security-opt seccomp=unconfined`` accepts it (the container keeps the
  filter podman gave it). Such a container cannot be migrated live afterwards: a peer takes only
  its own default profile (migrate/restore.py seccomp_policy); ``checkpoint --export`` and
  ``restore --import --security-opt seccomp=unconfined`` on the other host move it.

Every refusal comes before the container is built, or undoes all of it: no record, mounts,
network namespace, cgroup or scratch dir stays.

Not carried: the content of podman's named volumes (``volumes/NAME.tar``: map the target with
``--volume``); /dev/shm's content after a later pymigrate checkpoint (its bind is external to
CRIU); a post-copy migration does not map the engine binds (the cold path and every restore do).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from migrate.api import ProgressFn, RestoreOptions, RestoreResult
from migrate.interop import import_mounts as mounts_mod
from migrate.interop.import_mounts import External, ImageMount
from runtime.errors import ImageNotFound, InvalidArgument, Unsupported

NETNS_KEY = "extRootNetNS"  # runc's key for the container's (external) network namespace
IMAGES_DIR = "checkpoint"
DEVSHM_DIR = "devshm"  # in the scratch dir
LOG = "/.pymigrate/log"  # runtime.overlay.LOG_PATH_IN_CONTAINER
ERR_LOG = "/.pymigrate/log.err"  # runtime.overlay.ERR_LOG_PATH_IN_CONTAINER


def import_archive(rt: Any, options: RestoreOptions, *, criu: Any = None, progress: ProgressFn | None = None) -> RestoreResult:
    """``restore --import FILE`` of a podman/CRI-O archive (``options.import_path``)."""
    from migrate.interop.foreign import extract_foreign
    from runtime.fstree import remove_tree_quietly

    assert options.import_path is not None
    path = Path(options.import_path)
    if options.trusted_keys:
        raise Unsupported("--trusted-key with a podman or CRI-O archive", "their archives carry no pymigrate signature")
    started = time.monotonic()
    scratch = _scratch(rt)
    try:
        fc = extract_foreign(path, scratch / "archive")
    except BaseException:
        remove_tree_quietly(scratch)
        raise
    return _restore(rt, fc, options, scratch, archive_bytes=path.stat().st_size, criu=criu, progress=progress,
                    started=started)


def restore_foreign(rt: Any, fc: Any, options: RestoreOptions, *, progress: ProgressFn | None = None,
                    criu: Any = None) -> RestoreResult:
    """Restore the unpacked foreign checkpoint ``fc`` (a ``foreign.ForeignCheckpoint``); ``fc.root``
    stays the caller's. See the module docstring."""
    started = time.monotonic()
    return _restore(rt, fc, options, _scratch(rt), archive_bytes=0, criu=criu, progress=progress, started=started)


def _scratch(rt: Any) -> Path:
    rt.paths.tmp.mkdir(parents=True, exist_ok=True)
    scratch = Path(os.path.join(rt.paths.tmp, f"import-{os.urandom(6).hex()}"))
    scratch.mkdir(mode=0o700)
    return scratch


def _restore(rt: Any, fc: Any, options: RestoreOptions, scratch: Path, *, archive_bytes: int,
             criu: Any, progress: ProgressFn | None, started: float) -> RestoreResult:
    """Everything checked and unpacked into ``scratch`` (removed by the restore, or here when a
    check refuses), then the one restore path."""
    from migrate.restore import restore_container
    from runtime.fstree import remove_tree_quietly

    try:
        prepared = dataclasses.replace(_prepare(rt, fc, options, scratch, archive_bytes), started=started)
    except BaseException:
        remove_tree_quietly(scratch)
        raise
    return restore_container(rt, options, criu=criu, progress=progress, prepared=prepared)


def _prepare(rt: Any, fc: Any, options: RestoreOptions, scratch: Path, archive_bytes: int) -> Any:
    from migrate.interop.import_spec import check_supported, foreign_volumes, spec_from_foreign
    from migrate.interop.import_stdio import pipes_to_logs, read_descriptors, stdio_targets
    from migrate.restore import CRIU_WORK_DIR, Prepared, Unpacked
    from runtime.state import validate_name

    check_supported(fc.spec, fc.container_name)
    _check_options(options)
    images_dir = fc.root / IMAGES_DIR
    image_mounts = mounts_mod.read_mounts(images_dir)
    targets = {v.target: v for v in foreign_volumes(fc.spec)}
    exts = mounts_mod.plan(image_mounts, targets)
    stdio = stdio_targets(read_descriptors(images_dir))
    name = validate_name(options.name or fc.container_name)
    image = _image(rt, fc, options)  # after the checks above: a refused archive pulls nothing
    spec = spec_from_foreign(fc, image_name=image.name, image_digest=image.digest, name=name,
                             container_id=rt.new_container_id())
    spec = dataclasses.replace(spec, engine_mounts=mounts_mod.engine_mounts(exts))
    pipes_to_logs(images_dir, stdio, next(m.mnt_id for m in image_mounts if m.mountpoint == "/"))
    upper, devshm = _root_changes(fc, scratch, image.lowers)
    (scratch / CRIU_WORK_DIR).mkdir(mode=0o700)
    unpacked = Unpacked(manifest=_manifest(rt, fc, spec), images_dir=images_dir, upper_dir=upper, scratch=scratch)
    hook = _Hook(rt, image_mounts, exts, devshm)
    return Prepared(unpacked=unpacked, request_hook=hook, netns_key=NETNS_KEY, archive_bytes=archive_bytes)


def _root_changes(fc: Any, scratch: Path, lowers: tuple[Path, ...]) -> tuple[Path, Path | None]:
    """The upper dir (rootfs-diff.tar minus deleted.files) and /dev/shm's content (or None), in ``scratch``."""
    from migrate.interop.import_root import DEVSHM_TAR, build_upper, unpack_tar

    upper = scratch / "upper"
    upper.mkdir(mode=0o755)
    build_upper(fc.root, upper, lowers, fc.deleted_files)
    if not (fc.root / DEVSHM_TAR).is_file():
        return upper, None
    devshm = scratch / DEVSHM_DIR
    devshm.mkdir(mode=0o1777)
    unpack_tar(fc.root / DEVSHM_TAR, devshm, DEVSHM_TAR)
    return upper, devshm


def _manifest(rt: Any, fc: Any, spec: Any) -> dict[str, Any]:
    """What restore_container reads of a native manifest, for a foreign checkpoint."""
    from migrate.archive.store import MANIFEST_KIND

    return {
        "kind": MANIFEST_KIND, "container": spec.to_dict(), "checkpoint_id": f"{fc.engine}:{fc.container_name}",
        "criu_version": "0",  # stats-dump does not say; CRIU refuses images it cannot read
        # podman's images hold no cpuinfo.img for CRIU's check (runc restores without one too):
        # this host's digest skips it (migrate/restore.py preflight)
        "host": {"cpu_digest": rt.cpu_digest()},
        "options": {"tcp_established": False, "file_locks": False},
    }


def _check_options(options: RestoreOptions) -> None:
    if options.tcp_established:
        raise Unsupported("restore --tcp-established of a podman or CRI-O checkpoint",
                          "the container gets an address of this host's pool, so its connections cannot continue",
                          hint="restore without --tcp-established: listening sockets are restored, connections are not")


def _image(rt: Any, fc: Any, options: RestoreOptions) -> Any:
    """``find_image``; with ``--pull``, a missing one is pulled by the name the archive gives."""
    try:
        return find_image(rt.images, fc.image_name, fc.image_id)
    except ImageNotFound:
        if not options.pull_image or not fc.image_name:
            raise
    from runtime import registry

    return registry.pull(rt.images, fc.image_name, options=options.image_registry)


def find_image(images: Any, image_name: str, image_id: str) -> Any:
    """The image the foreign container ran on: by id (a loaded image's config digest, or its
    digest), else by name. Raises ImageNotFound with what to fetch."""
    ids = {f"sha256:{image_id.removeprefix('sha256:')}"} if image_id else set()
    for img in images.list():
        if img.config_digest in ids or img.digest in ids:
            return img
    # podman names images with their registry (localhost/web:1); a store whose names have no
    # registry part knows it by the last component
    for name in dict.fromkeys(n for n in (image_name, image_name.rsplit("/", 1)[-1]) if n):
        try:
            return images.get(name)
        except (ImageNotFound, InvalidArgument):
            pass
    what = image_name or f"sha256:{image_id.removeprefix('sha256:')}"
    hint = (f"fetch it first: pymigrate image pull {image_name}, or on the podman host `podman save {image_name} -o "
            f"IMG.tar` and here `pymigrate image load IMG.tar`" if image_name else
            "load the image the container ran on (podman save ... then pymigrate image load)")
    raise ImageNotFound(f"{what} (the checkpoint's image{', id ' + image_id[:12] if image_id else ''})", hint=hint)


class _Hook:
    """migrate/restore.py's request hook for one foreign import: it runs in the restore's undo
    scope once the container's record, cgroup and merged root exist."""

    def __init__(self, rt: Any, image_mounts: list[ImageMount], exts: tuple[External, ...], devshm: Path | None) -> None:
        self.rt, self.image_mounts, self.exts, self.devshm = rt, image_mounts, exts, devshm

    def __call__(self, request: Any, spec: Any, root: Path) -> Any:
        cdir = mounts_mod.prepare_container_dir(self.rt, spec, self.devshm)
        mounts_mod.make_mountpoints(root, self.image_mounts, mounts_mod.ENGINE_FILES)
        for log in (LOG, ERR_LOG):  # the images open them (import_stdio); kept if the diff has them
            mounts_mod.ensure_path(root, log, file=True, mode=0o600)
        external = _without_volume_keys(request.external, spec) + mounts_mod.container_externals(self.rt, spec, cdir, self.exts)
        return dataclasses.replace(request, external=external)


def _inside(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _without_volume_keys(external: tuple[str, ...], spec: Any) -> tuple[str, ...]:
    """restore_request's externals but its volumes' (keyed ``volN`` as our dumps key them; a
    foreign dump keys them by destination: ``_externals`` has those)."""
    from migrate.checkpoint import volume_key

    ours = tuple(f"mnt[{volume_key(i)}]:" for i in range(len(spec.volumes)))
    return tuple(e for e in external if not e.startswith(ours)) if ours else external
