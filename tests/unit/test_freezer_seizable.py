"""freeze_seizable: a frozen task in uninterruptible sleep (a vfork parent) gets thawed briefly
and refrozen, a bounded number of times; task_state reads /proc/PID/stat correctly."""

from __future__ import annotations

from pathlib import Path

from runtime.freezer import freeze_seizable, task_state, unseizable


def _proc(tmp_path: Path, states: dict[int, str]) -> Path:
    for pid, state in states.items():
        d = tmp_path / str(pid)
        d.mkdir(exist_ok=True)
        # a command name with ') D (' inside must not fool the parser
        (d / "stat").write_text(f"{pid} (sh) D (x) {state} 1 {pid} {pid} 0 -1 4194560 0 0\n")
    return tmp_path


def test_task_state_reads_after_the_last_parenthesis(tmp_path: Path) -> None:
    proc = _proc(tmp_path, {7: "S"})
    assert task_state(7, proc) == "S"
    assert task_state(8, proc) is None  # gone
    assert unseizable([7, 8], proc) == []


def test_a_task_in_d_state_is_thawed_and_refrozen_until_it_left(tmp_path: Path) -> None:
    proc = _proc(tmp_path, {10: "S", 11: "D"})
    events: list[str] = []
    sleeps: list[float] = []

    def freeze() -> None:
        events.append("freeze")
        if events.count("freeze") == 3:  # the vfork child exec'd meanwhile
            _proc(tmp_path, {11: "S"})

    stuck = freeze_seizable(freeze, lambda: events.append("thaw"), lambda: [10, 11], sleep=sleeps.append, proc=proc)
    assert stuck == []
    assert events == ["freeze", "thaw", "freeze", "thaw", "freeze"]
    assert sleeps == [0.002, 0.004]


def test_the_retries_are_bounded_and_the_stuck_pids_returned(tmp_path: Path) -> None:
    proc = _proc(tmp_path, {11: "D"})
    events: list[str] = []
    sleeps: list[float] = []
    stuck = freeze_seizable(lambda: events.append("freeze"), lambda: events.append("thaw"), lambda: [11],
                            attempts=3, sleep=sleeps.append, proc=proc)
    assert stuck == [11]
    assert events.count("freeze") == 4 and events.count("thaw") == 3
    assert events[-1] == "freeze"  # it ends frozen: the dump goes on and CRIU names the task
    assert sum(sleeps) < 0.05


def test_nothing_unseizable_means_one_freeze(tmp_path: Path) -> None:
    proc = _proc(tmp_path, {10: "S", 12: "R"})
    events: list[str] = []
    assert freeze_seizable(lambda: events.append("freeze"), lambda: events.append("thaw"), lambda: [10, 12], proc=proc) == []
    assert events == ["freeze"]
