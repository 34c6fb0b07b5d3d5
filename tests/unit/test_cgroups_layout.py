"""Parsing /proc/self/cgroup and mountinfo samples (tests/data/cgroup/) into a CgroupLayout."""

from __future__ import annotations

from pathlib import Path

import pytest

import runtime.cgroups as cgroups
from runtime.cgroups import layout
from runtime.cgroups._layout import parse_mountinfo, parse_proc_cgroup
from runtime.errors import Unsupported
from tests.fakes.cgroupfs import DATA, fake_host


def test_public_names_are_pinned() -> None:
    assert sorted(cgroups.__all__) == sorted(
        [
            "DEFAULT_PROC_ROOT",
            "DEFAULT_SYS_ROOT",
            "UNIFIED",
            "CgroupInfo",
            "CgroupLayout",
            "CgroupManager",
            "CgroupStats",
            "FreezerState",
            "Hierarchy",
            "Limits",
            "detect",
            "device_policy_for",
            "layout",
            "validate_parent",
        ]
    )


def test_parse_proc_cgroup_v1_joined_named_and_v2_lines() -> None:
    entries = parse_proc_cgroup((DATA / "hybrid-joined" / "cgroup").read_text())
    by_id = {e.hierarchy_id: e for e in entries}
    assert by_id[4].controllers == ("cpu", "cpuacct")
    assert by_id[4].path == "/system.slice/ssh.service"
    assert by_id[1].controllers == ("name=systemd",)
    assert by_id[0].controllers == () and by_id[0].path == "/system.slice/ssh.service"


def test_parse_proc_cgroup_keeps_colons_in_path() -> None:
    (e,) = parse_proc_cgroup("0::/a:b/c\n")
    assert e.path == "/a:b/c"


def test_parse_mountinfo_skips_other_fs_and_bind_mounts_and_unescapes() -> None:
    mounts = parse_mountinfo((DATA / "v2" / "mountinfo").read_text())
    assert [(m.fstype, str(m.mount_point)) for m in mounts] == [("cgroup2", "/sys/fs/cgroup")]
    # the bind mount (same device 0:25, with an escaped space) is a second mount of the same one
    only_bind = parse_mountinfo((DATA / "v2" / "mountinfo").read_text().splitlines()[-1])
    assert only_bind[0].mount_point == Path("/mnt/cgroup bind")


def test_parse_mountinfo_v1_super_options_carry_controllers() -> None:
    mounts = parse_mountinfo((DATA / "hybrid-joined" / "mountinfo").read_text())
    joined = next(m for m in mounts if m.mount_point.name == "cpu,cpuacct")
    assert {"cpu", "cpuacct"} <= set(joined.super_options)
    assert all(m.fstype in ("cgroup", "cgroup2") for m in mounts)


def test_layout_v2(tmp_path: Path) -> None:
    _, proc, sysr = fake_host(tmp_path, "v2")
    lay = layout(proc, sysr)
    assert lay.mode == "v2"
    assert lay.freezer == "cgroup2"
    assert [h.name for h in lay.hierarchies] == ["unified"]
    u = lay.unified
    assert u is not None and u.version == 2
    assert u.own_path == "/user.slice/user-0.slice/session-3.scope"
    assert u.own_dir == sysr / "user.slice/user-0.slice/session-3.scope"
    assert {"memory", "cpu", "pids"} <= set(u.controllers)
    assert lay.limits == {"memory": "unified", "cpu": "unified", "pids": "unified"}
    assert lay.limit_dir("memory") == u.own_dir


def test_layout_hybrid_this_machine_sample(tmp_path: Path) -> None:
    _, proc, sysr = fake_host(tmp_path, "hybrid")
    lay = layout(proc, sysr)
    assert lay.mode == "hybrid"
    assert lay.freezer == "cgroup2"
    mem = lay.hierarchy("memory")
    assert mem is not None and mem.own_path == "/process_api/f8cad78dd7d3422fca94abc3e027be21"
    assert mem.own_dir == sysr / "memory/process_api/f8cad78dd7d3422fca94abc3e027be21"
    assert lay.limits == {"memory": "memory", "cpu": "cpu", "pids": "pids"}
    assert lay.unified is not None and lay.unified.own_is_root
    assert lay.v1_with("cpuacct") is not None and lay.v1_with("cpuacct").name == "cpuacct"  # type: ignore[union-attr]
    text = "\n".join(lay.describe())
    assert "cgroup mode: hybrid" in text and "memory limits: memory at" in text
    d = lay.as_dict()
    assert d["mode"] == "hybrid" and d["limits"]["cpu"] == "cpu"
    assert any(h["name"] == "name=systemd" for h in d["hierarchies"])


def test_layout_hybrid_joined_cpu_cpuacct(tmp_path: Path) -> None:
    _, proc, sysr = fake_host(tmp_path, "hybrid-joined")
    lay = layout(proc, sysr)
    assert lay.mode == "hybrid"
    assert lay.limits["cpu"] == "cpu,cpuacct"
    assert lay.v1_with("cpuacct") == lay.hierarchy("cpu,cpuacct")
    assert lay.limit_dir("cpu") == sysr / "cpu,cpuacct/system.slice/ssh.service"
    assert lay.unified is not None and lay.unified.own_path == "/system.slice/ssh.service"


def test_layout_v1_decided_by_mounts_not_by_the_0_line(tmp_path: Path) -> None:
    _, proc, sysr = fake_host(tmp_path, "v1")
    lay = layout(proc, sysr)
    assert lay.mode == "v1"  # /proc/self/cgroup has "0::/" but no cgroup2 is mounted
    assert lay.unified is None
    assert lay.freezer == "v1"
    assert lay.limit_dir("pids") == sysr / "pids/docker/abc"


def test_layout_v2_at_root_uses_only_controllers_enabled_there(tmp_path: Path) -> None:
    fs, proc, sysr = fake_host(tmp_path, "v2", proc_cgroup="0::/\n")
    (sysr / "cgroup.subtree_control").write_text("memory pids")
    lay = layout(proc, sysr)
    assert lay.unified is not None and lay.unified.own_is_root
    assert lay.limits == {"memory": "unified", "pids": "unified"}
    assert any("echo +cpu >" in n for n in lay.notes)


def test_layout_no_cgroups_mounted(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "cgroup").write_text("0::/\n")
    (tmp_path / "self" / "mountinfo").write_text("22 1 0:21 / /proc rw - proc proc rw\n")
    with pytest.raises(Unsupported, match="no cgroup or cgroup2 hierarchy is mounted"):
        layout(tmp_path, tmp_path / "sys")


def test_layout_unreadable_proc(tmp_path: Path) -> None:
    with pytest.raises(Unsupported, match="cannot read"):
        layout(tmp_path / "nope")
