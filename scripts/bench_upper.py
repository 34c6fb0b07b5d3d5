#!/usr/bin/env python3
"""What the upper layer on its own file-system image costs (issue 19), against plain directories.

Makes two network-namespace hosts with daemons (tests/integration/migration_lab.py; run as root,
changes nothing on the host outside its temporary state roots, netns and bridges), then for each
layout (``dir``: PYMIGRATE_UPPER_SIZE=0, ``image``: the default) measures, interleaved A B A B:

- ``run``: wall time of ``pymigrate run -d`` of a busybox container (then removed);
- for a container with SIZE MiB of random data in its upper layer and a writer appending to a
  file every 10 ms: ``checkpoint --leave-running`` (frozen_ms), ``checkpoint --export``
  (frozen_ms), ``migrate --mode cold`` and ``--mode postcopy`` (frozen_ms, and upper_entries_frozen).

usage: sudo .venv/bin/python scripts/bench_upper.py [--sizes 10,100] [--reps 3] [--runs 10]
Prints one JSON object per measurement and a median table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.migration_lab import Lab  # noqa: E402
from tests.integration.test_file_identity import IMAGE, image_tar, wait_writing  # noqa: E402

LAYOUTS = {"dir": "0", "image": ""}


def env_for(layout: str) -> dict[str, str]:
    env = dict(os.environ)
    if LAYOUTS[layout]:
        env["PYMIGRATE_UPPER_SIZE"] = LAYOUTS[layout]
    else:
        env.pop("PYMIGRATE_UPPER_SIZE", None)
    return env


def ok(r: subprocess.CompletedProcess) -> str:
    if r.returncode != 0:
        raise RuntimeError(r.stdout.decode() + r.stderr.decode())
    return r.stdout.decode()


def start(host, name: str, size_mib: int, layout: str) -> None:  # noqa: ANN001
    cmd = f"mkdir -p /data && dd if=/dev/urandom of=/data/big bs=1M count={size_mib} 2>/dev/null && exec /bin/inodecheck /data/db /data/status 10"
    ok(host.cli(["run", "-d", "--name", name, IMAGE, "sh", "-c", cmd], env=env_for(layout)))
    wait_writing(host, name, 5, timeout_s=120)


def bench_run(host, layout: str) -> float:  # noqa: ANN001
    t0 = time.monotonic()
    ok(host.cli(["run", "-d", "--name", "bench-run", IMAGE, "sleep", "1000"], env=env_for(layout)))
    ms = (time.monotonic() - t0) * 1000
    ok(host.cli(["rm", "-f", "bench-run"]))
    return ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    results: dict[tuple[str, str], list[float]] = {}

    def record(what: str, layout: str, value: float, **extra: object) -> None:
        results.setdefault((what, layout), []).append(value)
        print(json.dumps({"what": what, "layout": layout, "value": round(value, 1), **extra}), flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-upper-"))
    tar = image_tar(work)
    with Lab.create(work) as lab:
        a, b = lab.hosts[0], lab.hosts[1]
        for host in lab.hosts:
            ok(host.cli(["image", "import", IMAGE, str(tar)]))
        for _ in range(args.runs):
            for layout in LAYOUTS:
                record("run -d (ms)", layout, bench_run(a, layout))
        for size in (int(s) for s in args.sizes.split(",")):
            for rep in range(args.reps):
                for layout in LAYOUTS:
                    name = f"bench-{layout}-{size}-{rep}"
                    start(a, name, size, layout)
                    stats = json.loads(ok(a.cli(["checkpoint", name, "--leave-running", "--json"])))
                    record(f"checkpoint --leave-running {size} MiB frozen_ms", layout, stats["stats"]["frozen_ms"])
                    ok(a.cli(["checkpoint", "rm", stats["checkpoint_id"]]))
                    export = work / f"{name}.pma"
                    stats = json.loads(ok(a.cli(["checkpoint", name, "--leave-running", "--export", str(export), "--json"])))
                    record(f"checkpoint --export {size} MiB frozen_ms", layout, stats["stats"]["frozen_ms"])
                    export.unlink()
                    src, dst = a, b
                    for mode in ("cold", "postcopy"):
                        r = lab.remote(src, ["migrate", name, lab.addr(dst), "--mode", mode, "--json"])
                        s = json.loads(ok(r))["stats"]
                        record(f"migrate {mode} {size} MiB frozen_ms", layout, s["frozen_ms"],
                               upper_entries_frozen=s["upper_entries_frozen"], stage_ms=s["phases_ms"].get("stage"))
                        if layout == "image":  # with plain dirs the checker stops: its file "moved"
                            wait_writing(dst, name, 0, timeout_s=60)
                        src, dst = dst, src
                    for host in lab.hosts:
                        host.cli(["rm", "-f", name])
    print("\nmedians")
    for (what, layout), values in sorted(results.items()):
        print(f"  {what:45s} {layout:6s} {statistics.median(values):8.1f}  (n={len(values)}, min {min(values):.1f}, max {max(values):.1f})")


if __name__ == "__main__":
    main()
