"""The page relay's FRAMES stream (migrate/migration/page_relay.py, issue 17): post-copy's answers as
independent zstd frames compressed on two threads, read back by a bounded Decompress(frames=True);
a cut inside a frame or garbage between frames is an error, a stream may end between frames; and the
handshake only picks FRAMES when both relays read them (an older relay on either side gets ZSTD)."""

from __future__ import annotations

import os
import random
import socket
import threading
import time

import pytest

from migrate.migration import page_relay
from migrate.migration.page_relay import (
    FRAME_BYTES,
    HELLO,
    MAGIC,
    Decompress,
    FramesCompress,
    PageRelayError,
    SourceRelay,
    TargetRelay,
)
from tests.fakes.sockets import recv_exact

WORDS = b"the container moves between hosts without losing state "


def _stream(parts: list[bytes]) -> tuple[bytes, bytes]:
    """``parts`` fed one by one, a flush after each (as per answer): (raw, what went on the wire)."""
    enc = FramesCompress()
    wire = b"".join(enc.feed(p) + enc.flush() for p in parts) + enc.end()
    return b"".join(parts), wire


def _unpack(wire: bytes, piece: int, bound: int = page_relay.DECOMPRESS_BOUND) -> bytes:
    dec = Decompress(bound, frames=True)
    out = []
    for i in range(0, len(wire), piece):
        out.append(dec.feed(wire[i:i + piece]))
        assert all(len(o) <= bound for o in out)
        while dec.pending:
            out.append(dec.drain())
            assert len(out[-1]) <= bound
    dec.end()
    return b"".join(out)


@pytest.mark.parametrize("piece", [1, 977, 64 << 10, 8 << 20])
def test_frames_round_trip_in_any_cut(piece: int) -> None:
    parts = [os.urandom(3 << 20), (WORDS * 70_000)[: 3 * FRAME_BYTES + 5], b"x", os.urandom(10)]
    raw, wire = _stream(parts)
    assert len(wire) < len(raw)  # the text shrank
    assert _unpack(wire, piece if piece > 1 else len(wire) // 50 + 1) == raw


def test_frames_are_bounded_per_call() -> None:
    raw, wire = _stream([bytes(16 << 20)])  # zeros: each frame expands ~1000x
    assert _unpack(wire, 4096, bound=64 << 10) == raw


def test_a_cut_inside_a_frame_is_an_error_and_between_frames_is_not() -> None:
    _, first = _stream([(WORDS * 1000)[:20_000]])
    _, second = _stream([os.urandom(5000)])
    for undrained in (False, True):  # the relay drains before it reads EOF; end() must not rely on it
        dec = Decompress(frames=True)
        dec.feed(first + second[:-3])
        while dec.pending and not undrained:
            dec.drain()
        with pytest.raises(PageRelayError, match="truncated"):
            dec.end()
    dec = Decompress(frames=True)
    out = dec.feed(first + second)
    while dec.pending:
        out += dec.drain()
    assert len(out) == 25_000
    dec.end()
    Decompress(frames=True).end()  # no frame at all: an empty stream


def test_garbage_between_frames_is_corrupt() -> None:
    _, frame = _stream([b"page" * 1000])
    dec = Decompress(frames=True)
    with pytest.raises(PageRelayError, match="corrupt"):
        dec.feed(frame + b"\x00not a frame at all")
        while dec.pending:
            dec.drain()


def test_a_flood_of_tiny_frames_costs_little() -> None:
    import time
    import zstandard

    empty = zstandard.ZstdCompressor().compress(b"")  # ~9 bytes each
    wire = empty * (500_000 // len(empty))
    started = time.process_time()
    assert _unpack(wire, 1 << 20) == b""
    assert time.process_time() - started < 5  # linear: each frame end copied the rest of its read before


def test_one_frame_stream_still_refuses_data_after_its_end() -> None:
    enc = page_relay.Compress(threads=0)
    wire = enc.feed(b"abc" * 100) + enc.end()
    with pytest.raises(PageRelayError, match="after its end mark"):
        Decompress().feed(wire + wire)


# -- the handshake: FRAMES only when both relays read them ------------------------------------------

def _old_target(listener: socket.socket, seen: list[bytes]) -> None:
    """A relay of before FRAMES: drains the probe whatever its size, answers "T", reads the choice."""
    conn, _ = listener.accept()
    with conn:
        _, warm, timed = HELLO.unpack(recv_exact(conn, HELLO.size))
        recv_exact(conn, warm)
        conn.sendall(b"W")
        recv_exact(conn, timed)
        conn.sendall(b"T")
        seen.append(recv_exact(conn, 1))


def test_a_source_asking_for_frames_gets_zstd_from_an_older_target() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []
    t = threading.Thread(target=_old_target, args=(listener, seen), daemon=True)
    t.start()
    source = SourceRelay(socket.create_connection(listener.getsockname()), "on")
    source._want_frames = True  # as LazySourceRelay
    try:
        assert source.open().compressed
        t.join(10)
        assert seen == [page_relay.ZSTD] and not source.frames
    finally:
        source.close()
        listener.close()


def _handshake_with(target: TargetRelay, timed: int, choice: bytes) -> bytes:
    with socket.create_connection(target._listener.getsockname()) as sock:
        sock.sendall(HELLO.pack(MAGIC, 1024, timed) + bytes(1024))
        assert recv_exact(sock, 1) == b"W"
        sock.sendall(bytes(timed))
        answer = recv_exact(sock, 1)
        sock.sendall(choice)
    target._thread.join(5)  # the choice read, then EOF: the relay ends
    return answer


@pytest.fixture
def target(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setattr(TargetRelay, "_start_criu", lambda self, sock, tls: None)  # the handshake is what counts
    relay = TargetRelay(socket.create_server(("127.0.0.1", 0)), page_relay.Path("/nonexistent"), allowed="127.0.0.1")
    yield relay
    relay.stop()


def test_an_older_source_gets_the_old_answer(target: TargetRelay) -> None:
    assert _handshake_with(target, 4096, page_relay.ZSTD) == b"T"
    target._thread.join(5)
    assert target.compressed and not target.frames


def test_a_source_that_asked_may_send_frames(target: TargetRelay) -> None:
    assert _handshake_with(target, 4097, page_relay.FRAMES) == b"t"
    target._thread.join(5)
    assert target.compressed and target.frames


def test_frames_without_asking_are_refused(target: TargetRelay) -> None:
    assert _handshake_with(target, 4096, page_relay.FRAMES) == b"T"
    target._thread.join(5)
    assert target.failure is not None and "unknown page stream kind" in target.failure.message


def test_a_frame_done_but_not_collected_goes_out_with_the_end() -> None:
    """The pump may read EOF in the step a frame's job ended, before its wake was collected:
    ``end`` must still return that frame (it once dropped it: the stream lost its tail)."""
    enc = FramesCompress()
    assert enc.feed(WORDS * 10) == b""  # short of a frame: held
    first = enc.send_held()
    for job in list(enc._jobs):
        job.result()  # done, not collected
    wire = first + enc.end()
    assert _unpack(wire, len(wire)) == WORDS * 10


def test_the_pump_forwards_a_request_while_an_answer_compresses(monkeypatch: pytest.MonkeyPatch,
                                                                request: pytest.FixtureRequest) -> None:
    """The source relay's pump does not wait for zstd's threads: the target's next request reaches
    CRIU while the last answer's frame is still compressing (held here), and the answer follows."""
    gate = threading.Event()
    real = FramesCompress._compress

    def held(self: FramesCompress, data: bytes) -> bytes:
        gate.wait(10)
        return real(self, data)

    monkeypatch.setattr(FramesCompress, "_compress", held)
    criu, local = socket.socketpair()
    remote, target = socket.socketpair()
    for s in (criu, local, remote, target):
        request.addfinalizer(s.close)  # closed when the test fails too (else a later test warns)
    pipes = [page_relay.pipe(local, remote, FramesCompress(), idle_flush_s=0.0),
             page_relay.pipe(remote, local, page_relay.Plain(), idle_flush_s=0.0)]
    pump = threading.Thread(target=page_relay.pump, args=(pipes,), daemon=True)
    pump.start()
    try:
        answer = WORDS * 100
        criu.sendall(answer)  # short of a frame: sent to the threads once CRIU's burst ended
        target.sendall(b"R" * 24)  # the next request
        criu.settimeout(2)
        assert recv_exact(criu, 24) == b"R" * 24  # through while the answer is held in zstd
        assert not gate.is_set()
    finally:
        gate.set()
    criu.shutdown(socket.SHUT_WR)
    target.shutdown(socket.SHUT_WR)
    wire = b"".join(iter(lambda: target.recv(1 << 16), b""))
    pump.join(5)
    assert not pump.is_alive()
    assert _unpack(wire, len(wire)) == answer


def test_the_pump_keeps_every_byte_whatever_the_frames_timing(monkeypatch: pytest.MonkeyPatch,
                                                                request: pytest.FixtureRequest) -> None:
    """Bursts with pauses around the idle flush, frames that take random time on the threads, and
    EOF right after the last burst: what reaches the target is the whole stream, in order (the EOF
    once dropped a frame that ended after the pump's last collect)."""
    rng = random.Random(17)
    real = FramesCompress._compress

    def slow(self: FramesCompress, data: bytes) -> bytes:
        time.sleep(rng.random() * 0.002)
        return real(self, data)

    monkeypatch.setattr(FramesCompress, "_compress", slow)
    for _ in range(50):
        criu, local = socket.socketpair()
        remote, target = socket.socketpair()
        for s in (criu, local, remote, target):
            request.addfinalizer(s.close)
        pipes = [page_relay.pipe(local, remote, FramesCompress(), idle_flush_s=0.001),
                 page_relay.pipe(remote, local, page_relay.Plain(), idle_flush_s=0.001)]
        pump = threading.Thread(target=page_relay.pump, args=(pipes,), daemon=True)
        pump.start()
        sent = []
        for _ in range(rng.randint(1, 8)):
            burst = WORDS * rng.randint(1, 400) + os.urandom(rng.randint(0, 5000))
            criu.sendall(burst)
            sent.append(burst)
            time.sleep(rng.choice([0, 0.0005, 0.001, 0.003]))
        criu.shutdown(socket.SHUT_WR)
        target.shutdown(socket.SHUT_WR)
        target.settimeout(10)
        wire = b"".join(iter(lambda: target.recv(1 << 16), b""))
        pump.join(5)
        assert not pump.is_alive()
        assert _unpack(wire, 4096) == b"".join(sent)
