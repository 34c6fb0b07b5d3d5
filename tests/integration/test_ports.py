"""Published ports (``run -p``, issue 13) on a lab host: real kernel, nftables and CRIU.

The container serves one line per connection with busybox ``nc -ll -p 80 -e echo ...`` and its
host (a network namespace of tests/integration/hosts.py, with its own pmbr0 and nftables) forwards
HOST_PORT there. A second lab host dials the first one's address; the first host dials
127.0.0.1 itself; the container dials its own published port through its host's address
(hairpin). After ``rm`` the container's nftables table is gone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.hosts import Host, make_hosts  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay", "nftables"),
]

PORT = 18080
SERVE = "exec nc -ll -p 80 -e echo hello-from-{tag}"


def dial(host: Host, address: str, port: int, *, timeout_s: float = 15.0) -> str:
    """The line the server at address:port sends, dialled from ``host``'s namespace ('' if none)."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = host.run(["busybox", "nc", "-w", "2", address, str(port)], check=False, timeout=20, input=b"")
        line = r.stdout.decode().strip()
        if line or time.monotonic() > deadline:
            return line
        time.sleep(0.2)


def port_tables(host: Host) -> list[str]:
    out = host.run(["nft", "list", "tables", "ip"]).stdout.decode()
    return [ln.split()[2] for ln in out.splitlines() if ln.startswith("table ip pymigrate_ports_")]


def run_server(host: Host, name: str, *publish: str) -> dict:
    args = ["run", "-d", "--name", name]
    for p in publish:
        args += ["-p", p]
    r = host.cli([*args, "busybox", "sh", "-c", SERVE.format(tag=name)])
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(host.cli(["inspect", name], check=True).stdout)[0]


def test_published_port_answers_other_hosts_localhost_and_hairpin_and_goes_with_rm(make_hosts) -> None:  # noqa: ANN001
    a, b = make_hosts(2)
    a.cli(["image", "build-busybox", "busybox"], check=True)
    info = run_server(a, "web", f"{PORT}:80", "127.0.0.1::80")
    ports = info["spec"]["ports"]
    assert ports[0] == {"container_port": 80, "protocol": "tcp", "host_port": PORT, "host_ip": ""}
    chosen = ports[1]["host_port"]
    assert ports[1]["host_ip"] == "127.0.0.1" and chosen > 0

    assert dial(b, a.address, PORT) == "hello-from-web"  # another host: prerouting DNAT + forwarding
    assert dial(a, "127.0.0.1", PORT) == "hello-from-web"  # this host on loopback: output DNAT
    assert dial(a, a.address, PORT) == "hello-from-web"  # this host on its own address
    assert dial(a, "127.0.0.1", chosen) == "hello-from-web"  # -p 127.0.0.1::80: a free port, loopback only
    assert dial(b, a.address, chosen, timeout_s=1) == ""  # ... not reachable from elsewhere
    # hairpin: the container reaches its own published port through its host's address
    r = a.cli(["exec", "web", "nc", "-w", "3", a.address, str(PORT)])
    assert r.stdout.decode().strip() == "hello-from-web", r.stderr.decode()

    assert a.cli(["port", "web"], check=True).stdout.decode().splitlines() == [
        f"80/tcp -> 0.0.0.0:{PORT}", f"80/tcp -> 127.0.0.1:{chosen}"]
    assert a.cli(["port", "web", "80/tcp"], check=True).stdout.decode().split() == [f"0.0.0.0:{PORT}", f"127.0.0.1:{chosen}"]
    assert a.cli(["port", "web", "81"]).returncode == 1
    assert f"0.0.0.0:{PORT}->80/tcp" in a.cli(["ps"], check=True).stdout.decode()
    cid = info["spec"]["container_id"]
    assert [t for t in port_tables(a) if t.endswith(cid)]

    # a second container cannot take the same host port; a host process's port is refused too
    r = a.cli(["--json", "run", "-d", "--name", "web2", "-p", f"{PORT}:80", "busybox", "sleep", "60"])
    assert r.returncode == 125 and json.loads(r.stdout)["type"] == "PortInUse", r.stdout
    assert f"{PORT}/tcp is already in use by container web" in json.loads(r.stdout)["error"]
    listener = a.popen(["busybox", "nc", "-l", "-p", str(PORT + 1)])
    try:
        deadline = time.monotonic() + 10
        while b":%d " % (PORT + 1) not in a.run(["ss", "-ltn"]).stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        r = a.cli(["--json", "run", "-d", "--name", "web3", "-p", f"{PORT + 1}:80", "busybox", "sleep", "60"])
        assert r.returncode == 125 and json.loads(r.stdout)["type"] == "PortInUse", r.stdout
        assert "in use by a host process" in json.loads(r.stdout)["error"]
    finally:
        listener.kill()
        listener.wait()
    assert json.loads(a.cli(["ps", "-a", "--json"], check=True).stdout) and {
        c["spec"]["name"] for c in json.loads(a.cli(["ps", "-a", "--json"], check=True).stdout)} == {"web"}

    a.cli(["stop", "-t", "1", "web"], check=True)
    assert port_tables(a) == []  # stop takes the rules away at once
    a.cli(["rm", "web"], check=True)
    assert port_tables(a) == []
    assert dial(b, a.address, PORT, timeout_s=1) == ""

    # an exit of its own: its shim takes the rules away (the record stays, exited)
    a.cli(["run", "-d", "--name", "brief", "-p", f"{PORT}:80", "busybox", "sh", "-c", "sleep 1"], check=True)
    assert len(port_tables(a)) == 1
    deadline = time.monotonic() + 20
    while port_tables(a) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert port_tables(a) == []
    assert json.loads(a.cli(["inspect", "brief"], check=True).stdout)[0]["state"]["status"] == "exited"


@pytest.mark.parametrize(
    ("publish", "needle"),
    [
        ("0:80", "host port 0"),
        ("70000:80", "host port 70000"),
        ("8080:80/sctp", "protocol 'sctp'"),
        ("8000-8002:80-81", "differ in length"),
        ("8080:80,8080:81", None),  # two -p with one host port: the duplicate check
    ],
)
def test_bad_publish_input_exits_125_before_anything_is_made(make_hosts, publish: str, needle: str | None) -> None:  # noqa: ANN001
    (a,) = make_hosts(1)
    a.cli(["image", "build-busybox", "busybox"], check=True)
    args: list[str] = []
    for p in publish.split(","):
        args += ["-p", p]
    r = a.cli(["--json", "run", "-d", "--name", "bad", *args, "busybox", "true"])
    assert r.returncode == 125, r.stdout
    err = json.loads(r.stdout)
    assert err["type"] in ("InvalidArgument", "InvalidSpec"), err
    assert (needle or "published twice") in err["error"], err
    assert err.get("hint")
    assert json.loads(a.cli(["ps", "-a", "--json"], check=True).stdout) == []
    assert port_tables(a) == []


def test_ports_come_back_with_a_restore_and_restore_publish_overrides_them(make_hosts) -> None:  # noqa: ANN001
    a, b = make_hosts(2)
    a.cli(["image", "build-busybox", "busybox"], check=True)
    run_server(a, "ck", f"{PORT}:80")
    assert dial(b, a.address, PORT) == "hello-from-ck"

    ck = json.loads(a.cli(["--json", "checkpoint", "ck"], check=True).stdout)["checkpoint_id"]
    assert port_tables(a) == []  # the checkpoint's stop took the rules with it
    a.cli(["restore", ck], check=True)
    assert dial(b, a.address, PORT) == "hello-from-ck"  # the listening socket came back, and the rules
    assert dial(a, "127.0.0.1", PORT) == "hello-from-ck"
    assert len(port_tables(a)) == 1

    ck2 = json.loads(a.cli(["--json", "checkpoint", "ck"], check=True).stdout)["checkpoint_id"]
    a.cli(["restore", ck2, "--publish", f"{PORT + 2}:80"], check=True)
    assert dial(b, a.address, PORT + 2) == "hello-from-ck"
    assert dial(b, a.address, PORT, timeout_s=1) == ""
    assert a.cli(["port", "ck"], check=True).stdout.decode().split("\n")[0] == f"80/tcp -> 0.0.0.0:{PORT + 2}"
    a.cli(["rm", "-f", "ck"], check=True)
    assert port_tables(a) == []


def test_daemon_start_sweeps_the_tables_of_gone_containers_of_its_own_root_only(make_hosts) -> None:  # noqa: ANN001
    from runtime.port_rules import table_name

    (a,) = make_hosts(1)
    stale = table_name(a.root, "ee" * 16)  # no such container in a's root
    other_root = table_name(a.root.parent / "another-root", "ee" * 16)
    for table in (stale, other_root):
        a.run(["nft", "add", "table", "ip", table])
    a.start_daemon()
    deadline = time.monotonic() + 30
    while stale in port_tables(a) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert port_tables(a) == [other_root]
    a.stop_daemon()


def _exposing_image(work: Path) -> Path:
    """A docker-archive of the busybox tree whose config exposes 80/tcp and 81/tcp, serving both."""
    import hashlib
    import io
    import subprocess
    import tarfile

    from tests.integration.hosts import REPO

    subprocess.run([str(REPO / "scripts/make-busybox-image.sh"), str(work / "base.tar")], check=True, capture_output=True, timeout=120)
    layer = (work / "base.tar").read_bytes()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"ExposedPorts": {"80/tcp": {}, "81/tcp": {}},
                   "Cmd": ["sh", "-c", "nc -ll -p 81 -e echo p81 & exec nc -ll -p 80 -e echo p80"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["localhost/exposed:1"], "Layers": ["layer.tar"]}]).encode()
    out = work / "exposed.tar"
    with tarfile.open(out, "w") as tar:
        for name, data in (("manifest.json", manifest), (config_name, config), ("layer.tar", layer)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def test_publish_all_maps_the_images_exposed_ports_and_p_wins_for_its_port(make_hosts, tmp_path: Path) -> None:  # noqa: ANN001
    a, b = make_hosts(2)
    a.cli(["image", "load", str(_exposing_image(tmp_path)), "--name", "exposed:1"], check=True)
    a.cli(["run", "-d", "--name", "exp", "-P", "-p", f"{PORT}:80", "exposed:1"], check=True)
    lines = a.cli(["port", "exp"], check=True).stdout.decode().splitlines()
    assert lines[0] == f"80/tcp -> 0.0.0.0:{PORT}" and lines[1].startswith("81/tcp -> 0.0.0.0:") and len(lines) == 2
    free = int(lines[1].rsplit(":", 1)[1])
    assert dial(b, a.address, PORT) == "p80"
    assert dial(b, a.address, free) == "p81"
    a.cli(["rm", "-f", "exp"], check=True)
    assert port_tables(a) == []
