"""The CLI's shared habits against a real daemon: `version --host` asks it, and the global options
(`--host`, `--root`, `--json`) work on either side of the command, for the daemon too."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from migrate import __version__
from migrate.remote.server import wait_for_serving

pytestmark = [pytest.mark.integration, pytest.mark.requires("root")]


def _pymigrate(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrate", *argv], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def daemon() -> Iterator[tuple[Path, Path]]:
    """A daemon started with its --root given after the subcommand (issue 14: it used to be refused)."""
    root = Path(tempfile.mkdtemp(prefix="pm-int-", dir="/tmp"))
    sock = root / "run" / "pymigrate.sock"
    proc = subprocess.Popen([sys.executable, "-m", "migrate", "daemon", "--root", str(root), "--listen", f"unix:{sock}",
                             "--grace", "5"], stderr=subprocess.PIPE, text=True)
    try:
        channel = grpc.insecure_channel(f"unix:{sock}")
        try:
            wait_for_serving(channel, timeout_s=30.0)
        finally:
            channel.close()
        yield root, sock
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(root, ignore_errors=True)


def test_version_with_host_reports_the_daemon(daemon: tuple[Path, Path]) -> None:
    _root, sock = daemon
    for argv in (["--host", f"unix:{sock}", "version", "--json"], ["version", "--host", f"unix:{sock}", "--json"]):
        r = _pymigrate(*argv)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["client"]["version"] == report["server"]["version"] == __version__
        assert report["server"]["api_version"] == "pymigrate.v1"
        assert report["server"]["kernel"] == platform.release()
        assert report["server"]["hostname"]
    text = _pymigrate("version", "--host", f"unix:{sock}")
    assert text.returncode == 0 and f"Server: unix:{sock}" in text.stdout and "CRIU:" in text.stdout, text.stderr


def test_host_before_or_after_the_command_reaches_the_daemon(daemon: tuple[Path, Path], tmp_path: Path) -> None:
    root, sock = daemon
    made = _pymigrate("volume", "create", "h5vol", "--host", f"unix:{sock}")
    assert made.returncode == 0, made.stderr
    assert (root / "volumes" / "h5vol").is_dir()  # the daemon's root, not this process's
    for argv in (["--host", f"unix:{sock}", "volume", "ls", "-q"], ["volume", "ls", "-q", "--host", f"unix:{sock}"],
                 ["volume", "--host", f"unix:{sock}", "ls", "-q"]):
        r = _pymigrate(*argv)
        assert r.returncode == 0 and r.stdout.split() == ["h5vol"], (argv, r.stdout, r.stderr)
    # --root after the command picks that state root locally (an empty one here)
    local = _pymigrate("volume", "ls", "-q", "--root", str(tmp_path / "other"))
    assert local.returncode == 0 and local.stdout.split() == [], local.stderr


def test_daemon_refuses_host_and_reports_usage_errors_with_125(tmp_path: Path) -> None:
    r = _pymigrate("daemon", "--root", str(tmp_path), "--host", "unix:/nonexistent.sock")
    assert r.returncode == 125 and "--host is for clients" in r.stderr
    r = _pymigrate("daemon", "--root", str(tmp_path), "--gracee", "1")
    assert r.returncode == 125 and r.stderr.startswith("usage: pymigrate daemon") and "did you mean --grace?" in r.stderr
