import logging
from pathlib import Path

import pytest

from migrate.engine import LocalEngine


def test_a_failing_reconcile_step_does_not_keep_the_daemon_from_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    engine = LocalEngine(tmp_path / "root")
    calls: list[str] = []

    def broken(*_args: object, **_kwargs: object) -> None:
        calls.append("outgoing")
        raise RecursionError("maximum recursion depth exceeded")

    class Incoming:
        def reconcile(self) -> None:
            calls.append("incoming")
            raise OSError(39, "Directory not empty")

    monkeypatch.setattr("migrate.migration.recovery.reconcile_outgoing", broken)
    monkeypatch.setattr(engine, "_incoming", lambda: Incoming())
    monkeypatch.setattr(engine, "_host", lambda: None)
    with caplog.at_level(logging.ERROR, logger="migrate.engine"):
        engine.reconcile()  # logs, does not raise
    assert calls == ["outgoing", "incoming"]
    assert [r.getMessage() for r in caplog.records] == [
        "reconcile of outgoing migrations failed; the daemon starts anyway",
        "reconcile of incoming migrations and scratch failed; the daemon starts anyway",
    ]
