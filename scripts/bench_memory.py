#!/usr/bin/env python3
"""Benchmark (not a test): daemon memory during a migration, and concurrent migrations (issue 17).

Two hosts (network namespaces, tests/integration/migration_lab.py), each with its daemon on
ADDRESS:7443 --insecure; memhog workloads whose memory is --text-percent text (default 50).

- memory: per mode (default cold, cold:on = with the zstd page relay, postcopy) one memhog of
  --size-mib (default 1024) migrated A -> B.
  Before the migration both daemons' peak RSS is reset (``echo 5 > /proc/PID/clear_refs``); while
  it runs a sampler (every --interval-ms, default 20) walks /proc for each daemon's descendants
  (CRIU, page relays, shims; the container's own processes, which live in another pid namespace,
  are left out) and records each one's VmHWM and private memory (smaps_rollup: a shim forked
  from the daemon shares the daemon's pages until its exec, and its RSS counts them again).
  Reported per side: the daemon's VmHWM after the migration (goal <= 150 MiB), the largest
  VmHWM and private memory per child command, and the largest sum of the children's private
  memory seen in one sample. ``--smaps``: the daemon's mappings at its peak (anonymous =
  malloc'd, libraries by name) and its thread count. ``PYMIGRATE_TRACEMALLOC`` in the daemons
  (``--daemon-env PYMIGRATE_TRACEMALLOC=1 --keep-logs DIR``): their top allocation sites.
- concurrency: --count (default 10) memhogs of --conc-mib (default 64) on A; one of them migrated
  alone, then the other N all at once, each from its own thread and gRPC client in this process
  (``--client cli``: one ``pymigrate migrate`` process each, so N interpreters start on these
  cores too); wall time from the first start to the last end. Aggregate throughput = N x size /
  wall, against the lone one's size / wall (goal >= 0.8x); per phase, the lone migration's time
  against the median and max of the concurrent ones (what stretches). Every container's memory checksum is
  checked on B and each runs there exactly once. The daemons' peak RSS during the concurrent run
  is reported too.

Usage: scripts/bench_memory.py [--parts memory,concurrency] [--size-mib 1024] [--modes cold,cold:on,postcopy]
                               [--count 10] [--conc-mib 64] [--json]
       (also ``scripts/bench.py memory ...``)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RSS_GOAL_MIB = 150.0
CONCURRENCY_GOAL = 0.8


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _pidns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(root_pid: int) -> list[int]:
    kids, out, todo = _children_map(), [], [root_pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmd_name(pid: int) -> str:
    """criu, a python helper named by its module (relay, shim), or the comm."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if "python" in comm or (words and "python" in Path(words[0]).name):
        for i, w in enumerate(words):
            if w == "-m" and i + 1 < len(words):
                return f"python -m {words[i + 1]}"
        rest = [Path(w).name for w in words[1:]]
        if "--root" in rest:  # pymigrate --root ROOT SUBCOMMAND ...: name it by the subcommand
            i = rest.index("--root")
            rest = rest[:i] + rest[i + 2 :]
        return "python " + " ".join(rest[:2])
    return comm


@dataclass
class Side:
    """One daemon and what it started."""

    pid: int
    rss_max_kib: int = 0
    children_hwm_kib: dict[str, int] = field(default_factory=dict)  # per command: the largest VmHWM
    children_private_kib: dict[str, int] = field(default_factory=dict)  # per command: the largest private memory seen
    children_sum_max_kib: int = 0  # the largest sum of the children's private memory in one sample
    names: dict[int, str] = field(default_factory=dict)
    smaps_to: Path | None = None  # set (--smaps): keep the mappings at the daemon's peak
    peak_smaps: dict[str, int] | None = None

    def sample(self) -> None:
        rss = _status_kib(self.pid, "VmRSS") or 0
        if rss > self.rss_max_kib and self.smaps_to is not None:
            self.peak_smaps = _smaps_summary(self.pid)
        self.rss_max_kib = max(self.rss_max_kib, rss)
        own_ns = _pidns(self.pid)
        total = 0
        for pid in descendants(self.pid):
            if _pidns(pid) != own_ns:
                continue  # the container's processes: not the daemon's memory
            name = self.names.get(pid) or self.names.setdefault(pid, _cmd_name(pid))
            hwm = _status_kib(pid, "VmHWM")
            if hwm is None:
                continue  # a zombie or gone
            # private, not RSS: a child forked from the daemon (a shim before its exec) shares
            # the daemon's pages and would count them twice
            private = _private_kib(pid)
            total += private
            self.children_hwm_kib[name] = max(self.children_hwm_kib.get(name, 0), hwm)
            self.children_private_kib[name] = max(self.children_private_kib.get(name, 0), private)
        self.children_sum_max_kib = max(self.children_sum_max_kib, total)

    def report(self) -> dict[str, Any]:
        hwm = _status_kib(self.pid, "VmHWM") or 0
        return {
            "daemon_hwm_mib": round(max(hwm, self.rss_max_kib) / 1024, 1),
            "daemon_rss_sampled_max_mib": round(self.rss_max_kib / 1024, 1),
            "children_sum_max_mib": round(self.children_sum_max_kib / 1024, 1),
            "children_hwm_mib": {k: round(v / 1024, 1) for k, v in sorted(self.children_hwm_kib.items(), key=lambda kv: -kv[1])},
            "children_private_mib": {k: round(v / 1024, 1) for k, v in sorted(self.children_private_kib.items(), key=lambda kv: -kv[1])},
            **({"peak_smaps_mib": {k: round(v / 1024, 1) for k, v in self.peak_smaps.items()}} if self.peak_smaps else {}),
        }


def _private_kib(pid: int) -> int:
    """Private_Clean + Private_Dirty (/proc/PID/smaps_rollup): what the process alone holds."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        return 0
    return total


def _anon_kind(span: str) -> str:
    """Anonymous mappings: thread stacks are 8 MiB; the rest is malloc's (arenas, large blocks
    mmap'd one by one and merged by the kernel when adjacent)."""
    start, end = (int(x, 16) for x in span.split("-"))
    return "anon 8 MiB (a thread stack)" if end - start == 8 << 20 else "anon"


def _smaps_summary(pid: int) -> dict[str, int]:
    """Rss (KiB) per kind of mapping: [heap], [stack], anonymous (malloc arenas, mmap'd buffers,
    thread stacks), and files by name (shared libraries)."""
    out: dict[str, int] = {}
    kind = "?"
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                first = line.split(maxsplit=1)[0]
                if "-" in first and not first.endswith(":"):
                    parts = line.split()
                    kind = parts[5] if len(parts) > 5 else _anon_kind(first)
                    kind = Path(kind).name if kind.startswith("/") else kind
                elif first == "Rss:":
                    out[kind] = out.get(kind, 0) + int(line.split()[1])
    except OSError:
        pass
    top = dict(sorted(out.items(), key=lambda kv: -kv[1])[:8])
    top["threads (count)"] = (_status_kib(pid, "Threads") or 0) * 1024  # printed in MiB: the count
    return top


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (proc(5): clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class Sampler:
    """Samples both daemons' trees on a thread until stopped."""

    def __init__(self, pids: dict[str, int], interval_s: float, smaps: bool = False) -> None:
        for pid in pids.values():
            reset_peak(pid)
        self.sides = {k: Side(pid, smaps_to=Path("/proc") if smaps else None) for k, pid in pids.items()}
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for side in self.sides.values():
                side.sample()
            self._stop.wait(self._interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        for side in self.sides.values():
            side.sample()
        return {k: s.report() for k, s in self.sides.items()}


def warm(size_mib: int) -> None:
    """Touch and free memory so the timed step does not pay for the VM's first touches."""
    data = b"\x01" * ((2 * size_mib + 512) << 20)
    del data


def _json(r: subprocess.CompletedProcess, what: str) -> Any:
    if r.returncode != 0:
        raise SystemExit(f"bench_memory: {what} failed ({r.returncode}): {r.stderr.decode().strip()}")
    return json.loads(r.stdout)


def daemon_pids(lab: Any) -> dict[str, int]:
    a, b = lab.hosts[0], lab.hosts[1]
    return {"source": a.daemon.pid, "target": b.daemon.pid}


def bench_memory(lab: Any, mode: str, size_mib: int, args: argparse.Namespace) -> dict[str, Any]:
    a, b = lab.hosts[0], lab.hosts[1]
    name = f"rss-{mode.replace(':', '-')}"
    lab.run_memhog(a, name, size_mib, text_percent=args.text_percent)
    before = lab.report(a, name)
    warm(size_mib)
    sampler = Sampler(daemon_pids(lab), args.interval_ms / 1000, args.smaps)
    t0 = time.monotonic()
    mode, _, compress = mode.partition(":")  # "cold:on": cold with --compress on
    extra = ["--compress", compress] if compress else []
    r = lab.remote(a, ["migrate", name, lab.addr(b), "--mode", mode, *extra, "--json"], timeout=900)
    wall = time.monotonic() - t0
    if mode == "postcopy":
        time.sleep(1.0)  # the background transfer may still run after the CLI returned (last_page)
    sides = sampler.stop()
    result = _json(r, f"migrate {name} --mode {mode}")
    after = lab.report(b, name)
    if before is None or after is None or before[0] != after[0]:
        raise SystemExit(f"bench_memory: {name} memory changed ({before} -> {after})")
    b.cli(["rm", "-f", name])
    stats = result["stats"]
    return {"mode": mode + (f" --compress {compress}" if compress else ""), "size_mib": size_mib, "wall_s": round(wall, 2), "total_ms": stats["total_ms"],
            "pause_ms": stats["frozen_ms"], "bytes_on_wire": stats["bytes_on_wire"], **sides}


def _api_migrations(lab: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each migration from its own thread and gRPC client (RemoteEngine) in this process, all
    started together: the daemons' concurrency without N interpreters starting on these cores."""
    from migrate.api import MigrateOptions
    from migrate.remote.client import RemoteEngine

    a, b = lab.hosts[0], lab.hosts[1]
    done: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    go = threading.Barrier(len(names))

    def one(name: str) -> None:
        with RemoteEngine(lab.addr(a), insecure=True) as client:
            go.wait()
            t0 = time.monotonic()
            try:
                result = client.migrate(name, MigrateOptions(dest=lab.addr(b)))
            except Exception as exc:  # reported after the others finished
                errors.append(f"{name}: {exc}")
                return
            done[name] = {"start": t0, "end": time.monotonic(), "total_ms": result.stats.total_ms,
                          "pause_ms": result.stats.frozen_ms, "phases_ms": dict(result.stats.phases_ms)}

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("bench_memory: migrations failed: " + "; ".join(errors))
    return done


def _migrations(lab: Any, names: list[str], client: str) -> dict[str, dict[str, Any]]:
    return _api_migrations(lab, names) if client == "api" else _finish(_start_migrations(lab, names))


def _start_migrations(lab: Any, names: list[str]) -> list[tuple[str, subprocess.Popen, float]]:
    a, b = lab.hosts[0], lab.hosts[1]
    started = []
    for name in names:
        proc = lab.migrate_popen(a, b, name, "--json")
        started.append((name, proc, time.monotonic()))
    return started


def _finish(started: list[tuple[str, subprocess.Popen, float]]) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    for name, proc, t0 in started:
        out, err = proc.communicate(timeout=900)
        end = time.monotonic()
        if proc.returncode != 0:
            raise SystemExit(f"bench_memory: migrate {name} failed ({proc.returncode}): {err.decode().strip()}")
        stats = json.loads(out)["stats"]
        done[name] = {"start": t0, "end": end, "total_ms": stats["total_ms"], "pause_ms": stats["frozen_ms"],
                      "phases_ms": stats.get("phases_ms", {})}
    return done


def bench_concurrency(lab: Any, args: argparse.Namespace) -> dict[str, Any]:
    a, b = lab.hosts[0], lab.hosts[1]
    names = [f"conc{i}" for i in range(args.count + 1)]
    checks = {}
    for name in names:
        lab.run_memhog(a, name, args.conc_mib, text_percent=args.text_percent)
        checks[name] = lab.report(a, name)
    warm(args.conc_mib * len(names))
    alone = _migrations(lab, names[:1], args.client)[names[0]]
    alone_s = alone["end"] - alone["start"]
    warm(args.conc_mib * len(names))
    sampler = Sampler(daemon_pids(lab), args.interval_ms / 1000, args.smaps)
    together = _migrations(lab, names[1:], args.client)
    sides = sampler.stop()
    wall = max(d["end"] for d in together.values()) - min(d["start"] for d in together.values())
    running = lab.running_names(b)
    for name in names:
        after = lab.report(b, name)
        if name not in running or after is None or checks[name] is None or after[0] != checks[name][0]:
            raise SystemExit(f"bench_memory: {name} on the target does not match ({checks[name]} -> {after})")
        if name in lab.running_names(a):
            raise SystemExit(f"bench_memory: {name} still runs on the source")
    single = args.conc_mib / alone_s
    aggregate = args.count * args.conc_mib / wall
    for name in names:
        b.cli(["rm", "-f", name])
    totals = sorted(d["total_ms"] for d in together.values())
    phases = {k: [d["phases_ms"].get(k, 0.0) for d in together.values()] for k in alone["phases_ms"]}
    stretch = {k: {"alone": round(alone["phases_ms"][k], 1), "median": round(statistics.median(v), 1), "max": round(max(v), 1)}
               for k, v in phases.items() if not k.startswith("page_")}
    return {"client": args.client, "count": args.count, "size_mib": args.conc_mib, "alone_s": round(alone_s, 2), "alone_total_ms": alone["total_ms"],
            "concurrent_wall_s": round(wall, 2), "single_mib_s": round(single, 1), "aggregate_mib_s": round(aggregate, 1),
            "ratio": round(aggregate / single, 2), "concurrent_total_ms": totals, "phases_ms": stretch, **sides}


def goals(memory: list[dict[str, Any]], conc: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for m in memory:
        for side in ("source", "target"):
            v = m[side]["daemon_hwm_mib"]
            out.append({"goal": f"{m['size_mib']} MiB {m['mode']}: {side} daemon RSS <= {RSS_GOAL_MIB:.0f} MiB",
                        "value": f"{v:.0f} MiB", "met": v <= RSS_GOAL_MIB})
    if conc is not None:
        out.append({"goal": f"{conc['count']} concurrent {conc['size_mib']} MiB migrations: aggregate >= {CONCURRENCY_GOAL} x one alone",
                    "value": f"{conc['ratio']:.2f} x ({conc['aggregate_mib_s']:.0f} vs {conc['single_mib_s']:.0f} MiB/s)",
                    "met": conc["ratio"] >= CONCURRENCY_GOAL})
    return out


def _print_sides(row: dict[str, Any]) -> None:
    for side in ("source", "target"):
        s = row[side]
        kids = ", ".join(f"{k} {v:.0f}/{s['children_private_mib'].get(k, 0):.0f}" for k, v in s["children_hwm_mib"].items()) or "-"
        if "peak_smaps_mib" in s:
            print(f"    {side} daemon at its peak, Rss by mapping (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in s["peak_smaps_mib"].items()))
        print(f"    {side}: daemon peak {s['daemon_hwm_mib']:.0f} MiB; children's private memory at once <= "
              f"{s['children_sum_max_mib']:.0f} MiB; per child command, peak RSS/private (MiB): {kids}")


def print_report(memory: list[dict[str, Any]], conc: dict[str, Any] | None, checks: list[dict[str, Any]]) -> None:
    for m in memory:
        print(f"{m['size_mib']} MiB {m['mode']}: pause {m['pause_ms']:.0f} ms, total {m['total_ms']:.0f} ms, "
              f"{m['bytes_on_wire'] >> 20} MiB on the wire")
        _print_sides(m)
    if conc is not None:
        print(f"\n(client: {conc['client']}) {conc['size_mib']} MiB alone: {conc['alone_s']:.2f} s ({conc['single_mib_s']:.0f} MiB/s); "
              f"{conc['count']} at once: {conc['concurrent_wall_s']:.2f} s ({conc['aggregate_mib_s']:.0f} MiB/s); "
              f"their totals (ms): {', '.join(f'{t:.0f}' for t in conc['concurrent_total_ms'])}")
        print("    phases (ms), alone / median / max of the concurrent ones: "
              + ", ".join(f"{k} {v['alone']:.0f}/{v['median']:.0f}/{v['max']:.0f}" for k, v in conc["phases_ms"].items()))
        _print_sides(conc)
    print("\n(times from each migrate call's start to its end, CLI start included with --client cli; the daemons' peak: "
          "VmHWM, reset before each run; children: peak RSS and private memory, sampled)")
    print("\ngoals:")
    for g in checks:
        print(f"  [{'met' if g['met'] else 'MISSED'}] {g['goal']}: {g['value']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="memory,concurrency")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--modes", default="cold,cold:on,postcopy",
                        help="memory: migration modes, MODE:COMPRESS for a --compress setting (cold:on: the zstd relay)")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--conc-mib", type=int, default=64)
    parser.add_argument("--text-percent", type=int, default=50)
    parser.add_argument("--client", choices=("api", "cli"), default="api",
                        help="concurrency: migrations from threads of this process (api) or one CLI process each (cli)")
    parser.add_argument("--daemon-env", action="append", default=[], metavar="K=V",
                        help="restart both daemons with this variable set (e.g. PYMIGRATE_TRACEMALLOC=1)")
    parser.add_argument("--smaps", action="store_true", help="also report the daemons' mappings (Rss) at their peak")
    parser.add_argument("--keep-logs", default=None, metavar="DIR", help="copy the daemons' logs there at the end")
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_memory: needs root (network namespaces, cgroups, CRIU)", file=sys.stderr)
        return 2
    parts = set(args.parts.split(","))
    from tests.integration.migration_lab import Lab

    started = time.monotonic()
    memory, conc = [], None
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as workdir, Lab.create(Path(workdir)) as lab:
        if args.daemon_env:
            env = dict(kv.split("=", 1) for kv in args.daemon_env)
            for host in lab.hosts:
                host.stop_daemon()
                lab.start_daemon(host, env=env)
        try:
            if "memory" in parts:
                for mode in args.modes.split(","):
                    print(f"bench_memory: {args.size_mib} MiB {mode} ...", file=sys.stderr, flush=True)
                    memory.append(bench_memory(lab, mode, args.size_mib, args))
            if "concurrency" in parts:
                print(f"bench_memory: {args.count} x {args.conc_mib} MiB at once ...", file=sys.stderr, flush=True)
                conc = bench_concurrency(lab, args)
        finally:  # a failed run's logs too: they say why
            for host in lab.hosts if args.keep_logs else ():
                shutil.copy(host.workdir / "daemon.log", Path(args.keep_logs) / f"daemon-{host.letter}.log")
    checks = goals(memory, conc)
    elapsed = round(time.monotonic() - started, 1)
    if args.json:
        json.dump({"memory": memory, "concurrency": conc, "goals": checks, "elapsed_s": elapsed}, sys.stdout, indent=2)
        print()
    else:
        print_report(memory, conc, checks)
        print(f"\n(run took {elapsed:.0f} s; load average before the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
