"""The target relay's decompression is bounded (issue 17): zstd expands up to ~32000x, so a peer's
few tens of KiB can be a GiB of pages. Decompress returns at most its bound per call, the pipe
produces what zstd holds back only while its queue is under HIGH_WATER (the peer waits meanwhile),
the output is unchanged, and a truncated, corrupt or overlong stream is still a PageRelayError."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest
import zstandard

from migrate.migration import page_relay
from migrate.migration.page_relay import CHUNK, DECOMPRESS_BOUND, HIGH_WATER, Decompress, PageRelayError, Plain, _Pipe, pump

GIB = 1 << 30


@pytest.fixture(scope="module")
def zeros_gib() -> bytes:
    """1 GiB of zero pages as the source's relay sends them (its compressor, its chunks)."""
    enc = page_relay.Compress(threads=0)
    zeros = bytes(CHUNK)
    packed = b"".join(enc.feed(zeros) for _ in range(GIB // CHUNK)) + enc.end()
    assert len(packed) < 100 << 10  # tens of KiB on the wire
    return packed


def _mixed(size: int) -> bytes:
    text = b"memory pages of a frozen container, some text and some numbers 0123456789 " * 1000
    parts = [os.urandom(1 << 20), bytes(3 << 20), (text * (1 + (2 << 20) // len(text)))[: 2 << 20]]
    return b"".join(parts * (1 + size // sum(map(len, parts))))[:size]


def _pack(raw: bytes) -> bytes:
    enc = page_relay.Compress(threads=0)
    return b"".join(enc.feed(raw[o:o + CHUNK]) for o in range(0, len(raw), CHUNK)) + enc.end()


def test_a_gib_of_zeros_comes_out_at_most_a_bound_per_call(zeros_gib):
    dec = Decompress()
    total, calls, biggest = 0, 0, 0
    for o in range(0, len(zeros_gib), CHUNK):
        out = dec.feed(zeros_gib[o:o + CHUNK])
        while True:
            calls += 1
            biggest = max(biggest, len(out))
            total += len(out)
            assert not out.strip(b"\0"), "the zero pages changed"
            if not dec.pending:
                break
            out = dec.drain()
    assert dec.end() == b""
    assert total == GIB
    assert biggest == DECOMPRESS_BOUND
    assert calls >= GIB // DECOMPRESS_BOUND


class _Watched(_Pipe):
    """A pipe that notes the most its queue held after each read."""

    most = 0

    def read(self) -> None:
        super().read()
        self.most = max(self.most, self.queued)


class _Target:
    """The target's pump between ``wire`` (the source's end of the link) and a page server
    thread that reads to EOF (counting, hashing, checking), then ends its side as CRIU does."""

    def __init__(self, decompress: Decompress, *, late_s: float = 0.0, want: int | None = None) -> None:
        self.wire, remote = socket.socketpair()
        local, self.server = socket.socketpair()
        self.counters = page_relay.Counters()
        self.forward = _Watched(remote, local, decompress, self.counters)
        self.got, self.nonzero, self.digest = 0, 0, hashlib.sha256()
        self.errors: list[BaseException] = []
        self._late_s, self._want = late_s, want
        self._sockets = [self.wire, remote, local, self.server]
        self._threads = [threading.Thread(target=self._page_server, daemon=True),
                         threading.Thread(target=self._pump, args=([self.forward, _Pipe(local, remote, Plain())],), daemon=True)]
        for t in self._threads:
            t.start()

    def _page_server(self) -> None:
        threading.Event().wait(self._late_s)  # reads late: the relay's queue fills to HIGH_WATER first
        while data := self.server.recv(CHUNK):
            self.got += len(data)
            self.nonzero += len(data.strip(b"\0"))
            self.digest.update(data)
            if self.got == self._want:  # the source ends only after its last page is in
                self.wire.shutdown(socket.SHUT_WR)
        self.server.shutdown(socket.SHUT_WR)

    def _pump(self, pipes: list[_Pipe]) -> None:
        try:
            pump(pipes)
        except BaseException as exc:
            self.errors.append(exc)
            for s in self._sockets[1:3]:
                s.close()  # as TargetRelay: CRIU and the source see EOF

    def join(self) -> None:
        for t in self._threads:
            t.join(120)
            assert not t.is_alive(), f"the relay stalled after {self.got} bytes"
        for s in self._sockets:
            s.close()
        if self.errors:
            raise self.errors[0]


def test_the_pipe_holds_at_most_high_water_and_a_bound_of_a_decompressed_gib(zeros_gib):
    # The source sends its few KiB and stays connected (CRIU waits for its close ack): what zstd
    # holds back must come out without the socket becoming readable again.
    target = _Target(Decompress(), late_s=0.3, want=GIB)
    target.wire.sendall(zeros_gib)
    target.join()
    assert (target.got, target.nonzero) == (GIB, 0)
    assert target.counters.raw_bytes == GIB and target.counters.wire_bytes == len(zeros_gib)
    assert HIGH_WATER <= target.forward.most <= HIGH_WATER + DECOMPRESS_BOUND


def test_a_small_bound_passes_a_mixed_stream_unchanged():
    raw = _mixed(24 << 20)
    target = _Target(Decompress(bound=4096))
    target.wire.sendall(_pack(raw))
    target.wire.shutdown(socket.SHUT_WR)
    target.join()
    assert target.got == len(raw) and target.digest.digest() == hashlib.sha256(raw).digest()
    assert target.forward.most <= HIGH_WATER + 4096


def _pump_stream(stream: bytes) -> None:
    target = _Target(Decompress())
    try:
        target.wire.sendall(stream)
        target.wire.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the relay failed and closed its end before it had it all: join() says why
    target.join()


def test_a_truncated_expanding_stream_is_a_page_relay_error(zeros_gib):
    with pytest.raises(PageRelayError, match="truncated"):
        _pump_stream(zeros_gib[: len(zeros_gib) // 16])  # cut where zstd holds output back


def test_a_corrupt_stream_is_a_page_relay_error_midway():
    packed = bytearray(_pack(_mixed(8 << 20)))
    packed[len(packed) // 2:len(packed) // 2 + 64] = b"\xff" * 64
    with pytest.raises(PageRelayError, match="corrupt"):
        _pump_stream(bytes(packed))


def test_bytes_after_the_end_mark_are_a_page_relay_error():
    packed = zstandard.ZstdCompressor().compress(bytes(1 << 20))
    with pytest.raises(PageRelayError, match="after its end mark"):
        _pump_stream(packed + b"more")
    with pytest.raises(PageRelayError, match="after its end mark"):
        _pump_stream(packed + packed)  # a second frame too: the relay's stream is one frame
