"""Restart policies on the real runtime (issue 13, runtime/restart.py): the shim starts the process
again in the same container; stop, checkpoint and restore behave as docker's restart manager."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.integration.cli_helpers import ok, start_daemon, stop_daemon, unique
from tests.integration.test_runtime import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]


def _inspect(pm, name: str) -> dict:  # noqa: ANN001
    return json.loads(ok(pm("inspect", name)))[0]


def _shim_alive(pid: int) -> bool:
    from runtime.shim import is_shim

    return is_shim(pid)


def test_on_failure_3_restarts_three_times_then_stays_exited(pm) -> None:  # noqa: ANN001
    name = unique("onfail")
    ok(pm("run", "-d", "--restart", "on-failure:3", "--name", name, "busybox", "sh", "-c", "echo run; exit 1"))
    try:
        info = _inspect(pm, name)
        assert info["spec"]["restart"] == "on-failure:3"
        shim = info["state"]["shim_pid"]
        # back-off 0.1 + 0.2 + 0.4 s; then the shim ends with the fourth exit
        wait_for(lambda: not _shim_alive(shim), 30, "the shim to give up after three restarts")
        state = _inspect(pm, name)["state"]
        assert (state["status"], state["restart_count"], state["exit_code"]) == ("exited", 3, 1)
        assert ok(pm("logs", name)).splitlines() == ["run"] * 4  # one container, four runs of its command
        assert "exited (1)" in ok(pm("ps", "-a"))
    finally:
        pm("rm", "-f", name)


def test_always_restarts_until_stopped_in_the_same_container(pm) -> None:  # noqa: ANN001
    name = unique("always")
    ok(pm("run", "-d", "--restart", "always", "--name", name, "busybox", "sh", "-c",
          "ip -o -4 addr show eth0 | awk '{print $4}'; sleep 1"))
    try:
        info = _inspect(pm, name)
        wait_for(lambda: _inspect(pm, name)["state"]["restart_count"] >= 2, 30, "two restarts of an always container")
        lines = ok(pm("logs", name)).split()
        assert len(set(lines)) == 1 and lines[0].startswith(info["spec"]["ip"] + "/")  # same netns, same address
        assert _inspect(pm, name)["state"]["shim_pid"] == info["state"]["shim_pid"]  # kept by the same shim
        ok(pm("stop", "-t", "5", name))  # running or waiting for its next restart: both end it
        time.sleep(1.5)  # longer than any back-off so far
        state = _inspect(pm, name)["state"]
        assert state["status"] == "exited" and state["manually_stopped"] is True
        count = state["restart_count"]
        time.sleep(1.0)
        assert _inspect(pm, name)["state"]["restart_count"] == count
        wait_for(lambda: not _shim_alive(info["state"]["shim_pid"]), 5, "the shim to end after the stop")
    finally:
        pm("rm", "-f", name)


def test_checkpoint_does_not_restart_and_the_restored_copy_keeps_its_policy(pm) -> None:  # noqa: ANN001
    name = unique("ckpt")
    ok(pm("run", "-d", "--restart", "on-failure:5", "--name", name, "busybox", "sleep", "1000"))
    checkpoint_id = ok(pm("checkpoint", name)).strip().splitlines()[0]
    try:
        time.sleep(1.0)  # the shim saw the dump's kill: no restart of a checkpointed container
        state = _inspect(pm, name)["state"]
        assert (state["status"], state["restart_count"], state["checkpoint_id"]) == ("exited", 0, checkpoint_id)
        assert ok(pm("restore", checkpoint_id)).strip() == name
        info = _inspect(pm, name)
        assert info["spec"]["restart"] == "on-failure:5" and info["state"]["status"] == "running"
        os.kill(info["state"]["pid"], signal.SIGKILL)  # a crash (not `kill`, which counts as a stop)
        wait_for(lambda: _inspect(pm, name)["state"]["restart_count"] == 1, 20, "the restored copy's restart")
        again = _inspect(pm, name)["state"]
        assert again["status"] == "running" and again["pid"] != info["state"]["pid"]
    finally:
        pm("rm", "-f", name)
        pm("checkpoint", "rm", checkpoint_id)


def _crash(info: dict) -> None:
    """What a host crash leaves: the shim and the container's processes gone, the record says running."""
    os.kill(info["state"]["shim_pid"], signal.SIGKILL)
    os.kill(info["state"]["pid"], signal.SIGKILL)


def test_daemon_start_restarts_always_and_unless_stopped_but_not_stopped_ones(pm, pm_root) -> None:  # noqa: ANN001
    names = {policy: unique(policy.split("-")[0]) for policy in ("always", "unless-stopped", "no")}
    stopped = unique("stopped")
    try:
        for policy, name in names.items():
            ok(pm("run", "-d", "--restart", policy, "--name", name, "busybox", "sleep", "1000"))
        ok(pm("run", "-d", "--restart", "unless-stopped", "--name", stopped, "busybox", "sleep", "1000"))
        ok(pm("stop", "-t", "1", stopped))
        before = {name: _inspect(pm, name) for name in names.values()}
        for info in before.values():
            _crash(info)
        wait_for(lambda: all(_inspect(pm, n)["state"]["status"] == "exited" for n in names.values()), 10,
                 "the crashed containers to read as exited")
        time.sleep(0.5)
        assert _inspect(pm, names["always"])["state"]["restart_count"] == 0  # no shim left to restart it

        proc, sock = start_daemon(pm_root)
        try:
            for policy in ("always", "unless-stopped"):
                info = _inspect(pm, names[policy])
                assert info["state"]["status"] == "running", policy
                assert info["state"]["pid"] != before[names[policy]]["state"]["pid"]
                assert info["state"]["restart_count"] == 1
            assert _inspect(pm, names["no"])["state"]["status"] == "exited"
            assert _inspect(pm, stopped)["state"]["status"] == "exited"  # unless-stopped: the user stopped it
        finally:
            stop_daemon(proc, sock)
        # its new shim does not depend on the daemon, and keeps the policy: a crash restarts it again
        info = _inspect(pm, names["always"])
        assert info["state"]["status"] == "running" and _shim_alive(info["state"]["shim_pid"])
        os.kill(info["state"]["pid"], signal.SIGKILL)
        wait_for(lambda: _inspect(pm, names["always"])["state"]["restart_count"] == 2, 20, "a restart by the new shim")
        assert ok(pm("exec", names["always"], "hostname")).strip() == info["spec"]["hostname"]
    finally:
        for name in (*names.values(), stopped):
            pm("rm", "-f", name)


def test_daemon_start_gives_a_running_container_whose_shim_was_killed_a_new_shim(pm, pm_root) -> None:  # noqa: ANN001
    name = unique("adopt")
    ok(pm("run", "-d", "--restart", "always", "--name", name, "busybox", "sleep", "1000"))
    try:
        info = _inspect(pm, name)
        os.kill(info["state"]["shim_pid"], signal.SIGKILL)  # the container keeps running, unmonitored
        wait_for(lambda: not _shim_alive(info["state"]["shim_pid"]), 10, "the shim to die")
        assert _inspect(pm, name)["state"]["status"] == "running"
        proc, sock = start_daemon(pm_root)
        stop_daemon(proc, sock)
        adopted = _inspect(pm, name)["state"]
        assert adopted["pid"] == info["state"]["pid"] and adopted["shim_pid"] != info["state"]["shim_pid"]
        assert _shim_alive(adopted["shim_pid"])
        os.kill(adopted["pid"], signal.SIGKILL)  # its new shim notices the end and restarts it
        wait_for(lambda: _inspect(pm, name)["state"]["restart_count"] == 1, 20, "a restart by the adopting shim")
        again = _inspect(pm, name)["state"]
        assert again["status"] == "running" and again["pid"] != adopted["pid"]
    finally:
        pm("rm", "-f", name)


def _reboot(pm_root, info: dict) -> None:  # noqa: ANN001
    """What a host reboot leaves of a container: its record, upper layer (image file) and lease;
    no processes, mounts, cgroup, network namespace nor veth."""
    from runtime import overlay, upperfs
    from runtime.runtime import Runtime
    from runtime.syscalls import LINUX

    _crash(info)
    rt = Runtime(pm_root)
    cid, spec = info["spec"]["container_id"], rt.store.load_spec(info["spec"]["container_id"])
    wait_for(lambda: rt.container(cid).status == "exited", 10, "the crashed container to read as exited")
    net = rt.network(spec.network)
    net.disconnect(cid)
    net.remove_netns(cid)
    rt.cgroups(spec.cgroup_parent).destroy(cid)
    overlay.unmount(LINUX, rt.store.dir(cid) / "merged")
    upperfs.unmount(LINUX, rt.store.dir(cid) / upperfs.MOUNT_DIR)


def test_daemon_start_after_a_reboot_makes_the_container_again_with_its_files_and_address(pm, pm_root) -> None:  # noqa: ANN001
    name = unique("reboot")
    ok(pm("run", "-d", "--restart", "unless-stopped", "--name", name, "busybox", "sh", "-c", "echo run >> /runs; sleep 1000"))
    try:
        wait_for(lambda: pm("exec", name, "cat", "/runs").returncode == 0, 10, "the first run")
        info = _inspect(pm, name)
        _reboot(pm_root, info)
        proc, sock = start_daemon(pm_root)
        stop_daemon(proc, sock)
        again = _inspect(pm, name)
        assert again["state"]["status"] == "running" and again["state"]["restart_count"] == 1
        assert (again["spec"]["ip"], again["spec"]["mac"]) == (info["spec"]["ip"], info["spec"]["mac"])
        wait_for(lambda: ok(pm("exec", name, "cat", "/runs")).split() == ["run", "run"], 10, "the second run, same files")
        addr = ok(pm("exec", name, "sh", "-c", "cat /sys/class/net/eth0/address; ip -o -4 addr show eth0"))
        assert info["spec"]["mac"] in addr and f"{info['spec']['ip']}/" in addr
    finally:
        pm("rm", "-f", name)


def test_bad_policy_and_rm_with_restart_are_refused(pm) -> None:  # noqa: ANN001
    for args in (("--restart", "sometimes"), ("--restart", "always:3"), ("--rm", "-d", "--restart", "always")):
        r = pm("run", *args, "busybox", "true", "--json")
        assert r.returncode == 125, r.stderr
