"""Exec, Attach and Stats over a real daemon's unix socket (issue 15), and Exec over TCP with mutual
TLS (certificates from ``pymigrate tls init/issue``): ``--host exec`` with stdout and stderr apart
and the exit code, ``exec -i`` with piped stdin, ``exec -it`` and ``attach``
through a real pty of the test's (the CLI on ``pty.fork``, as test_terminal.py does locally), and
Stats numbers read back from the container's cgroup files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.cli_helpers import ok, start_daemon, stop_daemon, unique
from tests.integration.conftest import PYMIGRATE, REPO
from tests.integration.test_runtime import wait_for
from tests.integration.test_terminal import CTRL_P_CTRL_Q, PROMPT, Terminal

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]


@pytest.fixture(scope="module")
def host(pm_root: Path) -> Iterator[str]:
    """A daemon on the tests' state root: ``--host`` reaches the containers ``pm`` made."""
    proc, sock = start_daemon(pm_root)
    try:
        yield f"unix:{sock}"
    finally:
        stop_daemon(proc, sock)


@pytest.fixture
def sleeper(pm: Callable[..., subprocess.CompletedProcess]) -> Iterator[str]:
    name = unique("rx")
    ok(pm("run", "-d", "--name", name, "--network", "none", "busybox", "sleep", "1000"))
    yield name
    pm("rm", "-f", name)


@pytest.fixture
def term(pm_root: Path) -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def start(*args: str) -> Terminal:
        t = Terminal(pm_root, *args)
        opened.append(t)
        return t

    yield start
    for t in opened:
        t.kill()


def test_exec_keeps_stdout_and_stderr_apart_and_returns_the_exit_code(pm, host: str, sleeper: str) -> None:  # noqa: ANN001
    r = pm("--host", host, "exec", sleeper, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")

    r = pm("--host", host, "exec", "-i", "-e", "WHO=remote", sleeper, "sh", "-c", 'tr a-z A-Z; echo "$WHO"; exit 4',
           input=b"piped\nlines\n")
    assert (r.returncode, r.stdout) == (4, b"PIPED\nLINES\nremote\n"), r.stderr

    r = pm("--host", host, "exec", sleeper, "no-such-command")
    assert r.returncode == 127, r.stderr

    r = pm("--host", host, "--json", "exec", "no-such-container-rx", "true")
    assert r.returncode == 125 and json.loads(r.stdout)["type"] == "ContainerNotFound", r.stdout


def test_exec_it_through_a_pty(pm, host: str, sleeper: str, term) -> None:  # noqa: ANN001
    t = term("--host", host, "exec", "-it", sleeper, "sh")
    t.expect(PROMPT)
    t.type(b"echo $((6*7))\r")
    t.expect(rb"^42\r?$")  # computed by the shell (the echoed input says 6*7)
    t.type(b"tty\r")
    t.expect(rb"^/dev/pts/\d+\r?$")  # the container's devpts, not the daemon's
    t.resize(21, 77)
    t.until(b"stty size\r", rb"^21 77\r?$")
    t.type(b"exit 5\r")
    assert t.wait() == 5
    assert json.loads(ok(pm("inspect", sleeper)))[0]["state"]["status"] == "running"


def test_attach_to_a_terminal_container_then_detach_and_end_it(pm, host: str, term) -> None:  # noqa: ANN001
    name = unique("rxa")
    ok(pm("run", "-dit", "--name", name, "--network", "none", "busybox", "sh"))
    try:
        t = term("--host", host, "attach", name)
        t.type(b"echo $((3*4))-seen\r")
        t.expect(rb"^12-seen\r?$")
        t.resize(30, 90)
        t.until(b"stty size\r", rb"^30 90\r?$")
        t.type(CTRL_P_CTRL_Q)
        assert t.wait() == 0
        assert json.loads(ok(pm("inspect", name)))[0]["state"]["status"] == "running"  # detached, not ended

        t = term("--host", host, "attach", name)
        t.type(b"exit 7\r")
        assert t.wait() == 7
    finally:
        pm("rm", "-f", name)


def test_attach_to_an_interactive_container_without_a_terminal(pm, host: str) -> None:  # noqa: ANN001
    name = unique("rxi")
    ok(pm("run", "-di", "--name", name, "--network", "none", "busybox", "sh", "-c",
          'while read l; do echo "got $l"; echo "err $l" >&2; done; exit 9'))
    try:
        r = pm("--host", host, "attach", name, input=b"one\ntwo\n")
        assert r.returncode == 9, r.stderr  # the end of our stdin closed its stdin: the loop ended
        assert r.stdout == b"got one\ngot two\n"
        assert b"err one\nerr two\n" in r.stderr

        ok(pm("rm", "-f", name))
        ok(pm("run", "-di", "--name", name, "--network", "none", "busybox", "sh", "-c", "read l; echo $l; exit 2"))
        r = pm("--host", host, "--json", "attach", name, input=b"quiet\n")  # --json: only the answer on stdout
        assert (r.returncode, json.loads(r.stdout)) == (2, {"name": name, "detached": False, "exit_code": 2})
    finally:
        pm("rm", "-f", name)


def _cgroup_file(pid: int, controller: str, name: str) -> Path:
    """The file ``name`` of ``pid``'s cgroup of ``controller`` (v1), or of its cgroup2 one."""
    unified = None
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup", controller, path.lstrip("/"), name)
        if controllers == "":
            unified = Path("/sys/fs/cgroup", path.lstrip("/"), name)
    assert unified is not None and unified.exists(), f"no {controller} cgroup for {pid}"
    return unified


def _memory_in_files(pid: int) -> int:
    usage = _cgroup_file(pid, "memory", "memory.usage_in_bytes")
    if not usage.exists():
        usage = _cgroup_file(pid, "memory", "memory.current")
    stat = dict(line.split() for line in usage.with_name("memory.stat").read_text().splitlines())
    inactive = int(stat.get("total_inactive_file", stat.get("inactive_file", 0)))
    return int(usage.read_text()) - inactive


def test_stats_match_the_cgroup_files(pm, host: str) -> None:  # noqa: ANN001
    from migrate.remote.client import RemoteEngine

    name = unique("rxs")
    # three processes (the shell waits for two sleeps) and about 8 MB the shell keeps in a variable
    ok(pm("run", "-d", "--name", name, "--network", "none", "busybox", "sh", "-c",
          "x=$(head -c 8000000 /dev/zero | tr '\\0' a); sleep 1000 & sleep 1000 & wait"))
    try:
        pid = json.loads(ok(pm("inspect", name)))[0]["state"]["pid"]
        pids_file = _cgroup_file(pid, "pids", "pids.current")
        wait_for(lambda: pids_file.read_text().strip() == "3" and _memory_in_files(pid) > 8_000_000,
                 timeout_s=30, what="the shell holding its variable, and its two sleeps")
        with RemoteEngine(host) as engine:
            first = engine.stats(name)
            second = engine.stats(name, first)
        memory = _memory_in_files(pid)
        pids = int(pids_file.read_text())
        assert second.name == name and second.status == "running"
        assert second.pids_current == pids
        assert second.memory_usage_bytes is not None and abs(second.memory_usage_bytes - memory) <= memory * 0.10
        assert second.memory_usage_bytes > 8_000_000  # the shell's variable is in it
        assert first.cpu_percent is None and second.cpu_percent is not None and second.cpu_percent >= 0

        r = pm("--host", host, "--json", "stats", "--no-stream", name)
        [row] = json.loads(ok(r))
        assert row["name"] == name and row["pids_current"] == pids
        assert row["cpu_percent"] is not None
        with RemoteEngine(host) as engine:  # the streaming form: samples a second apart, CPU % from the second on
            stream = engine.stats_stream((name,), interval_s=0.2)
            samples = [next(stream), next(stream)]
            stream.close()
        assert [s[0].pids_current for s in samples] == [pids, pids]
        assert samples[0][0].cpu_percent is None and samples[1][0].cpu_percent is not None
    finally:
        pm("rm", "-f", name)
    assert os.path.exists(host[len("unix:"):])


def test_exec_over_tcp_with_mutual_tls(pm, pm_root: Path, sleeper: str, tmp_path: Path) -> None:  # noqa: ANN001
    pki = tmp_path / "pki"
    ok(pm("tls", "init", "--dir", str(pki), "--days", "1"))
    ok(pm("tls", "issue", "127.0.0.1", "--dir", str(pki), "--days", "1"))
    ok(pm("tls", "issue", "cli", "--client-only", "--dir", str(pki), "--days", "1"))
    with socket.socket() as probe:  # a free port (the daemon binds it right after)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen([*PYMIGRATE, "--root", str(pm_root), "daemon", "--listen", address, "--grace", "5",
                             "--tls-cert", str(pki / "127.0.0.1.crt"), "--tls-key", str(pki / "127.0.0.1.key"),
                             "--tls-ca", str(pki / "ca.crt")], stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        client = ["--host", address, "--tls-cert", str(pki / "cli.crt"), "--tls-key", str(pki / "cli.key"),
                  "--tls-ca", str(pki / "ca.crt")]
        wait_for(lambda: pm(*client, "ps").returncode == 0, timeout_s=60, what="the tls daemon")
        r = pm(*client, "exec", "-i", sleeper, "sh", "-c", "cat; echo err >&2; exit 6", input=b"over tls\n")
        assert (r.returncode, r.stdout, r.stderr) == (6, b"over tls\n", b"err\n")
        r = pm("--host", address, "--insecure", "exec", sleeper, "true")  # no client certificate: refused
        assert r.returncode == 125, r.stdout
    finally:
        stop_daemon(proc)
