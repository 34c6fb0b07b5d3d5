"""Errors raised by checkpoint, restore, transfer and migration.

Tree::

    MigrationError                  every migrate-layer failure; ``phase`` names where it happened
    ├── CheckpointNotFound
    ├── ArchiveError                a checkpoint archive is malformed
    │   ├── ChecksumMismatch        names the member whose sha256 failed
    │   ├── FormatVersionError      unknown archive format version
    │   └── UnsafeMember            absolute path, '..', escaping link, device node not allowed
    ├── IncompatibleHost            pre-flight refused: CRIU version, CPU features, image, name/address
    ├── PeerError                   the other host answered with an error
    ├── TransferError               the link broke (we did not close it)
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


class IncompatibleHost(MigrationError):
    pass


class PeerError(MigrationError):
    pass


class TransferError(MigrationError):
    pass


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
