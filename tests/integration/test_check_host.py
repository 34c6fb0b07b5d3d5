"""``pymigrate check --json`` against facts read independently from the kernel and CRIU."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def pymigrate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("pymigrate")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "migrate"]
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(argv + list(args), capture_output=True, text=True, timeout=120, env=full_env)


@pytest.fixture(scope="module")
def report() -> dict:
    res = pymigrate("check", "--json")
    assert res.returncode in (0, 1), res.stderr
    data = json.loads(res.stdout)
    # exit status and verdict agree
    assert data["ok"] is (res.returncode == 0), data["missing"]
    return data


def criu() -> str:
    path = os.environ.get("PYMIGRATE_CRIU") or shutil.which("criu", path=SEARCH_PATH)
    assert path, "criu not found"
    return path


def criu_feature(name: str) -> bool:
    return subprocess.run([criu(), "check", "--feature", name], capture_output=True).returncode == 0


@pytest.mark.requires("root", "criu")
def test_host_is_ready(report: dict) -> None:
    # On a machine prepared by scripts/setup.sh everything the core needs is present.
    assert report["ok"], [i for i in report["items"] if i["status"] == "missing"]


@pytest.mark.requires("root")
def test_kernel_release_matches_uname(report: dict) -> None:
    assert report["host"]["kernel_release"] == os.uname().release


@pytest.mark.requires("root")
def test_cpu_flags_digest_matches_cpuinfo(report: dict) -> None:
    text = Path("/proc/cpuinfo").read_text()
    first = text.split("\n\n")[0]
    flags_line = next(line for line in first.splitlines() if line.startswith("flags"))
    flags = sorted(set(flags_line.split(":", 1)[1].split()))
    assert report["host"]["cpu"]["flags_count"] == len(flags)
    assert report["host"]["cpu"]["flags_sha256"] == hashlib.sha256(" ".join(flags).encode()).hexdigest()


@pytest.mark.requires("root")
def test_pipe_max_size_matches_proc(report: dict) -> None:
    assert report["host"]["pipe_max_size_bytes"] == int(Path("/proc/sys/fs/pipe-max-size").read_text())


@pytest.mark.requires("root")
def test_namespaces_match_proc(report: dict) -> None:
    kinds = {"cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"}
    assert set(report["host"]["namespaces"]) == kinds & set(os.listdir("/proc/self/ns"))


@pytest.mark.requires("root")
def test_overlayfs_matches_proc_filesystems(report: dict) -> None:
    names = {line.split()[-1] for line in Path("/proc/filesystems").read_text().splitlines() if line.strip()}
    assert report["host"]["overlayfs"] is ("overlay" in names)


@pytest.mark.requires("root")
def test_cgroup_mode_matches_mountinfo(report: dict) -> None:
    fstypes = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        _, _, right = line.partition(" - ")
        fstype = right.split()[0] if right else ""
        if fstype == "cgroup":
            options = right.split()[2].split(",")
            # a v1 hierarchy with real controllers (not only name=systemd)
            if any(o in ("memory", "cpu", "pids", "freezer", "cpuset", "blkio", "devices") for o in options):
                fstypes.append("cgroup")
        elif fstype == "cgroup2":
            fstypes.append("cgroup2")
    expected = "v2" if "cgroup" not in fstypes else ("hybrid" if "cgroup2" in fstypes else "v1")
    assert report["host"]["cgroup"]["mode"] == expected


@pytest.mark.requires("root", "criu")
def test_criu_version_matches_binary(report: dict) -> None:
    out = subprocess.run([criu(), "--version"], capture_output=True, text=True).stdout
    version = out.split("Version:")[1].split()[0]
    assert report["host"]["criu"]["version"] == version
    assert report["host"]["criu"]["path"] == criu()


@pytest.mark.requires("root", "criu")
@pytest.mark.parametrize(
    "ours, theirs",
    [
        ("dirty_tracking", "mem_dirty_track"),
        ("lazy_pages", "uffd-noncoop"),
        ("network_lock_nftables", "network_lock_nftables"),
        ("time_namespace", "timens"),
        ("pidfd_store", "pidfd_store"),
    ],
)
def test_criu_features_match_criu_check(report: dict, ours: str, theirs: str) -> None:
    assert report["host"]["criu"]["features"][ours]["supported"] is criu_feature(theirs)


@pytest.mark.requires("root", "criu")
def test_lazy_pages_feature_accounts_for_pipe_size(report: dict) -> None:
    pipe_ok = int(Path("/proc/sys/fs/pipe-max-size").read_text()) >= 4 * 1024 * 1024
    assert report["host"]["features"]["lazy_pages"] is (criu_feature("uffd-noncoop") and pipe_ok)


@pytest.mark.requires("root", "criu")
def test_text_report_says_ready() -> None:
    res = pymigrate("check")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.rstrip().splitlines()[-1].startswith("ready:")
    assert f"kernel   {os.uname().release}" in res.stdout


@pytest.mark.requires("root")
def test_missing_criu_fails_with_hint(tmp_path: Path) -> None:
    res = pymigrate("check", "--json", env={"PYMIGRATE_CRIU": str(tmp_path / "no-criu")})
    assert res.returncode == 1
    data = json.loads(res.stdout)
    assert "criu" in data["missing"]
    criu_item = next(i for i in data["items"] if i["name"] == "criu")
    assert "scripts/setup.sh" in criu_item["hint"]


@pytest.mark.requires("root")
def test_old_criu_fails(tmp_path: Path) -> None:
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\necho 'Version: 3.17'\nexit 0\n")
    fake.chmod(0o755)
    res = pymigrate("check", env={"PYMIGRATE_CRIU": str(fake)})
    assert res.returncode == 1
    assert "MISSING" in res.stdout and "3.17" in res.stdout and "need >= 4.0" in res.stdout
