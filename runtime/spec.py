"""What a container is: its spec (what the user asked for) and its recorded state.

Both are frozen dataclasses serialised as JSON in the state store, embedded in checkpoint
manifests and carried by the gRPC API, so their field names are part of the on-disk format.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from runtime.ports import PortMapping

NetworkMode = Literal["bridge", "none", "host", "container"]  # container: network_container's (runtime/ns_modes.py)
Status = Literal["created", "running", "paused", "exited"]


@dataclass(frozen=True)
class Volume:
    source: str  # absolute host path (a named volume's: its data dir on this host, runtime/volumes.py)
    target: str  # absolute path inside the container
    readonly: bool = False
    # a named volume's name ("": a bind mount of ``source``); its source is resolved on each host
    name: str = ""


@dataclass(frozen=True)
class ContainerSpec:
    container_id: str  # 32 hex chars, random, unique per state root
    name: str
    image: str  # image name as given by the user
    image_digest: str  # "sha256:<hex>" of the image rootfs
    command: tuple[str, ...]
    env: tuple[str, ...] = ()  # "KEY=VALUE"
    workdir: str = "/"
    hostname: str = ""
    memory_bytes: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    network: NetworkMode = "bridge"
    ip: str | None = None  # bridge address (no prefix); None for --network none
    mac: str | None = None
    # run -p/-P, restore --publish: host ports forwarded to the container (runtime/ports.py), each
    # with its host port chosen (0 only before the start); rules in runtime/port_rules.py
    ports: tuple[PortMapping, ...] = ()
    volumes: tuple[Volume, ...] = ()
    cgroup_parent: str | None = None
    created_at: float = 0.0  # unix time, seconds
    seccomp: str = "default"  # default (the host's profile) | unconfined | custom (runtime/seccomp.py)
    seccomp_profile: str | None = None  # a custom profile's JSON text: its content, never a host path
    user: str = ""  # USER[:GROUP] as asked (-u, else the image's User); resolved in the container at start; "": root
    stop_signal: str = ""  # what stop sends first (--stop-signal, else the image's StopSignal); "": SIGTERM
    # run -d --rm: its shim removes it once it exited by itself (not after a checkpoint's or a
    # migration's kill: runtime.runtime.auto_remove); kept across checkpoint, restore and migration
    auto_remove: bool = False
    # run --read-only: the root mount is read-only (volumes keep their mode; /dev, /dev/shm,
    # /dev/mqueue and /.pymigrate stay writable, /proc/sys and /sys read-only as always)
    read_only: bool = False
    # run --cap-add/--cap-drop: capability names (CAP_NET_RAW) or ALL, applied to the default set
    # (runtime.capabilities.container_caps) for the init, every exec and a restart
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    # run -t: the init's stdio is a pty whose master the shim holds; run -i: the shim holds its stdin
    # (the pty, or a pipe without -t); clients reach both through `attach` (runtime/console.py)
    tty: bool = False
    interactive: bool = False
    # run --restart: no | on-failure[:N] | always | unless-stopped, kept by the shim
    # (runtime/restart.py); kept across checkpoint, restore and migration
    restart: str = "no"
    # run --init: tini (the host's static build, bound read-only into the container) is PID 1 and
    # runs the command as its child: it forwards signals to it and reaps orphans (runtime/init_binary.py)
    init: bool = False
    # run --userns auto: the container's ids 0..userns_size-1 are host ids userns_base.. (runtime/userns.py);
    # "": the host's ids. The range belongs to this host: a restore or migration may give another one
    userns: str = ""
    userns_base: int = 0
    userns_size: int = 0
    # run --pid/--ipc/--uts host|container:NAME, --cgroupns host, --network container:NAME: which
    # namespaces are not its own, "private" | "host" | "container:<ID>" (by id: a rename keeps it);
    # network "container" joins network_container's (runtime/ns_modes.py; never checkpointed)
    pid_mode: str = "private"
    ipc_mode: str = "private"
    uts_mode: str = "private"
    cgroupns_mode: str = "private"
    network_container: str = ""
    # run --label/--label-file: the user's KEY=VALUE metadata (runtime/labels.py), kept across
    # checkpoint, restore and migration
    labels: dict[str, str] = field(default_factory=dict)
    # a container imported from podman/CRI-O (migrate/interop/podman_import.py): the destinations of the
    # bind mounts its engine made (/etc/hosts, /dev/shm, cgroup binds ...), restored from the images and
    # mapped onto files and cgroups of its own here; every dump declares them external again
    engine_mounts: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ContainerSpec":
        data = dict(data)
        data["command"] = tuple(data.get("command", ()))
        data["env"] = tuple(data.get("env", ()))
        for key in ("cap_add", "cap_drop", "engine_mounts"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        data["volumes"] = tuple(Volume(**v) for v in data.get("volumes", ()))
        if isinstance(data.get("ports"), (list, tuple)):
            data["ports"] = tuple(PortMapping.from_dict(p) for p in data["ports"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def readdressed(spec: ContainerSpec, ip: str | None) -> ContainerSpec:
    """``spec`` moved to address ``ip`` (restore ``--ip``, a migration's reserved address).

    A new address drops the recorded MAC, so the restore gives the copy a fresh random one
    (``runtime.network.random_mac``): the network namespace is external to CRIU and eth0
    is made anew, with the spec's MAC, so a copy restored beside its running original under
    another address would otherwise answer ARP with the original's MAC, and the bridge would
    send the original's frames to the copy. The same address (or none given) keeps the MAC."""
    if not ip or ip == spec.ip:
        return spec
    return dataclasses.replace(spec, ip=ip, mac=None)


@dataclass(frozen=True)
class FreezeRecord:
    """Who froze a container and what it leaves behind if it dies (runtime/freeze_record.py).

    Written into the state record *before* the cgroup is frozen, removed after the thaw (or the
    kill of a checkpointed tree). A later command that finds it with its process gone thaws the
    container (unless it was paused before) and removes ``partial`` (export temp file, scratch)."""

    pid: int
    pid_start: int  # the process's start time (clock ticks, /proc/PID/stat field 22): pid reuse
    operation: str  # checkpoint, migrate
    since: float  # unix time, seconds
    was_paused: bool = False  # paused before: recovery keeps it frozen
    recover: bool = True  # False: another record settles it (a migration's outgoing record)
    partial: tuple[str, ...] = ()  # files and dirs to remove when the operation died

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FreezeRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["partial"] = tuple(data.get("partial", ()))
        return cls(**data)


@dataclass(frozen=True)
class ContainerState:
    status: Status = "created"
    pid: int = 0  # host pid of the container's init (0 when not running)
    shim_pid: int = 0  # host pid of the monitor that reaps init and records its exit
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    restored_from: str | None = None  # checkpoint id when the process tree came from a restore
    checkpointed: str | None = None  # checkpoint id (or "migrated") when a dump ended this run
    frozen_by: FreezeRecord | None = None  # an operation froze it (recorded before the freeze)
    restart_count: int = 0  # how often its restart policy started it again (runtime/restart.py)
    manually_stopped: bool = False  # stop/kill by the user: no restart (unless-stopped: not even on a daemon start)
    # derived when shown (runtime.runtime._info), never recorded: its namespaces that are not its own,
    # kind -> "host" | "container:NAME"; inspect only: who joins its namespaces, name -> "net,pid"
    shared_namespaces: dict[str, str] = field(default_factory=dict)
    namespace_users: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ContainerState":
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        if isinstance(data.get("frozen_by"), dict):
            data["frozen_by"] = FreezeRecord.from_dict(data["frozen_by"])
        return cls(**data)


@dataclass(frozen=True)
class ContainerInfo:
    """Spec, state and derived facts, as ``inspect`` shows them."""

    spec: ContainerSpec
    state: ContainerState
    bundle_dir: str = ""
    cgroup: dict[str, str] = field(default_factory=dict)
    memory_current_bytes: int | None = None
    pids_current: int | None = None
