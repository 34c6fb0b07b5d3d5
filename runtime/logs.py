"""Reading a container's logs: its two streams, the times of their lines, tail/since/until.

The files are /.pymigrate/log (stdout; a ``-t`` container's terminal; an older container's both
streams), /.pymigrate/log.err (stderr) and the index of their times, /.pymigrate/log.idx
(runtime/log_index.py). All three are the container's own files, which it may have rewritten:
the directory and files are opened without following symlinks, only regular files are read, the
index is read at most ``MAX_INDEX_BYTES`` from its end, and a record counts only if it has the
magic, a known stream, an offset beyond the stream's last one and within the file, and a time
neither before the last one nor in the future. Garbage costs the container its own timestamps.

A line's time: the first record of its stream whose offset reaches the line's end; a line
written after the last record (not indexed yet, or never: a container from before the index) gets
its file's modification time. Times never go backwards within a stream, so the two streams merge
in time order (stdout first on a tie). A line longer than ``MAX_LINE`` comes in pieces.
"""

from __future__ import annotations

import bisect
import heapq
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from runtime.errors import InvalidArgument
from runtime.log_index import FILE_NAMES, INDEX_NAME, MAGIC, RECORD, STREAM_CODES, open_log_dir, open_regular

MAX_INDEX_BYTES = 16 << 20  # ~700k records; older lines take the first kept record's time
MAX_LINE = 64 << 10
CHUNK = 1 << 16
FUTURE_SLACK_NS = 60 * 10**9  # a record this far ahead of our clock is garbage
POLL_S = 0.05  # follow: how often the files are looked at
KEEPALIVE_S = 1.0  # follow: an empty entry this often while silent (a cancelled RPC notices)
PARTIAL_HOLD_S = 0.2  # follow: a line without its newline is shown once it stopped growing this long

_STREAM_BY_CODE = {code: stream for stream, code in STREAM_CODES.items()}


@dataclass(frozen=True)
class LogEntry:
    """One line of a container's output (with its newline; the last may lack it)."""

    stream: str  # stdout | stderr
    time_ns: int  # unix ns; 0 when unknown
    data: bytes


@dataclass(frozen=True)
class LogFilter:
    tail: int | None = None  # only the last N lines of the two streams together; None: all
    since: float | None = None  # unix s: lines written at or after it
    until: float | None = None  # unix s: lines written before it (follow stops there)

    def keeps(self, entry: LogEntry) -> bool:
        t = entry.time_ns / 1e9
        return (self.since is None or t >= self.since) and (self.until is None or t < self.until)


@dataclass
class StreamTimes:
    """One stream's accepted index records: end offsets and times, both increasing."""

    ends: list[int] = field(default_factory=list)
    times: list[int] = field(default_factory=list)

    def time_of(self, end: int, fallback_ns: int) -> int:
        i = bisect.bisect_left(self.ends, end)
        return self.times[i] if i < len(self.times) else max(fallback_ns, self.times[-1] if self.times else 0)


class Index:
    """The parsed index of a container's logs, fed as it grows."""

    def __init__(self) -> None:
        self.streams = {stream: StreamTimes() for stream in FILE_NAMES}
        self.last_ns = 0

    def feed(self, data: bytes, sizes: dict[str, int], now_ns: int) -> None:
        """Accept the valid records of ``data`` (whole records; see the module doc for what counts)."""
        usable = len(data) - len(data) % RECORD.size
        for magic, code, end, t in RECORD.iter_unpack(data[:usable]):
            stream = _STREAM_BY_CODE.get(code)
            if magic != MAGIC or stream is None or not self.last_ns <= t <= now_ns + FUTURE_SLACK_NS:
                continue
            times = self.streams[stream]
            if not (times.ends[-1] if times.ends else 0) < end <= sizes.get(stream, 0):
                continue
            times.ends.append(end)
            times.times.append(t)
            self.last_ns = t


class _Stream:
    """One log file being read: its fd, our position, a partial line held back."""

    def __init__(self, stream: str, fd: int) -> None:
        self.stream = stream
        self.fd = fd
        self.pos = 0  # of the next byte to read
        self.partial = b""
        self.grown_at = time.monotonic()

    def stat(self) -> tuple[int, int]:
        st = os.fstat(self.fd)
        return st.st_size, st.st_mtime_ns

    def read(self, upto: int) -> list[tuple[int, bytes]]:
        """The lines completed by the next chunk below ``upto``, as (end offset, line)."""
        data = os.pread(self.fd, min(CHUNK, upto - self.pos), self.pos) if upto > self.pos else b""
        if not data:
            return []
        self.grown_at = time.monotonic()
        start = self.pos - len(self.partial)
        self.pos += len(data)
        data, self.partial = self.partial + data, b""
        out: list[tuple[int, bytes]] = []
        begin = 0
        while True:
            nl = data.find(b"\n", begin, begin + MAX_LINE)
            if nl < 0 and len(data) - begin >= MAX_LINE:
                nl = begin + MAX_LINE - 1  # a piece of a very long line
            if nl < 0:
                self.partial = data[begin:]
                return out
            out.append((start + nl + 1, data[begin:nl + 1]))
            begin = nl + 1

    def take_partial(self) -> list[tuple[int, bytes]]:
        piece, self.partial = self.partial, b""
        return [(self.pos, piece)] if piece else []


class LogReader:
    """A container's log files, opened once (``root``: its mounted root, or its upper dir)."""

    def __init__(self, root: Path) -> None:
        self.index = Index()
        self.streams: list[_Stream] = []
        self._index_fd: int | None = None
        self._index_pos = 0
        try:
            dirfd = open_log_dir(root)
        except OSError:
            return  # no log directory, or not one: no output
        try:
            for stream, name in FILE_NAMES.items():
                fd = open_regular(dirfd, name, os.O_RDONLY | os.O_NONBLOCK)
                if fd is not None:
                    self.streams.append(_Stream(stream, fd))
            self._index_fd = open_regular(dirfd, INDEX_NAME, os.O_RDONLY | os.O_NONBLOCK)
        finally:
            os.close(dirfd)

    def __del__(self) -> None:  # a read() whose generator never started
        self.close()

    def close(self) -> None:
        for fd in [s.fd for s in self.streams] + ([self._index_fd] if self._index_fd is not None else []):
            os.close(fd)
        self.streams = []
        self._index_fd = None

    def refresh(self) -> dict[str, tuple[int, int]]:
        """Read the index's new records; then each stream's (size, mtime ns) as of now."""
        if self._index_fd is not None:
            size = os.fstat(self._index_fd).st_size
            if not self._index_pos and size > MAX_INDEX_BYTES:
                self._index_pos = size - MAX_INDEX_BYTES - (size - MAX_INDEX_BYTES) % RECORD.size
            data = _pread_all(self._index_fd, self._index_pos, min(size, self._index_pos + MAX_INDEX_BYTES))
            data = data[:len(data) - len(data) % RECORD.size]
            self._index_pos += len(data)
        else:
            data = b""
        stats = {s.stream: s.stat() for s in self.streams}  # after the index: a real record fits the size
        self.index.feed(data, {k: v[0] for k, v in stats.items()}, time.time_ns())
        return stats

    def entries(self, stream: _Stream, upto: int, mtime_ns: int, final: bool) -> Iterator[LogEntry]:
        """``stream``'s lines up to offset ``upto`` with their times; ``final``: its partial last line too."""
        times = self.index.streams[stream.stream]
        while stream.pos < upto:
            before = stream.pos
            lines = stream.read(upto)
            if stream.pos == before:
                break  # the file shrank under us
            for end, data in lines:
                yield LogEntry(stream.stream, times.time_of(end, mtime_ns), data)
        if final:
            for end, data in stream.take_partial():
                yield LogEntry(stream.stream, times.time_of(end, mtime_ns), data)


def _pread_all(fd: int, start: int, end: int) -> bytes:
    chunks = []
    while start < end:
        chunk = os.pread(fd, min(1 << 20, end - start), start)
        if not chunk:
            break
        chunks.append(chunk)
        start += len(chunk)
    return b"".join(chunks)


def read(root: Path, filt: LogFilter = LogFilter(), *, follow: bool = False,
         live: Callable[[], bool] = lambda: False) -> Iterator[LogEntry]:
    """The container's lines in time order, filtered; with ``follow``, new lines until ``live()``
    says the container stopped (or ``until`` passed). Following yields an entry with empty data
    every ``KEEPALIVE_S`` of silence, so a consumer (an RPC) notices when it should end.

    What counts as written already (for ``tail``) is fixed by this call, not by the first
    ``next()``: ``read(..., follow=True, tail=0)`` before a start shows everything after it."""
    reader = LogReader(root)
    try:
        stats = reader.refresh()
    except BaseException:
        reader.close()
        raise
    return _read(reader, stats, filt, follow, live)


def _read(reader: LogReader, stats: dict[str, tuple[int, int]], filt: LogFilter, follow: bool,
          live: Callable[[], bool]) -> Iterator[LogEntry]:
    try:
        yield from _present(reader, stats, filt, final=not follow)
        if follow:
            yield from _follow(reader, filt, live)
    finally:
        reader.close()


def _present(reader: LogReader, stats: dict[str, tuple[int, int]], filt: LogFilter, final: bool) -> Iterator[LogEntry]:
    """What was written at ``stats``: both streams merged by time (a stable merge: stdout first on a tie)."""
    merged = heapq.merge(*(reader.entries(s, stats[s.stream][0], stats[s.stream][1], final) for s in reader.streams),
                         key=lambda e: e.time_ns)
    kept: Iterable[LogEntry] = (e for e in merged if filt.keeps(e))
    if filt.tail is not None:
        kept = deque(kept, maxlen=max(filt.tail, 0))  # tail 0 reads all the same: following goes on from the end
    yield from kept


def _follow(reader: LogReader, filt: LogFilter, live: Callable[[], bool]) -> Iterator[LogEntry]:
    quiet_since = time.monotonic()
    while True:
        running = live()  # before reading: what it wrote before stopping is read below
        stats = reader.refresh()
        now = time.monotonic()
        batch: list[LogEntry] = []
        for s in reader.streams:
            size, mtime_ns = stats[s.stream]
            hold_done = not running or now - s.grown_at >= PARTIAL_HOLD_S
            batch += reader.entries(s, size, mtime_ns, final=hold_done)
        batch.sort(key=lambda e: e.time_ns)  # stable: per stream order kept, stdout first on a tie
        for entry in batch:
            if filt.until is not None and entry.time_ns / 1e9 >= filt.until:
                return
            if filt.keeps(entry):
                quiet_since = now
                yield entry
        if not running or (filt.until is not None and time.time() >= filt.until):
            return
        if now - quiet_since >= KEEPALIVE_S:
            quiet_since = now
            yield LogEntry("stdout", 0, b"")
        time.sleep(POLL_S)


# -- times as users write them (docker's --since/--until) and as -t prints them ----------------------

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?:[Tt ](\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,9}))?)?)?\s*(Z|z|[+-]\d\d:?\d\d)?")


def parse_time(text: str, now: float | None = None) -> float:
    """``--since``/``--until`` as docker takes them: RFC 3339 (``2024-05-01T10:00:00Z``, a
    fraction to ns, an offset; a date alone; no zone: UTC), unix seconds (``1714557600.5``), or a
    duration before ``now`` (``10m``, ``1h30m``, ``1.5h``, ``300ms``). Returns unix seconds.

    Raises:
        InvalidArgument: none of these.
    """
    text = text.strip()
    now = time.time() if now is None else now
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    if re.fullmatch(r"(?:" + _DURATION.pattern + r")+", text):
        return now - sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION.findall(text))
    m = _RFC3339.fullmatch(text)
    if m:
        return _rfc3339_seconds(m)
    raise InvalidArgument(f"invalid time {text!r}: expected RFC 3339, unix seconds or a duration",
                          hint="e.g. 2024-05-01T10:00:00Z, 1714557600, 10m or 1h30m")


def _rfc3339_seconds(m: re.Match[str]) -> float:
    import calendar

    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        fields = (int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
        time.strptime("%04d-%02d-%02d %02d:%02d:%02d" % fields, "%Y-%m-%d %H:%M:%S")  # range checks
    except ValueError as exc:
        raise InvalidArgument(f"invalid time {m.string!r}: {exc}", hint="e.g. 2024-05-01T10:00:00Z") from exc
    seconds = calendar.timegm(fields + (0, 0, 0)) + (int(frac.ljust(9, "0")) / 1e9 if frac else 0.0)
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return seconds


def format_time(time_ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds, as ``docker logs -t`` prints (``2024-05-01T10:00:00.123456789Z``)."""
    seconds, ns = divmod(time_ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns:09d}Z"
