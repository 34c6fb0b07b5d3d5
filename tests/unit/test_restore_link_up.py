"""The restored container's link comes up at CRIU's post-restore notification: its sockets exist
(no RST for a client), its tasks have not run yet (their first packets, and the ARP for the client
they need first, are not dropped at a down link: a lost ARP request is retried only after
neigh retrans_time, 1 s, which every client used to see on top of the pause)."""

from __future__ import annotations

import pytest

from runtime import checkpointing


def test_restore_sets_the_link_up_at_post_restore_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, bool]] = []
    monkeypatch.setattr("runtime.network.set_link_up", lambda name, up: calls.append((name, up)) or True)
    handler = checkpointing.link_up_before_resume("pmv-abc")
    assert handler is not None
    for script in ("pre-restore", "setup-namespaces", "post-setup-namespaces"):
        assert handler(script, 0) is True
    assert calls == []  # sockets not restored yet: a client's segment would get a RST
    assert handler("post-restore", 0) is True
    assert calls == [("pmv-abc", True)]
    assert checkpointing.link_up_before_resume(None) is None  # --network none


def test_a_failed_link_up_does_not_fail_the_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(name: str, up: bool) -> bool:
        raise OSError(19, "No such device")

    monkeypatch.setattr("runtime.network.set_link_up", boom)
    handler = checkpointing.link_up_before_resume("pmv-abc")
    assert handler is not None and handler("post-restore", 0) is True  # join_network tries again
