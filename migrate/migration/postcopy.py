"""Post-copy (lazy pages) migration: both halves, and the choice of a live mode.

Source (``migrate_postcopy``), each phase timed:

    preflight   both hosts support lazy pages; the target reserves name and address (mode postcopy)
    image       the base image, if the target lacks it
    freeze      cgroup.freeze on the source
    dump        CRIU dumps everything *but* the memory contents (``lazy_pages``): the pages stay in
                CRIU's page pipes on the source. Meanwhile the upper layer streams to the target.
                CRIU's ``post-dump`` notification says the images are complete; then CRIU starts
                its page server on PORT (every address of the source's network namespace), we
                wait until it listens, and the small images follow into the archive
    restore     the target starts ``criu lazy-pages --page-server --address SRC --port PORT``
                and restores with ``lazy_pages`` at once; it answers when the container runs
    ---- point of no return: the container runs on the target ----
    lazy        pages move on demand (faults) and in the background; CRIU's dump on the source
                returns when the target's lazy-pages daemon has taken the last page
    commit      the target confirms its lazy-pages daemon finished cleanly and drops its
                reservation; the source kills and removes its frozen copy

``frozen_ms`` is freeze -> running on the target (the target says how long before its answer the
restore finished; ``phases_ms["handover"]`` is freeze -> that answer); ``phases_ms["last_page"]`` is how long after
the resume the last page arrived (the window in which the source is still needed).

Exactly one copy (docs/migration.md): as in cold migration, the outgoing record says "unknown"
from right before the freeze; a failure before the archive's last byte left rolls back at once,
one after it settles with the target first (migrate.migration.recovery.settle_unsure), CRIU's page server
still serving: a target that restored takes its last pages during the settlement, and only an
"aborted" answer ends the lazy dump (a connection to its port) and thaws.

Failure before the point of no return rolls back like cold migration: the target removes what
it built (and stops its lazy-pages daemon), the source's CRIU dump is made to return (if the
target never connected, we connect to the page server once and close, which CRIU takes as the
end of the transfer), the source's network link is restored and the container thawed. Failure
after it loses the container: the target's copy is missing memory (after its lazy-pages daemon
dies, the kernel fills later faults with *zero pages*), so it is killed, and ``ContainerLost``
says so; the frozen pre-migration copy on the source is kept for the operator.

CRIU facts this relies on (criu/cr-dump.c, page-xfer.c, uffd.c in 4.1.1; see CRIU-NOTES):
- The dump runs ``leave_running``: a lazy dump that ends "successfully" only means the page
  server's socket was closed (a lazy page server reads EOF as the end of the transfer even when
  the peer died), so CRIU must never kill the source by itself. Our commit, not CRIU, decides.
- With ``leave_running`` CRIU takes TCP sockets out of repair *before* serving the pages, while
  the container is still frozen. The source's copy would then answer for the container's address
  on a shared L2 segment alongside the target's copy. So right after the freeze we set the
  source's host-side veth down (``CheckpointHost.isolate``: the frozen copy goes deaf and mute)
  and back up on rollback; that is also the network lock of the dump (CRIU's nftables lock is
  skipped: dropping it took ~25 ms of the pause).
- CRIU's ``status-ready`` notification comes once its page server listens; the archive's
  trailer (which lets the target dial it) goes only after it.
- Over RPC, a lazy dump ignores ``ps.address`` and listens on every address (INADDR_ANY) at
  ``ps.port``. The page-server link is CRIU's own TCP connection. When the daemons use mTLS it
  uses TLS too (``SwrkCriu.page_server_tls`` on the source, ``tls`` of ``receive_postcopy`` on the
  target, both the daemons' certificates): the source's page server accepts only a lazy-pages
  daemon whose certificate chains to the CA, and that daemon checks that the source's certificate
  names the address it dials. CRIU accepts one connection: a peer failing the handshake ends the
  lazy dump, which before the resume is an ordinary rollback. Without TLS the link is plain TCP.

The target builds the container's shell (record, cgroup, netns with its link down, shim, CRIU
waiting in the cgroup) at PrepareIncoming (``prebuild_shell``), while the source still runs: in
the pause it only cost CPU beside the source's dump on the same cores. An abort before the
archive (``stop_session``) tears it down; a daemon restart's reconcile removes what a crash left.

The target half (``receive_postcopy``) keeps one ``LazySession`` per migration in this process:
the lazy-pages daemon, its scratch dir (images + logs) and a watcher that kills the container if
the daemon fails after the resume. ``finish_session`` (commit) waits for a clean exit;
``stop_session`` (abort) stops the daemon.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from migrate.api import (
    IncomingRequest,
    MigrateOptions,
    MigrateResult,
    MigrationMode,
    ProgressFn,
    RestoreOptions,
    RestoreResult,
    RestoreStats,
)
from migrate.errors import ContainerLost, IncompatibleHost, MigrationError, TransferError
from runtime.criu import DUMP_LOG, Criu, CriuProcess, CriuTls, DumpRequest, DumpStats, PageServer, SwrkCriu, first_error
from runtime.errors import ContainerError
from runtime.fstree import remove_tree_quietly
from runtime.spec import readdressed

from migrate.migration import lazy_relay
from migrate.migration.phases import lose, poke_page_server
from migrate.migration.sequence import Move, manifest, run

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
PE_LAZY = 1 << 1  # criu/include/pagemap.h: pages can be restored lazily
PE_PRESENT = 1 << 2  # ... are in the local pages-*.img
POST_DUMP = "post-dump"  # CRIU's notify script name once every image is written
STATUS_READY = "status-ready"  # ... once its page server listens (page-xfer.c, after listen())
LISTEN_TIMEOUT_S = 10.0
ROLLBACK_DUMP_TIMEOUT_S = 30.0
FINISH_TIMEOUT_S = 60.0
TCP_ESTABLISHED = "01"
CONNECT_TIMEOUT_S = 10.0
# A shell built at PrepareIncoming waits this long for its restore request: the image and the
# upper layer go before the freeze, and the sweep aborts a migration that stops making progress
PREBUILT_WAIT_S = 3600.0
PREBUILT_MARGIN_S = 60.0  # ... one older than the wait minus this is rebuilt at the archive


# --- small source-side helpers --------------------------------------------------------------


def _resolve_dest(dest: str, kind: int) -> tuple[str, Any]:
    """(host part of ``dest``, its first address info of socket type ``kind``); TransferError."""
    host = dest
    if host.startswith("ssh://"):
        host = host[len("ssh://"):].rsplit("@", 1)[-1]
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    try:
        return host, socket.getaddrinfo(host, 9, type=kind)[0]
    except OSError as exc:
        raise TransferError(f"cannot resolve the target host {host}: {exc}", phase="preflight") from exc


def page_server_address(dest: str) -> str:
    """This host's address as seen from the daemon at ``dest`` (the route's source address).

    ``HOST:PORT`` and ``ssh://[user@]host[:port]`` use the route to that host; ``unix:`` means
    the same host (127.0.0.1).
    """
    if dest.startswith("unix:"):
        return "127.0.0.1"
    host, (family, _type, _proto, _name, sockaddr) = _resolve_dest(dest, socket.SOCK_DGRAM)
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(sockaddr)  # UDP: no packet is sent, the kernel only picks the route
        except OSError as exc:
            raise TransferError(f"no route to the target host {host}: {exc}", phase="preflight") from exc
        return str(s.getsockname()[0])


def peer_address(dest: str) -> str:
    """The address the daemon at ``dest`` connects from (its own address; 127.0.0.1 for ``unix:``)."""
    if dest.startswith("unix:"):
        return "127.0.0.1"
    return str(_resolve_dest(dest, socket.SOCK_STREAM)[1][4][0])


def lazy_page_count(images_dir: Path) -> int:
    """Pages a lazy dump left for the page server: pagemap entries flagged lazy and not present
    in the local pages images (CRIU's own ``pages_lazy`` counter is reset when its page server
    starts, so stats-dump cannot tell)."""
    from runtime.criu import read_image_entries

    total = 0
    for path in images_dir.glob("pagemap-*.img"):
        try:
            entries = read_image_entries(path, "pagemap_entry", "pagemap_pb2")[1:]  # [0] is the pagemap_head
        except (OSError, ValueError, struct.error) as exc:  # informative only (a truncated image too)
            log.debug("cannot decode %s: %s", path, exc)
            continue
        total += sum(e.nr_pages for e in entries if e.flags & PE_LAZY and not e.flags & PE_PRESENT)
    return total


def mark(migration_id: str, what: str) -> None:
    """A debug line with this host's monotonic clock in ms: the two daemons of a migration on one
    machine share it, so their lines line up into the pause's timeline (daemon --debug)."""
    log.debug("migration=%s postcopy at_ms=%.1f %s", migration_id, time.monotonic() * 1000, what)


def free_port() -> int:
    """A TCP port free on every address right now (CRIU binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


class _LazyDump(threading.Thread):
    """Runs CRIU's lazy dump; ``images_ready`` is set at CRIU's post-dump notification,
    ``serving`` at status-ready (its page server listens)."""

    def __init__(self, criu: Criu, request: DumpRequest) -> None:
        super().__init__(name="criu-lazy-dump", daemon=True)
        self.criu = criu
        self.request = request
        self.images_ready = threading.Event()
        self.serving = threading.Event()
        self.stats: DumpStats | None = None
        self.error: BaseException | None = None
        self.finished_at = 0.0

    def _notify(self, script: str, pid: int) -> bool:
        if script == POST_DUMP:
            self.images_ready.set()
        elif script == STATUS_READY:
            self.serving.set()
        return True

    def run(self) -> None:
        try:
            self.stats = self.criu.dump(self.request, on_notify=self._notify)
        except BaseException as exc:  # handed to the driver thread
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            self.images_ready.set()  # wake the driver if the dump failed before post-dump
            self.serving.set()


# --- the source side --------------------------------------------------------------------------


class PostcopyMode:
    """The post-copy mode for sequence.run: the dump leaves the memory behind, the target resumes at
    once, and the pages follow from CRIU's page server here (module doc)."""

    name: MigrationMode = "postcopy"
    abort_target_first = True  # it stops the target's lazy-pages daemon, which may be our dump's peer
    retry_commit = False

    def __init__(self, dest: str) -> None:
        self._dest = dest
        self.address = ""
        self.port = 0
        self._guard: Any = None  # without TLS, only the target may reach CRIU's page server (runtime.port_guard)
        self._dump: _LazyDump | None = None
        self._lazy_pages = 0
        self._last_page_ms = 0.0
        self._manifest: dict[str, Any] | None = None  # built in before_freeze
        self._link = lazy_relay.SourceLink()  # the page relay, when the target started one (lazy_relay.py)
        self._relay_wanted = False

    def preflight(self, move: Move) -> None:
        if not move.target_info.features.get("lazy_pages"):
            raise IncompatibleHost(f"the target {self._dest} cannot restore with lazy pages", phase="preflight")
        self.address = page_server_address(self._dest)
        self.port = free_port()
        move.compressed_pages = self._relay_wanted = lazy_relay.wanted(move.options.compress, self._dest)

    def page_server_address(self) -> str | None:
        # with compressed_pages: where the target's page relay listens (the source dials it)
        return peer_address(self._dest) if self._relay_wanted else None

    def record(self) -> dict[str, Any]:
        return {"mode": "postcopy", "page_server_port": self.port}

    def prepared(self, move: Move) -> None:
        log.info("container=%s migration=%s page server for lazy pages: %s:%d", move.spec.name, move.migration_id,
                 self.address, self.port)
        self._link.open(move, peer_address(self._dest))
        if getattr(move.criu, "page_server_tls", None) is None or self._link.plain:
            from runtime.port_guard import guard_or_warn

            peer = "127.0.0.1" if self._link.plain else peer_address(self._dest)  # behind the relay: only it dials CRIU
            self._guard = guard_or_warn(self.port, [peer], label=f"migration={move.migration_id} lazy pages")

    def before_freeze(self, move: Move) -> None:
        # the manifest (checkpoint id, spec, image record: ~4 ms) is ready before the freeze, so the
        # pause starts with CRIU's dump
        self._manifest = manifest(move, self)

    def manifest_options(self, move: Move) -> dict[str, Any]:
        return {"lazy_pages": True, "page_server": {"address": self.address, "port": self.port}}

    def dump_request(self, move: Move, request: DumpRequest) -> DumpRequest:
        return dataclasses.replace(request, lazy_pages=True,
                                   page_server=PageServer(address=self.address, port=self.port, plain=self._link.plain))

    def dump(self, move: Move, request: DumpRequest, pusher: Any) -> None:
        from migrate import failpoints
        from migrate.archive import ArchiveWriter
        from migrate.archive.store import IMAGES_DIR

        sink = move.sink
        assert sink is not None and move.upper is not None
        from runtime.dev_mounts import dump_externals

        # frozen now: /dev and an empty /dev/shm as CRIU external mounts, not its tar copies — if the
        # target says it binds them (an older one would fail the restore: the source would roll back)
        if move.target_info.features.get("postcopy_dev_external"):
            request = dataclasses.replace(request, external=request.external + dump_externals(request.pid, move.spec))
        dump = self._dump = _LazyDump(move.criu, request)
        move.clock.emit("dumping all but memory")
        try:
            dump.start()  # first: CRIU's dump is the longest step of the pause
            mark(move.migration_id, "source: criu lazy dump started")
            writer = ArchiveWriter(sink, compress="zstd", level=1)
            writer.write_manifest(self._manifest if self._manifest is not None else manifest(move, self))
            move.upper(writer)
            sink.flush()  # the target starts unpacking while CRIU dumps (the sink sends full chunks only)
            mark(move.migration_id, "source: upper layer sent")
            dump.images_ready.wait()
            mark(move.migration_id, "source: criu post-dump (images written)")
            if dump.error is not None:
                raise dump.error
            if not dump.is_alive() and dump.stats is not None:
                raise MigrationError("criu's lazy dump ended before serving any page", phase="dump")
            for p in sorted(move.images_dir.iterdir()):
                if p.is_file() and p.name != DUMP_LOG:  # CRIU still writes it (the page server): the target has no use for it
                    writer.add_file(f"{IMAGES_DIR}/{p.name}", p)
            if not dump.serving.is_set():  # the target unpacks the images while CRIU starts its page server
                sink.flush()  # (else they go with the trailer below: one hand-over to the pusher, not two)
            mark(move.migration_id, "source: images sent")
            # The target dials the page server as soon as it has the archive: CRIU must listen.
            if not dump.serving.wait(LISTEN_TIMEOUT_S) or not dump.is_alive():
                dump.join(timeout=1)
                if dump.error is not None:
                    raise dump.error
                raise TransferError(f"criu's page server did not listen on port {self.port} within {LISTEN_TIMEOUT_S:g}s",
                                    phase="dump")
            mark(move.migration_id, "source: criu page server listens")
            self._link.criu_listens(self.port)
            failpoints.hit("source.dump")
            move.final_sent = True
            writer.close(trailer={"lazy_pages": True, **move.upper.trailer})
            sink.close()
            mark(move.migration_id, "source: archive closed")
        except BaseException as exc:
            sink.abort(exc if isinstance(exc, Exception) else TransferError("migration interrupted"))
            pusher.join(timeout=30)
            raise

    def end_dump(self, move: Move) -> None:
        pass  # the staging dir holds the dump's log until the last page left

    def abandon(self, move: Move) -> None:
        dump = self._dump
        if dump is not None and dump.is_alive():
            self._drop_guard()  # the poke comes from this host, which the guard keeps out too
            poke_page_server(self.port)
            dump.join(ROLLBACK_DUMP_TIMEOUT_S)
            if dump.is_alive():
                log.error("container=%s migration=%s: criu dump did not end within %gs", move.spec.name, move.migration_id,
                          ROLLBACK_DUMP_TIMEOUT_S)
        self._link.close()

    def unsure(self, move: Move) -> None:
        self._drop_guard()  # an "aborted" settlement ends the lazy dump by connecting from here

    def settled(self, move: Move) -> None:
        if self._dump is not None:  # every page moved: the dump returns
            self._dump.join(ROLLBACK_DUMP_TIMEOUT_S)

    def resumed(self, move: Move, resumed_at: float) -> None:
        from migrate.migration.recovery import end_record

        log.info("container=%s migration=%s resumed on %s: pages follow", move.spec.name, move.migration_id, self._dest)
        move.enter("lazy", "memory pages moving to the target")
        dump = self._dump
        assert dump is not None and move.outgoing is not None
        dump.join()
        self._last_page_ms = (dump.finished_at - resumed_at) * 1000
        relay_error = self._link.join(ROLLBACK_DUMP_TIMEOUT_S)  # CRIU closed its end: the relay's tail follows
        if relay_error is not None and dump.error is None:
            log.warning("container=%s migration=%s: %s", move.spec.name, move.migration_id, relay_error.message)
        self._drop_guard()  # CRIU's page server is closed
        self._lazy_pages = lazy_page_count(move.images_dir)
        if dump.error is not None:
            kept = _keep_log(move.rt, move.images_dir / DUMP_LOG)
            first = str(getattr(dump.error, "message", dump.error)).splitlines()[0]
            end_record(move.outgoing, move.migration_id)
            lose(move.rt, move.target, move.container, move.migration_id, move.spec.name, self._dest, move.cut.veth,
                 f"the page transfer failed ({first}{f'; log: {kept}' if kept else ''})")

    def finished(self, move: Move) -> None:
        self._drop_guard()
        self._link.close()

    def _drop_guard(self) -> None:
        from runtime.port_guard import drop_guard

        drop_guard(self._guard)
        self._guard = None

    def stats(self, move: Move) -> tuple[int, int, dict[str, float]]:
        lazy_bytes = self._lazy_pages * PAGE_SIZE
        phases = {"last_page": round(self._last_page_ms, 3), **self._link.phases}
        if move.restored is not None:  # the target's share of the pause
            phases["target_import"] = move.restored.stats.import_ms
            phases["target_restore"] = move.restored.stats.restore_ms
        log.info("container=%s migration=%s last_page_ms=%.1f lazy_pages=%d", move.spec.name, move.migration_id,
                 self._last_page_ms, self._lazy_pages)
        wire = int(self._link.phases.get("page_wire_bytes", lazy_bytes))  # the relay's zstd, if it compressed
        return wire, lazy_bytes, phases


def migrate_postcopy(rt: Any, name: str, options: MigrateOptions, target: Any, *, criu: Criu | None = None,
                     progress: ProgressFn | None = None) -> MigrateResult:
    """Move container ``name`` of ``rt`` (a CheckpointHost) to ``target`` with lazy pages (module doc).

    Raises:
        ContainerLost: the page transfer failed after the container resumed on the target.
        MigrationError and runtime errors: anything before that; the source runs on, thawed.
    """
    return run(rt, name, options, target, PostcopyMode(options.dest), criu=criu or SwrkCriu(), progress=progress)


# --- the target side --------------------------------------------------------------------------


class LazySession:
    """One post-copy restore on the target: the lazy-pages daemon, its scratch dir, a watcher."""

    def __init__(self, host: Any, migration_id: str, daemon: CriuProcess, scratch: Path, container_id: str,
                 on_complete: Any = None) -> None:
        self.host = host
        self.on_complete = on_complete  # called once every page arrived (recorded: a restart knows)
        self.migration_id = migration_id
        self.daemon = daemon
        self.scratch = scratch
        self.container_id = container_id
        self.stopping = False
        self.returncode: int | None = None
        self.failure: str | None = None
        self.finished_at = 0.0
        self._watcher = threading.Thread(target=self._watch, name=f"lazy-pages-{migration_id}", daemon=True)

    def start(self) -> None:
        self._watcher.start()

    def _watch(self) -> None:
        rc = self.daemon.proc.wait()
        self.returncode = rc
        self.finished_at = time.monotonic()
        if rc != 0 and not self.stopping:
            self.failure = self.daemon.error(rc).message
            kept = _keep_log(self.host, self.daemon.log_path)
            log.error("migration=%s container=%s: lazy-pages daemon failed after the resume: %s; the container has "
                      "missing memory and is killed (log: %s)", self.migration_id, self.container_id, self.failure, kept)
            try:
                self.host.rt.kill(self.container_id, 9)
            except ContainerError as exc:
                log.warning("migration=%s: killing container %s failed: %s", self.migration_id, self.container_id, exc)
        elif rc == 0:
            log.info("migration=%s container=%s: every page arrived", self.migration_id, self.container_id)
            if self.on_complete is not None:
                try:
                    self.on_complete()
                except Exception as exc:  # noqa: BLE001 - only a restart's settlement needs it
                    log.warning("migration=%s: cannot record that every page arrived: %s", self.migration_id, exc)
        remove_tree_quietly(self.scratch)

    def finish(self, timeout_s: float = FINISH_TIMEOUT_S) -> None:
        """Wait until every page arrived; ContainerLost if the daemon failed, MigrationError if slow."""
        self._watcher.join(timeout_s)
        if self._watcher.is_alive():
            raise MigrationError(f"incoming migration {self.migration_id}: pages still arriving after {timeout_s:g}s", phase="commit")
        if self.returncode != 0:
            raise ContainerLost(
                f"container {self.container_id[:12]} lost on this host: its lazy-pages daemon failed: {self.failure}",
                phase="lazy",
                source_copy="unknown",
            )

    def stop(self) -> None:
        self.stopping = True
        self.daemon.stop()
        self._watcher.join(10)
        remove_tree_quietly(self.scratch)


_SESSIONS: dict[str, LazySession] = {}
_SESSIONS_LOCK = threading.Lock()


def _keep_log(host: Any, log_path: Path) -> Path | None:
    """Copy a CRIU log out of a scratch dir that is about to go (into ROOT/logs)."""
    from runtime.checkpointing import keep_failed_log

    try:
        return keep_failed_log(host.paths, log_path, log_path.stem)
    except OSError:
        return None


def check_incoming(request: IncomingRequest) -> None:
    """Target pre-flight for a post-copy migration: this host must restore with lazy pages."""
    if request.mode != "postcopy":
        return
    from runtime.host import host_report

    features = host_report().features()
    if not features.get("lazy_pages"):
        raise IncompatibleHost("this host cannot restore with lazy pages (criu uffd-noncoop, fs.pipe-max-size >= 4 MiB)",
                               phase="preflight", hint="run 'pymigrate check'; sysctl -w fs.pipe-max-size=4194304")
    if (request.spec or {}).get("userns_size") and not features.get("lazy_pages_userns"):
        raise IncompatibleHost("this host cannot restore a --userns container with lazy pages: vm.unprivileged_userfaultfd is 0",
                               phase="preflight", hint="sysctl -w vm.unprivileged_userfaultfd=1, or migrate with --mode cold")


def receive_postcopy(host: Any, criu: Criu, migration_id: str, record: Mapping[str, Any], source: Any,
                     progress: ProgressFn | None = None, *, tls: CriuTls | None = None,
                     staged_upper: Path | None = None, before_restore: Any = None,
                     on_complete: Any = None) -> RestoreResult:
    """Unpack the (memory-less) archive, start the lazy-pages daemon towards the source's page
    server (over TLS with ``tls``), restore with lazy pages; returns once the container runs (the
    point of no return)."""
    from migrate.migration.phases import unpack_beside_shell
    from migrate.restore import preflight

    started = time.monotonic()
    mark(migration_id, "target: archive stream opened")
    # Built at PrepareIncoming, while the source still ran (prebuild_shell); else now, while the
    # archive arrives: the container's cgroup, network and shim, CRIU waiting in its cgroup.
    shell = take_prebuilt(migration_id) or early_shell(host, criu, record)
    mark(migration_id, "target: shell built")
    from runtime.dev_mounts import TargetDevMounts

    # for CRIU to bind if the dump declared them external (ROOT/tmp/restore-*: a crash's is swept);
    # made while the source still dumps: 0.3 ms idle, 2 ms under load, out of the pause
    dev = TargetDevMounts.made_in(host.rt.sys, host.paths.tmp / f"restore-{migration_id}-dev")
    mark(migration_id, "target: /dev mounts made")
    from runtime import upperfs

    loop = upperfs.attach_staged(staged_upper) if shell is not None else None
    try:
        unpacked = unpack_beside_shell(host, source, shell, progress=progress, staged_upper=staged_upper)
    except BaseException:
        dev.release()
        if loop is not None:
            loop.release()
        raise
    assert unpacked.scratch is not None
    import_ms = (time.monotonic() - started) * 1000
    mark(migration_id, "target: archive unpacked")
    daemon: CriuProcess | None = None
    starting: _LazyStart | None = None
    relay = lazy_relay.take(migration_id)  # the page relay PrepareIncoming started, if the source asked
    try:
        if shell is not None:  # the root mounts beside the checks below
            shell.mount_ahead(unpacked.upper_dir, attached=loop)
        manifest = unpacked.manifest
        ps = _lazy_page_server(migration_id, manifest)
        # The lazy-pages daemon starts (exec, reads pstree.img, listens: 6-8 ms) while the images
        # are checked and the root is mounted; it dials the source only once the restore connects.
        page_server = PageServer(str(ps["address"]), int(ps["port"]))
        relayed = relay is not None and relay.wait_decided(CONNECT_TIMEOUT_S)  # decided before the source froze
        starting = _LazyStart(unpacked.images_dir, unpacked.work_dir, page_server, None if relayed else tls,
                              relay.attach() if relay is not None and relayed else None)
        starting.start()
        mark(migration_id, "target: lazy-pages daemon starting")
        spec = incoming_spec(host, record, manifest, unpacked.images_dir)
        mark(migration_id, "target: spec checked")
        if shell is not None and (shell.spec.container_id, shell.spec.name) != (spec.container_id, spec.name):
            shell.abort()  # not the container the reservation named: build it the usual way
            shell = None
        replace_id = host.replaceable_id(spec) if shell is None else spec.container_id  # the shell is ours
        preflight(host, unpacked, spec, criu=criu, replace_id=replace_id)
        mark(migration_id, "target: images checked")
        if before_restore is not None:  # the archive is complete: a settlement now waits for the restore
            before_restore()
            mark(migration_id, "target: restore recorded")
        t0 = time.monotonic()
        try:
            info = _restore_lazily(host, criu, migration_id, shell, unpacked, spec, replace_id, starting, dev.externals, loop)
            shell = None  # finished (or never there): nothing of it is left to abort
            if loop is not None:
                loop.release()  # the mount took it (a no-op then), or the shell was not used
        except ContainerError as exc:
            daemon, starting = starting.taken(), None
            if daemon is None:  # the lazy-pages daemon did not start: its error is the one
                raise
            _explain_failed_restore(host, exc, unpacked.work_dir, daemon, ps)
            raise
        resumed_at = time.monotonic()
        mark(migration_id, "target: restored (running)")
        dev.release()  # the container has its own binds of them; the detach waits out of the pause
        daemon, starting = starting.taken(), None
        assert daemon is not None  # the request was sent: it was ready
        restore_ms = (resumed_at - t0) * 1000
        _require_connected(host, migration_id, daemon, ps, info.spec.container_id, relayed=relayed)
        mark(migration_id, "target: lazy-pages daemon connected")
        session = LazySession(host, migration_id, daemon, unpacked.scratch, info.spec.container_id, on_complete)
        with _SESSIONS_LOCK:
            _SESSIONS[migration_id] = session
        session.start()
    except BaseException:
        dev.release()
        if loop is not None:
            loop.release()  # not taken by the mount (else a no-op): detached
        if shell is not None:
            shell.abort()
        if starting is not None:
            daemon = starting.taken()
        if daemon is not None:
            daemon.stop()
            _keep_log(host, daemon.log_path)
        if relay is not None:
            relay.stop()
        remove_tree_quietly(unpacked.scratch)
        raise
    images_bytes = sum(p.stat().st_size for p in unpacked.images_dir.iterdir() if p.is_file()) if unpacked.images_dir.is_dir() else 0
    log.info("migration=%s container=%s restored with lazy pages restore_ms=%.1f", migration_id, spec.name, restore_ms)
    return RestoreResult(
        container=info,
        stats=RestoreStats(
            import_ms=round(import_ms, 3),
            restore_ms=round(restore_ms, 3),
            total_ms=round((time.monotonic() - started) * 1000, 3),
            images_bytes=images_bytes,
            since_resume_ms=round((time.monotonic() - resumed_at) * 1000, 3),
        ),
    )


def _lazy_page_server(migration_id: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The source's page server the manifest names; MigrationError if it names none."""
    opts = manifest.get("options", {})
    ps = opts.get("page_server")
    if not opts.get("lazy_pages") or not isinstance(ps, dict):
        raise MigrationError(f"incoming migration {migration_id}: the archive has no page server for lazy pages", phase="restore")
    return ps


def _restore_lazily(host: Any, criu: Criu, migration_id: str, shell: Any, unpacked: Any, spec: Any,
                    replace_id: str | None, starting: _LazyStart, dev_externals: tuple[str, ...], loop: Any = None) -> Any:
    """Restore with lazy pages, through the prebuilt ``shell`` if there is one (with the upper
    image's loop device ``loop`` bound ahead); the request waits for the lazy-pages daemon, whose
    socket the restore connects to at once."""
    from migrate.checkpoint import NETNS_KEY
    from migrate.restore import restore_request

    def request_for(root: Path) -> Any:
        starting.ready()
        mark(migration_id, "target: lazy-pages daemon ready")
        request = restore_request(unpacked, spec, root, tcp_established=False)
        return dataclasses.replace(request, lazy_pages=True, external=request.external + dev_externals)

    restored_from = unpacked.manifest.get("checkpoint_id")
    if shell is not None:
        return shell.finish(unpacked.upper_dir, request_for, restored_from=restored_from, attached=loop)
    return host.restore_from(spec, upper_src=unpacked.upper_dir, replace_id=replace_id, request_for=request_for,
                             netns_key=NETNS_KEY, criu=criu, restored_from=restored_from)


def incoming_spec(host: Any, record: Mapping[str, Any], manifest: dict[str, Any], images_dir: Path) -> Any:
    """The container's spec from the peer's manifest, checked as any peer's, with the name,
    address and ports the reservation here recorded."""
    from migrate.restore import checked_spec
    from runtime.capabilities import spec_names
    from runtime.ports import recorded_ports
    from runtime.seccomp import check_image_filters

    # the ports its pre-flight claimed here (migrate -p may differ from the checkpoint's)
    options = RestoreOptions(name=record["name"], ip=record.get("ip"), ports=recorded_ports(record.get("spec")))
    spec = checked_spec(manifest, options, origin="peer", allow_peer_volumes=bool(getattr(host, "allow_peer_volumes", False)))
    check_image_filters(images_dir, spec.seccomp, spec.seccomp_profile,  # CRIU restores the images' filters
                        cache_dir=host.paths.seccomp_cache, caps=spec_names(spec.cap_add, spec.cap_drop))
    return readdressed(spec, options.ip)


def _explain_failed_restore(host: Any, exc: ContainerError, work_dir: Path, daemon: CriuProcess, ps: Mapping[str, Any]) -> None:
    """A lazy restore failed: keep its log (it goes with the scratch dir) and, when the lazy-pages
    daemon failed too, raise one error naming both; else return (the caller re-raises ``exc``)."""
    from migrate.checkpoint import keep_criu_log
    from runtime.criu import RESTORE_LOG

    keep_criu_log(host.paths, exc, work_dir / RESTORE_LOG, "restore")
    rc = daemon.poll()
    if rc is None or rc == 0:
        return
    # Both failed. The lazy-pages daemon's error is often only the echo of the restore's
    # (a restored task that died never sends its pid: "PID recv: short read"), so say both.
    kept = _keep_log(host, daemon.log_path)
    raise TransferError(
        f"the restore with lazy pages from the source's page server {ps['address']}:{ps['port']} failed: "
        f"{exc.message}; the lazy-pages daemon: {first_error(daemon.log_path) or daemon.error(rc).message}"
        + (f" (log: {kept})" if kept else ""),
        phase="restore",
    ) from exc


def _require_connected(host: Any, migration_id: str, daemon: CriuProcess, ps: Mapping[str, Any], container_id: str, *,
                       relayed: bool = False) -> None:
    """The lazy-pages daemon reached the source's page server. If it died while the restore ran
    or before it got there, faults got (or will get) zero pages: the container is not resumed as
    far as the source knows (we have not answered yet), so remove it and fail: the source thaws.
    ``relayed``: its socket is the page relay's, connected before the freeze; it must be alive."""
    rc = daemon.poll() if relayed else _wait_connected(daemon, str(ps["address"]), int(ps["port"]))
    if rc is None or rc == 0:
        return
    err = daemon.error(rc)
    try:
        host.rt.remove(container_id, force=True)
    except ContainerError as exc:
        log.warning("migration=%s: removing the restored container failed: %s", migration_id, exc)
    raise TransferError(f"the lazy-pages daemon failed during the restore: {err.message}", phase="restore")


class _LazyStart(threading.Thread):
    """``start_lazy_pages`` in a thread: ``ready`` waits for it (raising its error), ``taken``
    hands over the daemon, if it started, once the thread is done."""

    def __init__(self, images_dir: Path, work_dir: Path, page_server: PageServer, tls: CriuTls | None,
                 relayed: socket.socket | None = None) -> None:
        super().__init__(name="lazy-pages-start", daemon=True)
        self._args = (images_dir, work_dir, page_server, tls)
        self._relayed = relayed  # the page relay's end for the daemon (lazy_relay.py), else it dials the source
        self._daemon: CriuProcess | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        from runtime.criu import start_lazy_pages

        images_dir, work_dir, page_server, tls = self._args
        try:
            if self._relayed is None:
                self._daemon = start_lazy_pages(images_dir, work_dir, page_server, tls=tls)
            else:
                self._daemon = start_lazy_pages(images_dir, work_dir, page_server, ps_socket=self._relayed.fileno())
        except BaseException as exc:  # handed to ready()
            self._error = exc
        finally:
            if self._relayed is not None:  # the daemon has its copy; ours would hide its EOF from the relay
                self._relayed.close()

    def ready(self) -> CriuProcess:
        self.join()
        if self._error is not None:
            raise self._error
        assert self._daemon is not None
        return self._daemon

    def taken(self) -> CriuProcess | None:
        self.join()
        return self._daemon


def early_shell(host: Any, criu: Criu, record: Mapping[str, Any], *, timeout_s: float = 300.0) -> Any:
    """A RestoreShell for the container the reservation names (its spec is in the record), or
    None: no spec recorded, an exited original of that id to replace, a host that cannot start
    one (CheckpointHost.begin_restore), or a failure (logged; the usual path follows)."""
    from migrate.checkpoint import NETNS_KEY
    from runtime.container import parse_spec, validate_spec

    raw = record.get("spec")
    begin = getattr(host, "begin_restore", None)
    if not isinstance(raw, dict) or begin is None:
        return None
    try:
        # the peer's word: checked like run's input (its volumes are judged with the archive's)
        spec = validate_spec(dataclasses.replace(parse_spec(raw), volumes=()))
        spec = readdressed(spec, record.get("ip"))
        if host.replaceable_id(spec) is not None:
            return None
        return begin(spec, netns_key=NETNS_KEY, criu=criu, restored_from=None, timeout_s=timeout_s)
    except ContainerError as exc:
        log.warning("migration=%s: cannot build the container ahead of its images (%s): building it after them",
                    record.get("migration_id"), exc.message)
        return None


class _Prebuild(threading.Thread):
    """``early_shell`` in a thread started at PrepareIncoming: the shell (cgroup, netns with its
    link down, shim, CRIU waiting in the cgroup: 12-30 ms of this host's CPU) is built while the
    source still runs, not beside its dump in the pause."""

    def __init__(self, host: Any, criu: Criu, record: Mapping[str, Any]) -> None:
        super().__init__(name=f"prebuild-{record.get('migration_id')}", daemon=True)
        self._args = (host, criu, record)
        self.shell: Any = None
        self.started = time.monotonic()

    def run(self) -> None:
        try:
            self.shell = early_shell(*self._args, timeout_s=PREBUILT_WAIT_S)  # None (logged) if it cannot be built
        except Exception:  # noqa: BLE001 - the archive's arrival builds it the usual way and meets the error there
            log.warning("migration=%s: building the container ahead failed", self._args[2].get("migration_id"), exc_info=True)


_PREBUILT: dict[str, _Prebuild] = {}


def prebuild_shell(host: Any, criu: Criu, record: Mapping[str, Any]) -> None:
    """Start building the shell of the post-copy migration ``record`` reserves (PrepareIncoming).
    ``take_prebuilt`` hands it to the restore; ``stop_session`` (abort, sweep) tears it down."""
    build = _Prebuild(host, criu, record)
    with _SESSIONS_LOCK:
        _PREBUILT[str(record["migration_id"])] = build
    build.start()


def _pop_prebuilt(migration_id: str) -> tuple[Any, float]:
    """(the shell built ahead or None, seconds since its build started)."""
    with _SESSIONS_LOCK:
        build = _PREBUILT.pop(migration_id, None)
    if build is None:
        return None, 0.0
    build.join()
    return build.shell, time.monotonic() - build.started


def take_prebuilt(migration_id: str) -> Any:
    """The shell ``prebuild_shell`` built for this migration, or None: none was started, it failed,
    or its CRIU may be about to stop waiting for the request (PREBUILT_WAIT_S; torn down here)."""
    shell, age_s = _pop_prebuilt(migration_id)
    if shell is not None and age_s > PREBUILT_WAIT_S - PREBUILT_MARGIN_S:
        log.warning("migration=%s: the container built ahead %.0fs ago may stop waiting for its images: building it again",
                    migration_id, age_s)
        shell.abort()
        return None
    return shell


def is_connected(address: str, port: int, proc_net: Path = Path("/proc/self/net")) -> bool:
    """Whether a TCP connection of this network namespace to ``address:port`` is established."""
    try:
        packed = socket.inet_aton(address)
    except OSError:
        return False
    want = f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"
    try:
        lines = (proc_net / "tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(len(f) > 3 and f[2] == want and f[3] == TCP_ESTABLISHED for f in (line.split() for line in lines))


def _wait_connected(daemon: CriuProcess, address: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> int | None:
    """After the restore: wait until the lazy-pages daemon holds its connection to the source's
    page server (None) or has exited (its status; 0 = every page already arrived)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rc = daemon.poll()
        if rc is not None:
            return rc
        if is_connected(address, port):
            return None
        if time.monotonic() > deadline:
            log.warning("lazy-pages daemon pid %d did not reach %s:%d within %gs: stopping it", daemon.pid, address, port, timeout_s)
            daemon.stop()
            return daemon.poll()
        time.sleep(0.001)


def finish_session(migration_id: str, timeout_s: float = FINISH_TIMEOUT_S) -> None:
    """At commit: wait for the last page (ContainerLost if the daemon failed). No-op for cold ones."""
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(migration_id)
    if session is None:
        return
    session.finish(timeout_s)
    with _SESSIONS_LOCK:
        _SESSIONS.pop(migration_id, None)


def stop_session(migration_id: str) -> None:
    """At abort: stop the lazy-pages daemon (before the container is removed). Idempotent."""
    lazy_relay.stop(migration_id)  # a page relay whose lazy-pages daemon never started
    with _SESSIONS_LOCK:
        session = _SESSIONS.pop(migration_id, None)
    if session is not None:
        session.stop()
    shell, _age = _pop_prebuilt(migration_id)  # aborted before its archive came: the shell built ahead goes
    if shell is not None:
        shell.abort()


def session_pid(migration_id: str) -> int | None:
    """The lazy-pages daemon's pid of an incoming migration (tests inject faults with it)."""
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(migration_id)
    return session.daemon.pid if session is not None else None


__all__ = [
    "LazySession",
    "check_incoming",
    "finish_session",
    "free_port",
    "migrate_postcopy",
    "page_server_address",
    "prebuild_shell",
    "receive_postcopy",
    "stop_session",
]
