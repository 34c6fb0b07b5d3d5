"""Cold migration of one container to another host: the source side's phases.

Phases (each timed, reported through ``progress``):

    preflight   target's capabilities; target reserves the name and address (prepare_incoming)
    image       the base image, by digest, if the target lacks it
    freeze      cgroup.freeze on the source
    dump        CRIU dumps the frozen tree with leave_running (the tree stays *frozen*: CRIU keeps a
                cgroup frozen that was frozen before it started), while the archive (upper layer,
                images, manifest) streams to the target as it is written — nothing is parked on
                the source disk first
    restore     the target verifies every checksum and restores; it answers once the container runs
    ---- point of no return: the container runs on the target ----
    commit      the target drops its reservation; the source kills and removes its frozen copy

Exactly one copy (docs/migration.md): from right before the freeze the outgoing record says
"unknown". A failure before the last byte of the dump's archive left (``final_sent``) cannot have
let the target restore: the source thaws at once (before the point of no return the source wins).
A failure after it (the answer lost, the link cut, the target killed mid-restore) settles instead:
the source asks the target by migration id (``settle_unsure``) and only then removes its copy
(the target runs it: past the point of no return the target wins) or thaws; if the target cannot
be asked within SETTLE_WAIT_S the copy stays frozen and ``OutcomeUnknown`` says so.

A record in ROOT/run/outgoing (migrate/migration/recovery.py) says what a daemon restart must do if this
process dies on the way: roll back (thaw here, abort there) before the point of no return,
finish (commit there, remove here) after it.

Before the point of no return any failure thaws the source (it keeps running, exactly one copy)
and asks the target to abort, which removes every partial piece there. After it, cleanup errors
are logged, not raised: the migration has happened.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from typing import Any

from migrate.api import (
    MigrateOptions,
    MigrateResult,
    MigrationStats,
    ProgressFn,
    RestoreResult,
)
from migrate.checkpoint import stream_dump, dump_externals
from migrate import failpoints
from migrate.errors import TransferError, TruncatedArchive
from migrate.archive.store import build_manifest, new_checkpoint_id
from migrate.archive.streams import ChunkSink
from runtime.criu import Criu, DumpRequest, PageServer, SwrkCriu, cpuinfo_dump
from runtime.errors import CriuError, InvalidState

from migrate.migration.phases import (
    PAGE_SIZE,
    ArchivePusher,
    PhaseClock,
    PreDumped,
    PreDumpFn,
    UpperForDump,
    check_target,
    connect_page_server,
    incoming_request,
    phase_error,
    push_image,
    settled_result,
    upper_for_migration,
)
from migrate.migration.recovery import OutgoingMigrations, end_record, settle_unsure

log = logging.getLogger(__name__)


def _roll_back(rt: Any, target: Any, outgoing: OutgoingMigrations, container: Any, migration_id: str, cut: Any,
               frozen: bool) -> None:
    """Before the final dump went out: the copy here wins (network back, thawed), the target aborts."""
    name = container.spec.name
    try:
        rt.rejoin(cut)
    except Exception:  # rollback path: keep the original error
        log.exception("container=%s migration=%s: cannot bring its network back up", name, migration_id)
    if frozen:
        try:
            rt.thaw(container)
        except Exception:  # rollback path: keep the original error
            log.exception("container=%s migration=%s: thaw after failure failed", name, migration_id)
    try:
        target.abort_incoming(migration_id)
    except Exception as abort_exc:  # the target may be gone; it cleans up on restart
        log.warning("container=%s migration=%s: abort on target failed: %s", name, migration_id, abort_exc)
    end_record(outgoing, migration_id)


def migrate_cold(
    rt: Any,
    name: str,
    options: MigrateOptions,
    target: Any,
    *,
    criu: Criu | None = None,
    progress: ProgressFn | None = None,
    page_server_address: str | None = None,
    pre_dump: PreDumpFn | None = None,
) -> MigrateResult:
    """Move container ``name`` of runtime ``rt`` to ``target`` (a MigrationTarget + host_info).

    ``page_server_address``: the target's address for a disk-less dump. When the target answers
    with a page server port, CRIU sends the memory pages straight to it (its own TCP connection,
    C all the way) and only the small images and the upper layer stream through gRPC; otherwise
    everything streams.

    ``pre_dump`` (pre-copy, migrate.migration.precopy): runs the pre-dump rounds while the container still
    runs, right before the freeze; the final dump then names the last round as its parent
    (``track_mem``) and sends its pages to the page server the rounds left ready."""
    from migrate.archive import ArchiveWriter

    criu = criu or SwrkCriu()
    clock = PhaseClock(progress)
    started, phases, enter, emit = clock.started, clock.phases, clock.enter, clock.emit
    bytes_on_wire = 0
    image_bytes = 0  # the base image, when the target lacked it (raw tar, uncompressed on the wire)

    container = rt.get(name)
    if container.status != "running":
        raise InvalidState(container.spec.name, "migrate", container.status, "running")
    dt = rt.dump_target(container)
    spec = dt.spec
    emit("checking the target")
    _info, here = check_target(criu, target, options.dest)
    mode = "cold" if pre_dump is None else "precopy"
    ticket = target.prepare_incoming(incoming_request(rt, spec, here, mode, page_server_address))
    migration_id = ticket.migration_id
    log.info("container=%s migration=%s phase=preflight dest=%s need_image=%s", spec.name, migration_id, options.dest, ticket.need_image)
    final_sent = False  # the archive's last byte may have left: the target may restore (module doc)
    settled = False  # the answer was lost, and settling found the container running on the target
    frozen = False
    ps_sock: socket.socket | None = None  # the disk-less dump's connection to the target's page server
    cut: Any = None  # the source's network, cut for the dump (CheckpointHost.isolate)
    frozen_at = 0.0
    restored: RestoreResult | None = None
    pre: PreDumped | None = None
    upper: UpperForDump | None = None
    outgoing = OutgoingMigrations(rt.paths)  # what a restart does if this daemon dies mid-way
    try:
        outgoing.begin(migration_id, container_id=spec.container_id, name=spec.name, dest=options.dest, keep_source=options.keep_source)
        failpoints.hit("source.prepared")
        if ticket.need_image:
            enter("image", f"sending image {spec.image}")
            image_bytes = push_image(rt, target, migration_id, spec.image_digest)
            bytes_on_wire += image_bytes
        upper, sent = upper_for_migration(target, ticket, migration_id, dt.upper_dir, enter,
                                          upper_image=dt.upper_image, tmp_dir=rt.paths.tmp)
        bytes_on_wire += sent
        staging = rt.paths.tmp / f"migrate-{migration_id}"
        staging.mkdir(parents=True, mode=0o700)
        try:
            images_dir = staging / "images"
            images_dir.mkdir()
            ps_port = ticket.page_server_port
            if pre_dump is not None:
                enter("precopy", "pre-dumping while the container runs")
                pre = pre_dump(migration_id, staging, dt)
                bytes_on_wire += pre.bytes_on_wire
                ps_port = pre.page_server_port
            if page_server_address and ps_port:
                ps_sock = connect_page_server(page_server_address, ps_port)
            cpuinfo_dump(images_dir)
            criu.warm()
            import migrate.archive  # noqa: F401  (loaded before the freeze)
            manifest = build_manifest(spec, new_checkpoint_id(), criu_version=here, options={"tcp_established": options.tcp_established, "file_locks": options.file_locks, "migration_id": migration_id})
            request = DumpRequest(
                pid=dt.init_pid,
                images_dir=images_dir,
                leave_running=True,  # stays frozen (see module doc): the rollback path thaws it
                tcp_established=options.tcp_established,
                tcp_skip_in_flight=options.tcp_established,
                file_locks=options.file_locks,
                external=dump_externals(dt),
                freeze_cgroup=dt.freeze_cgroup,
                network_lock=rt.network_lock(),
                page_server=PageServer(page_server_address, ps_port, fd=ps_sock.fileno()) if ps_sock else None,
                parent_img=pre.parent_img if pre is not None else None,
                track_mem=pre is not None,
            )
            sink = ChunkSink()
            pusher = ArchivePusher(target.receive_checkpoint, migration_id, sink)
            outgoing.outcome_unknown(migration_id)  # a crash from here on asks the target first

            enter("freeze")
            rt.freeze(container)
            frozen = True
            frozen_at = time.monotonic()
            # Our own network lock (the link down) instead of CRIU's nftables one; it also keeps
            # the frozen source deaf and mute once CRIU, with leave_running, takes the sockets out
            # of repair after the dump (--tcp-established): its kernel would ACK (or, when it is
            # killed, FIN) the peers' packets meant for the copy on the target.
            cut = rt.isolate(spec)
            request = dataclasses.replace(request, network_lock=cut.criu_lock)
            enter("dump", "dumping and streaming")
            pusher.start()
            try:
                writer = ArchiveWriter(sink, compress="zstd", level=1)
                writer.write_manifest(manifest)
                dump_stats, _dump_ms = stream_dump(criu, request, writer, dt.upper_dir, on_bytes=lambda n: emit(done=n),
                                                   add_upper=upper)
                if ps_sock is not None:
                    # CRIU (gone now) sent everything; our copy of the socket is the last one
                    # open, and the target's page server finishes only at its EOF.
                    ps_sock.close()
                    ps_sock = None
                failpoints.hit("source.dump")
                final_sent = True
                writer.close(trailer={"dump_stats": dump_stats.__dict__, **upper.trailer})
                sink.close()
                if request.page_server is not None:  # the pages went over CRIU's own connection
                    bytes_on_wire += dump_stats.pages_written * PAGE_SIZE
            except BaseException as exc:
                if ps_sock is not None and isinstance(exc, CriuError):
                    # End the stream instead of cancelling it: the target then reads a truncated
                    # archive, fails its receive with its page server's reason, and answers.
                    sink.close()
                else:
                    sink.abort(exc if isinstance(exc, Exception) else TransferError("migration interrupted"))
                if ps_sock is not None:
                    # The target's page server ends only at EOF on this socket, and the target
                    # answers only after it: held open, the rollback waited seconds for nothing.
                    ps_sock.close()
                    ps_sock = None
                    page_server_used = True
                else:
                    page_server_used = False
                pusher.join(timeout=30)
                cause = pusher.root_cause(exc)
                if (page_server_used and isinstance(exc, CriuError) and pusher.error is not None
                        and not isinstance(pusher.error, TruncatedArchive)):
                    # CRIU here only saw its page-server socket break; the target knows why
                    # (its page server's own error, e.g. no space left), and says so. A target
                    # that only saw the stream end knows nothing more: CRIU's own error stands.
                    cause = pusher.error
                if cause is exc:
                    raise
                raise cause from exc
            enter("restore", "target restoring")
            pusher.join()
            if pusher.error is not None:
                raise pusher.error
            restored = pusher.result
            bytes_on_wire += sink.bytes_written
        finally:
            import shutil

            if ps_sock is not None:
                ps_sock.close()
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException as exc:
        failed_phase = clock.phase
        if upper is not None:
            upper.discard()  # a staged image's packed copy in ROOT/tmp
        if not final_sent:
            _roll_back(rt, target, outgoing, container, migration_id, cut, frozen)
            raise phase_error(exc, spec.name, options.dest, failed_phase) from exc
        settle_unsure(rt, outgoing, target, migration_id, container, options.dest, exc, failed_phase, cut)
        settled = True  # else it raised

    # ---- point of no return: the container runs on the target ----
    answered_at = time.monotonic()
    if settled:
        enter("done")
        log.info("container=%s migration=%s done after settling: it runs on %s", spec.name, migration_id, options.dest)
        return settled_result(spec.name, options.dest, "cold" if pre is None else "precopy", started, frozen_at, answered_at,
                       bytes_on_wire, phases, upper.changed)
    # the pause ended when the target resumed the container, a little before its answer arrived
    since_resume_ms = restored.stats.since_resume_ms if restored is not None else 0.0
    frozen_ms = (answered_at - frozen_at) * 1000 - since_resume_ms
    phases["handover"] = round((answered_at - frozen_at) * 1000, 3)  # freeze -> the source heard of the resume
    try:
        outgoing.past_point_of_no_return(migration_id)
    except OSError as exc:  # a restart would roll back a migration that happened: say so loudly
        log.error("container=%s migration=%s: cannot record the point of no return: %s", spec.name, migration_id, exc)
    enter("commit")
    failpoints.hit("source.commit")
    told = True
    try:
        target.commit_incoming(migration_id)
    except Exception as exc:
        told = False
        log.warning("container=%s migration=%s: commit on target failed (container runs there; told later): %s",
                    spec.name, migration_id, exc)
    try:
        rt.finish_migration(container, keep=options.keep_source)
    except Exception:
        log.exception("container=%s migration=%s: removing the source copy failed", spec.name, migration_id)
    if told:
        end_record(outgoing, migration_id)
    else:
        outgoing.detach(migration_id)  # the daemon tells the target later (outgoing.settle_pending)
    enter("done")
    total_ms = (time.monotonic() - started) * 1000
    raw_bytes = (restored.stats.images_bytes if restored is not None else 0) + image_bytes
    log.info("container=%s migration=%s done frozen_ms=%.1f total_ms=%.1f bytes=%d", spec.name, migration_id, frozen_ms, total_ms, bytes_on_wire)
    return MigrateResult(
        container_name=spec.name,
        dest=options.dest,
        mode="cold" if pre is None else "precopy",
        stats=MigrationStats(
            frozen_ms=round(frozen_ms, 3),
            total_ms=round(total_ms, 3),
            bytes_on_wire=bytes_on_wire,
            raw_bytes=raw_bytes,
            phases_ms={**phases, **(pre.phases_ms if pre is not None else {})},
            upper_entries_frozen=upper.changed,
        ),
    )

