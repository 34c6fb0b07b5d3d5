"""A Migrate retried after its daemon died mid-call (issue 15): the pending note of a request id
(migrate/remote/idempotency.py Claim.begin) and the journal's verdict (migrate/remote/migrate_retry.py);
the settlement's events that verdict reads (migrate/migration/recovery.py journal_settled)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate.migration.recovery import journal_settled
from migrate.remote import migrate_retry
from migrate.remote.idempotency import RequestStore
from runtime.events import Journal, emit


def _crash_mid_call(store: RequestStore, note: dict[str, Any]) -> None:
    """A call that began and then "died": its claim never ended (a killed daemon runs no finally)."""
    with store.claim("Migrate", "id-1", b"req") as claim:
        claim.begin(note)
        claim._began = False  # what a SIGKILL leaves: the note on disk, no _end


@pytest.mark.parametrize("on_disk", [True, False])
def test_a_note_survives_only_a_crash(tmp_path: Path, on_disk: bool) -> None:
    store = RequestStore(tmp_path / "requests" if on_disk else None)
    with pytest.raises(RuntimeError):
        with store.claim("Migrate", "id-1", b"req") as claim:
            claim.begin({"container_id": "c1", "since": 1.0})
            raise RuntimeError("the migration failed")
    with store.claim("Migrate", "id-1", b"req") as claim:
        assert claim.result is None and claim.interrupted is None  # a failed call leaves nothing
    _crash_mid_call(store, {"container_id": "c1", "since": 1.0})
    with store.claim("Migrate", "id-1", b"req") as claim:
        assert claim.result is None and claim.interrupted == {"container_id": "c1", "since": 1.0}


@pytest.mark.parametrize("on_disk", [True, False])
def test_a_failed_retry_puts_the_first_note_back(tmp_path: Path, on_disk: bool) -> None:
    store = RequestStore(tmp_path / "requests" if on_disk else None)
    _crash_mid_call(store, {"container_id": "c1", "since": 1.0})
    with pytest.raises(RuntimeError):
        with store.claim("Migrate", "id-1", b"req") as claim:
            claim.begin({"container_id": "c1", "since": 2.0})
            raise RuntimeError("frozen until its migration is settled")
    with store.claim("Migrate", "id-1", b"req") as claim:
        assert claim.interrupted == {"container_id": "c1", "since": 1.0}
        claim.begin({"container_id": "c1", "since": 1.0})
        claim.record(b"answer")
    with store.claim("Migrate", "id-1", b"req") as claim:
        assert claim.result == b"answer" and claim.interrupted is None


def test_a_note_with_other_arguments_is_refused(tmp_path: Path) -> None:
    from runtime.errors import InvalidArgument

    store = RequestStore(tmp_path)
    _crash_mid_call(store, {"container_id": "c1", "since": 1.0})
    with pytest.raises(InvalidArgument):
        with store.claim("Migrate", "id-1", b"other request"):
            pass


def _request(dest: str = "10.0.0.2:7443") -> pb.MigrateRequest:
    return pb.MigrateRequest(name="web", dest=dest, request_id="id-1")


def _record(mode: str = "cold") -> dict[str, Any]:
    return {"migration_id": "m1", "container_id": "c1", "name": "web", "dest": "10.0.0.2:7443", "mode": mode}


def test_the_journal_says_how_an_interrupted_migration_ended(tmp_path: Path) -> None:
    note = {"container_id": "c1", "since": time.time()}
    host = SimpleNamespace(paths=SimpleNamespace(root=tmp_path))
    assert migrate_retry.settled_result(tmp_path, _request(), note) is None  # nothing journalled yet: run again
    container = SimpleNamespace(spec=SimpleNamespace(container_id="c1", name="web", labels={"tier": "web"}, image="busybox"))
    journal_settled(host, _record("postcopy"), container, "committed")
    result = migrate_retry.settled_result(tmp_path, _request(), note)
    assert result is not None and (result.container_name, result.dest, result.mode) == ("web", "10.0.0.2:7443", "postcopy")
    assert migrate_retry.settled_result(tmp_path, _request("10.0.0.3:7443"), note) is None  # another destination
    assert migrate_retry.settled_result(tmp_path, _request(), {**note, "container_id": "c2"}) is None
    assert migrate_retry.settled_result(tmp_path, _request(), {**note, "since": time.time() + 60}) is None  # older
    events = Journal(tmp_path).read()
    assert [(e.type, e.action) for e in events] == [("migration", "completed"), ("container", "remove")]
    assert events[0].attributes["settled"] == "committed" and events[0].attributes["tier"] == "web"
    assert events[1].attributes["migration_id"] == "m1"


def test_a_rolled_back_or_failed_migration_runs_again(tmp_path: Path) -> None:
    note = {"container_id": "c1", "since": time.time()}
    host = SimpleNamespace(paths=SimpleNamespace(root=tmp_path))
    journal_settled(host, _record(), None, "aborted")
    assert migrate_retry.settled_result(tmp_path, _request(), note) is None
    assert Journal(tmp_path).read()[-1].attributes["error"] == "rolled back after a restart"
    # a driver's own completed event (the daemon died after it, before the answer was recorded) answers, stats kept
    emit(tmp_path, "migration", "completed", "m2", "web", {"container_id": "c1", "dest": "10.0.0.2:7443", "mode": "cold",
                                                         "frozen_ms": "41.5", "total_ms": "900"})
    result = migrate_retry.settled_result(tmp_path, _request(), note)
    assert result is not None and (result.stats.frozen_ms, result.stats.total_ms) == (41.5, 900.0)


def test_note_keeps_the_first_start_time() -> None:
    engine = SimpleNamespace(inspect=lambda name: SimpleNamespace(spec=SimpleNamespace(container_id="c1")))
    assert migrate_retry.note(engine, _request(), {"container_id": "c1", "since": 5.0})["since"] == 5.0
    assert migrate_retry.note(engine, _request(), None)["since"] > 5.0
    assert migrate_retry.note(engine, _request(), {"container_id": "c9", "since": 5.0})["since"] > 5.0
