#!/usr/bin/env python3
"""Benchmark (not a test): pymigrate's local commands against runc's, side by side, medians.

- ``run -d``: both start `sleep 1000` on the same busybox rootfs: pymigrate from its image store
  (overlay, bridge network, shim), runc from an OCI bundle whose root is that image's rootfs
  directory (read-only, `runc spec` + edits: no terminal, stdio on /dev/null, detached).
- ``checkpoint`` / ``restore`` (``--size`` MiB memhog, random incompressible memory; skipped with
  ``--size 0``): ``pymigrate checkpoint NAME`` (the container stops once the checkpoint is
  committed) against ``runc checkpoint --image-path DIR ID``, then ``pymigrate restore CID`` against
  ``runc restore -d --image-path DIR --bundle B ID``. runc's bundle holds a writable copy of the
  memhog image's rootfs; memhog's stdio is the container's own /dev/null (CRIU cannot dump a
  host's). Each container is started and filled untimed; 2 x size + 512 MiB of memory is touched
  and freed right before every timed step, on both sides (the VM hands freed memory back to its
  host, and touching it again is slow: CRIU-NOTES).
- ``ps``: `pymigrate ps` wall beside `runc list` (what every local command pays to start).
- ``--zygote``: the same pymigrate steps also through a resident zygote (``PYMIGRATE_ZYGOTE=1``,
  migrate/zygote; a private socket directory under --workdir), rows marked ``(zygote)``, in the
  same rounds; the zygote is started and warmed by untimed commands first and stopped at the end.
  With ``--floor`` too: ``run -d (zygote, no editable finder)`` starts the front as a regular
  (non-editable) install would: this venv's editable install hooks an import finder into site
  (~13 ms of every start here: pathlib, urllib, ...), a wheel install has a plain directory instead.
  Emulated with ``python -S`` and the same sys.path plus the checkout (packaging/bin/pymigrate imports only the front).
- ``--neighbours N``: N pymigrate containers stay running on the bench's bridge during the rounds
  (started untimed first), so each ``run -d`` pays the ARP probe of its new address as on a busy
  host (a bridge without other ports skips it: runtime/bridge_pool.py).

Runs are interleaved A B A B so both sides see the same machine state; cleanup between runs
(rm -f / runc delete -f, checkpoint rm) is not timed. The table prints medians, the ratio
pymigrate/runc, the goal (issue 17) and whether it is met.

With ``--floor`` the same rounds also time what no change to pymigrate's own code can go
below: ``python -S -c pass`` (the bare interpreter), ``python -c pass`` (with site and the venv's
.pth files), and ``python`` importing every module a ``run -d`` imported (found by one untimed
traced run) without doing any work: the rest of pymigrate's time is its own work, the shim and the
kernel's.

What it changes on the host: a temporary state root and bundles under --workdir (default a
mkdtemp in /tmp; its own bridge and /24), removed at the end, and the containers it starts, each
removed after its run.

Usage: scripts/bench_runtime.py [-n 15] [--size 64] [--json] [--floor] [--zygote] [--neighbours N] [--runc /usr/sbin/runc]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CMD = ["sleep", "1000"]
MiB = 1 << 20
# median ratio pymigrate / runc that issue 17 asks for
GOALS = {"run -d": 2.0, "checkpoint": 1.3, "restore": 1.3}
ZYGOTE = " (zygote)"
MEMHOG_OUT = "tmp/memhog.out"


def pymigrate_cmd() -> list[str]:
    exe = REPO / ".venv" / "bin" / "pymigrate"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "migrate"]


def make_bundle(bundle: Path, rootfs: Path, runc: str, args: list[str] = CMD, readonly: bool = True) -> None:
    bundle.mkdir(parents=True, exist_ok=True)
    subprocess.run([runc, "spec", "--bundle", str(bundle)], check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["root"] = {"path": str(rootfs), "readonly": readonly}
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["hostname"] = "bench"
    (bundle / "config.json").write_text(json.dumps(config, indent=1))


def warm(size_mib: int) -> None:
    """Touch and free 2 x size + 512 MiB so the next step does not pay the VM's page faults."""
    n = (2 * size_mib + 512) * MiB
    m = mmap.mmap(-1, n)
    for off in range(0, n, mmap.PAGESIZE):
        m[off : off + 1] = b"\x01"
    m.close()


def memhog_ready(pid: int, out: Path, timeout_s: float = 120) -> None:
    """Wait until memhog (``pid``, on the host) answers SIGUSR1 into ``out``: its memory is full."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out.unlink(missing_ok=True)
        os.kill(pid, signal.SIGUSR1)
        for _ in range(50):
            try:
                if out.read_text().endswith("\n"):
                    return
            except OSError:
                pass
            time.sleep(0.01)
    raise SystemExit(f"bench: memhog {pid} not ready after {timeout_s:g}s")


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
    # with the CLI's cached dataclass methods (runtime/dataclass_cache.py), as the CLI has them
    imports = "import importlib\nfrom runtime import dataclass_cache\ndataclass_cache.install()\nfor m in %r:\n    try:\n        importlib.import_module(m)\n    except ImportError:\n        pass\n" % modules
    return {
        "python -S -c pass": [python, "-S", "-c", "pass"],
        "python -c pass": [python, "-c", "pass"],
        f"python + run -d's {len(modules)} imports": [python, "-c", imports],
    }


def regular_install_pm(root: Path) -> list[str]:
    """The pymigrate command as a non-editable install starts it (see --zygote with --floor)."""
    python = pymigrate_python()
    paths = json.loads(subprocess.run([python, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"], check=True,
                                      capture_output=True, text=True, cwd="/").stdout)
    code = (f"import sys; sys.path[:] = {[str(REPO), *paths]!r}; from migrate.zygote.front import main; "
            "sys.argv[0] = 'pymigrate'; sys.exit(main())")
    return [python, "-S", "-c", code, "--root", str(root)]


def warm_zygote(pm: list[str], env: dict[str, str], network: str) -> None:
    """Untimed: the first command starts the zygote, the next ones find it (and teach it the
    imports of run -d, ps, rm and the checkpoint commands)."""
    for _ in range(2):
        for argv in (["run", "-d", "--name", "zwarm", "--network", network, "busybox", *CMD], ["ps"], ["rm", "-f", "zwarm"],
                     ["checkpoint", "ls"]):
            subprocess.run([*pm, *argv], env=env, check=True, capture_output=True)
            time.sleep(0.2)


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


class CheckpointBench:
    """checkpoint + restore of a memhog: pymigrate's state root and runc's bundle, side by side."""

    def __init__(self, work: Path, root: Path, pm: list[str], runc: str, size_mib: int, subnet_prefix: str,
                 zygote_env: dict[str, str] | None = None) -> None:
        self.work, self.root, self.pm, self.runc, self.size_mib = work, root, pm, runc, size_mib
        self.zygote_env = zygote_env
        self.subnet_prefix = subnet_prefix
        self.runc_root = work / "runc-ckpt-state"
        self.bundle = work / "memhog-bundle"

    def setup(self) -> None:
        from runtime.config import Paths
        from runtime.image_store import ImageStore
        from tests.integration.workloads import build_memhog, import_image, memhog_image_tar

        memhog = build_memhog(self.work / "bin")
        digest = import_image(self.root, "memhog", memhog_image_tar(self.root, memhog, self.work / "memhog.tar"))
        rootfs = self.bundle / "rootfs"
        self.bundle.mkdir(parents=True)
        subprocess.run(["cp", "-a", str(ImageStore(Paths(self.root)).get(digest).rootfs), str(rootfs)], check=True)
        wrapped = f"exec /bin/memhog {self.size_mib} /{MEMHOG_OUT} </dev/null >/dev/null 2>&1"
        make_bundle(self.bundle, rootfs, self.runc, ["/bin/sh", "-c", wrapped], readonly=False)

    def round(self, i: int, samples: dict[str, list[float]]) -> None:
        from tests.integration.workloads import memhog_command, wait_memhog_ready

        # pymigrate: run (untimed), checkpoint, restore; the same again through the zygote
        for env, suffix in [(None, ""), *([(self.zygote_env, ZYGOTE)] if self.zygote_env else [])]:
            name = f"hog{i}"
            subprocess.run([*self.pm, "run", "-d", "--name", name, "memhog", *memhog_command(self.size_mib)], check=True, capture_output=True)
            wait_memhog_ready(self.root, name, timeout_s=120)
            warm(self.size_mib)
            t, out = timed_out([*self.pm, "checkpoint", name, "--json"], env)
            samples["pymigrate checkpoint" + suffix].append(t)
            cid = json.loads(out)["checkpoint_id"]
            warm(self.size_mib)
            samples["pymigrate restore" + suffix].append(timed([*self.pm, "restore", cid], env))
            subprocess.run([*self.pm, "rm", "-f", name], check=True, capture_output=True)
            subprocess.run([*self.pm, "checkpoint", "rm", cid], check=True, capture_output=True)

        # runc: run (untimed), checkpoint, restore
        cid = f"pmbhog-{os.getpid()}-{i}"
        images = self.work / f"runc-images-{i}"
        rc = [self.runc, "--root", str(self.runc_root)]
        timed([*rc, "run", "-d", "--bundle", str(self.bundle), cid])
        try:
            memhog_ready(self.runc_pid(cid), self.bundle / "rootfs" / MEMHOG_OUT)
            warm(self.size_mib)
            samples["runc checkpoint"].append(timed([*rc, "checkpoint", "--image-path", str(images), cid]))
            warm(self.size_mib)
            samples["runc restore"].append(timed([*rc, "restore", "-d", "--image-path", str(images), "--bundle", str(self.bundle), cid]))
        finally:
            subprocess.run([*rc, "delete", "-f", cid], capture_output=True)
            shutil.rmtree(images, ignore_errors=True)

    def runc_pid(self, cid: str) -> int:
        state = subprocess.run([self.runc, "--root", str(self.runc_root), "state", cid], check=True, capture_output=True, text=True)
        return int(json.loads(state.stdout)["pid"])

    def teardown(self) -> None:
        listed = subprocess.run([self.runc, "--root", str(self.runc_root), "list", "-q"], capture_output=True, text=True)
        for cid in listed.stdout.split():
            subprocess.run([self.runc, "--root", str(self.runc_root), "delete", "-f", cid], capture_output=True)


def timed_out(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Like ``timed`` but keeps stdout (a file, not a pipe); (wall seconds, stdout)."""
    with open(os.devnull, "rb") as null_in, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        r = subprocess.run(argv, stdin=null_in, stdout=out, stderr=err, env=env)
        elapsed = time.perf_counter() - t0
        if r.returncode != 0:
            err.seek(0)
            raise SystemExit(f"bench: {' '.join(argv)} failed ({r.returncode}): {err.read().decode().strip()}")
        out.seek(0)
        return elapsed, out.read().decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=15)
    parser.add_argument("--size", type=int, default=64, help="memhog MiB for checkpoint/restore (0: skip them)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runc", default=shutil.which("runc") or "/usr/sbin/runc")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--network", choices=("bridge", "none"), default="bridge", help="pymigrate's network mode")
    parser.add_argument("--floor", action="store_true", help="also time the interpreter and the imports alone")
    parser.add_argument("--neighbours", type=int, default=0, help="containers kept running on the bridge meanwhile")
    parser.add_argument("--zygote", action="store_true", help="also time pymigrate's steps through a resident zygote")
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
    # ... and as it runs: writing bytecode, so the CLI keeps its compiled dataclass methods
    # (runtime/dataclass_cache.py; the first runs fill the cache, the medians are the steady state)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    paths = Paths(root)
    paths.ensure()
    image = ImageStore(paths).build_busybox("busybox")
    # A bridge and subnet of its own, so the bench never collides with another state root.
    tag = os.urandom(3).hex()
    subnet_prefix = f"10.254.{int(tag[:2], 16)}"
    net = network_for(paths, "bridge", NetworkConfig(bridge=f"pmb{tag}", subnet=f"{subnet_prefix}.0/24"))
    net.lease("0" * 32)
    net.release("0" * 32)
    bundle = work / "bundle"
    make_bundle(bundle, image.rootfs, args.runc)
    runc_root = work / "runc-state"
    zenv = {**os.environ, "PYMIGRATE_ZYGOTE": "1", "PYMIGRATE_ZYGOTE_DIR": str(work / "zygote")} if args.zygote else None
    ckpt = CheckpointBench(work, root, pm, args.runc, args.size, subnet_prefix, zenv) if args.size > 0 else None

    samples: dict[str, list[float]] = {"pymigrate run -d": [], "runc run -d": [], "pymigrate ps": [], "runc list": []}
    if zenv:
        samples.update({"pymigrate run -d" + ZYGOTE: [], "pymigrate ps" + ZYGOTE: []})
    if ckpt:
        samples.update({k: [] for k in ("pymigrate checkpoint", "runc checkpoint", "pymigrate restore", "runc restore")})
        if zenv:
            samples.update({"pymigrate checkpoint" + ZYGOTE: [], "pymigrate restore" + ZYGOTE: []})
    floors: dict[str, list[str]] = {}
    try:
        if ckpt:
            ckpt.setup()
        for k in range(args.neighbours):
            subprocess.run([*pm, "run", "-d", "--name", f"neighbour{k}", "--network", "bridge", "busybox", *CMD],
                           check=True, capture_output=True)
        if args.floor:
            floors = floor_cmds(root, args.network)
            samples.update({k: [] for k in floors})
        if zenv:
            warm_zygote(pm, zenv, args.network)
            if args.floor:
                regular = regular_install_pm(root)
                warm_zygote(regular, zenv, args.network)
                samples["pymigrate run -d (zygote, no editable finder)"] = []
        for i in range(args.runs):
            for label, argv in floors.items():
                samples[label].append(timed(argv))
            name = f"bench{i}"
            samples["pymigrate run -d"].append(timed([*pm, "run", "-d", "--name", name, "--network", args.network, "busybox", *CMD]))
            samples["pymigrate ps"].append(timed([*pm, "ps"]))
            subprocess.run([*pm, "rm", "-f", name], check=True, capture_output=True)
            if zenv:
                samples["pymigrate run -d" + ZYGOTE].append(
                    timed([*pm, "run", "-d", "--name", name, "--network", args.network, "busybox", *CMD], zenv))
                samples["pymigrate ps" + ZYGOTE].append(timed([*pm, "ps"], zenv))
                subprocess.run([*pm, "rm", "-f", name], check=True, capture_output=True)
                if args.floor:
                    samples["pymigrate run -d (zygote, no editable finder)"].append(
                        timed([*regular, "run", "-d", "--name", name, "--network", args.network, "busybox", *CMD], zenv))
                    subprocess.run([*pm, "rm", "-f", name], check=True, capture_output=True)
            cid = f"pmbench-{tag}-{i}"
            samples["runc run -d"].append(timed([args.runc, "--root", str(runc_root), "run", "-d", "--bundle", str(bundle), cid]))
            samples["runc list"].append(timed([args.runc, "--root", str(runc_root), "list"]))
            subprocess.run([args.runc, "--root", str(runc_root), "delete", "-f", cid], check=True, capture_output=True)
            if ckpt:
                ckpt.round(i, samples)
    finally:
        subprocess.run([*pm, "rm", "-f", *[f"bench{i}" for i in range(args.runs)], *[f"hog{i}" for i in range(args.runs)],
                        *[f"neighbour{k}" for k in range(args.neighbours)]],
                       capture_output=True)
        if ckpt:
            ckpt.teardown()
        if zenv:
            from migrate.zygote.server import stop_all

            stop_all(zenv["PYMIGRATE_ZYGOTE_DIR"])
        try:
            network_for(paths, "bridge").delete_bridge()
        except Exception as exc:  # cleanup: report and go on
            print(f"bench: cannot delete bridge: {exc}", file=sys.stderr)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in samples.items()}
    comparisons = {}
    for step, goal in GOALS.items():
        for suffix in ("", ZYGOTE, " (zygote, no editable finder)"):
            if f"pymigrate {step}{suffix}" in med:
                ratio = med[f"pymigrate {step}{suffix}"] / med[f"runc {step}"]
                comparisons[step + suffix] = {"pymigrate_s": med[f"pymigrate {step}{suffix}"], "runc_s": med[f"runc {step}"],
                                              "ratio": ratio, "goal": goal, "met": ratio <= goal}
    result = {
        "runs": args.runs,
        "order": "interleaved pymigrate, runc",
        "network": args.network,
        "neighbours": args.neighbours,
        "zygote": args.zygote,
        "memhog_mib": args.size,
        "median_s": med,
        "min_s": {k: min(v) for k, v in samples.items()},
        "max_s": {k: max(v) for k, v in samples.items()},
        "comparisons": comparisons,
        "samples_s": samples,
    }
    if floors:
        result["floor_median_s"] = {k: med[k] for k in floors}
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(f"{args.runs} interleaved runs each (cleanup not timed), pymigrate network={args.network}, "
          f"{args.neighbours} neighbours, memhog {args.size} MiB")
    width = max(12, *(len(k) + 2 for k in samples))
    print(f"{'':{width}}{'median ms':>12}{'min ms':>10}{'max ms':>10}")
    for k in samples:
        print(f"{k:{width}}{med[k] * 1000:12.1f}{min(samples[k]) * 1000:10.1f}{max(samples[k]) * 1000:10.1f}")
    print()
    print(f"{'median ms':44}{'pymigrate':>11}{'runc':>9}{'ratio':>8}{'goal':>7}  met")
    for step, c in comparisons.items():
        print(f"{step:44}{c['pymigrate_s'] * 1000:11.1f}{c['runc_s'] * 1000:9.1f}{c['ratio']:8.2f}{c['goal']:7.1f}  {'yes' if c['met'] else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
