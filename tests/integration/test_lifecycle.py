"""create / start / restart / rename and the idempotent stop, kill and rm -f on real containers
(issue 14), locally and through a real daemon (--host)."""

from __future__ import annotations

import re

import pytest

from tests.integration.cli_helpers import ok, start_daemon, stop_daemon, unique
from tests.integration.test_runtime import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]

MARKER = "echo x >> /marker; wc -l < /marker"  # how many runs this writable layer has seen


def _status(rt, name: str) -> str:  # noqa: ANN001
    return rt.container(name).status


def test_create_then_start(pm, rt) -> None:  # noqa: ANN001
    name = unique("cr")
    cid = ok(pm("create", "--name", name, "-e", "WHO=created", "busybox", "sh", "-c", f"{MARKER}; exec sleep 300")).strip()
    assert re.fullmatch(r"[0-9a-f]{32}", cid) and rt.container(name).container_id == cid  # the full id, as docker
    c = rt.container(name)
    assert c.status == "created" and c.state.pid == 0
    assert name in ok(pm("ps", "-a", "--filter", "status=created", "--format", "{{.Names}}")).split()
    assert name not in ok(pm("ps", "--format", "{{.Names}}")).split()  # not running
    assert ok(pm("start", name)) == f"{name}\n"
    c = rt.container(name)
    assert c.status == "running" and c.state.pid > 0
    assert ok(pm("exec", name, "sh", "-c", "echo $WHO; cat /marker")) == "created\nx\n"
    assert ok(pm("start", name)) == f"{name}\n"  # running already: nothing done, success (docker)
    assert rt.container(name).state.pid == c.state.pid


def test_start_of_an_exited_container_keeps_its_writable_layer(pm, rt) -> None:  # noqa: ANN001
    name = unique("again")
    r = pm("run", "--name", name, "busybox", "sh", "-c", f"{MARKER}; exit 3")
    assert r.returncode == 3 and r.stdout == b"1\n"
    assert ok(pm("start", name)) == f"{name}\n"
    wait_for(lambda: _status(rt, name) == "exited", what="the second run's exit")
    assert rt.container(name).state.exit_code == 3
    r = pm("start", "-a", name)  # only this run's output, and its exit code (docker start -a)
    assert (r.returncode, r.stdout) == (3, b"3\n"), r.stderr
    assert rt.container(name).state.restart_count == 0  # docker counts only a policy's restarts


def test_start_attach_interactive_sends_stdin(pm, rt) -> None:  # noqa: ANN001
    name = unique("in")
    ok(pm("create", "-i", "--name", name, "busybox", "sh", "-c", "read x; echo got:$x; exit 5"))
    r = pm("start", "-a", "-i", name, input=b"hello\n")
    assert (r.returncode, r.stdout) == (5, b"got:hello\n"), r.stderr
    r = pm("start", "-ai", name, input=b"again\n")
    assert (r.returncode, r.stdout) == (5, b"got:again\n"), r.stderr


def test_restart_gives_a_new_init(pm, rt) -> None:  # noqa: ANN001
    name = unique("rs")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", f"{MARKER} > /runs; exec sleep 300"))
    before = rt.container(name).state.pid
    assert ok(pm("restart", "-t", "1", name)) == f"{name}\n"
    after = rt.container(name)
    assert after.status == "running" and after.state.pid not in (0, before)
    assert ok(pm("exec", name, "cat", "/runs")).strip() == "2"
    ok(pm("stop", "-t", "1", name))
    assert ok(pm("restart", name)) == f"{name}\n"  # a stopped one just starts
    assert _status(rt, name) == "running"


def test_rename_then_act_by_the_new_name(pm, rt) -> None:  # noqa: ANN001
    old, new, other = unique("old"), unique("new"), unique("other")
    ok(pm("run", "-d", "--name", old, "busybox", "sleep", "300"))
    ok(pm("create", "--name", other, "busybox", "true"))
    cid = rt.container(old).container_id
    assert ok(pm("rename", old, new)) == ""
    assert rt.container(new).container_id == cid
    assert ok(pm("exec", new, "cat", "/etc/hostname")) == f"{cid[:12]}\n"  # not changed (docker)
    assert pm("inspect", old).returncode == 125
    r = pm("rename", new, other)
    assert r.returncode == 125 and b"already in use" in r.stderr
    assert pm("rename", new, "bad name").returncode == 125
    assert ok(pm("stop", "-t", "1", new)) == f"{new}\n"
    assert _status(rt, new) == "exited"


def test_idempotent_stop_kill_and_rm(pm, rt) -> None:  # noqa: ANN001
    done, fresh, ghost = unique("done"), unique("fresh"), unique("ghost")
    assert pm("run", "--name", done, "busybox", "true").returncode == 0
    ok(pm("create", "--name", fresh, "busybox", "true"))
    assert ok(pm("stop", done)) == f"{done}\n"  # exited: success, as docker and podman
    assert ok(pm("stop", fresh)) == f"{fresh}\n"  # created: success too
    assert _status(rt, fresh) == "created"
    assert ok(pm("kill", done)) == f"{done}\n"  # issue 14 asks for this (docker refuses)
    r = pm("rm", "-f", ghost)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")  # docker: nothing to say
    r = pm("rm", ghost)
    assert r.returncode == 125 and ghost.encode() in r.stderr
    assert ok(pm("rm", fresh)) == f"{fresh}\n"  # a created one is removed with what create made
    assert fresh not in [s.name for s in rt.specs()]


@pytest.mark.requires("criu")
def test_start_of_a_checkpointed_container_says_restore(pm, rt) -> None:  # noqa: ANN001
    name = unique("cp")
    ok(pm("run", "-d", "--name", name, "busybox", "sleep", "300"))
    checkpoint = ok(pm("checkpoint", name)).split()[-1]
    r = pm("start", name)
    assert r.returncode == 125
    assert f"pymigrate restore {checkpoint}" in r.stderr.decode() and _status(rt, name) == "exited"
    assert ok(pm("stop", name)) == f"{name}\n"
    pm("checkpoint", "rm", checkpoint)


def test_create_and_start_through_the_daemon(pm, rt, pm_root) -> None:  # noqa: ANN001
    early, remote = unique("early"), unique("remote")
    ok(pm("create", "--name", early, "busybox", "sleep", "300"))
    proc, sock = start_daemon(pm_root)
    try:
        assert _status(rt, early) == "created"  # the daemon's start neither started nor swept it

        def host(*argv: str):  # noqa: ANN202
            return pm("--host", f"unix:{sock}", *argv)

        ok(host("start", early))
        cid = ok(host("create", "--name", remote, "busybox", "sh", "-c", f"{MARKER}; exec sleep 300")).strip()
        assert rt.container(remote).container_id == cid and _status(rt, remote) == "created"
        ok(host("start", remote))  # the shim comes from the daemon's launcher
        first = rt.container(remote).state.pid
        assert first > 0 and _status(rt, early) == "running"
        renamed = unique("renamed")
        ok(host("rename", remote, renamed))
        ok(host("restart", "-t", "1", renamed))
        assert rt.container(renamed).state.pid not in (0, first)
        assert ok(pm("exec", renamed, "cat", "/marker")) == "x\nx\n"
        assert ok(host("stop", "-t", "1", renamed)) == f"{renamed}\n"
        assert ok(host("stop", renamed)) == f"{renamed}\n"  # exited: success over the wire too
        assert host("rm", "-f", unique("ghost")).returncode == 0
        assert host("rm", unique("ghost")).returncode == 125
    finally:
        stop_daemon(proc, sock)
