"""The multi-host harness itself (tests/integration/hosts.py): addressing, reachability,
daemons, isolation, and that teardown leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import time
import sys
from pathlib import Path

import pytest

from tests.integration.hosts import REPO, Hosts, make_hosts, pymigrate_command  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "netns")]

_LISTEN = "import socket,sys\ns=socket.socket(); s.bind((sys.argv[1], 5555)); s.listen(1)\nprint('ready', flush=True)\nc,a=s.accept(); c.sendall(a[0].encode()); c.close()\n"
_CONNECT = "import socket,sys\nprint(socket.create_connection((sys.argv[1], 5555), timeout=5).recv(64).decode())\n"


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_hosts_reach_each_other_and_teardown_removes_everything() -> None:
    hosts = Hosts(3)
    try:
        addresses = [h.address for h in hosts]
        assert len(set(addresses)) == 3 and all(a.startswith(f"{hosts.subnet.network_address}"[:-1]) for a in addresses)
        assert str(hosts.subnet).startswith("10.251.")
        assert {h.netns for h in hosts} <= _netns_names()
        # each host sees only its own eth0 and lo
        links = hosts[0].run(["ip", "-br", "link"]).stdout.decode()
        assert sorted(line.split()[0].split("@")[0] for line in links.splitlines()) == ["eth0", "lo"]
        # a -> b over the bridge, b sees a's address as the peer
        server = hosts[1].popen([sys.executable, "-c", _LISTEN, hosts[1].address], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        peer = hosts[0].run([sys.executable, "-c", _CONNECT, hosts[1].address]).stdout.decode().strip()
        server.wait(10)
        server.stdout.close()
        assert peer == hosts[0].address
        # the root namespace reaches every host (through the bridge address)
        for h in hosts:
            r = subprocess.run([sys.executable, "-c", _CONNECT, h.address], capture_output=True, text=True)
            assert "refused" in r.stderr, r.stderr  # an answer (RST) from the host, not a timeout
        # cgroup hierarchies stay visible inside a host (nsenter --net keeps the mount namespace)
        probe = next(p for p in ("/sys/fs/cgroup/unified/cgroup.procs", "/sys/fs/cgroup/cgroup.procs") if Path(p).exists())
        assert hosts[0].run(["test", "-e", probe], check=False).returncode == 0
        base, bridge, names = hosts.base_dir, hosts.bridge, [h.netns for h in hosts]
        sleeper = hosts[2].popen(["sleep", "600"])
        # nsenter joins the namespace after popen returns: wait until the sleeper is in the host
        deadline = time.monotonic() + 10
        while sleeper.pid not in hosts[2].pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sleeper.pid in hosts[2].pids(), "the sleeper never entered the host's namespace"
    finally:
        hosts.close()
    assert not base.exists()
    assert not set(names) & _netns_names()
    assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
    assert sleeper.wait(10) == -9  # processes left in a host are killed


def test_daemons_on_unix_and_tcp(make_hosts) -> None:  # noqa: ANN001
    hosts = make_hosts(2)
    a, b = hosts[0], hosts[1]
    unix = a.start_daemon()
    assert unix == f"unix:{a.socket_path}" and (a.socket_path.stat().st_mode & 0o777) == 0o600
    tcp = b.start_daemon("tcp")
    assert tcp == f"{b.address}:7443"
    for address, extra in ((unix, []), (tcp, ["--insecure"])):
        r = subprocess.run([*pymigrate_command(), "--host", address, *extra, "ps", "--all", "--json"], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == []
    # b's daemon is reachable from a (host to host), not only from the root namespace
    r = a.run([*pymigrate_command(), "--host", tcp, "--insecure", "ps", "--json"], check=False)
    assert r.returncode == 0, r.stderr
    # Host.cli runs the local engine inside the host
    assert a.cli(["ps", "--all", "--json"]).returncode == 0
    assert a.stop_daemon() == 0
    assert not a.socket_path.exists()
    b.kill_daemon()
    assert b.daemon is None
    b.start_daemon("tcp")  # the port is free again after SIGKILL
    assert b.stop_daemon() == 0


def test_kill_daemon_leaves_a_stale_socket_that_the_next_daemon_replaces(make_hosts) -> None:  # noqa: ANN001
    a = make_hosts(1)[0]
    a.start_daemon()
    a.kill_daemon()
    assert a.socket_path.exists()
    a.start_daemon()
    assert a.stop_daemon() == 0


@pytest.mark.requires("sshd")
def test_sshd_starts_and_stops(make_hosts, tmp_path: Path) -> None:  # noqa: ANN001
    a = make_hosts(1)[0]
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    a.start_sshd(Path(f"{key}.pub"))
    assert a.sshd_pids() and a.host_key_fingerprint().startswith("SHA256:")
    # OpenSSH's own client logs in with the key and runs a command inside the host
    r = subprocess.run(
        ["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path / 'kh'}",
         f"root@{a.address}", "ip -br addr show eth0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert a.address in r.stdout
    a.stop_sshd()
    assert a.sshd_pids() == []
