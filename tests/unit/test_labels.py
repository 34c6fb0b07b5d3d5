"""run --label/--label-file: parsing and the rules every label set meets (runtime/labels.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runtime.container import validate_spec
from runtime.errors import InvalidArgument, InvalidSpec
from runtime.labels import MAX_KEY_CHARS, parse_labels, validate_labels
from runtime.spec import ContainerSpec


def test_entries_and_files_later_key_wins(tmp_path: Path) -> None:
    f = tmp_path / "labels"
    f.write_text("# comment\n\ntier=db\nowner=ops team\nflag\n")
    assert parse_labels(["tier=web", "x=a=b"], [str(f)]) == {"tier": "web", "owner": "ops team", "flag": "", "x": "a=b"}


@pytest.mark.parametrize("entry", ["=v", "bad key=v", "tab\tkey=v", "k" * (MAX_KEY_CHARS + 1) + "=v"])
def test_bad_keys_refused(entry: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid label key"):
        parse_labels([entry])


def test_unreadable_file_named_without_errno(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"cannot read label file .*/missing: no such file") as info:
        parse_labels([], [str(tmp_path / "missing")])
    assert "Errno" not in str(info.value)


@pytest.mark.parametrize("value", [["a"], {"a": 1}, {1: "a"}, {"a": "x\0y"}])
def test_validate_refuses_non_string_maps(value: object) -> None:
    with pytest.raises(InvalidArgument):
        validate_labels(value)


def test_spec_from_an_archive_is_checked() -> None:
    spec = ContainerSpec(container_id="a" * 32, name="c", image="busybox", image_digest="sha256:" + "b" * 64,
                         command=("sh",), labels={"ok": "1"})
    assert validate_spec(spec).labels == {"ok": "1"}
    assert ContainerSpec.from_dict(spec.to_dict()).labels == {"ok": "1"}
    with pytest.raises(InvalidSpec) as info:
        validate_spec(dataclasses.replace(spec, labels={"bad key": "1"}))
    assert info.value.field == "labels"
