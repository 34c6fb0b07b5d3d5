"""Capability reduction for container processes (init and exec'd processes alike).

The default container set is docker's/runc's: everything else is dropped from the bounding set
(PR_CAPBSET_DROP, needs CAP_SETPCAP, which is kept), effective/permitted/inheritable are set to
the kept set with capset(2), the ambient set is cleared, and PR_SET_NO_NEW_PRIVS is set so no
later execve (setuid binaries, file capabilities) can gain anything back. Run it last before exec:
after it, mounting, sethostname and setns are no longer possible. See capabilities(7).

The process's user (runtime/users.py) is set here too, in runc's order: the bounding set is cut
while CAP_SETPCAP is still there, then setgroups, setresgid, setresuid (the group calls need
CAP_SETGID, so before the uid changes). A non-root user ends with no capabilities at all, as in
Docker: setresuid away from 0 clears permitted and effective (capabilities(7), "Effect of user ID
changes on capabilities"), and capset then clears inheritable, which setresuid keeps (with it, a
file's inheritable capabilities could come back at exec: CVE-2022-24769). The bounding set stays
the container's set, so seccomp profiles that key on capabilities see the same set for every user.
"""

from __future__ import annotations

from runtime.syscalls import (
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAPBSET_DROP,
    PR_SET_NO_NEW_PRIVS,
    Syscalls,
)
from runtime.users import ROOT, Credentials

CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_FOWNER = 3
CAP_FSETID = 4
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_NET_BIND_SERVICE = 10
CAP_NET_RAW = 13
CAP_SYS_CHROOT = 18
CAP_SYS_ADMIN = 21
CAP_MKNOD = 27
CAP_AUDIT_WRITE = 29
CAP_SETFCAP = 31

DEFAULT_CAPS: frozenset[int] = frozenset(
    {
        CAP_CHOWN,
        CAP_DAC_OVERRIDE,
        CAP_FSETID,
        CAP_FOWNER,
        CAP_MKNOD,
        CAP_NET_RAW,
        CAP_SETGID,
        CAP_SETUID,
        CAP_SETFCAP,
        CAP_SETPCAP,
        CAP_NET_BIND_SERVICE,
        CAP_SYS_CHROOT,
        CAP_KILL,
        CAP_AUDIT_WRITE,
    }
)

CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"

# capabilities(7) names by number (linux/capability.h), as seccomp profiles spell them
CAP_NAMES = tuple(
    "CAP_" + n
    for n in (
        "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
        "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO "
        "SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME "
        "SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG "
        "WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE"
    ).split()
)


ALL = "ALL"


def parse_cap(text: str) -> str:
    """A ``--cap-add``/``--cap-drop`` name as the spec records it: ``CAP_NET_RAW`` for
    ``net_raw``, ``NET_RAW`` or ``CAP_NET_RAW``; ``ALL`` for all.

    Raises:
        InvalidArgument: not a capability this runtime knows.
    """
    from runtime.errors import InvalidArgument

    name = text.strip().upper() if isinstance(text, str) else ""
    if name == ALL:
        return ALL
    name = name if name.startswith("CAP_") else f"CAP_{name}"
    if name not in CAP_NAMES:
        raise InvalidArgument(f"unknown capability {text!r}",
                              hint="a capabilities(7) name with or without CAP_ (NET_RAW, CAP_SYS_ADMIN) or ALL")
    return name


def container_caps(cap_add: tuple[str, ...] = (), cap_drop: tuple[str, ...] = ()) -> frozenset[int]:
    """The default set changed by ``--cap-add``/``--cap-drop`` (names as ``parse_cap`` returns
    them), with docker's rules: ``--cap-add ALL`` gives every capability but the dropped ones;
    ``--cap-drop ALL`` gives just the added ones; otherwise the drops leave the default set and
    the adds join it (an add wins over a drop of the same name)."""
    numbers = {name: i for i, name in enumerate(CAP_NAMES)}
    add = {numbers[n] for n in cap_add if n != ALL}
    drop = {numbers[n] for n in cap_drop if n != ALL}
    if ALL in cap_add:
        return frozenset(range(len(CAP_NAMES))) - drop
    if ALL in cap_drop:
        return frozenset(add)
    return frozenset((DEFAULT_CAPS - drop) | add)


def spec_names(cap_add: tuple[str, ...], cap_drop: tuple[str, ...]) -> frozenset[str]:
    """The capabilities(7) names of a spec's set: what its seccomp filter is compiled for
    (Runtime.seccomp_filter) and what a restore checks the images' filters against."""
    return names(container_caps(cap_add, cap_drop))


def names(caps: frozenset[int] = DEFAULT_CAPS) -> frozenset[str]:
    """The capabilities(7) names of ``caps`` (a container's set, by default)."""
    return frozenset(CAP_NAMES[c] for c in caps if c < len(CAP_NAMES))


def last_cap() -> int:
    """The highest capability number this kernel knows (read on the host, before pivot_root)."""
    with open(CAP_LAST_CAP_FILE) as f:
        return int(f.read())


def mask(caps: frozenset[int]) -> int:
    value = 0
    for cap in caps:
        value |= 1 << cap
    return value


def drop_privileges(sys: Syscalls, cap_last: int, keep: frozenset[int] = DEFAULT_CAPS, creds: Credentials = ROOT) -> None:
    """Become ``creds`` with ``keep`` (none for a non-root uid) and set no_new_privs (see the
    module docstring)."""
    for cap in range(cap_last + 1):
        if cap not in keep:
            sys.prctl(PR_CAPBSET_DROP, cap)
    sys.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    sys.setgroups(creds.groups)
    sys.setresgid(creds.gid)
    sys.setresuid(creds.uid)
    kept = mask(frozenset(c for c in keep if c <= cap_last)) if creds.uid == 0 else 0  # --cap-add ALL: what this kernel has
    sys.capset(kept, kept, kept)
    sys.prctl(PR_SET_NO_NEW_PRIVS, 1)
