"""Signed archives (migrate/archive/signing.py): keys as operators have them, signatures verified before
any member is extracted, and every way an archive or key can be wrong ends in a typed error.

The end-to-end versions (checkpoint --export --sign-key, restore --import --trusted-key, a daemon
that requires signed uploads) are in tests/integration/test_signed_archives.py."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from migrate.archive import format as fmt
from migrate.errors import ArchiveError, BadSignature, SigningKeyError, UnsignedArchive, UntrustedSigner
from migrate.archive import ArchiveWriter, read_archive
from migrate.archive.signing import (
    ArchiveSigner,
    HashingSink,
    SignaturePolicy,
    load_trusted_keys,
    scan_archive,
    sign_file,
    verified_chunks,
    verify_file,
    verify_import,
)

needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) missing")


def pem_keypair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = tmp_path / name
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public = tmp_path / f"{name}.pem"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def ssh_keypair(tmp_path: Path, name: str, comment: str = "ops@example") -> tuple[Path, Path]:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(tmp_path / name)], check=True)
    return tmp_path / name, tmp_path / f"{name}.pub"


def archive_bytes(tmp_path: Path, signer: ArchiveSigner | None = None) -> bytes:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "core-1.img").write_bytes(os.urandom(3000))
    (src / "pages-1.img").write_bytes(b"\0" * 100_000 + os.urandom(50_000))
    out = io.BytesIO()
    sink = HashingSink(out)
    with ArchiveWriter(sink) as writer:
        writer.write_manifest({"kind": "pymigrate-checkpoint"})
        writer.add_file("images/core-1.img", src / "core-1.img")
        writer.add_file("images/pages-1.img", src / "pages-1.img")
        writer.close()
    if signer is not None:
        signer.append(out, sink.digest())
    return out.getvalue()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {"a": pem_keypair(tmp_path, "a"), "b": pem_keypair(tmp_path, "b")}


def test_signed_archive_verifies_and_extracts_and_unsigned_readers_still_read_it(tmp_path: Path, keys) -> None:  # noqa: ANN001
    signer = ArchiveSigner.from_file(keys["a"][0])
    path = tmp_path / "a.pma"
    path.write_bytes(archive_bytes(tmp_path, signer))
    verified = verify_file(path, SignaturePolicy(load_trusted_keys([keys["a"][1], keys["b"][1]])))
    assert verified.signer.fingerprint == signer.fingerprint
    with open(path, "rb") as f:
        manifest = read_archive(f, tmp_path / "x", expect_sha256=verified.sha256)
    assert manifest["kind"] == "pymigrate-checkpoint"
    assert (tmp_path / "x/images/core-1.img").stat().st_size == 3000
    with open(path, "rb") as f:  # no policy: the signature record is read past, not required
        read_archive(f, tmp_path / "y")


@needs_ssh_keygen
def test_openssh_keys_work_and_fingerprints_match_ssh_keygen(tmp_path: Path) -> None:
    private, public = ssh_keypair(tmp_path, "ops", "release@ci")
    signer = ArchiveSigner.from_file(private)
    listed = subprocess.run(["ssh-keygen", "-lf", str(public)], capture_output=True, text=True, check=True).stdout
    assert signer.fingerprint == listed.split()[1]
    # an authorized_keys-style list: comments, blank lines, several keys
    _, other = ssh_keypair(tmp_path, "other")
    trusted = tmp_path / "trusted"
    trusted.write_text(f"# release keys\n\n{other.read_text()}{public.read_text()}")
    keys = load_trusted_keys([trusted])
    assert [k.comment for k in keys] == ["ops@example", "release@ci"]
    path = tmp_path / "a.pma"
    path.write_bytes(archive_bytes(tmp_path, signer))
    assert verify_file(path, SignaturePolicy(keys)).describe() == f"{signer.fingerprint} (release@ci)"


def test_policy_refusals_are_typed(tmp_path: Path, keys) -> None:  # noqa: ANN001
    only_b = SignaturePolicy(load_trusted_keys([keys["b"][1]]))
    unsigned = tmp_path / "unsigned.pma"
    unsigned.write_bytes(archive_bytes(tmp_path))
    with pytest.raises(UnsignedArchive, match="is not signed"):
        verify_file(unsigned, only_b)
    signed_by_a = tmp_path / "a.pma"
    signed_by_a.write_bytes(archive_bytes(tmp_path, ArchiveSigner.from_file(keys["a"][0])))
    with pytest.raises(UntrustedSigner, match="not a trusted key") as info:
        verify_file(signed_by_a, only_b)
    assert info.value.hint and "--trusted-key" in info.value.hint
    assert verify_import(unsigned, ()) is None  # no keys: nothing is checked


def test_any_changed_byte_breaks_the_signature(tmp_path: Path, keys) -> None:  # noqa: ANN001
    signer = ArchiveSigner.from_file(keys["a"][0])
    policy = SignaturePolicy(load_trusted_keys([keys["a"][1]]))
    data = archive_bytes(tmp_path, signer)
    scanned = scan_archive(io.BytesIO(data))
    signed = scanned.size_bytes
    # the stream header, the manifest, a data chunk, the trailer, and the signature itself
    for at in (9, 40, signed // 2, signed - 5, len(data) - 10):
        bad = bytearray(data)
        bad[at] ^= 0x20
        path = tmp_path / f"bad-{at}.pma"
        path.write_bytes(bytes(bad))
        with pytest.raises(ArchiveError) as info:  # BadSignature, or the framing it broke
            verify_file(path, policy)
        assert isinstance(info.value, BadSignature) or "corrupted" in str(info.value) or "magic" in str(info.value), (at, info.value)


def test_a_signature_cannot_be_moved_or_followed(tmp_path: Path, keys) -> None:  # noqa: ANN001
    signer = ArchiveSigner.from_file(keys["a"][0])
    policy = SignaturePolicy(load_trusted_keys([keys["a"][1]]))
    data = archive_bytes(tmp_path, signer)
    signed = scan_archive(io.BytesIO(data)).size_bytes
    other = archive_bytes(tmp_path)  # new random content, same framing
    grafted = tmp_path / "grafted.pma"
    grafted.write_bytes(other + data[signed:])  # a's signature on b's bytes
    with pytest.raises(BadSignature):
        verify_file(grafted, policy)
    trailing = tmp_path / "trailing.pma"
    trailing.write_bytes(data + b"x")
    with pytest.raises(ArchiveError, match="after the signature record"):
        verify_file(trailing, policy)
    with pytest.raises(ArchiveError, match="data after the signature record"):  # two signatures
        read_archive(io.BytesIO(data + data[signed:]), tmp_path / "z")


def test_file_changed_between_verify_and_extract_is_refused(tmp_path: Path, keys) -> None:  # noqa: ANN001
    signer = ArchiveSigner.from_file(keys["a"][0])
    path = tmp_path / "a.pma"
    path.write_bytes(archive_bytes(tmp_path, signer))
    verified = verify_file(path, SignaturePolicy(load_trusted_keys([keys["a"][1]])))
    swapped = archive_bytes(tmp_path, signer)  # a different, validly signed archive
    with pytest.raises(BadSignature, match="changed while it was read"):
        read_archive(io.BytesIO(swapped), tmp_path / "x", expect_sha256=verified.sha256)
    # the upload side: the chunk completing the signed bytes is never sent
    path.write_bytes(swapped)
    sent = []
    with pytest.raises(BadSignature, match="changed after its signature was verified"):
        for chunk in verified_chunks(path, verified, 4096):
            sent.append(chunk)
    assert sum(map(len, sent)) < verified.signed_bytes


def test_sign_file_appends_once(tmp_path: Path, keys) -> None:  # noqa: ANN001
    path = tmp_path / "a.pma"
    path.write_bytes(archive_bytes(tmp_path))
    signer = ArchiveSigner.from_file(keys["a"][0])
    sign_file(path, signer)
    assert verify_file(path, SignaturePolicy(load_trusted_keys([keys["a"][1]]))).signer.fingerprint == signer.fingerprint
    with pytest.raises(ArchiveError, match="signed already"):
        sign_file(path, ArchiveSigner.from_file(keys["b"][0]))
    truncated = tmp_path / "t.pma"
    truncated.write_bytes(archive_bytes(tmp_path)[:-30])
    with pytest.raises(ArchiveError, match="truncated"):
        sign_file(truncated, signer)


def test_signature_record_before_the_trailer_is_malformed(tmp_path: Path, keys) -> None:  # noqa: ANN001
    data = archive_bytes(tmp_path)
    record = fmt.pack_record_header(fmt.REC_SIGNATURE, 0, 2, 2, 0, __import__("zlib").crc32(b"{}")) + b"{}"
    # right after the stream header: before the manifest
    bad = data[: fmt.STREAM_HEADER.size] + record + data[fmt.STREAM_HEADER.size :]
    with pytest.raises(ArchiveError):
        scan_archive(io.BytesIO(bad))
    with pytest.raises(ArchiveError):
        read_archive(io.BytesIO(bad), tmp_path / "x")


def test_unusable_keys_are_refused_with_the_file_named(tmp_path: Path) -> None:
    private, public = pem_keypair(tmp_path, "k")
    private.chmod(0o644)
    with pytest.raises(SigningKeyError, match="readable by others") as info:
        ArchiveSigner.from_file(private)
    assert info.value.hint == f"chmod 600 {private}"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_path = tmp_path / "rsa"
    rsa_path.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    rsa_path.chmod(0o600)
    with pytest.raises(SigningKeyError, match="ed25519"):
        ArchiveSigner.from_file(rsa_path)
    encrypted = tmp_path / "enc"
    encrypted.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    encrypted.chmod(0o600)
    with pytest.raises(SigningKeyError, match="encrypted"):
        ArchiveSigner.from_file(encrypted)
    with pytest.raises(SigningKeyError, match="cannot read"):
        ArchiveSigner.from_file(tmp_path / "missing")
    listing = tmp_path / "list"
    listing.write_text("ssh-rsa AAAAB3NzaC1yc2E= someone\n")
    with pytest.raises(SigningKeyError, match=f"{listing}:1"):
        load_trusted_keys([listing])
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    with pytest.raises(SigningKeyError, match="no public key"):
        load_trusted_keys([empty])
    assert load_trusted_keys([public])[0].comment == "k.pem"
