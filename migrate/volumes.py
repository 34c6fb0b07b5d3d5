"""Named volumes in checkpoint archives and live migrations (runtime/volumes.py keeps them).

A bind mount (``Volume.name == ""``) stays a host path: CRIU declares it external and the
restoring host must provide the path. A named volume belongs to the container and travels with it:

- ``checkpoint --export`` writes each named volume's data dir as members ``volumes/<name>/...``
  while the container is frozen (``add_volumes``), unless ``--ignore-volumes`` (podman's flag);
- ``restore`` (local, ``--import``, a migration peer's push) resolves each named volume on this
  host: the archive's copy when it carries one (``install``), else the volume this host already
  has (an archive without it, e.g. ``--ignore-volumes``, needs one, and says so);
- a live migration sends each volume while the container still runs, with the upper layer's
  stage (``VolumeSync.stage``), and during the pause only what changed since
  (``VolumeSync.add_final``: migrate.migration.upper_sync's signatures and deltas; the trailer's
  ``volume_deltas``), which the target merges into the staged copy (``merge_staged``).

The rule for a name that exists on the restoring host (``runtime.volumes.VolumeStore.adopt``): an
empty, unused volume is filled; one with content or in use is refused (``VolumeConflict``) —
never merged or overwritten, so no restore can replace data it did not bring. A migration's
target checks this at its pre-flight, before the source freezes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime.errors import VolumeNotFound
from runtime.spec import ContainerSpec, Volume

log = logging.getLogger(__name__)

PREFIX = "volumes"  # archive members volumes/<name>/<path> (migrate/archive/members.py)
DELTAS_KEY = "volume_deltas"  # in a migration archive's trailer: {name: UpperDelta.as_dict()}
CARRIED_KEY = "volumes_carried"  # in an export's manifest: the names whose data the archive holds


def named(spec: ContainerSpec) -> dict[str, Path]:
    """The spec's named volumes: name -> data dir on this host (one entry per name)."""
    out: dict[str, Path] = {}
    for vol in spec.volumes:
        if vol.name and vol.name not in out:
            out[vol.name] = Path(vol.source)
    return out


def add_volumes(writer: Any, spec: ContainerSpec) -> tuple[str, ...]:
    """Write every named volume's data dir into ``writer`` (the container is frozen)."""
    for name, path in named(spec).items():
        writer.add_tree(f"{PREFIX}/{name}", path)
    return tuple(named(spec))


class VolumeSync:
    """The source side of a migration: stage each named volume before the freeze, then send
    only what changed during the pause (a full copy where a delta cannot say it)."""

    def __init__(self, spec: ContainerSpec) -> None:
        self.volumes = named(spec)
        self.snapshots: dict[str, Any] = {}
        self.changed = 0  # entries sent during the pause (changed + deleted), all volumes

    def stage(self, writer: Any) -> None:
        from migrate.migration.upper_sync import write_snapshot

        for name, path in self.volumes.items():
            self.snapshots[name] = write_snapshot(writer, f"{PREFIX}/{name}", path)

    def add_final(self, writer: Any) -> dict[str, Any]:
        """Write the changes (or everything) into the dump's archive; the trailer entry."""
        from migrate.migration.upper_sync import compute_delta, write_delta

        deltas: dict[str, Any] = {}
        for name, path in self.volumes.items():
            snapshot = self.snapshots.get(name)
            delta = compute_delta(snapshot, path) if snapshot is not None else None
            if delta is None:  # not staged, or changes a delta cannot say (hardlinks): all of it
                log.info("volume=%s sent whole during the pause", name)
                writer.add_tree(f"{PREFIX}/{name}", path)
                continue
            write_delta(writer, f"{PREFIX}/{name}", path, delta)
            deltas[name] = delta.as_dict()
            self.changed += len(delta.changed) + len(delta.deleted)
            log.info("volume=%s sent during the pause: %d changed, %d deleted entries", name, len(delta.changed),
                     len(delta.deleted))
        return {DELTAS_KEY: deltas} if deltas else {}


def merge_staged(scratch: Path, deltas: Any, staged: Path | None) -> None:
    """A migration's archive holds only the changes of the volumes in ``deltas``: merge them
    into the copies staged before the freeze (``staged/<name>``) and put each merged tree where
    a full copy would be (``scratch/volumes/<name>``).

    Raises:
        ArchiveError / UnsafeMember: malformed deltas (a peer's bytes).
        MigrationError: a delta for a volume that was not staged.
    """
    from migrate.errors import ArchiveError, MigrationError
    from migrate.migration.upper_sync import UpperDelta, apply_delta
    from runtime.errors import InvalidArgument
    from runtime.fstree import remove_tree
    from runtime.volumes import validate_volume_name

    if not isinstance(deltas, dict):
        raise ArchiveError(f"malformed {DELTAS_KEY}: expected an object")
    for name, delta in deltas.items():
        try:
            validate_volume_name(name)
        except InvalidArgument as exc:
            raise ArchiveError(f"malformed {DELTAS_KEY}: {exc.message}") from None
        stage = staged / name if staged is not None else None
        if stage is None or not stage.is_dir():
            raise MigrationError(f"the archive carries only volume {name}'s changes, but no staged copy is here", phase="verify")
        received = scratch / PREFIX / name
        received.mkdir(parents=True, exist_ok=True)  # nothing changed: no member at all
        parsed = UpperDelta.from_dict(delta)
        apply_delta(stage, received, parsed)
        remove_tree(received)
        os.rename(stage, received)
        log.info("volume=%s staged copy merged with the pause's changes: %d changed, %d deleted",
                 name, len(parsed.changed), len(parsed.deleted))


def unresolved(spec: ContainerSpec) -> ContainerSpec:
    """The spec with named volumes' sources cleared: another host's paths mean nothing here."""
    return replace(spec, volumes=tuple(replace(v, source="") if v.name else v for v in spec.volumes))


def install(store: Any, spec: ContainerSpec, carried: Path | None, *, migration_id: str = "",
            holds: Any = None) -> tuple[ContainerSpec, list[tuple[str, str]]]:
    """Resolve the spec's named volumes on this host: each one ``carried`` (``<carried>/<name>``,
    an unpacked archive's volumes dir) becomes the volume (``VolumeStore.adopt``), the others
    must exist here. Returns the spec with their data dirs as sources, and what was adopted
    (for ``uninstall`` if the restore fails). ``holds`` (a ``contextlib.ExitStack`` and
    ``StateStore.hold``) keeps each name held until the caller closes it: once the restored
    container's record exists, it is the volume's user.

    Raises:
        VolumeConflict: a carried volume's name holds data or is in use here.
        VolumeNotFound: a volume the archive does not carry and this host does not have.
    """
    adopted: list[tuple[str, str]] = []
    vols: list[Volume] = []
    held: set[str] = set()
    try:
        for vol in spec.volumes:
            if not vol.name:
                vols.append(vol)
                continue
            if holds is not None and not any(n == vol.name for n, _ in adopted) and vol.name not in held:
                stack, hold = holds
                stack.enter_context(hold(f"volume:{vol.name}", "restore container"))
                held.add(vol.name)
            tree = carried / vol.name if carried is not None else None
            if tree is not None and tree.is_dir() and not any(n == vol.name for n, _ in adopted):
                adopted.append((vol.name, store.adopt(vol.name, tree, migration_id=migration_id)))
            elif not store.exists(vol.name):
                raise VolumeNotFound(vol.name, hint=f"the checkpoint does not carry volume {vol.name} (a local checkpoint, or an export "
                                                    f"made with --ignore-volumes or over --host): create it here with its data first "
                                                    f"(pymigrate volume create {vol.name})")
            vols.append(replace(vol, source=str(store.data_dir(vol.name))))
    except BaseException:
        uninstall(store, adopted)
        raise
    return replace(spec, volumes=tuple(vols)), adopted


def uninstall(store: Any, adopted: list[tuple[str, str]]) -> None:
    """Undo ``install`` (a failed restore); errors are logged: the restore's own error matters more."""
    for name, how in adopted:
        try:
            store.unadopt(name, how)
        except Exception as exc:  # a rollback path: keep undoing the rest
            log.warning("volume=%s: undoing its restore failed: %s", name, exc)


def check_incoming(store: Any, spec: ContainerSpec, *, mode: str, allow_peer_volumes: bool) -> None:
    """A migration target's pre-flight for the container's volumes (before the source freezes).

    Raises:
        VolumeConflict: a named volume of that name holds data or is in use here.
        Unsupported: named volumes in a post-copy migration.
        InvalidSpec: a bind mount while this host takes no host paths from peers.
        IncompatibleHost: a bind mount whose host path does not exist here (names the mount).
    """
    from migrate.errors import IncompatibleHost
    from runtime.errors import InvalidSpec, Unsupported
    from runtime.volumes import validate_volume_name

    for i, vol in enumerate(spec.volumes):
        if not isinstance(vol.name, str) or not isinstance(vol.source, str) or not isinstance(vol.target, str):
            raise InvalidSpec(f"volumes[{i}]", f"invalid volume {vol!r}: expected strings")
        if vol.name:
            validate_volume_name(vol.name)
            if mode == "postcopy":
                raise Unsupported("named volumes in a post-copy migration", f"container {spec.name} mounts volume {vol.name}",
                                  hint="migrate it with --mode cold or --mode precopy")
            store.check_adoptable(vol.name)
        elif not allow_peer_volumes:
            raise InvalidSpec(f"volumes[{i}].source", f"migrated container {spec.name} has bind mount {vol.target} from host path "
                                                      f"{vol.source!r}: this host does not take volumes from peers",
                              hint="start this host's daemon with --allow-peer-volumes to accept them")
        elif not os.path.exists(vol.source):
            raise IncompatibleHost(f"bind mount {vol.target} of container {spec.name}: host path {vol.source} does not exist on this host",
                                   phase="preflight", hint=f"create {vol.source} on the target first, or move the data into a named volume")
