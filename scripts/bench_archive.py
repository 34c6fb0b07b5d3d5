#!/usr/bin/env python3
"""Throughput of the checkpoint archive (migrate.archive) against `tar -cf - | zstd -1 -T0`.

Changes nothing on the host outside the work dir given (default /dev/shm/pymigrate-archive-bench,
removed at the end unless --keep). Runs A/B interleaved rounds and prints medians in MB/s.
Usage: .venv/bin/python scripts/bench_archive.py [--size-mib 1024] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from migrate.archive import ArchiveWriter, read_archive


def make_data(path: Path, size_mib: int) -> None:
    """Mostly random: 3 of every 4 MiB random, 1 repetitive text (like pages of a real process)."""
    block = 1 << 20
    text = (b"some repetitive text line for compression %08d\n" * 30000)[:block]
    with open(path, "wb") as f:
        for i in range(size_mib):
            f.write(text if i % 4 == 3 else os.urandom(block))


def warm(size: int) -> None:
    """Touch and free 2*size + 512 MiB first: this VM hands freed memory back to its host and
    re-touching it is slow (see CRIU-NOTES.md); both sides get the same treatment."""
    block = bytearray(2 * size + (512 << 20))
    for i in range(0, len(block), 4096):
        block[i] = 1
    del block


CPU: dict[str, list[float]] = {}


def timed(label: str, size: int, fn) -> float:
    warm(size)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(b, f) - getattr(a, f) for a, b in ((r0, r1), (c0, c1)) for f in ("ru_utime", "ru_stime"))
    CPU.setdefault(label, []).append(cpu)
    return dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/dev/shm/pymigrate-archive-bench"))
    ap.add_argument("--compress", default="zstd", choices=["zstd", "none"])
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work: Path = args.dir
    shutil.rmtree(work, ignore_errors=True)
    src = work / "src"
    src.mkdir(parents=True)
    make_data(src / "pages-1.img", args.size_mib)
    size = args.size_mib << 20
    ours_w, ours_r, tar_w, tar_r = [], [], [], []
    ours_size = tar_size = 0
    try:
        for _ in range(args.rounds):
            out = work / "ours.pmc"

            def write_ours() -> None:
                with open(out, "wb") as sink:
                    with ArchiveWriter(sink, compress=args.compress) as w:
                        w.write_manifest({"bench": True})
                        w.add_tree("images", src)
                        w.close()

            ours_w.append(timed("ours_w", size, write_ours))
            ours_size = out.stat().st_size
            dest = work / "ours-out"
            shutil.rmtree(dest, ignore_errors=True)

            def read_ours() -> None:
                with open(out, "rb") as source:
                    read_archive(source, dest)

            ours_r.append(timed("ours_r", size, read_ours))
            shutil.rmtree(dest)
            out.unlink()

            tarball = work / "out.tar.zst"
            tar_w.append(timed("tar_w", size, lambda: subprocess.run(
                f"tar -cf - -C {work} src | zstd -1 -T0 -q > {tarball}", shell=True, check=True)))
            tar_size = tarball.stat().st_size
            tdest = work / "tar-out"
            tdest.mkdir()
            tar_r.append(timed("tar_r", size, lambda: subprocess.run(
                f"zstd -dc -q {tarball} | tar -xf - -C {tdest}", shell=True, check=True)))
            shutil.rmtree(tdest)
            tarball.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def mbs(ts: list[float]) -> str:
        return f"{size / statistics.median(ts) / 1e6:5.0f} MB/s (median {statistics.median(ts):.2f} s of {len(ts)})"

    def cpu(label: str) -> str:
        return f"cpu {statistics.median(CPU[label]):.2f} s"

    print(f"data: {args.size_mib} MiB mostly random, compress={args.compress}")
    print(f"ours     write {mbs(ours_w)} {cpu('ours_w')}  read {mbs(ours_r)} {cpu('ours_r')}  size {ours_size / size:.3f} of raw")
    print(f"tar|zstd write {mbs(tar_w)} {cpu('tar_w')}  read {mbs(tar_r)} {cpu('tar_r')}  size {tar_size / size:.3f} of raw")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
