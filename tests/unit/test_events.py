"""runtime/events.py: the journal's append, read, rotation, cursors, filters, and two appenders."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from runtime.errors import EventsLost, InvalidArgument
from runtime.events import Event, EventFilter, Journal, emit, emit_container


def _append(root: Path, n: int, who: str, max_bytes: int = 1 << 20) -> None:
    journal = Journal(root, max_bytes=max_bytes)
    for i in range(n):
        journal.append("container", "start", f"{who}{i}", who)


def test_append_and_read_in_order_with_cursor(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    assert journal.read() == [] and journal.last_sequence() == 0
    first = journal.append("container", "create", "c1", "web", {"app": "x", "n": 3})
    second = journal.append("container", "start", "c1", "web")
    assert (first.sequence, second.sequence) == (1, 2)
    assert first.attributes == {"app": "x", "n": "3"}
    assert [e.action for e in journal.read()] == ["create", "start"]
    assert journal.read(since=1) == [second]
    assert journal.read(since=2) == []
    assert journal.last_sequence() == 2
    assert Event.from_json(second.to_json()) == second


def test_killed_writer_fragment_is_skipped_and_never_joins_a_line(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append("image", "pull", "sha256:1", "busybox")
    with open(tmp_path / "events" / "journal.jsonl", "ab") as f:
        f.write(b'{"sequence": 2, "ti')  # a writer killed mid-line
    journal.append("image", "tag", "sha256:1", "bb")
    assert [(e.sequence, e.action) for e in journal.read()] == [(1, "pull"), (2, "tag")]


def test_rotation_keeps_the_last_files_and_an_old_cursor_is_lost(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=2000)
    for i in range(100):
        journal.append("container", "start", f"id{i}", f"name{i}")
    events = journal.read()
    assert events[-1].sequence == 100
    assert [e.sequence for e in events] == list(range(events[0].sequence, 101))  # no gap in what is kept
    assert events[0].sequence > 2
    assert (tmp_path / "events" / "journal.jsonl").stat().st_size <= 2000
    oldest = events[0].sequence
    assert journal.read(since=oldest - 1)[0].sequence == oldest
    with pytest.raises(EventsLost) as err:
        journal.read(since=oldest - 2)
    assert (err.value.since, err.value.oldest) == (oldest - 2, oldest)
    assert "lost" in str(err.value) and err.value.hint


def test_follow_from_cursor_then_new_events_across_a_rotation(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1500)
    for i in range(5):
        journal.append("container", "create", f"id{i}", "a")
    seen: list[int] = []
    follower = journal.follow(since=3, poll_s=0.01)

    def take(until: int) -> None:
        for event in follower:
            if event is not None:
                seen.append(event.sequence)
                if event.sequence == until:
                    return

    take(5)
    for i in range(15):  # more than one file's worth: rotates once while the follower waits
        journal.append("container", "start", f"id{i}", "b")
    take(20)
    assert seen == list(range(4, 21))


def test_follow_without_cursor_sees_only_new_events(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append("container", "create", "old", "a")
    follower = journal.follow(poll_s=0.01)
    assert next(follower) is None
    journal.append("container", "die", "new", "a")
    event = next(e for e in follower if e is not None)
    assert (event.sequence, event.id) == (2, "new")


def test_follow_raises_when_rotated_twice_past_the_cursor(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=600)
    journal.append("container", "create", "x", "a")
    follower = journal.follow(since=1, poll_s=0.01)
    assert next(follower) is None
    for i in range(40):
        journal.append("container", "start", f"id{i}", "b")
    with pytest.raises(EventsLost):
        next(follower)


def test_two_processes_and_threads_append_without_repeats(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append, args=(tmp_path, 150, w, 8000)) for w in ("p", "q")]
    threads = [threading.Thread(target=_append, args=(tmp_path, 100, "t", 8000))]
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    for p in procs:
        p.join()
    for t in threads:
        t.join()
    assert all(p.exitcode == 0 for p in procs)
    journal = Journal(tmp_path, max_bytes=8000)
    assert journal.last_sequence() == 400
    kept = [e.sequence for e in journal.read(since=journal.read()[0].sequence - 1)]
    assert kept == list(range(kept[0], 401))  # contiguous and unique: every append got its own number


def test_emit_never_raises(tmp_path: Path) -> None:
    (tmp_path / "events").write_text("a file where the directory goes")
    emit(tmp_path, "image", "pull", "sha256:1", "busybox")  # logged, not raised
    emit_container(tmp_path, "die", object())  # no spec fields: logged


def test_emit_container_carries_labels_and_image(tmp_path: Path) -> None:
    class Spec:
        container_id, name, image, labels = "abcdef0123", "web", "busybox", {"app": "shop"}

    emit_container(tmp_path, "die", Spec(), exitCode=3, skipped=None)
    (event,) = Journal(tmp_path).read()
    assert (event.type, event.action, event.id, event.name) == ("container", "die", "abcdef0123", "web")
    assert event.attributes == {"app": "shop", "image": "busybox", "exitCode": "3"}


def _ev(type: str, action: str, id: str = "abcdef01", name: str = "web", **attrs: str) -> Event:
    return Event(1, 0.0, type, action, id, name, attrs)


def test_filters() -> None:
    f = EventFilter.parse(["type=container", "event=die", "event=start", "label=app=shop"])
    assert f.match(_ev("container", "die", app="shop"))
    assert not f.match(_ev("container", "die", app="other"))
    assert not f.match(_ev("container", "create", app="shop"))
    assert not f.match(_ev("image", "die", app="shop"))
    assert EventFilter.parse(["label=app"]).match(_ev("container", "die", app="x"))
    by_container = EventFilter.parse(["container=web"])
    assert by_container.match(_ev("migration", "start", id="m1"))
    assert not by_container.match(_ev("image", "pull"))
    assert EventFilter.parse(["container=abcd"]).match(_ev("container", "start", name="x"))
    assert EventFilter.parse(["container=abcd"]).match(_ev("checkpoint", "create", id="c", name="x", container_id="abcdef"))
    assert EventFilter.parse([]).match(_ev("image", "pull"))
    for bad in ("type=volume", "nokey", "color=red", "event="):
        with pytest.raises(InvalidArgument):
            EventFilter.parse([bad])
