"""Byte streams between the archive format and chunked transports (gRPC streams).

- ``ChunkSink``: a write-only file object whose bytes come out of an iterator as chunks of about
  ``chunk_bytes``. The archive writer writes into it in one thread while gRPC consumes the
  iterator (a client-streaming request) in another. A bounded queue gives back-pressure, so a slow
  link slows the writer instead of filling memory.
- ``IteratorReader``: a read-only file object over an iterator of byte chunks, for the archive
  reader on the receiving side.

Closing rules: ``ChunkSink.close()`` ends the iterator normally; ``ChunkSink.abort(exc)`` ends it
with an error so the receiver sees a broken stream rather than a short one. If the consumer goes
away (the RPC failed), ``ChunkSink.cancel(exc)`` makes the next ``write`` raise ``exc`` so the
producer (CRIU dump + archive writer) stops promptly.
"""

from __future__ import annotations

import io
import queue
import threading
from typing import Iterable, Iterator, Protocol

from migrate.errors import TransferError

DEFAULT_CHUNK_BYTES = 1 << 20
_END = object()


class ByteSink(Protocol):
    """What the archive writer writes to: a file, a pipe, ``ChunkSink``, ``HashingSink``. It may
    also have ``flush()`` (looked up when there)."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int | None: ...


class ByteSource(Protocol):
    """What the archive reader reads from: a file, a pipe, ``IteratorReader``, ``HashingSource``.
    It may also have ``readinto(view)`` (looked up when there, used to read into reused buffers)."""

    def read(self, n: int = -1, /) -> bytes: ...


class ChunkSink(io.RawIOBase):
    def __init__(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES, max_chunks: int = 16) -> None:
        super().__init__()
        self._chunk_bytes = chunk_bytes
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_chunks)
        self._buffer = bytearray()
        self._cancelled: BaseException | None = None
        self._lock = threading.Lock()
        self.bytes_written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._cancelled is not None:
            raise self._cancelled
        n = len(data)
        self._buffer += data
        self.bytes_written += n
        while len(self._buffer) >= self._chunk_bytes:
            chunk = bytes(self._buffer[: self._chunk_bytes])
            del self._buffer[: self._chunk_bytes]
            self._put(chunk)
        return n

    def flush(self) -> None:
        if self._buffer and self._cancelled is None:
            chunk = bytes(self._buffer)
            self._buffer.clear()
            self._put(chunk)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
            self._put(_END)
        finally:
            super().close()

    def abort(self, exc: BaseException) -> None:
        """End the stream with an error (the iterator raises it). After ``cancel`` nobody reads
        the iterator any more: nothing to tell, and abort must not raise on a rollback path."""
        self._buffer.clear()
        if self._cancelled is None:
            self._put(exc, block=False)
        super().close()

    def cancel(self, exc: BaseException) -> None:
        """The consumer is gone: make the producer's next write raise ``exc``."""
        self._cancelled = exc
        # unblock a producer waiting on a full queue
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def _put(self, item: object, block: bool = True) -> None:
        while True:
            if self._cancelled is not None and item is not _END:
                raise self._cancelled
            try:
                self._queue.put(item, timeout=0.1 if block else 0)
                return
            except queue.Full:
                if not block:
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        pass

    def chunks(self) -> Iterator[bytes]:
        """The consumer side; ends at close(), raises the abort() error."""
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]


class IteratorReader(io.RawIOBase):
    """A file object reading from an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._current = memoryview(b"")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        data = super().read(size)
        assert data is not None, "readinto never returns None (it blocks), so neither does RawIOBase.read"
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._current:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return 0
            except TransferError:
                raise
            except Exception as exc:  # the transport broke: the sender did not finish
                raise TransferError(f"transfer stream broke: {exc}", phase="transfer") from exc
            self._current = memoryview(chunk)
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        self.bytes_read += n
        return n


def split_chunks(chunks: Iterable[bytes], size: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """Re-cut a byte stream into pieces of at most ``size`` bytes, dropping empty ones."""
    for chunk in chunks:
        if len(chunk) <= size:
            if chunk:
                yield bytes(chunk)  # no copy for bytes
            continue
        view = memoryview(chunk)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
