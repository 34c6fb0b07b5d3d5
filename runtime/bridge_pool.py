"""One address pool per bridge, shared by every state root on it, and the ARP probe of a new address.

Each state root keeps its own leases (ROOT/network/ipam.json, runtime._ipam). Two roots on one
machine use the same bridge by default (``pmbr0``), so on their own they would hand out the same
address (and so the same neighbour entry) twice. The bridge's pool ties them together:

    /run/pymigrate/bridges/<netns inode>-<bridge>/roots   one line per ROOT/network dir using it
    /run/pymigrate/bridges/<netns inode>-<bridge>/lock    flock: held around every allocation

A bridge is named by its network namespace too (a lab "host" is a namespace with its own
``pmbr0``). Allocation holds the bridge's lock, then the root's: an address leased by any other
registered root counts as taken, except for the same container id (a container moving between
two roots on one bridge keeps its address). The truth stays in each root's ipam.json (the registry
only says where to look), so a root deleted without releasing anything frees its addresses: its
file is gone and it is dropped from the list. /run is a tmpfs: after a reboot the list starts
empty and fills again as roots lease.

ARP probe (RFC 5227 style, short): an address chosen from the pool (never one asked for with
--ip or kept by a restore) is first asked for on the bridge, from the bridge's own MAC with
sender address 0.0.0.0; if anyone answers within ``probe_timeout_s()`` it is skipped (a host or a
namespace someone else put on the bridge holds it). A bridge without ports skips the probe: nobody
could answer.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

BRIDGES_DIR_ENV = "PYMIGRATE_BRIDGES_DIR"
DEFAULT_BRIDGES_DIR = "/run/pymigrate/bridges"
PROBE_MS_ENV = "PYMIGRATE_ARP_PROBE_MS"
DEFAULT_PROBE_MS = 20  # a namespace on a local bridge answers within a millisecond; run -d pays this
ROOTS_FILE = "roots"
LOCK_FILE = "lock"
ETH_P_ARP = 0x0806


def probe_timeout_s() -> float:
    """How long a probe waits for an answer (env PYMIGRATE_ARP_PROBE_MS, default 20; 0: no probe).
    Longer for a bridge with a physical uplink whose neighbours answer slower."""
    try:
        return max(0, int(os.environ.get(PROBE_MS_ENV, DEFAULT_PROBE_MS))) / 1000
    except ValueError:
        return DEFAULT_PROBE_MS / 1000


class BridgePool:
    """The registry of the state roots leasing on ``bridge`` in this network namespace."""

    def __init__(self, bridge: str, base: Path | None = None) -> None:
        self.bridge = bridge
        netns = os.stat("/proc/self/ns/net").st_ino
        self.dir = (base or Path(os.environ.get(BRIDGES_DIR_ENV, DEFAULT_BRIDGES_DIR))) / f"{netns}-{bridge}"

    @contextlib.contextmanager
    def locked(self) -> Iterator[bool]:
        """Hold the bridge's lock; yields False (and shares nothing) where /run cannot be written."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # an unprivileged unit test, a read-only /run: this root alone
            log.debug("bridge %s: no shared pool at %s: %s", self.bridge, self.dir, exc)
            yield False
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        finally:
            os.close(fd)

    def _roots(self) -> list[str]:
        try:
            return [line for line in (self.dir / ROOTS_FILE).read_text().splitlines() if line]
        except FileNotFoundError:
            return []

    def taken_elsewhere(self, own: Path, container_id: str) -> dict[str, str]:
        """Address -> "container <id> of <root>" for every lease of the other live roots (caller
        holds ``locked``); leases of ``container_id`` itself do not count."""
        taken: dict[str, str] = {}
        for directory in self._roots():
            if Path(directory) == own:
                continue
            try:
                leases = json.loads((Path(directory) / "ipam.json").read_bytes()).get("leases", {})
            except (OSError, ValueError, AttributeError):
                continue
            for cid, ip in leases.items():
                if cid != container_id and isinstance(ip, str):
                    taken[ip] = f"container {cid[:12]} of state root {Path(directory).parent}"
        return taken

    def register(self, own: Path) -> None:
        """Add ``own`` (a ROOT/network dir) to the list and drop roots whose pool is gone."""
        roots = [r for r in self._roots() if (Path(r) / "ipam.json").exists() and Path(r) != own]
        roots.append(str(own))
        tmp = self.dir / f".{ROOTS_FILE}.{os.getpid()}.tmp"
        tmp.write_text("".join(f"{r}\n" for r in roots))
        os.rename(tmp, self.dir / ROOTS_FILE)


def arp_probe(bridge: str, ip: str, timeout_s: float | None = None) -> bool:
    """Whether anyone on ``bridge`` answers an ARP probe for ``ip`` within the timeout.

    False when the probe cannot be made (no such bridge, no ports on it, no CAP_NET_RAW): an
    allocation must not fail because the probe could not run."""
    timeout_s = probe_timeout_s() if timeout_s is None else timeout_s
    if timeout_s <= 0:
        return False
    try:
        if not os.listdir(f"/sys/class/net/{bridge}/brif"):
            return False
        mac = bytes.fromhex(Path(f"/sys/class/net/{bridge}/address").read_text().strip().replace(":", ""))
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.htons(ETH_P_ARP))
    except OSError as exc:
        log.debug("no arp probe on %s: %s", bridge, exc)
        return False
    target = ipaddress.IPv4Address(ip).packed
    with sock:
        try:
            sock.bind((bridge, ETH_P_ARP))
            # ethernet broadcast; ARP request, sender MAC ours, sender IP 0.0.0.0 (a probe), target IP
            frame = (b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
                     + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + b"\0" * 4 + b"\0" * 6 + target)
            sock.send(frame)
        except OSError as exc:
            log.debug("arp probe of %s on %s not sent: %s", ip, bridge, exc)
            return False
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            data = sock.recv(128)
            # sender protocol address (bytes 28-32 of the frame) is the probed address: it is held
            if len(data) >= 42 and data[12:14] == b"\x08\x06" and data[28:32] == target and data[6:12] != mac:
                log.info("arp probe: %s on bridge %s is answered by %s: skipped", ip, bridge, data[6:12].hex(":"))
                return True
    return False
