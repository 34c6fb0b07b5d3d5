"""Exactly one live copy through every fault window of a cold migration (issue 11 item 3).

Two hosts (network namespaces, daemons over TCP, real CRIU, a counting memhog container). A
failpoint (migrate/failpoints.py, armed through the daemon's environment) holds one daemon at an
exact step — prepare, image, upper, dump, restore, answer, commit — or SIGKILLs it there; the test
then cuts the target's link for longer than gRPC's keepalive (so the calls in flight fail) or
SIGKILLs a daemon, and restarts what it killed. Throughout, a monitor samples both hosts every
50 ms and fails the test if the container ever runs unfrozen on both at once; for the steps
before the freeze it also fails if the source's copy ever stops running. At the end the container
runs (and counts) on exactly one host, the expected one:

    prepare, image, upper, dump     the source (before the point of no return the source wins)
    restore                         the target once it restored (link cut, source killed), the
                                    source if the target died while restoring (its restart
                                    aborts the half-done restore, the source then thaws)
    answer, commit                  the target (it restored: the source settles and removes its
                                    copy)

and neither host keeps a migration record, a scratch dir or any piece of the loser's copy.
"answer" is the window of the original bug: the target restored, its answer never reached the
source. Also: the unknown outcome as an operator sees it, and post-copy at restore and answer.

"Runs" means a workload process that can execute user code, read from cgroupfs and /proc: in a
thawed cgroup, not in ptrace stop (on cgroup v2 CRIU thaws the cgroup while it holds every task
seized for a dump, and freezes it again before letting go), not exiting and with no SIGKILL
pending (removing a frozen copy kills it, then thaws it so that it can die).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import Host
from tests.integration.migration_lab import Lab, cgroup_dirs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "criu", "pycriu", "netns", "busybox", "overlay"),
]

NAME = "victim"
HOLD_S = 4.0  # how long a "sleep" failpoint holds its daemon
# the daemons give a silent peer 4 s (migrate/peer_timeout.py; 15 s by default), so a cut of 8 s
# fails the calls and the page-server stream in flight, as a longer one does with the default
PEER_TIMEOUT_S = 4
CUT_S = 2 * PEER_TIMEOUT_S
SETTLE_S = 120.0  # until exactly one copy, cleaned up, after the fault

# phase -> (failpoint, the daemon it is in)
PHASES = {
    "prepare": ("source.prepared", "source"),
    "image": ("target.image", "target"),
    "upper": ("target.upper", "target"),
    "dump": ("source.dump", "source"),
    "restore": ("target.restore", "target"),
    "answer": ("target.answer", "target"),
    "commit": ("source.commit", "source"),
}
FAULTS = ("link", "source-kill", "target-kill")
BEFORE_FREEZE = ("prepare", "image", "upper")


def winner(phase: str, fault: str) -> str | None:
    """The host expected to run the container: "a" (source), "b" (target), None (either)."""
    if phase in BEFORE_FREEZE:
        return "a"
    if phase == "dump":
        return None if fault == "link" else "a"
    if phase == "restore":
        return "a" if fault == "target-kill" else "b"
    return "b"


@pytest.fixture(scope="module")
def lab_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("migrate-settlement"))


# --- observation --------------------------------------------------------------------------------


WORKLOAD = "memhog"  # the container's init: a copy runs when it does (CRIU helpers or a shim do not count)


def runs_unfrozen(host: Host, container_id: str) -> bool:
    """The container's workload has a process in its cgroup on ``host`` and the cgroup is not
    frozen (read from cgroupfs and /proc, not from pymigrate's records)."""
    for d in cgroup_dirs(host.root, container_id):
        try:
            if (d / "cgroup.freeze").exists():
                thawed = (d / "cgroup.freeze").read_text().strip() == "0"
            elif (d / "freezer.state").exists():
                thawed = (d / "freezer.state").read_text().strip() == "THAWED"
            else:
                continue
            return thawed and any(_runs_user_code(pid) for pid in (d / "cgroup.procs").read_text().split())
        except OSError:
            return False
    return False


def procs(host: Host, container_id: str) -> list[str]:
    """pid:comm of every process in the container's cgroups on ``host`` (for failure messages)."""
    out = []
    for d in cgroup_dirs(host.root, container_id):
        try:
            out += [f"{pid}:{_comm(pid)}" for pid in (d / "cgroup.procs").read_text().split()]
        except OSError:
            continue
    return sorted(set(out))


PF_EXITING = 0x4  # include/linux/sched.h
SIGKILL_BIT = 1 << 8  # signal 9 in /proc/PID/status SigPnd/ShdPnd


def _runs_user_code(pid: str) -> bool:
    """A workload process that can run user code: not stopped (CRIU's ptrace), not a zombie, not
    exiting, no SIGKILL pending. (Removing a frozen copy kills it first and thaws it after, so its dying processes
    show up thawed for a moment: they never run user code again.)"""
    if _comm(pid) != WORKLOAD:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        state, flags = fields[0], int(fields[6])
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError, IndexError):
        return False
    pending = 0
    for line in status.splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            pending |= int(line.split()[1], 16)
    # "t": held in ptrace stop by CRIU. On cgroup v2 CRIU thaws the cgroup (cgroup.freeze 0) while
    # it holds every task seized for the dump, and freezes it again before it lets go
    return state not in ("Z", "X", "t", "T") and not flags & PF_EXITING and not pending & SIGKILL_BIT


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Monitor(threading.Thread):
    """Samples both hosts; records every moment with two unfrozen copies, or none on the source
    while ``source_must_run``."""

    def __init__(self, a: Host, b: Host, container_id: str) -> None:
        super().__init__(daemon=True)
        self.a, self.b, self.cid = a, b, container_id
        self.source_must_run = False
        self.both: list[tuple[float, list[str], list[str]]] = []
        self.source_stopped: list[float] = []
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self._halt.wait(0.05):
            on_a, on_b = runs_unfrozen(self.a, self.cid), runs_unfrozen(self.b, self.cid)
            self.samples += 1
            if on_a and on_b:
                self.both.append((round(time.monotonic() - t0, 2), procs(self.a, self.cid), procs(self.b, self.cid)))
            if self.source_must_run and not on_a:
                self.source_stopped.append(round(time.monotonic() - t0, 2))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def wait_log(host: Host, text: str, since: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    log = host.workdir / "daemon.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_bytes()[since:].decode(errors="replace"):
            return
        time.sleep(0.02)
    out = ""
    if proc is not None and proc.poll() is not None:
        out = (proc.stdout.read() + proc.stderr.read()).decode(errors="replace")  # type: ignore[union-attr]
    raise AssertionError(f"no {text!r} in host {host.letter}'s daemon log within {timeout_s:g}s; migrate said: {out}")


def log_size(host: Host) -> int:
    log = host.workdir / "daemon.log"
    return log.stat().st_size if log.exists() else 0


def records(host: Host) -> list[str]:
    out = []
    for sub in ("outgoing", "incoming"):
        d = host.root / "run" / sub
        if d.is_dir():
            out += [f"{sub}/{p.name}" for p in d.iterdir() if p.suffix == ".json"]
    return out


def settled_state(lab: Lab, a: Host, b: Host, cid: str) -> tuple[str | None, list[str]]:
    """(the host the container runs on, or None; what is still wrong)."""
    where = [h for h in (a, b) if NAME in lab.running_names(h) and runs_unfrozen(h, cid)]
    problems = []
    if len(where) != 1:
        problems.append(f"running unfrozen on {[h.letter for h in where]}")
    for h in (a, b):
        if records(h):
            problems.append(f"host {h.letter} records {records(h)}")
    for h in (a, b):
        if where and h is where[0]:
            extra = [p for p in lab.leftovers(h, NAME, cid) if p.startswith(("scratch", "incoming"))]
        else:
            extra = lab.leftovers(h, NAME, cid)
        if extra:
            problems.append(f"host {h.letter} keeps {extra}")
    return (where[0].letter if len(where) == 1 else None), problems


def wait_settled(lab: Lab, a: Host, b: Host, cid: str) -> tuple[str | None, list[str]]:
    """``settled_state`` once nothing is wrong any more, or as it is after SETTLE_S."""
    deadline = time.monotonic() + SETTLE_S
    where, problems = settled_state(lab, a, b, cid)
    while problems and time.monotonic() < deadline:
        time.sleep(1.0)
        where, problems = settled_state(lab, a, b, cid)
    return where, problems


# --- the test -----------------------------------------------------------------------------------


@pytest.fixture
def lab(request: pytest.FixtureRequest, lab_workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    # the upper layer as a plain directory: these tests are about the copies, not the layer's form
    monkeypatch.setenv("PYMIGRATE_UPPER_SIZE", "0")
    monkeypatch.setenv("PYMIGRATE_PEER_TIMEOUT_S", str(PEER_TIMEOUT_S))  # the daemons and CLIs inherit it
    phase = request.node.callspec.params["phase"] if hasattr(request.node, "callspec") else None
    with Lab.create(lab_workdir, image_on=(0,) if phase == "image" else None) as made:
        yield made


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("phase", list(PHASES))
def test_exactly_one_copy(lab: Lab, phase: str, fault: str) -> None:
    started = time.monotonic()
    a, b = lab.hosts[0], lab.hosts[1]
    failpoint, holder_role = PHASES[phase]
    holder, other = (a, b) if holder_role == "source" else (b, a)
    kills_holder = fault == f"{holder_role}-kill"
    action = "kill" if kills_holder else f"sleep:{HOLD_S:g}"
    holder.stop_daemon()
    lab.start_daemon(holder, env={"PYMIGRATE_FAILPOINTS": f"{failpoint}={action}"})

    info = lab.run_memhog(a, NAME, 32)
    cid = str(info["spec"]["container_id"])
    monitor = Monitor(a, b, cid)
    monitor.source_must_run = phase in BEFORE_FREEZE
    monitor.start()
    mark = log_size(holder)
    proc = lab.migrate_popen(a, b, NAME)
    veth = f"pmh{lab.hosts.tag}{b.letter}"  # the target's cable, in the root namespace
    try:
        wait_log(holder, f"failpoint {failpoint} hit", mark, 90, proc)
        if fault == "link":
            subprocess.run(["ip", "link", "set", veth, "down"], check=True)
            time.sleep(CUT_S)
            subprocess.run(["ip", "link", "set", veth, "up"], check=True)
        else:
            victim = a if fault == "source-kill" else b
            if not kills_holder:
                victim.kill_daemon()
            else:
                deadline = time.monotonic() + 10
                while victim.daemon is not None and victim.daemon.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert victim.daemon is None or victim.daemon.poll() is not None, "the failpoint did not kill its daemon"
            time.sleep(1.0)
            victim.daemon = None
            lab.start_daemon(victim)  # its restart reconciles (and settles, for the source)
        out, err = proc.communicate(timeout=180)
        answer = (err + out).decode(errors="replace")
        where, problems = wait_settled(lab, a, b, cid)
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=False)
        monitor.stop()
        keep = os.environ.get("PYMIGRATE_TEST_KEEP_LOGS")  # a dir: both daemons' logs are copied there
        if keep:
            for h in (a, b):
                log = h.workdir / "daemon.log"
                if log.exists():
                    Path(keep).mkdir(parents=True, exist_ok=True)
                    shutil.copy(log, Path(keep) / f"{phase}-{fault}-{h.letter}.log")
    elapsed = time.monotonic() - started
    print(f"phase={phase} fault={fault} rc={proc.returncode} winner={where} elapsed={elapsed:.1f}s samples={monitor.samples}\n{answer}")
    assert monitor.both == [], f"two unfrozen copies at t={monitor.both[:5]}"
    assert monitor.source_stopped == [], f"the source stopped running before the freeze at t={monitor.source_stopped[:5]}"
    assert problems == [], problems
    expected = winner(phase, fault)
    if expected is not None:
        assert where == expected, f"expected the container on host {expected}, it runs on {where}"
    host = a if where == "a" else b
    lab.assert_counting(host, NAME)


def test_an_unknown_outcome_is_visible_and_settles_once_the_target_answers(lab: Lab) -> None:
    """The answer lost and the target unreachable past the migrate call's own settling (twice the
    peer timeout: 30 s by default, 8 s here): the
    call fails with OutcomeUnknown, the copy stays frozen and shows paused, unpause refuses it;
    once the link is back the source daemon settles it (the target runs it)."""
    a, b = lab.hosts[0], lab.hosts[1]
    b.stop_daemon()
    lab.start_daemon(b, env={"PYMIGRATE_FAILPOINTS": f"target.answer=sleep:{HOLD_S:g}"})
    cid = str(lab.run_memhog(a, NAME, 32)["spec"]["container_id"])
    monitor = Monitor(a, b, cid)
    monitor.start()
    mark = log_size(b)
    proc = lab.migrate_popen(a, b, NAME)
    veth = f"pmh{lab.hosts.tag}{b.letter}"
    try:
        wait_log(b, "failpoint target.answer hit", mark, 90, proc)
        subprocess.run(["ip", "link", "set", veth, "down"], check=True)
        out, err = proc.communicate(timeout=180)
        text = (err + out).decode(errors="replace")
        print(text)
        assert proc.returncode != 0 and "outcome unknown" in text, text
        assert "stays frozen here" in text, text
        status = {c.get("name") or c.get("spec", {}).get("name"): c.get("status") or c.get("state", {}).get("status")
                  for c in lab.ps(a)}
        assert status.get(NAME) == "paused", status
        refused = lab.remote(a, ["unpause", NAME])
        assert refused.returncode != 0 and b"is settled" in refused.stderr, refused.stderr
        assert not runs_unfrozen(a, cid)
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
    where, problems = wait_settled(lab, a, b, cid)
    monitor.stop()
    assert monitor.both == []
    assert problems == [] and where == "b", problems
    lab.assert_counting(b, NAME)
    assert "settled with" in (a.workdir / "daemon.log").read_text()


@pytest.mark.parametrize("phase,fault", [("restore", "target-kill"), ("answer", "source-kill"), ("answer", "link")])
def test_postcopy_never_two_copies(lab: Lab, phase: str, fault: str) -> None:
    """Post-copy: after the resume the memory is split between the hosts, so losing the source or
    the link there may lose the target's copy (docs/migration.md, the trade-off). Settlement must
    still never let two copies run, and must never remove the source's whole frozen copy unless the
    target's copy has every page: the end is one running copy, or (post-copy lost) the source's
    frozen copy kept paused for the operator and nothing on the target."""
    a, b = lab.hosts[0], lab.hosts[1]
    failpoint, _ = PHASES[phase]
    action = "kill" if fault == "target-kill" else f"sleep:{HOLD_S:g}"
    b.stop_daemon()
    lab.start_daemon(b, env={"PYMIGRATE_FAILPOINTS": f"{failpoint}={action}"})
    cid = str(lab.run_memhog(a, NAME, 32)["spec"]["container_id"])
    monitor = Monitor(a, b, cid)
    monitor.start()
    mark = log_size(b)
    proc = lab.migrate_popen(a, b, NAME, "--mode", "postcopy")
    veth = f"pmh{lab.hosts.tag}{b.letter}"
    try:
        wait_log(b, f"failpoint {failpoint} hit", mark, 90, proc)
        if fault == "link":
            subprocess.run(["ip", "link", "set", veth, "down"], check=True)
            time.sleep(CUT_S)
            subprocess.run(["ip", "link", "set", veth, "up"], check=True)
        else:
            victim = a if fault == "source-kill" else b
            if fault == "source-kill":
                victim.kill_daemon()
            elif victim.daemon is not None:  # the failpoint killed it
                victim.daemon.wait(10)
            time.sleep(1.0)
            victim.daemon = None
            lab.start_daemon(victim)
        out, err = proc.communicate(timeout=180)
        text = (err + out).decode(errors="replace")
        deadline = time.monotonic() + SETTLE_S
        where, problems = settled_state(lab, a, b, cid)
        lost = False
        while problems and time.monotonic() < deadline:
            time.sleep(1.0)
            where, problems = settled_state(lab, a, b, cid)
            kept = [c for c in lab.ps(a) if (c.get("name") or c.get("spec", {}).get("name")) == NAME]
            lost = (not records(a) and not records(b) and not lab.leftovers(b, NAME, cid) and len(kept) == 1
                    and (kept[0].get("status") or kept[0].get("state", {}).get("status")) == "paused")
            if lost:
                break
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=False)
        monitor.stop()
        keep = os.environ.get("PYMIGRATE_TEST_KEEP_LOGS")
        if keep:
            for h in (a, b):
                log = h.workdir / "daemon.log"
                if log.exists():
                    Path(keep).mkdir(parents=True, exist_ok=True)
                    shutil.copy(log, Path(keep) / f"postcopy-{phase}-{fault}-{h.letter}.log")
    print(f"postcopy phase={phase} fault={fault} rc={proc.returncode} winner={where} lost={lost}\n{text}")
    assert monitor.both == [], f"two unfrozen copies: {monitor.both[:3]}"
    if lost:  # the source's frozen copy is whole: the operator can resume it
        assert not runs_unfrozen(a, cid) and not runs_unfrozen(b, cid)
        assert lab.remote(a, ["unpause", NAME]).returncode == 0
        lab.assert_counting(a, NAME)
    else:
        assert problems == [], problems
        lab.assert_counting(a if where == "a" else b, NAME)
    if phase == "restore":  # the target died before its restore: the source's copy is the one
        assert where == "a" and not lost
