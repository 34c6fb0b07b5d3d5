"""Reaping a swrk after its answer (runtime.criu._stop_swrk): woken by the exit, not by a poll's sleep."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from runtime.criu import _exited_within, _stop_swrk


def _child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def test_an_exit_is_seen_as_it_happens() -> None:
    proc = _child("import time; time.sleep(0.02)")
    started = time.monotonic()
    assert _exited_within(proc, 5.0)
    assert time.monotonic() - started < 2.0
    assert proc.wait() == 0


def test_a_child_that_lingers_is_reported_and_stop_kills_it() -> None:
    proc = _child("import time; time.sleep(30)")
    try:
        assert not _exited_within(proc, 0.05)
        ours, theirs = socket.socketpair()
        theirs.close()
        _stop_swrk(proc, ours, timeout_s=0.05)
        assert proc.returncode == -9  # killed, and reaped
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()


def test_a_reaped_child_is_not_looked_up_by_its_pid_again() -> None:
    proc = _child("pass")
    proc.wait()
    assert _exited_within(proc, 0.01)
