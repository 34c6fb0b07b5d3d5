"""Local commands keep a lean import set (issue 17: every command pays its imports in wall time).

Each case runs the CLI as the program it is (``main()`` from ``sys.argv``) in a fresh interpreter
and lists ``sys.modules`` at exit. A local command must not load the gRPC stack, SSH, progress
bars, key cryptography or the checkpoint archive unless its work needs them; an eager import
added at the top of a module on these paths fails here. The remote case checks the check itself:
``--host`` does load gRPC.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# what no local command loads (the remote edge, ssh, rich progress, signing keys, libsodium)
NEVER_LOCAL = ("grpc", "migrate.remote", "migrate._proto", "paramiko", "rich", "cryptography", "nacl")
# what only checkpoint/restore work needs (CRIU's RPC is protobuf, archives are zstd)
CHECKPOINT_ONLY = ("google.protobuf", "zstandard", "pycriu", "migrate.archive", "migrate.checkpoint", "migrate.restore",
                   "runtime.criu")

_PROGRAM = """\
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from migrate.cli import main
sys.exit(main())
"""


def _modules_after(tmp_path: Path, *argv: str) -> tuple[int, set[str], str]:
    out = tmp_path / "modules.json"
    r = subprocess.run([sys.executable, "-c", _PROGRAM, str(out), "--root", str(tmp_path / "root"), *argv],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    return r.returncode, set(json.loads(out.read_text())), r.stderr


def _loaded(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("argv", [
    ("ps",),
    ("ps", "-a", "--json"),
    ("run", "-d", "--name", "lean", "no-such-image", "true"),  # up to the image lookup (ImageNotFound)
    ("inspect", "no-such-container"),
    ("rm", "-f", "no-such-container"),
    ("image", "ls"),
    ("volume", "ls"),
    ("run", "--help"),
    ("--help",),
])
def test_container_commands_load_nothing_heavy(tmp_path: Path, argv: tuple[str, ...]) -> None:
    rc, modules, stderr = _modules_after(tmp_path, *argv)
    assert rc in (0, 125), stderr
    assert _loaded(modules, NEVER_LOCAL + CHECKPOINT_ONLY) == []
    assert "migrate.cli" in modules  # the probe saw the CLI run


@pytest.mark.parametrize("argv", [
    ("checkpoint", "no-such-container"),
    ("checkpoint", "ls"),
    ("restore", "000000000000000000000000"),
])
def test_checkpoint_commands_load_no_remote_edge(tmp_path: Path, argv: tuple[str, ...]) -> None:
    rc, modules, stderr = _modules_after(tmp_path, *argv)
    assert rc in (0, 125), stderr
    assert _loaded(modules, NEVER_LOCAL) == []


def test_the_remote_edge_is_seen_when_used(tmp_path: Path) -> None:
    rc, modules, _ = _modules_after(tmp_path, "--host", f"unix:{tmp_path / 'no-daemon.sock'}", "ps")
    assert rc == 125  # no daemon there
    assert "grpc" in modules and _loaded(modules, ("migrate.remote",))
