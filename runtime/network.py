"""Container networking: one bridge per state root, one veth pair and one address per container.

Picture (mode "bridge")::

    host netns                                container netns (ROOT/netns/<container_id>)
    bridge pmbr0  10.77.0.1/16 (gateway)
      └── pmv<tag><id8>  ── veth pair ──  eth0  10.77.0.5/16, MAC 02:42:0a:4d:00:05, default via gateway
                                          lo    127.0.0.1

- The bridge is created on first connect with the gateway address (first host address of the subnet)
  and a MAC derived from it, so the bridge MAC does not change as ports come and go. Host to
  container and container to container traffic works through it. Nothing is forwarded further: no
  NAT, no ip_forward, so no container traffic can leave the machine.
- A container's MAC is random and locally administered (``random_mac``), recorded in its spec, so
  it survives a migration together with the address; a copy under a new address gets a new one.
  ``announce`` sends gratuitous ARP after a restore so bridges and neighbours learn the new
  location. Every state root on one bridge leases from one shared pool, and an address chosen from
  it is ARP-probed first (runtime/bridge_pool.py).
- Host veth names are ``pmv`` + 4 hex digits of the state root + the first 8 characters of the
  container id (15 characters, IFNAMSIZ - 1). The state-root tag keeps two state roots on one machine
  (a local migration) from colliding on the same container id.
- Leases live in ROOT/network/ipam.json (see ``runtime._ipam``: flock + atomic rename), the bridge
  and subnet of a state root in ROOT/network/network.json, written on first use and fixed after.
- Namespaces are files under ROOT/netns (see ``runtime._netns`` for the kernel facts), and links,
  addresses and routes are set through rtnetlink directly (``runtime._netlink``): no exec, no
  pyroute2 import (~150 ms). create_netns + connect cost ~2.3 ms in a warm process and ~4.5 ms in
  a fresh one (ctypes import, first lease write); the lease's one fsync dominates under disk load.
  disconnect is slower (20-40 ms): deleting a netdev waits for an RCU grace period in the kernel.

Mode "none" gives the container a namespace with only loopback up; mode "host" none of its own
(``HostNetwork``: it shares the runtime's, cannot be checkpointed or migrated).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import struct
import threading
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from runtime import _ipam, _netns
from runtime._netlink import NETLINK_ROUTE, NetlinkError, RtNetlink
from runtime.config import DEFAULT_BRIDGE, DEFAULT_SUBNET, Paths
from runtime.errors import ContainerExists, InvalidArgument, NetworkError

if TYPE_CHECKING:
    from runtime.bridge_pool import ArpProbe

log = logging.getLogger(__name__)

__all__ = [
    "CONTAINER_IFNAME",
    "NETWORK_FILE",
    "Endpoint",
    "Network",
    "NetworkConfig",
    "BridgeNetwork",
    "NoNetwork",
    "host_veth_name",
    "mac_for_ip",
    "network_for",
    "set_link_up",
]

NETWORK_FILE = "network.json"
CONTAINER_IFNAME = "eth0"
IFNAMSIZ = 16  # including the terminating NUL: names are at most 15 characters
_IFNAME_OK = re.compile(r"[A-Za-z0-9_.-]+")
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
ETH_P_ARP = 0x0806
HOST_NETNS = "/proc/self/ns/net"  # mode "host": whoever starts the container joins its own namespace


@dataclass(frozen=True)
class NetworkConfig:
    """The bridge network of one state root (stored in ROOT/network/network.json on first use).

    Raises:
        InvalidArgument: on construction, for a bridge name the kernel would refuse or a subnet that
            is not an IPv4 network of at most /30 given by its network address.
    """

    bridge: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET

    def __post_init__(self) -> None:
        if not (0 < len(self.bridge) < IFNAMSIZ) or not _IFNAME_OK.fullmatch(self.bridge) or self.bridge in (".", ".."):
            raise InvalidArgument(
                f"invalid bridge name {self.bridge!r}: expected 1-15 characters of letters, digits, '_', '-', '.'"
            )
        try:
            net = ipaddress.IPv4Network(self.subnet)
        except ValueError as exc:
            raise InvalidArgument(
                f"invalid subnet {self.subnet!r}: expected an IPv4 network such as 10.77.0.0/16 ({exc})"
            ) from None
        if net.prefixlen > 30:
            raise InvalidArgument(f"subnet {self.subnet} is too small: expected a prefix of at most /30")

    @property
    def prefix_len(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    @property
    def gateway(self) -> str:
        """The bridge's own address: the first host address of the subnet."""
        return str(ipaddress.IPv4Network(self.subnet).network_address + 1)

    @property
    def broadcast(self) -> str:
        return str(ipaddress.IPv4Network(self.subnet).broadcast_address)


@dataclass(frozen=True)
class Endpoint:
    """A container's attachment to the bridge."""

    container_id: str
    ip: str  # e.g. "10.77.0.5", no prefix
    prefix_len: int
    gateway: str
    mac: str  # 02:42:<ip bytes> unless given explicitly
    host_veth: str  # host end of the veth pair, enslaved to ``bridge``
    bridge: str


def random_mac() -> str:
    """A fresh random locally administered unicast MAC (bit 1 of the first byte set, bit 0 clear):
    what every new container (and a restored copy under a new address) gets, so two containers on
    one bridge never share one, whatever their addresses (runtime/bridge_pool.py)."""
    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def mac_for_ip(ip: str) -> str:
    """The locally administered unicast MAC derived from an IPv4 address: 02:42 + its four bytes
    (what records from before random MACs used: their spec has no MAC)."""
    raw = _ipam.parse_address(ip).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in raw)


def host_veth_name(root: Path, container_id: str) -> str:
    """Name of a container's host-side veth: ``pmv`` + state-root tag (4 hex) + 8 id characters."""
    tag = zlib.crc32(os.path.realpath(root).encode()) & 0xFFFF  # same tag through symlinks
    short = container_id[:8]
    if not _IFNAME_OK.fullmatch(short):
        short = f"{zlib.crc32(container_id.encode()):08x}"
    return f"pmv{tag:04x}{short}"


def _normalize_mac(mac: str) -> str:
    if not _MAC_RE.fullmatch(mac):
        raise InvalidArgument(f"invalid MAC address {mac!r}: expected six hex pairs such as 02:42:0a:4d:00:05")
    if int(mac[:2], 16) & 1:
        raise InvalidArgument(f"invalid MAC address {mac}: a multicast address cannot name an interface")
    return mac.lower()


def _check_container_id(container_id: str) -> None:
    if not container_id or "/" in container_id or container_id in (".", "..") or "\0" in container_id:
        raise InvalidArgument(f"invalid container id {container_id!r}: expected a single path component")


class Network(Protocol):
    """Network namespaces and addresses of the containers of one state root.

    Does not: start processes in the namespace (the container does that, joining
    ``create_netns``'s path), configure anything beyond lo and eth0, or route traffic off the machine.
    """

    def create_netns(self, container_id: str, userns: Path | None = None) -> Path:
        """Make a new network namespace pinned at ROOT/netns/<container_id>, loopback up; owned by
        the user namespace pinned at ``userns`` (runtime/userns.py) when given.

        Raises:
            ContainerExists: a namespace is already mounted there.
            NetworkError: the kernel refused (unshare, mount or netlink), nothing left behind.
        """
        ...

    def connect(self, container_id: str, netns: Path, ip: str | None = None, mac: str | None = None, *, up: bool = True) -> Endpoint | None:
        """Attach the namespace at ``netns`` to the bridge as eth0 with ``ip`` (or the next free one).

        Ensures the bridge (gateway address, up), leases the address, creates the veth pair with
        one end born in ``netns`` as eth0 (ip/prefix, ``mac`` or the one derived from the ip, default
        route via the gateway) and the other enslaved to the bridge, all up — but with ``up=False``
        the host end stays down (``set_link_up`` later): a restored container's sockets must not
        meet its peers' retransmissions before CRIU has put them back, or the peers get a RST.
        On failure everything this call created is undone. ``NoNetwork`` returns None.

        Raises:
            InvalidArgument: ``ip`` or ``mac`` unusable. ContainerExists: ``ip`` taken or the
            container already connected. NetworkError: the kernel refused.
        """
        ...

    def disconnect(self, container_id: str) -> None:
        """Delete the host veth (if present; its peer goes with it) and release the lease. Idempotent."""
        ...

    def confirm_lease(self, container_id: str) -> str | None:
        """The container's address once the answer to the ARP probe of a ``lease(...,
        answer_later=True)`` is in: the leased one, or, if someone else answered for it, another
        one leased now (probed as it is chosen). None without a lease. Call it before ``connect``."""
        ...

    def remove_netns(self, container_id: str) -> None:
        """Unmount and delete ROOT/netns/<container_id>. Idempotent."""
        ...

    def lease(self, container_id: str, ip: str | None = None, *, answer_later: bool = False) -> str:
        """Reserve ``ip`` (or the container's current, or the lowest free address) for the container.

        For pre-flight checks: connect() keeps an existing lease of the same address. Asking for a
        different address than the one held moves the lease. ``answer_later``: a chosen address
        is leased as soon as its ARP probe is sent, and ``confirm_lease`` collects the answer (the
        probe's wait overlaps the work between the two: ``run``'s mounts and cgroup).

        Raises:
            InvalidArgument: not an IPv4 address, outside the subnet, or the network, gateway or
                broadcast address (the message names it).
            ContainerExists: leased to another container (named).
            NetworkError: no free address left.
        """
        ...

    def release(self, container_id: str) -> None:
        """Drop the container's lease, if any."""
        ...

    def leases(self) -> dict[str, str]:
        """container_id -> address."""
        ...

    def is_free(self, ip: str) -> bool:
        """True if ``ip`` could be leased now (inside the pool and held by nobody)."""
        ...

    def endpoint(self, container_id: str) -> Endpoint | None:
        """The endpoint a container with a lease has (or would have), None without a lease."""
        ...

    def announce(self, container_id: str, netns: Path) -> None:
        """Send gratuitous ARP for the container's address from eth0 inside ``netns``.

        Used after a restore so the bridge and neighbours learn where the address lives now.
        """
        ...


class _Namespaces:
    """create_netns / remove_netns, common to both modes."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def confirm_lease(self, container_id: str) -> str | None:
        return None

    def netns_path(self, container_id: str) -> Path:
        _check_container_id(container_id)
        return self.paths.netns / container_id

    def create_netns(self, container_id: str, userns: Path | None = None) -> Path:
        path = self.netns_path(container_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if _netns.is_netns_mount(path):
            raise ContainerExists(
                f"network namespace of container {container_id} already exists at {path}",
                hint="remove the container (or its stale namespace) first",
            )
        try:
            path.unlink()  # a plain file left by a crash between create and mount
        except FileNotFoundError:
            pass
        try:
            _netns.create(path, userns=userns)
        except OSError as exc:
            raise NetworkError(f"cannot create network namespace {path}: {exc.strerror or exc}") from exc
        return path

    def remove_netns(self, container_id: str) -> None:
        path = self.netns_path(container_id)
        try:
            _netns.remove(path)
        except OSError as exc:
            raise NetworkError(f"cannot remove network namespace {path}: {exc.strerror or exc}") from exc


class NoNetwork(_Namespaces):
    """Mode "none": a namespace with only loopback; nothing to connect, lease or announce."""

    def connect(self, container_id: str, netns: Path, ip: str | None = None, mac: str | None = None, *, up: bool = True) -> Endpoint | None:
        if ip is not None:
            raise InvalidArgument(
                f"cannot give container {container_id} address {ip}: its network mode is none",
                hint="use --network bridge to set an address",
            )
        return None

    def disconnect(self, container_id: str) -> None:
        return None

    def lease(self, container_id: str, ip: str | None = None, *, answer_later: bool = False) -> str:
        raise InvalidArgument(
            f"cannot lease an address for container {container_id}: its network mode is none",
            hint="use --network bridge to get an address",
        )

    def release(self, container_id: str) -> None:
        return None

    def leases(self) -> dict[str, str]:
        return {}

    def is_free(self, ip: str) -> bool:
        return False

    def endpoint(self, container_id: str) -> Endpoint | None:
        return None

    def announce(self, container_id: str, netns: Path) -> None:
        return None


class HostNetwork(NoNetwork):
    """Mode "host": no namespace of its own; the container's processes join the network namespace
    the runtime runs in (``HOST_NETNS``, read by each starter in its own process: the daemon's or
    the CLI's, which on a test "host" is that host's namespace). No address, lease or veth, so
    nothing to create or remove. CRIU cannot take such a container along (runtime/checkpointing.py
    refuses it before any freeze)."""

    def netns_path(self, container_id: str) -> Path:
        _check_container_id(container_id)
        return Path(HOST_NETNS)

    def create_netns(self, container_id: str, userns: Path | None = None) -> Path:
        return self.netns_path(container_id)

    def remove_netns(self, container_id: str) -> None:
        return None

    def connect(self, container_id: str, netns: Path, ip: str | None = None, mac: str | None = None, *, up: bool = True) -> Endpoint | None:
        if ip is not None:
            raise InvalidArgument(f"cannot give container {container_id} address {ip}: it uses the host's network",
                                  hint="use --network bridge to set an address")
        return None

    def lease(self, container_id: str, ip: str | None = None, *, answer_later: bool = False) -> str:
        raise InvalidArgument(f"cannot lease an address for container {container_id}: it uses the host's network",
                              hint="use --network bridge to get an address")


class BridgeNetwork(_Namespaces):
    """Mode "bridge": see the module docstring. Build it with ``network_for``."""

    def __init__(self, paths: Paths, config: NetworkConfig, *, stored: bool = False) -> None:
        super().__init__(paths)
        self.config = config
        self._stored = stored
        from runtime.bridge_pool import BridgePool

        # one pool per bridge for every state root on it; a chosen address is ARP-probed first
        self._ipam = _ipam.Ipam(paths.network, config.subnet, config.bridge, pool=BridgePool(config.bridge),
                                probe=self._probe)
        self._answer_later: str | None = None  # the container whose lease is being chosen so
        self._unanswered: dict[str, ArpProbe] = {}  # container_id -> the probe of its leased address

    def _probe(self, ip: str) -> bool:
        """Whether anyone else answers for ``ip`` (runtime/bridge_pool.py); False at once for a
        ``lease(..., answer_later=True)``, whose probe waits for ``confirm_lease``."""
        from runtime.bridge_pool import ArpProbe, arp_probe

        if self._answer_later is None:
            return arp_probe(self.config.bridge, ip)
        probe = ArpProbe(self.config.bridge, ip)
        if probe.sent:  # not sent (a bridge without ports...): as arp_probe, nobody answers
            self._unanswered[self._answer_later] = probe
        return False

    def confirm_lease(self, container_id: str) -> str | None:
        probe = self._unanswered.pop(container_id, None)
        ip = self._ipam.leases().get(container_id)
        if probe is None or not probe.answered():
            return ip
        self._ipam.release(container_id)  # someone else holds it: choose again, probing (it answers again)
        return self._ipam.lease(container_id)[0]

    def _drop_probe(self, container_id: str) -> None:
        probe = self._unanswered.pop(container_id, None)
        if probe is not None:
            probe.close()

    # -- addresses -------------------------------------------------------------------------------

    def lease(self, container_id: str, ip: str | None = None, *, answer_later: bool = False) -> str:
        _check_container_id(container_id)
        self._store_config()
        self._drop_probe(container_id)
        self._answer_later = container_id if answer_later else None
        try:
            return self._ipam.lease(container_id, ip)[0]
        finally:
            self._answer_later = None

    def release(self, container_id: str) -> None:
        self._drop_probe(container_id)
        self._ipam.release(container_id)

    def leases(self) -> dict[str, str]:
        return self._ipam.leases()

    def is_free(self, ip: str) -> bool:
        return self._ipam.is_free(ip)

    def host_veth(self, container_id: str) -> str:
        return host_veth_name(self.paths.root, container_id)

    def endpoint(self, container_id: str, mac: str | None = None) -> Endpoint | None:
        ip = self._ipam.leases().get(container_id)
        if ip is None:
            return None
        return self._endpoint(container_id, ip, mac or mac_for_ip(ip))

    def _endpoint(self, container_id: str, ip: str, mac: str) -> Endpoint:
        cfg = self.config
        return Endpoint(
            container_id=container_id,
            ip=ip,
            prefix_len=cfg.prefix_len,
            gateway=cfg.gateway,
            mac=mac,
            host_veth=self.host_veth(container_id),
            bridge=cfg.bridge,
        )

    # -- links -----------------------------------------------------------------------------------

    def connect(self, container_id: str, netns: Path, ip: str | None = None, mac: str | None = None, *, up: bool = True) -> Endpoint:
        started = time.perf_counter()
        _check_container_id(container_id)
        mac = _normalize_mac(mac) if mac is not None else None
        self._store_config()
        if container_id in self._unanswered:  # never connected to an address someone else answers for
            held = self.confirm_lease(container_id)
            if ip is not None and held != ip:
                raise NetworkError(f"cannot connect container {container_id} with {ip}: another host on bridge "
                                   f"{self.config.bridge} answers for it", hint="confirm_lease first")
        address, new_lease = self._ipam.lease(container_id, ip)
        ep = self._endpoint(container_id, address, mac or mac_for_ip(address))
        cfg = self.config
        created = False
        try:
            with RtNetlink() as nl:
                bridge_index = self._ensure_bridge(nl)
                try:
                    nsfd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise NetworkError(f"cannot connect container {container_id}: no network namespace at {netns}") from None
                try:
                    nl.add_veth(
                        ep.host_veth,
                        up=up,
                        master=bridge_index,
                        peer_name=CONTAINER_IFNAME,
                        peer_mac=ep.mac,
                        peer_netns_fd=nsfd,
                    )
                    created = True
                finally:
                    os.close(nsfd)
            inner_sock = _netns.socket_in(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            with RtNetlink(inner_sock) as inner:
                index = inner.link_index(CONTAINER_IFNAME)
                if index is None:  # cannot happen unless someone renamed it in between
                    raise NetlinkError(errno.ENODEV, f"find {CONTAINER_IFNAME} in {netns}")
                what = f"{CONTAINER_IFNAME} of container {container_id}"
                inner.link_up(index, what)
                inner.add_address(index, ep.ip, ep.prefix_len, cfg.broadcast, what)
                inner.add_default_route(ep.gateway, index, what)
        except BaseException as exc:
            self._undo_connect(container_id, ep, created=created, new_lease=new_lease)
            if isinstance(exc, NetlinkError) and exc.errno == errno.EEXIST and not created:
                raise ContainerExists(
                    f"cannot connect container {container_id}: {exc}",
                    hint=f"veth {ep.host_veth} or {CONTAINER_IFNAME} in {netns} exists already; disconnect first",
                ) from exc
            if isinstance(exc, OSError):
                raise NetworkError(
                    f"cannot connect container {container_id} to bridge {cfg.bridge}: {exc.strerror or exc}"
                ) from exc
            raise
        log.info(
            "connected container=%s ip=%s/%d mac=%s veth=%s bridge=%s (%.2f ms)",
            container_id, ep.ip, ep.prefix_len, ep.mac, ep.host_veth, ep.bridge,
            (time.perf_counter() - started) * 1000,
        )  # fmt: skip
        return ep

    def _undo_connect(self, container_id: str, ep: Endpoint, *, created: bool, new_lease: bool) -> None:
        if created:
            try:
                with RtNetlink() as nl:
                    nl.delete_link(ep.host_veth)
            except OSError as exc:
                log.warning("rollback: cannot delete veth %s of container=%s: %s", ep.host_veth, container_id, exc)
        if new_lease:
            try:
                self._ipam.release(container_id)
            except (OSError, NetworkError) as exc:
                log.warning("rollback: cannot release %s of container=%s: %s", ep.ip, container_id, exc)

    def _ensure_bridge(self, nl: RtNetlink) -> int:
        """Create the bridge if missing; make sure it has the gateway address and is up. Returns its ifindex."""
        cfg = self.config
        index = nl.link_index(cfg.bridge)
        if index is None:
            try:
                nl.add_bridge(cfg.bridge, mac_for_ip(cfg.gateway))
                log.info("created bridge %s (gateway %s/%d)", cfg.bridge, cfg.gateway, cfg.prefix_len)
            except NetlinkError as exc:
                if exc.errno != errno.EEXIST:  # EEXIST: a concurrent connect made it first
                    raise
            index = nl.link_index(cfg.bridge)
            if index is None:
                raise NetlinkError(errno.ENODEV, f"find bridge {cfg.bridge} after creating it")
        nl.add_address(index, cfg.gateway, cfg.prefix_len, cfg.broadcast, f"bridge {cfg.bridge}")
        nl.link_up(index, f"bridge {cfg.bridge}")
        return index

    def disconnect(self, container_id: str) -> None:
        host = self.host_veth(container_id)
        try:
            with RtNetlink() as nl:
                if nl.delete_link(host):
                    log.info("disconnected container=%s (deleted veth %s)", container_id, host)
        except OSError as exc:
            raise NetworkError(f"cannot disconnect container {container_id}: {exc.strerror or exc}") from exc
        self._ipam.release(container_id)

    def delete_bridge(self) -> bool:
        """Delete this state root's bridge (tests, teardown). False if it did not exist.

        Raises:
            InvalidState-like NetworkError: containers still hold leases.
        """
        held = self._ipam.leases()
        if held:
            raise NetworkError(
                f"cannot delete bridge {self.config.bridge}: {len(held)} container(s) still hold addresses",
                hint="disconnect them first",
            )
        try:
            with RtNetlink() as nl:
                return nl.delete_link(self.config.bridge)
        except OSError as exc:
            raise NetworkError(f"cannot delete bridge {self.config.bridge}: {exc.strerror or exc}") from exc

    # -- gratuitous ARP --------------------------------------------------------------------------

    def announce(self, container_id: str, netns: Path) -> None:
        ip = self._ipam.leases().get(container_id)
        if ip is None:
            raise NetworkError(f"cannot announce container {container_id}: it holds no address on bridge {self.config.bridge}")
        # Protocol 0 and bound with protocol 0: a send-only socket. A packet socket with a protocol
        # registers a receive hook, and re-binding it drops that hook with synchronize_net()
        # (an RCU grace period, ~8 ms here, right when a restored container should be running).
        try:
            sock = _netns.socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
        except OSError as exc:
            raise NetworkError(f"cannot announce {ip} of container {container_id}: {exc.strerror or exc}") from exc
        try:
            sock.bind((CONTAINER_IFNAME, 0))
            mac = sock.getsockname()[4]  # the interface's hardware address
            for frame in gratuitous_arp_frames(mac, ip):
                sock.send(frame)
        except OSError as exc:
            sock.close()
            raise NetworkError(f"cannot announce {ip} of container {container_id}: {exc.strerror or exc}") from exc
        # Closing a packet socket waits for an RCU grace period (packet_release ->
        # synchronize_net: 8-20 ms here), right after a restore: let another thread wait.
        threading.Thread(target=sock.close, name="close-arp-socket", daemon=True).start()
        log.debug("announced container=%s ip=%s mac=%s", container_id, ip, mac.hex(":"))

    # -- config ----------------------------------------------------------------------------------

    def _store_config(self) -> None:
        """Write network.json on first use; refuse if another process stored a different config."""
        if self._stored:
            return
        path = self.paths.network / NETWORK_FILE
        with _ipam.locked(self.paths.network):
            stored = _read_config(path)
            if stored is None:
                _ipam.write_atomic(path, (json.dumps(asdict(self.config), indent=1) + "\n").encode())
                log.info("network of state root %s: bridge %s subnet %s", self.paths.root, self.config.bridge, self.config.subnet)
            elif stored != self.config:
                raise _config_conflict(path, stored, self.config)
        self._stored = True


def gratuitous_arp_frames(mac: bytes, ip: str) -> tuple[bytes, bytes]:
    """Broadcast ARP request and reply announcing ``ip`` at ``mac`` (RFC 5227 announcement style)."""
    spa = socket.inet_aton(ip)
    eth = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + spa + b"\0" * 6 + spa
    reply = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac + spa + b"\xff" * 6 + spa
    pad = b"\0" * (60 - len(eth) - len(arp))  # minimum Ethernet frame without FCS
    return eth + arp + pad, eth + reply + pad


def _read_config(path: Path) -> NetworkConfig | None:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise NetworkError(f"network config {path} is corrupt: {exc}") from None
    try:
        return NetworkConfig(bridge=doc["bridge"], subnet=doc["subnet"])
    except (KeyError, TypeError) as exc:
        raise NetworkError(f"network config {path} is corrupt: missing {exc}") from None


def _config_conflict(path: Path, stored: NetworkConfig, asked: NetworkConfig) -> InvalidArgument:
    return InvalidArgument(
        f"state root uses bridge {stored.bridge} subnet {stored.subnet} (in {path}), "
        f"not bridge {asked.bridge} subnet {asked.subnet}",
        hint="use the stored settings, or remove the file once no container of this state root is connected",
    )


def network_for(
    paths: Paths, mode: Literal["bridge", "none", "host", "container"], config: NetworkConfig | None = None
) -> BridgeNetwork | NoNetwork:
    """The Network of a state root for a container's network mode.

    ``config`` applies only until the state root has a stored one (ROOT/network/network.json);
    after that, None means "the stored one" and a different config is refused.

    Raises:
        InvalidArgument: unknown mode, or ``config`` differs from the stored one.
    """
    if mode == "none":
        return NoNetwork(paths)
    if mode in ("host", "container"):
        # container: another container's namespace, joined by the starter (runtime/ns_modes.py);
        # like host, nothing of its own to create, connect or remove
        return HostNetwork(paths)
    if mode != "bridge":
        raise InvalidArgument(f"unknown network mode {mode!r}: expected bridge, none or host")
    path = paths.network / NETWORK_FILE
    stored = _read_config(path)
    if stored is not None and config is not None and config != stored:
        raise _config_conflict(path, stored, config)
    return BridgeNetwork(paths, stored or config or NetworkConfig(), stored=stored is not None)


def set_link_up(name: str, up: bool) -> bool:
    """Set link ``name`` of this network namespace up or down (rtnetlink); False if there is none."""
    import socket

    from runtime import _netlink as nl  # rtnetlink: no `ip` exec while a container is frozen

    with nl.RtNetlink() as rtnl:
        index = rtnl.link_index(name)
        if index is None:
            return False
        body = nl._IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, nl.IFF_UP if up else 0, nl.IFF_UP)
        rtnl.request(nl.RTM_NEWLINK, 0, body, f"set link {name} {'up' if up else 'down'}")
    return True
