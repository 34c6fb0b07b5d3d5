#!/usr/bin/env python3
"""Benchmark (not a test): pymigrate checkpoint/restore against raw CRIU on the same container.

For each memhog size (MiB of random, incompressible memory), in one run, interleaved A B A B:

- frozen:  ``pymigrate checkpoint --leave-running`` stats.frozen_ms  vs  raw ``criu dump`` of the
           same container (its real pid, netns inode and cgroup: ``--external net[INODE]:extnet
           --network-lock nftables --manage-cgroups=ignore --freeze-cgroup CG --leave-running``);
           raw side = CRIU's own ``frozen_time`` from stats-dump (also shown: the command's wall).
- export:  ``pymigrate checkpoint --export F --leave-running`` wall  vs  ``criu dump`` followed by
           ``tar -cf - IMAGES UPPER | zstd -T0 -1 > F``, wall of both.
- frozen of --leave-running --export: its stats.frozen_ms  vs  the plain ``checkpoint
           --leave-running``'s (goal <= 1.1 x: it thaws before the archive is written): a pair
           of their own per run, A B in alternating order, each one's files deleted right after
           it (the checkpoint kept for the restore step is not part of it). On this VM a dump
           right after a step that *kept* its 1 GiB of files (a local checkpoint, a raw dump's
           images) is 2-5 x slower in CRIU's page writes alone (1 GiB memwrite_ms: 230-540 after
           deleted files, 1.0-2.0 s after kept ones, whichever the kind of checkpoint), so the
           export step below, which follows the raw dump, shows its frozen_ms apart. Before each
           step of a pair: ``sync`` (the last step's deletions and, the root being mounted
           ``discard``, their discards happen then, not during this step), then the warming. The
           goal line's ratio: the per-pair ratios' median for each order (export first, plain
           first), combined by geometric mean, so an odd number of runs does not favour an order.
           ``--stopped-export`` adds, once per size at its end, ``checkpoint --export F`` without
           --leave-running (frozen until committed, then stopped): its frozen_ms.
- restore: the whole ``pymigrate restore ID --name N --ip A`` wall  vs  only the ``criu restore``
           command of the same images (``--root MERGED --inherit-fd fd[3]:extnet -d
           --manage-cgroups=ignore``); the raw side's preparation (overlay mount of the checkpoint's
           upper layer, a network namespace, a cgroup) is done before its clock starts.
- import:  ``pymigrate restore --import F --name N --ip A`` wall  vs  ``zstd -d | tar -x`` then
           ``criu restore`` (the same untimed preparation between the two).
- bytes:   the archive vs CRIU's raw image bytes (and the tar.zst of the raw pipeline).

The pymigrate side is the CLI as users run it, so it includes the interpreter start; that cost
(``pymigrate --help``-free ``ps`` wall) and the engine's own totals (stats.total_ms) are printed
beside each ratio. Memory is warmed before every timed step, for both sides: the VM hands freed
memory back to its host and touching it again is slow (CRIU-NOTES), so 2 x size + 512 MiB is
touched and freed right before each step. Machine limits are measured in the same run: dd with
fsync to the state root's filesystem, zstd -1 -T0 on random data.

What it changes on the host: a temporary state root (its own bridge and /24), memhog containers,
a network namespace ``pmbench-<tag>`` and a cgroup below the runtime's cgroup for the raw
restores; every one is removed at the end (also on failure).

Usage: scripts/bench.py checkpoint [--sizes 64,256,1024] [--runs 3] [--only frozen] [--stopped-export]
                                  [--volume-mib N] [--json] [--workdir DIR]
``--only frozen``: per run only the plain checkpoint and the --leave-running export (no raw CRIU,
restore or import steps). ``--volume-mib N`` (with ``--only frozen``): memhog also has a named
volume at /data holding N MiB (64 random files, written before the first step), which the
export carries and a plain checkpoint does not.

Before the timed steps of a size, one plain checkpoint is taken and removed, untimed: the first
dump of a freshly started container is the slowest (1 GiB: 1.4-3.0 s, then 0.4-1.0 s here), and
it fell on the export of the first pair.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MiB = 1 << 20


def pymigrate_cmd() -> list[str]:
    exe = REPO / ".venv" / "bin" / "pymigrate"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "migrate"]


def run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> tuple[float, str]:
    """Run ``argv``; (wall seconds, stdout). Fails loudly."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"bench: {' '.join(map(str, argv))} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-2000:]}")
    return elapsed, r.stdout


def sh(cmd: str, *, timeout: float = 600) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"bench: {cmd} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


def warm(size_mib: int) -> None:
    """Touch and free 2 x size + 512 MiB so the next step does not pay the VM's page faults."""
    n = (2 * size_mib + 512) * MiB
    m = mmap.mmap(-1, n)
    page = b"\x01" * 1
    for off in range(0, n, mmap.PAGESIZE):
        m[off : off + 1] = page
    m.close()


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.tag = secrets.token_hex(3)
        self.netns_name = f"pmbench-{self.tag}"
        self.raw_cgroup: Path | None = None
        self.criu = ""
        self.cleanups: list[Callable[[], Any]] = []
        self.volume_mib = 0

    # -- setup / teardown -------------------------------------------------------------------------
    def setup(self) -> None:
        from runtime.config import Paths
        from runtime.criu import criu_binary
        from runtime.image_store import ImageStore
        from runtime.network import NetworkConfig, network_for
        from tests.integration.workloads import build_memhog, import_image, memhog_image_tar

        self.criu = criu_binary()
        paths = Paths(self.root)
        paths.ensure()
        ImageStore(paths).build_busybox("busybox")
        subnet = f"10.{100 + secrets.randbelow(150)}.{secrets.randbelow(256)}.0/24"
        net = network_for(paths, "bridge", NetworkConfig(bridge=f"pmb{self.tag}", subnet=subnet))
        net.lease("0" * 32)
        net.release("0" * 32)
        self.subnet_prefix = subnet.rsplit(".", 1)[0]
        memhog = build_memhog(self.workdir / "bin")
        tar = memhog_image_tar(self.root, memhog, self.workdir / "memhog.tar")
        import_image(self.root, "memhog", tar)
        subprocess.run(["ip", "netns", "add", self.netns_name], check=True)
        self.cleanups.append(lambda: subprocess.run(["ip", "netns", "del", self.netns_name], check=False))

    def teardown(self) -> None:
        from runtime.config import Paths
        from runtime.network import network_for
        from runtime.runtime import Runtime

        for step in reversed(self.cleanups):
            try:
                step()
            except Exception as exc:  # teardown: report, keep cleaning
                print(f"bench cleanup: {exc}", file=sys.stderr)
        rt = Runtime(self.root)
        for info in rt.list(all=True):
            try:
                rt.remove(info.spec.container_id, force=True)
            except Exception as exc:  # teardown: report, keep cleaning
                print(f"bench cleanup: {info.spec.name}: {exc}", file=sys.stderr)
        try:
            network_for(Paths(self.root), "bridge").delete_bridge()
        except Exception as exc:  # teardown: report, keep cleaning
            print(f"bench cleanup: bridge: {exc}", file=sys.stderr)
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if line.split()[4].startswith(str(self.workdir))]
        for p in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", p], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def pm(self, *args: str) -> tuple[float, str]:
        return run([*pymigrate_cmd(), "--root", str(self.root), *args])

    # -- container helpers ------------------------------------------------------------------------
    def start_memhog(self, name: str, size_mib: int) -> None:
        from tests.integration.workloads import memhog_command, wait_memhog_ready

        volume = ("-v", f"{name}-data:/data") if self.volume_mib else ()
        self.pm("run", "-d", "--name", name, *volume, "memhog", *memhog_command(size_mib))
        wait_memhog_ready(self.root, name, timeout_s=120)
        data = self.root / "volumes" / f"{name}-data" / "_data"
        for i in range(64 if self.volume_mib else 0):
            (data / f"f{i}").write_bytes(os.urandom(self.volume_mib * MiB // 64))

    def info(self, name: str) -> Any:
        from runtime.runtime import Runtime

        return Runtime(self.root).inspect(name)

    def remove(self, name: str) -> None:
        self.pm("rm", "-f", name)

    # -- raw CRIU ---------------------------------------------------------------------------------
    def raw_dump(self, name: str, images: Path) -> tuple[float, float]:
        """criu dump --leave-running of container ``name`` into ``images``; (wall s, CRIU frozen ms)."""
        from runtime.criu import read_dump_stats

        info = self.info(name)
        netns_ino = os.stat(self.root / "netns" / info.spec.container_id).st_ino
        images.mkdir(parents=True)
        wall, _ = run([
            self.criu, "dump", "-t", str(info.state.pid), "-D", str(images), "-o", "dump.log", "-v4",
            "--external", f"net[{netns_ino}]:extnet", "--network-lock", "nftables",
            "--manage-cgroups=ignore", "--freeze-cgroup", info.cgroup["unified"], "--leave-running",
        ])
        return wall, read_dump_stats(images).frozen_ms

    def raw_prepare(self, image_digest: str, upper: Path, base: Path) -> Path:
        """What a raw restore needs first (untimed): overlay of ``upper`` on the image, a cgroup."""
        from runtime.config import Paths
        from runtime.image_store import ImageStore

        lower = ImageStore(Paths(self.root)).get(image_digest).rootfs
        work, merged = base / "work", base / "merged"
        work.mkdir(parents=True)
        merged.mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)], check=True)
        return merged

    def raw_restore(self, images: Path, merged: Path) -> float:
        """Only the ``criu restore`` command (in a fresh cgroup, the tree detached); wall seconds.
        The restored tree is killed and the overlay unmounted afterwards (untimed)."""
        cg = self._raw_cgroup()
        netns = f"/run/netns/{self.netns_name}"
        cmd = (
            f"echo $$ > {cg}/cgroup.procs && exec 3<{netns} && exec {self.criu} restore -D {images} -o restore.log -v4 "
            f"--root {merged} --inherit-fd fd[3]:extnet --manage-cgroups=ignore --network-lock nftables -d"
        )
        try:
            return sh(cmd)
        finally:
            self._kill_cgroup(cg)
            subprocess.run(["umount", str(merged)], check=False)

    def _raw_cgroup(self) -> Path:
        if self.raw_cgroup is None:
            own = Path("/proc/self/cgroup").read_text()
            rel = next(line.split(":", 2)[2] for line in own.splitlines() if line.startswith("0::"))
            cg = Path("/sys/fs/cgroup/unified") / rel.lstrip("/") / f"pmbench-{self.tag}"
            # our own cgroup may hold processes (no internal-process rule without controllers)
            cg.mkdir()
            self.raw_cgroup = cg
            self.cleanups.append(lambda: (self._kill_cgroup(cg), cg.rmdir()))
        return self.raw_cgroup

    @staticmethod
    def _kill_cgroup(cg: Path) -> None:
        (cg / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 10
        while (cg / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- one size ---------------------------------------------------------------------------------
    def size(self, size_mib: int, runs: int, *, only_frozen: bool = False, stopped_export: bool = False) -> dict[str, Any]:
        name = f"hog{size_mib}"
        self.start_memhog(name, size_mib)
        info = self.info(name)
        digest = info.spec.image_digest
        from runtime.upperfs import Layout

        upper_live = Layout.of(Path(info.bundle_dir)).upper  # on the container's ext4 image, or a plain dir
        scratch = self.root / "tmp"
        r: dict[str, list[float]] = {k: [] for k in (
            "pm_frozen_ms", "pm_ckpt_total_ms", "raw_frozen_ms", "raw_dump_wall_ms",
            "pm_export_wall_ms", "pm_export_total_ms", "raw_export_wall_ms", "pm_export_frozen_ms",
            "ab_plain_frozen_ms", "pm_export_step_frozen_ms", "ab_plain_memwrite_ms", "pm_export_memwrite_ms",
            "ab_plain_beyond_dump_ms", "pm_export_beyond_dump_ms", "pm_stopped_export_frozen_ms",
            "ab_plain_total_ms", "pm_export_pair_total_ms", "pm_whole_frozen_ms", "export_first",
            "pm_restore_wall_ms", "pm_restore_total_ms", "raw_restore_ms",
            "pm_import_wall_ms", "pm_import_total_ms", "raw_import_ms", "raw_untar_ms",
        )}
        sizes: dict[str, int] = {}
        warm(size_mib)  # untimed: the first dump of a fresh container is the slowest (module doc)
        _, out = self.pm("checkpoint", name, "--leave-running", "--json")
        self.pm("checkpoint", "rm", json.loads(out)["checkpoint_id"])
        for i in range(runs):
            self.frozen_pair(name, size_mib, i, r, sizes)
            if only_frozen:
                continue
            # frozen time: pymigrate checkpoint --leave-running vs raw criu dump (A B)
            warm(size_mib)
            _, out = self.pm("checkpoint", name, "--leave-running", "--json")
            res = json.loads(out)
            r["pm_frozen_ms"].append(res["stats"]["frozen_ms"])
            r["pm_ckpt_total_ms"].append(res["stats"]["total_ms"])
            sizes["images_bytes"] = res["stats"]["images_bytes"]
            cid = res["checkpoint_id"]
            warm(size_mib)
            raw_images = scratch / f"raw-{i}"
            wall, frozen = self.raw_dump(name, raw_images)
            r["raw_frozen_ms"].append(frozen)
            r["raw_dump_wall_ms"].append(wall * 1000)
            sizes["raw_images_bytes"] = sum(p.stat().st_size for p in raw_images.iterdir())

            # restore of a local checkpoint: whole pymigrate restore vs only criu restore (A B)
            warm(size_mib)
            copy = f"{name}-r{i}"
            wall, out = self.pm("restore", cid, "--name", copy, "--ip", f"{self.subnet_prefix}.{200 + i}", "--json")
            r["pm_restore_wall_ms"].append(wall * 1000)
            r["pm_restore_total_ms"].append(json.loads(out)["stats"]["total_ms"])
            self.remove(copy)
            base = scratch / f"rawrst-{i}"
            upper = self._upper_from(cid, base)
            merged = self.raw_prepare(digest, upper, base)
            warm(size_mib)
            r["raw_restore_ms"].append(self.raw_restore(raw_images, merged) * 1000)
            shutil.rmtree(base, ignore_errors=True)
            self.pm("checkpoint", "rm", cid)

            # export: pymigrate checkpoint --export vs criu dump + tar | zstd (A B)
            archive = self.workdir / f"export-{i}.pma"
            warm(size_mib)
            wall, out = self.pm("checkpoint", name, "--leave-running", "--export", str(archive), "--json")
            r["pm_export_wall_ms"].append(wall * 1000)
            r["pm_export_total_ms"].append(json.loads(out)["stats"]["total_ms"])
            r["pm_export_step_frozen_ms"].append(json.loads(out)["stats"]["frozen_ms"])
            sizes["archive_bytes"] = archive.stat().st_size
            raw_tar = self.workdir / f"raw-{i}.tar.zst"
            raw_images2 = scratch / f"raw2-{i}"
            warm(size_mib)
            t0 = time.perf_counter()
            self.raw_dump(name, raw_images2)
            sh(f"tar -cf - -C {raw_images2} . -C {upper_live} . | zstd -q -T0 -1 -o {raw_tar}")
            r["raw_export_wall_ms"].append((time.perf_counter() - t0) * 1000)
            sizes["raw_tar_zst_bytes"] = raw_tar.stat().st_size

            # import: pymigrate restore --import vs zstd -d | tar -x + criu restore (A B)
            warm(size_mib)
            copy = f"{name}-i{i}"
            wall, out = self.pm("restore", "--import", str(archive), "--name", copy, "--ip", f"{self.subnet_prefix}.{220 + i}", "--json")
            r["pm_import_wall_ms"].append(wall * 1000)
            r["pm_import_total_ms"].append(json.loads(out)["stats"]["total_ms"])
            self.remove(copy)
            base = scratch / f"rawimp-{i}"
            unpacked = base / "images"
            unpacked.mkdir(parents=True)
            warm(size_mib)
            untar = sh(f"zstd -q -d -c {raw_tar} | tar -x -C {unpacked}")
            # the upper layer came along in the tar (mixed with the images); the overlay gets a copy
            upper = base / "upper"
            shutil.copytree(upper_live, upper, symlinks=True)
            merged = self.raw_prepare(digest, upper, base)
            rst = self.raw_restore(unpacked, merged)
            r["raw_untar_ms"].append(untar * 1000)
            r["raw_import_ms"].append((untar + rst) * 1000)
            for p in (archive, raw_tar):
                p.unlink()
            for d in (raw_images, raw_images2, base):
                shutil.rmtree(d, ignore_errors=True)
        if stopped_export:  # last: it stops the container
            archive = self.workdir / "export-stopped.pma"
            warm(size_mib)
            _, out = self.pm("checkpoint", name, "--export", str(archive), "--json")
            r["pm_stopped_export_frozen_ms"].append(json.loads(out)["stats"]["frozen_ms"])
            archive.unlink()
        self.remove(name)
        # both of a pair ran within seconds of each other: the VM's drift (CRIU's page writes vary
        # 4 x here with the host's load) moves both, so their ratio is steadier than the medians'
        r["pair_ratio"] = [e / p for e, p in zip(r["pm_export_frozen_ms"], r["ab_plain_frozen_ms"])]
        r["whole_pair_ratio"] = [e / p for e, p in zip(r["pm_whole_frozen_ms"], r["ab_plain_frozen_ms"])]
        med = {k: statistics.median(v) for k, v in r.items() if v}
        # the step that comes first in a pair was the slower one in most pairs here, whichever its
        # kind: with an odd number of runs one order has a pair more, so the per-pair median is
        # taken per order and the two are combined (geometric mean)
        groups = [[q for q, first in zip(r["pair_ratio"], r["export_first"]) if first == flag] for flag in (1.0, 0.0)]
        groups = [g for g in groups if g]
        if groups:
            med["pair_ratio_balanced"] = math.prod(statistics.median(g) for g in groups) ** (1 / len(groups))
        return {"size_mib": size_mib, "runs": runs, "median": med, "samples": r, "bytes": sizes}

    def frozen_pair(self, name: str, size_mib: int, i: int, r: dict[str, list[float]], sizes: dict[str, int]) -> None:
        """frozen_ms of ``checkpoint --leave-running --export`` and of a plain ``checkpoint
        --leave-running``, A B with the order alternating per run, each one's files deleted right
        after it, so both start from the same state (see the module doc). With a volume, a third:
        the export with its trees copied while frozen (PYMIGRATE_EXPORT_PRESYNC=0), in rotation."""
        kinds = ["export", "plain"] + (["whole"] if self.volume_mib else [])
        order = kinds[i % len(kinds):] + kinds[:i % len(kinds)] if self.volume_mib else kinds[::1 if i % 2 == 0 else -1]
        r["export_first"].append(1.0 if order.index("export") < order.index("plain") else 0.0)
        for kind in order:
            os.sync()  # the last step's deletions reach the disk (and its discards: the root is mounted discard) now, not during this one
            warm(size_mib)
            if kind == "whole":
                archive = self.workdir / f"export-whole-{i}.pma"
                _, out = run([*pymigrate_cmd(), "--root", str(self.root), "checkpoint", name, "--leave-running", "--export",
                              str(archive), "--json"], env={**os.environ, "PYMIGRATE_EXPORT_PRESYNC": "0"})
                r["pm_whole_frozen_ms"].append(json.loads(out)["stats"]["frozen_ms"])
                archive.unlink()
            elif kind == "plain":
                _, out = self.pm("checkpoint", name, "--leave-running", "--json")
                res = json.loads(out)
                self.pm("checkpoint", "rm", res["checkpoint_id"])
                r["ab_plain_frozen_ms"].append(res["stats"]["frozen_ms"])
                r["ab_plain_memwrite_ms"].append(res["stats"]["memwrite_ms"])
                r["ab_plain_beyond_dump_ms"].append(res["stats"]["archive_ms"])
                r["ab_plain_total_ms"].append(res["stats"]["total_ms"])
                sizes["images_bytes"] = res["stats"]["images_bytes"]
            else:
                archive = self.workdir / f"export-ab-{i}.pma"
                _, out = self.pm("checkpoint", name, "--leave-running", "--export", str(archive), "--json")
                stats = json.loads(out)["stats"]
                r["pm_export_frozen_ms"].append(stats["frozen_ms"])
                r["pm_export_memwrite_ms"].append(stats["memwrite_ms"])
                r["pm_export_beyond_dump_ms"].append(stats["archive_ms"])
                r["pm_export_pair_total_ms"].append(stats["total_ms"])
                sizes["archive_bytes"] = archive.stat().st_size
                archive.unlink()

    def _upper_from(self, cid: str, base: Path) -> Path:
        """The checkpoint's upper layer as a plain dir for the raw overlay: copied out of its
        upper.img (the container's ext4 layer, runtime/upperfs.py) or unpacked from its upper.pma."""
        from migrate.archive import read_archive

        dest = base / "unpacked"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        image = self.root / "checkpoints" / cid / "upper.img"
        if image.exists():
            mnt = base / "upper-img"
            mnt.mkdir()
            subprocess.run(["mount", "-o", "loop,ro", str(image), str(mnt)], check=True)
            try:
                subprocess.run(["cp", "-a", str(mnt / "upper"), str(dest / "upper")], check=True)
            finally:
                subprocess.run(["umount", str(mnt)], check=True)
            return dest / "upper"
        with open(self.root / "checkpoints" / cid / "upper.pma", "rb") as f:
            read_archive(f, dest, allow_devices=True)
        upper = dest / "upper"
        upper.mkdir(exist_ok=True)
        return upper

    # -- machine limits ---------------------------------------------------------------------------
    def limits(self) -> dict[str, float]:
        test = self.root / "tmp" / "dd.bin"
        n_mib = 512
        secs = sh(f"dd if=/dev/zero of={test} bs=4M count={n_mib // 4} conv=fsync status=none")
        dd = n_mib / secs
        rnd = self.workdir / "random.bin"
        sh(f"head -c {256 * MiB} /dev/urandom > {rnd}")
        secs = sh(f"zstd -q -T0 -1 -c {rnd} > /dev/null")
        zstd_rand = 256 / secs
        sh(f"head -c {256 * MiB} /dev/zero > {test}")
        secs = sh(f"zstd -q -T0 -1 -c {test} > /dev/null")
        zstd_zero = 256 / secs
        t_cli, _ = self.pm("ps")
        for p in (test, rnd):
            p.unlink()
        return {"dd_fsync_MBps": round(dd, 1), "zstd1_T0_random_MBps": round(zstd_rand, 1),
                "zstd1_T0_zeros_MBps": round(zstd_zero, 1), "cli_ps_ms": round(t_cli * 1000, 1)}


def ratios(m: dict[str, float]) -> dict[str, float]:
    def div(a: str, b: str) -> float:
        return round(m[a] / m[b], 3) if m.get(b) and a in m else float("nan")

    return {
        "lr-exp frozen / plain (goal <= 1.10)": div("pm_export_frozen_ms", "ab_plain_frozen_ms"),
        "lr-exp frozen / plain, per pair": round(m.get("pair_ratio", float("nan")), 3),
        "lr-exp frozen / plain, per pair, by order": round(m.get("pair_ratio_balanced", float("nan")), 3),
        "export, trees copied frozen / plain, per run": round(m.get("whole_pair_ratio", float("nan")), 3),
        "lr-exp memwrite / plain": div("pm_export_memwrite_ms", "ab_plain_memwrite_ms"),
        "frozen (goal <= 1.10)": div("pm_frozen_ms", "raw_frozen_ms"),
        "export (goal <= 0.80)": div("pm_export_wall_ms", "raw_export_wall_ms"),
        "restore (goal <= 1.15)": div("pm_restore_wall_ms", "raw_restore_ms"),
        "import (goal <= 1.00)": div("pm_import_wall_ms", "raw_import_ms"),
        "restore, engine only": div("pm_restore_total_ms", "raw_restore_ms"),
        "import, engine only": div("pm_import_total_ms", "raw_import_ms"),
        "export, engine only": div("pm_export_total_ms", "raw_export_wall_ms"),
    }


def lr_export_goal(result: dict[str, Any]) -> str:
    """The issue's goal line: met only when the ratio of the medians and the median of the
    per-pair ratios are both within it."""
    got = ratios(result["median"])
    medians, pairs = got["lr-exp frozen / plain (goal <= 1.10)"], got["lr-exp frozen / plain, per pair, by order"]
    met = "met" if max(medians, pairs) <= 1.10 else "NOT met"  # NaN compares False: not met
    if medians != medians or pairs != pairs:
        met = "NOT met"
    return (f"frozen leave-running export / plain, {result['size_mib']} MiB: measured {pairs:.2f} (per-pair ratios: "
            f"median per order, geometric mean; ratio of medians {medians:.2f}) / goal 1.1x / {met}")


def print_table(results: list[dict[str, Any]], limits: dict[str, float]) -> None:
    rows = [
        ("frozen ms: pymigrate stats.frozen_ms", "pm_frozen_ms"),
        ("frozen ms: raw criu frozen_time", "raw_frozen_ms"),
        ("frozen ms: plain --leave-running (A B pair)", "ab_plain_frozen_ms"),
        ("frozen ms: --leave-running --export (pair)", "pm_export_frozen_ms"),
        ("  of which CRIU memwrite: plain", "ab_plain_memwrite_ms"),
        ("  of which CRIU memwrite: export", "pm_export_memwrite_ms"),
        ("  frozen beyond CRIU's dump: plain", "ab_plain_beyond_dump_ms"),
        ("  frozen beyond CRIU's dump: export", "pm_export_beyond_dump_ms"),
        ("  same, export step (after raw dump)", "pm_export_step_frozen_ms"),
        ("frozen ms: export, trees copied frozen", "pm_whole_frozen_ms"),
        ("  total ms (stats.total_ms): plain", "ab_plain_total_ms"),
        ("  total ms (stats.total_ms): export", "pm_export_pair_total_ms"),
        ("frozen ms: --export (stopped after)", "pm_stopped_export_frozen_ms"),
        ("raw criu dump wall ms", "raw_dump_wall_ms"),
        ("export wall ms: pymigrate CLI", "pm_export_wall_ms"),
        ("export ms: pymigrate stats.total_ms", "pm_export_total_ms"),
        ("export wall ms: criu dump + tar|zstd", "raw_export_wall_ms"),
        ("restore wall ms: pymigrate CLI", "pm_restore_wall_ms"),
        ("restore ms: pymigrate stats.total_ms", "pm_restore_total_ms"),
        ("restore ms: criu restore only", "raw_restore_ms"),
        ("import wall ms: pymigrate CLI", "pm_import_wall_ms"),
        ("import ms: pymigrate stats.total_ms", "pm_import_total_ms"),
        ("import ms: zstd|tar + criu restore", "raw_import_ms"),
        ("  of which zstd -d | tar -x", "raw_untar_ms"),
    ]
    head = f"{'median of ' + str(results[0]['runs']) + ' runs':42}" + "".join(f"{str(r['size_mib']) + ' MiB':>12}" for r in results)
    print(head)
    print("-" * len(head))
    rows = [(label, key) for label, key in rows if any(key in r["median"] for r in results)]  # --only: measured rows
    for label, key in rows:
        print(f"{label:42}" + "".join(f"{r['median'].get(key, float('nan')):12.1f}" for r in results))
    print("-" * len(head))
    for label in ratios(results[0]["median"]):
        if all(ratios(r["median"])[label] != ratios(r["median"])[label] for r in results):  # NaN: not measured
            continue
        print(f"{'ratio ' + label:42}" + "".join(f"{ratios(r['median'])[label]:12.2f}" for r in results))
    print("-" * len(head))
    for label, key in (("raw images MiB", "images_bytes"), ("archive MiB", "archive_bytes"), ("raw tar.zst MiB", "raw_tar_zst_bytes")):
        print(f"{label:42}" + "".join(f"{r['bytes'].get(key, 0) / MiB:12.1f}" for r in results))
    print(f"{'archive / raw images':42}" + "".join(f"{r['bytes']['archive_bytes'] / r['bytes']['images_bytes']:12.3f}" for r in results))
    for shown, label in (("lr-export goal <= 1.10 met (medians)", "lr-exp frozen / plain (goal <= 1.10)"),
                         ("lr-export goal <= 1.10 met (per pair)", "lr-exp frozen / plain, per pair")):
        met = ["yes" if ratios(r["median"])[label] <= 1.10 else "no" for r in results]
        print(f"{shown:42}" + "".join(f"{v:>12}" for v in met))
    print()
    for r in results:
        print(lr_export_goal(r))
    print()
    print("machine (same run): " + ", ".join(f"{k}={v}" for k, v in limits.items()))
    print("memory warmed (2 x size + 512 MiB touched and freed) before every timed step, both sides; A B interleaved")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.py checkpoint", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="64,256,1024", help="memhog sizes in MiB, comma separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=("frozen",), default=None,
                    help="frozen: only the plain checkpoint and the --leave-running export per run")
    ap.add_argument("--stopped-export", action="store_true",
                    help="once per size, at its end: checkpoint --export without --leave-running (stops it)")
    ap.add_argument("--volume-mib", type=int, default=0,
                    help="with --only frozen: a named volume of N MiB on memhog (an export carries it)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temporary state root (default /tmp)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.py checkpoint: needs root", file=sys.stderr)
        return 2
    if args.volume_mib and args.only != "frozen":
        print("bench.py checkpoint: --volume-mib needs --only frozen (the raw CRIU steps declare no volume)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s]
    workdir = Path(tempfile.mkdtemp(prefix="pmbench-", dir=args.workdir))
    bench = Bench(workdir)
    bench.volume_mib = args.volume_mib
    started = time.monotonic()
    try:
        bench.setup()
        limits = bench.limits()
        results = []
        for size in sizes:
            results.append(bench.size(size, args.runs, only_frozen=args.only == "frozen", stopped_export=args.stopped_export))
            print(f"bench: {size} MiB done at {time.monotonic() - started:.0f}s", file=sys.stderr)
    finally:
        bench.teardown()
    if args.json:
        out = {"limits": limits, "warm": "2 x size + 512 MiB touched before every timed step; A B interleaved",
               "results": [{**r, "ratios": ratios(r["median"]), "lr_export_goal": lr_export_goal(r)} for r in results]}
        print(json.dumps(out, indent=1))
    else:
        print_table(results, limits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
