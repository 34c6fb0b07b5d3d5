"""Addresses on a bridge shared by several state roots (issue 13, runtime/bridge_pool.py): one
pool per bridge, random MACs, an ARP probe before a chosen address is used, and restore's
--ignore-static-ip / --ignore-static-mac."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.cli_helpers import ok, unique
from tests.integration.conftest import PYMIGRATE, REPO

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]

Pm = Callable[..., subprocess.CompletedProcess]


def _cli(root: Path) -> Pm:
    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*PYMIGRATE, "--root", str(root), *args], capture_output=True, timeout=timeout, cwd=REPO)

    return run


@pytest.fixture
def two_roots(tmp_path: Path) -> Iterator[tuple[Pm, Pm, str, str]]:
    """Two state roots configured on one bridge and subnet (as two roots on one machine share
    pmbr0 by default); yields their CLIs, the bridge and the subnet's first three bytes."""
    from runtime.config import Paths
    from runtime.image_store import ImageStore
    from runtime.network import NetworkConfig, network_for

    bridge = f"pma{secrets.token_hex(3)}"
    prefix = f"10.{100 + secrets.randbelow(150)}.{secrets.randbelow(256)}"
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        paths = Paths(root)
        paths.ensure()
        ImageStore(paths).build_busybox("busybox")
        network_for(paths, "bridge", NetworkConfig(bridge=bridge, subnet=f"{prefix}.0/24")).lease("0" * 32)
        network_for(paths, "bridge").release("0" * 32)
    a, b = _cli(roots[0]), _cli(roots[1])
    try:
        yield a, b, bridge, prefix
    finally:
        for pm in (a, b):
            for c in json.loads(pm("ps", "-a", "--json").stdout or b"[]"):
                pm("rm", "-f", c["spec"]["name"])
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)
        for root in roots:
            subprocess.run(["umount", "-R", "-l", str(root)], check=False, capture_output=True)
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture
def squatter() -> Iterator[Callable[[str, str], None]]:
    """put(bridge, ip): a network namespace on ``bridge`` holding ``ip`` (someone not ours)."""
    made: list[str] = []

    def put(bridge: str, ip: str) -> None:
        name = f"pmsq{secrets.token_hex(3)}"
        made.append(name)
        for cmd in (["ip", "netns", "add", name],
                    ["ip", "link", "add", f"{name}h", "type", "veth", "peer", "name", "eth0", "netns", name],
                    ["ip", "link", "set", f"{name}h", "master", bridge, "up"],
                    ["ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0"],
                    ["ip", "-n", name, "link", "set", "eth0", "up"]):
            subprocess.run(cmd, check=True)

    yield put
    for name in made:
        subprocess.run(["ip", "link", "del", f"{name}h"], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)


def _addr(pm: Pm, name: str) -> tuple[str, str]:
    spec = json.loads(ok(pm("inspect", name)))[0]["spec"]
    return spec["ip"], spec["mac"]


def _eth0_mac(pm: Pm, name: str) -> str:
    return ok(pm("exec", name, "cat", "/sys/class/net/eth0/address")).strip()


def _pings(ip: str) -> bool:
    return subprocess.run(["busybox", "ping", "-c", "1", "-W", "2", ip], capture_output=True).returncode == 0


def test_two_roots_share_the_pool_and_a_probe_skips_an_address_someone_answers(two_roots, squatter, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("PYMIGRATE_ARP_PROBE_MS", "1000")  # a loaded machine must not miss the answer
    a, b, bridge, prefix = two_roots
    ok(a("run", "-d", "--name", "a1", "busybox", "sleep", "1000"))
    ok(b("run", "-d", "--name", "b1", "busybox", "sleep", "1000"))
    squatter(bridge, f"{prefix}.4")  # the next free address of the pool, held by someone else
    ok(a("run", "-d", "--name", "a2", "busybox", "sleep", "1000"))
    addrs = {"a1": _addr(a, "a1"), "b1": _addr(b, "b1"), "a2": _addr(a, "a2")}
    assert [ip for ip, _ in addrs.values()] == [f"{prefix}.2", f"{prefix}.3", f"{prefix}.5"]
    macs = [mac for _, mac in addrs.values()]
    assert len(set(macs)) == 3 and not any(mac.startswith("02:42:") for mac in macs)  # random, not from the IP
    assert _eth0_mac(a, "a1") == addrs["a1"][1] and _eth0_mac(b, "b1") == addrs["b1"][1]
    for ip, _ in addrs.values():
        assert _pings(ip), ip  # from the host, through the one bridge
    assert ok(a("exec", "a1", "ping", "-c", "1", "-W", "2", addrs["b1"][0])).count("1 packets received") == 1
    # asking for the other root's address by name is refused, naming it
    r = a("run", "--json", "--ip", addrs["b1"][0], "busybox", "true")
    assert r.returncode == 125 and "state root" in json.loads(r.stdout)["error"]


@pytest.mark.requires("criu")
def test_restore_ignore_static_ip_and_mac(two_roots) -> None:  # noqa: ANN001
    a, _, _, _ = two_roots
    ok(a("run", "-d", "--name", "orig", "busybox", "sleep", "1000"))
    ip, mac = _addr(a, "orig")
    checkpoint_id = ok(a("checkpoint", "orig")).strip().splitlines()[0]
    assert ok(a("restore", "--ignore-static-mac", checkpoint_id)).strip() == "orig"
    same_ip, new_mac = _addr(a, "orig")
    assert same_ip == ip and new_mac != mac and _eth0_mac(a, "orig") == new_mac
    name = unique("copy")
    assert ok(a("restore", "--ignore-static-ip", "--name", name, checkpoint_id)).strip() == name
    copy_ip, copy_mac = _addr(a, name)
    assert copy_ip != ip and copy_mac not in (mac, new_mac) and _eth0_mac(a, name) == copy_mac
    assert _pings(ip) and _pings(copy_ip)  # both answer: the copy beside its original
    r = a("restore", "--json", "--ignore-static-ip", "--ip", "10.1.1.1", "--name", unique("bad"), checkpoint_id)
    assert r.returncode == 125 and "contradict" in json.loads(r.stdout)["error"]
