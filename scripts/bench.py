#!/usr/bin/env python3
"""Benchmarks (not tests), one subcommand each:

    scripts/bench.py checkpoint [--sizes 64,256,1024] [--runs N] [--json]   (scripts/bench_checkpoint.py)
    scripts/bench.py migrate ...                                           (scripts/bench_migrate.py)
    scripts/bench.py client-pause [--modes cold,postcopy,local] [--runs N] (scripts/bench_client_pause.py)
    scripts/bench.py sign [--sizes 256,1024] [--runs N] [--json]            (scripts/bench_sign.py)
    scripts/bench.py images [--runs N] [--parts pull,run,migrate] [--json]  (scripts/bench_images.py)
    scripts/bench.py memory [--parts memory,concurrency] [--json]          (scripts/bench_memory.py)

Each subcommand's module has ``main(argv) -> int``; it is imported only when asked for.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMANDS = {"checkpoint": "bench_checkpoint.py", "migrate": "bench_migrate.py", "client-pause": "bench_client_pause.py",
            "sign": "bench_sign.py", "images": "bench_images.py", "memory": "bench_memory.py"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: bench.py {{{','.join(COMMANDS)}}} [ARGS...]", file=sys.stderr)
        return 2
    path = HERE / COMMANDS[argv[0]]
    if not path.exists():
        print(f"bench.py: {argv[0]}: {path} does not exist yet", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
