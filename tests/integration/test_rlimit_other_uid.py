"""A server that dropped privileges (uid 1000) checkpoints and restores with its resource limits.

Real servers (memcached, PostgreSQL, nginx workers) run under their own uid. prlimit(2) on a task
of another user needs CAP_SYS_RESOURCE even to read, and this host's root lacks it, so an
unpatched CRIU 4.1.1 fails the dump (``Can't get rlimit 0: Operation not permitted``); our patch
(scripts/criu-patches/4.1.1-rlimit-proc-limits.patch) reads /proc/PID/limits instead. On restore
the task sets its limits while it still has CRIU's credentials: equal or lower hard limits need no
privilege, a higher one does, and the patched CRIU fails such a restore instead of silently
leaving the task with CRIU's limit.

The workload: busybox ``su`` drops PID 1 to uid/gid 1000 after the shell lowered its soft
RLIMIT_NOFILE to a value no default has (777); it counts into /tmp/cnt and appends to /tmp/hist.
After restore it must still be uid 1000, still counting on from where it was, and its
/proc/PID/limits must read exactly as before.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import PYMIGRATE, REPO
from tests.integration.hosts import make_hosts, two_hosts  # noqa: F401  (fixtures)
from tests.integration.workloads import container_file, init_pid, inspect, read_int, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "pycriu", "busybox")]

UID = 1000
DROPPED = [str(UID)] * 4  # real, effective, saved, filesystem
SOFT_NOFILE = 777
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/cnt; echo $i >> /tmp/hist; sleep 0.02; done"
# As root inside the container: a passwd entry for su, the odd soft limit, then exec drops PID 1.
WORKLOAD = (
    f"echo 'app:x:{UID}:{UID}::/tmp:/bin/sh' >> /etc/passwd && echo 'app:x:{UID}:' >> /etc/group && "
    f"ulimit -S -n {SOFT_NOFILE} && exec su -s /bin/sh app -c '{COUNTER}'"
)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode(errors='replace')}"
    return r.stdout.decode()


def ids(pid: int) -> tuple[list[str], list[str]]:
    """The uids and gids (real, effective, saved, fs) of ``pid``."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return fields["Uid"].split(), fields["Gid"].split()


def limits(pid: int) -> str:
    return Path(f"/proc/{pid}/limits").read_text()


def soft_nofile(limits_text: str) -> int:
    row = next(line for line in limits_text.splitlines() if line.startswith("Max open files"))
    return int(row.split()[3])


def start_workload(cli, root: Path, name: str) -> tuple[int, str]:  # noqa: ANN001
    """Run the uid-1000 counter; (its init pid, its /proc/PID/limits) once it counts."""
    ok(cli(["run", "-d", "--name", name, "busybox", "sh", "-c", WORKLOAD]))
    cnt = container_file(root, name, "/tmp/cnt")
    wait_for(lambda: (read_int(cnt) or 0) >= 10, 20, f"{name}: counter to reach 10")
    pid = init_pid(root, name)
    assert ids(pid) == (DROPPED, DROPPED), "workload did not drop to uid/gid 1000"
    text = limits(pid)
    assert soft_nofile(text) == SOFT_NOFILE
    return pid, text


def last_count(root: Path, name: str) -> int:
    """A value the workload reached before the checkpoint (the dump catches it at or after this)."""
    return wait_for(lambda: read_int(container_file(root, name, "/tmp/cnt")), 5, f"{name}: counter value")


def consecutive(path: Path) -> list[int]:
    values = [int(v) for v in path.read_text().split("\n")[:-1]]  # the last piece may be mid-write
    assert values == list(range(1, len(values) + 1)), f"{path}: the count breaks (restarted or lost a step)"
    return values


def assert_same_process_state(root: Path, name: str, final: int, limits_before: str) -> None:
    """Still uid 1000, counting on past ``final`` with the history unbroken (a restart from zero
    appends 1, 2, ... again), with the same limits."""
    cnt = container_file(root, name, "/tmp/cnt")
    wait_for(lambda: (read_int(cnt) or 0) > final + 5, 20, f"{name}: counter to move past {final}")
    assert len(consecutive(container_file(root, name, "/tmp/hist"))) > final
    pid = init_pid(root, name)
    assert ids(pid) == (DROPPED, DROPPED), "the restored process is not uid/gid 1000"
    assert limits(pid) == limits_before, "the restored process's limits differ from the checkpointed ones"


@pytest.fixture
def pm_cli(pm_root: Path, rt):  # noqa: ANN001, ANN201 - rt: containers removed after the test
    def cli(args: list[str], prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *PYMIGRATE, "--root", str(pm_root), *args], capture_output=True, timeout=120, cwd=REPO)

    yield cli
    from migrate.archive.store import CheckpointStore
    from runtime.config import Paths

    store = CheckpointStore(Paths(pm_root))
    for c in store.list():
        store.remove(c.checkpoint_id)


def test_uid_1000_process_checkpoints_and_restores_in_place(pm_cli, pm_root: Path) -> None:  # noqa: ANN001
    name = unique("uid1000")
    _, before = start_workload(pm_cli, pm_root, name)

    final = last_count(pm_root, name)
    cid = ok(pm_cli(["checkpoint", name])).strip().splitlines()[0]
    assert ok(pm_cli(["restore", cid])).strip() == name
    assert_same_process_state(pm_root, name, final, before)


def test_restore_that_cannot_give_back_a_hard_limit_fails_and_says_so(pm_cli, pm_root: Path) -> None:  # noqa: ANN001
    """A restoring CRIU with a lower hard RLIMIT_NOFILE than the process had cannot raise it
    (no CAP_SYS_RESOURCE): the restore fails naming the limit, the checkpoint stays, and a
    restore with enough headroom then brings the process back whole."""
    name = unique("hardlim")
    _, before = start_workload(pm_cli, pm_root, name)
    hard = int(next(line for line in before.splitlines() if line.startswith("Max open files")).split()[4])
    final = last_count(pm_root, name)
    cid = ok(pm_cli(["checkpoint", name])).strip().splitlines()[0]

    low = min(hard - 1, 4096)
    failed = pm_cli(["restore", cid], prefix=("prlimit", f"--nofile={SOFT_NOFILE}:{low}"))
    assert failed.returncode != 0, "restore succeeded although the hard limit could not be restored"
    err = failed.stderr.decode(errors="replace")
    assert "Can't restore rlimit 7" in err and f"hard {hard}" in err, err
    assert inspect(pm_root, name).state.status != "running"

    assert ok(pm_cli(["restore", cid])).strip() == name
    assert_same_process_state(pm_root, name, final, before)


def test_check_reports_how_other_users_limits_are_read(pm_cli) -> None:  # noqa: ANN001
    """``pymigrate check`` agrees with this host: the tests above dump uid-1000 processes, so it
    must call the host able to, and say whether by prlimit (the capability) or /proc/PID/limits."""
    cap_eff = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapEff:"))
    has_cap = bool(int(cap_eff.split()[1], 16) >> 24 & 1)
    data = json.loads(ok(pm_cli(["check", "--json"])))
    rlimits = data["host"]["rlimits"]
    assert rlimits["cap_sys_resource"] is has_cap
    assert rlimits["dump_other_uids"] is True and "dump under other uids" not in data["missing"]
    assert rlimits["other_uids_read_with"] == ("prlimit" if has_cap else "/proc/PID/limits")


@pytest.mark.requires("netns")
def test_export_on_one_root_import_on_another(two_hosts, tmp_path: Path) -> None:  # noqa: ANN001
    a, b = two_hosts
    for h in (a, b):
        ok(h.cli(["image", "build-busybox"]))
    name = unique("uidmove")
    _, before = start_workload(a.cli, a.root, name)

    archive = tmp_path / "uid1000.pma"
    final = last_count(a.root, name)
    ok(a.cli(["checkpoint", name, "--export", str(archive)]))
    assert ok(b.cli(["restore", "--import", str(archive)])).strip() == name
    assert_same_process_state(b.root, name, final, before)
