"""Facts about this host, probed at run time and never assumed.

``probe()`` reads the kernel's own files and asks CRIU; ``host_report()`` caches one probe per
process; the ``supports_*()`` functions answer the questions the runtime, the migration core, the
CLI and the service ask before using a feature (a missing one raises ``Unsupported`` at the caller).

Kernel facts used (proc(5)):

- ``/proc/sys/kernel/osrelease``: kernel release (same as ``uname -r``).
- ``/proc/cpuinfo``: ``model name`` and ``flags`` of the first processor. The digest of the sorted
  flags lets two hosts compare CPU features cheaply (a restored process may use any instruction
  the source CPU had; CRIU's ``cpuinfo check`` is the thorough test).
- ``/proc/self/ns/<kind>``: one entry per namespace kind the kernel has (``*_for_children``
  entries are aliases and skipped).
- ``/proc/filesystems``: ``overlay`` is listed once the overlay module is loaded (or built in).
- ``/proc/sys/fs/pipe-max-size``: without CAP_SYS_RESOURCE no pipe grows beyond it; CRIU's lazy
  pages (post-copy) page server asks for ~3.3 MiB pipes, so it must be >= 4 MiB unless the
  process holds CAP_SYS_RESOURCE (bit 24 of ``CapEff`` in ``/proc/self/status``).
- cgroup layout: ``runtime.cgroups.layout()`` (mountinfo + /proc/self/cgroup).
- CAP_SYS_RESOURCE also decides what CRIU can do with resource limits (kernel/sys.c,
  ``check_prlimit_permission`` and ``do_prlimit``): prlimit(2) on a task whose uids and gids are
  not all the caller's needs it even to read, so without it CRIU can dump a task running under
  another uid (every server that drops privileges) only if it falls back to /proc/PID/limits
  (our CRIU patch; ``criu check --feature rlimit_proc_limits``). And a restored task sets its
  limits with CRIU's credentials: without the capability no hard limit can go above the
  restoring CRIU's own (the patched CRIU then fails the restore, naming the limit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from runtime.criu_features import CriuReport, RunMany, probe_criu
from runtime.criu_kdat import KdatStatus

log = logging.getLogger(__name__)

DEFAULT_PROC_ROOT = Path("/proc")
DEFAULT_SYS_ROOT = Path("/sys/fs/cgroup")

NAMESPACE_KINDS = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
PIPE_MAX_SIZE_MIN_BYTES = 4 * 1024 * 1024  # CRIU's lazy-pages pipes are ~3.3 MiB
CAP_SYS_RESOURCE = 24  # linux/capability.h


@dataclass(frozen=True)
class CgroupFacts:
    """The parts of the cgroup layout a host report needs.

    Attributes:
        mode: ``v2`` | ``hybrid`` | ``v1``
        freezer: ``cgroup2`` (cgroup.freeze) | ``v1`` (freezer.state) | ``none``
        freeze_dir: our own cgroup in the hierarchy that freezes (children are created below it)
        limit_controllers: limit controllers that can be used (``memory``, ``cpu``, ``pids``)
        notes: findings worth showing the user
        device_policy: how containers are kept to the standard devices: ``v1`` (devices
            controller), ``bpf`` (cgroup2 device program) or ``none``
    """

    mode: str
    freezer: str
    freeze_dir: str | None
    limit_controllers: tuple[str, ...]
    notes: tuple[str, ...] = ()
    device_policy: str = "none"


@dataclass(frozen=True)
class PycriuFacts:
    importable: bool
    version: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class SeccompFacts:
    """What every container's seccomp filter needs (runtime/seccomp.py)."""

    libseccomp: str | None  # version, None: libseccomp.so.2 cannot be loaded
    default_profile: str | None  # path of the default profile, None: no file
    error: str | None = None  # why the default profile cannot be compiled here

    @property
    def usable(self) -> bool:
        return self.libseccomp is not None and self.default_profile is not None and self.error is None


@dataclass(frozen=True)
class HostReport:
    """Everything probed about this host (see the module docstring for where each fact comes from).

    ``None`` means "could not be read"; errors say why.
    """

    kernel_release: str | None
    cpu_model: str | None
    cpu_flags_sha256: str | None
    cpu_flags_count: int
    namespaces: tuple[str, ...]
    overlayfs: bool
    cgroup: CgroupFacts | None
    cgroup_error: str | None
    criu: CriuReport
    pipe_max_size_bytes: int | None
    cap_sys_resource: bool
    nft_path: str | None
    pycriu: PycriuFacts
    errors: tuple[str, ...] = field(default=())
    criu_kdat: KdatStatus | None = None  # CRIU's kernel-feature cache (runtime.criu_kdat)
    seccomp: SeccompFacts | None = None  # None: not probed
    # why upper layers cannot live on their own images here (runtime/upperfs.py); None: they can
    # (or not probed). Without them a restore gives every upper-layer file a new inode number.
    upper_images_problem: str | None = None

    # --- questions -----------------------------------------------------------------------------

    def has_namespace(self, kind: str) -> bool:
        return kind in self.namespaces

    @property
    def pipe_size_ok(self) -> bool:
        """Pipes can grow as large as CRIU's lazy-pages transfer needs."""
        return self.cap_sys_resource or (self.pipe_max_size_bytes or 0) >= PIPE_MAX_SIZE_MIN_BYTES

    @property
    def rlimit_fallback(self) -> bool | None:
        """CRIU reads rlimits it may not prlimit() from /proc/PID/limits; None when CRIU cannot say."""
        if not self.criu.usable:
            return None
        f = self.criu.feature("rlimit_proc_limits")
        return None if f is None else f.supported is True

    @property
    def dump_other_uids(self) -> bool:
        """CRIU can read the rlimits of tasks running under another uid (so it can dump them)."""
        return self.criu.usable and (self.cap_sys_resource or self.rlimit_fallback is True)

    def rlimits_dict(self) -> dict[str, Any]:
        """How CRIU reads and restores resource limits here (``pymigrate check --json``: ``rlimits``)."""
        if self.cap_sys_resource:
            read_with = "prlimit"
        elif self.rlimit_fallback:
            read_with = "/proc/PID/limits"
        else:
            read_with = None  # another uid's limits cannot be read: such tasks cannot be dumped
        return {
            "cap_sys_resource": self.cap_sys_resource,
            "criu_proc_limits_fallback": self.rlimit_fallback,
            "other_uids_read_with": read_with,
            "dump_other_uids": self.dump_other_uids,
            "restore_can_raise_hard_limits": self.cap_sys_resource,
        }

    @property
    def cgroup_freeze(self) -> bool:
        return self.cgroup is not None and self.cgroup.freezer != "none"

    def features(self) -> dict[str, bool]:
        """Feature name -> usable, for ``HostInfo.features`` and the report."""
        c = self.criu
        return {
            "checkpoint": c.usable and self.pycriu.importable,
            "dirty_tracking": c.supports("dirty_tracking"),
            "lazy_pages": c.supports("lazy_pages") and self.pipe_size_ok,
            # a --userns container's restored tasks open their userfaultfd without privilege on the host
            "lazy_pages_userns": c.supports("lazy_pages") and self.pipe_size_ok and unprivileged_userfaultfd(),
            "tcp_established": c.usable,  # criu check's basic checks include TCP_REPAIR
            "tcp_half_closed": c.supports("tcp_half_closed"),
            "network_lock_nftables": c.supports("network_lock_nftables") and self.nft_path is not None,
            "time_namespace": c.supports("time_namespace") and self.has_namespace("time"),
            "pidfd_store": c.supports("pidfd_store"),
            "overlayfs": self.overlayfs,
            "cgroup_freeze": self.cgroup_freeze,
            "dump_other_uids": self.dump_other_uids,
            "seccomp": self.seccomp is not None and self.seccomp.usable,
            # a post-copy target binds /dev and /dev/shm built from the plan when the source's dump
            # declares them external (runtime/dev_mounts.py); an older target would fail that restore
            "postcopy_dev_external": True,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel_release": self.kernel_release,
            "cpu": {
                "model": self.cpu_model,
                "flags_sha256": self.cpu_flags_sha256,
                "flags_count": self.cpu_flags_count,
            },
            "namespaces": list(self.namespaces),
            "overlayfs": self.overlayfs,
            "cgroup": None
            if self.cgroup is None
            else {
                "mode": self.cgroup.mode,
                "freezer": self.cgroup.freezer,
                "freeze_dir": self.cgroup.freeze_dir,
                "limit_controllers": list(self.cgroup.limit_controllers),
                "notes": list(self.cgroup.notes),
                "device_policy": self.cgroup.device_policy,
            },
            "cgroup_error": self.cgroup_error,
            "criu": self.criu.as_dict(),
            "pipe_max_size_bytes": self.pipe_max_size_bytes,
            "cap_sys_resource": self.cap_sys_resource,
            "rlimits": self.rlimits_dict(),
            "nft_path": self.nft_path,
            "upper_images_problem": self.upper_images_problem,
            "pycriu": {
                "importable": self.pycriu.importable,
                "version": self.pycriu.version,
                "error": self.pycriu.error,
            },
            "features": self.features(),
            "criu_kdat": self.criu_kdat.as_dict() if self.criu_kdat is not None else None,
            "seccomp": None if self.seccomp is None else dataclasses.asdict(self.seccomp),
            "errors": list(self.errors),
        }


# --- readers (each takes its root so tests can point it at tmp_path) --------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError as exc:
        log.debug("cannot read %s: %s", path, exc.strerror)
        return None


def unprivileged_userfaultfd(proc_root: Path = DEFAULT_PROC_ROOT) -> bool:
    """vm.unprivileged_userfaultfd is 1: a task without CAP_SYS_PTRACE on the host (the restored
    tasks of a --userns container) may open a userfaultfd that also takes kernel-mode faults,
    as a post-copy restore needs. Read on every call: an operator may change it."""
    return (_read(proc_root / "sys" / "vm" / "unprivileged_userfaultfd") or "").strip() == "1"


def read_kernel_release(proc_root: Path = DEFAULT_PROC_ROOT) -> str | None:
    text = _read(proc_root / "sys" / "kernel" / "osrelease")
    return text.strip() if text else None


def read_cpu(proc_root: Path = DEFAULT_PROC_ROOT) -> tuple[str | None, str | None, int]:
    """(model name, sha256 of the sorted flags, number of flags) of the first processor."""
    text = _read(proc_root / "cpuinfo") or ""
    model: str | None = None
    flags: list[str] | None = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if model is not None or flags is not None:
                break  # end of the first processor's block
            continue
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:  # "Features" on arm64
            flags = value.split()
    if flags is None:
        return model, None, 0
    unique = sorted(set(flags))
    return model, hashlib.sha256(" ".join(unique).encode()).hexdigest(), len(unique)


def read_namespaces(proc_root: Path = DEFAULT_PROC_ROOT) -> tuple[str, ...]:
    try:
        names = {p.name for p in (proc_root / "self" / "ns").iterdir()}
    except OSError:
        return ()
    return tuple(k for k in NAMESPACE_KINDS if k in names)


def read_overlayfs(proc_root: Path = DEFAULT_PROC_ROOT) -> bool:
    text = _read(proc_root / "filesystems") or ""
    return any(line.split()[-1:] == ["overlay"] for line in text.splitlines())


def read_pipe_max_size(proc_root: Path = DEFAULT_PROC_ROOT) -> int | None:
    text = _read(proc_root / "sys" / "fs" / "pipe-max-size")
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None


def read_cap_sys_resource(proc_root: Path = DEFAULT_PROC_ROOT) -> bool:
    for line in (_read(proc_root / "self" / "status") or "").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def read_cgroup(proc_root: Path = DEFAULT_PROC_ROOT, sys_root: Path = DEFAULT_SYS_ROOT) -> CgroupFacts:
    """The cgroup facts, from the cgroups package's layout reader.

    Raises:
        Unsupported: no cgroup hierarchy is mounted or /proc is unreadable
    """
    from runtime.cgroups import device_policy_for, layout

    lay = layout(proc_root=proc_root, sys_root=sys_root)
    freeze_dir: Path | None = None
    if lay.freezer == "cgroup2" and lay.unified is not None:
        freeze_dir = lay.unified.own_dir
    elif lay.freezer == "v1":
        h = lay.v1_with("freezer")
        freeze_dir = h.own_dir if h else None
    return CgroupFacts(
        mode=lay.mode,
        freezer=lay.freezer,
        freeze_dir=str(freeze_dir) if freeze_dir else None,
        limit_controllers=tuple(sorted(lay.limits)),
        notes=tuple(lay.notes),
        device_policy=device_policy_for(lay)[1].method,
    )


def read_pycriu() -> PycriuFacts:
    """Import pycriu (and its image decoder) in this interpreter; heavy, so only when probing."""
    try:
        import pycriu
        import pycriu.images  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable"
        return PycriuFacts(False, None, f"{type(exc).__name__}: {exc}")
    try:
        from pycriu import version as pycriu_version

        version = str(pycriu_version.__version__)
    except (ImportError, AttributeError):
        version = None
    return PycriuFacts(True, version, None)


def read_seccomp() -> SeccompFacts:
    """libseccomp's version and the default profile, compiled once for the container capabilities
    (what ``run`` does; a profile this libseccomp refuses is reported here, not at the first run)."""
    from runtime import capabilities, seccomp
    from runtime.errors import ContainerError

    try:
        version = seccomp.library_version()
    except ContainerError as exc:
        return SeccompFacts(None, _path_or_none(seccomp.default_profile_path()), str(exc))
    path = seccomp.default_profile_path()
    if path is None:
        return SeccompFacts(version, None, None)
    try:
        seccomp.filter_for(seccomp.DEFAULT, None, capabilities.names())
    except ContainerError as exc:
        return SeccompFacts(version, str(path), str(exc))
    return SeccompFacts(version, str(path), None)


def _path_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


# --- probe and cache ------------------------------------------------------------------------------


def probe(
    *,
    proc_root: Path = DEFAULT_PROC_ROOT,
    sys_root: Path = DEFAULT_SYS_ROOT,
    criu_binary: str | None = None,
    run: RunMany | None = None,
    pycriu_probe: Callable[[], PycriuFacts] = read_pycriu,
    which: Callable[[str], str | None] = shutil.which,
    seccomp_probe: Callable[[], SeccompFacts] = read_seccomp,
) -> HostReport:
    """Probe everything now (uncached). Every source is a parameter so tests can fake it."""
    from runtime.errors import ContainerError

    errors: list[str] = []
    cgroup: CgroupFacts | None = None
    cgroup_error: str | None = None
    try:
        cgroup = read_cgroup(proc_root, sys_root)
    except ContainerError as exc:
        cgroup_error = str(exc)
    except OSError as exc:  # unreadable cgroupfs: report, do not crash the check
        cgroup_error = f"cannot read the cgroup layout: {exc}"
    model, flags_digest, flags_count = read_cpu(proc_root)
    release = read_kernel_release(proc_root)
    if release is None:
        errors.append(f"cannot read {proc_root / 'sys/kernel/osrelease'}")
    report = HostReport(
        kernel_release=release,
        cpu_model=model,
        cpu_flags_sha256=flags_digest,
        cpu_flags_count=flags_count,
        namespaces=read_namespaces(proc_root),
        overlayfs=read_overlayfs(proc_root),
        cgroup=cgroup,
        cgroup_error=cgroup_error,
        criu=probe_criu(criu_binary, run=run),
        pipe_max_size_bytes=read_pipe_max_size(proc_root),
        cap_sys_resource=read_cap_sys_resource(proc_root),
        nft_path=which("nft"),
        pycriu=pycriu_probe(),
        errors=tuple(errors),
        seccomp=seccomp_probe(),
        upper_images_problem=_upper_images_problem(),
    )
    if report.criu.path is not None:
        from runtime.criu_kdat import status as kdat_status

        report = dataclasses.replace(report, criu_kdat=kdat_status(report.criu.path))
    return report


def _upper_images_problem() -> str | None:
    from runtime import upperfs

    try:
        if upperfs.configured_size() == 0:
            return f"{upperfs.ENV_SIZE}=0: plain upper directories"
    except ValueError as exc:
        return str(exc)
    return upperfs.unavailable_reason()


_lock = threading.Lock()
_cached: HostReport | None = None


def host_report(*, refresh: bool = False) -> HostReport:
    """This host's report, probed once per process (``refresh=True`` probes again)."""
    global _cached
    with _lock:
        if _cached is None or refresh:
            _cached = probe()
        return _cached


def supports_checkpoint() -> bool:
    """CRIU >= 4 passes ``criu check`` and pycriu imports."""
    return host_report().features()["checkpoint"]


def supports_dirty_tracking() -> bool:
    """Soft-dirty memory tracking: pre-dump and iterative pre-copy migration."""
    return host_report().features()["dirty_tracking"]


def supports_lazy_pages() -> bool:
    """Post-copy: uffd-noncoop in the kernel and pipes big enough for CRIU's page server."""
    return host_report().features()["lazy_pages"]


def supports_tcp_established() -> bool:
    return host_report().features()["tcp_established"]


def supports_network_lock_nftables() -> bool:
    return host_report().features()["network_lock_nftables"]


def supports_time_namespace() -> bool:
    return host_report().features()["time_namespace"]


def supports_pidfd_store() -> bool:
    return host_report().features()["pidfd_store"]


def supports_overlayfs() -> bool:
    return host_report().overlayfs


def supports_cgroup_freeze() -> bool:
    return host_report().cgroup_freeze


def supports_namespace(kind: str) -> bool:
    return host_report().has_namespace(kind)
