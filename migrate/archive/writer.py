"""Writing a checkpoint archive: one forward-only stream (see migrate/archive/__init__.py)."""

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
from typing import Any, Literal

import zstandard

from migrate.archive import format as fmt
from migrate.archive.format import FORMAT_VERSION
from migrate.archive.fs import data_extents, entry_meta, kind_of, read_xattrs, walk
from migrate.errors import (
    FormatVersionError,
    UnsafeMember,
)
from migrate.archive._shared import INLINE, INLINE_BYTES, BufferPool, update_zeros, worker_count
from migrate.archive.streams import ByteSink

log = logging.getLogger(__name__)

__all__ = ["IMAGES_PREFIX", "MANIFEST_FIELDS", "UPPER_PREFIX", "ArchiveSummary", "ArchiveWriter", "MemberInfo"]

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
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_VANISHED_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EINVAL, errno.ENXIO, errno.ENODEV})


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
        sink: ByteSink,
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
        self._workers = worker_count(threads)
        self._max_inflight = 2 * self._workers + 2
        self._local = threading.local()
        self._buffers = BufferPool(self._max_inflight + 2)
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
        # a small file: a hand-off to the pools costs more than the work
        pool, hasher = (INLINE, INLINE) if growing is None and size <= INLINE_BYTES else self._pools()
        h = hashlib.sha256()
        inflight: collections.deque[_Chunk] = collections.deque()
        end = 0  # end of the last data chunk: everything before it is hashed (or queued)
        reader = (
            _GrowingReader(fd, growing, self._buffers) if growing is not None else _SparseReader(fd, size, self._buffers)
        )
        for offset, view, buf in reader:
            if offset > end:
                hasher.submit(update_zeros, h, offset - end)
            hashed = hasher.submit(h.update, view)
            inflight.append(_Chunk(pool.submit(self._pack, view), hashed, offset, len(view), buf))
            end = offset + len(view)
            while len(inflight) > self._max_inflight:
                self._write_chunk(inflight.popleft())
        while inflight:
            self._write_chunk(inflight.popleft())
        size = reader.size
        if size > end:
            hasher.submit(update_zeros, h, size - end)
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

    def __init__(self, fd: int, size: int, buffers: BufferPool) -> None:
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

    def __init__(self, fd: int, growing: Callable[[], bool], buffers: BufferPool) -> None:
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


