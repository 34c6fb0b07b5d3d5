"""Byte-level framing of the pymigrate checkpoint archive (private; see docs/archive-format.md).

The archive is a stream: a 12-byte stream header, then records, each a 28-byte record header
followed by its payload. Nothing refers back or forward, so it can be written to a pipe or a
gRPC stream and read from one without seeking. Every record header carries a crc32 of itself
and of its payload, so a flipped bit is caught at the record where it happened; the reader
knows which member that record belongs to and names it.

This module holds only constants and pure functions (no I/O policy), shared by the writer and
the reader in ``migrate.archive`` and by the test-only crafting writer.
"""

from __future__ import annotations

import json
import posixpath
import struct
import zlib
from typing import Any

from migrate.errors import UnsafeMember

MAGIC = b"PYMGCKPT"
FORMAT_VERSION = 1

# magic (8 bytes), format version (u32 little endian)
STREAM_HEADER = struct.Struct("<8sI")

# kind (u8), flags (u8), reserved (u16, zero), stored_len (u32), raw_len (u32),
# offset (u64, file offset of a data chunk, else 0), payload_crc32 (u32); then header_crc32 (u32)
# over those 24 bytes.
_RECORD_BODY = struct.Struct("<BBHIIQI")
_CRC = struct.Struct("<I")
RECORD_HEADER_SIZE = _RECORD_BODY.size + _CRC.size  # 28

REC_MANIFEST = ord("M")  # JSON: the manifest; always the first record
REC_ENTRY = ord("E")  # JSON: one member's metadata; a "file" entry is followed by D* and F
REC_DATA = ord("D")  # one chunk of the open file member's content at `offset`
REC_END = ord("F")  # JSON: {"size_bytes", "sha256"} closes the open file member
REC_TRAILER = ord("T")  # JSON: {"members", "raw_bytes", "trailer"}; the last member record
REC_SIGNATURE = ord("S")  # JSON, stored raw: the optional signature after the trailer (migrate/archive/signing.py)
RECORD_NAMES = {REC_MANIFEST: "manifest", REC_ENTRY: "entry", REC_DATA: "data", REC_END: "end", REC_TRAILER: "trailer",
                REC_SIGNATURE: "signature"}

FLAG_ZSTD = 0x01  # payload is one zstd frame whose content is raw_len bytes

CHUNK_BYTES = 4 << 20  # writer's data chunk (raw) size
MAX_DATA_RAW_BYTES = 64 << 20  # reader's limit for one data chunk (writer uses CHUNK_BYTES)
MAX_DATA_STORED_BYTES = MAX_DATA_RAW_BYTES + (1 << 20)
MAX_META_BYTES = 1 << 30  # reader's limit for the trailer (the member list of a huge tree)
MAX_MANIFEST_BYTES = 64 << 20  # reader's limit for the manifest (a container spec and host facts)
MAX_ENTRY_BYTES = 16 << 20  # reader's limit for an entry or end record (metadata and xattrs of one inode)
MAX_SIGNATURE_BYTES = 64 << 10  # reader's limit for the signature record (a few hundred bytes of JSON)

# Member kinds as they appear in entry records.
KIND_FILE = "file"
KIND_DIR = "dir"
KIND_SYMLINK = "symlink"
KIND_HARDLINK = "hardlink"
KIND_FIFO = "fifo"
KIND_SOCKET = "socket"
KIND_WHITEOUT = "whiteout"  # overlayfs whiteout: character device 0:0
KIND_CHAR = "char"
KIND_BLOCK = "block"
KINDS = frozenset(
    {KIND_FILE, KIND_DIR, KIND_SYMLINK, KIND_HARDLINK, KIND_FIFO, KIND_SOCKET, KIND_WHITEOUT, KIND_CHAR, KIND_BLOCK}
)


def record_limits(kind: int) -> tuple[int, int]:
    """(stored, raw) payload bytes the reader accepts for a record of ``kind``: checked before
    anything is allocated or decompressed, so a small zstd frame cannot claim gigabytes."""
    if kind == REC_DATA:
        return MAX_DATA_STORED_BYTES, MAX_DATA_RAW_BYTES
    if kind in (REC_ENTRY, REC_END):
        return MAX_ENTRY_BYTES, MAX_ENTRY_BYTES
    if kind == REC_MANIFEST:
        return MAX_MANIFEST_BYTES, MAX_MANIFEST_BYTES
    if kind == REC_SIGNATURE:
        return MAX_SIGNATURE_BYTES, MAX_SIGNATURE_BYTES
    return MAX_META_BYTES, MAX_META_BYTES


def pack_stream_header(version: int = FORMAT_VERSION) -> bytes:
    return STREAM_HEADER.pack(MAGIC, version)


def pack_record_header(kind: int, flags: int, stored_len: int, raw_len: int, offset: int, payload_crc: int) -> bytes:
    body = _RECORD_BODY.pack(kind, flags, 0, stored_len, raw_len, offset, payload_crc)
    return body + _CRC.pack(zlib.crc32(body))


def unpack_record_header(header: bytes) -> tuple[int, int, int, int, int, int] | None:
    """Return (kind, flags, stored_len, raw_len, offset, payload_crc), or None if the crc fails."""
    body = header[: _RECORD_BODY.size]
    (crc,) = _CRC.unpack_from(header, _RECORD_BODY.size)
    if zlib.crc32(body) != crc:
        return None
    kind, flags, _reserved, stored_len, raw_len, offset, payload_crc = _RECORD_BODY.unpack(body)
    return kind, flags, stored_len, raw_len, offset, payload_crc


def encode_json(obj: Any) -> bytes:
    # ensure_ascii keeps names that are not UTF-8 (surrogate-escaped str from os.fsdecode) round-trippable.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, sort_keys=True).encode("ascii")


def decode_json(data: bytes) -> Any:
    return json.loads(data.decode("ascii"))


def check_member_name(name: str) -> None:
    """Raise UnsafeMember unless ``name`` is a clean relative path (no '/', '..', '.', '' parts)."""
    if not isinstance(name, str) or not name:
        raise UnsafeMember(str(name), "empty member name")
    if "\x00" in name:
        raise UnsafeMember(name, "NUL byte in member name")
    if not encodable(name):
        raise UnsafeMember(name, "not a file name: characters that do not encode to bytes")
    if name.startswith("/"):
        raise UnsafeMember(name, "absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise UnsafeMember(name, "'..' component in path")
    if any(p in ("", ".") for p in parts):
        raise UnsafeMember(name, "empty or '.' component in path")


def encodable(text: str) -> bool:
    """Whether ``text`` maps to bytes the way os.fsencode does (names that were not UTF-8 come
    back as surrogate escapes; other lone surrogates name nothing)."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def symlink_escapes(name: str, target: str) -> bool:
    """True if a relative symlink ``target`` stored at member ``name`` resolves above the archive root.

    Resolution is lexical from the link's directory, which is exact here because the reader
    never lets a member path pass through an extracted symlink. Absolute targets do not escape:
    they resolve inside the container's root at run time.
    """
    if target.startswith("/"):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    return resolved == ".." or resolved.startswith("../")
