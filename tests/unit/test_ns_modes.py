"""Shared namespaces (runtime/ns_modes.py): parsing, the rules, the start plan, the refusals."""

from __future__ import annotations

import dataclasses

import pytest

from runtime import namespaces, ns_modes
from runtime.errors import InvalidArgument, InvalidSpec
from runtime.syscalls import CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS


def test_default_plan_unshares_what_every_container_always_got() -> None:
    plan = ns_modes.NamespacePlan()
    assert plan.unshare_flags() == namespaces.CONTAINER_UNSHARE_FLAGS
    assert plan.sets_hostname() and not plan.joins_net()


def test_plan_keeps_host_and_joined_namespaces_out_of_unshare() -> None:
    plan = ns_modes.NamespacePlan(joins=(ns_modes.Join("pid", 10, 1, "a"), ns_modes.Join("net", 10, 1, "a")),
                                  host=frozenset({"uts", "cgroup"}))
    assert plan.unshare_flags() == CLONE_NEWNS | CLONE_NEWIPC  # mnt is never shared
    assert plan.joins_net() and not plan.sets_hostname()
    assert not ns_modes.NamespacePlan(host=frozenset({"pid"})).unshare_flags() & CLONE_NEWPID
    assert ns_modes.NamespacePlan(host=frozenset({"pid"})).unshare_flags() & (CLONE_NEWUTS | CLONE_NEWCGROUP)


@pytest.mark.parametrize("text, expected", [
    ("", ("private", "")), ("private", ("private", "")), ("host", ("host", "")),
    ("container:web", ("container", "web")),
])
def test_parse_mode(text: str, expected: tuple[str, str]) -> None:
    assert ns_modes.parse_mode("pid", text) == expected


@pytest.mark.parametrize("kind, text", [("pid", "container:"), ("ipc", "shareable"), ("cgroup", "container:web"), ("uts", "Host")])
def test_parse_mode_refuses(kind: str, text: str) -> None:
    with pytest.raises(InvalidArgument, match=f"invalid {ns_modes.OPTIONS[kind]}") as err:
        ns_modes.parse_mode(kind, text)
    assert err.value.hint


def test_split_network() -> None:
    assert ns_modes.split_network("container:db") == ("container", "db")
    assert ns_modes.split_network("bridge") == ("bridge", "")
    with pytest.raises(InvalidArgument):
        ns_modes.split_network("container:")
