#!/usr/bin/env python3
"""Benchmark (not a test): what signed archives cost, beside OpenSSH's own file signing.

For each memhog size (MiB of random, incompressible memory), in one run, interleaved A B A B:

- export:  ``pymigrate checkpoint --export F --leave-running`` without and with ``--sign-key``:
           stats.frozen_ms and stats.total_ms (the signature is hashed inline, inside the freeze).
- verify:  ``pymigrate checkpoint verify F --trusted-key PUB`` wall  vs  ``ssh-keygen -Y sign``
           and ``-Y verify`` of a detached signature of the same file (OpenSSH hashes it with
           sha512), and ``sha256sum F`` (the floor: one hash pass).
- import:  ``pymigrate restore --import F`` without and with ``--trusted-key``: stats.total_ms
           (with: a verify pass, then extraction that hashes again).

What it changes on the host: the same as ``scripts/bench.py checkpoint`` (a temporary state root
with its own bridge, memhog containers, a network namespace), all removed at the end.

Usage: scripts/bench.py sign [--sizes 256,1024] [--runs 3] [--json] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _checkpoint_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_checkpoint", HERE / "bench_checkpoint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bc = _checkpoint_bench()


def one_run(bench: Any, size: int, key: Path, n: int) -> dict[str, float]:
    name = f"sg{size}-{n}"
    bench.start_memhog(name, size)
    out: dict[str, float] = {}
    try:
        plain, signed = bench.workdir / f"{name}.pma", bench.workdir / f"{name}-signed.pma"
        for label, extra, path in (("plain", (), plain), ("signed", ("--sign-key", str(key)), signed)):
            bc.warm(size)
            _, text = bench.pm("checkpoint", name, "--leave-running", "--export", str(path), "--json", *extra)
            stats = json.loads(text)["stats"]
            out[f"export_{label}_frozen_ms"] = stats["frozen_ms"]
            out[f"export_{label}_total_ms"] = stats["total_ms"]
        out["archive_mib"] = signed.stat().st_size / bc.MiB
        wall, _ = bench.pm("checkpoint", "verify", str(signed), "--trusted-key", f"{key}.pub")
        out["pm_verify_wall_ms"] = wall * 1000
        out["sha256sum_ms"] = bc.sh(f"sha256sum {plain} > /dev/null") * 1000
        out["ssh_sign_ms"] = bc.sh(f"ssh-keygen -q -Y sign -f {key} -n file {plain}") * 1000
        allowed = bench.workdir / "allowed_signers"
        allowed.write_text(f"bench {Path(f'{key}.pub').read_text()}")
        out["ssh_verify_ms"] = bc.sh(f"ssh-keygen -q -Y verify -f {allowed} -I bench -n file -s {plain}.sig < {plain}") * 1000
        bench.remove(name)
        for label, extra, path in (("plain", (), plain), ("signed", ("--trusted-key", f"{key}.pub"), signed)):
            bc.warm(size)
            target = f"{name}-{label}"
            _, text = bench.pm("restore", "--import", str(path), "--name", target, "--json", *extra)
            out[f"import_{label}_total_ms"] = json.loads(text)["stats"]["total_ms"]
            bench.remove(target)
        for p in (plain, signed, Path(f"{plain}.sig")):
            p.unlink(missing_ok=True)
    finally:
        subprocess.run([*bc.pymigrate_cmd(), "--root", str(bench.root), "rm", "-f", name], capture_output=True)
    return out


ROWS = (
    ("export frozen ms: unsigned", "export_plain_frozen_ms"),
    ("export frozen ms: --sign-key", "export_signed_frozen_ms"),
    ("export total ms: unsigned", "export_plain_total_ms"),
    ("export total ms: --sign-key", "export_signed_total_ms"),
    ("verify wall ms: pymigrate checkpoint verify", "pm_verify_wall_ms"),
    ("sign ms: ssh-keygen -Y sign (detached)", "ssh_sign_ms"),
    ("verify ms: ssh-keygen -Y verify", "ssh_verify_ms"),
    ("sha256sum ms (coreutils: one pass, no SHA-NI)", "sha256sum_ms"),
    ("import total ms: unsigned", "import_plain_total_ms"),
    ("import total ms: --trusted-key", "import_signed_total_ms"),
    ("archive MiB", "archive_mib"),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.py sign", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="256,1024", help="memhog sizes in MiB, comma separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temporary state root (default /tmp)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.py sign: needs root", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s]
    workdir = Path(tempfile.mkdtemp(prefix="pmbench-sign-", dir=args.workdir))
    bench = bc.Bench(workdir)
    started = time.monotonic()
    results = []
    try:
        bench.setup()
        key = workdir / "release"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(key)], check=True)
        for size in sizes:
            runs = [one_run(bench, size, key, n) for n in range(args.runs)]
            median = {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}
            results.append({"size_mib": size, "runs": args.runs, "median": median})
            print(f"bench: {size} MiB done at {time.monotonic() - started:.0f}s", file=sys.stderr)
    finally:
        bench.teardown()
    if args.json:
        print(json.dumps({"results": results}, indent=1))
        return 0
    head = f"{'median of ' + str(args.runs) + ' runs':46}" + "".join(f"{str(r['size_mib']) + ' MiB':>12}" for r in results)
    print(head)
    print("-" * len(head))
    for label, key_name in ROWS:
        print(f"{label:46}" + "".join(f"{r['median'][key_name]:12.1f}" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
