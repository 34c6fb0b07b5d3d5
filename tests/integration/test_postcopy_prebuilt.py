"""Post-copy's target builds the container's shell at PrepareIncoming (migrate/migration/postcopy.py
prebuild_shell): its record ("created"), cgroup, network namespace, shim and a CRIU waiting in the
cgroup exist while the source still runs, before the freeze. A migration that ends before the
freeze must take all of it away again, whoever fails: the source (killed, or cut off), or the
target (killed while it holds the shell; its restart reconciles).

Real daemons in network-namespace hosts, a real memhog; the failpoints of migrate/failpoints.py
hold or kill a daemon at the step (as tests/integration/test_migrate_settlement.py does, whose
observation helpers are reused). Each case first sees the shell on the target (else the test
would pass without a prebuilt shell to tear down), then the end: the container counting on the
source only, nothing of it or of the migration left on the target, and a second post-copy
migration of it that works.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import Host
from tests.integration.migration_lab import Lab
from tests.integration.test_migrate_settlement import (
    HOLD_S,
    NAME,
    PEER_TIMEOUT_S,
    Monitor,
    log_size,
    wait_settled,
    wait_log,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "criu", "pycriu", "netns", "busybox", "overlay", "lazy_pages"),
]

CUT_S = 2 * PEER_TIMEOUT_S
# (failpoint, the daemon it holds or kills, the fault)
CASES = {
    "source-killed-after-prepare": ("source.prepared", "source", "kill"),
    "target-killed-during-upper": ("target.upper", "target", "kill"),
    "link-cut-during-upper": ("target.upper", "target", "link"),
}


@pytest.fixture(scope="module")
def lab_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("postcopy-prebuilt"))


@pytest.fixture
def lab(lab_workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.setenv("PYMIGRATE_UPPER_SIZE", "0")  # the upper layer as a plain directory
    monkeypatch.setenv("PYMIGRATE_PEER_TIMEOUT_S", str(PEER_TIMEOUT_S))  # the daemons and CLIs inherit it
    with Lab.create(lab_workdir) as made:
        yield made


def _shell_parts(lab: Lab, b: Host, cid: str) -> list[str]:
    """What of the prebuilt shell is on the target now (record, cgroup, netns, veth)."""
    return [p for p in lab.leftovers(b, NAME, cid) if p.startswith(("container record", "cgroup", "netns", "veth"))]


def _wait_shell(lab: Lab, b: Host, cid: str, timeout_s: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    parts = _shell_parts(lab, b, cid)
    while len(parts) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        parts = _shell_parts(lab, b, cid)
    return parts


@pytest.mark.parametrize("case", list(CASES))
def test_a_migration_ending_before_the_freeze_removes_the_prebuilt_shell(lab: Lab, case: str) -> None:
    failpoint, holder_role, fault = CASES[case]
    a, b = lab.hosts[0], lab.hosts[1]
    holder = a if holder_role == "source" else b
    action = "kill" if fault == "kill" else f"sleep:{HOLD_S:g}"
    holder.stop_daemon()
    lab.start_daemon(holder, env={"PYMIGRATE_FAILPOINTS": f"{failpoint}={action}"})
    cid = str(lab.run_memhog(a, NAME, 32)["spec"]["container_id"])
    before = lab.report(a, NAME)
    monitor = Monitor(a, b, cid)
    monitor.source_must_run = True  # before the freeze: the source never stops
    monitor.start()
    mark = log_size(holder)
    proc = lab.migrate_popen(a, b, NAME, "--mode", "postcopy")
    veth = f"pmh{lab.hosts.tag}{b.letter}"
    try:
        wait_log(holder, f"failpoint {failpoint} hit", mark, 90, proc)
        shell = _wait_shell(lab, b, cid)
        assert len(shell) >= 3, f"no shell built ahead on the target: {shell}"
        if fault == "link":
            subprocess.run(["ip", "link", "set", veth, "down"], check=True)
            time.sleep(CUT_S)
            subprocess.run(["ip", "link", "set", veth, "up"], check=True)
        else:
            deadline = time.monotonic() + 10
            while holder.daemon is not None and holder.daemon.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert holder.daemon is None or holder.daemon.poll() is not None, "the failpoint did not kill its daemon"
            holder.daemon = None
            lab.start_daemon(holder)  # its restart reconciles (the source's settles with the target)
        proc.communicate(timeout=180)
        where, problems = wait_settled(lab, a, b, cid)
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=False)
        monitor.stop()
    assert monitor.both == [], f"two unfrozen copies at t={monitor.both[:5]}"
    assert monitor.source_stopped == [], f"the source stopped running before the freeze at t={monitor.source_stopped[:5]}"
    assert problems == [] and where == "a", problems
    assert lab.leftovers(b, NAME, cid) == []
    lab.assert_counting(a, NAME)
    # the name and address are free on the target again: the next post-copy migration works
    r = lab.remote(a, ["migrate", NAME, lab.addr(b), "--mode", "postcopy", "--json"], timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert json.loads(r.stdout)["mode"] == "postcopy"
    after = lab.report(b, NAME)
    assert before is not None and after is not None and after[0] == before[0]
    lab.assert_counting(b, NAME)
