"""The CRIU patch 4.1.1-zz-lazy-dump-freeze reads the frozen tasks' /proc/PID/smaps ahead, in a
child beside CRIU's own collection of mounts, sockets and namespaces (issue 17): the kernel walks
every page-table entry to produce smaps, ~20 ms per GiB inside the freeze. The patch falls back to
CRIU's own read on any failure, so a broken read-ahead would go unseen by the checkpoint and
migration tests (they prove that dumps through it restore right): this one dumps a real two-task
tree with the installed CRIU and checks in its log that each task's smaps came from the copy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.workloads import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu")]

# a parent and its child, each with 32 MiB of touched memory
HOLDER = "import os, time\nbuf = bytearray(os.urandom(32 << 20))\nos.fork()\ntime.sleep(600)\n"


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_each_task_s_smaps_comes_from_the_read_ahead_copy(tmp_path: Path) -> None:
    from runtime.criu import criu_binary

    proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: len(_children(proc.pid)) == 1, 20, "the child task")
        pids = [proc.pid, *_children(proc.pid)]
        dump = subprocess.run([str(criu_binary()), "dump", "-t", str(proc.pid), "-D", str(tmp_path), "--leave-running",
                               "-v4", "-o", "dump.log"], capture_output=True, text=True, timeout=120)
        log = (tmp_path / "dump.log").read_text(errors="replace")
        assert dump.returncode == 0, log[-3000:]
        assert f"smaps read-ahead of {len(pids)} tasks done" in log, log[-3000:]
        for pid in pids:
            assert f"smaps of {pid} from the read-ahead copy" in log, f"task {pid}'s smaps read in line"
        assert "smaps read-ahead failed" not in log
    finally:
        for pid in (*_children(proc.pid), proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)
