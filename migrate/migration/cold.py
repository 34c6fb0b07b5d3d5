"""Cold migration: freeze, dump while the archive streams to the target, restore there.

The mode plugs into sequence.py (which owns the phases, the records, the rollback and the point of
no return). What it adds: CRIU dumps the frozen tree with leave_running (the tree stays frozen:
CRIU keeps a cgroup frozen that was frozen before it started) while the archive (upper layer,
images, manifest) streams to the target as it is written; nothing is parked on the source disk
first. With a page-server address (disk-less dump) CRIU sends the memory pages straight to the
target's page server over a socket this module opens, and only the small images and the upper
layer stream through gRPC. When both daemons agree (``MigrateOptions.compress`` not "off", a
target that answers ``pages_compressed``), that socket goes through a relay that zstd-compresses
the pages when the measured link is slow enough for it to pay (page_relay.py).

Pre-copy (precopy.py) is this mode with a ``pre_dump`` hook: the rounds run while the container
still runs, and the final dump names the last round as its parent.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import socket
import time
from typing import Any

from migrate.api import MigrateOptions, MigrateResult, MigrationMode, ProgressFn
from migrate.checkpoint import stream_dump
from migrate import failpoints
from migrate.errors import TransferError, TruncatedArchive
from migrate.migration import page_socket
from migrate.migration.page_relay import TCP_BUFFER, SourceRelay, force_sndbuf
from migrate.migration.phases import PAGE_SERVER_TIMEOUT_S, PAGE_SIZE, ArchivePusher, PreDumped, PreDumpFn, connect_page_server
from migrate.migration.sequence import Move, manifest, mark, run
from runtime.criu import Criu, DumpRequest, PageServer, SwrkCriu
from runtime.errors import CriuError

log = logging.getLogger(__name__)


class ColdMode:
    """The cold (and pre-copy) mode for sequence.run."""

    abort_target_first = False  # the copy here thaws first: the rollback's pause is this host's alone
    retry_commit = True

    def __init__(self, page_server_address: str | None = None, pre_dump: PreDumpFn | None = None) -> None:
        self.name: MigrationMode = "cold" if pre_dump is None else "precopy"
        self._address = page_server_address
        self._pre_dump = pre_dump
        self.pre: PreDumped | None = None
        self._sock: socket.socket | None = None  # the disk-less dump's connection to the target's page server
        self._relay: SourceRelay | None = None  # ... through the page relay (pages_compressed)
        self._relay_phases: dict[str, float] = {}
        self._port = 0

    def preflight(self, move: Move) -> None:
        # pre-copy's final dump goes to the page server its rounds left ready: no relay there
        # a page socket (page_socket.py) takes the relay only with --compress on: a local daemon has
        # no link to save, and through ssh the probe saw the tunnel at 1/3-1/8 of what it moved in the
        # dump while zstd took the cores ssh needs (zstd lost 8 of 10 rounds, scripts/bench_ssh.py)
        wanted = move.options.compress == "on" if page_socket.is_page_socket(self._address) else move.options.compress != "off"
        move.compressed_pages = bool(self._address) and self._pre_dump is None and wanted

    def page_server_address(self) -> str | None:
        return self._address

    def record(self) -> dict[str, Any]:
        return {}

    def prepared(self, move: Move) -> None:
        pass

    def before_freeze(self, move: Move) -> None:
        self._port = move.ticket.page_server_port
        if self._pre_dump is not None:
            move.enter("precopy", "pre-dumping while the container runs")
            assert move.staging is not None
            self.pre = self._pre_dump(move.migration_id, move.staging, move.dt)
            move.bytes_on_wire += self.pre.bytes_on_wire
            self._port = self.pre.page_server_port
        if self._address and self._port:
            if page_socket.is_page_socket(self._address):
                self._sock = page_socket.connect(move.target, self._address)
            else:
                self._sock = connect_page_server(self._address, self._port)
                # CRIU's dump splices 4 MiB at a time and stops sending while its parasite fills the
                # next pipe, and the target's page server stops reading while it writes; with
                # autotuning's <= 4 MiB (tcp_wmem) either pause stalls the other side (on 2 busy cores
                # the 1 GiB dump went 2122 -> 1451 ms, medians of 4, with 16 MiB)
                force_sndbuf(self._sock, TCP_BUFFER)
            if move.ticket.pages_compressed:
                self._open_relay(move)
            if page_socket.is_page_socket(self._address):  # a local daemon's or an ssh forward's (page_socket.py)
                self._relay_phases["page_socket"] = 1.0

    def _open_relay(self, move: Move) -> None:
        """Probe the link and decide zstd or raw (before the freeze: not in the pause)."""
        assert self._sock is not None and self._address is not None
        started = time.monotonic()
        setting = "on" if move.options.compress == "on" else "auto"
        # a page socket has no TLS: the target's daemon socket has none, an ssh tunnel encrypts
        unix = page_socket.is_page_socket(self._address)
        tls = None if unix else getattr(move.criu, "page_server_tls", None)
        self._relay = SourceRelay(self._sock, setting, tls=tls, address=self._address)
        self._sock = None  # the relay owns it now
        d = self._relay.open()
        self._relay_phases = {
            "page_probe": round((time.monotonic() - started) * 1000, 3),
            "page_link_mib_s": round(d.link_bps / (1 << 20), 1),
            "page_zstd_mib_s": round(d.compress_bps / (1 << 20), 1),
            "page_compressed": 1.0 if d.compressed else 0.0,
        }
        log.info("container=%s migration=%s page stream %s (compress=%s: link %.0f MiB/s, zstd %.0f MiB/s)", move.spec.name,
                 move.migration_id, "zstd" if d.compressed else "raw", setting, d.link_bps / (1 << 20), d.compress_bps / (1 << 20))

    def manifest_options(self, move: Move) -> dict[str, Any]:
        return {}

    def dump_request(self, move: Move, request: DumpRequest) -> DumpRequest:
        page_server = (PageServer(self._address, self._port, fd=self._sock.fileno(), plain=page_socket.is_page_socket(self._address))
                       if self._sock and self._address else None)
        if self._relay is not None and self._address:  # raw: CRIU has the connection (and its TLS) itself
            page_server = PageServer(self._address, self._port, fd=self._relay.criu_fd,
                                     plain=not self._relay.direct or page_socket.is_page_socket(self._address))
        return dataclasses.replace(
            request,
            page_server=page_server,
            parent_img=self.pre.parent_img if self.pre is not None else None,
            track_mem=self.pre is not None,
        )

    def _dev_externals(self, move: Move, request: DumpRequest) -> DumpRequest:
        """Frozen now: /dev and an empty /dev/shm as CRIU external mounts instead of its tar copies
        (runtime/dev_mounts.py; ~10 ms of the dump, ~10-30 of the restore) when the target binds
        them (cold_lazy.binds_dev); not for pre-copy, whose target restores the usual way."""
        from migrate.migration.cold_lazy import DEV_FEATURE, dev_external
        from runtime.dev_mounts import dump_externals

        features = getattr(move.target_info, "features", None) or {}
        if self._pre_dump is not None or features.get(DEV_FEATURE) is not True or not dev_external(move.spec):
            return request
        externals = dump_externals(request.pid, move.spec)
        if externals:
            log.info("container=%s migration=%s /dev%s as external mounts", move.spec.name, move.migration_id,
                     " and /dev/shm" if len(externals) > 1 else "")
        return dataclasses.replace(request, external=request.external + externals)

    def dump(self, move: Move, request: DumpRequest, pusher: ArchivePusher) -> None:
        from migrate.archive import ArchiveWriter

        sink = move.sink
        assert sink is not None and move.upper is not None
        request = self._dev_externals(move, request)
        try:
            if self._relay is not None:
                self._relay.start()
            writer = ArchiveWriter(sink, compress="zstd", level=1)
            writer.write_manifest(manifest(move, self))
            # the manifest goes now, not with CRIU's first images: the target builds the container
            # (cgroup, netns, link, shim, CRIU: cold_lazy.py) while the pages are still coming
            sink.flush()
            stats, _dump_ms = stream_dump(move.criu, request, writer, move.dt.upper_dir,
                                          on_bytes=lambda n: move.clock.emit(done=n), add_upper=move.upper)
            mark(move, "source: criu dump done")
            if self._sock is not None:
                # CRIU (gone now) sent everything; our copy of the socket is the last one open, and
                # the target's page server finishes only at its EOF.
                self._sock.close()
                self._sock = None
            if self._relay is not None:  # CRIU had its close ack: the relay ends its stream and stops
                self._relay.join(PAGE_SERVER_TIMEOUT_S * 2)
            mark(move, "source: page stream ended")
            failpoints.hit("source.dump")
            move.final_sent = True
            writer.close(trailer={"dump_stats": stats.__dict__, **move.upper.trailer})
            sink.close()
            mark(move, "source: archive sent")
            if self._relay is not None and not self._relay.direct:  # what the relay put on the wire
                counters = self._relay.counters
                move.bytes_on_wire += counters.wire_bytes
                self._relay_phases["page_zstd_busy"] = round(counters.codec_s * 1000, 3)
                self._relay_phases["page_flushes"] = float(counters.flushes)
            elif request.page_server is not None:  # the pages went over CRIU's own connection
                move.bytes_on_wire += stats.pages_written * PAGE_SIZE
        except BaseException as exc:
            cause = self._cause(exc, pusher)
            if cause is exc:
                raise
            raise cause from exc

    def _cause(self, exc: BaseException, pusher: ArchivePusher) -> BaseException:
        """End the stream after a failed dump and name the first real cause."""
        sink = pusher.sink
        page_server_used = self._sock is not None or self._relay is not None
        relay_error = self._relay.error if self._relay is not None else None
        if page_server_used and isinstance(exc, CriuError):
            # End the stream instead of cancelling it: the target then reads a truncated archive,
            # fails its receive with its page server's reason, and answers.
            sink.close()
        else:
            sink.abort(exc if isinstance(exc, Exception) else TransferError("migration interrupted"))
        if self._sock is not None:
            # The target's page server ends only at EOF on this socket, and the target answers only
            # after it: held open, the rollback waited seconds for nothing.
            self._sock.close()
            self._sock = None
        self._close_relay()
        pusher.join(timeout=30)
        cause = pusher.root_cause(exc)
        if (page_server_used and isinstance(exc, CriuError) and pusher.error is not None
                and not isinstance(pusher.error, TruncatedArchive)):
            # CRIU here only saw its page-server socket break; the target knows why (its page
            # server's own error, e.g. no space left), and says so. A target that only saw the
            # stream end knows nothing more: CRIU's own error stands.
            cause = pusher.error
        elif relay_error is not None and isinstance(cause, CriuError):
            cause = relay_error  # CRIU only saw its socket close; the relay knows why
        return cause

    def _close_relay(self) -> None:
        if self._relay is not None:
            self._relay.close()

    def end_dump(self, move: Move) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._close_relay()
        if move.staging is not None:  # nothing here needs the dump's files once it went out
            shutil.rmtree(move.staging, ignore_errors=True)

    def abandon(self, move: Move) -> None:
        pass

    def unsure(self, move: Move) -> None:
        pass

    def settled(self, move: Move) -> None:
        pass

    def resumed(self, move: Move, resumed_at: float) -> None:
        pass

    def finished(self, move: Move) -> None:
        pass

    def stats(self, move: Move) -> tuple[int, int, dict[str, float]]:
        phases = dict(self.pre.phases_ms) if self.pre is not None else {}
        return 0, move.image_bytes, {**phases, **self._relay_phases}


def migrate_cold(rt: Any, name: str, options: MigrateOptions, target: Any, *, criu: Criu | None = None,
                 progress: ProgressFn | None = None, page_server_address: str | None = None,
                 pre_dump: PreDumpFn | None = None) -> MigrateResult:
    """Move container ``name`` of runtime ``rt`` to ``target`` (a MigrationTarget + host_info), cold.

    ``page_server_address``: the target's address for a disk-less dump. When the target answers
    with a page server port, CRIU sends the memory pages straight to it and only the small images
    and the upper layer stream through gRPC; otherwise everything streams.

    ``pre_dump`` (pre-copy, precopy.py): runs the pre-dump rounds while the container still runs,
    right before the freeze; the final dump then names the last round as its parent
    (``track_mem``) and sends its pages to the page server the rounds left ready."""
    mode = ColdMode(page_server_address, pre_dump)
    return run(rt, name, options, target, mode, criu=criu or SwrkCriu(), progress=progress)
