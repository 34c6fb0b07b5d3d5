"""The embedded runtime on the real kernel: isolation, network, lifecycle, logs, exec."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]

LOOP = ("sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")


def wait_for(predicate, timeout_s: float = 10.0, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def log_text(rt, name: str) -> str:  # noqa: ANN001
    return b"".join(e.data for e in rt.logs(name)).decode()  # both streams, in time order


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def test_isolation_of_the_init(rt) -> None:  # noqa: ANN001
    info = rt.run("busybox", ("sleep", "1000"), name="iso", hostname="isohost")
    pid = info.state.pid
    st = proc_status(pid)
    # PID 1 of its own pid namespace, and a session leader there (CRIU needs it)
    assert st["NSpid"].split()[-1] == "1"
    assert st["NSsid"].split()[-1] == "1"
    # every namespace but user and time differs from ours
    for kind in ("mnt", "uts", "ipc", "pid", "net", "cgroup"):
        assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}"), kind
    # reduced capabilities and no_new_privs
    assert int(st["CapEff"], 16) == 0xA80425FB
    assert int(st["CapBnd"], 16) == 0xA80425FB
    assert st["NoNewPrivs"] == "1"
    # stdio: own /dev/null and the log inside the container; no other fd leaked in
    fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert fds == {0: "/dev/null", 1: "/.pymigrate/log", 2: "/.pymigrate/log.err"}
    # only container mounts: the overlay root and what the rootfs plan made
    mounts = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
    points = {m[4] for m in mounts}
    assert mounts[0][4] == "/" and mounts[0][mounts[0].index("-") + 1] == "overlay"
    allowed_prefixes = ("/proc", "/dev", "/sys")
    assert all(p == "/" or p.startswith(allowed_prefixes) for p in points), points
    assert {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/proc/sys"} <= points
    fstypes = {m[m.index("-") + 1] for m in mounts}
    assert fstypes <= {"overlay", "proc", "tmpfs", "devpts", "mqueue", "sysfs"}, fstypes


def test_inside_view(rt, pm) -> None:  # noqa: ANN001
    rt.run("busybox", ("sleep", "1000"), name="inside", hostname="insidehost")
    script = (
        "hostname; echo ---; ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '; echo; echo ---;"
        " ip -o link | awk '{print $2}' | tr '\\n' ' '; echo; echo ---; ls /dev | tr '\\n' ' '; echo ---;"
        " cat /proc/1/cmdline | tr '\\0' ' '; echo; echo ---; ipcs -m | wc -l; echo ---;"
        " (echo x > /proc/sys/kernel/hostname) 2>&1; echo ---; cat /proc/keys | wc -c; echo ---; cat /etc/hosts"
    )
    r = pm("exec", "inside", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    parts = [p.strip() for p in r.stdout.decode().split("---")]
    assert parts[0] == "insidehost"
    pids = [int(p) for p in parts[1].split()]
    assert 1 in pids and max(pids) < 50, pids  # no host process visible
    assert len(parts[2].split()) == 2 and parts[2].split()[0] == "lo:" and parts[2].split()[1].startswith("eth0")
    for dev in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "mqueue"):
        assert dev in parts[3].split(), dev
    assert parts[4] == "sleep 1000"
    assert "Read-only" in parts[6] or "read-only" in parts[6].lower()
    assert parts[7] == "0"  # /proc/keys masked by the container's /dev/null
    assert "insidehost" in parts[8]


def test_network_none_has_only_loopback(rt, pm) -> None:  # noqa: ANN001
    rt.run("busybox", ("sleep", "1000"), name="nonet", network="none")
    r = pm("exec", "nonet", "sh", "-c", "ip -o link | awk '{print $2}'")
    assert r.stdout.decode().split() == ["lo:"]


def test_containers_ping_each_other_and_host_reaches_a_port(rt, pm) -> None:  # noqa: ANN001
    a = rt.run("busybox", ("sleep", "1000"), name="pa")
    b = rt.run(
        "busybox",
        ("sh", "-c", "mkdir -p /www && echo hello-from-b > /www/index.html && exec httpd -f -p 8080 -h /www"),
        name="pb",
    )
    assert a.spec.ip != b.spec.ip
    r = pm("exec", "pa", "ping", "-c", "1", "-W", "3", b.spec.ip)
    assert r.returncode == 0, r.stdout + r.stderr
    r = pm("exec", "pb", "ping", "-c", "1", "-W", "3", a.spec.ip)
    assert r.returncode == 0, r.stdout + r.stderr

    def fetch() -> bytes | None:
        try:
            with socket.create_connection((b.spec.ip, 8080), timeout=2) as s:
                s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                return data
        except OSError:
            return None

    assert b"hello-from-b" in wait_for(fetch, what="httpd in container pb")


def test_logs_live_through_merged(rt, pm) -> None:  # noqa: ANN001
    info = rt.run("busybox", ("sh", "-c", "i=0; while true; do i=$((i+1)); echo line$i; echo err$i >&2; sleep 0.1; done"), name="logger")
    log = Path(info.bundle_dir) / "merged" / ".pymigrate" / "log"
    wait_for(lambda: "line3" in log.read_text(), what="live log through merged/")
    assert "err1" not in log.read_text() and "err1" in (log.parent / "log.err").read_text()  # two streams
    r = pm("logs", "logger")
    assert b"line1\n" in r.stdout and b"err1\n" in r.stderr and b"err" not in r.stdout
    from runtime.upperfs import Layout

    assert (Layout.of(Path(info.bundle_dir)).upper / ".pymigrate").stat().st_mode & 0o777 == 0o700


def test_foreground_run_streams_and_returns_exit_code(pm) -> None:  # noqa: ANN001
    r = pm("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert r.returncode == 7
    assert r.stdout == b"out\n" and r.stderr == b"err\n"  # the container's stderr is ours
    assert pm("ps", "-a", "-q").stdout.strip() == b""


def test_command_not_found_is_127_and_leaves_nothing(pm, pm_root) -> None:  # noqa: ANN001
    r = pm("run", "-d", "--name", "nf", "busybox", "/no/such/command")
    assert r.returncode == 127
    assert b"not found" in r.stderr and b"/no/such/command" in r.stderr
    assert list((pm_root / "containers").iterdir()) == []


def test_stop_kill_rm_and_state(rt, pm) -> None:  # noqa: ANN001
    rt.run("busybox", LOOP, name="s1")
    r = pm("stop", "-t", "5", "s1")
    assert r.returncode == 0, r.stderr
    info = rt.inspect("s1")
    assert info.state.status == "exited" and info.state.exit_code == 0
    # an init that ignores SIGTERM is killed after the timeout
    rt.run("busybox", ("sleep", "1000"), name="s2")
    t0 = time.monotonic()
    assert rt.stop("s2", timeout_s=0.5).state.exit_code == 137
    assert time.monotonic() - t0 < 5
    rt.run("busybox", ("sleep", "1000"), name="s3")
    assert pm("kill", "-s", "TERM", "s3").returncode == 0  # ignored by a PID 1 without a handler
    time.sleep(0.3)
    assert rt.inspect("s3").state.status == "running"
    assert pm("kill", "s3").returncode == 0
    assert rt.wait("s3", timeout_s=5) == 137
    r = pm("rm", "s3")
    assert r.returncode == 0
    rt.run("busybox", ("sleep", "1000"), name="s4")
    r = pm("rm", "s4")
    assert r.returncode == 125 and b"state is running" in r.stderr
    assert pm("rm", "-f", "s4").returncode == 0
    r = pm("ps", "-a", "--json")
    names = {c["spec"]["name"] for c in json.loads(r.stdout)}
    assert names == {"s1", "s2"}


def test_exec_joins_every_namespace_and_the_cgroup(rt, pm, pm_root) -> None:  # noqa: ANN001
    info = rt.run("busybox", ("sleep", "1000"), name="ex")
    init = info.state.pid
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrate", "--root", str(pm_root), "exec", "ex", "sleep", "30"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        cg = rt.cgroups(None)
        pids = wait_for(lambda: [p for p in cg.pids(info.spec.container_id) if p != init and _comm(p) == "sleep"], what="exec'd sleep in the cgroup")
        pid = pids[0]
        for kind in ("mnt", "uts", "ipc", "pid", "net", "cgroup"):
            assert os.readlink(f"/proc/{pid}/ns/{kind}") == os.readlink(f"/proc/{init}/ns/{kind}"), kind
        assert Path(f"/proc/{pid}/cgroup").read_text() == Path(f"/proc/{init}/cgroup").read_text()
        st = proc_status(pid)
        assert int(st["CapEff"], 16) == 0xA80425FB and st["NoNewPrivs"] == "1"
        assert st["NSpid"].split()[-1] != "1" and len(st["NSpid"].split()) == 2
    finally:
        proc.kill()
        proc.wait()
    r = pm("exec", "ex", "sh", "-c", "cat /proc/self/cgroup | grep -v ':/$' | wc -l; exit 4")
    assert r.returncode == 4
    assert r.stdout.strip() == b"0"  # the cgroup namespace root is the container's cgroup
    r = pm("exec", "ex", "nosuch")
    assert r.returncode == 127


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_pause_stops_a_counter_and_unpause_resumes_it(rt, pm) -> None:  # noqa: ANN001
    info = rt.run("busybox", ("sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done"), name="ctr")
    log = Path(info.bundle_dir) / "merged" / ".pymigrate" / "log"
    wait_for(lambda: log.stat().st_size > 10, what="counter output")
    assert pm("pause", "ctr").returncode == 0
    assert rt.inspect("ctr").state.status == "paused"
    size = log.stat().st_size
    time.sleep(0.6)
    assert log.stat().st_size == size
    r = pm("exec", "ctr", "true")
    assert r.returncode == 125 and b"state is paused" in r.stderr
    assert pm("unpause", "ctr").returncode == 0
    assert rt.inspect("ctr").state.status == "running"
    wait_for(lambda: log.stat().st_size > size, what="counter to resume")
    assert pm("unpause", "ctr").returncode == 125  # not paused
    # a paused container can be stopped and removed
    assert pm("pause", "ctr").returncode == 0
    assert pm("rm", "-f", "ctr").returncode == 0


def test_reconcile_notices_dead_processes(rt) -> None:  # noqa: ANN001
    info = rt.run("busybox", ("sleep", "1000"), name="orphan")
    os.kill(info.state.shim_pid, 9)
    time.sleep(0.2)
    assert rt.inspect("orphan").state.status == "running"  # the init is still there
    os.kill(info.state.pid, 9)
    wait_for(lambda: rt.inspect("orphan").state.status == "exited", what="reconciled exit")
    assert rt.inspect("orphan").state.exit_code == -1
    assert [i.spec.name for i in rt.list(all=False)] == []


def test_dev_matches_runc_defaults_and_is_usable_by_other_users(rt, pm) -> None:  # noqa: ANN001
    """The default /dev as runc makes it: char nodes 0666 whatever the caller's umask, /dev/shm
    1777, /dev/pts with ptmxmode 0666 — so a server that dropped root (PostgreSQL's initdb, a
    worker under www-data) can write /dev/null and open /dev/ptmx."""
    old_umask = os.umask(0o077)  # the strictest a caller might run pymigrate with
    try:
        rt.run("busybox", ("sleep", "1000"), name="devmodes")
    finally:
        os.umask(old_umask)
    r = pm("exec", "devmodes", "sh", "-c", "stat -c '%n %a %F' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /dev/shm /dev/pts/ptmx")
    assert r.returncode == 0, r.stderr
    modes = {line.split()[0]: line.split()[1] for line in r.stdout.decode().splitlines()}
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        assert modes[f"/dev/{node}"] == "666", (node, modes)
    assert modes["/dev/shm"] == "1777"
    assert modes["/dev/pts/ptmx"] == "666"
    # a uid-1000 process writes /dev/null, reads /dev/zero and creates a file in /dev/shm
    script = "echo x > /dev/null && head -c 4 /dev/zero | wc -c && echo y > /dev/shm/u1000 && id -u"
    add_user = "echo 'u1000:x:1000:1000::/tmp:/bin/sh' >> /etc/passwd && echo 'u1000:x:1000:' >> /etc/group"
    assert pm("exec", "devmodes", "sh", "-c", add_user).returncode == 0
    r = pm("exec", "devmodes", "su", "-s", "/bin/sh", "u1000", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["4", "1000"]
