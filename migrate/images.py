"""The checkpoint image-dir and archive contract.

A checkpoint is a CRIU images dir (``images/<file>``: many small ``*.img`` plus large
``pages-*.img``), the container's overlay upper layer (``upper/<path>``) and a JSON manifest.
This module turns one into a single byte stream and back: the same bytes are written to a file
by ``pymigrate checkpoint export`` and sent in chunks over gRPC by ``migrate.transfer``.

What shapes the design (details and the byte layout: docs/archive-format.md):

- Pure stream, no seeking, either way. The writer may start while CRIU is still writing an
  image (``add_file(..., growing=...)``), so a member's size is only known at its end; it is
  carried by the member's end record, not up front (the reason this is not tar).
- Every record has a crc32 over its header and one over its payload; each regular file member
  ends with its size and sha256. A flipped bit is caught at the record where it happened and
  reported with the member being read.
- Speed: 4 MiB chunks, each compressed independently (zstd level 1, one frame per chunk, stored
  raw when zstd does not make it smaller) by a thread pool, sha256 in its own thread; zstd,
  zlib.crc32, hashlib and the file I/O all release the GIL, so the stages overlap. Memory is
  bounded by a fixed number of chunks in flight.
- Extraction is defensive: no absolute names, no '..', no path through an extracted symlink or
  other non-directory, hardlinks only to earlier members, relative symlinks must not resolve
  above the root, device nodes only on request (overlay whiteouts, char 0:0, always allowed).
- The input is untrusted (docs/security.md): only members the whitelist allows
  (migrate.archive_members), and nothing beyond the extraction limits (runtime.extract_limits:
  depth, name length, member count, member and total size, holes) is created, checked before
  the bytes are written or hashed. Every malformed input ends in an ``ArchiveError``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import errno
import hashlib
import logging
import os
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal

import zstandard

from migrate import _archive_format as fmt
from migrate._archive_format import FORMAT_VERSION, MAGIC
from migrate._archive_fs import MetaApplier, check_entry_meta, data_extents, entry_meta, kind_of, read_xattrs, walk
from migrate.archive_members import CHECKPOINT_MEMBERS, MemberRule, check_member
from migrate.errors import (
    ArchiveError,
    ArchiveLimitExceeded,
    BadSignature,
    ChecksumMismatch,
    FormatVersionError,
    TruncatedArchive,
    UnsafeMember,
)
from migrate.signing import HashingSource, read_signature_record
from runtime.extract_limits import NAME_MAX, ExtractLimits, current_limits

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "IMAGES_PREFIX",
    "MAGIC",
    "MANIFEST_FIELDS",
    "UPPER_PREFIX",
    "ArchiveSummary",
    "ArchiveWriter",
    "MemberInfo",
    "read_archive",
    "read_manifest",
]

IMAGES_PREFIX = "images"  # members "images/<file>": the CRIU images dir, flat
UPPER_PREFIX = "upper"  # members "upper" and "upper/<path>": the overlay upper layer

# Manifest fields the checkpoint code fills (the archive layer only requires format_version and
# sets created_at if missing). See docs/archive-format.md, "manifest".
MANIFEST_FIELDS = (
    "format_version",
    "created_at",
    "checkpoint_id",
    "container",
    "image_digest",
    "criu_version",
    "kernel",
    "cgroup_layout",
    "cpu_features_digest",
)

_GROWING_POLL_S = (0.001, 0.02)  # first and longest sleep while waiting for a growing file
_SAMPLES, _SAMPLE_BYTES, _SAMPLE_RATIO = 4, 16 << 10, 0.97  # incompressibility probe per chunk
_ZEROS = memoryview(bytes(fmt.CHUNK_BYTES))
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_VANISHED_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EINVAL, errno.ENXIO, errno.ENODEV})
_IMPLICIT_DIR = "implicit-dir"  # reader's marker for a parent dir that had no entry of its own


@dataclass(frozen=True)
class MemberInfo:
    """One archive member. ``sha256`` is the hex digest of a regular file's content (holes read
    as zeros), None for other kinds; ``size_bytes`` is a regular file's size, else 0."""

    name: str
    kind: str
    size_bytes: int
    sha256: str | None


@dataclass(frozen=True)
class ArchiveSummary:
    """What ``ArchiveWriter.close`` wrote. ``raw_bytes`` counts uncompressed record payloads
    (file data and JSON), ``written_bytes`` everything written to the sink; ``manifest`` is the
    manifest with the trailer merged, exactly what ``read_archive`` will return."""

    members: tuple[MemberInfo, ...]
    raw_bytes: int
    written_bytes: int
    manifest: dict[str, Any] = field(hash=False)


def _worker_count(threads: int) -> int:
    if threads > 0:
        return threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _update_zeros(h: Any, n: int) -> None:
    """Feed ``n`` zero bytes (a hole) to the hash without allocating them."""
    while n > 0:
        step = min(n, len(_ZEROS))
        h.update(_ZEROS[:step])
        n -= step


class ArchiveWriter:
    """Writes a checkpoint archive to ``sink`` as one forward-only stream.

    Call ``write_manifest`` once, then ``add_file``/``add_tree`` any number of times, then
    ``close``. Members are written one after another (never interleaved). Used as a context
    manager, an exception leaves the sink without a trailer, which a reader rejects as a
    truncated archive; leaving the block normally closes it (no trailer extras) unless it was
    closed already or a member failed. Any failure makes the writer unusable.

    ``sink.write`` must consume or copy the data before it returns (the ``BinaryIO`` contract):
    the writer reuses its chunk buffers.

    Args:
        sink: any object with ``write(bytes)`` (a file, a pipe, the transfer code's chunker).
        compress: "zstd" (one zstd frame per chunk, with frame checksums) or "none".
        level: zstd compression level.
        threads: compression threads; 0 means one per CPU this process may run on.
    """

    def __init__(
        self,
        sink: BinaryIO,
        *,
        compress: Literal["zstd", "none"] = "zstd",
        level: int = 1,
        threads: int = 0,
    ) -> None:
        if compress not in ("zstd", "none"):
            raise ValueError(f"unknown archive compression {compress!r}, expected 'zstd' or 'none'")
        self._sink = sink
        self._zstd = compress == "zstd"
        self._level = level
        self._workers = _worker_count(threads)
        self._max_inflight = 2 * self._workers + 2
        self._local = threading.local()
        self._buffers = _BufferPool(self._max_inflight + 2)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._hasher: concurrent.futures.ThreadPoolExecutor | None = None
        self._manifest: dict[str, Any] | None = None
        self._members: list[MemberInfo] = []
        self._names: set[str] = set()
        self._links: dict[tuple[int, int], str] = {}
        self._raw_bytes = 0
        self._written_bytes = 0
        self._write_calls = 0
        self._state = "new"  # new -> open -> closed, or failed from any of them

    # -- context manager ---------------------------------------------------------------------
    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.close()  # a failed writer stays unfinished: its caller already had the error

    # -- public API -------------------------------------------------------------------------
    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the stream header and the manifest record; must be the first call, exactly once.

        ``format_version`` is set to FORMAT_VERSION and ``created_at`` (ISO 8601, UTC) is added
        if missing.
        """
        if self._state != "new":
            raise ValueError(f"write_manifest must be called exactly once, first (writer is {self._state})")
        manifest = dict(manifest)
        found = manifest.setdefault("format_version", FORMAT_VERSION)
        if found != FORMAT_VERSION:
            raise FormatVersionError(found, FORMAT_VERSION)
        manifest.setdefault("created_at", datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"))
        self._guarded(self._write_manifest, manifest)

    def add_file(self, name: str, path: Path, *, growing: Callable[[], bool] | None = None) -> MemberInfo:
        """Add the regular file ``path`` as member ``name`` and return its MemberInfo.

        With ``growing``, the producer (CRIU) may still be creating or appending to ``path`` while
        ``growing()`` returns True: the writer waits for the file to appear, keeps reading new
        data as it arrives (polling at EOF) and finishes once ``growing()`` is False and EOF is
        reached. The member's metadata (mode, owner, times, xattrs) is taken when it is opened.
        Without ``growing`` holes are kept (only data extents are stored).

        Raises:
            OSError: ``path`` cannot be opened or read (a symlink is refused, ELOOP). If this
                happens before anything of the member was written (missing file), the writer
                stays usable; otherwise it is failed and the stream unfinished.
            ValueError: misuse (no manifest yet, duplicate or invalid name, not a regular file).
        """
        self._require_open()
        self._claim_name(name)
        try:
            return self._guarded(self._add_file, name, Path(path), growing)
        except BaseException:
            if self._state == "open":  # nothing was written: the name is free again
                self._names.discard(name)
            raise

    def add_tree(self, prefix: str, root: Path) -> None:
        """Add the directory ``root`` and everything below it as members ``prefix``, ``prefix/<path>``.

        Faithful copy: regular files (sparse kept sparse), directories, symlinks, hardlinks (the
        first name carries the content, later ones are "hardlink" members naming it), fifos,
        sockets, overlay whiteouts and device nodes; mode incl. setuid/setgid/sticky, uid/gid,
        atime/mtime in ns, and every xattr this process can read. Symlinks are never followed.
        """
        self._require_open()
        _check_writer_name(prefix)
        self._guarded(self._add_entries, prefix, walk(Path(root)), None, False)

    def add_entries(
        self,
        prefix: str,
        entries: Iterable[tuple[str, str, os.stat_result]],
        *,
        on_entry: Callable[[str, os.stat_result], None] | None = None,
        vanished_ok: bool = False,
    ) -> None:
        """Add ``(relative path, full path, lstat)`` entries as members ``prefix/<rel>`` ("" is
        ``prefix`` itself), in the order given, each exactly as ``add_tree`` would add it.

        ``add_tree`` is this with ``walk(root)``. Nothing is recursed into: a directory adds
        only its own entry. Parents must come before children for a reader to apply them.

        Args:
            on_entry: called with (rel, stat) after each member was written; the stat is the
                one the member's metadata came from (a regular file's ``fstat`` taken when it
                was opened, before its content was read; the given lstat otherwise).
            vanished_ok: an entry that is gone or changed type (ENOENT, ENOTDIR, ELOOP, not a
                regular file any more) before any of it was written is skipped instead of
                raising; for trees that change while they are read (a running container).
        """
        self._require_open()
        _check_writer_name(prefix)
        self._guarded(self._add_entries, prefix, entries, on_entry, vanished_ok)

    def close(self, trailer: dict[str, Any] | None = None) -> ArchiveSummary:
        """Write the trailer (member list plus ``trailer`` extras) and return the summary.

        ``trailer`` is merged over the manifest that ``read_archive`` returns (e.g. dump stats);
        it may not set ``format_version``. The sink is flushed, not closed.
        """
        self._require_open()
        extra = dict(trailer or {})
        if "format_version" in extra:
            raise ValueError("the archive trailer may not override format_version")
        members = [{"name": m.name, "kind": m.kind, "size_bytes": m.size_bytes, "sha256": m.sha256} for m in self._members]
        self._guarded(self._emit_json, fmt.REC_TRAILER, {"members": members, "trailer": extra})
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()
        self._shutdown(cancel=False)
        self._state = "closed"
        assert self._manifest is not None
        summary = ArchiveSummary(
            members=tuple(self._members),
            raw_bytes=self._raw_bytes,
            written_bytes=self._written_bytes,
            manifest={**self._manifest, **extra},
        )
        log.debug(
            "archive closed: members=%d raw_bytes=%d written_bytes=%d",
            len(summary.members),
            summary.raw_bytes,
            summary.written_bytes,
        )
        return summary

    def abort(self) -> None:
        """Stop without a trailer: the sink holds a truncated archive. Safe to call twice."""
        if self._state != "closed":
            self._state = "failed"
        self._shutdown(cancel=True)

    # -- state ------------------------------------------------------------------------------
    def _require_open(self) -> None:
        if self._state != "open":
            what = "write_manifest was not called" if self._state == "new" else f"writer is {self._state}"
            raise ValueError(f"archive writer is not open for members: {what}")

    def _claim_name(self, name: str) -> None:
        _check_writer_name(name)
        if name in self._names:
            raise ValueError(f"duplicate archive member {name!r}")
        self._names.add(name)

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one step. A failure after the step began writing leaves the writer failed (the
        stream is cut mid-record); one before (e.g. a file that does not exist) leaves it usable."""
        writes = self._write_calls
        try:
            return fn(*args)
        except BaseException:
            if self._write_calls != writes:
                self.abort()
            raise

    def _shutdown(self, *, cancel: bool) -> None:
        for pool in (self._pool, self._hasher):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=cancel)
        self._pool = self._hasher = None

    def _pools(self) -> tuple[concurrent.futures.ThreadPoolExecutor, concurrent.futures.ThreadPoolExecutor]:
        if self._pool is None or self._hasher is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="archive-zstd")
            self._hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="archive-sha256")
        return self._pool, self._hasher

    # -- records ----------------------------------------------------------------------------
    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._write_calls += 1  # counted before: a write that raises may have written part
        self._sink.write(data)
        self._written_bytes += len(data)

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:  # zstandard objects are not thread-safe: one per thread
            c = self._local.c = zstandard.ZstdCompressor(level=self._level, write_checksum=True, write_content_size=True)
        return c

    def _pack(self, buf: bytes | bytearray | memoryview) -> tuple[int, bytes | bytearray | memoryview, int]:
        """(flags, stored payload, crc32) for one chunk; runs in the compression pool."""
        if self._zstd and self._worth_compressing(buf):
            packed = self._compressor().compress(buf)
            if len(packed) < len(buf):
                return fmt.FLAG_ZSTD, packed, zlib.crc32(packed)
        return 0, buf, zlib.crc32(buf)

    def _worth_compressing(self, buf: bytes | bytearray | memoryview) -> bool:
        """False if evenly spaced samples of a large chunk do not compress (random data, e.g.
        encrypted or already compressed pages): storing it raw skips ~all of zstd's work and its
        output buffer. Costs ~1.5% of compressing the chunk."""
        n = len(buf)
        if n < 4 * _SAMPLE_BYTES * _SAMPLES:
            return True
        view = memoryview(buf)
        step = n // _SAMPLES
        c = self._compressor()
        packed = sum(len(c.compress(view[i * step : i * step + _SAMPLE_BYTES])) for i in range(_SAMPLES))
        return packed < _SAMPLE_RATIO * _SAMPLES * _SAMPLE_BYTES

    def _emit_json(self, kind: int, obj: dict[str, Any]) -> None:
        raw = fmt.encode_json(obj)
        flags, payload, crc = (self._pack(raw) if len(raw) > 4096 else (0, raw, zlib.crc32(raw)))
        self._write(fmt.pack_record_header(kind, flags, len(payload), len(raw), 0, crc))
        self._write(payload)
        self._raw_bytes += len(raw)

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        self._write(fmt.pack_stream_header())
        self._emit_json(fmt.REC_MANIFEST, manifest)
        self._manifest = manifest
        self._state = "open"

    # -- members ----------------------------------------------------------------------------
    def _add_file(self, name: str, path: Path, growing: Callable[[], bool] | None) -> MemberInfo:
        fd = self._open_source(path, growing)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"cannot add {path} as archive member {name}: not a regular file")
            meta = entry_meta(name, fmt.KIND_FILE, st, read_xattrs(fd))
            return self._write_file(meta, fd, st.st_size, growing)
        finally:
            os.close(fd)

    @staticmethod
    def _open_source(path: Path, growing: Callable[[], bool] | None) -> int:
        delay = _GROWING_POLL_S[0]
        while True:
            try:
                return os.open(path, _OPEN_READ)
            except FileNotFoundError:
                # CRIU may not have created the image yet; wait while it is still dumping.
                if growing is None or not growing():
                    raise
            time.sleep(delay)
            delay = min(delay * 2, _GROWING_POLL_S[1])

    def _add_entries(
        self,
        prefix: str,
        entries: Iterable[tuple[str, str, os.stat_result]],
        on_entry: Callable[[str, os.stat_result], None] | None,
        vanished_ok: bool,
    ) -> None:
        for rel, full, st in entries:
            name = f"{prefix}/{rel}" if rel else prefix
            self._claim_name(name)
            try:
                sent = self._add_entry(name, full, st, vanished_ok)
            except BaseException:
                if self._state == "open":  # nothing of it was written: the name is free again
                    self._names.discard(name)
                raise
            if sent is None:
                self._names.discard(name)
            elif on_entry is not None:
                on_entry(rel, sent)

    def _add_entry(self, name: str, full: str, st: os.stat_result, vanished_ok: bool) -> os.stat_result | None:
        """Write one member; return the stat its metadata came from, None if it was skipped."""
        kind = kind_of(st)
        if kind is None:  # pragma: no cover - Linux has no other inode types
            log.warning("skipping %s: unknown inode type %o", full, stat.S_IFMT(st.st_mode))
            return None
        if kind != fmt.KIND_DIR and st.st_nlink > 1:
            first = self._links.get((st.st_dev, st.st_ino))
            if first is not None:
                self._emit_json(fmt.REC_ENTRY, {"name": name, "kind": fmt.KIND_HARDLINK, "target": first})
                self._members.append(MemberInfo(name, fmt.KIND_HARDLINK, 0, None))
                return st
        try:
            if kind == fmt.KIND_FILE:
                fd = _open_noatime(full)
            else:
                meta = entry_meta(name, kind, st, read_xattrs(full))
                if kind == fmt.KIND_SYMLINK:
                    meta["target"] = os.readlink(full)
        except OSError as exc:
            # Gone, or replaced by another type: a symlink (ELOOP from O_NOFOLLOW, EINVAL from
            # readlink), a socket or a device without a driver (ENXIO, ENODEV from open).
            if not (vanished_ok and exc.errno in _VANISHED_ERRNOS):
                raise
            log.debug("skipping %s: gone or replaced while being archived (%s)", full, exc.strerror)
            return None
        if kind != fmt.KIND_FILE:
            self._emit_json(fmt.REC_ENTRY, meta)
            self._members.append(MemberInfo(name, kind, 0, None))
            if st.st_nlink > 1 and kind != fmt.KIND_DIR:  # later names of this inode link to it
                self._links.setdefault((st.st_dev, st.st_ino), name)
            return st
        try:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode):
                if vanished_ok:
                    log.debug("skipping %s: changed type while being archived", full)
                    return None
                raise OSError(errno.ESTALE, "not a regular file any more (changed while being archived)", full)
            self._write_file(entry_meta(name, kind, fst, read_xattrs(fd)), fd, fst.st_size, None)
            if fst.st_nlink > 1:  # later names of this inode link to it
                self._links.setdefault((fst.st_dev, fst.st_ino), name)
            return fst
        finally:
            os.close(fd)

    def _write_file(self, meta: dict[str, Any], fd: int, size: int, growing: Callable[[], bool] | None) -> MemberInfo:
        name = meta["name"]
        self._emit_json(fmt.REC_ENTRY, meta)
        pool, hasher = self._pools()
        h = hashlib.sha256()
        inflight: collections.deque[_Chunk] = collections.deque()
        end = 0  # end of the last data chunk: everything before it is hashed (or queued)
        reader = (
            _GrowingReader(fd, growing, self._buffers) if growing is not None else _SparseReader(fd, size, self._buffers)
        )
        for offset, view, buf in reader:
            if offset > end:
                hasher.submit(_update_zeros, h, offset - end)
            hashed = hasher.submit(h.update, view)
            inflight.append(_Chunk(pool.submit(self._pack, view), hashed, offset, len(view), buf))
            end = offset + len(view)
            while len(inflight) > self._max_inflight:
                self._write_chunk(inflight.popleft())
        while inflight:
            self._write_chunk(inflight.popleft())
        size = reader.size
        if size > end:
            hasher.submit(_update_zeros, h, size - end)
        digest: str = hasher.submit(h.hexdigest).result()
        self._emit_json(fmt.REC_END, {"size_bytes": size, "sha256": digest})
        info = MemberInfo(name, fmt.KIND_FILE, size, digest)
        self._members.append(info)
        log.debug("archive member %s: size_bytes=%d sha256=%s", name, size, digest)
        return info

    def _write_chunk(self, chunk: _Chunk) -> None:
        flags, payload, crc = chunk.packed.result()
        chunk.hashed.result()  # bounds the hash queue as well
        self._write(fmt.pack_record_header(fmt.REC_DATA, flags, len(payload), chunk.raw_len, chunk.offset, crc))
        self._write(payload)
        self._raw_bytes += chunk.raw_len
        self._buffers.put(chunk.buf)  # the sink has consumed it (BinaryIO.write contract)


@dataclass(frozen=True)
class _Chunk:
    packed: concurrent.futures.Future[Any]
    hashed: concurrent.futures.Future[Any]
    offset: int
    raw_len: int
    buf: bytearray


class _BufferPool:
    """Reused CHUNK_BYTES buffers. Fresh 4 MiB allocations are mmap'd and page-faulted every
    time (slow on VMs that hand freed memory back to the host); reuse keeps them warm."""

    def __init__(self, keep: int) -> None:
        self._free: list[bytearray] = []
        self._keep = keep

    def get(self) -> bytearray:
        try:
            return self._free.pop()
        except IndexError:
            return bytearray(fmt.CHUNK_BYTES)

    def put(self, buf: bytearray) -> None:
        if len(self._free) < self._keep:
            self._free.append(buf)


def _open_noatime(path: str) -> int:
    """Open for reading without moving the atime of the container's file (O_NOATIME needs
    ownership or CAP_FOWNER; without it the atime may move, the archived one is already taken).
    O_NONBLOCK (no effect on a regular file's reads) keeps a file that a running container
    replaced by a fifo from blocking the open."""
    flags = _OPEN_READ | os.O_NONBLOCK
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        return os.open(path, flags)


def _check_writer_name(name: str) -> None:
    """Writer-side name check: the reader's rules, reported as ValueError (a caller bug)."""
    try:
        fmt.check_member_name(name)
    except UnsafeMember as exc:
        raise ValueError(f"invalid archive member name {name!r}: {exc.reason}") from None


class _SparseReader:
    """Data extents of a finished file in chunks of at most CHUNK_BYTES; holes are skipped.

    Yields (offset, data view, pooled buffer behind the view).
    """

    def __init__(self, fd: int, size: int, buffers: _BufferPool) -> None:
        self._fd = fd
        self._buffers = buffers
        self.size = size

    def __iter__(self) -> Iterator[tuple[int, memoryview, bytearray]]:
        for start, length in list(data_extents(self._fd, self.size)):
            pos, stop = start, start + length
            while pos < stop:
                want = min(fmt.CHUNK_BYTES, stop - pos)
                buf = self._buffers.get()
                got = os.preadv(self._fd, [memoryview(buf)[:want]], pos)
                if got:
                    yield pos, memoryview(buf)[:got], buf
                if got < want:  # the file shrank under us: it ends here
                    self.size = pos + got
                    return
                pos += got


class _GrowingReader:
    """Sequential chunks of a file another process may still be appending to.

    At EOF it polls while ``growing()`` is True; once it returns False it reads to EOF one more
    time (data appended before the producer finished is not lost) and stops. Chunks are full
    CHUNK_BYTES except the last.
    """

    def __init__(self, fd: int, growing: Callable[[], bool], buffers: _BufferPool) -> None:
        self._fd = fd
        self._growing = growing
        self._buffers = buffers
        self.size = 0

    def __iter__(self) -> Iterator[tuple[int, memoryview, bytearray]]:
        pos = 0
        buf = self._buffers.get()
        filled = 0
        finishing = False
        delay = _GROWING_POLL_S[0]
        while True:
            got = os.preadv(self._fd, [memoryview(buf)[filled:]], pos + filled)
            if got:
                filled += got
                delay = _GROWING_POLL_S[0]
                if filled == len(buf):
                    yield pos, memoryview(buf), buf
                    pos += filled
                    buf, filled = self._buffers.get(), 0
                continue
            if finishing:
                break
            if self._growing():
                time.sleep(delay)
                delay = min(delay * 2, _GROWING_POLL_S[1])
                continue
            finishing = True
        if filled:
            yield pos, memoryview(buf)[:filled], buf
            pos += filled
        else:
            self._buffers.put(buf)
        self.size = pos


# ------------------------------------------------------------------------------------------
# reading


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the archive file ``path``, reading only the stream header and first record.

    Raises:
        ArchiveError: not an archive, truncated or corrupted first record.
        FormatVersionError: an archive of another format version.
    """
    with open(path, "rb") as source:
        return _Reader(source, None).read_head()


def read_archive(
    source: BinaryIO,
    dest: Path,
    *,
    allow_devices: bool | Callable[[dict[str, Any]], bool] = False,
    progress: Callable[[int], None] | None = None,
    limits: ExtractLimits | None = None,
    members: tuple[MemberRule, ...] = CHECKPOINT_MEMBERS,
    expect_sha256: bytes | None = None,
) -> dict[str, Any]:
    """Extract the archive read from ``source`` into ``dest`` and return its manifest.

    ``expect_sha256``: the digest whose signature was verified before this pass
    (migrate.signing.verify_file); the bytes read up to the signature record must hash to it, or
    BadSignature (the file changed in between) ends the extraction before it is used.

    ``limits``: the extraction budget (default: ``runtime.extract_limits.current_limits()``);
    ``members``: which member names and kinds are allowed (default: a checkpoint's).

    ``allow_devices`` may be a policy: called with the manifest (the first record) before any
    member is extracted, it decides whether device nodes other than overlay whiteouts are allowed.

    ``dest`` must be empty or absent (normally a temp dir next to the final place; on error it
    holds a partial extraction for the caller to remove). The returned manifest has the
    trailer's extras merged in. ``progress``, if given, is called after each record with the
    number of archive bytes read so far.

    Verifies the format version, every record's crc32, every file member's size and sha256,
    and that the trailer's member list matches what was read; reads to the end of ``source``.

    Raises:
        FormatVersionError: the archive has another format version.
        ChecksumMismatch: a file member's content does not match its sha256 (names it).
        UnsafeMember: absolute name, '..', path through a symlink, escaping symlink, hardlink to
            a name not extracted before, device node without ``allow_devices`` (names it).
        ArchiveLimitExceeded: over an extraction limit (names the limit and its value).
        ArchiveError: "truncated archive ..." on early EOF; corruption (naming the member being
            read), malformed records, trailing data, a member that cannot be created (e.g. no
            space left, naming the member).
    """
    if expect_sha256 is not None:
        source = HashingSource(source)
    reader = _Reader(source, Path(dest), allow_devices=allow_devices, progress=progress,
                     limits=limits or current_limits(), members=members, expect_sha256=expect_sha256)
    return reader.run()


@dataclass
class _OpenFile:
    name: str
    fd: int
    meta: dict[str, Any]
    hash: Any
    end: int = 0  # end of the last data chunk seen
    hashed_to: int = 0  # everything before this offset has been queued for hashing
    # (store future, offset, raw_len, pooled payload buffer) in stream order
    inflight: collections.deque[tuple[concurrent.futures.Future[Any], int, int, bytearray | None]] = field(
        default_factory=collections.deque
    )
    # (hash future, pooled payload buffer): the buffer is reused once its data is hashed
    hashing: collections.deque[tuple[concurrent.futures.Future[Any], bytearray | None]] = field(
        default_factory=collections.deque
    )


@dataclass(frozen=True)
class _Record:
    kind: int
    flags: int
    raw_len: int
    offset: int
    crc: int
    payload: bytes | memoryview
    buf: bytearray | None  # pooled buffer behind a data payload


class _Reader:
    def __init__(
        self,
        source: BinaryIO,
        dest: Path | None,
        *,
        allow_devices: bool | Callable[[dict[str, Any]], bool] = False,
        progress: Callable[[int], None] | None = None,
        limits: ExtractLimits | None = None,
        members: tuple[MemberRule, ...] = CHECKPOINT_MEMBERS,
        expect_sha256: bytes | None = None,
    ) -> None:
        self._src = source
        self._expect_sha256 = expect_sha256
        self._limits = limits or ExtractLimits()
        self._rules = members
        self._total_bytes = 0  # sizes of the finished file members (holes included)
        self._hole_bytes = 0  # zeros hashed (or about to be) that the stream did not carry
        self._dest = os.fspath(dest) if dest is not None else ""
        self._allow_devices = allow_devices
        self._progress = progress
        self._pos = 0
        self._last_member: str | None = None  # for messages: the member being read or just read
        self._workers = _worker_count(0)
        self._max_inflight = 2 * self._workers + 2
        self._local = threading.local()
        self._buffers = _BufferPool(2 * self._max_inflight + 2)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._hasher: concurrent.futures.ThreadPoolExecutor | None = None
        self._seen: dict[str, str] = {}
        self._members: list[dict[str, Any]] = []
        self._dirs: list[tuple[str, dict[str, Any]]] = []
        self._file: _OpenFile | None = None
        self._applier = MetaApplier()

    # -- low level --------------------------------------------------------------------------
    def _where(self) -> str:
        return f"member {self._last_member}" if self._last_member else "the archive head"

    def _truncated(self, what: str) -> ArchiveError:
        return TruncatedArchive(f"truncated archive: stream ended at byte {self._pos} while reading {what}")

    def _read_exact(self, n: int, what: str) -> bytes:
        data = self._src.read(n)
        if len(data) != n:
            parts = [data]
            got = len(data)
            while got < n:
                more = self._src.read(n - got)
                if not more:
                    self._pos += got
                    raise self._truncated(what)
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self._pos += n
        return data

    def _read_into(self, view: memoryview, what: str) -> None:
        """Fill ``view`` from the source (readinto when it has one: no allocation per chunk)."""
        readinto = getattr(self._src, "readinto", None)
        got = 0
        while got < len(view):
            if readinto is not None:
                n = readinto(view[got:])
            else:
                more = self._src.read(len(view) - got)
                n = len(more)
                view[got : got + n] = more
            if not n:
                self._pos += got
                raise self._truncated(what)
            got += n
        self._pos += got

    def _next_record(self) -> _Record | None:
        """The next record with its payload, or None at a clean end of stream."""
        first = self._src.read(fmt.RECORD_HEADER_SIZE)
        if not first:
            return None
        start = self._pos
        header = first
        if len(first) < fmt.RECORD_HEADER_SIZE:
            self._pos += len(first)
            header = first + self._read_exact(fmt.RECORD_HEADER_SIZE - len(first), f"a record header after {self._where()}")
        else:
            self._pos += len(first)
        parsed = fmt.unpack_record_header(header)
        if parsed is None:
            raise ArchiveError(f"corrupted archive: record header at byte {start} fails its crc32 (reading {self._where()})")
        kind, flags, stored_len, raw_len, offset, crc = parsed
        if kind not in fmt.RECORD_NAMES:
            raise ArchiveError(f"corrupted archive: unknown record kind {kind} at byte {start} (reading {self._where()})")
        limit_stored, limit_raw = fmt.record_limits(kind)
        if stored_len > limit_stored or raw_len > limit_raw or flags & ~fmt.FLAG_ZSTD:
            raise ArchiveError(
                f"corrupted archive: implausible {fmt.RECORD_NAMES[kind]} record at byte {start} "
                f"(stored {stored_len}, raw {raw_len}, flags {flags:#x}; reading {self._where()})"
            )
        what = self._where() if kind in (fmt.REC_DATA, fmt.REC_END) else f"a {fmt.RECORD_NAMES[kind]} record after {self._where()}"
        buf: bytearray | None = None
        if kind == fmt.REC_DATA:
            buf = self._buffers.get() if stored_len <= fmt.CHUNK_BYTES else bytearray(stored_len)
            payload: bytes | memoryview = memoryview(buf)[:stored_len]
            self._read_into(payload, what)
        else:
            payload = self._read_exact(stored_len, what)
        if self._progress is not None:
            self._progress(self._pos)
        return _Record(kind, flags, raw_len, offset, crc, payload, buf)

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def _unpack(self, flags: int, raw_len: int, crc: int, payload: bytes | memoryview, what: str) -> bytes | memoryview:
        """Check the crc32 and decompress one payload; raise ArchiveError naming ``what``."""
        if zlib.crc32(payload) != crc:
            raise ArchiveError(f"corrupted archive: {what} fails its crc32")
        if not flags & fmt.FLAG_ZSTD:
            if len(payload) != raw_len:
                raise ArchiveError(f"corrupted archive: {what} has {len(payload)} bytes, expected {raw_len}")
            return payload
        try:
            # The frame header states the content size; check it before letting zstd allocate it.
            if zstandard.frame_content_size(payload) != raw_len:
                raise ArchiveError(f"corrupted archive: {what} is a zstd frame of the wrong size")
            data = self._decompressor().decompress(payload)
        except zstandard.ZstdError as exc:
            raise ArchiveError(f"corrupted archive: {what} does not decompress: {exc}") from exc
        if len(data) != raw_len:
            raise ArchiveError(f"corrupted archive: {what} decompresses to {len(data)} bytes, expected {raw_len}")
        return data

    def _json(self, rec: _Record, what: str) -> dict[str, Any]:
        data = bytes(self._unpack(rec.flags, rec.raw_len, rec.crc, rec.payload, what))
        try:
            obj = fmt.decode_json(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
            raise ArchiveError(f"corrupted archive: {what} is not valid JSON") from exc
        if not isinstance(obj, dict):
            raise ArchiveError(f"corrupted archive: {what} is not a JSON object")
        return obj

    # -- head -------------------------------------------------------------------------------
    def read_head(self) -> dict[str, Any]:
        head = self._read_exact(fmt.STREAM_HEADER.size, "the stream header")
        magic, version = fmt.STREAM_HEADER.unpack(head)
        if magic != MAGIC:
            raise ArchiveError(f"not a pymigrate checkpoint archive: bad magic {magic!r}, expected {MAGIC!r}")
        if version != FORMAT_VERSION:
            raise FormatVersionError(version, FORMAT_VERSION)
        rec = self._next_record()
        if rec is None:
            raise self._truncated("the manifest")
        if rec.kind != fmt.REC_MANIFEST:
            raise ArchiveError(f"malformed archive: first record is {fmt.RECORD_NAMES[rec.kind]}, expected the manifest")
        manifest = self._json(rec, "the manifest record")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise FormatVersionError(manifest.get("format_version"), FORMAT_VERSION)
        return manifest

    # -- full read --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            os.makedirs(self._dest, exist_ok=True)
            if os.listdir(self._dest):
                raise ArchiveError(f"cannot extract archive into {self._dest}: directory is not empty")
        except OSError as exc:
            raise ArchiveError(f"cannot extract archive into {self._dest}: {exc.strerror}") from exc
        self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="archive-unzstd")
        self._hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="archive-sha256")
        try:
            return self._records()
        except OSError as exc:  # creating what a member describes: no space, EPERM, EFBIG, ...
            raise self._cannot_create(exc) from exc
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError, IndexError, RecursionError) as exc:
            # A safety net, not a design: every field is checked before use. The fuzz test fails
            # on this message, so it never hides a missing check for long.
            raise ArchiveError(f"malformed archive: unexpected {type(exc).__name__} while reading {self._where()}: {exc}") from exc
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._hasher.shutdown(wait=True, cancel_futures=True)
            if self._file is not None:
                os.close(self._file.fd)
                self._file = None

    def _records(self) -> dict[str, Any]:
        manifest = self.read_head()
        if callable(self._allow_devices):
            self._allow_devices = bool(self._allow_devices(manifest))
        while True:
            rec = self._next_record()
            if rec is None:
                if self._file is not None:  # corruption found in what did arrive comes first
                    while self._file.inflight:
                        self._retire(self._file)
                    raise self._truncated(f"member {self._file.name} (no end record)")
                raise self._truncated(f"the record after {self._where()} (no trailer)")
            kind = rec.kind
            if kind == fmt.REC_DATA:
                self._data(rec)
            elif kind == fmt.REC_ENTRY:
                self._entry(rec)
            elif kind == fmt.REC_END:
                self._end(rec)
            elif kind == fmt.REC_TRAILER:
                extra = self._trailer(rec)
                return {**manifest, **extra}
            elif kind == fmt.REC_SIGNATURE:
                raise ArchiveError(f"malformed archive: a signature record before the trailer, after {self._where()}")
            else:
                raise ArchiveError(f"malformed archive: a second manifest record after {self._where()}")

    def _cannot_create(self, exc: OSError) -> ArchiveError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return ArchiveError(
                f"cannot extract archive member {self._last_member} into {self._dest}: {exc.strerror}",
                phase="verify",
                hint="the archive needs more space than the state root's filesystem has free (ROOT/tmp)",
            )
        return ArchiveError(f"cannot extract archive member {self._last_member} into {self._dest}: {exc.strerror or exc}")

    def _over(self, limit: str, actual: int, what: str) -> ArchiveLimitExceeded:
        return ArchiveLimitExceeded(
            self._limits.exceeded(limit, actual, what),
            limit=limit,
            value=getattr(self._limits, limit),
            actual=actual,
            hint=self._limits.hint(limit),
        )

    def _check_name(self, name: str, kind: str) -> None:
        """Clean, within the name limits, allowed by the member whitelist, not too many members."""
        fmt.check_member_name(name)
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) > self._limits.max_name_bytes:
            raise self._over("max_name_bytes", len(raw), f"archive member name {name[:64]!r}...")
        parts = name.split("/")
        if len(parts) > self._limits.max_depth:
            raise self._over("max_depth", len(parts), f"archive member {name[:64]}... ({len(parts)} levels)")
        longest = max(len(p.encode("utf-8", "surrogateescape")) for p in parts)
        if longest > NAME_MAX:
            raise UnsafeMember(name[:300], f"a path component is {longest} bytes, the kernel allows {NAME_MAX}")
        check_member(name, kind, self._rules)
        if len(self._seen) >= self._limits.max_members:
            raise self._over("max_members", len(self._seen) + 1, "the archive's member count")

    def _entry(self, rec: _Record) -> None:
        if self._file is not None:
            raise ArchiveError(f"malformed archive: member {self._file.name} has no end record")
        meta = self._json(rec, f"the entry record after {self._where()}")
        name = meta.get("name")
        if not isinstance(name, str):
            raise ArchiveError(f"malformed archive: entry record after {self._where()} has no name")
        kind = meta.get("kind")
        if not isinstance(kind, str) or kind not in fmt.KINDS:
            fmt.check_member_name(name)
            raise UnsafeMember(name, f"unknown member kind {kind!r}")
        self._check_name(name, kind)
        self._last_member = name
        problem = check_entry_meta(meta)
        if problem is not None:
            raise ArchiveError(f"malformed archive: entry record of member {name} is invalid ({problem})")
        self._extract(name, kind, meta)

    def _make_parents(self, name: str) -> None:
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            kind = self._seen.get(parent)
            if kind is None:
                check_member(parent, fmt.KIND_DIR, self._rules)
                os.mkdir(os.path.join(self._dest, parent), 0o755)
                self._seen[parent] = _IMPLICIT_DIR
            elif kind == fmt.KIND_SYMLINK:
                raise UnsafeMember(name, f"path passes through symlink {parent}")
            elif kind not in (fmt.KIND_DIR, _IMPLICIT_DIR):
                raise UnsafeMember(name, f"path passes through {parent}, a {kind}, not a directory")

    def _extract(self, name: str, kind: str, meta: dict[str, Any]) -> None:
        before = self._seen.get(name)
        if before is not None and not (kind == fmt.KIND_DIR and before == _IMPLICIT_DIR):
            raise UnsafeMember(name, "duplicate member name")
        if kind in (fmt.KIND_CHAR, fmt.KIND_BLOCK) and not self._allow_devices:
            major, minor = meta["rdev"]
            raise UnsafeMember(name, f"{kind} device node {major}:{minor} not allowed (allow_devices is off)")
        if kind == fmt.KIND_SYMLINK and fmt.symlink_escapes(name, meta["target"]):
            raise UnsafeMember(name, f"symlink target {meta['target']!r} escapes the archive root")
        if kind == fmt.KIND_HARDLINK:
            target_kind = self._seen.get(meta["target"])
            if target_kind is None or target_kind in (fmt.KIND_DIR, _IMPLICIT_DIR):
                raise UnsafeMember(name, f"hardlink target {meta['target']!r} is not a file member extracted earlier")
            check_member(meta["target"], fmt.KIND_FILE, self._rules)
        self._make_parents(name)
        full = os.path.join(self._dest, name)
        info: dict[str, Any] = {"name": name, "kind": kind, "size_bytes": 0, "sha256": None}
        if kind == fmt.KIND_FILE:
            fd = os.open(full, _OPEN_CREATE, 0o600)
            self._file = _OpenFile(name, fd, meta, hashlib.sha256())
            self._seen[name] = kind
            return  # recorded in the member list at its end record
        if kind == fmt.KIND_DIR:
            if before is None:
                os.mkdir(full, 0o700)  # final mode once its contents exist
            self._dirs.append((full, meta))
        elif kind == fmt.KIND_SYMLINK:
            os.symlink(meta["target"], full)
            self._applier.apply(full, meta, is_symlink=True)
        elif kind == fmt.KIND_HARDLINK:
            os.link(os.path.join(self._dest, meta["target"]), full, follow_symlinks=False)
        else:
            if kind == fmt.KIND_FIFO:
                os.mkfifo(full, 0o600)
            elif kind == fmt.KIND_SOCKET:
                os.mknod(full, stat.S_IFSOCK | 0o600)
            elif kind == fmt.KIND_WHITEOUT:
                os.mknod(full, stat.S_IFCHR | 0o600, os.makedev(0, 0))
            else:
                major, minor = meta["rdev"]
                ftype = stat.S_IFCHR if kind == fmt.KIND_CHAR else stat.S_IFBLK
                os.mknod(full, ftype | 0o600, os.makedev(major, minor))
            self._applier.apply(full, meta)
        self._seen[name] = kind
        self._members.append(info)

    def _data(self, rec: _Record) -> None:
        f = self._file
        if f is None:
            raise ArchiveError(f"malformed archive: data record outside a file member (after {self._where()})")
        offset, raw_len = rec.offset, rec.raw_len
        if offset < f.end:
            raise ArchiveError(f"malformed archive: member {f.name} has a data chunk at offset {offset} before {f.end}")
        self._check_sizes(f, offset, offset + raw_len)
        assert self._pool is not None
        what = f"member {f.name} (data chunk at offset {offset})"
        future = self._pool.submit(self._store, f.fd, rec, what)
        f.inflight.append((future, offset, raw_len, rec.buf))
        f.end = offset + raw_len
        while len(f.inflight) > self._max_inflight:
            self._retire(f)

    def _check_sizes(self, f: _OpenFile, hole_from: int, end: int) -> None:
        """Before writing up to ``end`` of ``f`` (zeros from ``f.end`` to ``hole_from``): every
        size limit, so nothing beyond them is ever written or hashed."""
        limits = self._limits
        if end > limits.max_member_bytes:
            raise self._over("max_member_bytes", end, f"archive member {f.name}")
        if self._total_bytes + end > limits.max_total_bytes:
            raise self._over("max_total_bytes", self._total_bytes + end, f"the archive's expanded size at member {f.name}")
        hole = hole_from - f.end
        if self._hole_bytes + hole > limits.max_hole_bytes:
            raise self._over("max_hole_bytes", self._hole_bytes + hole, f"the holes of the archive's files at member {f.name}")
        self._hole_bytes += hole

    def _store(self, fd: int, rec: _Record, what: str) -> bytes | memoryview:
        """Check, decompress and write one chunk at its offset; runs in the pool (pwrite needs no order)."""
        data = self._unpack(rec.flags, rec.raw_len, rec.crc, rec.payload, what)
        view, offset = memoryview(data), rec.offset
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
        return data

    def _retire(self, f: _OpenFile) -> None:
        """Wait for the oldest chunk of ``f`` and queue it for hashing (in order)."""
        future, offset, raw_len, buf = f.inflight.popleft()
        data = future.result()
        assert self._hasher is not None
        if offset > f.hashed_to:
            self._hasher.submit(_update_zeros, f.hash, offset - f.hashed_to)
        f.hashing.append((self._hasher.submit(f.hash.update, data), buf))
        f.hashed_to = offset + raw_len
        while len(f.hashing) > self._max_inflight:
            self._release(f.hashing.popleft())

    def _release(self, hashing: tuple[concurrent.futures.Future[Any], bytearray | None]) -> None:
        future, buf = hashing
        future.result()
        if buf is not None and len(buf) == fmt.CHUNK_BYTES:
            self._buffers.put(buf)

    def _end(self, rec: _Record) -> None:
        f = self._file
        if f is None:
            raise ArchiveError(f"malformed archive: end record outside a file member (after {self._where()})")
        end = self._json(rec, f"the end record of member {f.name}")
        size, expected = end.get("size_bytes"), end.get("sha256")
        if type(size) is not int or size < 0 or not isinstance(expected, str) or len(expected) != 64:
            raise ArchiveError(f"malformed archive: end record of member {f.name} is invalid")
        if size < f.end:
            raise ArchiveError(f"malformed archive: member {f.name} has data up to {f.end}, beyond its size {size}")
        self._check_sizes(f, size, size)  # before a single zero of the tail hole is hashed
        while f.inflight:
            self._retire(f)
        assert self._hasher is not None
        if size > f.hashed_to:
            self._hasher.submit(_update_zeros, f.hash, size - f.hashed_to)
        actual = self._hasher.submit(f.hash.hexdigest).result()
        while f.hashing:
            self._release(f.hashing.popleft())
        if actual != expected:
            raise ChecksumMismatch(f.name, expected, actual)
        os.ftruncate(f.fd, size)  # recreates a trailing hole; earlier holes were never written
        self._applier.apply(f.fd, f.meta)
        os.close(f.fd)
        self._file = None
        self._total_bytes += size
        self._members.append({"name": f.name, "kind": fmt.KIND_FILE, "size_bytes": size, "sha256": actual})

    def _after_trailer(self) -> None:
        """Only a signature record may follow the trailer. Its signature was checked before this
        pass (migrate.signing.verify_file) when a policy asked for it; here, with
        ``expect_sha256``, the bytes read must be the ones it covered."""
        if self._expect_sha256 is not None and self._src.digest() != self._expect_sha256:
            raise BadSignature("the archive changed while it was read: its bytes are not the ones whose signature was "
                               "verified", hint="do not modify an archive while it is restored")
        head = self._src.read(fmt.RECORD_HEADER_SIZE)
        if head:  # its form is checked; whether it is trusted was judged before this pass
            read_signature_record(head, self._src, self._pos)
            if self._src.read(1):
                raise ArchiveError("corrupted archive: data after the signature record")

    def _trailer(self, rec: _Record) -> dict[str, Any]:
        if self._file is not None:
            raise ArchiveError(f"malformed archive: member {self._file.name} has no end record")
        trailer = self._json(rec, f"the trailer record after {self._where()}")
        listed = trailer.get("members")
        if listed != self._members:
            detail = f"{len(listed)} listed, {len(self._members)} read" if isinstance(listed, list) else "no member list"
            if isinstance(listed, list):
                first = next((m for m, s in zip(listed, self._members) if m != s), None)
                if isinstance(first, dict):
                    detail = f"first difference at {str(first.get('name'))[:200]!r}"
            raise ArchiveError(f"corrupted archive: trailer member list does not match the members read ({detail})")
        extra = trailer.get("trailer", {})
        if not isinstance(extra, dict):
            raise ArchiveError("malformed archive: trailer extras are not a JSON object")
        if "format_version" in extra:
            raise ArchiveError("malformed archive: the trailer sets format_version, which only the stream header and "
                               "the manifest may state")
        self._after_trailer()
        for full, meta in reversed(self._dirs):  # deepest first, after their contents
            self._applier.apply(full, meta)
        log.debug("archive extracted into %s: members=%d bytes=%d", self._dest, len(self._members), self._pos)
        return extra
