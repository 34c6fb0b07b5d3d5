"""Reading and extracting a checkpoint archive, defensively (see migrate/archive/__init__.py)."""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import hashlib
import logging
import os
import stat
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from migrate.archive import format as fmt
from migrate.archive.format import FORMAT_VERSION, MAGIC
from migrate.archive.fs import MetaApplier, check_entry_meta
from migrate.archive.members import CHECKPOINT_MEMBERS, MemberRule, check_member
from migrate.errors import (
    ArchiveError,
    ArchiveLimitExceeded,
    BadSignature,
    ChecksumMismatch,
    FormatVersionError,
    TruncatedArchive,
    UnsafeMember,
)
from migrate.archive.signing import HashingSource, read_signature_record
from migrate.archive.streams import ByteSource
from migrate.archive._shared import INLINE, INLINE_BYTES, BufferPool, update_zeros, worker_count
from runtime.extract_limits import NAME_MAX, ExtractLimits, current_limits

log = logging.getLogger(__name__)

__all__ = ["read_archive", "read_manifest"]

_OPEN_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_IMPLICIT_DIR = "implicit-dir"  # reader's marker for a parent dir that had no entry of its own


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the archive file ``path``, reading only the stream header and first record.

    Raises:
        ArchiveError: not an archive, truncated or corrupted first record.
        FormatVersionError: an archive of another format version.
    """
    with open(path, "rb") as source:
        return _Reader(source, None).read_head()


def read_archive(
    source: ByteSource,
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
    (migrate.archive.signing.verify_file); the bytes read up to the signature record must hash to it, or
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
    inline: bool | None = None  # set by its first data chunk: a small member is unpacked and hashed on the reader's thread
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
        source: ByteSource,
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
        self._workers = worker_count(0)
        self._max_inflight = 2 * self._workers + 2
        self._local = threading.local()
        self._buffers = BufferPool(2 * self._max_inflight + 2)
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
            view = memoryview(buf)[:stored_len]
            self._read_into(view, what)
            payload: bytes | memoryview = view
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
        if f.inline is None:  # its hash takes every update on one side, in order
            f.inline = offset == 0 and raw_len <= INLINE_BYTES
        future = (INLINE if f.inline else self._pool).submit(self._store, f.fd, rec, what)
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
        hasher = INLINE if f.inline else self._hasher
        if offset > f.hashed_to:
            hasher.submit(update_zeros, f.hash, offset - f.hashed_to)
        f.hashing.append((hasher.submit(f.hash.update, data), buf))
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
        hasher = self._hasher if f.inline is False else INLINE  # no data chunk: nothing queued for it
        if size > f.hashed_to:
            hasher.submit(update_zeros, f.hash, size - f.hashed_to)
        actual = hasher.submit(f.hash.hexdigest).result()
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
        pass (migrate.archive.signing.verify_file) when a policy asked for it; here, with
        ``expect_sha256``, the bytes read must be the ones it covered."""
        if self._expect_sha256 is not None:
            assert isinstance(self._src, HashingSource), "read_archive wraps the source in a HashingSource when expect_sha256 is given"
            if self._src.digest() != self._expect_sha256:
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

