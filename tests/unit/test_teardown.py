"""runtime/teardown.py and CheckpointHost.stop_checkpointed(detach=True): the checkpoint answers
once the tree is killed and recorded; the host's side goes on in a detached process holding the
container's teardown lock, which a restore over it and ``rm`` wait for. Fakes stand in for the
runtime (tests/integration/test_checkpoint_failures.py runs it for real, with a slowed and a killed
teardown)."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from runtime import teardown
from runtime.checkpointing import CheckpointHost
from runtime.config import Paths
from tests.unit.test_stop_checkpointed import CID, FakeRuntime, _container


def _hold(paths: Paths, cid: str) -> int:
    path = teardown.lock_path(paths, cid)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_wait_returns_at_once_without_a_teardown(tmp_path: Path) -> None:
    started = time.monotonic()
    teardown.wait(Paths(tmp_path), CID, timeout_s=5)
    assert time.monotonic() - started < 0.5


def test_wait_waits_for_the_lock_and_gives_up_after_its_timeout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = Paths(tmp_path)
    fd = _hold(paths, CID)
    threading.Timer(0.2, os.close, (fd,)).start()
    started = time.monotonic()
    teardown.wait(paths, CID, timeout_s=5)
    assert 0.15 < time.monotonic() - started < 2

    fd = _hold(paths, CID)
    try:
        with caplog.at_level(logging.WARNING):
            teardown.wait(paths, CID, timeout_s=0.1)
        assert "still runs" in caplog.text
    finally:
        os.close(fd)


def test_wait_all_waits_for_every_teardown(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    teardown.wait_all(paths, timeout_s=5)  # no dir yet: nothing to wait for
    done = _hold(paths, "a" * 32)
    os.close(done)  # a lock file left by a killed teardown: free
    held = _hold(paths, CID)
    threading.Timer(0.2, os.close, (held,)).start()
    started = time.monotonic()
    teardown.wait_all(paths, timeout_s=5)
    assert 0.15 < time.monotonic() - started < 2


_DETACH_PROBE = """
import os, sys, time
from pathlib import Path
from runtime import teardown
from runtime.config import Paths
root, cid = Path(sys.argv[1]), sys.argv[2]
out = root / "done"
def work():
    time.sleep(0.3)
    out.write_text(str(os.getpid()))
assert teardown.detach(Paths(root), cid, work), "detach refused in a one-thread process"
assert not out.exists(), "detach waited for the work"
assert teardown.lock_path(Paths(root), cid).exists()
teardown.wait(Paths(root), cid, timeout_s=10)
assert int(out.read_text()) != os.getpid(), "the work ran in the caller"
assert not teardown.lock_path(Paths(root), cid).exists(), "the lock file outlived the teardown"
"""


def test_detach_runs_the_work_in_another_process_holding_the_lock(tmp_path: Path) -> None:
    # in a fresh interpreter: pytest's own threads would (rightly) make detach refuse to fork
    done = subprocess.run([sys.executable, "-c", _DETACH_PROBE, str(tmp_path), CID], capture_output=True,
                          text=True, timeout=30, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr


def test_detach_refuses_to_fork_beside_other_threads(tmp_path: Path) -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not teardown.detach(Paths(tmp_path), CID, lambda: None)
    finally:
        stop.set()
        other.join()


def _detached(monkeypatch: pytest.MonkeyPatch, rt: FakeRuntime) -> list[Callable[[], None]]:
    handed: list[Callable[[], None]] = []

    def detach(paths: Paths, cid: str, work: Callable[[], None]) -> bool:
        rt.events.append("detached")
        handed.append(work)
        return True

    monkeypatch.setattr(teardown, "detach", detach)
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    return handed


def test_a_detached_stop_answers_with_the_tree_killed_and_recorded_and_the_rest_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = FakeRuntime(tmp_path)
    rt.disconnect_started.set()  # the veth goes in the teardown, after the kill
    handed = _detached(monkeypatch, rt)
    hooked: list[str] = []
    CheckpointHost(rt).stop_checkpointed(_container("bridge"), "ck1", timeout_s=5, detach=True,
                                         before_teardown=lambda: hooked.append("hook"))
    assert rt.events == ["record", "kill", "thaw", "empty?", "record", "detached"]  # checkpointed recorded before the kill (a --rm shim)
    state = rt.store.state
    assert (state.status, state.exit_code, state.checkpointed, state.frozen_by) == ("exited", 137, "ck1", None)
    assert rt.store.syncs == [False, True]  # the pre-kill mark unsynced; the stopped record fsynced: the answer says so
    assert not hooked

    handed[0]()  # what the detached process runs
    assert hooked == ["hook"]
    assert rt.events[-2:] == ["veth gone", "release"]


def test_a_detached_stop_answers_once_the_cgroup_is_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cgroup.kill only signals: the record (and the answer) wait until no process is left."""
    rt = FakeRuntime(tmp_path)
    rt.disconnect_started.set()
    _detached(monkeypatch, rt)
    rt.dying = [False, True, True]  # two looks find a process left
    CheckpointHost(rt).stop_checkpointed(_container("bridge"), "ck1", timeout_s=5, detach=True)
    assert rt.events == ["record", "kill", "thaw", "empty?", "empty?", "empty?", "record", "detached"]


def test_a_detached_stop_waits_for_the_shim_before_the_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = FakeRuntime(tmp_path)
    rt.disconnect_started.set()
    handed = _detached(monkeypatch, rt)
    shim_alive = [True]
    import runtime.shim

    monkeypatch.setattr(runtime.shim, "is_shim", lambda pid: pid == 77 and shim_alive[0])
    rt.store.state = rt.store.state.__class__(status="running", pid=4242, shim_pid=77)
    CheckpointHost(rt).stop_checkpointed(_container("none"), "ck1", timeout_s=5, detach=True)
    released: list[float] = []
    runner = threading.Thread(target=lambda: (handed[0](), released.append(time.monotonic())))
    runner.start()
    time.sleep(0.1)
    assert "release" not in rt.events, "released while the shim still ran (its log indexer's last look, its record)"
    gone_at = time.monotonic()
    shim_alive[0] = False
    runner.join(5)
    assert rt.events[-1] == "release" and released[0] >= gone_at


def test_beside_other_threads_the_stop_is_the_inline_one(tmp_path: Path) -> None:
    rt = FakeRuntime(tmp_path)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        CheckpointHost(rt).stop_checkpointed(_container("bridge"), "ck1", timeout_s=5, detach=True)
    finally:
        stop.set()
        other.join()
    assert rt.store.syncs == [False] and rt.events[-1] == "release"  # the old order: the shim's record carried it
