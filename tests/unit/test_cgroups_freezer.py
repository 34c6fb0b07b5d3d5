"""runtime/freezer.py: state parsing and the bounded wait."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runtime import freezer
from runtime.errors import CgroupError, FreezeTimeout

DATA = Path(__file__).parents[1] / "data" / "cgroup"


def test_parse_events_samples() -> None:
    assert freezer.parse_events_frozen((DATA / "cgroup.events.frozen").read_text()) is True
    assert freezer.parse_events_frozen((DATA / "cgroup.events.thawed").read_text()) is False
    assert freezer.parse_events_frozen("populated 1\n") is None


@pytest.mark.parametrize(
    ("freeze", "events", "state"),
    [("1", "frozen 1", "frozen"), ("1", "frozen 0", "freezing"), ("0", "frozen 0", "thawed"), ("0", "frozen 1", "frozen")],
)
def test_v2_state(freeze: str, events: str, state: str) -> None:
    assert freezer.v2_state(freeze + "\n", "populated 1\n" + events + "\n") == state


@pytest.mark.parametrize(("text", "state"), [("THAWED\n", "thawed"), ("FREEZING\n", "freezing"), ("FROZEN\n", "frozen")])
def test_parse_v1_state(text: str, state: str) -> None:
    assert freezer.parse_v1_state(text) == state


def test_parse_v1_state_unknown() -> None:
    with pytest.raises(CgroupError, match="unexpected freezer.state 'SLEEPY'"):
        freezer.parse_v1_state("SLEEPY")


def test_wait_until_returns_when_reached_after_retries() -> None:
    calls: list[int] = []
    checks = iter([False, False, True])
    waited = freezer.wait_until(lambda: next(checks), cgroup="c", wanted="frozen", timeout_s=2, retry=lambda: calls.append(1))
    assert waited < 1 and len(calls) == 2


def test_wait_until_times_out_bounded(tmp_path: Path) -> None:
    events = tmp_path / "cgroup.events"
    events.write_text("populated 1\nfrozen 0\n")
    start = time.monotonic()
    with pytest.raises(FreezeTimeout) as exc:
        freezer.wait_until(lambda: False, cgroup="web-1", wanted="frozen", timeout_s=0.15, events_path=events)
    assert 0.15 <= time.monotonic() - start < 1.0
    assert str(exc.value) == "cgroup web-1 did not become frozen within 0.15s"


def test_wait_until_tolerates_missing_events_file(tmp_path: Path) -> None:
    with pytest.raises(FreezeTimeout):
        freezer.wait_until(lambda: False, cgroup="c", wanted="thawed", timeout_s=0.05, events_path=tmp_path / "gone")
