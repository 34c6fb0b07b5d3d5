"""Ten migrations at once between two hosts (real daemons in network namespaces, TCP).

Ten small busybox counters run on A; ten threads each call Migrate on A's daemon (a scheduler
draining the host) for one container to B. Every migration must succeed, and afterwards the two
hosts must agree: ten running on B with their addresses and counts carried over, none on A, and
neither host keeps a reservation (ROOT/run/incoming), a scratch dir (ROOT/tmp), a lease, a netns,
a cgroup or a veth that no container owns. Then all ten go back at once, B -> A, the same way.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from migrate.api import MigrateOptions, MigrateResult
from migrate.remote.client import RemoteEngine
from tests.integration.hosts import Host, make_hosts  # noqa: F401  (fixture)
from tests.integration.migrate_helpers import (
    COUNTER_CMD,
    assert_contiguous,
    leftovers,
    log_counts,
    names_by_status,
    start_tcp_daemons,
    wait_counting_past,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay"),
]

COUNT = 10


def _migrate_all(source_addr: str, dest_addr: str, names: list[str]) -> dict[str, MigrateResult | BaseException]:
    start = threading.Barrier(len(names))

    def one(name: str) -> MigrateResult:
        with RemoteEngine(source_addr, insecure=True) as source:
            start.wait(30)
            return source.migrate(name, MigrateOptions(dest=dest_addr))

    results: dict[str, MigrateResult | BaseException] = {}
    with ThreadPoolExecutor(len(names)) as pool:
        futures = {name: pool.submit(one, name) for name in names}
        for name, future in futures.items():
            try:
                results[name] = future.result(timeout=300)
            except BaseException as exc:  # collected and asserted below
                results[name] = exc
    return results


def _addresses(host: Host) -> dict[str, str]:
    out = json.loads(host.cli(["ps", "--json"], check=True).stdout)
    return {c["spec"]["name"]: c["spec"]["ip"] for c in out}


def _summary(results: dict[str, MigrateResult | BaseException]) -> str:
    ok = [r for r in results.values() if isinstance(r, MigrateResult)]
    if not ok:
        return "none succeeded"
    frozen = sorted(r.stats.frozen_ms for r in ok)
    total = sorted(r.stats.total_ms for r in ok)
    return (f"{len(ok)}/{len(results)} ok; downtime min/median/max {frozen[0]:.0f}/{frozen[len(frozen) // 2]:.0f}/{frozen[-1]:.0f} ms, "
            f"total min/median/max {total[0]:.0f}/{total[len(total) // 2]:.0f}/{total[-1]:.0f} ms")


def test_ten_migrations_at_once(make_hosts) -> None:  # noqa: ANN001
    hosts = make_hosts(2)
    a, b = hosts[0], hosts[1]
    addr = start_tcp_daemons([a, b])
    a.cli(["image", "build-busybox", "busybox"], check=True)
    names = [f"c{i}" for i in range(COUNT)]
    with RemoteEngine(addr["a"], insecure=True) as engine:
        from migrate.api import RunOptions

        for name in names:
            engine.run(RunOptions(image="busybox", command=("sh", "-c", COUNTER_CMD), name=name))
    for name in names:
        wait_counting_past(a, name, 2)
    ips = _addresses(a)
    assert len(set(ips.values())) == COUNT

    # A -> B, ten at once. B lacks the image: ten pre-flights ask for it at the same time.
    started = time.monotonic()
    results = _migrate_all(addr["a"], addr["b"], names)
    elapsed = time.monotonic() - started
    failures = {n: r for n, r in results.items() if isinstance(r, BaseException)}
    assert failures == {}, f"failed: {failures}"
    print(f"A->B x{COUNT} in {elapsed:.1f} s: {_summary(results)}")

    assert names_by_status(b) == {n: "running" for n in names}
    assert names_by_status(a) == {}
    assert _addresses(b) == ips, "every container keeps its address"
    for name in names:
        assert_contiguous(wait_counting_past(b, name, log_counts(b, name)[-1]), f"{name} on B")
    assert leftovers(a) == [], "host a"
    assert leftovers(b) == [], "host b"

    # B -> A, ten at once (A has the image: nothing to ship first).
    started = time.monotonic()
    results = _migrate_all(addr["b"], addr["a"], names)
    elapsed = time.monotonic() - started
    failures = {n: r for n, r in results.items() if isinstance(r, BaseException)}
    assert failures == {}, f"failed: {failures}"
    print(f"B->A x{COUNT} in {elapsed:.1f} s: {_summary(results)}")
    assert names_by_status(a) == {n: "running" for n in names}
    assert names_by_status(b) == {}
    assert _addresses(a) == ips
    assert leftovers(a) == [], "host a"
    assert leftovers(b) == [], "host b"
