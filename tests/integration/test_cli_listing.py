"""ps and inspect with docker's habits on real containers (issue 14): filters, formats, ids,
-n/-l, -s, inspect arrays and --type, labels through a checkpoint, restore and an export/import."""

from __future__ import annotations

import json
import re
import secrets

import pytest

from tests.integration.cli_helpers import ok, unique

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _lines(r) -> list[str]:  # noqa: ANN001
    return ok(r).splitlines()


def _inspect(pm, *names: str) -> list[dict]:  # noqa: ANN001
    return json.loads(ok(pm("inspect", *names)))


def test_ps_filters_formats_ids_last_and_size(pm) -> None:  # noqa: ANN001
    run = secrets.token_hex(4)  # this test's label value: other tests share the state root
    up, done = unique("lsup"), unique("lsdone")
    ok(pm("run", "-d", "--name", up, "--label", f"run={run}", "-l", "tier=web", "busybox", "sleep", "1000"))
    assert pm("run", "--name", done, "--label", f"run={run}", "busybox", "sh", "-c", "exit 3").returncode == 3
    try:
        mine = ("--filter", f"label=run={run}")
        assert _lines(pm("ps", *mine, "--format", "{{.Names}}")) == [up]  # not running: only with -a or a status
        assert _lines(pm("ps", *mine, "--filter", "status=exited", "--format", "{{.Names}} {{.State}}")) == [f"{done} exited"]
        assert sorted(_lines(pm("ps", "-a", *mine, "--filter", "status=running", "--filter", "status=exited",
                                "--format", "{{.Names}}"))) == sorted([up, done])  # one key twice: or
        assert _lines(pm("ps", "-a", *mine, "--filter", "label=tier=web", "--format", "{{.Names}}")) == [up]  # keys: and
        assert _lines(pm("ps", "-a", *mine, "--filter", "exited=3", "--format", "{{.Names}}")) == [done]
        assert _lines(pm("ps", "-a", "--filter", f"name=^{up}$", "--format", "{{.Names}}")) == [up]
        assert len(_lines(pm("ps", "-a", *mine, "--filter", "ancestor=busybox", "--format", "{{.ID}}"))) == 2
        assert _lines(pm("ps", "-a", *mine, "--filter", "ancestor=no-such-image", "--format", "{{.ID}}")) == []

        full = {i["spec"]["name"]: i["spec"]["container_id"] for i in _inspect(pm, up, done)}
        assert sorted(_lines(pm("ps", "-aq", *mine))) == sorted(c[:12] for c in full.values())
        assert sorted(_lines(pm("ps", "-aq", "--no-trunc", *mine))) == sorted(full.values())
        assert _lines(pm("ps", "-a", "--filter", f"id={full[up][:8]}", "--format", "{{.Names}}")) == [up]

        table = _lines(pm("ps", *mine, "--format", "table {{.Names}}\\t{{.Labels.tier}}\\t{{.Status}}"))
        assert table[0].split() == ["NAMES", "TIER", "STATUS"] and table[1].split()[:3] == [up, "web", "running"]
        row = json.loads(ok(pm("ps", *mine, "--format", "{{json .}}")))
        assert row["Labels"] == {"run": run, "tier": "web"} and row["ID"] == full[up][:12]
        rows = json.loads(ok(pm("ps", "-a", *mine, "--format", "json")))
        assert {r["Names"]: r["ExitCode"] for r in rows} == {up: 0, done: 3}
        default = _lines(pm("ps", *mine))
        assert default[0].split()[:4] == ["CONTAINER", "ID", "NAMES", "IMAGE"] and "CREATED" in default[0]
        assert re.search(r"(Less than a second|\d+ seconds?) ago", default[1]), default[1]

        bad = pm("ps", "--format", "{{.Nope}}")
        assert bad.returncode == 125 and b".Nope" in bad.stderr and b".Names" in bad.stderr
        assert pm("ps", "--filter", "status=sleeping").returncode == 125

        assert _lines(pm("ps", "-l", "--format", "{{.Names}}")) == [done]  # created last, though exited
        assert _lines(pm("ps", "-n", "2", "--format", "{{.Names}}")) == [done, up]  # newest first

        ok(pm("exec", up, "sh", "-c", "head -c 250000 /dev/zero > /written"))
        size = ok(pm("ps", "-s", "--filter", f"name=^{up}$", "--format", "{{.Size}}")).strip()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)kB \(virtual (\d+(?:\.\d+)?)MB\)", size)
        assert match and 250 <= float(match.group(1)) < 260, size  # the file, and little else written
    finally:
        pm("rm", "-f", up, done)


def test_inspect_arrays_missing_names_types_and_format(pm) -> None:  # noqa: ANN001
    a, b = unique("insa"), unique("insb")
    for name in (a, b):
        ok(pm("run", "-d", "--name", name, "busybox", "sleep", "1000"))
    try:
        both = _inspect(pm, a, b)
        assert [o["spec"]["name"] for o in both] == [a, b]
        assert RFC3339.fullmatch(both[0]["spec"]["created"]) and RFC3339.fullmatch(both[0]["state"]["started"])
        assert both[0]["state"]["finished"] is None and both[0]["state"]["checkpointed"] is False
        assert [o["spec"]["name"] for o in _inspect(pm, a)] == [a]  # one name: still an array

        missing = unique("nosuch")
        r = pm("inspect", a, missing)
        assert r.returncode == 125 and [o["spec"]["name"] for o in json.loads(r.stdout)] == [a]
        assert f"no such container: {missing}".encode() in r.stderr and b"no image or checkpoint" in r.stderr
        r = pm("inspect", "--type", "container", missing)
        assert r.returncode == 125 and json.loads(r.stdout) == [] and b"no image" not in r.stderr

        image = _inspect(pm, "--type", "image", "busybox")[0]
        assert image["image"]["name"].startswith("busybox") and RFC3339.fullmatch(image["image"]["created"])
        assert "image" in _inspect(pm, "busybox")[0]  # no container has the name: the image
        lines = _lines(pm("inspect", "--format", "{{.Name}} {{.State.Status}} {{.state.pid}}", a, b))
        assert [line.split()[:2] for line in lines] == [[a, "running"], [b, "running"]]
        assert all(int(line.split()[2]) > 0 for line in lines)
    finally:
        pm("rm", "-f", a, b)


@pytest.mark.requires("criu", "pycriu")
def test_labels_and_checkpointed_state_through_checkpoint_restore_export_import(pm, tmp_path) -> None:  # noqa: ANN001
    name, copy = unique("lbl"), unique("lblcopy")
    labels = {"tier": "db", "owner": "ops team"}
    label_file = tmp_path / "labels"
    label_file.write_text("# ours\nowner=ops team\n")
    ok(pm("run", "-d", "--name", name, "--label", "tier=db", "--label-file", str(label_file),
          "busybox", "sh", "-c", "while true; do sleep 0.1; done"))
    checkpoint_id = ok(pm("checkpoint", name)).strip().splitlines()[0]
    archive = tmp_path / "cp.pmc"
    try:
        assert "exited (checkpointed)" in ok(pm("ps", "-a", "--filter", f"name=^{name}$"))
        state = _inspect(pm, name)[0]["state"]
        assert state["checkpointed"] is True and state["checkpoint_id"] == checkpoint_id
        assert _lines(pm("ps", "--filter", "status=checkpointed", "--filter", f"name=^{name}$", "--format", "{{.Names}}")) == [name]

        assert ok(pm("restore", checkpoint_id)).strip() == name
        restored = _inspect(pm, name)[0]
        assert restored["spec"]["labels"] == labels and restored["state"]["checkpointed"] is False
        assert restored["state"]["status"] == "running"

        ok(pm("checkpoint", name, "--export", str(archive)))
        ok(pm("rm", "-f", name))  # the import below brings the same spec (its address, its id) back
        ok(pm("restore", "--import", str(archive), "--name", copy))
        assert _inspect(pm, copy)[0]["spec"]["labels"] == labels
        assert _lines(pm("ps", "--filter", "label=owner=ops team", "--filter", f"name={copy}", "--format", "{{.Labels.tier}}")) == ["db"]
    finally:
        pm("rm", "-f", name, copy)
        pm("checkpoint", "rm", checkpoint_id)


def test_labels_and_filters_through_a_daemon(pm, pm_root) -> None:  # noqa: ANN001
    from tests.integration.cli_helpers import start_daemon, stop_daemon

    proc, sock = start_daemon(pm_root)
    name = unique("lbld")
    try:
        host = ("--host", f"unix:{sock}")
        ok(pm(*host, "run", "-d", "--name", name, "--label", "via=grpc", "busybox", "sleep", "1000"))
        assert _lines(pm(*host, "ps", "--filter", "label=via=grpc", "--filter", f"name=^{name}$",
                         "--format", "{{.Names}} {{.Labels.via}}")) == [f"{name} grpc"]
        assert _inspect(pm, name)[0]["spec"]["labels"] == {"via": "grpc"}  # recorded by the daemon's runtime
        refused = pm(*host, "ps", "-s")
        assert refused.returncode == 125 and b"ps --size" in refused.stderr
    finally:
        pm("rm", "-f", name)
        stop_daemon(proc, sock)
