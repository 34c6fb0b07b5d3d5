"""runtime/events.py: the journal's append, read, rotation, cursors, filters, and two appenders."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from migrate.remote.client import RemoteEngine
from runtime.errors import EventsLost, InvalidArgument
from runtime.events import Event, EventFilter, Journal, emit, emit_container
from tests.fakes.engine import FakeEngine


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


# --- WatchEvents over a real gRPC socket (the servicer and RemoteEngine.events) -----------------


class _JournalEngine(FakeEngine):
    """The fake engine with LocalEngine's events over a real journal."""

    def __init__(self, root: Path, max_bytes: int = 1 << 20) -> None:
        super().__init__()
        self.journal = Journal(root, max_bytes=max_bytes)

    def events(self, since: int | None = None, filters: tuple[str, ...] = ()) -> Iterator[Event | None]:
        wanted = EventFilter.parse(filters)
        return (e for e in self.journal.follow(since, poll_s=0.01) if e is None or wanted.match(e))


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[_JournalEngine, RemoteEngine]]:
    from migrate.remote.server import create_server
    from migrate.remote.service import HostServicer

    monkeypatch.setattr(HostServicer, "events_keepalive_s", 0.05)
    sockdir = Path(tempfile.mkdtemp(prefix="pm-ev-", dir="/tmp"))  # unix socket paths are short
    engine = _JournalEngine(tmp_path)
    server, _ = create_server(engine, f"unix:{sockdir}/d.sock")  # type: ignore[arg-type]
    server.start()
    client = RemoteEngine(server.target, insecure=True)
    yield engine, client
    client.close()
    server.stop(0)
    shutil.rmtree(sockdir, ignore_errors=True)


def _take(stream: Iterator[Event | None], count: int, timeout_s: float = 10) -> list[Event]:
    got: list[Event] = []
    deadline = time.monotonic() + timeout_s
    for event in stream:
        if event is not None:
            got.append(event)
        if len(got) == count or time.monotonic() > deadline:
            break
    return got


def test_watch_resumes_after_a_disconnect_with_nothing_lost_or_repeated(watched: tuple[_JournalEngine, RemoteEngine]) -> None:
    engine, client = watched
    for i in range(3):
        engine.journal.append("container", "create", f"c{i}", f"n{i}", {"app": "x"})
    first = client.events(since=1)
    got = _take(first, 2)
    engine.journal.append("container", "die", "c0", "n0", {"exitCode": 3})
    got += _take(first, 1)
    first.close()  # the disconnect (the call is cancelled)
    assert [e.sequence for e in got] == [2, 3, 4]
    assert got[2].attributes == {"exitCode": "3"} and got[0].name == "n1"
    for i in range(3):
        engine.journal.append("image", "pull", f"sha256:{i}", "busybox")
    resumed = client.events(since=got[-1].sequence)
    assert [e.sequence for e in _take(resumed, 3)] == [5, 6, 7]
    resumed.close()
    only_new = client.events()
    assert next(only_new) is None  # a keep-alive: nothing new yet, not the history
    only_new.close()


def test_watch_filters_and_errors(watched: tuple[_JournalEngine, RemoteEngine]) -> None:
    engine, client = watched
    engine.journal.append("container", "start", "c1", "web", {"team": "blue"})
    engine.journal.append("container", "die", "c1", "web", {"team": "blue"})
    engine.journal.append("container", "die", "c2", "db", {"team": "red"})
    dies = client.events(0, ("event=die", "label=team=red"))
    assert [(e.sequence, e.name) for e in _take(dies, 1)] == [(3, "db")]
    dies.close()
    with pytest.raises(InvalidArgument, match="invalid event filter"):
        next(client.events(0, ("color=red",)))


def test_watch_with_a_rotated_out_cursor_is_events_lost(tmp_path: Path, watched: tuple[_JournalEngine, RemoteEngine]) -> None:
    engine, client = watched
    engine.journal = Journal(tmp_path, max_bytes=600)
    for i in range(30):
        engine.journal.append("container", "start", f"c{i}", "web")
    with pytest.raises(EventsLost) as err:
        next(client.events(since=1))
    assert err.value.since == 1 and err.value.oldest > 2


# --- pymigrate events (migrate/cli/events.py), local ---------------------------------------------


def test_cli_prints_history_then_stops_at_until(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from migrate.cli import main

    journal = Journal(tmp_path)
    journal.append("container", "create", "c" * 32, "web", {"app": "shop"})
    journal.append("image", "pull", "sha256:1", "busybox")
    journal.append("container", "die", "c" * 32, "web", {"exitCode": 3})
    started = time.monotonic()
    until = f"{time.time() + 0.5:.3f}"
    assert main(["--root", str(tmp_path), "events", "--since", "1", "--until", until, "--json", "-f", "type=container"]) == 0
    assert 0.4 < time.monotonic() - started < 5  # followed until --until, then stopped
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["sequence"], e["action"], e["attributes"]) for e in lines] == [(3, "die", {"exitCode": "3"})]
    assert main(["--root", str(tmp_path), "events", "--since", "0", "--until", "0s"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("1 ") and text[0].endswith(f"container create {'c' * 32} (name=web, app=shop)")
    assert len(text) == 3


def test_cli_since_time_starts_at_the_oldest_kept_after_a_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import runtime.events as events
    from migrate.cli import main

    monkeypatch.setattr(events, "MAX_BYTES", 700)
    for i in range(20):
        Journal(tmp_path).append("container", "start", f"c{i}", "web")
    kept = [e.sequence for e in Journal(tmp_path).read()]
    assert kept[0] > 1
    assert main(["--root", str(tmp_path), "events", "--since", "1h", "--until", "0s", "--json"]) == 0
    assert [json.loads(line)["sequence"] for line in capsys.readouterr().out.splitlines()] == kept
    assert main(["--root", str(tmp_path), "events", "--since", "1", "--until", "0s"]) == 125  # a cursor: lost
    assert "were lost" in capsys.readouterr().err


def test_parse_since() -> None:
    from migrate.cli.events import parse_since

    assert parse_since(None) == (None, None)
    assert parse_since("42") == (42, None)
    assert parse_since("1700000000") == (None, 1700000000.0)
    cursor, since = parse_since("10m")
    assert cursor is None and since is not None and abs(time.time() - 600 - since) < 5
