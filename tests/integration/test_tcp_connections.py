"""A client's TCP connection survives a local checkpoint + restore and a migration, and no host
ever answers for the container with a RST while its sockets are not there.

The server is busybox ``nc -ll -p 7000 -e cat`` (an echo server, one ``cat`` per connection);
the client (tests/integration/tcp_probe_client.py) holds one connection doing a round trip every
10 ms, and beside it tries a new connection every 10 ms: a refused attempt (ECONNREFUSED) is a RST
from a host that had the container's address up while the listening socket was not restored yet.

- local checkpoint: after the dump the container is killed; its link must already be down, or its
  dying sockets send FIN/RST to the client and the checkpoint's connections cannot be restored
  (``Can't restore not-sent send queue data ... Connection reset by peer``).
- migration (cold and post-copy): the target's link must come up only after CRIU restored the
  sockets, or a client packet arriving in between gets a RST from the new host.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import Hosts
from tests.integration.test_live_migration import Lab, status
from tests.integration.test_live_migration_redis import Segment
from tests.integration.workloads import inspect, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "pycriu", "busybox", "netns")]

PORT = 7000
ECHO_SERVER = ("nc", "-ll", "-p", str(PORT), "-e", "cat")
CLIENT = Path(__file__).with_name("tcp_probe_client.py")
SERVER_IP = "10.77.4.4"
PLACEHOLDER_IP = "10.77.9.10"


def _listening(prefix: list[str], ip: str) -> bool | None:
    probe = f"import socket; socket.create_connection(({ip!r}, {PORT}), timeout=1).close()"
    return subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True).returncode == 0 or None


def _start_client(prefix: list[str], ip: str) -> tuple[subprocess.Popen, dict]:
    client = subprocess.Popen(
        [*prefix, sys.executable, str(CLIENT), ip, str(PORT)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert client.stdout is not None
    line = client.stdout.readline()
    assert line, client.stderr.read() if client.stderr else "client died"
    return client, json.loads(line)


def _stop_client(client: subprocess.Popen) -> dict:
    assert client.stdin is not None
    client.stdin.write("stop\n")
    client.stdin.flush()
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_local_checkpoint_keeps_the_connection_it_saved(pm, pm_root: Path) -> None:  # noqa: ANN001
    name = f"echo-{int(time.time() * 1000) % 100000}"
    r = pm("run", "-d", "--name", name, "busybox", *ECHO_SERVER)
    assert r.returncode == 0, r.stderr
    ip = inspect(pm_root, name).spec.ip
    wait_for(lambda: _listening([], ip), 20, "the echo server to listen")
    client, ready = _start_client([], ip)
    try:
        time.sleep(0.3)
        r = pm("checkpoint", name, "--tcp-established", "--json")
        assert r.returncode == 0, r.stderr
        checkpoint_id = json.loads(r.stdout)["checkpoint_id"]
        assert inspect(pm_root, name).state.status == "exited"
        time.sleep(1.0)  # a FIN or RST sent by the dying copy would reach the client in here
        r = pm("restore", checkpoint_id)
        assert r.returncode == 0, r.stderr
        time.sleep(1.5)
        result = _stop_client(client)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
        pm("rm", "-f", name)
    assert result["held_error"] is None, f"the held connection broke: {result}"
    assert result["ok"] > 20, result
    assert result["local_port"] == ready["local_port"]


@pytest.fixture
def echo_lab(tmp_path: Path) -> Iterator[Lab]:
    with Hosts(2) as hosts:
        lab = Lab(hosts, tmp_path)
        for h in (lab.a, lab.b):
            h.start_daemon(lab.addr(h), extra_args=["--insecure"])
            r = h.cli(["image", "build-busybox", "busybox"])
            assert r.returncode == 0, r.stderr.decode()
        yield lab


@pytest.mark.parametrize("mode", ["cold", "postcopy"])
def test_target_link_comes_up_only_after_the_sockets_are_restored(echo_lab: Lab, mode: str) -> None:
    lab = echo_lab
    r = lab.a.cli(["run", "-d", "--name", "echo", "--ip", SERVER_IP, "busybox", *ECHO_SERVER])
    assert r.returncode == 0, r.stderr.decode()
    r = lab.b.cli(["run", "-d", "--name", "placeholder", "--ip", PLACEHOLDER_IP, "busybox", "sleep", "100000"])
    assert r.returncode == 0, r.stderr.decode()
    segment = Segment(lab)
    client = None
    try:
        prefix = ["nsenter", f"--net=/run/netns/{segment.client_ns}"]
        wait_for(lambda: _listening(prefix, SERVER_IP), 20, "the echo server to listen")
        client, ready = _start_client(prefix, SERVER_IP)
        time.sleep(0.5)
        rc, result, err = lab.migrate(lab.a, lab.b, "echo", "--mode", mode, "--tcp-established")
        assert rc == 0, err
        assert status(lab.a, "echo") is None and status(lab.b, "echo") == "running"
        time.sleep(1.5)
        seen = _stop_client(client)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.communicate()
        segment.close()
        for h in (lab.a, lab.b):
            h.cli(["rm", "-f", "echo"])
        lab.b.cli(["rm", "-f", "placeholder"])
    print(f"\n{mode}: pause {result['stats']['frozen_ms']:.0f} ms, client-seen {seen['max_gap_ms']:.0f} ms, "
          f"{seen['probes']} probes, {seen['refused']} refused")
    assert seen["refused"] == 0, f"a host answered for the container with a RST: {seen}"
    assert seen["held_error"] is None, f"the held connection broke: {seen}"
    assert seen["local_port"] == ready["local_port"]
    assert seen["probe_ok"] > 0, seen  # the probe did reach the server (before and after)


SINGLE_ECHO_SERVER = ("nc", "-l", "-p", str(PORT), "-e", "cat")  # one connection; nc execs cat: one process
# A client used to see the pause plus ~1 s: the target set the restored container's link up only
# after CRIU resumed its tasks, so the first packet they sent needed an ARP request that was
# dropped at the down link and retried after neigh retrans_time (1 s; measured 973-1019 ms over
# 12 moves). Now the link comes up at CRIU's pre-resume notification and the incomplete
# neighbour entries are flushed (runtime.restore_start.link_up_before_resume). What may remain is the
# client's own backoff when its request was lost (not ACKed by the frozen kernel): its next
# retransmission, < 0.8 s after a pause of up to ~0.6 s.
EXTRA_BOUND_MS = 800.0


@pytest.mark.parametrize("mode", ["cold", "postcopy"])
def test_client_sees_the_pause_not_a_second_more(echo_lab: Lab, mode: str) -> None:
    lab = echo_lab
    r = lab.a.cli(["run", "-d", "--name", "echo1", "--ip", SERVER_IP, "busybox", *SINGLE_ECHO_SERVER])
    assert r.returncode == 0, r.stderr.decode()
    r = lab.b.cli(["run", "-d", "--name", "placeholder", "--ip", PLACEHOLDER_IP, "busybox", "sleep", "100000"])
    assert r.returncode == 0, r.stderr.decode()
    segment = Segment(lab)
    client = None
    try:
        prefix = ["nsenter", f"--net=/run/netns/{segment.client_ns}"]
        time.sleep(1.0)  # no listening probe: it would take the server's only accept
        client, ready = _start_client(prefix, SERVER_IP)
        time.sleep(0.5)
        rc, result, err = lab.migrate(lab.a, lab.b, "echo1", "--mode", mode, "--tcp-established")
        assert rc == 0, err
        time.sleep(2.0)
        seen = _stop_client(client)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.communicate()
        segment.close()
        for h in (lab.a, lab.b):
            h.cli(["rm", "-f", "echo1"])
        lab.b.cli(["rm", "-f", "placeholder"])
    frozen_ms = result["stats"]["frozen_ms"]
    print(f"\n{mode}: pause {frozen_ms:.0f} ms, client-seen {seen['max_gap_ms']:.0f} ms")
    assert seen["held_error"] is None, f"the held connection broke: {seen}"
    assert seen["local_port"] == ready["local_port"]
    assert seen["max_gap_ms"] < frozen_ms + EXTRA_BOUND_MS, (
        f"the client waited {seen['max_gap_ms']:.0f} ms for a {frozen_ms:.0f} ms pause: {seen}")
