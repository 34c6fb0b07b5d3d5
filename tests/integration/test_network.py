"""Bridge networking on the real kernel: namespaces, veth pairs, addresses, traffic, cleanup.

Every test uses its own state root(s) under tmp_path and a bridge named ``pmt`` + random hex on a
random 10.2xx.x.0/24 subnet; the fixture deletes whatever is left (leases, namespaces, bridge).
Traffic stays between the host and namespaces made here.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from runtime import _netns
from runtime._netlink import RtNetlink
from runtime.config import Paths
from runtime.errors import ContainerExists, NetworkError
from runtime.network import BridgeNetwork, NetworkConfig, NoNetwork, network_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "netns")]

MakeNet = Callable[..., BridgeNetwork]


@pytest.fixture
def make_net(tmp_path: Path) -> Iterator[MakeNet]:
    made: list[BridgeNetwork] = []
    used: set[int] = set()

    def make(name: str = "root") -> BridgeNetwork:
        third = random.choice([n for n in range(256) if n not in used])
        used.add(third)
        paths = Paths(tmp_path / name)
        paths.ensure()
        cfg = NetworkConfig(bridge="pmt" + secrets.token_hex(4), subnet=f"10.{random.randint(200, 250)}.{third}.0/24")
        net = network_for(paths, "bridge", cfg)
        assert isinstance(net, BridgeNetwork)
        made.append(net)
        return net

    yield make
    for net in made:
        for container_id in list(net.leases()):
            net.disconnect(container_id)
        if net.paths.netns.exists():
            for entry in net.paths.netns.iterdir():
                net.remove_netns(entry.name)
        with RtNetlink() as nl:
            nl.delete_link(net.config.bridge)


def run_in(netns: Path, argv: list[str], timeout_s: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={netns}", *argv], capture_output=True, text=True, timeout=timeout_s)


def links_in(netns: Path) -> dict[str, dict]:
    out = run_in(netns, ["ip", "-j", "addr"]).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def host_links() -> set[str]:
    return {link["ifname"] for link in json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)}


def mounted(path: Path) -> bool:
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def thread_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


PING = r"""
import os, socket, struct, sys, time

def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF

dst, ident = sys.argv[1], os.getpid() & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
body = b"pymigrate-ping!!"
head = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
s.sendto(struct.pack("!BBHHH", 8, 0, checksum(head + body), ident, 1) + body, (dst, 0))
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    s.settimeout(deadline - time.monotonic())
    packet, (src, _) = s.recvfrom(2048)
    icmp = packet[(packet[0] & 0x0F) * 4 :]
    kind, _code, _sum, got_id, _seq = struct.unpack("!BBHHH", icmp[:8])
    if kind == 0 and got_id == ident and src == dst:
        print("reply from", src)
        sys.exit(0)
sys.exit(1)
"""


def ping(netns: Path, dst: str) -> subprocess.CompletedProcess[str]:
    return run_in(netns, [sys.executable, "-c", PING, dst])


def tcp_roundtrip(server: socket.socket, client: socket.socket, addr: tuple[str, int]) -> bytes:
    server.settimeout(5)
    client.settimeout(5)
    client.connect(addr)
    conn, _ = server.accept()
    with conn:
        client.sendall(b"hello")
        data = conn.recv(16)
        conn.sendall(data.upper())
    return client.recv(16)


def test_two_namespaces_reach_each_other(make_net: MakeNet) -> None:
    net = make_net()
    ns_a, ns_b = net.create_netns("aaaa0001"), net.create_netns("bbbb0002")
    ep_a, ep_b = net.connect("aaaa0001", ns_a), net.connect("bbbb0002", ns_b)
    assert (ep_a.ip, ep_b.ip) == (net.config.gateway[:-1] + "2", net.config.gateway[:-1] + "3")

    for ns, dst in ((ns_a, ep_b.ip), (ns_b, ep_a.ip), (ns_a, ep_a.gateway)):
        result = ping(ns, dst)
        assert result.returncode == 0, (dst, result.stderr)
        assert f"reply from {dst}" in result.stdout

    server = _netns.socket_in(ns_b, socket.AF_INET, socket.SOCK_STREAM)
    client = _netns.socket_in(ns_a, socket.AF_INET, socket.SOCK_STREAM)
    with server, client:
        server.bind((ep_b.ip, 0))
        server.listen()
        assert tcp_roundtrip(server, client, (ep_b.ip, server.getsockname()[1])) == b"HELLO"


def test_host_reaches_a_port_inside_and_container_reaches_gateway(make_net: MakeNet) -> None:
    net = make_net()
    ns = net.create_netns("web00001")
    ep = net.connect("web00001", ns)

    server = _netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    with server, socket.socket() as client:
        server.bind(("0.0.0.0", 0))
        server.listen()
        assert tcp_roundtrip(server, client, (ep.ip, server.getsockname()[1])) == b"HELLO"

    with socket.socket() as host_server:
        host_server.bind((ep.gateway, 0))
        host_server.listen()
        client = _netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
        with client:
            assert tcp_roundtrip(host_server, client, (ep.gateway, host_server.getsockname()[1])) == b"HELLO"


def test_namespace_has_only_lo_and_eth0_configured_as_the_endpoint(make_net: MakeNet) -> None:
    forwarding_before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    net = make_net()
    ns = net.create_netns("cfg00001")
    ep = net.connect("cfg00001", ns, ip=net.config.gateway[:-1] + "77", mac="02:00:00:aa:bb:cc")
    assert ep.ip.endswith(".77") and ep.mac == "02:00:00:aa:bb:cc"

    links = links_in(ns)
    assert set(links) == {"lo", "eth0"}
    assert "UP" in links["lo"]["flags"] and "UP" in links["eth0"]["flags"]
    assert links["eth0"]["address"] == ep.mac
    v4 = [(a["local"], a["prefixlen"]) for a in links["eth0"]["addr_info"] if a["family"] == "inet"]
    assert v4 == [(ep.ip, ep.prefix_len)]
    assert any(a.get("local") == "127.0.0.1" for a in links["lo"]["addr_info"])

    routes = json.loads(run_in(ns, ["ip", "-j", "-4", "route"]).stdout)
    assert [(r["dst"], r.get("gateway"), r["dev"]) for r in routes] == [
        ("default", ep.gateway, "eth0"),
        (f"{net.config.gateway[:-1]}0/24", None, "eth0"),
    ]

    host = {link["ifname"]: link for link in json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)}
    assert host[ep.host_veth]["master"] == ep.bridge
    assert "UP" in host[ep.host_veth]["flags"] and "UP" in host[ep.bridge]["flags"]
    assert "eth0" not in host or host["eth0"]["address"] != ep.mac  # the container end never showed up here
    # no forwarding or NAT switched on: nothing can leave the machine
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forwarding_before


def test_disconnect_and_remove_leave_nothing_behind(make_net: MakeNet) -> None:
    net = make_net()
    ns = net.create_netns("gone0001")
    ep = net.connect("gone0001", ns)
    assert mounted(ns) and ep.host_veth in host_links()

    net.disconnect("gone0001")
    assert ep.host_veth not in host_links()
    assert net.leases() == {}
    assert set(links_in(ns)) == {"lo"}  # the peer went with the host end
    net.remove_netns("gone0001")
    assert not mounted(ns) and not ns.exists()

    net.disconnect("gone0001")  # idempotent
    net.remove_netns("gone0001")
    assert net.config.bridge in host_links()  # the bridge stays for the next container
    assert net.delete_bridge() is True
    assert net.config.bridge not in host_links()


def test_removing_the_namespace_first_also_frees_the_veth(make_net: MakeNet) -> None:
    net = make_net()
    ns = net.create_netns("nsfirst1")
    ep = net.connect("nsfirst1", ns)
    net.remove_netns("nsfirst1")
    deadline = time.monotonic() + 10  # namespace teardown is asynchronous (cleanup_net workqueue)
    while ep.host_veth in host_links() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ep.host_veth not in host_links()
    net.disconnect("nsfirst1")
    assert net.leases() == {}


def test_second_state_root_with_its_own_bridge_coexists(make_net: MakeNet) -> None:
    one, two = make_net("one"), make_net("two")
    assert one.config.bridge != two.config.bridge and one.config.subnet != two.config.subnet
    same_id = "0123456789abcdef0123456789abcdef"  # the same container id on both "hosts"
    ep1 = one.connect(same_id, one.create_netns(same_id))
    ep2 = two.connect(same_id, two.create_netns(same_id))
    assert ep1.host_veth != ep2.host_veth
    assert (ep1.bridge, ep2.bridge) == (one.config.bridge, two.config.bridge)
    for net, ep in ((one, ep1), (two, ep2)):
        result = ping(net.paths.netns / same_id, ep.gateway)
        assert result.returncode == 0, result.stderr
    assert one.leases() == {same_id: ep1.ip} and two.leases() == {same_id: ep2.ip}
    one.disconnect(same_id)
    assert ep2.host_veth in host_links()
    assert ping(two.paths.netns / same_id, ep2.gateway).returncode == 0


def test_connect_failures_roll_back(make_net: MakeNet) -> None:
    net = make_net()
    ns1, ns2 = net.create_netns("fail0001"), net.create_netns("fail0002")
    ep1 = net.connect("fail0001", ns1)

    with pytest.raises(ContainerExists, match=f"address {ep1.ip} is already in use by container fail0001"):
        net.connect("fail0002", ns2, ip=ep1.ip)
    assert net.host_veth("fail0002") not in host_links() and set(links_in(ns2)) == {"lo"}

    with pytest.raises(ContainerExists, match="cannot connect container fail0001"):
        net.connect("fail0001", ns1)  # already connected
    assert net.leases() == {"fail0001": ep1.ip}
    assert ping(ns1, ep1.gateway).returncode == 0  # the first connection is untouched

    with pytest.raises(NetworkError, match="no network namespace at"):
        net.connect("fail0003", net.paths.netns / "never-made")
    assert "fail0003" not in net.leases()

    before = thread_netns()
    with pytest.raises(ContainerExists, match="network namespace of container fail0001 already exists"):
        net.create_netns("fail0001")
    assert thread_netns() == before


def test_create_netns_returns_the_thread_to_its_namespace(make_net: MakeNet) -> None:
    net = make_net()
    before = thread_netns()
    ns = net.create_netns("thr00001")
    assert thread_netns() == before
    assert os.stat(ns).st_ino != before
    assert set(links_in(ns)) == {"lo"}


def test_concurrent_threads_get_distinct_addresses(make_net: MakeNet) -> None:
    net = make_net()
    main_ns = thread_netns()

    def start(i: int) -> tuple[str, int]:
        own = thread_netns()
        cid = f"par{i:05d}"
        ep = net.connect(cid, net.create_netns(cid))
        assert thread_netns() == own
        return ep.ip, own

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(start, range(8)))
    ips = [ip for ip, _ in results]
    assert len(set(ips)) == 8
    assert thread_netns() == main_ns
    assert all(own == main_ns for _, own in results)
    assert sorted(net.leases().values()) == sorted(ips)
    for i in range(8):
        assert set(links_in(net.paths.netns / f"par{i:05d}")) == {"lo", "eth0"}


def test_announce_sends_gratuitous_arp_from_the_container(make_net: MakeNet) -> None:
    net = make_net()
    ns = net.create_netns("arp00001")
    ep = net.connect("arp00001", ns)
    # ETH_P_ALL: a bridge port hands frames to the bridge before protocol-specific packet sockets
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sniff:
        sniff.bind((ep.host_veth, 0x0003))
        sniff.settimeout(3)
        net.announce("arp00001", ns)
        seen = []
        while len(seen) < 2:
            frame = sniff.recv(128)
            if frame[6:12] == bytes.fromhex(ep.mac.replace(":", "")) and frame[12:14] == b"\x08\x06":
                seen.append(frame)
    ip = socket.inet_aton(ep.ip)
    assert sorted(int.from_bytes(f[20:22], "big") for f in seen) == [1, 2]  # request and reply
    assert all(f[28:32] == ip and f[38:42] == ip and f[0:6] == b"\xff" * 6 for f in seen)
    fdb = json.loads(subprocess.run(["bridge", "-j", "fdb", "show", "br", ep.bridge], capture_output=True, text=True).stdout)
    assert any(e["mac"] == ep.mac and e.get("ifname") == ep.host_veth for e in fdb)


def test_none_mode_gives_loopback_only(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "root")
    net = network_for(paths, "none")
    assert isinstance(net, NoNetwork)
    ns = net.create_netns("none0001")
    try:
        assert net.connect("none0001", ns) is None
        links = links_in(ns)
        assert set(links) == {"lo"} and "UP" in links["lo"]["flags"]
    finally:
        net.remove_netns("none0001")
    assert not ns.exists() and not mounted(ns)


def test_start_path_cost(make_net: MakeNet, monkeypatch: pytest.MonkeyPatch) -> None:
    # the netlink work only: a new address's ARP probe waits on top (runtime/bridge_pool.py)
    monkeypatch.setenv("PYMIGRATE_ARP_PROBE_MS", "0")
    net = make_net()
    net.connect("warm0000", net.create_netns("warm0000"))  # bridge creation and config write are one-off
    costs = []
    for i in range(10):
        cid = f"cost{i:04d}"
        started = time.perf_counter()
        net.connect(cid, net.create_netns(cid))
        costs.append((time.perf_counter() - started) * 1000)
    median = statistics.median(costs)
    print(f"create_netns + connect: median {median:.2f} ms, max {max(costs):.2f} ms")
    assert median < 20, costs


def test_entering_a_namespace_moves_only_the_calling_thread(make_net: MakeNet) -> None:
    """A thread that already runs keeps its namespace while another one is inside a container's."""
    net = make_net()
    ns = net.create_netns("side0001")
    main_ns = thread_netns()
    inside, look = threading.Event(), threading.Event()
    seen: list[int] = []

    def other() -> None:
        inside.wait(5)
        seen.append(thread_netns())
        look.set()

    worker = threading.Thread(target=other)
    worker.start()
    with _netns.entered(ns):
        assert thread_netns() == os.stat(ns).st_ino
        inside.set()
        assert look.wait(5)
    worker.join()
    assert seen == [main_ns] and thread_netns() == main_ns
