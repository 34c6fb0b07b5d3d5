"""Restore a checkpoint (local or imported archive) into a new running container.

Pre-flight comes before anything outside a temporary directory is touched:
archive checksums and format version (migrate.archive verifies while unpacking into ROOT/tmp),
CRIU version >= the one that dumped, CPU compatibility (``criu cpuinfo check`` against the
cpuinfo.img recorded at dump time), the base image present with the same digest, the name and
the address free. Only then does the runtime build the container (upper layer, overlay, cgroup
with limits, network with the recorded address and MAC) and start it with CRIU as the starter.

The CRIU restore runs inside the container's shim: the shim spawns ``criu swrk``, moves it into
the container's cgroup before sending the request (so the restored tree lands there with its
limits, never in the old cgroup), and with ``rst_sibling`` the restored init becomes the shim's
child. A failed restore removes everything the runtime built and leaves the checkpoint intact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

from migrate.api import DEFAULT_RESTORE_TIMEOUT_S, ProgressEvent, ProgressFn, RestoreOptions, RestoreResult, RestoreStats
from migrate.checkpoint import NETNS_KEY, keep_criu_log, volume_key
from migrate.errors import IncompatibleHost, MigrationError, UnsafeMember
from migrate.archive.store import IMAGES_DIR, MANIFEST_KIND, ORIGIN_KEY, ORIGIN_UPLOAD, UPPER_ARCHIVE, UPPER_IMAGE, CheckpointStore
from migrate.archive.signing import verify_import
from runtime.criu import RESTORE_LOG, Criu, RestoreRequest, SwrkCriu, cpuinfo_check, read_restore_stats
from runtime.container import parse_spec, validate_spec
from runtime.fstree import remove_tree, remove_tree_quietly
from runtime.capabilities import spec_names
from runtime.seccomp import check_image_filters
from runtime.errors import ContainerExists, ContainerNotFound, CriuError, ImageNotFound, InvalidArgument, InvalidSpec
from runtime.spec import ContainerSpec, readdressed
from runtime.state import validate_name

log = logging.getLogger(__name__)


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@dataclass(frozen=True)
class Unpacked:
    """A checkpoint ready to restore: manifest, CRIU images dir, upper layer dir."""

    manifest: dict[str, Any]
    images_dir: Path
    upper_dir: Path
    scratch: Path | None  # removed after the restore (imports); None for local checkpoints

    @property
    def work_dir(self) -> Path:
        """CRIU's work dir for this restore (cpuinfo-check.log, restore.log, stats-restore, the
        lazy-pages socket): made by us in the scratch dir after unpacking, never by the archive.
        CRIU opens its logs there with O_CREAT|O_TRUNC and follows symlinks (docs/security.md)."""
        assert self.scratch is not None, "every restore unpacks into a scratch dir"
        return self.scratch / CRIU_WORK_DIR


CRIU_WORK_DIR = "criu-work"  # in the scratch dir; the member whitelist keeps archives out of it

# (request, spec, merged root) -> the request CRIU gets; runs in the restore's undo scope
RequestHook = Callable[[RestoreRequest, ContainerSpec, Path], RestoreRequest]


@dataclass(frozen=True)
class Prepared:
    """A checkpoint another format's reader unpacked (migrate/interop/podman_import.py: podman and
    CRI-O archives): restored by ``restore_container`` as an import, with its own CRIU request
    additions (externals keyed its engine's way, mountpoints, the engine files) and network namespace key."""

    unpacked: Unpacked
    request_hook: RequestHook
    netns_key: str
    archive_bytes: int = 0
    started: float | None = None  # time.monotonic() when its unpacking began: import_ms counts it


def _make_work_dir(scratch: Path) -> None:
    try:
        (scratch / CRIU_WORK_DIR).mkdir(mode=0o700)  # mkdir fails on anything there, a symlink too
    except FileExistsError:
        raise UnsafeMember(CRIU_WORK_DIR, "the archive put something where the restore keeps CRIU's logs") from None


def unpack_archive(
    rt: Any, source: Any, *, progress: ProgressFn | None = None, trust_manifest: bool = True, staged_upper: Path | None = None,
    expect_sha256: bytes | None = None, staged_volumes: Path | None = None,
) -> Unpacked:
    """Verify and unpack an archive stream into a scratch dir under ROOT/tmp.

    ``trust_manifest``: whether the manifest's word on device nodes counts (see
    migrate.archive.store.devices_allowed). True for streams from a peer daemon; False for a file given to
    ``restore --import``, whose manifest anyone could have written: then only overlay whiteouts
    pass.

    ``staged_upper``: a live migration's upper layer received before the freeze. When the
    manifest says the archive's upper layer is only the changes since (``options.upper_delta``),
    they are merged into it and it becomes the unpacked upper layer (moved into the scratch dir).

    ``expect_sha256``: the digest whose signature was verified (see read_archive).

    ``staged_volumes``: a live migration's named volumes received before the freeze
    (``<dir>/<name>``), merged with the archive's changes (migrate/volumes.py)."""
    from migrate.archive import read_archive
    from migrate.archive.store import devices_allowed

    rt.paths.tmp.mkdir(parents=True, exist_ok=True)
    scratch = Path(os.path.join(rt.paths.tmp, f"import-{os.urandom(6).hex()}"))
    scratch.mkdir(mode=0o700)
    try:
        manifest = read_archive(source, scratch, allow_devices=devices_allowed if trust_manifest else False,
                                expect_sha256=expect_sha256)
        if manifest.get("kind") != MANIFEST_KIND:
            raise MigrationError(f"not a pymigrate checkpoint archive (kind {manifest.get('kind')!r})", phase="verify")
        images = scratch / IMAGES_DIR
        upper = scratch / "upper"
        upper.mkdir(exist_ok=True)  # an untouched container has an empty upper layer
        if not images.is_dir():
            raise MigrationError("checkpoint archive has no CRIU images", phase="verify")
        delta = manifest.get("upper_delta")  # in the trailer: computed while CRIU dumped
        if delta is not None:
            _merge_upper_delta(upper, delta, staged_upper)
        image = _upper_image(scratch, manifest, staged_upper, trusted=trust_manifest)
        from migrate.volumes import DELTAS_KEY, merge_staged

        if manifest.get(DELTAS_KEY) is not None:  # a migration's volumes: changes since their stage
            merge_staged(scratch, manifest[DELTAS_KEY], staged_volumes)
        _make_work_dir(scratch)
    except BaseException:
        remove_tree_quietly(scratch)
        raise
    return Unpacked(manifest=manifest, images_dir=images, upper_dir=image or upper, scratch=scratch)


def _upper_image(scratch: Path, manifest: dict[str, Any], staged: Path | None, *, trusted: bool) -> Path | None:
    """The unpacked upper-layer image, if the archive's layer is one (migrate/archive/upper_image.py):
    the whole image, or the staged one with the archive's changed blocks written into it. An
    image from an untrusted source is checked before anything can mount it."""
    from migrate.archive import upper_image
    from runtime.upperfs import check_untrusted, is_image_file

    image = scratch / upper_image.MEMBER
    try:
        if upper_image.has_delta(scratch):
            if staged is None or not is_image_file(staged):
                raise MigrationError("the archive carries only the upper-layer image's changed blocks, but no staged image is here",
                                     phase="verify", hint="the source must send the image first (PushUpper)")
            upper_image.apply_delta_members(scratch, staged)
            os.rename(staged, image)
        elif not upper_image.unpack_members(scratch, image):
            return None
    except ValueError as exc:
        raise MigrationError(f"cannot unpack the upper-layer image: {exc}", phase="verify") from exc
    if not trusted:
        check_untrusted(image)
    return image


def _merge_upper_delta(upper: Path, delta: Any, staged: Path | None) -> None:
    """The archive's upper layer holds only the changes since ``staged`` (the trailer's
    ``upper_delta`` says which, and what was deleted): merge, then put the
    merged tree where the full one would be."""
    from migrate.migration.upper_sync import UpperDelta, apply_delta

    if staged is None or not staged.is_dir():
        raise MigrationError("the archive carries only the upper layer's changes, but no staged upper layer is here",
                             phase="verify", hint="the source must send the upper layer first (PushUpper)")
    apply_delta(staged, upper, UpperDelta.from_dict(delta))
    remove_tree(upper)
    os.rename(staged, upper)


def unpack_local(rt: Any, checkpoint_id: str) -> Unpacked:
    """A local checkpoint: images are used in place; the upper layer is unpacked into scratch."""
    from migrate.archive.members import check_images_dir
    from migrate.archive import read_archive

    store = CheckpointStore(rt.paths)
    cid = store.resolve(checkpoint_id)
    manifest = store.manifest(cid)
    base = store.dir(cid)
    scratch = Path(os.path.join(rt.paths.tmp, f"restore-{os.urandom(6).hex()}"))
    scratch.mkdir(mode=0o700)
    try:
        check_images_dir(base / IMAGES_DIR)  # uploads by older versions kept images/ verbatim
        with open(base / UPPER_ARCHIVE, "rb") as f:
            read_archive(f, scratch, allow_devices=True)  # our own local checkpoint
        upper = scratch / "upper"
        upper.mkdir(exist_ok=True)
        from runtime.upperfs import copy_sparse, is_image_file

        kept_image = base / UPPER_IMAGE
        if is_image_file(kept_image):  # the layer's file system image: same inodes once mounted
            upper = scratch / UPPER_IMAGE
            copy_sparse(kept_image, upper)
        _make_work_dir(scratch)
    except BaseException:
        remove_tree_quietly(scratch)
        raise
    return Unpacked(manifest=manifest, images_dir=base / IMAGES_DIR, upper_dir=upper, scratch=scratch)


# Where a manifest comes from decides what it may ask of this host (docs/security.md):
#   local   a checkpoint this host took: its volumes are the operator's own choice
#   import  ``restore --import`` or ``UploadCheckpoint``: anyone could have written it, so it
#           cannot name host paths; each volume must be mapped at restore (RestoreOptions.volumes)
#   peer    a migration pushed by an authenticated daemon: volumes only where this host's operator
#           allowed them (``pymigrate daemon --allow-peer-volumes``)
Origin = Literal["local", "import", "peer"]


def without_static_address(spec: ContainerSpec, options: RestoreOptions) -> ContainerSpec:
    """``restore --ignore-static-ip`` (podman's): no address, so the restore leases a fresh one
    from the pool and, as for any new address, a fresh MAC; ``--ignore-static-mac``: only a
    fresh random MAC (runtime.network.random_mac, given where the address is leased).

    Raises:
        InvalidArgument: ``--ignore-static-ip`` together with ``--ip``.
    """
    if options.ignore_static_ip and options.ip:
        raise InvalidArgument(f"restore --ip {options.ip} and --ignore-static-ip contradict each other",
                              hint="give an address or let the pool choose one, not both")
    if spec.network != "bridge":
        return spec
    if options.ignore_static_ip:
        return replace(spec, ip=None, mac=None)
    if options.ignore_static_mac:
        return replace(spec, mac=None)
    return spec


def checked_spec(manifest: dict[str, Any], options: RestoreOptions, *, origin: Origin,
                 allow_peer_volumes: bool = False) -> ContainerSpec:
    """The manifest's container spec, validated exactly as ``run`` validates its input
    (runtime.container.validate_spec), after the volume policy of ``origin`` and the explicit
    mappings of ``options.volumes`` were applied.

    Raises:
        InvalidSpec: a field refused (named), or a volume the archive may not choose.
        InvalidArgument: a mapping naming no volume of the checkpoint.
    """
    spec = parse_spec(manifest.get("container"))
    mapped = {os.path.normpath(v.target): v for v in options.volumes}
    known = {os.path.normpath(v.target) for v in spec.volumes if isinstance(v.target, str)}
    if set(mapped) - known:  # first: a mistyped mapping explains an unmapped volume too
        names = ", ".join(sorted(known)) or "none"
        raise InvalidArgument(f"volume mapping for {', '.join(sorted(set(mapped) - known))} names no volume of the checkpoint (its volumes: {names})")
    vols = []
    for i, vol in enumerate(spec.volumes):
        target = os.path.normpath(vol.target) if isinstance(vol.target, str) else vol.target
        if target in mapped:  # a mapped named volume becomes a bind mount of the given path
            vols.append(replace(vol, source=mapped.pop(target).source, name=""))
        elif isinstance(vol.name, str) and vol.name:
            vols.append(replace(vol, source=""))  # this host's volume of that name (migrate/volumes.py install)
        elif origin == "import":
            raise InvalidSpec(f"volumes[{i}].source", f"checkpoint volume {vol.target} names host path {vol.source!r}: an imported archive cannot choose host paths",
                              hint=f"map it explicitly: --volume HOSTDIR:{vol.target}")
        elif origin == "peer" and not allow_peer_volumes:
            raise InvalidSpec(f"volumes[{i}].source", f"migrated container has volume {vol.target} from host path {vol.source!r}: this host does not take volumes from peers",
                              hint="start this host's daemon with --allow-peer-volumes to accept them")
        else:
            vols.append(vol)
    if mapped:
        names = ", ".join(sorted(str(v.target) for v in spec.volumes)) or "none"
        raise InvalidArgument(f"volume mapping for {', '.join(sorted(mapped))} names no volume of the checkpoint (its volumes: {names})")
    spec = seccomp_policy(spec, options, origin)
    if spec.network == "host":  # never dumped by us (runtime/checkpointing.py): a forged manifest
        raise InvalidSpec("network", "checkpoint asks for the host's network namespace (--network host), "
                                     "which no checkpoint can have: it would give the container this host's network")
    from runtime.ns_modes import refuse_in_manifest

    refuse_in_manifest(spec)  # --pid host, --ipc container:...: never dumped by us, never made from an archive
    if options.ports is not None:  # restore --publish replaces the checkpoint's ports
        spec = replace(spec, ports=options.ports)
    return validate_spec(replace(spec, volumes=tuple(vols)))


def seccomp_policy(spec: ContainerSpec, options: RestoreOptions, origin: Origin) -> ContainerSpec:
    """The spec with the seccomp choice this restore may use (docs/security.md, "Seccomp").

    The restorer's explicit ``options.seccomp`` replaces the manifest's. Otherwise a local
    checkpoint keeps its own; an imported archive or a peer may only ask for this host's default
    profile: ``unconfined`` or a custom profile (which may allow anything) from them is refused,
    never applied silently.

    Raises:
        InvalidSpec: the manifest's choice is malformed, or one ``origin`` may not make.
    """
    from runtime.seccomp import DEFAULT, validate_choice

    if options.seccomp is not None:
        validate_choice(options.seccomp, options.seccomp_profile)
        return replace(spec, seccomp=options.seccomp, seccomp_profile=options.seccomp_profile)
    validate_choice(spec.seccomp, spec.seccomp_profile)
    if origin == "local" or spec.seccomp == DEFAULT:
        return spec
    if origin == "import":
        raise InvalidSpec("seccomp", f"the archive's container asks for seccomp {spec.seccomp}: an imported archive cannot weaken the default filter",
                          hint=f"accept it explicitly: restore --import FILE --security-opt seccomp={'unconfined' if spec.seccomp == 'unconfined' else 'PROFILE.json'} (or seccomp=default)")
    raise InvalidSpec("seccomp", f"migrated container asks for seccomp {spec.seccomp}: this host takes only its default seccomp profile from peers",
                      hint="run the container with the default profile, or move it by checkpoint --export and restore --import --security-opt seccomp=...")


def preflight(rt: Any, unpacked: Unpacked, spec: ContainerSpec, *, criu: Criu, replace_id: str | None = None) -> None:
    """Refuse before building anything: CRIU version, CPU, image, name, address."""
    manifest = unpacked.manifest
    dumped_with = str(manifest.get("criu_version", "0"))
    here = criu.version()
    if version_tuple(here) < version_tuple(dumped_with):
        raise IncompatibleHost(
            f"checkpoint was dumped by criu {dumped_with}, this host has criu {here}: restore needs the same or newer",
            phase="preflight",
        )
    source_cpu = (manifest.get("host") or {}).get("cpu_digest")
    try:
        # Identical CPU flag sets cannot be incompatible: skip CRIU's check (~25 ms) then.
        if not source_cpu or source_cpu != rt.cpu_digest():
            cpuinfo_check(unpacked.images_dir, unpacked.work_dir)
    except CriuError as exc:
        raise IncompatibleHost(
            f"this CPU lacks features the checkpointed processes may use: {exc.message}", phase="preflight"
        ) from exc
    if not rt.images.has_digest(spec.image_digest):
        raise ImageNotFound(f"{spec.image} ({spec.image_digest})", hint=_missing_image_hint(manifest))
    rt.check_name_free(spec.name, replace_id=replace_id)
    if spec.ip and not rt.ip_free(spec.ip, replace_id=replace_id, owner=spec.container_id):
        raise ContainerExists(f"address {spec.ip} is already in use on this host", hint="restore with --ip ADDR")


def _missing_image_hint(manifest: dict[str, Any]) -> str:
    """What to fetch: the checkpoint names the image, and a layered one its layers by diff_id."""
    image = manifest.get("image")
    layers = image.get("layers") if isinstance(image, dict) else None
    layers = layers if isinstance(layers, list) else []
    what = f" (its {len(layers)} layers, lowest first: {', '.join(str(d)[:19] for d in layers)})" if layers else ""
    return f"load, pull or import the image the container was started from{what}; restore finds it by digest, whatever its name"


def _identity(rt: Any, spec: ContainerSpec, options: RestoreOptions, origin: Origin) -> tuple[ContainerSpec, str | None]:
    """The restored container's id and name, and the exited original it replaces (if any).

    A restore under a new ``--name`` gets a new id. Otherwise it replaces the exited container of
    the same id, but an imported archive only one that also has its name: an archive naming some
    other container's id gets a new id instead of taking that container's place."""
    if options.name and options.name != spec.name:
        return replace(spec, name=validate_name(options.name), container_id=rt.new_container_id()), None
    if origin != "local":
        try:
            existing = rt.get(spec.container_id)
        except ContainerNotFound:
            existing = None
        if existing is not None and existing.name != spec.name:
            return replace(spec, container_id=rt.new_container_id()), None
    return spec, rt.replaceable_id(spec)


def install_volumes(rt: Any, spec: ContainerSpec, unpacked: Unpacked, *,
                    migration_id: str = "") -> tuple[ContainerSpec, "_InstalledVolumes"]:
    """The spec's named volumes resolved here, the archive's copies installed (migrate/volumes.py),
    each held (``volume:<name>``) until ``_restore_from`` is done: remove and prune leave them be."""
    from migrate.volumes import PREFIX, install

    installed = _InstalledVolumes()
    if not any(v.name for v in spec.volumes):
        return spec, installed
    carried = unpacked.scratch / PREFIX if unpacked.scratch is not None else None
    try:
        spec, installed.adopted = install(rt.volumes, spec, carried, migration_id=migration_id,
                                          holds=(installed.holds, rt.store.hold))
    except BaseException:
        installed.holds.close()
        raise
    return spec, installed


class _InstalledVolumes:
    def __init__(self) -> None:
        self.adopted: list[tuple[str, str]] = []
        self.holds = contextlib.ExitStack()


def _restore_from(rt: Any, installed: _InstalledVolumes, spec: ContainerSpec, **kwargs: Any) -> Any:
    """``rt.restore_from``; a failed one gives back the volumes ``install_volumes`` adopted."""
    with installed.holds:
        try:
            return rt.restore_from(spec, **kwargs)
        except BaseException:
            if installed.adopted:
                from migrate.volumes import uninstall

                uninstall(rt.volumes, installed.adopted)
            raise


def restore_request(unpacked: Unpacked, spec: ContainerSpec, root: Path, *, tcp_established: bool,
                    timeout_s: float | None = DEFAULT_RESTORE_TIMEOUT_S) -> RestoreRequest:
    """The CRIU restore request; the runtime adds the network namespace fd inside the shim.

    Network lock ``skip``: CRIU restores into our network namespace (passed as external), where it
    installs no lock at all (cr-restore.c locks only with ``--empty-ns net``), yet with a nftables
    lock configured it still runs a failing ``delete table`` at the end (~7 ms, an error line)."""
    from runtime.init_binary import restore_externals
    from runtime.syscalls import CLONE_NEWNET

    external = tuple(f"mnt[{volume_key(i)}]:{vol.source}" for i, vol in enumerate(spec.volumes))
    external += restore_externals(spec)  # run --init: this host's tini (Unsupported without it)
    from runtime.rootfs import device_externals

    external += device_externals(bool(spec.userns_size), restore=True)  # --userns: the host's device nodes
    opts = unpacked.manifest.get("options", {})
    return RestoreRequest(
        images_dir=unpacked.images_dir,
        work_dir=unpacked.work_dir,
        root=root,
        external=external,
        tcp_established=tcp_established or bool(opts.get("tcp_established")),
        file_locks=bool(opts.get("file_locks")),
        network_lock="skip",
        empty_ns=CLONE_NEWNET if spec.userns_size else 0,  # --userns: CRIU makes it (runtime/userns_restore.py)
        timeout_s=timeout_s,
    )


def _hooked(rt: Any, prepared: Prepared | None, spec: ContainerSpec, root: Path, request: RestoreRequest) -> RestoreRequest:
    """The request with a foreign import's additions, or an imported container's engine mounts
    (``ContainerSpec.engine_mounts``: a later checkpoint of it) mapped again."""
    if prepared is not None:
        return prepared.request_hook(request, spec, root)
    if spec.engine_mounts:
        from migrate.interop.import_mounts import engine_mounts_request

        return engine_mounts_request(rt, spec, root, request)
    return request


def restore_container(
    rt: Any,
    options: RestoreOptions,
    *,
    criu: Criu | None = None,
    progress: ProgressFn | None = None,
    source: Any = None,
    before_restore: Callable[[Path], None] | None = None,
    staged_upper: Path | None = None,
    staged_volumes: Path | None = None,
    migration_id: str = "",
    prepared: Prepared | None = None,
) -> RestoreResult:
    """Restore from ``options.checkpoint_id``, ``options.import_path``, an archive stream ``source``
    or a foreign checkpoint already unpacked (``prepared``).

    ``before_restore(images_dir)`` runs once the archive is unpacked (a disk-less migration
    moves the pages its page server received into the images dir there). ``staged_upper``: see
    ``unpack_archive``. ``source`` is a migration peer's push: its volumes are taken only where
    the host allows them (``rt.allow_peer_volumes``, see ``Origin``).

    Raises:
        InvalidSpec: the manifest's container spec was refused (the field is named).
        Busy: another restore builds a container of the same name or id right now.
        CriuTimeout: CRIU did not restore within ``options.timeout_s`` (everything was undone).
    """
    criu = criu or SwrkCriu()
    started = prepared.started if prepared is not None and prepared.started is not None else time.monotonic()

    def emit(phase: str, message: str = "") -> None:
        if progress:
            progress(ProgressEvent("restore", phase, elapsed_s=time.monotonic() - started, message=message))

    emit("verify")
    src = _open_source(rt, options, prepared=prepared, source=source, progress=progress, staged_upper=staged_upper,
                       staged_volumes=staged_volumes)
    unpacked = src.unpacked
    try:
        if before_restore is not None:
            before_restore(unpacked.images_dir)
        import_ms = (time.monotonic() - started) * 1000
        spec = _restorable_spec(rt, unpacked, options, src.origin)
        name = validate_name(options.name) if options.name else spec.name
        # Held before anything looks at the container it replaces: a second restore of the same
        # checkpoint gets Busy here, not a half-built record. A new --name gets a new id.
        with rt.store.hold(f"name:{name}", "restore container"), rt.store.hold(f"id:{spec.container_id}", "restore container"):
            spec, replace_id = _identity(rt, spec, options, src.origin)
            spec = readdressed(spec, options.ip)  # a new address gets its own MAC
            spec = without_static_address(spec, options)  # restore --ignore-static-ip/--ignore-static-mac
            emit("preflight")
            t_pre = time.monotonic()
            spec, adopted = _preflighted(rt, unpacked, spec, criu=criu, replace_id=replace_id, migration_id=migration_id)
            preflight_ms = (time.monotonic() - t_pre) * 1000
            work_dir = unpacked.work_dir
            emit("restore")
            t0 = time.monotonic()
            info = _restore_from(rt, adopted,
                spec,
                upper_src=unpacked.upper_dir,
                replace_id=replace_id,
                request_for=lambda root: _hooked(rt, prepared, spec, root, restore_request(
                    unpacked, spec, root, tcp_established=options.tcp_established, timeout_s=options.timeout_s
                )),
                netns_key=prepared.netns_key if prepared is not None else NETNS_KEY,
                criu=criu,
                restored_from=unpacked.manifest.get("checkpoint_id"),
            )
        resumed_at = time.monotonic()
        restore_ms = (resumed_at - t0) * 1000
        images_bytes = sum(p.stat().st_size for p in unpacked.images_dir.iterdir() if p.is_file())  # before the scratch goes
        _log_restored(spec, unpacked, work_dir, import_ms=import_ms, preflight_ms=preflight_ms, restore_ms=restore_ms)
    except BaseException as exc:
        if unpacked.scratch is not None:  # the CRIU log goes with the scratch dir: keep a copy
            keep_criu_log(rt.paths, exc, unpacked.work_dir / RESTORE_LOG, "restore")
        raise
    finally:
        if unpacked.scratch is not None:
            remove_tree_quietly(unpacked.scratch)
    emit("done")
    return RestoreResult(
        container=info,
        stats=_stats(src, images_bytes, started=started, import_ms=import_ms, restore_ms=restore_ms, resumed_at=resumed_at),
        signed_by=src.signed_by,
    )


def _restorable_spec(rt: Any, unpacked: Unpacked, options: RestoreOptions, origin: Origin) -> ContainerSpec:
    """``checked_spec``, and for a checkpoint this host did not take, the seccomp filters in its
    CRIU images checked against the spec's choice: CRIU restores the filters the images describe,
    not the spec's."""
    spec = checked_spec(unpacked.manifest, options, origin=origin, allow_peer_volumes=bool(getattr(rt, "allow_peer_volumes", False)))
    if origin != "local":
        check_image_filters(unpacked.images_dir, spec.seccomp, spec.seccomp_profile, cache_dir=rt.paths.seccomp_cache,
                            caps=spec_names(spec.cap_add, spec.cap_drop))  # compiled for its --cap-add/--cap-drop set
    return spec


def _preflighted(rt: Any, unpacked: Unpacked, spec: ContainerSpec, *, criu: Criu, replace_id: str | None,
                 migration_id: str) -> tuple[ContainerSpec, _InstalledVolumes]:
    """``preflight``, then what is claimed before the build: host ports, named volumes (held
    until ``_restore_from`` is done)."""
    preflight(rt, unpacked, spec, criu=criu, replace_id=replace_id)
    if spec.ports:  # pre-flight too: a taken host port is PortInUse; ports 0 (--publish :80) get free ones
        spec = replace(spec, ports=rt.claim_ports(spec, replace_id=replace_id))
    spec, adopted = install_volumes(rt, spec, unpacked, migration_id=migration_id)
    # pycriu's messages (protobuf: ~25 ms) imported once, before the shim forks: it inherits
    # them for CRIU's RPC, and _log_restored's stats need them (else both import them, in series)
    criu.warm()
    return spec, adopted


@dataclass(frozen=True)
class _Source:
    """The checkpoint a restore reads, unpacked: where it comes from (``Origin``: what it may ask
    of this host) and what the answer reports of it (an archive's size, the key that signed it)."""

    unpacked: Unpacked
    origin: Origin
    archive_bytes: int = 0
    signed_by: str = ""


def _open_source(rt: Any, options: RestoreOptions, *, prepared: Prepared | None, source: Any, progress: ProgressFn | None,
                 staged_upper: Path | None, staged_volumes: Path | None) -> _Source:
    """The checkpoint to restore, the first of: a foreign one already unpacked (``prepared``: a
    podman or CRI-O archive, or a checkpoint image; migrate/interop/podman_import.py), a migration
    peer's push (``source``), an archive of ours to import (``options.import_path``), a local
    checkpoint (``options.checkpoint_id``; one uploaded by someone counts as imported).

    Raises:
        MigrationError: none of them was given.
    """
    if prepared is not None:
        return _Source(prepared.unpacked, "import", archive_bytes=prepared.archive_bytes)
    if source is not None:
        return _Source(unpack_archive(rt, source, progress=progress, staged_upper=staged_upper,
                                      staged_volumes=staged_volumes), "peer")
    if options.import_path is not None:
        return _import_ours(rt, Path(options.import_path), options, progress)
    if options.checkpoint_id:
        unpacked = unpack_local(rt, options.checkpoint_id)
        return _Source(unpacked, "import" if unpacked.manifest.get(ORIGIN_KEY) == ORIGIN_UPLOAD else "local")
    raise MigrationError("restore needs a checkpoint id or an archive to import")


def _import_ours(rt: Any, path: Path, options: RestoreOptions, progress: ProgressFn | None) -> _Source:
    """``restore --import FILE`` of a pymigrate archive: its signature checked against
    ``options.trusted_keys`` first, then unpacked with its manifest not trusted."""
    archive_bytes = path.stat().st_size
    verified = verify_import(path, options.trusted_keys)  # before a single member is extracted
    signed_by = verified.describe() if verified else ""
    with open(path, "rb") as f:
        unpacked = unpack_archive(rt, f, progress=progress, trust_manifest=False,
                                  expect_sha256=verified.sha256 if verified else None)
    return _Source(unpacked, "import", archive_bytes=archive_bytes, signed_by=signed_by)


def _log_restored(spec: ContainerSpec, unpacked: Unpacked, work_dir: Path, *, import_ms: float, preflight_ms: float,
                  restore_ms: float) -> None:
    """One info line per restore: our phases and CRIU's own restore time (its stats-restore)."""
    crstats = read_restore_stats(work_dir)
    log.info(
        "container=%s restored from checkpoint=%s import_ms=%.1f preflight_ms=%.1f restore_ms=%.1f (criu restore_time %.1f ms)",
        spec.name, unpacked.manifest.get("checkpoint_id"), import_ms, preflight_ms, restore_ms, crstats.restore_ms,
    )


def _stats(src: _Source, images_bytes: int, *, started: float, import_ms: float, restore_ms: float,
           resumed_at: float) -> RestoreStats:
    """The answer's numbers; ``total_ms`` and ``since_resume_ms`` run until now (the scratch dir
    removed: a migration's pause counts that too)."""
    return RestoreStats(
        import_ms=round(import_ms, 3),
        restore_ms=round(restore_ms, 3),
        total_ms=round((time.monotonic() - started) * 1000, 3),
        archive_bytes=src.archive_bytes,
        images_bytes=images_bytes,
        since_resume_ms=round((time.monotonic() - resumed_at) * 1000, 3),
    )
