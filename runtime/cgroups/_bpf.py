"""The two bpf(2) commands the device policy needs, through ctypes (no libbpf, no bpftool).

One call each, no policy (``runtime.cgroups.devices`` builds the program). Layouts of ``union
bpf_attr`` (include/uapi/linux/bpf.h) as the kernel has had them since 4.15:

- BPF_PROG_LOAD: u32 prog_type @0, u32 insn_cnt @4, u64 insns @8, u64 license @16,
  u32 log_level @24, u32 log_size @28, u64 log_buf @32, u32 kern_version @40, u32 prog_flags @44,
  char prog_name[16] @48, u32 prog_ifindex @64, u32 expected_attach_type @68.
- BPF_PROG_ATTACH: u32 target_fd @0, u32 attach_bpf_fd @4, u32 attach_type @8, u32 attach_flags @12.

The kernel accepts a shorter attr than its own (the rest reads as zero). Loading needs
CAP_SYS_ADMIN or CAP_BPF; attaching to a cgroup, CAP_NET_ADMIN or CAP_SYS_ADMIN. Since Linux
5.11 program memory is charged to the memory cgroup, not RLIMIT_MEMLOCK (which matters on hosts
without CAP_SYS_RESOURCE).
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # enum bpf_attach_type
BPF_F_ALLOW_MULTI = 1 << 1
_ATTR_SIZE = 128
_LOG_SIZE = 64 * 1024

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    machine = os.uname().machine  # what the platform module's machine() reads, without its import
    if machine not in _SYS_BPF:
        raise OSError(0, f"bpf(2): no syscall number known for {machine}")
    ret = _libc.syscall(ctypes.c_long(_SYS_BPF[machine]), ctypes.c_int(cmd), attr, ctypes.c_uint(_ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def load_device_program(insns: bytes, name: str = "pm_devices") -> int:
    """BPF_PROG_LOAD a BPF_PROG_TYPE_CGROUP_DEVICE program; its fd (the caller closes it).

    Raises:
        OSError: with the verifier's log appended to the message when the kernel refused it
    """
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"Apache-2.0")
    log_buf = ctypes.create_string_buffer(_LOG_SIZE)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(
        "<IIQQIIQII16s", attr, 0,
        BPF_PROG_TYPE_CGROUP_DEVICE, len(insns) // 8, ctypes.addressof(code), ctypes.addressof(license_),
        1, _LOG_SIZE, ctypes.addressof(log_buf), 0, 0, name.encode()[:15],
    )
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        log_text = log_buf.value.decode(errors="replace").strip()
        raise OSError(exc.errno, f"{exc.strerror}{': ' + log_text if log_text else ''}") from None


def attach_device_program(cgroup_dir: Path, prog_fd: int) -> None:
    """BPF_PROG_ATTACH ``prog_fd`` to the cgroup2 directory as its device program (ALLOW_MULTI)."""
    dir_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into("<IIII", attr, 0, dir_fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
        _bpf(BPF_PROG_ATTACH, attr)
    finally:
        os.close(dir_fd)
