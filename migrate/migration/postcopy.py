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
    MigrationStats,
    ProgressFn,
    RestoreOptions,
    RestoreResult,
    RestoreStats,
)
from migrate.errors import ContainerLost, IncompatibleHost, MigrationError, TransferError
from runtime.criu import Criu, CriuProcess, CriuTls, DumpRequest, DumpStats, PageServer, SwrkCriu, cpuinfo_dump, first_error
from runtime.errors import ContainerError, InvalidState
from runtime.fstree import remove_tree_quietly
from runtime.network import set_link_up

from migrate.migration.phases import poke_page_server

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


def migrate_postcopy(
    rt: Any,
    name: str,
    options: MigrateOptions,
    target: Any,
    *,
    criu: Criu | None = None,
    progress: ProgressFn | None = None,
) -> MigrateResult:
    """Move container ``name`` of ``rt`` (a CheckpointHost) to ``target`` with lazy pages (module doc).

    Raises:
        ContainerLost: the page transfer failed after the container resumed on the target.
        MigrationError and runtime errors: anything before that; the source runs on, thawed.
    """
    from migrate.checkpoint import dump_externals
    from migrate.archive import ArchiveWriter
    from migrate import failpoints
    from migrate.migration.phases import (
        ArchivePusher,
        PhaseClock,
        check_target,
        incoming_request,
        phase_error,
        push_image,
        upper_for_migration,
    )
    from migrate.migration.recovery import end_record, settle_unsure
    from migrate.migration.recovery import OutgoingMigrations
    from runtime.port_guard import drop_guard
    from migrate.archive.store import IMAGES_DIR, build_manifest, new_checkpoint_id
    from migrate.archive.streams import ChunkSink

    criu = criu or SwrkCriu()
    clock = PhaseClock(progress)
    started, phases, enter, emit = clock.started, clock.phases, clock.enter, clock.emit
    bytes_on_wire = 0

    container = rt.get(name)
    if container.status != "running":
        raise InvalidState(container.spec.name, "migrate", container.status, "running")
    dt = rt.dump_target(container)
    spec = dt.spec
    emit("checking the target")
    info, here = check_target(criu, target, options.dest)
    if not info.features.get("lazy_pages"):
        raise IncompatibleHost(f"the target {options.dest} cannot restore with lazy pages", phase="preflight")
    address = page_server_address(options.dest)
    port = free_port()
    guard = None  # without TLS, only the target may reach CRIU's page server (runtime.port_guard)
    ticket = target.prepare_incoming(incoming_request(rt, spec, here, "postcopy"))
    migration_id = ticket.migration_id
    log.info("container=%s migration=%s phase=preflight dest=%s mode=postcopy page_server=%s:%d",
             spec.name, migration_id, options.dest, address, port)
    frozen = False
    frozen_at = 0.0
    cut: Any = None  # the source's network, cut for the dump (CheckpointHost.isolate)
    dump: _LazyDump | None = None
    restored: RestoreResult | None = None
    upper: Any = None  # migrate.migration.phases.UpperForDump once the layer is staged
    final_sent = False  # the archive's last byte may have left (migrate.migration.cold's module doc)
    staging = rt.paths.tmp / f"migrate-{migration_id}"
    outgoing = OutgoingMigrations(rt.paths)  # what a restart does if this daemon dies mid-way

    try:
        outgoing.begin(migration_id, container_id=spec.container_id, name=spec.name, dest=options.dest,
                       keep_source=options.keep_source, mode="postcopy", page_server_port=port)
        failpoints.hit("source.prepared")
        if getattr(criu, "page_server_tls", None) is None:
            from runtime.port_guard import guard_or_warn

            guard = guard_or_warn(port, [peer_address(options.dest)], label=f"migration={migration_id} lazy pages")
        if ticket.need_image:
            enter("image", f"sending image {spec.image}")
            bytes_on_wire += push_image(rt, target, migration_id, spec.image_digest)
        upper, sent = upper_for_migration(target, ticket, migration_id, dt.upper_dir, enter,
                                          upper_image=dt.upper_image, tmp_dir=rt.paths.tmp)
        bytes_on_wire += sent
        staging.mkdir(parents=True, mode=0o700)
        images_dir = staging / "images"
        images_dir.mkdir()
        cpuinfo_dump(images_dir)
        criu.warm()
        manifest = build_manifest(
            spec,
            new_checkpoint_id(),
            criu_version=here,
            options={
                "tcp_established": options.tcp_established,
                "file_locks": options.file_locks,
                "migration_id": migration_id,
                "lazy_pages": True,
                "page_server": {"address": address, "port": port},
            },
        )
        request = DumpRequest(
            pid=dt.init_pid,
            images_dir=images_dir,
            leave_running=True,  # CRIU must never kill the source by itself (module doc)
            tcp_established=options.tcp_established,
            tcp_skip_in_flight=options.tcp_established,
            file_locks=options.file_locks,
            external=dump_externals(dt),
            freeze_cgroup=dt.freeze_cgroup,
            network_lock=rt.network_lock(),
            lazy_pages=True,
            page_server=PageServer(address=address, port=port),
        )
        sink = ChunkSink()
        pusher = ArchivePusher(target.receive_checkpoint, migration_id, sink)
        outgoing.outcome_unknown(migration_id)  # a crash from here on asks the target first
        enter("freeze")
        rt.freeze(container)
        frozen = True
        frozen_at = time.monotonic()
        cut = rt.isolate(spec)  # our network lock, which also keeps the frozen copy quiet (module doc)
        dump = _LazyDump(criu, dataclasses.replace(request, network_lock=cut.criu_lock))
        enter("dump", "dumping all but memory")
        pusher.start()
        try:
            writer = ArchiveWriter(sink, compress="zstd", level=1)
            writer.write_manifest(manifest)
            dump.start()
            upper(writer)
            sink.flush()  # the target starts unpacking while CRIU dumps (the sink sends full chunks only)
            dump.images_ready.wait()
            if dump.error is not None:
                raise dump.error
            if not dump.is_alive() and dump.stats is not None:
                raise MigrationError("criu's lazy dump ended before serving any page", phase="dump")
            for p in sorted(images_dir.iterdir()):
                if p.is_file():
                    writer.add_file(f"{IMAGES_DIR}/{p.name}", p)
            sink.flush()  # ... and the images while CRIU starts its page server
            # The target dials the page server as soon as it has the archive: CRIU must listen.
            if not dump.serving.wait(LISTEN_TIMEOUT_S) or not dump.is_alive():
                dump.join(timeout=1)
                if dump.error is not None:
                    raise dump.error
                raise TransferError(f"criu's page server did not listen on port {port} within {LISTEN_TIMEOUT_S:g}s", phase="dump")
            failpoints.hit("source.dump")
            final_sent = True
            writer.close(trailer={"lazy_pages": True, **upper.trailer})
            sink.close()
        except BaseException as exc:
            sink.abort(exc if isinstance(exc, Exception) else TransferError("migration interrupted"))
            pusher.join(timeout=30)
            raise
        enter("restore", "target restoring with lazy pages")
        pusher.join()
        if pusher.error is not None:
            raise pusher.error
        restored = pusher.result
        bytes_on_wire += sink.bytes_written
    except BaseException as exc:
        failed_phase = clock.phase
        if upper is not None:
            upper.discard()  # a staged image's packed copy in ROOT/tmp
        if final_sent:
            drop_guard(guard)  # an "aborted" settlement ends the lazy dump by connecting from here
            guard = None
            settle_unsure(rt, outgoing, target, migration_id, container, options.dest, exc, failed_phase, cut)
            # else it raised: the container runs on the target, every page moved, the copy here is gone
            if dump is not None:
                dump.join(ROLLBACK_DUMP_TIMEOUT_S)
            remove_tree_quietly(staging)
            log.info("container=%s migration=%s done after settling: it runs on %s", spec.name, migration_id, options.dest)
            from migrate.migration.phases import settled_result

            return settled_result(spec.name, options.dest, "postcopy", started, frozen_at, time.monotonic(), bytes_on_wire, phases,
                           upper.changed)
        try:
            target.abort_incoming(migration_id)  # first: it stops the target's lazy-pages daemon
        except Exception as abort_exc:  # the target may be gone; it cleans up on restart
            log.warning("container=%s migration=%s: abort on target failed: %s", spec.name, migration_id, abort_exc)
        if dump is not None and dump.is_alive():
            drop_guard(guard)  # the poke comes from this host, which the guard keeps out too
            guard = None
            poke_page_server(port)
            dump.join(ROLLBACK_DUMP_TIMEOUT_S)
            if dump.is_alive():
                log.error("container=%s migration=%s: criu dump did not end within %gs", spec.name, migration_id, ROLLBACK_DUMP_TIMEOUT_S)
        try:
            rt.rejoin(cut)
        except OSError:
            log.exception("container=%s migration=%s: cannot set its network up again", spec.name, migration_id)
        if frozen:
            try:
                rt.thaw(container)
            except Exception:  # rollback path: keep the original error
                log.exception("container=%s migration=%s: thaw after failure failed", spec.name, migration_id)
        remove_tree_quietly(staging)
        end_record(outgoing, migration_id)
        drop_guard(guard)
        raise phase_error(exc, spec.name, options.dest, failed_phase) from exc

    # ---- point of no return: the container runs on the target ----
    answered_at = time.monotonic()
    # the pause ended when the target resumed the container, a little before its answer arrived
    since_resume_ms = restored.stats.since_resume_ms if restored is not None else 0.0
    resumed_at = answered_at - since_resume_ms / 1000
    frozen_ms = (resumed_at - frozen_at) * 1000
    phases["handover"] = round((answered_at - frozen_at) * 1000, 3)  # freeze -> the source heard of the resume
    try:
        outgoing.past_point_of_no_return(migration_id)
    except OSError as exc:  # a restart would roll back a migration that happened: say so loudly
        log.error("container=%s migration=%s: cannot record the point of no return: %s", spec.name, migration_id, exc)
    log.info("container=%s migration=%s resumed on %s frozen_ms=%.1f: pages follow", spec.name, migration_id, options.dest, frozen_ms)
    enter("lazy", "memory pages moving to the target")
    assert dump is not None
    dump.join()
    last_page_ms = (dump.finished_at - resumed_at) * 1000
    drop_guard(guard)  # CRIU's page server is closed
    lazy_pages = lazy_page_count(staging / "images")
    if dump.error is not None:
        kept = _keep_log(rt, staging / "images" / "dump.log")
        remove_tree_quietly(staging)
        first = str(getattr(dump.error, "message", dump.error)).splitlines()[0]
        end_record(outgoing, migration_id)
        _lose(rt, target, container, migration_id, spec.name, options.dest, cut.veth,
              f"the page transfer failed ({first}{f'; log: {kept}' if kept else ''})")
    remove_tree_quietly(staging)
    enter("commit")
    failpoints.hit("source.commit")
    try:
        target.commit_incoming(migration_id)
    except ContainerLost as exc:
        end_record(outgoing, migration_id)
        _lose(rt, target, container, migration_id, spec.name, options.dest, cut.veth, exc.message)
    except Exception as exc:
        log.warning("container=%s migration=%s: commit on target failed (container runs there): %s", spec.name, migration_id, exc)
    try:
        rt.finish_migration(container, keep=options.keep_source)
    except Exception:
        log.exception("container=%s migration=%s: removing the source copy failed", spec.name, migration_id)
    end_record(outgoing, migration_id)
    enter("done")
    total_ms = (time.monotonic() - started) * 1000
    lazy_bytes = lazy_pages * PAGE_SIZE
    raw_bytes = (restored.stats.images_bytes if restored is not None else 0) + lazy_bytes
    phases["last_page"] = round(last_page_ms, 3)
    if restored is not None:  # the target's share of the pause
        phases["target_import"] = restored.stats.import_ms
        phases["target_restore"] = restored.stats.restore_ms
    log.info("container=%s migration=%s done mode=postcopy frozen_ms=%.1f last_page_ms=%.1f total_ms=%.1f bytes=%d lazy_pages=%d",
             spec.name, migration_id, frozen_ms, last_page_ms, total_ms, bytes_on_wire + lazy_bytes, lazy_pages)
    return MigrateResult(
        container_name=spec.name,
        dest=options.dest,
        mode="postcopy",
        stats=MigrationStats(
            frozen_ms=round(frozen_ms, 3),
            total_ms=round(total_ms, 3),
            bytes_on_wire=bytes_on_wire + lazy_bytes,
            raw_bytes=raw_bytes,
            phases_ms=phases,
            upper_entries_frozen=upper.changed,
        ),
    )


def _lose(rt: Any, target: Any, container: Any, migration_id: str, name: str, dest: str, veth: str | None, why: str) -> None:
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

    if not host_report().features().get("lazy_pages"):
        raise IncompatibleHost("this host cannot restore with lazy pages (criu uffd-noncoop, fs.pipe-max-size >= 4 MiB)",
                               phase="preflight", hint="run 'pymigrate check'; sysctl -w fs.pipe-max-size=4194304")


def receive_postcopy(host: Any, criu: Criu, migration_id: str, record: Mapping[str, Any], source: Any,
                     progress: ProgressFn | None = None, *, tls: CriuTls | None = None,
                     staged_upper: Path | None = None, before_restore: Any = None,
                     on_complete: Any = None) -> RestoreResult:
    """Unpack the (memory-less) archive, start the lazy-pages daemon towards the source's page
    server (over TLS with ``tls``), restore with lazy pages; returns once the container runs (the
    point of no return)."""
    from migrate.checkpoint import NETNS_KEY
    from migrate.restore import checked_spec, preflight, restore_request, unpack_archive
    from runtime.seccomp import check_image_filters
    from runtime.criu import start_lazy_pages

    started = time.monotonic()
    # While the archive arrives (the source is frozen already): build the container's cgroup,
    # network and shim, and start CRIU inside its cgroup (runtime.checkpointing.RestoreShell).
    shell = _early_shell(host, criu, record)
    try:
        unpacked = unpack_archive(host, source, progress=progress, staged_upper=staged_upper)
    except BaseException:
        if shell is not None:
            shell.abort()
        raise
    assert unpacked.scratch is not None
    import_ms = (time.monotonic() - started) * 1000
    daemon: CriuProcess | None = None
    try:
        manifest = unpacked.manifest
        opts = manifest.get("options", {})
        ps = opts.get("page_server")
        if not opts.get("lazy_pages") or not isinstance(ps, dict):
            raise MigrationError(f"incoming migration {migration_id}: the archive has no page server for lazy pages", phase="restore")
        options = RestoreOptions(name=record["name"], ip=record.get("ip"))
        spec = checked_spec(manifest, options, origin="peer", allow_peer_volumes=bool(getattr(host, "allow_peer_volumes", False)))
        check_image_filters(unpacked.images_dir, spec.seccomp, spec.seccomp_profile,  # CRIU restores the images' filters
                            cache_dir=host.paths.seccomp_cache)
        if options.ip:
            spec = dataclasses.replace(spec, ip=options.ip)
        if shell is not None and (shell.spec.container_id, shell.spec.name) != (spec.container_id, spec.name):
            shell.abort()  # not the container the reservation named: build it the usual way
            shell = None
        replace_id = host.replaceable_id(spec) if shell is None else spec.container_id  # the shell is ours
        preflight(host, unpacked, spec, criu=criu, replace_id=replace_id)
        if before_restore is not None:  # the archive is complete: a settlement now waits for the restore
            before_restore()
        daemon = start_lazy_pages(unpacked.images_dir, unpacked.work_dir, PageServer(str(ps["address"]), int(ps["port"])), tls=tls)
        t0 = time.monotonic()

        def request_for(root: Path) -> Any:
            return dataclasses.replace(restore_request(unpacked, spec, root, tcp_established=False), lazy_pages=True)

        try:
            if shell is not None:
                info = shell.finish(unpacked.upper_dir, request_for, restored_from=manifest.get("checkpoint_id"))
                shell = None
            else:
                info = host.restore_from(
                    spec,
                    upper_src=unpacked.upper_dir,
                    replace_id=replace_id,
                    request_for=request_for,
                    netns_key=NETNS_KEY,
                    criu=criu,
                    restored_from=manifest.get("checkpoint_id"),
                )
        except ContainerError as exc:
            # The restore's own log goes with the scratch dir: keep it, and point the error at it.
            from migrate.checkpoint import keep_criu_log
            from runtime.criu import RESTORE_LOG

            keep_criu_log(host.paths, exc, unpacked.work_dir / RESTORE_LOG, "restore")
            rc = daemon.poll()
            if rc is None or rc == 0:
                raise
            # Both failed. The lazy-pages daemon's error is often only the echo of the restore's
            # (a restored task that died never sends its pid: "PID recv: short read"), so say both.
            kept = _keep_log(host, daemon.log_path)
            raise TransferError(
                f"the restore with lazy pages from the source's page server {ps['address']}:{ps['port']} failed: "
                f"{exc.message}; the lazy-pages daemon: {first_error(daemon.log_path) or daemon.error(rc).message}"
                + (f" (log: {kept})" if kept else ""),
                phase="restore",
            ) from exc
        resumed_at = time.monotonic()
        restore_ms = (resumed_at - t0) * 1000
        rc = _wait_connected(daemon, str(ps["address"]), int(ps["port"]))
        if rc is not None and rc != 0:
            # The daemon died while the restore ran or before it reached the source's page
            # server: faults got (or will get) zero pages. Not resumed as far as the source knows
            # (we have not answered yet): remove it and fail, so the source thaws its copy.
            err = daemon.error(rc)
            try:
                host.rt.remove(info.spec.container_id, force=True)
            except ContainerError as exc:
                log.warning("migration=%s: removing the restored container failed: %s", migration_id, exc)
            raise TransferError(f"the lazy-pages daemon failed during the restore: {err.message}", phase="restore")
        session = LazySession(host, migration_id, daemon, unpacked.scratch, info.spec.container_id, on_complete)
        with _SESSIONS_LOCK:
            _SESSIONS[migration_id] = session
        session.start()
    except BaseException:
        if shell is not None:
            shell.abort()
        if daemon is not None:
            daemon.stop()
            _keep_log(host, daemon.log_path)
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


def _early_shell(host: Any, criu: Criu, record: Mapping[str, Any]) -> Any:
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
        if record.get("ip"):
            spec = dataclasses.replace(spec, ip=record["ip"])
        if host.replaceable_id(spec) is not None:
            return None
        return begin(spec, netns_key=NETNS_KEY, criu=criu, restored_from=None)
    except ContainerError as exc:
        log.warning("migration=%s: cannot build the container ahead of its images (%s): building it after them",
                    record.get("migration_id"), exc.message)
        return None


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
    with _SESSIONS_LOCK:
        session = _SESSIONS.pop(migration_id, None)
    if session is not None:
        session.stop()


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
    "receive_postcopy",
    "stop_session",
]
