"""ps and inspect output (migrate/cli/listing.py, inspect_json.py) over a stub engine."""

from __future__ import annotations

import json
import time

import pytest

from migrate import cli
from migrate.api import ImageDetails, ImageInfo
from migrate.cli.inspect_json import container_json, rfc3339
from migrate.cli.listing import human_duration, human_size, ps_row
from migrate.errors import CheckpointNotFound
from runtime.errors import ContainerNotFound, ImageNotFound
from runtime.spec import ContainerInfo, ContainerSpec, ContainerState

NOW = time.time()


def make(name: str, status: str = "running", *, created_s_ago: float = 300, checkpointed: str | None = None,
         exit_code: int | None = None, labels: dict | None = None, command: tuple = ("sleep", "1000")) -> ContainerInfo:
    spec = ContainerSpec(container_id=(name.encode().hex() + "0" * 32)[:32], name=name, image="busybox",
                         image_digest="sha256:" + "ab" * 32, command=command, created_at=NOW - created_s_ago,
                         ip="10.88.0.5", labels=labels or {})
    state = ContainerState(status=status, pid=42 if status == "running" else 0, started_at=NOW - 200,  # type: ignore[arg-type]
                           finished_at=NOW - 60 if status == "exited" else None, exit_code=exit_code, checkpointed=checkpointed)
    return ContainerInfo(spec, state, bundle_dir="/nonexistent")


class StubEngine:
    def __init__(self, infos: list[ContainerInfo]) -> None:
        self.infos = infos
        self.asked_all: list[bool] = []

    def containers(self, all: bool = False) -> list[ContainerInfo]:
        self.asked_all.append(all)
        return [i for i in self.infos if all or i.state.status in ("running", "paused")]

    def inspect(self, name: str) -> ContainerInfo:
        for i in self.infos:
            if name in (i.spec.name, i.spec.container_id):
                return i
        raise ContainerNotFound(name)

    def image_inspect(self, name: str) -> ImageDetails:
        if name != "busybox":
            raise ImageNotFound(name)
        return ImageDetails(ImageInfo("busybox", "sha256:" + "ab" * 32, 4_000_000, NOW - 86400), None)

    def checkpoint_inspect(self, checkpoint_id: str) -> dict:
        if checkpoint_id != "c0ffee":
            raise CheckpointNotFound(checkpoint_id)
        return {"checkpoint": {"checkpoint_id": "c0ffee"}, "created_at": NOW}

    def images(self) -> list[ImageInfo]:
        return [self.image_inspect("busybox").image]


WEB = make("web", labels={"tier": "web"}, command=("sh", "-c", "a very long command line that goes on and on"))
OLD = make("old", "exited", created_s_ago=7200, exit_code=0)
CP = make("cp", "exited", created_s_ago=100, checkpointed="c0ffee", exit_code=137)


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> StubEngine:
    stub = StubEngine([OLD, WEB, CP])
    monkeypatch.setattr("migrate.engine.engine_for", lambda args: stub)
    return stub


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_row_fields_and_truncation() -> None:
    row = ps_row(WEB, now=NOW)
    assert row["ID"] == WEB.spec.container_id[:12] and row["Command"].endswith("...") and len(row["Command"]) == 30
    assert row["Created"] == "5 minutes ago" and row["State"] == "running" and row["Labels"] == {"tier": "web"}
    full = ps_row(WEB, now=NOW, no_trunc=True)
    assert full["ID"] == WEB.spec.container_id and full["Command"] == " ".join(WEB.spec.command)
    assert ps_row(CP, now=NOW)["Status"].startswith("exited (checkpointed)")  # not "exited (137)"


def test_human_units() -> None:
    assert [human_duration(s) for s in (0.5, 1, 59, 60, 150, 3600, 7300, 3 * 86400)] == [
        "Less than a second", "1 second", "59 seconds", "About a minute", "2 minutes", "About an hour", "2 hours", "3 days"]
    assert [human_size(n) for n in (12, 1234, 4_270_000, 0)] == ["12B", "1.23kB", "4.27MB", "0B"]


def test_ps_default_table_has_created_and_ports(engine: StubEngine, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ps")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["CONTAINER", "ID", "NAMES", "IMAGE", "COMMAND", "CREATED", "STATUS", "IP", "PORTS"]
    assert len(lines) == 2 and "web" in lines[1] and "5 minutes ago" in lines[1]
    assert lines[0].index("NAMES") == lines[1].index("web")  # aligned from the data


def test_ps_quiet_prints_ids(engine: StubEngine, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "ps", "-aq")[1].split() == [i.spec.container_id[:12] for i in (CP, WEB, OLD)]  # newest first
    assert run(capsys, "ps", "-aq", "--no-trunc")[1].split() == [i.spec.container_id for i in (CP, WEB, OLD)]


def test_ps_last_and_latest_include_stopped(engine: StubEngine, capsys: pytest.CaptureFixture[str]) -> None:
    # OLD was created first, CP last (the stub lists in its own order)
    assert run(capsys, "ps", "-l", "--format", "{{.Names}}")[1].split() == ["cp"]
    assert run(capsys, "ps", "-n", "2", "--format", "{{.Names}}")[1].split() == ["cp", "web"]
    assert run(capsys, "ps", "-n", "0", "--format", "{{.Names}}")[1] == ""
    assert engine.asked_all == [True, True, True]


def test_ps_filter_asks_for_stopped_when_it_selects_them(engine: StubEngine, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "ps", "--filter", "status=checkpointed", "--format", "{{.Names}} {{.State}}")[1] == "cp exited\n"
    assert run(capsys, "ps", "--filter", "label=tier=web", "--format", "{{.Names}}")[1] == "web\n"
    assert engine.asked_all == [True, False]


def test_ps_format_json_and_refusals(engine: StubEngine, capsys: pytest.CaptureFixture[str]) -> None:
    rows = json.loads(run(capsys, "ps", "-a", "--format", "json")[1])
    assert [r["Names"] for r in rows] == ["cp", "web", "old"] and rows[1]["Labels"] == {"tier": "web"}
    code, _, err = run(capsys, "ps", "--format", "{{.Bogus}}")
    assert code == 125 and "unknown format field .Bogus" in err and ".Names" in err
    assert engine.asked_all == [True]  # the bad template was refused before asking
    code, _, err = run(capsys, "ps", "--filter", "colour=red")
    assert code == 125 and "unknown key 'colour'" in err


def test_ps_json_has_rfc3339_and_checkpointed(engine: StubEngine, capsys: pytest.CaptureFixture[str]) -> None:
    listed = json.loads(run(capsys, "ps", "-a", "--json")[1])
    cp = next(c for c in listed if c["spec"]["name"] == "cp")
    assert cp["state"]["checkpointed"] is True and cp["state"]["checkpoint_id"] == "c0ffee"
    assert cp["spec"]["created"] == rfc3339(CP.spec.created_at) and cp["spec"]["created_at"] == CP.spec.created_at


def test_inspect_is_an_array_and_reports_each_missing_name(engine: StubEngine, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "web", "nope", "old")
    assert code == 125 and [o["spec"]["name"] for o in json.loads(out)] == ["web", "old"]
    assert "no such container: nope" in err and "no image or checkpoint" in err
    code, out, _ = run(capsys, "inspect", "web")
    assert code == 0 and isinstance(json.loads(out), list)


def test_inspect_types_and_fallbacks(engine: StubEngine, capsys: pytest.CaptureFixture[str]) -> None:
    image = json.loads(run(capsys, "inspect", "busybox")[1])[0]  # no container named busybox: the image
    assert image["image"]["size_bytes"] == 4_000_000 and image["image"]["created"].endswith("Z")
    assert json.loads(run(capsys, "inspect", "c0ffee")[1])[0]["checkpoint"]["checkpoint_id"] == "c0ffee"
    code, out, err = run(capsys, "inspect", "--type", "image", "web")
    assert code == 125 and json.loads(out) == [] and "no such image: web" in err
    assert json.loads(run(capsys, "inspect", "--type", "checkpoint", "c0ffee")[1])[0]["created"].endswith("Z")


def test_inspect_format_one_line_each(engine: StubEngine, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "--format", "{{.Name}} {{.State.Status}} {{.state.checkpointed}} {{.Config.Labels.tier}}",
                       "web", "cp")
    assert code == 0 and out.splitlines() == ["web running false web", "cp exited true "]
    assert run(capsys, "inspect", "--format", "{{.Nope}}", "web")[0] == 125


def test_container_json_times() -> None:
    d = container_json(OLD)
    assert d["state"]["started"] == rfc3339(OLD.state.started_at) and d["state"]["finished"].endswith("Z")
    assert d["state"]["checkpointed"] is False and d["state"]["checkpoint_id"] is None
    assert rfc3339(0) is None and rfc3339(None) is None
    assert rfc3339(1_700_000_000.5) == "2023-11-14T22:13:20.500000Z"



def test_checkpoint_ls_widths_come_from_the_data(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from migrate.api import CheckpointInfo

    long_name = "a-container-name-much-longer-than-twenty-characters"

    class Stub:
        def checkpoints(self) -> list[CheckpointInfo]:
            return [CheckpointInfo(cid, name, "0" * 32, "sha256:" + "ab" * 32, 1_800_000_000.0, 1 << 20, "4.1.1")
                    for cid, name in (("c0ffee01", long_name), ("c0ffee02", "db"))]

    monkeypatch.setattr("migrate.engine.engine_for", lambda args: Stub())
    code, out, _ = run(capsys, "checkpoint", "ls")
    header, first, second = out.splitlines()
    assert code == 0 and header.index("CREATED") == first.index("20") == second.index("20")
    assert first.index(long_name) == second.index("db") == header.index("CONTAINER")
