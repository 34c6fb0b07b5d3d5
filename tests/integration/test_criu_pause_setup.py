"""Two set-up facts the migration pause depends on, checked on the real host and kernel:

- CRIU keeps its kernel-feature cache (runtime/criu_kdat.py): its RUNDIR is a tmpfs and a CRIU
  run leaves ``criu.kdat`` there, and the next run says it loaded it (else ~30 ms per CRIU run).
- a container's masked directories are read-only and empty but not tmpfs mounts (CRIU runs
  ``tar`` for every tmpfs it dumps or restores; runtime/rootfs.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu")]


def test_criu_keeps_its_kernel_feature_cache(tmp_path: Path) -> None:
    from runtime.criu import criu_binary, ensure_kdat
    from runtime.criu_kdat import cache_path, is_tmpfs

    binary = criu_binary()
    ensure_kdat(binary)
    path = cache_path(binary)
    assert path is not None, f"no kdat path in {binary}"
    assert is_tmpfs(path.parent), f"{path.parent} is not a tmpfs: criu cannot keep its cache"
    subprocess.run([binary, "check"], check=True, capture_output=True)
    assert path.is_file()
    log = tmp_path / "check.log"
    subprocess.run([binary, "check", "-v4", "-o", str(log)], check=False, capture_output=True)
    assert f"Loaded kdat cache from {path}" in log.read_text(errors="replace")


def test_masked_directories_are_read_only_binds_not_tmpfs(rt, pm) -> None:  # noqa: ANN001
    rt.run("busybox", ("sleep", "1000"), name="masks")
    r = pm("exec", "masks", "sh", "-c",
           "grep -E ' /proc/acpi | /sys/firmware ' /proc/self/mountinfo; echo ---; ls -A /proc/acpi | wc -l;"
           " echo ---; (touch /proc/acpi/x) 2>&1; true")
    assert r.returncode == 0, r.stderr
    mounts, count, touch = (p.strip() for p in r.stdout.decode().split("---"))
    lines = mounts.splitlines()
    assert len(lines) == 2, mounts  # both masked directories are mounted over
    for line in lines:
        fields = line.split()
        # mountinfo: field 4 is the root of the mount within its filesystem: /.masked of the /dev tmpfs
        assert fields[3] == "/.masked" and "ro" in fields[5].split(","), line
    assert count == "0"
    assert "read-only" in touch.lower(), touch
