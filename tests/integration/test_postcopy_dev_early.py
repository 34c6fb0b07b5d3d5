"""A post-copy target makes the /dev mounts CRIU binds (runtime/dev_mounts.TargetDevMounts) as soon
as the archive stream opens, while the source still dumps, not inside the pause after the archive
(migrate/migration/postcopy.py receive_postcopy), and takes them away whatever the end.

Real daemons in network-namespace hosts, a real memhog. A failpoint holds the source right after
its CRIU page server listens, before the archive's last bytes: the target's mounts must exist then
(else the test would pass with them made after the archive, as before). Then the migration either
completes (memory checksum equal) or the link is cut until the target's stream fails (the source
rolls back); either way the target keeps no mount or directory of them.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import Host
from tests.integration.migration_lab import Lab
from tests.integration.test_migrate_settlement import NAME, PEER_TIMEOUT_S, log_size, wait_log, wait_settled

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "criu", "pycriu", "netns", "busybox", "overlay", "lazy_pages"),
]

HOLD_S = 3 * PEER_TIMEOUT_S  # the source's hold at source.dump: long enough for a cut to fail the stream


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.setenv("PYMIGRATE_PEER_TIMEOUT_S", str(PEER_TIMEOUT_S))  # the daemons and CLIs inherit it
    with Lab.create(tmp_path) as made:
        yield made


def _dev_dirs(host: Host) -> list[Path]:
    return list((host.root / "tmp").glob("restore-*-dev"))


def _dev_mounted(host: Host) -> bool:
    prefix = str((host.root / "tmp").resolve()) + "/restore-"
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4].startswith(prefix) for line in f)


def _held_migration(lab: Lab, a: Host, b: Host) -> tuple[subprocess.Popen, tuple[str, int] | None, str]:
    a.stop_daemon()
    lab.start_daemon(a, env={"PYMIGRATE_FAILPOINTS": f"source.dump=sleep:{HOLD_S:g}"})
    cid = str(lab.run_memhog(a, NAME, 32)["spec"]["container_id"])
    before = lab.report(a, NAME)
    mark = log_size(a)
    proc = lab.migrate_popen(a, b, NAME, "--mode", "postcopy")
    wait_log(a, "failpoint source.dump hit", mark, 90, proc)
    return proc, before, cid


@pytest.mark.parametrize("end", ["completes", "link-cut"])
def test_target_dev_mounts_are_made_during_the_dump_and_go_away(lab: Lab, end: str) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    proc, before, cid = _held_migration(lab, a, b)
    veth = f"pmh{lab.hosts.tag}{b.letter}"
    try:
        assert _dev_mounted(b) and len(_dev_dirs(b)) == 1, "no /dev mounts on the target while the source dumps"
        if end == "link-cut":
            subprocess.run(["ip", "link", "set", veth, "down"], check=True)
            time.sleep(2 * PEER_TIMEOUT_S)
            subprocess.run(["ip", "link", "set", veth, "up"], check=True)
        out, err = proc.communicate(timeout=180)
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=False)
    if end == "completes":
        assert proc.returncode == 0, err.decode(errors="replace") + out.decode(errors="replace")
        after = lab.report(b, NAME, timeout_s=20)
        assert before is not None and after is not None and after[0] == before[0], (before, after)
    else:
        assert proc.returncode != 0, out.decode(errors="replace")
        where, problems = wait_settled(lab, a, b, cid)
        assert problems == [] and where == "a", problems
        assert lab.leftovers(b, NAME, cid) == []
    assert not _dev_mounted(b) and _dev_dirs(b) == [], "the target's /dev mounts stayed"
