"""runtime.seccomp: profile parsing, which rules apply (caps, arches, kernel), compilation with
libseccomp, and the compiled filter enforced by this kernel in a forked child (no root needed:
no_new_privs allows an unprivileged process to load a filter on itself)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
from pathlib import Path

import pytest

from runtime import seccomp
from runtime.errors import InvalidArgument, InvalidSpec, Unsupported
from runtime.syscalls import LINUX, PR_SET_NO_NEW_PRIVS

AMD64 = seccomp.Machine(go_arch="amd64", scmp_arch="SCMP_ARCH_X86_64", kernel=(6, 18), caps=frozenset({"CAP_CHOWN", "CAP_SYS_CHROOT"}))

PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 38,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
    "syscalls": [
        {"names": ["read", "write", "no_such_syscall_name"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
        {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "excludes": {"caps": ["CAP_SYS_CHROOT"]}},
        {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["cacheflush"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}},
        {"names": ["new_call"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "7.1"}},
        {"names": ["old_call"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.4"}},
        {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"},  # no errnoRet: the profile's default errno
        {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},  # the default action itself
        {"name": "uname", "action": "SCMP_ACT_LOG"},  # the older single-name form
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
    ],
}


def names_of(plan: seccomp.Plan) -> dict[str, int]:
    return {r.name: r.action for r in plan.rules}


def test_resolve_applies_includes_and_excludes_by_caps_arches_and_kernel() -> None:
    plan = seccomp.resolve(seccomp.parse_profile(json.dumps(PROFILE)), AMD64)
    got = names_of(plan)
    assert plan.default_action == seccomp.SCMP_ACT_ERRNO | 38
    assert plan.arches == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")
    assert got["chroot"] == seccomp.SCMP_ACT_ALLOW  # CAP_SYS_CHROOT held: the include, not the exclude
    assert "bpf" not in got  # needs CAP_SYS_ADMIN
    assert got["arch_prctl"] == seccomp.SCMP_ACT_ALLOW and "cacheflush" not in got
    assert "new_call" not in got and "old_call" not in got  # kernel 6.18: below 7.1, at least 5.4
    # same as the default action (a bare ERRNO takes defaultErrnoRet): left out, libseccomp refuses them
    assert "ptrace" not in got and "getpid" not in got
    assert got["uname"] == seccomp.SCMP_ACT_LOG
    (personality,) = [r for r in plan.rules if r.name == "personality"]
    assert personality.args == ((0, seccomp.COMPARE_OPS["SCMP_CMP_EQ"], 8, 0),)


def test_resolve_without_a_capability_takes_the_excluding_rule() -> None:
    machine = seccomp.Machine("arm64", "SCMP_ARCH_AARCH64", (5, 10), frozenset({"CAP_SYS_ADMIN"}))
    got = names_of(seccomp.resolve(seccomp.parse_profile(json.dumps(PROFILE)), machine))
    assert got["chroot"] == seccomp.SCMP_ACT_ERRNO | errno.EPERM
    assert got["bpf"] == seccomp.SCMP_ACT_ALLOW and got["cacheflush"] == seccomp.SCMP_ACT_ALLOW and "arch_prctl" not in got
    assert "old_call" not in got  # 5.10 >= 5.4: excluded


def test_bare_errno_without_any_errno_ret_is_eperm() -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"}]}
    got = names_of(seccomp.resolve(seccomp.parse_profile(json.dumps(profile)), AMD64))
    assert got == {"ptrace": seccomp.SCMP_ACT_ERRNO | errno.EPERM}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"defaultAction": "SCMP_ACT_NOPE"}, "unknown or unsupported action"),
        ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}, "argument index 9"),
        ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ISH"}]}]}, "unknown comparison"),
        ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}, "unsigned 64-bit"),
        ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}, "errnoRet 70000"),
        ({"syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}, "expected names"),
        ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]}, "not a version"),
        ({"syscalls": "read"}, "syscalls must be a list"),
        ({"flags": ["SECCOMP_FILTER_FLAG_LOG"]}, "filter flags"),
        ({"listenerPath": "/run/agent.sock"}, "listener"),
    ],
)
def test_parse_refuses_malformed_profiles(change: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        seccomp.parse_profile(json.dumps({**PROFILE, **change}))


def test_parse_refuses_non_json_and_oversized() -> None:
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        seccomp.parse_profile("{")
    with pytest.raises(InvalidArgument, match="larger than"):
        seccomp.parse_profile(" " * (seccomp.MAX_PROFILE_BYTES + 1))


def test_validate_choice() -> None:
    seccomp.validate_choice("default", None)
    seccomp.validate_choice("unconfined", None)
    seccomp.validate_choice("custom", json.dumps(PROFILE))
    with pytest.raises(InvalidSpec, match="expected one of default, unconfined, custom"):
        seccomp.validate_choice("off", None)
    with pytest.raises(InvalidSpec) as err:
        seccomp.validate_choice("custom", None)
    assert err.value.field == "seccomp_profile"
    with pytest.raises(InvalidSpec, match="carries a profile"):
        seccomp.validate_choice("unconfined", json.dumps(PROFILE))
    with pytest.raises(InvalidSpec, match="not valid JSON"):
        seccomp.validate_choice("custom", "{")


def test_parse_option_reads_the_file_content(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(PROFILE))
    assert seccomp.parse_option("unconfined") == ("unconfined", None)
    assert seccomp.parse_option(str(path)) == ("custom", json.dumps(PROFILE))
    with pytest.raises(InvalidArgument, match="cannot read seccomp profile"):
        seccomp.parse_option(str(tmp_path / "missing.json"))


def test_no_default_profile_is_an_error_not_unconfined(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(seccomp.PROFILE_ENV, str(tmp_path / "none.json"))
    with pytest.raises(Unsupported, match="no profile file at") as err:
        seccomp.profile_text("default", None)
    assert "unconfined" in (err.value.hint or "")
    assert seccomp.profile_text("unconfined", None) is None


# -- libseccomp and the kernel ---------------------------------------------------------------------


def _libseccomp_or_skip() -> None:
    try:
        seccomp.library_version()
    except Unsupported as exc:
        pytest.skip(str(exc))


def compile_for(profile: dict, machine: seccomp.Machine | None = None) -> bytes:
    machine = machine or seccomp.this_machine(["CAP_CHOWN"])
    return seccomp.compile_plan(seccomp.resolve(seccomp.parse_profile(json.dumps(profile)), machine))


def run_filtered(program: bytes, calls: list[tuple[int, tuple[int, ...]]]) -> list[int]:
    """Fork; in the child load ``program`` and make each raw syscall; the errno of each (0: ok)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            LINUX.prctl(PR_SET_NO_NEW_PRIVS, 1)
            seccomp.load(LINUX, program)
            libc = ctypes.CDLL(None, use_errno=True)
            out = []
            for nr, args in calls:
                rc = libc.syscall(nr, *[ctypes.c_ulong(a) for a in args])
                out.append(0 if rc >= 0 else ctypes.get_errno())
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


NR_GETPPID, NR_PERSONALITY, NR_UNAME_BOGUS = 110, 135, 0  # x86_64 numbers


def _x86_64_or_skip() -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("syscall numbers below are x86_64's")


def test_compiled_filter_is_enforced_by_the_kernel() -> None:
    _libseccomp_or_skip()
    _x86_64_or_skip()
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getppid", "not_a_syscall_at_all"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
            # personality(0x0040000) refused, personality(0xffffffff) (a query) allowed
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV,
             "args": [{"index": 0, "value": 0x0040000, "op": "SCMP_CMP_EQ"}]},
        ],
    }
    program = compile_for(profile)
    assert program and len(program) % seccomp.SOCK_FILTER_BYTES == 0
    got = run_filtered(program, [(NR_GETPPID, ()), (NR_PERSONALITY, (0xFFFFFFFF,)), (NR_PERSONALITY, (0x0040000,))])
    assert got == [errno.EACCES, 0, errno.EXDEV]


def test_masked_and_ordering_comparisons() -> None:
    _libseccomp_or_skip()
    _x86_64_or_skip()
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV,
             "args": [{"index": 0, "value": 0xFF00, "valueTwo": 0x0800, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV,
             "args": [{"index": 0, "value": 5, "op": "SCMP_CMP_GT"}]},
        ],
    }
    got = run_filtered(compile_for(profile), [(NR_PERSONALITY, (0x0842,)), (NR_PERSONALITY, (0xFFFFFFFF,)),
                                              (NR_GETPPID, (9,)), (NR_GETPPID, (5,))])
    assert got == [errno.EXDEV, 0, errno.EXDEV, 0]


def test_default_profile_compiles_and_denies_userfaultfd() -> None:
    _libseccomp_or_skip()
    _x86_64_or_skip()
    if seccomp.default_profile_path() is None:
        pytest.skip("no default seccomp profile on this host")
    from runtime.capabilities import names

    program = seccomp.filter_for("default", None, names())
    assert program is not None and len(program) // seccomp.SOCK_FILTER_BYTES <= seccomp.BPF_MAXINSNS
    nr_userfaultfd, nr_add_key = 323, 248
    got = run_filtered(program, [(NR_GETPPID, ()), (nr_userfaultfd, (1,)), (nr_add_key, (0, 0, 0, 0, 0))])
    assert got == [0, errno.EPERM, errno.ENOSYS]  # allowed; explicit EPERM rule; the default action


def test_compiled_filters_are_cached_per_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _libseccomp_or_skip()
    text = json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]})
    first = seccomp.filter_for("custom", text, ["CAP_CHOWN"], tmp_path)
    assert len(list(tmp_path.glob("*.bpf"))) == 1

    def no_compile(plan: seccomp.Plan) -> bytes:
        raise AssertionError("compiled again")

    monkeypatch.setattr(seccomp, "compile_plan", no_compile)
    assert seccomp.filter_for("custom", text, ["CAP_CHOWN"], tmp_path) == first
    with pytest.raises(AssertionError, match="compiled again"):  # other caps: another filter
        seccomp.filter_for("custom", text, ["CAP_CHOWN", "CAP_SYS_ADMIN"], tmp_path)
    assert seccomp.filter_for("unconfined", None, ["CAP_CHOWN"], tmp_path) is None


def test_security_options() -> None:
    assert seccomp.parse_security_options([]) is None
    assert seccomp.parse_security_options(["seccomp=default", "seccomp=unconfined"]) == ("unconfined", None)
    with pytest.raises(InvalidArgument, match="unsupported security option"):
        seccomp.parse_security_options(["apparmor=unconfined"])


# CRIU images (which filters the dumped processes carry): tests/unit/test_seccomp_images.py
