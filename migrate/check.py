"""``pymigrate check``: is this host ready to run, checkpoint and migrate containers?

Turns a ``runtime.host.HostReport`` into check items. An item is ``ok``, ``missing`` (something
the core needs: the host is not ready, the CLI exits 1) or ``warning`` (an optional feature is
unavailable, e.g. pre-copy without soft-dirty tracking; the core still works). Every item that is
not ok carries a hint saying how to get it.

What the core needs: CRIU >= 4 passing ``criu check``, pycriu, overlayfs, a cgroup freezer, the
pid, mnt, net, uts, ipc and cgroup namespaces, and a CRIU that can read the rlimits of processes
running under another uid (CAP_SYS_RESOURCE, or our patched CRIU's /proc/PID/limits fallback):
real servers drop privileges, and a host that cannot dump them is not ready. Post-copy (lazy
pages) and pre-copy (dirty tracking) are optional; so is CAP_SYS_RESOURCE itself, whose absence
is a warning saying what it limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from runtime.host import PIPE_MAX_SIZE_MIN_BYTES, HostReport, SeccompFacts

Status = Literal["ok", "missing", "warning"]

REQUIRED_NAMESPACES = ("pid", "mnt", "net", "uts", "ipc", "cgroup")
SETUP_HINT = "run scripts/setup.sh"


@dataclass(frozen=True)
class CheckItem:
    """One finding. ``required`` items that are not ok make the host not ready."""

    name: str
    status: Status
    required: bool
    detail: str
    hint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "required": self.required,
            "detail": self.detail,
            "hint": self.hint,
        }


@dataclass(frozen=True)
class CheckResult:
    items: tuple[CheckItem, ...]
    report: HostReport

    @property
    def ok(self) -> bool:
        """Everything the core needs is present (warnings allowed)."""
        return not self.missing

    @property
    def missing(self) -> tuple[CheckItem, ...]:
        return tuple(i for i in self.items if i.status == "missing")

    @property
    def warnings(self) -> tuple[CheckItem, ...]:
        return tuple(i for i in self.items if i.status == "warning")

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "missing": [i.name for i in self.missing],
            "warnings": [i.name for i in self.warnings],
            "items": [i.as_dict() for i in self.items],
            "host": self.report.as_dict(),
        }


def _need(name: str, good: bool, detail: str, hint: str | None) -> CheckItem:
    return CheckItem(name, "ok" if good else "missing", True, detail, None if good else hint)


def _want(name: str, good: bool, detail: str, hint: str | None) -> CheckItem:
    return CheckItem(name, "ok" if good else "warning", False, detail, None if good else hint)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


def evaluate(report: HostReport) -> CheckResult:
    """Judge a host report: one item per thing the core needs or an optional feature uses."""
    items: list[CheckItem] = []
    c = report.criu

    # --- required -------------------------------------------------------------------------------
    if c.path is None:
        items.append(_need("criu", False, "no criu binary found", f"{SETUP_HINT} (builds CRIU >= 4 into /usr/local/sbin)"))
    elif not c.installed:
        items.append(_need("criu", False, f"{c.path} does not run: {c.error}", f"{SETUP_HINT} (rebuilds CRIU)"))
    elif not c.version_ok:
        items.append(
            _need("criu", False, f"{c.path} is version {c.version}, need >= 4.0",
                  f"{SETUP_HINT} (builds CRIU >= 4 into /usr/local/sbin, ahead of the old one on PATH)")
        )
    elif not c.check_ok:
        why = "; ".join(c.check_detail) or "criu check failed"
        items.append(_need("criu", False, f"{c.path} {c.version}: criu check fails: {why}",
                           "see 'criu check' output; the kernel may lack a feature CRIU needs"))
    else:
        items.append(_need("criu", True, f"{c.version} at {c.path}, criu check passes", None))

    p = report.pycriu
    items.append(
        _need("pycriu", p.importable,
              f"{p.version or 'unknown version'} importable" if p.importable else f"not importable: {p.error}",
              f"{SETUP_HINT} (installs pycriu from the CRIU source tree into .venv)")
    )
    if p.importable and c.version and p.version and p.version != c.version:
        items.append(_want("pycriu version", False, f"pycriu {p.version} does not match criu {c.version}",
                           f"{SETUP_HINT} (reinstalls the matching pycriu)"))

    items.append(_need("overlayfs", report.overlayfs,
                       "listed in /proc/filesystems" if report.overlayfs else "not in /proc/filesystems",
                       "modprobe overlay (kernel needs CONFIG_OVERLAY_FS)"))

    if report.cgroup is None:
        items.append(_need("cgroup freezer", False, report.cgroup_error or "cgroup layout unreadable",
                           "mount cgroup2 at /sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup)"))
    else:
        cg = report.cgroup
        if cg.freezer == "none":
            detail = f"cgroup mode {cg.mode}: neither cgroup.freeze nor the v1 freezer is usable"
        else:
            how = "cgroup.freeze" if cg.freezer == "cgroup2" else "v1 freezer.state"
            detail = f"cgroup mode {cg.mode}, {how} below {cg.freeze_dir}"
        items.append(_need("cgroup freezer", cg.freezer != "none", detail,
                           "mount cgroup2 (kernel >= 5.2 has cgroup.freeze) or the v1 freezer controller"))

    absent = [k for k in REQUIRED_NAMESPACES if not report.has_namespace(k)]
    items.append(
        _need("namespaces", not absent,
              f"have {' '.join(report.namespaces)}" if not absent else f"kernel lacks {' '.join(absent)} namespaces",
              "a kernel built with " + ", ".join(f"CONFIG_{k.upper()}_NS" for k in absent))
    )

    items.append(_other_uids(report))
    if report.seccomp is not None:
        items.append(_seccomp(report.seccomp))

    # --- optional -------------------------------------------------------------------------------
    items.append(_cap_sys_resource(report))
    if report.cgroup is not None:
        items.append(_device_policy(report.cgroup.device_policy))
    size = report.pipe_max_size_bytes
    size_text = "unknown" if size is None else f"{size} ({_mib(size)})"
    if report.cap_sys_resource:
        pipe_detail = f"fs.pipe-max-size {size_text}; CAP_SYS_RESOURCE lifts the limit"
    else:
        pipe_detail = f"fs.pipe-max-size {size_text}, post-copy needs >= {PIPE_MAX_SIZE_MIN_BYTES}"
    items.append(_want("pipe size for post-copy", report.pipe_size_ok, pipe_detail,
                       f"sysctl -w fs.pipe-max-size={PIPE_MAX_SIZE_MIN_BYTES} ({SETUP_HINT} does it and persists it)"))

    kdat = report.criu_kdat
    if kdat is not None and c.installed:
        items.append(_want("criu kernel-feature cache", kdat.ok, kdat.detail,
                           f"{SETUP_HINT} (builds CRIU with its cache dir on a small tmpfs); 'pymigrate daemon' "
                           "mounts that tmpfs again after a reboot"))

    problem = report.upper_images_problem
    items.append(_want("upper-layer images", problem is None,
                       "each container's writable layer on its own ext4 image: inode numbers survive restore and migration"
                       if problem is None else f"{problem}: restored files get new inode numbers (SQLite refuses to write)",
                       "a kernel with loop devices (/dev/loop-control) and e2fsprogs; PYMIGRATE_UPPER_SIZE unset or a size"))
    items.append(_feature(report, "lazy_pages", "lazy pages (post-copy)",
                          "kernel needs non-cooperative userfaultfd (CONFIG_USERFAULTFD, Linux >= 4.11)"))
    items.append(_feature(report, "dirty_tracking", "dirty tracking (pre-copy)",
                          "kernel needs soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY); without it migration "
                          "is stop-and-copy or post-copy"))
    items.append(_feature(report, "network_lock_nftables", "nftables network lock",
                          "apt-get install nftables (and a kernel with nf_tables)"))
    items.append(_feature(report, "tcp_half_closed", "half-closed tcp connections",
                          "a newer kernel (TCP repair of half-closed sockets)"))
    items.append(_feature(report, "time_namespace", "time namespace", "kernel needs CONFIG_TIME_NS (Linux >= 5.6)"))
    items.append(_feature(report, "pidfd_store", "pidfd store", "kernel needs pidfd_open/pidfd_getfd (Linux >= 5.6)"))
    return CheckResult(tuple(items), report)


RLIMIT_PATCH = "scripts/criu-patches/4.1.1-rlimit-proc-limits.patch"


def _other_uids(report: HostReport) -> CheckItem:
    """Can CRIU dump a process running under another uid? prlimit(2) on it needs CAP_SYS_RESOURCE."""
    name = "dump under other uids"
    if report.cap_sys_resource:
        return _need(name, True, "CAP_SYS_RESOURCE: criu reads every task's rlimits with prlimit", None)
    if report.rlimit_fallback is None:
        return _want(name, False, "unknown: criu is not usable", SETUP_HINT)
    if report.rlimit_fallback:
        return _need(name, True, "criu reads other users' rlimits from /proc/PID/limits (patched)", None)
    return _need(
        name, False,
        "no CAP_SYS_RESOURCE and criu lacks the /proc/PID/limits fallback: a process running under "
        "another uid (any server that drops privileges) fails to dump with \"Can't get rlimit 0\"",
        f"{SETUP_HINT} (builds CRIU with {RLIMIT_PATCH}), or run with CAP_SYS_RESOURCE",
    )


def _cap_sys_resource(report: HostReport) -> CheckItem:
    """CAP_SYS_RESOURCE is optional; its absence is a warning listing what it limits."""
    name = "CAP_SYS_RESOURCE"
    if report.cap_sys_resource:
        return _want(name, True, "held: criu reads and restores any rlimit; pipes may exceed fs.pipe-max-size", None)
    if report.rlimit_fallback:
        # the same patch makes the restorer check setrlimit's result
        reading = "criu reads other users' rlimits from /proc/PID/limits"
        raising = "a restore needing a hard limit above the restoring criu's own fails, naming it"
    else:
        reading = "criu cannot read other users' rlimits"
        raising = "a limit whose hard value is above the restoring criu's is silently left at criu's (unpatched criu)"
    detail = f"not held (CapEff bit 24): {reading}; {raising}; pipes stop at fs.pipe-max-size"
    hint = ("grant CAP_SYS_RESOURCE to pymigrate (or its daemon), or start the daemon with hard limits "
            "(ulimit -H, systemd Limit*=) at least those of the containers it restores")
    return _want(name, False, detail, hint)


_DEVICE_POLICY = {
    "v1": "containers keep to the standard devices through the v1 devices controller",
    "bpf": "containers keep to the standard devices through a cgroup2 BPF device program",
}


def _device_policy(method: str) -> CheckItem:
    """runc's default device list for every container (runtime/cgroups/devices.py)."""
    if method in _DEVICE_POLICY:
        return _want("device policy", True, _DEVICE_POLICY[method], None)
    return _want("device policy", False,
                 "no devices controller and no cgroup2: containers can open any device node they create",
                 "mount cgroup2 (a BPF device program) or the v1 devices controller")


def _seccomp(facts: SeccompFacts) -> CheckItem:
    """Every container runs under the default profile unless asked otherwise: ``run`` refuses
    rather than run one unconfined, so a host without it is missing something required."""
    from runtime.seccomp import INSTALL_HINT

    name = "seccomp"
    if facts.libseccomp is None:
        return _need(name, False, f"libseccomp cannot be loaded: {facts.error}", "apt-get install libseccomp2")
    if facts.default_profile is None:
        return _need(name, False, f"libseccomp {facts.libseccomp}, but no default profile: run refuses containers "
                     "without --security-opt seccomp=unconfined|FILE", INSTALL_HINT)
    if facts.error is not None:
        return _need(name, False, f"default profile {facts.default_profile} does not compile: {facts.error}", INSTALL_HINT)
    return _need(name, True, f"libseccomp {facts.libseccomp}, default profile {facts.default_profile}", None)


def _feature(report: HostReport, key: str, label: str, hint: str) -> CheckItem:
    good = report.features()[key]
    if not report.criu.usable:
        return _want(label, False, "unknown: criu is not usable", SETUP_HINT)
    f = report.criu.feature(key)
    detail = f.detail if f is not None else ""
    if key == "network_lock_nftables" and report.nft_path is None:
        detail = "nft binary not found; " + detail
    if key == "lazy_pages" and not good and f is not None and f.supported:
        detail = f"criu supports it but fs.pipe-max-size is below {PIPE_MAX_SIZE_MIN_BYTES}"
        hint = f"sysctl -w fs.pipe-max-size={PIPE_MAX_SIZE_MIN_BYTES} ({SETUP_HINT})"
    return _want(label, good, detail or ("supported" if good else "not supported"), hint)


_MARK = {"ok": "ok", "missing": "MISSING", "warning": "warning"}


def render_text(result: CheckResult) -> str:
    """A readable report: host facts, one line per item (with a hint when not ok), a verdict."""
    r = result.report
    lines = [f"kernel   {r.kernel_release or 'unknown'}"]
    digest = (r.cpu_flags_sha256 or "unknown")[:16]
    lines.append(f"cpu      {r.cpu_model or 'unknown'} ({r.cpu_flags_count} flags, sha256 {digest}...)")
    if r.cgroup is not None:
        ctrls = " ".join(r.cgroup.limit_controllers) or "none"
        lines.append(f"cgroups  {r.cgroup.mode}, freezer {r.cgroup.freezer}, limit controllers {ctrls}")
        lines.extend(f"         note: {n}" for n in r.cgroup.notes)
    lines.append("")
    width = max(len(i.name) for i in result.items)
    for item in result.items:
        lines.append(f"{_MARK[item.status]:<8} {item.name:<{width}}  {item.detail}")
        if item.hint:
            lines.append(f"{'':<8} {'':<{width}}  hint: {item.hint}")
    lines.append("")
    if result.ok:
        extra = f" ({len(result.warnings)} optional feature(s) unavailable)" if result.warnings else ""
        lines.append(f"ready: this host can run, checkpoint and restore containers{extra}")
    else:
        lines.append("not ready, missing: " + ", ".join(i.name for i in result.missing))
    return "\n".join(lines)
