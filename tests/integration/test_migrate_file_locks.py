"""A container holding a file lock (a SQLite writer mid-transaction; here tests/workloads/locker.c,
which holds an fcntl write lock as SQLite does)
migrates with ``--file-locks``; without it CRIU refuses, the migration fails naming CRIU's own
reason, and the container goes on running on the source at once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import Hosts
from tests.integration.test_live_migration import Lab, info, status
from tests.integration.workloads import static_workload_tar

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "pycriu", "busybox", "netns")]

LOCKER = ("/bin/locker",)


@pytest.fixture
def lock_lab(tmp_path: Path) -> Iterator[Lab]:
    with Hosts(2) as hosts:
        lab = Lab(hosts, tmp_path)
        tar = static_workload_tar(tmp_path, "locker")
        for h in (lab.a, lab.b):
            h.start_daemon(lab.addr(h), extra_args=["--insecure"])
        r = lab.a.cli(["image", "import", "locker", str(tar)])
        assert r.returncode == 0, r.stderr.decode()
        yield lab


def _locks_held(lab: Lab, host, name: str) -> str:  # noqa: ANN001
    r = host.cli(["exec", name, "cat", "/proc/locks"])
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def _counter(host, name: str) -> int:  # noqa: ANN001
    merged = Path(info(host, name).bundle_dir) / "merged" / "tmp" / "cnt"
    for _ in range(100):
        try:
            return int(merged.read_text())
        except (OSError, ValueError):
            time.sleep(0.01)
    raise AssertionError("no counter")


def test_migrate_keeps_a_held_file_lock_only_with_file_locks(lock_lab: Lab) -> None:
    lab = lock_lab
    lab.run(lab.a, "locker", "locker", *LOCKER)
    time.sleep(0.5)
    assert "POSIX  ADVISORY  WRITE" in _locks_held(lab, lab.a, "locker")

    started = time.monotonic()
    rc, _, err = lab.migrate(lab.a, lab.b, "locker")
    failed_after_s = time.monotonic() - started
    assert rc != 0
    # CRIU's own reason, not a symptom of it (the archive stream cut short)
    assert "file locks" in err.lower(), err
    assert "truncated archive" not in err, err
    assert status(lab.a, "locker") == "running" and status(lab.b, "locker") is None
    before = _counter(lab.a, "locker")
    time.sleep(0.3)
    assert _counter(lab.a, "locker") > before, "the source copy must run again after the failed attempt"
    print(f"\nfailed migration answered in {failed_after_s:.2f} s")

    rc, result, err = lab.migrate(lab.a, lab.b, "locker", "--file-locks")
    assert rc == 0, err
    assert status(lab.a, "locker") is None and status(lab.b, "locker") == "running"
    assert "POSIX  ADVISORY  WRITE" in _locks_held(lab, lab.b, "locker")
    before = _counter(lab.b, "locker")
    time.sleep(0.3)
    assert _counter(lab.b, "locker") > before
    lab.remove(lab.b, "locker")
