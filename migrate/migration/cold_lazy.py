"""A cold migration's target resumes before its memory is in: lazy pages from its own disk (issue 17).

A cold target holds every page of the container once the dump ended (the page server wrote them
into its scratch dir, or they came in the archive). Restoring them the usual way, CRIU copies all
of them into the new processes before they run: ~1 s of the pause for 1 GiB, right after the
dump's ~1 s. Here the restore runs with ``lazy_pages`` beside a ``criu lazy-pages`` daemon
*without* a page server (runtime.criu.start_lazy_pages with no PageServer): CRIU restores
everything but the memory contents, the container resumes, and its pages come from the local
pages-*.img files, on fault and pushed in the background until the last one is in (the daemon
then exits 0).

The cold guarantee holds: the restore starts only after the whole archive and every page arrived
(``before_restore`` collects the page server's files first), so once the container runs here
nothing depends on the source. Until its last page is in, it depends on the lazy-pages daemon on
this host, so this host answers the source only then: the pause ends at the resume (the answer
says how long before it that was), but the point of no return (the record turning "restored")
comes after the last page, as with a full restore. A daemon that fails before removes the
container here, and the source, frozen and whole, thaws; a restart of this daemon meanwhile
leaves the record "restoring", which the restart aborts.

Nothing of the container waits for the pause: its shell (cgroup, netns, link, shim, CRIU waiting)
is built at PrepareIncoming while the source still runs (postcopy.prebuild_shell); the staged upper
image is bound to its loop device, and the plan's /dev and /dev/shm are made here while it dumps,
for CRIU to bind where the dump declared them
external (runtime/dev_mounts.py: no tar copies either way; the source declares them only to a
target whose HostInfo has DEV_FEATURE, ``binds_dev``, as any restoring this way does).

Used when the target can (``lazy_reason`` is None): the host has lazy pages (uffd-noncoop,
fs.pipe-max-size), a ``--userns`` container also needs vm.unprivileged_userfaultfd; not for
pre-copy (pages chained to parent images) nor named volumes (restore_container installs them).
``PYMIGRATE_COLD_LAZY=0`` in the target daemon's environment turns it off (the usual restore).

A lazy restore that fails before the resume falls back to the full one from the same images
(they are all on this disk; the upper layer is given back by the failed restore's undo), before
this host answers the source, so the migration still succeeds: CRIU 4.1.1 premaps every private
mapping writable for a lazy restore (pagemap.c: no ``pieok`` with lazy pages), and a huge
reservation (mariadb's 8 TiB PROT_NONE) then fails "Unable to map ANON_VMA: Cannot allocate
memory" where a full restore maps it as it was. Such a restore is not even tried when the dumped
mm images show it doomed (``premap_refusal``: the kernel's overcommit rule for the host's
vm.overcommit_memory applied to every private mapping made writable); the log says it was skipped
and why. ``PYMIGRATE_COLD_LAZY=always`` tries it anyway (the fallback's test). A failure after the resume (the lazy-pages
daemon dying mid-way) does not fall back: the container ran meanwhile (its upper layer, its
clients), so the images no longer match it; it is removed and the source thaws.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from migrate.api import ProgressFn, RestoreResult, RestoreStats
from runtime.criu import Criu
from runtime.errors import ContainerError
from runtime.fstree import remove_tree_quietly

log = logging.getLogger(__name__)

ENV = "PYMIGRATE_COLD_LAZY"
DEV_FEATURE = "cold_dev_external"  # HostInfo.features: binds_dev
ALWAYS = "always"  # try the lazy restore even when the mm images say it fails (tests the fallback)

# CRIU's VmaEntry.status bits (criu/include/image.h) and the mmap flags the premap check reads
VMA_AREA_REGULAR = 1 << 0
VMA_FILE_PRIVATE = 1 << 6
VMA_ANON_PRIVATE = 1 << 9
VMA_AREA_AIORING = 1 << 13
VMA_AREA_SHSTK = 1 << 15
VMA_EXT_PLUGIN = 1 << 27
MAP_NORESERVE = 0x4000
MAP_HUGETLB = 0x40000
USER_SPACE_END = 1 << 57  # above any task size (5-level paging): the vsyscall page and the like
GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Vma:
    """What the premap check needs of one dumped VMA (CRIU's VmaEntry)."""

    start: int
    end: int
    flags: int  # MAP_*
    status: int  # CRIU's VMA_* bits


@dataclasses.dataclass(frozen=True)
class Overcommit:
    """This host's overcommit rule and the numbers it compares with."""

    mode: int  # vm.overcommit_memory: 0 heuristic, 1 always, 2 never
    ram_swap_bytes: int  # MemTotal + SwapTotal
    headroom_bytes: int  # CommitLimit - Committed_AS


def read_overcommit(proc: Path = Path("/proc")) -> Overcommit:
    fields = {}
    for line in (proc / "meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = int(value.split()[0]) * 1024 if value.split() else 0
    return Overcommit(mode=int((proc / "sys/vm/overcommit_memory").read_text()),
                      ram_swap_bytes=fields["MemTotal"] + fields["SwapTotal"],
                      headroom_bytes=fields["CommitLimit"] - fields["Committed_AS"])


def _premapped(vma: Vma) -> bool:
    """Whether CRIU 4.1.1 premaps ``vma`` (mmap'ed prot|PROT_WRITE) for a lazy restore:
    premap_priv_vmas maps every private VMA there when ``pieok`` is false, as it is with lazy
    pages (pagemap.c), except hugetlb and plugin-restored ones (vma.h vma_entry_is_private)."""
    private = (vma.status & VMA_AREA_REGULAR and vma.status & (VMA_ANON_PRIVATE | VMA_FILE_PRIVATE)
               and vma.end <= USER_SPACE_END) or vma.status & (VMA_AREA_SHSTK | VMA_AREA_AIORING)
    return bool(private) and not vma.flags & MAP_HUGETLB and not vma.status & VMA_EXT_PLUGIN


def premap_refusal(vmas: list[Vma], host: Overcommit) -> str | None:
    """Why the kernel would refuse CRIU's writable premap of these VMAs (a lazy restore fails
    "Unable to map ANON_VMA"), or None. The rule is the kernel's (mm/util.c __vm_enough_memory)
    for each mmap CRIU makes: a private writable mapping is accounted unless MAP_NORESERVE (which
    mode 2 ignores); mode 0 refuses one mapping larger than RAM + swap, mode 2 refuses once the
    commitments pass CommitLimit (all of the restore's: they are mapped before any page is read),
    mode 1 refuses nothing."""
    accounted = [v for v in vmas if _premapped(v) and (host.mode == 2 or not v.flags & MAP_NORESERVE)]
    if host.mode == 0 and accounted:
        big = max(accounted, key=lambda v: v.end - v.start)
        if big.end - big.start > host.ram_swap_bytes:
            return (f"a private mapping of {(big.end - big.start) / GIB:.1f} GiB at {big.start:#x} would be premapped "
                    f"writable, more than this host's RAM + swap ({host.ram_swap_bytes / GIB:.1f} GiB; vm.overcommit_memory=0)")
    if host.mode == 2:
        total = sum(v.end - v.start for v in accounted)
        if total > host.headroom_bytes:
            return (f"{total / GIB:.1f} GiB of private mappings would be premapped writable, more than this host's commit "
                    f"headroom (CommitLimit - Committed_AS: {host.headroom_bytes / GIB:.1f} GiB; vm.overcommit_memory=2)")
    return None


def dumped_vmas(images_dir: Path) -> list[Vma]:
    """Every VMA of the dumped mm images (mm-*.img), through pycriu's generated mm_pb2 (its dict
    decoder is not needed, and importing all of pycriu.images costs ~75 ms of the pause)."""
    from runtime.criu import read_image_entries

    out: list[Vma] = []
    for path in sorted(images_dir.glob("mm-*.img")):
        for mm in read_image_entries(path, "mm_entry", "mm_pb2"):
            out.extend(Vma(v.start, v.end, v.flags, v.status) for v in mm.vmas)
    return out


def lazy_refusal(images_dir: Path, environ: Mapping[str, str] = os.environ, proc: Path = Path("/proc")) -> str | None:
    """Why a lazy restore of these images would fail before the resume, or None (try it)."""
    if environ.get(ENV, "").strip().lower() == ALWAYS:
        return None
    try:
        return premap_refusal(dumped_vmas(images_dir), read_overcommit(proc))
    except Exception as exc:  # noqa: BLE001 - unreadable or undecodable: try it, the fallback still catches a failure
        log.warning("the premap check could not read its input (%s): trying the lazy restore", exc)
        return None


def _mark(migration_id: str, what: str) -> None:
    """A debug line for scripts/pause_timeline.py (this host's monotonic clock, daemon --debug)."""
    log.debug("migration=%s cold at_ms=%.1f %s", migration_id, time.monotonic() * 1000, what)


def lazy_reason(mode: str, spec: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> str | None:
    """Why a migration of ``mode`` with ``spec`` (a ContainerSpec dict) restores with all its pages
    before the resume, or None: it resumes with lazy pages from this host's disk."""
    if environ.get(ENV, "").strip().lower() in ("0", "off", "no", "false"):
        return f"{ENV}={environ[ENV]}"
    if mode != "cold":
        return f"a {mode} migration"
    if any(isinstance(v, dict) and v.get("name") for v in spec.get("volumes") or ()):
        return "named volumes"
    from runtime.host import host_report

    features = host_report().features()
    if not features.get("lazy_pages"):
        return "no lazy pages on this host (criu uffd-noncoop, fs.pipe-max-size >= 4 MiB)"
    if spec.get("userns_size") and not features.get("lazy_pages_userns"):
        return "a --userns container and vm.unprivileged_userfaultfd is 0"
    return None


def binds_dev(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this host restores a cold migration's container (no named volumes: ``dev_external``)
    here, binding the plan's /dev and /dev/shm where the dump declared them external (its HostInfo
    feature DEV_FEATURE; an older target, or one restoring the usual way, would fail such a restore)."""
    return lazy_reason("cold", {}, environ) is None


def dev_external(spec: Any) -> bool:
    """Whether a cold dump of ``spec`` (a ContainerSpec) may declare /dev and /dev/shm external to a
    target that ``binds_dev``: not with named volumes, which that target restores the usual way."""
    return not any(v.name for v in getattr(spec, "volumes", ()))


def receive_cold_lazy(host: Any, criu: Criu, migration_id: str, record: Mapping[str, Any], source: Any,
                      progress: ProgressFn | None = None, *, staged_upper: Path | None = None,
                      before_restore: Callable[[Path], None]) -> RestoreResult:
    """Unpack the archive (building the container meanwhile), collect the pages (``before_restore``),
    restore with lazy pages served from the images here (or, if that fails before the resume,
    with every page first); returns once the container runs with every page in memory."""
    from migrate.migration.phases import unpack_beside_shell
    from migrate.migration.postcopy import early_shell, take_prebuilt

    started = time.monotonic()
    _mark(migration_id, "target: archive stream opened")
    # Built at PrepareIncoming, while the source still ran (postcopy.prebuild_shell): cgroup, netns,
    # link, shim, CRIU waiting; else now, while the archive arrives (on the 2 cores the dump needs)
    shell = take_prebuilt(migration_id) or early_shell(host, criu, record)
    _mark(migration_id, "target: shell built")
    from runtime.dev_mounts import TargetDevMounts

    # for CRIU to bind if the dump declared /dev and /dev/shm external (runtime/dev_mounts.py; in
    # ROOT/tmp/restore-*: a crash's is swept), made while the source still dumps
    dev = TargetDevMounts.made_in(host.rt.sys, host.paths.tmp / f"restore-{migration_id}-dev")
    from runtime import upperfs

    loop = upperfs.attach_staged(staged_upper) if shell is not None else None

    def collected(unpacked: Any) -> None:
        _mark(migration_id, "target: archive unpacked")
        before_restore(unpacked.images_dir)  # every page is here from now on: the source is not needed
        _mark(migration_id, "target: pages collected")

    try:
        unpacked = unpack_beside_shell(host, source, shell, progress=progress, staged_upper=staged_upper, then=collected)
    except BaseException:
        dev.release()
        if loop is not None:
            loop.release()
        raise
    assert unpacked.scratch is not None
    import_ms = (time.monotonic() - started) * 1000
    try:
        result = _restore(host, criu, migration_id, record, unpacked, shell, started, import_ms, dev, loop)
        returned = time.monotonic()
    finally:
        dev.release()  # again after the resume: nothing (the container has its own binds of them)
        if loop is not None:
            loop.release()  # taken by the mount (a no-op then), or the shell was not used: detached
        remove_tree_quietly(unpacked.scratch)  # ~30 ms for 256 MiB of pages on ext4: the container runs
    return answered(result, returned)


def answered(result: RestoreResult, returned_at: float) -> RestoreResult:
    """A migration target's ``result`` (any mode's) as answered now: its container ran since
    ``since_resume_ms`` before ``returned_at`` (when its restore returned), and this host took until
    now to clean up and record it; the source places the end of the pause by this number
    (frozen_ms = its answer's arrival - since_resume_ms), so that time is not counted as pause."""
    since_ms = result.stats.since_resume_ms + (time.monotonic() - returned_at) * 1000
    return dataclasses.replace(result, stats=dataclasses.replace(result.stats, since_resume_ms=round(since_ms, 3)))


def _last_page(host: Any, migration_id: str, daemon: Any, container_id: str) -> None:
    """Wait until the lazy-pages daemon put the last page in (it exits 0). The container runs
    meanwhile (the pause ended at its resume) but this host does not answer before: a copy with
    missing memory never passes the point of no return. A failure removes the container here
    (TransferError: the source, frozen and whole, thaws)."""
    from migrate.errors import TransferError
    from migrate.migration.postcopy import FINISH_TIMEOUT_S

    try:
        rc = daemon.proc.wait(FINISH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        daemon.stop()
        rc = None
    if rc == 0:
        return
    why = daemon.error(rc).message if rc is not None else f"pages still missing after {FINISH_TIMEOUT_S:g}s"
    kept = _kept_log(host, daemon.log_path)
    try:
        host.rt.remove(container_id, force=True)
    except ContainerError as exc:
        log.warning("migration=%s: removing the restored container failed: %s", migration_id, exc)
    raise TransferError(f"the local lazy-pages daemon failed before the last page: {why}" + (f" (log: {kept})" if kept else ""),
                        phase="restore")


def _taken(starting: concurrent.futures.Future[Any] | None) -> Any:
    """The lazy-pages daemon once its start is done, or None if it failed to start."""
    if starting is None:
        return None
    try:
        return starting.result()
    except BaseException:  # noqa: BLE001 - its error was or will be reported by request_for
        return None


def _kept_log(host: Any, log_path: Path) -> Path | None:
    """A copy of a CRIU log out of the scratch dir that is about to go (into ROOT/logs)."""
    from runtime.checkpointing import keep_failed_log

    try:
        return keep_failed_log(host.paths, log_path, log_path.stem)
    except OSError:
        return None


def _retry_full(exc: ContainerError) -> bool:
    """Whether a full restore may succeed where the lazy one failed with ``exc``: not when the
    name or address is taken, the input refused, or CRIU timed out (it would again, as slowly)."""
    from runtime.errors import Busy, ContainerExists, CriuTimeout, InvalidArgument

    return not isinstance(exc, (Busy, ContainerExists, CriuTimeout, InvalidArgument))


def _lazy_failed(host: Any, exc: ContainerError, work_dir: Path, daemon: Any) -> str:
    """A lazy restore failed before the resume: keep CRIU's logs (they go with the scratch dir),
    stop the lazy-pages daemon (None: it did not start) and say why, naming the daemon's error
    when it failed too."""
    from migrate.checkpoint import keep_criu_log
    from runtime.criu import RESTORE_LOG, first_error

    keep_criu_log(host.paths, exc, work_dir / RESTORE_LOG, "restore")
    why = exc.message
    if daemon is None:
        return why
    rc = daemon.poll()
    if rc is not None and rc != 0:
        kept = _kept_log(host, daemon.log_path)
        why += f"; the lazy-pages daemon: {first_error(daemon.log_path) or daemon.error(rc).message}" + (
            f" (log: {kept})" if kept else "")
    daemon.stop()
    return why


def _request(unpacked: Any, spec: Any, root: Path, dev_externals: tuple[str, ...]) -> Any:
    """The restore's request, with CRIU's keys for the /dev mounts made here (TargetDevMounts:
    unused when the dump has CRIU's copies)."""
    from migrate.restore import restore_request

    request = restore_request(unpacked, spec, root, tcp_established=False)
    return dataclasses.replace(request, external=request.external + dev_externals)


def _restore_first(host: Any, criu: Criu, migration_id: str, spec: Any, unpacked: Any, shell: Any,
                   replace_id: str | None, starting: concurrent.futures.Future[Any] | None,
                   dev_externals: tuple[str, ...], loop: Any) -> Any:
    """Restore (through the shell built ahead when there is one) with ``lazy_pages`` when the
    lazy-pages daemon is ``starting``, else with every page first; the container's info once it
    runs. A failure leaves nothing of it (the shell's or restore_from's undo, which gives the
    upper layer back)."""
    from migrate.checkpoint import NETNS_KEY

    def request_for(root: Path) -> Any:
        request = _request(unpacked, spec, root, dev_externals)
        if starting is None:
            return request
        starting.result()  # its error, if it did not start
        _mark(migration_id, "target: lazy-pages daemon ready")
        return dataclasses.replace(request, lazy_pages=True)

    restored_from = unpacked.manifest.get("checkpoint_id")
    if shell is not None:
        return shell.finish(unpacked.upper_dir, request_for, restored_from=restored_from, attached=loop)
    return host.restore_from(spec, upper_src=unpacked.upper_dir, replace_id=replace_id, request_for=request_for,
                             netns_key=NETNS_KEY, criu=criu, restored_from=restored_from)


def _restore_full(host: Any, criu: Criu, migration_id: str, spec: Any, unpacked: Any, why: str,
                  dev_externals: tuple[str, ...]) -> Any:
    """The ordinary restore (every page in before the resume) from the same images, after a lazy
    one failed before its resume; the container's info once it runs."""
    from migrate.checkpoint import NETNS_KEY, keep_criu_log
    from runtime.criu import RESTORE_LOG

    log.warning("migration=%s container=%s: the restore with lazy pages failed before the resume (%s): restoring "
                "every page first, from the same images", migration_id, spec.name, why)
    _mark(migration_id, "target: full restore after the lazy one failed")
    try:
        return host.restore_from(spec, upper_src=unpacked.upper_dir, replace_id=host.replaceable_id(spec),
                                 request_for=lambda root: _request(unpacked, spec, root, dev_externals),
                                 netns_key=NETNS_KEY, criu=criu, restored_from=unpacked.manifest.get("checkpoint_id"))
    except ContainerError as exc:
        keep_criu_log(host.paths, exc, unpacked.work_dir / RESTORE_LOG, "restore")
        raise


def _start_daemon(unpacked: Any, migration_id: str, spec_name: Any) -> concurrent.futures.Future[Any] | None:
    """The local lazy-pages daemon starting in a thread (exec, reads the images, listens: 6-8 ms,
    while the images are checked), or None when the mm images say the lazy restore would fail
    (a full restore then, with the shell built ahead all the same; said in the log)."""
    from runtime.criu import start_lazy_pages

    refusal = lazy_refusal(unpacked.images_dir)
    if refusal is not None:
        log.info("migration=%s container=%s: the restore with lazy pages skipped (%s): restoring every page first",
                    migration_id, spec_name, refusal)
        _mark(migration_id, "target: lazy restore skipped")
        return None
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lazy-pages-start")
    starting = pool.submit(start_lazy_pages, unpacked.images_dir, unpacked.work_dir, None)
    pool.shutdown(wait=False)
    return starting


def _restore(host: Any, criu: Criu, migration_id: str, record: Mapping[str, Any], unpacked: Any, shell: Any,
             started: float, import_ms: float, dev: Any, loop: Any) -> RestoreResult:
    from migrate.migration.postcopy import incoming_spec
    from migrate.restore import preflight

    starting = _start_daemon(unpacked, migration_id, record.get("name"))
    daemon = None
    how = "lazy" if starting is not None else "skipped"
    try:
        spec = incoming_spec(host, record, unpacked.manifest, unpacked.images_dir)
        if shell is not None and (shell.spec.container_id, shell.spec.name) != (spec.container_id, spec.name):
            shell.abort()
            shell = None
        replace_id = host.replaceable_id(spec) if shell is None else spec.container_id
        preflight(host, unpacked, spec, criu=criu, replace_id=replace_id)
        _mark(migration_id, "target: images checked")
        t0 = time.monotonic()
        try:
            info = _restore_first(host, criu, migration_id, spec, unpacked, shell, replace_id, starting, dev.externals, loop)
        except ContainerError as exc:  # before the resume: its undo left nothing, the source waits frozen
            shell = None
            if starting is None:  # a full restore already
                raise
            why = _lazy_failed(host, exc, unpacked.work_dir, _taken(starting))  # the daemon stopped
            starting = None
            if not _retry_full(exc):
                raise
            info, how = _restore_full(host, criu, migration_id, spec, unpacked, why, dev.externals), "failed"
        resumed_at = time.monotonic()
        _mark(migration_id, "target: restored (running)")
        dev.release()  # the container has its own binds of them; the detach waits out of the pause
        if how == "lazy":
            daemon, starting = _taken(starting), None
            assert daemon is not None
            _last_page(host, migration_id, daemon, info.spec.container_id)
            _mark(migration_id, "target: every page in memory")
            log.info("migration=%s container=%s: every page in memory %.1f ms after the resume", migration_id, spec.name,
                     (time.monotonic() - resumed_at) * 1000)
    except BaseException:
        if shell is not None:
            shell.abort()
        daemon = daemon or _taken(starting)
        if daemon is not None:
            daemon.stop()
        raise
    _log_restored(migration_id, spec.name, how, (resumed_at - t0) * 1000)
    return RestoreResult(container=info, stats=RestoreStats(
        import_ms=round(import_ms, 3), restore_ms=round((resumed_at - t0) * 1000, 3),
        total_ms=round((time.monotonic() - started) * 1000, 3),
        images_bytes=sum(p.stat().st_size for p in unpacked.images_dir.iterdir() if p.is_file()),
        since_resume_ms=round((time.monotonic() - resumed_at) * 1000, 3)))


def _log_restored(migration_id: str, name: str, how: str, restore_ms: float) -> None:
    """The restore's line: lazily, or every page first because the lazy one was skipped or failed."""
    if how == "lazy":
        log.info("migration=%s container=%s restored, pages from this host's images follow lazily restore_ms=%.1f",
                 migration_id, name, restore_ms)
        return
    why = "the lazy restore skipped" if how == "skipped" else "after the failed lazy restore"
    log.info("migration=%s container=%s restored with every page in memory (%s) restore_ms=%.1f",
             migration_id, name, why, restore_ms)
