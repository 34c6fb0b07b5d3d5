"""Named volumes move with their container in a live migration; bind mounts are checked before
the freeze (issue 13).

One lab of two hosts (network namespaces on one machine, so they share one file system; the
bind mount's host path is renamed away to make it "missing on the target"):

1. a bind mount whose host path is gone: the target refuses at its pre-flight, naming the mount;
   the container keeps running on the source;
2. Debian's redis-server with ``appendonly yes, appendfsync always, dir /data`` on named volume
   ``data``, and a client in the same container doing SETs back to back and recording the last
   acknowledged key: with a volume ``data`` holding data on the target, the migration is refused
   before the freeze and everything stays on the source; once that volume is gone, it migrates.
   A failure after the freeze (the target's daemon killed before its restore, then restarted)
   leaves container and volume on the source. The source's volume is gone after the commit; on the target, a new redis started from the
   volume alone (the migrated container killed and removed) has every acknowledged key.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.integration.hosts import make_hosts, pymigrate_command  # noqa: F401  (fixture)
from tests.integration.migrate_helpers import DAEMON_PORT, leftovers, names_by_status, start_tcp_daemons
from tests.integration.redis_image import REDIS_IMAGE, redis_available, redis_image_tar

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay"),
]

RESP = "nc 127.0.0.1 6379"
# redis with its append-only file on the volume, and a writer whose every SET is one connection:
# /tmp/acked holds the last key redis answered +OK for (keys k1..kN, in order)
WRITER = (
    "redis-server /etc/redis.conf --appendonly yes --appendfsync always --dir /data & "
    f"until printf 'PING\\r\\nQUIT\\r\\n' | {RESP} | grep -q PONG; do sleep 0.1; done; "
    "i=0; while [ ! -e /tmp/stop ]; do n=$((i+1)); "
    f"if printf 'SET k%d v%d\\r\\nQUIT\\r\\n' $n $n | {RESP} | head -n1 | grep -q '^+OK'; then i=$n; echo $i > /tmp/acked; fi; "
    "done; echo stopped > /tmp/stopped; sleep 100000"
)


def _volumes(host) -> dict[str, dict]:  # noqa: ANN001
    return {v["name"]: v for v in json.loads(host.cli(["volume", "ls", "--json"], check=True).stdout)}


def _acked(host, name: str) -> int:  # noqa: ANN001
    r = host.cli(["exec", name, "cat", "/tmp/acked"])
    return int(r.stdout.decode().strip() or 0) if r.returncode == 0 else 0


def _wait_acked(host, name: str, at_least: int, timeout_s: float = 60.0) -> int:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while (n := _acked(host, name)) < at_least:
        assert time.monotonic() < deadline, f"{name} on {host.letter}: only {n} keys acknowledged"
        time.sleep(0.2)
    return n


def _restart(host, env: dict[str, str] | None) -> None:  # noqa: ANN001
    if host.daemon is not None and host.daemon.poll() is None:
        host.stop_daemon()
    host.daemon = None
    host.start_daemon(f"{host.address}:{DAEMON_PORT}", extra_args=["--insecure", "--allow-peer-volumes"], env=env)


def _refused(r, *words: str) -> str:  # noqa: ANN001
    assert r.returncode != 0, r.stdout.decode()
    text = r.stdout.decode() + r.stderr.decode()
    for word in words:
        assert word in text, text
    return text


def test_named_volume_moves_with_redis_and_bind_mounts_are_checked_before_the_freeze(make_hosts, tmp_path) -> None:  # noqa: ANN001
    if not redis_available():
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    a, b = make_hosts(2)
    addr = start_tcp_daemons([a, b], ("--insecure", "--allow-peer-volumes"))
    for host in (a, b):
        host.cli(["image", "build-busybox", "busybox"], check=True)
    a.cli(["image", "import", REDIS_IMAGE, str(redis_image_tar(a.root, tmp_path / "redis.tar"))], check=True)

    # 1. a bind mount whose host path the target does not have
    bind = tmp_path / "bind-src"
    bind.mkdir()
    a.cli(["run", "-d", "--name", "binder", "--network", "none", "-v", f"{bind}:/b", "busybox", "sleep", "100000"], check=True)
    os.rename(bind, tmp_path / "bind-moved")  # the container's mount follows the inode; the path is gone
    _refused(a.cli(["--insecure", "migrate", "binder", addr["b"]]), "bind mount /b", str(bind), "does not exist", "preflight")
    assert names_by_status(a) == {"binder": "running"} and names_by_status(b) == {}
    a.cli(["rm", "-f", "binder"], check=True)

    # 2. redis on named volume "data"
    a.cli(["run", "-d", "--name", "redis", "--network", "none", "-v", "data:/data", REDIS_IMAGE, "sh", "-c", WRITER], check=True)
    _wait_acked(a, "redis", 50)
    b.cli(["run", "--rm", "--network", "none", "-v", "data:/data", "busybox", "sh", "-c", "echo mine > /data/f"], check=True)
    text = _refused(a.cli(["--insecure", "migrate", "redis", addr["b"]]), "volume data exists with content on this host")
    assert "pymigrate volume rm data" in text  # the hint
    assert names_by_status(a) == {"redis": "running"} and names_by_status(b) == {}
    assert "data" in _volumes(a)
    assert b.cli(["run", "--rm", "--network", "none", "-v", "data:/data", "busybox", "cat", "/data/f"], check=True).stdout == b"mine\n"
    before = _wait_acked(a, "redis", _acked(a, "redis") + 20)  # still writing on the source

    b.cli(["volume", "rm", "data"], check=True)

    # 3. a failure after the freeze: the target's daemon dies once the whole archive (and the
    # staged volume) arrived, before its restore; restarted, it aborts, and the source settles
    # with it and thaws: container and volume stay on the source, the target keeps nothing
    _restart(b, {"PYMIGRATE_FAILPOINTS": "target.restore=kill"})
    proc = a.popen([*pymigrate_command(), "--root", str(a.root), "--insecure", "migrate", "redis", addr["b"],
                    "--tcp-established"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while b.daemon is not None and b.daemon.poll() is None:
        assert time.monotonic() < deadline and proc.poll() is None, "the target's failpoint did not kill its daemon"
        time.sleep(0.1)
    _restart(b, None)
    out, err = proc.communicate(timeout=240)
    said = (out + err).decode(errors="replace")
    assert proc.returncode != 0 and "no answer after the final dump" in said and ": aborted" in said, said
    assert names_by_status(a) == {"redis": "running"} and names_by_status(b) == {}
    assert "data" in _volumes(a) and "data" not in _volumes(b)
    assert leftovers(b) == [], leftovers(b)
    before = _wait_acked(a, "redis", _acked(a, "redis") + 20)  # thawed: still writing on the source

    # the writer is always mid-connection to redis (loopback TCP): CRIU must take established sockets
    r = a.cli(["--insecure", "migrate", "redis", addr["b"], "--tcp-established", "--json"], timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert names_by_status(a) == {} and names_by_status(b) == {"redis": "running"}
    assert "data" not in _volumes(a), "the source's copy of the volume must go once the migration committed"
    # staged before the freeze: the pause carried only the AOF's growth (and the stage merged it)
    assert "volume=data staged copy merged with the pause's changes" in (b.workdir / "daemon.log").read_text()
    assert _volumes(b)["data"]["used_by"] == ["redis"]
    after = _wait_acked(b, "redis", before + 20)  # the writer goes on against the moved redis

    # only the volume: stop the writer, kill the migrated container (no graceful save), start
    # redis afresh on the volume
    b.cli(["exec", "redis", "sh", "-c", "touch /tmp/stop; until [ -e /tmp/stopped ]; do sleep 0.1; done"], check=True)
    acked = _acked(b, "redis")
    b.cli(["kill", "redis"], check=True)
    b.cli(["rm", "-f", "redis"], check=True)
    assert acked >= after
    probe = (f"redis-server /etc/redis.conf --appendonly yes --dir /data >/dev/null 2>&1 & "
             f"until printf 'PING\\r\\nQUIT\\r\\n' | {RESP} 2>/dev/null | grep -q PONG; do sleep 0.1; done; "
             f"printf 'DBSIZE\\r\\nGET k1\\r\\nGET k{acked}\\r\\nQUIT\\r\\n' | {RESP}")
    out = b.cli(["run", "--rm", "--network", "none", "-v", "data:/data", REDIS_IMAGE, "sh", "-c", probe],
                check=True, timeout=120).stdout.decode().split("\r\n")
    dbsize = int(out[0].lstrip(":"))
    assert dbsize >= acked, f"{acked} keys acknowledged, {dbsize} in the append-only file on the moved volume"
    assert out[1:5] == ["$2", "v1", f"${len(str(acked)) + 1}", f"v{acked}"], out
    assert leftovers(a) == [] and leftovers(b) == []  # no staged volume, scratch or reservation

