"""The event journal of a state root: what happened to containers, checkpoints, images and
migrations, in order, for ``pymigrate events`` and the daemon's ``WatchEvents``.

Containers are run by CLI processes without a daemon and their exits are seen by their shims,
so the journal is a file every process appends to, not a daemon's memory::

    ROOT/events/journal.jsonl     one JSON object per line (``Event.to_json``), appended under
    ROOT/events/journal.1.jsonl   the previous file, kept after a rotation (then dropped at the next)
    ROOT/events/sequence          the last sequence handed out (20 digits, rewritten in place)
    ROOT/events/lock              flock: exclusive to append or rotate, shared to read

Each event has a sequence number, increasing by one per append (a writer killed between
taking a number and writing its line leaves a gap, never a repeat): it is the watcher's
cursor. The journal is bounded: when journal.jsonl would pass ``max_bytes`` it becomes
journal.1.jsonl, so between ``max_bytes`` and twice that are kept. A cursor older than the
oldest kept event raises ``EventsLost``: the watcher must relist.

``emit`` is what operations call: it never raises into them (a failed append is logged).
Imports are light: the shim and ``pymigrate run -d`` import this.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from runtime.errors import EventsLost, InvalidArgument

log = logging.getLogger(__name__)

EVENTS_DIR = "events"
JOURNAL = "journal.jsonl"
ROTATED = "journal.1.jsonl"
SEQUENCE = "sequence"
LOCK = "lock"
MAX_BYTES = 4 << 20  # per file: the journal keeps 4-8 MiB, some 20-40 thousand events
POLL_S = 0.1
TYPES = ("container", "checkpoint", "image", "migration")
_SEQ_WIDTH = 20


@dataclass(frozen=True)
class Event:
    sequence: int
    time: float  # unix seconds
    type: str  # TYPES
    action: str  # create, start, die, ... (docs/api.md "Events")
    id: str  # the object's: container_id, checkpoint_id, image digest, migration_id
    name: str  # the container's name (checkpoints and migrations: their container's), the image's
    attributes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "time": self.time, "type": self.type, "action": self.action,
                "id": self.id, "name": self.name, "attributes": dict(self.attributes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Event":
        return cls(sequence=int(data["sequence"]), time=float(data["time"]), type=str(data["type"]),
                   action=str(data["action"]), id=str(data.get("id", "")), name=str(data.get("name", "")),
                   attributes={str(k): str(v) for k, v in (data.get("attributes") or {}).items()})


class Journal:
    """The journal of state root ``root`` (files made on the first append)."""

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.dir = Path(root) / EVENTS_DIR
        self.max_bytes = MAX_BYTES if max_bytes is None else max_bytes

    # -- writing --------------------------------------------------------------------------------
    def append(self, type: str, action: str, id: str, name: str, attributes: dict[str, Any] | None = None) -> Event:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._locked(fcntl.LOCK_EX):
            event = Event(self._take_sequence(), time.time(), type, action, id, name,
                          {str(k): str(v) for k, v in (attributes or {}).items() if v is not None})
            line = (json.dumps(event.to_json(), separators=(",", ":")) + "\n").encode()
            self._write_line(line)
        return event

    def _take_sequence(self) -> int:
        fd = os.open(self.dir / SEQUENCE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
            last = int(text) if text.isdigit() else self._last_in_files()  # new, or damaged: ask the lines
            os.pwrite(fd, str(last + 1).zfill(_SEQ_WIDTH).encode(), 0)  # taken before the line: gaps, no repeats
            return last + 1
        finally:
            os.close(fd)

    def _write_line(self, line: bytes) -> None:
        path = self.dir / JOURNAL
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and size + len(line) > self.max_bytes:
                os.close(fd)
                fd = -1
                os.replace(path, self.dir / ROTATED)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            elif size and _last_byte(path, size) != b"\n":
                line = b"\n" + line  # a writer killed mid-line: readers skip that fragment
            os.write(fd, line)
        finally:
            if fd >= 0:
                os.close(fd)

    # -- reading --------------------------------------------------------------------------------
    def last_sequence(self) -> int:
        """The last sequence handed out (0: none yet)."""
        try:
            text = (self.dir / SEQUENCE).read_text().strip()
        except FileNotFoundError:
            return 0
        return int(text) if text.isdigit() else self._last_in_files()

    def read(self, since: int | None = None) -> list[Event]:
        """Every kept event after cursor ``since`` (None: all kept, whatever was dropped).

        Raises:
            EventsLost: events after ``since`` were rotated out.
        """
        with self._locked(fcntl.LOCK_SH):
            return self._read_all(since)

    def _read_all(self, since: int | None) -> list[Event]:
        rotated = list(_events(self._read_bytes(ROTATED)))
        events = rotated + list(_events(self._read_bytes(JOURNAL)))
        if since is None:
            return events
        if (self.dir / ROTATED).exists():  # something was dropped at some rotation: was it wanted?
            oldest = events[0].sequence if events else self.last_sequence() + 1
            if since + 1 < oldest:
                raise EventsLost(since, oldest)
        return [e for e in events if e.sequence > since]

    def follow(self, since: int | None = None, poll_s: float = POLL_S) -> Iterator[Event | None]:
        """Events after ``since`` (None: after the last one now), then new ones as they come,
        forever; a None after each poll that found nothing, so a caller can check for its end
        (a cancelled call, ``--until``) between events.

        Raises:
            EventsLost: at the start or while following, when events wanted were rotated out.
        """
        with self._locked(fcntl.LOCK_SH):
            if since is None:
                cursor, events = self.last_sequence(), []
            else:
                events = self._read_all(since)
                cursor = since
            position = self._end()
        while True:
            for event in events:
                cursor = event.sequence
                yield event
            if not events:
                yield None
                time.sleep(poll_s)
            with self._locked(fcntl.LOCK_SH):
                events, position = self._read_after(position, cursor)

    def _end(self) -> tuple[bytes, int]:
        """Where a follower goes on reading: journal.jsonl's identity (``_identity``) and size now."""
        try:
            return _identity(self.dir / JOURNAL), os.stat(self.dir / JOURNAL).st_size
        except FileNotFoundError:
            return b"", 0

    def _read_after(self, position: tuple[bytes, int], cursor: int) -> tuple[list[Event], tuple[bytes, int]]:
        """New events since ``position`` (called under the shared lock)."""
        file, offset = position
        now = self._end()
        if file and now[0] == file:  # the same file: what was appended
            data = self._read_bytes(JOURNAL, offset)
        elif file and _identity(self.dir / ROTATED) == file:  # rotated once: its rest, then the new file
            data = self._read_bytes(ROTATED, offset) + self._read_bytes(JOURNAL)
        else:  # first file, or rotated twice meanwhile: all kept, checked for loss
            return self._read_all(cursor), self._end()
        end = data.rfind(b"\n") + 1  # a line being written by a killed writer waits for its fix
        if now[0] == file:
            now = (file, offset + end)
        else:
            now = (now[0], max(0, end - (len(data) - now[1])))
        return [e for e in _events(data[:end]) if e.sequence > cursor], now

    def _read_bytes(self, name: str, offset: int = 0) -> bytes:
        try:
            with open(self.dir / name, "rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def _last_in_files(self) -> int:
        for name in (JOURNAL, ROTATED):
            events = list(_events(self._read_bytes(name)))
            if events:
                return max(e.sequence for e in events)
        return 0

    @contextlib.contextmanager
    def _locked(self, how: int) -> Iterator[None]:
        try:
            fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:  # no journal yet: nothing to read, nothing to race with
            yield
            return
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)


def _events(data: bytes) -> Iterator[Event]:
    for line in data.splitlines():
        try:
            yield Event.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a fragment of a killed writer's line


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


def _identity(path: Path) -> bytes:
    """A journal file's identity: its inode and first bytes (its first event's sequence number),
    since a file system reuses the inode of a file dropped at a rotation; b"" when missing."""
    try:
        with open(path, "rb") as f:
            return os.fstat(f.fileno()).st_ino.to_bytes(8, "little") + f.read(32)
    except FileNotFoundError:
        return b""


# -- emitting -----------------------------------------------------------------------------------
def emit(root: Path, type: str, action: str, id: str, name: str, attributes: dict[str, Any] | None = None) -> None:
    """Append one event to ``root``'s journal; never raises into the operation that happened."""
    try:
        Journal(root).append(type, action, id, name, attributes)
    except Exception:
        log.warning("event %s %s of %s not journalled", type, action, name or id, exc_info=True)


def emit_container(root: Path, action: str, spec: Any, **attributes: Any) -> None:
    """A container event: its image and labels as attributes (docker's), plus ``attributes``."""
    try:
        attrs: dict[str, Any] = {**getattr(spec, "labels", {}), "image": spec.image}
        attrs.update({k: v for k, v in attributes.items() if v is not None})
        emit(root, "container", action, spec.container_id, spec.name, attrs)
    except Exception:
        log.warning("container event %s not journalled", action, exc_info=True)


# -- filters ------------------------------------------------------------------------------------
FILTER_KEYS = ("type", "container", "event", "label")


@dataclass(frozen=True)
class EventFilter:
    """``--filter`` as docker's: values of one key are alternatives, different keys all apply."""

    terms: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, filters: Iterable[str]) -> "EventFilter":
        terms: dict[str, list[str]] = {}
        for text in filters:
            key, sep, value = text.partition("=")
            key = key.strip().lower()
            if not sep or key not in FILTER_KEYS or not value:
                raise InvalidArgument(f"invalid event filter {text!r}: expected KEY=VALUE with KEY one of "
                                      f"{', '.join(FILTER_KEYS)}",
                                      hint="e.g. --filter type=container --filter event=die --filter label=app=web")
            if key == "type" and value not in TYPES:
                raise InvalidArgument(f"invalid event filter {text!r}: type must be one of {', '.join(TYPES)}")
            terms.setdefault(key, []).append(value)
        return cls({k: tuple(v) for k, v in terms.items()})

    def match(self, event: Event) -> bool:
        return all(any(_TESTS[key](event, v) for v in values) for key, values in self.terms.items())


def _match_container(event: Event, value: str) -> bool:
    """By name or id, or a migration's/checkpoint's container."""
    attrs = event.attributes
    if event.type == "image":
        return False
    if value in (event.name, attrs.get("container"), attrs.get("container_id")):
        return True
    cid = event.id if event.type == "container" else attrs.get("container_id", "")
    return len(value) >= 4 and cid.startswith(value)


def _match_label(event: Event, value: str) -> bool:
    key, sep, want = value.partition("=")
    return key in event.attributes and (not sep or event.attributes[key] == want)


_TESTS: dict[str, Callable[[Event, str], bool]] = {
    "type": lambda e, v: e.type == v,
    "container": _match_container,
    "event": lambda e, v: e.action == v,
    "label": _match_label,
}
