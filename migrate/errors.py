"""Errors raised by checkpoint, restore, transfer and migration.

Tree::

    MigrationError                  every migrate-layer failure; ``phase`` names where it happened
    ├── CheckpointNotFound
    ├── ArchiveError                a checkpoint archive is malformed
    │   ├── TruncatedArchive        the stream ended early (the writer stopped, or the link broke)
    │   ├── ChecksumMismatch        names the member whose sha256 failed
    │   ├── FormatVersionError      unknown archive format version
    │   ├── UnsafeMember            absolute path, '..', escaping link, device node not allowed,
    │   │                           a member the whitelist does not allow (migrate.archive.members)
    │   ├── ArchiveLimitExceeded    over an extraction budget (runtime.extract_limits): names the
    │   │                           limit, its value and what needed more
    │   └── SignatureError          refused by the signature policy (migrate.archive.signing)
    │       ├── UnsignedArchive     trusted keys are required and the archive has no signature
    │       ├── UntrustedSigner     signed by a key that is not trusted here (names its fingerprint)
    │       └── BadSignature        the signature does not match the archive's bytes
    ├── SigningKeyError             a signing or trusted key cannot be used (names the file)
    ├── IncompatibleHost            pre-flight refused: CRIU version, CPU features, image, name/address
    ├── PeerError                   the other host answered with an error
    ├── TransferError               the link broke (we did not close it)
    ├── OutcomeUnknown              the final dump went out, the target's answer did not come back
    │                               and the target cannot be asked yet: the source copy stays frozen
    ├── MigrationTimeout
    ├── AuthError                   credentials refused (TLS, token, SSH)
    └── ContainerLost               past the point of no return (post-copy: the target already
                                    ran it) the migration failed; no complete running copy is left

Runtime errors (``runtime.errors.ContainerError`` and children) pass through unchanged.
"""

from __future__ import annotations


class MigrationError(Exception):
    def __init__(self, message: str, *, phase: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.phase = phase
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (phase: {self.phase})" if self.phase else self.message


class CheckpointNotFound(MigrationError):
    def __init__(self, checkpoint_id: str) -> None:
        super().__init__(f"no such checkpoint: {checkpoint_id}")
        self.checkpoint_id = checkpoint_id


class ArchiveError(MigrationError):
    pass


class TruncatedArchive(ArchiveError):
    """The stream ended before the archive did: its writer stopped (e.g. its CRIU dump failed and
    the source ended the stream) or the connection broke. Says nothing of why."""


class ChecksumMismatch(ArchiveError):
    def __init__(self, member: str, expected: str, actual: str) -> None:
        super().__init__(f"checksum mismatch in archive member {member}: expected sha256 {expected}, got {actual}")
        self.member = member
        self.expected = expected
        self.actual = actual


class FormatVersionError(ArchiveError):
    def __init__(self, found: object, supported: object) -> None:
        super().__init__(f"unknown checkpoint archive format version {found}, this pymigrate reads {supported}")
        self.found = found
        self.supported = supported


class UnsafeMember(ArchiveError):
    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"refusing archive member {member!r}: {reason}")
        self.member = member
        self.reason = reason


class ArchiveLimitExceeded(ArchiveError):
    """The archive needs more than an extraction limit allows (``limit`` is the field name of
    ``runtime.extract_limits.ExtractLimits``, ``value`` its setting, ``actual`` what was needed)."""

    def __init__(self, message: str, *, limit: str, value: int, actual: int, hint: str | None = None) -> None:
        super().__init__(message, phase="verify", hint=hint)
        self.limit = limit
        self.value = value
        self.actual = actual


class SignatureError(ArchiveError):
    """The archive was refused by the signature policy: checked before any member is extracted."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, phase="verify", hint=hint)


class UnsignedArchive(SignatureError):
    pass


class UntrustedSigner(SignatureError):
    pass


class BadSignature(SignatureError):
    pass


class SigningKeyError(MigrationError):
    """A key file given to sign or verify archives cannot be used (unreadable, wrong type,
    encrypted, readable by others); the message names the file."""


class IncompatibleHost(MigrationError):
    pass


class PeerError(MigrationError):
    pass


class TransferError(MigrationError):
    pass


class OutcomeUnknown(MigrationError):
    """A migration's final dump reached (or may have reached) the target and its answer was lost;
    the target could not be asked since. The source's copy stays frozen (exactly one copy: the
    target may run it) until the source daemon settles the migration with the target."""

    def __init__(self, message: str, *, phase: str | None = None, hint: str | None = None, migration_id: str = "",
                 dest: str = "") -> None:
        super().__init__(message, phase=phase, hint=hint)
        self.migration_id = migration_id
        self.dest = dest


class MigrationTimeout(MigrationError):
    pass


class AuthError(MigrationError):
    pass


class ContainerLost(MigrationError):
    """A live migration failed after the container had resumed on the target (post-copy: memory
    still on the source). ``source_copy`` says what is left on the source: "frozen" (the
    pre-migration copy, resumable), "none" or "unknown"."""

    def __init__(self, message: str, *, phase: str | None = None, hint: str | None = None, source_copy: str = "unknown") -> None:
        super().__init__(message, phase=phase, hint=hint)
        self.source_copy = source_copy
