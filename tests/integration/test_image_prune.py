"""``pymigrate image ls / tag / rm / prune`` and the scratch sweep, with real containers, CRIU
checkpoints, processes killed mid-operation, a real daemon start and a real pull (issue 12).

Each test has a state root of its own (prune --all would take the session root's images away
from other tests); containers run with ``--network none``, so no bridge is needed.

- tag moves a name off an image a container runs on: the image stays, unnamed, prune keeps it;
  once only a checkpoint uses it prune still keeps it and the checkpoint restores onto it; with
  the checkpoint gone prune deletes it with its own layer, and prune --all empties the store;
- a CLI process killed while it had an image's layers mounted (``view``) leaves the mount and
  its dir: the daemon's start detaches and removes them, while a CLI ``image pull`` running
  beside it (skopeo held back by a PATH shim for a few seconds) keeps its scratch dir and its
  fetched blobs through the daemon's start and an ``image prune``, and finishes.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.fakes.image_tars import layer
from tests.fakes.oci_layouts import write_oci_layout
from tests.integration.cli_helpers import ok, start_daemon, stop_daemon, unique
from tests.integration.conftest import PYMIGRATE, REPO, _remove_all, _unmount_below

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "busybox", "overlay")]

PM = Callable[..., subprocess.CompletedProcess]
OLD = time.time() - 3600  # older than any grace period: only a live holder keeps an entry


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    from runtime.config import Paths
    from runtime.image_store import ImageStore
    from runtime.runtime import Runtime

    state = tmp_path / "root"
    Paths(state).ensure()
    ImageStore(Paths(state)).build_busybox("busybox")
    try:
        yield state
    finally:
        _remove_all(Runtime(state))
        _unmount_below(state)


@pytest.fixture
def pm(root: Path) -> PM:
    def run(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*PYMIGRATE, "--root", str(root), *args], capture_output=True, timeout=timeout, cwd=REPO,
                              env=env, stdin=subprocess.DEVNULL)

    return run


def app_layout(root: Path, out: Path, top: str) -> Path:
    """busybox as a gzip'ed base layer and a small top layer of its own."""
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    base = io.BytesIO()
    ImageStore(Paths(root)).export_stream("busybox", base)
    return write_oci_layout(out, [(base.getvalue(), True), (layer([("version", f"{top}\n")]), False)],
                            {"Cmd": ["sh", "-c", "cat /version; sleep 1000"]})


def load(pm: PM, root: Path, tmp_path: Path, name: str, top: str) -> dict:
    ok(pm("image", "load", str(app_layout(root, tmp_path / f"oci-{top}", top)), "--name", name))
    return next(i for i in json.loads(ok(pm("image", "ls", "--json"))) if i["name"] == name)


def stored_images(root: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (root / "images").iterdir() if p.is_dir()}


def layer_count(root: Path) -> int:
    return sum(1 for _ in (root / "layers").iterdir())


@pytest.mark.requires("criu", "cgroup2")
def test_tag_moves_a_name_and_prune_keeps_what_containers_and_checkpoints_use(pm: PM, root: Path,
                                                                              tmp_path: Path) -> None:
    one = load(pm, root, tmp_path, "app:1", "one")
    two = load(pm, root, tmp_path, "app:2", "two")
    assert one["layers"] == two["layers"] == 2 and layer_count(root) == 3  # the busybox base is shared
    rows = [line.split() for line in ok(pm("image", "ls")).splitlines()]
    assert rows[0] == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert [r[:3] for r in rows[1:]] == [["app", "1", one["digest"][7:19]], ["app", "2", two["digest"][7:19]],
                                        ["busybox", "<none>", rows[3][2]]]

    name = unique("tagged")
    ok(pm("run", "-d", "--network", "none", "--name", name, "app:1"))
    tagged = json.loads(ok(pm("image", "tag", "app:2", "app:1", "--json")))
    assert tagged["digest"] == two["digest"]  # app:1 moved to two ...
    assert one["digest"] in stored_images(root)  # ... and one stays, unnamed: the container runs on it
    assert json.loads(ok(pm("image", "prune", "--json")))["deleted"] == []

    checkpoint_id = ok(pm("checkpoint", name)).strip()
    ok(pm("rm", name))
    pruned = json.loads(ok(pm("image", "prune", "--json")))
    assert pruned["deleted"] == [] and one["digest"] in stored_images(root)  # the checkpoint restores onto it
    ok(pm("restore", checkpoint_id))
    assert ok(pm("logs", name)).startswith("one\n")
    ok(pm("rm", "-f", name))
    ok(pm("checkpoint", "rm", checkpoint_id))

    out = ok(pm("image", "prune"))
    assert f"deleted: {one['digest']}\n" in out and "deleted layer: sha256:" in out
    assert "total reclaimed space: " in out and one["digest"] not in stored_images(root) and layer_count(root) == 2

    removal = json.loads(ok(pm("image", "prune", "--all", "--force", "--json")))
    assert sorted(removal["untagged"]) == ["app:1", "app:2", "busybox"] and removal["bytes_freed"] > 0
    assert len(removal["layers_removed"]) == 2 and removal["blobs_removed"] >= 3
    assert json.loads(ok(pm("image", "ls", "--json"))) == [] and layer_count(root) == 0
    assert stored_images(root) == set() and not any((root / "blobs/sha256").iterdir())


VIEWER = """
import sys, time
from pathlib import Path
from runtime.config import Paths
from runtime.image_store import ImageStore
with ImageStore(Paths(Path(sys.argv[1]))).view(sys.argv[2]) as tree:
    print(tree, flush=True)
    time.sleep(1000)
"""


def killed_viewer(root: Path, image: str) -> Path:
    """A process killed (SIGKILL) while it had ``image``'s layers mounted; the mount point it left."""
    proc = subprocess.Popen([sys.executable, "-c", VIEWER, str(root), image], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout is not None
    merged = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    return merged


def test_the_daemon_start_sweeps_a_dead_view_mount_but_not_a_running_pull(pm: PM, root: Path, tmp_path: Path) -> None:
    from runtime.overlay import is_mounted
    from tests.integration.test_image_registry import skopeo_push, start_registry

    load(pm, root, tmp_path, "app:1", "one")
    merged = killed_viewer(root, "app:1")
    view = merged.parent
    assert is_mounted(merged) and view.name.startswith("view-")
    os.utime(view, (OLD, OLD))

    registry = start_registry(tmp_path / "registry")
    try:
        skopeo_push(app_layout(root, tmp_path / "oci-pushed", "pushed"), registry, "pmt/pushed:1")
        shim = tmp_path / "bin"
        shim.mkdir()
        (shim / "skopeo").write_text("#!/bin/sh\nsleep 6\nexec /usr/bin/skopeo \"$@\"\n")
        (shim / "skopeo").chmod(0o755)
        env = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}")
        pull = subprocess.Popen([*PYMIGRATE, "--root", str(root), "image", "pull", f"{registry.address}/pmt/pushed:1",
                                 "--tls-verify=false", "--name", "pushed:1", "--json"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not (pulls := list((root / "tmp").glob("pull-*"))):
                assert time.monotonic() < deadline and pull.poll() is None, "the pull made no scratch dir"
                time.sleep(0.05)
            os.utime(pulls[0], (OLD, OLD))  # not young: only the pull's own lock can keep it

            proc, sock = start_daemon(root)  # reconcile runs before it serves
            stop_daemon(proc, sock)
            assert not is_mounted(merged) and not view.exists(), "the dead viewer's mount and dir were swept"
            assert pulls[0].is_dir(), "the running pull's scratch dir was kept"
            pruned = json.loads(ok(pm("image", "prune", "--json")))
            assert pulls[0].is_dir() and pruned["blobs_removed"] == 0

            out, err = pull.communicate(timeout=300)
        finally:
            if pull.poll() is None:
                pull.kill()
                pull.communicate()
        assert pull.returncode == 0, err.decode()
        assert json.loads(out)["name"] == "pushed:1"
    finally:
        registry.stop()
    assert not list((root / "tmp").iterdir())
    name = unique("pulled")
    ok(pm("run", "-d", "--network", "none", "--name", name, "pushed:1"))
    deadline = time.monotonic() + 20
    while not ok(pm("logs", name)).startswith("pushed\n"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
