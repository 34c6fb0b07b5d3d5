"""The daemon's Prometheus metrics: its own registry, served on a separate plain-HTTP listener.

``DaemonMetrics(containers)`` holds every metric of one daemon in a private ``CollectorRegistry``
(not prometheus_client's global one, so two daemons in one process, as in tests, never share a
counter). ``serve(metrics, "HOST:PORT")`` exposes it at ``/metrics`` (``daemon --metrics-listen``).
The library (migrate/, runtime/) records nothing: the call observer at the gRPC boundary
(migrate/remote/access_log.py) feeds these from the requests and answers it sees.

Metrics (seconds and bytes, Prometheus style):
- ``pymigrate_rpc_handled_total{service,method,code}`` and ``pymigrate_rpc_duration_seconds{...}``:
  every call, streaming ones when they end;
- ``pymigrate_migrations_total{mode,outcome}`` (outcome: succeeded, failed, cancelled), and for the
  successful ones ``pymigrate_migration_pause_seconds{mode}`` (the container's downtime: freeze to
  running on the target) and ``pymigrate_migration_duration_seconds{mode}``;
- ``pymigrate_migration_bytes_total{direction}``: ``sent`` is the bytes on the wire of this host's
  outgoing migrations (their result's ``bytes_on_wire``), ``received`` the chunk bytes pushed to
  this host (image, upper layer, checkpoint) -- pages a page server receives directly (pre-copy,
  post-copy) are not seen here;
- ``pymigrate_checkpoints_total{outcome}``, ``pymigrate_restores_total{outcome}``;
- ``pymigrate_containers{state}``: read when scraped (records only, no cgroup reads).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

CONTAINER_STATES = ("created", "running", "paused", "exited")  # runtime.spec.Status
# calls last from milliseconds (listings) to many minutes (pre-copy of a large container)
RPC_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
PAUSE_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
MIGRATION_BUCKETS_S = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class ContainerStates(Collector):
    """``pymigrate_containers{state}`` from the engine's listing at scrape time; every state is
    reported (0 when none), so a dashboard sees a state empty rather than missing."""

    def __init__(self, containers: Callable[[], Iterable[Any]]) -> None:
        self._containers = containers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = dict.fromkeys(CONTAINER_STATES, 0)
        try:
            for info in self._containers():
                status = str(info.state.status)
                counts[status] = counts.get(status, 0) + 1
        except Exception:  # a scrape must not fail the daemon; the gauge is left out this time
            log.warning("counting containers for metrics failed", exc_info=True)
            return
        family = GaugeMetricFamily("pymigrate_containers", "Containers on this host by state.", labels=["state"])
        for state, n in sorted(counts.items()):
            family.add_metric([state], n)
        yield family


class DaemonMetrics:
    """Every metric of one daemon, in its own registry."""

    def __init__(self, containers: Callable[[], Iterable[Any]] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpc_handled = Counter("pymigrate_rpc_handled", "RPCs completed, by method and status code.",
                                   ["service", "method", "code"], registry=r)
        self.rpc_seconds = Histogram("pymigrate_rpc_duration_seconds", "RPC handling time, by method and status code.",
                                     ["service", "method", "code"], buckets=RPC_BUCKETS_S, registry=r)
        self.migrations = Counter("pymigrate_migrations", "Outgoing migrations, by mode and outcome.",
                                  ["mode", "outcome"], registry=r)
        self.pause_seconds = Histogram("pymigrate_migration_pause_seconds",
                                       "Downtime of successful migrations: freeze to running on the target.",
                                       ["mode"], buckets=PAUSE_BUCKETS_S, registry=r)
        self.migration_seconds = Histogram("pymigrate_migration_duration_seconds", "Total time of successful migrations.",
                                           ["mode"], buckets=MIGRATION_BUCKETS_S, registry=r)
        self.migration_bytes = Counter("pymigrate_migration_bytes", "Migration bytes moved, sent or received by this host.",
                                       ["direction"], registry=r)
        self.checkpoints = Counter("pymigrate_checkpoints", "Checkpoint calls, by outcome.", ["outcome"], registry=r)
        self.restores = Counter("pymigrate_restores", "Restore calls, by outcome.", ["outcome"], registry=r)
        for direction in ("sent", "received"):
            self.migration_bytes.labels(direction)  # present (0) before the first migration
        if containers is not None:
            r.register(ContainerStates(containers))

    def rpc(self, method: str, code: str, seconds: float) -> None:
        """One finished call; ``method`` is gRPC's ``/package.Service/Method``."""
        service, _, name = method.lstrip("/").rpartition("/")
        self.rpc_handled.labels(service, name, code).inc()
        self.rpc_seconds.labels(service, name, code).observe(seconds)

    def migration(self, mode: str, outcome: str, *, pause_s: float = 0.0, total_s: float = 0.0, bytes_sent: int = 0) -> None:
        self.migrations.labels(mode, outcome).inc()
        if outcome == "succeeded":
            self.pause_seconds.labels(mode).observe(pause_s)
            self.migration_seconds.labels(mode).observe(total_s)
        if bytes_sent > 0:
            self.migration_bytes.labels("sent").inc(bytes_sent)

    def received(self, n_bytes: int) -> None:
        if n_bytes > 0:
            self.migration_bytes.labels("received").inc(n_bytes)


class MetricsServer:
    """The plain-HTTP ``/metrics`` listener (prometheus_client's WSGI server in a daemon thread)."""

    def __init__(self, httpd: Any, thread: Any) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._httpd.server_port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)


def serve(metrics: DaemonMetrics, listen: str) -> MetricsServer:
    """Serve ``metrics`` on ``HOST:PORT`` (port 0: a free one, see ``MetricsServer.port``).

    Raises:
        InvalidArgument: not HOST:PORT (unix sockets are not offered: scrapers dial TCP), or the
            address cannot be bound.
    """
    from prometheus_client import start_http_server

    from migrate.remote.listen_address import parse_listen
    from runtime.errors import InvalidArgument

    address = parse_listen(listen)
    if address.kind != "tcp":
        raise InvalidArgument(f"invalid metrics address {listen!r}: expected HOST:PORT", hint="e.g. --metrics-listen 127.0.0.1:9464")
    try:
        httpd, thread = start_http_server(address.port, addr=address.host, registry=metrics.registry)
    except OSError as exc:
        raise InvalidArgument(f"cannot serve metrics on {listen}: {exc.strerror or exc}",
                              hint="is the address in use or not local?") from exc
    log.info("serving metrics on http://%s/metrics", listen if address.port else f"{address.host}:{httpd.server_port}")
    return MetricsServer(httpd, thread)
