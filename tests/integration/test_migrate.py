"""Migration between hosts, end to end: real daemons in network namespaces, gRPC over real TCP
sockets, real CRIU.

- A counter container goes A -> B -> C -> A, each hop through a different door: the CLI on the
  source (``pymigrate --root A migrate NAME B:PORT``, the engine in the CLI process), the
  Migrate RPC called on the source daemon (a scheduler's view: ``RemoteEngine(source).migrate``)
  and the CLI acting through a daemon (``pymigrate --host C:PORT migrate NAME A:PORT``). After
  each hop it runs on exactly one host, with the same address, its log shows one unbroken count
  (1, 2, ..., N: never restarted), and a client in another network namespace reaches it over TCP
  at that address and reads a counter that went on from where it was.
- ``--keep-source`` leaves an exited copy on the source.

How the client reaches the container (see tests/integration/migrate_helpers.py): the client is
its own network namespace on the hosts' bridge (a fourth harness host without a daemon); its
route for the container subnet 10.77.0.0/16 points at the host that runs the container now
(updated after each hop, as a real network would be), and that host forwards to its pmbr0. The
container serves its counter with ``nc -l`` started through ``pymigrate exec`` after each hop
(CRIU 4.1.1 cannot dump inet sockets on this kernel, so the container holds none at dump time);
ICMP echo is checked as well.
"""

from __future__ import annotations

import json
import time

import pytest

from migrate.api import MigrateOptions
from migrate.remote.client import RemoteEngine
from tests.integration.hosts import Host, make_hosts  # noqa: F401  (fixture)
from tests.integration.migrate_helpers import (
    COUNTER_CMD,
    DAEMON_PORT,
    assert_contiguous,
    leftovers,
    log_counts,
    migrate_json,
    names_by_status,
    ping,
    read_counter_over_tcp,
    route_client,
    start_tcp_daemons,
    wait_counting_past,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay"),
]

NAME = "counter"


def _start_counter(host: Host) -> tuple[str, str]:
    """The counter container on ``host``; its address and container id."""
    host.cli(["image", "build-busybox", "busybox"], check=True)
    host.cli(["run", "-d", "--name", NAME, "busybox", "sh", "-c", COUNTER_CMD], check=True)
    info = json.loads(host.cli(["inspect", NAME], check=True).stdout)[0]
    assert info["state"]["status"] == "running"
    ip = info["spec"]["ip"]
    assert ip and ip.startswith("10.77."), info["spec"]
    wait_counting_past(host, NAME, 3)
    return ip, info["spec"]["container_id"]


def _check_after_hop(source: Host, target: Host, others: list[Host], client: Host, ip: str, cid: str, before: int) -> int:
    """The container runs on ``target`` only, same address and id, counting on from ``before``."""
    assert names_by_status(target).get(NAME) == "running", names_by_status(target)
    assert NAME not in names_by_status(source), f"source {source.letter} still has {names_by_status(source)}"
    for other in others:
        assert NAME not in names_by_status(other)
    info = json.loads(target.cli(["inspect", NAME], check=True).stdout)[0]
    assert info["spec"]["ip"] == ip, f"address changed: {info['spec']['ip']} != {ip}"
    assert info["spec"]["container_id"] == cid, "the container keeps its id"

    route_client(client, target)
    assert ping(client, ip), f"{ip} on host {target.letter} does not answer ping from the client namespace"
    value = read_counter_over_tcp(target, client, NAME, ip)
    assert value >= before, f"counter went back: {value} < {before} (restarted?)"
    counts = wait_counting_past(target, NAME, value)
    assert_contiguous(counts, f"log of {NAME} on host {target.letter}")
    return counts[-1]


def test_counter_goes_round_three_hosts(make_hosts) -> None:  # noqa: ANN001
    hosts = make_hosts(4)
    a, b, c, client = hosts[0], hosts[1], hosts[2], hosts[3]
    addr = start_tcp_daemons([a, b, c])
    ip, cid = _start_counter(a)
    route_client(client, a)
    assert ping(client, ip)
    count = read_counter_over_tcp(a, client, NAME, ip)
    timings: list[tuple[str, dict]] = []

    # Hop 1, A -> B: the CLI on A (its own engine), plain TCP to B's daemon.
    before = log_counts(a, NAME)[-1]
    r = a.cli(["migrate", NAME, addr["b"], "--insecure", "--json"])
    assert r.returncode == 0, r.stderr.decode()
    stats = migrate_json(r.stdout)["stats"]
    assert stats["phases_ms"].get("image", 0) > 0, "B lacked the image: it should have been shipped first"
    timings.append(("A->B cli", stats))
    count = _check_after_hop(a, b, [c], client, ip, cid, max(before, count))

    # Hop 2, B -> C: a scheduler calls Migrate on the source daemon and watches the events.
    events = []
    with RemoteEngine(addr["b"], insecure=True) as source:
        result = source.migrate(NAME, MigrateOptions(dest=addr["c"]), progress=events.append)
    assert result.container_name == NAME and result.dest == addr["c"]
    assert result.stats.frozen_ms > 0 and result.stats.bytes_on_wire > 0
    phases = [e.phase for e in events]
    assert phases[0] == "preflight" and phases[-1] == "done", phases
    assert {"freeze", "dump", "restore", "commit"} <= set(phases), phases
    timings.append(("B->C rpc", {"frozen_ms": result.stats.frozen_ms, "total_ms": result.stats.total_ms,
                                 "bytes_on_wire": result.stats.bytes_on_wire}))
    count = _check_after_hop(b, c, [a], client, ip, cid, count)

    # Hop 3, C -> A: the CLI acting through C's daemon (--host), the daemon dials A.
    r = c.cli(["--host", addr["c"], "--insecure", "migrate", NAME, addr["a"], "--json"])
    assert r.returncode == 0, r.stderr.decode()
    stats = migrate_json(r.stdout)["stats"]
    assert "image" not in stats["phases_ms"], "A still holds the image: nothing to ship"
    timings.append(("C->A --host", stats))
    _check_after_hop(c, a, [b], client, ip, cid, count)

    for host in (a, b, c):
        assert leftovers(host) == [], f"host {host.letter}"
    for hop, s in timings:
        print(f"{hop}: downtime {s['frozen_ms']:.0f} ms, total {s['total_ms']:.0f} ms, {s['bytes_on_wire']} bytes on the wire")


def test_keep_source_leaves_an_exited_copy(make_hosts) -> None:  # noqa: ANN001
    hosts = make_hosts(2)
    a, b = hosts[0], hosts[1]
    addr = start_tcp_daemons([a, b])
    ip, _ = _start_counter(a)
    r = a.cli(["--insecure", "migrate", NAME, addr["b"], "--keep-source", "--json"])
    assert r.returncode == 0, r.stderr.decode()
    migrate_json(r.stdout)

    assert names_by_status(b) == {NAME: "running"}
    assert names_by_status(a) == {NAME: "exited"}, "the source keeps an exited copy"
    kept = json.loads(a.cli(["inspect", NAME], check=True).stdout)[0]
    assert kept["state"]["checkpoint_id"] == "migrated" and kept["state"]["checkpointed"] is True
    assert kept["spec"]["ip"] == ip
    # the copy on A is not running: its counter stopped, B's goes on
    frozen = log_counts(a, NAME)[-1]
    wait_counting_past(b, NAME, frozen + 5)
    time.sleep(0.3)
    assert log_counts(a, NAME)[-1] == frozen
    assert leftovers(a) == [] and leftovers(b) == []

    # Back to A: the exited copy there (same name and id) is replaced by the running container.
    counted = log_counts(b, NAME)[-1]
    r = b.cli(["--host", addr["b"], "--insecure", "migrate", NAME, addr["a"], "--json"])
    assert r.returncode == 0, r.stderr.decode()
    migrate_json(r.stdout)
    assert names_by_status(a) == {NAME: "running"} and names_by_status(b) == {}
    assert_contiguous(wait_counting_past(a, NAME, counted), f"{NAME} back on A")
    assert leftovers(a) == [] and leftovers(b) == []


def test_migrate_to_a_missing_daemon_keeps_the_container(make_hosts) -> None:  # noqa: ANN001
    """Nothing listens at DEST: the migration fails naming it, the source runs on."""
    hosts = make_hosts(2)
    a, b = hosts[0], hosts[1]
    _start_counter(a)
    r = a.cli(["--insecure", "migrate", NAME, f"{b.address}:{DAEMON_PORT}", "--json"])
    assert r.returncode == 125
    error = json.loads(r.stdout)
    assert f"{b.address}:{DAEMON_PORT}" in error["error"] and "unreachable" in error["error"], error
    assert names_by_status(a) == {NAME: "running"}
    wait_counting_past(a, NAME, log_counts(a, NAME)[-1])
    assert leftovers(a) == []
