"""Post-copy's page relay (migrate/migration/lazy_relay.py) on real loopback sockets: the target's
relay listens, the source's dials it and probes, a fake CRIU lazy page server on the source answers
the requests a fake lazy-pages daemon sends through the target relay's socket; each answer arrives
whole without more input behind it (zstd flushed per burst), the pages arrive unchanged and
compressed on the wire, and both ends see EOF. ``wanted``: --compress on or auto, never unix:/ssh://."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from tests.fakes.sockets import recv_exact
from migrate.migration import lazy_relay
from migrate.migration.lazy_relay import LazySourceRelay, start_target

WORDS = b"the container moves between hosts without losing state "


def _page(i: int) -> bytes:
    text = (WORDS * 80)[:4096]
    return os.urandom(4096) if i % 2 else text  # half random, half text, as memhog


class FakeLazyServer(threading.Thread):
    """CRIU's lazy page server: one connection; an 8-byte request (page index, count) is answered
    with those pages; EOF from the peer ends it (it then closes, as CRIU does)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                while req := conn.recv(8):
                    first, count = int.from_bytes(req[:4], "big"), int.from_bytes(req[4:], "big")
                    conn.sendall(b"".join(_page(i) for i in range(first, first + count)))
        except BaseException as exc:  # noqa: BLE001  (reported by the test)
            self.error = exc
        finally:
            self.listener.close()


def test_requests_and_answers_cross_both_relays_compressed() -> None:
    server = FakeLazyServer()
    server.start()
    port = _free_port()
    target = start_target("m-test", "127.0.0.1", port, allowed="127.0.0.1")
    assert lazy_relay.take("m-test") is target  # what receive_postcopy does
    source = LazySourceRelay(socket.create_connection(("127.0.0.1", port)), "on")
    try:
        decision = source.open()
        assert decision.compressed
        assert target.wait_decided(5) is True
        assert source.frames and target.frames  # both read frames: each answer on two threads
        source.connect_criu(server.port)
        lazy = target.attach()
        lazy.settimeout(10)
        pages = {}
        for first, count in ((0, 1), (1, 3), (4, 64), (68, 256)):  # a fault, then background chunks
            started = time.monotonic()
            lazy.sendall(first.to_bytes(4, "big") + count.to_bytes(4, "big"))
            got = recv_exact(lazy, count * 4096)  # nothing follows: the answer must not wait in zstd
            assert time.monotonic() - started < 5
            for i in range(count):
                pages[first + i] = got[i * 4096:(i + 1) * 4096]
        for i in range(0, 324, 2):
            assert pages[i] == _page(i)  # text pages are deterministic; random ones only sized
        assert all(len(p) == 4096 for p in pages.values())
        lazy.shutdown(socket.SHUT_WR)  # lazy-pages is done: EOF to CRIU, CRIU closes, EOF back
        assert lazy.recv(1) == b""
        lazy.close()
        source.join(10)
        server.join(10)
        assert server.error is None
        raw, wire = source.counters.raw_bytes, source.counters.wire_bytes
        assert raw == 324 * 4096
        assert wire < raw * 0.8, (wire, raw)  # half of it is text
        assert source.counters.flushes >= 4  # one per answer at least
    finally:
        source.close()
        target.stop()


def test_stop_before_the_lazy_pages_daemon_started_ends_the_relay() -> None:
    target = start_target("m-stop", "127.0.0.1", _free_port())
    lazy_relay.stop("m-stop")  # an abort before the archive came
    assert lazy_relay.take("m-stop") is None
    with pytest.raises(lazy_relay.PageRelayError):
        target.wait_decided(1)


@pytest.mark.parametrize(("compress", "dest", "want"), [
    ("on", "10.0.0.2:7443", True),
    ("auto", "10.0.0.2:7443", True),
    ("auto", "unix:/run/pymigrate/daemon.sock", False),
    ("off", "10.0.0.2:7443", False),
    ("on", "unix:/run/pymigrate/daemon.sock", False),
    ("on", "ssh://root@host", False),
])
def test_wanted_with_compress_on_or_auto_to_a_tcp_target(compress: str, dest: str, want: bool) -> None:
    assert lazy_relay.wanted(compress, dest) is want


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
