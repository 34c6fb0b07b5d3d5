"""Address pool: order, reuse, refusals with clear messages, persistence, concurrent processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime._ipam import Ipam
from runtime.errors import ContainerExists, InvalidArgument, NetworkError


@pytest.fixture
def ipam(tmp_path: Path) -> Ipam:
    return Ipam(tmp_path / "network", "10.77.0.0/16", "pmbr0")


def test_allocates_lowest_free_after_gateway(ipam: Ipam) -> None:
    assert ipam.lease("a")[0] == "10.77.0.2"
    assert ipam.lease("b")[0] == "10.77.0.3"
    assert ipam.lease("c")[0] == "10.77.0.4"
    assert ipam.leases() == {"a": "10.77.0.2", "b": "10.77.0.3", "c": "10.77.0.4"}


def test_allocation_skips_explicit_leases(ipam: Ipam) -> None:
    assert ipam.lease("x", "10.77.0.3") == ("10.77.0.3", True)
    assert ipam.lease("a")[0] == "10.77.0.2"
    assert ipam.lease("b")[0] == "10.77.0.4"


def test_lease_is_idempotent_per_container(ipam: Ipam) -> None:
    assert ipam.lease("a") == ("10.77.0.2", True)
    assert ipam.lease("a") == ("10.77.0.2", False)
    assert ipam.lease("a", "10.77.0.2") == ("10.77.0.2", False)


def test_asking_a_new_address_moves_the_lease(ipam: Ipam) -> None:
    ipam.lease("a")
    assert ipam.lease("a", "10.77.9.9") == ("10.77.9.9", True)
    assert ipam.leases() == {"a": "10.77.9.9"}
    assert ipam.is_free("10.77.0.2")


def test_released_address_is_reused_first(ipam: Ipam) -> None:
    for name in "abc":
        ipam.lease(name)
    assert ipam.release("b") == "10.77.0.3"
    assert ipam.lease("d")[0] == "10.77.0.3"


def test_release_is_idempotent(ipam: Ipam) -> None:
    assert ipam.release("nobody") is None
    ipam.lease("a")
    assert ipam.release("a") == "10.77.0.2"
    assert ipam.release("a") is None
    assert ipam.leases() == {}


@pytest.mark.parametrize(
    ("ip", "words"),
    [
        ("10.78.0.5", "address 10.78.0.5 is outside subnet 10.77.0.0/16 of bridge pmbr0"),
        ("10.77.0.0", "address 10.77.0.0 is the network address of subnet 10.77.0.0/16"),
        ("10.77.0.1", "address 10.77.0.1 is the gateway of bridge pmbr0"),
        ("10.77.255.255", "address 10.77.255.255 is the broadcast address of subnet 10.77.0.0/16"),
        ("10.77.0.300", "invalid address '10.77.0.300': expected a dotted IPv4 address"),
        ("fe80::1", "invalid address 'fe80::1'"),
        ("10.77.0.5/16", "invalid address '10.77.0.5/16'"),
    ],
)
def test_refuses_unusable_addresses_naming_them(ipam: Ipam, ip: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        ipam.lease("a", ip)
    assert str(info.value).startswith(words)
    assert "\n" not in str(info.value)
    assert ipam.leases() == {}
    assert not ipam.is_free(ip)


def test_refuses_address_in_use_naming_holder(ipam: Ipam) -> None:
    ipam.lease("a", "10.77.0.9")
    with pytest.raises(ContainerExists, match=r"^address 10\.77\.0\.9 is already in use by container a$"):
        ipam.lease("b", "10.77.0.9")
    assert ipam.leases() == {"a": "10.77.0.9"}
    assert not ipam.is_free("10.77.0.9")
    assert ipam.is_free("10.77.0.10")


def test_exhausted_pool(tmp_path: Path) -> None:
    small = Ipam(tmp_path, "192.168.5.0/30", "pmt0")  # .0 network, .1 gateway, .2 only, .3 broadcast
    assert small.lease("a")[0] == "192.168.5.2"
    with pytest.raises(NetworkError, match=r"^no free address left in subnet 192\.168\.5\.0/30 of bridge pmt0$"):
        small.lease("b")
    small.release("a")
    assert small.lease("b")[0] == "192.168.5.2"


def test_leases_survive_a_new_instance_and_file_is_plain_json(ipam: Ipam, tmp_path: Path) -> None:
    ipam.lease("a")
    ipam.lease("b", "10.77.3.4")
    again = Ipam(tmp_path / "network", "10.77.0.0/16", "pmbr0")
    assert again.leases() == {"a": "10.77.0.2", "b": "10.77.3.4"}
    doc = json.loads((tmp_path / "network" / "ipam.json").read_text())
    assert doc == {"version": 1, "subnet": "10.77.0.0/16", "leases": {"a": "10.77.0.2", "b": "10.77.3.4"}}
    assert sorted(p.name for p in (tmp_path / "network").iterdir()) == ["ipam.json", "ipam.lock"]  # no temp files


def test_corrupt_pool_is_reported(ipam: Ipam, tmp_path: Path) -> None:
    (tmp_path / "network").mkdir()
    (tmp_path / "network" / "ipam.json").write_text("{not json")
    with pytest.raises(NetworkError, match=r"address pool .*ipam\.json is corrupt"):
        ipam.lease("a")


_WORKER = """
import sys
from pathlib import Path
from runtime._ipam import Ipam
pool = Ipam(Path(sys.argv[1]), "10.77.0.0/16", "pmbr0")
for i in range(int(sys.argv[3])):
    print(pool.lease(f"{sys.argv[2]}-{i}")[0], flush=True)
"""


def test_concurrent_processes_never_share_an_address(tmp_path: Path) -> None:
    directory = tmp_path / "network"
    workers, each = 4, 25
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(directory), f"w{n}", str(each)], stdout=subprocess.PIPE, text=True)
        for n in range(workers)
    ]
    handed_out: list[str] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        handed_out += out.split()
    assert len(handed_out) == workers * each
    assert len(set(handed_out)) == workers * each
    stored = Ipam(directory, "10.77.0.0/16", "pmbr0").leases()
    assert len(stored) == workers * each
    assert sorted(stored.values()) == sorted(handed_out)
    # lowest-first even under contention: exactly .2 .. .101
    assert {int(ip.split(".")[3]) for ip in handed_out} == set(range(2, 2 + workers * each))
