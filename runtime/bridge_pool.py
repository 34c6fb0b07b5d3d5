"""One address pool per bridge, shared by every state root on it, and the ARP probe of a new address.

Each state root keeps its own leases (ROOT/network/ipam.json, runtime._ipam). Two roots on one
machine use the same bridge by default (``pmbr0``), so on their own they would hand out the same
address (and so the same neighbour entry) twice. The bridge's pool ties them together:

    /run/pymigrate/bridges/<netns id>-<bridge>/roots   one line per ROOT/network dir using it
    /run/pymigrate/bridges/<netns id>-<bridge>/lock    flock: held around every allocation

A bridge is named by its network namespace too (a lab "host" is a namespace with its own
``pmbr0``). The namespace is named by its cookie (SO_NETNS_COOKIE, never reused while the machine
runs), not its inode number: inode numbers of deleted namespaces are handed out again, and a new
"host" then inherited a dead one's registry and saw its stale leases as taken (CI found it). Allocation holds the bridge's lock, then the root's: an address leased by any other
registered root counts as taken, except for the same container id (a container moving between
two roots on one bridge keeps its address). The truth stays in each root's ipam.json (the registry
only says where to look), so a root deleted without releasing anything frees its addresses: its
file is gone and it is dropped from the list. /run is a tmpfs: after a reboot the list starts
empty and fills again as roots lease.

ARP probe (RFC 5227 style, short): an address chosen from the pool (never one asked for with
--ip or kept by a restore) is first asked for on the bridge, from the bridge's own MAC with
sender address 0.0.0.0; if anyone answers within ``probe_timeout_s()`` it is skipped (a host or a
namespace someone else put on the bridge holds it). A bridge without ports skips the probe: nobody
could answer. ``run`` leases the address as soon as its probe is sent (``ArpProbe``) and collects
the answer after its mounts and cgroup, right before the veth is made: the wait is spent on that
work. An address someone answered for is given back then and another one chosen, probed as it is
(the record's spec is rewritten), so it is never connected.
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
import threading
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
SO_NETNS_COOKIE = 71  # linux 5.14+; not in Python's socket module


def netns_id() -> str:
    """This thread's network namespace, unique while the machine runs: "c<cookie>" (kernels
    before 5.14: "<inode>", which a later namespace may reuse)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            return f"c{int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), 'little')}"
    except OSError:
        return str(os.stat("/proc/thread-self/ns/net").st_ino)


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
        self.dir = (base or Path(os.environ.get(BRIDGES_DIR_ENV, DEFAULT_BRIDGES_DIR))) / f"{netns_id()}-{bridge}"

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


class ArpProbe:
    """An ARP probe of ``ip`` on ``bridge``, sent when made; ``answered`` collects the answer.

    Made at ``run``'s lease and answered before its connect (``BridgeNetwork.lease(...,
    answer_later=True)``, ``confirm_lease``), the wait overlaps the rest of a start: answers
    queue on the socket meanwhile, and ``answered`` still waits until ``timeout_s`` after the send
    before it says nobody did. Its socket is closed on another thread: closing a packet socket
    waits for an RCU grace period (packet_release -> synchronize_net, ~16 ms here).

    ``sent`` is False when the probe could not be made (no such bridge, no ports on it, no
    CAP_NET_RAW, probes off): ``answered`` is then False."""

    def __init__(self, bridge: str, ip: str, timeout_s: float | None = None) -> None:
        self.bridge = bridge
        self.ip = ip
        self.target = ipaddress.IPv4Address(ip).packed
        self._sock: socket.socket | None = None
        self._mac = b""
        self._deadline = 0.0
        timeout_s = probe_timeout_s() if timeout_s is None else timeout_s
        if timeout_s > 0:
            self._send(timeout_s)

    @property
    def sent(self) -> bool:
        return self._sock is not None

    def _send(self, timeout_s: float) -> None:
        bridge = self.bridge
        try:
            if not os.listdir(f"/sys/class/net/{bridge}/brif"):
                return
            mac = bytes.fromhex(Path(f"/sys/class/net/{bridge}/address").read_text().strip().replace(":", ""))
            # protocol 0 first, the ARP hook only at bind: a socket made with a protocol registers a
            # receive hook on every device, and binding it to one drops that hook again with
            # synchronize_net() (an RCU grace period, 10-25 ms seen here)
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        except OSError as exc:
            log.debug("no arp probe on %s: %s", bridge, exc)
            return
        try:
            sock.bind((bridge, ETH_P_ARP))
            # ethernet broadcast; ARP request, sender MAC ours, sender IP 0.0.0.0 (a probe), target IP
            frame = (b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
                     + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + b"\0" * 4 + b"\0" * 6 + self.target)
            sock.send(frame)
        except OSError as exc:
            log.debug("arp probe of %s on %s not sent: %s", self.ip, bridge, exc)
            _close_later(sock)
            return
        self._sock, self._mac = sock, mac
        self._deadline = time.monotonic() + timeout_s

    def answered(self) -> bool:
        """Whether anyone answered for the address by ``timeout_s`` after the send (waits for the
        rest of that time if it has not passed); closes the probe."""
        sock = self._sock
        if sock is None:
            return False
        try:
            while True:
                left = max(0.0, self._deadline - time.monotonic())
                if not select.select([sock], [], [], left)[0]:
                    return False
                data = sock.recv(128)
                # sender protocol address (bytes 28-32 of the frame) is the probed address: it is held
                if len(data) >= 42 and data[12:14] == b"\x08\x06" and data[28:32] == self.target and data[6:12] != self._mac:
                    log.info("arp probe: %s on bridge %s is answered by %s: skipped", self.ip, self.bridge, data[6:12].hex(":"))
                    return True
        except OSError as exc:  # as if nobody answered, as when the probe cannot be made
            log.debug("arp probe of %s on %s: %s", self.ip, self.bridge, exc)
            return False
        finally:
            self.close()

    def close(self) -> None:
        """Drop the probe without its answer (idempotent)."""
        if self._sock is not None:
            _close_later(self._sock)
            self._sock = None


def _close_later(sock: socket.socket) -> None:
    threading.Thread(target=sock.close, name="close-arp-probe", daemon=True).start()


def arp_probe(bridge: str, ip: str, timeout_s: float | None = None) -> bool:
    """Whether anyone on ``bridge`` answers an ARP probe for ``ip`` within the timeout.

    False when the probe cannot be made (no such bridge, no ports on it, no CAP_NET_RAW): an
    allocation must not fail because the probe could not run."""
    return ArpProbe(bridge, ip, timeout_s).answered()
