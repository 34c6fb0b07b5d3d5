"""Fixtures and the summary of the real-server suite (marker ``realworld``).

- ``realworld_lab`` (session): the Debian image (cached, built on first use), two hosts with
  daemons on one L2 segment and a client namespace (tests/realworld/lab.py).
- ``record`` (per test): a dict the test fills (server, path, pause, stats); the outcome and the
  first error line are added from the test's report.
- At the end of the session the records are written to ``SUMMARY_JSON`` and a markdown table
  next to it, and printed with a line ``realworld: N passed, M failed``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

SUMMARY_JSON = Path(os.environ.get("PYMIGRATE_REALWORLD_SUMMARY", "/tmp/pymigrate-realworld-summary.json"))
_RECORDS: list[dict] = []
_SESSION: dict = {}
_RECORD_KEY = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def realworld_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    if os.geteuid() != 0:
        pytest.skip("the real-server suite needs root")
    from tests.realworld.debian_image import debian_image_tar
    from tests.realworld.lab import RealLab

    tar, build_s = debian_image_tar()
    _SESSION["image"] = {"tar": str(tar), "size_mib": round(tar.stat().st_size / 2**20), "build_s": build_s and round(build_s, 1)}
    lab = RealLab(Path(tmp_path_factory.mktemp("realworld")))
    try:
        _SESSION["setup"] = lab.setup(tar)
        yield lab
    finally:
        lab.close()


TEST_TIMEOUT_S = int(os.environ.get("PYMIGRATE_REALWORLD_TEST_TIMEOUT", "300"))


class RealworldTimeout(Exception):
    """A real-server test ran past TEST_TIMEOUT_S (something hangs: the suite goes on)."""


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[dict]:
    entry: dict = {"test": request.node.name}
    request.node.stash[_RECORD_KEY] = entry
    _RECORDS.append(entry)
    started = time.monotonic()

    def expire(signum: int, frame: object) -> None:
        raise RealworldTimeout(f"{request.node.name} still running after {TEST_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIMEOUT_S)
    try:
        yield entry
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        entry["test_s"] = round(time.monotonic() - started, 1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    report = yield
    entry = item.stash.get(_RECORD_KEY, None)
    if entry is None:
        return report
    if report.failed:
        entry["outcome"] = "failed" if report.when == "call" else f"error ({report.when})"
        entry.setdefault("error", _first_line(call.excinfo))
    elif report.skipped:
        entry["outcome"] = "skipped"
        entry.setdefault("error", _first_line(call.excinfo))
    elif report.when == "call":
        entry["outcome"] = "passed"
    if report.when == "teardown":
        _write_summary()  # after every test: a killed run keeps what it measured
    return report


def _first_line(excinfo: pytest.ExceptionInfo | None) -> str:
    if excinfo is None:
        return ""
    text = str(excinfo.value).strip()
    return f"{excinfo.typename}: {text.splitlines()[0] if text else ''}"[:300]


def _write_summary() -> dict:
    passed = sum(1 for r in _RECORDS if r.get("outcome") == "passed")
    failed = sum(1 for r in _RECORDS if str(r.get("outcome", "")).startswith(("failed", "error")))
    skipped = sum(1 for r in _RECORDS if r.get("outcome") == "skipped")
    summary = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "passed": passed, "failed": failed,
               "skipped": skipped, "session": _SESSION, "results": _RECORDS}
    SUMMARY_JSON.write_text(json.dumps(summary, indent=2) + "\n")
    SUMMARY_JSON.with_suffix(".md").write_text(_markdown(summary))
    return summary


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    if not _RECORDS:
        return
    summary = _write_summary()
    passed, failed, skipped = summary["passed"], summary["failed"], summary["skipped"]
    table = _markdown(summary)
    tr = terminalreporter
    tr.section("real-server suite")
    for line in table.splitlines():
        tr.write_line(line)
    tr.write_line(f"(written to {SUMMARY_JSON} and {SUMMARY_JSON.with_suffix('.md')})")
    tr.write_line(f"realworld: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))


def _markdown(summary: dict) -> str:
    rows = ["| server | path | outcome | client pause (ms) | frozen (ms) | move (ms) | test (s) | first error |",
            "|---|---|---|---:|---:|---:|---:|---|"]
    for r in summary["results"]:
        error = str(r.get("error", "")).replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {r.get('server', '?')} | {r.get('path', '?')} | {r.get('outcome', '?')} | {_num(r.get('pause_ms'))} "
                    f"| {_num(r.get('frozen_ms'))} | {_num(r.get('move_ms'))} | {_num(r.get('test_s'))} | {error} |")
    image = summary["session"].get("image", {})
    rows.append("")
    rows.append(f"image: {image.get('size_mib')} MiB, built this run in {image.get('build_s')} s (None: cache hit); "
                f"setup: {summary['session'].get('setup')}")
    return "\n".join(rows) + "\n"


def _num(value: object) -> str:
    return f"{value:.0f}" if isinstance(value, (int, float)) else "-"
