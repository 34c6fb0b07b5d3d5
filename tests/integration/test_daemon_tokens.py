"""A real ``pymigrate daemon --token-file`` with named tokens (issue 15, migrate/remote/tokens.py):
callers with either token are served, the JSON access log names whose token each call carried, a
stranger is refused and logged as ``-``, and no token appears anywhere in the daemon's log."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from tests.integration.conftest import PYMIGRATE, REPO

pytestmark = [pytest.mark.integration, pytest.mark.requires("root")]


def _secret_file(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pm-tokd-", dir="/tmp"))  # short: sun_path is 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_access_log_names_the_callers_token(workdir: Path) -> None:
    from migrate.remote.server import wait_for_serving

    sched, ops = f"s-{secrets.token_urlsafe(24)}", f"o-{secrets.token_urlsafe(24)}"
    daemon_tokens = _secret_file(workdir / "tokens", f"# name token\nscheduler {sched}\nops {ops}\n")
    sock, log = workdir / "d.sock", workdir / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*PYMIGRATE, "--root", str(workdir / "root"), "daemon", "--listen", f"unix:{sock}",
                                 "--token-file", str(daemon_tokens), "--log-format", "json", "--grace", "5"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            wait_for_serving(channel, timeout_s=180.0)
        callers = {"ops": _secret_file(workdir / "ops", ops + "\n"), "scheduler": daemon_tokens,  # the first: scheduler's
                   "stranger": _secret_file(workdir / "stranger", "not-a-token\n")}
        codes = {}
        for who, path in callers.items():
            r = subprocess.run([*PYMIGRATE, "--host", f"unix:{sock}", "--token-file", str(path), "ps"],
                               capture_output=True, text=True, timeout=120, cwd=REPO)
            codes[who] = r.returncode
        assert codes == {"ops": 0, "scheduler": 0, "stranger": codes["stranger"]} and codes["stranger"] != 0, codes
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert sched not in text and ops not in text and "not-a-token" not in text
    access = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    listed = [(e["token"], e["code"]) for e in access
              if e.get("logger") == "pymigrate.access" and e.get("method") == "/pymigrate.v1.Host/ListContainers"]
    assert listed == [("ops", "OK"), ("scheduler", "OK"), ("-", "UNAUTHENTICATED")], listed
