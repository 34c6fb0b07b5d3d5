"""A cold migration moves the container's /dev and empty /dev/shm as CRIU external mounts when the
target restores it through migrate/migration/cold_lazy.py (which binds tmpfs mounts built from the
runtime's plan: runtime/dev_mounts.py), and keeps CRIU's tar copies for a target that restores the
usual way (PYMIGRATE_COLD_LAZY=0 there: its HostInfo says so, and such a restore could not bind them).

Real daemons in network-namespace hosts, a real memhog (its memory checksum checked after each
move). Which way the dump went is read from the source daemon's log line; after the move the
container's /dev lists the plan's entries, /dev/shm is a writable tmpfs of its own, and the target
keeps no mount or directory of its own for them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from runtime.dev_mounts import dump_externals, expected_entries
from tests.integration.hosts import Host
from tests.integration.migration_lab import Lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "criu", "pycriu", "netns", "overlay", "lazy_pages"),
]

EXTERNAL_LINE = "/dev and /dev/shm as external mounts"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab.create(tmp_path) as made:
        yield made


def _pid(host: Host, name: str) -> int:
    from runtime.runtime import Runtime

    return int(Runtime(host.root).inspect(name).state.pid)


def _log(host: Host) -> str:
    return (host.workdir / "daemon.log").read_text(errors="replace")


def _move(lab: Lab, src: Host, dst: Host, name: str, before: tuple[str, int] | None) -> int:
    r = lab.remote(src, ["migrate", name, lab.addr(dst), "--json"], timeout=300)
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    after = lab.report(dst, name, timeout_s=20)
    assert before is not None and after is not None and after[0] == before[0], (before, after)
    assert not list((dst.root / "tmp").glob("restore-*-dev")), "the target's /dev mounts stayed"
    pid = _pid(dst, name)
    assert set(os.listdir(f"/proc/{pid}/root/dev")) == set(expected_entries())
    assert os.listdir(f"/proc/{pid}/root/dev/shm") == []
    shm = Path(f"/proc/{pid}/root/dev/shm/written-after")
    shm.write_text("x")  # a tmpfs of its own, writable
    assert os.stat(shm).st_dev != os.stat(f"/proc/{pid}/root/dev/null").st_dev
    shm.unlink()
    return pid


def test_cold_moves_dev_as_external_mounts(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    lab.run_memhog(a, "cdev", 16)
    from runtime.runtime import Runtime

    info = Runtime(a.root).inspect("cdev")
    # the real container passes the source's check (else the test would pass with CRIU's copies)
    assert dump_externals(int(info.state.pid), info.spec) == ("mnt[/dev]:pymigrate-dev", "mnt[/dev/shm]:pymigrate-dev-shm")
    _move(lab, a, b, "cdev", lab.report(a, "cdev"))
    assert EXTERNAL_LINE in _log(a)
    _move(lab, b, a, "cdev", lab.report(b, "cdev"))  # and back: the restored container goes the same way
    assert EXTERNAL_LINE in _log(b)


def test_a_target_restoring_the_usual_way_gets_criu_copies(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    b.stop_daemon()
    lab.start_daemon(b, env={"PYMIGRATE_COLD_LAZY": "0"})  # restore_container: it could not bind them
    lab.run_memhog(a, "cfull", 16)
    _move(lab, a, b, "cfull", lab.report(a, "cfull"))
    assert EXTERNAL_LINE not in _log(a)
