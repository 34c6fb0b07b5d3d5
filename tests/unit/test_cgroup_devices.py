"""The container device policy (runtime/cgroups/devices.py): the rules, the BPF program they
compile to, and how each backend applies them to a new cgroup (tmp_path cgroupfs fakes).

The real kernel's verdicts are in tests/integration/test_container_devices.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from runtime.cgroups import Limits, detect, layout
from runtime.cgroups.devices import (
    DEFAULT_RULES,
    BpfDevicePolicy,
    DeviceRule,
    NoDevicePolicy,
    V1DevicePolicy,
    bpf_decide,
    bpf_program,
    v1_allow_lines,
)
from runtime.errors import CgroupError
from tests.fakes.cgroupfs import FakeCgroupFs, fake_host

ALLOWED = [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2), (136, 0), (136, 4095)]


def make(tmp_path: Path, sample: str):  # noqa: ANN201
    fs, proc, sysr = fake_host(tmp_path, sample)
    return detect(None, layout=layout(proc, sysr), fs=fs), fs


# -- the rules and the program -----------------------------------------------------------------------


@pytest.mark.parametrize(("major", "minor"), ALLOWED)
@pytest.mark.parametrize("access", ["r", "w", "m", "rw", "rwm"])
def test_standard_char_devices_are_allowed(major: int, minor: int, access: str) -> None:
    assert bpf_decide(bpf_program(DEFAULT_RULES), "c", major, minor, access)


@pytest.mark.parametrize(
    ("kind", "major", "minor"),
    [("b", 254, 0), ("b", 8, 0), ("b", 1, 3), ("c", 1, 1), ("c", 1, 2), ("c", 5, 1), ("c", 4, 0), ("c", 10, 200), ("c", 137, 0)],
)
@pytest.mark.parametrize("access", ["r", "w", "m"])
def test_everything_else_is_denied_even_mknod(kind: str, major: int, minor: int, access: str) -> None:
    # b 1:3 is not /dev/null: the type counts; c 1:1 is /dev/mem, c 5:1 the console, c 10:200 tun
    assert not bpf_decide(bpf_program(DEFAULT_RULES), kind, major, minor, access)


def test_a_rule_grants_only_its_access_letters() -> None:
    prog = bpf_program((DeviceRule("c", 10, 229, "rw", "fuse"),))
    assert bpf_decide(prog, "c", 10, 229, "rw")
    assert not bpf_decide(prog, "c", 10, 229, "m")
    assert not bpf_decide(prog, "c", 10, 229, "rwm")


def test_wildcards_and_kind_all() -> None:
    prog = bpf_program((DeviceRule("a", None, None, "m"),))
    assert bpf_decide(prog, "b", 8, 0, "m") and bpf_decide(prog, "c", 4, 1, "m")
    assert not bpf_decide(prog, "b", 8, 0, "r")
    assert not bpf_decide(bpf_program(()), "c", 1, 3, "r"), "no rules: deny all"


def test_v1_lines_spell_wildcards_as_the_kernel_lists_them() -> None:
    assert v1_allow_lines(DEFAULT_RULES)[0] == "c 1:3 rwm"
    assert "c 136:* rwm" in v1_allow_lines(DEFAULT_RULES)
    assert DeviceRule("a", None, None, "m").v1_line() == "a *:* m"


def test_invalid_access_letter_is_refused() -> None:
    with pytest.raises(ValueError, match="rwm"):
        bpf_program((DeviceRule("c", 1, 3, "rx"),))


# -- the backends ---------------------------------------------------------------------------------------


def test_detect_picks_one_mechanism_per_layout(tmp_path: Path) -> None:
    chosen = {s: make(tmp_path / s, s)[0].devices for s in ("v2", "hybrid", "hybrid-joined", "v1")}
    assert isinstance(chosen["v2"], BpfDevicePolicy)
    assert isinstance(chosen["hybrid"], V1DevicePolicy) and chosen["hybrid"].hierarchy == "devices"
    assert isinstance(chosen["hybrid-joined"], BpfDevicePolicy), "no v1 devices: BPF on the unified tree"
    assert isinstance(chosen["v1"], V1DevicePolicy)


@pytest.mark.parametrize("sample", ["hybrid", "v1"])
def test_v1_controller_is_denied_all_then_allowed_the_rules_before_any_process(tmp_path: Path, sample: str) -> None:
    m, fs = make(tmp_path, sample)
    d = m.create("web-1", Limits()).dirs["devices"]
    assert (d / "devices.list").read_text().splitlines() == v1_allow_lines(DEFAULT_RULES)
    ours = [(p.name, v) for p, v in fs.writes if p.parent == d]
    assert ours[0] == ("devices.deny", "a")
    assert [v for n, v in ours if n == "devices.allow"] == v1_allow_lines(DEFAULT_RULES)
    assert not any(p.name == "cgroup.procs" for p, _ in fs.writes), "a process entered before the policy"
    assert fs.root_writes == []


@pytest.mark.parametrize("sample", ["v2", "hybrid-joined"])
def test_bpf_program_is_attached_to_the_new_cgroup2_dir(tmp_path: Path, sample: str) -> None:
    m, fs = make(tmp_path, sample)
    d = m.create("web-1", Limits()).dirs["unified"]
    assert fs.device_programs == {d: [bpf_program(DEFAULT_RULES)]}


def test_v1_policy_that_does_not_take_fails_create_and_leaves_nothing(tmp_path: Path) -> None:
    m, fs = make(tmp_path, "hybrid")
    real_write = fs.write

    def parent_refuses(path: Path, value: str) -> None:
        # a write that leaves the list short (the kernel refuses what a parent does not allow;
        # whatever the cause, the devices.list check must catch it)
        if path.name != "devices.allow" or "136" not in value:
            real_write(path, value)

    fs.write = parent_refuses  # type: ignore[method-assign]
    with pytest.raises(CgroupError, match="devices.list") as err:
        m.create("web-1", Limits())
    assert "parent" in (err.value.hint or "")
    assert not m.exists("web-1")


def test_bpf_attach_failure_fails_create_with_a_hint_and_leaves_nothing(tmp_path: Path) -> None:
    m, fs = make(tmp_path, "v2")

    def refuse(directory: Path, insns: bytes) -> None:
        raise PermissionError(1, "Operation not permitted")

    fs.attach_device_program = refuse  # type: ignore[method-assign]
    with pytest.raises(CgroupError, match="device program") as err:
        m.create("web-1", Limits())
    assert "CAP_SYS_ADMIN" in (err.value.hint or "")
    assert not m.exists("web-1")


def test_no_mechanism_is_logged_for_each_cgroup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fs = FakeCgroupFs()
    with caplog.at_level(logging.WARNING):
        NoDevicePolicy("neither the v1 devices controller nor cgroup2 is mounted").apply(fs, None, "web-1")
    assert "web-1" in caplog.text and "no device policy" in caplog.text


def test_every_node_the_rootfs_makes_is_allowed() -> None:
    """runtime/rootfs.py mknods /dev inside the container after it joined its cgroup."""
    from runtime.rootfs import DEVICES

    prog = bpf_program(DEFAULT_RULES)
    for name, major, minor in DEVICES:
        assert bpf_decide(prog, "c", major, minor, "rwm"), name
        assert f"c {major}:{minor} rwm" in v1_allow_lines(DEFAULT_RULES), name


def test_v1_host_without_the_devices_controller_has_no_mechanism(tmp_path: Path) -> None:
    import dataclasses

    from runtime.cgroups import device_policy_for

    _, proc, sysr = fake_host(tmp_path, "v1")
    lay = layout(proc, sysr)
    without = dataclasses.replace(lay, hierarchies=[h for h in lay.hierarchies if "devices" not in h.controllers])
    hierarchy, policy = device_policy_for(without)
    assert hierarchy is None and isinstance(policy, NoDevicePolicy) and policy.method == "none"
    assert device_policy_for(lay)[0] is not None
