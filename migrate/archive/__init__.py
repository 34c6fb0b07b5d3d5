"""The checkpoint image-dir and archive contract.

A checkpoint is a CRIU images dir (``images/<file>``: many small ``*.img`` plus large
``pages-*.img``), the container's overlay upper layer (``upper/<path>``) and a JSON manifest.
This module turns one into a single byte stream and back: the same bytes are written to a file
by ``pymigrate checkpoint export`` and sent in chunks over gRPC by ``migrate.archive.streams``.

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
  (migrate.archive.members), and nothing beyond the extraction limits (runtime.extract_limits:
  depth, name length, member count, member and total size, holes) is created, checked before
  the bytes are written or hashed. Every malformed input ends in an ``ArchiveError``.
"""


from __future__ import annotations

from migrate.archive.format import FORMAT_VERSION, MAGIC
from migrate.archive.reader import read_archive, read_manifest
from migrate.archive.writer import IMAGES_PREFIX, MANIFEST_FIELDS, UPPER_PREFIX, ArchiveSummary, ArchiveWriter, MemberInfo

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
