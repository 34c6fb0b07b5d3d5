"""migrate.check (the verdict) and ``pymigrate check`` on fake host reports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from migrate.check import evaluate, render_text
from runtime import host
from runtime.criu_features import CriuReport
from tests.fakes.host import fake_host_report, good_criu


def item(result, name: str):
    return next(i for i in result.items if i.name == name)


def test_healthy_host_is_ready_with_dirty_tracking_warning(tmp_path: Path) -> None:
    result = evaluate(fake_host_report(tmp_path, cap_sys_resource=True))
    assert result.ok
    assert [i.name for i in result.warnings] == ["dirty tracking (pre-copy)"]
    assert item(result, "dirty tracking (pre-copy)").hint
    assert all(i.hint is None for i in result.items if i.status == "ok")
    text = render_text(result)
    assert text.splitlines()[-1].startswith("ready:")
    assert "warning  dirty tracking (pre-copy)" in text


def test_missing_criu_names_setup(tmp_path: Path) -> None:
    criu = CriuReport(None, None, False, (), (), error="no criu binary found")
    result = evaluate(fake_host_report(tmp_path, criu=criu))
    assert not result.ok
    missing = item(result, "criu")
    assert missing.status == "missing" and "scripts/setup.sh" in (missing.hint or "")
    # optional CRIU features are unknown, not claimed
    assert item(result, "lazy pages (post-copy)").status == "warning"
    assert "not ready, missing: criu" in render_text(result)


def test_old_criu_is_missing(tmp_path: Path) -> None:
    fake = good_criu()
    fake.answers[("--version",)] = (0, "Version: 3.17\n")
    result = evaluate(fake_host_report(tmp_path, fake_criu=fake))
    assert item(result, "criu").status == "missing"
    assert "3.17" in item(result, "criu").detail


def test_failing_criu_check_is_missing_with_its_error(tmp_path: Path) -> None:
    fake = good_criu()
    fake.answers[("check",)] = (1, "Error (criu/vdso.c:1): vdso: Unexpected rt vDSO area bounds\n")
    result = evaluate(fake_host_report(tmp_path, fake_criu=fake))
    assert "Unexpected rt vDSO area bounds" in item(result, "criu").detail
    assert not result.ok


def test_each_required_piece_makes_host_not_ready(tmp_path: Path) -> None:
    good = fake_host_report(tmp_path)
    cases = {
        "pycriu": dataclasses.replace(good, pycriu=host.PycriuFacts(False, None, "ModuleNotFoundError: pycriu")),
        "overlayfs": dataclasses.replace(good, overlayfs=False),
        "namespaces": dataclasses.replace(good, namespaces=("ipc", "mnt", "net", "pid", "uts")),
        "cgroup freezer": dataclasses.replace(
            good, cgroup=dataclasses.replace(good.cgroup, freezer="none", freeze_dir=None)
        ),
    }
    for name, rep in cases.items():
        result = evaluate(rep)
        assert not result.ok, name
        assert [i.name for i in result.missing] == [name]
        assert item(result, name).hint, name
    assert "CONFIG_CGROUP_NS" in (item(evaluate(cases["namespaces"]), "namespaces").hint or "")


def test_small_pipes_are_a_warning_not_a_failure(tmp_path: Path) -> None:
    rep = dataclasses.replace(fake_host_report(tmp_path), pipe_max_size_bytes=1048576)
    result = evaluate(rep)
    assert result.ok
    pipe = item(result, "pipe size for post-copy")
    assert pipe.status == "warning" and "fs.pipe-max-size=4194304" in (pipe.hint or "")
    lazy = item(result, "lazy pages (post-copy)")
    assert lazy.status == "warning" and "pipe-max-size" in lazy.detail


def test_json_shape(tmp_path: Path) -> None:
    data = evaluate(fake_host_report(tmp_path)).as_dict()
    json.dumps(data)  # serialisable as is
    assert data["ok"] is True and data["missing"] == []
    assert data["host"]["kernel_release"] == "6.1.0-test"
    assert data["host"]["features"]["dirty_tracking"] is False
    assert data["host"]["criu"]["features"]["lazy_pages"]["criu_name"] == "uffd-noncoop"


@pytest.mark.parametrize("broken", [False, True])
def test_cli_exit_code_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, broken: bool) -> None:
    from migrate.cli import main

    rep = fake_host_report(tmp_path)
    if broken:
        rep = dataclasses.replace(rep, overlayfs=False)
    monkeypatch.setattr(host, "host_report", lambda refresh=False: rep)
    assert main(["check", "--json"]) == (1 if broken else 0)
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is (not broken)
    assert main(["check"]) == (1 if broken else 0)
    out = capsys.readouterr().out
    assert ("MISSING  overlayfs" in out) is broken


def test_kdat_cache_off_tmpfs_is_a_warning_with_the_fix(tmp_path: Path) -> None:
    from runtime.criu_kdat import KdatStatus

    off = KdatStatus(Path("/run/pymigrate-criu/criu.kdat"), False, False, "/run/pymigrate-criu is not on a tmpfs")
    report = fake_host_report(tmp_path, criu_kdat=off)
    result = evaluate(report)
    assert result.ok
    cache = item(result, "criu kernel-feature cache")
    assert cache.status == "warning" and "not on a tmpfs" in cache.detail
    assert "setup.sh" in (cache.hint or "") and "daemon" in (cache.hint or "")
    assert json.loads(json.dumps(report.as_dict()))["criu_kdat"]["on_tmpfs"] is False


# -- resource limits: CAP_SYS_RESOURCE and the patched CRIU's /proc/PID/limits fallback ----------------

UNPATCHED = {"rlimit_proc_limits": (1, "Error (criu/cr-check.c:1866): Unknown feature rlimit_proc_limits\n")}


def test_without_cap_and_without_the_patch_other_uids_are_missing(tmp_path: Path) -> None:
    report = fake_host_report(tmp_path, fake_criu=good_criu(**UNPATCHED))
    assert not report.cap_sys_resource
    result = evaluate(report)
    assert not result.ok
    assert [i.name for i in result.missing] == ["dump under other uids"]
    other = item(result, "dump under other uids")
    assert "Can't get rlimit 0" in other.detail
    assert "4.1.1-rlimit-proc-limits.patch" in (other.hint or "") and "CAP_SYS_RESOURCE" in (other.hint or "")
    cap = item(result, "CAP_SYS_RESOURCE")
    assert cap.status == "warning" and "cannot read other users' rlimits" in cap.detail and "silently" in cap.detail
    assert "not ready, missing: dump under other uids" in render_text(result)
    assert report.rlimits_dict() == {
        "cap_sys_resource": False,
        "criu_proc_limits_fallback": False,
        "other_uids_read_with": None,
        "dump_other_uids": False,
        "restore_can_raise_hard_limits": False,
    }
    assert report.features()["dump_other_uids"] is False


def test_patched_criu_without_cap_is_ready_and_says_what_the_cap_would_add(tmp_path: Path) -> None:
    report = fake_host_report(tmp_path)  # the fake CRIU answers every feature, ours included
    result = evaluate(report)
    assert result.ok
    other = item(result, "dump under other uids")
    assert other.status == "ok" and other.detail == "criu reads other users' rlimits from /proc/PID/limits (patched)"
    cap = item(result, "CAP_SYS_RESOURCE")
    assert cap.status == "warning" and not cap.required
    assert "hard limit" in cap.detail and "fails, naming it" in cap.detail and "fs.pipe-max-size" in cap.detail
    assert cap.hint and "daemon" in cap.hint
    data = json.loads(json.dumps(result.as_dict()))
    assert data["host"]["rlimits"]["other_uids_read_with"] == "/proc/PID/limits"
    assert data["host"]["rlimits"]["dump_other_uids"] is True
    assert data["host"]["features"]["dump_other_uids"] is True
    assert data["host"]["criu"]["features"]["rlimit_proc_limits"]["supported"] is True
    assert "CAP_SYS_RESOURCE" in data["warnings"]


def test_cap_sys_resource_needs_no_patch(tmp_path: Path) -> None:
    report = fake_host_report(tmp_path, fake_criu=good_criu(**UNPATCHED), cap_sys_resource=True)
    result = evaluate(report)
    assert result.ok
    assert item(result, "dump under other uids").status == "ok"
    assert "prlimit" in item(result, "dump under other uids").detail
    assert item(result, "CAP_SYS_RESOURCE").status == "ok"
    assert report.rlimits_dict()["other_uids_read_with"] == "prlimit"
    assert report.rlimits_dict()["restore_can_raise_hard_limits"] is True


def test_fallback_reported_unsupported_counts_as_absent(tmp_path: Path) -> None:
    fake = good_criu(rlimit_proc_limits=(1, "Warn  (criu/cr-check.c:1): /proc/self/limits disagrees with prlimit for rlimit 3\n"))
    report = fake_host_report(tmp_path, fake_criu=fake)
    assert report.rlimit_fallback is False
    assert item(evaluate(report), "dump under other uids").status == "missing"


def test_unusable_criu_is_not_also_reported_as_missing_rlimits(tmp_path: Path) -> None:
    criu = CriuReport(None, None, False, (), (), error="no criu binary found")
    result = evaluate(fake_host_report(tmp_path, criu=criu))
    assert [i.name for i in result.missing] == ["criu"]
    other = item(result, "dump under other uids")
    assert other.status == "warning" and other.detail.startswith("unknown")
    assert fake_host_report(tmp_path / "2", criu=criu).rlimits_dict()["criu_proc_limits_fallback"] is None


# -- device policy ---------------------------------------------------------------------------------------


def test_device_policy_is_reported_from_the_cgroup_layout(tmp_path: Path) -> None:
    report = fake_host_report(tmp_path)  # pure cgroup2 fake host: a BPF device program
    assert report.cgroup is not None and report.cgroup.device_policy == "bpf"
    policy = item(evaluate(report), "device policy")
    assert policy.status == "ok" and "BPF" in policy.detail
    assert json.loads(json.dumps(report.as_dict()))["cgroup"]["device_policy"] == "bpf"


def test_no_device_mechanism_is_a_warning_with_the_fix(tmp_path: Path) -> None:
    good = fake_host_report(tmp_path)
    report = dataclasses.replace(good, cgroup=dataclasses.replace(good.cgroup, device_policy="none"))
    result = evaluate(report)
    policy = item(result, "device policy")
    assert policy.status == "warning" and not policy.required and "any device node" in policy.detail
    assert "cgroup2" in (policy.hint or "")
    assert result.ok
