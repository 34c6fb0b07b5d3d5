"""Debian's redis-server in a container keeps a client's TCP connection across a post-copy
migration with --tcp-established.

Topology (all made here, all removed at the end)::

    host netns a                          host netns b
    pmbr0 ── pmv… ── redis (10.77.3.3)    pmbr0 ── pmv… ── placeholder (10.77.9.9)
      │ └── pmsegA ═══════ veth ═══════ pmsegB ──┘
      └── pmclH ═══ veth ═══ client netns: eth0 10.77.250.250/16 (the RESP client)

The two hosts' container bridges are joined by one veth pair, so they form one L2 segment, as
issue 7 asks: the container's address and MAC are reachable wherever it runs. Both bridges carry
the same gateway address and MAC (each state root derives them from 10.77.0.1); a bridge drops
frames that carry its own MAC as source, so the duplicates stay harmless, and the client talks to
the container directly (same subnet, no gateway). The placeholder container only makes host b
create its pmbr0 before the migration (so the segment exists when the container arrives); its
address differs from the migrating container's because the two state roots allocate addresses
independently.

CRIU 4.1.1 cannot dump an inet socket on Linux >= 6.16 (``getsockopt(SO_PASSCRED)`` now fails
with EOPNOTSUPP on TCP sockets). With that CRIU the test stops at the dump and is skipped naming
the reason; with the CRIU scripts/setup.sh builds (it applies scripts/criu-patches/) it
runs to the end: measured 100k keys, pause 583 ms, every key read back on the same connection.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import Hosts
from tests.integration.redis_image import REDIS_IMAGE, REDIS_PORT, redis_available, redis_command, redis_image_tar
from tests.integration.test_live_migration import Lab, incoming_records, status

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "netns")]

REDIS_IP = "10.77.3.3"
PLACEHOLDER_IP = "10.77.9.9"
CLIENT_IP = "10.77.250.250"
KEYS = 100_000
CLIENT = Path(__file__).with_name("resp_client.py")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


class Segment:
    """The veths joining both hosts' pmbr0 and the client namespace (see the module docstring)."""

    def __init__(self, lab: Lab) -> None:
        self.tag = secrets.token_hex(2)
        self.client_ns = f"pmcl-{self.tag}"
        self.links: list[tuple[str, str]] = []  # (netns, link) to delete
        self.ns_made = False
        a, b = lab.a, lab.b
        seg_a, seg_b = f"pmsg{self.tag}a", f"pmsg{self.tag}b"
        _ip("link", "add", seg_a, "type", "veth", "peer", "name", seg_b)
        self.links.append(("", seg_a))
        _ip("link", "set", seg_a, "netns", a.netns)
        self.links[-1] = (a.netns, seg_a)
        _ip("link", "set", seg_b, "netns", b.netns)
        for host, link in ((a, seg_a), (b, seg_b)):
            _ip("-n", host.netns, "link", "set", link, "master", "pmbr0")
            _ip("-n", host.netns, "link", "set", link, "up")
        _ip("netns", "add", self.client_ns)
        self.ns_made = True
        cl_host, cl_in = f"pmcl{self.tag}h", f"pmcl{self.tag}c"
        _ip("link", "add", cl_host, "type", "veth", "peer", "name", cl_in)
        self.links.append(("", cl_host))
        _ip("link", "set", cl_in, "netns", self.client_ns)
        _ip("link", "set", cl_host, "netns", a.netns)
        self.links[-1] = (a.netns, cl_host)
        _ip("-n", a.netns, "link", "set", cl_host, "master", "pmbr0")
        _ip("-n", a.netns, "link", "set", cl_host, "up")
        _ip("-n", self.client_ns, "link", "set", "lo", "up")
        _ip("-n", self.client_ns, "addr", "add", f"{CLIENT_IP}/16", "dev", cl_in)
        _ip("-n", self.client_ns, "link", "set", cl_in, "up")

    def client(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.client_ns}", sys.executable, str(CLIENT), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def close(self) -> None:
        for netns, link in self.links:
            args = ["-n", netns] if netns else []
            _ip(*args, "link", "del", link, check=False)
        if self.ns_made:
            _ip("netns", "del", self.client_ns, check=False)


@pytest.fixture
def redis_lab(tmp_path: Path) -> Iterator[Lab]:
    if not redis_available():
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    with Hosts(2) as hosts:
        lab = Lab(hosts, tmp_path)
        for h in (lab.a, lab.b):
            h.start_daemon(lab.addr(h), extra_args=["--insecure"])
            r = h.cli(["image", "build-busybox", "busybox"])
            assert r.returncode == 0, r.stderr.decode()
        tar = redis_image_tar(lab.a.root, tmp_path / "redis.tar")
        r = lab.a.cli(["image", "import", REDIS_IMAGE, str(tar)])
        assert r.returncode == 0, r.stderr.decode()
        yield lab


@pytest.mark.parametrize("mode", ["postcopy", "cold"])
def test_redis_client_keeps_its_connection_across_migration_with_tcp_established(redis_lab: Lab, mode: str) -> None:
    """Cold too: the source's link is cut at CRIU's post-dump, so its kernel neither ACKs the
    client's packets during the pause nor sends a FIN when the source copy is killed."""
    lab = redis_lab
    r = lab.a.cli(["run", "-d", "--name", "redis", "--ip", REDIS_IP, REDIS_IMAGE, *redis_command()])
    assert r.returncode == 0, r.stderr.decode()
    r = lab.b.cli(["run", "-d", "--name", "placeholder", "--ip", PLACEHOLDER_IP, "busybox", "sleep", "100000"])
    assert r.returncode == 0, r.stderr.decode()
    segment = Segment(lab)
    client = None
    try:
        client = segment.client(REDIS_IP, str(REDIS_PORT), str(KEYS))
        assert client.stdout is not None and client.stdin is not None
        line = client.stdout.readline()
        assert line, client.stderr.read() if client.stderr else ""
        loaded = json.loads(line)
        assert loaded.get("loaded") == KEYS, loaded

        rc, result, err = lab.migrate(lab.a, lab.b, "redis", "--mode", mode, "--tcp-established")
        if rc != 0 and "Can't get 1:16 opt" in err:
            # CRIU 4.1.1 on Linux >= 6.16 cannot dump any inet socket (criu issue #2705; see
            # docs/migration.md "Limits"). scripts/criu-patches/4.1.1-so-passcred.patch (applied by setup.sh) fixes it; with a
            # patched criu in PYMIGRATE_CRIU this test runs to the end.
            pytest.skip("this criu cannot dump inet sockets on this kernel (getsockopt SO_PASSCRED -> EOPNOTSUPP); "
                        "run scripts/setup.sh (it builds criu with scripts/criu-patches/4.1.1-so-passcred.patch)")
        assert rc == 0, err
        assert status(lab.a, "redis") is None
        assert result is not None and result["mode"] == mode
        print(f"\nredis ({KEYS} keys) {mode}: pause {result['stats']['frozen_ms']:.0f} ms, "
              f"last page {result['stats']['phases_ms'].get('last_page', 0):.0f} ms after the resume, "
              f"total {result['stats']['total_ms']:.0f} ms")
        assert status(lab.b, "redis") == "running"
        assert not incoming_records(lab.b)

        client.stdin.write("go\n")
        client.stdin.flush()
        out, err_c = client.communicate(timeout=120)
        after = json.loads(out.strip().splitlines()[-1])
        assert "error" not in after, f"the client's connection did not survive: {after} {err_c}"
        assert after == {"ok": KEYS, "bad": 0, "local_port": loaded["local_port"]}, after
        assert client.returncode == 0
    finally:
        if client is not None:
            if client.poll() is None:
                client.kill()
            client.communicate()  # reaps it and closes its pipes
        segment.close()
        for h in (lab.a, lab.b):
            h.cli(["rm", "-f", "redis"])
        lab.b.cli(["rm", "-f", "placeholder"])
