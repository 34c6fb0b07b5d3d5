"""Outgoing migrations on the source: the records that keep exactly one copy through crashes.

A migration freezes the container (``cgroup.freeze``) and lets CRIU dump it with
``leave_running``; the freeze outlives the daemon. One small record per migration,
ROOT/run/outgoing/<migration_id>.json (written atomically), says what the copy here may do
(``on_crash``, docs/migration.md "Exactly one copy"):

    "rollback"   from the target's reservation (prepare_incoming) until right before the freeze:
                 the target cannot restore anything yet, the copy here wins. A restart asks the
                 target to abort (best effort), waits until no CRIU process still holds the dump's
                 staging dir (an orphaned ``criu swrk`` finishes its dump and exits; thawing under
                 it would be undone when it restores the freezer state it found), and thaws
    "unknown"    from right before the freeze until the target's answer: the final dump may have
                 reached the target, which may run the container now. The copy here stays frozen
                 and is not thawed before the target said what became of the migration
                 (``settle``: the target's SettleMigration, by migration id, final and
                 idempotent). "committed" (or no trace there but the container runs there): kill
                 and remove the copy here; "aborted"/"unknown": thaw it; "lost" (post-copy pages
                 missing there): keep it frozen, recorded as paused, for the operator; the target
                 unreachable or "pending" (its restore still running): keep waiting. The driver
                 asks for SETTLE_WAIT_S itself, then hands the record over (``detach``): the
                 daemon asks again every few seconds (``settle_pending``) and at every start
                 (``reconcile_outgoing``); meanwhile the container shows as paused and
                 ``unpause`` refuses it (``unsettled_for``)
    "commit"     past the point of no return (the target answered that it runs the container):
                 commit there, kill and remove (or keep, ``--keep-source``) the frozen local copy;
                 while the target cannot be told, the record stays and ``settle_pending`` tells
                 it later (its restored copy's lease would ask this host otherwise). A post-copy migration (``mode`` "postcopy") whose target cannot
                 confirm that every page arrived keeps the frozen copy (recorded as paused)

Rolling back also sets the container's host-side veth up again: a migration cuts it right after the
freeze (runtime.checkpointing.CheckpointHost.isolate).

A record belongs to the process that wrote it while that process works on it (``_ACTIVE`` here,
``pid`` in the record for other processes); only ended, detached or orphaned records are settled
by someone else. The record is removed when the migration ends either way.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from migrate.peer_timeout import peer_timeout_s
from migrate.errors import ContainerLost, OutcomeUnknown
from migrate.migration.phases import phase_error
from runtime.errors import ContainerError, ContainerNotFound

if TYPE_CHECKING:
    from migrate.api import Settlement, SettlementOutcome

log = logging.getLogger(__name__)

ROLLBACK = "rollback"
UNKNOWN = "unknown"
COMMIT = "commit"
CRIU_WAIT_S = 120.0  # a dump of a few GiB to a dead socket still finishes well within this
TARGET_TIMEOUT_S = 10.0  # per call to the target during reconcile (daemon start waits for it)
SETTLE_TIMEOUT_S = 20.0  # per SettleMigration call (a post-copy target waits for its last page)
SETTLE_WAIT_S = 2.0 * peer_timeout_s()  # how long a migrate call itself tries to settle before handing over (30 s)
SETTLE_RETRY_S = 1.0

_ACTIVE: set[str] = set()  # migration ids a driver of this process is working on


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

    def begin(self, migration_id: str, *, container_id: str, name: str, dest: str, keep_source: bool, mode: str = "cold",
              page_server_port: int = 0) -> None:
        """Before anything a crash would leave behind (the target's reservation, the freeze).
        ``page_server_port``: post-copy's lazy page server here (a settlement that thaws ends its
        dump first)."""
        _ACTIVE.add(migration_id)
        self._write({
            "migration_id": migration_id,
            "container_id": container_id,
            "name": name,
            "dest": dest,
            "keep_source": keep_source,
            "mode": mode,
            "page_server_port": page_server_port,
            "on_crash": ROLLBACK,
            "pid": os.getpid(),
            "created_at": time.time(),
        })

    def _set(self, migration_id: str, on_crash: str) -> None:
        record = self.load(migration_id)
        record["on_crash"] = on_crash
        self._write(record)

    def outcome_unknown(self, migration_id: str) -> None:
        """Right before the freeze: from now on the copy here thaws only on the target's word."""
        self._set(migration_id, UNKNOWN)

    def past_point_of_no_return(self, migration_id: str) -> None:
        self._set(migration_id, COMMIT)

    def detach(self, migration_id: str) -> None:
        """The driver gives the record up unsettled: the daemon's ``settle_pending`` takes over."""
        _ACTIVE.discard(migration_id)

    def end(self, migration_id: str) -> None:
        _ACTIVE.discard(migration_id)
        self._path(migration_id).unlink(missing_ok=True)

    def unsettled_for(self, container_id: str) -> dict[str, Any] | None:
        """The record of an unsettled migration of ``container_id`` (its copy here must stay frozen)."""
        for record in self.records():
            if record.get("container_id") == container_id and record.get("on_crash") == UNKNOWN:
                return record
        return None

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
        """Where the source's CRIU dumps (migrate/migration/driver.py names it the same way)."""
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


def _owned_elsewhere(record: dict[str, Any]) -> bool:
    """Whether a live driver works on this record (this process's, or another live process's)."""
    if record.get("migration_id") in _ACTIVE:
        return True
    pid = record.get("pid")
    if not isinstance(pid, int) or pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a reused pid is not the writer: only a pymigrate process counts
        return b"migrate" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def reconcile_outgoing(host: Any, connect: Callable[[str], Any], *, criu_wait_s: float = CRIU_WAIT_S) -> list[str]:
    """Finish, roll back or settle every outgoing migration a crash interrupted; the migration ids
    ended. "unknown" records whose target cannot be asked now stay (``settle_pending`` retries).

    ``host`` is a runtime.checkpointing.CheckpointHost; ``connect(dest)`` returns the target's
    MigrationTarget (a RemoteEngine).
    """
    outgoing = OutgoingMigrations(host.paths)
    handled = []
    for record in outgoing.records():
        if _owned_elsewhere(record):
            continue
        log.warning("migration=%s container=%s to %s was interrupted by a restart: %s",
                    record["migration_id"], record.get("name"), record.get("dest"), record.get("on_crash", ROLLBACK))
        if _finish(host, connect, outgoing, record, criu_wait_s=criu_wait_s):
            handled.append(record["migration_id"])
    return handled


def settle_pending(host: Any, connect: Callable[[str], Any], *, criu_wait_s: float = CRIU_WAIT_S) -> list[str]:
    """Settle the "unknown" records no driver works on any more (run by the daemon every few
    seconds); the migration ids ended."""
    outgoing = OutgoingMigrations(host.paths)
    return [r["migration_id"] for r in outgoing.records()
            if r.get("on_crash") in (UNKNOWN, COMMIT) and not _owned_elsewhere(r)
            and _finish(host, connect, outgoing, r, criu_wait_s=criu_wait_s)]


def _finish(host: Any, connect: Callable[[str], Any], outgoing: OutgoingMigrations, record: dict[str, Any], *,
            criu_wait_s: float) -> bool:
    """Act on one orphaned record; True when it ended (removed)."""
    migration_id = record["migration_id"]
    on_crash = record.get("on_crash", ROLLBACK)
    container = _container(host, record)
    if on_crash == UNKNOWN:
        answer = _ask(connect, record)
        if answer is None or answer.outcome == "pending":
            if container is not None:
                _mark(host, container, record, "paused")
            return False
        journal_settled(host, record, container, apply_settlement(host, outgoing, record, container, answer, criu_wait_s=criu_wait_s))
        return True
    outcome: SettlementOutcome = "aborted"
    if on_crash == COMMIT:
        answer = _ask(connect, record)  # a restored migration settles committed there
        committed = answer is not None and answer.outcome in ("committed", "unknown")
        if not committed and record.get("mode") == "postcopy" and container is not None:
            _keep_frozen(host, container, record)
            outcome = "lost"
        else:
            outcome = "committed"
            if container is not None:
                _remove_source_copy(host, container, record)
            if answer is None and record.get("mode") != "postcopy":
                outgoing.detach(migration_id)
                return False  # the target is told later (settle_pending): it drops its reservation then
    else:
        # the local copy is the one that runs: thaw it first, once no CRIU holds the tree
        _thaw(host, outgoing, container, record, criu_wait_s)
        _tell_target(connect, record, "abort_incoming")
    outgoing.end(migration_id)
    journal_settled(host, record, container, outcome)
    return True


def journal_settled(host: Any, record: dict[str, Any], container: Any, outcome: str) -> None:
    """The migration events a driver that died would have journalled (runtime/events.py): a
    settlement ends the migration "completed" (and the source copy's "remove"), or "failed" --
    so a scheduler watching events, and a Migrate retried with its request_id
    (migrate/remote/migrate_retry.py), learn how a migration interrupted by a restart ended."""
    from runtime.events import emit, emit_container

    labels = dict(getattr(container.spec, "labels", {}) or {}) if container is not None else {}
    attributes = {"container_id": record.get("container_id", ""), "mode": record.get("mode", ""), "dest": record.get("dest", ""),
                  "role": "source", **labels, "settled": outcome}
    try:
        if outcome == "committed":
            emit(host.paths.root, "migration", "completed", record["migration_id"], record.get("name", ""), attributes)
            if container is not None and not record.get("keep_source"):
                emit_container(host.paths.root, "remove", container.spec, migration_id=record["migration_id"])
        else:
            error = "the target lost it: kept frozen here" if outcome == "lost" else "rolled back after a restart"
            emit(host.paths.root, "migration", "failed", record["migration_id"], record.get("name", ""), {**attributes, "error": error})
    except Exception:  # noqa: BLE001 - the settlement is done; its event only reports it
        log.warning("migration=%s: settled event not journalled", record["migration_id"], exc_info=True)


def apply_settlement(host: Any, outgoing: OutgoingMigrations, record: dict[str, Any], container: Any, answer: Settlement, *,
                     criu_wait_s: float = CRIU_WAIT_S, cut: Any = None) -> SettlementOutcome:
    """Act on the target's answer to an "unknown" migration and end its record; the outcome acted
    on: "committed" (the copy here removed), "lost" (kept frozen, paused) or "aborted" (thawed).
    ``cut``: the driver's NetworkCut, when it still has it (else the veth is found again)."""
    migration_id = record["migration_id"]
    outcome: SettlementOutcome = answer.outcome
    if outcome == "unknown" and answer.container_running:
        outcome = "committed"  # the target forgot the migration but runs the container: it is there
    log.warning("migration=%s container=%s: settled with %s: %s", migration_id, record.get("name"), record.get("dest"), outcome)
    if outcome == "committed":
        _wait_released(outgoing.staging_dir(migration_id), criu_wait_s)
        if container is not None:
            _remove_source_copy(host, container, record)
    elif outcome == "lost":
        _poke(record)
        if container is not None:
            _keep_frozen(host, container, record)
    else:
        outcome = "aborted"
        _thaw(host, outgoing, container, record, criu_wait_s, cut)
    _remove_staging(outgoing, migration_id)
    outgoing.end(migration_id)
    return outcome


def settle_in_call(target: Any, record: dict[str, Any], *, wait_s: float | None = None) -> Any:
    """The driver's own settlement after its final dump went out and no answer came back: ask
    ``target`` (already connected) until it answers with an outcome or ``wait_s`` (default
    SETTLE_WAIT_S) passed (None)."""
    deadline = time.monotonic() + (SETTLE_WAIT_S if wait_s is None else wait_s)
    if hasattr(target, "timeout_s"):  # a call across a cut link must not eat the whole wait
        target.timeout_s = min(target.timeout_s, SETTLE_TIMEOUT_S)
    while True:
        try:
            answer = target.settle_migration(record["migration_id"], record["container_id"])
            if answer.outcome != "pending":
                return answer
        except Exception as exc:  # noqa: BLE001 - unreachable is what we wait out
            log.info("migration=%s: cannot settle with %s yet: %s", record["migration_id"], record.get("dest"), exc)
        if time.monotonic() > deadline:
            return None
        time.sleep(SETTLE_RETRY_S)


def answer_as_source(host: Any, connect: Callable[[str], Any], migration_id: str, container_id: str) -> Any:
    """A target whose restored copy's lease expired asks this host (the source) what became of
    ``migration_id``: settle it now if it is ours and orphaned ("pending" while a driver works on
    it), else say whether ``container_id`` runs here, unfrozen."""
    from migrate.api import Settlement

    outgoing = OutgoingMigrations(host.paths)
    try:
        record = outgoing.load(migration_id)
    except (OSError, ValueError):
        record = None
    if record is not None:
        if _owned_elsewhere(record):
            return Settlement(migration_id, "pending", False)
        if record.get("on_crash") == COMMIT:
            return Settlement(migration_id, "committed", False)
        if record.get("on_crash") == UNKNOWN:
            answer = _ask(connect, record)
            if answer is None:
                return Settlement(migration_id, "pending", False)
            container = _container(host, record)
            outcome = apply_settlement(host, outgoing, record, container, answer)
            journal_settled(host, record, container, outcome)
            return Settlement(migration_id, outcome, _running_here(host, container_id))
        return Settlement(migration_id, "aborted", _running_here(host, container_id))
    return Settlement(migration_id, "unknown", _running_here(host, container_id))


def _running_here(host: Any, container_id: str) -> bool:
    """Whether ``container_id`` runs here and is not frozen."""
    if not container_id:
        return False
    try:
        container = host.get(container_id)
    except ContainerError:
        return False
    if container.status != "running":
        return False
    try:
        return str(host.rt.cgroups(container.spec.cgroup_parent).freezer_state(container.container_id)) != "frozen"
    except Exception:  # noqa: BLE001 - no freezer state: count it as running (the safe answer)
        return True


def _container(host: Any, record: dict[str, Any]) -> Any:
    try:
        return host.get(record["container_id"])
    except ContainerNotFound:
        return None


def _ask(connect: Callable[[str], Any], record: dict[str, Any]) -> Any:
    """The target's Settlement of ``record``'s migration, or None when it cannot be asked."""
    target = None
    try:
        target = connect(record["dest"])
        if hasattr(target, "timeout_s"):
            target.timeout_s = min(target.timeout_s, SETTLE_TIMEOUT_S)
        return target.settle_migration(record["migration_id"], record["container_id"])
    except Exception as exc:  # noqa: BLE001 - unreachable: the copy here stays frozen, asked again later
        log.warning("migration=%s: the outcome is unknown and %s cannot be asked (%s): %s stays frozen here",
                    record["migration_id"], record.get("dest"), exc, record.get("name"))
        return None
    finally:
        close = getattr(target, "close", None)
        if close is not None:
            close()


def _thaw(host: Any, outgoing: OutgoingMigrations, container: Any, record: dict[str, Any], criu_wait_s: float,
          cut: Any = None) -> None:
    """The copy here is the one: end a post-copy dump, wait for CRIU to let go, rejoin, thaw."""
    migration_id = record["migration_id"]
    _poke(record)
    _wait_released(outgoing.staging_dir(migration_id), criu_wait_s)
    if container is None:
        return
    if cut is not None:
        try:
            host.rejoin(cut)
        except OSError as exc:
            log.error("migration=%s: cannot set the network of %s up again: %s", migration_id, record.get("name"), exc)
    else:
        _rejoin(host, container, migration_id)
    try:
        host.thaw(container)
        _mark(host, container, record, "running")
        log.info("migration=%s: container %s thawed on this host", migration_id, record.get("name"))
    except ContainerError as exc:
        log.error("migration=%s: thawing %s failed: %s", migration_id, record.get("name"), exc)


def _poke(record: dict[str, Any]) -> None:
    """Post-copy: make a lazy dump whose target will never connect (again) return."""
    port = int(record.get("page_server_port") or 0)
    if record.get("mode") == "postcopy" and port:
        from migrate.migration.phases import poke_page_server

        poke_page_server(port)


def _remove_staging(outgoing: OutgoingMigrations, migration_id: str) -> None:
    import shutil

    shutil.rmtree(outgoing.staging_dir(migration_id), ignore_errors=True)


def _remove_source_copy(host: Any, container: Any, record: dict[str, Any]) -> None:
    try:
        host.finish_migration(container, keep=bool(record.get("keep_source")))
        log.info("migration=%s: the copy of %s here removed (it runs on %s)", record["migration_id"], record.get("name"), record.get("dest"))
    except ContainerError as exc:
        log.error("migration=%s: removing the source copy of %s failed: %s", record["migration_id"], record.get("name"), exc)


def mark_paused(host: Any, container: Any, record: dict[str, Any]) -> None:
    """The copy here waits frozen for a settlement: ``ps`` shows it paused."""
    _mark(host, container, record, "paused")


def _mark(host: Any, container: Any, record: dict[str, Any], status: str) -> None:
    """Record the container as paused (frozen, waiting for the settlement) or running again."""
    import dataclasses

    want_from = "running" if status == "paused" else "paused"
    try:
        host.store.update_state(container.container_id,
                                lambda s: dataclasses.replace(s, status=status) if s.status == want_from else s)
    except Exception as exc:  # noqa: BLE001 - the freeze is what matters; the record only reports it
        log.warning("migration=%s: cannot record %s as %s: %s", record["migration_id"], record.get("name"), status, exc)


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


# --- in the migrating call itself --------------------------------------------------------------


def settle_unsure(rt: Any, outgoing: OutgoingMigrations, target: Any, migration_id: str, container: Any, dest: str,
                  exc: BaseException, phase: str, cut: Any = None) -> str:
    """After the final dump went out and no answer came back: ask the target what became of the
    migration and act on it (outgoing.apply_settlement). Returns "committed" (the copy here is
    gone, the container runs on the target); otherwise raises: the original error once thawed
    ("aborted"), ContainerLost ("lost"), OutcomeUnknown (the target could not be asked: the copy
    here stays frozen, the daemon settles it later)."""
    name = container.spec.name
    log.warning("container=%s migration=%s: no answer after the final dump (%s): settling with %s", name, migration_id, exc, dest)
    record = outgoing.load(migration_id)
    answer = settle_in_call(target, record)
    if answer is None:
        outgoing.detach(migration_id)
        mark_paused(rt, container, record)
        raise OutcomeUnknown(
            f"migration {migration_id} of {name} to {dest}: outcome unknown: the final dump went out but the target's "
            f"answer did not come back ({exc}); {name} stays frozen here until {dest} says whether it runs the container",
            phase=phase, migration_id=migration_id, dest=dest,
            hint=(f"this daemon asks {dest} again every few seconds and at each start, then removes this copy (the target "
                  f"runs it) or thaws it; 'pymigrate ps' shows {name} paused; do not unpause or remove it meanwhile"),
        ) from exc
    outcome = apply_settlement(rt, outgoing, record, container, answer, cut=cut)
    if outcome == "committed":
        return outcome
    if outcome == "lost":
        raise ContainerLost(f"container {name} is lost: its copy on {dest} missed memory pages and was removed",
                            phase=phase, source_copy="frozen",
                            hint=f"'pymigrate unpause {name}' resumes the frozen copy here (state as of the freeze)") from exc
    raise phase_error(exc, name, dest, phase) from exc


def end_record(outgoing: OutgoingMigrations, migration_id: str) -> None:
    try:
        outgoing.end(migration_id)
    except OSError as exc:  # the next restart finds it and repeats what was done (idempotent)
        log.warning("migration=%s: cannot remove the outgoing record: %s", migration_id, exc)
