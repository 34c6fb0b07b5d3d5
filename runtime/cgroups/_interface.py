"""The cgroup interface every backend implements and every caller sees: ``CgroupManager`` and its
records. A leaf of the package: the backends import it, ``runtime.cgroups`` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from runtime.freezer import FreezerState


@dataclass(frozen=True)
class Limits:
    """Resource limits of one container. ``None`` means unlimited."""

    memory_bytes: int | None = None
    cpu_quota_us: int | None = None  # per cpu_period_us; --cpus 0.5 -> 50000/100000
    cpu_period_us: int = 100_000
    pids_max: int | None = None


@dataclass(frozen=True)
class CgroupStats:
    memory_current_bytes: int | None = None
    memory_max_bytes: int | None = None
    oom_kills: int = 0  # processes killed by the OOM killer inside this cgroup
    pids_current: int | None = None
    cpu_usage_us: int | None = None


@dataclass(frozen=True)
class CgroupInfo:
    """Where one container's cgroup lives: hierarchy name -> absolute directory.

    Hierarchy names: ``unified`` for cgroup2 (in both v2 and hybrid), v1 controller names
    (``memory``, ``cpu``, ``pids``, ``freezer``, ...) in hybrid and v1.
    """

    name: str
    dirs: dict[str, Path] = field(default_factory=dict)


class CgroupManager(Protocol):
    """Creates, limits, freezes and removes container cgroups.

    Does not decide whether an operation is legal for a container (``Container`` does) and never
    touches a cgroup it did not create, except to read its own position.
    """

    mode: str  # "v2" | "hybrid" | "v1"

    def create(self, name: str, limits: Limits) -> CgroupInfo:
        """Create cgroup ``name`` below the parent in every hierarchy and apply ``limits``."""
        ...

    def info(self, name: str) -> CgroupInfo: ...

    def add_pid(self, name: str, pid: int) -> None:
        """Move ``pid`` into the cgroup in every hierarchy."""
        ...

    def set_limits(self, name: str, limits: Limits) -> None: ...

    def freeze(self, name: str, timeout_s: float = 10.0) -> None:
        """Freeze and wait (bounded) until the kernel reports frozen; raise FreezeTimeout."""
        ...

    def thaw(self, name: str, timeout_s: float = 10.0) -> None: ...

    def freezer_state(self, name: str) -> FreezerState: ...

    def pids(self, name: str) -> list[int]:
        """Every pid in the cgroup (recursively)."""
        ...

    def kill(self, name: str) -> None:
        """SIGKILL every process (cgroup.kill where present)."""
        ...

    def stats(self, name: str) -> CgroupStats: ...

    def destroy(self, name: str, timeout_s: float = 5.0) -> None:
        """Remove the cgroup in every hierarchy; kills leftovers first. Missing is fine."""
        ...

    def exists(self, name: str) -> bool: ...
