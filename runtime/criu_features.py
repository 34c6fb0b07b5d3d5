"""What the installed CRIU can do on this kernel, asked of CRIU itself.

Every fact comes from running the CRIU binary: ``criu --version`` and ``criu check`` (the basic
checks, which include TCP_REPAIR for established TCP connections, ``check_tcp`` in
criu/cr-check.c), then ``criu check --feature NAME`` for each optional feature. All commands run
at once (each takes ~30 ms) so a probe costs about one ``criu check``.

Facts that matter on this project's machines (see CRIU-NOTES):

- CRIU's RPC ``check`` can fail where the CLI says "Looks good"; the CLI is the reference.
- ``criu check`` exits 0 with warnings (e.g. "Dirty tracking is OFF") that are not failures.
- ``criu check --feature X`` exits 1 both for "not supported" and for "Unknown feature X"; the
  latter (an older or newer CRIU) is reported as unknown (``supported is None``), not as absent.
- Without CAP_SYS_RESOURCE every run logs a harmless RLIMIT_NOFILE warning.

Feature names here are ours; ``FEATURES`` maps them to CRIU's ``--feature`` names.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from runtime.errors import Unsupported

log = logging.getLogger(__name__)

MIN_CRIU_MAJOR = 4

# our name -> the name `criu check --feature` takes (criu/cr-check.c feature_list)
FEATURES: dict[str, str] = {
    "dirty_tracking": "mem_dirty_track",  # soft-dirty: pre-dump / --track-mem (pre-copy)
    "lazy_pages": "uffd-noncoop",  # non-cooperative userfaultfd: restore --lazy-pages (post-copy)
    "tcp_half_closed": "tcp_half_closed",  # half-closed TCP connections with --tcp-established
    "network_lock_nftables": "network_lock_nftables",  # --network-lock nftables
    "time_namespace": "timens",
    "pidfd_store": "pidfd_store",  # pid reuse detection across pre-dumps
    "cgroup_namespace": "cgroupns",
    # ours (scripts/criu-patches/4.1.1-rlimit-proc-limits.patch): without CAP_SYS_RESOURCE, the
    # rlimits of another user's task are read from /proc/PID/limits (prlimit needs the capability)
    "rlimit_proc_limits": "rlimit_proc_limits",
}

_SEARCH_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_VERSION_RE = re.compile(r"^Version:\s*(\d+(?:\.\d+)*)", re.MULTILINE)
_LOG_PREFIX_RE = re.compile(r"^(?:Warn|Error)\s*\([^)]*\):\s*")  # "Warn  (criu/cr-check.c:824): "


@dataclass(frozen=True)
class CommandResult:
    """Exit status and combined stdout+stderr of one command; ``returncode`` -1: did not run."""

    argv: tuple[str, ...]
    returncode: int
    output: str


# Runs several commands (concurrently if it likes) and returns their results in order.
RunMany = Callable[[Sequence[Sequence[str]]], list[CommandResult]]


def run_many(commands: Sequence[Sequence[str]], timeout_s: float = 30.0) -> list[CommandResult]:
    """Start every command at once, then collect each; a command that cannot start gets -1."""
    procs: list[tuple[tuple[str, ...], subprocess.Popen[str] | CommandResult]] = []
    for argv in commands:
        argv_t = tuple(argv)
        log.debug("run %s", " ".join(argv_t))
        try:
            p = subprocess.Popen(
                argv_t,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        except OSError as exc:
            procs.append((argv_t, CommandResult(argv_t, -1, f"cannot run {argv_t[0]}: {exc.strerror}")))
            continue
        procs.append((argv_t, p))
    results: list[CommandResult] = []
    for argv_t, proc in procs:
        if isinstance(proc, CommandResult):
            results.append(proc)
            continue
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            results.append(CommandResult(argv_t, -1, f"timed out after {timeout_s:g}s\n{out}"))
            continue
        results.append(CommandResult(argv_t, proc.returncode, out))
    return results


def find_criu() -> str | None:
    """The CRIU binary the runtime uses: $PYMIGRATE_CRIU, else the first criu in /usr/local then the
    system directories (so a CRIU built by scripts/setup.sh wins over a distribution one)."""
    explicit = os.environ.get("PYMIGRATE_CRIU")
    if explicit:
        return explicit
    return shutil.which("criu", path=os.pathsep.join(_SEARCH_PATH))


def criu_binary() -> str:
    """The CRIU binary: $PYMIGRATE_CRIU, else the first criu in /usr/local then the system paths."""
    found = find_criu()
    if not found:
        raise Unsupported("criu", "no criu binary found", hint="run scripts/setup.sh (builds CRIU 4.1.1)")
    return found


def parse_version(output: str) -> str | None:
    """``4.1.1`` from ``criu --version`` output (``Version: 4.1.1``), or None."""
    m = _VERSION_RE.search(output)
    return m.group(1) if m else None


def version_tuple(version: str | None) -> tuple[int, ...]:
    if not version:
        return ()
    return tuple(int(p) for p in version.split(".") if p.isdigit())


@dataclass(frozen=True)
class FeatureResult:
    """One ``criu check --feature`` answer.

    Attributes:
        name: our name (a key of ``FEATURES``)
        criu_name: the name given to ``--feature``
        supported: True / False, or None when CRIU did not know the feature or could not run
        detail: CRIU's last output line (its reason)
    """

    name: str
    criu_name: str
    supported: bool | None
    detail: str


@dataclass(frozen=True)
class CriuReport:
    """What one CRIU binary said about this host.

    Attributes:
        path: the binary, None when none was found
        version: ``4.1.1``; None when unknown
        check_ok: ``criu check`` exited 0 (basic checks, including TCP repair)
        check_detail: its warning and error lines (``Warn``/``Error``), for the report
        features: every probed feature, in ``FEATURES`` order
        error: why CRIU could not be asked at all
    """

    path: str | None
    version: str | None
    check_ok: bool
    check_detail: tuple[str, ...]
    features: tuple[FeatureResult, ...]
    error: str | None = None

    @property
    def installed(self) -> bool:
        return self.path is not None and self.version is not None

    @property
    def version_ok(self) -> bool:
        v = version_tuple(self.version)
        return bool(v) and v[0] >= MIN_CRIU_MAJOR

    @property
    def usable(self) -> bool:
        """CRIU >= 4 whose ``criu check`` passes: what the core needs."""
        return self.installed and self.version_ok and self.check_ok

    def feature(self, name: str) -> FeatureResult | None:
        return next((f for f in self.features if f.name == name), None)

    def supports(self, name: str) -> bool:
        """True only when CRIU is usable and said the feature is supported."""
        f = self.feature(name)
        return self.usable and f is not None and f.supported is True

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "version": self.version,
            "version_ok": self.version_ok,
            "check_ok": self.check_ok,
            "check_detail": list(self.check_detail),
            "usable": self.usable,
            "error": self.error,
            "features": {
                f.name: {"criu_name": f.criu_name, "supported": f.supported, "detail": f.detail}
                for f in self.features
            },
        }


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # CRIU logs the RLIMIT_NOFILE complaint first when it lacks CAP_SYS_RESOURCE; the verdict
    # is the last line.
    return _LOG_PREFIX_RE.sub("", lines[-1]) if lines else ""


def _feature_result(name: str, criu_name: str, res: CommandResult) -> FeatureResult:
    detail = _last_line(res.output)
    if res.returncode == 0:
        return FeatureResult(name, criu_name, True, detail)
    if res.returncode < 0 or "Unknown feature" in res.output:
        return FeatureResult(name, criu_name, None, detail)
    return FeatureResult(name, criu_name, False, detail)


def probe_criu(
    binary: str | None = None,
    *,
    run: RunMany | None = None,
    features: dict[str, str] | None = None,
) -> CriuReport:
    """Ask CRIU for its version, run ``criu check`` and check each feature.

    Args:
        binary: the CRIU binary; default ``find_criu()``
        run: command runner (tests pass a fake); default ``run_many``
        features: our name -> CRIU feature name; default ``FEATURES``

    Returns:
        a ``CriuReport``; never raises for a missing or broken CRIU (that is a finding)
    """
    features = FEATURES if features is None else features
    run = run or run_many
    path = binary if binary is not None else find_criu()
    unknown = tuple(FeatureResult(n, c, None, "criu not available") for n, c in features.items())
    if path is None:
        return CriuReport(None, None, False, (), unknown, error="no criu binary found")

    names = list(features.items())
    commands = [[path, "--version"], [path, "check"]]
    commands += [[path, "check", "--feature", criu_name] for _, criu_name in names]
    results = run(commands)
    ver_res, check_res, feat_res = results[0], results[1], results[2:]

    if ver_res.returncode != 0:
        msg = _last_line(ver_res.output) or f"exit status {ver_res.returncode}"
        return CriuReport(path, None, False, (), unknown, error=f"{path} --version failed: {msg}")
    version = parse_version(ver_res.output)
    detail = tuple(
        line.strip()
        for line in check_res.output.splitlines()
        if line.startswith(("Warn", "Error")) and "RLIMIT_NOFILE" not in line
    )
    if check_res.returncode != 0 and not detail:
        detail = (_last_line(check_res.output) or f"exit status {check_res.returncode}",)
    found = tuple(_feature_result(n, c, r) for (n, c), r in zip(names, feat_res))
    report = CriuReport(path, version, check_res.returncode == 0, detail, found)
    log.debug("criu %s at %s: check_ok=%s features=%s", version, path, report.check_ok,
              {f.name: f.supported for f in found})
    return report
