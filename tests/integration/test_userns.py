"""User namespaces on the real kernel (issue 20): ``run --userns auto`` maps the container's root to
an unprivileged range of the host pool (runtime/userns.py). Checked from the host, through /proc and
the files on disk: uid 0 inside is base outside, files the container writes belong to its range,
the image's files are the container root's without a copy (idmapped layers), a process with the
container's credentials in the host's view cannot write root-owned host files, two containers get
disjoint ranges, the container's root owns its network (port 80, sysfs), ``exec`` enters the
namespace. Checkpoint, restore and migration: tests/integration/test_userns_migrate.py."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.integration.cli_helpers import ok, refused, unique

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]


def _inspect(pm: Callable[..., Any], name: str) -> dict[str, Any]:
    return json.loads(ok(pm("inspect", name)))[0]


def _ids(pid: int) -> tuple[int, int]:
    """(real uid, real gid) of a host pid, from /proc/PID/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def test_root_inside_is_an_unprivileged_range_outside(pm, tmp_path: Path) -> None:  # noqa: ANN001
    a, b = unique("usa"), unique("usb")
    ok(pm("run", "-d", "--name", a, "--userns", "auto", "busybox", "sh", "-c",
          "echo extra >> /etc/passwd; mkdir -p /home/dir; echo made > /made; exec sleep 1001"))
    try:
        ok(pm("run", "-d", "--name", b, "--userns", "auto", "busybox", "sleep", "1002"))
        info_a, info_b = _inspect(pm, a), _inspect(pm, b)
        spec_a, spec_b = info_a["spec"], info_b["spec"]
        base_a, base_b = spec_a["userns_base"], spec_b["userns_base"]
        assert spec_a["userns"] == "auto" and spec_a["userns_size"] == 65536 and base_a >= 65536
        assert base_a + 65536 <= base_b or base_b + 65536 <= base_a, "two containers on overlapping ranges"

        pid = info_a["state"]["pid"]
        assert _ids(pid) == (base_a, base_a)  # the host sees an unprivileged id
        assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", str(base_a), "65536"]
        assert ok(pm("exec", a, "id", "-u")).strip() == "0"  # root inside
        assert ok(pm("exec", "-u", "nobody", a, "id", "-u")).strip() == "65534"

        root = Path(f"/proc/{pid}/root")  # the container's files as the host sees them
        deadline = time.monotonic() + 10
        while not (root / "made").exists():  # its shell writes them once started
            assert time.monotonic() < deadline, "the container wrote nothing"
            time.sleep(0.1)
        assert (root / "made").read_text() == "made\n"
        for path in ("made", "home/dir", "etc/passwd"):  # written by it: its range (etc/passwd copied up)
            st = os.stat(root / path)
            assert (st.st_uid, st.st_gid) == (base_a, base_a), path
        # the image's own files are its root's too, without a copy of the image
        assert os.stat(root / "bin/busybox").st_uid == base_a
        assert ok(pm("exec", a, "stat", "-c", "%u:%g", "/bin/busybox")).strip() == "0:0"
        assert ok(pm("exec", a, "sh", "-c", "echo more >> /etc/group && tail -1 /etc/group")).strip() == "more"

        # what an escape from its mount tree would give: its credentials over the host's files
        victim = tmp_path / "root-owned"
        victim.write_text("host\n")
        victim.chmod(0o644)
        tmp_path.chmod(0o755)
        escaped = subprocess.run(
            ["nsenter", f"--user=/proc/{pid}/ns/user", "--setuid", "0", "--setgid", "0", "--",
             "/bin/busybox", "sh", "-c", f"echo pwned > {victim}; id -u; echo pwned > /etc/pm-userns-escape"],
            capture_output=True, text=True, timeout=30)
        assert escaped.stdout.strip() == "0", escaped  # root of its namespace...
        assert "Permission denied" in escaped.stderr, escaped  # ...but nobody to the host's files
        assert victim.read_text() == "host\n" and not Path("/etc/pm-userns-escape").exists()
    finally:
        pm("rm", "-f", a)
        pm("rm", "-f", b)


def test_its_root_owns_its_network_and_exec_enters_the_namespace(pm) -> None:  # noqa: ANN001
    name = unique("usnet")
    ok(pm("run", "-d", "--name", name, "--userns", "auto", "busybox", "sh", "-c",
          "mkdir -p /www && echo page > /www/index.html && httpd -p 80 -h /www && exec sleep 1003"))
    try:
        info = _inspect(pm, name)
        pid = info["state"]["pid"]
        # port 80 needs CAP_NET_BIND_SERVICE over the network namespace: its own, owned by its userns
        assert ok(pm("exec", name, "wget", "-qO-", "http://127.0.0.1/")).strip() == "page"
        assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
        assert sorted(ok(pm("exec", name, "ls", "/sys/class/net")).split()) == ["eth0", "lo"]  # its own sysfs
        inner = ok(pm("exec", name, "sh", "-c", "readlink /proc/self/ns/user; cat /proc/self/uid_map"))
        assert os.readlink(f"/proc/{pid}/ns/user") in inner and str(info["spec"]["userns_base"]) in inner
        assert ok(pm("exec", name, "sh", "-c", "echo x > /dev/null && head -c 4 /dev/zero | wc -c")).strip() == "4"
    finally:
        pm("rm", "-f", name)


def test_bad_userns_choices_are_refused(pm) -> None:  # noqa: ANN001
    answer = refused(pm("run", "--json", "--userns", "keep-id", "busybox", "true"), "InvalidArgument")
    assert "keep-id" in answer["error"] and answer["hint"]
    answer = refused(pm("run", "--json", "--userns", "auto", "--network", "host", "busybox", "true"), "InvalidArgument")
    assert "--network host" in answer["error"]
    ok(pm("run", "--rm", "--userns", "host", "busybox", "true"))  # host: as without the flag


def test_a_named_volume_is_the_containers_own_whatever_its_range(pm) -> None:  # noqa: ANN001
    """Named volumes are bound idmapped: on disk they keep the ids a container without a user
    namespace sees, so containers of any range (or none) share them and they move unchanged."""
    vol, a, b = unique("usvol"), unique("usva"), unique("usvb")
    try:
        ok(pm("run", "--rm", "--userns", "auto", "-v", f"{vol}:/data", "busybox", "sh", "-c",
              "echo from-a > /data/f && mkdir /data/d && chown 33:33 /data/d"))
        data = Path(json.loads(ok(pm("volume", "inspect", vol)))[0]["mountpoint"])
        assert (os.stat(data / "f").st_uid, os.stat(data / "d").st_uid) == (0, 33)  # the container's view on disk
        ok(pm("run", "-d", "--name", a, "--userns", "auto", "-v", f"{vol}:/data", "busybox", "sleep", "1005"))
        assert ok(pm("exec", a, "sh", "-c", "cat /data/f; stat -c %u /data/d; echo again >> /data/f && echo ok")).split() == ["from-a", "33", "ok"]
        out = ok(pm("run", "--rm", "--name", b, "-v", f"{vol}:/data", "busybox", "sh", "-c", "stat -c %u /data/f; cat /data/f"))
        assert out.split() == ["0", "from-a", "again"]
    finally:
        pm("rm", "-f", a)
        pm("volume", "rm", vol)


def test_after_a_reboot_the_daemon_starts_it_again_on_its_range(pm, pm_root) -> None:  # noqa: ANN001
    """A reboot drops the namespace file's mount and the pool's claims (/run); the daemon's start
    claims the recorded range again, makes the namespace anew, and the files keep their owners."""
    from runtime import userns
    from tests.integration.cli_helpers import start_daemon, stop_daemon
    from tests.integration.test_restart import _reboot

    name = unique("usboot")
    ok(pm("run", "-d", "--userns", "auto", "--restart", "unless-stopped", "--name", name, "busybox", "sh", "-c",
          "echo run >> /runs; chown 33 /runs; exec sleep 1006"))
    try:
        deadline = time.monotonic() + 10
        while pm("exec", name, "cat", "/runs").returncode != 0:
            assert time.monotonic() < deadline, "the first run"
            time.sleep(0.1)
        info = _inspect(pm, name)
        _reboot(pm_root, info)
        cid, base = info["spec"]["container_id"], info["spec"]["userns_base"]
        userns.remove(pm_root / "userns" / cid)
        userns.release(pm_root, cid)
        proc, sock = start_daemon(pm_root)
        stop_daemon(proc, sock)
        again = _inspect(pm, name)
        assert again["state"]["status"] == "running" and again["state"]["restart_count"] == 1
        assert _ids(again["state"]["pid"]) == (base, base)
        deadline = time.monotonic() + 10
        while ok(pm("exec", name, "cat", "/runs")).split() != ["run", "run"]:
            assert time.monotonic() < deadline, "the second run, same files"
            time.sleep(0.1)
        assert ok(pm("exec", name, "stat", "-c", "%u", "/runs")).strip() == "33"
        assert base in [r.base for r in userns.claimed_ranges()]
    finally:
        pm("rm", "-f", name)
