"""A task frozen in uninterruptible sleep (a vfork parent waiting for its child, as a shell does
for every command) does not hold the container frozen for CRIU's whole timeout and fail the dump:
the freeze thaws for a moment and freezes again until every task can be seized.

The workload (tests/workloads/vforker.c) spends about half its time in vfork's wait (state D),
so without the retry about every second dump would stall 10 s and fail."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.workloads import import_image, inspect, read_int, static_workload_tar

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "pycriu", "busybox")]

DUMPS = 8


def test_dumps_of_a_vfork_heavy_workload_neither_stall_nor_fail(pm, pm_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    import_image(pm_root, "vforker", static_workload_tar(tmp_path, "vforker"))
    r = pm("run", "-d", "--name", "vforker", "vforker", "/bin/vforker")
    assert r.returncode == 0, r.stderr
    counter = Path(inspect(pm_root, "vforker").bundle_dir) / "merged" / "tmp" / "cnt"
    try:
        times = []
        for _ in range(DUMPS):
            started = time.monotonic()
            r = pm("checkpoint", "vforker", "--leave-running", "--json", timeout=60)
            times.append(time.monotonic() - started)
            assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
            result = json.loads(r.stdout)
            assert result["stats"]["frozen_ms"] < 2000, result["stats"]
            pm("checkpoint", "rm", result["checkpoint_id"])
        before = read_int(counter)
        time.sleep(0.2)
        assert read_int(counter) > before, "the workload runs on after its dumps"
        print(f"\n{DUMPS} dumps of a vfork-heavy workload: slowest {max(times):.2f} s")
        assert max(times) < 5, times
    finally:
        pm("rm", "-f", "vforker")
