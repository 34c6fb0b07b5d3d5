"""``commit``: a new image from a container, its image's layers plus one layer of its changes.

Order (nothing is stored under the new name until the last step, so a failure leaves at most
unreferenced blobs and layers, which the next image removal collects):

1. check the input: the target name and every ``--change`` (runtime/commit_changes.py), and the
   container (not one whose files went with a checkpoint);
2. the base: the layers of the image the container was created from (by digest: its name may
   have moved since). A flat base (``image import``, the busybox image) becomes one layer first,
   its tree as ``image push`` would send it;
3. the new layer: the container's upper dir written as a tar (runtime/upper_layer_tar.py) into
   ROOT/tmp while the container is frozen (``pause``, Docker's default; a paused container stays
   as it is; ``pause=False`` reads it running). The freeze is recorded first
   (runtime/freeze_record.py), so a commit killed meanwhile leaves it to be thawed by the next
   command. An upper layer on an image file that is not mounted (after a reboot) is mounted
   read-only in ROOT/tmp for the read;
4. after the thaw: the tar goes into the blob store and is unpacked as a layer, through the same
   verifying code as a loaded image (runtime/layer_store.py, runtime/tarsafe.py), an OCI config
   blob is written (rootfs.diff_ids, history with ``--message``/``--author``), and the image is
   tagged by ``ImageStore.commit_layers`` like every loaded image: ``run``, ``image push``,
   ``image ls``/``inspect`` and migrations see an ordinary layered image.

The run config: the base image's, with what the container runs (runtime/commit_changes.py says
how ``--change`` applies on top): its command split back into the image's Entrypoint and the rest
as Cmd (a command that does not start with the entrypoint, from ``--entrypoint``, becomes Cmd
with no Entrypoint), its Env (a later duplicate wins), WorkingDir, User, StopSignal, and its
published container ports joined to ExposedPorts.

What the runtime itself put in the upper dir is left out: ``/.pymigrate`` (the log, ``--init``'s
mount point), /etc/hostname and /etc/hosts (written at every start, as Docker leaves out its own
bind-mounted ones), and the mount points /proc, /dev, /sys and the container's volume targets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from runtime import upperfs
from runtime.commit_changes import apply_changes, parse_changes
from runtime.errors import Busy, ContainerError, ImageError, ImageNotFound, InvalidState, UnsafeArchive
from runtime.image_config import ImageConfig
from runtime.image_store import Image, ImageStore, validate_name
from runtime.spec import ContainerSpec
from runtime.upper_layer_tar import Exclusions, IdRange, LayerStats, write_layer

log = logging.getLogger(__name__)

# container paths the runtime writes or mounts over itself (module docstring)
RUNTIME_PATHS = ("/.pymigrate", "/etc/hostname", "/etc/hosts", "/proc", "/dev", "/sys")
LAYER_FILE = "layer.tar"


@dataclass(frozen=True)
class CommitOptions:
    changes: tuple[str, ...] = ()  # Dockerfile instructions (runtime/commit_changes.py)
    message: str = ""  # the history entry's comment (commit -m)
    author: str = ""  # the config's author (commit --author)
    pause: bool = True  # freeze a running container while its upper layer is read


@dataclass(frozen=True)
class CommitResult:
    image: Image
    layer_diff_id: str  # the new layer's diff_id (its blob is the uncompressed tar)
    layer_bytes: int  # the new layer's tar
    whiteouts: int  # deletions carried (.wh.NAME)
    opaque_dirs: int  # directories made anew (.wh..wh..opq)
    skipped: tuple[str, ...]  # the container's paths left out (devices, sockets, .wh.* names)
    frozen_ms: float  # how long the container was frozen for the read (0: not frozen by commit)


def commit(rt: Any, name: str, target: str, options: CommitOptions | None = None) -> CommitResult:
    """Commit container ``name`` (running, paused, created or exited) as image ``target``.

    Raises:
        InvalidArgument: a bad target name or ``--change`` (before anything is read).
        ContainerNotFound: no such container.
        InvalidState: its files went with a checkpoint.
        Busy: a checkpoint or migration has it frozen (and ``pause``).
        ImageError: its base image is gone from this host; a layer that does not load back.
        ImageLimitExceeded: the layer is over an extraction limit (runtime/extract_limits.py).
        Unsupported: an upper layer overlayfs wrote with redirects or metacopy.
    """
    from runtime.scratch import scratch_dir

    options = options or CommitOptions()
    validate_name(target)
    changes = parse_changes(options.changes)
    c = rt.container(name)
    if c.state.checkpointed is not None:
        raise InvalidState(c.name, "commit", "checkpointed", ("running", "paused", "exited"))
    store: ImageStore = rt.images
    base = _base_image(store, c.spec)
    config = _with_platform(apply_changes(run_config(_base_config(store, c.spec, base), c.spec), changes))
    t0 = time.monotonic()
    with scratch_dir(store.tmp_dir, "image-") as work:
        layer_tar = work / LAYER_FILE
        stats, frozen_ms = _read_upper(rt, c, layer_tar, pause=options.pause)
        chain = _base_chain(store, base, work)
        with open(layer_tar, "rb") as f:
            blob = store.layers.put_blob(f, None, what=f"the new layer of container {c.name}")
        info = _unpack(store, blob, c.name)
    chain = (*chain, info.diff_id)
    config_blob = _config_blob(store, base, config, chain, options)
    config_digest = store.layers.put_blob(_bytes_stream(config_blob), None, what=f"config of image {target}")
    image = store.commit_layers(target, chain, config_digest, config=config.to_json())
    log.info("committed container=%s as image=%s digest=%s layer=%s whiteouts=%d opaque=%d skipped=%d frozen_ms=%.1f "
             "elapsed_ms=%.0f", c.spec.container_id, target, image.digest, info.diff_id[:19], stats.whiteouts,
             stats.opaque_dirs, len(stats.skipped), frozen_ms, (time.monotonic() - t0) * 1000)
    return CommitResult(image, info.diff_id, info.blob_size, stats.whiteouts, stats.opaque_dirs, tuple(stats.skipped),
                        frozen_ms)


def _unpack(store: ImageStore, blob: str, name: str) -> Any:
    """The new layer unpacked by the loader every image layer goes through; what it refuses (a
    symlink whose relative target climbs above the root) is named with what to do."""
    try:
        return store.layers.unpack(blob, blob, source=f"container {name}'s upper layer")
    except UnsafeArchive as exc:
        refused = UnsafeArchive(exc.member, exc.reason)
        refused.hint = (f"container {name} has /{exc.member} that no image may hold: change or remove it in the "
                        "container, then commit again")
        raise refused from exc


# -- the config ------------------------------------------------------------------------------


def run_config(base: ImageConfig | None, spec: ContainerSpec) -> ImageConfig:
    """The base image's config with what the container runs (module docstring)."""
    base = base or ImageConfig()
    entrypoint = base.entrypoint or ()
    command = tuple(spec.command)
    if entrypoint and command[: len(entrypoint)] == entrypoint:
        new_entrypoint: tuple[str, ...] | None = entrypoint
        cmd: tuple[str, ...] | None = command[len(entrypoint):] or None
    else:
        new_entrypoint, cmd = None, command or None
    env: dict[str, str] = {}
    for item in spec.env:
        key, _sep, value = item.partition("=")
        env.pop(key, None)  # a later duplicate wins, in the later place (as the process sees it)
        env[key] = value
    ports = list(base.exposed_ports)
    ports += [p for p in (f"{m.container_port}/{m.protocol}" for m in spec.ports) if p not in ports]
    workdir = spec.workdir if (spec.workdir not in ("", "/") or base.working_dir) else base.working_dir
    return dataclasses.replace(base, entrypoint=new_entrypoint, cmd=cmd, env=tuple(f"{k}={v}" for k, v in env.items()),
                               working_dir=workdir, user=spec.user, exposed_ports=tuple(ports),
                               stop_signal=spec.stop_signal)


def _with_platform(config: ImageConfig) -> ImageConfig:
    """The base's platform, or this host's for a base that names none (a flat image)."""
    if config.os and config.architecture:
        return config
    from runtime.oci_image import host_platform

    host = host_platform()
    return dataclasses.replace(config, os=host.os, architecture=host.architecture, variant=host.variant)


def _base_image(store: ImageStore, spec: ContainerSpec) -> Image:
    try:
        return store.get(spec.image_digest)
    except ImageNotFound:
        raise ImageError(f"cannot commit container {spec.name}: its image {spec.image} ({spec.image_digest}) is no "
                         "longer on this host", hint="pull or load that image again, then commit") from None


def _base_config(store: ImageStore, spec: ContainerSpec, base: Image) -> ImageConfig | None:
    """The run config of the base: the container's image name's while it still names that digest,
    else another name's of the digest, else the config blob's."""
    config = None
    with contextlib.suppress(ImageError, ContainerError):
        if store.get(spec.image).digest == base.digest:
            config = store.config(spec.image)
    if config is None and base.name != base.digest:
        config = store.config(base.digest)
    if config is None and base.config_digest and store.layers.has_blob(base.config_digest):
        config = ImageConfig.from_oci(json.loads(store.layers.blob_path(base.config_digest).read_bytes()),
                                      f"config blob {base.config_digest}")
    return config


def _base_chain(store: ImageStore, base: Image, work: Path) -> tuple[str, ...]:
    """The base's diff_ids, lowest first; a flat base's tree made into one layer first."""
    if base.layers:
        return base.layers
    flat = work / "base.tar"
    with open(flat, "wb") as f:
        store.export_stream(base.digest, f)
    with open(flat, "rb") as f:
        blob = store.layers.put_blob(f, None, what=f"the flattened image {base.name}")
    flat.unlink()
    return (store.layers.unpack(blob, blob, source=f"image {base.name} (flattened)").diff_id,)


def _config_blob(store: ImageStore, base: Image, config: ImageConfig, chain: tuple[str, ...],
                 options: CommitOptions) -> bytes:
    """The OCI image config blob: the base's history and platform, the new layer's entry."""
    history: list[Any] = []
    if base.layers and base.config_digest and store.layers.has_blob(base.config_digest):
        old = json.loads(store.layers.blob_path(base.config_digest).read_bytes())
        history = old.get("history") if isinstance(old.get("history"), list) else []
    elif not base.layers:
        history = [{"created_by": f"pymigrate commit: the flattened image {base.name} ({base.digest})"}]
    os_name, arch, variant = config.os, config.architecture, config.variant
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entry: dict[str, Any] = {"created": created, "created_by": "pymigrate commit"}
    if options.author:
        entry["author"] = options.author
    if options.message:
        entry["comment"] = options.message
    blob: dict[str, Any] = {
        "created": created,
        "architecture": arch,
        "os": os_name,
        "config": config.to_oci(),
        "rootfs": {"type": "layers", "diff_ids": list(chain)},
        "history": [*history, entry],
    }
    if variant:
        blob["variant"] = variant
    if options.author:
        blob["author"] = options.author
    return json.dumps(blob, sort_keys=True).encode()


def _bytes_stream(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


# -- reading the upper layer -----------------------------------------------------------------


def _read_upper(rt: Any, c: Any, out: Path, *, pause: bool) -> tuple[LayerStats, float]:
    """Write the container's upper dir as a layer tar to ``out``, frozen if it runs (and ``pause``)."""
    from runtime.extract_limits import current_limits

    exclude = Exclusions(frozenset((*RUNTIME_PATHS, *(os.path.normpath(v.target) for v in c.spec.volumes))))
    limits = current_limits()
    # --userns auto (runtime/userns.py): the upper dir holds host-range owners; the layer the container's
    base, size = getattr(c.spec, "userns_base", 0), getattr(c.spec, "userns_size", 0)
    ids = IdRange(base, size) if getattr(c.spec, "userns", "") and size else None
    with _upper_dir(rt, c) as upper, open(out, "wb") as sink:
        fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            with _frozen(rt, c, pause) as frozen:
                t0 = time.monotonic()
                stats = write_layer(fd, sink, exclude=exclude, limits=limits, ids=ids)
                frozen_ms = (time.monotonic() - t0) * 1000 if frozen else 0.0
        finally:
            os.close(fd)
    return stats, frozen_ms


@contextlib.contextmanager
def _frozen(rt: Any, c: Any, pause: bool) -> Iterator[bool]:
    """Freeze a running container for the read (recorded first), thaw after; True if it froze it.
    A paused container is frozen already and stays so; others have nothing running."""
    if c.status != "running" or not pause:
        yield False
        return
    from runtime.checkpointing import CheckpointHost

    _refuse_frozen_by_another(rt, c)
    host = CheckpointHost(rt)
    host.freeze(c, operation="commit")
    try:
        yield True
    finally:
        host.thaw(c)


def _refuse_frozen_by_another(rt: Any, c: Any) -> None:
    """A running container frozen by a live checkpoint or migration (a migration's freeze is not
    recorded in the container's state) must not be thawed by a commit: it is that operation's."""
    record = c.state.frozen_by
    if record is not None or rt.cgroups(c.spec.cgroup_parent).freezer_state(c.container_id) != "thawed":
        raise Busy(f"container {c.name}", "commit", holder_pid=record.pid if record is not None else 0,
                   hint="a checkpoint or migration froze it: commit when it is done, or read it as it is with "
                        "--pause=false")


@contextlib.contextmanager
def _upper_dir(rt: Any, c: Any) -> Iterator[Path]:
    """The container's upper dir: where it is mounted, or its image mounted read-only meanwhile."""
    from runtime.scratch import scratch_dir

    layout = upperfs.Layout.of(rt.store.dir(c.container_id))
    if layout.image is None or os.path.ismount(layout.mountpoint):
        if not layout.upper.is_dir():
            raise ContainerError(f"cannot commit container {c.name}: its upper layer {layout.upper} is missing")
        yield layout.upper
        return
    with scratch_dir(rt.images.tmp_dir, "view-") as view:  # a sweep detaches it if this process dies
        upperfs.mount_read_only(rt.sys, layout.image, view)
        try:
            upper = view / upperfs.UPPER
            if not upper.is_dir():
                raise ContainerError(f"cannot commit container {c.name}: its upper-layer image {layout.image} has no {upperfs.UPPER}/")
            yield upper
        finally:
            upperfs.unmount(rt.sys, view)
