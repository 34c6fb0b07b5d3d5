"""Seccomp filters for container processes: a Docker/OCI JSON profile compiled to BPF, loaded last.

Every container process (the init and each ``exec``) gets a filter unless its spec says
``unconfined``. The profile is the JSON format Docker, podman and the OCI runtime spec share
(``defaultAction``, ``defaultErrnoRet``, ``archMap``, ``syscalls[]`` with ``names``, ``action``,
``errnoRet``, ``args`` and ``includes``/``excludes`` by ``caps``, ``arches`` and ``minKernel``).
The default is the host's podman profile, ``/usr/share/containers/seccomp.json`` (Debian's
golang-github-containers-common); a host without it refuses to run a container rather than run
it unconfined.

Compilation happens on the host, in the parent, with libseccomp through ctypes (libseccomp.so.2
is loaded only here, on first use): ``seccomp_init`` with the default action, the native
architecture and the sub-architectures of its ``archMap`` entry (x86 and x32 on x86_64: without
them a 32-bit ``int 0x80`` call would meet only the default action), one
``seccomp_rule_add_array`` per syscall name that libseccomp knows (unknown names are skipped, as
Docker does, so one profile serves old and new kernels), then ``seccomp_export_bpf`` into a
memfd. The container side only hands the resulting ``struct sock_filter`` array to
``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)``: after capabilities are dropped and no_new_privs is
set (the kernel requires one of CAP_SYS_ADMIN or no_new_privs), as the very last step before
execve, so none of our own setup calls meet the filter (runc's order). See seccomp(2).

A filter is part of the task: CRIU dumps and restores it (``Seccomp: 2`` and the same
``Seccomp_filters`` after a restore), so restored and migrated processes keep the one they were
started with; later ``exec``s compile the spec's choice again on whatever host runs them.
Because CRIU restores the images' filters and not the spec's, ``check_image_filters`` refuses an
imported or migrated checkpoint unless every process's filter chain contains the very program
this host compiles for the spec (docs/security.md, "Containers: device policy and seccomp").
"""

from __future__ import annotations

import ctypes
import errno as _errno
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from runtime.errors import InvalidArgument, InvalidSpec, Unsupported

log = logging.getLogger(__name__)

DEFAULT = "default"
UNCONFINED = "unconfined"
CUSTOM = "custom"
CHOICES = (DEFAULT, UNCONFINED, CUSTOM)

DEFAULT_PROFILE_PATHS = (Path("/usr/share/containers/seccomp.json"), Path("/etc/containers/seccomp.json"))
PROFILE_ENV = "PYMIGRATE_SECCOMP_PROFILE"  # another default profile (a file), e.g. on hosts without podman's
INSTALL_HINT = "install podman's profile (apt-get install golang-github-containers-common) or run scripts/setup.sh; --security-opt seccomp=unconfined runs without a filter"
MAX_PROFILE_BYTES = 1 << 20  # a profile is data from users and peers: bounded

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SOCK_FILTER_BYTES = 8  # struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}
BPF_MAXINSNS = 4096  # the kernel refuses longer programs (include/uapi/linux/bpf_common.h)

# libseccomp's action values (seccomp.h); ERRNO and TRACE carry their data in the low 16 bits.
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_ERRNO = 0x00050000
SCMP_ACT_TRACE = 0x7FF00000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000

# enum scmp_compare (seccomp.h)
COMPARE_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
_NR_SCMP_ERROR = -1
_MAX_ARGS = 6

# uname machine -> the Go arch names profiles use in includes/excludes "arches" (Docker matches
# them against its own GOARCH) and the SCMP_ARCH_* name of this machine in "archMap".
_MACHINES = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
    "i686": ("386", "SCMP_ARCH_X86"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"),
}


@dataclass(frozen=True)
class Machine:
    """What a profile's conditions are evaluated against."""

    go_arch: str  # "amd64"
    scmp_arch: str  # "SCMP_ARCH_X86_64"
    kernel: tuple[int, ...]  # (6, 18)
    caps: frozenset[str]  # the container's capabilities by name, "CAP_CHOWN"...


@dataclass(frozen=True)
class Rule:
    """One libseccomp rule: an action for a syscall name, under argument comparisons."""

    name: str
    action: int
    args: tuple[tuple[int, int, int, int], ...] = ()  # (index, op, value, value_two)


@dataclass(frozen=True)
class Plan:
    """A profile resolved for one machine: what seccomp_init and seccomp_rule_add get."""

    default_action: int
    arches: tuple[str, ...]  # SCMP_ARCH_* names, native first
    rules: tuple[Rule, ...]


# -- choice and profile text -------------------------------------------------------------------


def parse_option(value: str) -> tuple[str, str | None]:
    """``--security-opt seccomp=VALUE``: (choice, profile text) for ``unconfined``, ``default`` or a
    profile FILE (read and checked now: a container carries its profile's content, never a path).

    Raises:
        InvalidArgument: unreadable or invalid profile file.
    """
    if value in (UNCONFINED, DEFAULT):
        return value, None
    path = Path(value)
    text = _read_profile(path)
    parse_profile(text, what=f"seccomp profile {path}")
    return CUSTOM, text


def parse_security_options(values: Iterable[str]) -> tuple[str, str | None] | None:
    """``--security-opt`` values (the last seccomp= wins): the seccomp choice and a profile FILE's
    content, read by the caller (a daemon never opens the caller's path); None without any.

    Raises:
        InvalidArgument: an option other than seccomp=..., or a bad profile file.
    """
    choice = None
    for value in values:
        key, sep, rest = value.partition("=")
        if key != "seccomp" or not sep or not rest:
            raise InvalidArgument(f"unsupported security option {value!r}: expected seccomp=unconfined, seccomp=default or seccomp=FILE")
        choice = parse_option(rest)
    return choice


def validate_choice(choice: object, profile: object) -> None:
    """A spec's ``seccomp`` and ``seccomp_profile`` fields (a user's, a manifest's, a peer's).

    Raises:
        InvalidSpec: naming the field.
    """
    if choice not in CHOICES:
        raise InvalidSpec("seccomp", f"invalid seccomp choice {str(choice)[:40]!r}: expected one of {', '.join(CHOICES)}")
    if choice != CUSTOM:
        if profile is not None:
            raise InvalidSpec("seccomp_profile", f"seccomp {choice} carries a profile: expected none")
        return
    if not isinstance(profile, str):
        raise InvalidSpec("seccomp_profile", "seccomp custom has no profile: expected the profile's JSON text")
    try:
        parse_profile(profile, what="the container's seccomp profile")
    except InvalidArgument as exc:
        raise InvalidSpec("seccomp_profile", exc.message, hint=exc.hint) from None


def default_profile_path() -> Path | None:
    """The host's default profile file (``PYMIGRATE_SECCOMP_PROFILE`` first); None without one."""
    override = os.environ.get(PROFILE_ENV)
    candidates = (Path(override),) if override else DEFAULT_PROFILE_PATHS
    return next((p for p in candidates if p.is_file()), None)


def profile_text(choice: str, profile: str | None) -> str | None:
    """The JSON text a container with this choice is filtered by; None for unconfined.

    Raises:
        Unsupported: ``default`` on a host without a default profile (never silently unconfined).
    """
    if choice == UNCONFINED:
        return None
    if choice == CUSTOM:
        assert profile is not None  # validate_choice
        return profile
    path = default_profile_path()
    if path is None:
        where = os.environ.get(PROFILE_ENV) or " or ".join(str(p) for p in DEFAULT_PROFILE_PATHS)
        raise Unsupported("the default seccomp profile", f"no profile file at {where}", hint=INSTALL_HINT)
    return _read_profile(path)


def _read_profile(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PROFILE_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read seccomp profile {path}: {exc.strerror}") from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise InvalidArgument(f"seccomp profile {path} is larger than {MAX_PROFILE_BYTES} bytes")
    return raw.decode("utf-8", errors="replace")


def parse_profile(text: str, *, what: str = "seccomp profile") -> dict[str, Any]:
    """The profile as a dict, its shape checked (what resolution reads is typed as expected).

    Raises:
        InvalidArgument: not JSON, or a field of the wrong type, action or operator unknown.
    """
    if len(text) > MAX_PROFILE_BYTES:
        raise InvalidArgument(f"{what} is larger than {MAX_PROFILE_BYTES} bytes")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{what}: expected a JSON object")
    if data.get("flags"):
        raise InvalidArgument(f"{what}: filter flags {data['flags']!r} are not supported", hint="remove the flags field")
    if data.get("listenerPath"):
        raise InvalidArgument(f"{what}: a seccomp listener (SCMP_ACT_NOTIFY) is not supported")
    _action(data.get("defaultAction"), data.get("defaultErrnoRet"), what=f"{what} defaultAction")
    for key in ("architectures", "syscalls", "archMap"):
        if not isinstance(data.get(key, []), list):
            raise InvalidArgument(f"{what}: {key} must be a list")
    for i, call in enumerate(data.get("syscalls", [])):
        _check_call(call, data.get("defaultErrnoRet"), f"{what} syscalls[{i}]")
    return data


def _check_call(call: object, default_errno: object, what: str) -> None:
    if not isinstance(call, dict):
        raise InvalidArgument(f"{what}: expected an object")
    names = _names(call)
    if not names or not all(isinstance(n, str) for n in names):
        raise InvalidArgument(f"{what}: expected names, a list of syscall names")
    _action(call.get("action"), call.get("errnoRet", default_errno), what=f"{what} action")
    args = call.get("args") or []
    if not isinstance(args, list) or len(args) > _MAX_ARGS:
        raise InvalidArgument(f"{what}: args must be a list of at most {_MAX_ARGS} conditions")
    for arg in args:
        _arg(arg, what)
    for key in ("includes", "excludes"):
        cond = call.get(key) or {}
        if not isinstance(cond, dict):
            raise InvalidArgument(f"{what}: {key} must be an object")
        for field in ("caps", "arches"):
            if not isinstance(cond.get(field) or [], list):
                raise InvalidArgument(f"{what}: {key}.{field} must be a list")
        if cond.get("minKernel") is not None:
            _kernel_version(cond["minKernel"], what=f"{what} {key}.minKernel")


def _names(call: dict[str, Any]) -> list[Any]:
    names = call.get("names")
    if names is None and call.get("name") is not None:
        names = [call["name"]]  # the older single-name form
    return names if isinstance(names, list) else []


def _action(name: object, errno_ret: object, *, what: str) -> int:
    """libseccomp's action value for a profile's action name."""
    plain = {
        "SCMP_ACT_ALLOW": SCMP_ACT_ALLOW,
        "SCMP_ACT_KILL": SCMP_ACT_KILL_THREAD,
        "SCMP_ACT_KILL_THREAD": SCMP_ACT_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS": SCMP_ACT_KILL_PROCESS,
        "SCMP_ACT_TRAP": SCMP_ACT_TRAP,
        "SCMP_ACT_LOG": SCMP_ACT_LOG,
    }
    if name in plain:
        return plain[name]
    if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        data = _errno.EPERM if errno_ret is None else errno_ret  # Docker's default for a bare ERRNO
        if isinstance(data, bool) or not isinstance(data, int) or not 0 <= data <= 0xFFFF:
            raise InvalidArgument(f"{what}: errnoRet {data!r} is not a number from 0 to 65535")
        return (SCMP_ACT_ERRNO if name == "SCMP_ACT_ERRNO" else SCMP_ACT_TRACE) | data
    raise InvalidArgument(f"{what}: unknown or unsupported action {str(name)[:40]!r}",
                          hint="expected SCMP_ACT_ALLOW, ERRNO, KILL, KILL_THREAD, KILL_PROCESS, TRAP, TRACE or LOG")


def _arg(arg: object, what: str) -> tuple[int, int, int, int]:
    if not isinstance(arg, dict):
        raise InvalidArgument(f"{what}: an argument condition must be an object")
    index, value, two = arg.get("index"), arg.get("value", 0), arg.get("valueTwo", 0)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < _MAX_ARGS:
        raise InvalidArgument(f"{what}: argument index {index!r} is not 0 to {_MAX_ARGS - 1}")
    for v in (value, two):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 64:
            raise InvalidArgument(f"{what}: argument value {v!r} is not an unsigned 64-bit number")
    op = COMPARE_OPS.get(arg.get("op"))  # type: ignore[arg-type]
    if op is None:
        raise InvalidArgument(f"{what}: unknown comparison {str(arg.get('op'))[:40]!r}", hint=f"expected one of {', '.join(COMPARE_OPS)}")
    return index, op, value, two


def _kernel_version(text: object, *, what: str = "kernel version") -> tuple[int, ...]:
    if not isinstance(text, str):
        raise InvalidArgument(f"{what}: expected a version like 4.8")
    parts = []
    for part in text.split("-")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits[:9]))
    if not parts:
        raise InvalidArgument(f"{what}: {text[:40]!r} is not a version like 4.8")
    return tuple(parts)


# -- resolution: which rules apply on this machine, for these capabilities ---------------------


def this_machine(caps: Iterable[str]) -> Machine:
    """The running host, for a container holding ``caps``.

    Raises:
        Unsupported: a machine architecture this module has no name for.
    """
    uname = os.uname()  # what the platform module's machine() and release() read, without its import (~1.5 ms)
    machine = uname.machine
    if machine not in _MACHINES:
        raise Unsupported("seccomp", f"no seccomp architecture name for machine {machine}")
    go_arch, scmp_arch = _MACHINES[machine]
    return Machine(go_arch=go_arch, scmp_arch=scmp_arch, kernel=_kernel_version(uname.release), caps=frozenset(caps))


def resolve(profile: dict[str, Any], machine: Machine) -> Plan:
    """The rules of a (parsed) profile that apply on ``machine``, as libseccomp gets them.

    Rules whose action is the default action are left out (libseccomp refuses them and they would
    change nothing). A rule's ``includes`` must all hold (every cap held, the arch listed, the
    kernel at least ``minKernel``); any ``excludes`` that holds drops it (Docker's semantics).
    """
    default_errno = profile.get("defaultErrnoRet")
    default = _action(profile.get("defaultAction"), default_errno, what="defaultAction")
    rules: list[Rule] = []
    for call in profile.get("syscalls", []):
        if not _applies(call, machine):
            continue
        action = _action(call.get("action"), call.get("errnoRet", default_errno), what="action")
        if action == default:
            continue
        args = tuple(_arg(a, "args") for a in call.get("args") or [])
        rules.extend(Rule(name=n, action=action, args=args) for n in _names(call))
    return Plan(default_action=default, arches=_arches(profile, machine), rules=tuple(rules))


def _applies(call: dict[str, Any], machine: Machine) -> bool:
    inc, exc = call.get("includes") or {}, call.get("excludes") or {}
    if inc.get("arches") and machine.go_arch not in inc["arches"]:
        return False
    if inc.get("caps") and not set(inc["caps"]) <= machine.caps:
        return False
    if inc.get("minKernel") and machine.kernel < _kernel_version(inc["minKernel"]):
        return False
    if exc.get("arches") and machine.go_arch in exc["arches"]:
        return False
    if exc.get("caps") and set(exc["caps"]) & machine.caps:
        return False
    if exc.get("minKernel") and machine.kernel >= _kernel_version(exc["minKernel"]):
        return False
    return True


def _arches(profile: dict[str, Any], machine: Machine) -> tuple[str, ...]:
    arches = [machine.scmp_arch]
    for entry in profile.get("archMap") or []:
        if isinstance(entry, dict) and entry.get("architecture") == machine.scmp_arch:
            arches += [a for a in entry.get("subArchitectures") or [] if isinstance(a, str)]
    if not profile.get("archMap"):
        arches += [a for a in profile.get("architectures") or [] if isinstance(a, str)]
    return tuple(dict.fromkeys(arches))


# -- compilation with libseccomp ---------------------------------------------------------------


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


_lib: Any = None


def _libseccomp() -> Any:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError as exc:
            raise Unsupported("seccomp", f"libseccomp.so.2 cannot be loaded ({exc})", hint="apt-get install libseccomp2") from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = (ctypes.c_uint32,)
        lib.seccomp_release.argtypes = (ctypes.c_void_p,)
        lib.seccomp_arch_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_resolve_name.argtypes = (ctypes.c_char_p,)
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
        lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp))
        lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
        lib.seccomp_version.restype = ctypes.c_void_p
        _lib = lib
    return _lib


def library_version() -> str:
    """libseccomp's version ("2.5.4").

    Raises:
        Unsupported: libseccomp.so.2 is missing.
    """
    ptr = _libseccomp().seccomp_version()
    major, minor, micro = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint * 3)).contents
    return f"{major}.{minor}.{micro}"


def _arch_token(lib: Any, scmp_arch: str) -> int:
    # libseccomp's names are the SCMP_ARCH_* suffixes in lower case: x86_64, x86, x32, aarch64...
    return int(lib.seccomp_arch_resolve_name(scmp_arch.removeprefix("SCMP_ARCH_").lower().encode()))


def compile_plan(plan: Plan) -> bytes:
    """The BPF program (struct sock_filter array) libseccomp generates for ``plan``.

    Raises:
        Unsupported: libseccomp missing, or it refused the default action.
        InvalidArgument: libseccomp refused a rule (names the syscall), or the program is longer
            than the kernel takes.
    """
    lib = _libseccomp()
    ctx = lib.seccomp_init(plan.default_action)
    if not ctx:
        raise InvalidArgument(f"libseccomp refused the default action {plan.default_action:#x}")
    try:
        native = int(lib.seccomp_arch_native())
        for arch in plan.arches:
            token = _arch_token(lib, arch)
            if token == 0:
                log.debug("seccomp: libseccomp does not know architecture %s, skipped", arch)
                continue
            if token != native:
                rc = lib.seccomp_arch_add(ctx, token)
                if rc not in (0, -_errno.EEXIST):
                    raise InvalidArgument(f"libseccomp cannot add architecture {arch}: {os.strerror(-rc)}")
        skipped = [r.name for r in plan.rules if not _add_rule(lib, ctx, r)]
        if skipped:
            log.debug("seccomp: %d syscall names unknown to libseccomp skipped: %s", len(skipped), ", ".join(sorted(set(skipped))[:20]))
        program = _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)
    if len(program) // SOCK_FILTER_BYTES > BPF_MAXINSNS:
        raise InvalidArgument(f"seccomp profile compiles to {len(program) // SOCK_FILTER_BYTES} BPF instructions: the kernel takes at most {BPF_MAXINSNS}")
    return program


def _add_rule(lib: Any, ctx: int, rule: Rule) -> bool:
    """Add one rule; False if libseccomp does not know the syscall's name (skipped)."""
    nr = lib.seccomp_syscall_resolve_name(rule.name.encode())
    if nr == _NR_SCMP_ERROR:
        return False
    conds = (_ArgCmp * max(1, len(rule.args)))(*(_ArgCmp(i, op, a, b) for i, op, a, b in rule.args))
    rc = lib.seccomp_rule_add_array(ctx, rule.action, nr, len(rule.args), conds)
    if rc < 0:
        raise InvalidArgument(f"libseccomp refused the seccomp rule for {rule.name}: {os.strerror(-rc)}")
    return True


def _export(lib: Any, ctx: int) -> bytes:
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        rc = lib.seccomp_export_bpf(ctx, fd)
        if rc < 0:
            raise InvalidArgument(f"libseccomp cannot export the seccomp filter: {os.strerror(-rc)}")
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def filter_for(choice: str, profile: str | None, caps: Iterable[str], cache_dir: Path | None = None) -> bytes | None:
    """The BPF program for a container's seccomp choice and capability names; None: unconfined.

    With ``cache_dir``, a program compiled before for the same profile text, capabilities,
    architecture, kernel and libseccomp version is read from there instead (libseccomp takes
    ~30-130 ms for the default profile's three architectures, on the ``run`` and ``exec`` path).

    Raises:
        Unsupported: ``default`` without a default profile on this host, or libseccomp missing.
        InvalidArgument: the profile is invalid or libseccomp refused it.
    """
    text = profile_text(choice, profile)
    if text is None:
        return None
    machine = this_machine(caps)
    key = _cache_key(text, machine)
    cached = _cache_read(cache_dir, key)
    if cached is not None:
        return cached
    what = "the default seccomp profile" if choice == DEFAULT else "the container's seccomp profile"
    program = compile_plan(resolve(parse_profile(text, what=what), machine))
    _cache_write(cache_dir, key, program)
    return program


def _cache_key(text: str, machine: Machine) -> str:
    import hashlib

    facts = [text, sorted(machine.caps), machine.scmp_arch, machine.go_arch, list(machine.kernel), library_version()]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()


def _cache_read(cache_dir: Path | None, key: str) -> bytes | None:
    if cache_dir is None:
        return None
    try:
        data = (cache_dir / f"{key}.bpf").read_bytes()
    except OSError:
        return None
    ok = data and len(data) % SOCK_FILTER_BYTES == 0 and len(data) // SOCK_FILTER_BYTES <= BPF_MAXINSNS
    return data if ok else None


def _cache_write(cache_dir: Path | None, key: str, program: bytes) -> None:
    if cache_dir is None:
        return
    tmp = cache_dir / f".{key}.{os.getpid()}.tmp"
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp.write_bytes(program)
        os.replace(tmp, cache_dir / f"{key}.bpf")  # readers see a whole program or none
    except OSError as exc:  # a cache: the next start compiles again
        log.debug("seccomp: cannot cache the compiled filter in %s: %s", cache_dir, exc)
        tmp.unlink(missing_ok=True)


# -- what CRIU images say ---------------------------------------------------------------------------
#
# The images of an imported or migrated checkpoint are untrusted, and CRIU restores the filters
# they describe whatever the spec says. They are read here straight from the protobuf wire
# format, a few fields deep, not with pycriu's decoder: pycriu.images' pb2dict fails under this
# venv's protobuf 7 (FieldDescriptor.label is gone), and a hand reader can refuse what is
# ambiguous (a singular field twice, which protobuf-c resolves by last-wins or merging) with a
# typed error and bounded work instead of guessing what CRIU will make of it.

# CRIU image framing (criu/include/magic.h): IMG_COMMON, the image's magic, u32-length entries.
IMG_COMMON_MAGIC = 0x54564319
CORE_MAGIC = 0x55053847
SECCOMP_MAGIC = 0x64413049
SECCOMP_IMAGE = "seccomp.img"
MAX_CORE_IMAGE_BYTES = 64 << 20  # a core image is read whole (genuine ones: a few KiB)
MAX_SECCOMP_IMAGE_BYTES = 256 << 20  # every task's filters (the default profile: ~9 KiB a process)
MAX_IMAGE_FILTERS = 1 << 16  # filters in seccomp.img
MAX_MESSAGE_FIELDS = 4096  # fields in one core message (genuine: a few dozen; sigactions: 64)
MAX_INSNS_PER_PATH = 32768  # the kernel's bound on one task's chain: lengths + 4 per older filter
MAX_CHAIN_FILTERS = MAX_INSNS_PER_PATH // 5 + 1  # so no genuine chain is longer (1 insn + 4 each)

# Field numbers in CRIU 4.1.1's images/core.proto and images/seccomp.proto (measured on a dump:
# ../shared/CRIU-NOTES.md).
_CORE_TC = 3  # core_entry.tc (task_core_entry)
_CORE_THREAD_CORE = 5  # core_entry.thread_core
_TASK_STATE = 1  # task_core_entry.task_state
TASK_DEAD = 2  # a zombie (compel's COMPEL_TASK_DEAD): CRIU restores it dead, it runs no code
_TASK_OLD_SECCOMP_MODE = 11  # task_core_entry.old_seccomp_mode (deprecated, still honoured)
_TASK_OLD_SECCOMP_FILTER = 12  # task_core_entry.old_seccomp_filter (likewise)
_THREAD_SECCOMP_MODE = 11  # thread_core_entry.seccomp_mode: 0 disabled, 1 strict, 2 filter
_THREAD_SECCOMP_FILTER = 12  # thread_core_entry.seccomp_filter: an index into seccomp.img
_SECCOMP_FILTERS = 1  # seccomp_entry.seccomp_filters (repeated seccomp_filter)
_FILTER_PROGRAM = 1  # seccomp_filter.filter: the struct sock_filter array, as the kernel took it
_FILTER_PREV = 2  # seccomp_filter.prev (uint32): the index of the filter installed after this one
_FILTER_FLAGS = 3  # seccomp_filter.flags


@dataclass(frozen=True)
class CoreSeccomp:
    """The seccomp fields of one ``core-<tid>.img`` (absent numbers read as CRIU reads them: 0)."""

    mode: int  # thread_core_entry.seccomp_mode
    filter_index: int  # thread_core_entry.seccomp_filter
    old_mode: int | None = None  # task_core_entry.old_seccomp_mode, if present
    old_filter_index: int | None = None  # task_core_entry.old_seccomp_filter, if present
    task_state: int = 1  # task_core_entry.task_state: 1 alive, 2 dead (a zombie)

    def main_thread(self) -> tuple[int, int]:
        """(mode, filter index) CRIU 4.1.1 restores a process's main thread with: the deprecated
        task_core fields, when present, replace the thread_core ones (cr-restore.c check_core)."""
        mode = self.mode if self.old_mode is None else self.old_mode
        return mode, self.filter_index if self.old_filter_index is None else self.old_filter_index

    def filter_indexes(self) -> set[int]:
        """Every chain this core could make CRIU install: its thread's own (what CRIU reads for
        any thread) and the main-thread reading (what it reads for a process's first)."""
        return {index for mode, index in ((self.mode, self.filter_index), self.main_thread()) if mode == SECCOMP_MODE_FILTER}


@dataclass(frozen=True)
class ImageFilter:
    """One seccomp_filter of seccomp.img."""

    program: bytes
    prev: int | None
    flags: int = 0


def image_cores(images_dir: Path) -> dict[str, CoreSeccomp]:
    """The seccomp fields of every core image, by name (``core-42.img``).

    Raises:
        InvalidArgument: a core image that is not one (bad magic, truncated, malformed, a field
            twice or of the wrong wire type).
    """
    cores = {}
    for path in sorted(images_dir.glob("core-*.img")):
        entry = _first_entry(path, CORE_MAGIC, "a CRIU core image", MAX_CORE_IMAGE_BYTES)
        if entry is None:
            raise InvalidArgument(f"checkpoint image {path.name} is truncated")
        core = _message(entry, path.name)
        thread = _message(_single(core, _CORE_THREAD_CORE, bytes, path.name, "thread_core") or b"", path.name)
        task = _message(_single(core, _CORE_TC, bytes, path.name, "task_core") or b"", path.name)
        cores[path.name] = CoreSeccomp(
            mode=_single(thread, _THREAD_SECCOMP_MODE, int, path.name, "seccomp_mode") or 0,
            filter_index=_single(thread, _THREAD_SECCOMP_FILTER, int, path.name, "seccomp_filter") or 0,
            old_mode=_single(task, _TASK_OLD_SECCOMP_MODE, int, path.name, "old_seccomp_mode"),
            old_filter_index=_single(task, _TASK_OLD_SECCOMP_FILTER, int, path.name, "old_seccomp_filter"),
            task_state=_single(task, _TASK_STATE, int, path.name, "task_state") or 1,
        )
    return cores


def image_filter_modes(images_dir: Path) -> dict[str, int]:
    """The seccomp mode each core image's thread is restored with as a process's main thread, by
    name (``core-42.img`` -> 2).

    Raises:
        InvalidArgument: a core image that is not one (see image_cores).
    """
    return {name: core.main_thread()[0] for name, core in image_cores(images_dir).items()}


def image_filters(images_dir: Path) -> list[ImageFilter] | None:
    """seccomp.img's filters in image order; None without a seccomp.img.

    CRIU 4.1.1 writes one seccomp_entry with every dumped task's chain as a run: its newest filter
    first (no ``prev``), then each older one with ``prev`` naming the entry before it. A thread
    core's ``seccomp_filter`` names its chain's oldest filter, and the restore installs from there
    along ``prev`` (oldest first). CRIU reads only the image's first entry; so does this.

    Raises:
        InvalidArgument: not a seccomp image, truncated, malformed, too large or too many filters,
            a filter whose program is not a whole, loadable sock_filter array.
    """
    path = images_dir / SECCOMP_IMAGE
    if not path.exists():
        return None
    entry = _first_entry(path, SECCOMP_MAGIC, "a CRIU seccomp image", MAX_SECCOMP_IMAGE_BYTES)
    if entry is None:
        return []  # CRIU: "there were no filters"
    raw = _message(entry, path.name, max_fields=MAX_IMAGE_FILTERS).get(_SECCOMP_FILTERS, [])
    filters = []
    for i, item in enumerate(raw):
        what = f"seccomp filter {i}"
        if not isinstance(item, bytes):
            raise InvalidArgument(f"checkpoint image {path.name}: {what} has the wrong wire type")
        fields = _message(item, path.name, max_fields=64)
        program = _single(fields, _FILTER_PROGRAM, bytes, path.name, f"{what} program")
        if program is None or not program or len(program) % SOCK_FILTER_BYTES or len(program) // SOCK_FILTER_BYTES > BPF_MAXINSNS:
            raise InvalidArgument(f"checkpoint image {path.name}: {what} is not a BPF program of 1 to {BPF_MAXINSNS} instructions")
        filters.append(ImageFilter(program=program, prev=_single(fields, _FILTER_PREV, int, path.name, f"{what} prev"),
                                   flags=_single(fields, _FILTER_FLAGS, int, path.name, f"{what} flags") or 0))
    return filters


class _Chains:
    """Which of seccomp.img's chains hold ``program``: every filter is visited once however many
    threads share its chain; an index out of range, a loop in ``prev`` or a chain longer than the
    kernel takes is an InvalidArgument."""

    def __init__(self, filters: list[ImageFilter], program: bytes) -> None:
        self._filters = filters
        self._program = program
        self._known: dict[int, tuple[bool, int, int]] = {}  # index -> (holds, instructions + 4 each, filters)

    def holds(self, start: int, where: str) -> bool:
        path: list[int] = []
        on_path: set[int] = set()
        index: int | None = start
        while index is not None and index not in self._known:
            if index >= len(self._filters):
                raise InvalidArgument(f"checkpoint image {where} names seccomp filter {index}, but {SECCOMP_IMAGE} holds {len(self._filters)}")
            if index in on_path:
                raise InvalidArgument(f"checkpoint image {where}: the seccomp filter chain in {SECCOMP_IMAGE} loops back to filter {index}")
            if len(path) >= MAX_CHAIN_FILTERS:
                raise InvalidArgument(f"checkpoint image {where}: its seccomp filter chain is longer than the kernel allows")
            on_path.add(index)
            path.append(index)
            index = self._filters[index].prev
        holds, insns, count = (False, 0, 0) if index is None else self._known[index]
        for i in reversed(path):
            program = self._filters[i].program
            holds, insns, count = holds or program == self._program, insns + len(program) // SOCK_FILTER_BYTES + 4, count + 1
            if insns - 4 > MAX_INSNS_PER_PATH or count > MAX_CHAIN_FILTERS:
                raise InvalidArgument(f"checkpoint image {where}: its seccomp filter chain is longer than the kernel allows ({MAX_INSNS_PER_PATH} instructions)")
            self._known[i] = (holds, insns, count)
        return holds


def _first_entry(path: Path, magic: int, what: str, max_bytes: int) -> bytes | None:
    """The first entry of a CRIU image (None: the image has none)."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read checkpoint image {path.name}: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise InvalidArgument(f"checkpoint image {path.name} is larger than {max_bytes} bytes")
    if len(data) < 8 or int.from_bytes(data[0:4], "little") != IMG_COMMON_MAGIC or int.from_bytes(data[4:8], "little") != magic:
        raise InvalidArgument(f"checkpoint image {path.name} is not {what}")
    if len(data) == 8:
        return None
    size = int.from_bytes(data[8:12], "little")
    if len(data) < 12 or 12 + size > len(data):
        raise InvalidArgument(f"checkpoint image {path.name} is truncated")
    return data[12 : 12 + size]


def _core_pid(name: str) -> int | None:
    """42 for ``core-42.img``."""
    digits = name[len("core-") : -len(".img")]
    return int(digits) if digits.isdigit() else None


def _varint(buf: bytes, pos: int, name: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise InvalidArgument(f"checkpoint image {name} has a malformed entry")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _message(buf: bytes, name: str, *, max_fields: int = MAX_MESSAGE_FIELDS) -> dict[int, list[bytes | int | None]]:
    """A protobuf message's fields by number, in order: varints as int, length-delimited as bytes,
    fixed32/64 as None (no field read here has those types)."""
    fields: dict[int, list[bytes | int | None]] = {}
    pos = count = 0
    while pos < len(buf):
        count += 1
        if count > max_fields:
            raise InvalidArgument(f"checkpoint image {name} has an entry of more than {max_fields} fields")
        key, pos = _varint(buf, pos, name)
        wire = key & 7
        value: bytes | int | None
        if wire == 0:
            value, pos = _varint(buf, pos, name)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, name)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = None, pos + 4
        else:
            raise InvalidArgument(f"checkpoint image {name} has a malformed entry")
        if pos > len(buf) or key >> 3 == 0:
            raise InvalidArgument(f"checkpoint image {name} has a malformed entry")
        fields.setdefault(key >> 3, []).append(value)
    return fields


def _single(fields: dict[int, list[bytes | int | None]], number: int, kind: type, name: str, what: str) -> Any:
    """A singular field's value (None if absent); twice or of another wire type is refused."""
    values = fields.get(number, [])
    if len(values) > 1:
        raise InvalidArgument(f"checkpoint image {name} has {what} more than once")
    if values and not isinstance(values[0], kind):
        raise InvalidArgument(f"checkpoint image {name}: {what} has the wrong wire type")
    return values[0] if values else None


def _field(buf: bytes, number: int, name: str) -> bytes | int | None:
    """The last occurrence of field ``number`` in a protobuf message (bytes or a varint)."""
    values = _message(buf, name, max_fields=len(buf) + 1).get(number)
    return values[-1] if values else None


PSTREE_MAGIC = 0x50273030
_PSTREE_PID = 1  # pstree_entry.pid (images/pstree.proto); threads are field 5


def process_leaders(images_dir: Path) -> set[int] | None:
    """The pid of every dumped process (not its other threads), from pstree.img; None if there is
    no readable pstree image (then every core image is checked)."""
    try:
        data = (images_dir / "pstree.img").read_bytes()
    except OSError:
        return None
    pos = 8 if data[:4] == IMG_COMMON_MAGIC.to_bytes(4, "little") else 4
    if data[pos - 4 : pos] != PSTREE_MAGIC.to_bytes(4, "little"):
        raise InvalidArgument("checkpoint image pstree.img is not a CRIU process tree image")
    leaders = set()
    while pos < len(data):
        if pos + 4 > len(data):
            raise InvalidArgument("checkpoint image pstree.img is truncated")
        size = int.from_bytes(data[pos : pos + 4], "little")
        entry = data[pos + 4 : pos + 4 + size]
        if len(entry) != size:
            raise InvalidArgument("checkpoint image pstree.img is truncated")
        pid = _field(entry, _PSTREE_PID, "pstree.img")
        if not isinstance(pid, int):
            raise InvalidArgument("checkpoint image pstree.img has an entry without a pid")
        leaders.add(pid)
        pos += 4 + size
    return leaders


def check_image_filters(images_dir: Path, choice: str, profile: str | None = None, *,
                        caps: Iterable[str] | None = None, cache_dir: Path | None = None) -> None:
    """Refuse images whose processes do not run under the filter the container's spec promises
    (CRIU restores what the images describe, whatever the spec says), unless it says ``unconfined``:

    - every dumped process's main thread is in filter mode (``Seccomp: 2``);
    - every filter chain a core image names (followed along ``prev`` in seccomp.img) contains the
      program this host compiles for ``choice``/``profile`` and the container capability set
      (``caps``, default runtime.capabilities.names(): what Runtime.seccomp_filter compiles at
      ``run``), byte for byte. More filters in a chain only restrict (the kernel applies the
      strictest answer), so they are fine; a chain without it is not the container's profile.

    An archive from a host whose libseccomp, profile, kernel (``minKernel`` rules) or architecture
    compiles another program is refused too: the hint says how to accept it.

    Raises:
        InvalidSpec: naming a thread without a filter, or an image whose filters are not the
            profile's (field ``seccomp``); a ``custom`` choice without a profile.
        InvalidArgument: malformed core, pstree or seccomp images, no seccomp.img for processes in
            filter mode, a filter index out of range, a loop in ``prev``, an overlong chain.
        Unsupported: ``default`` on a host without a default profile, or libseccomp missing.
    """
    if choice == UNCONFINED:
        return
    validate_choice(choice, profile)
    # CRIU 4.1.1 records the seccomp mode in each process's main-thread core image only (the
    # other threads' cores carry no seccomp field) and restores every thread of the process with
    # that filter: so the processes' main threads are the ones that must be in filter mode.
    # A zombie (an exited child its parent has not reaped yet) keeps no seccomp state; CRIU
    # restores it dead, and it runs no code: it needs no filter.
    leaders = process_leaders(images_dir)
    cores = {name: core for name, core in image_cores(images_dir).items() if core.task_state != TASK_DEAD}
    mains = cores if leaders is None else {name: core for name, core in cores.items() if _core_pid(name) in leaders}
    bare = sorted(name for name, core in mains.items() if core.main_thread()[0] != SECCOMP_MODE_FILTER)
    if bare:
        raise InvalidSpec("seccomp", f"checkpoint images {', '.join(bare[:5])} describe processes without a seccomp filter, but the container asks for seccomp {choice}",
                          hint="restore with --security-opt seccomp=unconfined to accept processes without a filter")
    starts = {name: core.filter_indexes() for name, core in cores.items()}
    if not any(starts.values()):
        return
    filters = image_filters(images_dir)
    if filters is None:
        first = next(name for name, indexes in starts.items() if indexes)
        raise InvalidArgument(f"checkpoint images have no {SECCOMP_IMAGE}, but {first} describes a thread under a seccomp filter")
    if caps is None:
        from runtime.capabilities import names

        caps = names()
    program = filter_for(choice, profile, caps, cache_dir)
    assert program is not None  # not unconfined
    chains = _Chains(filters, program)
    foreign = [name for name, indexes in starts.items() if not all(chains.holds(i, name) for i in sorted(indexes))]
    if foreign:
        shown = ", ".join(f"{name} (pid {_core_pid(name)})" for name in foreign[:5])
        raise InvalidSpec("seccomp", f"checkpoint images {shown}: their seccomp filters are not the container's profile (seccomp {choice}): "
                          f"no filter in their chain is the program this host compiles for it",
                          hint="restore with --security-opt seccomp=unconfined to accept the images' own filters, "
                               "or export again from a host with the same seccomp profile and libseccomp version")


# -- the container side --------------------------------------------------------------------------


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load(sys: Any, program: bytes) -> None:
    """Install ``program`` on the calling thread (inherited by children, kept across execve).

    Needs no_new_privs (or CAP_SYS_ADMIN): call it after capabilities.drop_privileges. From here
    on every call this process makes meets the filter, so nothing may follow but execve.
    """
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // SOCK_FILTER_BYTES, ctypes.addressof(buf))
    sys.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))
