"""The daemon's malloc arena cap (migrate/remote/memtrace.py, issue 17), seen by glibc itself:
in a fresh interpreter, eight threads allocating at once get their own arenas without the cap and
share two with it (``malloc_info`` lists one <heap> per arena). ``MALLOC_ARENA_MAX`` set by the
operator is left alone, and ``PYMIGRATE_MALLOC_ARENAS=0`` keeps glibc's default."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from migrate.remote import memtrace

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import ctypes, sys, tempfile, threading
from migrate.remote import memtrace
capped = memtrace.limit_arenas()
go = threading.Barrier(8)
def work():
    go.wait()
    keep = [bytearray(4096) for _ in range(2000)]  # small blocks: from the thread's arena
    go.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile() as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fclose(ctypes.c_void_p(fp))
    heaps = open(f.name).read().count("<heap nr=")
print(capped, heaps)
"""

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")


def _probe(**env: str) -> tuple[int, int]:
    clean = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", memtrace.ARENAS_ENV)}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**clean, **env}, capture_output=True, text=True, check=True)
    capped, heaps = out.stdout.split()
    return int(capped), int(heaps)


def test_threads_share_two_arenas_with_the_cap():
    capped, heaps = _probe()
    assert capped == memtrace.ARENAS
    assert heaps <= memtrace.ARENAS, f"{heaps} arenas with the cap"


def test_without_the_cap_threads_get_their_own():
    capped, heaps = _probe(**{memtrace.ARENAS_ENV: "0"})
    assert capped == 0
    assert heaps > memtrace.ARENAS, f"only {heaps} arenas without the cap: the test shows nothing"


def test_the_operators_malloc_arena_max_wins():
    capped, heaps = _probe(MALLOC_ARENA_MAX="3")
    assert capped == 0 and heaps <= 3
