"""Container logs without a container: the index (writer and reader), the filters, the time forms,
the CLI's rendering and the remote request/response (runtime/logs.py, runtime/log_index.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate.cli import logs as cli_logs
from migrate.remote import convert as cv
from runtime import log_index, logs
from runtime.errors import InvalidArgument
from runtime.log_index import MAGIC, RECORD, STREAM_CODES
from runtime.logs import Index, LogEntry, LogFilter, format_time, parse_time

T0 = 1_700_000_000 * 10**9  # ns
S = 10**9


def rec(stream: str, end: int, t_ns: int, magic: bytes = MAGIC) -> bytes:
    return RECORD.pack(magic, STREAM_CODES[stream], end, t_ns)


def make_root(tmp_path: Path, out: bytes = b"", err: bytes = b"", idx: bytes = b"", mtime_ns: int | None = None) -> Path:
    d = tmp_path / "root" / ".pymigrate"
    d.mkdir(parents=True, exist_ok=True)
    (d / "log").write_bytes(out)
    (d / "log.err").write_bytes(err)
    (d / "log.idx").write_bytes(idx)
    if mtime_ns is not None:
        for name in ("log", "log.err"):
            os.utime(d / name, ns=(mtime_ns, mtime_ns))
    return tmp_path / "root"


def lines(root: Path, **kw: object) -> list[tuple[str, int, bytes]]:
    return [(e.stream, e.time_ns, e.data) for e in logs.read(root, LogFilter(**kw))]  # type: ignore[arg-type]


# -- times -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("2024-05-01T10:00:00Z", 1714557600.0),
    ("2024-05-01T10:00:00.5Z", 1714557600.5),
    ("2024-05-01T10:00:00.123456789Z", 1714557600.123456789),
    ("2024-05-01T12:00:00+02:00", 1714557600.0),
    ("2024-05-01T05:30:00-0430", 1714557600.0),
    ("2024-05-01t10:00:00z", 1714557600.0),
    ("2024-05-01", 1714521600.0),
    ("2024-05-01T10:00", 1714557600.0),
    ("1714557600", 1714557600.0),
    ("1714557600.25", 1714557600.25),
])
def test_parse_time_absolute(text: str, expected: float) -> None:
    assert parse_time(text, now=0) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("text, ago", [("10m", 600), ("1h30m", 5400), ("1.5h", 5400), ("300ms", 0.3), ("2s", 2),
                                       ("1h0m10s", 3610)])
def test_parse_time_durations_count_back_from_now(text: str, ago: float) -> None:
    assert parse_time(text, now=10_000.0) == pytest.approx(10_000.0 - ago)


@pytest.mark.parametrize("text", ["", "yesterday", "10x", "2024-13-01T00:00:00Z", "2024-02-30", "-5m", "1h-3m"])
def test_parse_time_refuses_other_forms(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid time"):
        parse_time(text, now=0)


def test_format_time_is_rfc3339_utc_with_nanoseconds() -> None:
    assert format_time(1714557600 * S + 5) == "2024-05-01T10:00:00.000000005Z"
    assert parse_time(format_time(1714557600 * S + 123456789)) == pytest.approx(1714557600.123456789)


# -- the index as the reader parses it ----------------------------------------------------------------------


def test_index_keeps_valid_records_in_order() -> None:
    index = Index()
    index.feed(rec("stdout", 4, T0) + rec("stderr", 3, T0) + rec("stdout", 9, T0 + S), {"stdout": 9, "stderr": 3}, T0 + 2 * S)
    assert index.streams["stdout"].ends == [4, 9] and index.streams["stdout"].times == [T0, T0 + S]
    assert index.streams["stderr"].ends == [3]


def test_index_skips_garbage_and_lies() -> None:
    now = T0 + 10 * S
    data = b"".join([
        rec("stdout", 4, T0),
        rec("stdout", 8, T0 + S, magic=b"XXXX"),  # no magic
        RECORD.pack(MAGIC, 7, 8, T0 + S),  # unknown stream
        rec("stdout", 4, T0 + S),  # does not grow
        rec("stdout", 2, T0 + S),  # goes back
        rec("stdout", 10**15, T0 + S),  # beyond the file
        rec("stdout", 6, now + 3600 * S),  # the future
        rec("stdout", 6, T0 - S),  # before the last record
        rec("stdout", -1, T0 + S),  # negative
        rec("stdout", 8, T0 + 2 * S),  # fine
        b"\x01\x02\x03",  # a partial record
    ])
    index = Index()
    index.feed(data, {"stdout": 8}, now)
    assert index.streams["stdout"].ends == [4, 8] and index.streams["stdout"].times == [T0, T0 + 2 * S]


def test_line_times_come_from_the_first_record_reaching_their_end(tmp_path: Path) -> None:
    out = b"a\nb\nc\nd\n"
    root = make_root(tmp_path, out=out, idx=rec("stdout", 4, T0) + rec("stdout", 6, T0 + S), mtime_ns=T0 + 5 * S)
    # a and b (ends 2, 4) were seen at T0; c at T0+1s; d after the last record: its file's mtime
    assert lines(root) == [("stdout", T0, b"a\n"), ("stdout", T0, b"b\n"), ("stdout", T0 + S, b"c\n"),
                           ("stdout", T0 + 5 * S, b"d\n")]


def test_streams_merge_in_time_order_stdout_first_on_a_tie(tmp_path: Path) -> None:
    idx = rec("stdout", 3, T0) + rec("stderr", 3, T0) + rec("stderr", 6, T0 + S) + rec("stdout", 6, T0 + 2 * S)
    root = make_root(tmp_path, out=b"o1\no2\n", err=b"e1\ne2\n", idx=idx, mtime_ns=T0 + 3 * S)
    assert [(s, d) for s, _, d in lines(root)] == [("stdout", b"o1\n"), ("stderr", b"e1\n"), ("stderr", b"e2\n"),
                                                   ("stdout", b"o2\n")]


def test_tail_since_until(tmp_path: Path) -> None:
    out = b"".join(b"%d\n" % i for i in range(10))  # each line 2 bytes, one record each, a second apart
    idx = b"".join(rec("stdout", 2 * (i + 1), T0 + i * S) for i in range(10))
    root = make_root(tmp_path, out=out, idx=idx, mtime_ns=T0 + 10 * S)
    data = lambda **kw: b"".join(d for _, _, d in lines(root, **kw))  # noqa: E731
    assert data(tail=3) == b"7\n8\n9\n"
    assert data(tail=0) == b""
    assert data(since=(T0 + 7 * S) / S) == b"7\n8\n9\n"
    assert data(until=(T0 + 2 * S) / S) == b"0\n1\n"
    assert data(since=(T0 + 2 * S) / S, until=(T0 + 6 * S) / S, tail=2) == b"4\n5\n"


def test_an_older_container_without_index_has_its_file_time(tmp_path: Path) -> None:
    d = tmp_path / "root" / ".pymigrate"
    d.mkdir(parents=True)
    (d / "log").write_bytes(b"old\nlines\n")
    os.utime(d / "log", ns=(T0, T0))
    assert lines(tmp_path / "root") == [("stdout", T0, b"old\n"), ("stdout", T0, b"lines\n")]


def test_a_long_line_comes_in_pieces_and_a_partial_last_line_is_kept(tmp_path: Path) -> None:
    big = b"x" * (logs.MAX_LINE + 10)
    root = make_root(tmp_path, out=big + b"\nend", mtime_ns=T0)
    pieces = [d for _, _, d in lines(root)]
    assert b"".join(pieces) == big + b"\nend" and len(pieces) == 3 and max(map(len, pieces)) <= logs.MAX_LINE


def test_hostile_log_directory_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "host"
    secret.mkdir()
    (secret / "log").write_bytes(b"host secret\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / ".pymigrate").symlink_to(secret)
    assert lines(root) == []


def test_hostile_log_files_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"host secret\n")
    d = tmp_path / "root" / ".pymigrate"
    d.mkdir(parents=True)
    (d / "log").symlink_to(tmp_path / "secret")
    os.mkfifo(d / "log.err")  # opening it for reading would block without O_NONBLOCK
    os.mkfifo(d / "log.idx")
    done: list[object] = []
    t = threading.Thread(target=lambda: done.append(lines(tmp_path / "root")), daemon=True)
    t.start()
    t.join(5)
    assert done == [[]]


def test_garbage_index_does_not_break_reading(tmp_path: Path) -> None:
    root = make_root(tmp_path, out=b"one\ntwo\n", idx=os.urandom(100_003), mtime_ns=T0)
    assert [d for _, _, d in lines(root)] == [b"one\n", b"two\n"]


# -- following ---------------------------------------------------------------------------------------------


def test_follow_shows_new_lines_until_the_container_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "POLL_S", 0.01)
    root = make_root(tmp_path, out=b"before\n")
    running = [True]
    it = logs.read(root, LogFilter(tail=0), follow=True, live=lambda: running[0])
    with open(root / ".pymigrate" / "log.err", "ab") as f:
        f.write(b"err line\npartial")
    got = []
    for entry in it:
        if entry.data:
            got.append((entry.stream, entry.data))
        if len(got) == 1:
            running[0] = False  # the partial line is shown once the container stopped
    assert got == [("stderr", b"err line\n"), ("stderr", b"partial")]


def test_follow_until_ends_without_the_container_stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "POLL_S", 0.01)
    root = make_root(tmp_path, out=b"x\n")
    started = time.monotonic()
    assert [e.data for e in logs.read(root, LogFilter(until=time.time() + 0.3), follow=True, live=lambda: True) if e.data] == [b"x\n"]
    assert time.monotonic() - started < 3


# -- the writer (the shim's side) --------------------------------------------------------------------


def test_indexer_records_growth_per_stream(tmp_path: Path) -> None:
    root = make_root(tmp_path, out=b"ab\n")
    clock = iter([T0, T0 + S, T0 + 2 * S])
    ix = log_index.Indexer(root, clock_ns=lambda: next(clock))
    ix.scan()
    (root / ".pymigrate" / "log.err").write_bytes(b"e\n")
    ix.scan()
    ix.scan()  # nothing grew: no record
    raw = (root / ".pymigrate" / "log.idx").read_bytes()
    assert list(RECORD.iter_unpack(raw)) == [(MAGIC, 1, 3, T0), (MAGIC, 2, 2, T0 + S)]  # empty log.err: no record


def test_indexer_realigns_after_garbage(tmp_path: Path) -> None:
    root = make_root(tmp_path, out=b"ab\n", idx=b"junk!")
    log_index.Indexer(root, clock_ns=lambda: T0).scan()
    raw = (root / ".pymigrate" / "log.idx").read_bytes()
    assert len(raw) % RECORD.size == 0
    index = Index()
    index.feed(raw, {"stdout": 3, "stderr": 0}, T0)
    assert index.streams["stdout"].ends == [3]


def test_indexer_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "host-file"
    outside.write_bytes(b"precious")
    root = make_root(tmp_path, out=b"x\n")
    (root / ".pymigrate" / "log.idx").unlink()
    (root / ".pymigrate" / "log.idx").symlink_to(outside)
    log_index.Indexer(root).scan()
    assert outside.read_bytes() == b"precious"
    # the directory itself as a symlink
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "log").write_bytes(b"grown\n")
    os.rename(root / ".pymigrate", tmp_path / "moved")
    (root / ".pymigrate").symlink_to(elsewhere)
    log_index.Indexer(root).scan()
    assert sorted(os.listdir(elsewhere)) == ["log"]


def test_indexer_does_not_open_a_fifo_as_its_index(tmp_path: Path) -> None:
    root = make_root(tmp_path, out=b"x\n")
    (root / ".pymigrate" / "log.idx").unlink()
    os.mkfifo(root / ".pymigrate" / "log.idx")
    t = threading.Thread(target=log_index.Indexer(root).scan, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive()


def test_indexer_thread_indexes_writes_and_stops(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    ix = log_index.Indexer(root).start()
    try:
        with open(root / ".pymigrate" / "log", "ab") as f:
            f.write(b"hello\n")
        deadline = time.monotonic() + 5
        while (root / ".pymigrate" / "log.idx").stat().st_size < RECORD.size * 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        ix.stop()
    got = lines(root)
    assert [d for _, _, d in got] == [b"hello\n"] and abs(got[0][1] - time.time_ns()) < 10 * S


# -- the CLI and the remote edge ---------------------------------------------------------------------------


def test_parse_tail() -> None:
    assert cli_logs.parse_tail("all") is None and cli_logs.parse_tail("5") == 5 and cli_logs.parse_tail("0") == 0
    for bad in ("-1", "x", ""):
        with pytest.raises(InvalidArgument, match="invalid --tail"):
            cli_logs.parse_tail(bad)


def test_write_entries_splits_streams_and_prefixes_times(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    entries = [LogEntry("stdout", T0, b"out\n"), LogEntry("stdout", 0, b""), LogEntry("stderr", T0 + 1, b"err\n"),
               LogEntry("stdout", T0 + 2, b"no newline")]
    assert cli_logs.write_entries(entries, timestamps=True) is True
    out, err = capfdbinary.readouterr()
    assert out == b"2023-11-14T22:13:20.000000000Z out\n2023-11-14T22:13:20.000000002Z no newline"
    assert err == b"2023-11-14T22:13:20.000000001Z err\n"


def test_entries_json() -> None:
    assert cli_logs.entries_json([LogEntry("stderr", T0, b"e\n"), LogEntry("stdout", 0, b"")]) == [
        {"stream": "stderr", "time": "2023-11-14T22:13:20.000000000Z", "time_ns": T0, "line": "e\n"}]


def test_remote_request_and_response_round_trip() -> None:
    request = cv.logs_request("web", True, 5, 1.5, None)
    assert cv.logs_arguments(request) == {"follow": True, "tail": 5, "since": 1.5, "until": None}
    old_client = pb.StreamLogsRequest(name="web", follow=False)
    assert cv.logs_arguments(old_client) == {"follow": False, "tail": None, "since": None, "until": None}
    assert cv.logs_arguments(cv.logs_request("web", False, 0, None, None))["tail"] == 0
    entry = cv.log_entry_from_pb(cv.log_entry_to_pb(LogEntry("stderr", T0 + 123_000, b"x\n")))
    assert entry.stream == "stderr" and entry.data == b"x\n" and abs(entry.time_ns - (T0 + 123_000)) < 1000
    assert cv.log_entry_from_pb(pb.StreamLogsResponse(data=b"old server\n")) == LogEntry("stdout", 0, b"old server\n")


def test_remote_logs_through_a_daemon() -> None:
    import shutil
    import tempfile

    from migrate import api
    from tests.unit.test_service import start_daemon

    sockdir = Path(tempfile.mkdtemp(prefix="pm-logs-", dir="/tmp"))  # a short unix socket path
    daemon = start_daemon(f"unix:{sockdir}/d.sock", spool_dir=sockdir / "spool")
    try:
        (sockdir / "busybox.tar").write_bytes(os.urandom(1000))
        daemon.client.image_import("busybox", sockdir / "busybox.tar")
        daemon.client.run(api.RunOptions(image="busybox", name="web"))
        daemon.engine._logs[daemon.engine.inspect("web").spec.container_id] = b"out\nerr: oops\n"
        got = list(daemon.client.logs("web", tail=2, since=5.0))
        assert [(e.stream, e.data) for e in got] == [("stdout", b"out\n"), ("stderr", b"err: oops\n")]
        assert abs(got[0].time_ns - 1_700_000_000_123_456_789) < 1000
        assert daemon.engine.logs_calls[-1] == {"name": "web", "follow": False, "tail": 2, "since": 5.0, "until": None}
    finally:
        daemon.close()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_an_indexer_that_cannot_start_leaves_the_shim_going(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def no_fds(_flags: int) -> tuple[int, int]:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(log_index.os, "pipe2", no_fds)
    assert log_index.start(make_root(tmp_path)) is None
