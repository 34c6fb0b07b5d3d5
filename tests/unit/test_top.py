"""top: host ps output kept to the container's pids (issue 14)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from runtime.errors import InvalidArgument, InvalidState
from runtime.top import filter_ps, top

PS_EF = """\
UID          PID    PPID  C STIME TTY          TIME CMD
root           1       0  0 18:00 ?        00:00:01 /sbin/init splash
root         100       1  0 18:01 ?        00:00:00 sleep 1000
1000         101     100  0 18:01 pts/0    00:00:00 sh -c echo a  b
root         102       1  0 18:01 ?        00:00:00 [kworker/0:1-events]
"""


def test_rows_of_the_container_pids_with_the_command_whole() -> None:
    result = filter_ps(PS_EF, {100, 101, 999})
    assert result.titles == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert [r[1] for r in result.processes] == ["100", "101"]
    assert result.processes[1][-1] == "sh -c echo a  b"


def test_pid_column_anywhere_and_missing() -> None:
    out = "COMMAND           PID\nsleep             100\nbash              7\n"
    assert filter_ps(out, {100}).processes == [["sleep", "100"]]
    with pytest.raises(InvalidArgument, match="no PID column"):
        filter_ps("COMMAND\nsleep\n", {100})
    with pytest.raises(InvalidArgument):
        filter_ps("", {1})


def test_top_refuses_a_container_that_is_not_running() -> None:
    c = SimpleNamespace(name="web", status="exited", is_live=False)
    rt = SimpleNamespace(container=lambda name: c)
    with pytest.raises(InvalidState, match="state is exited, expected running or paused"):
        top(rt, "web")


def test_top_runs_host_ps_with_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    seen = []

    def fake_run(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="PID COMMAND\n5 sleep\n6 other\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    c = SimpleNamespace(name="web", status="paused", is_live=True, container_id="abc", spec=SimpleNamespace(cgroup_parent=None))
    rt = SimpleNamespace(container=lambda name: c, cgroups=lambda parent: SimpleNamespace(pids=lambda cid: [5]))
    assert top(rt, "web", ("-o", "pid,comm")).processes == [["5", "sleep"]]
    assert top(rt, "web").processes == [["5", "sleep"]]
    assert seen == [["ps", "-o", "pid,comm"], ["ps", "-ef"]]
