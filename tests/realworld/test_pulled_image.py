"""A real server from a pulled image: run with only the image's config, migrated, its layers shipped once.

The image (tests/realworld/layered_image.py, cached): Debian bookworm with Redis as three OCI
layers (base system; the server's packages; redis.conf replaced and /usr/bin/redis-benchmark
deleted by a whiteout), whose config starts ``setpriv ... -- redis-server /etc/redis/redis.conf``
as user redis. The test

1. starts Debian's docker-registry in the root namespace on the hosts' bridge address (every
   host reaches it as another machine) and pushes the layout to it with skopeo;
2. ``image pull REF --tls-verify=false`` on host a: the store holds the image as the three
   layers by diff_id, with the config as pushed;
3. ``run -d`` with NO command: redis-server is the container's init, running as redis, and the
   top layer's replacement and whiteout are what the container sees;
4. redis-cli in the client namespace (tests/realworld/client.py ``redis``) pushes a list item
   every ~10 ms over one connection while the container migrates cold to host b
   (``--tcp-established``, the lab's ``cold`` move): the connection (CLIENT ID) and every item
   survive, redis still runs as redis, the layers are what b's store now holds, and the
   migration shipped them: ``image_layers_sent`` == 3, ``image_bytes`` > 0;
5. a second container from the same image migrates a -> b: b has every layer now, nothing of
   the image travels (``image_layers_sent`` == 0, ``image_bytes`` == 0).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import Host
from tests.integration.test_image_registry import Registry, skopeo_push, start_registry
from tests.realworld.lab import MOVES, check_client, RealLab, first_error_line, status
from tests.realworld.layered_image import REDIS_PORT, WHITED_OUT, read_layout, redis_layout
from tests.realworld.servers import Server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.realworld,
    pytest.mark.requires("root", "criu", "netns", "overlay", "cgroup2"),
]

REPOSITORY = "pmrw/redis:1"
IMAGE = "rw-pulled-redis:1"
SERVER = Server("redis (pulled image)", (), REDIS_PORT, "redis", users=("redis",))  # argv (): the image's own
STEADY_S = 0.5
AFTER_S = 1.0
# what the container must see of the top layer: the replaced config, the deleted benchmark tool
LAYER_CHECK = f"test ! -e /{WHITED_OUT} && grep -qx 'bind 0.0.0.0' /etc/redis/redis.conf && echo top-layer-ok"


@pytest.fixture(scope="module")
def pushed(realworld_lab: RealLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Path, float | None]]:
    """The layout pushed to a registry on the hosts' bridge address; (registry, layout, its build
    seconds or None when cached)."""
    layout, build_s = redis_layout()
    registry = start_registry(tmp_path_factory.mktemp("registry"), bind=realworld_lab.a.gateway)
    try:
        skopeo_push(layout, registry, REPOSITORY)
        yield registry, layout, build_s
    finally:
        registry.stop()


def test_pulled_image_serves_and_migrates_shipping_its_layers_once(
        realworld_lab: RealLab, pushed: tuple[Registry, Path, float | None], record: dict) -> None:
    lab = realworld_lab
    registry, layout, build_s = pushed
    record.update(server=SERVER.name, path="pull + cold x2", layout_build_s=build_s and round(build_s, 1))
    _, config = read_layout(layout)
    diff_ids = list(config["rootfs"]["diff_ids"])

    started = time.monotonic()
    pulled = _ok(lab.a.cli(["image", "pull", f"{registry.address}/{REPOSITORY}", "--tls-verify=false", "--name", IMAGE,
                            "--json"], timeout=300), "image pull on host a")
    record["pull_s"] = round(time.monotonic() - started, 1)
    assert pulled["name"] == IMAGE
    assert _layers(lab.a, IMAGE) == diff_ids, "host a's store does not hold the image as its three layers"
    inspected = _ok(lab.a.cli(["image", "inspect", IMAGE, "--json"]), "image inspect")
    assert inspected["config"]["Entrypoint"] == config["config"]["Entrypoint"]
    assert inspected["config"]["Cmd"] == config["config"]["Cmd"]

    first, second = "rw-pulled-redis", "rw-pulled-redis-2"
    try:
        ip = _run_default(lab, lab.a, first)
        moved = _migrate_with_client(lab, first, ip, record)
        assert status(lab.b, first) == "running" and status(lab.a, first) != "running", f"{first} did not move to host b"
        assert lab.process_users(lab.b, first) == {"redis"}, "redis-server does not run as redis on host b"
        assert _exec(lab, lab.b, first, "sh", "-c", LAYER_CHECK) == "top-layer-ok"
        assert _layers(lab.b, _image_digest(lab.b, first)) == diff_ids, "host b's image is not the three layers"
        record.update(image_bytes=moved.get("image_bytes"), image_layers_sent=moved.get("image_layers_sent"))
        assert moved.get("image_layers_sent") == len(diff_ids), f"layers sent to a host without them: {moved}"
        assert (moved.get("image_bytes") or 0) > 0, f"no image bytes counted: {moved}"

        _run_default(lab, lab.a, second)
        _wait_redis(lab, lab.a, second)
        again = MOVES["cold"](lab, second, SERVER).stats
        record.update(image_bytes_2=again.get("image_bytes"), image_layers_sent_2=again.get("image_layers_sent"))
        assert _exec(lab, lab.b, second, "redis-cli", "ping") == "PONG"
        assert status(lab.a, second) != "running", f"{second} still runs on host a"
        assert again.get("image_layers_sent") == 0 and again.get("image_bytes") == 0, \
            f"host b has every layer, yet the image travelled again: {again}"
    finally:
        lab.remove(first)
        lab.remove(second)
        lab.a.cli(["image", "rm", IMAGE])


def _ok(r: subprocess.CompletedProcess, what: str) -> dict:
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, f"{what}: {first_error_line(r.stderr.decode(errors='replace') + chr(10) + out)}"
    return json.loads(out)  # type: ignore[no-any-return]


def _layers(host: Host, name_or_digest: str) -> list[str]:
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    return list(ImageStore(Paths(host.root)).get(name_or_digest).layers)


def _image_digest(host: Host, name: str) -> str:
    from runtime.runtime import Runtime

    return Runtime(host.root).inspect(name).spec.image_digest


def _exec(lab: RealLab, host: Host, name: str, *cmd: str) -> str:
    r = lab.exec(host, name, *cmd)
    assert r.returncode == 0, f"exec {cmd[0]} in {name} on host {host.letter}: {first_error_line(r.stderr.decode() + r.stdout.decode())}"
    return r.stdout.decode().strip()


def _run_default(lab: RealLab, host: Host, name: str) -> str:
    """``run -d`` of the pulled image with no command; the container's address."""
    ip = lab.next_ip()
    r = host.cli(["run", "-d", "--name", name, "--ip", ip, IMAGE])
    assert r.returncode == 0, f"run -d {IMAGE} on host {host.letter}: {first_error_line(r.stderr.decode())}"
    return ip


def _wait_redis(lab: RealLab, host: Host, name: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while lab.exec(host, name, "redis-cli", "ping").stdout.decode().strip() != "PONG":
        assert time.monotonic() < deadline, f"redis in {name} does not answer: {first_error_line(lab.logs(host, name))}"
        time.sleep(0.2)


def _migrate_with_client(lab: RealLab, name: str, ip: str, record: dict) -> dict:
    """The lab's cold move a -> b under a redis-cli session; the migration's stats."""
    client = lab.client("redis", ip, REDIS_PORT)
    try:
        try:
            ready = client.wait_ready()
        except AssertionError as exc:
            raise AssertionError(f"{exc}; server log: {first_error_line(lab.logs(lab.a, name))}") from exc
        assert lab.process_users(lab.a, name) == {"redis"}, "redis-server does not run as redis on host a"
        assert _exec(lab, lab.a, name, "sh", "-c", LAYER_CHECK) == "top-layer-ok"
        time.sleep(STEADY_S)
        try:
            moved = MOVES["cold"](lab, name, SERVER)
        finally:
            time.sleep(AFTER_S)
            result = client.stop()
            record.update(pause_ms=result.get("max_gap_ms"), requests=result.get("requests"), client_errors=result["errors"])
        record.update(move_ms=round(moved.move_ms), frozen_ms=moved.stats.get("frozen_ms"))
    finally:
        client.kill()
    check_client(result, ready, record)
    return moved.stats
