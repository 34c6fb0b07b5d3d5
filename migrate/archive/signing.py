"""Signed checkpoint archives: ed25519 signatures over the archive's bytes.

An archive is signed by appending one signature record (``S``) after its trailer. The record
holds an ed25519 signature of ``CONTEXT + sha256(every byte before the record)``; the context
string keeps a signature made here from meaning anything anywhere else. Signing is append-only,
so a finished archive can be signed later (``pymigrate checkpoint sign``), and a stream that
went through a gRPC download can be signed by the client that wrote it to a file.

Verification is a pass of its own over the file (``verify_file``), before any member is
extracted: the extractor never sees bytes no trusted key vouched for. The extraction pass then
hashes what it reads again and compares (``read_archive(..., expect_sha256=...)``), so a file
changed between the two passes is refused too.

Keys are the ones operators already have: OpenSSH ed25519 keys (``ssh-keygen -t ed25519``) or
PEM (PKCS#8 private, SubjectPublicKeyInfo public). Trusted keys are listed one per line as in
``authorized_keys``; a key is named by its OpenSSH fingerprint (``SHA256:...``, as
``ssh-keygen -l`` prints it). ``cryptography`` does the ed25519 work (already a dependency of
paramiko; its ed25519 is OpenSSL's).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator

from migrate.archive import format as fmt
from migrate.archive.streams import ByteSink, ByteSource
from migrate.errors import ArchiveError, BadSignature, SigningKeyError, UnsignedArchive, UntrustedSigner

if TYPE_CHECKING:  # imported where keys are used: ~35 ms that unsigned checkpoints and restores skip
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "CONTEXT",
    "ArchiveSigner",
    "HashingSink",
    "HashingSource",
    "ScanResult",
    "SignaturePolicy",
    "TrustedKey",
    "Verified",
    "load_trusted_keys",
    "read_signature_record",
    "scan_archive",
    "sign_file",
    "verified_chunks",
    "verify_file",
    "verify_import",
]

CONTEXT = b"pymigrate checkpoint archive signature v1\x00"
ALGORITHM = "ed25519"
MAX_KEY_FILE_BYTES = 1 << 20  # a trusted-keys file is a handful of lines
_READ_BYTES = 1 << 20


def fingerprint(public: Ed25519PublicKey) -> str:
    """The key's OpenSSH fingerprint: ``SHA256:`` and the unpadded base64 of the sha256 of the
    key's wire form (what ``ssh-keygen -l`` prints)."""
    from cryptography.hazmat.primitives import serialization

    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _message(digest: bytes) -> bytes:
    return CONTEXT + digest


# -- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    public: Ed25519PublicKey
    fingerprint: str
    comment: str  # the key line's comment (e.g. "release@ci"), or the file it came from
    source: str  # "FILE:LINE"

    def describe(self) -> str:
        return f"{self.fingerprint} ({self.comment})" if self.comment else self.fingerprint


class ArchiveSigner:
    """An ed25519 private key that signs archives."""

    def __init__(self, key: Ed25519PrivateKey, source: str) -> None:
        self._key = key
        self.source = source
        self.fingerprint = fingerprint(key.public_key())

    @classmethod
    def from_file(cls, path: Path) -> ArchiveSigner:
        """Load an unencrypted ed25519 private key (OpenSSH or PEM PKCS#8) that only its owner
        can read, as ssh refuses a private key others can read."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        data = _read_key_file(path, private=True)
        key: object  # either loader's key types (they differ across cryptography releases); narrowed below
        try:
            if b"BEGIN OPENSSH PRIVATE KEY" in data:
                key = serialization.load_ssh_private_key(data, password=None)
            else:
                key = serialization.load_pem_private_key(data, password=None)
        except TypeError as exc:  # a passphrase-protected key
            raise SigningKeyError(f"signing key {path} is encrypted", hint="use an unencrypted key file readable only by "
                                  "its owner (ssh-keygen -t ed25519 -N '' -f FILE)") from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SigningKeyError(f"signing key {path} is not an OpenSSH or PEM private key: {exc}",
                                  hint="make one with: ssh-keygen -t ed25519 -N '' -f FILE") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"signing key {path} is a {type(key).__name__.removesuffix('PrivateKey') or 'non'} key, "
                                  "archives are signed with ed25519", hint="make one with: ssh-keygen -t ed25519 -N '' -f FILE")
        return cls(key, str(path))

    def record(self, digest: bytes) -> dict[str, Any]:
        """The signature record's payload for an archive whose bytes hash to ``digest``."""
        signature = self._key.sign(_message(digest))
        return {"algorithm": ALGORITHM, "key": self.fingerprint, "sha256": digest.hex(),
                "signature": base64.b64encode(signature).decode()}

    def append(self, sink: BinaryIO, digest: bytes) -> None:
        """Write the signature record for ``digest`` (the archive's bytes so far) to ``sink``."""
        raw = fmt.encode_json(self.record(digest))
        sink.write(fmt.pack_record_header(fmt.REC_SIGNATURE, 0, len(raw), len(raw), 0, zlib.crc32(raw)))
        sink.write(raw)


def _read_key_file(path: Path, *, private: bool) -> bytes:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SigningKeyError(f"key file {path} is not a regular file")
            if private and st.st_mode & 0o077:
                raise SigningKeyError(f"signing key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                                      hint=f"chmod 600 {path}")
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise SigningKeyError(f"cannot read key file {path}: {exc.strerror}") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SigningKeyError(f"key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def load_trusted_keys(paths: tuple[Path, ...] | list[Path]) -> tuple[TrustedKey, ...]:
    """The ed25519 public keys in ``paths``: each file is one PEM public key, or lines as in
    ``authorized_keys`` (``ssh-ed25519 BASE64 [comment]``; blank lines and ``#`` comments skipped).
    Any other key type or an unreadable line is an error naming the file and line: a trust list
    that is silently half-read would refuse archives for no visible reason."""
    keys: list[TrustedKey] = []
    for path in paths:
        data = _read_key_file(Path(path), private=False)
        if b"-----BEGIN" in data:
            keys.append(_pem_public(data, Path(path)))
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(_ssh_public(line, f"{path}:{number}"))
    if not keys:
        raise SigningKeyError(f"no public key in {', '.join(str(p) for p in paths) or 'the trusted-key list'}",
                              hint="give the .pub file of the signing key (ssh-ed25519 ... line) or a PEM public key")
    return tuple(keys)


def _pem_public(data: bytes, path: Path) -> TrustedKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"trusted key {path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"trusted key {path} is not an ed25519 key")
    return TrustedKey(key, fingerprint(key), path.name, str(path))


def _ssh_public(line: str, source: str) -> TrustedKey:
    parts = line.split(None, 2)
    if parts[0] != "ssh-ed25519" or len(parts) < 2:
        raise SigningKeyError(f"trusted key {source}: expected 'ssh-ed25519 BASE64 [comment]', got {line[:40]!r}",
                              hint="archives are signed with ed25519 keys; list their .pub lines")
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"trusted key {source} does not decode: {exc}") from exc
    assert isinstance(key, Ed25519PublicKey)
    return TrustedKey(key, fingerprint(key), parts[2] if len(parts) > 2 else "", source)


# -- reading and verifying -----------------------------------------------------------------------


@dataclass(frozen=True)
class ScanResult:
    sha256: bytes  # of every byte before the signature record (the whole archive if unsigned)
    signature: dict[str, Any] | None  # the signature record's payload
    size_bytes: int


@dataclass(frozen=True)
class Verified:
    signer: TrustedKey
    sha256: bytes  # what the extraction pass must read again (read_archive expect_sha256)
    signed_bytes: int  # the archive's length up to its signature record

    def describe(self) -> str:
        return self.signer.describe()


@dataclass(frozen=True)
class SignaturePolicy:
    """Which keys an archive may be signed with. An empty policy is "no check"; with keys, an
    archive must carry a valid signature of one of them."""

    trusted: tuple[TrustedKey, ...] = ()

    @property
    def required(self) -> bool:
        return bool(self.trusted)

    def check(self, scanned: ScanResult, what: str) -> Verified:
        """Raise UnsignedArchive / UntrustedSigner / BadSignature, or name the signer."""
        record = scanned.signature
        if record is None:
            raise UnsignedArchive(f"{what} is not signed, and only archives signed by a trusted key are accepted",
                                  hint="sign it where it was made: pymigrate checkpoint sign FILE --sign-key KEY")
        if record.get("algorithm") != ALGORITHM or not isinstance(record.get("signature"), str):
            raise BadSignature(f"{what}: malformed signature record (algorithm {str(record.get('algorithm'))[:40]!r})")
        by = next((k for k in self.trusted if k.fingerprint == record.get("key")), None)
        if by is None:
            raise UntrustedSigner(f"{what} is signed by {str(record.get('key'))[:80]}, which is not a trusted key",
                                  hint="add its public key with --trusted-key, if you trust whoever holds it")
        from cryptography.exceptions import InvalidSignature

        try:
            signature = base64.b64decode(record["signature"], validate=True)
            by.public.verify(signature, _message(scanned.sha256))
        except (InvalidSignature, ValueError) as exc:
            raise BadSignature(f"{what}: the signature by {by.describe()} does not match the archive's bytes "
                               "(changed after it was signed, or a forged signature)") from exc
        return Verified(by, scanned.sha256, scanned.size_bytes)


class _Hashing:
    """Reads a source, hashing and counting every byte."""

    def __init__(self, source: BinaryIO) -> None:
        self._src = source
        self.hash = hashlib.sha256()
        self.pos = 0

    def exact(self, n: int, what: str) -> bytes:
        data = self._src.read(n)
        while len(data) < n:
            more = self._src.read(n - len(data))
            if not more:
                raise ArchiveError(f"truncated archive: stream ended at byte {self.pos + len(data)} while reading {what}")
            data += more
        self.hash.update(data)
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        while n:
            step = min(n, _READ_BYTES)
            self.exact(step, what)
            n -= step


def scan_archive(source: BinaryIO) -> ScanResult:
    """Hash an archive's bytes up to its signature record and read that record, checking only
    the framing (record headers, lengths, order of manifest and trailer): members are judged by
    the extraction pass, which runs only once a signature was verified."""
    reader = _Hashing(source)
    magic, _version = fmt.STREAM_HEADER.unpack(reader.exact(fmt.STREAM_HEADER.size, "the stream header"))
    if magic != fmt.MAGIC:
        raise ArchiveError("not a pymigrate checkpoint archive (bad magic)")
    while True:
        kind, stored = _record_header(reader)
        if kind == fmt.REC_SIGNATURE:
            raise ArchiveError(f"malformed archive: a signature record before the trailer at byte {reader.pos}")
        reader.skip(stored, f"a {fmt.RECORD_NAMES[kind]} record")
        if kind == fmt.REC_TRAILER:
            break
    digest = reader.hash.digest()
    head = source.read(fmt.RECORD_HEADER_SIZE)
    if not head:
        return ScanResult(digest, None, reader.pos)
    record = read_signature_record(head, source, reader.pos)
    if source.read(1):
        raise ArchiveError("corrupted archive: data after the signature record")
    return ScanResult(digest, record, reader.pos)


def _record_header(reader: _Hashing) -> tuple[int, int]:
    at = reader.pos
    parsed = fmt.unpack_record_header(reader.exact(fmt.RECORD_HEADER_SIZE, "a record header"))
    if parsed is None:
        raise ArchiveError(f"corrupted archive: record header at byte {at} fails its crc32")
    kind, flags, stored, raw, _offset, _crc = parsed
    if kind not in fmt.RECORD_NAMES:
        raise ArchiveError(f"corrupted archive: unknown record kind {kind} at byte {at}")
    limit_stored, limit_raw = fmt.record_limits(kind)
    if stored > limit_stored or raw > limit_raw or flags & ~fmt.FLAG_ZSTD:
        raise ArchiveError(f"corrupted archive: implausible {fmt.RECORD_NAMES[kind]} record at byte {at}")
    return kind, stored


def read_signature_record(head: bytes, source: ByteSource, at: int) -> dict[str, Any]:
    """The payload of the signature record whose header ``head`` was read at byte ``at`` (anything
    else after a trailer is "data after the trailer")."""
    parsed = fmt.unpack_record_header(head) if len(head) == fmt.RECORD_HEADER_SIZE else None
    if parsed is None or parsed[0] != fmt.REC_SIGNATURE:
        raise ArchiveError(f"corrupted archive: data after the trailer at byte {at}")
    _kind, flags, stored, raw, _offset, crc = parsed
    if flags or stored != raw or stored > fmt.MAX_SIGNATURE_BYTES:
        raise ArchiveError(f"corrupted archive: implausible signature record at byte {at}")
    payload = source.read(stored)
    if len(payload) != stored or zlib.crc32(payload) != crc:
        raise ArchiveError(f"corrupted archive: the signature record at byte {at} is truncated or fails its crc32")
    try:
        record = fmt.decode_json(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveError("corrupted archive: the signature record is not JSON") from exc
    if not isinstance(record, dict):
        raise ArchiveError("corrupted archive: the signature record is not a JSON object")
    return record


def verify_file(path: Path, policy: SignaturePolicy) -> Verified:
    """Verify the signature of the archive file ``path`` against ``policy`` (a pass over the whole
    file; nothing is extracted)."""
    try:
        with open(path, "rb") as f:
            scanned = scan_archive(f)
    except OSError as exc:
        raise ArchiveError(f"cannot read archive {path}: {exc.strerror}") from exc
    return policy.check(scanned, f"archive {path}")


def verify_import(path: Path, trusted_keys: tuple[Path, ...] | list[Path]) -> Verified | None:
    """With trusted keys, the archive file must carry a valid signature by one of them
    (SignatureError otherwise); without, nothing is checked and None is returned."""
    if not trusted_keys:
        return None
    return verify_file(path, SignaturePolicy(load_trusted_keys(trusted_keys)))


def verified_chunks(path: Path, verified: Verified, chunk_bytes: int) -> Iterator[bytes]:
    """The file's bytes in chunks, for an upload after ``verify_file``: the chunk that completes
    the signed bytes is held back unless they still hash to the verified digest (BadSignature:
    the file changed since it was verified, and the receiver never sees its end)."""
    h = hashlib.sha256()
    seen = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            if seen < verified.signed_bytes:
                part = chunk[: verified.signed_bytes - seen]
                h.update(part)
                seen += len(part)
                if seen == verified.signed_bytes and h.digest() != verified.sha256:
                    raise BadSignature(f"archive {path} changed after its signature was verified",
                                       hint="do not modify an archive while it is uploaded")
            yield chunk
    if seen < verified.signed_bytes:
        raise BadSignature(f"archive {path} shrank after its signature was verified")


def sign_file(path: Path, signer: ArchiveSigner) -> str:
    """Append ``signer``'s signature to the unsigned archive file ``path``; returns the digest
    (hex). A signed archive is refused: one signature per archive keeps what "verified" means
    plain."""
    try:
        with open(path, "r+b") as f:
            scanned = scan_archive(f)
            if scanned.signature is not None:
                raise ArchiveError(f"archive {path} is signed already (by {str(scanned.signature.get('key'))[:80]})",
                                   hint="sign the unsigned export instead")
            f.seek(scanned.size_bytes)
            signer.append(f, scanned.sha256)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ArchiveError(f"cannot sign archive {path}: {exc.strerror}") from exc
    return scanned.sha256.hex()


class HashingSink:
    """A write-through sink that hashes what the archive writer writes, so the writer's caller
    can append the signature record when the writer closed."""

    def __init__(self, sink: ByteSink) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int | None:
        self._hash.update(data)
        return self._sink.write(data)

    def flush(self) -> None:
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()

    def digest(self) -> bytes:
        return self._hash.digest()


class HashingSource:
    """A read-through source that hashes what the archive reader reads: the extraction pass
    proves it read the very bytes whose signature was verified."""

    def __init__(self, source: ByteSource) -> None:
        self._src = source
        self._hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self._hash.update(data)
        return data

    def readinto(self, view: memoryview) -> int:
        readinto = getattr(self._src, "readinto", None)
        if readinto is None:
            data = self._src.read(len(view))
            n = len(data)
            view[:n] = data
        else:
            n = readinto(view)
        self._hash.update(view[:n])
        return n

    def digest(self) -> bytes:
        return self._hash.digest()
