"""The target's plain (non-TLS) page server, while a real cold migration holds it open, lets only
the source in: a third host that finds the port gets a TCP reset, and the migration then goes
through (the stranger did not take the page server's one connection).

The source daemon is held just after the target reserved the migration (failpoint
``source.prepared``), when the target's page server listens; the test reads its port from the
target's listening sockets."""

from __future__ import annotations

import errno
import subprocess
import sys
import time
from typing import Iterator

import pytest

from tests.integration.hosts import Host, Hosts, pymigrate_command

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "pycriu", "busybox", "netns")]

HOLD_S = 6
DAEMON_PORT = 7443


def _addr(host: Host) -> str:
    return f"{host.address}:{DAEMON_PORT}"


def _start_daemon(host: Host, env: dict[str, str] | None = None) -> None:
    host.start_daemon(_addr(host), extra_args=["--insecure"], env=env)


def _running(host: Host) -> set[str]:
    import json

    r = host.cli(["ps", "--json"])
    assert r.returncode == 0, r.stderr.decode()
    return {c["spec"]["name"] for c in json.loads(r.stdout) if c["state"]["status"] == "running"}


def _listening_ports(host: Host) -> set[int]:
    out = host.run(["ss", "-Hltn"], check=True).stdout.decode()
    ports = set()
    for line in out.splitlines():
        local = line.split()[3]
        ports.add(int(local.rpartition(":")[2]))
    return ports


def _connect_from(host: Host, address: str, port: int) -> int:
    """errno of a TCP connect from inside ``host`` (0: connected)."""
    probe = (f"import socket; s = socket.socket(); s.settimeout(3); "
             f"print(s.connect_ex(({address!r}, {port})))")
    return int(host.run([sys.executable, "-c", probe], check=True).stdout.decode().strip())


@pytest.fixture
def hosts3() -> Iterator[Hosts]:
    with Hosts(3) as hosts:
        _start_daemon(hosts[0], env={"PYMIGRATE_FAILPOINTS": f"source.prepared=sleep:{HOLD_S}"})
        _start_daemon(hosts[1])
        for h in (hosts[0], hosts[1]):
            assert h.cli(["image", "build-busybox", "busybox"]).returncode == 0
        yield hosts


def test_a_stranger_cannot_reach_the_targets_page_server(hosts3: Hosts) -> None:
    a, b, stranger = hosts3[0], hosts3[1], hosts3[2]
    r = a.cli(["run", "-d", "--name", "pg", "busybox", "sh", "-c", "while true; do sleep 0.05; done"])
    assert r.returncode == 0, r.stderr.decode()
    before = _listening_ports(b)
    migration = a.popen([*pymigrate_command(), "--host", _addr(a), "--insecure", "migrate", "pg", _addr(b), "--json"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + HOLD_S - 1
        new: set[int] = set()
        while time.monotonic() < deadline and not new:
            new = _listening_ports(b) - before - {DAEMON_PORT}
            time.sleep(0.05)
        assert new, "the target opened no page server while the source was held"
        (port,) = new
        assert _connect_from(stranger, b.address, port) == errno.ECONNREFUSED  # a reset, at once
        out, err = migration.communicate(timeout=120)
    finally:
        if migration.poll() is None:
            migration.kill()
            migration.communicate()
    assert migration.returncode == 0, out.decode() + err.decode()
    assert _running(b) == {"pg"} and "pg" not in _running(a)
    assert port not in _listening_ports(b)
