"""Named bearer tokens (migrate/remote/tokens.py, issue 15): the token file's two forms, the daemon
taking any of them, and the access log naming whose token a call carried -- never the token.
On real sockets: an in-process daemon (FakeEngine) with a two-token file, two callers."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from migrate.errors import AuthError
from migrate.remote.client import RemoteEngine, read_token
from migrate.remote.server import create_server
from migrate.remote.tokens import SINGLE, name_of, parse_tokens, read_tokens
from runtime.errors import InvalidArgument
from tests.fakes.engine import FakeEngine

SCHED, OPS = "tok-scheduler-8f2b1c", "tok-operator-77aa01"


def test_a_single_token_file_keeps_working() -> None:
    assert parse_tokens("  s3cret-value \n", "f") == {SINGLE: "s3cret-value"}


def test_named_tokens() -> None:
    text = f"# who may call this daemon\n\nscheduler {SCHED}\n  ops@team-1   {OPS}  \n"
    assert parse_tokens(text, "f") == {"scheduler": SCHED, "ops@team-1": OPS}
    assert list(parse_tokens(text, "f")) == ["scheduler", "ops@team-1"]  # the first is the daemon's own to its peers


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    (f"scheduler {SCHED} extra\n", "line 1: expected NAME TOKEN, got 3 fields"),
    (f"scheduler {SCHED}\n{OPS}\n", "line 2: expected NAME TOKEN, got 1 fields"),
    (f"sched/uler {SCHED}\nops {OPS}\n", "line 1: invalid token name 'sched/uler'"),
    (f"ops {SCHED}\nops {OPS}\n", "line 2: token name 'ops' given twice"),
    (f"a {SCHED}\nb {SCHED}\n", "line 2: the token of 'b' is another name's too"),
])
def test_bad_token_files_are_refused_without_showing_a_token(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as err:
        parse_tokens(text, "/etc/pymigrate/tokens")
    assert SCHED not in str(err.value) and OPS not in str(err.value) and "/etc/pymigrate/tokens" in str(err.value)


def test_name_of() -> None:
    tokens = {"scheduler": SCHED, "ops": OPS}
    assert name_of(tokens, f"Bearer {OPS}") == "ops" and name_of(tokens, f"Bearer {SCHED}".encode()) == "scheduler"
    assert name_of(tokens, f"Bearer {OPS}x") is None and name_of(tokens, OPS) is None and name_of(tokens, None) is None


def test_a_client_reading_a_named_file_sends_the_first(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"daemons {SCHED}\nops {OPS}\n")
    assert read_token(path) == SCHED and read_tokens(path) == {"daemons": SCHED, "ops": OPS}


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pm-tok-", dir="/tmp"))  # short: sun_path is 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_access_log_names_each_callers_token(sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    server, _ = create_server(FakeEngine(), f"unix:{sockdir}/d.sock", token={"scheduler": SCHED, "ops": OPS})
    server.start()
    try:
        with caplog.at_level(logging.INFO, logger="pymigrate.access"):
            for token in (SCHED, OPS):
                with RemoteEngine(server.target, token=token) as caller:
                    assert caller.containers() == []
            with pytest.raises(AuthError), RemoteEngine(server.target, token="not-one-of-them") as stranger:
                stranger.containers()
    finally:
        server.stop(0)
    lines = [r for r in caplog.records if r.name == "pymigrate.access" and r.method.endswith("/ListContainers")]
    assert [(r.token, r.code) for r in lines] == [("scheduler", "OK"), ("ops", "OK"), ("-", "UNAUTHENTICATED")]
    assert [r.getMessage().split()[1] for r in lines] == ["token=scheduler", "token=ops", "token=-"]
    text = caplog.text
    assert SCHED not in text and OPS not in text and "not-one-of-them" not in text


def test_one_token_logs_no_name(sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    server, _ = create_server(FakeEngine(), f"unix:{sockdir}/d.sock", token=SCHED)
    server.start()
    try:
        with caplog.at_level(logging.INFO, logger="pymigrate.access"), RemoteEngine(server.target, token=SCHED) as caller:
            caller.containers()
    finally:
        server.stop(0)
    (line,) = [r for r in caplog.records if r.name == "pymigrate.access" and r.method.endswith("/ListContainers")]
    assert not hasattr(line, "token") and "token=" not in line.getMessage()
