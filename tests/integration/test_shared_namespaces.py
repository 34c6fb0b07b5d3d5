"""Shared namespaces on the real kernel (issue 20): run --pid/--ipc/--uts/--network container:NAME
and host, --cgroupns host; the checkpoint of a container that shares (or is shared) is refused
before anything is frozen; rm of a container others join is refused (runtime/ns_modes.py)."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Callable

import pytest

from tests.integration.cli_helpers import ok, refused, unique

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]

# A: a web server on its loopback only, a POSIX message queue, then PID 1 is `sleep 1001`
SERVER = "mkdir -p /www && echo shared > /www/index.html && httpd -p 127.0.0.1:8080 -h /www && touch /dev/mqueue/q1 && exec sleep 1001"


def _inspect(pm: Callable[..., Any], name: str) -> dict[str, Any]:
    return json.loads(ok(pm("inspect", name)))[0]


def _ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _refused_before_the_freeze(pm: Callable[..., Any], name: str, needle: str) -> None:
    answer = refused(pm("checkpoint", name, "--json"), "Unsupported")
    assert needle in answer["error"] and answer["hint"], answer
    state = _inspect(pm, name)["state"]
    assert state["status"] == "running" and state["frozen_by"] is None and state["checkpointed"] is False
    assert ok(pm("exec", name, "echo", "alive")).strip() == "alive"  # never frozen


def _wait_exited(pm: Callable[..., Any], name: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _inspect(pm, name)["state"]["status"] != "exited":
        assert time.monotonic() < deadline, f"{name} still running"
        time.sleep(0.2)


def test_a_container_joins_anothers_pid_net_ipc_and_uts_namespaces(pm) -> None:  # noqa: ANN001
    a, b, c = unique("nsa"), unique("nsb"), unique("nsc")
    ok(pm("run", "-d", "--name", a, "busybox", "sh", "-c", SERVER))
    try:
        ok(pm("run", "-d", "--name", b, "--pid", f"container:{a}", "--network", f"container:{a}", "--ipc", f"container:{a}",
              "--uts", f"container:{a}", "busybox", "sleep", "1002"))
        ok(pm("run", "-d", "--name", c, "busybox", "sleep", "1003"))  # the control: private namespaces
        info_a, info_b = _inspect(pm, a), _inspect(pm, b)
        pid_a, pid_b = info_a["state"]["pid"], info_b["state"]["pid"]
        for kind in ("pid", "net", "ipc", "uts"):
            assert _ns(pid_a, kind) == _ns(pid_b, kind), kind
        assert _ns(pid_a, "mnt") != _ns(pid_b, "mnt") and _ns(pid_a, "cgroup") != _ns(pid_b, "cgroup")

        ps = ok(pm("exec", b, "ps", "-o", "pid,args"))  # B's /proc is A's pid namespace: A's init is its PID 1
        assert any(line.split()[:3] == ["1", "sleep", "1001"] for line in ps.splitlines()[1:]), ps
        assert "sleep 1002" in ps and "sleep 1003" not in ps
        for _ in range(50):  # A's httpd daemonizes: give it its listen()
            r = pm("exec", b, "wget", "-qO-", "http://127.0.0.1:8080/")
            if r.returncode == 0:
                break
            time.sleep(0.1)
        assert ok(r).strip() == "shared"  # A's loopback listener, reached from B
        assert ok(pm("exec", b, "ls", "/dev/mqueue")).split() == ["q1"]  # A's message queue
        assert ok(pm("exec", c, "ls", "/dev/mqueue")).split() == []
        names = "echo $(hostname) $(cat /etc/hostname) $HOSTNAME"  # the kernel's, the file's, the env's
        assert ok(pm("exec", b, "sh", "-c", names)).split() == [ok(pm("exec", a, "hostname")).strip()] * 3

        assert info_b["spec"]["pid_mode"] == f"container:{info_a['spec']['container_id']}"  # by id: a rename keeps it
        assert info_b["spec"]["network"] == "container" and info_b["spec"]["ip"] is None
        assert info_b["state"]["shared_namespaces"] == {k: f"container:{a}" for k in ("pid", "net", "ipc", "uts")}
        assert info_a["state"]["namespace_users"] == {b: "ipc,net,pid,uts"}
        row = next(line for line in ok(pm("ps")).splitlines() if f" {b} " in line)
        assert f"container:{a}" in row.split(), row  # ps names whose network it is

        _refused_before_the_freeze(pm, b, f"shares its pid namespace with container {a}")
        _refused_before_the_freeze(pm, a, f"container {b} shares its")
        answer = refused(pm("rm", "-f", a, "--json"), "InvalidState")
        assert b in answer["error"] and f"rm -f {b}" in answer["hint"]
        assert _inspect(pm, a)["state"]["status"] == "running"

        ok(pm("stop", "-t", "1", a))  # docker's way: stopping A is allowed; its pid namespace dies with its init
        _wait_exited(pm, b)
        answer = refused(pm("run", "-d", "--json", "--pid", f"container:{a}", "busybox", "true"), "InvalidState")
        assert f"container {a}: state is exited, expected running" in answer["error"], answer
    finally:
        for name in (b, c, a):
            pm("rm", "-f", name)


def test_host_namespaces_and_the_rules(pm) -> None:  # noqa: ANN001
    h, a = unique("nsh"), unique("nsa")
    ok(pm("run", "-d", "--name", h, "--pid", "host", "--uts", "host", "--ipc", "host", "--cgroupns", "host",
          "busybox", "sleep", "1004"))
    try:
        pid = _inspect(pm, h)["state"]["pid"]
        for kind in ("pid", "uts", "ipc", "cgroup"):
            assert _ns(pid, kind) == _ns(os.getpid(), kind), kind
        assert _ns(pid, "net") != _ns(os.getpid(), "net")  # still its own network (bridge)
        with open("/proc/1/comm") as f:
            assert ok(pm("exec", h, "cat", "/proc/1/comm")) == f.read()  # its /proc shows the host's pid 1
        assert ok(pm("exec", h, "sh", "-c", "echo $(hostname) $(cat /etc/hostname) $HOSTNAME")).split() == [socket.gethostname()] * 3
        assert _inspect(pm, h)["state"]["shared_namespaces"] == {k: "host" for k in ("pid", "uts", "ipc", "cgroup")}
        _refused_before_the_freeze(pm, h, "with the host (--pid host)")
        for args in (("checkpoint", "--export", "/nonexistent/x.tar"), *(("migrate", "--mode", m) for m in ("cold", "postcopy", "auto"))):
            # refused before the target is asked anything (there is none at that address)
            answer = refused(pm(*args, "--json", h, *(("unix:/nonexistent/pm.sock",) if args[0] == "migrate" else ())), "Unsupported")
            assert "--pid host" in answer["error"], (args, answer)
        assert _inspect(pm, h)["state"]["frozen_by"] is None

        ok(pm("run", "-d", "--name", a, "busybox", "sleep", "1005"))
        for args, field in ((("--uts", "host", "--hostname", "x"), "hostname"),
                            (("--network", f"container:{a}", "-p", "8080:80"), "publish"),
                            (("--network", f"container:{a}", "--ip", "10.77.200.9"), "address")):
            answer = refused(pm("run", "--json", *args, "busybox", "true"), "InvalidSpec")
            assert field in answer["error"] and answer["hint"], answer
        refused(pm("run", "--json", "--ipc", "container:no-such-container", "busybox", "true"), "ContainerNotFound")
        assert pm("run", "--cgroupns", f"container:{a}", "busybox", "true").returncode == 125  # usage: private|host
    finally:
        pm("rm", "-f", h)
        pm("rm", "-f", a)


def test_remote_run_joins_a_container_through_the_daemon(pm, pm_root) -> None:  # noqa: ANN001
    from tests.integration.cli_helpers import start_daemon, stop_daemon

    a, b = unique("nsra"), unique("nsrb")
    proc, sock = start_daemon(pm_root)
    try:
        remote = ("--host", f"unix:{sock}")
        ok(pm(*remote, "run", "-d", "--name", a, "busybox", "sleep", "1006"))
        ok(pm(*remote, "run", "-d", "--name", b, "--pid", f"container:{a}", "--network", f"container:{a}", "busybox", "sleep", "1007"))
        info = json.loads(ok(pm(*remote, "inspect", b)))[0]
        assert info["state"]["shared_namespaces"] == {"pid": f"container:{a}", "net": f"container:{a}"}
        pid_a = json.loads(ok(pm(*remote, "inspect", a)))[0]["state"]["pid"]
        assert _ns(pid_a, "pid") == _ns(info["state"]["pid"], "pid") and _ns(pid_a, "net") == _ns(info["state"]["pid"], "net")
        refused(pm(*remote, "rm", "-f", a, "--json"), "InvalidState")  # the typed error crosses gRPC
    finally:
        pm("rm", "-f", b)
        pm("rm", "-f", a)
        stop_daemon(proc, sock)
