"""tests/fakes/cgroups.py behaves like the real managers where callers rely on it."""

from __future__ import annotations

import pytest

from runtime.cgroups import CgroupManager, Limits
from runtime.errors import CgroupError, FreezeTimeout, InvalidArgument
from tests.fakes.cgroups import FakeCgroupManager


def test_fake_lifecycle_and_recording() -> None:
    m: CgroupManager = FakeCgroupManager()
    info = m.create("c", Limits(memory_bytes=1 << 20))
    assert info.dirs["unified"].name == "c"
    m.add_pid("c", 10)
    assert m.pids("c") == [10] and m.stats("c").pids_current == 1
    m.freeze("c")
    assert m.freezer_state("c") == "frozen"
    m.thaw("c")
    m.kill("c")
    assert m.pids("c") == []
    m.destroy("c")
    assert not m.exists("c")
    assert [c[0] for c in m.calls] == ["create", "add_pid", "freeze", "thaw", "kill", "destroy"]  # type: ignore[attr-defined]


def test_fake_errors() -> None:
    m = FakeCgroupManager(freeze_timeout=True)
    with pytest.raises(CgroupError, match="does not exist"):
        m.freeze("nope")
    m.create("c", Limits())
    with pytest.raises(CgroupError, match="already exists"):
        m.create("c", Limits())
    with pytest.raises(InvalidArgument):
        m.create("a/b", Limits())
    with pytest.raises(FreezeTimeout):
        m.freeze("c", timeout_s=1)
    assert m.freezer_state("c") == "freezing"
    assert m.called("freeze") == [("freeze", "nope", 10.0), ("freeze", "c", 1)]
