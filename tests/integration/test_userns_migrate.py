"""A --userns container across checkpoint/restore, export/import into another state root and live
migration between two hosts, cold and post-copy (issue 20): still counting, its files intact with
their owners, still unprivileged outside, on a range of the target's pool (the hosts of this lab
share one machine, so the source still holds its range and the target must take another: the
upper layer's ids and the dumped id maps are moved, runtime/userns_restore.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.hosts import make_hosts  # noqa: F401  (fixture)
from tests.integration.migrate_helpers import (
    COUNTER_CMD,
    leftovers,
    migrate_json,
    names_by_status,
    start_tcp_daemons,
    wait_counting_past,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay"),
]

NAME = "uns"
SETUP = "echo kept > /owned && chown 33:44 /owned && "


def _inspect(host: Any, name: str) -> dict[str, Any]:
    return json.loads(host.cli(["inspect", name], check=True).stdout)[0]


def _host_ids(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def _check_moved(host: Any, name: str) -> int:
    """Its range here: the init unprivileged on the host, root inside, files with their owners."""
    info = _inspect(host, name)
    base, pid = info["spec"]["userns_base"], info["state"]["pid"]
    assert base >= 65536 and _host_ids(pid) == (base, base)
    assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", str(base), "65536"]
    out = host.cli(["exec", name, "sh", "-c", "id -u; stat -c %u:%g /owned; cat /owned"], check=True).stdout.decode().split()
    assert out == ["0", "33:44", "kept"], out
    st = (Path(f"/proc/{pid}/root") / "owned").stat()
    assert (st.st_uid, st.st_gid) == (base + 33, base + 44)  # the host's view: moved with the range
    return int(base)


def test_checkpoint_restore_and_export_import_to_another_root(make_hosts, tmp_path: Path) -> None:  # noqa: ANN001
    a, b = make_hosts(2)
    a.cli(["image", "build-busybox", "busybox"], check=True)
    b.cli(["image", "build-busybox", "busybox"], check=True)
    a.cli(["run", "-d", "--userns", "auto", "--name", NAME, "busybox", "sh", "-c", SETUP + COUNTER_CMD], check=True)
    counts = wait_counting_past(a, NAME, 3)
    base = _check_moved(a, NAME)
    ckpt = json.loads(a.cli(["checkpoint", NAME, "--json"], check=True).stdout)["checkpoint_id"]
    a.cli(["restore", ckpt], check=True)
    after = wait_counting_past(a, NAME, counts[-1] + 2)
    assert _check_moved(a, NAME) == base  # its own range again: still its claim

    archive = tmp_path / "uns.pma"
    a.cli(["checkpoint", NAME, "--export", str(archive)], check=True)  # the exited record keeps its range
    b.cli(["restore", "--import", str(archive)], check=True)
    wait_counting_past(b, NAME, after[-1] + 2)
    assert _check_moved(b, NAME) != base  # another range: the ids moved on the way in
    b.cli(["rm", "-f", NAME], check=True)
    a.cli(["rm", "-f", NAME], check=True)
    a.cli(["checkpoint", "rm", ckpt], check=True)
    assert leftovers(a) == [] and leftovers(b) == []


UFFD_SYSCTL = Path("/proc/sys/vm/unprivileged_userfaultfd")


@pytest.mark.parametrize("mode", ["cold", "postcopy"])
def test_live_migration_keeps_it_unprivileged_and_counting(make_hosts, mode: str) -> None:  # noqa: ANN001
    a, b = make_hosts(2)
    addr = start_tcp_daemons([a, b])
    a.cli(["image", "build-busybox", "busybox"], check=True)
    a.cli(["run", "-d", "--userns", "auto", "--name", NAME, "busybox", "sh", "-c", SETUP + COUNTER_CMD], check=True)
    counts = wait_counting_past(a, NAME, 3)
    base_a = _check_moved(a, NAME)
    saved = UFFD_SYSCTL.read_text()
    try:
        if mode == "postcopy":
            # its restored tasks are unprivileged on the host: they may open a userfaultfd only with this
            UFFD_SYSCTL.write_text("0")
            r = a.cli(["--insecure", "migrate", NAME, addr["b"], "--mode", mode, "--json"])
            err = json.loads(r.stdout or b"{}") if r.stdout else {}
            assert r.returncode != 0 and "unprivileged_userfaultfd" in r.stdout.decode() + r.stderr.decode(), (r, err)
            state = _inspect(a, NAME)["state"]  # refused before the freeze
            assert state["status"] == "running" and state["frozen_by"] is None and names_by_status(b) == {}
            UFFD_SYSCTL.write_text("1")
        r = a.cli(["--insecure", "migrate", NAME, addr["b"], "--mode", mode, "--keep-source", "--json"])
    finally:
        UFFD_SYSCTL.write_text(saved)
    assert r.returncode == 0, r.stderr.decode()
    assert migrate_json(r.stdout)["mode"] == mode
    assert names_by_status(a) == {NAME: "exited"} and names_by_status(b) == {NAME: "running"}
    wait_counting_past(b, NAME, counts[-1] + 2)
    assert _check_moved(b, NAME) != base_a  # a still holds its range (--keep-source): b took another
    b.cli(["rm", "-f", NAME], check=True)
    a.cli(["rm", NAME], check=True)
    assert leftovers(a) == [] and leftovers(b) == []
