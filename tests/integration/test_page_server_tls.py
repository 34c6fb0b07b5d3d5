"""CRIU's page-server connections between mTLS daemons use TLS (issue 7, security).

Two hosts (network namespaces) run daemons with mutual TLS and a token; each daemon's certificate
(from a throwaway CA) names its address and serves as server and client certificate. The daemons
hand the same material to CRIU (``--tls*`` / criu_opts ``tls*``), so:

- post-copy: the target's ``criu lazy-pages`` reaches the source's lazy dump over TLS;
- disk-less cold (memory above 64 MiB): the source's dump sends its pages to the target's
  ``criu page-server`` over TLS, beside the gRPC stream that carries only the small images.

Proof on the wire, not from the code under test: a packet capture (AF_PACKET) on the source
host's veth in the root namespace records, per TCP connection between the two hosts, the first
payload bytes each way and how many bytes went (from TCP sequence numbers, so a dropped capture
frame does not matter). A page-server connection must open with a TLS ClientHello (record type
0x16, handshake type 1) answered by a ServerHello, and carry about the container's memory while
the daemons' gRPC connection carries little. The same capture of a migration between
``--insecure`` daemons shows CRIU's plain protocol, so the check can tell the two apart.

A stranger who reaches a page-server port first (a TLS client without a certificate; a plain TCP
client) gets no page: CRIU refuses the handshake, and the migration rolls back (CRIU takes one
connection per page server) with the container running on the source only, or succeeds.
"""

from __future__ import annotations

import socket
import ssl
import statistics
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from migrate.api import MigrateOptions, MigrateResult
from migrate.remote.client import RemoteEngine
from migrate.errors import MigrationError
from tests.integration.hosts import Host, Hosts
from tests.integration.migrate_helpers import DAEMON_PORT, leftovers, names_by_status
from tests.integration.test_migrate_security import TOKEN, Pki, _pki
from tests.integration.workloads import (
    MEMHOG_IMAGE,
    build_memhog,
    import_image,
    memhog_command,
    memhog_image_tar,
    wait_memhog_ready,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay"),
]

MIB = 1 << 20
ETH_P_ALL = 0x0003
TLS_HANDSHAKE = 0x16
CLIENT_HELLO = 0x01
SERVER_HELLO = 0x02


# --- packet capture ----------------------------------------------------------------------------


@dataclass
class Direction:
    first: bytes = b""  # the first payload bytes seen
    isn: int | None = None  # from the SYN
    low: int | None = None  # lowest sequence number with payload (when the SYN was not seen)
    end: int = 0  # highest sequence number + payload length

    def bytes(self) -> int:
        start = (self.isn + 1) if self.isn is not None else self.low
        return 0 if start is None else (self.end - start) % (1 << 32)


@dataclass
class Capture:
    """TCP directions keyed by (src, sport, dst, dport); ``clients``: the directions that opened
    with a SYN without ACK (the connecting side)."""

    flows: dict[tuple[str, int, str, int], Direction] = field(default_factory=dict)
    clients: set[tuple[str, int, str, int]] = field(default_factory=set)

    def connections(self, x: str, y: str) -> list[tuple[tuple[str, int, str, int], Direction, Direction]]:
        """(client->server key, client->server, server->client) of each connection between hosts
        ``x`` and ``y`` that is not the daemons' gRPC (port DAEMON_PORT)."""
        out = []
        for key in sorted(self.clients):
            src, sport, dst, dport = key
            if {src, dst} == {x, y} and DAEMON_PORT not in (sport, dport):
                out.append((key, self.flows[key], self.flows.get((dst, dport, src, sport), Direction())))
        return out

    def grpc_bytes(self, x: str, y: str) -> int:
        """Bytes both ways on the daemons' gRPC connections between ``x`` and ``y``."""
        return sum(d.bytes() for k, d in self.flows.items() if {k[0], k[2]} == {x, y} and DAEMON_PORT in (k[1], k[3]))


class Sniffer(threading.Thread):
    """AF_PACKET capture on one interface of the root namespace, until ``stop``."""

    def __init__(self, ifname: str) -> None:
        super().__init__(name=f"sniff-{ifname}", daemon=True)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 64 * MIB)  # SO_RCVBUFFORCE (root)
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.2)
        self.capture = Capture()
        self._done = threading.Event()

    def run(self) -> None:
        buf = bytearray(1 << 18)
        view = memoryview(buf)
        while not self._done.is_set():
            try:
                n = self.sock.recv_into(buf, len(buf), socket.MSG_TRUNC)
            except TimeoutError:
                continue
            except OSError:
                return
            self._frame(view[: min(n, len(buf))], n)

    def _frame(self, frame: memoryview, real_len: int) -> None:
        if len(frame) < 54 or frame[12:14] != b"\x08\x00":
            return
        ip = 14
        ihl = (frame[ip] & 0x0F) * 4
        if frame[ip + 9] != 6:
            return
        total = struct.unpack_from("!H", frame, ip + 2)[0] or (real_len - ip)  # 0: a BIG TCP frame
        src = socket.inet_ntoa(bytes(frame[ip + 12 : ip + 16]))
        dst = socket.inet_ntoa(bytes(frame[ip + 16 : ip + 20]))
        tcp = ip + ihl
        sport, dport, seq = struct.unpack_from("!HHI", frame, tcp)
        doff = (frame[tcp + 12] >> 4) * 4
        flags = frame[tcp + 13]
        payload_len = total - ihl - doff
        key = (src, sport, dst, dport)
        cap = self.capture
        d = cap.flows.get(key)
        if d is None:
            d = cap.flows[key] = Direction()
            if flags & 0x02 and not flags & 0x10:  # SYN without ACK: the connecting side
                cap.clients.add(key)
        if flags & 0x02:
            d.isn = seq
            d.end = max(d.end, seq + 1) if d.end else seq + 1
            return
        if payload_len <= 0:
            return
        if not d.first:
            d.first = bytes(frame[tcp + doff : tcp + doff + 16])
        if d.low is None:
            d.low = seq
        end = seq + payload_len
        if d.end == 0 or ((end - d.end) % (1 << 32)) < (1 << 31):
            d.end = end

    def stop(self) -> Capture:
        self._done.set()
        self.join(5)
        self.sock.close()
        return self.capture


# --- lab: two hosts, mTLS daemons (or --insecure ones for the comparison) -----------------------


class Lab:
    def __init__(self, hosts: Hosts, pki: Pki) -> None:
        self.hosts = hosts
        self.a, self.b = hosts[0], hosts[1]
        self.pki = pki
        self.tls = False
        self.addr: dict[str, str] = {}

    def daemons(self, *, tls: bool) -> None:
        """(Re)start both daemons with mTLS + token, or with --insecure."""
        if self.addr and self.tls == tls:
            return
        for h in (self.a, self.b):
            h.stop_daemon()
        for h in (self.a, self.b):
            if tls:
                pem = self.pki.hosts[h.letter]
                extra = ["--tls-cert", str(pem.cert), "--tls-key", str(pem.key), "--tls-ca", str(self.pki.ca.ca_path),
                         "--token-file", str(self.pki.token_file)]
            else:
                extra = ["--insecure"]
            self.addr[h.letter] = h.start_daemon(f"{h.address}:{DAEMON_PORT}", extra_args=extra)
        self.tls = tls

    def engine(self, host: Host) -> RemoteEngine:
        if self.tls:
            return RemoteEngine(self.addr[host.letter], tls=self.pki.tls(), token=TOKEN)
        return RemoteEngine(self.addr[host.letter], insecure=True)

    def migrate(self, source: Host, target: Host, name: str, mode: str = "cold") -> MigrateResult:
        # --compress off: CRIU's own TLS on its own connection is what this file proves (with the
        # page relay, tests/integration/test_migrate_compress.py, the relays do the TLS)
        with self.engine(source) as engine:
            return engine.migrate(name, MigrateOptions(dest=self.addr[target.letter], mode=mode, compress="off"))  # type: ignore[arg-type]

    def veth(self, host: Host) -> str:
        return f"pmh{self.hosts.tag}{host.letter}"  # the host's link in the root namespace

    def start_memhog(self, host: Host, name: str, size_mib: int) -> str:
        r = host.cli(["run", "-d", "--name", name, MEMHOG_IMAGE, *memhog_command(size_mib)])
        assert r.returncode == 0, r.stderr.decode()
        return wait_memhog_ready(host.root, name, timeout_s=120)[0]

    def remove(self, name: str) -> None:
        for h in (self.a, self.b):
            h.cli(["rm", "-f", name])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    import shutil

    if shutil.which("gcc") is None:
        pytest.skip("the memhog workload needs gcc")
    workdir = tmp_path_factory.mktemp("pstls")
    with Hosts(2) as hosts:
        lab = Lab(hosts, _pki(workdir / "pki", [hosts[0], hosts[1]]))
        lab.daemons(tls=True)
        lab.a.cli(["image", "build-busybox", "busybox"], check=True)
        tar = memhog_image_tar(lab.a.root, build_memhog(workdir / "bin"), workdir / "memhog.tar")
        import_image(lab.a.root, MEMHOG_IMAGE, tar)
        yield lab


def _memhog_digest(host: Host, name: str) -> str:
    return wait_memhog_ready(host.root, name, timeout_s=60)[0]


def _is_tls_hello(first: bytes, handshake_type: int) -> bool:
    """A TLS record of type handshake (0x16, version 3.x) whose message is ``handshake_type``."""
    return len(first) >= 6 and first[0] == TLS_HANDSHAKE and first[1] == 3 and first[5] == handshake_type


def _clean(lab: Lab) -> None:
    assert leftovers(lab.a) == [] and leftovers(lab.b) == []


# --- post-copy -----------------------------------------------------------------------------------


def test_postcopy_pages_move_over_tls(lab: Lab) -> None:
    lab.daemons(tls=True)
    name = "hogpost"
    digest = lab.start_memhog(lab.a, name, 64)
    try:
        sniffer = Sniffer(lab.veth(lab.a))
        sniffer.start()
        try:
            result = lab.migrate(lab.a, lab.b, name, mode="postcopy")
        finally:
            capture = sniffer.stop()
        assert result.mode == "postcopy"
        assert names_by_status(lab.a) == {} and names_by_status(lab.b) == {name: "running"}
        assert _memhog_digest(lab.b, name) == digest, "memory changed across the post-copy migration"

        conns = capture.connections(lab.a.address, lab.b.address)
        assert len(conns) == 1, f"expected one page-server connection, saw {conns}"
        (client, _, server, port), hello, answer = conns[0]
        # the target's lazy-pages daemon dials the source's lazy dump
        assert (client, server) == (lab.b.address, lab.a.address)
        assert _is_tls_hello(hello.first, CLIENT_HELLO), f"no TLS ClientHello on page-server port {port}: {hello.first.hex()}"
        assert _is_tls_hello(answer.first, SERVER_HELLO), f"no TLS ServerHello from port {port}: {answer.first.hex()}"
        assert answer.bytes() >= 64 * MIB, f"only {answer.bytes()} bytes came from the page server"
        print(f"\npostcopy 64 MiB over TLS: pause {result.stats.frozen_ms:.0f} ms, last page "
              f"{result.stats.phases_ms.get('last_page', 0):.0f} ms after the resume; page server sent {answer.bytes()} bytes, "
              f"gRPC carried {capture.grpc_bytes(lab.a.address, lab.b.address)} bytes")
        _clean(lab)
    finally:
        lab.remove(name)


# --- disk-less cold --------------------------------------------------------------------------------


def _cold_hop(lab: Lab, source: Host, target: Host, name: str, digest: str, size_mib: int) -> tuple[MigrateResult, Capture]:
    sniffer = Sniffer(lab.veth(lab.a))  # a's link sees both directions of every a<->b connection
    sniffer.start()
    try:
        result = lab.migrate(source, target, name, mode="cold")
    finally:
        capture = sniffer.stop()
    assert result.mode == "cold"
    assert names_by_status(source) == {} and names_by_status(target) == {name: "running"}
    assert _memhog_digest(target, name) == digest, f"memory changed across the hop {source.letter} -> {target.letter}"
    conns = capture.connections(lab.a.address, lab.b.address)
    assert len(conns) == 1, f"expected one page-server connection (disk-less dump), saw {conns}"
    (client, _, server, port), sent, answer = conns[0]
    assert (client, server) == (source.address, target.address), "the source's dump dials the target's page server"
    grpc = capture.grpc_bytes(lab.a.address, lab.b.address)
    assert sent.bytes() >= size_mib * MIB, f"only {sent.bytes()} bytes went to the page server"
    assert grpc < 32 * MIB, f"the gRPC stream carried {grpc} bytes: the pages did not take the page server"
    assert result.stats.bytes_on_wire >= size_mib * MIB
    if lab.tls:
        assert _is_tls_hello(sent.first, CLIENT_HELLO), f"no TLS ClientHello to page-server port {port}: {sent.first.hex()}"
        assert _is_tls_hello(answer.first, SERVER_HELLO), f"no TLS ServerHello from port {port}: {answer.first.hex()}"
    else:  # the negative control: CRIU's own protocol in the clear
        assert sent.first[:1] != bytes([TLS_HANDSHAKE]), sent.first.hex()
    print(f"\ncold {size_mib} MiB {source.letter}->{target.letter} {'TLS' if lab.tls else 'plain'}: "
          f"downtime {result.stats.frozen_ms:.0f} ms, total {result.stats.total_ms:.0f} ms; page server "
          f"{sent.bytes() / MIB:.1f} MiB, gRPC {grpc / MIB:.2f} MiB; phases {result.stats.phases_ms}")
    return result, capture


def test_diskless_cold_256_mib_over_tls_and_downtime_against_plain(lab: Lab) -> None:
    """256 MiB disk-less cold hops between mTLS daemons (pages over CRIU TLS), interleaved with
    the same hops between --insecure daemons: downtime of both, data intact after every hop."""
    name = "hog256"
    size = 256
    lab.daemons(tls=True)
    digest = lab.start_memhog(lab.a, name, size)
    downtime: dict[bool, list[float]] = {True: [], False: []}
    try:
        here, there = lab.a, lab.b
        for tls in (True, False, True, False):
            lab.daemons(tls=tls)
            result, _ = _cold_hop(lab, here, there, name, digest, size)
            downtime[tls].append(result.stats.frozen_ms)
            here, there = there, here
        _clean(lab)
        print(f"\n256 MiB disk-less cold downtime: TLS {downtime[True]} ms (median {statistics.median(downtime[True]):.0f}), "
              f"plain {downtime[False]} ms (median {statistics.median(downtime[False]):.0f})")
    finally:
        lab.daemons(tls=True)
        lab.remove(name)


# --- strangers on the page-server port ------------------------------------------------------------


def _listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN in the network namespace of ``pid`` (proc(5): /proc/PID/net/tcp)."""
    ports = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 3 and f[3] == "0A":
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


class Stranger(threading.Thread):
    """Waits for a new listening port in ``host``'s namespace and connects to it first:
    ``how`` = "tls-no-cert" (a TLS client trusting the CA, without a certificate) or "plain"."""

    def __init__(self, host: Host, how: str, ca: Path) -> None:
        super().__init__(name=f"stranger-{how}", daemon=True)
        assert host.daemon is not None
        self.host, self.how, self.ca = host, how, ca
        self.pid = host.daemon.pid
        self.before = _listening_ports(self.pid)
        self.port: int | None = None
        self.outcome = "never connected"
        self.received = b""
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            new = _listening_ports(self.pid) - self.before - {DAEMON_PORT}
            if new:
                self.port = min(new)
                self._attack(self.port)
                return
            time.sleep(0.0005)

    def _verdict(self) -> str:
        if not self.received:
            return "closed"
        if self.received[0] == 0x15 and len(self.received) >= 7:  # a TLS alert record: level, description
            return f"refused: tls alert {self.received[5]}/{self.received[6]}"
        return f"got {len(self.received)} bytes"

    def _attack(self, port: int) -> None:
        try:
            sock = socket.create_connection((self.host.address, port), timeout=5)
        except OSError as exc:
            self.outcome = f"connect failed: {exc}"
            return
        try:
            if self.how == "plain":
                sock.sendall(b"GET /pages HTTP/1.0\r\n\r\n")
                self.received = sock.recv(4096)
                self.outcome = self._verdict()
                return
            ctx = ssl.create_default_context(cafile=str(self.ca))
            ctx.check_hostname = False
            with ctx.wrap_socket(sock, server_hostname=self.host.address) as tls:
                self.received = tls.recv(4096)  # TLS 1.3: the server's refusal arrives after the client's Finished
                self.outcome = self._verdict()
        except (ssl.SSLError, OSError) as exc:
            self.outcome = f"refused: {exc}"
        finally:
            sock.close()

    def stop(self) -> None:
        self._done.set()
        self.join(10)


def _one_copy(lab: Lab, name: str) -> Host:
    """The container runs on exactly one host, which is returned."""
    a, b = names_by_status(lab.a), names_by_status(lab.b)
    running = [h for h, names in ((lab.a, a), (lab.b, b)) if names.get(name) == "running"]
    assert len(running) == 1 and name not in (a if running[0] is lab.b else b), f"a: {a}, b: {b}"
    return running[0]


@pytest.mark.parametrize(("mode", "how"), [("cold", "tls-no-cert"), ("postcopy", "plain"), ("postcopy", "tls-no-cert")])
def test_a_stranger_on_the_page_server_port_gets_no_page(lab: Lab, mode: str, how: str) -> None:
    """A stranger reaches the page-server port first: CRIU refuses it (no page leaves), and the
    migration rolls back (source running, target clean) or succeeds; a retry then succeeds."""
    lab.daemons(tls=True)
    name = f"hog-{mode}-{how}"
    size = 96  # above the disk-less threshold (64 MiB)
    digest = lab.start_memhog(lab.a, name, size)
    try:
        # the page server listens on the target (cold) or on the source (post-copy's lazy dump)
        listener = lab.b if mode == "cold" else lab.a
        stranger = Stranger(listener, how, lab.pki.ca.ca_path)
        stranger.start()
        error: MigrationError | None = None
        try:
            lab.migrate(lab.a, lab.b, name, mode=mode)
        except MigrationError as exc:
            error = exc
        finally:
            stranger.stop()
        print(f"\n{mode} with a {how} stranger on port {stranger.port}: stranger {stranger.outcome}; "
              f"migration {'rolled back: ' + str(error) if error else 'succeeded'}")
        # The source pre-connects to a disk-less page server right after prepare (CRIU's page
        # server takes one connection only): the stranger may never see the port listening, or
        # be refused; otherwise TLS must refuse it. Either way it gets no page.
        outran = mode == "cold" and error is None and stranger.port is None
        if not outran:
            assert stranger.port is not None, "the page server's port never showed up"
            assert not stranger.received or stranger.received[0] == 0x15, f"the stranger got data: {stranger.received[:32].hex()}"
            assert stranger.outcome.startswith(("refused", "closed", "connect failed")), stranger.outcome
        where = _one_copy(lab, name)
        assert where is (lab.a if error else lab.b)
        assert _memhog_digest(where, name) == digest
        _clean(lab)
        if error is not None:  # nothing was left half done: the same migration now works
            lab.migrate(lab.a, lab.b, name, mode=mode)
            assert _one_copy(lab, name) is lab.b
            assert _memhog_digest(lab.b, name) == digest
            _clean(lab)
    finally:
        lab.remove(name)
