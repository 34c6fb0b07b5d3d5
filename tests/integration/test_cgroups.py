"""cgroup backends on the real kernel: limits are enforced, freezing stops work, destroy leaves nothing.

This machine is hybrid, so ``detect()`` gives the hybrid manager; the pure-v1 path (v1 freezer,
SIGKILL loop) and the v2 manager's freeze/kill/destroy (on the controller-less unified tree) are
exercised by building them from a modified layout.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from runtime.cgroups import CgroupManager, Limits, detect, layout
from runtime.cgroups._files import CgroupFs
from runtime.cgroups.v2 import V2CgroupManager

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "cgroup2")]


@dataclasses.dataclass
class Harness:
    """Creates cgroups and processes and undoes all of it, even when a test fails."""

    manager: CgroupManager
    parent: str
    procs: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)
    names: list[str] = dataclasses.field(default_factory=list)
    dirs: list[Path] = dataclasses.field(default_factory=list)

    def create(self, limits: Limits) -> str:
        name = f"t-{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        self.dirs.extend(self.manager.create(name, limits).dirs.values())
        return name

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside cgroup ``name``: it waits on stdin until it has been moved."""
        p = subprocess.Popen(["sh", "-c", 'read _ && exec "$@"', "sh", *argv], stdin=subprocess.PIPE)
        self.procs.append(p)
        self.manager.add_pid(name, p.pid)
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.close()
        return p

    def cleanup(self) -> None:
        errors: list[Exception] = []
        for name in self.names:
            try:
                if self.manager.exists(name) and self.manager.freezer_state(name) != "thawed":
                    self.manager.thaw(name, timeout_s=2)
            except Exception as exc:  # noqa: BLE001  teardown: destroy below still kills
                errors.append(exc)
            try:
                self.manager.destroy(name)
            except Exception as exc:  # noqa: BLE001  go on cleaning, report at the end
                errors.append(exc)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)
        if errors:
            raise errors[0]


def _harness(manager_factory) -> Iterator[Harness]:  # type: ignore[no-untyped-def]
    parent = f"pymigrate-test/{uuid.uuid4().hex[:8]}"
    h = Harness(manager_factory(parent), parent)
    try:
        yield h
    finally:
        h.cleanup()
        left = [d for d in h.dirs if d.exists()]
        assert not left, f"cgroup directories left behind: {left}"


@pytest.fixture
def hybrid() -> Iterator[Harness]:
    yield from _harness(lambda parent: detect(parent))


def test_layout_of_this_machine() -> None:
    lay = layout()
    assert lay.mode == "hybrid"
    assert lay.freezer == "cgroup2"
    assert set(lay.limits) == {"memory", "cpu", "pids"}
    mem = lay.hierarchy("memory")
    own = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines() if ":memory:" in line)
    assert mem is not None and mem.own_path == own


def test_memory_limit_oom_kills(hybrid: Harness) -> None:
    name = hybrid.create(Limits(memory_bytes=48 << 20))
    p = hybrid.start(name, [sys.executable, "-c", "b = b'x' * (512 << 20); print(len(b))"])
    assert p.wait(timeout=60) == -9, "the allocation above the memory limit was not OOM-killed"
    stats = hybrid.manager.stats(name)
    assert stats.oom_kills >= 1
    assert stats.memory_max_bytes == 48 << 20


def test_pids_limit_stops_forks(hybrid: Harness) -> None:
    name = hybrid.create(Limits(pids_max=5))
    p = hybrid.start(name, ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 20 & done; wait"])
    peak = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        cur = hybrid.manager.stats(name).pids_current or 0
        peak = max(peak, cur, len(hybrid.manager.pids(name)))
        time.sleep(0.01)
    assert peak <= 5
    assert peak >= 4  # it did fork up to (about) the limit
    info = hybrid.manager.info(name)
    events = (info.dirs["pids"] / "pids.events").read_text()
    assert int(events.split()[1]) >= 1, f"kernel refused no fork: {events!r}"
    hybrid.manager.kill(name)
    p.wait(timeout=5)


def _busy_share(h: Harness, limits: Limits) -> tuple[float, int]:
    """Share of one core a busy loop gets, sampled over 1.2 s while it runs (no start-up), and
    the kernel's count of throttled periods."""
    name = h.create(limits)
    p = h.start(name, [sys.executable, "-c", "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 2.0: pass"])
    time.sleep(0.4)
    used0, wall0 = h.manager.stats(name).cpu_usage_us or 0, time.monotonic()
    time.sleep(1.2)
    used1, wall1 = h.manager.stats(name).cpu_usage_us or 0, time.monotonic()
    assert p.wait(timeout=30) == 0
    dirs = h.manager.info(name).dirs
    cpu_stat = (dirs.get("cpu") or dirs["cpu,cpuacct"]) / "cpu.stat"
    throttled = int(cpu_stat.read_text().split("nr_throttled")[1].split()[0])
    return (used1 - used0) / 1e6 / (wall1 - wall0), throttled


def test_cpu_quota_half_a_core(hybrid: Harness) -> None:
    limited, limited_throttled = _busy_share(hybrid, Limits(cpu_quota_us=50_000, cpu_period_us=100_000))
    unlimited, unlimited_throttled = _busy_share(hybrid, Limits())
    print(f"cpu share: limited {limited:.3f} ({limited_throttled} throttled periods), "
          f"unlimited {unlimited:.3f} ({unlimited_throttled})")
    # Other load on the 2 cores can only lower these shares, so the upper bound is firm; the
    # throttle counters show the quota (and only the quota) at work whatever the load.
    assert 0.2 <= limited <= 0.6
    assert limited_throttled >= 5
    assert unlimited_throttled == 0


def _read_counter(path: Path) -> int:
    for _ in range(1000):
        text = path.read_text().strip()
        if text:
            return int(text)
        time.sleep(0.001)
    raise AssertionError(f"{path} stayed empty")


def _check_freeze_stops_counter(h: Harness, tmp_path: Path) -> None:
    name = h.create(Limits())
    counter = tmp_path / "counter"
    counter.write_text("0")
    h.start(name, ["sh", "-c", f'i=0; while :; do i=$((i+1)); echo $i > "{counter}"; done'])
    time.sleep(0.2)
    first = _read_counter(counter)
    assert first > 0
    h.manager.freeze(name, timeout_s=5)
    assert h.manager.freezer_state(name) == "frozen"
    frozen_at = counter.read_text()
    time.sleep(0.5)
    assert counter.read_text() == frozen_at, "the counter moved while frozen"
    h.manager.thaw(name, timeout_s=5)
    assert h.manager.freezer_state(name) == "thawed"
    time.sleep(0.2)
    assert _read_counter(counter) > int(frozen_at or first)


def test_freeze_stops_counter_hybrid(hybrid: Harness, tmp_path: Path) -> None:
    _check_freeze_stops_counter(hybrid, tmp_path)


def test_destroy_kills_frozen_processes_and_removes_every_directory(hybrid: Harness) -> None:
    name = hybrid.create(Limits(memory_bytes=64 << 20, cpu_quota_us=20_000, pids_max=10))
    p = hybrid.start(name, ["sh", "-c", "sleep 30 & sleep 30 & wait"])
    time.sleep(0.2)
    assert len(hybrid.manager.pids(name)) == 3
    dirs = list(hybrid.manager.info(name).dirs.values())
    hybrid.manager.freeze(name)
    hybrid.manager.destroy(name)
    assert p.wait(timeout=5) == -9
    assert not hybrid.manager.exists(name)
    for d in dirs:
        assert not d.exists()
        assert not d.parent.exists(), f"intermediate {d.parent} left behind"


@pytest.fixture
def pure_v1() -> Iterator[Harness]:
    """The hybrid host seen as pure v1: v1 freezer, no cgroup.kill."""
    lay = layout()
    lay = dataclasses.replace(
        lay, mode="v1", freezer="v1", hierarchies=tuple(h for h in lay.hierarchies if h.version == 1)
    )
    yield from _harness(lambda parent: detect(parent, layout=lay))


def test_v1_freezer_and_sigkill_loop(pure_v1: Harness, tmp_path: Path) -> None:
    assert pure_v1.manager.mode == "v1"
    _check_freeze_stops_counter(pure_v1, tmp_path)
    name = pure_v1.names[-1]
    p = pure_v1.procs[-1]
    pure_v1.manager.freeze(name)
    assert pure_v1.manager.freezer_state(name) == "frozen"
    pure_v1.manager.kill(name)  # frozen v1 tasks die only after the thaw kill() does
    assert p.wait(timeout=5) == -9
    assert pure_v1.manager.pids(name) == []


@pytest.fixture
def v2_unified() -> Iterator[Harness]:
    """The v2 manager on the controller-less unified tree: freeze, kill and destroy for real."""
    unified = layout().unified
    assert unified is not None
    yield from _harness(lambda parent: V2CgroupManager(unified, PurePosixPath(parent), CgroupFs(), set()))


def test_v2_manager_freeze_kill_destroy(v2_unified: Harness, tmp_path: Path) -> None:
    _check_freeze_stops_counter(v2_unified, tmp_path)
    name = v2_unified.names[-1]
    p = v2_unified.procs[-1]
    v2_unified.manager.freeze(name)
    v2_unified.manager.kill(name)  # cgroup.kill ends frozen tasks too
    assert p.wait(timeout=5) == -9
    assert v2_unified.manager.stats(name).cpu_usage_us
