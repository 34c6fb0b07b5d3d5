"""--network host (runtime/network.py HostNetwork) and its refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runtime.checkpointing import _check_host_network
from runtime.config import Paths
from runtime.container import Container
from runtime.errors import InvalidArgument, Unsupported
from runtime.network import HOST_NETNS, HostNetwork, network_for
from runtime.spec import ContainerSpec, ContainerState

SPEC = ContainerSpec(container_id="a" * 32, name="web", image="i", image_digest="sha256:" + "b" * 64, command=("x",),
                     network="host")


def test_host_mode_joins_the_starters_own_namespace_and_makes_nothing(tmp_path: Path) -> None:
    net = network_for(Paths(tmp_path), "host")
    assert isinstance(net, HostNetwork)
    assert net.create_netns(SPEC.container_id) == Path(HOST_NETNS) == net.netns_path(SPEC.container_id)
    net.remove_netns(SPEC.container_id)  # nothing to remove: never the host's namespace
    assert not (tmp_path / "netns").exists()
    with pytest.raises(InvalidArgument, match="host's network"):
        net.lease(SPEC.container_id)
    with pytest.raises(InvalidArgument, match="host's network"):
        net.connect(SPEC.container_id, Path(HOST_NETNS), ip="10.77.0.5")


def test_a_host_network_container_is_not_dumped() -> None:
    with pytest.raises(Unsupported, match="host's network namespace") as err:
        _check_host_network(Container(SPEC, ContainerState(status="running")))
    assert "--network bridge" in (err.value.hint or "")
    _check_host_network(Container(dataclasses.replace(SPEC, network="bridge"), ContainerState(status="running")))


def test_a_manifest_asking_for_the_host_network_is_refused(tmp_path: Path) -> None:
    from migrate.api import RestoreOptions
    from migrate.restore import checked_spec
    from runtime.errors import InvalidSpec

    for origin in ("local", "import", "peer"):
        with pytest.raises(InvalidSpec) as err:
            checked_spec({"container": SPEC.to_dict()}, RestoreOptions(checkpoint_id="c"), origin=origin)  # type: ignore[arg-type]
        assert err.value.field == "network"
