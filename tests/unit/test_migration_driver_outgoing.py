"""Outgoing migration records (migrate/migration/recovery.py): what the phase driver writes, and what a
daemon restart does with a record a crash left behind (fakes only, no root)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from migrate.migration import sequence
from migrate.migration import recovery as outgoing
from migrate.errors import PeerError, TransferError
from migrate.api import Settlement
from migrate.migration.recovery import COMMIT, UNKNOWN, OutgoingMigrations, holders, reconcile_outgoing, settle_pending
from runtime.errors import ContainerNotFound
from migrate.errors import MigrationError
from runtime.errors import CriuError
from tests.unit.test_migration_driver import FakeDumpCriu, FakeHost, Target, migrate


@pytest.fixture(autouse=True)
def no_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequence, "cpuinfo_dump", lambda images_dir: (images_dir / "cpuinfo.img").write_bytes(b"cpu"))


class RecordingTarget(Target):
    """Notes the outgoing record's on_crash at each step of the target's side."""

    def __init__(self, records: OutgoingMigrations) -> None:
        super().__init__()
        self.records = records
        self.seen: dict[str, list[str]] = {}

    def _note(self, step: str) -> None:
        self.seen[step] = [r["on_crash"] for r in self.records.records()]

    def receive_checkpoint(self, migration_id: str, chunks: Iterator[bytes]) -> Any:
        self._note("receive_checkpoint")
        return super().receive_checkpoint(migration_id, chunks)

    def commit_incoming(self, migration_id: str) -> None:
        self._note("commit_incoming")
        super().commit_incoming(migration_id)

    def abort_incoming(self, migration_id: str) -> None:
        self._note("abort_incoming")
        super().abort_incoming(migration_id)


def test_driver_records_rollback_then_commit_then_nothing(tmp_path: Path) -> None:
    host = FakeHost(tmp_path / "root")
    records = OutgoingMigrations(host.paths)
    target = RecordingTarget(records)
    migrate(host, target)
    # "unknown" from right before the freeze: a crash asks the target before thawing
    assert target.seen["receive_checkpoint"] == [UNKNOWN]
    assert target.seen["commit_incoming"] == [COMMIT]
    assert records.records() == []


def test_driver_removes_the_record_after_a_rollback(tmp_path: Path) -> None:
    host = FakeHost(tmp_path / "root")
    records = OutgoingMigrations(host.paths)
    target = RecordingTarget(records)
    target.fail_restore = PeerError("restore refused")
    with pytest.raises(PeerError):
        migrate(host, target)
    # the whole archive went out: settled (the target aborted), then thawed, record gone
    assert target.calls[-2:] == ["settle_migration", "abort_incoming"]
    assert target.seen["abort_incoming"] == [UNKNOWN]
    assert host.events[-1] == "thaw"
    assert records.records() == []


def test_driver_thaws_at_once_when_the_archive_did_not_go_out(tmp_path: Path) -> None:
    host = FakeHost(tmp_path / "root")
    records = OutgoingMigrations(host.paths)
    target = RecordingTarget(records)
    with pytest.raises(MigrationError):  # CRIU fails: the archive's end never goes out
        migrate(host, target, criu=FakeDumpCriu(fail=CriuError("dump", "criu dump failed: cannot seize 4242")))
    assert "settle_migration" not in target.calls  # before the point of no return the source wins
    assert host.events[-1] == "thaw"
    assert records.records() == []


# --- reconcile --------------------------------------------------------------------------------


class ReconcileHost(FakeHost):
    def __init__(self, root: Path, *, gone: bool = False) -> None:
        super().__init__(root)
        self.gone = gone

    def get(self, name: str) -> Any:
        if self.gone:
            raise ContainerNotFound(name)
        return super().get(name)

    def host_veth(self, spec: Any) -> str | None:
        return "pmv-web"

    def rejoin(self, cut: Any) -> None:
        self.events.append(f"rejoin {cut.veth}")


class Peer:
    def __init__(self, fail: BaseException | None = None, settle: str = "aborted", running: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail
        self.settle = settle
        self.running = running
        self.timeout_s = 60.0
        self.closed = False

    def abort_incoming(self, migration_id: str) -> None:
        self.calls.append(("abort", migration_id))
        if self.fail:
            raise self.fail

    def commit_incoming(self, migration_id: str) -> None:
        self.calls.append(("commit", migration_id))
        if self.fail:
            raise self.fail

    def settle_migration(self, migration_id: str, container_id: str = "", ask_source: bool = False) -> Settlement:
        self.calls.append(("settle", migration_id))
        if self.fail:
            raise self.fail
        return Settlement(migration_id, self.settle, self.running)  # type: ignore[arg-type]

    def close(self) -> None:
        self.closed = True


def record(host: FakeHost, migration_id: str = "ab12", *, keep_source: bool = False, mode: str = "cold") -> OutgoingMigrations:
    records = OutgoingMigrations(host.paths)
    records.begin(migration_id, container_id=host.container.container_id, name="web", dest="10.0.0.2:7443",
                  keep_source=keep_source, mode=mode)
    records.detach(migration_id)  # as a restart finds it: no driver of this process works on it
    return records


def test_reconcile_rollback_thaws_and_aborts_on_the_target(tmp_path: Path) -> None:
    host = ReconcileHost(tmp_path / "root")
    records = record(host)
    peer = Peer()
    dialed: list[str] = []
    handled = reconcile_outgoing(host, lambda dest: dialed.append(dest) or peer)
    assert handled == ["ab12"]
    assert host.events == ["rejoin pmv-web", "thaw"]
    assert dialed == ["10.0.0.2:7443"] and peer.calls == [("abort", "ab12")]
    assert peer.timeout_s == outgoing.TARGET_TIMEOUT_S and peer.closed
    assert records.records() == []


def test_reconcile_commit_finishes_the_source_copy(tmp_path: Path) -> None:
    host = ReconcileHost(tmp_path / "root")
    records = record(host, keep_source=True)
    records.past_point_of_no_return("ab12")
    peer = Peer(settle="committed")
    reconcile_outgoing(host, lambda dest: peer)
    assert host.events == ["finish keep=True"]
    assert peer.calls == [("settle", "ab12")]
    assert records.records() == []


def test_reconcile_commit_with_the_target_unreachable_removes_the_copy_and_tells_it_later(tmp_path: Path) -> None:
    host = ReconcileHost(tmp_path / "root")
    records = record(host)
    records.past_point_of_no_return("ab12")
    peer = Peer(fail=TransferError("the daemon at 10.0.0.2:7443 is unreachable"))
    assert reconcile_outgoing(host, lambda dest: peer) == []
    assert host.events == ["finish keep=False"]  # past the point of no return: the target's copy is the one
    assert [r["on_crash"] for r in records.records()] == [COMMIT]
    host.gone = True
    peer.fail, peer.settle = None, "committed"
    assert settle_pending(host, lambda dest: peer) == ["ab12"]
    assert records.records() == []


def test_reconcile_with_the_target_unreachable_still_thaws(tmp_path: Path) -> None:
    host = ReconcileHost(tmp_path / "root")
    records = record(host)

    def connect(dest: str) -> Any:
        raise TransferError(f"the daemon at {dest} is unreachable")

    reconcile_outgoing(host, connect)
    assert host.events == ["rejoin pmv-web", "thaw"]
    assert records.records() == []


def test_reconcile_with_the_target_refusing_still_thaws(tmp_path: Path) -> None:
    host = ReconcileHost(tmp_path / "root")
    record(host)
    reconcile_outgoing(host, lambda dest: Peer(fail=PeerError("no incoming migration ab12")))
    assert host.events == ["rejoin pmv-web", "thaw"]


def test_reconcile_container_gone_drops_the_record(tmp_path: Path) -> None:
    host = ReconcileHost(tmp_path / "root", gone=True)
    records = record(host)
    reconcile_outgoing(host, lambda dest: Peer())
    assert host.events == []
    assert records.records() == []


def test_reconcile_waits_for_an_orphaned_criu_to_leave_the_staging_dir(tmp_path: Path) -> None:
    host = ReconcileHost(tmp_path / "root")
    records = record(host)
    staging = records.staging_dir("ab12")
    staging.mkdir(parents=True)
    # stands in for a criu swrk still dumping into the staging dir of the dead daemon
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.6)"], cwd=staging)
    try:
        time.sleep(0.1)
        assert proc.pid in holders(staging)
        started = time.monotonic()
        reconcile_outgoing(host, lambda dest: Peer())
        waited = time.monotonic() - started
    finally:
        proc.wait(10)
    assert waited >= 0.3
    assert host.events == ["rejoin pmv-web", "thaw"]


def test_holders_ignores_other_paths(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "ab").mkdir()
    with open(tmp_path / "ab" / "f", "w"):
        assert holders(tmp_path / "a") == []
        assert holders(tmp_path / "ab") != []


def test_invalid_migration_ids_are_refused(tmp_path: Path) -> None:
    records = OutgoingMigrations(FakeHost(tmp_path / "root").paths)
    for bad in ("", "../x", "AB", "x" * 65):
        with pytest.raises(ValueError):
            records.end(bad)


def test_reconcile_postcopy_past_the_resume_keeps_the_frozen_copy_when_the_target_cannot_confirm(tmp_path: Path) -> None:
    host = ReconcileHost(tmp_path / "root")
    records = record(host, mode="postcopy")
    records.past_point_of_no_return("ab12")
    paused: list[str] = []
    host.store = type("S", (), {"update_state": lambda self, cid, fn: paused.append(cid)})()
    peer = Peer(settle="lost")  # the target's lazy-pages daemon failed: it removed its copy
    reconcile_outgoing(host, lambda dest: peer)
    assert peer.calls == [("settle", "ab12")]
    assert host.events == []  # neither removed nor thawed: the operator decides
    assert paused == [host.container.container_id]
    assert records.records() == []


def test_reconcile_postcopy_past_the_resume_finishes_when_the_target_confirms(tmp_path: Path) -> None:
    host = ReconcileHost(tmp_path / "root")
    records = record(host, mode="postcopy")
    records.past_point_of_no_return("ab12")
    reconcile_outgoing(host, lambda dest: Peer(settle="committed"))
    assert host.events == ["finish keep=False"]


# --- "unknown": the final dump went out, no answer came back -------------------------------------


def unknown_record(host: FakeHost) -> OutgoingMigrations:
    records = record(host)
    records.outcome_unknown("ab12")
    host.store = type("S", (), {"update_state": lambda self, cid, fn: host.events.append("state")})()
    return records


@pytest.mark.parametrize("answer,running,events", [
    ("committed", False, ["finish keep=False"]),
    ("unknown", True, ["finish keep=False"]),  # the target forgot it but runs the container
    ("aborted", False, ["rejoin pmv-web", "thaw", "state"]),
    ("unknown", False, ["rejoin pmv-web", "thaw", "state"]),
])
def test_reconcile_unknown_follows_the_target(tmp_path: Path, answer: str, running: bool, events: list[str]) -> None:
    host = ReconcileHost(tmp_path / "root")
    records = unknown_record(host)
    peer = Peer(settle=answer, running=running)
    assert reconcile_outgoing(host, lambda dest: peer) == ["ab12"]
    assert peer.calls == [("settle", "ab12")]
    assert host.events == events
    assert records.records() == []


@pytest.mark.parametrize("peer", [Peer(fail=TransferError("the daemon at 10.0.0.2:7443 is unreachable")), Peer(settle="pending")])
def test_reconcile_unknown_keeps_the_copy_frozen_until_the_target_answers(tmp_path: Path, peer: Peer) -> None:
    host = ReconcileHost(tmp_path / "root")
    records = unknown_record(host)
    assert reconcile_outgoing(host, lambda dest: peer) == []
    assert "thaw" not in host.events and not any(e.startswith("finish") for e in host.events)
    assert [r["on_crash"] for r in records.records()] == [UNKNOWN]
    assert records.unsettled_for(host.container.container_id) is not None
    # the daemon asks again; once the target answers, it is settled
    peer.fail, peer.settle = None, "committed"
    assert settle_pending(host, lambda dest: peer) == ["ab12"]
    assert host.events[-1] == "finish keep=False"
    assert records.records() == []


def test_settle_pending_leaves_a_driver_s_own_record_alone(tmp_path: Path) -> None:
    host = ReconcileHost(tmp_path / "root")
    records = OutgoingMigrations(host.paths)
    records.begin("ab12", container_id=host.container.container_id, name="web", dest="10.0.0.2:7443", keep_source=False)
    records.outcome_unknown("ab12")
    peer = Peer(settle="committed")
    assert settle_pending(host, lambda dest: peer) == [] and peer.calls == []
    assert reconcile_outgoing(host, lambda dest: peer) == [] and peer.calls == []
    records.end("ab12")


# --- the driver when the answer is lost ---------------------------------------------------------


class AnswerLostTarget(Target):
    """Restores (its record says so), then the answer never reaches the source."""

    def receive_checkpoint(self, migration_id: str, chunks: Iterator[bytes]) -> Any:
        super().receive_checkpoint(migration_id, chunks)
        raise TransferError("the daemon at 10.0.0.2:7443 is unreachable: Stream removed", phase="restore")


def test_a_lost_answer_settles_committed_and_the_migration_succeeds(tmp_path: Path) -> None:
    host = FakeHost(tmp_path / "root")
    target = AnswerLostTarget()
    result, _events = migrate(host, target)
    assert result.container_name == "web"
    assert "settle_migration" in target.calls and "abort_incoming" not in target.calls
    assert list(target.settled.values()) == ["committed"]
    assert "thaw" not in host.events and host.events[-1].startswith("finish")
    assert OutgoingMigrations(host.paths).records() == []


def test_an_unreachable_target_leaves_the_copy_frozen_and_the_outcome_unknown(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.errors import OutcomeUnknown

    monkeypatch.setattr(outgoing, "SETTLE_WAIT_S", 0.2)
    monkeypatch.setattr(outgoing, "SETTLE_RETRY_S", 0.05)
    host = FakeHost(tmp_path / "root")
    target = AnswerLostTarget()

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise TransferError("the daemon at 10.0.0.2:7443 is unreachable")

    target.settle_migration = unreachable  # type: ignore[method-assign]
    with pytest.raises(OutcomeUnknown) as info:
        migrate(host, target)
    err = info.value
    assert err.phase == "restore" and err.dest == "10.0.0.2:7443" and err.migration_id
    assert "stays frozen here" in err.message and err.hint and "do not unpause" in err.hint
    assert "thaw" not in host.events and not any(e.startswith("finish") for e in host.events)
    records = OutgoingMigrations(host.paths)
    assert [r["on_crash"] for r in records.records()] == [UNKNOWN]
    assert not outgoing._owned_elsewhere(records.records()[0])  # handed over to the daemon's settle_pending
    records.end(err.migration_id)


def test_outcome_unknown_crosses_grpc() -> None:
    grpc = pytest.importorskip("grpc")
    from migrate.remote._rpc_errors import decode, encode
    from migrate.errors import OutcomeUnknown

    code, details, metadata = encode(OutcomeUnknown("outcome unknown", phase="restore", migration_id="ab12", dest="t:1"))
    assert code == grpc.StatusCode.UNAVAILABLE
    back = decode(code, details, metadata, "t:1")
    assert isinstance(back, OutcomeUnknown) and back.migration_id == "ab12" and back.dest == "t:1"
