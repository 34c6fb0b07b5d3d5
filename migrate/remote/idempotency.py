"""``request_id`` idempotency for RunContainer, Checkpoint, Restore and Migrate.

A client that lost an answer (a dropped connection, a deadline) retries with the same
``request_id`` and gets the first call's result instead of a second container or checkpoint.

- A record ``ROOT/requests/<sha256(method, id)>.json`` holds the method, a digest of the request
  (its deterministic serialization without ``request_id``) and the serialized final response. It
  is written (atomically) only once the call succeeded: a failed call leaves no record, so its
  retry runs again (what a retry after a failure wants).
- While a call runs it holds ``flock`` on ``<sha>.lock``. A retry that arrives meanwhile waits
  for the first to end (polling, so it stops waiting when its own caller goes away) and then
  answers from the record -- a scheduler's retry loop needs no special case. Other daemons on the
  same state root see the same lock.
- The same id with a different request (or another method) is refused: InvalidArgument
  "request_id reused with different arguments".
- Records expire after ``ttl_s`` (24 h): an older one is ignored and swept.
- A call may ``begin`` a pending note first (Migrate: the container and the start time). A note
  whose call failed is removed with it; one whose daemon died mid-call stays, and the retry gets it
  as ``interrupted``, to learn how that call ended (migrate/remote/migrate_retry.py) before it
  runs the call again. A retry that fails in turn puts the first note back.

Without a state root (an engine that has none) records live in memory only.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from runtime.errors import InvalidArgument

TTL_S = 24 * 3600.0
MAX_ID_CHARS = 256
POLL_S = 0.1
SWEEP_EVERY_S = 600.0


class Claim:
    """One call's hold on its request id: ``result`` (the first call's answer) or ``record``;
    ``interrupted``: the pending note of an earlier call whose daemon died mid-call."""

    def __init__(self, store: "RequestStore | None", key: str, method: str, digest: str,
                 result: bytes | None, found: dict[str, Any] | None = None) -> None:
        self._store, self._key, self._method, self._digest = store, key, method, digest
        self.result = result
        self._found = found if result is None else None
        self.interrupted: dict[str, Any] | None = self._found.get("pending") if self._found else None
        self._began = self._recorded = False

    def begin(self, note: dict[str, Any]) -> None:
        """Keep ``note`` while the call runs (no-op without a request id): what a retry after a
        daemon crash needs to find out how this call ended."""
        if self._store is not None:
            self._began = True
            self._store._write(self._key, {"method": self._method, "digest": self._digest,
                                           "created_at": time.time(), "pending": note})

    def record(self, response: bytes) -> None:
        """Keep ``response`` as this id's answer (no-op without a request id)."""
        if self._store is not None:
            self._recorded = True
            self._store._write(self._key, {"method": self._method, "digest": self._digest,
                                           "created_at": time.time(),
                                           "response": base64.b64encode(response).decode()})

    def _end(self) -> None:
        """The call ended without an answer: its note goes (an interrupted one's comes back)."""
        if self._store is None or not self._began or self._recorded:
            return
        if self._found is not None:
            self._store._write(self._key, self._found)
        else:
            self._store._remove(self._key)


class RequestStore:
    def __init__(self, directory: Path | None, *, ttl_s: float = TTL_S) -> None:
        self.directory = directory
        self.ttl_s = ttl_s
        self._memory: dict[str, dict[str, Any]] = {}
        self._memory_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._last_sweep = 0.0

    @contextlib.contextmanager
    def claim(self, method: str, request_id: str, body: bytes,
              still_wanted: Callable[[], bool] = lambda: True) -> Iterator[Claim]:
        """Hold ``request_id`` for one call of ``method`` with serialized request ``body``.

        An empty id claims nothing (``result`` None, ``record`` a no-op).

        Raises:
            InvalidArgument: an id too long, or reused with a different request.
        """
        if not request_id:
            yield Claim(None, "", method, "", None)
            return
        if len(request_id) > MAX_ID_CHARS:
            raise InvalidArgument(f"invalid request_id: {len(request_id)} characters, expected at most {MAX_ID_CHARS}",
                                  hint="use a UUID")
        key = hashlib.sha256(f"{method}\0{request_id}".encode()).hexdigest()
        digest = hashlib.sha256(body).hexdigest()
        with self._locked(key, still_wanted):
            found = self._read(key)
            if found is not None and (found.get("method") != method or found.get("digest") != digest):
                raise InvalidArgument("request_id reused with different arguments",
                                      hint="a retry sends the same request; a new request needs a new request_id")
            result = base64.b64decode(found["response"]) if found is not None and "response" in found else None
            claim = Claim(self, key, method, digest, result, found)
            try:
                yield claim
            finally:
                claim._end()
        self._maybe_sweep()

    @contextlib.contextmanager
    def _locked(self, key: str, still_wanted: Callable[[], bool]) -> Iterator[None]:
        if self.directory is None:
            with self._guard:
                lock = self._memory_locks.setdefault(key, threading.Lock())
            while not lock.acquire(timeout=POLL_S):
                _give_up_unless(still_wanted)
            try:
                yield
            finally:
                lock.release()
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:  # the first call still runs: wait for its answer
                    _give_up_unless(still_wanted)
                    time.sleep(POLL_S)
            yield
        finally:
            os.close(fd)

    def _read(self, key: str) -> dict[str, Any] | None:
        if self.directory is None:
            data = self._memory.get(key)
        else:
            try:
                data = json.loads((self.directory / f"{key}.json").read_text())
            except (OSError, ValueError):
                return None
        if not isinstance(data, dict) or time.time() - float(data.get("created_at", 0)) > self.ttl_s:
            return None
        return data

    def _write(self, key: str, data: dict[str, Any]) -> None:
        if self.directory is None:
            self._memory[key] = data
            return
        path = self.directory / f"{key}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _remove(self, key: str) -> None:
        if self.directory is None:
            self._memory.pop(key, None)
        else:
            (self.directory / f"{key}.json").unlink(missing_ok=True)

    def _maybe_sweep(self) -> None:
        """Drop expired records (at most every ``SWEEP_EVERY_S``); a held lock file is left alone."""
        now = time.time()
        if now - self._last_sweep < SWEEP_EVERY_S:
            return
        self._last_sweep = now
        if self.directory is None:
            for key in [k for k, d in self._memory.items() if now - float(d["created_at"]) > self.ttl_s]:
                self._memory.pop(key, None)
            return
        for path in self.directory.glob("*.json"):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > self.ttl_s:
                    self._sweep_one(path)

    def _sweep_one(self, path: Path) -> None:
        lock = path.with_suffix(".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return
        try:
            path.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _give_up_unless(still_wanted: Callable[[], bool]) -> None:
    if not still_wanted():
        from migrate.remote._rpc_errors import RpcCancelled

        raise RpcCancelled("the retry's caller went away while the first call with its request_id ran")
