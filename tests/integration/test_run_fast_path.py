"""``run -d``'s start path (issue 17, fixed cost per command): the spare upper-layer images a shim
copies after its report and the next run takes, and the root mounted in a thread beside the
cgroup and network: a failure on either side still undoes both."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.cli_helpers import ok, unique
from tests.integration.test_runtime import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]


def _spares(root: Path) -> dict[str, int]:
    cache = root / "cache"
    return {p.name: p.stat().st_ino for p in cache.iterdir() if p.name.startswith("upperfs-spare-")} if cache.is_dir() else {}


def test_a_run_takes_a_spare_image_an_earlier_shim_made(pm, rt, pm_root: Path) -> None:  # noqa: ANN001
    from runtime import upperfs

    first = unique("spare")
    ok(pm("run", "-d", "--name", first, "busybox", "sleep", "300"))
    ready = wait_for(lambda: _spares(pm_root) if len(_spares(pm_root)) >= upperfs.SPARES else None,
                     what="the first run's shim copying spare images")
    second = unique("spare")
    ok(pm("run", "-d", "--name", second, "busybox", "sh", "-c", "echo kept > /f; exec sleep 300"))
    image = pm_root / "containers" / rt.container(second).container_id / upperfs.IMAGE_NAME
    assert image.stat().st_ino in ready.values(), "the second run renamed a spare into place"
    assert not set(_spares(pm_root)) >= set(ready), "the spare it took is gone from the cache"
    assert ok(pm("exec", second, "cat", "/f")) == "kept\n"  # a working layer
    assert os.stat(image).st_blocks * 512 < 64 << 20  # sparse, as a copy of the template
    upperfs.check_untrusted(image)  # a clean file system (the copy is complete)
    wait_for(lambda: len(_spares(pm_root)) >= upperfs.SPARES, what="its shim topping the spares up again")


def test_a_failed_root_undoes_the_cgroup_and_network_made_beside_it(rt, pm_root: Path, monkeypatch) -> None:  # noqa: ANN001
    from runtime.errors import InvalidArgument

    net = rt.network("bridge")
    leases = net.leases()
    netns = sorted(os.listdir(pm_root / "netns")) if (pm_root / "netns").is_dir() else []
    cgroups = {h: sorted(os.listdir(d)) for h, d in rt.cgroups(None).parent_dirs().items() if d.is_dir()}
    name = unique("rootfail")
    monkeypatch.setenv("PYMIGRATE_UPPER_SIZE", "not-a-size")  # refused in the root's thread
    with pytest.raises(InvalidArgument, match="PYMIGRATE_UPPER_SIZE"):
        rt.run("busybox", ["sleep", "300"], name=name, network="bridge")
    assert name not in [i.spec.name for i in rt.list(all=True)]
    assert net.leases() == leases
    assert (sorted(os.listdir(pm_root / "netns")) if (pm_root / "netns").is_dir() else []) == netns
    assert {h: sorted(os.listdir(d)) for h, d in rt.cgroups(None).parent_dirs().items() if d.is_dir()} == cgroups
