"""``run --init`` on the real runtime (issue 13, runtime/init_binary.py): tini is PID 1, reaps
orphans, forwards stop's signal, and survives checkpoint + restore (its bind is an external mount)."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.cli_helpers import ok, unique
from tests.integration.test_runtime import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns", "criu")]

ZOMBIES = "grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l"
ORPHAN = "(sleep 0.2 &); exit 0"  # the subshell exits at once: its sleep is an orphan of the pid namespace


def _pid1(pm, name: str) -> str:  # noqa: ANN001
    return ok(pm("exec", name, "cat", "/proc/1/cmdline")).replace("\0", " ").strip()


def _zombies_after_an_orphan(pm, name: str) -> int:  # noqa: ANN001
    ok(pm("exec", name, "sh", "-c", ORPHAN))
    time.sleep(1.0)  # the orphan's sleep is over: reaped by PID 1 or a zombie
    return int(ok(pm("exec", name, "sh", "-c", ZOMBIES)).strip())


def _timed_stop(pm, name: str) -> float:  # noqa: ANN001
    start = time.monotonic()
    ok(pm("stop", "-t", "30", name))
    return time.monotonic() - start


def test_tini_is_pid_1_reaps_orphans_and_forwards_stop(pm) -> None:  # noqa: ANN001
    plain, init = unique("noinit"), unique("init")
    ok(pm("run", "-d", "--name", plain, "busybox", "sleep", "1000"))
    ok(pm("run", "-d", "--init", "--name", init, "busybox", "sleep", "1000"))
    try:
        assert json.loads(ok(pm("inspect", init)))[0]["spec"]["init"] is True
        assert _pid1(pm, init) == "/.pymigrate/init -- sleep 1000"
        assert _pid1(pm, plain) == "sleep 1000"
        # the control: a plain sleep as PID 1 leaves the orphan a zombie; tini reaps it
        assert _zombies_after_an_orphan(pm, plain) == 1
        assert _zombies_after_an_orphan(pm, init) == 0
        # the bind is read-only: the container cannot replace its init
        r = pm("exec", init, "sh", "-c", "echo x > /.pymigrate/init")
        assert r.returncode != 0
        # SIGTERM reaches sleep through tini: stop does not wait for its 30 s timeout
        assert _timed_stop(pm, init) < 10
        state = json.loads(ok(pm("inspect", init)))[0]["state"]
        assert state["exit_code"] == 143  # tini passes on the command's death by SIGTERM
    finally:
        pm("rm", "-f", plain)
        pm("rm", "-f", init)


def test_init_survives_checkpoint_and_restore(pm) -> None:  # noqa: ANN001
    name = unique("initck")
    ok(pm("run", "-d", "--init", "--name", name, "busybox", "sh", "-c", "echo $$ > /tmp/pid; exec sleep 1000"))
    wait_for(lambda: pm("exec", name, "cat", "/tmp/pid").returncode == 0, 10, "the command to start")
    checkpoint_id = ok(pm("checkpoint", name)).strip().splitlines()[0]
    try:
        assert ok(pm("restore", checkpoint_id)).strip() == name
        assert _pid1(pm, name) == "/.pymigrate/init -- sh -c echo $$ > /tmp/pid; exec sleep 1000"
        assert ok(pm("exec", name, "cat", "/tmp/pid")).strip() == "2"  # the same child of tini, restored
        assert _zombies_after_an_orphan(pm, name) == 0
        assert _timed_stop(pm, name) < 10
    finally:
        pm("rm", "-f", name)
        pm("checkpoint", "rm", checkpoint_id)

