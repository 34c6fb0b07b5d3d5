"""NetworkConfig, MAC and veth naming, config persistence, network_for, NoNetwork, the fake."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

import runtime.network as network
from runtime.config import DEFAULT_BRIDGE, DEFAULT_SUBNET, Paths
from runtime.errors import ContainerExists, InvalidArgument, NetworkError
from runtime.network import (
    BridgeNetwork,
    Endpoint,
    NetworkConfig,
    NoNetwork,
    gratuitous_arp_frames,
    host_veth_name,
    mac_for_ip,
    network_for,
)
from tests.fakes.network import FakeNetwork


def test_public_names_are_pinned() -> None:
    assert sorted(network.__all__) == sorted(
        [
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
    )


def test_config_defaults_come_from_runtime_config() -> None:
    cfg = NetworkConfig()
    assert (cfg.bridge, cfg.subnet) == (DEFAULT_BRIDGE, DEFAULT_SUBNET)
    assert cfg.gateway == "10.77.0.1"
    assert cfg.prefix_len == 16
    assert cfg.broadcast == "10.77.255.255"


@pytest.mark.parametrize(
    ("bridge", "subnet", "words"),
    [
        ("a-bridge-name-too-long", DEFAULT_SUBNET, "invalid bridge name 'a-bridge-name-too-long'"),
        ("", DEFAULT_SUBNET, "invalid bridge name ''"),
        ("br/0", DEFAULT_SUBNET, "invalid bridge name 'br/0'"),
        ("br 0", DEFAULT_SUBNET, "invalid bridge name 'br 0'"),
        ("pmbr0", "10.77.0.1/16", "invalid subnet '10.77.0.1/16'"),
        ("pmbr0", "nonsense", "invalid subnet 'nonsense'"),
        ("pmbr0", "10.77.0.0/31", "subnet 10.77.0.0/31 is too small"),
    ],
)
def test_config_refuses_bad_values(bridge: str, subnet: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        NetworkConfig(bridge=bridge, subnet=subnet)
    assert str(info.value).startswith(words)


def test_mac_derives_from_ip() -> None:
    assert mac_for_ip("10.77.0.5") == "02:42:0a:4d:00:05"
    assert mac_for_ip("192.168.255.1") == "02:42:c0:a8:ff:01"
    with pytest.raises(InvalidArgument, match="invalid address 'x'"):
        mac_for_ip("x")


def test_veth_name_is_short_deterministic_and_per_state_root() -> None:
    cid = "0123456789abcdef0123456789abcdef"
    a = host_veth_name(Path("/var/lib/pymigrate"), cid)
    assert a == host_veth_name(Path("/var/lib/pymigrate"), cid)
    assert len(a) <= 15
    assert a.startswith("pmv") and a.endswith("01234567")
    b = host_veth_name(Path("/tmp/other-root"), cid)
    assert b != a and b.endswith("01234567")
    assert host_veth_name(Path("/r"), cid) != host_veth_name(Path("/r"), "abcdef0123456789")


def test_veth_name_of_odd_ids_stays_a_valid_ifname() -> None:
    name = host_veth_name(Path("/r"), "we:rd id/")
    assert len(name) == 15
    assert all(c.isalnum() for c in name)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "root")


def test_network_for_modes(paths: Paths) -> None:
    assert isinstance(network_for(paths, "none"), NoNetwork)
    bridge = network_for(paths, "bridge")
    assert isinstance(bridge, BridgeNetwork)
    assert bridge.config == NetworkConfig()
    with pytest.raises(InvalidArgument, match="unknown network mode 'macvlan': expected bridge, none or host"):
        network_for(paths, "macvlan")  # type: ignore[arg-type]


def test_config_is_stored_on_first_use_then_fixed(paths: Paths) -> None:
    cfg = NetworkConfig(bridge="pmt1", subnet="10.5.0.0/24")
    net = network_for(paths, "bridge", cfg)
    stored = paths.network / "network.json"
    assert not stored.exists()  # nothing written before first use
    assert net.lease("c1") == "10.5.0.2"
    assert json.loads(stored.read_text()) == {"bridge": "pmt1", "subnet": "10.5.0.0/24"}
    again = network_for(paths, "bridge")  # no config: the stored one
    assert isinstance(again, BridgeNetwork) and again.config == cfg
    assert network_for(paths, "bridge", cfg).config == cfg
    with pytest.raises(InvalidArgument) as info:
        network_for(paths, "bridge", NetworkConfig(bridge="pmt2", subnet="10.6.0.0/24"))
    assert str(info.value).startswith("state root uses bridge pmt1 subnet 10.5.0.0/24")
    assert info.value.hint


def test_concurrent_first_use_with_other_config_is_refused(paths: Paths) -> None:
    first = network_for(paths, "bridge", NetworkConfig(bridge="pmt1", subnet="10.5.0.0/24"))
    second = network_for(paths, "bridge", NetworkConfig(bridge="pmt2", subnet="10.6.0.0/24"))
    first.lease("a")
    with pytest.raises(InvalidArgument, match="state root uses bridge pmt1"):
        second.lease("b")
    assert first.leases() == {"a": "10.5.0.2"}


def test_corrupt_config_is_reported(paths: Paths) -> None:
    paths.network.mkdir(parents=True)
    (paths.network / "network.json").write_text("[]")
    with pytest.raises(NetworkError, match="network config .* is corrupt"):
        network_for(paths, "bridge")


def test_bridge_network_address_api(paths: Paths) -> None:
    net = network_for(paths, "bridge")
    assert isinstance(net, BridgeNetwork)
    assert net.lease("c1") == "10.77.0.2"
    assert net.lease("c2", "10.77.1.1") == "10.77.1.1"
    assert net.leases() == {"c1": "10.77.0.2", "c2": "10.77.1.1"}
    assert not net.is_free("10.77.1.1") and net.is_free("10.77.1.2") and not net.is_free("10.77.0.1")
    with pytest.raises(ContainerExists, match="address 10.77.1.1 is already in use by container c2"):
        net.lease("c3", "10.77.1.1")
    assert net.endpoint("c1") == Endpoint(
        container_id="c1",
        ip="10.77.0.2",
        prefix_len=16,
        gateway="10.77.0.1",
        mac="02:42:0a:4d:00:02",
        host_veth=host_veth_name(paths.root, "c1"),
        bridge="pmbr0",
    )
    assert net.endpoint("nobody") is None
    net.release("c1")
    assert net.leases() == {"c2": "10.77.1.1"}


def test_bad_container_ids_and_macs_are_refused_before_any_work(paths: Paths) -> None:
    net = network_for(paths, "bridge")
    for bad in ("", "..", "a/b"):
        with pytest.raises(InvalidArgument, match="invalid container id"):
            net.create_netns(bad)
    with pytest.raises(InvalidArgument, match="invalid MAC address 'zz'"):
        net.connect("c1", paths.netns / "c1", mac="zz")
    with pytest.raises(InvalidArgument, match="multicast"):
        net.connect("c1", paths.netns / "c1", mac="01:00:5e:00:00:01")
    assert net.leases() == {}


def test_announce_without_lease_names_container(paths: Paths) -> None:
    net = network_for(paths, "bridge")
    with pytest.raises(NetworkError, match="cannot announce container c9: it holds no address on bridge pmbr0"):
        net.announce("c9", paths.netns / "c9")


def test_no_network_mode(paths: Paths) -> None:
    net = network_for(paths, "none")
    assert net.connect("c1", paths.netns / "c1") is None
    with pytest.raises(InvalidArgument, match="network mode is none"):
        net.connect("c1", paths.netns / "c1", ip="10.77.0.5")
    with pytest.raises(InvalidArgument, match="network mode is none"):
        net.lease("c1")
    assert net.leases() == {} and net.endpoint("c1") is None
    net.disconnect("c1")
    net.release("c1")
    net.announce("c1", paths.netns / "c1")
    net.remove_netns("never-made")  # idempotent


def test_gratuitous_arp_frames() -> None:
    mac = bytes.fromhex("02420a4d0005")
    request, reply = gratuitous_arp_frames(mac, "10.77.0.5")
    for frame, op in ((request, 1), (reply, 2)):
        assert len(frame) == 60
        assert frame[0:6] == b"\xff" * 6 and frame[6:12] == mac
        assert struct.unpack("!H", frame[12:14]) == (0x0806,)
        htype, ptype, hlen, plen, oper = struct.unpack("!HHBBH", frame[14:22])
        assert (htype, ptype, hlen, plen, oper) == (1, 0x0800, 6, 4, op)
        assert frame[22:28] == mac
        assert frame[28:32] == frame[38:42] == bytes([10, 77, 0, 5])  # sender ip == target ip


def test_fake_network_follows_the_protocol(paths: Paths) -> None:
    fake = FakeNetwork(paths)
    ns = fake.create_netns("c1")
    ep = fake.connect("c1", ns)
    assert ep is not None and ep.ip == "10.77.0.2" and ep.mac == "02:42:0a:4d:00:02"
    with pytest.raises(ContainerExists):
        fake.connect("c1", ns)
    fake.announce("c1", ns)
    assert fake.announced == [("c1", "10.77.0.2")]
    fake.fail["disconnect"] = NetworkError("boom")
    with pytest.raises(NetworkError, match="boom"):
        fake.disconnect("c1")
    fake.disconnect("c1")
    fake.remove_netns("c1")
    assert not ns.exists() and fake.leases() == {}
    assert [c[0] for c in fake.calls] == [
        "create_netns", "connect", "connect", "announce", "disconnect", "disconnect", "remove_netns",
    ]  # fmt: skip


def test_veth_name_is_the_same_through_a_symlinked_root(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert host_veth_name(tmp_path / "link", "abcdef0123") == host_veth_name(tmp_path / "real", "abcdef0123")
