"""--restart and --init across a live migration, and --network host refused by it (issue 13):
the target's copy keeps its policy and tini as PID 1 and restarts after a crash there; the
migration's kill of the source restarts nothing; a host-network container is refused before
any freeze and keeps running where it is."""

from __future__ import annotations

import json
import os
import signal
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


def _state(host, name: str) -> dict:  # noqa: ANN001
    return json.loads(host.cli(["inspect", name], check=True).stdout)[0]


def test_restart_policy_and_init_move_with_the_container_and_host_network_is_refused(make_hosts) -> None:  # noqa: ANN001
    a, b = make_hosts(2)
    addr = start_tcp_daemons([a, b])
    a.cli(["image", "build-busybox", "busybox"], check=True)
    a.cli(["run", "-d", "--restart", "on-failure:5", "--init", "--name", "kept", "busybox", "sh", "-c", COUNTER_CMD],
          check=True)
    a.cli(["run", "-d", "--network", "host", "--name", "hostnet", "busybox", "sleep", "1000"], check=True)
    wait_counting_past(a, "kept", 3)

    r = a.cli(["--insecure", "migrate", "hostnet", addr["b"], "--json"])
    assert r.returncode == 125, r.stderr.decode()
    error = json.loads(r.stdout)
    assert error["type"] == "Unsupported" and "host's network namespace" in error["error"]
    state = _state(a, "hostnet")["state"]
    assert state["status"] == "running" and state["frozen_by"] is None
    assert "hostnet" not in names_by_status(b)

    r = a.cli(["--insecure", "migrate", "kept", addr["b"], "--json"])
    assert r.returncode == 0, r.stderr.decode()
    migrate_json(r.stdout)
    time.sleep(1.0)  # the source's shim saw the migration's kill: nothing may restart there
    assert "kept" not in names_by_status(a) and names_by_status(b) == {"kept": "running"}
    info = _state(b, "kept")
    assert (info["spec"]["restart"], info["spec"]["init"], info["state"]["restart_count"]) == ("on-failure:5", True, 0)
    pid1 = b.cli(["exec", "kept", "cat", "/proc/1/cmdline"], check=True).stdout.decode().split("\0")
    assert pid1[:2] == ["/.pymigrate/init", "--"]

    os.kill(info["state"]["pid"], signal.SIGKILL)  # a crash on b: its shim there restarts it
    deadline = time.monotonic() + 20
    while _state(b, "kept")["state"]["restart_count"] != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    again = _state(b, "kept")["state"]
    assert again["restart_count"] == 1 and again["status"] == "running" and again["pid"] != info["state"]["pid"]

    b.cli(["rm", "-f", "kept"], check=True)
    a.cli(["rm", "-f", "hostnet"], check=True)
    assert leftovers(a) == [] and leftovers(b) == []
