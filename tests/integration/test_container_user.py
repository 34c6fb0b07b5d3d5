"""Container users and entrypoints on the real kernel: ``run -u``, ``exec -u``, an image's
``User``, ``--entrypoint``, and a non-root container across checkpoint + restore.

The user is looked up by the container's init in the container's own /etc/passwd and /etc/group
(runtime/users.py). The image with a config is an OCI layout made here: the repo's busybox rootfs
(scripts/make-busybox-image.sh) as its first layer, a second layer with an ``app`` user and a
group listing it; its config says ``User: app``, ``Entrypoint: ["/bin/sh", "-c"]``, ``Cmd: ["id"]``.
A second image has /etc/passwd as a symlink to a host file.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.fakes.image_tars import Member, make_tar
from tests.integration.cli_helpers import LOOP, ok, start_daemon, stop_daemon, unique
from tests.integration.workloads import container_file, init_pid, read_int, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]

REPO = Path(__file__).resolve().parents[2]
NOBODY_ID = "uid=65534(nobody) gid=65534(nogroup)"  # busybox id: no "groups=" for an empty list
APP_ID = "uid=1000(app) gid=1000(app) groups=10(wheel)"  # supplementary: the groups listing app
PM = Callable[..., subprocess.CompletedProcess]


def out(r: subprocess.CompletedProcess) -> str:
    return ok(r).strip()


def status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_layout(path: Path, layers: list[bytes], run_config: dict[str, object]) -> Path:
    """An OCI image layout with these uncompressed layers and this ``config`` object."""
    blobs = path / "blobs/sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes, media: str) -> dict[str, object]:
        (blobs / sha(data)[7:]).write_bytes(data)
        return {"mediaType": media, "digest": sha(data), "size": len(data)}

    config = json.dumps({"os": "linux", "architecture": "amd64", "config": run_config,
                         "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in layers]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": put(config, "application/vnd.oci.image.config.v1+json"),
                           "layers": [put(layer, "application/vnd.oci.image.layer.v1.tar") for layer in layers]}).encode()
    index = {"schemaVersion": 2, "manifests": [dict(put(manifest, "application/vnd.oci.image.manifest.v1+json"),
                                                    platform={"os": "linux", "architecture": "amd64"})]}
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(json.dumps(index))
    return path


def load(root: Path, layout: Path) -> str:
    name = f"userimg-{secrets.token_hex(3)}:1"
    subprocess.run([*_pm_cmd(root), "image", "load", str(layout), "--name", name], check=True, capture_output=True,
                   timeout=120, cwd=REPO)
    return name


@pytest.fixture(scope="module")
def base_layer(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    work = tmp_path_factory.mktemp("userbase")
    subprocess.run([str(REPO / "scripts/make-busybox-image.sh"), str(work / "base.tar")], check=True,
                   capture_output=True, timeout=120)
    return (work / "base.tar").read_bytes()


@pytest.fixture(scope="module")
def host_passwd() -> Iterator[str]:
    """A passwd file on the host at the path the symlink image's /etc/passwd names."""
    path = Path(f"/tmp/pmt-host-passwd-{secrets.token_hex(4)}")
    path.write_text("hostonly:x:4242:4242::/:/bin/sh\n")
    yield str(path)
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def symlink_image(pm_root: Path, base_layer: bytes, host_passwd: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    top = make_tar([Member("etc", "dir", mode=0o755), Member("etc/passwd", "symlink", linkname=host_passwd)])
    return load(pm_root, oci_layout(tmp_path_factory.mktemp("symimg") / "oci", [base_layer, top], {"Cmd": ["id"]}))


@pytest.fixture(scope="module")
def user_image(pm_root: Path, base_layer: bytes, tmp_path_factory: pytest.TempPathFactory) -> str:
    passwd = ("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
              "app:x:1000:1000:App:/home/app:/bin/sh\n")
    group = "root:x:0:\nwheel:x:10:app\napp:x:1000:\nnogroup:x:65534:\n"
    top = make_tar([
        Member("etc", "dir", mode=0o755),
        Member("etc/passwd", data=passwd.encode()),
        Member("etc/group", data=group.encode()),
        Member("home", "dir", mode=0o755),
        Member("home/app", "dir", mode=0o750, uid=1000, gid=1000),
    ])
    layout = oci_layout(tmp_path_factory.mktemp("userimg") / "oci", [base_layer, top],
                        {"User": "app", "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["id"], "WorkingDir": "/home/app"})
    return load(pm_root, layout)


def _pm_cmd(root: Path) -> list[str]:
    from tests.integration.conftest import PYMIGRATE

    return [*PYMIGRATE, "--root", str(root)]


def test_run_as_nobody_by_name(pm: PM) -> None:
    assert out(pm("run", "--rm", "-u", "nobody", "busybox", "id")) == NOBODY_ID
    # no capabilities at all, but the container's bounding set; HOME from passwd
    caps = out(pm("run", "--rm", "--user", "nobody", "busybox", "sh", "-c", "grep ^Cap /proc/self/status; echo $HOME"))
    fields = dict(line.split(":\t") for line in caps.splitlines()[:-1])
    assert all(int(fields[k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")), fields
    assert int(fields["CapBnd"], 16) == 0xA80425FB
    assert caps.splitlines()[-1] == "/nonexistent"


def test_run_as_numeric_ids_without_entries(pm: PM) -> None:
    assert out(pm("run", "--rm", "-u", "1234:5678", "busybox", "sh", "-c", "id; echo $HOME")).split("\n") == [
        "uid=1234 gid=5678", "/"]
    assert out(pm("run", "--rm", "-u", "1234", "busybox", "id")) == "uid=1234 gid=0(root)"


def test_default_root_gets_its_own_groups_not_the_hosts(pm: PM) -> None:
    assert out(pm("run", "--rm", "busybox", "sh", "-c", "id; echo $HOME")).split("\n") == [
        "uid=0(root) gid=0(root)", "/root"]


def test_unknown_user_is_refused_and_nothing_is_left(pm: PM) -> None:
    name = unique("ghost")
    r = pm("run", "-d", "--json", "--name", name, "-u", "ghost", "busybox", "id")
    assert r.returncode == 125
    answer = json.loads(r.stdout)
    assert answer["type"] == "InvalidArgument", answer
    assert "unable to find user ghost: no matching entry in the container's /etc/passwd" in answer["error"]
    assert "numeric" in answer["hint"]
    assert name not in out(pm("ps", "-a", "--format", "{{.Names}}")).split()
    r = pm("run", "--rm", "-u", "nobody:ghosts", "busybox", "id")
    assert r.returncode == 125 and b"unable to find group ghosts" in r.stderr


def test_image_user_and_its_override(pm: PM, user_image: str) -> None:
    assert out(pm("run", "--rm", user_image)) == APP_ID  # Entrypoint + Cmd, as the image's User
    assert out(pm("run", "--rm", user_image, "id; pwd; echo $HOME")).split("\n") == [APP_ID, "/home/app", "/home/app"]
    assert out(pm("run", "--rm", "-u", "root", user_image)) == "uid=0(root) gid=0(root)"
    assert out(pm("run", "--rm", "-u", "app:nogroup", user_image)) == "uid=1000(app) gid=65534(nogroup)"


def test_image_symlinks_never_reach_the_host(pm: PM, symlink_image: str, host_passwd: str) -> None:
    """The image's /etc/passwd points at a host file: resolved after pivot_root, the link dangles
    inside the container, so a user only the host file defines is unknown."""
    r = pm("run", "--rm", "-u", "hostonly", symlink_image)
    assert r.returncode == 125 and b"unable to find user hostonly" in r.stderr
    # numbers need no lookup; the container sees the dangling link, not the host file
    assert out(pm("run", "--rm", "-u", "4242", symlink_image)) == "uid=4242 gid=0(root)"
    assert out(pm("run", "--rm", symlink_image, "sh", "-c", "test -e /etc/passwd || echo dangling")) == "dangling"


def test_entrypoint(pm: PM, user_image: str) -> None:
    # replaced: the image's Cmd ("id") is not passed to the new entrypoint
    assert out(pm("run", "--rm", "--entrypoint", "/bin/echo", user_image)) == ""
    assert out(pm("run", "--rm", "--entrypoint", "/bin/echo", user_image, "hi", "there")) == "hi there"
    assert out(pm("run", "--rm", "--entrypoint", '["/bin/sh", "-c"]', "busybox", "echo $0", "zero")) == "zero"
    # cleared: the command runs as it is; with no command there is nothing to run
    assert out(pm("run", "--rm", "--entrypoint", "", user_image, "id", "-u")) == "1000"
    r = pm("run", "--rm", "--entrypoint", "", user_image)
    assert r.returncode == 125 and b"no command given" in r.stderr


def test_exec_runs_as_the_containers_user_unless_told(pm: PM, user_image: str) -> None:
    name = unique("execuser")
    ok(pm("run", "-d", "--name", name, user_image, "sleep 1000"))
    assert out(pm("exec", name, "id")) == APP_ID
    assert out(pm("exec", "-u", "nobody", name, "id")) == NOBODY_ID
    assert out(pm("exec", "--user", "0:0", name, "sh", "-c", "id -u; echo $HOME")).split("\n") == ["0", "/root"]
    r = pm("exec", "-u", "ghost", name, "id")
    assert r.returncode == 125 and b"unable to find user ghost" in r.stderr
    inspect = json.loads(out(pm("inspect", name, "--json")))[0]
    assert inspect["spec"]["user"] == "app"
    ok(pm("rm", "-f", name))


def test_user_and_entrypoint_over_the_daemon(pm: PM, pm_root: Path) -> None:
    proc, sock = start_daemon(pm_root)
    try:
        name = unique("rpcuser")
        ok(pm("--host", f"unix:{sock}", "run", "-d", "--name", name, "-u", "1234:5678", "--entrypoint", "",
              "busybox", "sh", "-c", "id > /tmp/id; sleep 1000"))
        idfile = container_file(pm_root, name, "/tmp/id")
        assert wait_for(lambda: idfile.exists() and idfile.read_text().strip(), 10, "id output") == "uid=1234 gid=5678"
        info = json.loads(out(pm("--host", f"unix:{sock}", "inspect", name, "--json")))[0]
        assert info["spec"]["user"] == "1234:5678"
        ok(pm("--host", f"unix:{sock}", "rm", "-f", name))
    finally:
        stop_daemon(proc, sock)


@pytest.mark.requires("criu", "pycriu")
def test_nobody_survives_checkpoint_and_restore(pm: PM, pm_root: Path) -> None:
    name = unique("nobodyck")
    ok(pm("run", "-d", "--name", name, "-u", "nobody", "busybox", "sh", "-c", LOOP))
    cnt = container_file(pm_root, name, "/tmp/cnt")
    wait_for(lambda: (read_int(cnt) or 0) >= 5, 20, "counter")
    before = status(init_pid(pm_root, name))
    assert before["Uid"].split() == ["65534"] * 4 and before["Gid"].split() == ["65534"] * 4

    cid = out(pm("checkpoint", name)).splitlines()[0]
    reached = read_int(cnt) or 0
    assert out(pm("restore", cid)) == name
    after = status(init_pid(pm_root, name))
    for key in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "NoNewPrivs"):
        assert after[key] == before[key], key
    wait_for(lambda: (read_int(cnt) or 0) > reached + 3, 20, "counter to go on after the restore")
    assert out(pm("exec", name, "id")) == NOBODY_ID  # the spec kept the user
    ok(pm("rm", "-f", name))
    ok(pm("checkpoint", "rm", cid))
