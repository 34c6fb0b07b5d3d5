"""--network host and none on the real runtime (issue 13): a host-network container shares the
runtime's network namespace; its checkpoint is refused before anything is frozen."""

from __future__ import annotations

import json
import os
import secrets
import subprocess

import pytest

from tests.integration.cli_helpers import ok, refused, unique

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]


def _links(text: str) -> set[str]:
    """Link names from `ip -o link` lines ("2: name@peer: <...")."""
    return {line.split(":")[1].strip().split("@")[0] for line in text.splitlines() if ":" in line}


@pytest.fixture
def dummy_link():  # noqa: ANN201
    """A link only the host's namespace has, made for this test."""
    name = f"pmnm{secrets.token_hex(4)}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)  # no dummy module here
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def test_host_network_shows_the_hosts_links_and_refuses_a_checkpoint_before_the_freeze(pm, dummy_link) -> None:  # noqa: ANN001
    host, bridged = unique("hostnet"), unique("bridged")
    ok(pm("run", "-d", "--network", "host", "--name", host, "busybox", "sleep", "1000"))
    ok(pm("run", "-d", "--name", bridged, "busybox", "sleep", "1000"))
    try:
        info = json.loads(ok(pm("inspect", host)))[0]
        assert info["spec"]["network"] == "host" and info["spec"]["ip"] is None and info["spec"]["mac"] is None
        inside = _links(ok(pm("exec", host, "ip", "-o", "link")))
        assert dummy_link in inside
        assert dummy_link not in _links(ok(pm("exec", bridged, "ip", "-o", "link")))  # the control
        assert os.readlink(f"/proc/{info['state']['pid']}/ns/net") == os.readlink("/proc/self/ns/net")

        answer = refused(pm("checkpoint", host, "--json"), "Unsupported")
        assert "host's network namespace" in answer["error"] and "--network bridge" in answer["hint"]
        state = json.loads(ok(pm("inspect", host)))[0]["state"]
        assert state["status"] == "running" and state["frozen_by"] is None and state["checkpointed"] is False
        assert ok(pm("exec", host, "echo", "alive")).strip() == "alive"  # never frozen
    finally:
        pm("rm", "-f", host)
        pm("rm", "-f", bridged)


def test_host_network_takes_no_address_nor_ports(pm) -> None:  # noqa: ANN001
    for args in (("--network", "host", "--ip", "10.77.9.9"), ("--network", "host", "-p", "8080:80"),
                 ("--network", "macvlan")):
        r = pm("run", *args, "busybox", "true", "--json")
        assert r.returncode == 125, r.stderr  # a usage error and refused input alike
