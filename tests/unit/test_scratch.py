"""runtime/scratch.py: the sweep of ROOT/tmp keeps what a live process holds (another process, or
a helper it passed the lock to), keeps young entries, removes what a killed process left, detaches
a mount left in an entry before removing it, and never follows a symlink; ``busy`` leaves out the
calling thread's own entries. ImageStore: pulls in progress defer the collection of blobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime import scratch
from runtime.config import Paths
from runtime.image_store import SCRATCH_PREFIXES, ImageStore
from runtime.overlay import is_mounted

REPO = Path(__file__).resolve().parents[2]
OLD = time.time() - 3600

HOLDER = """
import sys
from pathlib import Path
from runtime.scratch import scratch_dir
with scratch_dir(Path(sys.argv[1]), sys.argv[2]) as work:
    (work / "data").write_text("in progress")
    print(work, flush=True)
    sys.stdin.read()
"""


class Holder:
    """Another process working in a scratch dir it made (as a CLI ``image pull`` does)."""

    def __init__(self, tmp: Path, prefix: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp), prefix], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert self.proc.stdout is not None
        self.path = Path(self.proc.stdout.readline().strip())
        os.utime(self.path, (OLD, OLD))  # old enough for any grace period: only the lock keeps it

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close()

    def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait() == 0
        self._close()

    def _close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    d = tmp_path / "tmp"
    d.mkdir()
    return d


def old_dir(tmp: Path, name: str) -> Path:
    p = tmp / name
    p.mkdir()
    (p / "f").write_text("left behind")
    os.utime(p, (OLD, OLD))
    return p


def test_an_entry_another_live_process_holds_is_kept_until_it_is_killed(tmp: Path) -> None:
    holder = Holder(tmp, "pull-")
    try:
        swept = scratch.sweep(tmp, SCRATCH_PREFIXES, grace_s=0)
        assert swept.held == (holder.path.name,) and swept.removed == ()
        assert (holder.path / "data").read_text() == "in progress"
        assert scratch.busy(tmp, ("pull-",)) == [holder.path.name]
    finally:
        holder.kill()  # SIGKILL: no cleanup ran, the kernel dropped the lock
    assert holder.path.is_dir() and scratch.busy(tmp, ("pull-",)) == []
    assert scratch.sweep(tmp, SCRATCH_PREFIXES, grace_s=0).removed == (holder.path.name,)
    assert not holder.path.exists()


def test_a_holder_that_finishes_removes_its_own_dir(tmp: Path) -> None:
    holder = Holder(tmp, "image-")
    holder.finish()
    assert list(tmp.iterdir()) == []


def test_a_helper_process_given_the_lock_keeps_the_entry_held(tmp: Path) -> None:
    work = old_dir(tmp, "pull-x")
    with scratch.held(work) as fd:
        helper = subprocess.Popen(["sleep", "30"], pass_fds=(fd,))
    try:
        os.utime(work, (OLD, OLD))
        assert scratch.sweep(tmp, SCRATCH_PREFIXES, grace_s=0).held == ("pull-x",)  # skopeo still runs there
    finally:
        helper.kill()
        helper.wait()
    assert scratch.sweep(tmp, SCRATCH_PREFIXES, grace_s=0).removed == ("pull-x",)


def test_unheld_entries_are_removed_once_older_than_the_grace_period(tmp: Path) -> None:
    young = tmp / "layer-young"
    young.mkdir()
    old = old_dir(tmp, "view-old")
    blob = tmp / "blob-abc"
    blob.write_bytes(b"half a blob")
    os.utime(blob, (OLD, OLD))
    other = old_dir(tmp, "ckpt-notmine")  # another module's scratch: not the image store's to sweep
    swept = scratch.sweep(tmp, SCRATCH_PREFIXES, grace_s=60)
    assert swept.removed == ("blob-abc", "view-old") and swept.young == ("layer-young",)
    assert young.is_dir() and not old.exists() and not blob.exists() and other.is_dir()


def test_a_symlink_entry_is_removed_never_followed(tmp: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    (tmp / "pull-link").symlink_to(outside)
    os.utime(tmp / "pull-link", (OLD, OLD), follow_symlinks=False)
    assert scratch.sweep(tmp, SCRATCH_PREFIXES, grace_s=0).removed == ("pull-link",)
    assert (outside / "keep").read_text() == "x"


@pytest.mark.requires("root")
def test_a_mount_left_in_a_view_dir_is_detached_before_the_dir_is_removed(tmp: Path) -> None:
    from runtime.syscalls import LINUX

    view = old_dir(tmp, "view-dead")
    merged = view / "merged"
    merged.mkdir()
    LINUX.mount("tmpfs", str(merged), "tmpfs", 0, "size=1m")
    try:
        (merged / "inside").write_text("the mounted tree")
        os.utime(view, (OLD, OLD))
        assert scratch.sweep(tmp, SCRATCH_PREFIXES, grace_s=0).removed == ("view-dead",)
        assert not is_mounted(merged) and not view.exists()
    finally:
        if is_mounted(merged):
            LINUX.umount2(str(merged), 0)


def test_busy_leaves_out_the_calling_threads_own_entries(tmp: Path) -> None:
    mine = old_dir(tmp, "pull-mine")
    theirs = old_dir(tmp, "pull-theirs")
    started, stop = threading.Event(), threading.Event()

    def other_thread() -> None:
        with scratch.held(theirs):
            started.set()
            stop.wait(10)

    t = threading.Thread(target=other_thread)
    t.start()
    try:
        started.wait(10)
        with scratch.held(mine):
            assert scratch.busy(tmp, ("pull-",)) == ["pull-theirs"]  # the pull's own commit may collect
    finally:
        stop.set()
        t.join()
    assert scratch.busy(tmp, ("pull-",)) == []


@pytest.mark.requires("root")
def test_blobs_are_not_collected_while_a_pull_runs_in_another_process(tmp_path: Path) -> None:
    import hashlib

    from tests.fakes.image_tars import layer

    store = ImageStore(Paths(tmp_path / "root"))
    fetched = layer([("x", "fetched by skopeo, not loaded yet")])
    digest = f"sha256:{hashlib.sha256(fetched).hexdigest()}"
    holder = Holder(store.tmp_dir, "pull-")
    try:
        store.layers.put_blob_bytes(fetched, digest, what="fetched")
        removal = store.prune()
        assert removal.blobs_removed == 0 and store.layers.has_blob(digest)
        assert removal.scratch_removed == 0 and holder.path.is_dir()
    finally:
        holder.kill()
    removal = store.prune()
    assert removal.blobs_removed == 1 and removal.scratch_removed == 1 and not store.layers.has_blob(digest)
    assert list(store.tmp_dir.iterdir()) == []
