"""Published ports across a live migration (issue 13), between two lab hosts with daemons.

The target publishes the same host port for the restored container, so a client dials the NEW
host's address and port and the server (its listening socket restored by CRIU) answers; the
source's rules go with its copy. A host port taken on the target (a listener there) refuses the
migration in its pre-flight, before the freeze: the source copy keeps running, unfrozen, and its
port keeps answering; the target keeps nothing. ``migrate -p`` moves it to another host port
there, and a migration back (post-copy: the lazy restore's path) publishes that port again on
the first host.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.hosts import make_hosts  # noqa: F401  (fixture)
from tests.integration.migrate_helpers import leftovers, migrate_json, names_by_status, start_tcp_daemons
from tests.integration.test_ports import PORT, dial, port_tables, run_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay", "nftables", "lazy_pages"),
]


def test_the_target_publishes_the_port_and_a_taken_port_refuses_before_the_freeze(make_hosts) -> None:  # noqa: ANN001
    a, b = make_hosts(2)
    addr = start_tcp_daemons([a, b])
    a.cli(["image", "build-busybox", "busybox"], check=True)
    run_server(a, "web", f"{PORT}:80")
    assert dial(b, a.address, PORT) == "hello-from-web"

    # a listener on the target's host port: refused in the pre-flight, nothing frozen
    listener = b.popen(["busybox", "nc", "-l", "-p", str(PORT)])
    try:
        deadline = time.monotonic() + 10
        while b":%d " % PORT not in b.run(["ss", "-ltn"]).stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        r = a.cli(["--insecure", "--json", "migrate", "web", addr["b"]])
        assert r.returncode != 0, r.stdout
        err = json.loads(r.stdout)
        assert err["type"] == "PortInUse", err
        assert f"host port 0.0.0.0:{PORT}/tcp is already in use by a host process on the migration target" in err["error"], err
        assert err["hint"]
        state = json.loads(a.cli(["inspect", "web"], check=True).stdout)[0]["state"]
        assert state["status"] == "running" and state["frozen_by"] is None and state["checkpointed"] is False
        assert dial(b, a.address, PORT) == "hello-from-web"  # the source still answers on its port
        assert names_by_status(b) == {} and port_tables(b) == []
        assert leftovers(b) == []

        # migrate -p: the target publishes another host port instead; the client dials the NEW host
        r = a.cli(["--insecure", "--json", "migrate", "web", addr["b"], "-p", f"{PORT + 4}:80"])
        assert r.returncode == 0, r.stderr.decode()
        migrate_json(r.stdout)
        assert names_by_status(a) == {} and names_by_status(b) == {"web": "running"}
        assert dial(a, b.address, PORT + 4) == "hello-from-web"
        assert dial(b, "127.0.0.1", PORT + 4) == "hello-from-web"
        assert port_tables(a) == [] and len(port_tables(b)) == 1
    finally:
        listener.kill()
        listener.wait()

    # and back without -p (post-copy): the same port is published on the first host again
    r = b.cli(["--insecure", "--json", "migrate", "web", addr["a"], "--mode", "postcopy"])  # the lazy restore publishes too
    assert r.returncode == 0, r.stderr.decode()
    assert dial(b, a.address, PORT + 4) == "hello-from-web"
    assert port_tables(b) == [] and len(port_tables(a)) == 1
    spec = json.loads(a.cli(["inspect", "web"], check=True).stdout)[0]["spec"]
    assert spec["ports"] == [{"container_port": 80, "protocol": "tcp", "host_port": PORT + 4, "host_ip": ""}]

    # remote run -p through the target's daemon (RunContainerRequest carries the ports)
    r = a.cli(["--insecure", "--host", addr["b"], "run", "-d", "--name", "remote", "-p", f"{PORT + 3}:80",
               "busybox", "sh", "-c", "exec nc -ll -p 80 -e echo hello-from-remote"])
    assert r.returncode == 0, r.stderr.decode()
    assert dial(a, b.address, PORT + 3) == "hello-from-remote"
    a.cli(["rm", "-f", "web"], check=True)
    b.cli(["rm", "-f", "remote"], check=True)
    assert port_tables(a) == [] and port_tables(b) == []
    assert leftovers(a) == [] and leftovers(b) == []
