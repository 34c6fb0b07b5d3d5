"""The v2 and v1/hybrid backends against a tmp_path cgroupfs (tests/fakes/cgroupfs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.cgroups import CgroupManager, Limits, detect, layout
from runtime.errors import CgroupError, FreezeTimeout, InvalidArgument, Unsupported
from tests.fakes.cgroupfs import SELF_PID, FakeCgroupFs, fake_host

SAMPLES = ["v2", "hybrid", "hybrid-joined", "v1"]
LIMITS = Limits(memory_bytes=64 << 20, cpu_quota_us=50_000, cpu_period_us=100_000, pids_max=16)


def make(tmp_path: Path, sample: str, parent: str | None = None, **kw: bool) -> tuple[CgroupManager, FakeCgroupFs, Path]:
    fs, proc, sysr = fake_host(tmp_path, sample, **kw)
    return detect(parent, layout=layout(proc, sysr), fs=fs), fs, sysr


def all_dirs(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_dir()}


@pytest.mark.parametrize("sample", SAMPLES)
def test_create_places_cgroup_below_own_cgroup_in_every_hierarchy(tmp_path: Path, sample: str) -> None:
    m, fs, sysr = make(tmp_path, sample)
    lay = layout(tmp_path / "proc", sysr)
    info = m.create("web-1", LIMITS)
    assert m.mode == lay.mode
    assert info.name == "web-1" and m.exists("web-1")
    for hname, d in info.dirs.items():
        h = lay.hierarchy(hname)
        assert h is not None
        assert d == h.own_dir / "pymigrate" / "web-1"
        assert d.is_dir()
    assert fs.root_writes == []
    assert m.info("web-1") == info


@pytest.mark.parametrize("sample", SAMPLES)
def test_hierarchies_used(tmp_path: Path, sample: str) -> None:
    m, _, _ = make(tmp_path, sample)
    names = set(m.create("c", Limits()).dirs)
    expected = {
        "v2": {"unified"},
        "hybrid": {"memory", "cpu", "cpuacct", "pids", "unified", "devices"},  # device policy: v1 controller
        "hybrid-joined": {"memory", "cpu,cpuacct", "pids", "unified"},  # no devices mounted: BPF on unified
        "v1": {"memory", "cpu,cpuacct", "pids", "freezer", "devices"},
    }[sample]
    assert names == expected


def test_v2_limit_files(tmp_path: Path) -> None:
    m, _, _ = make(tmp_path, "v2")
    d = m.create("c", LIMITS).dirs["unified"]
    assert (d / "memory.max").read_text() == str(64 << 20)
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "pids.max").read_text() == "16"
    m.set_limits("c", Limits())
    assert (d / "memory.max").read_text() == "max"
    assert (d / "cpu.max").read_text() == "max 100000"
    assert (d / "pids.max").read_text() == "max"


@pytest.mark.parametrize("sample", ["hybrid", "hybrid-joined", "v1"])
def test_v1_limit_files(tmp_path: Path, sample: str) -> None:
    m, _, _ = make(tmp_path, sample)
    dirs = m.create("c", LIMITS).dirs
    cpu = dirs.get("cpu") or dirs["cpu,cpuacct"]
    assert (dirs["memory"] / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (dirs["pids"] / "pids.max").read_text() == "16"
    m.set_limits("c", Limits())
    assert (cpu / "cpu.cfs_quota_us").read_text() == "-1"
    assert (dirs["pids"] / "pids.max").read_text() == "max"
    assert m.stats("c").memory_max_bytes is None  # 9223372036854771712 reads as unlimited


def test_v2_enables_controllers_and_moves_own_processes_to_a_leaf(tmp_path: Path) -> None:
    m, fs, sysr = make(tmp_path, "v2")
    own = sysr / "user.slice/user-0.slice/session-3.scope"
    assert (own / "cgroup.procs").read_text().split() == [str(SELF_PID)]
    m.create("c", LIMITS)
    assert set((own / "cgroup.subtree_control").read_text().split()) >= {"memory", "cpu", "pids"}
    assert set((own / "pymigrate" / "cgroup.subtree_control").read_text().split()) == {"memory", "cpu", "pids"}
    assert (own / "cgroup.procs").read_text().split() == []
    assert (own / "pymigrate-init" / "cgroup.procs").read_text().split() == [str(SELF_PID)]
    # a second container does not move anything again
    m.create("d", LIMITS)
    assert (own / "pymigrate-init" / "cgroup.procs").read_text().split() == [str(SELF_PID)]


def test_v2_refuses_to_move_when_asked_not_to(tmp_path: Path) -> None:
    fs, proc, sysr = fake_host(tmp_path, "v2")
    m = detect(layout=layout(proc, sysr), fs=fs, move_to_leaf=False)
    with pytest.raises(Unsupported) as exc:
        m.create("c", LIMITS)
    assert "has processes" in str(exc.value)
    assert exc.value.hint and "pymigrate-init" in exc.value.hint


def test_v2_at_root_never_writes_root_files(tmp_path: Path) -> None:
    fs, proc, sysr = fake_host(tmp_path, "v2", proc_cgroup="0::/\n")
    (sysr / "cgroup.subtree_control").write_text("memory pids")
    m = detect(layout=layout(proc, sysr), fs=fs)
    with pytest.raises(Unsupported, match="cpu"):
        m.create("c", Limits(cpu_quota_us=50_000))
    info = m.create("c", Limits(memory_bytes=1 << 20, pids_max=3))
    assert (info.dirs["unified"] / "memory.max").read_text() == str(1 << 20)
    assert fs.root_writes == []
    assert not (sysr / "pymigrate-init").exists()


@pytest.mark.parametrize("parent", ["/abs", "..", "a/../b", "./a", "a/.", ""])
def test_parent_must_be_relative_without_dots(tmp_path: Path, parent: str) -> None:
    fs, proc, sysr = fake_host(tmp_path, "hybrid")
    with pytest.raises(InvalidArgument, match="invalid cgroup parent"):
        detect(parent, layout=layout(proc, sysr), fs=fs)


@pytest.mark.parametrize("sample", SAMPLES)
def test_custom_parent_and_cleanup_of_intermediates(tmp_path: Path, sample: str) -> None:
    m, fs, sysr = make(tmp_path, sample, parent="tests/run-1")
    before = all_dirs(sysr)
    info = m.create("c", Limits())
    for d in info.dirs.values():
        assert d.parent.name == "run-1" and d.parent.parent.name == "tests"
    m.destroy("c")
    assert all_dirs(sysr) - before == {p for p in all_dirs(sysr) - before if p.name == "pymigrate-init"}


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "cgroup.procs"])
def test_bad_names(tmp_path: Path, name: str) -> None:
    m, _, _ = make(tmp_path, "hybrid")
    with pytest.raises(InvalidArgument, match="invalid cgroup name"):
        m.create(name, Limits())


@pytest.mark.parametrize(
    "limits",
    [Limits(memory_bytes=0), Limits(cpu_quota_us=10), Limits(cpu_period_us=10), Limits(pids_max=0)],
)
def test_bad_limits(tmp_path: Path, limits: Limits) -> None:
    m, _, _ = make(tmp_path, "v2")
    with pytest.raises(InvalidArgument):
        m.create("c", limits)
    assert not m.exists("c")


@pytest.mark.parametrize("sample", SAMPLES)
def test_create_twice_and_missing_cgroup(tmp_path: Path, sample: str) -> None:
    m, _, _ = make(tmp_path, sample)
    m.create("c", Limits())
    with pytest.raises(CgroupError, match="already exists"):
        m.create("c", Limits())
    with pytest.raises(CgroupError, match="cgroup nope does not exist"):
        m.freeze("nope")
    m.destroy("nope")  # missing is fine


@pytest.mark.parametrize("sample", SAMPLES)
def test_add_pid_pids_freeze_thaw_destroy(tmp_path: Path, sample: str) -> None:
    m, fs, sysr = make(tmp_path, sample)
    before = all_dirs(sysr)
    info = m.create("c", LIMITS)
    fs.spawn(100)
    fs.spawn(101)
    m.add_pid("c", 100)
    m.add_pid("c", 101)
    for d in info.dirs.values():
        assert sorted(int(x) for x in (d / "cgroup.procs").read_text().split()) == [100, 101]
    # a nested cgroup the container made itself: pids() is recursive, destroy removes it
    inner = next(iter(info.dirs.values())) / "inner"
    fs.mkdir(inner)
    fs.spawn(102, inner)
    assert m.pids("c") == [100, 101, 102]
    assert m.freezer_state("c") == "thawed"
    m.freeze("c", timeout_s=1)
    assert m.freezer_state("c") == "frozen"
    m.thaw("c", timeout_s=1)
    assert m.freezer_state("c") == "thawed"
    m.destroy("c", timeout_s=1)
    assert not m.exists("c")
    assert {100, 101, 102} <= set(fs.killed)
    assert not fs.alive & {100, 101, 102}
    left = all_dirs(sysr) - before
    assert {p.name for p in left} <= {"pymigrate-init"}
    assert fs.root_writes == []


@pytest.mark.parametrize("sample", SAMPLES)
def test_freeze_timeout_names_the_cgroup(tmp_path: Path, sample: str) -> None:
    m, fs, _ = make(tmp_path, sample)
    m.create("stuck-1", Limits())
    fs.stuck_freeze = True
    with pytest.raises(FreezeTimeout) as exc:
        m.freeze("stuck-1", timeout_s=0.2)
    assert exc.value.cgroup == "stuck-1" and exc.value.wanted == "frozen"
    assert "stuck-1" in str(exc.value)
    assert m.freezer_state("stuck-1") == "freezing"


def test_v1_freeze_retries_writing_frozen(tmp_path: Path) -> None:
    m, fs, _ = make(tmp_path, "v1")
    m.create("c", Limits())
    fs.stuck_freeze = True
    with pytest.raises(FreezeTimeout):
        m.freeze("c", timeout_s=0.1)
    writes = [v for p, v in fs.writes if p.name == "freezer.state"]
    assert writes.count("FROZEN") >= 2


def test_v1_kill_of_frozen_container_thaws_so_tasks_die(tmp_path: Path) -> None:
    m, fs, _ = make(tmp_path, "v1")
    m.create("c", Limits())
    fs.spawn(100)
    m.add_pid("c", 100)
    m.freeze("c", timeout_s=1)
    m.kill("c")
    assert m.pids("c") == []
    assert m.freezer_state("c") == "thawed"


def test_v2_kill_without_cgroup_kill_signals_each_pid(tmp_path: Path) -> None:
    m, fs, _ = make(tmp_path, "v2", has_kill=False)
    m.create("c", Limits())
    fs.spawn(100)
    m.add_pid("c", 100)
    m.kill("c")
    assert fs.killed == [100] and m.pids("c") == []
    assert not any(p.name == "cgroup.kill" for p, _ in fs.writes)


def test_destroy_keeps_shared_parent_while_another_container_uses_it(tmp_path: Path) -> None:
    m, fs, _ = make(tmp_path, "hybrid")
    a = m.create("a", Limits())
    m.create("b", Limits())
    m.destroy("a")
    for d in a.dirs.values():
        assert not d.exists() and d.parent.is_dir()
    m.destroy("b")
    for d in a.dirs.values():
        assert not d.parent.exists()


def test_destroy_raises_when_a_process_cannot_be_killed(tmp_path: Path) -> None:
    m, fs, _ = make(tmp_path, "v2", has_kill=False)
    m.create("c", Limits())
    fs.spawn(100)
    m.add_pid("c", 100)
    fs.kill = lambda pid, sig: None  # type: ignore[method-assign]  # an unkillable process
    with pytest.raises(CgroupError, match="still has processes"):
        m.destroy("c", timeout_s=0.1)


def test_v2_stats(tmp_path: Path) -> None:
    m, _, _ = make(tmp_path, "v2")
    d = m.create("c", LIMITS).dirs["unified"]
    (d / "memory.current").write_text("12345\n")
    (d / "memory.events").write_text((Path(__file__).parents[1] / "data/cgroup/memory.events").read_text())
    (d / "pids.current").write_text("3\n")
    (d / "cpu.stat").write_text("usage_usec 777\nuser_usec 700\nsystem_usec 77\n")
    s = m.stats("c")
    assert (s.memory_current_bytes, s.memory_max_bytes, s.oom_kills, s.pids_current, s.cpu_usage_us) == (
        12345,
        64 << 20,
        2,
        3,
        777,
    )


@pytest.mark.parametrize("sample", ["hybrid", "hybrid-joined", "v1"])
def test_v1_stats(tmp_path: Path, sample: str) -> None:
    m, _, _ = make(tmp_path, sample)
    dirs = m.create("c", LIMITS).dirs
    (dirs["memory"] / "memory.usage_in_bytes").write_text("4096\n")
    (dirs["memory"] / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    (dirs["pids"] / "pids.current").write_text("2\n")
    acct = dirs.get("cpuacct") or dirs["cpu,cpuacct"]
    (acct / "cpuacct.usage").write_text("5000000\n")
    s = m.stats("c")
    assert (s.memory_current_bytes, s.memory_max_bytes, s.oom_kills, s.pids_current, s.cpu_usage_us) == (
        4096,
        64 << 20,
        3,
        2,
        5000,
    )


def test_limits_without_controller_are_unsupported(tmp_path: Path) -> None:
    fs, proc, sysr = fake_host(tmp_path, "hybrid")
    lay = layout(proc, sysr)
    lay.limits.pop("pids")  # as on a host without the pids hierarchy
    m = detect(layout=lay, fs=fs)
    with pytest.raises(Unsupported, match="pids"):
        m.create("c", Limits(pids_max=5))
    assert not m.exists("c")
    m.create("c", Limits(memory_bytes=1 << 20))


def test_failed_limit_write_rolls_back(tmp_path: Path) -> None:
    m, fs, sysr = make(tmp_path, "hybrid")
    before = all_dirs(sysr)
    real_write = fs.write

    def refusing(path: Path, value: str) -> None:
        if path.name == "pids.max":
            raise OSError(22, "Invalid argument", str(path))
        real_write(path, value)

    fs.write = refusing  # type: ignore[method-assign]
    with pytest.raises(CgroupError, match=r"cannot write '16' to .*pids.max for cgroup c: invalid argument"):
        m.create("c", LIMITS)
    assert all_dirs(sysr) == before
