"""migrate/remote/idempotency.py: request_id records, waiting retries, reuse refused, expiry."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from migrate.remote import idempotency
from migrate.remote._rpc_errors import RpcCancelled
from migrate.remote.idempotency import RequestStore
from runtime.errors import InvalidArgument


def _call(store: RequestStore, rid: str, body: bytes, answer: bytes, calls: list[bytes], method: str = "Run") -> bytes:
    with store.claim(method, rid, body) as claim:
        if claim.result is not None:
            return claim.result
        calls.append(answer)
        claim.record(answer)
        return answer


@pytest.mark.parametrize("on_disk", [True, False])
def test_same_id_returns_the_first_answer(tmp_path: Path, on_disk: bool) -> None:
    store = RequestStore(tmp_path / "requests" if on_disk else None)
    calls: list[bytes] = []
    assert _call(store, "id-1", b"req", b"first", calls) == b"first"
    assert _call(store, "id-1", b"req", b"second", calls) == b"first"
    assert calls == [b"first"]
    assert _call(store, "id-2", b"req", b"other", calls) == b"other"  # another id runs again
    if on_disk:  # a restarted daemon (a new store on the same root) still knows it
        assert _call(RequestStore(tmp_path / "requests"), "id-1", b"req", b"third", calls) == b"first"
        records = list((tmp_path / "requests").glob("*.json"))
        assert len(records) == 2 and "id-1" not in records[0].name  # file names are digests of the id


def test_no_id_claims_nothing(tmp_path: Path) -> None:
    store = RequestStore(tmp_path)
    calls: list[bytes] = []
    _call(store, "", b"req", b"a", calls)
    _call(store, "", b"req", b"b", calls)
    assert calls == [b"a", b"b"] and not list(tmp_path.iterdir())


def test_reuse_with_other_arguments_or_method_refused(tmp_path: Path) -> None:
    store = RequestStore(tmp_path)
    _call(store, "id", b"req", b"a", [])
    with pytest.raises(InvalidArgument, match="request_id reused with different arguments"):
        _call(store, "id", b"other req", b"b", [])
    # another method has its own ids (the key is the method and the id)
    assert _call(store, "id", b"other req", b"c", [], method="Checkpoint") == b"c"


def test_failed_call_leaves_no_record(tmp_path: Path) -> None:
    store = RequestStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.claim("Run", "id", b"req"):
            raise RuntimeError("boom")
    assert _call(store, "id", b"req", b"retried", []) == b"retried"


def test_too_long_id_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="request_id"):
        _call(RequestStore(tmp_path), "x" * 257, b"req", b"a", [])


@pytest.mark.parametrize("on_disk", [True, False])
def test_retry_during_the_first_call_waits_for_its_answer(tmp_path: Path, on_disk: bool) -> None:
    store = RequestStore(tmp_path if on_disk else None)
    started, release = threading.Event(), threading.Event()
    calls: list[bytes] = []

    def first() -> None:
        with store.claim("Run", "id", b"req") as claim:
            started.set()
            release.wait(5)
            calls.append(b"first")
            claim.record(b"first")

    worker = threading.Thread(target=first)
    worker.start()
    started.wait(5)
    answers: list[bytes] = []
    retry = threading.Thread(target=lambda: answers.append(_call(store, "id", b"req", b"second", calls)))
    retry.start()
    time.sleep(0.3)
    assert not answers  # still waiting
    release.set()
    worker.join(5)
    retry.join(5)
    assert answers == [b"first"] and calls == [b"first"]


def test_waiting_retry_stops_when_its_caller_goes_away(tmp_path: Path) -> None:
    store = RequestStore(tmp_path)
    with store.claim("Run", "id", b"req"):
        with pytest.raises(RpcCancelled):
            with store.claim("Run", "id", b"req", still_wanted=lambda: False):
                pass


def test_expired_records_are_ignored_and_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RequestStore(tmp_path, ttl_s=60)
    _call(store, "id", b"req", b"old", [])
    (record,) = tmp_path.glob("*.json")
    data = json.loads(record.read_text())
    data["created_at"] -= 120
    record.write_text(json.dumps(data))
    assert _call(store, "id", b"other", b"new", []) == b"new"  # expired: the id is free again
    (record,) = tmp_path.glob("*.json")
    old = time.time() - 120
    os.utime(record, (old, old))
    monkeypatch.setattr(idempotency, "SWEEP_EVERY_S", 0.0)
    _call(store, "other-id", b"req", b"x", [])
    assert len(list(tmp_path.glob("*.json"))) == 1 and not record.exists()
