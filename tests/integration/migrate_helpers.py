"""Helpers for the migration integration tests (test_migrate*.py): daemons on TCP, a counter
container, a client that reaches a container from another network namespace, and the
"nothing left behind" checks a host must pass after migrations.

Reaching a container from elsewhere. Each host keeps its containers on its own bridge pmbr0
(10.77.0.0/16) *inside the host's network namespace*; nothing routes that subnet between hosts.
The tests use one extra harness host as a client (a separate network namespace on the hosts'
bridge, no daemon) and point its route for 10.77.0.0/16 at the host that runs the container now
(``route_client``), with forwarding enabled in that host's namespace only — what a real network
would do after a migration (a route or an announcement update). The client then reaches the
container's address across two namespace boundaries (client -> host -> container).

Why the in-container server is started on demand. CRIU 4.1.1 cannot dump an inet socket on
Linux >= 6.16: ``getsockopt(SO_PASSCRED)`` on a TCP/UDP socket now fails with EOPNOTSUPP and
CRIU gives up ("sockets: Can't get 1:16 opt", criu issue #2705, fixed after 4.1.1). A container
that holds a listening TCP socket cannot be checkpointed on this machine. So the counter keeps
no socket open: ``read_counter_over_tcp`` starts ``nc -l`` in the container with ``pymigrate
exec`` after a hop, the client connects over TCP and reads the counter file, and ``nc`` exits
before the next hop.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.integration.hosts import Host, pymigrate_command

DAEMON_PORT = 7070
COUNTER_PORT = 8080
CONTAINER_SUBNET = "10.77.0.0/16"

# A shell counter: the value lives in the shell's memory (a restart would begin again at 1) and is
# mirrored into /www/count (the container's upper layer) and the container's log.
COUNTER_CMD = (
    "mkdir -p /www; i=0; "
    "while :; do i=$((i+1)); echo $i > /www/count; echo count $i; sleep 0.1; done"
)


def start_tcp_daemons(hosts: list[Host], extra_args: tuple[str, ...] = ("--insecure",)) -> dict[str, str]:
    """A daemon on ADDRESS:7070 in each host; letter -> address dialable from anywhere."""
    return {h.letter: h.start_daemon(f"{h.address}:{DAEMON_PORT}", extra_args=list(extra_args)) for h in hosts}


def enable_forwarding(host: Host) -> None:
    """ip_forward in this host's namespace only (the sysctl is per network namespace)."""
    host.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])


def route_client(client: Host, host: Host) -> None:
    """The client reaches 10.77.0.0/16 through ``host`` (where the container runs now)."""
    enable_forwarding(host)
    subprocess.run(
        ["ip", "-n", client.netns, "route", "replace", CONTAINER_SUBNET, "via", host.address],
        check=True, capture_output=True, timeout=10,
    )


def ping(client: Host, ip: str, *, attempts: int = 20) -> bool:
    """An ICMP echo from the client's namespace is answered by the container's namespace."""
    for _ in range(attempts):
        r = client.run(["busybox", "ping", "-c", "1", "-W", "1", ip], check=False, timeout=10)
        if r.returncode == 0:
            return True
        time.sleep(0.1)
    return False


def read_counter_over_tcp(server: Host, client: Host, name: str, ip: str, *, timeout_s: float = 15.0) -> int:
    """The counter of container ``name`` (on ``server``), read by ``client`` over TCP at ``ip``.

    ``nc -l`` serves /www/count once inside the container (started with ``pymigrate exec``);
    the client retries until it listens. Returns once the exec'd ``nc`` has exited, so the
    container holds no socket afterwards (see the module docstring).
    """
    serve = server.popen(
        [*pymigrate_command(), "--root", str(server.root), "exec", name, "sh", "-c", f"nc -l -p {COUNTER_PORT} < /www/count"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            last = client.run(["busybox", "nc", "-w", "2", ip, str(COUNTER_PORT)], check=False, timeout=10)
            text = last.stdout.decode().strip()
            if last.returncode == 0 and text.isdigit():
                out, err = serve.communicate(timeout=10)
                assert serve.returncode == 0, f"exec nc in {name}: {err.decode()}"
                return int(text)
            if serve.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no counter from {ip}:{COUNTER_PORT} (client: {last!r}; server exit {serve.poll()}: "
            f"{serve.stderr.read().decode() if serve.poll() is not None and serve.stderr else ''})"
        )
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(10)


def log_counts(host: Host, name: str) -> list[int]:
    """The numbers of the ``count N`` lines in the container's log on ``host``."""
    r = host.cli(["logs", name], check=True)
    return [int(m) for m in re.findall(rb"^count (\d+)$", r.stdout, re.M)]


def wait_counting_past(host: Host, name: str, value: int, *, timeout_s: float = 10.0) -> list[int]:
    """Wait until the log on ``host`` shows a count above ``value``; the counts seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = log_counts(host, name)
        if counts and counts[-1] > value:
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} on host {host.letter} does not count past {value}: last {counts[-3:]}")
        time.sleep(0.1)


def assert_contiguous(counts: list[int], what: str) -> None:
    """1, 2, ..., N without a gap or a restart: the process ran on with its memory."""
    assert counts, f"{what}: no count lines"
    assert counts == list(range(1, len(counts) + 1)), f"{what}: counts restart or skip: ...{counts[-20:]}"


def ps(host: Host, *, all: bool = True) -> list[dict[str, Any]]:
    r = host.cli(["ps", "--json", *(["-a"] if all else [])], check=True)
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def names_by_status(host: Host) -> dict[str, str]:
    return {c["spec"]["name"]: c["state"]["status"] for c in ps(host)}


def migrate_json(stdout: bytes) -> dict[str, Any]:
    """The ``migrate --json`` result, with its stats checked for the documented fields."""
    result = json.loads(stdout)
    stats = result["stats"]
    for key in ("frozen_ms", "total_ms", "bytes_on_wire", "raw_bytes", "phases_ms"):
        assert key in stats, f"migrate --json lacks stats.{key}: {result}"
    assert 0 < stats["frozen_ms"] <= stats["total_ms"], stats
    assert stats["bytes_on_wire"] > 0, stats
    assert {"preflight", "freeze", "dump", "restore", "commit"} <= set(stats["phases_ms"]), stats
    return result  # type: ignore[no-any-return]


def leftovers(host: Host) -> list[str]:
    """What a host must not keep once no migration is in flight: reservations, scratch dirs,
    leases, netns mounts, container dirs and cgroups of containers it does not have, stray
    processes and veths. Empty when clean."""
    from runtime.config import Paths, default_cgroup_parent
    from runtime.network import network_for

    problems: list[str] = []
    paths = Paths(host.root)
    containers = {c["spec"]["container_id"]: c for c in ps(host)}
    running = {cid for cid, c in containers.items() if c["state"]["status"] == "running"}

    incoming = paths.run / "incoming"
    if incoming.is_dir():
        records = sorted(p.name for p in incoming.iterdir() if p.name != ".lock")
        if records:
            problems.append(f"reservations left in {incoming}: {records}")
    if paths.tmp.is_dir() and any(paths.tmp.iterdir()):
        problems.append(f"scratch left in {paths.tmp}: {sorted(p.name for p in paths.tmp.iterdir())}")
    if paths.checkpoints.is_dir() and any(paths.checkpoints.iterdir()):
        problems.append(f"checkpoints left in {paths.checkpoints}: {sorted(p.name for p in paths.checkpoints.iterdir())}")
    if paths.containers.is_dir():
        dirs = {p.name for p in paths.containers.iterdir()}
        if dirs != set(containers):
            problems.append(f"container dirs {sorted(dirs)} != containers {sorted(containers)}")
    if paths.network.is_dir() and (paths.network / "network.json").exists():
        leases = network_for(paths, "bridge").leases()
        stray = set(leases) - set(containers)
        missing = running - set(leases)
        if stray:
            problems.append(f"leases of containers this host does not have: {sorted(stray)}")
        if missing:
            problems.append(f"running containers without a lease: {sorted(missing)}")
    if paths.netns.is_dir():
        stray_ns = {p.name for p in paths.netns.iterdir()} - set(containers)
        if stray_ns:
            problems.append(f"netns files of containers this host does not have: {sorted(stray_ns)}")
    cgroup_dir = Path("/sys/fs/cgroup/unified") / _own_cgroup() / default_cgroup_parent(host.root)
    if cgroup_dir.is_dir():
        cgroups = {p.name for p in cgroup_dir.iterdir() if p.is_dir()}
        if cgroups - running:
            problems.append(f"cgroups left in {cgroup_dir}: {sorted(cgroups - running)}")
    veths = host.run(["ip", "-o", "link", "show", "type", "veth"], check=False).stdout.decode()
    host_veths = [line.split(":")[1].strip().split("@")[0] for line in veths.splitlines()]
    host_veths = [v for v in host_veths if v != "eth0"]
    if len(host_veths) != len(running):
        problems.append(f"{len(host_veths)} container veths for {len(running)} running containers: {host_veths}")
    return problems


def _own_cgroup() -> str:
    """This process's cgroup2 path (relative), where the runtime creates its cgroups."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            return path.lstrip("/")
    return ""
