"""What every source-side migration mode shares: the pusher thread that streams the archive, the
upper layer's staging, the page-server connections, the phase names and how an error is named;
and what the modes' target halves share (``unpack_beside_shell``).

The modes (migrate/migration/cold.py, postcopy.py, precopy.py) import from here; nothing here
imports a mode, so adding one never makes a circle.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, cast

from migrate.api import IncomingRequest, MigrateResult, MigrationMode, MigrationStats, ProgressEvent, ProgressFn
from migrate.errors import ContainerLost, IncompatibleHost, MigrationError, TransferError
from migrate.restore import version_tuple
from migrate.migration.page_relay import keep_alive
from migrate.peer_timeout import peer_timeout_s
from migrate.archive.streams import ChunkSink
from runtime.errors import ContainerError
from runtime.network import set_link_up

log = logging.getLogger(__name__)


PAGE_SIZE = os.sysconf("SC_PAGESIZE")


class ArchivePusher(threading.Thread):
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


def stage_upper(target: Any, migration_id: str, upper_dir: Path, image_stage: Any = None, volumes: Any = None) -> tuple[Any, int]:
    """Before the freeze: send the whole upper layer to the target (``receive_upper``) while the
    container still runs, remembering what each entry looked like (migrate.migration.upper_sync), or, for a
    layer on an image, the image itself (``image_stage``: migrate.archive.upper_image.ImageStage).
    Returns (the snapshot, bytes sent)."""
    from migrate.archive import ArchiveWriter
    from migrate.archive.store import UPPER_STAGE_KIND, build_devices
    from migrate.migration.upper_sync import write_snapshot

    sink = ChunkSink()
    pusher = ArchivePusher(target.receive_upper, migration_id, sink)
    pusher.start()
    try:
        writer = ArchiveWriter(sink, compress="zstd", level=1)
        writer.write_manifest({"kind": UPPER_STAGE_KIND, "migration_id": migration_id, "devices": build_devices()})
        if image_stage is not None:
            image_stage.send(writer)
            snapshot = None
        else:
            snapshot = write_snapshot(writer, "upper", upper_dir)
        if volumes is not None:  # named volumes ride along (migrate/volumes.py VolumeSync)
            volumes.stage(writer)
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
                        upper_image: Path | None = None, tmp_dir: Path | None = None,
                        volumes: Any = None) -> tuple[UpperForDump, int]:
    """Stage the upper layer on the target when its ticket asks for it (phase "stage", via
    ``enter``); the writer the dump then uses, and the bytes sent now. ``upper_image``: the
    layer's file system image (runtime/upperfs.py), which then moves block-wise, its snapshot
    kept in ``tmp_dir`` until the dump (migrate/archive/upper_image.py)."""
    if not ticket.stage_upper:
        return UpperForDump(None, upper_dir, image=upper_image, tmp_dir=tmp_dir, volumes=volumes), 0
    image_stage = None
    if upper_image is not None:
        from migrate.archive.upper_image import ImageStage

        image_stage = ImageStage(upper_image, tmp_dir or upper_image.parent, migration_id)
    enter("stage", "sending the upper layer")
    snapshot, sent = stage_upper(target, migration_id, upper_dir, image_stage, volumes)
    return UpperForDump(snapshot, upper_dir, image=upper_image, image_stage=image_stage, tmp_dir=tmp_dir, volumes=volumes), sent


class UpperForDump:
    """Writes a frozen container's upper layer into the dump's archive: only what changed since
    ``snapshot`` (``stage_upper``) when a delta can say it, else everything. ``trailer`` is what
    the archive's trailer must carry for the target to merge (``{"upper_delta": ...}`` or ``{}``).
    The delta is computed while CRIU dumps (the writer thread), not before it."""

    def __init__(self, snapshot: Any, upper_dir: Path, *, image: Path | None = None, image_stage: Any = None,
                 tmp_dir: Path | None = None, volumes: Any = None) -> None:
        self.snapshot = snapshot
        self.volumes = volumes  # migrate.volumes.VolumeSync: the named volumes' changes follow the layer
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
        self._add_upper(writer)
        if self.volumes is not None:
            self.trailer.update(self.volumes.add_final(writer))

    def _add_upper(self, writer: Any) -> None:
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


PAGE_SERVER_TIMEOUT_S = peer_timeout_s()  # 15 s unless PYMIGRATE_PEER_TIMEOUT_S says otherwise


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
    keep_alive(sock, PAGE_SERVER_TIMEOUT_S)
    return sock


def phase_error(exc: BaseException, name: str, dest: str, phase: str) -> BaseException:
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


def settled_result(name: str, dest: str, mode: str, started: float, frozen_at: float, answered_at: float, bytes_on_wire: int,
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




def poke_page_server(port: int, address: str = "127.0.0.1") -> None:
    """Connect to a lazy dump's page server and close at once: CRIU takes EOF as the end of the
    transfer, so a dump whose target never connected returns (the source keeps running)."""
    try:
        socket.create_connection((address, port), timeout=2.0).close()
    except OSError as exc:
        log.debug("page server on port %d not reachable (%s): the dump has ended already", port, exc)


def unpack_beside_shell(host: Any, source: Any, shell: Any, *, progress: ProgressFn | None = None,
                        staged_upper: Path | None = None, then: Callable[[Any], None] | None = None) -> Any:
    """A target's receive: unpack the archive (migrate.restore.unpack_archive) while ``shell`` (a
    runtime.checkpointing.RestoreShell built ahead from the reservation's spec, or None) waits,
    then ``then(unpacked)`` (a cold target collects its page server's pages). A failure, a refused
    archive above all, tears the shell down at once (its cgroup, netns, link and waiting CRIU) and
    removes the scratch dir before it propagates; the Unpacked otherwise."""
    from migrate.restore import unpack_archive
    from runtime.fstree import remove_tree_quietly

    unpacked = None
    try:
        unpacked = unpack_archive(host, source, progress=progress, staged_upper=staged_upper)
        if then is not None:
            then(unpacked)
    except BaseException:
        if shell is not None:
            shell.abort()
        if unpacked is not None and unpacked.scratch is not None:
            remove_tree_quietly(unpacked.scratch)
        raise
    return unpacked


class PhaseClock:
    """Times the phases of one migration (``phases``: ms per phase) and reports progress."""

    def __init__(self, progress: ProgressFn | None, first: str = "preflight") -> None:
        self.started = time.monotonic()
        self.phase = first
        self.phases: dict[str, float] = {}
        self._since = self.started
        self._progress = progress

    def enter(self, next_phase: str, message: str = "") -> None:
        now = time.monotonic()
        self.phases[self.phase] = round(self.phases.get(self.phase, 0.0) + (now - self._since) * 1000, 3)
        self.phase, self._since = next_phase, now
        self.emit(message)

    def emit(self, message: str = "", done: int = 0) -> None:
        if self._progress:
            self._progress(ProgressEvent("migrate", self.phase, bytes_done=done, elapsed_s=time.monotonic() - self.started,
                                         message=message))


def check_target(criu: Any, target: Any, dest: str) -> tuple[Any, str]:
    """(the target's HostInfo, this host's CRIU version) once the target can restore what this
    host's CRIU dumps."""
    info = target.host_info()
    here = criu.version()
    if not info.criu_version:
        raise IncompatibleHost(f"the target {dest} has no usable CRIU", phase="preflight")
    if version_tuple(info.criu_version) < version_tuple(here):
        raise IncompatibleHost(f"the target {dest} has criu {info.criu_version}, older than this host's {here}", phase="preflight")
    return info, here


def incoming_request(rt: Any, spec: Any, criu_version: str, mode: MigrationMode,
                     page_server_address: str | None = None) -> IncomingRequest:
    """What the target is asked to prepare for (PrepareIncoming)."""
    layers = rt.images.get(spec.image_digest).layers if rt.images.has_digest(spec.image_digest) else ()
    return IncomingRequest(
        container_name=spec.name,
        spec=spec.to_dict(),
        image_digest=spec.image_digest,
        criu_version=criu_version,
        cpu_digest=rt.cpu_digest(),
        ip=spec.ip,
        mode=mode,
        page_server_address=page_server_address,
        image_layers=tuple(layers),
    )


def push_image(rt: Any, target: Any, migration_id: str, image_digest: str, ticket: Any) -> tuple[int, int]:
    """Send the base image to a target that lacks it: a layered image as an OCI archive holding
    only the layer blobs the target said it lacks (``ticket.missing_layers``), a flat one as a raw
    tar. The bytes and the layer blobs sent. A failure names the target's error when the stream
    broke because the target stopped receiving."""
    image = rt.images.get(image_digest)
    layered = bool(image.layers) and ticket.layered_image  # an older target takes only a raw tar
    sink = ChunkSink()
    pusher = ArchivePusher(target.receive_image, migration_id, sink)
    pusher.start()
    layers_sent = 0
    try:
        if layered:
            from runtime.image_layout import write_archive

            skip = frozenset(image.layers) - frozenset(ticket.missing_layers)
            layers_sent = write_archive(rt.images, image_digest, cast(BinaryIO, sink), skip_layers=skip)
        else:
            rt.images.export_stream(image_digest, sink)
        sink.close()
    except BaseException as exc:
        sink.abort(exc)
        pusher.join()
        cause = pusher.root_cause(exc)
        if cause is exc:
            raise
        raise cause from exc
    finally:
        pusher.join()
    if pusher.error is not None:
        raise pusher.error
    return sink.bytes_written, layers_sent


def lose(rt: Any, target: Any, container: Any, migration_id: str, name: str, dest: str, veth: str | None, why: str) -> None:
    """After the point of no return: remove the target's incomplete copy and raise ContainerLost."""
    log.error("container=%s migration=%s: lost after resuming on %s: %s", name, migration_id, dest, why)
    try:
        target.abort_incoming(migration_id)
        target_state = "its copy there (missing memory) was removed"
        removed = True
    except Exception as exc:  # the target may be gone entirely
        target_state = f"its copy there could not be removed ({exc})"
        removed = False
    if removed and veth is not None:
        try:
            set_link_up(veth, up=True)  # only one copy is left: the frozen one here may rejoin the network
        except OSError as exc:
            log.warning("container=%s: cannot set %s up again: %s", name, veth, exc)
    try:  # it is frozen: say so, so that 'unpause' can resume it
        rt.store.update_state(container.container_id, lambda s: dataclasses.replace(s, status="paused"))
    except Exception as exc:  # reporting the loss matters more
        log.warning("container=%s: cannot record the frozen source copy as paused: %s", name, exc)
    raise ContainerLost(
        f"container {name} is lost: {why} after it had resumed on {dest}; {target_state}",
        phase="lazy",
        source_copy="frozen",
        hint=(f"this host keeps the frozen copy from the moment of the freeze: 'pymigrate unpause {name}' resumes it "
              f"(what ran on {dest} since then is gone), 'pymigrate rm -f {name}' drops it"),
    )
