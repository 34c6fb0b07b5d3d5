"""Daemon observability end to end: a Prometheus scrape and the JSON access log after a real migration.

Two daemons in network-namespace hosts (tests/integration/hosts.py) over TCP, the source with
``--metrics-listen ADDRESS:9464 --log-format json``, the target with ``--log-format json``. A
busybox container migrates cold A -> B through the Migrate RPC (a scheduler's view). Then, from
the root namespace over plain HTTP, the source's ``/metrics`` is scraped and parsed with
prometheus_client's text parser:

- the pause histogram holds one migration whose sum is the pause the Migrate call returned, and
  the total-time histogram and bytes sent match the result too;
- the RPC counter has Migrate with code OK exactly once;
- ``pymigrate_containers{state}`` matches ``ps -a`` on the source (one running, one exited left);

and both daemons' logs are JSON lines: the source has an access line for Migrate with code OK
and the caller's address (the root namespace's bridge address), the target one for
PrepareIncoming whose peer is the source host.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from migrate.api import MigrateOptions
from migrate.remote.client import RemoteEngine
from tests.integration.hosts import Host, make_hosts  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay"),
]

DAEMON_PORT = 7443
METRICS_PORT = 9464


def _scrape(host: Host) -> dict[str, dict[tuple, float]]:
    """metric sample name -> {sorted label items: value}, from the host's /metrics."""
    body = urllib.request.urlopen(f"http://{host.address}:{METRICS_PORT}/metrics", timeout=10).read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def _json_log(host: Host) -> list[dict]:
    lines = [line for line in (host.workdir / "daemon.log").read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # --log-format json: every line is one object
    assert entries and all({"ts", "level", "logger", "msg"} <= e.keys() for e in entries)
    return entries


def _access(host: Host, method: str) -> list[dict]:
    return [e for e in _json_log(host) if e["logger"] == "pymigrate.access" and e["method"] == f"/pymigrate.v1.Host/{method}"]


def _states_by_ps(host: Host) -> Counter:
    rows = json.loads(host.cli(["ps", "-a", "--json"], check=True).stdout)
    return Counter(str(r.get("status") or r.get("state", {}).get("status")) for r in rows)


def test_scrape_after_a_migration_shows_its_pause(make_hosts) -> None:  # noqa: ANN001
    a, b = make_hosts(2)
    source = a.start_daemon(f"{a.address}:{DAEMON_PORT}", extra_args=[
        "--insecure", "--metrics-listen", f"{a.address}:{METRICS_PORT}", "--log-format", "json"])
    target = b.start_daemon(f"{b.address}:{DAEMON_PORT}", extra_args=["--insecure", "--log-format", "json"])
    a.cli(["image", "build-busybox", "busybox"], check=True)
    for name in ("web", "stays"):
        a.cli(["run", "-d", "--name", name, "busybox", "sleep", "600"], check=True)
    a.cli(["run", "-d", "--name", "done", "busybox", "true"], check=True)
    a.cli(["wait", "done"], check=True, timeout=30)
    assert not _scrape(a).get("pymigrate_migration_pause_seconds_count"), "no migration yet: no pause observed"

    with RemoteEngine(source, insecure=True) as client:
        started = time.monotonic()
        result = client.migrate("web", MigrateOptions(dest=target))
        call_ms = (time.monotonic() - started) * 1000
    assert result.stats.frozen_ms > 0

    m = _scrape(a)
    cold = (("mode", "cold"),)
    assert m["pymigrate_migration_pause_seconds_count"] == {cold: 1.0}
    assert m["pymigrate_migration_pause_seconds_sum"][cold] == pytest.approx(result.stats.frozen_ms / 1000, rel=1e-9)
    assert m["pymigrate_migration_duration_seconds_sum"][cold] == pytest.approx(result.stats.total_ms / 1000, rel=1e-9)
    assert m["pymigrate_migrations_total"] == {(("mode", "cold"), ("outcome", "succeeded")): 1.0}
    assert m["pymigrate_migration_bytes_total"][(("direction", "sent"),)] == result.stats.bytes_on_wire > 0
    migrate_calls = {k: v for k, v in m["pymigrate_rpc_handled_total"].items() if ("method", "Migrate") in k}
    assert migrate_calls == {(("code", "OK"), ("method", "Migrate"), ("service", "pymigrate.v1.Host")): 1.0}

    by_state = {dict(k)["state"]: v for k, v in m["pymigrate_containers"].items()}
    ps = _states_by_ps(a)
    assert ps == Counter({"running": 1, "exited": 1}), ps
    assert by_state == {state: float(ps.get(state, 0)) for state in ("created", "running", "paused", "exited")}

    (line,) = _access(a, "Migrate")
    assert line["code"] == "OK" and line["level"] == "info"
    assert line["peer"].startswith(f"ipv4:{a.gateway}:"), line  # the root namespace dialled over the bridge
    assert result.stats.total_ms <= line["ms"] <= call_ms + 1, line
    incoming = _access(b, "PrepareIncoming")
    assert [(e["code"], e["peer"].rpartition(":")[0]) for e in incoming] == [("OK", f"ipv4:{a.address}")]
