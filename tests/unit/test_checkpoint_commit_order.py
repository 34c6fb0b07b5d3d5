"""Checkpoint ordering: the container is stopped only after its checkpoint is committed.

A failure after CRIU finished dumping (here: committing the checkpoint directory fails) must thaw
the container and must not kill it; success stops it only then. Fakes stand in for CRIU and the
runtime; the real ordering is exercised end to end by the integration tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from migrate.api import CheckpointOptions
from migrate.checkpoint import checkpoint_container
from runtime.checkpointing import DumpTarget, NetworkCut
from runtime.config import Paths
from runtime.spec import ContainerSpec
from tests.fakes.criu import FakeCriu
from tests.fakes.flat_images import FlatImages


@dataclass
class FakeContainer:
    spec: ContainerSpec
    status: str = "running"


@dataclass
class FakeHost:
    root: Path
    events: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.paths = Paths(self.root)
        self.paths.ensure()
        self.images = FlatImages()
        self.upper = self.root / "upper"
        self.upper.mkdir()
        (self.upper / "f").write_text("data")
        self.spec = ContainerSpec(container_id="c" * 32, name="web", image="busybox", image_digest="sha256:" + "0" * 64, command=("sh",))

    def get(self, name: str) -> FakeContainer:
        return FakeContainer(self.spec)

    def dump_target(self, c: FakeContainer) -> DumpTarget:
        return DumpTarget(spec=self.spec, init_pid=4242, upper_dir=self.upper, netns_path=None, freeze_cgroup="/fake/cg")

    def freeze(self, c: Any, **record: Any) -> None:
        self.events.append("freeze")

    def thaw(self, c: Any) -> None:
        self.events.append("thaw")

    def stop_checkpointed(self, c: Any, checkpoint_id: str, **how: Any) -> None:
        assert how.get("detach") is True  # the CLI's answer does not wait for the host's teardown
        self.events.append("stop")

    @staticmethod
    def network_lock() -> str:
        return "nftables"

    def isolate(self, spec: Any) -> NetworkCut:
        self.events.append("isolate")
        return NetworkCut(criu_lock="skip", veth="veth-fake")

    def rejoin(self, cut: NetworkCut | None) -> None:
        if cut is not None:
            self.events.append("rejoin")


@pytest.fixture(autouse=True)
def _no_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("migrate.checkpoint.cpuinfo_dump", lambda images_dir: None)


def test_dump_keeps_the_tree_and_stops_it_after_commit(tmp_path: Path) -> None:
    host, criu = FakeHost(tmp_path), FakeCriu()
    result = checkpoint_container(host, "web", CheckpointOptions(), criu=criu)
    dumps = [req for call, req in criu.calls if call == "dump"]
    assert dumps[0].leave_running is True  # CRIU never kills it
    assert host.events == ["freeze", "isolate", "stop"]
    assert (host.paths.checkpoint(result.checkpoint_id) / "manifest.json").exists()


def test_failure_after_the_dump_thaws_and_keeps_the_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host, criu = FakeHost(tmp_path), FakeCriu()

    def broken_commit(self: Any, staging: Path, checkpoint_id: str, manifest: dict) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("migrate.archive.store.CheckpointStore.commit", broken_commit)
    with pytest.raises(OSError, match="No space left"):
        checkpoint_container(host, "web", CheckpointOptions(), criu=criu)
    assert host.events == ["freeze", "isolate", "rejoin", "thaw"]
    assert list(host.paths.checkpoints.iterdir()) == []
    assert list(host.paths.tmp.iterdir()) == []


def test_failed_export_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host, criu = FakeHost(tmp_path), FakeCriu()
    target = tmp_path / "out.pma"

    def broken_rename(src: Any, dst: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("migrate.checkpoint.os.rename", broken_rename)
    with pytest.raises(OSError):
        checkpoint_container(host, "web", CheckpointOptions(export_path=target), criu=criu)
    assert host.events == ["freeze", "isolate", "rejoin", "thaw"]
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("export", [False, True])
def test_a_local_checkpoint_makes_its_manifest_while_criu_dumps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, export: bool) -> None:
    """A local checkpoint needs its manifest only at the commit: it is made after the freeze, while
    CRIU dumps (off the command's path); an export's archive starts with it: made before the freeze."""
    import migrate.checkpoint as checkpoint

    host, criu = FakeHost(tmp_path), FakeCriu()
    real = checkpoint.build_manifest

    def recorded(*args: Any, **kwargs: Any) -> dict[str, Any]:
        host.events.append("manifest")
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "build_manifest", recorded)
    options = CheckpointOptions(export_path=str(tmp_path / "out.tar")) if export else CheckpointOptions()
    result = checkpoint_container(host, "web", options, criu=criu)
    if export:
        assert host.events == ["manifest", "freeze", "isolate", "stop"]
    else:
        assert host.events == ["freeze", "isolate", "manifest", "stop"]
        manifest = json.loads((host.paths.checkpoint(result.checkpoint_id) / "manifest.json").read_text())
        assert manifest["container"]["name"] == "web" and manifest["checkpoint_id"] == result.checkpoint_id
