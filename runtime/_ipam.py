"""Address pool of one bridge network: which container holds which IPv4 address, kept on disk.

Format of ROOT/network/ipam.json (version 1)::

    {"version": 1, "subnet": "10.77.0.0/16", "leases": {"<container_id>": "10.77.0.2", ...}}

Concurrency and durability: every change happens under an exclusive ``fcntl.flock`` on
ROOT/network/ipam.lock and is written to a temporary file, fsync()ed and rename()d over ipam.json,
so concurrent CLI processes never hand out the same address and a crash leaves either the old or the
new file (see ``write_atomic`` for what is not fsync()ed). Readers need no lock (rename is atomic). flock locks belong to the open file description,
so the lock also serialises threads of one process as long as each operation opens the lock file
itself (it does).

Allocation takes the lowest free host address after the gateway, so a released address is reused
first and the order is predictable. The network address, the gateway (first host address) and the
broadcast address are never leased.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runtime.errors import ContainerExists, InvalidArgument, NetworkError

log = logging.getLogger(__name__)

IPAM_FILE = "ipam.json"
LOCK_FILE = "ipam.lock"
VERSION = 1


def parse_address(ip: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(ip)
    except ValueError:
        raise InvalidArgument(
            f"invalid address {ip!r}: expected a dotted IPv4 address such as 10.77.0.5"
        ) from None


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename.

    The directory is not fsync()ed: that only matters across a power loss, after which no container
    of the state root is running anyway, and it doubles the cost (each fsync is 0.3-4 ms here,
    on the container start path). Readers see the old or the new file, never a torn one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the pool's exclusive lock (ROOT/network/ipam.lock) for the body."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last fd of the description drops the flock


class Ipam:
    """The lease table of one subnet, stored in ``directory``/ipam.json.

    Args:
        directory: ROOT/network.
        subnet: the pool, e.g. ``10.77.0.0/16`` (prefix at most /30).
        bridge: named in error messages only.
    """

    def __init__(self, directory: Path, subnet: str, bridge: str, *, pool: Any = None,
                 probe: Callable[[str], bool] | None = None) -> None:
        self.directory = directory
        self.path = directory / IPAM_FILE
        self.network = ipaddress.IPv4Network(subnet)
        self.bridge = bridge
        self.gateway = self.network.network_address + 1
        # the bridge's pool shared with other state roots, and the ARP probe of a chosen address
        # (runtime/bridge_pool.py); None: this root alone, nothing probed
        self.pool = pool
        self.probe = probe

    # -- reading ---------------------------------------------------------------------------------

    def leases(self) -> dict[str, str]:
        """container_id -> address, as stored now."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            leases = doc["leases"]
            if not isinstance(leases, dict):
                raise TypeError("leases is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise NetworkError(
                f"address pool {self.path} is corrupt: {exc}",
                hint="inspect or remove the file once no container of this state root runs",
            ) from None
        return {str(k): str(v) for k, v in leases.items()}

    def holder(self, ip: str) -> str | None:
        for container_id, leased in self.leases().items():
            if leased == ip:
                return container_id
        return None

    def check(self, ip: str) -> ipaddress.IPv4Address:
        """Validate that ``ip`` belongs to the pool (not whether it is taken).

        Raises:
            InvalidArgument: not an address, outside the subnet, or the network, gateway or
                broadcast address; the message names the address.
        """
        addr = parse_address(ip)
        net = self.network
        if addr not in net:
            raise InvalidArgument(
                f"address {addr} is outside subnet {net} of bridge {self.bridge}",
                hint=f"pick an address in {net} or omit --ip",
            )
        if addr == net.network_address:
            raise InvalidArgument(f"address {addr} is the network address of subnet {net}")
        if addr == net.broadcast_address:
            raise InvalidArgument(f"address {addr} is the broadcast address of subnet {net}")
        if addr == self.gateway:
            raise InvalidArgument(f"address {addr} is the gateway of bridge {self.bridge}")
        return addr

    def is_free(self, ip: str) -> bool:
        try:
            self.check(ip)
        except InvalidArgument:
            return False
        return self.holder(str(ipaddress.IPv4Address(ip))) is None

    # -- changing --------------------------------------------------------------------------------

    def lease(self, container_id: str, ip: str | None = None) -> tuple[str, bool]:
        """Make ``container_id`` hold ``ip`` (or, if None, its current or the lowest free address).

        Returns:
            (address, new): ``new`` is False when the container already held that address.

        Raises:
            InvalidArgument: ``ip`` is not usable (see ``check``).
            ContainerExists: ``ip`` is leased to another container (named).
            NetworkError: the pool is exhausted.
        """
        wanted = str(self.check(ip)) if ip is not None else None
        with self._pool_locked() as shared:
            elsewhere = self.pool.taken_elsewhere(self.directory, container_id) if shared else {}
            with locked(self.directory):
                leases = self.leases()
                current = leases.get(container_id)
                if current is not None and (wanted is None or wanted == current):
                    return current, False
                if wanted is not None:
                    for other, leased in leases.items():
                        if leased == wanted and other != container_id:
                            raise ContainerExists(
                                f"address {wanted} is already in use by container {other}",
                                hint="pick another address or omit --ip",
                            )
                    if wanted in elsewhere:
                        raise ContainerExists(f"address {wanted} is already in use by {elsewhere[wanted]} on bridge {self.bridge}",
                                              hint="pick another address or omit --ip")
                    chosen = wanted
                else:
                    chosen = self._lowest_free(set(leases.values()) | set(elsewhere))
                leases[container_id] = chosen
                self._store(leases)
                if shared:
                    self.pool.register(self.directory)
        log.debug("leased %s to container=%s (bridge %s)", chosen, container_id, self.bridge)
        return chosen, True

    def release(self, container_id: str) -> str | None:
        """Drop the container's lease; return the address it held (None if it held none)."""
        if container_id not in self.leases():  # cheap unlocked check keeps release idempotent and fast
            return None
        with locked(self.directory):
            leases = self.leases()
            ip = leases.pop(container_id, None)
            if ip is not None:
                self._store(leases)
        if ip is not None:
            log.debug("released %s of container=%s", ip, container_id)
        return ip

    @contextlib.contextmanager
    def _pool_locked(self) -> Iterator[bool]:
        if self.pool is None:
            yield False
            return
        with self.pool.locked() as shared:
            yield shared

    def _lowest_free(self, used: set[str]) -> str:
        """The lowest address nobody leases and nobody answers an ARP probe for."""
        first = int(self.gateway) + 1
        last = int(self.network.broadcast_address) - 1
        used_ints = {int(ipaddress.IPv4Address(u)) for u in used}
        for candidate in range(first, last + 1):
            if candidate not in used_ints:
                address = str(ipaddress.IPv4Address(candidate))
                if self.probe is not None and self.probe(address):
                    continue  # someone outside our pools holds it (runtime/bridge_pool.py)
                return address
        raise NetworkError(
            f"no free address left in subnet {self.network} of bridge {self.bridge}",
            hint="remove stopped containers or configure a larger subnet",
        )

    def _store(self, leases: dict[str, str]) -> None:
        doc = {"version": VERSION, "subnet": str(self.network), "leases": dict(sorted(leases.items()))}
        write_atomic(self.path, (json.dumps(doc, indent=1) + "\n").encode())
