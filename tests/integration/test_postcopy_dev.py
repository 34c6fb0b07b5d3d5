"""Post-copy moves a container's /dev and empty /dev/shm as CRIU external mounts, which the target
builds from the runtime's plan (runtime/dev_mounts.py), instead of CRIU's tar copies; a /dev/shm
holding a file keeps CRIU's copy, so the file arrives.

Real daemons in network-namespace hosts, a real memhog (its memory checksum checked after each
move). The check the source makes is asked of the real container first (else the test would pass
with CRIU copying everything as before); after the move the container's /dev lists the plan's
entries, its mounts keep their types and flags, /dev/shm is still a writable tmpfs of its own, and
the target keeps no mount or directory of its own for them.
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


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab.create(tmp_path) as made:
        yield made


def _init(host: Host, name: str):  # noqa: ANN202
    from runtime.runtime import Runtime

    return Runtime(host.root).inspect(name)


def _dev_mounts(pid: int) -> dict[str, tuple[str, str, str]]:
    """mount point -> (fstype, source, per-mount options) of /dev and below, and the masks' binds of /dev."""
    out = {}
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fields, fs = head.split(), tail.split()
            if fields[4].startswith("/dev") or fields[3] != "/":
                out[fields[4]] = (fs[0], fs[1], fields[5])
    return out


def _move(lab: Lab, src: Host, dst: Host, name: str, before: tuple[str, int] | None) -> int:
    r = lab.remote(src, ["migrate", name, lab.addr(dst), "--mode", "postcopy", "--json"], timeout=300)
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    after = lab.report(dst, name, timeout_s=20)
    assert before is not None and after is not None and after[0] == before[0], (before, after)
    assert not list((dst.root / "tmp").glob("restore-*-dev")), "the target's /dev mounts stayed"
    return int(_init(dst, name).state.pid)


def test_dev_and_an_empty_shm_move_as_external_mounts(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    lab.run_memhog(a, "devx", 16)
    info = _init(a, "devx")
    pid = int(info.state.pid)
    assert dump_externals(pid, info.spec) == ("mnt[/dev]:pymigrate-dev", "mnt[/dev/shm]:pymigrate-dev-shm")
    mounts = _dev_mounts(pid)
    before = lab.report(a, "devx")
    pid = _move(lab, a, b, "devx", before)
    assert set(os.listdir(f"/proc/{pid}/root/dev")) == set(expected_entries())
    assert os.listdir(f"/proc/{pid}/root/dev/shm") == []
    assert _dev_mounts(pid) == mounts  # types, sources, flags; the masks still bound from /dev
    shm = Path(f"/proc/{pid}/root/dev/shm/written-after")
    shm.write_text("x")  # a tmpfs of its own, writable
    assert os.stat(shm).st_dev != os.stat(f"/proc/{pid}/root/dev/null").st_dev
    shm.unlink()
    # the restored container passes the same check: the next move goes the same way
    restored = _init(b, "devx")
    assert dump_externals(pid, restored.spec) != ()
    _move(lab, b, a, "devx", before)


def test_a_file_in_dev_shm_keeps_criu_copy_and_arrives(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    lab.run_memhog(a, "shmx", 16)
    info = _init(a, "shmx")
    pid = int(info.state.pid)
    masked = Path(f"/proc/{pid}/root/dev/.masked/shown-in-proc-acpi")
    masked.write_text("x")  # what the masks show: CRIU's copy carries it
    assert dump_externals(pid, info.spec) == ()
    masked.unlink()
    assert dump_externals(pid, info.spec) != ()
    Path(f"/proc/{pid}/root/dev/shm/segment").write_bytes(b"shared memory\n" * 100)
    assert dump_externals(pid, info.spec) == ()
    pid = _move(lab, a, b, "shmx", lab.report(a, "shmx"))
    assert Path(f"/proc/{pid}/root/dev/shm/segment").read_bytes() == b"shared memory\n" * 100
