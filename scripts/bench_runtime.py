#!/usr/bin/env python3
"""Benchmark (not a test): median start latency of `pymigrate run -d` against `runc run -d`.

Both start `sleep 1000` on the same busybox rootfs: pymigrate from its image store (overlay,
bridge network, shim), runc from an OCI bundle whose root is that image's rootfs directory
(read-only, `runc spec` + edits: no terminal, stdio on /dev/null, detached). Runs are
interleaved A B A B so both sides see the same machine state (the VM hands memory back to its
host; see CRIU-NOTES); cleanup between runs (rm -f / runc delete -f) is not timed.

With ``--floor`` the same rounds also time what no change to pymigrate's own code can go
below: ``python -S -c pass`` (the bare interpreter), ``python -c pass`` (with site and the venv's
.pth files), and ``python`` importing every module a ``run -d`` imported (found by one untimed
traced run) without doing any work: the rest of pymigrate's time is its own work, the shim and the
kernel's.

What it changes on the host: a temporary state root and bundle under --workdir (default a
mkdtemp in /tmp), removed at the end, and the containers it starts, each removed after its run.

Usage: scripts/bench_runtime.py [-n 15] [--json] [--floor] [--runc /usr/sbin/runc]
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CMD = ["sleep", "1000"]


def pymigrate_cmd() -> list[str]:
    exe = REPO / ".venv" / "bin" / "pymigrate"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "migrate"]


def make_bundle(bundle: Path, rootfs: Path, runc: str) -> None:
    bundle.mkdir(parents=True, exist_ok=True)
    subprocess.run([runc, "spec", "--bundle", str(bundle)], check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["root"] = {"path": str(rootfs), "readonly": True}
    config["process"]["terminal"] = False
    config["process"]["args"] = CMD
    config["hostname"] = "bench"
    (bundle / "config.json").write_text(json.dumps(config, indent=1))


def pymigrate_python() -> str:
    """The interpreter pymigrate runs on (the venv's, as the entry point's shebang names it)."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def run_d_modules(python: str, root: Path, network: str) -> list[str]:
    """The modules one `pymigrate run -d` imports (an untimed run whose interpreter lists them)."""
    with tempfile.NamedTemporaryFile("r", suffix=".modules") as out:
        code = (
            "import atexit, sys\n"
            f"atexit.register(lambda: open({out.name!r}, 'w').write('\\n'.join(sys.modules)))\n"
            "from migrate.cli import main\n"
            "sys.exit(main())\n"
        )
        name = "benchmodules"
        cli = ["--root", str(root)]
        subprocess.run([python, "-c", code, *cli, "run", "-d", "--name", name, "--network", network, "busybox", *CMD],
                       check=True, capture_output=True, cwd=REPO)
        subprocess.run([python, "-m", "migrate", *cli, "rm", "-f", name], check=True, capture_output=True, cwd=REPO)
        return [m for m in out.read().split() if m != "__main__"]


def floor_cmds(root: Path, network: str) -> dict[str, list[str]]:
    python = pymigrate_python()
    modules = run_d_modules(python, root, network)
    imports = "import importlib\nfor m in %r:\n    try:\n        importlib.import_module(m)\n    except ImportError:\n        pass\n" % modules
    return {
        "python -S -c pass": [python, "-S", "-c", "pass"],
        "python -c pass": [python, "-c", "pass"],
        f"python + run -d's {len(modules)} imports": [python, "-c", imports],
    }


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    # stdio on /dev/null and a file, never pipes: `runc run -d` hands its stdio to the container,
    # so a pipe would stay open (and the wait for EOF would hang) until the container exits.
    with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        r = subprocess.run(argv, stdin=null_in, stdout=null_out, stderr=err, env=env)
        elapsed = time.perf_counter() - t0
        if r.returncode != 0:
            err.seek(0)
            raise SystemExit(f"bench: {' '.join(argv)} failed ({r.returncode}): {err.read().decode().strip()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runc", default=shutil.which("runc") or "/usr/sbin/runc")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--network", choices=("bridge", "none"), default="bridge", help="pymigrate's network mode")
    parser.add_argument("--floor", action="store_true", help="also time the interpreter and the imports alone")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="pmbench-"))
    root = work / "root"
    pm = [*pymigrate_cmd(), "--root", str(root)]
    sys.path.insert(0, str(REPO))
    from runtime.config import Paths
    from runtime.image_store import ImageStore
    from runtime.network import NetworkConfig, network_for

    # Bytecode as an installed package has it (PYTHONDONTWRITEBYTECODE may be set in dev shells):
    # otherwise every pymigrate start would compile the modules again.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "runtime"), str(REPO / "migrate")], check=False, capture_output=True)
    paths = Paths(root)
    paths.ensure()
    image = ImageStore(paths).build_busybox("busybox")
    # A bridge and subnet of its own, so the bench never collides with another state root.
    tag = os.urandom(3).hex()
    net = network_for(paths, "bridge", NetworkConfig(bridge=f"pmb{tag}", subnet="10.254.254.0/24"))
    net.lease("0" * 32)
    net.release("0" * 32)
    bundle = work / "bundle"
    make_bundle(bundle, image.rootfs, args.runc)
    runc_root = work / "runc-state"

    samples: dict[str, list[float]] = {"pymigrate": [], "runc": []}
    floors: dict[str, list[str]] = {}
    try:
        if args.floor:
            floors = floor_cmds(root, args.network)
            samples.update({k: [] for k in floors})
        for i in range(args.runs):
            for label, argv in floors.items():
                samples[label].append(timed(argv))
            name = f"bench{i}"
            samples["pymigrate"].append(timed([*pm, "run", "-d", "--name", name, "--network", args.network, "busybox", *CMD]))
            subprocess.run([*pm, "rm", "-f", name], check=True, capture_output=True)
            cid = f"pmbench-{tag}-{i}"
            samples["runc"].append(timed([args.runc, "--root", str(runc_root), "run", "-d", "--bundle", str(bundle), cid]))
            subprocess.run([args.runc, "--root", str(runc_root), "delete", "-f", cid], check=True, capture_output=True)
    finally:
        subprocess.run([*pm, "rm", "-f", *[f"bench{i}" for i in range(args.runs)]], capture_output=True)
        try:
            network_for(paths, "bridge").delete_bridge()
        except Exception as exc:  # cleanup: report and go on
            print(f"bench: cannot delete bridge: {exc}", file=sys.stderr)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in samples.items()}
    result = {
        "runs": args.runs,
        "order": "interleaved pymigrate, runc",
        "network": args.network,
        "median_s": med,
        "min_s": {k: min(v) for k, v in samples.items()},
        "max_s": {k: max(v) for k, v in samples.items()},
        "ratio_median": med["pymigrate"] / med["runc"],
        "goal_ratio": 1.5,
        "samples_s": samples,
    }
    if floors:
        result["floor_median_s"] = {k: med[k] for k in floors}
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(f"start latency, {args.runs} interleaved runs each (cleanup not timed), pymigrate network={args.network}")
        width = max(12, *(len(k) + 2 for k in samples))
        print(f"{'':{width}}{'median ms':>12}{'min ms':>10}{'max ms':>10}")
        for k in ("pymigrate", "runc", *floors):
            print(f"{k:{width}}{med[k] * 1000:12.1f}{min(samples[k]) * 1000:10.1f}{max(samples[k]) * 1000:10.1f}")
        verdict = "within" if result["ratio_median"] <= 1.5 else "over"
        print(f"ratio pymigrate/runc (medians): {result['ratio_median']:.2f} ({verdict} the 1.5x goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
