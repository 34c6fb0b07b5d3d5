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

``--leave-running --export`` does not stream while frozen: CRIU dumps raw into the staging dir
and the upper layer (and the named volumes the archive carries) is captured there beside it
(an upper image packed by the kernel; a plain upper dir and the volumes staged before the
freeze and only their changes taken while frozen: migrate/checkpoint_presync.py), the container
thaws, and only then is the archive compressed and written from the staging dir (same members,
same trailer, same signature). So the pause is about a local checkpoint's, not the archive's.

Nothing lost: any failure before the commit thaws the container so it keeps running, and
removes every partial file (staging dir, export temp file); after a ``leave_running`` thaw the
container runs on whatever fails. The archive appears only complete (temp name, then rename).
Every path that froze the cgroup thaws it on the way out unless CRIU has already killed the tree
on purpose.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from migrate import checkpoint_writeback, failpoints
from migrate.api import CheckpointOptions, CheckpointResult, CheckpointStats, ProgressEvent, ProgressFn
from migrate.archive import partial_exports
from migrate.archive.signing import ArchiveSigner, HashingSink
from migrate.archive.store import IMAGES_DIR, UPPER_ARCHIVE, UPPER_IMAGE, CheckpointStore, build_manifest, image_record, new_checkpoint_id
from runtime.criu import DUMP_LOG, Criu, DumpRequest, DumpStats, SwrkCriu, cpuinfo_dump
from runtime.checkpointing import DumpTarget, keep_failed_log
from runtime.errors import ContainerError, InvalidArgument, InvalidState
from runtime.state import fsync_path

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


def dump_empty_ns(target: DumpTarget) -> int:
    """CLONE_NEWNET for a ``--userns`` container: its network namespace is dumped empty, not
    external. Its restore makes a new one in the user namespace CRIU restores (an external one
    could not be joined from there) and wires it at CRIU's setup-namespaces (runtime/restore_start.py)."""
    from runtime.syscalls import CLONE_NEWNET

    return CLONE_NEWNET if target.spec.userns_size else 0


def dump_externals(target: DumpTarget) -> tuple[str, ...]:
    """CRIU ``external`` entries: the network namespace, every volume bind mount and --init's."""
    external = []
    if target.netns_path is not None and not dump_empty_ns(target):
        external.append(f"net[{os.stat(target.netns_path).st_ino}]:{NETNS_KEY}")
    for i, vol in enumerate(target.spec.volumes):
        external.append(f"mnt[{vol.target}]:{volume_key(i)}")
    # an imported container's engine binds (/etc/hosts, cgroups ...): keyed by destination, as runc does
    external.extend(f"mnt[{dest}]:{dest}" for dest in target.spec.engine_mounts)
    from runtime.init_binary import dump_externals as init_externals

    from runtime.rootfs import device_externals

    # run --init: tini's bind; --userns: the host's device nodes
    return (*external, *init_externals(target.spec), *device_externals(bool(target.spec.userns_size), restore=False))


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


def _allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _image_writer(image: Path | None, tmp_dir: Path) -> Callable[[Any], object] | None:
    """For ``stream_dump``'s ``add_upper``: a layer on an image goes as its blocks (members
    upper.img.map/.data, migrate/archive/upper_image.py), not as its tree."""
    if image is None:
        return None
    from migrate.archive.upper_image import add_frozen

    return lambda writer: add_frozen(writer, image, tmp_dir)


def _images_bytes(images_dir: Path) -> int:
    return sum(p.stat().st_size for p in images_dir.iterdir() if p.is_file())


@dataclasses.dataclass
class _Dumped:
    """What a dump phase measured."""

    stats: DumpStats
    dump_ms: float
    upper_bytes: int
    archive_bytes: int


@dataclasses.dataclass
class _Checkpoint:
    """One checkpoint in progress: what its phases share."""

    rt: Any  # runtime.checkpointing.CheckpointHost
    options: CheckpointOptions
    criu: Criu
    container: Any
    target: DumpTarget
    checkpoint_id: str
    staging: Path
    manifest: dict[str, Any]
    request: DumpRequest
    archive_path: Path | None  # the export's final name; None: a local checkpoint
    out_path: Path  # what is written: the export under a temp name, or the local upper layer
    was_paused: bool
    frozen: bool = False
    cut: Any = None  # the network, cut for the dump (CheckpointHost.isolate)
    presync: Any = None  # --leave-running --export: the plain trees staged before the freeze
    frozen_at: float = 0.0
    unfrozen_at: float = 0.0
    freezing_ms: float = 0.0
    criu_version: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)  # checkpoint --label, validated

    @property
    def images_dir(self) -> Path:
        return self.staging / IMAGES_DIR


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
    fsync and commit follow (an export's archive is written after the thaw, from the staging
    dir: ``_dump_staged``); by default it stays frozen until the checkpoint is durable and
    committed, and only then is it stopped. So a failure anywhere, even after CRIU finished (disk
    full on the last bytes, a rename), leaves the container running.
    """
    started = time.monotonic()
    signer = _signer(options)  # a bad key is refused before anything is frozen
    if options.compress == "gzip":  # podman's (--format podman: migrate/interop/podman_export.py), not ours
        raise InvalidArgument("a native archive is compressed with zstd or not at all: --compress gzip needs --format podman")

    def emit(phase: str, message: str = "", done: int = 0) -> None:
        if progress:
            progress(ProgressEvent("checkpoint", phase, bytes_done=done, elapsed_s=time.monotonic() - started, message=message))

    cp = _prepare(rt, name, options, criu or SwrkCriu())
    try:
        with open(cp.out_path, "wb") as out:
            if cp.archive_path is not None:  # found by the sweep if this process dies after the thaw
                partial_exports.begin(rt.paths.run, cp.checkpoint_id, cp.out_path, out.fileno(), cp.staging)
            # Only with --leave-running: a container stopped afterwards stays frozen until the
            # commit either way, and there streaming (dump and archive overlapped) was not slower
            # (1 GiB, frozen: streamed 1.9-3.1 s, staged 2.5-3.4 s; scripts/bench.py checkpoint).
            staged = cp.archive_path is not None and options.leave_running
            if staged and os.environ.get("PYMIGRATE_EXPORT_PRESYNC") != "0":  # the plain trees while it runs
                from migrate import checkpoint_presync

                cp.presync = checkpoint_presync.stage(cp.staging, _staged_trees(cp))
            _freeze(cp, emit)
            emit("dump")
            if staged:  # raw into the staging dir; the archive is written from it after the thaw
                dumped = _dump_staged(cp)
            elif cp.archive_path is not None:  # one archive: manifest, upper layer and images, streamed while CRIU writes
                dumped = _dump_export(cp, out, signer, lambda n: emit("dump", done=n))
            else:  # local: CRIU's images stay raw in images/; the upper layer is archived beside them
                dumped = _dump_local(cp, out)
            out.flush()
            cp.unfrozen_at = time.monotonic()
            if options.leave_running:
                _resume_early(cp)
            if staged:
                emit("archive")
                failpoints.hit("checkpoint.archive")
                dumped = _export_staged(cp, out, signer, dumped, lambda n: emit("archive", done=n))
            os.fsync(out.fileno())
        images_bytes = _commit(cp, dumped, emit)
        done_at = time.monotonic()  # ---- committed: the checkpoint is complete on disk ----
    except BaseException as exc:
        _roll_back(cp, exc)
        raise
    if cp.archive_path is not None:
        shutil.rmtree(cp.staging, ignore_errors=True)
    if not options.leave_running:
        # answered once the tree is gone and recorded; the host's teardown goes on detached
        rt.stop_checkpointed(cp.container, cp.checkpoint_id, detach=True,
                             before_teardown=lambda: failpoints.hit("checkpoint.teardown"))
    stats = _stats(cp, dumped, images_bytes, (cp.unfrozen_at if options.leave_running else done_at) - cp.frozen_at, started)
    log.info("container=%s checkpoint=%s frozen_ms=%.1f dump_ms=%.1f images_bytes=%d archive_bytes=%d",
             cp.target.spec.name, cp.checkpoint_id, stats.frozen_ms, dumped.dump_ms, images_bytes, dumped.archive_bytes)
    emit("done")
    return CheckpointResult(
        checkpoint_id=cp.checkpoint_id,
        container_name=cp.target.spec.name,
        export_path=str(cp.archive_path) if cp.archive_path else None,
        stats=stats,
        signed_by=signer.fingerprint if signer is not None else "",
    )


def _prepare(rt: Any, name: str, options: CheckpointOptions, criu: Criu) -> _Checkpoint:
    """Everything before the freeze: the state check, the staging dir, the manifest, the request."""
    from runtime.labels import validate_labels

    labels = validate_labels(options.labels)  # checkpoint --label, refused before anything is made
    container = rt.get(name)
    state = container.status
    if state not in ("running", "paused"):
        raise InvalidState(container.spec.name, "checkpoint", state, ("running", "paused"))
    partial_exports.sweep(rt.paths.run, rt.paths.tmp)  # what an export killed after its thaw left (cheap: a listdir)
    target: DumpTarget = rt.dump_target(container)
    checkpoint_id = new_checkpoint_id()
    staging = CheckpointStore(rt.paths).staging_dir(checkpoint_id)
    images_dir = staging / IMAGES_DIR
    images_dir.mkdir()
    criu_version = criu.version()
    criu.warm()
    cpuinfo_dump(images_dir)
    request = DumpRequest(
        pid=target.init_pid,
        images_dir=images_dir,
        leave_running=True,  # frozen until committed; see checkpoint_container
        tcp_established=options.tcp_established,
        tcp_skip_in_flight=options.tcp_established,
        file_locks=options.file_locks,
        external=dump_externals(target),
        empty_ns=dump_empty_ns(target),
        freeze_cgroup=target.freeze_cgroup,
        network_lock=rt.network_lock(),
    )
    archive_path = Path(options.export_path).resolve() if options.export_path is not None else None
    out_path = partial_exports.temp_path(archive_path, checkpoint_id) if archive_path else staging / UPPER_ARCHIVE
    cp = _Checkpoint(rt=rt, options=options, criu=criu, container=container, target=target, checkpoint_id=checkpoint_id,
                     staging=staging, manifest={}, request=request, archive_path=archive_path, out_path=out_path,
                     was_paused=state == "paused", criu_version=criu_version, labels=labels)
    if archive_path is not None:  # the archive starts with it; a local one's is made while CRIU dumps
        _make_manifest(cp)
    return cp


def _make_manifest(cp: _Checkpoint) -> None:
    """``cp.manifest`` (2-14 ms here: the spec, the image's layers, the host's facts)."""
    options = cp.options
    cp.manifest = build_manifest(
        cp.target.spec,
        cp.checkpoint_id,
        criu_version=cp.criu_version,
        options={"tcp_established": options.tcp_established, "file_locks": options.file_locks, "netns_key": NETNS_KEY},
        image=image_record(cp.rt.images, cp.target.spec),
    )
    if cp.labels:
        cp.manifest["labels"] = cp.labels


def _freeze(cp: _Checkpoint, emit: Callable[..., None]) -> None:
    emit("freeze")
    t0 = time.monotonic()
    # recorded first: if this process dies frozen, the next command thaws and cleans up
    partial = (cp.out_path, cp.staging) if cp.archive_path else (cp.staging,)
    cp.rt.freeze(cp.container, operation="checkpoint", partial=partial)
    cp.frozen = True
    cp.frozen_at = time.monotonic()
    # Our network lock, kept until the tree is killed: a container stopped after its dump must
    # not tell its peers (FIN/RST from the dying sockets) that the connections its checkpoint
    # holds are gone, or no restore can take them up again.
    cp.cut = cp.rt.isolate(cp.target.spec)
    cp.request = dataclasses.replace(cp.request, network_lock=cp.cut.criu_lock)
    cp.freezing_ms = (cp.frozen_at - t0) * 1000


def _carried(cp: _Checkpoint) -> tuple[str, ...]:
    """The named volumes an export carries (none with --ignore-volumes)."""
    from migrate.volumes import named

    return () if cp.options.ignore_volumes else tuple(named(cp.target.spec))


def _open_archive(cp: _Checkpoint, out: BinaryIO, signer: ArchiveSigner | None) -> tuple[Any, Any]:
    """An export's writer with its manifest written; (writer, sink: ``out`` or its hashing wrapper)."""
    from migrate.archive import ArchiveWriter
    from migrate.volumes import CARRIED_KEY

    sink: Any = HashingSink(out) if signer is not None else out
    compress = cp.options.compress
    assert compress != "gzip", "refused by checkpoint_container"
    writer = ArchiveWriter(sink, compress=compress, level=cp.options.level)
    carried = _carried(cp)
    writer.write_manifest({**cp.manifest, CARRIED_KEY: list(carried)} if carried else cp.manifest)
    return writer, sink


def _close_archive(cp: _Checkpoint, writer: Any, sink: Any, out: BinaryIO, signer: ArchiveSigner | None,
                   stats: DumpStats, dump_ms: float) -> _Dumped:
    """The trailer (CRIU's stats), the signature if any; what was written."""
    summary = writer.close(trailer={"dump_stats": stats.__dict__})
    if signer is not None:
        assert isinstance(sink, HashingSink), "the sink hashes whenever there is a signer"
        signer.append(out, sink.digest())
    upper_bytes = sum(m.size_bytes for m in summary.members if m.name.startswith("upper/"))
    if cp.target.upper_image is not None:
        upper_bytes = _allocated_bytes(cp.target.upper_image)
    return _Dumped(stats, dump_ms, upper_bytes, summary.written_bytes)


def _dump_export(cp: _Checkpoint, out: BinaryIO, signer: ArchiveSigner | None, on_bytes: Callable[[int], None]) -> _Dumped:
    from migrate.volumes import add_volumes

    writer, sink = _open_archive(cp, out, signer)
    add_image = _image_writer(cp.target.upper_image, cp.staging)
    carried = _carried(cp)

    def add_upper(w: Any) -> None:  # the layer, then the named volumes (frozen, so consistent with it)
        add_image(w) if add_image is not None else w.add_tree("upper", cp.target.upper_dir)
        if carried:
            add_volumes(w, cp.target.spec)

    stats, dump_ms = stream_dump(cp.criu, cp.request, writer, cp.target.upper_dir, on_bytes=on_bytes, add_upper=add_upper)
    return _close_archive(cp, writer, sink, out, signer, stats, dump_ms)


# --leave-running --export: what the frozen container leaves in the staging dir beside images/
_STAGED_UPPER = "upper"  # a plain upper dir, copied
_STAGED_VOLUMES = "volumes"  # volumes/<name>: the named volumes the archive carries, copied


def _dump_staged(cp: _Checkpoint) -> _Dumped:
    """--leave-running --export, frozen: CRIU dumps raw into images/ while the upper layer and the
    carried volumes are captured into the staging dir, so the archive can be written after the thaw."""
    stats, dump_ms = _dump_while(cp, lambda _dumping: _capture_upper(cp))
    return _Dumped(stats, dump_ms, 0, 0)


def _dump_while(cp: _Checkpoint, capture: Callable[[Callable[[], bool]], object]) -> tuple[DumpStats, float]:
    """CRIU dumps in a thread while ``capture(dumping)`` takes the frozen upper layer (``dumping()``:
    whether CRIU still runs); (stats, dump ms)."""
    thread = _DumpThread(cp.criu, cp.request)
    started = time.monotonic()
    thread.start()
    try:
        capture(thread.is_alive)
    finally:
        thread.join()
    if thread.error is not None:
        raise thread.error
    return thread.stats or DumpStats(), (thread.finished_at - started) * 1000


def _staged_trees(cp: _Checkpoint) -> dict[str, Path]:
    """The plain trees a staged export captures: path in the staging dir -> source dir."""
    from migrate.volumes import named

    trees = {} if cp.target.upper_image is not None else {_STAGED_UPPER: cp.target.upper_dir}
    volumes = named(cp.target.spec)
    trees.update({f"{_STAGED_VOLUMES}/{name}": volumes[name] for name in _carried(cp)})
    return trees


def _capture_upper(cp: _Checkpoint) -> None:
    """The frozen container's upper layer and carried volumes, as they are now, into the staging dir.

    An upper image is synced and packed (its data extents, copy_file_range: the members
    upper.img.map/.data as ``add_frozen`` writes them). A plain upper dir and the volumes were
    staged before the freeze (``cp.presync``): only what changed since is taken now, and
    ``_export_staged`` merges it after the thaw. Without a stage they are copied with ``cp -a``
    (owners, modes, times, xattrs, hardlinks, whiteouts' device nodes, holes), the cheapest whole
    copy measured here: 136 MiB in 2000 x 4 KiB + 8 x 16 MiB files took 267 ms with ``cp -a``,
    455 ms with ``tar -cf``, 726 ms as an uncompressed archive (best of 5, page cache warm).
    ``add_tree`` then archives the copy as it would the original."""
    from migrate.archive import upper_image

    if cp.target.upper_image is not None:
        upper_image.pack_frozen(cp.target.upper_image, cp.staging)
    staged_before = cp.presync.trees if cp.presync is not None else {}
    for rel, src in _staged_trees(cp).items():
        if rel not in staged_before:  # no stage (or its copy failed): the whole tree, now
            _copy_tree(src, cp.staging / rel)
    if cp.presync is not None:
        from migrate import checkpoint_presync

        checkpoint_presync.capture(cp.presync, _copy_tree)


def _copy_tree(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["cp", "-a", "--no-target-directory", "--", str(src), str(dst)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(errno.EIO, f"cannot copy the frozen container's {src} for its archive: {proc.stderr.strip()[:300]}", str(src))


def _export_staged(cp: _Checkpoint, out: BinaryIO, signer: ArchiveSigner | None, dumped: _Dumped,
                   on_bytes: Callable[[int], None]) -> _Dumped:
    """After the thaw: the archive from the staging dir, member for member what ``_dump_export``
    streams (manifest, upper layer, carried volumes, pages-*.img in order, the other images)."""
    from migrate.archive import upper_image
    from migrate.volumes import PREFIX

    if cp.presync is not None:  # the trees staged before the freeze, with their frozen changes
        from migrate import checkpoint_presync

        checkpoint_presync.merge(cp.presync)
    writer, sink = _open_archive(cp, out, signer)
    if cp.target.upper_image is not None:
        upper_image.add_packed(writer, cp.staging)
    else:
        writer.add_tree("upper", cp.staging / _STAGED_UPPER)
    for name in _carried(cp):
        writer.add_tree(f"{PREFIX}/{name}", cp.staging / _STAGED_VOLUMES / name)
    pages = sorted(cp.images_dir.glob("pages-*.img"), key=_pages_index)
    others = sorted(p for p in cp.images_dir.iterdir() if p.is_file() and p not in pages)
    done = 0
    for p in (*pages, *others):
        done += writer.add_file(f"{IMAGES_DIR}/{p.name}", p).size_bytes
        on_bytes(done)
    return _close_archive(cp, writer, sink, out, signer, dumped.stats, dumped.dump_ms)


def _dump_local(cp: _Checkpoint, out: BinaryIO) -> _Dumped:
    from migrate.archive import ArchiveWriter

    writer = ArchiveWriter(out, compress="none")
    writer.write_manifest({"kind": "upper-layer", "checkpoint_id": cp.checkpoint_id})

    def capture(dumping: Callable[[], bool]) -> None:
        if cp.target.upper_image is not None:  # its blocks keep the inode numbers
            from migrate.archive.upper_image import copy_frozen

            copy_frozen(cp.target.upper_image, cp.staging / UPPER_IMAGE)
            checkpoint_writeback.start_path(cp.staging / UPPER_IMAGE)
        else:
            writer.add_tree("upper", cp.target.upper_dir)
        # the commit's fsync waits for the disk: start the pages' writes while CRIU still dumps
        if os.environ.get("PYMIGRATE_CHECKPOINT_WRITEBACK") != "0":  # 0: off (A/B benches)
            checkpoint_writeback.Writeback(cp.images_dir).start(dumping)
        _make_manifest(cp)  # needed at the commit only: made while this thread waits for CRIU anyway

    stats, dump_ms = _dump_while(cp, capture)
    upper_bytes = writer.close().raw_bytes
    if cp.target.upper_image is not None:
        upper_bytes = _allocated_bytes(cp.staging / UPPER_IMAGE)
    return _Dumped(stats, dump_ms, upper_bytes, 0)


def _resume_early(cp: _Checkpoint) -> None:
    """--leave-running: the dump and the upper layer are written (page cache), so a late failure
    can no longer lose the container: it goes on now, and the archive (an export's) and the
    durability work happen unfrozen."""
    cp.rt.rejoin(cp.cut)
    cp.cut = None
    if not cp.was_paused:
        cp.rt.thaw(cp.container)
    cp.frozen = False


def _commit(cp: _Checkpoint, dumped: _Dumped, emit: Callable[..., None]) -> int:
    """Make the checkpoint durable and visible; returns the images' bytes."""
    if cp.archive_path is None:
        checkpoint_writeback.sync_files(cp.images_dir)
        fsync_path(cp.staging / UPPER_IMAGE)  # the upper-layer image copy of a local checkpoint
    images_bytes = _images_bytes(cp.images_dir)
    emit("commit")
    if cp.archive_path is not None:
        os.rename(cp.out_path, cp.archive_path)
        partial_exports.end(cp.rt.paths.run, cp.checkpoint_id)
    else:
        cp.manifest["dump_stats"] = dumped.stats.__dict__
        CheckpointStore(cp.rt.paths).commit(cp.staging, cp.checkpoint_id, cp.manifest)
    return images_bytes


def _roll_back(cp: _Checkpoint, exc: BaseException) -> None:
    """Any failure before the commit: the container runs on as it was, nothing is left."""
    name = cp.target.spec.name
    try:
        cp.rt.rejoin(cp.cut)
    except OSError as rejoin_exc:  # rollback path: report the original error
        log.error("container=%s: cannot set its link up again after a failed checkpoint: %s", name, rejoin_exc)
    if cp.frozen and not cp.was_paused:
        try:
            cp.rt.thaw(cp.container)
        except Exception:  # rollback path: report the original error
            log.exception("container=%s: thaw after failed checkpoint failed", name)
    if cp.archive_path is not None:
        cp.out_path.unlink(missing_ok=True)
        partial_exports.end(cp.rt.paths.run, cp.checkpoint_id)
    keep_criu_log(cp.rt.paths, exc, (cp.request.work_dir or cp.images_dir) / DUMP_LOG, "dump")
    shutil.rmtree(cp.staging, ignore_errors=True)


def _stats(cp: _Checkpoint, dumped: _Dumped, images_bytes: int, frozen_s: float, started: float) -> CheckpointStats:
    frozen_ms = frozen_s * 1000
    return CheckpointStats(
        freezing_ms=round(cp.freezing_ms, 3),
        frozen_ms=round(frozen_ms, 3),
        memdump_ms=dumped.stats.memdump_ms,
        memwrite_ms=dumped.stats.memwrite_ms,
        pages_scanned=dumped.stats.pages_scanned,
        pages_skipped_parent=dumped.stats.pages_skipped_parent,
        pages_written=dumped.stats.pages_written,
        images_bytes=images_bytes,
        upper_bytes=dumped.upper_bytes,
        archive_bytes=dumped.archive_bytes,
        archive_ms=round(max(0.0, frozen_ms - dumped.dump_ms), 3),
        total_ms=round((time.monotonic() - started) * 1000, 3),
    )


def _signer(options: CheckpointOptions) -> ArchiveSigner | None:
    if options.sign_key is None:
        return None
    if options.export_path is None:
        raise InvalidArgument("a signing key signs an exported archive: give --export FILE with --sign-key",
                             hint="local checkpoints stay on this host and are not signed")
    return ArchiveSigner.from_file(Path(options.sign_key))
