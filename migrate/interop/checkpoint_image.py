"""Checkpoint images: a checkpoint as an OCI image, moved through ordinary registries.

``checkpoint NAME --create-image REF`` takes the checkpoint as always, writes it in podman's
layout (migrate/interop/podman_export.py ``write_podman_dir``) and stores it in this host's image
store as a one-layer image named ``REF``'s last path component and tag (``localhost:5000/ckpt/web:1``
-> ``web:1``, as ``image pull`` names images), with the layer, config and manifest annotations
podman and CRI-O use (migrate/interop/checkpoint_image_layout.py). The image store keeps manifest
annotations (runtime/image_store.py ``annotations``) and a push writes them again, so
``image push web:1 REF`` sends a checkpoint image podman and CRI-O recognise. The local
checkpoint is kept as well (``restore ID`` still works; ``checkpoint rm`` removes it). What
podman's layout cannot describe (volumes, --init, --userns, -t/-i, an image without a config
digest: podman_export's rules) and a native ``--export`` (which keeps no local checkpoint) are
refused before the container is frozen (``precheck``).

Round trips shown by tests/integration/test_checkpoint_image.py (real podman 4.3.1, runc, CRIU,
docker-registry): podman's ``--create-image`` image restored by ``restore REF``; ours restored by
``restore REF`` on another host and by ``podman container restore IMAGE`` (podman tells a
checkpoint image by ``runtime.name`` and requires its own runtime: ours says runc); a
Kubernetes-style image (a kubelet/CRI-O archive marked only by CRI-O's annotation). What the
import needs from a foreign image is podman_import's (the base image by id or name; podman's own
seccomp filter accepted with ``--security-opt seccomp=unconfined``).

``restore REF`` (or ``restore --image REF``): the image named as a pull would name it is used
when it is here and a checkpoint image; otherwise REF is pulled (skopeo, the registry flags of
``image pull``) under a temporary name and named as usual only once its annotations mark it a
checkpoint image and its layer unpacked whole: an image without the marks is refused
(``NotACheckpointImage``), one whose layer breaks the rules below too, and neither leaves an
image behind. ``open_checkpoint_image`` is that step alone (``checkpoint inspect REF`` uses it).
Which positional is which (``looks_like_reference``): a checkpoint id is 4-64 hex digits; an
image reference names a registry, a path or a tag (it holds ``/``, ``:`` or ``@``), so a bare
word (a container name, podman's habit) is refused as a checkpoint id, not pulled from Docker
Hub; ``--image REF`` takes any reference.

Trust: the image is untrusted. A pull verifies every blob and unpacks the layer with the image
rules (runtime/tarsafe.py: a ``..`` member or a link out refuses the whole pull, nothing is
stored). The layer's blob is then extracted again, into scratch, with the checkpoint-archive
rules (migrate/interop/foreign.py ``extract_foreign``: member whitelist, limits, no host paths)
and restored by migrate/interop/podman_import.py ``restore_foreign``: the same path as
``restore --import`` of a podman archive. The scratch directory goes whatever happens.

Over ``--host`` the daemon does both halves on its host: ``CheckpointRequest.create_image``
builds the image in its store (``CheckpointResult.image_ref``/``image_digest`` answer), and
``RestoreRequest.image_ref`` finds or pulls it there; registry flags cannot be sent with a
restore, so a registry needing them is pulled first (``--host H image pull REF --tls-verify=false``)
and then found by the restore; ``--security-opt`` crosses (``RestoreRequest.seccomp``), so a
podman-made image restores over ``--host`` too.

Measured here: ``--create-image`` of a container with 40 MB of memory took 1.9 s against 0.3 s
for the checkpoint alone (writing podman's layout, gzip level 1 to a 31 MB layer, and the
store's verified load: blob hash, unpack, tree digest); ``restore REF`` of podman's image from a
registry on this host, pull to running, about 1 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from runtime.errors import ImageError, InvalidArgument

if TYPE_CHECKING:
    from migrate.api import ProgressFn, RestoreOptions, RestoreResult
    from migrate.interop.foreign import ForeignCheckpoint
    from runtime.image_store import Image, ImageStore
    from runtime.registry import RegistryOptions

log = logging.getLogger(__name__)

CHECKPOINT_ID_CHARS = frozenset("0123456789abcdef")
PULL_NAME_PREFIX = "pm-ckpt-pull-"  # the temporary store name of a pull not yet known to be a checkpoint


class NotACheckpointImage(ImageError, InvalidArgument):
    """``restore REF`` was given an image without podman's or CRI-O's checkpoint annotations."""

    def __init__(self, reference: str) -> None:
        from migrate.interop.checkpoint_image_layout import CRIO_NAME, PODMAN_NAME

        super().__init__(f"image {reference} is not a checkpoint image: its manifest has neither {CRIO_NAME} "
                         f"nor {PODMAN_NAME}",
                         hint="make one with: pymigrate checkpoint NAME --create-image REF (or podman container "
                              "checkpoint --create-image); to run an ordinary image use: pymigrate run")
        self.reference = reference


class CheckpointImageError(ImageError):
    """A checkpoint image cannot be built or used (names the image and why)."""


@dataclass(frozen=True)
class BuiltImage:
    name: str  # in this host's image store (``image push NAME REF``)
    reference: str  # REF, normalised
    digest: str  # the stored image's digest (``images`` lists it)
    manifest_digest: str  # the manifest as built (a push of it sends the same annotations)
    layer_bytes: int


def looks_like_checkpoint_id(text: str) -> bool:
    """A checkpoint id is 4-64 lower-case hex digits; anything else given to restore is an image."""
    return 4 <= len(text) <= 64 and set(text) <= CHECKPOINT_ID_CHARS


def looks_like_reference(text: str) -> bool:
    """Whether ``restore TEXT`` means an image: not a checkpoint id, and naming a registry, path,
    tag or digest (module docstring)."""
    return not looks_like_checkpoint_id(text) and any(c in text for c in "/:@")


def store_name(reference: str) -> str:
    """The image store name of ``reference`` (as ``image pull`` names it); InvalidArgument if bad."""
    from runtime.image_store import validate_name
    from runtime.registry import parse_reference

    return validate_name(parse_reference(reference).default_name())


# --- build -------------------------------------------------------------------------------------


def precheck(host: Any, name: str, options: Any) -> None:
    """Before container ``name`` is frozen: what ``build_checkpoint_image`` would refuse later.

    Raises:
        InvalidArgument: a bad reference, or a native ``--export`` (it leaves no local checkpoint
            to build from).
        Unsupported: a container or image podman's layout cannot describe (podman_export's rules).
    """
    from migrate.archive.store import image_record
    from migrate.interop.podman_export import check_exportable, image_identity

    store_name(options.create_image)
    if options.export_path is not None and options.export_format != "podman":
        raise InvalidArgument("--create-image builds the image from a local checkpoint, which a native --export "
                              "does not keep", hint="give --create-image without --export, or with --format podman")
    spec = host.get(name).spec
    check_exportable(spec)
    image_identity({"image": image_record(host.images, spec)}, None, None)


def build_checkpoint_image(host: Any, checkpoint_id: str, reference: str) -> BuiltImage:
    """The local checkpoint ``checkpoint_id`` as checkpoint image ``reference`` in the image store.

    ``host`` is the engine's CheckpointHost (its ``rt`` the Runtime). Raises:
        InvalidArgument: a bad reference.
        Unsupported, ArchiveError: podman's layout cannot describe the checkpoint (podman_export).
        ImageError: the image could not be stored.
    """
    from migrate.interop.checkpoint_image_layout import write_layout
    from migrate.interop.podman_export import write_podman_dir
    from runtime.registry import parse_reference
    from runtime.scratch import scratch_dir

    ref = parse_reference(reference)
    name = store_name(reference)
    store = host.rt.images
    t0 = time.monotonic()
    with scratch_dir(store.tmp_dir, "image-") as work:  # an image-* entry: the store's sweep knows it
        podman_dir = work / "checkpoint"
        write_podman_dir(host, checkpoint_id, podman_dir)
        annotations = _annotations(host, checkpoint_id, podman_dir)
        written = write_layout(podman_dir, work / "layout", ref.tag or "latest", annotations)
        image = store.load_archive(work / "layout", name=name)
    log.info("checkpoint image=%s ref=%s checkpoint=%s layer_bytes=%d elapsed_ms=%.0f", name, ref, checkpoint_id,
             written.layer_bytes, (time.monotonic() - t0) * 1000)
    return BuiltImage(name, str(ref), image.digest, written.manifest_digest, written.layer_bytes)


def _annotations(host: Any, checkpoint_id: str, podman_dir: Path) -> dict[str, str]:
    """podman's and CRI-O's marks, read back from the layout just written (A's reader: what a
    restore will read) and the checkpoint's own manifest (the CRIU version)."""
    from migrate.archive.store import CheckpointStore
    from migrate.interop.checkpoint_image_layout import host_annotations
    from migrate.interop.foreign import load_foreign_dir

    fc = load_foreign_dir(podman_dir)
    manifest = CheckpointStore(host.rt.paths).manifest(checkpoint_id)
    return host_annotations(container_name=fc.container_name, image_name=fc.image_name, image_id=fc.image_id,
                            criu_version=str(manifest.get("criu_version", "")), pymigrate_version=_version())


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pymigrate")
    except metadata.PackageNotFoundError:
        return "0+unknown"


# --- find or pull, then unpack -----------------------------------------------------------------


@contextlib.contextmanager
def open_checkpoint_image(store: ImageStore, reference: str, *, options: RegistryOptions | None = None,
                          progress: Callable[[str], None] | None = None) -> Iterator[ForeignCheckpoint]:
    """The checkpoint image ``reference`` unpacked into scratch (with the checkpoint archive rules)
    and read, for the duration: the stored image of its name if that is a checkpoint image, else
    pulled under a temporary name and named only once it is marked and unpacked whole.

    Raises:
        InvalidArgument: a bad reference.
        NotACheckpointImage: the image has no checkpoint marks.
        UnsafeMember, ArchiveLimitExceeded, ArchiveError: its layer broke the archive rules.
        RegistryError and its subclasses, UnsafeArchive, ImageError: as for ``image pull``.
        A pulled image refused for any of these is removed again.
    """
    from migrate.interop.foreign import extract_foreign
    from runtime.scratch import scratch_dir

    name = store_name(reference)
    pulled = None if _stored_checkpoint(store, name) else _pull(store, reference, options, progress)
    try:
        image = store.get(pulled or name)
        with scratch_dir(store.tmp_dir, "image-") as work:  # an image-* entry: the store's sweep knows it
            fc = extract_foreign(layer_blob(store, image), work / "checkpoint")
            if pulled:
                store.tag(pulled, name)  # as image pull names it: the next restore REF finds it here
                log.info("pulled checkpoint image=%s from=%s digest=%s", name, reference, image.digest)
            yield fc
    finally:
        if pulled:
            store.remove(pulled)  # refused: the image goes with it; kept: it has ``name`` too


def _stored_checkpoint(store: ImageStore, name: str) -> bool:
    from migrate.interop.checkpoint_image_layout import is_checkpoint
    from runtime.errors import ImageNotFound

    try:
        return is_checkpoint(store.annotations(name))
    except ImageNotFound:
        return False


def _pull(store: ImageStore, reference: str, options: RegistryOptions | None,
          progress: Callable[[str], None] | None) -> str:
    """Pull under a temporary name (a refused image never takes a name from another); that name."""
    from migrate.interop.checkpoint_image_layout import is_checkpoint
    from runtime import registry

    temporary = f"{PULL_NAME_PREFIX}{os.getpid()}-{time.monotonic_ns() % 10**9}:pull"
    registry.pull(store, reference, name=temporary, options=options, progress=progress)
    if not is_checkpoint(store.annotations(temporary)):
        store.remove(temporary)
        raise NotACheckpointImage(reference)
    return temporary


def layer_blob(store: ImageStore, image: Image) -> Path:
    """The one layer blob of a checkpoint image (podman and CRI-O make exactly one)."""
    if len(image.layers) != 1:
        raise CheckpointImageError(f"checkpoint image {image.name} has {len(image.layers)} layers, expected 1",
                                   hint="podman, CRI-O and pymigrate put the checkpoint in one layer")
    return store.layers.blob_path(store.layers.layer(image.layers[0]).blob)


# --- restore -----------------------------------------------------------------------------------


def restore_checkpoint_image(host: Any, options: RestoreOptions, *, registry: RegistryOptions | None = None,
                             progress: ProgressFn | None = None) -> RestoreResult:
    """``restore REF``: the checkpoint image found or pulled and unpacked (``open_checkpoint_image``),
    restored as a podman/CRI-O checkpoint (migrate/interop/podman_import.py)."""
    from migrate.interop.podman_import import restore_foreign

    with open_checkpoint_image(host.rt.images, options.image_ref, options=registry, progress=_pull_progress(progress)) as fc:
        log.info("restoring checkpoint image=%s container=%s engine=%s", options.image_ref, fc.container_name, fc.engine)
        _phase(progress, "restore")
        return restore_foreign(host, fc, options, progress=progress)


def _phase(progress: ProgressFn | None, phase: str, message: str = "") -> None:
    if progress is not None:
        from migrate.api import ProgressEvent

        progress(ProgressEvent(operation="restore", phase=phase, message=message))


def _pull_progress(progress: ProgressFn | None) -> Callable[[str], None] | None:
    if progress is None:
        return None
    return lambda line: _phase(progress, "pull", line)
