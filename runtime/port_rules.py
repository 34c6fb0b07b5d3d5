"""Published ports on the host: nftables DNAT rules, and the checks before a port is taken.

Each container that publishes ports gets one nftables table of its own, in the network
namespace of the runtime (the host's, or a lab host's)::

    table ip pymigrate_ports_<tag>_<container_id>      tag: crc32 of the state root (8 hex)
      chain prerouting   nat, hook prerouting, priority dstnat (-100)   from other hosts
        fib daddr type local [ip daddr HOST_IP] tcp dport 8080 dnat to 10.77.0.5:80
      chain output       nat, hook output, priority -100                 from this host itself
        (the same rules: 127.0.0.1 and the host's own addresses are "local")
      chain postrouting  nat, hook postrouting, priority srcnat (100)
        oifname BRIDGE ip daddr 10.77.0.5 ct status dnat ip saddr { 127.0.0.0/8, SUBNET } masquerade
      chain forward      filter, hook forward, priority 0
        iifname BRIDGE oifname != BRIDGE ip saddr 10.77.0.5 ct status & dnat == 0 drop

Why one table per container: it is created and deleted in one nftables transaction by its name
alone, so removal is exact (no rule handles to find), a failed start leaves nothing, and the
sweep (``sweep_stale``) compares table names with the state root's records. The state root's
tag keeps two state roots on one machine (a local migration) apart, as the veth names do.

Facts this relies on (netavark and docker do the same; measured with nftables 1.0.6, kernel 6.18):

- Other hosts: prerouting DNAT, then the kernel forwards to the bridge, so ``ip_forward`` must be
  on in this namespace: ``publish`` turns it on (and logs it). The forward rule keeps the
  bridge's promise that containers cannot route out through the host (runtime/network.py):
  only the replies of DNATed connections leave the bridge for another interface.
- This host on 127.0.0.1: the output chain DNATs, but a packet with a loopback source is
  dropped as martian on a non-loopback interface unless ``route_localnet`` is on for the bridge,
  and the container could not answer 127.0.0.1: hence ``route_localnet=1`` on the bridge and the
  masquerade of 127/8 sources (netavark: the same sysctl and ``ip saddr 127.0.0.0/8 masquerade``).
- Hairpin (a container dialling its own published port, or a neighbour's, through a host
  address): the DNATed packet goes back out the bridge port it came from, and its source must
  be rewritten so the reply passes the host (masquerade of the subnet's sources). With
  ``br_netfilter`` loaded (bridge-nf-call-iptables=1, as on this machine) the bridge itself
  must also send the frame back out its ingress port: the container's bridge port gets
  ``hairpin_mode`` (docker sets it too). A side effect: the container sees its own broadcasts.
- The nat priority of the output hook must be a number in nft 1.0.6 (``dstnat`` is refused there).
- A DNAT rule binds no socket, so a host process can still bind the port later and would never
  see IPv4 traffic from outside: the bind check only refuses ports bound *before* the start.

The rules are run through the ``nft`` binary of Debian's nftables package (``nft -f -``, one
transaction per script): a spawn costs ~5 ms per start and stop, and keeps libnftables' ctypes
bindings (runtime/port_guard.py) out of a module that only needs whole-table scripts.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import ipaddress
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runtime.errors import ContainerError, InvalidArgument, NetworkError, PortInUse, Unsupported
from runtime.ports import PortMapping, overlaps

log = logging.getLogger(__name__)

TABLE_PREFIX = "pymigrate_ports_"
TABLE_RE = re.compile(r"^pymigrate_ports_([0-9a-f]{8})_([0-9a-f]{32})$")
NFT_TIMEOUT_S = 10.0
LOCK_FILE = "ports.lock"
OUTPUT_PRIORITY = -100  # dstnat, as a number (nft 1.0.6 refuses the name in the output hook)
_MISSING = "No such file or directory"
_LIVE = ("created", "running", "paused")
_LABEL_SAFE = re.compile(r"[^A-Za-z0-9 ._:/=@+-]")

# rtnetlink: a bridge port's hairpin mode (linux/if_link.h, linux/rtnetlink.h)
RTM_SETLINK = 19
IFLA_PROTINFO = 12
NLA_F_NESTED = 0x8000
IFLA_BRPORT_MODE = 4
_IFINFOMSG = struct.Struct("=BxHiII")


# --- names and the script ---------------------------------------------------------------------


def root_tag(root: Path) -> str:
    """8 hex digits naming a state root (the same through symlinks)."""
    return f"{zlib.crc32(os.path.realpath(root).encode()) & 0xFFFFFFFF:08x}"


def table_name(root: Path, container_id: str) -> str:
    name = f"{TABLE_PREFIX}{root_tag(root)}_{container_id}"
    if not TABLE_RE.fullmatch(name):
        raise ContainerError(f"invalid container id {container_id!r} for a port table: expected 32 hex characters")
    return name


def _match(m: PortMapping) -> str:
    dest = f"ip daddr {m.host_ip} " if m.host_ip else ""
    return f"fib daddr type local {dest}{m.protocol} dport {m.host_port}"


def ruleset(table: str, ports: Sequence[PortMapping], container_ip: str, bridge: str, subnet: str, *, label: str = "") -> str:
    """The nft script that (re)creates a container's table: ``add`` + ``delete`` first, so an old
    table of the same name is replaced in the same transaction."""
    if not TABLE_RE.fullmatch(table):
        raise ContainerError(f"invalid port table name {table!r}")
    ip = str(ipaddress.IPv4Address(container_ip))
    net = str(ipaddress.IPv4Network(subnet))
    head = f"ip {table}"
    comment = _LABEL_SAFE.sub("_", label)[:96]
    lines = [
        f"add table {head}",
        f"delete table {head}",
        f'add table {head} {{ comment "pymigrate published ports: {comment}"; }}',
        f"add chain {head} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
        f"add chain {head} output {{ type nat hook output priority {OUTPUT_PRIORITY}; policy accept; }}",
        f"add chain {head} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"add chain {head} forward {{ type filter hook forward priority filter; policy accept; }}",
    ]
    for m in ports:
        if not m.host_port:
            raise ContainerError(f"port {m.container_port}/{m.protocol} has no host port chosen")
        for chain in ("prerouting", "output"):
            lines.append(f"add rule {head} {chain} {_match(m)} dnat to {ip}:{m.container_port}")
    lines.append(f'add rule {head} postrouting oifname "{bridge}" ip daddr {ip} ct status dnat '
                 f"ip saddr {{ 127.0.0.0/8, {net} }} masquerade")
    lines.append(f'add rule {head} forward iifname "{bridge}" oifname != "{bridge}" ip saddr {ip} ct status & dnat == 0 drop')
    return "\n".join(lines) + "\n"


# --- nft --------------------------------------------------------------------------------------


def _nft(script: str) -> str:
    nft = shutil.which("nft")
    if nft is None:
        raise Unsupported("published ports", "the nft binary is not installed", hint="apt-get install nftables")
    try:
        r = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"cannot run {nft}: {exc}") from exc
    if r.returncode != 0:
        raise _NftFailed(r.stderr.strip() or f"nft exited with {r.returncode}")
    return r.stdout


class _NftFailed(NetworkError):
    pass


def tables(root: Path | None = None) -> list[str]:
    """Published-port tables in this namespace (of the state root ``root``; None: of every root)."""
    names = []
    for line in _nft("list tables ip\n").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[:2] == ["table", "ip"] and TABLE_RE.fullmatch(parts[2]):
            if root is None or TABLE_RE.fullmatch(parts[2]).group(1) == root_tag(root):  # type: ignore[union-attr]
                names.append(parts[2])
    return names


def container_of(table: str) -> str | None:
    m = TABLE_RE.fullmatch(table)
    return m.group(2) if m else None


# --- host settings ----------------------------------------------------------------------------


def _sysctl(path: str, value: str, why: str) -> None:
    p = Path("/proc/sys/net/ipv4") / path
    try:
        if p.read_text().strip() == value:
            return
        p.write_text(value)
    except OSError as exc:
        raise NetworkError(f"cannot set net.ipv4.{path.replace('/', '.')}={value} ({why}): {exc.strerror or exc}") from exc
    log.info("set net.ipv4.%s=%s (%s)", path.replace("/", "."), value, why)


def set_hairpin(veth: str) -> None:
    """Let the bridge send a frame back out ``veth``'s port (module doc: hairpin)."""
    from runtime._netlink import RtNetlink, attr

    with RtNetlink() as nl:
        index = nl.link_index(veth)
        if index is None:
            raise NetworkError(f"cannot set hairpin mode: no link {veth}")
        body = _IFINFOMSG.pack(socket.AF_BRIDGE, 0, index, 0, 0)
        body += attr(IFLA_PROTINFO | NLA_F_NESTED, attr(IFLA_BRPORT_MODE, b"\x01"))
        nl.request(RTM_SETLINK, 0, body, f"set hairpin mode on {veth}")


# --- publish / unpublish ----------------------------------------------------------------------


def publish(rt: Any, spec: Any) -> None:
    """Install ``spec``'s published ports (after its veth is on the bridge; nothing if none).

    Raises:
        NetworkError: a sysctl, the hairpin mode or nft refused (no table is left behind).
        Unsupported: no nft binary.
    """
    if not spec.ports:
        return
    if not spec.ip:
        raise NetworkError(f"cannot publish ports of container {spec.name}: it has no address")
    net = rt.network("bridge")
    cfg = net.config
    _sysctl("ip_forward", "1", "published ports reach containers from other hosts")
    _sysctl(f"conf/{cfg.bridge}/route_localnet", "1", "published ports answer on 127.0.0.1")
    try:
        set_hairpin(net.host_veth(spec.container_id))
    except OSError as exc:
        raise NetworkError(f"cannot set hairpin mode for container {spec.name}: {exc}") from exc
    table = table_name(rt.paths.root, spec.container_id)
    try:
        with ports_lock(rt.paths):  # ordered against a previous run's exit action (after_exit)
            _nft(ruleset(table, spec.ports, spec.ip, cfg.bridge, cfg.subnet, label=f"container {spec.name}"))
    except _NftFailed as exc:
        raise NetworkError(f"cannot publish the ports of container {spec.name}: nft refused the rules: {exc.message.splitlines()[0]}",
                           hint="is nf_tables available in this kernel (nft list tables)?") from exc
    log.info("container=%s published %s", spec.container_id, ", ".join(f"{m.host_label}->{m.container_port}/{m.protocol}" for m in spec.ports))


def unpublisher(root: Path, container_id: str) -> Callable[[], None]:
    """``unpublish`` as an undo step (undo lists take callables returning nothing)."""

    def step() -> None:
        unpublish(root, container_id)

    return step


def unpublish(root: Path, container_id: str) -> bool:
    """Delete the container's table; False if there was none. Idempotent.

    Raises:
        NetworkError: nft refused to delete it.
    """
    table = table_name(root, container_id)
    try:
        _nft(f"delete table ip {table}\n")
    except _NftFailed as exc:
        if _MISSING in exc.message:
            return False
        raise
    log.info("container=%s ports unpublished (table %s)", container_id, table)
    return True


def after_exit(root: str, container_id: str) -> None:
    """The shim's exit action for a container with published ports: the rules go with its run.

    Skipped when the record says it is not exited any more (a restore of the same id started
    meanwhile and publishes its own rules); the ports lock orders this against that publish."""
    from runtime.config import Paths
    from runtime.errors import ContainerNotFound
    from runtime.state import StateStore

    paths = Paths(Path(root))
    with ports_lock(paths):
        try:
            status = StateStore(paths).load_state(container_id).status
        except ContainerNotFound:
            status = "exited"  # removed: its remover unpublished, deleting again is harmless
        if status == "exited":
            unpublish(paths.root, container_id)


def sweep_stale(rt: Any) -> list[str]:
    """Remove the tables of this state root whose container is gone or exited (daemon start); a
    host without nft has none."""
    removed: list[str] = []
    if shutil.which("nft") is None:
        return removed
    with ports_lock(rt.paths):
        for table in tables(rt.paths.root):
            cid = container_of(table)
            try:
                state, spec = rt.store.load_state(cid), rt.store.load_spec(cid)
                status = state.status
                # an exited container with a restart policy starts again in its netns, rules and all
                waiting = getattr(spec, "restart", "no") != "no" and state.checkpointed is None and not getattr(state, "manually_stopped", False)
            except ContainerError:
                status, waiting = "gone", False
            if status in _LIVE or waiting:
                continue
            _nft(f"delete table ip {table}\n")
            removed.append(table)
            log.info("removed stale port table %s (container %s)", table, status)
    return removed


# --- choosing and checking host ports ---------------------------------------------------------


@contextmanager
def ports_lock(paths: Any) -> Iterator[None]:
    """Serialise port checks and table changes of one state root (blocking flock, dropped on death).
    The file stays (ROOT/run/ports.lock), so it is kept out of ROOT/run/locks, whose per-resource
    files are removed after each use and whose leftovers mean a crashed operation."""
    paths.run.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.run / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def published_elsewhere(rt: Any, exclude: Iterable[str] = ()) -> list[tuple[str, PortMapping]]:
    """(container name, mapping) of every live container of this state root but ``exclude``."""
    skip = set(exclude)
    out: list[tuple[str, PortMapping]] = []
    for info in rt.list(all=True):
        spec = info.spec
        if spec.container_id in skip or not spec.ports or info.state.status not in _LIVE:
            continue
        out.extend((spec.name, m) for m in spec.ports)
    return out


def bound_by_host(m: PortMapping) -> OSError | None:
    """Whether a host socket holds ``m``'s host port: a bind attempt (None: it is free).

    SO_REUSEADDR keeps a TCP port in TIME_WAIT bindable, but Linux still refuses a bind next to
    a listener; a bound UDP socket refuses it too."""
    kind = socket.SOCK_STREAM if m.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((m.host_ip or "0.0.0.0", m.host_port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return exc  # not an address of this host
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return exc
            raise
    return None


def _free_port(protocol: str, host_ip: str, taken: set[tuple[str, int]]) -> int:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    for _ in range(64):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host_ip or "0.0.0.0", 0))  # the kernel's pick from ip_local_port_range
            port = s.getsockname()[1]
        if (protocol, port) not in taken:
            return int(port)
    raise NetworkError(f"cannot find a free host port for {protocol}")


@contextmanager
def claimed(rt: Any, spec: Any, *, exclude: Iterable[str] = ()) -> Iterator[Any]:
    """``spec`` with its host ports chosen and checked (``claim``), under the ports lock: write the
    record inside the block, so the next claimer sees these ports taken. No ports: no lock."""
    if not spec.ports:
        yield spec
        return
    with ports_lock(rt.paths):
        yield dataclasses.replace(spec, ports=claim(rt, spec, exclude=exclude))


def claim(rt: Any, spec: Any, *, exclude: Iterable[str] = ()) -> tuple[PortMapping, ...]:
    """``spec.ports`` with every host port 0 replaced by a free one; refuses a taken port.

    Taken: published by another live container of this state root (``exclude``: ids that do not
    count, e.g. the exited original a restore replaces) or bound by a host process. Call with
    ``ports_lock`` held until the container's record shows the ports.

    Raises:
        PortInUse: naming the port and who holds it.
    """
    others = published_elsewhere(rt, exclude=[spec.container_id, *exclude])
    for m in spec.ports:
        if not m.host_port:
            continue
        for name, o in others:
            if o.protocol == m.protocol and o.host_port == m.host_port and overlaps(o.host_ip, m.host_ip):
                raise PortInUse(m.host_port, m.protocol, m.host_ip, f"container {name}",
                                hint="choose another host port (-p OTHER:PORT), or stop that container")
        err = bound_by_host(m)
        if err is not None and err.errno == errno.EADDRNOTAVAIL:
            raise InvalidArgument(f"cannot publish port {m.container_port}/{m.protocol} on {m.host_ip}: not an address of this host",
                                  hint="leave the address out (-p HOST_PORT:PORT) or give one of this host's")
        if err is not None:
            raise PortInUse(m.host_port, m.protocol, m.host_ip, "a host process",
                            hint="choose another host port (-p OTHER:PORT), or stop what listens there (ss -tulpn)")
    taken = {(o.protocol, o.host_port) for _, o in others} | {(m.protocol, m.host_port) for m in spec.ports}
    out = []
    for m in spec.ports:
        if not m.host_port:
            port = _free_port(m.protocol, m.host_ip, taken)
            taken.add((m.protocol, port))
            m = PortMapping(container_port=m.container_port, protocol=m.protocol, host_port=port, host_ip=m.host_ip)
        out.append(m)
    return tuple(out)
