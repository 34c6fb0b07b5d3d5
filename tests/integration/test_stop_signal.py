"""``stop`` sends the image's StopSignal, or ``run --stop-signal``'s, before SIGTERM's fallback
(Docker's rules): a shell that exits cleanly only on SIGUSR1 stops at once and logs it; the
default is still SIGTERM; a bad signal name is refused before anything is created."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.fakes.oci_layouts import write_oci_layout
from tests.integration.cli_helpers import ok, refused, unique

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "busybox", "overlay")]

# exits 0 on USR1 and logs it; ignores TERM (so a stop by SIGTERM would wait for the timeout)
TRAP = "trap 'echo got-usr1; exit 0' USR1; trap '' TERM; echo ready; while :; do sleep 0.1; done"


def _ready(pm: Callable, name: str) -> None:
    deadline = time.monotonic() + 10
    while "ready" not in ok(pm("logs", name)):
        assert time.monotonic() < deadline, "the container never got ready"
        time.sleep(0.05)


def _stop(pm: Callable, name: str) -> tuple[float, str, int]:
    t0 = time.monotonic()
    ok(pm("stop", "-t", "20", name, timeout=60))
    elapsed = time.monotonic() - t0
    info = json.loads(ok(pm("inspect", name)))[0]
    return elapsed, ok(pm("logs", name)), info["state"]["exit_code"]


def test_run_stop_signal_is_what_stop_sends(pm: Callable, rt) -> None:  # noqa: ANN001
    name = unique("stopsig")
    ok(pm("run", "-d", "--name", name, "--stop-signal", "SIGUSR1", "busybox", "sh", "-c", TRAP))
    _ready(pm, name)
    elapsed, logs, code = _stop(pm, name)
    assert "got-usr1" in logs and code == 0 and elapsed < 10, (elapsed, logs, code)
    pm("rm", "-f", name)


def test_the_image_stop_signal_applies(pm: Callable, pm_root: Path, tmp_path: Path, rt) -> None:  # noqa: ANN001
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    base = io.BytesIO()
    ImageStore(Paths(pm_root)).export_stream("busybox", base)
    layout = write_oci_layout(tmp_path / "oci", [(base.getvalue(), True)],
                              {"Entrypoint": ["/bin/sh", "-c"], "Cmd": [TRAP], "StopSignal": "USR1"})
    image = f"{unique('stopimg')}:1"
    ok(pm("image", "load", str(layout), "--name", image))
    name = unique("stopsig")
    ok(pm("run", "-d", "--name", name, image))
    assert json.loads(ok(pm("inspect", name)))[0]["spec"]["stop_signal"] == "USR1"
    _ready(pm, name)
    elapsed, logs, code = _stop(pm, name)
    assert "got-usr1" in logs and code == 0 and elapsed < 10, (elapsed, logs, code)
    pm("rm", "-f", name)


def test_a_bad_stop_signal_is_refused(pm: Callable, rt) -> None:  # noqa: ANN001
    name = unique("stopsig")
    answer = refused(pm("run", "-d", "--json", "--name", name, "--stop-signal", "SIGNOPE", "busybox", "true"), "InvalidSpec")
    assert "unknown signal 'SIGNOPE'" in answer["error"] and "SIGQUIT" in answer["hint"]
    assert name not in ok(pm("ps", "-a"))
