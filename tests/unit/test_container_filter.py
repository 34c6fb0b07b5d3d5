"""ps --filter (migrate/container_filter.py): parsing, docker's OR/AND rules, each key."""

from __future__ import annotations

import dataclasses

import pytest

from migrate.container_filter import matches, parse_filters, select
from runtime.errors import InvalidArgument
from runtime.spec import ContainerInfo, ContainerSpec, ContainerState, Volume


def info(name: str, status: str = "running", *, labels: dict | None = None, image: str = "busybox",
         checkpointed: str | None = None, exit_code: int | None = None, cid: str = "") -> ContainerInfo:
    spec = ContainerSpec(container_id=cid or (name.encode().hex() * 32)[:32], name=name, image=image,
                         image_digest="sha256:" + "ab12" * 16, command=("sh",), labels=labels or {})
    return ContainerInfo(spec, ContainerState(status=status, checkpointed=checkpointed, exit_code=exit_code))  # type: ignore[arg-type]


WEB = info("web-1", labels={"tier": "web", "env": "prod"})
DB = info("db-1", "exited", labels={"tier": "db"}, image="redis:7", exit_code=0)
CP = info("cp-1", "exited", checkpointed="c0ffee", exit_code=137)
NEW = info("new-1", "created", cid="f" * 32)
ALL = [WEB, DB, CP, NEW]


def names(*entries: str) -> list[str]:
    return [i.spec.name for i in select(ALL, parse_filters(entries))]


def test_status_values_and_checkpointed() -> None:
    assert names("status=running") == ["web-1"]
    assert names("status=exited") == ["db-1", "cp-1"]  # a checkpointed container has exited too
    assert names("status=checkpointed") == ["cp-1"]
    assert names("status=created", "status=running") == ["web-1", "new-1"]  # one key twice: or


def test_name_is_a_regex_search_and_substring() -> None:
    assert names("name=1") == ["web-1", "db-1", "cp-1", "new-1"]
    assert names("name=^db") == ["db-1"]
    assert names("name=web", "name=db") == ["web-1", "db-1"]


def test_labels_all_must_hold() -> None:
    assert names("label=tier") == ["web-1", "db-1"]
    assert names("label=tier=db") == ["db-1"]
    assert names("label=tier", "label=env=prod") == ["web-1"]
    assert names("label=tier=") == []


def test_ancestor_id_exited_and_keys_combined() -> None:
    assert names("ancestor=redis:7") == ["db-1"]
    assert names("ancestor=busybox:latest") == ["web-1", "cp-1", "new-1"]
    assert names("ancestor=sha256:ab12ab") == ["web-1", "db-1", "cp-1", "new-1"]
    assert names("id=ffff") == ["new-1"]
    assert names("exited=137") == ["cp-1"]
    assert names("status=exited", "label=tier") == ["db-1"]  # different keys: and


def test_wants_stopped() -> None:
    assert parse_filters(["status=exited"]).wants_stopped()
    assert not parse_filters(["status=running", "label=a"]).wants_stopped()
    assert not parse_filters([])
    assert matches(WEB, parse_filters([]))


@pytest.mark.parametrize("entry, words", [
    ("status", "expected KEY=VALUE"),
    ("color=red", "unknown key 'color'"),
    ("status=sleeping", "expected one of created, running, paused, exited, checkpointed"),
    ("name=(", "not a regular expression"),
    ("exited=x", "expected an exit code"),
])
def test_refusals(entry: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words.replace("(", r"\(")):
        parse_filters([entry])


def test_volume_and_network() -> None:
    vol = Volume(source="/var/lib/pymigrate/volumes/data/_data", target="/data", name="data")
    base = info("v-1")
    with_volume = ContainerInfo(dataclasses.replace(base.spec, volumes=(vol,), network="none"), base.state)
    for value in ("data", "/data", vol.source):
        assert select([with_volume, WEB], parse_filters([f"volume={value}"])) == [with_volume]
    assert select([with_volume, WEB], parse_filters(["network=none"])) == [with_volume]
    assert select([with_volume, WEB], parse_filters(["network=bridge"])) == [WEB]
    joined = ContainerInfo(dataclasses.replace(base.spec, network="container"),
                           ContainerState(status="running", shared_namespaces={"net": "container:web-1"}))
    assert select([joined, WEB], parse_filters(["network=container:web-1"])) == [joined]
