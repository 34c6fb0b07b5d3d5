"""Cold migration of one container to another host: the source-side phase driver.

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
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from migrate.api import (
    IncomingRequest,
    MigrateOptions,
    MigrateResult,
    MigrationStats,
    ProgressEvent,
    ProgressFn,
    RestoreResult,
)
from migrate.checkpoint import stream_dump, dump_externals
from migrate import failpoints
from migrate.errors import ContainerLost, IncompatibleHost, MigrationError, OutcomeUnknown, TransferError, TruncatedArchive
from migrate.migration.recovery import OutgoingMigrations, apply_settlement, settle_in_call
from migrate.restore import _version_tuple
from migrate.archive.store import build_manifest, new_checkpoint_id
from migrate.archive.streams import ChunkSink
from runtime.criu import Criu, DumpRequest, PageServer, SwrkCriu, cpuinfo_dump
from runtime.errors import ContainerError, CriuError, InvalidState

log = logging.getLogger(__name__)

PAGE_SIZE = os.sysconf("SC_PAGESIZE")


class _Pusher(threading.Thread):
    """Runs the (blocking) client-streaming call that carries the archive to the target."""

    def __init__(self, fn: Any, migration_id: str, sink: ChunkSink) -> None:
        super().__init__(name="migration-push", daemon=True)
        self.fn = fn
        self.migration_id = migration_id
        self.sink = sink
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancelled: TransferError | None = None  # what the producer's writes raise after a failure

    def run(self) -> None:
        try:
            self.result = self.fn(self.migration_id, self.sink.chunks())
        except BaseException as exc:  # handed to the driver thread
            self.error = exc
            self.cancelled = TransferError(f"the target stopped receiving: {exc}")
            self.sink.cancel(self.cancelled)

    def root_cause(self, exc: BaseException) -> BaseException:
        """The target's error when ``exc`` is only the producer noticing that the push failed."""
        return self.error if self.error is not None and exc is self.cancelled else exc


PHASES = ("preflight", "image", "stage", "precopy", "freeze", "dump", "restore", "commit")


@dataclasses.dataclass(frozen=True)
class PreDumped:
    """What pre-dump rounds run before the freeze (migrate.migration.precopy) leave for the final dump."""

    parent_img: str  # the last round's images dir, relative to the final dump's (CRIU parent_img)
    page_server_port: int  # the target's page server for the final dump, chained to the last round
    bytes_on_wire: int = 0  # the rounds' pages
    phases_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. each round's time


# pre_dump(migration_id, staging dir, runtime.checkpointing.DumpTarget): the rounds (pre-copy)
PreDumpFn = Callable[[str, Path, Any], PreDumped]


def stage_upper(target: Any, migration_id: str, upper_dir: Path, image_stage: Any = None) -> tuple[Any, int]:
    """Before the freeze: send the whole upper layer to the target (``receive_upper``) while the
    container still runs, remembering what each entry looked like (migrate.migration.upper_sync), or, for a
    layer on an image, the image itself (``image_stage``: migrate.archive.upper_image.ImageStage).
    Returns (the snapshot, bytes sent)."""
    from migrate.archive import ArchiveWriter
    from migrate.archive.store import UPPER_STAGE_KIND, build_devices
    from migrate.migration.upper_sync import write_snapshot

    sink = ChunkSink()
    pusher = _Pusher(target.receive_upper, migration_id, sink)
    pusher.start()
    try:
        writer = ArchiveWriter(sink, compress="zstd", level=1)
        writer.write_manifest({"kind": UPPER_STAGE_KIND, "migration_id": migration_id, "devices": build_devices()})
        if image_stage is not None:
            image_stage.send(writer)
            snapshot = None
        else:
            snapshot = write_snapshot(writer, "upper", upper_dir)
        writer.close()
        sink.close()
    except BaseException as exc:
        sink.abort(exc if isinstance(exc, Exception) else TransferError("migration interrupted"))
        pusher.join()
        cause = pusher.root_cause(exc)
        if cause is exc:
            raise
        raise cause from exc
    pusher.join()
    if pusher.error is not None:
        raise pusher.error
    return snapshot, sink.bytes_written


def upper_for_migration(target: Any, ticket: Any, migration_id: str, upper_dir: Path, enter: Any, *,
                        upper_image: Path | None = None, tmp_dir: Path | None = None) -> tuple[UpperForDump, int]:
    """Stage the upper layer on the target when its ticket asks for it (phase "stage", via
    ``enter``); the writer the dump then uses, and the bytes sent now. ``upper_image``: the
    layer's file system image (runtime/upperfs.py), which then moves block-wise, its snapshot
    kept in ``tmp_dir`` until the dump (migrate/archive/upper_image.py)."""
    if not ticket.stage_upper:
        return UpperForDump(None, upper_dir, image=upper_image, tmp_dir=tmp_dir), 0
    image_stage = None
    if upper_image is not None:
        from migrate.archive.upper_image import ImageStage

        image_stage = ImageStage(upper_image, tmp_dir or upper_image.parent, migration_id)
    enter("stage", "sending the upper layer")
    snapshot, sent = stage_upper(target, migration_id, upper_dir, image_stage)
    return UpperForDump(snapshot, upper_dir, image=upper_image, image_stage=image_stage, tmp_dir=tmp_dir), sent


class UpperForDump:
    """Writes a frozen container's upper layer into the dump's archive: only what changed since
    ``snapshot`` (``stage_upper``) when a delta can say it, else everything. ``trailer`` is what
    the archive's trailer must carry for the target to merge (``{"upper_delta": ...}`` or ``{}``).
    The delta is computed while CRIU dumps (the writer thread), not before it."""

    def __init__(self, snapshot: Any, upper_dir: Path, *, image: Path | None = None, image_stage: Any = None,
                 tmp_dir: Path | None = None) -> None:
        self.snapshot = snapshot
        self.upper_dir = upper_dir
        self.image = image
        self.image_stage = image_stage
        self.tmp_dir = tmp_dir or upper_dir.parent
        self.trailer: dict[str, Any] = {}
        self.changed = -1  # entries (blocks, for an image) sent as changes; -1: the whole layer

    def discard(self) -> None:
        """Remove what staging left on this host (a staged image's packed copy); idempotent."""
        if self.image_stage is not None:
            self.image_stage.discard()

    def __call__(self, writer: Any) -> None:
        if self.image_stage is not None:
            self.image_stage.add_delta(writer)
            self.changed = self.image_stage.changed_blocks
            return
        if self.image is not None:
            from migrate.archive.upper_image import add_frozen

            add_frozen(writer, self.image, self.tmp_dir)
            return
        if self.snapshot is not None:
            from migrate.migration.upper_sync import compute_delta, write_delta

            delta = compute_delta(self.snapshot, self.upper_dir)
            if delta is not None:
                write_delta(writer, "upper", self.upper_dir, delta)
                self.trailer = {"upper_delta": delta.as_dict()}
                self.changed = len(delta.changed) + len(delta.deleted)
                return
            log.info("upper layer of %s: changes a delta cannot express (hardlinks): sending all of it", self.upper_dir)
        writer.add_tree("upper", self.upper_dir)


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
        from migrate.migration.recovery import mark_paused

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
    raise _fail(exc, name, dest, phase) from exc


def _end_record(outgoing: OutgoingMigrations, migration_id: str) -> None:
    try:
        outgoing.end(migration_id)
    except OSError as exc:  # the next restart finds it and repeats what was done (idempotent)
        log.warning("migration=%s: cannot remove the outgoing record: %s", migration_id, exc)


PAGE_SERVER_TIMEOUT_S = 15


def connect_page_server(address: str, port: int) -> socket.socket:
    """Connect to the target's page server ourselves and hand CRIU the socket (``ps.fd``).

    CRIU's own connection has no timeout: if the link dies mid-dump its writes block for the
    kernel's retransmission time (~15 minutes) while the container stays frozen. Ours gives up
    after PAGE_SERVER_TIMEOUT_S of unacknowledged data (TCP_USER_TIMEOUT) or silence (keepalive).
    """
    try:
        sock = socket.create_connection((address, port), timeout=10)
    except OSError as exc:
        raise TransferError(f"cannot reach the target's page server {address}:{port}: {exc}", phase="preflight") from exc
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, PAGE_SERVER_TIMEOUT_S * 1000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    return sock


def _fail(exc: BaseException, name: str, dest: str, phase: str) -> BaseException:
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not ours to rename
        return exc
    if isinstance(exc, MigrationError):
        if exc.phase not in PHASES:  # e.g. the target's own step names: report the driver's phase
            exc.phase = phase
        return exc
    if isinstance(exc, ContainerError):
        err = MigrationError(f"migration of {name} to {dest} failed: {exc.message}", phase=phase, hint=exc.hint)
    else:
        err = MigrationError(f"migration of {name} to {dest} failed: {exc}", phase=phase)
    return err


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
    _end_record(outgoing, migration_id)


def _result(name: str, dest: str, mode: str, started: float, frozen_at: float, answered_at: float, bytes_on_wire: int,
            phases: dict[str, float], upper_changed: int) -> MigrateResult:
    """The result of a migration whose answer was lost but settled (the target runs it): the pause
    is only known up to the settlement."""
    return MigrateResult(
        container_name=name,
        dest=dest,
        mode=mode,
        stats=MigrationStats(
            frozen_ms=round((answered_at - frozen_at) * 1000, 3),
            total_ms=round((time.monotonic() - started) * 1000, 3),
            bytes_on_wire=bytes_on_wire,
            raw_bytes=0,
            phases_ms=dict(phases),
            upper_entries_frozen=upper_changed,
        ),
    )


def migrate_container(
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
    started = time.monotonic()
    phases: dict[str, float] = {}
    phase = "preflight"
    phase_started = started
    bytes_on_wire = 0
    image_bytes = 0  # the base image, when the target lacked it (raw tar, uncompressed on the wire)

    def enter(next_phase: str, message: str = "") -> None:
        nonlocal phase, phase_started
        now = time.monotonic()
        phases[phase] = round(phases.get(phase, 0.0) + (now - phase_started) * 1000, 3)
        phase, phase_started = next_phase, now
        emit(message)

    def emit(message: str = "", done: int = 0) -> None:
        if progress:
            progress(ProgressEvent("migrate", phase, bytes_done=done, elapsed_s=time.monotonic() - started, message=message))

    container = rt.get(name)
    if container.status != "running":
        raise InvalidState(container.spec.name, "migrate", container.status, "running")
    if options.mode != "cold" and pre_dump is None:  # live modes (issue 7): postcopy, precopy's refusal, auto's choice
        from migrate.migration.postcopy import dispatch

        live = dispatch(rt, name, options, target, criu=criu, progress=progress)
        if live is not None:
            return live
    dt = rt.dump_target(container)
    spec = dt.spec
    emit("checking the target")
    info = target.host_info()
    here = criu.version()
    if not info.criu_version:
        raise IncompatibleHost(f"the target {options.dest} has no usable CRIU", phase=phase)
    if _version_tuple(info.criu_version) < _version_tuple(here):
        raise IncompatibleHost(
            f"the target {options.dest} has criu {info.criu_version}, older than this host's {here}", phase=phase
        )
    ticket = target.prepare_incoming(
        IncomingRequest(
            container_name=spec.name,
            spec=spec.to_dict(),
            image_digest=spec.image_digest,
            criu_version=here,
            cpu_digest=rt.cpu_digest(),
            ip=spec.ip,
            mode="cold" if pre_dump is None else "precopy",
            page_server_address=page_server_address,
        )
    )
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
            image_sink = ChunkSink()
            pusher = _Pusher(target.receive_image, migration_id, image_sink)
            pusher.start()
            try:
                rt.images.export_stream(spec.image_digest, image_sink)
                image_sink.close()
            except BaseException as exc:
                image_sink.abort(exc)
                pusher.join()
                cause = pusher.root_cause(exc)
                if cause is exc:
                    raise
                raise cause from exc
            finally:
                pusher.join()
            if pusher.error is not None:
                raise pusher.error
            bytes_on_wire += image_sink.bytes_written
            image_bytes = image_sink.bytes_written
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
            pusher = _Pusher(target.receive_checkpoint, migration_id, sink)
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
        failed_phase = phase
        if upper is not None:
            upper.discard()  # a staged image's packed copy in ROOT/tmp
        if not final_sent:
            _roll_back(rt, target, outgoing, container, migration_id, cut, frozen)
            raise _fail(exc, spec.name, options.dest, failed_phase) from exc
        settle_unsure(rt, outgoing, target, migration_id, container, options.dest, exc, failed_phase, cut)
        settled = True  # else it raised

    # ---- point of no return: the container runs on the target ----
    answered_at = time.monotonic()
    if settled:
        enter("done")
        log.info("container=%s migration=%s done after settling: it runs on %s", spec.name, migration_id, options.dest)
        return _result(spec.name, options.dest, "cold" if pre is None else "precopy", started, frozen_at, answered_at,
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
        _end_record(outgoing, migration_id)
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
