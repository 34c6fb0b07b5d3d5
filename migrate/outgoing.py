"""Outgoing migrations on the source: what a daemon that died mid-migration puts right at start.

A cold migration freezes the container (``cgroup.freeze``) and lets CRIU dump it with
``leave_running``; the freeze outlives the daemon, so a daemon killed mid-migration would leave the
container frozen for good. One small record per migration, ROOT/run/outgoing/<migration_id>.json
(written atomically), says what a restart must do:

    on_crash "rollback"   from the target's reservation (prepare_incoming) until the target
                          confirmed the restore: ask the target to abort (best effort), wait
                          until no CRIU process still holds the dump's staging dir (an orphaned
                          ``criu swrk`` finishes its dump and exits; thawing under it would be
                          undone when it restores the freezer state it found), thaw
    on_crash "commit"     past the point of no return (the container runs on the target): commit
                          there (best effort), kill and remove (or keep, ``--keep-source``) the
                          frozen local copy. A post-copy migration (``mode`` "postcopy") whose
                          target cannot confirm that every page arrived keeps the frozen copy
                          (recorded as paused) for the operator: the target's copy may be lost

Rolling back also sets the container's host-side veth up again: a migration cuts it right after the
freeze (runtime.checkpointing.CheckpointHost.isolate).

The record is removed when the migration ends either way. Unreachable targets are not waited
for: a target drops the reservation itself when the push stream breaks, or at its own restart.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from runtime.errors import ContainerError, ContainerNotFound

log = logging.getLogger(__name__)

ROLLBACK = "rollback"
COMMIT = "commit"
CRIU_WAIT_S = 120.0  # a dump of a few GiB to a dead socket still finishes well within this
TARGET_TIMEOUT_S = 10.0  # per call to the target during reconcile (daemon start waits for it)


class OutgoingMigrations:
    """The records of one state root's outgoing migrations (ROOT/run/outgoing)."""

    def __init__(self, paths: Any) -> None:
        self.paths = paths
        self.dir = Path(paths.run) / "outgoing"

    def _path(self, migration_id: str) -> Path:
        if not migration_id or len(migration_id) > 64 or not all(c in "0123456789abcdef" for c in migration_id):
            raise ValueError(f"invalid migration id {migration_id!r}")
        return self.dir / f"{migration_id}.json"

    def _write(self, record: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(record["migration_id"])
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(record, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def begin(self, migration_id: str, *, container_id: str, name: str, dest: str, keep_source: bool, mode: str = "cold") -> None:
        """Before anything a crash would leave behind (the target's reservation, the freeze)."""
        self._write({
            "migration_id": migration_id,
            "container_id": container_id,
            "name": name,
            "dest": dest,
            "keep_source": keep_source,
            "mode": mode,
            "on_crash": ROLLBACK,
            "created_at": time.time(),
        })

    def past_point_of_no_return(self, migration_id: str) -> None:
        record = self.load(migration_id)
        record["on_crash"] = COMMIT
        self._write(record)

    def end(self, migration_id: str) -> None:
        self._path(migration_id).unlink(missing_ok=True)

    def load(self, migration_id: str) -> dict[str, Any]:
        return json.loads(self._path(migration_id).read_text())  # type: ignore[no-any-return]

    def records(self) -> list[dict[str, Any]]:
        out = []
        if self.dir.is_dir():
            for p in sorted(self.dir.glob("*.json")):
                try:
                    out.append(json.loads(p.read_text()))
                except (OSError, ValueError) as exc:
                    log.warning("unreadable outgoing migration record %s: %s", p, exc)
        return out

    def staging_dir(self, migration_id: str) -> Path:
        """Where the source's CRIU dumps (migrate/migration.py names it the same way)."""
        return Path(self.paths.tmp) / f"migrate-{migration_id}"


def holders(path: Path, proc: Path = Path("/proc")) -> list[int]:
    """Pids of processes with a file descriptor or cwd at or below ``path``."""
    prefix = str(path)
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(entry / "cwd")]
            for fd in os.listdir(entry / "fd"):
                try:
                    links.append(os.readlink(entry / "fd" / fd))
                except OSError:
                    continue
        except OSError:  # gone, or a kernel thread
            continue
        if any(link == prefix or link.startswith(prefix + "/") for link in links):
            found.append(int(entry.name))
    return found


def _wait_released(path: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        pids = holders(path) if path.exists() else []
        if not pids:
            return True
        if time.monotonic() > deadline:
            log.warning("processes %s still hold %s after %gs", pids, path, timeout_s)
            return False
        time.sleep(0.1)


def reconcile_outgoing(host: Any, connect: Callable[[str], Any], *, criu_wait_s: float = CRIU_WAIT_S) -> list[str]:
    """Finish or roll back every outgoing migration a crash interrupted; the migration ids handled.

    ``host`` is a runtime.checkpointing.CheckpointHost; ``connect(dest)`` returns the target's
    MigrationTarget (a RemoteEngine).
    """
    outgoing = OutgoingMigrations(host.paths)
    handled = []
    for record in outgoing.records():
        migration_id = record["migration_id"]
        on_crash = record.get("on_crash", ROLLBACK)
        log.warning("migration=%s container=%s to %s was interrupted by a restart: %s",
                    migration_id, record.get("name"), record.get("dest"), on_crash)
        try:
            container = host.get(record["container_id"])
        except ContainerNotFound:
            container = None
        if on_crash == COMMIT:
            committed = _tell_target(connect, record, "commit_incoming")
            if not committed and record.get("mode") == "postcopy" and container is not None:
                _keep_frozen(host, container, record)
            elif container is not None:
                try:
                    host.finish_migration(container, keep=bool(record.get("keep_source")))
                except ContainerError as exc:
                    log.error("migration=%s: removing the source copy of %s failed: %s", migration_id, record.get("name"), exc)
        else:
            # the local copy is the one that runs: thaw it first, once no CRIU holds the tree
            _wait_released(outgoing.staging_dir(migration_id), criu_wait_s)
            if container is not None:
                _rejoin(host, container, migration_id)
                try:
                    host.thaw(container)
                    log.info("migration=%s: container %s thawed on this host", migration_id, record.get("name"))
                except ContainerError as exc:
                    log.error("migration=%s: thawing %s failed: %s", migration_id, record.get("name"), exc)
            _tell_target(connect, record, "abort_incoming")
        outgoing.end(migration_id)
        handled.append(migration_id)
    return handled


def _rejoin(host: Any, container: Any, migration_id: str) -> None:
    """Set the host-side veth up again (the migration cut it after the freeze)."""
    from runtime.checkpointing import NetworkCut

    veth = host.host_veth(container.spec)
    try:
        host.rejoin(NetworkCut(criu_lock="skip", veth=veth))
    except OSError as exc:
        log.error("migration=%s: cannot set %s up again: %s", migration_id, veth, exc)


def _keep_frozen(host: Any, container: Any, record: dict[str, Any]) -> None:
    """Post-copy past the resume, and the target cannot confirm that every page arrived: its copy
    may be lost. The frozen copy here stays (as paused, off the network) for the operator."""
    import dataclasses

    log.error("migration=%s: post-copy of %s to %s was interrupted after the resume and the target did not confirm "
              "every page: keeping the frozen copy here; 'pymigrate unpause %s' resumes it if the target's copy is lost",
              record["migration_id"], record.get("name"), record.get("dest"), record.get("name"))
    try:
        host.store.update_state(container.container_id, lambda s: dataclasses.replace(s, status="paused"))
    except Exception as exc:  # noqa: BLE001 - reporting matters more
        log.warning("migration=%s: cannot record %s as paused: %s", record["migration_id"], record.get("name"), exc)


def _tell_target(connect: Callable[[str], Any], record: dict[str, Any], method: str) -> bool:
    """Call ``method(migration_id)`` on the target; False when it failed (logged)."""
    target = None
    try:
        target = connect(record["dest"])
        if hasattr(target, "timeout_s"):
            target.timeout_s = min(target.timeout_s, TARGET_TIMEOUT_S)
        getattr(target, method)(record["migration_id"])
        return True
    except Exception as exc:  # best effort: the target cleans up by itself (see module doc)
        log.warning("migration=%s: %s on %s failed: %s", record["migration_id"], method, record.get("dest"), exc)
        return False
    finally:
        close = getattr(target, "close", None)
        if close is not None:
            close()
