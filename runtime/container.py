"""The ``Container`` object: a spec, its recorded state, and the lifecycle rules.

State machine::

    created ──start──> running ──pause──> paused
                          ^  <──unpause──   │
                          │                 │
                        (restore)           │
                          │                 v
    exited <──────────── exit / stop / kill ┘  (from running or paused)
    exited ──start──> running  (its writable layer kept; not a checkpointed one: restore that)

Which operations are legal in which state is decided here and only here (``require``); the
runtime performs them. Illegal ones raise ``InvalidState`` with ``expected`` and ``actual``.
The module also validates user input that does not need the host (sizes, cpus, volumes, env).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Mapping, TypedDict, TypeVar, overload

from runtime.errors import InvalidArgument, InvalidSpec, InvalidState
from runtime.ports import PortMapping
from runtime.spec import ContainerSpec, ContainerState, Status, Volume

if TYPE_CHECKING:
    from runtime.cgroups import Limits

# operation -> states in which it is legal
LEGAL: Mapping[str, tuple[str, ...]] = {
    "start": ("created", "exited"),  # exited: again, in its container as it is (runtime/start.py)
    "stop": ("running", "paused"),
    "kill": ("running", "paused"),
    "pause": ("running",),
    "unpause": ("paused",),
    "exec": ("running",),
    "attach": ("running", "paused"),
    "checkpoint": ("running", "paused"),
    "remove": ("created", "exited"),
    "force-remove": ("created", "running", "paused", "exited"),
    "restore": ("created",),
}

# operation -> state after it succeeded
RESULT: Mapping[str, Status] = {
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

    def next_status(self, operation: str) -> Status:
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


def limits_of(spec: ContainerSpec) -> Limits:
    """The cgroup limits ``spec`` asks for (run and restore create the cgroup with them)."""
    from runtime.cgroups import Limits

    return Limits(
        memory_bytes=spec.memory_bytes,
        cpu_quota_us=None if spec.cpus is None else max(1000, int(spec.cpus * 100_000)),
        cpu_period_us=100_000,
        pids_max=spec.pids_limit,
    )


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
    """``HOSTDIR:CTRDIR[:ro|rw]`` -> Volume with an absolute, existing source; ``NAME:CTRDIR[:ro]``
    (a source without '/') -> a named volume (runtime/volumes.py), resolved and made by ``run``.

    Raises:
        InvalidArgument: malformed, missing source, bad volume name, relative target, unknown mode.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgument(f"invalid volume {text!r}: expected HOSTDIR:CTRDIR[:ro] or NAME:CTRDIR[:ro]")
    readonly = False
    if len(parts) == 3:
        if parts[2] not in ("ro", "rw"):
            raise InvalidArgument(f"invalid volume mode {parts[2]!r} in {text!r}: expected ro or rw")
        readonly = parts[2] == "ro"
    if is_volume_name(parts[0]):
        return validate_volume(Volume(source="", target=parts[1], readonly=readonly, name=parts[0]))
    return validate_volume(Volume(source=os.path.abspath(parts[0]), target=parts[1], readonly=readonly))


def is_volume_name(source: str) -> bool:
    """docker's rule: a -v source without '/' names a volume ('.' and '..' stay directories)."""
    return "/" not in source and source not in (".", "..")


def parse_mount(text: str) -> Volume:
    """``--mount type=volume|bind,source=S,target=/p[,readonly]`` (docker's keys: src, dst,
    destination, ro, readonly[=true|false]); a volume's source may be left out (a random name).

    Raises:
        InvalidArgument: an unknown key or type, a missing target, a bind without an absolute source.
    """
    import secrets

    fields: dict[str, str] = {}
    readonly = False
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro"):
            if eq and value.lower() not in ("true", "false", "1", "0"):
                raise InvalidArgument(f"invalid --mount {text!r}: {key} takes true or false")
            readonly = not eq or value.lower() in ("true", "1")
        elif key in ("type", "source", "src", "target", "dst", "destination") and eq:
            fields[{"src": "source", "dst": "target", "destination": "target"}.get(key, key)] = value
        else:
            raise InvalidArgument(f"invalid --mount {text!r}: unknown or empty key {key!r}",
                                  hint="type=volume|bind,source=S,target=/path[,readonly]")
    kind, source, target = fields.get("type", "volume"), fields.get("source", ""), fields.get("target", "")
    if not target:
        raise InvalidArgument(f"invalid --mount {text!r}: no target", hint="target=/path inside the container")
    if kind == "volume":
        return validate_volume(Volume(source="", target=target, readonly=readonly, name=source or secrets.token_hex(32)))
    if kind == "bind":
        if not os.path.isabs(source):
            raise InvalidArgument(f"invalid --mount {text!r}: a bind needs an absolute source path")
        return validate_volume(Volume(source=source, target=target, readonly=readonly))
    raise InvalidArgument(f"invalid --mount type {kind!r} in {text!r}: expected volume or bind")


def parse_volume_mapping(text: str) -> Volume:
    """``HOSTDIR:CTRDIR[:ro|rw]`` for ``restore --volume``: the source is a path on the restoring
    host (maybe a remote daemon's), so it must be absolute but is checked there, not here.

    Raises:
        InvalidArgument: malformed, a relative source, a bad target or mode.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgument(f"invalid volume {text!r}: expected HOSTDIR:CTRDIR[:ro]")
    if len(parts) == 3 and parts[2] not in ("ro", "rw"):
        raise InvalidArgument(f"invalid volume mode {parts[2]!r} in {text!r}: expected ro or rw")
    if not os.path.isabs(parts[0]):
        raise InvalidArgument(f"invalid volume source {parts[0]!r}: expected an absolute host path")
    return Volume(source=parts[0], target=validate_volume_target(parts[1]), readonly=len(parts) == 3 and parts[2] == "ro")


def validate_volume(vol: Volume) -> Volume:
    if vol.name:  # a named volume: its source is resolved from this host's store when it runs
        from runtime.volumes import validate_volume_name

        return Volume(source=vol.source, target=validate_volume_target(vol.target), readonly=vol.readonly,
                      name=validate_volume_name(vol.name))
    return Volume(source=validate_volume_source(vol.source), target=validate_volume_target(vol.target), readonly=vol.readonly)


def validate_volume_source(source: str) -> str:
    """An absolute, existing host path; returned resolved (symlinks followed once, here)."""
    if not os.path.isabs(source):
        raise InvalidArgument(f"invalid volume source {source!r}: expected an absolute host path")
    if not os.path.exists(source):
        raise InvalidArgument(f"volume source {source} does not exist")
    return os.path.realpath(source)


def validate_volume_target(target: str) -> str:
    if not os.path.isabs(target):
        raise InvalidArgument(f"invalid volume target {target!r}: expected an absolute path inside the container")
    norm = os.path.normpath(target)
    if ".." in target.split("/") or norm == "/":
        raise InvalidArgument(f"invalid volume target {target!r}: expected a path below / without '..'")
    return norm


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


# -- one validator for every spec: run's input, a manifest's, a peer's ----------------------------

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_MAX_TEXT = 4096  # image names, command words and env items beyond this are not ours


_T = TypeVar("_T")


class CheckedFields(TypedDict):
    """The values ``validate_fields`` normalises (the other fields are only checked)."""

    env: tuple[str, ...]
    workdir: str
    volumes: tuple[Volume, ...]
    cap_add: tuple[str, ...]  # names as runtime.capabilities.parse_cap returns them
    cap_drop: tuple[str, ...]
    restart: str  # runtime.restart.parse_policy's form
    ports: tuple[PortMapping, ...]  # runtime.ports.validate_ports's form


def validate_fields(
    *,
    name: str | None,
    hostname: str | None,
    env: tuple[str, ...],
    workdir: str,
    memory_bytes: int | None,
    cpus: float | None,
    pids_limit: int | None,
    network: str,
    ip: str | None,
    volumes: tuple[Volume, ...],
    cgroup_parent: str | None,
    user: str = "",
    stop_signal: str = "",
    cap_add: tuple[str, ...] = (),
    cap_drop: tuple[str, ...] = (),
    ports: tuple[PortMapping, ...] = (),
    restart: str = "no",
    auto_remove: bool = False,
    init: bool = False,
    tty: bool = False,
    interactive: bool = False,
    pid_mode: str = "private",
    ipc_mode: str = "private",
    uts_mode: str = "private",
    cgroupns_mode: str = "private",
    network_container: str = "",
) -> CheckedFields:
    """Check what a user (``run``) or a spec (``validate_spec``) asks for; the normalised values.

    Raises:
        InvalidSpec: naming the first field refused.
    """
    from runtime.state import validate_name

    def check(field: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except InvalidArgument as exc:
            raise InvalidSpec(field, exc.message, hint=exc.hint) from None

    if name is not None:
        check("name", lambda: validate_name(_text("name", name)))
    if hostname is not None:
        check("hostname", lambda: validate_hostname(_text("hostname", hostname)))
    checked_env = check("env", lambda: validate_env(tuple(_text("env", e) for e in _seq("env", env))))
    checked_workdir = check("workdir", lambda: validate_workdir(_text("workdir", workdir)))
    check("memory_bytes", lambda: validate_memory(_number("memory_bytes", memory_bytes, int)))
    check("cpus", lambda: validate_cpus(_number("cpus", cpus, float)))
    check("pids_limit", lambda: validate_pids_limit(_number("pids_limit", pids_limit, int)))
    if network not in ("bridge", "none", "host", "container"):
        raise InvalidSpec("network", f"invalid network mode {network!r}: expected bridge, none, host or container")
    from runtime.ns_modes import validate as validate_ns_modes

    # before ip and ports: "it shares another container's network" says more than "needs bridge"
    validate_ns_modes(pid_mode=pid_mode, ipc_mode=ipc_mode, uts_mode=uts_mode, cgroupns_mode=cgroupns_mode,
                      network=network, network_container=network_container, hostname=hostname, ports=ports, ip=ip)
    if ip is not None:
        check("ip", lambda: _validate_ip(ip, network))
    vols: list[Volume] = []
    for i, v in enumerate(_seq("volumes", volumes)):
        vol = check(f"volumes[{i}]", lambda: _volume(v))
        target = check(f"volumes[{i}].target", lambda: validate_volume_target(vol.target))
        name = check(f"volumes[{i}].name", lambda: _volume_name(vol.name))
        # a named volume's source is "" until this host's store resolves it (runtime/volumes.py)
        source = vol.source if name and not vol.source else check(f"volumes[{i}].source", lambda: validate_volume_source(vol.source))
        vols.append(Volume(source=source, target=target, readonly=vol.readonly, name=name))
    checked_volumes = tuple(vols)
    if cgroup_parent is not None:
        from runtime.cgroups import validate_parent

        check("cgroup_parent", lambda: validate_parent(_text("cgroup_parent", cgroup_parent)))
    if user != "":
        from runtime.users import validate_user

        check("user", lambda: validate_user(_text("user", user)))
    if stop_signal != "":
        check("stop_signal", lambda: parse_signal(_text("stop_signal", stop_signal)))
    from runtime.capabilities import parse_cap

    def caps(key: str, value: object) -> tuple[str, ...]:
        return check(key, lambda: tuple(parse_cap(_text(key, c)) for c in _seq(key, value)))

    from runtime.ports import validate_ports

    checked_ports = check("ports", lambda: validate_ports(ports, network=network))
    from runtime.restart_policy import parse_policy

    checked_restart = check("restart", lambda: parse_policy(_text("restart", restart)))
    if checked_restart != "no" and auto_remove is True:
        raise InvalidSpec("restart", f"restart policy {checked_restart} conflicts with auto_remove (--rm)",
                          hint="a container that restarts is never removed by its exit: drop --rm or --restart")
    if not isinstance(init, bool):
        raise InvalidSpec("init", f"invalid init {init!r}: expected true or false")
    for key, flag in (("tty", tty), ("interactive", interactive)):
        if not isinstance(flag, bool):
            raise InvalidSpec(key, f"invalid {key} {flag!r}: expected true or false")
    if (tty or interactive) and checked_restart != "no":
        # a restarted init has no terminal or stdin of the shim's (runtime/console.py)
        raise InvalidSpec("restart", f"restart policy {checked_restart} cannot be combined with -t or -i",
                          hint="drop --restart, or -t/-i")
    return {"env": checked_env, "workdir": checked_workdir, "volumes": checked_volumes, "ports": checked_ports,
            "cap_add": caps("cap_add", cap_add), "cap_drop": caps("cap_drop", cap_drop),
            "restart": checked_restart}


def parse_signal(text: str) -> int:
    """A signal by name (``SIGQUIT``, ``QUIT``, ``SIGRTMIN+3``) or number (1-64), as Docker's
    StopSignal and ``--stop-signal`` take it."""
    import signal

    name = text.strip().upper()
    if name.isdigit() and 1 <= int(name) <= signal.SIGRTMAX:
        return int(name)
    name = name if name.startswith("SIG") else f"SIG{name}"
    for base in ("SIGRTMIN+", "SIGRTMAX-"):
        if name.startswith(base) and name[len(base):].isdigit():
            n = signal.SIGRTMIN + int(name[len(base):]) if base == "SIGRTMIN+" else signal.SIGRTMAX - int(name[len(base):])
            if signal.SIGRTMIN <= n <= signal.SIGRTMAX:
                return int(n)
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"unknown signal {text!r}", hint=f"a name (SIGQUIT, QUIT, SIGRTMIN+3) or a number 1-{int(signal.SIGRTMAX)}") from None


def validate_spec(spec: ContainerSpec) -> ContainerSpec:
    """Check every field of a whole spec (a checkpoint manifest's, a migration peer's) exactly as
    ``run`` checks its input, plus what ``run`` makes itself (id, digest, command, MAC); the spec
    with normalised env, workdir and volumes. Volume sources must exist here: whether a spec may
    name host paths at all is the caller's policy (migrate.restore).

    Raises:
        InvalidSpec: naming the field (``container_id``, ``volumes[0].source``...).
    """
    from runtime.state import ID_RE

    if not isinstance(spec.container_id, str) or not ID_RE.fullmatch(spec.container_id):
        raise InvalidSpec("container_id", f"invalid container id {spec.container_id!r}: expected 32 lower-case hex characters")
    if not isinstance(spec.name, str):
        raise InvalidSpec("name", f"invalid container name {spec.name!r}: expected a string")
    if not isinstance(spec.image_digest, str) or not _DIGEST_RE.fullmatch(spec.image_digest):
        raise InvalidSpec("image_digest", f"invalid image digest {spec.image_digest!r}: expected sha256:<64 hex>")
    _text("image", spec.image)
    command = _seq("command", spec.command)
    if not command:
        raise InvalidSpec("command", "container has no command")
    for word in command:
        _text("command", word)
    if spec.mac is not None and (not isinstance(spec.mac, str) or not _MAC_RE.fullmatch(spec.mac) or int(spec.mac[:2], 16) & 1):
        raise InvalidSpec("mac", f"invalid mac address {spec.mac!r}: expected a unicast aa:bb:cc:dd:ee:ff in lower case")
    for flag in ("auto_remove", "read_only"):
        if not isinstance(getattr(spec, flag), bool):
            raise InvalidSpec(flag, f"invalid {flag} {getattr(spec, flag)!r}: expected true or false")
    if not isinstance(spec.created_at, (int, float)) or isinstance(spec.created_at, bool):
        raise InvalidSpec("created_at", f"invalid created_at {spec.created_at!r}: expected unix seconds")
    fields = validate_fields(
        name=spec.name, hostname=spec.hostname or None, env=spec.env, workdir=spec.workdir,
        memory_bytes=spec.memory_bytes, cpus=spec.cpus, pids_limit=spec.pids_limit, network=spec.network,
        ip=spec.ip, volumes=spec.volumes, cgroup_parent=spec.cgroup_parent, user=spec.user,
        stop_signal=spec.stop_signal, cap_add=spec.cap_add, cap_drop=spec.cap_drop,
        ports=spec.ports,
        restart=spec.restart, auto_remove=spec.auto_remove, init=spec.init,
        tty=spec.tty, interactive=spec.interactive,
        pid_mode=spec.pid_mode, ipc_mode=spec.ipc_mode, uts_mode=spec.uts_mode,
        cgroupns_mode=spec.cgroupns_mode, network_container=spec.network_container,
    )
    from runtime.userns import validate_spec_fields

    validate_spec_fields(spec.userns, spec.userns_base, spec.userns_size)
    from runtime.labels import validate_labels

    try:  # a manifest's or a peer's labels: the same rules as run's --label
        labels = validate_labels(spec.labels)
    except InvalidArgument as exc:
        raise InvalidSpec("labels", exc.message, hint=exc.hint) from None
    return replace(spec, labels=labels, **fields)


def parse_spec(data: object) -> ContainerSpec:
    """A ContainerSpec from untrusted JSON (a manifest's ``container``): its shape only (malformed
    shapes are an ``InvalidSpec``, never a TypeError); the caller then applies its volume policy
    and ``validate_spec``."""
    if not isinstance(data, dict):
        raise InvalidSpec("container", f"invalid container spec: expected an object, got {type(data).__name__}")
    vols = data.get("volumes", ())
    if not isinstance(vols, (list, tuple)) or not all(isinstance(v, dict) for v in vols):
        raise InvalidSpec("volumes", "invalid volumes: expected a list of objects")
    for key in ("command", "env"):
        if not isinstance(data.get(key, ()), (list, tuple)):
            raise InvalidSpec(key, f"invalid {key}: expected a list of strings")
    try:
        return ContainerSpec.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise InvalidSpec("container", f"invalid container spec: {exc}") from None


def _text(field: str, value: object) -> str:
    if not isinstance(value, str) or "\0" in value or len(value) > _MAX_TEXT:
        raise InvalidSpec(field, f"invalid {field} {str(value)[:80]!r}: expected a string without NUL, at most {_MAX_TEXT} characters")
    return value


def _seq(field: str, value: object) -> tuple[object, ...]:
    if not isinstance(value, (tuple, list)):
        raise InvalidSpec(field, f"invalid {field}: expected a list")
    return tuple(value)


@overload
def _number(field: str, value: object, kind: type[int]) -> int | None: ...
@overload
def _number(field: str, value: object, kind: type[float]) -> float | None: ...
def _number(field: str, value: object, kind: type) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise InvalidSpec(field, f"invalid {field} {value!r}: expected a {'whole ' if kind is int else ''}number")
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidSpec(field, f"invalid {field} {value!r}: expected a finite number")
    return value


def _volume_name(name: object) -> str:
    if name == "":
        return ""
    from runtime.volumes import validate_volume_name

    return validate_volume_name(name)


def _volume(v: object) -> Volume:
    if not isinstance(v, Volume):
        raise InvalidArgument(f"invalid volume {v!r}: expected source, target, readonly")
    if not isinstance(v.source, str) or not isinstance(v.target, str) or not isinstance(v.readonly, bool) or not isinstance(v.name, str):
        raise InvalidArgument(f"invalid volume {v!r}: expected string source, target and name, boolean readonly")
    for part in (v.source, v.target, v.name):
        _text("volume", part)
    return v


def _validate_ip(ip: object, network: str) -> str:
    import ipaddress

    if network != "bridge":
        raise InvalidArgument(f"address {ip} needs --network bridge, not {network}")
    try:
        addr = ipaddress.IPv4Address(ip)
    except (ValueError, TypeError):
        raise InvalidArgument(f"invalid address {ip!r}: expected an IPv4 address like 10.77.0.5") from None
    if addr.is_multicast or addr.is_unspecified or addr.is_loopback or addr == ipaddress.IPv4Address("255.255.255.255"):
        raise InvalidArgument(f"invalid address {ip}: expected a unicast address")
    return str(addr)
