"""One address pool per bridge across state roots, and the probe's veto (runtime/bridge_pool.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from runtime._ipam import Ipam
from runtime.bridge_pool import BridgePool
from runtime.errors import ContainerExists


def _ipam(tmp_path: Path, root: str, probe=None) -> Ipam:  # noqa: ANN001
    return Ipam(tmp_path / root / "network", "10.9.0.0/24", "pmbr0", pool=BridgePool("pmbr0", tmp_path / "bridges"),
                probe=probe)


def test_two_roots_on_one_bridge_never_get_the_same_address(tmp_path: Path) -> None:
    a, b = _ipam(tmp_path, "a"), _ipam(tmp_path, "b")
    assert a.lease("c1")[0] == "10.9.0.2"
    assert b.lease("c2")[0] == "10.9.0.3"
    assert a.lease("c3")[0] == "10.9.0.4"
    with pytest.raises(ContainerExists, match=r"10.9.0.3 is already in use by container c2 of state root .*/b"):
        a.lease("c4", "10.9.0.3")
    # the same container moving between the two roots keeps its address
    assert a.lease("c2", "10.9.0.3") == ("10.9.0.3", True)


def test_a_released_or_deleted_roots_addresses_are_free_again(tmp_path: Path) -> None:
    a, b = _ipam(tmp_path, "a"), _ipam(tmp_path, "b")
    a.lease("c1")
    b.lease("c2")
    b.release("c2")
    assert a.lease("c3")[0] == "10.9.0.3"
    shutil.rmtree(tmp_path / "a")  # a state root removed without releasing anything
    assert b.lease("c4")[0] == "10.9.0.2"


def test_an_address_someone_answers_for_is_skipped(tmp_path: Path) -> None:
    asked = []

    def probe(ip: str) -> bool:
        asked.append(ip)
        return ip == "10.9.0.2"

    a = _ipam(tmp_path, "a", probe)
    assert a.lease("c1")[0] == "10.9.0.3"
    assert asked == ["10.9.0.2", "10.9.0.3"]
    assert a.lease("c2", "10.9.0.2")[0] == "10.9.0.2"  # asked for by name: not probed
    assert asked == ["10.9.0.2", "10.9.0.3"]


class _FakeProbe:
    """Stands in for bridge_pool.ArpProbe: answered for the addresses in ``held``."""

    held: set[str] = set()
    made: list[_FakeProbe] = []

    def __init__(self, bridge: str, ip: str) -> None:
        self.ip, self.sent, self.closed, self.asked = ip, True, False, 0
        self.made.append(self)

    def answered(self) -> bool:
        self.asked += 1
        self.closed = True
        return self.ip in self.held

    def close(self) -> None:
        self.closed = True


def _bridge_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: set[str]) -> tuple[Any, list[str]]:
    from runtime import bridge_pool
    from runtime.config import Paths
    from runtime.network import BridgeNetwork, NetworkConfig

    now: list[str] = []
    monkeypatch.setattr(_FakeProbe, "held", held)
    monkeypatch.setattr(_FakeProbe, "made", [])
    monkeypatch.setattr(bridge_pool, "ArpProbe", _FakeProbe)
    monkeypatch.setattr(bridge_pool, "arp_probe", lambda bridge, ip: now.append(ip) or ip in held)
    paths = Paths(tmp_path / "root")
    paths.ensure()
    return BridgeNetwork(paths, NetworkConfig(bridge="pmbr0", subnet="10.9.0.0/24")), now


def test_a_lease_answered_later_is_confirmed_or_moved_before_connect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net, now = _bridge_network(tmp_path, monkeypatch, held={"10.9.0.2"})
    assert net.lease("c1", answer_later=True) == "10.9.0.2"  # leased as the probe goes out
    (probe,) = _FakeProbe.made
    assert probe.ip == "10.9.0.2" and probe.asked == 0 and now == []
    # someone else answered for .2: given back, and chosen again probing as it goes (.2 answers again)
    assert net.confirm_lease("c1") == "10.9.0.3"
    assert probe.asked == 1 and probe.closed and now == ["10.9.0.2", "10.9.0.3"]
    assert net.leases() == {"c1": "10.9.0.3"}
    assert net.confirm_lease("c1") == "10.9.0.3" and len(now) == 2  # nothing left to answer


def test_a_lease_nobody_answers_for_stays_and_asked_addresses_are_not_probed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net, now = _bridge_network(tmp_path, monkeypatch, held=set())
    assert net.lease("c1", answer_later=True) == "10.9.0.2"
    assert net.lease("c2", "10.9.0.7", answer_later=True) == "10.9.0.7"
    (probe,) = _FakeProbe.made  # only c1's
    assert net.confirm_lease("c1") == "10.9.0.2" and net.confirm_lease("c2") == "10.9.0.7"
    assert probe.asked == 1 and now == []
    net.lease("c3", answer_later=True)
    net.release("c3")  # a run failing before its connect: the probe is dropped with the lease
    assert _FakeProbe.made[-1].closed and _FakeProbe.made[-1].asked == 0


def test_connect_never_uses_an_address_answered_for_unless_confirmed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.errors import NetworkError

    net, _ = _bridge_network(tmp_path, monkeypatch, held={"10.9.0.2"})
    net.lease("c1", answer_later=True)
    with pytest.raises(NetworkError, match="another host on bridge pmbr0 answers for it"):
        net.connect("c1", tmp_path / "netns", ip="10.9.0.2")


def test_without_a_writable_registry_a_root_allocates_alone(tmp_path: Path) -> None:
    (tmp_path / "bridges").write_text("not a directory")
    a = Ipam(tmp_path / "a", "10.9.0.0/24", "pmbr0", pool=BridgePool("pmbr0", tmp_path / "bridges"))
    assert a.lease("c1")[0] == "10.9.0.2"


def test_random_macs_are_unicast_locally_administered_and_differ() -> None:
    from runtime.network import random_mac

    macs = {random_mac() for _ in range(200)}
    assert len(macs) == 200
    for mac in macs:
        first = int(mac[:2], 16)
        assert first & 0x02 and not first & 0x01, mac


def test_restore_ignore_static_ip_and_mac() -> None:
    from migrate.api import RestoreOptions
    from migrate.restore import without_static_address
    from runtime.errors import InvalidArgument
    from runtime.spec import ContainerSpec

    spec = ContainerSpec(container_id="a" * 32, name="n", image="i", image_digest="d", command=("x",),
                         ip="10.77.0.5", mac="02:11:22:33:44:55")
    assert without_static_address(spec, RestoreOptions()) == spec
    fresh = without_static_address(spec, RestoreOptions(ignore_static_ip=True))
    assert (fresh.ip, fresh.mac) == (None, None)
    fresh = without_static_address(spec, RestoreOptions(ignore_static_mac=True))
    assert (fresh.ip, fresh.mac) == ("10.77.0.5", None)
    with pytest.raises(InvalidArgument, match="contradict"):
        without_static_address(spec, RestoreOptions(ip="10.77.0.9", ignore_static_ip=True))
