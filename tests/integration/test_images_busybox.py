"""The busybox image for real: built by the store and by scripts/make-busybox-image.sh, run in a chroot.

Needs root (ownership, chroot) and Debian's busybox-static.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from runtime.config import Paths
from runtime.image_store import ImageStore

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "make-busybox-image.sh"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "busybox")]


def in_chroot(rootfs: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chroot", str(rootfs), "/bin/sh", "-c", script], capture_output=True, text=True, env=ENV, timeout=30
    )


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(Paths(tmp_path / "root"))


def test_build_busybox_runs_in_a_chroot(store: ImageStore) -> None:
    img = store.build_busybox()
    assert store.get("busybox") == img
    for d in ("proc", "sys", "dev", "run", "var"):
        assert (img.rootfs / d).is_dir() and not any((img.rootfs / d).iterdir())
    assert os.readlink(img.rootfs / "bin/sh") == "/bin/busybox"
    st = os.lstat(img.rootfs / "bin/busybox")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o755)

    # nothing below writes (a chroot straight onto the lower dir would change the image;
    # containers get an overlay, see test_rootfs_is_an_unchanged_overlay_lowerdir)
    r = in_chroot(img.rootfs, "echo ok")
    assert (r.returncode, r.stdout, r.stderr) == (0, "ok\n", "")
    # applets through their symlinks, the passwd file, the special directories
    r = in_chroot(img.rootfs, "ls /usr/bin/awk && id -un && cat /etc/hostname && stat -c %a /tmp /root")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["/usr/bin/awk", "root", "busybox", "1777", "700"]
    from runtime.image_store import tree_digest

    assert tree_digest(img.rootfs)[0] == img.digest


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.zst"])
def test_script_output_imports_to_the_same_image(store: ImageStore, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"busybox{suffix}"
    r = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    imported = store.import_tarball("from-script", out)
    built = store.build_busybox("built")
    assert imported.digest == built.digest  # the script and build_busybox make the same tree
    r = in_chroot(imported.rootfs, "echo ok")
    assert (r.returncode, r.stdout) == (0, "ok\n")


def test_script_is_reproducible_and_rejects_bad_usage(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    for out in (a, b):
        subprocess.run(["bash", str(SCRIPT), str(out)], check=True, capture_output=True, timeout=120)
    assert a.read_bytes() == b.read_bytes()
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage:" in r.stderr
    r = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "c.tar")],
        capture_output=True, text=True, timeout=30, env={**ENV, "BUSYBOX": str(tmp_path / "none")},
    )
    assert r.returncode == 1 and "apt-get install busybox-static" in r.stderr
    assert not (tmp_path / "c.tar").exists()


def test_export_ships_busybox_to_another_host(store: ImageStore, tmp_path: Path) -> None:
    img = store.build_busybox()
    import zstandard

    wire = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(wire, closefd=False) as z:
        store.export_stream(img.digest, z)  # type: ignore[arg-type]
    other = ImageStore(Paths(tmp_path / "other-host"))
    assert not other.has_digest(img.digest)
    shipped = other.import_stream("busybox", io.BytesIO(wire.getvalue()), expected_digest=img.digest)
    assert shipped.digest == img.digest
    r = in_chroot(shipped.rootfs, "echo ok")
    assert (r.returncode, r.stdout) == (0, "ok\n")


@pytest.mark.requires("overlay")
def test_rootfs_is_an_unchanged_overlay_lowerdir(store: ImageStore, tmp_path: Path) -> None:
    """Containers write to the overlay's upper dir; the shared lower rootfs keeps its digest."""
    from runtime.image_store import tree_digest

    img = store.build_busybox()
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={img.rootfs},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True, env=ENV)
    try:
        r = in_chroot(merged, "echo changed >/etc/hostname && rm /bin/ls && echo new >/root/file && cat /etc/hostname")
        assert (r.returncode, r.stdout) == (0, "changed\n"), r.stderr
    finally:
        subprocess.run(["umount", str(merged)], check=True, env=ENV)
    assert (img.rootfs / "etc/hostname").read_text() == "busybox\n"
    assert (img.rootfs / "bin/ls").is_symlink()
    assert tree_digest(img.rootfs)[0] == img.digest
    assert (upper / "etc/hostname").read_text() == "changed\n"
