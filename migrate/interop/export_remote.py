"""``pymigrate --host H checkpoint NAME --export FILE --format podman``: converted on the caller's side.

The daemon takes the checkpoint as for a native export over ``--host`` (a local checkpoint there,
kept there as a native remote export keeps it), the caller downloads its native archive into a
hidden scratch dir beside FILE, unpacks it by the archive rules (``restore.unpack_archive``: the
member whitelist, the extraction budgets, a layer image checked before it is mounted; the manifest's
word on device nodes is not taken) and converts it (migrate/interop/export_convert.py) with no
image tree: the image is on the daemon's host, so an opaque directory or a USER given by name is
refused (the hint says to run the export there). Unpacking owners and mounting a layer image need
root on the caller's side; without it the export is refused before the container is touched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from migrate.interop.export_convert import FEATURE, ExportSource, check_exportable, pack_file, write_source
from runtime.errors import Unsupported

log = logging.getLogger(__name__)

_THERE = "run the export on the container's host: pymigrate checkpoint NAME --export FILE --format podman"


def export_over_host(engine: Any, name: str, options: Any, progress: Any = None) -> Any:
    """Checkpoint ``name`` through ``engine`` (a RemoteEngine), download its native archive and
    write the podman archive at ``options.export_path``; the CheckpointResult with ``export_path``
    and ``archive_bytes`` set. A failed conversion keeps the daemon's checkpoint and names it.

    Raises:
        InvalidArgument: options --format podman refuses (podman_export.check_options).
        Unsupported: not root here; a container, image or layer podman could not restore.
    """
    from migrate.errors import MigrationError
    from migrate.interop.podman_export import check_options
    from runtime.errors import ContainerError

    check_options(options)
    if os.geteuid() != 0:
        raise Unsupported(f"{FEATURE} over --host", "converting the downloaded checkpoint needs root here "
                          "(its layer's owners, its file-system image mounted read-only)", hint=_THERE)
    check_exportable(engine.inspect(name).spec)  # before the container is frozen over there
    out = Path(options.export_path).resolve()
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        native = scratch / "native.pma"
        result = engine.checkpoint(name, dataclasses.replace(options, export_format="native", export_path=native,
                                                             compress="zstd"), progress)
        try:
            size = _convert(native, scratch, result.checkpoint_id, out, options.compress, options.level)
        except (ContainerError, MigrationError) as exc:
            kept = f"the checkpoint is kept on that host: pymigrate --host ... restore {result.checkpoint_id}"
            exc.hint = f"{exc.hint + '; ' if exc.hint else ''}{kept}"
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    stats = dataclasses.replace(result.stats, archive_bytes=size)
    return dataclasses.replace(result, export_path=str(out), stats=stats)


def _convert(native: Path, scratch: Path, checkpoint_id: str, out: Path, compress: str, level: int) -> int:
    """The downloaded native archive ``native`` as the podman archive ``out``; its bytes."""
    from migrate.restore import unpack_archive
    from runtime.fstree import remove_tree_quietly
    from runtime.syscalls import LINUX

    host = SimpleNamespace(paths=SimpleNamespace(tmp=scratch))  # all unpack_archive asks of a host
    with open(native, "rb") as f:
        unpacked = unpack_archive(host, f, trust_manifest=False)
    native.unlink()
    assert unpacked.scratch is not None
    try:
        source = ExportSource(checkpoint_id=checkpoint_id, manifest=unpacked.manifest, images_dir=unpacked.images_dir,
                              upper=unpacked.upper_dir, lower=None)
        tree = scratch / "podman"
        write_source(source, tree, unpacked.scratch, LINUX)
        return pack_file(tree, out, compress, level)
    finally:
        remove_tree_quietly(unpacked.scratch)
