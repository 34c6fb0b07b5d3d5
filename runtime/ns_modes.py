"""Shared namespaces: which of a container's namespaces are its own, the host's or another container's.

``run --pid|--ipc|--uts host|container:NAME``, ``--network container:NAME`` and ``--cgroupns
host|private`` (docker's and podman's options). A spec records each choice as a mode:

- ``private`` (the default): unshared when the init starts, as every container always had;
- ``host``: not unshared, so the namespace of whoever starts the container (the daemon's or the
  CLI's; on a test "host" that host's), like ``--network host``;
- ``container:<ID>``: the namespace of that container's init, joined with setns(2). Recorded by
  container id, never by name, so a rename does not break it.

The network keeps its own field: ``network="container"`` with ``network_container=<ID>``.

Starting (``NamespacePlan.enter``, in the intermediate process of runtime/process.py, which is
still in the host's mount namespace, after it moved into the container's cgroup): open every
joined namespace file first, check that its process is still the recorded init (the pid could
have been reused: its start time must match), setns them in ``namespaces.JOIN_ORDER``, then
unshare the private ones in one call. pid applies to children only: the init forked next is in
the joined (or the host's) pid namespace, not its PID 1, and the proc it mounts shows that
namespace (proc shows the pid namespace of its mounter). mnt is never shared: every container has
its own root.

Rules (docker's): a uts namespace other than private forbids a hostname (it is the other's); a
``container:`` network forbids ports and an address (they are the other container's).

A container that shares any namespace cannot be checkpointed or migrated, nor can one whose
namespaces other containers join: CRIU would dump the other's (or the host's) namespace as this
container's and a restore would make a copy that no longer shares it, or leave the others without
it. Refused before anything is frozen (``refuse_checkpoint``); a manifest asking for a shared
namespace is refused at restore and import (``refuse_in_manifest``). docs/isolation.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from runtime import namespaces
from runtime.errors import ContainerError, InvalidArgument, InvalidSpec, Unsupported

if TYPE_CHECKING:
    from runtime.spec import ContainerSpec
    from runtime.syscalls import Syscalls

PRIVATE = "private"
HOST = "host"
CONTAINER = "container:"

# the spec field of each kind that has a mode string (net: ``network`` + ``network_container``)
MODE_FIELDS: dict[str, str] = {"pid": "pid_mode", "ipc": "ipc_mode", "uts": "uts_mode", "cgroup": "cgroupns_mode"}
# the run option each kind is chosen with, for messages
OPTIONS: dict[str, str] = {"pid": "--pid", "ipc": "--ipc", "uts": "--uts", "net": "--network", "cgroup": "--cgroupns"}
_CLONE: dict[str, int] = {kind: namespaces.NS_TYPES[kind] for kind in ("pid", "ipc", "uts", "cgroup", "net")}


# -- the user's words ----------------------------------------------------------------------------


def parse_mode(kind: str, text: str) -> tuple[str, str]:
    """``--pid``/``--ipc``/``--uts`` (``private``, ``host``, ``container:NAME``) or ``--cgroupns``
    (``private``, ``host``): (mode, container name or id; "" unless ``container``).

    Raises:
        InvalidArgument: anything else.
    """
    if not isinstance(text, str):
        raise InvalidArgument(f"invalid {OPTIONS[kind]} {text!r}: expected a string")
    if text in ("", PRIVATE):
        return PRIVATE, ""
    if text == HOST:
        return HOST, ""
    if kind != "cgroup" and text.startswith(CONTAINER) and text[len(CONTAINER):]:
        return "container", text[len(CONTAINER):]
    allowed = "private or host" if kind == "cgroup" else "private, host or container:NAME"
    raise InvalidArgument(f"invalid {OPTIONS[kind]} {text!r}: expected {allowed}",
                          hint=f"e.g. {OPTIONS[kind]} host" + ("" if kind == "cgroup" else f" or {OPTIONS[kind]} container:web"))


def split_network(text: str) -> tuple[str, str]:
    """``--network`` as given: (mode, container name or id); ``container:NAME`` -> ("container", NAME)."""
    if isinstance(text, str) and text.startswith(CONTAINER):
        ref = text[len(CONTAINER):]
        if not ref:
            raise InvalidArgument("invalid --network 'container:': expected container:NAME",
                                  hint="name the container whose network to share, e.g. --network container:web")
        return "container", ref
    return text, ""


# -- a spec's modes ------------------------------------------------------------------------------


def mode_of(spec: "ContainerSpec", kind: str) -> str:
    """``private``, ``host`` or ``container:<ID>`` of one namespace kind of ``spec``."""
    if kind == "net":
        if spec.network == "host":
            return HOST
        if spec.network == "container":
            return CONTAINER + spec.network_container
        return PRIVATE
    return str(getattr(spec, MODE_FIELDS[kind], PRIVATE) or PRIVATE)


def shared(spec: "ContainerSpec") -> dict[str, str]:
    """Every namespace of ``spec`` that is not its own: kind -> ``host`` or ``container:<ID>``."""
    modes = {kind: mode_of(spec, kind) for kind in ("pid", "ipc", "uts", "net", "cgroup")}
    return {kind: mode for kind, mode in modes.items() if mode != PRIVATE}


def joined(spec: "ContainerSpec") -> dict[str, str]:
    """The namespaces ``spec`` joins from other containers: kind -> container id."""
    return {kind: mode[len(CONTAINER):] for kind, mode in shared(spec).items() if mode.startswith(CONTAINER)}


def validate(*, pid_mode: str, ipc_mode: str, uts_mode: str, cgroupns_mode: str, network: str,
             network_container: str, hostname: str | None, ports: tuple[Any, ...], ip: str | None) -> None:
    """A spec's (or ``run``'s resolved) modes: every ``container:`` names a container id, and
    docker's rules (no hostname with a shared uts namespace, no ports or address with another
    container's network).

    Raises:
        InvalidSpec: naming the field.
    """
    from runtime.state import ID_RE

    for kind, field, mode in (("pid", "pid_mode", pid_mode), ("ipc", "ipc_mode", ipc_mode),
                              ("uts", "uts_mode", uts_mode), ("cgroup", "cgroupns_mode", cgroupns_mode)):
        if not isinstance(mode, str):
            raise InvalidSpec(field, f"invalid {field} {mode!r}: expected private, host or container:<id>")
        if mode in (PRIVATE, HOST):
            continue
        ref = mode[len(CONTAINER):] if mode.startswith(CONTAINER) and kind != "cgroup" else None
        if ref is None or not ID_RE.fullmatch(ref):
            allowed = "private or host" if kind == "cgroup" else "private, host or container:<32 hex id>"
            raise InvalidSpec(field, f"invalid {field} {mode!r}: expected {allowed}")
    if network == "container":
        if not isinstance(network_container, str) or not ID_RE.fullmatch(network_container):
            raise InvalidSpec("network_container", f"invalid network_container {network_container!r}: expected a 32 hex container id")
        if ports:
            raise InvalidSpec("ports", "cannot publish ports of a container that shares another container's network",
                              hint="publish them on the container whose network it shares (-p there)")
        if ip is not None:
            raise InvalidSpec("ip", "cannot give an address to a container that shares another container's network",
                              hint="it has the other container's address; drop --ip")
    elif network_container not in ("", None):
        raise InvalidSpec("network_container", f"network_container {network_container!r} needs network mode container")
    if uts_mode != PRIVATE and hostname:
        owner = "the host's" if uts_mode == HOST else "the other container's"
        raise InvalidSpec("hostname", f"cannot set hostname {hostname} with --uts {uts_mode}: the uts namespace is {owner}",
                          hint="drop --hostname, or --uts")


def refuse_in_manifest(spec: "ContainerSpec") -> None:
    """A checkpoint's or a peer's spec may not share a namespace: we never dump one that does
    (``refuse_checkpoint``), so a manifest asking for one is forged, and a host namespace would
    hand the container this host's.

    Raises:
        InvalidSpec: naming the first shared namespace.
    """
    for kind, mode in shared(spec).items():
        if kind == "net" and mode == HOST:
            continue  # migrate/restore.py refuses it with its own message
        field = "network" if kind == "net" else MODE_FIELDS[kind]
        raise InvalidSpec(field, f"checkpoint asks for a shared {kind} namespace ({OPTIONS[kind]} {mode}), "
                                 "which no checkpoint can have: a restore never joins the host's or another container's namespaces")


def refuse_checkpoint(spec: "ContainerSpec", dependents: Iterable[tuple[str, str]], names: dict[str, str]) -> None:
    """Refuse a checkpoint (and so every export and migration) of a container that shares a
    namespace, or whose namespaces ``dependents`` ((name, kind) pairs) join; ``names`` maps
    container ids to names for the message.

    Raises:
        Unsupported: naming the namespace and the other container (or the host).
    """
    what = f"checkpoint of container {spec.name}"
    for kind, mode in shared(spec).items():
        if kind == "net" and mode == HOST:
            continue  # runtime/checkpointing.py's own check says it
        other = "the host" if mode == HOST else f"container {names.get(mode[len(CONTAINER):], mode[len(CONTAINER):])}"
        raise Unsupported(what, f"it shares its {kind} namespace with {other} ({OPTIONS[kind]} {_shown(mode, names)}); "
                                "criu would dump that namespace as this container's own and the copy would no longer share it",
                          hint=f"run it with a private {kind} namespace (no {OPTIONS[kind]}) to checkpoint or migrate it")
    for name, kind in dependents:
        raise Unsupported(what, f"container {name} shares its {kind} namespace ({OPTIONS[kind]} container:{spec.name}); "
                                "a checkpoint or migration would take it away from under that container",
                          hint=f"remove container {name} first (pymigrate rm -f {name}), then checkpoint or migrate {spec.name}")


def _shown(mode: str, names: dict[str, str]) -> str:
    if mode.startswith(CONTAINER):
        ref = mode[len(CONTAINER):]
        return CONTAINER + names.get(ref, ref)
    return mode


def dependents(specs: Iterable["ContainerSpec"], container_id: str) -> list[tuple[str, str]]:
    """(name, kind) of every spec in ``specs`` that joins a namespace of ``container_id``."""
    found: list[tuple[str, str]] = []
    for spec in specs:
        for kind, ref in joined(spec).items():
            if ref == container_id and spec.container_id != container_id:
                found.append((spec.name, kind))
    return found


def shown_modes(spec: "ContainerSpec", names: dict[str, str]) -> dict[str, str]:
    """What ``inspect`` and ``ps`` show: kind -> ``host`` or ``container:NAME`` (the other's current
    name; its id when it is gone)."""
    return {kind: _shown(mode, names) for kind, mode in shared(spec).items()}


# -- starting ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Join:
    """A namespace of another container's init to join: its pid and start time (pid reuse)."""

    kind: str
    pid: int
    pid_start: int  # clock ticks, /proc/PID/stat field 22 (runtime.freeze_record.process_start)
    container: str  # its name, for messages


@dataclass(frozen=True)
class NamespacePlan:
    """What the intermediate process of a container start does with each namespace (picklable,
    part of runtime.process.InitPlan). The default is what every container always got: join the
    prepared network namespace, unshare mnt, uts, ipc, pid and cgroup."""

    joins: tuple[Join, ...] = ()
    host: frozenset[str] = frozenset()  # kinds left as they are (the starter's)

    def unshare_flags(self) -> int:
        flags = namespaces.NS_TYPES["mnt"]  # never shared: every container has its own root
        for kind in ("uts", "ipc", "pid", "cgroup"):
            if kind not in self.host and not any(j.kind == kind for j in self.joins):
                flags |= _CLONE[kind]
        return flags

    def joins_net(self) -> bool:
        return any(j.kind == "net" for j in self.joins)

    def sets_hostname(self) -> bool:
        """Only a private uts namespace gets the container's hostname (else it is another's)."""
        return "uts" not in self.host and not any(j.kind == "uts" for j in self.joins)

    def open(self) -> list[tuple[str, int]]:
        """Open every joined namespace (in join order) and confirm each is still its container's
        init; the caller closes the fds (``namespaces.join`` does).

        Raises:
            ContainerError: that container's init is gone (its pid is free or another process's).
        """
        from runtime.freeze_record import process_start

        order = {kind: i for i, kind in enumerate(namespaces.JOIN_ORDER)}
        fds: list[tuple[str, int]] = []
        try:
            for j in sorted(self.joins, key=lambda j: order[j.kind]):
                fds.append((j.kind, os.open(namespaces.ns_path(j.pid, j.kind), os.O_RDONLY | os.O_CLOEXEC)))
                if process_start(j.pid) != j.pid_start:  # checked after the open: the fd is its namespace
                    raise ContainerError(f"cannot join the {j.kind} namespace of container {j.container}: it is no longer running",
                                         hint=f"start container {j.container} again, then this one")
        except BaseException:
            for _, fd in fds:
                os.close(fd)
            raise
        return fds

    def enter(self, sys: "Syscalls", netns: str) -> None:
        """In the intermediate process: join the other containers' namespaces (or the network
        namespace prepared at ``netns``), then unshare the container's own. The caller forks the
        init next (pid applies to children)."""
        fds = self.open()
        if not self.joins_net():
            namespaces.join_netns_file(sys, netns)
        namespaces.join(sys, fds)
        sys.unshare(self.unshare_flags())


def plan_for(spec: "ContainerSpec", init_of: "Any") -> NamespacePlan:
    """The NamespacePlan of ``spec``; ``init_of(container_id, kind)`` returns (pid, pid_start,
    name) of the running init whose namespace is joined (raising when it is not running)."""
    joins = []
    for kind, ref in joined(spec).items():
        pid, start, name = init_of(ref, kind)
        joins.append(Join(kind=kind, pid=pid, pid_start=start, container=name))
    host = frozenset(kind for kind, mode in shared(spec).items() if mode == HOST)
    return NamespacePlan(joins=tuple(joins), host=host)


# -- the runtime's side (lookup: runtime.runtime.Runtime.container) --------------------------------


def resolve_run(lookup: "Any", *, network: str, pid_mode: str, ipc_mode: str, uts_mode: str,
                cgroupns_mode: str) -> dict[str, str]:
    """``run``'s modes as the user gave them (``container:NAME``) as a spec records them
    (``container:<ID>``), each named container running: the spec's fields network,
    network_container, pid_mode, ipc_mode, uts_mode and cgroupns_mode.

    Raises:
        InvalidArgument: a malformed mode.
        ContainerNotFound: no such container.
        InvalidState: it is not running.
    """
    out: dict[str, str] = {}
    for kind, text in (("pid", pid_mode), ("ipc", ipc_mode), ("uts", uts_mode), ("cgroup", cgroupns_mode)):
        mode, ref = parse_mode(kind, text)
        out[MODE_FIELDS[kind]] = CONTAINER + _running(lookup, ref, kind).container_id if ref else mode
    mode, ref = split_network(network)
    out["network"] = mode
    out["network_container"] = _running(lookup, ref, "net").container_id if ref else ""
    return out


def _running(lookup: "Any", ref: str, kind: str) -> "Any":
    from runtime.errors import InvalidState

    c = lookup(ref)
    if c.status not in ("running", "paused"):
        err = InvalidState(c.name, f"share the {kind} namespace of", c.status, "running")
        err.hint = f"start container {c.name} first (its init holds the namespace)"
        raise err
    return c


def runtime_plan(lookup: "Any", spec: "ContainerSpec") -> tuple[NamespacePlan, str]:
    """The NamespacePlan of ``spec``'s init (each joined container must be running) and the
    hostname its processes see (HOSTNAME): its own, the host's or the other container's."""
    from runtime.freeze_record import process_start

    others: dict[str, Any] = {}

    def init_of(ref: str, kind: str) -> tuple[int, int, str]:
        c = others[ref] = _running(lookup, ref, kind)
        return c.state.pid, process_start(c.state.pid), c.name

    plan = plan_for(spec, init_of)
    return plan, seen_hostname(spec, lambda ref: others[ref] if ref in others else lookup(ref))


def seen_hostname(spec: "ContainerSpec", lookup: "Any") -> str:
    """The hostname ``spec``'s processes see (HOSTNAME, /etc/hostname): its own, the host's
    (``--uts host``: the runtime's uts namespace is the one shared) or the other container's."""
    import socket

    uts = mode_of(spec, "uts")
    if uts == HOST:
        return socket.gethostname()
    if uts.startswith(CONTAINER):
        return str(lookup(uts[len(CONTAINER):]).spec.hostname) or socket.gethostname()
    return spec.hostname


def dependents_error(name: str, deps: list[tuple[str, str]]) -> ContainerError:
    """InvalidState: container ``name`` cannot be removed while ``deps`` ((name, kind)) join its
    namespaces (podman's "has dependent containers")."""
    from runtime.errors import InvalidState

    users = sorted({user for user, _ in deps})
    kinds = sorted({kind for _, kind in deps})
    err = InvalidState(name, "remove", "shared", "not shared")
    err.message = (f"cannot remove container {name}: container {', '.join(users)} shares its "
                   f"{', '.join(kinds)} namespace{'s' if len(kinds) > 1 else ''} (container:{name})")
    err.args = (err.message,)
    err.hint = f"remove container {', '.join(users)} first (pymigrate rm -f {' '.join(users)})"
    return err


def start_order(ids: Iterable[str], specs: Iterable["ContainerSpec"]) -> list[str]:
    """``ids`` with every container after those whose namespaces it joins (a daemon start's
    restarts: the joined init must run first); otherwise in the given order."""
    joins = {spec.container_id: set(joined(spec).values()) for spec in specs}
    ordered: list[str] = []
    placed: set[str] = set()

    def place(cid: str, path: frozenset[str]) -> None:
        if cid in placed or cid in path:  # a cycle cannot be made (run joins running containers): ignore one
            return
        for other in sorted(joins.get(cid, ())):
            if other in joins:
                place(other, path | {cid})
        placed.add(cid)
        ordered.append(cid)

    wanted = list(ids)
    for cid in wanted:
        place(cid, frozenset())
    return [cid for cid in ordered if cid in set(wanted)]


def joined_init_alive(spec: "ContainerSpec", pid: int, proc: str = "/proc") -> bool:
    """Whether ``pid`` is still the init of ``spec``, a container in the host's or another
    container's pid namespace: there its init is not a PID 1 (runtime.runtime's usual test), so
    ask whether the process is in the container's own cgroup (its id is a component of a path)."""
    if mode_of(spec, "pid") == PRIVATE or pid <= 0:
        return False
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            return any(spec.container_id in line.rstrip("\n").split(":", 2)[-1].split("/") for line in f)
    except OSError:
        return False
