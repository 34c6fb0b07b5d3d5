"""An in-memory ``CgroupManager`` for unit tests of code that uses cgroups (Container, checkpoint).

It records every call in ``calls`` as ``(method, name, *args)``, keeps limits, pids and the freezer
state per cgroup, and raises the same errors as the real backends: ``CgroupError`` for a cgroup
that does not exist (or exists on create), ``FreezeTimeout`` when ``freeze_timeout`` is set,
``InvalidArgument`` for a bad name. It never touches the kernel: ``kill`` only forgets pids.

To test the real backends against a file tree use tests/fakes/cgroupfs.py instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.cgroups import CgroupInfo, CgroupStats, FreezerState, Limits
from runtime.errors import CgroupError, FreezeTimeout, InvalidArgument


@dataclass
class FakeCgroup:
    limits: Limits
    pids: set[int] = field(default_factory=set)
    state: FreezerState = "thawed"
    oom_kills: int = 0
    cpu_usage_us: int = 0
    memory_current_bytes: int = 0


class FakeCgroupManager:
    """Implements ``runtime.cgroups.CgroupManager`` in memory.

    Args:
        mode: what ``mode`` reports ("v2", "hybrid" or "v1")
        root: the pretend directory the cgroups live under (only used in ``CgroupInfo``)
        freeze_timeout: make freeze (and thaw) raise FreezeTimeout, leaving the state "freezing"
    """

    def __init__(self, mode: str = "v2", root: Path = Path("/fake/cgroup/pymigrate"), *, freeze_timeout: bool = False) -> None:
        self.mode = mode
        self.root = root
        self.freeze_timeout = freeze_timeout
        self.cgroups: dict[str, FakeCgroup] = {}
        self.calls: list[tuple[Any, ...]] = []

    def _get(self, name: str) -> FakeCgroup:
        try:
            return self.cgroups[name]
        except KeyError:
            raise CgroupError(f"cgroup {name} does not exist: missing {self.root / name}") from None

    def create(self, name: str, limits: Limits) -> CgroupInfo:
        self.calls.append(("create", name, limits))
        if not name or "/" in name or name in (".", ".."):
            raise InvalidArgument(f"invalid cgroup name {name!r}: expected one path component without '/'")
        if name in self.cgroups:
            raise CgroupError(f"cgroup {name} already exists at {self.root / name}")
        self.cgroups[name] = FakeCgroup(limits=limits)
        return self.info(name)

    def info(self, name: str) -> CgroupInfo:
        self._get(name)
        return CgroupInfo(name=name, dirs={"unified": self.root / name})

    def add_pid(self, name: str, pid: int) -> None:
        self.calls.append(("add_pid", name, pid))
        for other in self.cgroups.values():
            other.pids.discard(pid)
        self._get(name).pids.add(pid)

    def set_limits(self, name: str, limits: Limits) -> None:
        self.calls.append(("set_limits", name, limits))
        self._get(name).limits = limits

    def freeze(self, name: str, timeout_s: float = 10.0) -> None:
        self.calls.append(("freeze", name, timeout_s))
        cg = self._get(name)
        if self.freeze_timeout:
            cg.state = "freezing"
            raise FreezeTimeout(name, "frozen", timeout_s)
        cg.state = "frozen"

    def thaw(self, name: str, timeout_s: float = 10.0) -> None:
        self.calls.append(("thaw", name, timeout_s))
        self._get(name).state = "thawed"

    def freezer_state(self, name: str) -> FreezerState:
        return self._get(name).state

    def pids(self, name: str) -> list[int]:
        return sorted(self._get(name).pids)

    def kill(self, name: str) -> None:
        self.calls.append(("kill", name))
        self._get(name).pids.clear()

    def stats(self, name: str) -> CgroupStats:
        cg = self._get(name)
        return CgroupStats(
            memory_current_bytes=cg.memory_current_bytes,
            memory_max_bytes=cg.limits.memory_bytes,
            oom_kills=cg.oom_kills,
            pids_current=len(cg.pids),
            cpu_usage_us=cg.cpu_usage_us,
        )

    def destroy(self, name: str, timeout_s: float = 5.0) -> None:
        self.calls.append(("destroy", name))
        self.cgroups.pop(name, None)

    def exists(self, name: str) -> bool:
        return name in self.cgroups

    def called(self, method: str) -> list[tuple[Any, ...]]:
        """The recorded calls of one method."""
        return [c for c in self.calls if c[0] == method]
