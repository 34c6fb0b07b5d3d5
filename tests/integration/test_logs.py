"""``logs`` on the real runtime (issue 14): stdout and stderr as two streams, times from the shim's
index (runtime/log_index.py), --tail/--since/--until/-t, the index through checkpoint+restore,
a container that attacks its own index, and foreground ``run --json``."""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path

import pytest

from tests.integration.cli_helpers import ok, unique
from tests.integration.test_runtime import wait_for
from tests.integration.workloads import container_file

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]

STAMP = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (.*)$")


def _exited(pm, name: str) -> None:  # noqa: ANN001
    wait_for(lambda: json.loads(ok(pm("inspect", name)))[0]["state"]["status"] == "exited", 20, f"{name} to exit")


def _entries(pm, name: str, *args: str) -> list[dict]:  # noqa: ANN001
    return json.loads(ok(pm("logs", "--json", *args, name)))


def test_streams_tail_since_until_and_timestamps(pm) -> None:  # noqa: ANN001
    name = unique("logs")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c",
          # lines closer than the shim's scans (ms) share a time: merged stdout first, so space them
          "echo out1; sleep 0.2; echo err1 >&2; sleep 0.2; echo out2; sleep 1.2; echo err2 >&2; sleep 0.2; echo out3"))
    _exited(pm, name)
    r = pm("logs", name)
    assert r.returncode == 0 and r.stdout == b"out1\nout2\nout3\n" and r.stderr == b"err1\nerr2\n", r

    entries = _entries(pm, name)
    assert [(e["stream"], e["line"]) for e in entries] == [
        ("stdout", "out1\n"), ("stderr", "err1\n"), ("stdout", "out2\n"), ("stderr", "err2\n"), ("stdout", "out3\n")]
    times = [e["time_ns"] for e in entries]
    assert times == sorted(times) and abs(times[0] / 1e9 - time.time()) < 60
    assert times[3] - times[2] >= 1.0e9  # the sleep shows: real write times, not read times

    assert ok(pm("logs", "--tail", "2", name)) == "out3\n"  # the last two lines are err2 and out3
    assert pm("logs", "-n", "2", name).stderr == b"err2\n"
    middle = (times[2] + times[3]) / 2e9
    assert ok(pm("logs", "--since", f"{middle:.6f}", name)) == "out3\n"
    assert ok(pm("logs", "--until", f"{middle:.6f}", name)) == "out1\nout2\n"
    rfc3339 = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle)) + f".{int(middle % 1 * 1e9):09d}Z"
    assert pm("logs", "--since", rfc3339, name).stderr == b"err2\n"
    assert ok(pm("logs", "--since", "10m", name)) == "out1\nout2\nout3\n"
    assert ok(pm("logs", "--since", "1h", "--until", "30m", name)) == ""

    r = pm("logs", "-t", name)
    stamped = [STAMP.match(line) for line in r.stdout.splitlines() + r.stderr.splitlines()]
    assert all(stamped) and sorted(m.group(2) for m in stamped) == [b"err1", b"err2", b"out1", b"out2", b"out3"]
    assert [m.group(1).decode() for m in stamped[:3]] == [e["time"] for e in entries if e["stream"] == "stdout"]
    ok(pm("rm", name))


def test_follow_with_tail_zero_shows_only_new_lines(pm) -> None:  # noqa: ANN001
    name = unique("logf")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c",
          "echo old; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo new; echo bad >&2"))
    wait_for(lambda: ok(pm("logs", name)) == "old\n", 20, "the first line")
    import subprocess

    from tests.integration.conftest import PYMIGRATE, REPO

    root = json.loads(ok(pm("inspect", name)))[0]["bundle_dir"].split("/containers/")[0]
    follower = subprocess.Popen([*PYMIGRATE, "--root", root, "logs", "-f", "--tail", "0", name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    time.sleep(1.0)
    ok(pm("exec", name, "touch", "/tmp/go"))
    out, err = follower.communicate(timeout=20)
    assert follower.returncode == 0 and out == b"new\n" and err == b"bad\n", (out, err)
    ok(pm("rm", "-f", name))


def test_a_container_attacking_its_index_harms_only_its_own_times(pm, tmp_path: Path) -> None:  # noqa: ANN001
    victim = Path(f"/tmp/pm-victim-{secrets.token_hex(4)}")
    victim.write_bytes(b"precious\n")
    name = unique("logx")
    try:
        script = ("echo one; head -c 4099 /dev/urandom >> /.pymigrate/log.idx; sleep 0.3; echo two; "
                  f"rm -f /.pymigrate/log.idx; ln -s {victim} /.pymigrate/log.idx; sleep 0.3; echo three >&2; "
                  "while [ ! -e /tmp/go ]; do sleep 0.05; done; "
                  "rm -f /.pymigrate/log.idx; mkfifo /.pymigrate/log.idx; echo four; sleep 0.3")
        ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", script))
        wait_for(lambda: "three" in pm("logs", name).stderr.decode(), 20, "the third line")
        assert os.path.islink(container_file(Path(pm_root_of(pm, name)), name, "/.pymigrate/log.idx"))
        ok(pm("exec", name, "touch", "/tmp/go"))
        _exited(pm, name)
        started = time.monotonic()
        r = pm("logs", "--json", name, timeout=20)
        assert time.monotonic() - started < 10 and r.returncode == 0, r
        entries = json.loads(r.stdout)  # with its index gone, the merge order across streams is lost, nothing else
        assert [e["line"] for e in entries if e["stream"] == "stdout"] == ["one\n", "two\n", "four\n"]
        assert [e["line"] for e in entries if e["stream"] == "stderr"] == ["three\n"]
        assert victim.read_bytes() == b"precious\n"  # the shim never wrote through the planted link
    finally:
        victim.unlink(missing_ok=True)
        pm("rm", "-f", name)


def pm_root_of(pm, name: str) -> str:  # noqa: ANN001
    return json.loads(ok(pm("inspect", name)))[0]["bundle_dir"].split("/containers/")[0]


def test_foreground_run_passes_output_through_and_json_is_the_last_line(pm) -> None:  # noqa: ANN001
    name = unique("fg")
    r = pm("run", "--rm", "--json", "--name", name, "busybox", "sh", "-c", "echo hello; echo oops >&2; printf partial; exit 3")
    assert r.returncode == 3, r
    lines = r.stdout.decode().splitlines()
    assert lines[:-1] == ["hello", "partial"] and json.loads(lines[-1]) == {"name": name, "exit_code": 3}
    assert r.stderr == b"oops\n"
    r = pm("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2")
    assert r.returncode == 0 and r.stdout == b"out\n" and r.stderr == b"err\n", r


def test_remote_logs_keep_streams_times_and_filters(pm, pm_root: Path) -> None:  # noqa: ANN001
    from tests.integration.cli_helpers import start_daemon, stop_daemon

    proc, sock = start_daemon(pm_root)
    try:
        host = ("--host", f"unix:{sock}")
        name = unique("logr")
        # run through the daemon: its shim comes from the fork server and indexes all the same
        ok(pm(*host, "run", "-d", "--name", name, "busybox", "sh", "-c", "echo a; echo b >&2; sleep 0.3; echo c"))
        _exited(pm, name)
        r = pm(*host, "logs", "-t", name)
        assert r.returncode == 0 and [m.group(2) for m in map(STAMP.match, r.stdout.splitlines())] == [b"a", b"c"], r
        assert STAMP.match(r.stderr.rstrip(b"\n")).group(2) == b"b"
        local = _entries(pm, name)
        remote = json.loads(ok(pm(*host, "logs", "--json", name)))
        assert [(e["stream"], e["line"]) for e in remote] == [(e["stream"], e["line"]) for e in local]
        assert all(abs(a["time_ns"] - b["time_ns"]) < 1000 for a, b in zip(local, remote))  # a double carries us
        assert ok(pm(*host, "logs", "--tail", "1", name)) == "c\n"
        assert ok(pm(*host, "logs", "--since", f"{local[2]['time_ns'] / 1e9 - 0.1:.6f}", name)) == "c\n"
        ok(pm(*host, "rm", name))
    finally:
        stop_daemon(proc, sock)


@pytest.mark.requires("criu", "pycriu")
def test_logs_and_their_times_survive_checkpoint_and_restore(pm) -> None:  # noqa: ANN001
    from runtime.log_index import RECORD
    from runtime.logs import Index

    name = unique("logcp")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c",
          "i=0; while true; do i=$((i+1)); echo o$i; echo e$i >&2; sleep 0.1; done"))
    wait_for(lambda: "o10\n" in ok(pm("logs", name)), 20, "ten lines")
    checkpoint_id = ok(pm("checkpoint", name)).strip().splitlines()[0]
    # checkpointed: the overlay is unmounted, the logs are read from the upper layer
    assert "o10\n" in ok(pm("logs", name)) and "e10\n" in pm("logs", name).stderr.decode()
    time.sleep(1.0)  # a gap the times must show
    restored_at = time.time_ns()
    assert ok(pm("restore", checkpoint_id)).strip() == name
    before = len(ok(pm("logs", name)).splitlines())
    wait_for(lambda: len(ok(pm("logs", name)).splitlines()) >= before + 10, 20, "ten lines after the restore")
    ok(pm("stop", "-t", "1", name))

    entries = _entries(pm, name)
    times = [e["time_ns"] for e in entries]
    assert times == sorted(times)
    for stream, prefix in (("stdout", "o"), ("stderr", "e")):
        numbers = [int(e["line"][1:]) for e in entries if e["stream"] == stream]
        assert all(e["line"].startswith(prefix) for e in entries if e["stream"] == stream)
        assert numbers == list(range(1, len(numbers) + 1))  # nothing lost or repeated
    # lines 0.1 s apart get times of their own: the shim hears the writes (inotify), not a 0.5 s scan
    stdout_times = [e["time_ns"] for e in entries if e["stream"] == "stdout"]
    assert len(set(stdout_times)) >= 0.7 * len(stdout_times), stdout_times
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) >= 1.0e9  # the checkpoint's pause, between the last line before and the first after
    # lines written after the restore are indexed by the restored container's shim
    from runtime.runtime import Runtime

    info = json.loads(ok(pm("inspect", name)))[0]
    raw = (Runtime(Path(pm_root_of(pm, name))).log_root(info["spec"]["container_id"]) / ".pymigrate/log.idx").read_bytes()
    index = Index()
    index.feed(raw, {"stdout": 1 << 40, "stderr": 1 << 40}, time.time_ns())
    assert len(raw) % RECORD.size == 0
    assert any(t >= restored_at for t in index.streams["stdout"].times)
    assert any(t >= restored_at for t in index.streams["stderr"].times)
    ok(pm("rm", "-f", name))
