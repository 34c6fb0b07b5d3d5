"""Migrations ship an image's layers by digest, only those the target lacks (issue 12).

Two hosts with real daemons over TCP. Two layered images share a base layer (the busybox rootfs)
and differ in their top layer. Moving a container of the first to a target with no image sends
both layers; a container of the second then sends only its own top layer (the base is found
by digest in the target's store); a second container of the first sends no image at all. The
target's copies run from the layers it stored (an overlay of them, not a flat copy), with the
right content, and the target's store holds the base layer once.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.fakes.image_tars import layer
from tests.fakes.oci_layouts import write_oci_layout
from tests.integration.hosts import Host, make_hosts  # noqa: F401  (fixture)
from tests.integration.migrate_helpers import migrate_json, names_by_status, start_tcp_daemons

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay"),
]

RUN = {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["while :; do sleep 1; done"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}


def _layouts(a: Host, out: Path) -> tuple[Path, Path]:
    """app:1 and app:2: the busybox rootfs (gzip'ed) under a top layer of their own."""
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    base = io.BytesIO()
    ImageStore(Paths(a.root)).export_stream("busybox", base)
    one = write_oci_layout(out / "one", [(base.getvalue(), True), (layer([("app", None), ("app/v", "one\n")]), False)], RUN)
    two = write_oci_layout(out / "two", [(base.getvalue(), True), (layer([("app", None), ("app/v", "two\n")]), True)], RUN)
    return one, two


# each container its own address: the hosts' address pools do not know of each other
def _move(a: Host, name: str, dest: str) -> dict:
    r = a.cli(["--insecure", "migrate", name, dest, "--json"], timeout=180)
    assert r.returncode == 0, r.stderr.decode()
    return migrate_json(r.stdout)["stats"]


def _stored_layers(host: Host) -> list[str]:
    return sorted(p.name for p in (host.root / "layers").iterdir())


def test_layers_the_target_has_are_not_sent_again(make_hosts, tmp_path: Path) -> None:  # noqa: ANN001
    a, b = make_hosts(2)
    addr = start_tcp_daemons([a, b])
    a.cli(["image", "build-busybox", "busybox"], check=True)
    one, two = _layouts(a, tmp_path)
    a.cli(["image", "load", str(one), "--name", "app:1"], check=True)
    a.cli(["image", "load", str(two), "--name", "app:2"], check=True)
    assert len(_stored_layers(a)) == 3  # the shared base once, two tops

    a.cli(["run", "-d", "--name", "c1", "--ip", "10.77.0.21", "app:1"], check=True)
    first = _move(a, "c1", addr["b"])
    assert first["image_layers_sent"] == 2 and first["image_bytes"] > 0, first

    a.cli(["run", "-d", "--name", "c2", "--ip", "10.77.0.22", "app:2"], check=True)
    second = _move(a, "c2", addr["b"])
    assert second["image_layers_sent"] == 1, second  # only app:2's top layer
    assert 0 < second["image_bytes"] < first["image_bytes"] / 4, (first, second)

    a.cli(["run", "-d", "--name", "c3", "--ip", "10.77.0.23", "app:1"], check=True)
    third = _move(a, "c3", addr["b"])
    assert third["image_layers_sent"] == 0 and third["image_bytes"] == 0, third

    assert names_by_status(b) == {"c1": "running", "c2": "running", "c3": "running"}
    for name, want in (("c1", "one"), ("c2", "two"), ("c3", "one")):
        r = b.cli(["exec", name, "cat", "/app/v"], check=True)
        assert r.stdout.decode().strip() == want
    assert _stored_layers(b) == _stored_layers(a)  # the same layers, by diff_id, each once
    images = {i["name"]: i for i in json.loads(b.cli(["image", "ls", "--json"], check=True).stdout)}
    mine = {i["name"]: i for i in json.loads(a.cli(["image", "ls", "--json"], check=True).stdout)}
    assert images["app:1"]["digest"] == mine["app:1"]["digest"] and images["app:2"]["digest"] == mine["app:2"]["digest"]
    # the target's containers run on an overlay of the stored layers (named by their short links)
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f"lowerdir={b.root / 'l'}/" in mounts
