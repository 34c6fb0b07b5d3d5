"""docker/podman habits of ``run`` on the real runtime (issue 13): -e KEY and --env-file, -d --rm."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.cli_helpers import ok, unique
from tests.integration.test_runtime import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]


def test_env_key_alone_and_env_file_reach_the_container(pm, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("PM_FROM_CLI", "cli value")
    monkeypatch.setenv("PM_IN_FILE", "file's key")
    monkeypatch.delenv("PM_UNSET", raising=False)
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nFILE_A=a b\nPM_IN_FILE\nPM_UNSET\nOVER=file\n")
    r = pm("run", "--rm", "--env-file", str(env_file), "-e", "PM_FROM_CLI", "-e", "PM_UNSET", "-e", "OVER=flag",
           "busybox", "env")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert "PM_FROM_CLI=cli value" in lines and "FILE_A=a b" in lines and "PM_IN_FILE=file's key" in lines
    assert not any(line.startswith("PM_UNSET") for line in lines)
    assert [line for line in lines if line.startswith("OVER=")] == ["OVER=flag"]


# -- run -d --rm ------------------------------------------------------------------------------------


def _names(pm) -> list[str]:  # noqa: ANN001
    return [c["spec"]["name"] for c in json.loads(ok(pm("ps", "-a", "--json")))]


def _gone(pm, pm_root: Path, name: str) -> bool:  # noqa: ANN001
    return name not in _names(pm) and not any((pm_root / "containers").iterdir())


def test_detached_rm_leaves_nothing_after_its_exit(pm, pm_root) -> None:  # noqa: ANN001
    name = unique("rm")
    # it exits when told, not after a fixed sleep: on a loaded CI host a 0.5 s sleep ended
    # (and the shim removed the container) before the inspect below ran
    ok(pm("run", "-d", "--rm", "--name", name, "busybox", "sh", "-c",
          "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 3"))
    assert json.loads(ok(pm("inspect", name)))[0]["spec"]["auto_remove"] is True
    ok(pm("exec", name, "touch", "/tmp/go"))
    wait_for(lambda: _gone(pm, pm_root, name), 15, "the shim to remove the exited container")
    # stop and rm -f of a running one: one removal, no error from the race with its shim
    for verb in (("stop", "-t", "1"), ("rm", "-f")):
        name = unique("rm")
        ok(pm("run", "-d", "--rm", "--name", name, "busybox", "sleep", "1000"))
        ok(pm(*verb, name))
        wait_for(lambda: _gone(pm, pm_root, name), 15, f"{verb[0]} of an --rm container")


def test_foreground_run_without_rm_keeps_no_auto_remove(pm) -> None:  # noqa: ANN001
    name = unique("keep")
    ok(pm("run", "-d", "--name", name, "busybox", "true"))
    time.sleep(1.0)
    assert name in _names(pm)
    assert json.loads(ok(pm("inspect", name)))[0]["spec"]["auto_remove"] is False
    ok(pm("rm", name))


@pytest.mark.requires("criu", "pycriu")
def test_detached_rm_keeps_its_record_through_a_checkpoint_and_the_flag_through_restore(pm, pm_root) -> None:  # noqa: ANN001
    name = unique("rmcp")
    ok(pm("run", "-d", "--rm", "--name", name, "busybox", "sh", "-c", "while true; do sleep 0.1; done"))
    checkpoint_id = ok(pm("checkpoint", name)).strip().splitlines()[0]
    try:
        time.sleep(1.0)  # the shim saw the dump's kill: it must not remove what the restore needs
        state = json.loads(ok(pm("inspect", name)))[0]
        assert state["state"]["status"] == "exited" and state["state"]["checkpoint_id"] == checkpoint_id
        assert ok(pm("restore", checkpoint_id)).strip() == name
        restored = json.loads(ok(pm("inspect", name)))[0]
        assert restored["state"]["status"] == "running" and restored["spec"]["auto_remove"] is True
        ok(pm("kill", name))  # an exit of its own now: its shim removes it
        wait_for(lambda: _gone(pm, pm_root, name), 15, "the restored --rm container to go after its exit")
    finally:
        pm("rm", "-f", name)
        pm("checkpoint", "rm", checkpoint_id)


def test_detached_rm_through_a_daemon_is_removed_by_the_launchers_shim(pm, pm_root) -> None:  # noqa: ANN001
    from tests.integration.cli_helpers import start_daemon, stop_daemon

    proc, sock = start_daemon(pm_root)
    try:
        name = unique("rmd")
        ok(pm("--host", f"unix:{sock}", "run", "-d", "--rm", "--name", name, "busybox", "sh", "-c", "sleep 3"))
        # 3 s: under a loaded machine's CLI start-up a 0.5 s container was gone before inspect
        assert json.loads(ok(pm("--host", f"unix:{sock}", "inspect", name)))[0]["spec"]["auto_remove"] is True
    finally:
        stop_daemon(proc, sock)  # the daemon is gone before the exit: the shim still removes it
    wait_for(lambda: _gone(pm, pm_root, name), 20, "the shim to remove it without the daemon")


# -- run --read-only --------------------------------------------------------------------------------

RO_PROBE = ("for p in /x /tmp/x /data/x /dev/shm/x /dev/x; do "
            "if touch $p 2>/dev/null; then echo $p=rw; else echo $p=ro; fi; done; echo log-works >&2")


def _probe(pm, name: str) -> dict[str, str]:  # noqa: ANN001
    out = ok(pm("exec", name, "sh", "-c", RO_PROBE))
    return dict(line.split("=", 1) for line in out.split())


def test_read_only_root_keeps_volumes_dev_and_the_log_writable(pm, tmp_path) -> None:  # noqa: ANN001
    name = unique("ro")
    data = tmp_path / "data"
    data.mkdir()
    ok(pm("run", "-d", "--read-only", "--name", name, "-v", f"{data}:/data", "-w", "/new/workdir",
          "busybox", "sh", "-c", "echo started; exec sleep 1000"))
    try:
        assert json.loads(ok(pm("inspect", name)))[0]["spec"]["read_only"] is True
        assert _probe(pm, name) == {"/x": "ro", "/tmp/x": "ro", "/data/x": "rw", "/dev/shm/x": "rw", "/dev/x": "rw"}
        assert (data / "x").exists()
        assert b"started" in pm("logs", name).stdout  # the log is on its own writable bind
        r = pm("run", "--rm", "--read-only", "busybox", "sh", "-c", "touch /x")
        assert r.returncode != 0 and b"Read-only file system" in r.stderr  # the container's stderr is ours
    finally:
        pm("rm", "-f", name)


@pytest.mark.requires("criu", "pycriu")
def test_read_only_root_stays_read_only_after_checkpoint_and_restore(pm) -> None:  # noqa: ANN001
    name = unique("rocp")
    ok(pm("run", "-d", "--read-only", "--name", name, "busybox", "sleep", "1000"))
    checkpoint_id = ok(pm("checkpoint", name)).strip().splitlines()[0]
    try:
        assert ok(pm("restore", checkpoint_id)).strip() == name
        assert json.loads(ok(pm("inspect", name)))[0]["spec"]["read_only"] is True
        probe = _probe(pm, name)
        assert probe["/x"] == "ro" and probe["/dev/shm/x"] == "rw", probe
    finally:
        pm("rm", "-f", name)
        pm("checkpoint", "rm", checkpoint_id)


# -- run --cap-add / --cap-drop -------------------------------------------------------------------


def _cap_eff(pm, name: str) -> int:  # noqa: ANN001
    out = ok(pm("exec", name, "sh", "-c", "grep CapEff /proc/self/status"))
    return int(out.split()[-1], 16)


def test_cap_drop_net_raw_and_cap_add_sys_admin(pm) -> None:  # noqa: ANN001
    from runtime.capabilities import CAP_NET_RAW, CAP_SYS_ADMIN, DEFAULT_CAPS, mask

    dropped, added = unique("capd"), unique("capa")
    ok(pm("run", "-d", "--name", dropped, "--cap-drop", "NET_RAW", "busybox", "sleep", "1000"))
    ok(pm("run", "-d", "--name", added, "--cap-add", "CAP_SYS_ADMIN", "busybox", "sleep", "1000"))
    try:
        spec = json.loads(ok(pm("inspect", dropped)))[0]["spec"]
        assert spec["cap_drop"] == ["CAP_NET_RAW"] and spec["cap_add"] == []
        assert _cap_eff(pm, dropped) == mask(DEFAULT_CAPS - {CAP_NET_RAW})  # exec: the spec's set
        init = ok(pm("exec", dropped, "sh", "-c", "grep CapEff /proc/1/status")).split()[-1]
        assert int(init, 16) == mask(DEFAULT_CAPS - {CAP_NET_RAW})
        r = pm("exec", dropped, "ping", "-c", "1", "-W", "1", "127.0.0.1")
        assert r.returncode != 0, r.stdout
        assert pm("exec", added, "ping", "-c", "1", "-W", "1", "127.0.0.1").returncode == 0
        assert _cap_eff(pm, added) == mask(DEFAULT_CAPS | {CAP_SYS_ADMIN})
        # SYS_ADMIN in use: a tmpfs mount inside (the default seccomp profile allows mount with it)
        ok(pm("exec", added, "sh", "-c", "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t"))
        r = pm("run", "--rm", "--cap-drop", "bogus", "busybox", "true")
        assert r.returncode == 125 and b"unknown capability 'bogus'" in r.stderr
    finally:
        pm("rm", "-f", dropped, added)


@pytest.mark.requires("criu", "pycriu")
def test_caps_are_kept_across_checkpoint_and_restore(pm) -> None:  # noqa: ANN001
    from runtime.capabilities import CAP_NET_RAW, CAP_SYS_ADMIN, DEFAULT_CAPS, mask

    name = unique("capcp")
    ok(pm("run", "-d", "--name", name, "--cap-drop", "net_raw", "--cap-add", "SYS_ADMIN", "busybox", "sleep", "1000"))
    checkpoint_id = ok(pm("checkpoint", name)).strip().splitlines()[0]
    try:
        assert ok(pm("restore", checkpoint_id)).strip() == name
        want = mask((DEFAULT_CAPS - {CAP_NET_RAW}) | {CAP_SYS_ADMIN})
        assert _cap_eff(pm, name) == want  # a later exec: from the spec
        assert int(ok(pm("exec", name, "sh", "-c", "grep CapEff /proc/1/status")).split()[-1], 16) == want  # CRIU's creds
    finally:
        pm("rm", "-f", name)
        pm("checkpoint", "rm", checkpoint_id)
