"""A ``run -dit`` shell migrated live between two daemons (issue 13): the target's shim owns the
terminal CRIU made anew there (the restore begun before the images arrived: RestoreShell), and
``attach`` on the target reaches the same shell, with its variables."""

from __future__ import annotations

import json

import pytest

from tests.integration.hosts import make_hosts  # noqa: F401  (fixture)
from tests.integration.migrate_helpers import leftovers, migrate_json, names_by_status, start_tcp_daemons
from tests.integration.test_terminal import CTRL_P_CTRL_Q, PROMPT, Terminal

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay"),
]

NAME = "shell"


def test_a_terminal_shell_keeps_its_state_across_a_migration(make_hosts) -> None:  # noqa: ANN001
    a, b = make_hosts(2)
    addr = start_tcp_daemons([a, b])
    a.cli(["image", "build-busybox", "busybox"], check=True)
    a.cli(["run", "-dit", "--name", NAME, "busybox", "sh"], check=True)
    t = Terminal(a.root, "attach", NAME)
    try:
        t.expect(PROMPT)
        t.type(b"MOVED=from-a-$((40+2))\r")
        t.expect(PROMPT)
        t.type(CTRL_P_CTRL_Q)
        assert t.wait() == 0
    finally:
        t.kill()

    r = a.cli(["--insecure", "migrate", NAME, addr["b"], "--json"])
    assert r.returncode == 0, r.stderr.decode()
    migrate_json(r.stdout)
    assert names_by_status(b) == {NAME: "running"}
    assert json.loads(b.cli(["inspect", NAME], check=True).stdout)[0]["spec"]["tty"] is True

    t = Terminal(b.root, "attach", NAME)
    try:
        t.type(b"echo $MOVED-on-b\r")
        t.expect(rb"^from-a-42-on-b\r?$")
        t.type(b"exit 4\r")
        assert t.wait() == 4
    finally:
        t.kill()
    b.cli(["rm", NAME], check=True)
    assert leftovers(a) == [] and leftovers(b) == []
