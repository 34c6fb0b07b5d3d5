"""The restored container's link comes up at CRIU's pre-resume notification: its sockets exist and
are out of repair mode (no RST for a client), nothing can fail the restore any more (a failed
restore never had its link up), and its tasks have not run yet. Then the neighbour entries still
being resolved are flushed: an ARP request dropped at the down link is retried only after neigh
retrans_time (1 s), which every client used to see on top of the pause."""

from __future__ import annotations

import subprocess

import pytest

from runtime import restore_start


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list:
    calls: list = []
    monkeypatch.setattr("runtime.network.set_link_up", lambda name, up: calls.append(("link", name, up)) or True)

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(("run", cmd))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    return calls


def test_link_up_and_flush_at_pre_resume_only(recorded: list) -> None:
    handler = restore_start.link_up_before_resume("pmv-abc", "/run/pm/netns/abc")
    assert handler is not None
    for script in ("pre-restore", "setup-namespaces", "post-setup-namespaces", "post-restore"):
        assert handler(script, 0) is True
    assert recorded == []  # a restore can still fail here: its dying sockets must not reach clients
    assert handler("pre-resume", 0) is True
    assert recorded == [
        ("link", "pmv-abc", True),
        ("run", ["nsenter", "--net=/run/pm/netns/abc", "ip", "neigh", "flush", "nud", "incomplete"]),
    ]
    assert handler("post-resume", 0) is True
    assert len(recorded) == 2


def test_no_veth_no_handler() -> None:
    assert restore_start.link_up_before_resume(None, "/run/pm/netns/abc") is None  # --network none


def test_a_failed_link_up_does_not_fail_the_restore(monkeypatch: pytest.MonkeyPatch, recorded: list) -> None:
    def boom(name: str, up: bool) -> bool:
        raise OSError(19, "No such device")

    monkeypatch.setattr("runtime.network.set_link_up", boom)
    handler = restore_start.link_up_before_resume("pmv-abc", "/run/pm/netns/abc")
    assert handler is not None and handler("pre-resume", 0) is True  # join_network tries again
    assert recorded == []  # no flush into a namespace whose link is still down


def test_a_failed_flush_does_not_fail_the_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runtime.network.set_link_up", lambda name, up: True)

    def missing(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        raise FileNotFoundError(2, "No such file or directory", "nsenter")

    monkeypatch.setattr(subprocess, "run", missing)
    handler = restore_start.link_up_before_resume("pmv-abc", "/run/pm/netns/abc")
    assert handler is not None and handler("pre-resume", 0) is True
