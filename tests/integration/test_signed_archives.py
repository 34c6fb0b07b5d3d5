"""Signed archives end to end (issue 11; migrate/archive/signing.py): real CRIU exports signed with keys
from ssh-keygen, imports that must be signed by a trusted key, and a daemon that accepts only
signed uploads. Real daemon over a unix socket, real containers.

"Checked before anything is extracted" is shown by hostile archives (an absolute symlink where
CRIU writes its log, which the extractor refuses as UnsafeMember): signed by an untrusted key or
not at all, they are refused for their signature (UntrustedSigner, UnsignedArchive), so the
extractor never read them.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from migrate.archive.signing import ArchiveSigner, sign_file
from tests.fakes import hostile_archives as ha
from tests.integration.cli_helpers import LOOP, ok, refused, start_daemon, stop_daemon, unique
from tests.integration.conftest import PYMIGRATE, REPO

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "pycriu", "busybox")]



def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "tmp").iterdir()) if (root / "tmp").is_dir() else []


def counter(pm: Callable[..., Any], name: str) -> int:
    return int(ok(pm("exec", name, "cat", "/tmp/cnt")).strip() or 0)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for who in ("release", "other"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{who}@ci", "-f", str(tmp_path / who)],
                       check=True)
        out[who] = tmp_path / who
    return out


def fingerprint(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def hostile(tmp_path: Path, target: Path, key: Path | None) -> Path:
    """The 822-byte host-file overwrite, signed by ``key`` (or not)."""
    path = tmp_path / f"hostile-{secrets.token_hex(3)}.pma"
    path.write_bytes(ha.symlink_archive("images/cpuinfo-check.log", str(target)))
    if key is not None:
        sign_file(path, ArchiveSigner.from_file(key))
    return path


def test_restore_import_takes_only_archives_signed_by_a_trusted_key(pm: Callable[..., Any], pm_root: Path, tmp_path: Path,
                                                                    keys: dict[str, Path]) -> None:
    release, other = keys["release"], keys["other"]
    host_file = tmp_path / "host-file"
    host_file.write_text("precious\n")
    name = unique("signed")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", LOOP))
    signed, unsigned = tmp_path / "signed.pma", tmp_path / "unsigned.pma"
    try:
        ok(pm("checkpoint", name, "--export", str(unsigned), "--leave-running"))
        before = counter(pm, name)
        result = json.loads(ok(pm("checkpoint", name, "--export", str(signed), "--sign-key", str(release), "--json")))
        assert result["signed_by"] == fingerprint(release.with_suffix(".pub"))
        answer = json.loads(ok(pm("checkpoint", "verify", str(signed), "--trusted-key", f"{release}.pub", "--json")))
        assert answer["signed_by"] == result["signed_by"] and answer["comment"] == "release@ci"

        trusted = ("--trusted-key", f"{release}.pub")
        # not signed, signed by someone else, changed after signing: refused, nothing unpacked
        refused(pm("restore", "--import", str(unsigned), *trusted, "--json"), "UnsignedArchive")
        answer = refused(pm("restore", "--import", str(signed), "--trusted-key", f"{other}.pub", "--json"), "UntrustedSigner")
        assert result["signed_by"] in answer["error"] and "--trusted-key" in answer["hint"]
        tampered = tmp_path / "tampered.pma"
        data = bytearray(signed.read_bytes())
        data[len(data) // 2] ^= 0x01
        tampered.write_bytes(bytes(data))
        refused(pm("restore", "--import", str(tampered), *trusted, "--json"), "BadSignature")
        # hostile archives are judged by their signature first: the extractor never sees them
        refused(pm("restore", "--import", str(hostile(tmp_path, host_file, other)), *trusted, "--json"), "UntrustedSigner")
        refused(pm("restore", "--import", str(hostile(tmp_path, host_file, None)), *trusted, "--json"), "UnsignedArchive")
        # without --trusted-key the same hostile archive reaches the extractor, which refuses it
        refused(pm("restore", "--import", str(hostile(tmp_path, host_file, other)), "--json"), "UnsafeMember")
        assert host_file.read_text() == "precious\n"
        assert leftovers(pm_root) == []
        assert json.loads(ok(pm("inspect", name, "--json")))[0]["state"]["status"] == "exited"

        # a signed archive still imports where nobody asks for a signature
        ok(pm("restore", "--import", str(signed), timeout=180))
        assert json.loads(ok(pm("inspect", name, "--json")))[0]["state"]["status"] == "running"
        ok(pm("checkpoint", name, "--export", str(signed), "--sign-key", str(release)))

        r = pm("restore", "--import", str(signed), *trusted, timeout=180)
        ok(r)
        assert f"good signature by {result['signed_by']} (release@ci)" in r.stderr.decode()
        assert json.loads(ok(pm("inspect", name, "--json")))[0]["state"]["status"] == "running"
        assert counter(pm, name) >= before  # the restored counter goes on from where it was
    finally:
        pm("rm", "-f", name)
    assert leftovers(pm_root) == []


def test_checkpoint_sign_appends_a_signature_once(pm: Callable[..., Any], tmp_path: Path, keys: dict[str, Path]) -> None:
    name = unique("later")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", LOOP))
    archive = tmp_path / "later.pma"
    try:
        ok(pm("checkpoint", name, "--export", str(archive), "--leave-running"))
        refused(pm("checkpoint", "verify", str(archive), "--trusted-key", f"{keys['release']}.pub", "--json"), "UnsignedArchive")
        answer = json.loads(ok(pm("checkpoint", "sign", str(archive), "--sign-key", str(keys["release"]), "--json")))
        assert answer["signed_by"] == fingerprint(Path(f"{keys['release']}.pub"))
        ok(pm("checkpoint", "verify", str(archive), "--trusted-key", f"{keys['release']}.pub"))
        r = pm("checkpoint", "sign", str(archive), "--sign-key", str(keys["other"]), "--json")
        assert r.returncode != 0 and "signed already" in json.loads(r.stdout)["error"]
        Path(keys["other"]).chmod(0o644)
        answer = refused(pm("checkpoint", name, "--export", str(tmp_path / "x.pma"), "--sign-key", str(keys["other"]),
                            "--json"), "SigningKeyError")
        assert "chmod 600" in answer["hint"]
        assert json.loads(ok(pm("inspect", name, "--json")))[0]["state"]["status"] == "running"  # refused before the freeze
    finally:
        pm("rm", "-f", name)


@pytest.fixture
def signed_daemon(pm_root: Path, keys: dict[str, Path]) -> Iterator[str]:
    """A daemon on the test root that takes only uploads signed by the release key."""
    proc, sock = start_daemon(pm_root, ["--trusted-key", f"{keys['release']}.pub"])
    try:
        yield f"unix:{sock}"
    finally:
        stop_daemon(proc, sock)


def test_a_daemon_with_trusted_keys_takes_only_signed_uploads(pm: Callable[..., Any], pm_root: Path, tmp_path: Path,
                                                              keys: dict[str, Path], signed_daemon: str) -> None:
    host_file = tmp_path / "host-file"
    host_file.write_text("precious\n")
    name = unique("dsigned")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", LOOP))
    unsigned, signed = tmp_path / "unsigned.pma", tmp_path / "signed.pma"
    try:
        ok(pm("checkpoint", name, "--export", str(unsigned), "--leave-running"))
        # through the daemon: it checkpoints, this client downloads and signs
        result = json.loads(ok(pm("--host", signed_daemon, "checkpoint", name, "--export", str(signed), "--sign-key",
                                  str(keys["release"]), "--json")))
        assert result["signed_by"] == fingerprint(Path(f"{keys['release']}.pub"))
        ok(pm("checkpoint", "verify", str(signed), "--trusted-key", f"{keys['release']}.pub"))
        kept = json.loads(ok(pm("checkpoint", "ls", "--json")))  # the daemon's own checkpoint of it
        remote = ("--host", signed_daemon, "restore", "--json", "--import")
        refused(pm(*remote, str(unsigned)), "UnsignedArchive")
        refused(pm(*remote, str(hostile(tmp_path, host_file, keys["other"]))), "UntrustedSigner")
        refused(pm(*remote, str(hostile(tmp_path, host_file, None))), "UnsignedArchive")
        assert host_file.read_text() == "precious\n"
        assert leftovers(pm_root) == [] and json.loads(ok(pm("checkpoint", "ls", "--json"))) == kept  # no upload kept
        # the client's own check comes first when it is given keys too
        refused(pm(*remote, str(signed), "--trusted-key", f"{keys['other']}.pub"), "UntrustedSigner")
        ok(pm("--host", signed_daemon, "restore", "--import", str(signed), timeout=180))
        assert json.loads(ok(pm("inspect", name, "--json")))[0]["state"]["status"] == "running"
        assert leftovers(pm_root) == []
    finally:
        pm("rm", "-f", name)
        for c in json.loads(ok(pm("checkpoint", "ls", "--json"))):
            pm("checkpoint", "rm", c["checkpoint_id"])


def test_a_daemon_with_an_unusable_trusted_key_does_not_start(pm_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "rsa.pub"
    bad.write_text("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 someone@example\n")
    r = subprocess.run([*PYMIGRATE, "--root", str(pm_root), "daemon", "--listen", f"unix:/tmp/pm-bad-{secrets.token_hex(3)}.sock",
                        "--trusted-key", str(bad)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode != 0 and f"{bad}:1" in r.stderr and "ssh-ed25519" in r.stderr, r.stderr
