"""--format templates (migrate/cli/gotemplate.py): fields, json, index, table, refusals."""

from __future__ import annotations

import json

import pytest

from migrate.cli import gotemplate
from runtime.errors import InvalidArgument

FIELDS = ("ID", "Names", "Labels", "Size", "Exited")
ROW = {"ID": "abc123", "Names": "web", "Labels": {"tier": "db", "com.x": "1"}, "Size": "", "Exited": False}


def render(template: str, row: dict = ROW) -> str:
    return gotemplate.parse(template, FIELDS).render(row)


def test_fields_literal_text_and_escaped_tabs() -> None:
    assert render("{{.Names}} is {{ .ID }}") == "web is abc123"
    assert render("{{.Names}}\\t{{.ID}}\\n") == "web\tabc123\n"  # as a shell passes '\t'


def test_maps_lists_bools_and_missing_values() -> None:
    assert render("{{.Labels}}") == "com.x=1,tier=db"
    assert render("{{.Labels.tier}}|{{.Labels.nope}}|{{.Exited}}") == "db||false"
    assert render('{{index .Labels "com.x"}}') == "1"
    assert gotemplate.parse("{{.Names}}", FIELDS).render({"Names": ["a", "b"]}) == "a,b"


def test_json_of_a_field_and_of_the_row() -> None:
    assert json.loads(render("{{json .}}")) == ROW
    assert render("{{json .Labels}}") == '{"com.x":"1","tier":"db"}'


def test_names_match_without_case_or_underscores() -> None:
    row = {"state": {"pid": 7, "exit_code": 0}}
    assert gotemplate.parse("{{.State.Pid}} {{.State.ExitCode}}", ("state",)).render(row) == "7 0"


def test_table_header_and_alignment() -> None:
    t = gotemplate.parse("table {{.ID}}\\t{{.Names}}\\t{{.Labels.tier}}", FIELDS, {"ID": "CONTAINER ID"})
    assert t.table and t.header() == "CONTAINER ID\tNAMES\tTIER"
    lines = gotemplate.align([t.header(), t.render(ROW), t.render({**ROW, "Names": "a-much-longer-name"})])
    assert lines == ["CONTAINER ID   NAMES                TIER",
                     "abc123         web                  db",
                     "abc123         a-much-longer-name   db"]


@pytest.mark.parametrize("template, words", [
    ("{{.Nope}}", ["unknown format field .Nope", ".Names", ".Labels"]),
    ("{{if .ID}}x{{end}}", ["invalid format action {{if .ID}}"]),
    ("{{.ID | upper}}", ["invalid format action"]),
])
def test_refusals_name_the_field_and_the_valid_ones(template: str, words: list[str]) -> None:
    with pytest.raises(InvalidArgument) as info:
        gotemplate.parse(template, FIELDS)
    for word in words:
        assert word in str(info.value)


def test_keys_of_a_non_map_are_refused_when_rendered() -> None:
    with pytest.raises(InvalidArgument, match="cannot take .x of str"):
        render("{{.Names.x}}")
