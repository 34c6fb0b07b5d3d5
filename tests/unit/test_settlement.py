"""Settlement of a migration by id on the target (migrate/migration/target.py): final, idempotent answers,
"pending" while a restore runs, the restored copy's lease asking the source (fakes only, no root)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import migrate.migration.postcopy
from migrate.api import Settlement
from migrate.errors import ContainerLost, MigrationError
from migrate.migration.target import IncomingMigrations, _dial_back
from runtime.errors import ContainerNotFound

MID = "ab" * 8
CID = "c" * 32


class Runtime:
    """Containers by id; remove records what went."""

    def __init__(self) -> None:
        self.containers: dict[str, str] = {}  # id -> status
        self.removed: list[str] = []

    def container(self, container_id: str) -> Any:
        if container_id not in self.containers:
            raise ContainerNotFound(container_id)
        return SimpleNamespace(status=self.containers[container_id])

    def remove(self, container_id: str, force: bool = False) -> None:
        self.removed.append(container_id)
        self.containers.pop(container_id, None)


class Source:
    def __init__(self, answer: Settlement | None) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str, bool]] = []
        self.timeout_s = 60.0

    def settle_migration(self, migration_id: str, container_id: str = "", ask_source: bool = False) -> Settlement:
        self.asked.append((migration_id, container_id, ask_source))
        if self.answer is None:
            raise OSError("no route to host")
        return self.answer


@pytest.fixture(autouse=True)
def no_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrate.migration.postcopy, "finish_session", lambda mid: None)
    monkeypatch.setattr(migrate.migration.postcopy, "stop_session", lambda mid: None)


def _incoming(tmp_path: Path, source: Source | None = None) -> IncomingMigrations:
    host = SimpleNamespace(paths=SimpleNamespace(run=tmp_path / "run", tmp=tmp_path / "tmp"), rt=Runtime())
    return IncomingMigrations(host, None, connect=(lambda address: source) if source is not None else None)


def _record(incoming: IncomingMigrations, phase: str, **extra: Any) -> None:
    incoming.dir.mkdir(parents=True, exist_ok=True)
    incoming._save({"migration_id": MID, "phase": phase, "name": "web", "container_id": CID, "ip": None, "mode": "cold",
                    "source_daemon": "10.0.0.1:7443", **extra})
    if phase == "restored":
        incoming.host.rt.containers[CID] = "running"


def test_a_restored_migration_settles_committed_and_stays_so(tmp_path: Path) -> None:
    incoming = _incoming(tmp_path)
    _record(incoming, "restored")
    assert incoming.settle(MID, CID) == Settlement(MID, "committed", True)
    assert incoming.records() == []
    # the same question again (the first answer lost): the same answer, nothing removed
    assert incoming.settle(MID, CID) == Settlement(MID, "committed", True)
    incoming.commit(MID)  # a late CommitIncoming is a no-op
    assert incoming.host.rt.removed == []


def test_a_prepared_migration_settles_aborted_and_its_restore_cannot_start(tmp_path: Path) -> None:
    incoming = _incoming(tmp_path)
    _record(incoming, "prepared")
    assert incoming.settle(MID, CID).outcome == "aborted"
    assert incoming.records() == []
    with pytest.raises(MigrationError, match="aborted before its restore"):
        incoming.mark_restoring(MID)
    assert incoming.settle(MID, CID) == Settlement(MID, "aborted", False)


def test_a_running_restore_answers_pending(tmp_path: Path) -> None:
    incoming = _incoming(tmp_path)
    _record(incoming, "prepared")
    incoming.mark_restoring(MID)
    assert incoming.settle(MID, CID).outcome == "pending"
    assert [r["phase"] for r in incoming.records()] == ["restoring"]


def test_an_unknown_migration_says_whether_the_container_runs_here(tmp_path: Path) -> None:
    incoming = _incoming(tmp_path)
    assert incoming.settle(MID, CID) == Settlement(MID, "unknown", False)
    incoming.host.rt.containers[CID] = "running"
    assert incoming.settle(MID, CID) == Settlement(MID, "unknown", True)


def test_a_post_copy_copy_missing_pages_settles_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def lost(mid: str) -> None:
        raise ContainerLost("container lost on this host: its lazy-pages daemon failed")

    monkeypatch.setattr(migrate.migration.postcopy, "finish_session", lost)
    incoming = _incoming(tmp_path)
    _record(incoming, "restored")
    assert incoming.settle(MID, CID).outcome == "lost"
    assert incoming.host.rt.removed == [CID]
    assert incoming.settle(MID, CID).outcome == "lost"


def test_reconcile_aborts_a_restore_a_crash_interrupted(tmp_path: Path) -> None:
    incoming = _incoming(tmp_path)
    _record(incoming, "restoring")
    incoming.host.rt.containers[CID] = "running"  # half restored
    incoming.reconcile()
    assert incoming.records() == [] and incoming.host.rt.removed == [CID]
    assert incoming.settle(MID, CID).outcome == "aborted"


@pytest.mark.parametrize("answer,kept,removed", [
    (Settlement(MID, "committed"), False, False),
    (Settlement(MID, "unknown", False), False, False),  # the source has no copy running: ours is the one
    (Settlement(MID, "unknown", True), False, True),  # the source's copy runs (someone thawed it): ours goes
    (Settlement(MID, "aborted"), False, True),
    (Settlement(MID, "pending"), True, False),
    (None, True, False),  # the source cannot be asked: ours keeps running, the lease is renewed
])
def test_an_expired_lease_asks_the_source(tmp_path: Path, answer: Settlement | None, kept: bool, removed: bool) -> None:
    source = Source(answer)
    incoming = _incoming(tmp_path, source)
    _record(incoming, "restored", restored_at=1.0, lease_until=2.0)
    incoming.sweep()
    assert source.asked == [(MID, CID, True)]
    assert bool(incoming.records()) == kept
    assert (CID in incoming.host.rt.removed) == removed
    if kept:
        assert incoming.records()[0]["lease_until"] > 2.0
    else:
        assert incoming.outcome(MID) == ("aborted" if removed else "committed")


def test_a_lease_not_expired_asks_nobody(tmp_path: Path) -> None:
    import time

    source = Source(Settlement(MID, "committed"))
    incoming = _incoming(tmp_path, source)
    _record(incoming, "restored", restored_at=time.time(), lease_until=time.time() + 60)
    incoming.sweep()
    assert source.asked == [] and incoming.records()


def test_dial_back_goes_only_to_the_caller() -> None:
    assert _dial_back("0.0.0.0:7443", "10.0.0.1") == "10.0.0.1:7443"
    assert _dial_back("[::]:7443", "fd00::1") == "[fd00::1]:7443"
    # a source cannot send this host (and its credentials) to a third host
    assert _dial_back("10.9.9.9:7443", "10.0.0.1") == "10.0.0.1:7443"
    assert _dial_back("unix:/run/x.sock", "10.0.0.1") is None
    assert _dial_back("unix:/run/x.sock", None) == "unix:/run/x.sock"
    assert _dial_back("10.0.0.5:7443", None) is None
    assert _dial_back(None, "10.0.0.1") is None


def test_settlement_crosses_grpc_conversion() -> None:
    pytest.importorskip("grpc")
    from migrate.remote import convert as cv

    for outcome in ("committed", "aborted", "lost", "pending", "unknown"):
        s = Settlement(MID, outcome, outcome == "committed")  # type: ignore[arg-type]
        assert cv.settlement_from_pb(MID, cv.settlement_to_pb(s)) == s
    from migrate._proto.pymigrate.v1 import host_pb2 as pb

    # an outcome this version does not know is never read as a verdict
    assert cv.settlement_from_pb(MID, pb.SettleMigrationResponse()).outcome == "pending"


def test_a_post_copy_copy_from_before_a_restart_is_lost_unless_every_page_arrived(tmp_path: Path) -> None:
    incoming = _incoming(tmp_path)
    _record(incoming, "restored", mode="postcopy")  # no lazy-pages session in this process
    assert incoming.settle(MID, CID).outcome == "lost"
    assert incoming.host.rt.removed == [CID]
    other = _incoming(tmp_path / "2")
    _record(other, "restored", mode="postcopy")
    other._pages_complete(MID)
    assert other.settle(MID, CID).outcome == "committed"
