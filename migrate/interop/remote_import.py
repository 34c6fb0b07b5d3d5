"""``pymigrate --host H restore --import FILE`` of a podman or CRI-O archive: converted on the caller's side.

The daemon's checkpoint upload stores pymigrate archives only, so a foreign archive travels as a
checkpoint image instead, with no RPC of its own: the caller unpacks it by the archive rules
(migrate/interop/foreign.py ``extract_foreign``: member whitelist, budgets, no links out) into a
private scratch dir, writes that directory as a one-layer checkpoint image OCI layout
(migrate/interop/checkpoint_image_layout.py ``write_layout``, podman's and CRI-O's marks), loads it
on the daemon under a unique temporary name (``LoadImage``) and restores it there by
``RestoreRequest.image_ref`` with the caller's options (``--security-opt seccomp=...`` included).
The temporary image is removed afterwards, also when the restore fails. The daemon trusts none of
it: the load unpacks the layer with the image rules, the restore finds the marks again and
unpacks the layer once more with the checkpoint-archive rules (migrate/interop/checkpoint_image.py).

Caller-only options cannot cross: ``--pull`` (the base image is found on the daemon's host: pull
it there first) and ``--trusted-key`` (podman's archives carry no signature) are refused before a
byte is sent, as a local import of the same archive refuses or ignores them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from migrate.api import ProgressEvent, ProgressFn, RestoreOptions, RestoreResult
from runtime.errors import Unsupported

log = logging.getLogger(__name__)

# the daemon's store name of the image while it exists (the restore's scratch name, never the user's)
TEMPORARY_PREFIX = "pm-ckpt-import-"
TEMPORARY_TAG = "import"


def temporary_name() -> str:
    """A store name no other import or user image takes: prefix, pid, a clock and random bits."""
    return f"{TEMPORARY_PREFIX}{os.getpid()}-{time.monotonic_ns() % 10**9}-{os.urandom(3).hex()}:{TEMPORARY_TAG}"


def restore_foreign_over_host(engine: Any, options: RestoreOptions, progress: ProgressFn | None = None) -> RestoreResult:
    """Restore the podman/CRI-O archive ``options.import_path`` through ``engine`` (a RemoteEngine)
    as a temporary checkpoint image on its daemon; the daemon's RestoreResult.

    Raises:
        Unsupported: ``--pull`` or ``--trusted-key`` (module docstring).
        UnsafeMember, ArchiveLimitExceeded, ArchiveError: the archive broke the archive rules here.
        Whatever the daemon's load or restore raises (typed over gRPC); the temporary image goes.
    """
    _check_options(options)
    assert options.import_path is not None
    path = Path(options.import_path)
    scratch = Path(tempfile.mkdtemp(prefix="pymigrate-import-"))
    try:
        layout, size = _layout(path, scratch)
        name = temporary_name()
        _phase(progress, "upload", f"{size} bytes as checkpoint image {name}")
        engine.image_load(layout, name=name)
        shutil.rmtree(scratch, ignore_errors=True)  # the upload is done: free the caller's disk now
        try:
            # registry flags only serve --pull (refused above): a restore by image_ref must not carry them
            by_image = dataclasses.replace(options, import_path=None, image_ref=name, image_registry=None)
            result: RestoreResult = engine.restore(by_image, progress)
            return result
        finally:
            _remove(engine, name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_options(options: RestoreOptions) -> None:
    if options.pull_image:
        raise Unsupported("restore --import --pull of a podman or CRI-O archive over --host",
                          "the archive's base image is looked up on the daemon's host, with its registry settings",
                          hint="pull it there first (pymigrate --host ... image pull REF), then restore --import without --pull")
    if options.trusted_keys:
        raise Unsupported("restore --import --trusted-key of a podman or CRI-O archive",
                          "podman's and CRI-O's archives carry no signature", hint="restore it without --trusted-key")


def _layout(path: Path, scratch: Path) -> tuple[Path, int]:
    """The archive unpacked by the archive rules and written as a checkpoint image layout."""
    from migrate.interop.checkpoint_image_layout import write_layout
    from migrate.interop.foreign import extract_foreign

    t0 = time.monotonic()
    fc = extract_foreign(path, scratch / "checkpoint")
    written = write_layout(fc.root, scratch / "layout", TEMPORARY_TAG, _marks(fc))
    shutil.rmtree(fc.root, ignore_errors=True)
    log.info("foreign archive=%s engine=%s container=%s as checkpoint image layer_bytes=%d elapsed_ms=%.0f",
             path, fc.engine, fc.container_name, written.layer_bytes, (time.monotonic() - t0) * 1000)
    return scratch / "layout", written.layer_bytes


def _marks(fc: Any) -> dict[str, str]:
    """The marks that make the layout a checkpoint image, from what the archive says of itself
    (no host facts: this host neither took nor restores the checkpoint)."""
    from migrate.interop import checkpoint_image_layout as layout

    name = fc.container_name or "imported"
    return {layout.CRIO_NAME: name, layout.PODMAN_NAME: name, layout.PODMAN_ROOTFS_IMAGE_NAME: fc.image_name,
            layout.PODMAN_ROOTFS_IMAGE_ID: fc.image_id}


def _remove(engine: Any, name: str) -> None:
    """Remove the temporary image; a failure is logged, never hides the restore's own outcome."""
    try:
        engine.image_remove(name)
    except Exception as exc:  # noqa: BLE001 - cleanup: the restore's own error or result is what the caller gets
        log.warning("temporary checkpoint image %s left on the daemon: %s (pymigrate --host ... image rm %s)",
                    name, exc, name)


def _phase(progress: ProgressFn | None, phase: str, message: str) -> None:
    if progress is not None:
        progress(ProgressEvent(operation="restore", phase=phase, message=message))
