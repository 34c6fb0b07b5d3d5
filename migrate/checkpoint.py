"""Checkpoint a running container: freeze, CRIU dump, upper layer beside it.

Order of events (each step timed; ``frozen_ms`` is the downtime):

1. freeze the container's cgroup (``cgroup.freeze``, confirmed through ``cgroup.events``);
   from here the process tree and its upper layer are still;
2. CRIU dumps the frozen tree (``freeze_cgroup`` tells it the cgroup is already frozen, so it
   seizes without thawing). The network namespace is declared external (the runtime made it and
   re-creates it on restore); volumes are declared external mounts;
3. the upper layer and the CRIU images go into the archive *while CRIU is still dumping*: the
   upper layer first, then each ``pages-*.img`` followed as it grows, then the small images;
4. after the dump: ``leave_running`` thaws the container; otherwise CRIU killed the tree and the
   container is recorded as exited (its shim records the exit).

Nothing lost: any failure before the dump completed thaws the container so it keeps running, and
removes every partial file (staging dir, export temp file). Every path that froze the cgroup
thaws it on the way out unless CRIU has already killed the tree on purpose.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from migrate.api import CheckpointOptions, CheckpointResult, CheckpointStats, ProgressEvent, ProgressFn
from migrate.archive.signing import ArchiveSigner, HashingSink
from migrate.archive.store import IMAGES_DIR, UPPER_ARCHIVE, UPPER_IMAGE, CheckpointStore, build_manifest, new_checkpoint_id
from runtime.criu import DUMP_LOG, Criu, DumpRequest, DumpStats, SwrkCriu, cpuinfo_dump
from runtime.checkpointing import DumpTarget, keep_failed_log
from runtime.errors import ContainerError, InvalidArgument, InvalidState

log = logging.getLogger(__name__)

NETNS_KEY = "extnet"  # CRIU's name for the container's (external) network namespace


def volume_key(index: int) -> str:
    return f"vol{index}"


def keep_criu_log(paths: Any, exc: BaseException, log_path: Path, kind: str) -> None:
    """Before a scratch dir holding a CRIU log is removed: copy the log to ROOT/logs and point the
    error's message (and ``log_path``) at the copy, so the path the user is shown still exists.

    Errors from the shim arrive as text only (a ContainerError quoting the CriuError), hence the
    message rewrite rather than a new CriuError.
    """
    if not isinstance(exc, ContainerError) or str(log_path) not in exc.message:
        return
    try:
        kept = keep_failed_log(paths, log_path, kind)
    except OSError as copy_exc:  # rollback path: keep the original error
        log.warning("cannot keep criu %s log %s: %s", kind, log_path, copy_exc)
        return
    if kept is None:
        return
    exc.message = exc.message.replace(str(log_path), str(kept))
    exc.args = (exc.message,)
    if getattr(exc, "log_path", None) is not None:
        exc.log_path = kept  # type: ignore[attr-defined]


def dump_externals(target: DumpTarget) -> tuple[str, ...]:
    """CRIU ``external`` entries: the network namespace and every volume bind mount."""
    external = []
    if target.netns_path is not None:
        external.append(f"net[{os.stat(target.netns_path).st_ino}]:{NETNS_KEY}")
    for i, vol in enumerate(target.spec.volumes):
        external.append(f"mnt[{vol.target}]:{volume_key(i)}")
    return tuple(external)


class _DumpThread(threading.Thread):
    """Runs the (blocking) CRIU dump so the archive writer can stream beside it."""

    def __init__(self, criu: Criu, request: DumpRequest, on_notify: Callable[[str, int], bool] | None = None) -> None:
        super().__init__(name="criu-dump", daemon=True)
        self.criu = criu
        self.request = request
        self.on_notify = on_notify
        self.stats: DumpStats | None = None
        self.error: BaseException | None = None
        self.finished_at = 0.0

    def run(self) -> None:
        try:
            self.stats = self.criu.dump(self.request, on_notify=self.on_notify) if self.on_notify else self.criu.dump(self.request)
        except BaseException as exc:  # handed to the caller thread
            self.error = exc
        finally:
            self.finished_at = time.monotonic()


def _pages_index(path: Path) -> int:
    try:
        return int(path.name[len("pages-") : -len(".img")])
    except ValueError:
        return 0


def stream_dump(
    criu: Criu,
    request: DumpRequest,
    writer: Any,
    upper_dir: Path,
    *,
    on_bytes: Callable[[int], None] | None = None,
    on_notify: Callable[[str, int], bool] | None = None,
    add_upper: Callable[[Any], object] | None = None,
) -> tuple[DumpStats, float]:
    """Dump with CRIU into ``request.images_dir`` while writing the upper layer and the images into
    ``writer`` (a migrate.archive.ArchiveWriter). Returns (CRIU stats, dump wall time in ms).
    ``add_upper(writer)`` writes the upper layer instead of the whole ``upper_dir`` (a live
    migration sends only what changed since it staged the layer).

    The pages files are followed as CRIU appends to them: a file is complete once the dump has
    ended or a later pages file has appeared (CRIU dumps one task's memory at a time).
    """
    images_dir = request.images_dir
    thread = _DumpThread(criu, request, on_notify)
    started = time.monotonic()
    thread.start()
    try:
        if add_upper is not None:
            add_upper(writer)
        else:
            writer.add_tree("upper", upper_dir)
        added: set[str] = set()
        while True:
            alive = thread.is_alive()
            pages = sorted(images_dir.glob("pages-*.img"), key=_pages_index)
            fresh = [p for p in pages if p.name not in added]
            for p in fresh:
                idx = _pages_index(p)

                def growing(idx: int = idx) -> bool:
                    if not thread.is_alive():
                        return False
                    return not any(_pages_index(q) > idx for q in images_dir.glob("pages-*.img"))

                writer.add_file(f"{IMAGES_DIR}/{p.name}", p, growing=growing)
                added.add(p.name)
                if on_bytes:
                    on_bytes(p.stat().st_size)
            if not alive and not fresh:
                break
            if not fresh:
                time.sleep(0.002)
    finally:
        thread.join()
    if thread.error is not None:
        raise thread.error
    dump_ms = (thread.finished_at - started) * 1000
    for p in sorted(images_dir.iterdir()):
        if p.is_file() and p.name not in added:
            writer.add_file(f"{IMAGES_DIR}/{p.name}", p)
    assert thread.stats is not None
    return thread.stats, dump_ms


def _fsync_file(path: Path) -> None:
    """fsync ``path`` if it exists (the upper-layer image copy of a local checkpoint)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _image_writer(image: Path | None, tmp_dir: Path) -> Callable[[Any], object] | None:
    """For ``stream_dump``'s ``add_upper``: a layer on an image goes as its blocks (members
    upper.img.map/.data, migrate/archive/upper_image.py), not as its tree."""
    if image is None:
        return None
    from migrate.archive.upper_image import add_frozen

    return lambda writer: add_frozen(writer, image, tmp_dir)


def _fsync_files(directory: Path) -> None:
    """fsync every file of ``directory`` and the directory itself (CRIU does not sync its images)."""
    for p in directory.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _images_bytes(images_dir: Path) -> int:
    return sum(p.stat().st_size for p in images_dir.iterdir() if p.is_file())


def checkpoint_container(
    rt: Any,
    name: str,
    options: CheckpointOptions,
    *,
    criu: Criu | None = None,
    progress: ProgressFn | None = None,
) -> CheckpointResult:
    """Checkpoint container ``name`` of runtime ``rt`` (a runtime.checkpointing.CheckpointHost).

    With ``options.export_path`` the checkpoint becomes one archive file (written under a temp
    name, renamed when complete); otherwise a local checkpoint under ROOT/checkpoints/<id>.

    The dump always runs with CRIU's ``leave_running``: the tree, frozen before CRIU started,
    stays frozen while everything is written. With ``--leave-running`` it thaws then, and the
    fsync and commit follow; by default it stays frozen until the checkpoint is durable and
    committed, and only then is it stopped. So a failure anywhere, even after CRIU finished (disk
    full on the last bytes, a rename), leaves the container running.
    """
    from migrate.archive import ArchiveWriter

    criu = criu or SwrkCriu()
    started = time.monotonic()
    signer = _signer(options)  # a bad key is refused before anything is frozen
    store = CheckpointStore(rt.paths)
    container = rt.get(name)
    state = container.status
    if state not in ("running", "paused"):
        raise InvalidState(container.spec.name, "checkpoint", state, ("running", "paused"))
    target: DumpTarget = rt.dump_target(container)
    checkpoint_id = new_checkpoint_id()
    spec = target.spec

    def emit(phase: str, message: str = "", done: int = 0) -> None:
        if progress:
            progress(ProgressEvent("checkpoint", phase, bytes_done=done, elapsed_s=time.monotonic() - started, message=message))

    staging = store.staging_dir(checkpoint_id)
    images_dir = staging / IMAGES_DIR
    images_dir.mkdir()
    criu_version = criu.version()
    criu.warm()
    cpuinfo_dump(images_dir)
    manifest = build_manifest(
        spec,
        checkpoint_id,
        criu_version=criu_version,
        options={"tcp_established": options.tcp_established, "file_locks": options.file_locks, "netns_key": NETNS_KEY},
    )
    request = DumpRequest(
        pid=target.init_pid,
        images_dir=images_dir,
        leave_running=True,  # frozen until committed; see the docstring
        tcp_established=options.tcp_established,
        tcp_skip_in_flight=options.tcp_established,
        file_locks=options.file_locks,
        external=dump_externals(target),
        freeze_cgroup=target.freeze_cgroup,
        network_lock=rt.network_lock(),
    )
    archive_path = Path(options.export_path).resolve() if options.export_path is not None else None
    out_path = (
        archive_path.with_name(f".{archive_path.name}.{checkpoint_id}.tmp") if archive_path else staging / UPPER_ARCHIVE
    )
    was_paused = state == "paused"
    frozen = False
    cut: Any = None  # the network, cut for the dump (CheckpointHost.isolate)
    try:
        with open(out_path, "wb") as out:
            emit("freeze")
            t0 = time.monotonic()
            # recorded first: if this process dies frozen, the next command thaws and cleans up
            rt.freeze(container, operation="checkpoint", partial=(out_path, staging) if archive_path else (staging,))
            frozen = True
            frozen_at = time.monotonic()
            # Our network lock, kept until the tree is killed: a container stopped after its dump
            # must not tell its peers (FIN/RST from the dying sockets) that the connections its
            # checkpoint holds are gone, or no restore can take them up again.
            cut = rt.isolate(spec)
            request = dataclasses.replace(request, network_lock=cut.criu_lock)
            freezing_ms = (frozen_at - t0) * 1000
            emit("dump")
            if archive_path is not None:
                # one archive: manifest, upper layer and images, streamed while CRIU writes
                sink = HashingSink(out) if signer is not None else out
                writer = ArchiveWriter(sink, compress=options.compress, level=options.level)
                writer.write_manifest(manifest)
                stats_dump, dump_ms = stream_dump(criu, request, writer, target.upper_dir, on_bytes=lambda n: emit("dump", done=n),
                                                  add_upper=_image_writer(target.upper_image, staging))
                summary = writer.close(trailer={"dump_stats": stats_dump.__dict__})
                if signer is not None:
                    assert isinstance(sink, HashingSink), "the sink hashes whenever there is a signer"
                    signer.append(out, sink.digest())
                upper_bytes = sum(m.size_bytes for m in summary.members if m.name.startswith("upper/"))
                if target.upper_image is not None:
                    upper_bytes = _allocated_bytes(target.upper_image)
                archive_bytes = summary.written_bytes
            else:
                # local: CRIU's images stay raw in images/; the upper layer is archived beside them
                writer = ArchiveWriter(out, compress="none")
                writer.write_manifest({"kind": "upper-layer", "checkpoint_id": checkpoint_id})
                dump_thread = _DumpThread(criu, request)
                dump_started = time.monotonic()
                dump_thread.start()
                try:
                    if target.upper_image is not None:  # its blocks keep the inode numbers
                        from migrate.archive.upper_image import copy_frozen

                        copy_frozen(target.upper_image, staging / UPPER_IMAGE)
                    else:
                        writer.add_tree("upper", target.upper_dir)
                finally:
                    dump_thread.join()
                if dump_thread.error is not None:
                    raise dump_thread.error
                upper_bytes = writer.close().raw_bytes
                if target.upper_image is not None:
                    upper_bytes = _allocated_bytes(staging / UPPER_IMAGE)
                stats_dump = dump_thread.stats or DumpStats()
                dump_ms = (dump_thread.finished_at - dump_started) * 1000
                archive_bytes = 0
            out.flush()
            unfrozen_at = time.monotonic()
            if options.leave_running:
                # Everything is written (page cache): a late failure can no longer lose the
                # container, so it goes on now and the durability work happens unfrozen.
                rt.rejoin(cut)
                cut = None
                if not was_paused:
                    rt.thaw(container)
                frozen = False
            os.fsync(out.fileno())
        if archive_path is None:
            _fsync_files(images_dir)
            _fsync_file(staging / UPPER_IMAGE)
        images_bytes = _images_bytes(images_dir)
        emit("commit")
        if archive_path is not None:
            os.rename(out_path, archive_path)
        else:
            manifest["dump_stats"] = stats_dump.__dict__
            store.commit(staging, checkpoint_id, manifest)
        # ---- committed: the checkpoint is complete on disk ----
        done_at = time.monotonic()
    except BaseException as exc:
        try:
            rt.rejoin(cut)
        except OSError as rejoin_exc:  # rollback path: report the original error
            log.error("container=%s: cannot set its link up again after a failed checkpoint: %s", spec.name, rejoin_exc)
        if frozen and not was_paused:
            try:
                rt.thaw(container)
            except Exception:  # rollback path: report the original error
                log.exception("container=%s: thaw after failed checkpoint failed", spec.name)
        if archive_path is not None:
            out_path.unlink(missing_ok=True)
        keep_criu_log(rt.paths, exc, (request.work_dir or images_dir) / DUMP_LOG, "dump")
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if archive_path is not None:
        shutil.rmtree(staging, ignore_errors=True)
    if not options.leave_running:
        rt.stop_checkpointed(container, checkpoint_id)
    frozen_ms = ((unfrozen_at if options.leave_running else done_at) - frozen_at) * 1000
    total_ms = (time.monotonic() - started) * 1000
    stats = CheckpointStats(
        freezing_ms=round(freezing_ms, 3),
        frozen_ms=round(frozen_ms, 3),
        memdump_ms=stats_dump.memdump_ms,
        memwrite_ms=stats_dump.memwrite_ms,
        pages_scanned=stats_dump.pages_scanned,
        pages_skipped_parent=stats_dump.pages_skipped_parent,
        pages_written=stats_dump.pages_written,
        images_bytes=images_bytes,
        upper_bytes=upper_bytes,
        archive_bytes=archive_bytes,
        archive_ms=round(max(0.0, frozen_ms - dump_ms), 3),
        total_ms=round(total_ms, 3),
    )
    log.info(
        "container=%s checkpoint=%s frozen_ms=%.1f dump_ms=%.1f images_bytes=%d archive_bytes=%d",
        spec.name, checkpoint_id, stats.frozen_ms, dump_ms, images_bytes, archive_bytes,
    )
    emit("done")
    return CheckpointResult(
        checkpoint_id=checkpoint_id,
        container_name=spec.name,
        export_path=str(archive_path) if archive_path else None,
        stats=stats,
        signed_by=signer.fingerprint if signer is not None else "",
    )


def _signer(options: CheckpointOptions) -> ArchiveSigner | None:
    if options.sign_key is None:
        return None
    if options.export_path is None:
        raise InvalidArgument("a signing key signs an exported archive: give --export FILE with --sign-key",
                             hint="local checkpoints stay on this host and are not signed")
    return ArchiveSigner.from_file(Path(options.sign_key))
