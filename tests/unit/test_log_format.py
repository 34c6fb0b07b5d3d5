"""The daemon's log formats (migrate/remote/log_format.py) and metrics listener (metrics.py).

JSON lines carry ts, level, logger, msg, the ``extra=`` fields and the traceback, one object per
line; text lines keep the classic layout; the metrics listener serves its own registry over
HTTP with the containers-by-state gauge read at scrape time, and a failing listing leaves only
that gauge out.
"""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from datetime import datetime
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from migrate.remote.log_format import JsonFormatter, configure_logging
from migrate.remote.metrics import DaemonMetrics, serve
from runtime.errors import InvalidArgument


@pytest.fixture
def restore_logging():  # noqa: ANN201
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_fields(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("json", stream=out)
    logging.getLogger("pymigrate.access").info("%s called", "cn:sched", extra={"peer": "cn:sched", "code": "OK", "ms": 12.5})
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("migrate.x").exception("failed with a \"quote\"")
    logging.getLogger("migrate.x").debug("not shown at INFO")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the traceback stays inside its line
    first, second = map(json.loads, lines)
    assert first["level"] == "info" and first["logger"] == "pymigrate.access" and first["msg"] == "cn:sched called"
    assert (first["peer"], first["code"], first["ms"]) == ("cn:sched", "OK", 12.5)
    assert first["ts"].endswith("Z") and datetime.fromisoformat(first["ts"].replace("Z", "+00:00"))
    assert "args" not in first and "exc" not in first
    assert second["level"] == "error" and second["msg"] == 'failed with a "quote"'
    assert "ValueError: bad\nthing" in second["exc"]


def test_unserialisable_extra_is_text() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "m", (), None)
    record.path = io  # a module: not JSON
    assert json.loads(JsonFormatter().format(record))["path"].startswith("<module 'io'")


def test_text_format_and_unknown_format(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("text", stream=out, level=logging.DEBUG)
    logging.getLogger("migrate.y").debug("hello %d", 5)
    assert out.getvalue().rstrip().endswith("DEBUG migrate.y: hello 5")
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        configure_logging("xml")


def _scrape(port: int) -> dict:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {f.name: f for f in text_string_to_metric_families(body)}


def test_metrics_listener_serves_its_own_registry() -> None:
    containers = [SimpleNamespace(state=SimpleNamespace(status=s)) for s in ("running", "running", "exited")]
    metrics = DaemonMetrics(lambda: containers)
    metrics.rpc("/pymigrate.v1.Host/ListContainers", "OK", 0.01)
    server = serve(metrics, "127.0.0.1:0")
    try:
        families = _scrape(server.port)
        states = {s.labels["state"]: s.value for s in families["pymigrate_containers"].samples}
        assert states == {"created": 0, "running": 2, "paused": 0, "exited": 1}
        handled = families["pymigrate_rpc_handled"].samples
        assert [(s.labels["method"], s.value) for s in handled if s.name.endswith("_total")] == [("ListContainers", 1.0)]
        assert "python_gc_objects_collected" not in families  # not the process-global registry
        containers.append(SimpleNamespace(state=None))  # the listing breaks: only the gauge is left out
        families = _scrape(server.port)
        assert "pymigrate_containers" not in families and "pymigrate_rpc_handled" in families
    finally:
        server.close()


def test_metrics_listen_needs_host_port() -> None:
    with pytest.raises(InvalidArgument, match="expected HOST:PORT"):
        serve(DaemonMetrics(), "unix:/tmp/m.sock")
