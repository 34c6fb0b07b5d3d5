"""Moving a container's upper-layer *image* (runtime/upperfs.py) instead of its file tree.

A restored process must see the inode numbers it saw before (SQLite compares them before every
write), and only the image's blocks carry them. So where a container has an image:

- a local checkpoint keeps a sparse copy of it (``copy_frozen``: ``syncfs`` of the frozen
  container's file system, then its data extents copied by the kernel) as ``upper.img`` beside
  the CRIU images; an export carries it packed (members ``upper.img.map`` and ``.data``);
- a live migration sends it before the freeze (``ImageStage``: packed from the running
  container) and, during the pause, only the 64 KiB blocks that differ from what was sent (``upper.img.delta.map`` and ``.data``); the target writes them into its staged
  copy (``apply_delta_members``).

Consistency: the snapshot taken before the freeze is fuzzy (the container writes on), but the
comparison after the freeze is between the frozen, synced image and exactly the bytes that were
sent, so every block the target holds differently is resent. Blocks are compared, not hashed:
no collision can hide a change, and reading two page-cached files costs about what hashing one
would.

Trust: an image from ``restore --import`` or an uploaded checkpoint is checked by
``runtime.upperfs.check_untrusted`` before anything mounts it; one from an authenticated peer
daemon (a migration) is mounted as sent, like the process images CRIU restores from the same
peer (docs/security.md).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
import weakref
from pathlib import Path
from typing import Any

from runtime import upperfs

log = logging.getLogger(__name__)

# An image travels "packed": its data extents back to back (``.data``) and where each goes
# (``.map``, JSON {"image_bytes": N, "extents": [[offset, length], ...]}). Not as one sparse
# member: the archive hashes a file's holes as zeros, ~10 s for a 16 GiB image on each side.
MEMBER = upperfs.IMAGE_NAME  # "upper.img": the unpacked image in a scratch or stage dir
MAP, DATA = "upper.img.map", "upper.img.data"  # the whole image
DELTA_MAP, DELTA_DATA = "upper.img.delta.map", "upper.img.delta.data"  # blocks changed since the stage
MEMBERS = (MAP, DATA, DELTA_MAP, DELTA_DATA)  # archive members this module writes
BLOCK_BYTES = 64 << 10  # comparison and resend granularity
MAX_EXTENTS = 1 << 20
_READ_BYTES = 1 << 20


def mountpoint_of(image: Path) -> Path:
    """The mount point of a container's image (beside it in the container's dir)."""
    return image.parent / upperfs.MOUNT_DIR


def copy_frozen(image: Path, dst: Path) -> int:
    """A consistent sparse copy of a *frozen* container's image; bytes copied."""
    upperfs.syncfs(mountpoint_of(image))
    return upperfs.copy_sparse(image, dst)


def add_frozen(writer: Any, image: Path, tmp_dir: Path) -> int:
    """Add a *frozen* container's image to an archive (members upper.img.map/.data); bytes of data."""
    upperfs.syncfs(mountpoint_of(image))
    return add_image(writer, image, tmp_dir)


def pack_frozen(image: Path, dst_dir: Path) -> int:
    """A *frozen* container's image packed into ``dst_dir`` as the files upper.img.map/.data, to
    be added to an archive later (``add_packed``); bytes of data."""
    upperfs.syncfs(mountpoint_of(image))
    return _pack_pair(image, dst_dir / DATA, dst_dir / MAP)


def add_packed(writer: Any, src_dir: Path) -> None:
    """The members ``pack_frozen`` wrote into ``src_dir``, added as ``add_frozen`` adds them."""
    writer.add_file(MAP, src_dir / MAP)
    writer.add_file(DATA, src_dir / DATA)


def add_image(writer: Any, image: Path, tmp_dir: Path, *, names: tuple[str, str] = (MAP, DATA),
              ranges: list[tuple[int, int]] | None = None) -> int:
    """Pack ``image`` (its data extents, or ``ranges``) into temp files in ``tmp_dir`` and add
    them as members ``names`` (map, data); bytes of data."""
    tag = os.urandom(6).hex()
    data, mapping = tmp_dir / f"{names[1]}.{tag}", tmp_dir / f"{names[0]}.{tag}"
    try:
        packed = _pack_pair(image, data, mapping, ranges)
        writer.add_file(names[0], mapping)
        writer.add_file(names[1], data)
        return packed
    finally:
        _remove(data, mapping)


def _pack_pair(image: Path, data: Path, mapping: Path, ranges: list[tuple[int, int]] | None = None) -> int:
    """``pack`` into ``data`` and its map into ``mapping``; bytes of data."""
    layout = pack(image, data, ranges)
    mapping.write_text(json.dumps(layout, separators=(",", ":")))
    return sum(n for _o, n in layout["extents"])


def pack(image: Path, dst: Path, ranges: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Copy ``ranges`` of ``image`` (default: its data extents) back to back into a new ``dst``
    (copy_file_range, in the kernel); the map saying where each range belongs."""
    sfd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(sfd).st_size
        extents = upperfs.data_extents(sfd, size) if ranges is None else ranges
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            pos = 0
            for start, length in extents:
                _copy(sfd, start, dfd, pos, length)
                pos += length
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return {"image_bytes": size, "extents": [[o, n] for o, n in extents]}


def _copy(sfd: int, src_off: int, dfd: int, dst_off: int, length: int) -> None:
    done = 0
    while done < length:
        n = os.copy_file_range(sfd, dfd, length - done, src_off + done, dst_off + done)
        if n == 0:  # the source ends early: the rest reads as zeros
            os.pwrite(dfd, bytes(length - done), dst_off + done)
            return
        done += n


def read_map(path: Path, data: Path) -> dict[str, Any]:
    """A map from an archive, checked against its data file before any byte is placed by it.

    Raises:
        ValueError: not a map this module writes (names what is wrong)."""
    try:
        layout = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"upper-layer image map {path.name}: unreadable ({exc})") from None
    size, extents = layout.get("image_bytes") if isinstance(layout, dict) else None, layout.get("extents") if isinstance(layout, dict) else None
    if not isinstance(size, int) or not 0 < size <= upperfs.MAX_SIZE_BYTES:
        raise ValueError(f"upper-layer image map {path.name}: image_bytes {size!r} out of range")
    if not isinstance(extents, list) or len(extents) > MAX_EXTENTS:
        raise ValueError(f"upper-layer image map {path.name}: expected a list of at most {MAX_EXTENTS} extents")
    end, total = 0, 0
    for item in extents:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(v, int) for v in item)):
            raise ValueError(f"upper-layer image map {path.name}: extent {item!r} is not [offset, length]")
        off, n = item
        if off < end or n <= 0 or off + n > size:
            raise ValueError(f"upper-layer image map {path.name}: extent {item!r} overlaps, is empty or ends past {size}")
        end, total = off + n, total + n
    if os.lstat(data).st_size != total:
        raise ValueError(f"upper-layer image data {data.name}: {os.lstat(data).st_size} bytes, its map says {total}")
    return {"image_bytes": size, "extents": [(o, n) for o, n in extents]}


def unpack(map_path: Path, data: Path, dst: Path, *, into_existing: bool = False) -> None:
    """Place packed extents into ``dst`` at their offsets: a new sparse image (holes elsewhere),
    or, with ``into_existing``, a staged image the extents update (a delta).

    Raises:
        ValueError: the map is malformed or does not fit ``dst``."""
    layout = read_map(map_path, data)
    size = layout["image_bytes"]
    sfd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (0 if into_existing else os.O_CREAT | os.O_EXCL)
        dfd = os.open(dst, flags, 0o600)
        try:
            if into_existing and os.fstat(dfd).st_size != size:
                raise ValueError(f"upper-layer image delta: for an image of {size} bytes, the staged one has {os.fstat(dfd).st_size}")
            os.ftruncate(dfd, size)
            pos = 0
            for off, n in layout["extents"]:
                _copy(sfd, pos, dfd, off, n)
                pos += n
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def unpack_members(tree: Path, dst: Path) -> bool:
    """If ``tree`` (an extracted archive) carries a packed image, unpack it to ``dst`` and remove
    the packed members; whether it did. Raises ValueError (see ``unpack``)."""
    if not (upperfs.is_image_file(tree / MAP) and upperfs.is_image_file(tree / DATA)):
        return False
    unpack(tree / MAP, tree / DATA, dst)
    _remove(tree / MAP, tree / DATA)
    return True


def has_delta(tree: Path) -> bool:
    return upperfs.is_image_file(tree / DELTA_MAP) and upperfs.is_image_file(tree / DELTA_DATA)


def apply_delta_members(tree: Path, staged: Path) -> None:
    """Write the changed blocks an archive carries (``tree``) into the staged image."""
    unpack(tree / DELTA_MAP, tree / DELTA_DATA, staged, into_existing=True)
    _remove(tree / DELTA_MAP, tree / DELTA_DATA)


# -- live migration: the image before the freeze, changed blocks during the pause ----------------
class ImageStage:
    """What a live migration sent of the image before the freeze, and the delta against it after.

    The image is packed straight from the live container (fuzzy: it writes on) into a file that
    is then sent; that file and its map are exactly what the target holds, so they are what the
    frozen image is compared with (no second copy of the image is made)."""

    def __init__(self, image: Path, tmp_dir: Path, migration_id: str) -> None:
        self.image = image
        self.tmp_dir = tmp_dir
        # "migrate-" names: a daemon restart sweeps them from ROOT/tmp (migrate.migration.target.reconcile)
        self.sent = tmp_dir / f"migrate-{migration_id}.upper-sent.data"
        self.sent_map = tmp_dir / f"migrate-{migration_id}.upper-sent.map"
        _remove(self.sent, self.sent_map)  # leftovers of an earlier attempt with this id
        # Whatever happens to the migration, the files go with this object (the drivers drop it
        # when they return; CPython frees it then).
        self._finalizer = weakref.finalize(self, _remove, self.sent, self.sent_map)
        self.layout: dict[str, Any] | None = None
        self.changed_blocks = -1

    def send(self, writer: Any) -> None:
        """While the container runs: pack the image's data extents (in the kernel) and send them."""
        try:
            upperfs.syncfs(mountpoint_of(self.image))  # fewer blocks change between now and the freeze
            self.layout = pack(self.image, self.sent)
            self.sent_map.write_text(json.dumps(self.layout, separators=(",", ":")))
            writer.add_file(MAP, self.sent_map)
            writer.add_file(DATA, self.sent)
        except BaseException:
            self.discard()
            raise

    def add_delta(self, writer: Any) -> None:
        """After the freeze: add the blocks that differ from what was sent."""
        assert self.layout is not None, "send() comes first"
        started = time.monotonic()
        try:
            upperfs.syncfs(mountpoint_of(self.image))
            synced = time.monotonic()
            ranges = changed_since(self.sent, self.layout, self.image)
            compared = time.monotonic()
            changed = add_image(writer, self.image, self.tmp_dir, names=(DELTA_MAP, DELTA_DATA), ranges=ranges)
        finally:
            self.discard()  # sent or failed: the packed copy has done its work either way
        self.changed_blocks = -(-changed // BLOCK_BYTES)
        log.info("upper image %s: %d changed blocks (%d bytes); syncfs %.1f ms, compare %.1f ms, send %.1f ms",
                 self.image, self.changed_blocks, changed, (synced - started) * 1000, (compared - synced) * 1000,
                 (time.monotonic() - compared) * 1000)

    def discard(self) -> None:
        self._finalizer()


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # a leftover in ROOT/tmp; the next attempt with this id removes it
            log.warning("cannot remove %s: %s", p, exc)


def changed_ranges(old: Path, new: Path, block_bytes: int = BLOCK_BYTES) -> list[tuple[int, int]]:
    """(offset, length) ranges, in ``block_bytes`` units, where ``new`` differs from ``old``
    (holes read as zeros; a size change counts the tail as changed). Only the data extents of
    either file are read."""
    ofd = os.open(old, os.O_RDONLY | os.O_CLOEXEC)
    try:
        nfd = os.open(new, os.O_RDONLY | os.O_CLOEXEC)
        try:
            osize, nsize = os.fstat(ofd).st_size, os.fstat(nfd).st_size
            spans = upperfs.data_extents(ofd, osize) + upperfs.data_extents(nfd, nsize)
            return _compare(lambda buf, pos: _read_zero_padded(ofd, buf, pos), nfd, spans, osize, block_bytes)
        finally:
            os.close(nfd)
    finally:
        os.close(ofd)


def changed_since(sent: Path, layout: dict[str, Any], new: Path, block_bytes: int = BLOCK_BYTES) -> list[tuple[int, int]]:
    """Like ``changed_ranges``, with the old image given packed (``pack``'s data file and map)."""
    extents = [(int(o), int(n)) for o, n in layout["extents"]]
    starts = [o for o, _n in extents]
    packed_at, pos = [], 0
    for _o, n in extents:
        packed_at.append(pos)
        pos += n
    sfd = os.open(sent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        nfd = os.open(new, os.O_RDONLY | os.O_CLOEXEC)
        try:
            def read_old(buf: bytearray, at: int) -> None:
                buf[:] = bytes(len(buf))
                end = at + len(buf)
                i = max(0, bisect.bisect_right(starts, at) - 1)
                while i < len(extents) and extents[i][0] < end:
                    o, n = extents[i]
                    lo, hi = max(o, at), min(o + n, end)
                    if lo < hi:
                        buf[lo - at:hi - at] = os.pread(sfd, hi - lo, packed_at[i] + (lo - o))
                    i += 1

            nsize = os.fstat(nfd).st_size
            spans = extents + upperfs.data_extents(nfd, nsize)
            return _compare(read_old, nfd, spans, int(layout["image_bytes"]), block_bytes)
        finally:
            os.close(nfd)
    finally:
        os.close(sfd)


def _compare(read_old: Any, nfd: int, extents: list[tuple[int, int]], osize: int, block_bytes: int) -> list[tuple[int, int]]:
    nsize = os.fstat(nfd).st_size
    spans = _union(extents, block_bytes)
    full_a, full_b = bytearray(_READ_BYTES), bytearray(_READ_BYTES)
    out: list[tuple[int, int]] = []
    for start, end in spans:
        pos = start
        while pos < end:
            want = min(_READ_BYTES, end - pos)
            # whole bytearrays compare with one memcmp (~8 GB/s here); memoryview slices
            # compare item by item (~0.25 GB/s)
            a, b = (full_a, full_b) if want == _READ_BYTES else (bytearray(want), bytearray(want))
            read_old(a, pos)
            _read_zero_padded(nfd, b, pos)
            if a != b:
                for off in range(0, want, block_bytes):
                    if a[off:off + block_bytes] != b[off:off + block_bytes]:
                        _add(out, pos + off, min(block_bytes, want - off))
            pos += want
    if nsize > osize:  # a grown image: its tail is new even where it reads as zeros
        _add(out, osize, nsize - osize)
    return out


def _read_zero_padded(fd: int, buf: bytearray, pos: int) -> None:
    got = os.preadv(fd, [buf], pos)
    if got < len(buf):  # past the file's end: zeros
        buf[got:] = bytes(len(buf) - got)


def _union(extents: list[tuple[int, int]], align: int) -> list[tuple[int, int]]:
    """Merge (offset, length) extents into sorted (start, end) spans aligned to ``align``."""
    spans = sorted((s // align * align, -(-(s + n) // align) * align) for s, n in extents)
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _add(out: list[tuple[int, int]], start: int, length: int) -> None:
    if out and out[-1][0] + out[-1][1] == start:
        out[-1] = (out[-1][0], out[-1][1] + length)
    else:
        out.append((start, length))


