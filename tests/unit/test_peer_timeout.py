"""migrate/peer_timeout.py: the one knob behind the daemon-to-daemon keepalives and the
page-server socket's timeouts."""

from __future__ import annotations

import pytest

from migrate import peer_timeout


@pytest.mark.parametrize("raw,expected", [("", 15), ("15", 15), (" 30 ", 30), ("4", 4), ("1", 3), ("0", 3), ("-5", 3),
                                          ("4.5", 15), ("soon", 15)])
def test_the_environment_sets_it_within_bounds(monkeypatch: pytest.MonkeyPatch, raw: str, expected: int) -> None:
    monkeypatch.setenv(peer_timeout.ENV, raw)
    assert peer_timeout.peer_timeout_s() == expected


def test_unset_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(peer_timeout.ENV, raising=False)
    assert peer_timeout.peer_timeout_s() == peer_timeout.DEFAULT_S == 15


@pytest.mark.parametrize("seconds", [3, 4, 7, 15, 60])
def test_pings_and_their_answer_add_up_to_the_timeout(seconds: int) -> None:
    interval, answer = peer_timeout.keepalive_ms(seconds)
    assert interval + answer == seconds * 1000 and 0 < answer < interval


def test_the_default_keeps_the_keepalives_the_daemons_always_had() -> None:
    assert peer_timeout.keepalive_ms(15) == (10_000, 5_000)
