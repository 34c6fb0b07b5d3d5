"""runtime.port_guard on the real kernel: three network-namespace hosts on one bridge.

A listens on a TCP port (a socket made in A's namespace by this process), the guard in A admits
only B: B connects and talks, C is reset at once, after ``remove()`` C connects. ``sweep_stale``
removes the table of a SIGKILLed owner and keeps a live owner's. Every namespace ends without
nft tables.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from runtime import _netns
from runtime import port_guard as pg
from tests.integration.hosts import Host, Hosts, make_hosts, three_hosts  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.requires("root")]

RESET_WITHIN_S = 1.0


def netns_path(host: Host) -> Path:
    return Path(f"/run/netns/{host.netns}")


def tables(host: Host) -> list[str]:
    return host.run(["nft", "list", "tables"]).stdout.decode().split("\n")[:-1]


@contextlib.contextmanager
def listener(host: Host, family: int = socket.AF_INET, address: str = "0.0.0.0") -> Iterator[socket.socket]:
    sock = _netns.socket_in(netns_path(host), family, socket.SOCK_STREAM)
    try:
        sock.bind((address, 0))
        sock.listen(8)
        sock.settimeout(5)
        yield sock
    finally:
        sock.close()


def connect_from(host: Host, address: str, port: int, family: int = socket.AF_INET) -> tuple[str, float]:
    """Connect from ``host``'s namespace; ``("ok" | "reset" | error name, seconds)``."""
    sock = _netns.socket_in(netns_path(host), family, socket.SOCK_STREAM)
    sock.settimeout(3)
    t0 = time.monotonic()
    try:
        sock.connect((address, port))
        sock.sendall(b"x")
        return "ok", time.monotonic() - t0
    except ConnectionRefusedError:  # the RST answering our SYN
        return "reset", time.monotonic() - t0
    except OSError as exc:
        return type(exc).__name__, time.monotonic() - t0
    finally:
        sock.close()


def accept_one(lsock: socket.socket) -> bytes:
    conn, _ = lsock.accept()
    with conn:
        conn.settimeout(5)
        return conn.recv(1)


def test_only_the_peer_reaches_the_guarded_port(three_hosts: Hosts) -> None:  # noqa: F811
    a, b, c = three_hosts
    with listener(a) as lsock:
        port = lsock.getsockname()[1]
        assert connect_from(c, a.address, port)[0] == "ok"  # open before the guard
        assert accept_one(lsock) == b"x"

        with _netns.entered(netns_path(a)):
            assert pg.available()
            guard = pg.guard_port(port, [b.address], label="test peer-only")
        try:
            assert tables(a) == [f"table inet {guard.table}"]
            assert tables(b) == [] and tables(c) == []

            assert connect_from(b, a.address, port)[0] == "ok"
            assert accept_one(lsock) == b"x"

            outcome, elapsed = connect_from(c, a.address, port)
            assert outcome == "reset" and elapsed < RESET_WITHIN_S, (outcome, elapsed)
            # loopback is not exempt: a local process of A is not B
            assert connect_from(a, "127.0.0.1", port)[0] == "reset"
        finally:
            guard.remove()  # from the root namespace: the guard enters A's by itself
        guard.remove()  # idempotent

        assert connect_from(c, a.address, port)[0] == "ok"
        assert accept_one(lsock) == b"x"
    print(f"port guard: install {guard.install_ms:.1f} ms, remove {guard.remove_ms:.1f} ms", file=sys.stderr)
    for host in three_hosts:
        assert tables(host) == []


def test_ipv6_sources_are_rejected_when_only_ipv4_is_allowed(three_hosts: Hosts) -> None:  # noqa: F811
    a, b, _ = three_hosts
    if "::1" not in a.run(["ip", "-6", "addr", "show", "dev", "lo"]).stdout.decode():
        pytest.skip("no IPv6 loopback in the host namespace")
    with listener(a, socket.AF_INET6, "::") as lsock:
        port = lsock.getsockname()[1]
        with _netns.entered(netns_path(a)):
            guard = pg.guard_port(port, ["127.0.0.1"], label="test v6")
        with guard:
            assert connect_from(a, "::1", port, socket.AF_INET6)[0] == "reset"
            # IPv4 to the dual-stack socket is matched as IPv4: 127.0.0.1 is allowed, B is not
            assert connect_from(a, "127.0.0.1", port)[0] == "ok"
            assert accept_one(lsock) == b"x"
            assert connect_from(b, a.address, port)[0] == "reset"
        assert connect_from(a, "::1", port, socket.AF_INET6)[0] == "ok"
        assert accept_one(lsock) == b"x"
    assert tables(a) == []


def _guard_owner(host: Host, port: int, allowed: str) -> tuple[subprocess.Popen, str]:
    """A python process in ``host`` that installs a guard and sleeps; it and its table's name."""
    code = (
        "import sys, time\n"
        "from runtime.port_guard import guard_port\n"
        f"g = guard_port({port}, [{allowed!r}], label='owner')\n"
        "print(g.table, flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = host.popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line:
        proc.kill()
        raise AssertionError(f"guard owner failed: {proc.communicate(timeout=10)[1].decode()}")
    return proc, line


def test_sweep_removes_tables_of_dead_owners_only(three_hosts: Hosts) -> None:  # noqa: F811
    a, b, c = three_hosts
    dead, dead_table = _guard_owner(a, 40001, b.address)
    live, live_table = _guard_owner(a, 40002, b.address)
    try:
        dead.kill()
        dead.communicate(timeout=10)
        assert sorted(tables(a)) == sorted([f"table inet {dead_table}", f"table inet {live_table}"])

        with _netns.entered(netns_path(c)):
            assert pg.sweep_stale() == []  # another namespace: nothing of A's is seen
        with _netns.entered(netns_path(a)):
            assert pg.sweep_stale() == [dead_table]
        assert tables(a) == [f"table inet {live_table}"]
    finally:
        live.kill()
        live.communicate(timeout=10)
    with _netns.entered(netns_path(a)):
        assert pg.sweep_stale() == [live_table]
    for host in three_hosts:
        assert tables(host) == []


def test_the_nft_binary_fallback_guards_the_same(three_hosts: Hosts, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    a, b, c = three_hosts
    monkeypatch.setattr(pg, "_library", lambda: None)
    assert pg.backend() == "nft"
    with listener(a) as lsock:
        port = lsock.getsockname()[1]
        with _netns.entered(netns_path(a)):
            guard = pg.guard_port(port, [b.address], label="test binary")
        with guard:
            assert tables(a) == [f"table inet {guard.table}"]
            assert connect_from(b, a.address, port)[0] == "ok"
            assert accept_one(lsock) == b"x"
            assert connect_from(c, a.address, port)[0] == "reset"
        assert connect_from(c, a.address, port)[0] == "ok"
    assert tables(a) == []
