#!/usr/bin/env python3
"""Benchmark (not a test): the pause a TCP client sees while its server moves, against the
container's own pause.

Topology (tests/integration/test_tcp_connections.py's): two network-namespace hosts whose
container bridges form one L2 segment, a client namespace on host A's bridge, a busybox echo
server on A. The client (tests/integration/tcp_probe_client.py) does a round trip every 10 ms on
one connection; its longest gap between two answers is the client-seen pause. Per repetition a
fresh server moves once per mode:

- cold, postcopy: ``migrate A -> B --mode M --tcp-established``; the container's pause is the
  migration's frozen_ms;
- local: ``checkpoint --tcp-established`` then ``restore`` on A; the pause is the wall time from
  the checkpoint command's start to the restore command's end (CLI start-up included).

Reported per mode: pause, client gap and gap - pause (median/min/max), the client's
retransmissions and ICMP errors received (its namespace's SNMP counters), broken connections.
Before the restored link came up at CRIU's pre-resume notification (runtime/restore_start.py,
``link_up_before_resume``) gap - pause was ~1.0 s in every cold and post-copy move (a dropped ARP
request retried after 1 s).

With ``--single`` the server is ``nc -l -p 7000 -e cat`` (one connection, one process: nc execs
cat) instead of ``nc -ll -p 7000 -e cat`` (a ``cat`` forked per connection).

What it changes on the host: network namespaces, veths and two state roots with daemons under a
temporary directory, all removed at the end.

Usage: scripts/bench_client_pause.py [--modes cold,postcopy,local] [--runs 3] [--single] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.hosts import Hosts  # noqa: E402
from tests.integration.test_live_migration import Lab  # noqa: E402
from tests.integration.test_live_migration_redis import Segment  # noqa: E402
from tests.integration.test_tcp_connections import (  # noqa: E402
    ECHO_SERVER, PLACEHOLDER_IP, SERVER_IP, _listening, _start_client, _stop_client)
from tests.integration.workloads import wait_for  # noqa: E402

PLACEHOLDER_A_IP = "10.77.9.11"
ECHO_SINGLE = ("nc", "-l", "-p", "7000", "-e", "cat")


COUNTERS = ("TcpRetransSegs", "IcmpInDestUnreachs", "TcpExtTCPTimeouts")


def _counters(prefix: list[str]) -> dict[str, int]:
    """The client namespace's SNMP counters (its retransmissions and the ICMP errors it got)."""
    out = subprocess.run([*prefix, "nstat", "-az", *COUNTERS], capture_output=True, text=True, check=True).stdout
    got = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line and not line.startswith("#")}
    return {k: got.get(k, 0) for k in COUNTERS}


def _checkpoint_restore(host) -> float:  # noqa: ANN001
    t0 = time.monotonic()
    r = host.cli(["checkpoint", "echo", "--tcp-established", "--json"])
    if r.returncode != 0:
        raise RuntimeError(r.stderr.decode())
    r = host.cli(["restore", json.loads(r.stdout)["checkpoint_id"]])
    if r.returncode != 0:
        raise RuntimeError(r.stderr.decode())
    return (time.monotonic() - t0) * 1000


def one_move(lab: Lab, segment: Segment, mode: str, server: tuple[str, ...]) -> dict:
    a, b = lab.a, lab.b
    r = a.cli(["run", "-d", "--name", "echo", "--ip", SERVER_IP, "busybox", *server])
    assert r.returncode == 0, r.stderr.decode()
    prefix = ["nsenter", f"--net=/run/netns/{segment.client_ns}"]
    client = None
    try:
        if server == ECHO_SERVER:
            wait_for(lambda: _listening(prefix, SERVER_IP), 20, "the echo server to listen")
        else:
            time.sleep(1.0)  # a single-connection server: no probe may take its one accept
        client, _ready = _start_client(prefix, SERVER_IP)
        before = _counters(prefix)
        time.sleep(0.5)
        if mode == "local":
            pause_ms = _checkpoint_restore(a)
        else:
            rc, result, err = lab.migrate(a, b, "echo", "--mode", mode, "--tcp-established")
            if rc != 0:
                raise RuntimeError(err)
            pause_ms = result["stats"]["frozen_ms"]
        time.sleep(2.0)  # a backed-off client may need a while; the gap is measured when it answers
        seen = _stop_client(client)
        after = _counters(prefix)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.communicate()
        for h in (a, b):
            h.cli(["rm", "-f", "echo"])
    return {"pause_ms": pause_ms, "gap_ms": seen["max_gap_ms"], "held_error": seen["held_error"],
            **{k: after[k] - before[k] for k in COUNTERS}}


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="cold,postcopy,local")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--single", action="store_true",
                    help="serve one connection with 'nc -l -e cat' (one process: nc execs cat) instead of nc -ll")
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    samples: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="pm-bench-pause-") as tmp, Hosts(2) as hosts:
        lab = Lab(hosts, Path(tmp))
        for h in (lab.a, lab.b):
            h.start_daemon(lab.addr(h), extra_args=["--insecure"])
            r = h.cli(["image", "build-busybox", "busybox"])
            assert r.returncode == 0, r.stderr.decode()
        # Placeholders make each host create its bridge before the segment joins them.
        for h, ip in ((lab.a, PLACEHOLDER_A_IP), (lab.b, PLACEHOLDER_IP)):
            r = h.cli(["run", "-d", "--name", "placeholder", "--ip", ip, "busybox", "sleep", "100000"])
            assert r.returncode == 0, r.stderr.decode()
        segment = Segment(lab)
        try:
            for run in range(args.runs):
                for mode in modes:
                    s = one_move(lab, segment, mode, ECHO_SINGLE if args.single else ECHO_SERVER)
                    samples.setdefault(mode, []).append(s)
                    print(f"run {run} {mode:8} pause {s['pause_ms']:7.1f} ms  client gap {s['gap_ms']:7.1f} ms  "
                          f"error={s['held_error']} client retrans {s['TcpRetransSegs']} icmp {s['IcmpInDestUnreachs']}",
                          file=sys.stderr, flush=True)
        finally:
            segment.close()
            for h in (lab.a, lab.b):
                h.cli(["rm", "-f", "placeholder"])
    report = {}
    for mode, rows in samples.items():
        report[mode] = {
            "runs": len(rows),
            "pause_ms": _summary([r["pause_ms"] for r in rows]),
            "client_gap_ms": _summary([r["gap_ms"] for r in rows]),
            "gap_minus_pause_ms": _summary([r["gap_ms"] - r["pause_ms"] for r in rows]),
            "client_retransmissions": _summary([r["TcpRetransSegs"] for r in rows]),
            "held_errors": sum(1 for r in rows if r["held_error"]),
        }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, v in report.items():
            print(f"{key:9} pause {v['pause_ms']}  client gap {v['client_gap_ms']}  "
                  f"gap-pause {v['gap_minus_pause_ms']}  broken {v['held_errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
