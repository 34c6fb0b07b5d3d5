"""Limits hold on the real kernel; bad input leaves nothing; a run/stop/rm cycle leaves nothing."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from runtime.spec import Volume

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]

LOOP = ("sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")


def test_memory_limit_oom_kills_and_inspect_says_so(rt, pm) -> None:  # noqa: ANN001
    # dd allocates its 64 MiB block and fills it: far over a 16 MiB limit, no swap here
    rt.run("busybox", ("sh", "-c", "exec dd if=/dev/zero of=/dev/null bs=64M count=1"), name="oom", memory_bytes=16 * 1024 * 1024)
    code = rt.wait("oom", timeout_s=20)
    assert code == 137
    r = pm("inspect", "oom")
    info = json.loads(r.stdout)[0]
    assert info["state"]["oom_killed"] is True
    assert info["spec"]["memory_bytes"] == 16 * 1024 * 1024
    assert b"oom-killed" in pm("ps", "-a").stdout


def test_memory_limit_not_hit_means_not_oom_killed(rt) -> None:  # noqa: ANN001
    rt.run("busybox", ("sh", "-c", "exec dd if=/dev/zero of=/dev/null bs=1M count=4"), name="fits", memory_bytes=64 * 1024 * 1024)
    assert rt.wait("fits", timeout_s=20) == 0
    assert rt.inspect("fits").state.oom_killed is False


def test_fork_bomb_stops_at_pids_limit(rt) -> None:  # noqa: ANN001
    # each subshell keeps forking more sleepers; a failed fork only ends that subshell
    bomb = "b() { while true; do (sleep 1000 &) 2>/dev/null || true; sleep 1000 & done; }; b & b & b & sleep 1000"
    info = rt.run("busybox", ("sh", "-c", bomb), name="bomb", pids_limit=10)
    seen = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        seen.append(rt.inspect("bomb").pids_current or 0)
        time.sleep(0.1)
    assert max(seen) <= 10, seen
    assert max(seen) >= 8, seen  # it really tried: the limit, not luck, stopped it
    pids_max = [Path(d, "pids.max") for d in rt.inspect("bomb").cgroup.values() if Path(d, "pids.max").exists()]
    assert [p.read_text().strip() for p in pids_max] == ["10"]
    assert info.state.status == "running"


def test_cpus_half_caps_near_half_a_core(rt) -> None:  # noqa: ANN001
    rt.run("busybox", ("sh", "-c", "while :; do :; done"), name="spin", cpus=0.5)
    cg = rt.cgroups(None)
    cid = rt.inspect("spin").spec.container_id
    time.sleep(0.5)
    u0, t0 = cg.stats(cid).cpu_usage_us, time.monotonic()
    time.sleep(3)
    u1, t1 = cg.stats(cid).cpu_usage_us, time.monotonic()
    cores = (u1 - u0) / 1e6 / (t1 - t0)
    assert 0.35 <= cores <= 0.6, cores


def _leftovers(root: Path, ids: set[str]) -> list[str]:
    found = []
    found += [f"state {p.name}" for p in (root / "containers").iterdir()]
    found += [f"netns {p.name}" for p in (root / "netns").iterdir()]
    mountinfo = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {line.split()[4]}" for line in mountinfo.splitlines() if str(root) in line.split()[4]]
    for cid in ids:
        found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/**/{cid}")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for cid in ids:
        found += [f"veth {line.split()[1]}" for line in links.splitlines() if cid[:8] in line.split()[1]]
    leases = root / "network" / "ipam.json"
    if leases.exists():
        data = json.loads(leases.read_text())
        held = data.get("leases", data) if isinstance(data, dict) else data
        found += [f"lease {k}" for k in held if k in ids]
    return found


def test_twenty_containers_run_stop_rm_leave_nothing(rt, pm, pm_root) -> None:  # noqa: ANN001
    ids = set()
    for i in range(20):
        r = pm("run", "-d", "--name", f"cyc{i}", "--memory", "32m", "--pids-limit", "20", "busybox", *LOOP)
        assert r.returncode == 0, r.stderr
        ids.add(rt.inspect(f"cyc{i}").spec.container_id)
    assert len(rt.list()) == 20
    assert len({i.spec.ip for i in rt.list()}) == 20
    for i in range(20):
        assert pm("stop", "-t", "5", f"cyc{i}").returncode == 0
        assert pm("rm", f"cyc{i}").returncode == 0
    assert _leftovers(pm_root, ids) == []


BAD_INPUTS = [
    (["--name", "bad name!"], "bad name!"),
    (["--memory", "12XB"], "12XB"),
    (["--cpus", "0"], "--cpus 0"),
    (["--cpus", "99"], "--cpus 99"),
    (["--pids-limit", "0"], "--pids-limit 0"),
    (["--ip", "192.0.2.7"], "192.0.2.7"),
    (["--network", "none", "--ip", "10.1.2.3"], "10.1.2.3"),
    (["-v", "/definitely/not/here:/data"], "/definitely/not/here"),
    (["-v", "/tmp:relative"], "relative"),
    (["-e", "=nokey"], "=nokey"),  # (-e KEY alone takes KEY from the environment, as docker)
    (["-w", "relative/dir"], "relative/dir"),
    (["--hostname", "bad host"], "bad host"),
]


@pytest.mark.parametrize("args,named", BAD_INPUTS, ids=[b[1] for b in BAD_INPUTS])
def test_bad_input_exit_125_names_value_leaves_nothing(pm, pm_root, args, named) -> None:  # noqa: ANN001
    r = pm("run", "-d", *args, "busybox", "true")
    assert r.returncode == 125, r.stderr
    lines = r.stderr.decode().strip().splitlines()
    assert named in lines[0], lines
    assert _leftovers(pm_root, set()) == []


def test_unknown_image_and_missing_command(pm, pm_root) -> None:  # noqa: ANN001
    r = pm("run", "-d", "no-such-image", "true")
    assert r.returncode == 125 and b"no-such-image" in r.stderr
    r = pm("run", "-d", "busybox")
    assert r.returncode == 125 and b"no command" in r.stderr
    assert _leftovers(pm_root, set()) == []


def test_duplicate_name_and_taken_address(rt, pm, pm_root) -> None:  # noqa: ANN001
    first = rt.run("busybox", LOOP, name="dup")
    r = pm("run", "-d", "--name", "dup", "busybox", "true")
    assert r.returncode == 125 and b"dup" in r.stderr and b"already in use" in r.stderr
    r = pm("run", "-d", "--ip", first.spec.ip, "busybox", "true")
    assert r.returncode == 125 and first.spec.ip.encode() in r.stderr
    assert [i.spec.name for i in rt.list(all=True)] == ["dup"]
    assert len(list((pm_root / "netns").iterdir())) == 1


def test_concurrent_runs_with_one_name_create_one_container(rt, pm_root) -> None:  # noqa: ANN001
    import sys

    procs = [
        subprocess.Popen([sys.executable, "-m", "migrate", "--root", str(pm_root), "run", "-d", "--name", "race", "busybox", *LOOP], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    codes = []
    for p in procs:
        _, err = p.communicate(timeout=60)
        codes.append(p.returncode)
    assert sorted(codes) == [0, 125, 125, 125]
    assert [i.spec.name for i in rt.list(all=True)] == ["race"]
    assert len(list((pm_root / "netns").iterdir())) == 1


def test_volume_bind_ro_and_rw(rt, pm, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "f").write_text("host-data")
    rt.run(
        "busybox",
        ("sleep", "1000"),
        name="vol",
        volumes=(
            Volume(str(tmp_path / "rw"), "/rw"),
            Volume(str(tmp_path / "ro"), "/ro", readonly=True),
        ),
    )
    r = pm("exec", "vol", "sh", "-c", "echo hi > /rw/out && cat /ro/f && (echo x > /ro/g) 2>&1")
    assert b"host-data" in r.stdout and b"Read-only" in r.stdout, r.stdout
    assert (tmp_path / "rw" / "out").read_text() == "hi\n"
    assert not (tmp_path / "ro" / "g").exists()
