"""A container whose init chrooted itself cannot be dumped by CRIU (its root task must keep the
mount namespace's root): the checkpoint is refused before anything is frozen, naming the chroot
and what to do, and the container keeps running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.workloads import inspect, read_int, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "pycriu", "busybox")]

JAILED = "mkdir -p /jail/bin /jail/tmp && cp /bin/busybox /jail/bin/ && exec chroot /jail /bin/busybox sh -c " \
         "'i=0; while true; do i=$((i+1)); echo $i > /tmp/cnt; sleep 0.02; done'"


def test_a_chrooted_init_is_refused_before_the_freeze(pm, pm_root: Path) -> None:  # noqa: ANN001
    r = pm("run", "-d", "--name", "jailed", "busybox", "sh", "-c", JAILED)
    assert r.returncode == 0, r.stderr
    counter = Path(inspect(pm_root, "jailed").bundle_dir) / "merged" / "jail" / "tmp" / "cnt"
    try:
        wait_for(lambda: read_int(counter), 10, "the jailed counter")
        for args in (("checkpoint", "jailed", "--json"), ("checkpoint", "jailed", "--leave-running", "--json")):
            r = pm(*args)
            assert r.returncode == 125
            error = json.loads(r.stdout)
            assert error["type"] == "Unsupported" and "chroot" in error["error"] and "/jail" in error["error"], error
            assert error["hint"]
        info = inspect(pm_root, "jailed")
        assert info.state.status == "running"
        before = read_int(counter)
        wait_for(lambda: (read_int(counter) or 0) > (before or 0) or None, 5, "the counter to go on (not frozen)")
    finally:
        pm("rm", "-f", "jailed")
