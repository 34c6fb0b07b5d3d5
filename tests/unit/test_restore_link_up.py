"""The restored container's link comes up at CRIU's pre-resume notification: its sockets exist and
are out of repair mode (no RST for a client), nothing can fail the restore any more (a failed
restore never had its link up), and its tasks have not run yet. Then the neighbour entries still
being resolved are flushed: an ARP request dropped at the down link is retried only after neigh
retrans_time (1 s), which every client used to see on top of the pause. The flush is rtnetlink
in the container's namespace (no exec while it is stopped)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from runtime import _netlink, _netns, restore_start


class _Sock:
    def setsockopt(self, *args: object) -> None:
        pass

    def bind(self, addr: object) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list:
    calls: list = []
    monkeypatch.setattr("runtime.network.set_link_up", lambda name, up: calls.append(("link", name, up)) or True)

    def socket_in(path: Path, family: int, kind: int, proto: int = 0) -> _Sock:
        calls.append(("netlink socket in", str(path), proto))
        return _Sock()

    monkeypatch.setattr(_netns, "socket_in", socket_in)
    monkeypatch.setattr(_netlink.RtNetlink, "flush_neighbours", lambda self, mask: calls.append(("flush", mask)) or 0)
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
        ("netlink socket in", "/run/pm/netns/abc", _netlink.NETLINK_ROUTE),
        ("flush", _netlink.NUD_INCOMPLETE),
    ]
    assert handler("post-resume", 0) is True
    assert len(recorded) == 3


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

    def missing(path: Path, family: int, kind: int, proto: int = 0) -> _Sock:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))

    monkeypatch.setattr(_netns, "socket_in", missing)
    handler = restore_start.link_up_before_resume("pmv-abc", "/run/pm/netns/abc")
    assert handler is not None and handler("pre-resume", 0) is True
