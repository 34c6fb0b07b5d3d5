"""The source side's phases, written once; a mode (cold.py, postcopy.py, precopy's hook) plugs in
only what differs.

    preflight   the target can restore what this CRIU dumps (and what the mode needs); it
                reserves the name and address (PrepareIncoming)
    image       the base image, by digest, if the target lacks it
    stage       the upper layer before the freeze, when the target asks for it
    precopy     the mode's work while the container still runs (pre-dump rounds)
    freeze      cgroup.freeze here, the link cut (our network lock)
    dump        the mode's dump: CRIU with leave_running while the archive streams to the target
    restore     the target verifies and restores; it answers once the container runs
    ---- point of no return: the container runs on the target ----
    lazy        the mode's work after the resume (post-copy: memory pages)
    commit      the target drops its reservation; the copy here is removed

Exactly one copy (docs/migration.md). From right before the freeze the outgoing record
(recovery.py) says "unknown". A failure before the last byte of the dump's archive left
(``Move.final_sent``) cannot have let the target restore: the copy here wins, thawed at once. A
failure after it (the answer lost, the link cut, the target killed mid-restore) is settled with
the target by migration id (``recovery.settle_unsure``) before the copy here is removed or
thawed; if the target cannot be asked, the copy stays frozen and ``OutcomeUnknown`` says so.
After the point of no return, cleanup errors are logged, not raised: the migration happened.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from migrate import failpoints
from migrate.api import MigrateOptions, MigrateResult, MigrationMode, MigrationStats, ProgressFn, RestoreResult
from migrate.archive.store import build_manifest, image_record, new_checkpoint_id
from migrate.archive.streams import ChunkSink
from migrate.checkpoint import dump_empty_ns, dump_externals
from migrate.errors import ContainerLost
from migrate.migration.phases import (
    ArchivePusher,
    PhaseClock,
    UpperForDump,
    check_target,
    incoming_request,
    lose,
    phase_error,
    push_image,
    settled_result,
    upper_for_migration,
)
from migrate.migration.recovery import OutgoingMigrations, end_record, settle_unsure
from runtime.criu import Criu, DumpRequest, cpuinfo_dump
from runtime.errors import InvalidState
from runtime.fstree import remove_tree_quietly

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Move:
    """One migration in flight: what the sequence and its mode share."""

    rt: Any  # runtime.checkpointing.CheckpointHost
    target: Any  # a MigrationTarget with host_info
    options: MigrateOptions
    criu: Criu
    clock: PhaseClock
    container: Any
    dt: Any  # runtime.checkpointing.DumpTarget
    target_info: Any = None  # the target's HostInfo
    criu_version: str = ""  # this host's
    migration_id: str = ""
    ticket: Any = None
    outgoing: OutgoingMigrations | None = None
    staging: Path | None = None  # ROOT/tmp/migrate-<id>: the dump's images dir and the mode's files
    upper: UpperForDump | None = None
    sink: ChunkSink | None = None
    frozen: bool = False
    frozen_at: float = 0.0
    cut: Any = None  # the network here, cut for the dump (CheckpointHost.isolate)
    final_sent: bool = False  # the archive's last byte may have left: the target may restore
    bytes_on_wire: int = 0
    image_bytes: int = 0  # the base image, when the target lacked it (raw tar or OCI archive on the wire)
    image_layers_sent: int = 0  # layer blobs of a layered image the target lacked
    restored: RestoreResult | None = None
    compressed_pages: bool = False  # the mode asks for a page relay (IncomingRequest.compressed_pages)

    @property
    def spec(self) -> Any:
        return self.dt.spec

    @property
    def images_dir(self) -> Path:
        assert self.staging is not None, "the images dir exists once the staging dir does"
        return self.staging / "images"

    def enter(self, phase: str, message: str = "") -> None:
        self.clock.enter(phase, message)


class Mode(Protocol):
    """What a migration mode supplies to the sequence. Every hook runs on the driver's thread."""

    name: MigrationMode  # "cold", "precopy", "postcopy": the IncomingRequest's and the result's mode
    abort_target_first: bool  # on rollback: stop the target before thawing here (its lazy-pages daemon)
    retry_commit: bool  # a commit the target did not hear is retried by the daemon later

    def preflight(self, move: Move) -> None:
        """After the target's check: refuse what this mode cannot do there (raise)."""

    def page_server_address(self) -> str | None:
        """The target's address for a page server (PrepareIncoming), if the mode sends pages there."""

    def record(self) -> dict[str, Any]:
        """Extra fields of the outgoing record (OutgoingMigrations.begin)."""

    def prepared(self, move: Move) -> None:
        """Right after the target reserved the migration and it was recorded."""

    def before_freeze(self, move: Move) -> None:
        """While the container still runs, after the upper layer was staged."""

    def manifest_options(self, move: Move) -> dict[str, Any]:
        """Extra options the archive's manifest carries for the target."""

    def dump_request(self, move: Move, request: DumpRequest) -> DumpRequest:
        """The mode's changes to the dump request (page server, lazy pages, parent images)."""

    def dump(self, move: Move, request: DumpRequest, pusher: ArchivePusher) -> None:
        """Frozen: dump with CRIU while the archive streams into ``move.sink`` (the pusher is
        started); set ``move.final_sent`` right before the archive's last record, close the sink.
        On failure, end the sink and raise the first real cause."""

    def end_dump(self, move: Move) -> None:
        """After the dump phase, failed or not (close what the dump held open)."""

    def abandon(self, move: Move) -> None:
        """Rollback before the point of no return: stop the mode's own work (its dump)."""

    def unsure(self, move: Move) -> None:
        """The final dump went out and no answer came: right before settling with the target."""

    def settled(self, move: Move) -> None:
        """The answer was lost, and the target runs the container: finish the mode's work."""

    def resumed(self, move: Move, resumed_at: float) -> None:
        """Past the point of no return, before the commit (post-copy: the pages move). May raise
        ContainerLost through ``phases.lose``."""

    def finished(self, move: Move) -> None:
        """The very end, whatever happened (release what the mode holds: a firewall guard)."""

    def stats(self, move: Move) -> tuple[int, int, dict[str, float]]:
        """(bytes on the wire, raw bytes, phase times) the mode adds to the result."""


def run(rt: Any, name: str, options: MigrateOptions, target: Any, mode: Mode, *, criu: Criu,
        progress: ProgressFn | None = None) -> MigrateResult:
    """Move container ``name`` of ``rt`` to ``target`` in ``mode`` (module doc)."""
    container = rt.get(name)
    if container.status != "running":
        raise InvalidState(container.spec.name, "migrate", container.status, "running")
    move = Move(rt=rt, target=target, options=options, criu=criu, clock=PhaseClock(progress), container=container,
                dt=rt.dump_target(container))
    try:
        _preflight(move, mode)
        _event(move, "start")
        settled = _transfer(move, mode)
        result = _finish(move, mode, settled)
        _event(move, "completed", frozen_ms=result.stats.frozen_ms, total_ms=result.stats.total_ms)
        return result
    except BaseException as exc:
        if move.migration_id:  # else the target never heard of it: no migration to speak of
            _event(move, "failed", error=str(exc) or type(exc).__name__)
        raise
    finally:
        mode.finished(move)


def _event(move: Move, action: str, **attributes: Any) -> None:
    """A migration event in this host's journal (runtime/events.py): id the migration's, name the container's."""
    from runtime.events import emit

    try:  # never into the migration (a failure's event must not hide the failure)
        spec = move.spec
        emit(move.rt.paths.root, "migration", action, move.migration_id, spec.name,
             {"container_id": spec.container_id, "mode": move.options.mode, "dest": move.options.dest, "role": "source",
              **getattr(spec, "labels", {}), **attributes})
    except Exception:
        log.warning("migration=%s: %s event not journalled", move.migration_id, action, exc_info=True)


def _preflight(move: Move, mode: Mode) -> None:
    move.clock.emit("checking the target")
    move.target_info, move.criu_version = check_target(move.criu, move.target, move.options.dest)
    mode.preflight(move)
    # migrate -p: the target publishes (and its pre-flight claims) other ports
    ports = getattr(move.options, "ports", None)
    spec = move.spec if ports is None else dataclasses.replace(move.spec, ports=ports)
    request = incoming_request(move.rt, spec, move.criu_version, mode.name, mode.page_server_address())
    request = dataclasses.replace(request, compressed_pages=move.compressed_pages)
    move.ticket = move.target.prepare_incoming(request)
    move.migration_id = move.ticket.migration_id
    log.info("container=%s migration=%s phase=preflight dest=%s mode=%s need_image=%s", move.spec.name, move.migration_id,
             move.options.dest, mode.name, move.ticket.need_image)


def _transfer(move: Move, mode: Mode) -> bool:
    """Everything up to the target's answer; True when a lost answer was settled as committed."""
    spec, options = move.spec, move.options
    move.outgoing = OutgoingMigrations(move.rt.paths)  # what a restart does if this daemon dies mid-way
    try:
        move.outgoing.begin(move.migration_id, container_id=spec.container_id, name=spec.name, dest=options.dest,
                            keep_source=options.keep_source, **mode.record())
        failpoints.hit("source.prepared")
        mode.prepared(move)
        if move.ticket.need_image:
            move.enter("image", f"sending image {spec.image}")
            move.image_bytes, move.image_layers_sent = push_image(move.rt, move.target, move.migration_id, spec.image_digest,
                                                                  move.ticket)
            move.bytes_on_wire += move.image_bytes
        from migrate.volumes import VolumeSync, named

        move.upper, sent = upper_for_migration(move.target, move.ticket, move.migration_id, move.dt.upper_dir, move.enter,
                                               upper_image=move.dt.upper_image, tmp_dir=move.rt.paths.tmp,
                                               volumes=VolumeSync(spec) if named(spec) else None)
        move.bytes_on_wire += sent
        move.staging = move.rt.paths.tmp / f"migrate-{move.migration_id}"
        move.staging.mkdir(parents=True, mode=0o700)
        move.images_dir.mkdir()
        mode.before_freeze(move)
        try:
            _dump(move, mode)
        finally:
            mode.end_dump(move)
        return False
    except BaseException as exc:
        failed_phase = move.clock.phase
        if move.upper is not None:
            move.upper.discard()  # a staged image's packed copy in ROOT/tmp
        if not move.final_sent:
            _roll_back(move, mode)
            raise phase_error(exc, spec.name, options.dest, failed_phase) from exc
        mode.unsure(move)
        settle_unsure(move.rt, move.outgoing, move.target, move.migration_id, move.container, options.dest, exc,
                      failed_phase, move.cut)
        mode.settled(move)  # else it raised: the container runs on the target
        return True


def _dump(move: Move, mode: Mode) -> None:
    from migrate.archive import ArchiveWriter  # noqa: F401  (loaded before the freeze)

    rt, spec, options = move.rt, move.spec, move.options
    cpuinfo_dump(move.images_dir)
    move.criu.warm()
    request = mode.dump_request(move, DumpRequest(
        pid=move.dt.init_pid,
        images_dir=move.images_dir,
        leave_running=True,  # stays frozen (module doc): the rollback thaws it, the commit removes it
        tcp_established=options.tcp_established,
        tcp_skip_in_flight=options.tcp_established,
        file_locks=options.file_locks,
        external=dump_externals(move.dt),
        empty_ns=dump_empty_ns(move.dt),
        freeze_cgroup=move.dt.freeze_cgroup,
        network_lock=rt.network_lock(),
    ))
    move.sink = ChunkSink()
    pusher = ArchivePusher(move.target.receive_checkpoint, move.migration_id, move.sink)
    assert move.outgoing is not None
    move.outgoing.outcome_unknown(move.migration_id)  # a crash from here on asks the target first
    move.enter("freeze")
    rt.freeze(move.container)
    move.frozen = True
    move.frozen_at = time.monotonic()
    mark(move, "source: frozen")
    _event(move, "frozen")  # an flocked append, ~0.1 ms of the pause
    # Our own network lock (the link down) instead of CRIU's nftables one; it also keeps the
    # frozen source deaf and mute once CRIU, with leave_running, takes the sockets out of repair
    # after the dump (--tcp-established): its kernel would ACK (or, when it is killed, FIN) the
    # peers' packets meant for the copy on the target.
    move.cut = rt.isolate(spec)
    request = dataclasses.replace(request, network_lock=move.cut.criu_lock)
    mark(move, "source: link cut")
    move.enter("dump", "dumping and streaming")
    pusher.start()
    mode.dump(move, request, pusher)
    move.enter("restore", "target restoring")
    pusher.join()
    if pusher.error is not None:
        raise pusher.error
    move.restored = pusher.result
    mark(move, "source: the target's answer")
    move.bytes_on_wire += move.sink.bytes_written


def mark(move: Move, what: str) -> None:
    """A debug line with the monotonic clock in ms: with the target's (same machine) a timeline of the pause."""
    log.debug("migration=%s %s at_ms=%.1f %s", move.migration_id, move.clock.phase, time.monotonic() * 1000, what)


def manifest(move: Move, mode: Mode) -> dict[str, Any]:
    """The archive's manifest for this migration (the dump's first record)."""
    return build_manifest(move.spec, new_checkpoint_id(), criu_version=move.criu_version, options={
        "tcp_established": move.options.tcp_established,
        "file_locks": move.options.file_locks,
        "migration_id": move.migration_id,
        **mode.manifest_options(move),
    }, image=image_record(move.rt.images, move.spec))


def _roll_back(move: Move, mode: Mode) -> None:
    """Before the final dump went out: the copy here wins (network back, thawed), the target aborts."""
    name, mid = move.spec.name, move.migration_id
    if mode.abort_target_first:
        _abort_target(move)
    mode.abandon(move)
    try:
        move.rt.rejoin(move.cut)
    except Exception:  # rollback path: keep the original error
        log.exception("container=%s migration=%s: cannot bring its network back up", name, mid)
    if move.frozen:
        try:
            move.rt.thaw(move.container)
        except Exception:  # rollback path: keep the original error
            log.exception("container=%s migration=%s: thaw after failure failed", name, mid)
    if not mode.abort_target_first:
        _abort_target(move)
    if move.staging is not None:
        remove_tree_quietly(move.staging)
    if move.outgoing is not None:
        end_record(move.outgoing, mid)


def _abort_target(move: Move) -> None:
    try:
        move.target.abort_incoming(move.migration_id)
    except Exception as exc:  # the target may be gone; it cleans up on restart
        log.warning("container=%s migration=%s: abort on target failed: %s", move.spec.name, move.migration_id, exc)


def _finish(move: Move, mode: Mode, settled: bool) -> MigrateResult:
    """Past the point of no return: the container runs on the target."""
    spec, options, mid = move.spec, move.options, move.migration_id
    assert move.outgoing is not None and move.upper is not None
    answered_at = time.monotonic()
    phases = move.clock.phases
    if settled:
        if move.staging is not None:
            remove_tree_quietly(move.staging)
        move.enter("done")
        log.info("container=%s migration=%s done after settling: it runs on %s", spec.name, mid, options.dest)
        return settled_result(spec.name, options.dest, mode.name, move.clock.started, move.frozen_at, answered_at,
                              move.bytes_on_wire, phases, move.upper.changed)
    # the pause ended when the target resumed the container, a little before its answer arrived
    since_resume_ms = move.restored.stats.since_resume_ms if move.restored is not None else 0.0
    resumed_at = answered_at - since_resume_ms / 1000
    frozen_ms = (resumed_at - move.frozen_at) * 1000
    phases["handover"] = round((answered_at - move.frozen_at) * 1000, 3)  # freeze -> the source heard of the resume
    try:
        move.outgoing.past_point_of_no_return(mid)
    except OSError as exc:  # a restart would roll back a migration that happened: say so loudly
        log.error("container=%s migration=%s: cannot record the point of no return: %s", spec.name, mid, exc)
    try:
        mode.resumed(move, resumed_at)
    finally:
        if move.staging is not None:
            remove_tree_quietly(move.staging)
    _commit(move, mode)
    move.enter("done")
    total_ms = (time.monotonic() - move.clock.started) * 1000
    wire, raw, extra_phases = mode.stats(move)
    raw_bytes = (move.restored.stats.images_bytes if move.restored is not None else 0) + raw
    log.info("container=%s migration=%s done mode=%s frozen_ms=%.1f total_ms=%.1f bytes=%d", spec.name, mid, mode.name,
             frozen_ms, total_ms, move.bytes_on_wire + wire)
    return MigrateResult(
        container_name=spec.name,
        dest=options.dest,
        mode=mode.name,
        stats=MigrationStats(
            frozen_ms=round(frozen_ms, 3),
            total_ms=round(total_ms, 3),
            bytes_on_wire=move.bytes_on_wire + wire,
            raw_bytes=raw_bytes,
            phases_ms={**phases, **extra_phases},
            upper_entries_frozen=move.upper.changed,
            image_bytes=move.image_bytes,
            image_layers_sent=move.image_layers_sent,
        ),
    )


def _commit(move: Move, mode: Mode) -> None:
    spec, mid = move.spec, move.migration_id
    assert move.outgoing is not None
    move.enter("commit")
    failpoints.hit("source.commit")
    told = True
    try:
        move.target.commit_incoming(mid)
    except ContainerLost as exc:  # the target's copy missed pages after all
        end_record(move.outgoing, mid)
        lose(move.rt, move.target, move.container, mid, spec.name, move.options.dest, move.cut.veth, exc.message)
    except Exception as exc:
        told = not mode.retry_commit
        log.warning("container=%s migration=%s: commit on target failed (container runs there%s): %s", spec.name, mid,
                    "; told later" if mode.retry_commit else "", exc)
    try:
        move.rt.finish_migration(move.container, keep=move.options.keep_source)
        if not move.options.keep_source:
            from runtime.events import emit_container

            emit_container(move.rt.paths.root, "remove", spec, migration_id=mid)
    except Exception:
        log.exception("container=%s migration=%s: removing the source copy failed", spec.name, mid)
    if told:
        end_record(move.outgoing, mid)
    else:
        move.outgoing.detach(mid)  # the daemon tells the target later (recovery.settle_pending)
