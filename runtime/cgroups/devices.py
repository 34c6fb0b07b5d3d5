"""Which device nodes a container may create and open: runc's default list, enforced by the kernel.

A container runs as root with CAP_MKNOD, so without a policy it can ``mknod`` the host's disk and
read or write it (its cgroup would inherit the host's ``a *:* rwm``). Every container cgroup
gets, before any process enters it, a policy that allows only the standard character devices
(null, zero, full, random, urandom, tty, ptmx and the pts slaves) and denies every other device,
for mknod (``m``) as for open (``r``, ``w``). Unlike runc we do not allow ``mknod`` of any other
device: a container never needs to create one, and a node it cannot create it cannot misuse.

Two kernel mechanisms; ``detect()`` picks one per host (both are checked by the kernel where both
exist, security/device_cgroup.c ``devcgroup_check_permission``):

- cgroup v1 ``devices`` controller (Documentation/admin-guide/cgroup-v1/devices.rst): writing
  ``a`` to ``devices.deny`` empties the allow list (only while the cgroup has no children and
  no tasks), then each rule goes to ``devices.allow``; a child may allow only what its parent
  allows. ``devices.list`` shows the result.
- cgroup v2 has no devices controller: a ``BPF_PROG_TYPE_CGROUP_DEVICE`` program attached to the
  cgroup (``BPF_CGROUP_DEVICE``) decides each access; it returns 1 to allow, 0 to deny. Its
  context is ``struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor;}`` where
  ``access_type`` is ``(BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_*`` (include/uapi/linux/bpf.h).
  Attached with ``BPF_F_ALLOW_MULTI``, an ancestor's program (systemd's) still applies: the
  kernel allows an access only when every program in the path allows it. The attachment lives as
  long as the cgroup; nothing is pinned.

The policy is applied when the cgroup is created, so a restored or migrated container (whose
cgroup is created anew on the target) gets the same policy as a started one.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from runtime.cgroups._files import CgroupFs, write
from runtime.errors import CgroupError

log = logging.getLogger(__name__)

DeviceKind = Literal["c", "b", "a"]  # char, block, all


@dataclass(frozen=True)
class DeviceRule:
    """One allowed device (or range): ``c 136:* rw`` is every pts slave, read and write.

    ``major``/``minor`` None mean any (``*``); ``access`` is a subset of ``rwm``.
    """

    kind: DeviceKind
    major: int | None
    minor: int | None
    access: str = "rwm"
    name: str = ""  # what it is, for logs and docs

    def v1_line(self) -> str:
        """The line for devices.allow / devices.deny (``c 1:3 rwm``)."""
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.kind} {major}:{minor} {self.access}"


# runc's default allow list (libcontainer/specconv AllowedDevices) without its blanket
# "c *:* m" / "b *:* m" and without tun: see the module docstring.
DEFAULT_RULES: tuple[DeviceRule, ...] = (
    DeviceRule("c", 1, 3, "rwm", "null"),
    DeviceRule("c", 1, 5, "rwm", "zero"),
    DeviceRule("c", 1, 7, "rwm", "full"),
    DeviceRule("c", 1, 8, "rwm", "random"),
    DeviceRule("c", 1, 9, "rwm", "urandom"),
    DeviceRule("c", 5, 0, "rwm", "tty"),
    DeviceRule("c", 5, 2, "rwm", "ptmx"),
    DeviceRule("c", 136, None, "rwm", "pts"),
)


def v1_allow_lines(rules: tuple[DeviceRule, ...]) -> list[str]:
    """The devices.allow lines (also what ``devices.list`` shows once they are the only ones)."""
    return [r.v1_line() for r in rules]


# --- the BPF program --------------------------------------------------------------------------

# include/uapi/linux/bpf.h
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
_ACCESS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
_KIND = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}

# opcodes (include/uapi/linux/bpf_common.h, bpf.h)
_LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
_ALU64_AND_K = 0x57  # dst &= imm
_ALU64_RSH_K = 0x77  # dst >>= imm
_ALU64_MOV_X = 0xBF  # dst = src
_ALU64_MOV_K = 0xB7  # dst = imm
_JMP_JNE_K = 0x55  # if dst != imm: pc += off
_EXIT = 0x95

# registers: r1 holds the context on entry; the program keeps type, access, major, minor in
# r2..r5 and uses r1 as scratch once they are loaded.
R0, R1, R2, R3, R4, R5 = range(6)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _access_mask(access: str) -> int:
    mask = 0
    for ch in access:
        if ch not in _ACCESS:
            raise ValueError(f"invalid device access {access!r}: expected letters of 'rwm'")
        mask |= _ACCESS[ch]
    return mask


_Insn = tuple[int, int, int, int, int]  # code, dst, src, off, imm


def _rule_block(rule: DeviceRule) -> list[_Insn]:
    """The checks of one rule; a jump with ``off == -1`` means "no match: go to the next rule"."""
    checks: list[_Insn] = []
    if rule.kind != "a":
        checks += [(_JMP_JNE_K, R2, 0, -1, _KIND[rule.kind])]
    extra = 0b111 & ~_access_mask(rule.access)  # access bits this rule does not grant
    if extra:
        checks += [(_ALU64_MOV_X, R1, R3, 0, 0), (_ALU64_AND_K, R1, 0, 0, extra), (_JMP_JNE_K, R1, 0, -1, 0)]
    if rule.major is not None:
        checks += [(_JMP_JNE_K, R4, 0, -1, rule.major)]
    if rule.minor is not None:
        checks += [(_JMP_JNE_K, R5, 0, -1, rule.minor)]
    checks += [(_ALU64_MOV_K, R0, 0, 0, 1), (_EXIT, 0, 0, 0, 0)]
    return checks


def bpf_program(rules: tuple[DeviceRule, ...]) -> bytes:
    """A BPF_PROG_TYPE_CGROUP_DEVICE program allowing exactly ``rules`` (0 = deny otherwise).

    Every jump slot of a rule (``off == -1`` in ``_rule_block``) is pointed at the first
    instruction after that rule, i.e. the next rule or the final deny.
    """
    out = [
        _insn(_LDX_MEM_W, R2, R1, 0),  # access_type
        _insn(_ALU64_AND_K, R2, 0, 0, 0xFFFF),  # device type
        _insn(_LDX_MEM_W, R3, R1, 0),
        _insn(_ALU64_RSH_K, R3, 0, 0, 16),  # requested access
        _insn(_LDX_MEM_W, R4, R1, 4),  # major
        _insn(_LDX_MEM_W, R5, R1, 8),  # minor
    ]
    for rule in rules:
        block = _rule_block(rule)
        for i, (code, dst, src, off, imm) in enumerate(block):
            if off == -1:
                off = len(block) - i - 1
            out.append(_insn(code, dst, src, off, imm))
    out += [_insn(_ALU64_MOV_K, R0, 0, 0, 0), _insn(_EXIT)]
    return b"".join(out)


def bpf_decide(program: bytes, kind: str, major: int, minor: int, access: str) -> bool:
    """Run ``program`` on one access in Python (only the instructions ``bpf_program`` emits).

    For unit tests and for explaining a policy without a kernel; the kernel's verdict is the
    one that counts.
    """
    regs = [0] * 11
    ctx = ((_access_mask(access) << 16) | _KIND[kind], major, minor)
    pc = 0
    count = len(program) // 8
    while pc < count:
        code, regs_byte, off, imm = struct.unpack_from("<BBhi", program, pc * 8)
        dst, src = regs_byte & 0xF, regs_byte >> 4
        pc += 1
        if code == _LDX_MEM_W:
            regs[dst] = ctx[off // 4]
        elif code == _ALU64_AND_K:
            regs[dst] &= imm & 0xFFFFFFFFFFFFFFFF
        elif code == _ALU64_RSH_K:
            regs[dst] >>= imm
        elif code == _ALU64_MOV_X:
            regs[dst] = regs[src]
        elif code == _ALU64_MOV_K:
            regs[dst] = imm
        elif code == _JMP_JNE_K:
            if regs[dst] != imm:
                pc += off
        elif code == _EXIT:
            return regs[R0] == 1
        else:
            raise ValueError(f"opcode {code:#x} at {pc - 1} is not one bpf_program emits")
    raise ValueError("program ran off its end")


# --- policies: how a manager applies the rules to a new cgroup --------------------------------

DEVICES_ALLOW = "devices.allow"
DEVICES_DENY = "devices.deny"
DEVICES_LIST = "devices.list"


class DevicePolicy(Protocol):
    """Confines a freshly made container cgroup (no process in it yet) to its device rules.

    ``hierarchy`` names the hierarchy whose directory ``apply`` configures (``devices`` for the
    v1 controller, ``unified`` for a BPF program, None when there is nothing to configure).
    Does not move processes and is never applied twice to one cgroup.
    """

    # Read-only members: the policies are frozen dataclasses, and a narrower field type
    # (``str``, ``None``) only satisfies a read-only ``str | None``.
    @property
    def hierarchy(self) -> str | None: ...

    @property
    def method(self) -> str: ...  # "v1" | "bpf" | "none", for logs and reports

    def apply(self, fs: CgroupFs, directory: Path | None, cgroup: str) -> None: ...


@dataclass(frozen=True)
class V1DevicePolicy:
    """The v1 devices controller: deny all, then allow each rule; confirmed from devices.list."""

    hierarchy: str
    rules: tuple[DeviceRule, ...] = DEFAULT_RULES
    method: str = "v1"

    def apply(self, fs: CgroupFs, directory: Path | None, cgroup: str) -> None:
        if directory is None:
            raise CgroupError(f"cannot confine devices of cgroup {cgroup}: no {self.hierarchy} directory")
        write(fs, directory / DEVICES_DENY, "a", cgroup=cgroup)
        for line in v1_allow_lines(self.rules):
            write(fs, directory / DEVICES_ALLOW, line, cgroup=cgroup)
        listed = sorted(fs.read(directory / DEVICES_LIST).split("\n"))
        wanted = sorted(v1_allow_lines(self.rules))
        if [line for line in listed if line] != wanted:
            raise CgroupError(
                f"cgroup {cgroup}: {directory / DEVICES_LIST} lists {[x for x in listed if x]}, expected {wanted}",
                hint="a parent cgroup may not allow these devices",
            )
        log.debug("cgroup %s: devices limited to %s (v1)", cgroup, ", ".join(wanted))


@dataclass(frozen=True)
class BpfDevicePolicy:
    """A BPF_PROG_TYPE_CGROUP_DEVICE program on the cgroup2 directory."""

    rules: tuple[DeviceRule, ...] = DEFAULT_RULES
    hierarchy: str = "unified"
    method: str = "bpf"

    def apply(self, fs: CgroupFs, directory: Path | None, cgroup: str) -> None:
        if directory is None:
            raise CgroupError(f"cannot confine devices of cgroup {cgroup}: no cgroup2 directory")
        try:
            fs.attach_device_program(directory, bpf_program(self.rules))
        except OSError as exc:
            raise CgroupError(
                f"cannot attach the device program to cgroup {cgroup} at {directory}: {exc.strerror or exc}",
                hint="loading and attaching a cgroup BPF program needs CAP_SYS_ADMIN (or CAP_BPF and CAP_NET_ADMIN)",
            ) from exc
        log.debug("cgroup %s: devices limited by a BPF program (%d rules)", cgroup, len(self.rules))


@dataclass(frozen=True)
class NoDevicePolicy:
    """No mechanism on this host (pure v1 without the devices controller): said loudly, once per cgroup."""

    reason: str
    hierarchy: None = None
    method: str = "none"

    def apply(self, fs: CgroupFs, directory: Path | None, cgroup: str) -> None:
        log.warning("cgroup %s: no device policy (%s): the container can use any device node it creates", cgroup, self.reason)
