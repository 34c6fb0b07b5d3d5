"""``run -d --rm``, ``--read-only`` and ``--cap-add/--cap-drop`` across a live migration (issue 13):
the target's copy keeps all three, the source's kill by the migration does not trigger its
shim's removal of a ``--keep-source`` copy, and the restored copy is removed on the target when
it exits by itself there."""

from __future__ import annotations

import json
import time

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

NAME = "flags"


def test_rm_read_only_and_caps_survive_a_migration(make_hosts) -> None:  # noqa: ANN001
    from runtime.capabilities import CAP_NET_RAW, CAP_SYS_ADMIN, DEFAULT_CAPS, mask

    a, b = make_hosts(2)
    addr = start_tcp_daemons([a, b])
    a.cli(["image", "build-busybox", "busybox"], check=True)
    a.cli(["run", "-d", "--rm", "--read-only", "--cap-drop", "NET_RAW", "--cap-add", "SYS_ADMIN", "--name", NAME,
           "busybox", "sh", "-c", COUNTER_CMD.replace("/www", "/dev/shm/www")], check=True)  # / is read-only
    wait_counting_past(a, NAME, 3)
    r = a.cli(["--insecure", "migrate", NAME, addr["b"], "--keep-source", "--json"])
    assert r.returncode == 0, r.stderr.decode()
    migrate_json(r.stdout)

    time.sleep(1.0)  # the source's shim saw the kill: a --keep-source copy must stay
    assert names_by_status(a) == {NAME: "exited"} and names_by_status(b) == {NAME: "running"}
    spec = json.loads(b.cli(["inspect", NAME], check=True).stdout)[0]["spec"]
    assert (spec["auto_remove"], spec["read_only"], spec["cap_add"], spec["cap_drop"]) == (
        True, True, ["CAP_SYS_ADMIN"], ["CAP_NET_RAW"])
    out = b.cli(["exec", NAME, "sh", "-c", "touch /x 2>/dev/null && echo rw || echo ro; grep CapEff /proc/1/status"],
                check=True).stdout.decode().split()
    assert out[0] == "ro" and int(out[-1], 16) == mask((DEFAULT_CAPS - {CAP_NET_RAW}) | {CAP_SYS_ADMIN})

    b.cli(["kill", NAME], check=True)  # an exit of its own on b: its shim there removes it
    deadline = time.monotonic() + 15
    while names_by_status(b) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert names_by_status(b) == {}
    a.cli(["rm", NAME], check=True)
    assert leftovers(a) == [] and leftovers(b) == []
