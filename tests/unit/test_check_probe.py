"""runtime.host and runtime.criu_features against a /proc-like tmp_path tree and a fake CRIU."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from runtime import criu_features, host
from runtime.criu_features import probe_criu
from tests.fakes.host import STATUS_RESOURCE, do_probe, good_criu, make_proc

# --- readers -----------------------------------------------------------------------------------


def test_cpu_flags_digest_is_sorted_unique_first_processor(tmp_path: Path) -> None:
    proc, _ = make_proc(tmp_path)
    model, digest, count = host.read_cpu(proc)
    assert model == "Test CPU 9000"
    assert count == 4
    assert digest == hashlib.sha256(b"aes avx2 fpu sse2").hexdigest()


def test_cpu_flags_missing(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: X\n")
    assert host.read_cpu(tmp_path) == ("X", None, 0)


def test_namespaces_skip_for_children_and_unknown(tmp_path: Path) -> None:
    proc, _ = make_proc(tmp_path, namespaces=("pid", "pid_for_children", "net", "bogus"))
    assert host.read_namespaces(proc) == ("net", "pid")


def test_overlayfs_needs_exact_name(tmp_path: Path) -> None:
    proc, _ = make_proc(tmp_path, filesystems="nodev\toverlayfoo\n\text4\n")
    assert host.read_overlayfs(proc) is False
    (proc / "filesystems").write_text("nodev\toverlay\n")
    assert host.read_overlayfs(proc) is True


def test_cap_sys_resource_bit(tmp_path: Path) -> None:
    proc, _ = make_proc(tmp_path)
    assert host.read_cap_sys_resource(proc) is False
    (proc / "self/status").write_text(STATUS_RESOURCE)
    assert host.read_cap_sys_resource(proc) is True


def test_pipe_max_size_unreadable_is_none(tmp_path: Path) -> None:
    assert host.read_pipe_max_size(tmp_path) is None


# --- criu ------------------------------------------------------------------------------------


def test_probe_criu_reads_version_check_and_features() -> None:
    fake = good_criu()
    rep = probe_criu("/opt/criu", run=fake)
    assert rep.version == "4.1.1" and rep.version_ok and rep.check_ok and rep.usable
    assert rep.check_detail == ("Warn  (criu/kerndat.c:1285): Can't keep kdat cache on non-tempfs",)
    assert rep.supports("lazy_pages") and not rep.supports("dirty_tracking")
    f = rep.feature("dirty_tracking")
    assert f is not None and f.supported is False
    assert f.detail == "Dirty tracking is OFF. Memory snapshot will not work."
    assert ("/opt/criu", "check", "--feature", "uffd-noncoop") in fake.calls


def test_probe_criu_unknown_feature_is_none() -> None:
    fake = good_criu()
    rep = probe_criu("/opt/criu", run=fake, features={"shiny": "shiny_new"})
    f = rep.feature("shiny")
    assert f is not None and f.supported is None
    assert not rep.supports("shiny")


def test_probe_criu_old_version_is_not_usable() -> None:
    fake = good_criu()
    fake.answers[("--version",)] = (0, "Version: 3.17\n")
    rep = probe_criu("/opt/criu", run=fake)
    assert rep.version == "3.17" and not rep.version_ok and not rep.usable
    assert not rep.supports("lazy_pages")  # a feature of an unusable CRIU does not count


def test_probe_criu_failing_check_keeps_error_lines() -> None:
    fake = good_criu()
    fake.answers[("check",)] = (1, "Error (criu/vdso.c:1): vdso: Unexpected rt vDSO area bounds\n")
    rep = probe_criu("/opt/criu", run=fake)
    assert not rep.check_ok and not rep.usable
    assert rep.check_detail == ("Error (criu/vdso.c:1): vdso: Unexpected rt vDSO area bounds",)


def test_probe_criu_binary_that_does_not_run() -> None:
    fake = good_criu()
    fake.answers[("--version",)] = (-1, "cannot run /opt/criu: Exec format error")
    rep = probe_criu("/opt/criu", run=fake)
    assert not rep.installed and rep.error and "Exec format error" in rep.error


def test_probe_criu_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(criu_features, "find_criu", lambda: None)
    rep = probe_criu(run=good_criu())
    assert rep.path is None and not rep.usable and rep.error == "no criu binary found"


def test_run_many_real_commands(tmp_path: Path) -> None:
    res = criu_features.run_many([["sh", "-c", "echo hi; exit 3"], [str(tmp_path / "nope")]])
    assert res[0].returncode == 3 and res[0].output == "hi\n"
    assert res[1].returncode == -1 and "cannot run" in res[1].output


def test_find_criu_honours_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMIGRATE_CRIU", "/custom/criu")
    assert criu_features.find_criu() == "/custom/criu"


# --- whole probe -----------------------------------------------------------------------------


def test_probe_collects_everything(tmp_path: Path) -> None:
    proc, sysfs = make_proc(tmp_path)
    rep = do_probe(proc, sysfs, good_criu())
    assert rep.kernel_release == "6.1.0-test"
    assert rep.namespaces == ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
    assert rep.overlayfs and rep.pipe_max_size_bytes == 4194304 and rep.pipe_size_ok
    assert rep.cgroup is not None and rep.cgroup.mode == "v2" and rep.cgroup.freezer == "cgroup2"
    assert rep.cgroup.freeze_dir == str(sysfs / "svc")
    feats = rep.features()
    assert feats["checkpoint"] and feats["lazy_pages"] and not feats["dirty_tracking"]
    assert feats["network_lock_nftables"] and feats["cgroup_freeze"]


def test_lazy_pages_need_big_pipes_or_cap_sys_resource(tmp_path: Path) -> None:
    proc, sysfs = make_proc(tmp_path, pipe_max="1048576\n")
    assert not do_probe(proc, sysfs, good_criu()).features()["lazy_pages"]
    (proc / "self/status").write_text(STATUS_RESOURCE)
    assert do_probe(proc, sysfs, good_criu()).features()["lazy_pages"]


def test_nftables_lock_needs_nft_binary(tmp_path: Path) -> None:
    proc, sysfs = make_proc(tmp_path)
    rep = do_probe(proc, sysfs, good_criu(), which=lambda name: None)
    assert not rep.features()["network_lock_nftables"]


def test_no_cgroups_is_reported_not_raised(tmp_path: Path) -> None:
    proc, sysfs = make_proc(tmp_path, cgroup_v2=False)
    rep = do_probe(proc, sysfs, good_criu())
    assert rep.cgroup is None and rep.cgroup_error and "no cgroup" in rep.cgroup_error
    assert not rep.cgroup_freeze


def test_host_report_is_cached_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    proc, sysfs = make_proc(tmp_path)
    calls = []
    canned = do_probe(proc, sysfs, good_criu())

    def fake_probe() -> host.HostReport:
        calls.append(1)
        return canned

    monkeypatch.setattr(host, "probe", fake_probe)
    monkeypatch.setattr(host, "_cached", None)
    first = host.host_report()
    assert host.host_report() is first and host.supports_lazy_pages() and not host.supports_dirty_tracking()
    assert host.supports_namespace("net") and host.supports_overlayfs() and host.supports_cgroup_freeze()
    assert len(calls) == 1
    host.host_report(refresh=True)
    assert len(calls) == 2
