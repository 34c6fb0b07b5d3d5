#!/usr/bin/env python3
"""Benchmark (not a test): cold migration between two local hosts against the naive way.

Two "hosts" are network namespaces on one bridge (tests/integration/hosts.py), each with its own
state root and a daemon on ADDRESS:7443 (--insecure). For each size (memhog workloads of 16, 256
and 1024 MiB of random, incompressible memory, tests/workloads/memhog.c):

- migrate: ``pymigrate --host A migrate NAME B --json`` (the source daemon dials the target's);
  downtime = stats.frozen_ms (freeze to running on the target), total, bytes on the wire, time per
  phase, and the target's restore breakdown (from its daemon log);
- naive: a fresh memhog of the same size on A, then ``checkpoint NAME --export F`` on A, ``cp F``
  into B's state root, ``restore --import F`` on B, each command timed from outside (CLI start
  included); naive downtime = checkpoint start to restore end. The engine-internal sum
  (checkpoint total_ms + cp + restore total_ms) is reported too;
- CRIU's dump rate of the workload, from the naive checkpoint's stats: pages bytes /
  (memdump_ms + memwrite_ms); the stream's rate: bytes on the wire / the migration's dump phase;
- raw TCP throughput on the same link, in the same run: a Python sender in A's namespace, a
  receiver in B's (1 MiB sends, timed at the receiver from first byte to EOF).

Before every timed step the same amount of memory is touched and freed (2 x size + 512 MiB), since
this VM hands freed memory back to its host and first touches are slow (CRIU-NOTES.md).

Goals: 16 MiB downtime <= 300 ms; stream throughput >= CRIU's dump rate; 1 GiB downtime <= 0.6 x
the naive way's.

What it changes on the host: a bridge, two network namespaces with veths, two state roots and
daemons under a temporary directory, and the containers it starts; all removed at the end.

With ``--ssh`` (issue 6), each size also gets an ssh:// column measured in the same run: both
hosts run Debian's sshd (a generated key, host keys recorded beforehand); a memhog of the size
goes A -> B from A's CLI once over direct gRPC (``migrate NAME B:7443 --insecure``: CRIU's page
server carries the pages, disk-less) and, after an untimed hop back, once over
``ssh://root@B`` with B's daemon stopped, so the ssh transport starts one on demand (everything
streams through the tunnel). Per path: downtime, total, the CLI's wall time (ssh connect and
daemon start included), bytes on the wire and the stream rate (bytes / dump phase).

Usage: scripts/bench_migrate.py [--sizes 16,256,1024] [--tcp-mib 1024] [--json]
       scripts/bench_migrate.py --sizes 16,256 --ssh [--json]   (adds the ssh:// column)
       scripts/bench_migrate.py --mode cold,postcopy [--sizes 64,256,1024] [--json]
         (live modes, issue 7: per size one memhog moved once per mode, back and forth; pause,
         total, bytes on the wire, last page after the resume; goals: postcopy pause <= 80 ms
         and flat across sizes, postcopy total <= 1.2 x cold: issue 17); the memhog is --text-percent text
         (default 50: compresses 1.7x with zstd) and the rest random
       scripts/bench_migrate.py --mode cold,postcopy --link-rate 1gbit,10gbit [--sizes 1024] [--runs N]
         (issue 17: the same per link rate, the hosts' links shaped with tc tbf (scripts/bench_link.py),
         raw TCP on the shaped link measured first; --rtt-ms needs sch_netem, absent here. Each mode M
         runs next to M:off, its uncompressed baseline, N pairs interleaved ABBA, medians; goals: at
         1 Gbit/s cold pause and postcopy total <= 0.6 x uncompressed, at 10 Gbit/s every pause and
         total no slower than uncompressed; how many runs auto compressed is printed beside each;
         M:on instead of M forces the relay's zstd, against the same M:off)
       scripts/bench_migrate.py --cold-ab N [--sizes 256,1024] [--tmpfs-roots MIB]
         (issue 17: cold with the target's lazy restore (migrate/migration/cold_lazy.py) vs every page
         restored first, N each in ABBA order, against the raw criu dump of the same container into
         the lab's disk and into a tmpfs, all in one run; goal: cold pause <= 1.2 x the faster raw dump)
       (also ``scripts/bench.py migrate ...``)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_link

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DOWNTIME_16_GOAL_MS = 300.0
NAIVE_RATIO_GOAL = 0.6

RECEIVER = r"""
import socket, sys, time
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
conn, _ = srv.accept()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
buf = bytearray(1 << 20)
view = memoryview(buf)
n = conn.recv_into(view)
t0 = time.monotonic()
total = n
while True:
    n = conn.recv_into(view)
    if not n:
        break
    total += n
print(total, time.monotonic() - t0, flush=True)
"""

SENDER = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
chunk = bytes(range(256)) * 4096
for _ in range(int(sys.argv[3])):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
s.recv(1)
s.close()
"""


def warm(size_mib: int) -> None:
    """Touch and free 2 x size + 512 MiB so the next step does not pay for first touches."""
    data = b"\x01" * ((2 * size_mib + 512) << 20)
    del data


def tcp_throughput(lab: Any, mib: int) -> dict[str, float]:
    a, b = lab.hosts[0], lab.hosts[1]
    port = 7600
    recv = b.popen([sys.executable, "-c", RECEIVER, b.address, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None
        if recv.stdout.readline().strip() != "ready":
            raise SystemExit("bench: tcp receiver did not start")
        a.run([sys.executable, "-c", SENDER, b.address, str(port), str(mib)], timeout=300)
        out, _ = recv.communicate(timeout=300)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    total, seconds = out.split()
    return {"bytes": int(total), "seconds": float(seconds), "mib_per_s": int(total) / float(seconds) / (1 << 20)}


def _json(r: subprocess.CompletedProcess, what: str) -> Any:
    if r.returncode != 0:
        # with --json the CLI reports its error on stdout
        raise SystemExit(f"bench: {what} failed ({r.returncode}): {r.stderr.decode().strip()} {r.stdout.decode().strip()}")
    return json.loads(r.stdout)


_RESTORE_LINE = re.compile(
    r"import_ms=([\d.]+) preflight_ms=([\d.]+) restore_ms=([\d.]+) \(criu restore_time ([\d.]+) ms\)"
)


def target_breakdown(host: Any) -> dict[str, float]:
    """The last restore breakdown the target's daemon logged (migrate/restore.py)."""
    log = (host.workdir / "daemon.log").read_text(errors="replace")
    found = _RESTORE_LINE.findall(log)
    if not found:
        return {}
    import_ms, preflight_ms, restore_ms, criu_ms = map(float, found[-1])
    return {"import_ms": import_ms, "preflight_ms": preflight_ms, "restore_ms": restore_ms, "criu_restore_ms": criu_ms}


def bench_size(lab: Any, size_mib: int) -> dict[str, Any]:
    a, b = lab.hosts[0], lab.hosts[1]
    row: dict[str, Any] = {"size_mib": size_mib}

    # --- migration through the daemons ---
    name = f"mig{size_mib}"
    lab.run_memhog(a, name, size_mib)
    before = lab.report(a, name)
    warm(size_mib)
    t0 = time.monotonic()
    result = _json(lab.remote(a, ["migrate", name, lab.addr(b), "--json"], timeout=600), f"migrate {name}")
    wall_ms = (time.monotonic() - t0) * 1000
    after = lab.report(b, name)
    if before is None or after is None or before[0] != after[0] or after[1] < before[1]:
        raise SystemExit(f"bench: {name} after migration does not match ({before} -> {after})")
    stats = result["stats"]
    phases = stats.get("phases_ms", {})
    row["migrate"] = {
        "downtime_ms": stats["frozen_ms"],
        "total_ms": stats["total_ms"],
        "cli_wall_ms": round(wall_ms, 1),
        "bytes_on_wire": stats["bytes_on_wire"],
        "raw_bytes": stats.get("raw_bytes", 0),
        "phases_ms": phases,
        "target": target_breakdown(b),
    }
    dump_ms = phases.get("dump", 0.0)
    row["stream_mib_per_s"] = stats["bytes_on_wire"] / (dump_ms / 1000) / (1 << 20) if dump_ms else 0.0
    b.cli(["rm", "-f", name])

    # --- the naive way: checkpoint --export, cp, restore --import ---
    name = f"naive{size_mib}"
    lab.run_memhog(a, name, size_mib)
    archive = a.workdir / f"{name}.pmckpt"
    copy = b.root / f"{name}.pmckpt"
    warm(size_mib)
    t0 = time.monotonic()
    ckpt = _json(a.cli(["checkpoint", name, "--export", str(archive), "--json"], timeout=600), f"checkpoint {name}")
    t1 = time.monotonic()
    subprocess.run(["cp", str(archive), str(copy)], check=True)
    t2 = time.monotonic()
    rest = _json(b.cli(["restore", "--import", str(copy), "--json"], timeout=600), f"restore {name}")
    t3 = time.monotonic()
    cs, rs = ckpt["stats"], rest["stats"]
    row["naive"] = {
        "checkpoint_ms": round((t1 - t0) * 1000, 1),
        "cp_ms": round((t2 - t1) * 1000, 1),
        "restore_ms": round((t3 - t2) * 1000, 1),
        "downtime_ms": round((t3 - t0) * 1000, 1),
        "engine_downtime_ms": round(cs["total_ms"] + (t2 - t1) * 1000 + rs["total_ms"], 1),
        "archive_bytes": archive.stat().st_size,
        "checkpoint_stats": cs,
        "restore_stats": rs,
    }
    pages_bytes = cs.get("pages_written", 0) * 4096
    criu_ms = cs.get("memdump_ms", 0.0) + cs.get("memwrite_ms", 0.0)
    row["criu_dump_mib_per_s"] = pages_bytes / (criu_ms / 1000) / (1 << 20) if criu_ms else 0.0
    row["downtime_ratio"] = row["migrate"]["downtime_ms"] / row["naive"]["downtime_ms"]
    row["downtime_ratio_engine"] = row["migrate"]["downtime_ms"] / row["naive"]["engine_downtime_ms"]
    b.cli(["rm", "-f", name])
    archive.unlink(missing_ok=True)
    copy.unlink(missing_ok=True)
    return row


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    by_size = {r["size_mib"]: r for r in rows}
    if 16 in by_size:
        d = by_size[16]["migrate"]["downtime_ms"]
        out.append({"goal": "16 MiB downtime <= 300 ms", "value": f"{d:.0f} ms", "met": d <= DOWNTIME_16_GOAL_MS})
    for r in rows:
        s, c = r["stream_mib_per_s"], r["criu_dump_mib_per_s"]
        out.append({"goal": f"{r['size_mib']} MiB stream >= CRIU dump rate", "value": f"{s:.0f} vs {c:.0f} MiB/s", "met": s >= c})
    if 1024 in by_size:
        r = by_size[1024]
        out.append({
            "goal": "1 GiB downtime <= 0.6 x naive",
            "value": f"{r['downtime_ratio']:.2f} x (engine-only naive: {r['downtime_ratio_engine']:.2f} x)",
            "met": r["downtime_ratio"] <= NAIVE_RATIO_GOAL,
        })
    return out


def print_table(tcp: dict[str, float], rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    print(f"raw TCP between the hosts: {tcp['mib_per_s']:.0f} MiB/s ({tcp['bytes'] >> 20} MiB in {tcp['seconds']:.2f} s)\n")
    head = (f"{'size':>6} | {'downtime':>9} {'total':>8} {'wire MiB':>9} {'stream':>8} {'criu dump':>9} | "
            f"{'ckpt':>7} {'cp':>6} {'restore':>7} {'naive dt':>9} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        m, n = r["migrate"], r["naive"]
        print(
            f"{r['size_mib']:>4} Mi | {m['downtime_ms']:>7.0f}ms {m['total_ms']:>6.0f}ms {m['bytes_on_wire'] / (1 << 20):>9.1f} "
            f"{r['stream_mib_per_s']:>4.0f}MB/s {r['criu_dump_mib_per_s']:>5.0f}MB/s | "
            f"{n['checkpoint_ms']:>5.0f}ms {n['cp_ms']:>4.0f}ms {n['restore_ms']:>5.0f}ms {n['downtime_ms']:>7.0f}ms {r['downtime_ratio']:>6.2f}"
        )
    print("\n(stream and criu dump in MiB/s; naive dt = checkpoint start to restore end, CLI start included)")
    print("\nwhere the migration time goes (ms):")
    for r in rows:
        m = r["migrate"]
        phases = " ".join(f"{k}={v:.0f}" for k, v in m["phases_ms"].items())
        t = m.get("target") or {}
        target = " ".join(f"{k}={v:.0f}" for k, v in t.items())
        print(f"  {r['size_mib']:>4} MiB: {phases} | target: {target}")
    print("\ngoals:")
    for g in checks:
        print(f"  [{'met' if g['met'] else 'MISSED'}] {g['goal']}: {g['value']}")


# --- ssh:// next to direct gRPC (issue 6): --ssh ------------------------------------------------


def setup_ssh(lab: Any, workdir: Path) -> dict[str, Any]:
    """sshd on both hosts with one generated client key; both host keys recorded in a known_hosts
    file; HOME an empty directory (nothing from this machine's ~/.ssh or agent)."""
    key = workdir / "bench_id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench-migrate", "-f", str(key)], check=True)
    known_hosts = workdir / "bench_known_hosts"
    home = workdir / "bench_home"
    home.mkdir(mode=0o700, exist_ok=True)
    lines = []
    for host in (lab.hosts[0], lab.hosts[1]):
        host.start_sshd(Path(f"{key}.pub"))
        key_type, blob = Path(f"{host.host_key}.pub").read_text().split()[:2]
        lines.append(f"{host.address} {key_type} {blob}\n")
    known_hosts.write_text("".join(lines))
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["HOME"] = str(home)
    return {"key": key, "known_hosts": known_hosts, "env": env}


def _path_stats(stats: dict[str, Any], wall_ms: float) -> dict[str, Any]:
    dump_ms = stats.get("phases_ms", {}).get("dump", 0.0)
    return {
        "downtime_ms": stats["frozen_ms"],
        "total_ms": stats["total_ms"],
        "cli_wall_ms": round(wall_ms, 1),
        "bytes_on_wire": stats["bytes_on_wire"],
        "stream_mib_per_s": stats["bytes_on_wire"] / (dump_ms / 1000) / (1 << 20) if dump_ms else 0.0,
        "phases_ms": stats.get("phases_ms", {}),
    }


def bench_ssh_size(lab: Any, size_mib: int, ssh: dict[str, Any]) -> dict[str, Any]:
    """One memhog of ``size_mib`` moved A -> B from A's CLI over direct gRPC, brought back
    (untimed), then moved A -> B over ssh:// with B's daemon stopped (started on demand over
    ssh, stopped after). Memory warmed before each timed hop, checksum verified after each."""
    from tests.integration.hosts import PYMIGRATE_BIN

    a, b = lab.hosts[0], lab.hosts[1]
    name = f"ssh{size_mib}"
    lab.run_memhog(a, name, size_mib)
    before = lab.report(a, name)
    row: dict[str, Any] = {"size_mib": size_mib}

    def timed(args: list[str], env: dict[str, str] | None, target: Any, what: str) -> dict[str, Any]:
        warm(size_mib)
        t0 = time.monotonic()
        result = _json(a.cli(args, timeout=600, env=env), what)
        wall_ms = (time.monotonic() - t0) * 1000
        after = lab.report(target, name)
        if before is None or after is None or before[0] != after[0]:
            raise SystemExit(f"bench: {name} after {what} does not match ({before} -> {after})")
        return _path_stats(result["stats"], wall_ms)

    row["grpc"] = timed(["--insecure", "migrate", name, lab.addr(b), "--json"], None, b, f"migrate {name} over grpc")
    _json(b.cli(["--insecure", "migrate", name, lab.addr(a), "--json"], timeout=600), f"migrate {name} back")
    b.stop_daemon()
    try:
        flags = ["--ssh-key", str(ssh["key"]), "--ssh-known-hosts", str(ssh["known_hosts"]),
                 "--ssh-remote-pymigrate", str(PYMIGRATE_BIN), "--ssh-remote-root", str(b.root)]  # fmt: skip
        row["ssh"] = timed([*flags, "migrate", name, b.ssh_url(), "--json"], ssh["env"], b, f"migrate {name} over ssh")
    finally:
        lab.start_daemon(b)
    b.cli(["rm", "-f", name])
    g, s = row["grpc"], row["ssh"]
    row["downtime_ratio"] = s["downtime_ms"] / g["downtime_ms"] if g["downtime_ms"] else 0.0
    row["stream_ratio"] = s["stream_mib_per_s"] / g["stream_mib_per_s"] if g["stream_mib_per_s"] else 0.0
    return row


def print_ssh_table(rows: list[dict[str, Any]]) -> None:
    print("\nssh:// next to direct gRPC (A's CLI, A -> B, the same memhog; one run each, memory warmed before each):")
    head = (f"{'size':>6} | {'grpc dt':>8} {'total':>7} {'wall':>7} {'wire MiB':>8} {'stream':>9} | "
            f"{'ssh dt':>8} {'total':>7} {'wall':>7} {'wire MiB':>8} {'stream':>9} | {'dt x':>5} {'rate x':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        g, s = r["grpc"], r["ssh"]
        print(
            f"{r['size_mib']:>4} Mi | {g['downtime_ms']:>6.0f}ms {g['total_ms']:>5.0f}ms {g['cli_wall_ms']:>5.0f}ms "
            f"{g['bytes_on_wire'] / (1 << 20):>8.1f} {g['stream_mib_per_s']:>4.0f}MiB/s | "
            f"{s['downtime_ms']:>6.0f}ms {s['total_ms']:>5.0f}ms {s['cli_wall_ms']:>5.0f}ms "
            f"{s['bytes_on_wire'] / (1 << 20):>8.1f} {s['stream_mib_per_s']:>4.0f}MiB/s | {r['downtime_ratio']:>5.2f} {r['stream_ratio']:>6.2f}"
        )
    print("(dt = downtime, freeze to running on the target; wall = the CLI command, ssh connect and on-demand daemon\n"
          " start included; stream = bytes on the wire / dump phase; grpc: CRIU's page server carries the pages,\n"
          " ssh:// streams everything through the tunnel; x = ssh / grpc)")
    print("\nwhere the time goes (ms):")
    for r in rows:
        for path in ("grpc", "ssh"):
            print(f"  {r['size_mib']:>4} MiB {path:>4}: " + " ".join(f"{k}={v:.0f}" for k, v in r[path]["phases_ms"].items()))


# --- live modes (issue 7): --mode cold,postcopy -----------------------------------------------

POSTCOPY_PAUSE_GOAL_MS = 80.0  # issue 17 (issue 7's was 150)
POSTCOPY_FLAT_RATIO = 1.5  # 1 GiB pause within 1.5 x the 64 MiB pause
POSTCOPY_TOTAL_RATIO = 1.2  # issue 17: postcopy total <= 1.2 x cold total (issue 7's was 1.5)
COMPRESS_SLOW_GOAL = 0.6  # issue 17: at 1 Gbit/s, auto (zstd) <= 0.6 x raw
COMPRESS_FAST_GOAL = 1.05  # faster links: auto no slower than raw (5%: run-to-run noise)


def link_modes(modes: list[str], runs: int) -> list[str]:
    """The migrations a shaped-link run makes, in order: each mode M next to ``M:off`` (its
    uncompressed baseline, added when not asked for), ``runs`` pairs, the order inside a pair
    alternating (ABBA) so neither side always follows the other."""
    pairs = []
    for m in modes:
        base, _, setting = m.partition(":")
        if setting == "off":
            continue
        pairs.append((m, f"{base}:off"))  # M (auto) or M:on, against M:off
    out = []
    for i in range(runs):
        for auto, off in pairs:
            out.extend((auto, off) if i % 2 == 0 else (off, auto))
    return out


def bench_modes(lab: Any, size_mib: int, modes: list[str], text_percent: int = 0) -> dict[str, Any]:
    """One memhog of ``size_mib`` migrated once per entry of ``modes`` (an entry may repeat: the
    samples of each are kept, their medians reported), back and forth between the two hosts
    (the same container, so each mode moves the same memory), memory warmed before each step and
    the checksum verified after each. Per mode: pause (frozen_ms), total, bytes on the wire, and
    for postcopy when the last page arrived after the resume."""
    hosts = [lab.hosts[0], lab.hosts[1]]
    name = f"live{size_mib}"
    lab.run_memhog(hosts[0], name, size_mib, text_percent=text_percent)
    before = lab.report(hosts[0], name)
    row: dict[str, Any] = {"size_mib": size_mib, "text_percent": text_percent, "modes": {}}
    samples: dict[str, list[dict[str, Any]]] = {}
    if any(":" in m for m in modes):
        # M against M:off is a ratio of two migrations: the first restore on a host pays for its
        # cold caches (~0.4 s at 1 GiB, seen as 1.2 s vs 0.8 s in either order), so both hosts
        # restore this container once, unmeasured, before the compared ones
        for src, dst in ((hosts[0], hosts[1]), (hosts[1], hosts[0])):
            _json(lab.remote(src, ["migrate", name, lab.addr(dst), "--compress", "off", "--json"], timeout=600), f"warm-up migrate {name}")
    for i, entry in enumerate(modes):
        src, dst = hosts[i % 2], hosts[(i + 1) % 2]
        warm(size_mib)
        mode, _, compress = entry.partition(":")  # "cold:off": cold with --compress off
        extra = ["--compress", compress] if compress else []
        result = _json(lab.remote(src, ["migrate", name, lab.addr(dst), "--mode", mode, *extra, "--json"], timeout=600),
                       f"migrate {name} --mode {mode} {' '.join(extra)}")
        after = lab.report(dst, name)
        if before is None or after is None or before[0] != after[0]:
            raise SystemExit(f"bench: {name} after the {mode} migration does not match ({before} -> {after})")
        stats = result["stats"]
        samples.setdefault(entry, []).append({
            "chosen": result["mode"],
            "pause_ms": stats["frozen_ms"],
            "total_ms": stats["total_ms"],
            "bytes_on_wire": stats["bytes_on_wire"],
            "last_page_ms": stats.get("phases_ms", {}).get("last_page"),
            "compressed": stats.get("phases_ms", {}).get("page_compressed"),
            "phases_ms": stats.get("phases_ms", {}),
        })
    for entry, got in samples.items():
        row["modes"][entry] = _median_sample(got)
    for h in hosts:
        h.cli(["rm", "-f", name])
    return row


def _median_sample(got: list[dict[str, Any]]) -> dict[str, Any]:
    """One mode's samples as one: the median pause, total, bytes and last page, the phases of the
    run with the median pause, and every sample kept (``runs``)."""
    by_pause = sorted(got, key=lambda s: s["pause_ms"])
    out = dict(by_pause[(len(by_pause) - 1) // 2])
    for k in ("pause_ms", "total_ms", "bytes_on_wire", "last_page_ms"):
        xs = [s[k] for s in got if s[k] is not None]
        out[k] = _median(xs) if xs else None
    out["compressed_runs"] = sum(1 for s in got if s["compressed"])
    out["runs"] = got
    return out


def goals_compress(rows: list[dict[str, Any]], rate: str) -> list[dict[str, Any]]:
    """Issue 17's slow-link goal, measured against raw in the same run: per mode M run as both
    M (auto) and M:off in interleaved pairs, the median of the pairs' auto / raw ratios (a
    ratio of medians taken minutes apart mixes the load of different moments, which swings 2x
    here). At 1 Gbit/s the cold pause and the post-copy
    total <= COMPRESS_SLOW_GOAL (the issue's "0.6x today's", today being uncompressed); faster
    links: every pause and total no slower than raw (COMPRESS_FAST_GOAL: run-to-run noise). How
    many runs compressed is printed beside each (auto's choice: at 10 Gbit/s it should not)."""
    slow = rate.lower() in ("1gbit", "1000mbit")
    goal = COMPRESS_SLOW_GOAL if slow else COMPRESS_FAST_GOAL
    wanted = {("cold", "pause_ms"), ("postcopy", "total_ms")} if slow else None
    out = []
    for r in rows:
        for mode in ("cold", "postcopy"):
            setting = "auto" if mode in r["modes"] else "on"  # --mode postcopy:on: the relay forced
            auto, raw = r["modes"].get(mode if setting == "auto" else f"{mode}:on"), r["modes"].get(f"{mode}:off")
            if auto is None or raw is None:
                continue
            chose = f"{setting} compressed in {auto['compressed_runs']}/{len(auto['runs'])} runs"
            for what in ("pause_ms", "total_ms"):
                if wanted is not None and (mode, what) not in wanted:
                    continue
                pairs = [a[what] / o[what] for a, o in zip(auto["runs"], raw["runs"]) if o[what]]
                ratio = _median(pairs) if pairs else 0.0
                each = " ".join(f"{x:.2f}" for x in pairs)
                out.append({"goal": f"{r['size_mib']} MiB {rate} {mode} {what[:-3]} {setting} <= {goal} x --compress off",
                            "value": f"{ratio:.2f} x (pairs {each}; medians {auto[what]:.0f} / {raw[what]:.0f} ms; {chose})",
                            "met": bool(pairs) and ratio <= goal})
    return out


def goals_modes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    post = {r["size_mib"]: r["modes"]["postcopy"] for r in rows if "postcopy" in r["modes"]}
    for size, m in post.items():
        out.append({"goal": f"{size} MiB postcopy pause <= {POSTCOPY_PAUSE_GOAL_MS:.0f} ms", "value": f"{m['pause_ms']:.0f} ms",
                    "met": m["pause_ms"] <= POSTCOPY_PAUSE_GOAL_MS})
    if post:
        small, big = post[min(post)], post[max(post)]
        ratio = big["pause_ms"] / small["pause_ms"] if small["pause_ms"] else 0.0
        out.append({"goal": f"postcopy pause flat ({max(post)} MiB within {POSTCOPY_FLAT_RATIO} x {min(post)} MiB)",
                    "value": f"{ratio:.2f} x", "met": ratio <= POSTCOPY_FLAT_RATIO})
    for r in rows:
        if "postcopy" in r["modes"] and "cold" in r["modes"]:
            ratio = r["modes"]["postcopy"]["total_ms"] / r["modes"]["cold"]["total_ms"]
            out.append({"goal": f"{r['size_mib']} MiB postcopy total <= {POSTCOPY_TOTAL_RATIO} x cold", "value": f"{ratio:.2f} x",
                        "met": ratio <= POSTCOPY_TOTAL_RATIO})
    return out


def print_modes_table(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    head = f"{'size':>6} {'mode':>12} | {'pause':>8} {'total':>8} {'last page':>10} {'wire MiB':>9} {'zstd':>6}"
    print(head)
    print("-" * len(head))
    for r in rows:
        for mode, m in r["modes"].items():
            last = f"{m['last_page_ms']:>8.0f}ms" if m["last_page_ms"] is not None else f"{'-':>10}"
            runs = len(m.get("runs") or [m])
            print(f"{r['size_mib']:>4} Mi {mode:>12} | {m['pause_ms']:>6.0f}ms {m['total_ms']:>6.0f}ms {last} "
                  f"{m['bytes_on_wire'] / (1 << 20):>9.1f} {m.get('compressed_runs', 0):>4}/{runs}")
    print("\n(pause = freeze to running on the target; last page = after the resume; zstd = runs whose pages were\n"
          " compressed; medians of the runs, M and M:off interleaved ABBA; memory warmed before each)")
    print("\nwhere the time goes (ms):")
    for r in rows:
        for mode, m in r["modes"].items():
            print(f"  {r['size_mib']:>4} MiB {mode}: " + " ".join(f"{k}={v:.0f}" for k, v in m["phases_ms"].items()))
    print("\ngoals:")
    for g in checks:
        print(f"  [{'met' if g['met'] else 'MISSED'}] {g['goal']}: {g['value']}")


# --- issue 17: the cold pause against the raw criu dump, the target's lazy restore A/B ---------------

COLD_RAW_DUMP_GOAL = 1.2  # cold pause <= 1.2 x the raw criu dump of the same container


def _cold_lazy(lab: Any, on: bool, current: list[bool]) -> None:
    """Both daemons restore cold migrations lazily (the default) or every page first
    (PYMIGRATE_COLD_LAZY=0); restarted only when that changes."""
    if current and current[0] == on:
        return
    for host in lab.hosts[:2]:
        host.stop_daemon()
        lab.start_daemon(host, env=None if on else {"PYMIGRATE_COLD_LAZY": "0"})
    current[:] = [on]


def raw_criu_dump(host: Any, name: str, images: Path) -> tuple[float, float]:
    """``criu dump --leave-running`` of container ``name`` on ``host`` into ``images`` (on the same
    file system as the state roots), flags as a migration's dump (network lock skipped: the
    migration cuts the link instead); (wall ms, CRIU's frozen_time ms)."""
    from runtime.criu import criu_binary, read_dump_stats
    from runtime.runtime import Runtime

    info = Runtime(host.root).inspect(name)
    netns_ino = os.stat(host.root / "netns" / info.spec.container_id).st_ino
    images.mkdir(parents=True)
    argv = [criu_binary(), "dump", "-t", str(info.state.pid), "-D", str(images), "-o", "dump.log", "-v4",
            "--external", f"net[{netns_ino}]:extnet", "--network-lock", "skip", "--manage-cgroups=ignore",
            "--freeze-cgroup", str(info.cgroup["unified"]), "--leave-running"]
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True)
    wall = (time.monotonic() - t0) * 1000
    if r.returncode != 0:
        raise SystemExit(f"bench: raw criu dump of {name} failed: {(images / 'dump.log').read_text()[-2000:]}")
    return wall, read_dump_stats(images).frozen_ms


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def bench_cold_ab(lab: Any, size_mib: int, runs: int, text_percent: int, workdir: Path) -> dict[str, Any]:
    """One memhog of ``size_mib`` moved cold ``runs`` times with each target restore, lazy and
    full, in ABBA order, back and forth; after each pair the raw criu dump of the same container
    on the host it runs on. Memory warmed before every timed step; checksum checked after each move."""
    hosts, name, current = [lab.hosts[0], lab.hosts[1]], f"ab{size_mib}", []  # type: ignore[var-annotated]
    lab.run_memhog(hosts[0], name, size_mib, text_percent=text_percent)
    before = lab.report(hosts[0], name)
    where, samples = 0, {"lazy": [], "full": [], "raw_dump_ms": [], "raw_frozen_ms": [], "raw_dump_tmpfs_ms": []}  # type: ignore[var-annotated]
    for i in range(runs + 1):  # round 0: both hosts restore once, unmeasured (cold caches)
        for variant in (("lazy", "full") if i % 2 == 0 else ("full", "lazy")):
            _cold_lazy(lab, variant == "lazy", current)
            os.sync()  # the last step's pages written back now, not during this one (both sides alike)
            warm(size_mib)
            src, dst = hosts[where], hosts[1 - where]
            result = _json(lab.remote(src, ["migrate", name, lab.addr(dst), "--json"], timeout=600), f"migrate {name} ({variant})")
            after = lab.report(dst, name)
            if before is None or after is None or before[0] != after[0]:
                raise SystemExit(f"bench: {name} after the {variant} cold migration does not match ({before} -> {after})")
            where = 1 - where
            if i:
                stats = result["stats"]
                samples[variant].append({"pause_ms": stats["frozen_ms"], "total_ms": stats["total_ms"],
                                         "dump_ms": stats["phases_ms"].get("dump", 0.0)})
        if i:
            os.sync()
            warm(size_mib)
            wall, frozen = raw_criu_dump(hosts[where], name, workdir / f"raw-{size_mib}-{i}")
            subprocess.run(["rm", "-rf", str(workdir / f"raw-{size_mib}-{i}")], check=False)
            samples["raw_dump_ms"].append(wall)
            samples["raw_frozen_ms"].append(frozen)
            warm(size_mib)  # and into a tmpfs (no disk behind the page cache): the stricter baseline
            shm = Path(tempfile.mkdtemp(prefix="pm-raw-", dir="/dev/shm"))
            try:
                samples["raw_dump_tmpfs_ms"].append(raw_criu_dump(hosts[where], name, shm / "images")[0])
            finally:
                subprocess.run(["rm", "-rf", str(shm)], check=False)
    for h in hosts:
        h.cli(["rm", "-f", name])
    row: dict[str, Any] = {"size_mib": size_mib, "runs": runs, "samples": samples}
    for v in ("lazy", "full"):
        row[v] = {k: _median([s[k] for s in samples[v]]) for k in ("pause_ms", "total_ms", "dump_ms")}
    for k in ("raw_dump_ms", "raw_frozen_ms", "raw_dump_tmpfs_ms"):
        row[k] = _median(samples[k])
    row["raw_base_ms"] = min(row["raw_dump_ms"], row["raw_dump_tmpfs_ms"])  # the goal's baseline: the faster one
    return row


def run_cold_ab(lab_class: Any, sizes: list[int], args: argparse.Namespace) -> int:
    started = time.monotonic()
    rows = []
    tmpfs = {0: args.tmpfs_roots, 1: args.tmpfs_roots} if args.tmpfs_roots else None  # the state roots on a tmpfs of MiB
    with tempfile.TemporaryDirectory(prefix="bench-coldab-") as workdir, lab_class.create(Path(workdir), tmpfs_mib=tmpfs) as lab:
        for size in sizes:
            print(f"bench_migrate: {size} MiB cold lazy vs full restore x{args.cold_ab} ...", file=sys.stderr, flush=True)
            rows.append(bench_cold_ab(lab, size, args.cold_ab, args.text_percent, Path(workdir)))
    checks = []
    for r in rows:
        for v in ("lazy", "full"):
            ratio = r[v]["pause_ms"] / r["raw_base_ms"]
            checks.append({"goal": f"{r['size_mib']} MiB cold pause ({v} restore) <= {COLD_RAW_DUMP_GOAL} x raw criu dump",
                           "value": f"{ratio:.2f} x ({r[v]['pause_ms']:.0f} / {r['raw_base_ms']:.0f} ms)",
                           "met": ratio <= COLD_RAW_DUMP_GOAL})
    if args.json:
        json.dump({"cold_ab": rows, "goals": checks, "elapsed_s": round(time.monotonic() - started, 1)}, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'size':>6} {'restore':>8} | {'pause':>8} {'total':>8} {'dump':>8} | raw criu dump wall (frozen) / into tmpfs")
    for r in rows:
        for v in ("lazy", "full"):
            m = r[v]
            print(f"{r['size_mib']:>4} Mi {v:>8} | {m['pause_ms']:>6.0f}ms {m['total_ms']:>6.0f}ms {m['dump_ms']:>6.0f}ms | "
                  f"{r['raw_dump_ms']:.0f} ({r['raw_frozen_ms']:.0f}) / {r['raw_dump_tmpfs_ms']:.0f} ms")
    print(f"\n(medians of {args.cold_ab}; lazy and full interleaved ABBA, memory warmed before each step)\ngoals:")
    for g in checks:
        print(f"  [{'met' if g['met'] else 'MISSED'}] {g['goal']}: {g['value']}")
    print(f"\n(run took {time.monotonic() - started:.0f} s)")
    return 0


def run_modes(lab_class: Any, sizes: list[int], modes: list[str], args: argparse.Namespace) -> int:
    """The live modes per size, once per link rate (unshaped when none is given)."""
    started = time.monotonic()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-live-") as workdir, lab_class.create(Path(workdir)) as lab:
        bench_link.refuse_rtt(lab.hosts, args.rtt_ms)
        for rate in bench_link.rates(args.link_rate):
            bench_link.shape(lab.hosts, rate)
            tcp = tcp_throughput(lab, min(args.tcp_mib, 256)) if rate else None
            rows = []
            # on a shaped link every mode is measured against its uncompressed self (the goal's baseline)
            order = link_modes(modes, args.runs) if rate else modes * args.runs
            for size in sizes:
                print(f"bench_migrate: {size} MiB, {' '.join(order)}, link {rate or 'unshaped'} ...", file=sys.stderr, flush=True)
                rows.append(bench_modes(lab, size, order, args.text_percent))
            runs.append({"link_rate": rate, "tcp": tcp, "sizes": rows, "goals": goals_modes(rows) if rate is None else goals_compress(rows, rate)})
        bench_link.shape(lab.hosts, None)
    if args.json:
        json.dump({"runs": runs, "text_percent": args.text_percent, "load": os.getloadavg(), "elapsed_s": round(time.monotonic() - started, 1)}, sys.stdout, indent=2)
        print()
        return 0
    for run in runs:
        tcp = run["tcp"]
        link = f"link {run['link_rate']} (raw TCP {tcp['mib_per_s']:.0f} MiB/s)" if tcp else "link unshaped"
        print(f"\n== {link}; memhog memory {args.text_percent}% text ==")
        print_modes_table(run["sizes"], run["goals"])
    print(f"\n(run took {time.monotonic() - started:.0f} s; load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_migrate", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,256,1024", help="memhog sizes in MiB, comma separated")
    parser.add_argument("--tcp-mib", type=int, default=1024, help="MiB sent for the raw TCP measurement")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--ssh", action="store_true",
                        help="add an ssh:// column: the same sizes migrated through an SSH tunnel next to direct gRPC (needs sshd)")
    parser.add_argument("--mode", default=None,
                        help="live modes to compare instead of cold vs naive, e.g. cold,postcopy (sizes default to 64,256,1024)")
    parser.add_argument("--link-rate", default=None,
                        help="with --mode: shape the hosts' links (tc tbf), one run per rate, e.g. 1gbit,10gbit")
    parser.add_argument("--rtt-ms", type=float, default=None, help="with --link-rate: a round-trip delay (needs sch_netem)")
    parser.add_argument("--text-percent", type=int, default=50,
                        help="with --mode: the share of the memhog's memory that is text (compressible; 50 gives 1.7x with zstd)")
    parser.add_argument("--runs", type=int, default=1, metavar="N",
                        help="with --mode: each mode N times, medians (with --link-rate: N interleaved pairs of M and M:off)")
    parser.add_argument("--cold-ab", type=int, default=0, metavar="N",
                        help="issue 17: cold with the target's lazy restore vs every page first, N each (ABBA), "
                             "against the raw criu dump of the same container (sizes default to 256,1024)")
    parser.add_argument("--tmpfs-roots", type=int, default=0, metavar="MIB",
                        help="with --cold-ab: both hosts' state roots on a tmpfs of MIB (the target's disk out of the picture)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_migrate: needs root (network namespaces, cgroups, CRIU)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    from tests.integration.migration_lab import Lab

    if args.cold_ab:
        if args.sizes == parser.get_default("sizes"):
            sizes = [256, 1024]
        return run_cold_ab(Lab, sizes, args)
    if args.mode:
        if args.sizes == parser.get_default("sizes"):
            sizes = [64, 256, 1024]
        modes = [m.strip() for m in args.mode.split(",") if m.strip()]
        return run_modes(Lab, sizes, modes, args)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as workdir, Lab.create(Path(workdir)) as lab:
        tcp = tcp_throughput(lab, args.tcp_mib)
        rows = []
        for size in sizes:
            print(f"bench_migrate: {size} MiB ...", file=sys.stderr, flush=True)
            rows.append(bench_size(lab, size))
        ssh_rows = []
        if args.ssh:
            ssh = setup_ssh(lab, Path(workdir))
            for size in sizes:
                print(f"bench_migrate: {size} MiB, grpc vs ssh:// ...", file=sys.stderr, flush=True)
                ssh_rows.append(bench_ssh_size(lab, size, ssh))
    checks = goals(rows)
    elapsed = time.monotonic() - started
    if args.json:
        out = {"tcp": tcp, "sizes": rows, "goals": checks, "elapsed_s": round(elapsed, 1)}
        if ssh_rows:
            out["ssh"] = ssh_rows
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        print_table(tcp, rows, checks)
        if ssh_rows:
            print_ssh_table(ssh_rows)
        print(f"\n(run took {elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
