"""The upper layer moves before the freeze; only its changes move during the pause (issue 7).

Two hosts (network namespaces with their own daemons over TCP), a container that keeps writing
to its upper layer: a few hundred static files and 8 MiB of random data written before the
migration, then a loop that appends to a log, replaces a counter file, creates a new file and
deletes the previous one every 5 ms. After a cold and a post-copy migration the target's upper
layer must hold exactly what the source had at the freeze (the static files, the big file's
bytes, no deleted file back, a log without gap or duplicate) and the loop goes on from there,
while the result says only a handful of entries were sent during the pause.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import Host
from tests.integration.migration_lab import IMAGE, Lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "criu", "pycriu", "netns", "busybox", "overlay"),
]

STATIC = 400
WRITER = (
    "mkdir -p /data/static; i=0; while [ $i -lt %d ]; do echo static-$i > /data/static/f$i; i=$((i+1)); done; "
    "dd if=/dev/urandom of=/data/big bs=1M count=8 2>/dev/null; rm /data/static/f7; "
    "n=0; while true; do n=$((n+1)); echo $n > /data/g$n; rm -f /data/g$((n-1)); echo $n >> /data/log; "
    "echo $n > /data/counter.tmp; mv /data/counter.tmp /data/counter; usleep 5000; done"
) % STATIC


@pytest.fixture(scope="module")
def lab_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("upper-presync"))


@pytest.fixture
def lab(lab_workdir: Path) -> Iterator[Lab]:
    with Lab.create(lab_workdir) as made:
        yield made


def merged(host: Host, name: str) -> Path:
    from runtime.runtime import Runtime

    return Path(Runtime(host.root).inspect(name).bundle_dir) / "merged"


def counter(host: Host, name: str) -> int | None:
    try:
        text = (merged(host, name) / "data" / "counter").read_text().strip()
    except (OSError, Exception):  # not there yet, or the container is gone
        return None
    return int(text) if text.isdigit() else None


def wait_counter(host: Host, name: str, above: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = counter(host, name)
        if value is not None and value > above:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{name} on host {host.letter}: the counter did not pass {above} within {timeout_s}s")


@pytest.mark.parametrize("mode", ["cold", "postcopy"])
def test_upper_layer_moves_before_the_freeze_and_only_changes_during_it(lab: Lab, mode: str) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    name = f"writer-{mode}"
    r = a.cli(["run", "-d", "--name", name, IMAGE, "sh", "-c", WRITER])
    assert r.returncode == 0, r.stderr.decode()
    try:
        before = wait_counter(a, name, 20)
        big = hashlib.sha256((merged(a, name) / "data" / "big").read_bytes()).hexdigest()
        r = lab.remote(a, ["migrate", name, lab.addr(b), "--mode", mode, "--json"], timeout=300)
        assert r.returncode == 0, r.stderr.decode()
        stats = json.loads(r.stdout)["stats"]
        # staged while running: the pause carried only the loop's few changes, not 400 files and 8 MiB
        assert 0 <= stats["upper_entries_frozen"] <= 40, stats
        assert stats["phases_ms"].get("stage", 0) > 0, stats

        after = wait_counter(b, name, before + 20)  # it goes on, on the target
        root = merged(b, name) / "data"
        assert hashlib.sha256((root / "big").read_bytes()).hexdigest() == big
        static = sorted(p.name for p in (root / "static").iterdir())
        assert static == sorted(f"f{i}" for i in range(STATIC) if i != 7)
        assert all((root / "static" / f"f{i}").read_text() == f"static-{i}\n" for i in range(STATIC) if i != 7)
        # the file deleted before the migration stays deleted; one (or, mid-step, two) g files
        gs = sorted(int(p.name[1:]) for p in root.glob("g*"))
        assert 1 <= len(gs) <= 2 and gs[-1] >= after - 2, gs
        # every line once, in order: nothing the source wrote before the freeze lost or doubled
        lines = [int(x) for x in (root / "log").read_text().split()]
        assert lines[: len(lines) - 1] == list(range(1, len(lines))), "the log has a gap or a duplicate"
        assert lines[-1] >= after - 1
        assert counter(a, name) is None, "the source copy must be gone"
    finally:
        for host in (a, b):
            host.cli(["rm", "-f", name])
