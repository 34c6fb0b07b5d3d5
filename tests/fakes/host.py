"""Fakes for runtime.host / runtime.criu_features: a /proc-like tree, a table-driven CRIU, and a
ready-made ``HostReport`` builder (for tests of anything that reads host facts)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from runtime import criu_features, host
from runtime.criu_features import CommandResult

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: Test CPU 9000
flags\t\t: sse2 fpu avx2 sse2 aes

processor\t: 1
model name\t: Other CPU
flags\t\t: fpu
"""

STATUS_NO_RESOURCE = "Name:\tpython\nCapEff:\t000001fffeffffff\n"  # bit 24 clear
STATUS_RESOURCE = "Name:\tpython\nCapEff:\t000001ffffffffff\n"


def make_proc(
    root: Path,
    *,
    release: str = "6.1.0-test",
    namespaces: Sequence[str] = ("cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "user", "uts"),
    filesystems: str = "nodev\tsysfs\nnodev\tproc\n\text4\nnodev\toverlay\n",
    pipe_max: str = "4194304\n",
    status: str = STATUS_NO_RESOURCE,
    cgroup_v2: bool = True,
) -> tuple[Path, Path]:
    """A fake /proc (and cgroup mount tree) with what host.probe reads. Returns (proc, sys)."""
    proc = root / "proc"
    sysfs = root / "sys"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "sys/fs").mkdir(parents=True)
    (proc / "self/ns").mkdir(parents=True)
    (proc / "sys/kernel/osrelease").write_text(release + "\n")
    (proc / "cpuinfo").write_text(CPUINFO)
    for ns in namespaces:
        (proc / "self/ns" / ns).write_text("")
    (proc / "filesystems").write_text(filesystems)
    (proc / "sys/fs/pipe-max-size").write_text(pipe_max)
    (proc / "self/status").write_text(status)
    if cgroup_v2:
        (proc / "self/mountinfo").write_text(
            "30 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        )
        (proc / "self/cgroup").write_text("0::/svc\n")
        own = sysfs / "svc"
        own.mkdir(parents=True)
        (own / "cgroup.controllers").write_text("cpu memory pids\n")
        (own / "cgroup.freeze").write_text("0\n")
    else:
        (proc / "self/mountinfo").write_text("")
        (proc / "self/cgroup").write_text("0::/\n")
    return proc, sysfs


class FakeCriu:
    """Answers criu commands from a table keyed by the arguments after the binary."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, commands: Sequence[Sequence[str]]) -> list[CommandResult]:
        out = []
        for argv in commands:
            key = tuple(argv[1:])
            self.calls.append(tuple(argv))
            rc, text = self.answers.get(key, (1, f"Error (criu/cr-check.c:1866): Unknown feature {key[-1]}"))
            out.append(CommandResult(tuple(argv), rc, text))
        return out


def good_criu(**overrides: tuple[int, str]) -> FakeCriu:
    answers: dict[tuple[str, ...], tuple[int, str]] = {
        ("--version",): (0, "Version: 4.1.1\n"),
        ("check",): (0, "Warn  (criu/kerndat.c:1285): Can't keep kdat cache on non-tempfs\nLooks good.\n"),
    }
    for name, criu_name in criu_features.FEATURES.items():
        answers[("check", "--feature", criu_name)] = (0, f"{criu_name} is supported\n")
    answers[("check", "--feature", "mem_dirty_track")] = (
        1,
        "Warn  (criu/cr-check.c:824): Dirty tracking is OFF. Memory snapshot will not work.\n",
    )
    for key, value in overrides.items():
        answers[("check", "--feature", key)] = value
    return FakeCriu(answers)


def do_probe(proc: Path, sysfs: Path, fake: FakeCriu, **kw) -> host.HostReport:
    kw.setdefault("pycriu_probe", lambda: host.PycriuFacts(True, "4.1.1"))
    kw.setdefault("which", lambda name: f"/usr/sbin/{name}")
    return host.probe(proc_root=proc, sys_root=sysfs, criu_binary="/opt/criu", run=fake, **kw)


def fake_host_report(tmp_path: Path, *, fake_criu: FakeCriu | None = None, **overrides: Any) -> host.HostReport:
    """A probe of a healthy fake host (v2 cgroups, CRIU 4.1.1 without dirty tracking), with
    ``overrides`` replacing HostReport fields."""
    from runtime.criu_kdat import KdatStatus

    proc, sysfs = make_proc(tmp_path / "host")
    rep = do_probe(proc, sysfs, fake_criu or good_criu())
    overrides.setdefault("criu_kdat", KdatStatus(Path("/run/pymigrate-criu/criu.kdat"), True, True, "on tmpfs"))
    return dataclasses.replace(rep, **overrides)
