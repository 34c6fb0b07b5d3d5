"""A relay that compresses CRIU's page-server stream on the wire (issue 17: slow links).

CRIU sends a disk-less dump's pages over one connection to ``criu page-server``, uncompressed.
On a 1 Gbit/s link a compressible workload then waits on bytes zstd could have saved, so when the
two daemons agree (PrepareIncoming ``compressed_pages`` / ``pages_compressed``) the connection
runs through a relay on each side instead:

    source CRIU dump --socketpair--> relay (zstd) --TCP [+TLS]--> relay (unzstd) --socketpair--> criu page-server --ps-socket

The page-server protocol is one way but for small replies (the final close ack): the forward
direction (source to target) is a zstd stream, the reverse one stays raw. With TLS the relays do
it (Python ssl, the daemons' mTLS material) around the compressed bytes, and CRIU talks plain
over its socketpair: encrypted bytes would not compress.

Before the freeze the source measures the link on the same connection (a probe the target
echoes) and decides (``choose``): zstd when it compresses clearly faster than the link moves raw
bytes, raw otherwise (10 Gbit/s, loopback). The decision is one byte after the probe. Raw
without TLS, the relays step aside: CRIU gets the connection itself on both sides, so a fast
link pays only the probe, before the freeze. With TLS the relays stay (a plain copy when raw):
the TLS session they opened for the probe cannot be handed to CRIU.

Each side's relay is one thread and one select loop: an ssl socket must not be read and written
from two threads at once, and zstd and the socket calls release the GIL anyway.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from migrate.errors import TransferError

log = logging.getLogger(__name__)

MAGIC = b"PMR1"
HELLO = struct.Struct("!4sII")  # magic, warm-up bytes, timed probe bytes
WARM_BYTES = 2 << 20  # lets TCP leave slow start before the timed part (else the link looks slow)
PROBE_BYTES = 6 << 20
RAW, ZSTD = b"R", b"Z"
# zstd as a run of independent frames (FramesCompress): only to a target whose relay reads them. The
# source asks with an odd timed-probe size (an older target just drains the extra byte and answers
# TIMED); a target that reads frames answers TIMED_FRAMES instead, an older source never asks.
FRAMES = b"F"
TIMED, TIMED_FRAMES = b"T", b"t"
FRAME_BYTES = 1 << 20  # the raw bytes of one frame: a 3.2 MiB lazy-pages answer is four, on two threads
FRAME_WORKERS = 2
FRAME_BACKLOG = 16  # frames in compression at most before ``feed`` waits for the oldest
# zstd -3 for frames: on the 1 GiB memhog's text it compresses as fast as -1 (~470 MiB/s a core),
# 5.9x instead of 5.5x, and decompresses ~1.2 GB/s instead of ~0.8 (on the target's cores, which
# the text half of a post-copy shares with the source's zstd on this 2-core lab). A 1 MiB frame
# never needs -3's larger window. Not for cold's stream (zstd's workers, -3's larger jobs): its
# 1 Gbit/s pause median 6221 vs 5562 ms at -1 (3 pairs interleaved, load 3.4-4.3)
FRAME_LEVEL = 3
FRAME_SLICE_MIN, FRAME_SLICE = 1 << 10, 64 << 10  # input per decompress call of a FRAMES stream (Decompress)
CHUNK = 1 << 20
HIGH_WATER = 8 << 20  # stop reading a side while this much waits for the other
LEVEL = 1  # zstd -1: ~1 GB/s per core here, far above a 1 Gbit/s link; higher levels gain little on pages
# compress when zstd takes in raw bytes this much faster than the link moves them: a 1.7x ratio
# pays only if zstd is well ahead, and the calibration (one moment, one host) is rough. 1 Gbit/s
# (114 MiB/s) against zstd's 390-980 MiB/s seen here: zstd; 10 Gbit/s and loopback (>1 GiB/s): raw
MARGIN = 2.0
HANDSHAKE_TIMEOUT_S = 10.0
SO_SNDBUFFORCE = 32  # linux/socket.h (the socket module lacks the name)
PAIR_BUFFER = 8 << 20
TCP_BUFFER = 16 << 20
IDLE_FLUSH_S = 0.002  # input quiet this long: flush the compressor (CRIU may wait for a reply)


class PageRelayError(TransferError):
    """The relayed page stream failed: a corrupt or truncated zstd stream, a bad handshake, a
    broken connection. Both ends of the relay are closed, so CRIU on either side fails too."""


@dataclasses.dataclass(frozen=True)
class Decision:
    """What ``choose`` decided and from what (the result's phases and the daemon log)."""

    compressed: bool
    link_bps: float  # raw bytes per second the probe moved
    compress_bps: float  # raw bytes per second zstd took in (min of compress, decompress)
    mode: str  # "auto", "on"


@dataclasses.dataclass
class Counters:
    raw_bytes: int = 0  # page-server bytes CRIU sent (forward direction, before zstd)
    wire_bytes: int = 0  # what crossed the link in that direction
    codec_s: float = 0.0  # time the relay's thread spent in zstd (it moves no bytes meanwhile)
    flushes: int = 0


# -- codecs: what one direction does to its bytes ---------------------------------------------------

class Codec(Protocol):
    def feed(self, data: bytes) -> bytes:
        """Bytes to send for ``data`` (a compressor may keep some back until ``flush``)."""

    def flush(self) -> bytes:
        """Whatever ``feed`` kept back: the input went idle."""

    def end(self) -> bytes:
        """The stream's tail at EOF (raises PageRelayError when the input was incomplete)."""


class Plain:
    def feed(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""

    def end(self) -> bytes:
        return b""


class Compress:
    def __init__(self, level: int = LEVEL, threads: int | None = None) -> None:
        import zstandard

        self._zstd = zstandard
        workers = threads if threads is not None else _threads()
        self._obj = zstandard.ZstdCompressor(level=level, threads=workers).compressobj()

    def feed(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush(self._zstd.COMPRESSOBJ_FLUSH_BLOCK)

    def end(self) -> bytes:
        return self._obj.flush(self._zstd.COMPRESSOBJ_FLUSH_FINISH)


class FramesCompress:
    """zstd as independent frames of FRAME_BYTES, compressed on FRAME_WORKERS threads (FRAMES).

    Post-copy's stream is request and answer: the relay must flush each answer, and one zstd
    context (its own workers too: a flush waits for its jobs) compresses it on one core, ~400 MiB/s
    of text here, where 1 Gbit/s would take ~650 MiB/s of it. Frames of one answer compress at
    once on two threads (zstd releases the GIL) and go out in order; each frame is ~0.1% larger
    than one long stream. The threads are shared by the daemon's streams (``_frame_pool``).

    The relay's pump does not wait for them (``send_held``, ``collect``): a frame done wakes its
    select loop (``wake_fd``). Waiting there (``flush``) kept the next lazy-pages request from
    CRIU for the 10-15 ms an answer of text took to compress at 1 Gbit/s (the relay's trace), so
    CRIU's page server, zstd and the link took turns through the text half (~35 MiB/s of wire)."""

    def __init__(self, level: int = FRAME_LEVEL) -> None:
        import zstandard

        self._zstd = zstandard
        self._level = level
        self._local = threading.local()  # a compressor per thread (one must not be shared)
        self._held = bytearray()  # input short of a frame, until ``flush``
        self._jobs: collections.deque[Any] = collections.deque()
        self._waker: _Waker | None = None

    @property
    def wake_fd(self) -> int:
        """Readable once a frame was compressed since the last ``collect``."""
        if self._waker is None:
            self._waker = _Waker()
        return self._waker.fd

    def _compress(self, data: bytes) -> bytes:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = self._zstd.ZstdCompressor(level=self._level)
        out: bytes = cctx.compress(data)
        return out

    def _submit(self, data: bytes) -> None:
        if len(self._jobs) >= FRAME_BACKLOG:
            self._jobs[0].result()  # bound what waits for the threads (the rest of ``feed`` stays async)
        job = _frame_pool().submit(self._compress, data)
        if self._waker is not None:
            job.add_done_callback(self._waker.wake)
        self._jobs.append(job)

    def _done(self, wait: bool) -> bytes:
        """The frames compressed so far, in order (all of them when ``wait``)."""
        out = []
        while self._jobs and (wait or self._jobs[0].done()):
            out.append(self._jobs.popleft().result())
        return b"".join(out)

    def feed(self, data: bytes) -> bytes:
        self._held += data
        while len(self._held) >= FRAME_BYTES:
            self._submit(bytes(self._held[:FRAME_BYTES]))
            del self._held[:FRAME_BYTES]
        return self._done(wait=False)

    def send_held(self) -> bytes:
        """The held input goes to the threads as a frame; the frames done so far, without waiting
        for the rest (``collect`` takes them once ``wake_fd`` says so)."""
        if self._held:
            self._submit(bytes(self._held))
            self._held.clear()
        return self._done(wait=False)

    def collect(self) -> bytes:
        if self._waker is not None:
            self._waker.clear()  # before looking: a frame done after this wakes the loop again
        return self._done(wait=False)

    def flush(self) -> bytes:
        # what ``send_held`` took is kept: a frame done since the last ``collect`` (the pump reads
        # EOF in the step its job ends) was dropped here once, cutting the stream's tail
        return self.send_held() + self._done(wait=True)

    def end(self) -> bytes:
        out = self.flush()
        if self._waker is not None:
            self._waker.close()
        return out


class _Waker:
    """A pipe a worker thread makes readable to wake a select loop; closed under its lock, so a
    late callback never writes to a descriptor number reused since."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closed = False

    @property
    def fd(self) -> int:
        return self._r

    def wake(self, _job: Any = None) -> None:
        with self._lock:
            if not self._closed:
                try:
                    os.write(self._w, b"x")
                except BlockingIOError:
                    pass  # full: the loop is woken already

    def clear(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                while os.read(self._r, 4096):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._r)
                os.close(self._w)

    def __del__(self) -> None:
        self.close()


_FRAME_POOL: Any = None
_FRAME_POOL_LOCK = threading.Lock()


def _frame_pool() -> Any:
    """The daemon's FRAME_WORKERS threads for FramesCompress, made on first use."""
    global _FRAME_POOL
    with _FRAME_POOL_LOCK:
        if _FRAME_POOL is None:
            import concurrent.futures

            _FRAME_POOL = concurrent.futures.ThreadPoolExecutor(FRAME_WORKERS, thread_name_prefix="page-zstd")
        return _FRAME_POOL


DECOMPRESS_BOUND = CHUNK  # the most one decompress call returns (a queue holds < HIGH_WATER + this)


class Decompress:
    """zstd's decompression, at most ``bound`` bytes of output per call.

    The peer's bytes are untrusted and zstd expands up to ~32000x (a 32 KiB recv can be 1 GiB of
    one byte): a call that returned all of it would make the target daemon hold it at once. So
    ``feed`` returns at most ``bound`` bytes and zstd keeps the rest (``pending``); the pipe takes
    it with ``drain`` while its queue has room, before it reads more from the socket (the peer
    then waits in TCP's window). python-zstandard's decompressobj has no output limit;
    ``compression.zstd`` (Python 3.14, backports.zstd before) has ``max_length``."""

    def __init__(self, bound: int = DECOMPRESS_BOUND, *, frames: bool = False) -> None:
        self._zstd = zstd = _bounded_zstd()
        self._errors = (zstd.ZstdError, EOFError)
        self._obj = zstd.ZstdDecompressor()
        self.bound = bound
        # a run of frames (FRAMES): a frame's end is not the stream's. zstd hands back what follows
        # a frame's end as a copy (unused_data), so the input goes in slices, 1 KiB after a frame
        # began, doubling up to FRAME_SLICE: a peer sending tiny frames costs ~1 KiB of copying per
        # frame, not the rest of a 1 MiB read each time
        self.frames = frames
        self._rest = memoryview(b"")  # frames: input not given to zstd yet
        self._slice = FRAME_SLICE_MIN
        self._in_frame = False  # frames: the current frame has begun (a cut there is an error)

    @property
    def pending(self) -> bool:
        """zstd holds output back (the last call hit ``bound``), or (frames) input is left that
        zstd has not seen: ``drain`` before ``feed``."""
        if self._obj.eof:
            return self.frames and (bool(self._rest) or bool(self._obj.unused_data))
        return not self._obj.needs_input or bool(self._rest)

    def flush(self) -> bytes:
        return b""

    def feed(self, data: bytes) -> bytes:
        if self._obj.eof and data and not self.frames:
            raise PageRelayError("the compressed page stream goes on after its end mark")
        if self.frames:
            self._rest = memoryview(bytes(self._rest) + data if self._rest else data)  # the relay drains first: rarely a copy
            return self._next_frames()
        return self._decompress(data)

    def drain(self) -> bytes:
        """The next at most ``bound`` bytes of what zstd holds back (b"" when nothing)."""
        return self._next_frames() if self.frames else self._decompress(b"")

    def _next_frames(self) -> bytes:
        """Up to ``bound`` bytes out of the slices and frames at hand (one call, not one a slice:
        the relay's loop turns once per call)."""
        out: list[bytes] = []
        size = 0
        while size < self.bound and self.pending:
            piece: bytes | memoryview = b""
            if self._obj.eof:  # the next frame begins with what the last one left
                piece = self._obj.unused_data or self._take()
                self._obj = self._zstd.ZstdDecompressor()
                self._in_frame = False
                self._slice = FRAME_SLICE_MIN
            elif self._obj.needs_input:
                piece = self._take()
            self._in_frame = self._in_frame or bool(piece)
            got = self._decompress(piece, self.bound - size)
            if not got and not piece:
                break  # nothing moved (zstd wants input it cannot have yet)
            out.append(got)
            size += len(got)
        return b"".join(out)

    def _take(self) -> memoryview:
        piece, self._rest = self._rest[:self._slice], self._rest[self._slice:]
        self._slice = min(2 * self._slice, FRAME_SLICE)
        return piece

    def _decompress(self, data: bytes | memoryview, max_length: int = 0) -> bytes:
        try:
            out: bytes = self._obj.decompress(data, max_length=max_length or self.bound)
        except self._errors as exc:
            raise PageRelayError(f"the compressed page stream is corrupt: {exc}") from exc
        if self._obj.eof and self._obj.unused_data and not self.frames:
            raise PageRelayError("the compressed page stream goes on after its end mark")
        return out

    def end(self) -> bytes:
        # frames: the stream may end between frames (CRIU's own close command and its answer say
        # whether the transfer was whole), never inside one
        if self.frames:
            cut = self._in_frame and not self._obj.eof or self.pending
        else:
            cut = not self._obj.eof
        if cut:
            raise PageRelayError("the compressed page stream ended before its end mark (truncated)")
        return b""


def _bounded_zstd() -> Any:
    """The zstd module whose stream decompressor takes ``max_length``: the standard library's
    from Python 3.14 on, its backport (PyPI backports.zstd, the same code) before."""
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd
    return zstd


def _threads() -> int:
    # zstd's own workers compress while this thread moves bytes; one core: no worker (0)
    cores = os.cpu_count() or 1
    return cores if cores > 1 else 0


# -- the pump: one select loop for both directions --------------------------------------------------

class _Pipe:
    """One direction: ``src`` -> codec -> ``dst``."""

    def __init__(self, src: socket.socket, dst: socket.socket, codec: Codec, counters: Counters | None = None,
                 idle_flush_s: float = IDLE_FLUSH_S) -> None:
        self.src, self.dst, self.codec, self.counters = src, dst, codec, counters
        self.idle_flush_s = idle_flush_s  # post-copy's request/response stream: 0, flush every burst
        # what waits for ``dst``, as views: a partial send drops a prefix without copying the rest
        self.out: collections.deque[memoryview] = collections.deque()
        self.queued = 0
        self.eof = False  # src ended and its tail is in ``out``
        self.done = False  # ... and ``dst`` was shut for writing
        self.held_since: float | None = None  # the codec may hold input back since then (flush)
        # a codec whose work finishes on other threads (FramesCompress): its output is collected when
        # this descriptor wakes the pump, which never waits for it
        self.frames = codec if isinstance(codec, FramesCompress) else None
        self.wake_fd = self.frames.wake_fd if self.frames is not None else None

    def wants_read(self) -> bool:
        return not self.eof and self.queued < HIGH_WATER

    def _queue(self, data: bytes) -> None:
        if data:
            self.out.append(memoryview(data))
            self.queued += len(data)

    def backlog(self) -> bool:
        """The codec holds output back (a bounded Decompress): ``read`` produces it first."""
        return isinstance(self.codec, Decompress) and self.codec.pending

    def read(self) -> None:
        """What ``src`` brought, through the codec; while the codec holds output back, that output
        instead: ``src`` waits until this side's queue took it (the back-pressure on the peer)."""
        held = self.backlog()
        data = b""
        if not held:
            try:
                data = self.src.recv(CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return
            if not data:
                tail = self.codec.end()
                self._queue(tail)
                if self.counters is not None and not isinstance(self.codec, Decompress):
                    self.counters.wire_bytes += len(tail)
                self.eof = True
                return
        started = time.monotonic()
        out = self.codec.drain() if held and isinstance(self.codec, Decompress) else self.codec.feed(data)
        if not isinstance(self.codec, Plain):
            self.held_since = time.monotonic()
            if self.counters is not None:
                self.counters.codec_s += self.held_since - started
        if self.counters is not None:  # raw: CRIU's side of the relay; wire: the link's
            unpacks = isinstance(self.codec, Decompress)
            self.counters.raw_bytes += len(out) if unpacks else len(data)
            self.counters.wire_bytes += len(data) if unpacks else len(out)
        self._queue(out)

    def flush_if_idle(self, readable: bool, now: float) -> None:
        """Flush what the codec holds once the input paused IDLE_FLUSH_S: CRIU waits for replies
        (the close ack) after small messages, and must not wait for zstd. Not sooner: every
        flush ends a zstd block (and a job of its workers) early."""
        if self.held_since is not None and not readable and now - self.held_since >= self.idle_flush_s:
            out = self.frames.send_held() if self.frames is not None else self.codec.flush()
            self._queue(out)
            self.held_since = None
            if self.counters is not None:
                self.counters.codec_s += time.monotonic() - now
                self.counters.flushes += 1
                self.counters.wire_bytes += len(out)  # a compressor's held-back bytes (a decompressor's flush is empty)

    def collect(self) -> None:
        """The frames the codec's threads finished (``wake_fd`` was readable), in order."""
        assert self.frames is not None
        out = self.frames.collect()
        self._queue(out)
        if self.counters is not None:
            self.counters.wire_bytes += len(out)

    def write(self) -> None:
        head = self.out[0]
        try:
            n = self.dst.send(head[:CHUNK])
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return
        self.queued -= n
        if n == len(head):
            self.out.popleft()
        else:
            self.out[0] = head[n:]

    def finish(self) -> None:
        if self.eof and not self.out and not self.done:
            self.done = True
            try:
                # the peer reads EOF: the end of this direction. The base class's shutdown: an
                # SSLSocket's own drops its TLS state, and the other direction still needs it.
                socket.socket.shutdown(self.dst, socket.SHUT_WR)
            except OSError:
                pass  # the reader is gone already (CRIU exited after its close ack)


def pipe(src: socket.socket, dst: socket.socket, codec: Codec, counters: Counters | None = None, *,
         idle_flush_s: float = IDLE_FLUSH_S) -> _Pipe:
    """One direction for ``pump`` (lazy_relay.py's relays build theirs with it)."""
    return _Pipe(src, dst, codec, counters, idle_flush_s)


def pump(pipes: list[_Pipe], stop: threading.Event | None = None) -> None:
    """Move bytes until every pipe reached its EOF and was drained. Raises PageRelayError (the
    sockets are the caller's to close: that is what tells CRIU)."""
    try:
        for s in {id(p.src): p.src for p in pipes}.values():
            s.setblocking(False)
        while not all(p.done for p in pipes):
            if stop is not None and stop.is_set():
                raise PageRelayError("the page relay was stopped")
            _step(pipes)
    except PageRelayError:
        raise
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise PageRelayError(f"the page stream broke: {exc}") from exc


def _step(pipes: list[_Pipe]) -> None:
    readers = [p for p in pipes if p.wants_read()]
    writers = [p for p in pipes if p.out]
    # an ssl socket may hold decrypted bytes select cannot see, a bounded Decompress output; then
    # select only polls (the other sockets go on meanwhile)
    ready_now = [p.src for p in readers if p.backlog() or (isinstance(p.src, ssl.SSLSocket) and p.src.pending())]
    held = [p.idle_flush_s for p in pipes if p.held_since is not None]
    timeout = 0.0 if ready_now else min(held) if held else 0.5
    woken = {p.wake_fd: p for p in pipes if p.wake_fd is not None and not p.eof}
    r, w, _ = select.select([p.src for p in readers] + list(woken), [p.dst for p in writers], [], timeout)
    r += ready_now
    now = time.monotonic()
    for fd, p in woken.items():
        if fd in r:
            p.collect()
    for p in readers:
        if p.src in r:
            p.read()
        p.flush_if_idle(p.src in r, now)
    for p in writers:
        if p.dst in w:
            p.write()
    for p in pipes:
        p.finish()


# -- the link probe and the decision (source side) --------------------------------------------------

_calibrated: float | None = None


def compress_rate() -> float:
    """Raw bytes per second zstd takes in (compress and decompress, the slower), measured once
    per daemon on half random, half text data (a page stream's two extremes)."""
    global _calibrated
    if _calibrated is None:
        import zstandard

        words = b"the page server sends memory of a frozen container to its target host " * 2000
        sample = os.urandom(4 << 20) + (words * (1 + (4 << 20) // len(words)))[: 4 << 20]
        started = time.perf_counter()
        packed = zstandard.ZstdCompressor(level=LEVEL, threads=_threads()).compress(sample)
        mid = time.perf_counter()
        zstandard.ZstdDecompressor().decompress(packed, max_output_size=len(sample))
        done = time.perf_counter()
        _calibrated = len(sample) / max(mid - started, done - mid, 1e-6)
    return _calibrated


class _Streams:
    """Source page streams open in this daemon at once (issue 17: concurrent migrations).

    They share the cores, so each gets a share of zstd's calibrated rate in ``auto``'s choice
    (under CPU contention the probe sees a slow "link" that zstd would only slow further), and
    only a lone stream gets zstd worker threads: a context with workers holds their job buffers
    (measured: +18 MiB RSS with 2 workers, +1.3 MiB without), ten at once +186 MiB."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0

    def enter(self) -> int:
        with self._lock:
            self.open += 1
            return self.open

    def leave(self) -> None:
        with self._lock:
            self.open = max(0, self.open - 1)


STREAMS = _Streams()


def zstd_threads(streams: int) -> int:
    """zstd workers for a compressor while ``streams`` page streams are open (this one included)."""
    return _threads() if streams <= 1 else 0


def choose(setting: str, link_bps: float, zstd_bps: float) -> Decision:
    """zstd when ``setting`` is "on", or "auto" and zstd outruns the link by MARGIN (else raw:
    a fast link moves raw pages sooner than zstd could pack them)."""
    compressed = setting == "on" or zstd_bps > MARGIN * link_bps
    return Decision(compressed, link_bps, zstd_bps, "on" if setting == "on" else "auto")


def probe_link(sock: socket.socket, *, ask_frames: bool = False) -> tuple[float, bool]:
    """Raw bytes per second from here to the target's relay: a warm-up, then a timed part the
    target acknowledges once it has it all; and whether the target reads FRAMES (asked with
    ``ask_frames``: the timed part one byte longer)."""
    filler = os.urandom(1 << 20)  # random: what the link does with incompressible bytes
    timed = PROBE_BYTES + 1 if ask_frames else PROBE_BYTES
    sock.sendall(HELLO.pack(MAGIC, WARM_BYTES, timed))
    _send_filler(sock, filler, WARM_BYTES)
    _expect(sock, b"W")
    started = time.monotonic()
    _send_filler(sock, filler, timed)
    got = _recv_exact(sock, 1)
    if got not in (TIMED, TIMED_FRAMES) or (got == TIMED_FRAMES and not ask_frames):
        raise PageRelayError(f"the target's page relay answered {got!r}, not {TIMED!r}")
    return timed / max(time.monotonic() - started, 1e-6), got == TIMED_FRAMES


def _send_filler(sock: socket.socket, filler: bytes, size: int) -> None:
    while size > 0:
        chunk = filler[: min(size, len(filler))]
        sock.sendall(chunk)
        size -= len(chunk)


def _expect(sock: socket.socket, want: bytes) -> None:
    got = _recv_exact(sock, len(want))
    if got != want:
        raise PageRelayError(f"the target's page relay answered {got!r}, not {want!r}")


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        data = sock.recv(size - len(buf))
        if not data:
            raise PageRelayError("the page relay's peer closed the connection during the handshake")
        buf += data
    return bytes(buf)


def _drain(sock: socket.socket, size: int) -> None:
    while size > 0:
        data = sock.recv(min(size, CHUNK))
        if not data:
            raise PageRelayError("the source closed the page relay during the link probe")
        size -= len(data)


# -- TLS (the daemons' mTLS material, as runtime.criu.CriuTls) --------------------------------------

def client_tls(sock: socket.socket, tls: Any, address: str) -> ssl.SSLSocket:
    """The source's end: the target's certificate must chain to ``tls.cacert`` and, as CRIU
    checks it, name ``address`` unless ``tls.no_cn_verify``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(tls.cacert))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.check_hostname = not tls.no_cn_verify
    _crl(ctx, tls)
    _context(ctx)
    return ctx.wrap_socket(sock, server_hostname=address)


def server_tls(sock: socket.socket, tls: Any) -> ssl.SSLSocket:
    """The target's end: a client certificate is required and must chain to ``tls.cacert`` (its
    name is not checked: the listener does not know who dials, as CriuTls.for_listener)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.load_verify_locations(cafile=str(tls.cacert))
    ctx.verify_mode = ssl.CERT_REQUIRED
    _crl(ctx, tls)
    _context(ctx)
    return ctx.wrap_socket(sock, server_side=True)


def _context(ctx: ssl.SSLContext) -> None:
    # A relay ends a direction with a TCP half-close, not a TLS close_notify (it still reads the
    # other way); OpenSSL 3 would take that EOF as fatal for both. A cut cannot pass for the end:
    # zstd needs its end mark (Decompress.end) and CRIU its close command and ack.
    ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)


def _crl(ctx: ssl.SSLContext, tls: Any) -> None:
    if getattr(tls, "cacrl", None) is not None:
        ctx.load_verify_locations(cafile=str(tls.cacrl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def _close_all(*socks: Any) -> None:
    """Close what is open (None skipped); a close that fails has nothing left to lose."""
    for s in socks:
        if s is not None:
            try:
                s.close()
            except OSError:
                pass


def keep_alive(sock: socket.socket, timeout_s: int) -> None:
    """A dead link fails a blocked send within ``timeout_s`` (unacknowledged data) and a silent
    one by keepalive: a frozen source then thaws instead of waiting ~15 minutes for TCP."""
    if sock.family == socket.AF_UNIX:  # a page socket (page_socket.py): no TCP here to tune
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout_s * 1000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # silence is noticed within the same time (15 s: 5 s idle, then 3 probes 2 s apart)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, timeout_s // 3))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, timeout_s // 7))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


# -- the source's side --------------------------------------------------------------------------------

class SourceRelay:
    """The source's end of the page-server connection ``sock`` (already connected).

    ``open`` (before the freeze): TLS (Python ssl) when the daemons use it, the link probe and
    the decision. Raw without TLS: CRIU gets ``sock`` itself (``direct``). Else CRIU gets one end
    of a socketpair (``criu_fd``, plain) and the pump zstd's (or copies) what it sends; ``start``
    runs the pump, ``join`` waits for it after the dump; ``close`` always."""

    def __init__(self, sock: socket.socket, setting: str, *, tls: Any = None, address: str = "") -> None:
        self._tcp = sock
        self._setting = setting
        self._tls = tls
        self._address = address
        self.remote: socket.socket = sock
        self.decision: Decision | None = None
        self.counters = Counters()
        self.error: PageRelayError | None = None
        self._local: socket.socket | None = None
        self._criu: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._streams = 0  # page streams open in this daemon when this one opened (0: not counted)
        self._pair_for_criu = True  # False: CRIU gets no socketpair (post-copy: its page server listens)
        self._want_frames = False  # True: ask for FRAMES (post-copy's answers, FramesCompress)
        self.frames = False  # the target reads FRAMES and the stream is compressed

    @property
    def direct(self) -> bool:
        """Raw without TLS: CRIU has the connection itself (no relay)."""
        return self.decision is not None and not self.decision.compressed and self._tls is None

    def open(self) -> Decision:
        self._tcp.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            if self._tls is not None:  # wrapping detaches ``sock``: only the ssl socket is usable now
                self.remote = client_tls(self._tcp, self._tls, self._address)
            link, frames_ok = probe_link(self.remote, ask_frames=self._want_frames)
            self._streams = STREAMS.enter()  # left in close(); the streams share zstd's cores
            self.decision = choose(self._setting, link, compress_rate() / self._streams)
            self.frames = self.decision.compressed and frames_ok
            self.remote.sendall(FRAMES if self.frames else ZSTD if self.decision.compressed else RAW)
        except (OSError, ValueError) as exc:
            raise PageRelayError(f"cannot open the page relay to the target: {exc}", phase="preflight") from exc
        self.remote.settimeout(None)
        if not self.direct:
            if self._pair_for_criu:
                self._local, self._criu = socketpair()
            # The relay's thread stops sending while zstd takes in a block (ms at a time): the
            # kernel must hold enough to keep the link busy meanwhile, and autotuning sizes the
            # buffer for the tiny RTT of a LAN, not for those pauses.
            force_sndbuf(self._tcp if self._tls is None else self.remote, TCP_BUFFER)
        return self.decision

    @property
    def criu_fd(self) -> int:
        """The socket to hand CRIU's dump (``ps.fd``)."""
        if self.direct:
            return self._tcp.fileno()
        assert self._criu is not None, "open() first"
        return self._criu.fileno()

    def start(self) -> None:
        if self.direct:
            return
        assert self._local is not None
        assert self.decision is not None
        codec: Codec = Compress(threads=zstd_threads(max(self._streams, STREAMS.open))) if self.decision.compressed else Plain()
        pipes = [_Pipe(self._local, self.remote, codec, self.counters), _Pipe(self.remote, self._local, Plain())]
        self._thread = threading.Thread(target=self._run, args=(pipes,), name="page-relay-source", daemon=True)
        self._thread.start()

    def criu_started(self) -> None:
        """CRIU holds its own copy of the socket now; ours would hide its EOF from the relay."""
        if self._criu is not None:
            self._criu.close()
            self._criu = None

    def _run(self, pipes: list[_Pipe]) -> None:
        try:
            pump(pipes)
        except PageRelayError as exc:
            self.error = exc
            log.warning("page relay to the target failed: %s", exc)
            self._close_sockets()  # CRIU's next write fails: the dump ends, the source thaws

    def join(self, timeout_s: float) -> None:
        """Wait until both directions ended; PageRelayError if the relay failed or hangs."""
        self.criu_started()
        if self.direct:  # CRIU is done with the connection; ours is the last copy open
            self._close_sockets()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self._close_sockets()
                raise PageRelayError("the page relay did not finish")
        if self.error is not None:
            raise self.error

    def _close_sockets(self) -> None:
        _close_all(self._local, self.remote, self._tcp)

    def close(self) -> None:
        self.criu_started()
        self._close_sockets()
        if self._thread is not None:
            self._thread.join(5)
        if self._streams:
            STREAMS.leave()
            self._streams = 0


def socketpair() -> tuple[socket.socket, socket.socket]:
    # big buffers: CRIU splices whole page runs, and the relay reads them in large gulps
    pair = socket.socketpair()
    for s in pair:
        force_sndbuf(s, PAIR_BUFFER)
    return pair


def force_sndbuf(sock: socket.socket, size: int) -> None:
    """``sock``'s send buffer set to ``size``."""
    try:  # past net.core.wmem_max (~208 KiB) with CAP_NET_ADMIN, as the daemon has
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


# -- the target's side --------------------------------------------------------------------------------

class TargetRelay:
    """The target's end (start_relayed_page_server): accepts the source's one connection on the
    listener, TLS when the daemons use it, answers the probe, then starts ``criu page-server
    --ps-socket`` on the connection itself (raw without TLS) or on a socketpair behind the pump.

    Looks like runtime.criu.CriuProcess to migrate/migration/target.py: ``wait``, ``stop``, and
    ``failure_reason`` for its ``_page_server_failure``."""

    def __init__(self, listener: socket.socket, images_dir: Path, *, tls: Any = None, allowed: str | None = None,
                 timeout_s: int = 15) -> None:
        self._listener = listener
        self._images_dir = images_dir
        self._tls = tls
        self._allowed = allowed  # without TLS: the only peer address let in (as the port guard)
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._conn: socket.socket | None = None
        self._local: socket.socket | None = None
        self.criu: Any = None  # runtime.criu.CriuProcess once the source said raw or zstd
        self.failure: PageRelayError | None = None
        self.counters = Counters()
        self.compressed: bool | None = None
        self.frames = False  # the source sends FRAMES
        self._thread = threading.Thread(target=self._run, name="page-relay-target", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = self._handshake(self._accept())
            if not self.compressed and self._tls is None:
                self.criu = self._start_criu(conn, tls=None)
                conn.close()  # CRIU has its copy; ours would keep its EOF from the source
                self._conn = None
                return
            self._local, theirs = socketpair()
            try:
                self.criu = self._start_criu(theirs, tls=None)
            finally:
                theirs.close()
            codec: Codec = Decompress(frames=self.frames) if self.compressed else Plain()
            pump([_Pipe(conn, self._local, codec, self.counters), _Pipe(self._local, conn, Plain())], self._stop)
        except Exception as exc:  # noqa: BLE001  (CriuError, OSError, ...: all end this transfer)
            self.failure = exc if isinstance(exc, PageRelayError) else PageRelayError(f"the page relay failed: {exc}")
            if not self._stop.is_set():
                log.warning("page relay from the source failed: %s", self.failure)
        finally:
            self._close()  # the page server reads EOF: it ends (with an error unless it got everything)

    def _start_criu(self, sock: socket.socket, *, tls: Any) -> Any:
        from runtime.criu import start_page_server

        return start_page_server(self._images_dir, "", 0, ps_socket=sock.fileno(), tls=tls)

    def _accept(self) -> socket.socket:
        self._listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except socket.timeout:
                continue
            if self._tls is None and self._allowed and peer[0] != self._allowed:
                log.warning("page relay: refused a connection from %s (only %s may send pages)", peer[0], self._allowed)
                conn.close()
                continue
            self._listener.close()
            self._conn = conn
            return conn
        raise PageRelayError("the page relay was stopped before the source connected")

    def _handshake(self, conn: socket.socket) -> socket.socket:
        """TLS, the probe's echo and the source's choice (``compressed``); the connection to use."""
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        keep_alive(conn, self._timeout_s)
        if self._tls is not None:  # wrapping detaches ``conn``: only the ssl socket is usable now
            conn = self._conn = server_tls(conn, self._tls)
        magic, warm, timed = HELLO.unpack(_recv_exact(conn, HELLO.size))
        if magic != MAGIC or warm > 64 * CHUNK or timed > 64 * CHUNK:
            raise PageRelayError(f"not a page relay's hello: {magic!r}")
        _drain(conn, warm)
        conn.sendall(b"W")
        _drain(conn, timed)
        frames_ok = timed % 2 == 1  # the source asks whether this relay reads FRAMES
        conn.sendall(TIMED_FRAMES if frames_ok else TIMED)
        choice = _recv_exact(conn, 1)
        if choice not in (RAW, ZSTD, FRAMES) or (choice == FRAMES and not frames_ok):
            raise PageRelayError(f"unknown page stream kind {choice!r}")
        self.compressed = choice != RAW
        self.frames = choice == FRAMES
        conn.settimeout(None)
        return conn

    def _close(self) -> None:
        _close_all(self._conn, self._local, self._listener)

    def wait(self, timeout_s: float | None = None) -> int:
        """As CriuProcess.wait; the relay's own error first (it says why CRIU saw EOF)."""
        started = time.monotonic()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            import subprocess

            raise subprocess.TimeoutExpired("page relay", timeout_s or 0)
        if self.failure is not None or self.criu is None:
            if self.criu is not None:
                self.criu.stop()
            raise self.failure or PageRelayError("the page relay ended before the source connected")
        left = None if timeout_s is None else max(0.1, timeout_s - (time.monotonic() - started))
        return int(self.criu.wait(left))

    def failure_reason(self, timeout_s: float = 2.0) -> str | None:
        """Why the transfer failed here, if it did: the relay's reason (CRIU then saw only EOF),
        else the page server's own first error."""
        self._thread.join(timeout_s)
        if self.failure is not None:
            return self.failure.message
        if self.criu is None:
            return None
        import subprocess

        try:
            rc = self.criu.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        return None if rc == 0 else str(self.criu.error(rc).message)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._close()
        self._thread.join(timeout_s)
        if self.criu is not None:
            self.criu.stop(timeout_s)


def start_relayed_page_server(images_dir: Path, address: str, port: int, *, tls: Any = None,
                              allowed: str | None = None, timeout_s: int = 15) -> TargetRelay:
    """A page relay listening on ``address``:``port`` for the source's dump, in front of the
    ``criu page-server`` that writes its pages into ``images_dir`` (TargetRelay)."""
    return TargetRelay(listen_once(address, port), images_dir, tls=tls, allowed=allowed, timeout_s=timeout_s)


def listen_once(address: str, port: int) -> socket.socket:
    """A TCP listener on ``address``:``port`` for the one connection of a relay."""
    listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(1)
    except OSError:
        listener.close()
        raise
    return listener
