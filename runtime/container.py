"""The ``Container`` object: a spec, its recorded state, and the lifecycle rules.

State machine::

    created ──start──> running ──pause──> paused
                          ^  <──unpause──   │
                          │                 │
                        (restore)           │
                          │                 v
    exited <──────────── exit / stop / kill ┘  (from running or paused)

Which operations are legal in which state is decided here and only here (``require``); the
runtime performs them. Illegal ones raise ``InvalidState`` with ``expected`` and ``actual``.
The module also validates user input that does not need the host (sizes, cpus, volumes, env).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

from runtime.errors import InvalidArgument, InvalidState
from runtime.spec import ContainerSpec, ContainerState, Volume

# operation -> states in which it is legal
LEGAL: Mapping[str, tuple[str, ...]] = {
    "start": ("created",),
    "stop": ("running", "paused"),
    "kill": ("running", "paused"),
    "pause": ("running",),
    "unpause": ("paused",),
    "exec": ("running",),
    "checkpoint": ("running", "paused"),
    "remove": ("created", "exited"),
    "force-remove": ("created", "running", "paused", "exited"),
    "restore": ("created",),
}

# operation -> state after it succeeded
RESULT: Mapping[str, str] = {
    "start": "running",
    "pause": "paused",
    "unpause": "running",
    "restore": "running",
}

MIN_MEMORY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Container:
    spec: ContainerSpec
    state: ContainerState

    @property
    def container_id(self) -> str:
        return self.spec.container_id

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def status(self) -> str:
        return self.state.status

    @property
    def is_live(self) -> bool:
        """Whether processes may exist (running or paused)."""
        return self.state.status in ("running", "paused")

    def require(self, operation: str) -> None:
        """Raise ``InvalidState`` unless ``operation`` is legal in the current state."""
        legal = LEGAL[operation]
        if self.state.status not in legal:
            raise InvalidState(self.spec.name, operation, self.state.status, legal)

    def next_status(self, operation: str) -> str:
        self.require(operation)
        return RESULT[operation]


# -- input validation ---------------------------------------------------------------------------

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)")
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}


def parse_size(text: str, what: str = "memory size") -> int:
    """Bytes for ``256M``, ``1.5g``, ``512KiB``, ``1048576`` (binary units, like docker).

    Raises:
        InvalidArgument: anything else, naming the value.
    """
    m = _SIZE_RE.fullmatch(text.strip())
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise InvalidArgument(f"invalid {what} {text!r}: expected a number with an optional b, k, m, g or t suffix (e.g. 256m)")
    return int(float(m.group(1)) * _UNITS[unit])


def validate_memory(memory_bytes: int | None) -> int | None:
    if memory_bytes is not None and memory_bytes < MIN_MEMORY_BYTES:
        raise InvalidArgument(f"memory limit {memory_bytes} bytes is too small: expected at least 4m")
    return memory_bytes


def validate_cpus(cpus: float | None, ncpu: int | None = None) -> float | None:
    if cpus is None:
        return None
    ncpu = ncpu or os.cpu_count() or 1
    if not (cpus > 0) or cpus > ncpu:
        raise InvalidArgument(f"invalid --cpus {cpus:g}: expected a number above 0 and at most {ncpu} (the cpus of this host)")
    return cpus


def validate_pids_limit(pids: int | None) -> int | None:
    if pids is not None and pids < 1:
        raise InvalidArgument(f"invalid --pids-limit {pids}: expected a positive number")
    return pids


def parse_volume(text: str) -> Volume:
    """``HOSTDIR:CTRDIR[:ro|rw]`` -> Volume with an absolute, existing source.

    Raises:
        InvalidArgument: malformed, missing source, relative target, unknown mode.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgument(f"invalid volume {text!r}: expected HOSTDIR:CTRDIR[:ro]")
    readonly = False
    if len(parts) == 3:
        if parts[2] not in ("ro", "rw"):
            raise InvalidArgument(f"invalid volume mode {parts[2]!r} in {text!r}: expected ro or rw")
        readonly = parts[2] == "ro"
    return validate_volume(Volume(source=os.path.abspath(parts[0]), target=parts[1], readonly=readonly))


def validate_volume(vol: Volume) -> Volume:
    if not os.path.isabs(vol.source):
        raise InvalidArgument(f"invalid volume source {vol.source!r}: expected an absolute host path")
    if not os.path.exists(vol.source):
        raise InvalidArgument(f"volume source {vol.source} does not exist")
    if not os.path.isabs(vol.target):
        raise InvalidArgument(f"invalid volume target {vol.target!r}: expected an absolute path inside the container")
    target = os.path.normpath(vol.target)
    if ".." in vol.target.split("/") or target == "/":
        raise InvalidArgument(f"invalid volume target {vol.target!r}: expected a path below / without '..'")
    return Volume(source=os.path.realpath(vol.source), target=target, readonly=vol.readonly)


def validate_env(env: tuple[str, ...]) -> tuple[str, ...]:
    for item in env:
        key = item.split("=", 1)[0]
        if "=" not in item or not key or "\0" in item:
            raise InvalidArgument(f"invalid environment variable {item!r}: expected KEY=VALUE")
    return env


def validate_workdir(workdir: str) -> str:
    if not os.path.isabs(workdir) or "\0" in workdir:
        raise InvalidArgument(f"invalid working directory {workdir!r}: expected an absolute path")
    return os.path.normpath(workdir)


_HOSTNAME_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})")


def validate_hostname(hostname: str) -> str:
    if not _HOSTNAME_RE.fullmatch(hostname):
        raise InvalidArgument(f"invalid hostname {hostname!r}: expected 1-63 letters, digits, '.' or '-'")
    return hostname
