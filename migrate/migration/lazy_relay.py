"""Post-copy's page-server connection through the page relay (issue 17: slow links).

A post-copy migration moves its memory after the resume: the target's ``criu lazy-pages`` asks
the source's lazy page server (CRIU's dump, listening once its images are written) for the pages
the container faults on, and the server pushes the rest in the background. Raw, a 1 Gbit/s link
then carries every byte of a compressible memory. When both daemons agree (PrepareIncoming
``compressed_pages`` / ``pages_compressed`` in mode postcopy) the connection runs through the
page relay's pieces (page_relay.py) instead:

    source CRIU lazy dump (listens) <-TCP loopback-> relay (zstd) <-TCP [+TLS]-> relay (unzstd) <-socketpair-> criu lazy-pages --ps-socket

With ``--compress on`` or ``auto`` (``wanted``). The target's relay listens from PrepareIncoming
on; the source dials it, probes the link before the freeze, as cold does (nothing of this is in
the pause), and decides: "on" zstd, "auto" page_relay.choose's (zstd only where it outruns the link).
Then the stream waits: the source's relay dials CRIU's page server once CRIU listens, and the
target's relay serves the lazy-pages daemon once it starts (a socketpair end, ``--ps-socket``, so
no local process can take the target's end of the stream).

Unlike cold's one-way stream this one is request and answer: a faulting task waits for its pages,
so the compressed direction (source to target) flushes zstd after every burst CRIU wrote
(``idle_flush_s`` 0) and uses no zstd workers (a multi-threaded flush waits for its jobs). The
requests (target to source) are small and go raw.

What limits it at 1 Gbit/s (1 GiB memhog, half random then half text; the source's eth0 sampled
every 10 ms, the lazy-pages log's request -> UFFDIO_COPY times): the random half keeps the link
busy (a 3.2 MiB request answered every ~27 ms), the text half does not: its requests took 30-230 ms
each at load 3-5 for 0.6 MiB of wire, because one zstd context compressed the text at ~400 MiB/s
of a core when it got one (2-5.5 s inside zstd per GiB at load 3-5). More requests in flight (4 or
8, a CRIU test build) and zstd's own workers (threads=2, any job size: a flush waits for its jobs)
did not shorten it, nor did zstd -3 (5.8x instead of 5.5x on the text, longer inside zstd). So the
answers go as independent frames of 1 MiB, compressed on two threads (page_relay.FramesCompress),
when the target's relay reads them (it says so in the probe; an older one gets one zstd frame):
interleaved A/B at load 5.7-7.9, 7 pairs, total frames / one frame median 0.89x. The relay's
loop does not wait for those threads (it waited 10-15 ms an answer of text, and the next request
waited with it), and the frames are zstd -3 (page_relay.FRAME_LEVEL). What is left at 1 Gbit/s:
the text half is CPU-bound on this 2-core lab (source zstd ~2.1 ms a MiB, target unzstd ~0.9, on
the same cores as both CRIUs): 25-35 MiB/s of wire for ~3 s where the link takes 115.

With TLS the relays do it around the zstd bytes and CRIU talks plain on both sides; its page
server then lets in only this host (runtime.port_guard: 127.0.0.1, where the relay dials from;
a process of this host could still race the relay to it, as to any loopback-only port). Should
the decision be raw without TLS (a setting other than "on"), the relays step aside after the
probe and the lazy-pages daemon dials CRIU's page server itself, as without a relay.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any

from migrate.migration.page_relay import (
    HANDSHAKE_TIMEOUT_S,
    Codec,
    Compress,
    Decompress,
    FramesCompress,
    PageRelayError,
    Plain,
    SourceRelay,
    TargetRelay,
    listen_once,
    pipe,
    pump,
    socketpair,
)

log = logging.getLogger(__name__)

FLUSH_S = 0.0  # flush the compressor as soon as CRIU's burst is read: a fault waits for those pages
CRIU_HOST = "127.0.0.1"  # the source relay's way to CRIU's lazy page server (it listens on every address)

_LOCK = threading.Lock()
_TARGETS: dict[str, LazyTargetRelay] = {}  # migration id -> its relay, until receive_postcopy takes it


class LazySourceRelay(SourceRelay):
    """The source's end: ``open`` (TLS, probe, decision: page_relay.SourceRelay) before the freeze;
    ``connect_criu`` once CRIU's lazy page server listens, which starts the pump; ``join`` after
    the dump returned; ``close`` always. ``direct``: raw without TLS, the target's lazy-pages
    daemon dials CRIU itself and this relay only closes its connection."""

    def __init__(self, sock: socket.socket, setting: str, *, tls: Any = None, address: str = "") -> None:
        super().__init__(sock, setting, tls=tls, address=address)
        self._pair_for_criu = False
        self._want_frames = True  # each answer compressed on two threads, if the target reads frames

    def start(self) -> None:
        """Nothing before CRIU listens (``connect_criu`` starts the pump)."""

    def connect_criu(self, port: int) -> None:
        if self.direct:
            self._close_sockets()  # the target's relay steps aside on the same decision
            return
        assert self.decision is not None, "open() first"
        conn = socket.create_connection((CRIU_HOST, port), timeout=HANDSHAKE_TIMEOUT_S)
        conn.settimeout(None)
        self._local = conn
        # no zstd workers: a multi-threaded flush waits for its jobs, and post-copy flushes every answer
        # (measured at 1 Gbit/s, 1 GiB: 2 workers 10.6 s to the last page, none 8.8 s); frames of an
        # answer on two threads instead when the target reads them (page_relay.FramesCompress)
        codec: Codec = Plain()
        if self.decision.compressed:
            codec = FramesCompress() if self.frames else Compress(threads=0)
        pipes = [pipe(conn, self.remote, codec, self.counters, idle_flush_s=FLUSH_S),
                 pipe(self.remote, conn, Plain(), idle_flush_s=FLUSH_S)]
        self._thread = threading.Thread(target=self._run, args=(pipes,), name="lazy-page-relay-source", daemon=True)
        self._thread.start()


class LazyTargetRelay(TargetRelay):
    """The target's end: accepts the source's connection (TLS, the probe's echo, the choice), then
    waits for ``attach`` (the lazy-pages daemon's socket) and pumps until both sides ended.
    ``decided`` says whether the lazy-pages daemon needs this relay (``relayed``) or dials the
    source's CRIU itself (raw without TLS)."""

    def __init__(self, listener: socket.socket, *, tls: Any = None, allowed: str | None = None, timeout_s: int = 15) -> None:
        self.decided = threading.Event()
        self._attached = threading.Event()
        super().__init__(listener, Path("/nonexistent"), tls=tls, allowed=allowed, timeout_s=timeout_s)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def relayed(self) -> bool:
        return bool(self.compressed) or self._tls is not None

    def _run(self) -> None:
        try:
            conn = self._handshake(self._accept())
            self.decided.set()
            if not self.relayed:
                return  # _close below: the source closes its end too
            while not self._attached.wait(0.5):
                if self._stop.is_set():
                    raise PageRelayError("the page relay was stopped before the lazy-pages daemon started")
            assert self._local is not None
            codec: Codec = Decompress(frames=self.frames) if self.compressed else Plain()
            pump([pipe(conn, self._local, codec, self.counters, idle_flush_s=FLUSH_S),
                  pipe(self._local, conn, Plain(), idle_flush_s=FLUSH_S)], self._stop)
        except Exception as exc:  # noqa: BLE001  (OSError, PageRelayError: all end this transfer)
            self.failure = exc if isinstance(exc, PageRelayError) else PageRelayError(f"the page relay failed: {exc}")
            if not self._stop.is_set():
                log.warning("lazy page relay from the source failed: %s", self.failure)
        finally:
            self.decided.set()  # a failed handshake: wait_decided raises the failure
            self._close()  # the lazy-pages daemon reads EOF: it fails unless it had every page

    def wait_decided(self, timeout_s: float) -> bool:
        """Whether the lazy-pages daemon goes through this relay; PageRelayError if it failed or
        the source never probed (it does so before its freeze)."""
        if not self.decided.wait(timeout_s) or self.failure is not None or self.compressed is None:
            raise self.failure or PageRelayError("the source did not open the lazy page relay")
        return self.relayed

    def attach(self) -> socket.socket:
        """The lazy-pages daemon's end of the stream (``--ps-socket``; the caller closes its copy
        once the daemon started)."""
        self._local, theirs = socketpair()
        self._attached.set()
        return theirs

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._close()
        self._thread.join(timeout_s)


def start_target(migration_id: str, address: str, port: int, *, tls: Any = None, allowed: str | None = None,
                 timeout_s: int = 15) -> LazyTargetRelay:
    """The target's relay listening on ``address``:``port`` for migration ``migration_id``, kept
    until ``take`` (receive_postcopy) or ``stop`` (abort)."""
    relay = LazyTargetRelay(listen_once(address, port), tls=tls, allowed=allowed, timeout_s=timeout_s)
    with _LOCK:
        _TARGETS[migration_id] = relay
    return relay


def take(migration_id: str) -> LazyTargetRelay | None:
    with _LOCK:
        return _TARGETS.pop(migration_id, None)


def stop(migration_id: str) -> None:
    """At abort: the relay of a migration whose lazy-pages daemon never started. Idempotent."""
    relay = take(migration_id)
    if relay is not None:
        relay.stop()


# -- what PostcopyMode (postcopy.py) uses on the source -------------------------------------------

def wanted(compress: str, dest: str) -> bool:
    """Ask the target for a relay: with --compress on or auto, and not for unix: (this host) and
    ssh:// targets (the lazy-pages daemon dials this host's address, which the tunnel does not
    carry). ``auto`` lets the probe decide before the freeze (page_relay.choose, as cold): at
    1 Gbit/s zstd, at 10 Gbit/s and on loopback raw, and then (without TLS) both relays step
    aside and the lazy-pages daemon dials CRIU itself: only the probe (~8 MiB, before the
    freeze) is left of them. With CRIU's background transfer answered early
    (4.1.1-uffd-background-xfer.patch) compression pays at 1 Gbit/s: 1 GiB half text, total
    0.82x raw's (scripts/bench.py migrate --mode postcopy:on --link-rate 1gbit; it was 1.41x)."""
    return compress in ("on", "auto") and not dest.startswith(("unix:", "ssh://"))


class SourceLink:
    """The source's relay of one post-copy migration, if the target started one."""

    def __init__(self) -> None:
        self.relay: LazySourceRelay | None = None
        self.phases: dict[str, float] = {}

    @property
    def plain(self) -> bool:
        """CRIU's page server talks plain to this host's relay (only loopback may reach it)."""
        return self.relay is not None and not self.relay.direct

    def open(self, move: Any, address: str) -> None:
        """Dial the target's relay, probe, decide (before the freeze); nothing without one."""
        import time

        from migrate.migration.phases import connect_page_server

        port = move.ticket.page_server_port
        if not (move.ticket.pages_compressed and port):
            return
        started = time.monotonic()
        setting = "on" if move.options.compress == "on" else "auto"
        relay = LazySourceRelay(connect_page_server(address, port), setting, tls=getattr(move.criu, "page_server_tls", None),
                                address=address)
        self.relay = relay
        d = relay.open()
        self.phases = {"page_probe": round((time.monotonic() - started) * 1000, 3),
                       "page_link_mib_s": round(d.link_bps / (1 << 20), 1),
                       "page_zstd_mib_s": round(d.compress_bps / (1 << 20), 1),
                       "page_compressed": 1.0 if d.compressed else 0.0,
                       "page_frames": 1.0 if relay.frames else 0.0}  # zstd frames on two threads
        log.info("container=%s migration=%s lazy page stream %s (compress=%s: link %.0f MiB/s, zstd %.0f MiB/s)",
                 move.spec.name, move.migration_id, "zstd frames" if relay.frames else "zstd" if d.compressed else "raw", setting,
                 d.link_bps / (1 << 20), d.compress_bps / (1 << 20))

    def criu_listens(self, port: int) -> None:
        if self.relay is not None:
            try:
                self.relay.connect_criu(port)
            except OSError as exc:
                raise PageRelayError(f"the lazy page relay cannot reach criu's page server on port {port}: {exc}",
                                     phase="dump") from exc

    def join(self, timeout_s: float) -> PageRelayError | None:
        """After the dump returned: the relay's end (its error, if it failed)."""
        if self.relay is None:
            return None
        try:
            self.relay.join(timeout_s)
        except PageRelayError as exc:
            return exc
        finally:
            self._count()
        return None

    def _count(self) -> None:
        relay = self.relay
        if relay is not None and not relay.direct:
            self.phases["page_wire_bytes"] = float(relay.counters.wire_bytes)
            self.phases["page_raw_bytes"] = float(relay.counters.raw_bytes)
            self.phases["page_zstd_busy"] = round(relay.counters.codec_s * 1000, 3)
            self.phases["page_flushes"] = float(relay.counters.flushes)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()


def start_for(migration_id: str, address: str, source: str | None, *, tls: Any = None) -> int:
    """The target's relay for a post-copy migration (PrepareIncoming): its port, or 0 when it
    cannot listen (the source's lazy-pages link then goes raw, as without a relay)."""
    from migrate.migration.phases import PAGE_SERVER_TIMEOUT_S

    try:  # port 0: the kernel's pick, nothing to race for between choosing and binding
        relay = start_target(migration_id, address, 0, tls=tls, allowed=source, timeout_s=PAGE_SERVER_TIMEOUT_S)
    except OSError as exc:
        log.warning("migration=%s: no lazy page relay on %s (%s): the pages go raw", migration_id, address, exc)
        return 0
    return relay.port
