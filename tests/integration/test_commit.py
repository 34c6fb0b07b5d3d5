"""``pymigrate commit`` for real: a busybox container's changes become an image layer that ``run``
and ``image push`` take (runtime/commit.py).

A running container changes files of its image (one modified, one deleted, a directory of the
image replaced by a new one: overlayfs makes it opaque), adds files with owners, modes, a hard
link and a symlink, then is committed with ``--change``; a container of the new image sees all of
it and runs the committed CMD with the committed ENV. A stopped container is committed too, the
image pushed to a real docker-registry (test_image_registry's) and pulled back. A paused
container is committed through a daemon (``--host``) and stays paused.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.cli_helpers import ok, refused, start_daemon, stop_daemon, unique

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "busybox")]

PM = Callable[..., subprocess.CompletedProcess]

CHANGES = ("echo hello > /hello; chown 1234:5678 /hello; chmod 640 /hello; ln /hello /hello-link; "
           "ln -s /hello /hello-sym; rm /etc/passwd; echo 'extra:x:1000:' >> /etc/group; "
           "rm -rf /usr/sbin; mkdir /usr/sbin; echo only > /usr/sbin/only; mkdir -p /srv/data; echo d > /srv/data/f")
CHECK = ("test -e /etc/passwd || echo passwd-gone; tail -n 1 /etc/group; ls /usr/sbin; stat -c '%u:%g %a %h' /hello; "
         "readlink /hello-sym; cat /srv/data/f; echo A=$A; grep -q changed /.pymigrate/log && echo old-log || echo own-log")


@pytest.fixture
def names(pm: PM) -> Iterator[list[str]]:
    """Containers and images to remove after the test: ("c", name) or ("i", name)."""
    made: list[str] = []
    yield made
    for item in reversed(made):
        kind, name = item.split(":", 1)
        pm(*(("rm", "-f", name) if kind == "c" else ("image", "rm", name)))


def run_to_end(pm: PM, names: list[str], image: str, *command: str) -> str:
    """The log of a container of ``image`` run to its end (exit 0)."""
    cname = unique("cm-run")
    names.append(f"c:{cname}")
    ok(pm("run", "-d", "--name", cname, image, *command))
    assert ok(pm("wait", cname, timeout=60)).strip() == "0", ok(pm("logs", cname))
    return ok(pm("logs", cname))


def test_commit_a_running_container_then_run_the_image(pm: PM, names: list[str]) -> None:
    cname, image = unique("cm-src"), f"{unique('committed')}:1"
    names.append(f"c:{cname}")
    ok(pm("run", "-d", "--name", cname, "busybox", "sh", "-c", f"{CHANGES}; echo changed; sleep 1000"))
    for _ in range(100):
        if "changed" in ok(pm("logs", cname)):
            break
        subprocess.run(["sleep", "0.1"], check=True)
    result = json.loads(ok(pm("commit", cname, image, "--change", 'CMD ["cat", "/hello"]', "--change", "ENV A=b",
                              "-m", "first commit", "--author", "tester", "--json", timeout=120)))
    names.append(f"i:{image}")
    assert result["image"]["name"] == image and result["image"]["layers"] == 2  # flat busybox as one, the changes
    assert result["whiteouts"] >= 1 and result["opaque_dirs"] >= 1 and result["frozen_ms"] > 0
    assert result["skipped"] == []  # the runtime's own files are left out without a word
    # the container goes on: thawed, running
    assert json.loads(ok(pm("inspect", cname, "--json")))[0]["state"]["status"] == "running"
    assert ok(pm("exec", cname, "echo", "alive")).strip() == "alive"

    listed = {i["name"]: i for i in json.loads(ok(pm("image", "ls", "--json")))}
    assert listed[image]["digest"] == result["image"]["digest"]
    config = json.loads(ok(pm("image", "inspect", image, "--json")))["config"]
    assert config["Cmd"] == ["cat", "/hello"] and "A=b" in config["Env"] and config["Entrypoint"] is None
    assert config["os"] == "linux" and config["architecture"]

    assert run_to_end(pm, names, image) == "hello\n"  # the committed CMD
    lines = run_to_end(pm, names, image, "sh", "-c", CHECK).splitlines()
    assert lines == ["passwd-gone", "extra:x:1000:", "only", "1234:5678 640 2", "/hello", "d", "A=b", "own-log"], lines


def test_commit_a_stopped_container_push_it_and_pull_it_back(pm: PM, names: list[str], tmp_path: Path,
                                                             pm_root: Path) -> None:
    from runtime import upperfs
    from runtime.config import Paths
    from runtime.overlay import is_mounted, mount_points
    from runtime.state import StateStore
    from tests.integration.test_image_registry import start_registry

    cname, image = unique("cm-stopped"), f"{unique('stopped')}:1"
    names.append(f"c:{cname}")
    ok(pm("run", "-d", "--name", cname, "busybox", "sh", "-c", "echo kept > /kept; rm /etc/group"))
    assert ok(pm("wait", cname, timeout=60)).strip() == "0"
    # as after a host reboot: its root and its upper-layer image are not mounted; commit mounts the
    # image read-only for the read and leaves nothing mounted
    cdir = StateStore(Paths(pm_root)).dir(json.loads(ok(pm("inspect", cname, "--json")))[0]["spec"]["container_id"])
    layout = upperfs.Layout.of(cdir)
    assert layout.image is not None, "the upper layer is expected on its own image (PYMIGRATE_UPPER_SIZE unset)"
    for mounted in (cdir / "merged", layout.mountpoint):
        subprocess.run(["umount", str(mounted)], check=True)
    assert not is_mounted(layout.mountpoint)
    ok(pm("commit", cname, image, "-c", 'ENTRYPOINT ["/bin/cat"]', "-c", "CMD /kept", "-c", "LABEL stage=test",
          "-c", "EXPOSE 8080", timeout=120))
    names.append(f"i:{image}")
    assert not is_mounted(layout.mountpoint)
    assert not [m for m in mount_points() if m.startswith(str(pm_root / "tmp"))]
    config = json.loads(ok(pm("image", "inspect", image, "--json")))["config"]
    assert config["Entrypoint"] == ["/bin/cat"] and config["Cmd"] == ["/bin/sh", "-c", "/kept"]
    assert config["Labels"] == {"stage": "test"} and config["ExposedPorts"] == ["8080/tcp"]

    registry = start_registry(tmp_path / "registry")
    try:
        ref = f"{registry.address}/pmt/committed:1"
        pushed = json.loads(ok(pm("image", "push", image, ref, "--tls-verify=false", "--json", timeout=300)))
        assert pushed["digest"].startswith("sha256:")
        back = f"{unique('back')}:1"
        names.append(f"i:{back}")
        pulled = json.loads(ok(pm("image", "pull", ref, "--tls-verify=false", "--name", back, "--json", timeout=300)))
    finally:
        registry.stop()
    assert pulled["digest"] == json.loads(ok(pm("image", "inspect", image, "--json")))["digest"]
    assert json.loads(ok(pm("image", "inspect", back, "--json")))["config"]["Labels"] == {"stage": "test"}
    # ENTRYPOINT cat with the shell form's CMD: cat reads /bin/sh, -c, /kept: only /kept matters here
    out = run_to_end(pm, names, back, "/kept")
    assert out == "kept\n"
    assert run_to_end(pm, names, back, "/etc/hostname").strip()  # an image file still there
    ok(pm("run", "-d", "--name", (probe := unique("cm-probe")), "--entrypoint", "sh", back, "-c",
          "test -e /etc/group || echo group-gone"))
    names.append(f"c:{probe}")
    assert ok(pm("wait", probe, timeout=60)).strip() == "0"
    assert ok(pm("logs", probe)) == "group-gone\n"


def test_commit_through_a_daemon_keeps_a_paused_container_paused(pm: PM, names: list[str], pm_root: Path) -> None:
    cname, image = unique("cm-paused"), f"{unique('remote')}:1"
    names.append(f"c:{cname}")
    ok(pm("run", "-d", "--name", cname, "busybox", "sh", "-c", "echo remote > /r; sleep 1000"))
    ok(pm("pause", cname))
    proc, sock = start_daemon(pm_root)
    try:
        host = ("--host", f"unix:{sock}")
        answer = refused(pm(*host, "commit", cname, image, "-c", "RUN true", "--json"), "InvalidArgument")
        assert "unsupported change instruction 'RUN'" in answer["error"] and "CMD" in answer["hint"]
        refused(pm(*host, "commit", unique("no-such"), image, "--json"), "ContainerNotFound")
        result = json.loads(ok(pm(*host, "commit", cname, image, "-c", 'CMD ["cat", "/r"]', "--json", timeout=120)))
        names.append(f"i:{image}")
        assert result["frozen_ms"] == 0  # paused already: commit neither froze nor thawed it
    finally:
        stop_daemon(proc, sock)
    assert json.loads(ok(pm("inspect", cname, "--json")))[0]["state"]["status"] == "paused"
    ok(pm("unpause", cname))
    assert run_to_end(pm, names, image) == "remote\n"
    # --pause=false reads a running container as it runs
    result = json.loads(ok(pm("commit", "--pause=false", cname, image, "--json", timeout=120)))
    assert result["frozen_ms"] == 0
    # what no image may hold is refused by the layer loader, named, and nothing is tagged
    ok(pm("exec", cname, "ln", "-s", "../../../etc/shadow", "/escape"))
    refusal = refused(pm("commit", cname, (other := f"{unique('refused')}:1"), "--json", timeout=120), "UnsafeArchive")
    assert "'escape'" in refusal["error"] and "escapes the image root" in refusal["error"] and "/escape" in refusal["hint"]
    assert other not in {i["name"] for i in json.loads(ok(pm("image", "ls", "--json")))}


def test_a_commit_killed_while_the_container_is_frozen_leaves_it_running(pm: PM, names: list[str], pm_root: Path) -> None:
    """The freeze is recorded first (runtime/freeze_record.py): SIGKILL the commit while it reads a
    256 MiB file frozen, and the next look at the container thaws it; no image is named."""
    from runtime.runtime import Runtime
    from tests.integration.conftest import PYMIGRATE, REPO

    cname, image = unique("cm-killed"), f"{unique('killed')}:1"
    names.append(f"c:{cname}")
    ok(pm("run", "-d", "--name", cname, "busybox", "sh", "-c",
          "dd if=/dev/zero of=/big bs=1M count=256 2>/dev/null; echo ready; sleep 1000"))
    for _ in range(600):
        if "ready" in ok(pm("logs", cname)):
            break
        subprocess.run(["sleep", "0.1"], check=True)
    rt = Runtime(pm_root)
    cid = json.loads(ok(pm("inspect", cname, "--json")))[0]["spec"]["container_id"]
    cgroup = rt.cgroups(None)
    proc = subprocess.Popen([*PYMIGRATE, "--root", str(pm_root), "commit", cname, image], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while cgroup.freezer_state(cid) != "frozen" and proc.poll() is None:
            subprocess.run(["sleep", "0.002"], check=True)
        assert proc.poll() is None, "the commit ended before it could be killed while frozen"
        record = rt.store.load_state(cid).frozen_by
        assert record is not None and record.operation == "commit"
    finally:
        proc.kill()
        proc.wait()
    assert cgroup.freezer_state(cid) == "frozen"  # nobody thawed it yet
    info = json.loads(ok(pm("inspect", cname, "--json")))[0]  # settles the dead commit's freeze
    assert info["state"]["status"] == "running" and info["state"]["frozen_by"] is None
    assert ok(pm("exec", cname, "echo", "alive")).strip() == "alive"
    assert image not in {i["name"] for i in json.loads(ok(pm("image", "ls", "--json")))}
    # the killed commit's scratch dir stays until a sweep takes it, once older than the sweep's
    # grace period (aged here: the state root is shared by the session, other tests count leftovers)
    left = [p for p in (pm_root / "tmp").iterdir() if p.name.startswith("image-")]
    assert left
    for p in left:
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    assert json.loads(ok(pm("image", "prune", "--json")))["scratch_removed"] >= 1
    assert not any(p.name.startswith("image-") for p in (pm_root / "tmp").iterdir())


def test_a_container_frozen_by_another_operation_is_not_thawed_by_commit(pm: PM, names: list[str], pm_root: Path) -> None:
    """A migration freezes its source without a record in the container's state: commit must not
    thaw it (it refuses, Busy), and ``--pause=false`` reads it without touching the freezer."""
    from runtime.runtime import Runtime

    cname, image = unique("cm-busy"), f"{unique('busy')}:1"
    names.append(f"c:{cname}")
    ok(pm("run", "-d", "--name", cname, "busybox", "sh", "-c", "echo b > /b; sleep 1000"))
    cid = json.loads(ok(pm("inspect", cname, "--json")))[0]["spec"]["container_id"]
    cgroup = Runtime(pm_root).cgroups(None)
    cgroup.freeze(cid)  # as a migration's source does
    try:
        answer = refused(pm("commit", cname, image, "--json", timeout=120), "Busy")
        assert "--pause=false" in answer["hint"]
        assert cgroup.freezer_state(cid) == "frozen"
        ok(pm("commit", "--pause=false", cname, image, timeout=120))
        names.append(f"i:{image}")
        assert cgroup.freezer_state(cid) == "frozen"
    finally:
        cgroup.thaw(cid)
    assert run_to_end(pm, names, image, "cat", "/b") == "b\n"
