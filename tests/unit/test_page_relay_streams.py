"""Concurrent page streams in one daemon (issue 17: memory and concurrent migrations).

Source relays open at the same time share the cores: the second one's ``auto`` choice sees half
of zstd's calibrated rate, and its compressor gets no zstd worker threads (a context with workers
holds ~18 MiB of job buffers: ten concurrent migrations added ~186 MiB to the source daemon).
The count goes back to zero when the relays close. A compressor without workers stays small
(measured in a fresh interpreter, so other tests' allocations do not blur it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from migrate.migration import page_relay
from migrate.migration.page_relay import STREAMS, SourceRelay, TargetRelay, zstd_threads
from tests.unit.test_page_relay import FakeCriu

REPO = Path(__file__).resolve().parents[2]


def test_only_a_lone_stream_gets_zstd_workers(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert zstd_threads(1) == 4
    assert zstd_threads(2) == 0
    assert zstd_threads(10) == 0


def _pair(monkeypatch) -> tuple[SourceRelay, TargetRelay]:  # noqa: ANN001
    monkeypatch.setattr(TargetRelay, "_start_criu", lambda self, sock, tls: FakeCriu(sock))
    listener = socket.create_server(("127.0.0.1", 0))
    target = TargetRelay(listener, Path("/nonexistent"), allowed="127.0.0.1")
    return SourceRelay(socket.create_connection(("127.0.0.1", listener.getsockname()[1])), "on"), target


def test_streams_open_together_share_zstd_and_get_no_workers(monkeypatch):
    monkeypatch.setattr(page_relay, "compress_rate", lambda: 800e6)
    monkeypatch.setattr(page_relay, "_threads", lambda: 2)
    made: list[int | None] = []
    real = page_relay.Compress

    def recording(level: int = page_relay.LEVEL, threads: int | None = None) -> page_relay.Compress:
        made.append(threads)
        return real(level, threads)

    monkeypatch.setattr(page_relay, "Compress", recording)
    before = STREAMS.open
    (first, t1), (second, t2) = _pair(monkeypatch), _pair(monkeypatch)
    try:
        assert first.open().compress_bps == 800e6
        first.start()
        assert second.open().compress_bps == 400e6  # two streams at once: half of zstd's rate each
        second.start()
        assert STREAMS.open == before + 2
        assert made == [2, 0]  # the first started alone (workers), the second next to it (none)
    finally:
        for relay in (first, second):
            relay.close()
        for target in (t1, t2):
            target.stop()
    assert STREAMS.open == before
    third, t3 = _pair(monkeypatch)
    try:
        assert third.open().compress_bps == 800e6  # alone again
        third.start()
        assert made[-1] == 2
    finally:
        third.close()
        t3.stop()
    assert STREAMS.open == before


RSS_PROBE = r"""
import os, sys
from migrate.migration.page_relay import Compress
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) >> 10
text = (b"the page server sends memory of a frozen container %d\n" * 30000)[: 1 << 20]
rnd = os.urandom(1 << 20)
base = rss()
codecs = [Compress(threads=int(sys.argv[1])) for _ in range(4)]
for i in range(24):
    for c in codecs:
        c.feed(text if i % 2 else rnd)
for c in codecs:
    c.flush()
print(rss() - base)
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="zstd workers need two cores")
def test_four_compressors_without_workers_stay_small():
    def growth(threads: int) -> int:
        out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(threads)], cwd=REPO, capture_output=True, text=True, check=True)
        return int(out.stdout)

    lone, shared = growth(2), growth(zstd_threads(4))
    assert shared <= 16, f"four compressors without workers grew RSS by {shared} MiB"
    assert lone > 2 * shared, f"with workers {lone} MiB, without {shared} MiB: the bound no longer matters"
