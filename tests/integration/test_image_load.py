"""``pymigrate image load`` with images made by the real tools (podman, skopeo), no network.

One multi-layer image is built once per module from the busybox rootfs the repo makes
(scripts/make-busybox-image.sh -> ``podman import``): ``podman build`` adds, deletes and replaces
files and an opaque directory, sets ENTRYPOINT/CMD/ENV/WORKDIR; a ``podman commit`` on top adds a
file with ``cap_net_raw+ep`` (setcap on the host side of the mounted container) and a file with a
``user.note`` xattr. It is saved as a Docker archive, an OCI archive, an OCI directory
(``podman save``) and copied with skopeo to an OCI layout; each is loaded and run with no command.
podman uses a private ``--root``/``--runroot`` under the test's tmp dir (vfs driver), so the
host's podman storage is untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.cli_helpers import ok

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = """\
FROM localhost/pmt-base:1
RUN echo old > /replace.txt && echo gone > /etc/gone.txt && mkdir /opq && echo lower > /opq/lower.txt
RUN rm /etc/gone.txt && echo new > /replace.txt && echo added > /added.txt \\
    && rm -rf /opq && mkdir /opq && echo upper > /opq/upper.txt
ENV GREETING=hello-from-image PATH=/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /work
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo ran; pwd; echo $GREETING $EXTRA; cat /replace.txt; ls /opq; test -e /etc/gone.txt || echo gone-absent"]
"""

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "busybox")]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (apt-get install {tool})")
    return path


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    podman = _need("podman")
    _need("setcap")
    work = tmp_path_factory.mktemp("podman")
    base = [podman, "--root", str(work / "root"), "--runroot", str(work / "runroot"), "--tmpdir", str(work / "tmp"),
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs", "--events-backend", "none"]

    def run(*args: str) -> str:
        r = subprocess.run([*base, *args], capture_output=True, text=True, timeout=300, cwd=work)
        assert r.returncode == 0, f"podman {args[0]}: {r.stderr}"
        return r.stdout.strip()

    try:
        subprocess.run([str(REPO / "scripts/make-busybox-image.sh"), str(work / "base.tar")], check=True,
                       capture_output=True, timeout=120)
        run("import", str(work / "base.tar"), "localhost/pmt-base:1")
        (work / "Containerfile").write_text(CONTAINERFILE)
        run("build", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
            "-t", "localhost/pmt-built:1", ".")
        ctr = run("create", "localhost/pmt-built:1")
        mnt = Path(run("mount", ctr))
        shutil.copy(mnt / "bin/busybox", mnt / "bin/capbox")
        subprocess.run(["setcap", "cap_net_raw+ep", str(mnt / "bin/capbox")], check=True, timeout=30)
        (mnt / "xattr.txt").write_text("x\n")
        os.setxattr(mnt / "xattr.txt", "user.note", b"hello")
        run("umount", ctr)
        run("commit", "-q", ctr, "localhost/pmt-layered:1")
        run("rm", ctr)
        out = {"docker-archive": work / "d.tar", "oci-archive": work / "o.tar", "oci-dir": work / "odir"}
        for fmt, path in out.items():
            run("save", "--format", fmt, "-o", str(path), "localhost/pmt-layered:1")
        skopeo = shutil.which("skopeo")
        if skopeo is not None:
            subprocess.run([skopeo, "copy",
                            f"containers-storage:[vfs@{work / 'root'}+{work / 'runroot'}]localhost/pmt-layered:1",
                            f"oci:{work / 'skopeo'}:layered"], check=True, capture_output=True, timeout=300)
            out["skopeo-oci"] = work / "skopeo"
        yield out
    finally:
        subprocess.run([*base, "system", "reset", "-f"], capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)


FORMATS = ["docker-archive", "oci-archive", "oci-dir", "skopeo-oci"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_and_run_with_the_image_config(fmt: str, archives: dict[str, Path], pm: Callable[..., subprocess.CompletedProcess],
                                            pm_root: Path) -> None:
    if fmt not in archives:
        pytest.skip("skopeo not installed")
    name = f"layered-{fmt}"
    loaded = json.loads(ok(pm("image", "load", str(archives[fmt]), "--name", f"{name}:1", "--json")))
    assert loaded["name"] == f"{name}:1"

    details = json.loads(ok(pm("image", "inspect", f"{name}:1", "--json")))
    config = details["config"]
    assert config["Entrypoint"] == ["/bin/sh", "-c"]
    assert config["WorkingDir"] == "/work"
    assert "GREETING=hello-from-image" in config["Env"]

    # the rootfs from the host side: whiteouts applied, capability and xattr kept
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    store = ImageStore(Paths(pm_root))
    assert len(store.get(f"{name}:1").layers) >= 3  # stored as layers, not flattened
    with store.view(f"{name}:1") as rootfs:
        assert not (rootfs / "etc/gone.txt").exists()
        assert (rootfs / "replace.txt").read_text() == "new\n"
        assert sorted(os.listdir(rootfs / "opq")) == ["upper.txt"]
        assert os.getxattr(rootfs / "xattr.txt", "user.note") == b"hello"
        getcap = subprocess.run(["getcap", str(rootfs / "bin/capbox")], capture_output=True, text=True, timeout=30).stdout
    assert "cap_net_raw=ep" in getcap

    # no command: ENTRYPOINT + CMD run, in WORKDIR, with the image's env under -e
    cname = f"c-{fmt}"
    ok(pm("run", "-d", "--name", cname, "-e", "EXTRA=from-cli", f"{name}:1"))
    assert ok(pm("wait", cname)).strip() == "0"
    assert ok(pm("logs", cname)).split("\n") == [
        "ran", "/work", "hello-from-image from-cli", "new", "upper.txt", "gone-absent", ""]

    # a command replaces CMD and is appended to ENTRYPOINT; the capability is there inside too
    cname2 = f"c2-{fmt}"
    ok(pm("run", "-d", "--name", cname2, f"{name}:1", "echo replaced; cat /proc/self/status | grep CapEff >/dev/null && "
          "od -An -c /xattr.txt | head -1 >/dev/null && echo inner-ok"))
    assert ok(pm("wait", cname2)).strip() == "0"
    assert ok(pm("logs", cname2)).split() == ["replaced", "inner-ok"]
    ok(pm("rm", "-f", cname, cname2))


def test_import_refuses_an_image_archive(archives: dict[str, Path], pm: Callable[..., subprocess.CompletedProcess]) -> None:
    r = pm("image", "import", "nope", str(archives["docker-archive"]))
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "docker-archive, not a rootfs tarball" in err and "use: pymigrate image load" in err


def test_flat_tarball_images_keep_working(pm: Callable[..., subprocess.CompletedProcess]) -> None:
    details = json.loads(ok(pm("image", "inspect", "busybox", "--json")))
    assert details["config"] is None
    r = pm("run", "-d", "--name", "flat-noc", "busybox")
    assert r.returncode != 0 and "has no default command" in r.stderr.decode()
