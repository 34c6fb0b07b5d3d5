"""The page relay (migrate/migration/page_relay.py) on real sockets: what CRIU writes on one side
comes out unchanged on the other, small messages are not held back by zstd, EOF travels both ways,
a corrupt or truncated zstd stream is a PageRelayError, and auto picks raw on a fast link."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import zstandard

from tests.fakes.sockets import recv_exact
from migrate.migration import page_relay
from migrate.migration.page_relay import Compress, Decompress, PageRelayError, Plain, SourceRelay, TargetRelay, _Pipe, choose, pump


def _read_to_eof(sock: socket.socket) -> bytes:
    buf = bytearray()
    while data := sock.recv(1 << 16):
        buf += data
    return bytes(buf)


class Chain:
    """source CRIU end <-pair-> source pump <-pair (the link)-> target pump <-pair-> page server end."""

    def __init__(self, forward: tuple[object, object] | None = None) -> None:
        self.criu, src_local = socket.socketpair()
        src_remote, dst_remote = socket.socketpair()
        dst_local, self.server = socket.socketpair()
        for s in (self.criu, self.server):
            s.settimeout(10)
        enc, dec = forward or (Compress(threads=0), Decompress())
        self.counters = page_relay.Counters()
        self.errors: list[BaseException] = []
        self.threads = [
            self._run([_Pipe(src_local, src_remote, enc, self.counters), _Pipe(src_remote, src_local, Plain())]),
            self._run([_Pipe(dst_remote, dst_local, dec), _Pipe(dst_local, dst_remote, Plain())]),
        ]
        self.sockets = [src_local, src_remote, dst_remote, dst_local]

    def _run(self, pipes: list[_Pipe]) -> threading.Thread:
        def target() -> None:
            try:
                pump(pipes)
            except BaseException as exc:
                self.errors.append(exc)
            finally:
                for p in pipes:
                    p.src.close()

        t = threading.Thread(target=target, daemon=True)
        t.start()
        return t

    def join(self) -> None:
        for t in self.threads:
            t.join(10)
            assert not t.is_alive(), "the relay did not end"
        self.criu.close()
        self.server.close()


def test_pages_arrive_unchanged_and_compressed():
    chain = Chain()
    text = b"memory pages of a frozen container " * 100_000
    data = os.urandom(1 << 20) + text
    sender = threading.Thread(target=lambda: (chain.criu.sendall(data), chain.criu.shutdown(socket.SHUT_WR)))
    sender.start()
    assert _read_to_eof(chain.server) == data
    sender.join()
    chain.server.close()
    assert _read_to_eof(chain.criu) == b""  # the page server's close reaches CRIU as EOF
    chain.join()
    assert chain.errors == []
    assert chain.counters.raw_bytes == len(data)
    assert chain.counters.wire_bytes < len(data) * 0.6  # the text half packs


def test_a_small_message_is_not_held_back_and_the_reply_comes_back():
    # CRIU's close command is a few bytes, after which it waits for the 4-byte ack: a relay that
    # kept them in zstd's buffer until more input came would hang the dump.
    chain = Chain()
    chain.criu.sendall(b"\x24\x10\x00\x00close-command")
    assert recv_exact(chain.server, 17) == b"\x24\x10\x00\x00close-command"
    chain.server.sendall(b"\x00\x00\x00\x00")
    assert recv_exact(chain.criu, 4) == b"\x00\x00\x00\x00"
    chain.criu.close()
    assert _read_to_eof(chain.server) == b""
    chain.server.close()
    chain.join()
    assert chain.errors == []


def test_eof_from_the_target_side_reaches_the_source_first():
    chain = Chain()
    chain.server.close()  # the page server died
    assert _read_to_eof(chain.criu) == b""
    chain.criu.close()
    chain.join()


def test_raw_chain_copies_both_ways():
    chain = Chain(forward=(Plain(), Plain()))
    data = os.urandom(3 << 20)
    sender = threading.Thread(target=lambda: (chain.criu.sendall(data), chain.criu.shutdown(socket.SHUT_WR)))
    sender.start()
    assert _read_to_eof(chain.server) == data
    sender.join()
    chain.server.close()
    chain.join()
    assert chain.counters.wire_bytes == chain.counters.raw_bytes == len(data)


@pytest.mark.parametrize("stream", [
    pytest.param(b"this is not zstd at all" * 10, id="garbage"),
    pytest.param(zstandard.ZstdCompressor().compress(os.urandom(200_000))[:-50], id="truncated"),
    pytest.param(bytearray(zstandard.ZstdCompressor().compress(b"abc" * 100_000)), id="flipped"),
])
def test_a_corrupt_compressed_stream_is_a_page_relay_error(stream):
    if isinstance(stream, bytearray):
        stream[len(stream) // 2] ^= 0xFF
        stream = bytes(stream)
    wire, remote = socket.socketpair()
    local, server = socket.socketpair()
    wire.sendall(stream)
    wire.shutdown(socket.SHUT_WR)
    with pytest.raises(PageRelayError):
        pump([_Pipe(remote, local, Decompress()), _Pipe(local, remote, Plain())])
    for s in (wire, remote, local, server):
        s.close()


def test_auto_picks_raw_on_a_fast_link_and_zstd_on_a_slow_one():
    zstd = 900e6
    assert not choose("auto", 1.2e9, zstd).compressed  # 10 Gbit/s
    assert not choose("auto", 3e9, zstd).compressed  # loopback
    assert choose("auto", 119e6, zstd).compressed  # 1 Gbit/s
    assert choose("on", 3e9, zstd).compressed
    assert choose("auto", 119e6, 390e6).compressed  # zstd calibrated on a loaded host: still zstd at 1 Gbit/s
    assert not choose("auto", 1.2e9, 2e9).compressed  # a fast zstd still loses to 10 Gbit/s by the margin


class FakeCriu:
    """Stands for ``criu page-server --ps-socket``: keeps a copy of the socket it was given."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = socket.socket(fileno=os.dup(sock.fileno()))
        self.sock.settimeout(10)

    def wait(self, timeout_s=None):  # noqa: ANN001, ANN201
        return 0

    def stop(self, timeout_s=5.0):  # noqa: ANN001, ANN201
        self.sock.close()


def fake_page_servers(monkeypatch: pytest.MonkeyPatch) -> list[FakeCriu]:
    """TargetRelay starts a FakeCriu instead of CRIU's page server; the list gets each one."""
    started: list[FakeCriu] = []
    monkeypatch.setattr(TargetRelay, "_start_criu", lambda self, sock, tls: started.append(FakeCriu(sock)) or started[-1])
    return started


@pytest.mark.parametrize("setting", ["on", "auto"])
def test_source_and_target_relays_over_tcp(setting, monkeypatch):
    started = fake_page_servers(monkeypatch)
    listener = socket.create_server(("127.0.0.1", 0))
    target = TargetRelay(listener, Path("/nonexistent"), allowed="127.0.0.1")
    source = SourceRelay(socket.create_connection(("127.0.0.1", listener.getsockname()[1])), setting)
    decision = source.open()
    assert decision.compressed == (setting == "on")  # loopback: auto keeps it raw
    assert source.direct == (setting == "auto")  # raw: CRIU gets the TCP connection itself
    assert decision.link_bps > 0 and decision.compress_bps > 0
    criu = socket.socket(fileno=os.dup(source.criu_fd))
    criu.settimeout(10)
    source.start()
    source.criu_started()
    data = b"page " * 400_000
    criu.sendall(data)
    for _ in range(100):
        if started:
            break
        time.sleep(0.05)
    server = started[0].sock
    assert recv_exact(server, len(data)) == data
    server.sendall(b"ack!")
    assert recv_exact(criu, 4) == b"ack!"
    criu.close()
    if source.direct:
        source.join(10)  # closes the source's copy: the page server's end sees EOF
    assert _read_to_eof(server) == b""
    server.close()
    source.join(10)
    assert target.wait(10) == 0
    assert target.compressed == (setting == "on")
    if setting == "on":
        assert target.counters.raw_bytes == len(data) > target.counters.wire_bytes
    source.close()
    target.stop()
