"""Checkpoint and restore orchestration with fakes (no root, no CRIU).

What migrate/checkpoint.py and migrate/restore.py decide on their own: freeze before CRIU, thaw on
every failure path (but never thaw a container the user had paused), what CRIU is told (the
network namespace and volumes as externals, leave_running), where the bytes go (local checkpoint
vs one archive), the stats, the CRIU log kept when a scratch dir goes, and a restore pre-flight
that refuses before anything is built. The real kernel/CRIU side is in
tests/integration/test_checkpoint*.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from migrate.api import CheckpointOptions, RestoreOptions
from migrate.checkpoint import checkpoint_container
from migrate.errors import IncompatibleHost
from migrate.archive import read_archive
from migrate.restore import restore_container
from runtime.checkpointing import DumpTarget, NetworkCut
from runtime.config import Paths
from runtime.errors import ContainerExists, CriuError, ImageNotFound, InvalidState
from runtime.spec import ContainerSpec, Volume
from runtime.state import StateStore
from tests.fakes.criu import CANNED_STATS, FakeCriu
from tests.fakes.flat_images import FlatImages

DIGEST = "sha256:" + "ab" * 32


@dataclass
class FakeContainer:
    spec: ContainerSpec
    status: str = "running"


@dataclass
class FakeImages:
    digests: set[str] = field(default_factory=lambda: {DIGEST})
    layers: tuple[str, ...] = ()  # the image's diff_ids when it is layered

    def has_digest(self, digest: str) -> bool:
        return digest in self.digests

    def get(self, digest: str) -> Any:
        image = FlatImages().get(digest)
        image.layers, image.config_digest = self.layers, "sha256:" + "c" * 64
        return image


class FakeHost:
    """The CheckpointHost surface checkpoint_container and restore_container use, in memory."""

    def __init__(self, root: Path, *, status: str = "running", volumes: tuple[Volume, ...] = ()) -> None:
        self.paths = Paths(root / "state")
        self.paths.ensure()
        self.store = StateStore(self.paths)  # restores hold name and id locks under run/locks
        self.upper = root / "upper"
        (self.upper / "etc").mkdir(parents=True)
        (self.upper / "etc" / "motd").write_text("hello\n")
        self.netns = root / "netns-file"
        self.netns.write_text("")
        self.spec = ContainerSpec(
            container_id="c" * 32, name="web", image="busybox", image_digest=DIGEST, command=("sh",),
            ip="10.77.0.5", volumes=volumes,
        )
        self.status = status
        self.events: list[str] = []
        self.images = FakeImages()
        self.names_taken: set[str] = set()
        self.ips_taken: set[str] = set()
        self.built: list[ContainerSpec] = []
        self.fail_build: BaseException | None = None

    # -- source side
    def get(self, name: str) -> FakeContainer:
        return FakeContainer(self.spec, self.status)

    def dump_target(self, c: FakeContainer) -> DumpTarget:
        return DumpTarget(spec=self.spec, init_pid=4242, upper_dir=self.upper, netns_path=self.netns, freeze_cgroup="/fake/cg")

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

    # -- target side
    @staticmethod
    def cpu_digest() -> str:
        from runtime.host import read_cpu

        return read_cpu()[1] or ""

    @staticmethod
    def new_container_id() -> str:
        return "d" * 32

    def replaceable_id(self, spec: ContainerSpec) -> str | None:
        return None

    def check_name_free(self, name: str, *, replace_id: str | None = None) -> None:
        if name in self.names_taken:
            raise ContainerExists(f"container name {name} is already in use")

    def ip_free(self, ip: str, *, replace_id: str | None = None, owner: str | None = None) -> bool:
        return ip not in self.ips_taken

    def restore_from(self, spec: ContainerSpec, *, upper_src: Path, replace_id: Any, request_for: Callable[[Path], Any],
                     netns_key: str, criu: Any, restored_from: Any) -> Any:
        self.events.append("build")
        assert (upper_src / "etc" / "motd").read_text() == "hello\n"
        if self.fail_build is not None:
            raise self.fail_build
        criu.restore(request_for(Path("/fake/merged")))
        self.built.append(spec)
        return spec


@pytest.fixture(autouse=True)
def _no_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("migrate.checkpoint.cpuinfo_dump", lambda images_dir: (images_dir / "cpuinfo.img").write_bytes(b"cpu"))
    monkeypatch.setattr("migrate.restore.cpuinfo_check", lambda images_dir, work_dir: None)


def leftovers(host: FakeHost) -> list[str]:
    return sorted(p.name for p in host.paths.tmp.iterdir())


# -- checkpoint -------------------------------------------------------------------------------------


def test_dump_request_declares_the_netns_and_volumes_external_and_freezes_first(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, volumes=(Volume(source="/srv/data", target="/data"),))
    seen: list[list[str]] = []
    criu = FakeCriu(during_dump=lambda req: seen.append(list(host.events)))
    checkpoint_container(host, "web", CheckpointOptions(), criu=criu)
    (request,) = criu.requests("dump")
    assert seen == [["freeze", "isolate"]], "CRIU must run on a frozen container"
    assert request.external == (f"net[{os.stat(host.netns).st_ino}]:extnet", "mnt[/data]:vol0")
    # our own lock (the link set down) replaces CRIU's, so the link stays down through the stop
    assert request.freeze_cgroup == "/fake/cg" and request.network_lock == "skip" and request.pid == 4242
    assert request.leave_running is True


def test_local_checkpoint_keeps_raw_images_and_reports_the_canned_stats(tmp_path: Path) -> None:
    host, criu = FakeHost(tmp_path), FakeCriu(pages=16)
    result = checkpoint_container(host, "web", CheckpointOptions(), criu=criu)
    assert host.events == ["freeze", "isolate", "stop"]
    base = host.paths.checkpoint(result.checkpoint_id)
    assert (base / "images" / "pages-1.img").stat().st_size == 16 * 4096
    s = result.stats
    assert (s.pages_written, s.pages_scanned, s.memdump_ms) == (CANNED_STATS.pages_written, CANNED_STATS.pages_scanned, CANNED_STATS.memdump_ms)
    assert s.images_bytes >= 16 * 4096 and s.upper_bytes >= len("hello\n") and s.archive_bytes == 0
    assert s.frozen_ms > 0 and s.total_ms >= s.frozen_ms
    assert leftovers(host) == []


def test_leave_running_thaws_and_does_not_stop(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    checkpoint_container(host, "web", CheckpointOptions(leave_running=True), criu=FakeCriu())
    assert host.events == ["freeze", "isolate", "rejoin", "thaw"]


def test_export_writes_one_archive_with_manifest_upper_and_images(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    out = tmp_path / "exports" / "web.pma"
    out.parent.mkdir()
    result = checkpoint_container(host, "web", CheckpointOptions(export_path=out), criu=FakeCriu())
    assert result.export_path == str(out)
    assert [p.name for p in out.parent.iterdir()] == ["web.pma"]
    assert list(host.paths.checkpoints.iterdir()) == [] and leftovers(host) == []
    dest = tmp_path / "unpacked"
    dest.mkdir()
    with open(out, "rb") as f:
        manifest = read_archive(f, dest)
    assert manifest["kind"] == "pymigrate-checkpoint" and manifest["container"]["name"] == "web"
    assert (dest / "upper" / "etc" / "motd").read_text() == "hello\n"
    assert (dest / "images" / "pages-1.img").stat().st_size == 16 * 4096
    assert (dest / "images" / "cpuinfo.img").exists()
    assert result.stats.archive_bytes == out.stat().st_size


@pytest.mark.parametrize("export", [False, True], ids=["local", "export"])
def test_failed_dump_thaws_removes_partials_and_keeps_the_log(tmp_path: Path, export: bool) -> None:
    host = FakeHost(tmp_path)
    out = tmp_path / "web.pma"
    criu = FakeCriu(fail_dump="sockets: Can't dump half of stream unix connection")
    with pytest.raises(CriuError) as info:
        checkpoint_container(host, "web", CheckpointOptions(export_path=out if export else None), criu=criu)
    assert host.events == ["freeze", "isolate", "rejoin", "thaw"]
    assert leftovers(host) == [] and list(host.paths.checkpoints.iterdir()) == []
    assert not out.exists() and not list(tmp_path.glob(".web.pma.*"))
    exc = info.value
    assert "Can't dump half of stream" in str(exc) and "Error (criu/fake.c:1)" in str(exc)
    assert exc.log_path is not None and exc.log_path.is_file(), "the error must name a log that still exists"
    assert exc.log_path.parent == host.paths.root / "logs"
    assert f"(log: {exc.log_path})" in str(exc)


def test_failed_dump_of_a_paused_container_leaves_it_paused(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, status="paused")
    with pytest.raises(CriuError):
        checkpoint_container(host, "web", CheckpointOptions(), criu=FakeCriu(fail_dump="boom"))
    assert host.events == ["freeze", "isolate", "rejoin"], "a container the user paused must stay frozen"
    host.events.clear()
    checkpoint_container(host, "web", CheckpointOptions(leave_running=True), criu=FakeCriu())
    assert host.events == ["freeze", "isolate", "rejoin"]


@pytest.mark.parametrize("status", ["exited", "created"])
def test_only_running_or_paused_containers_are_checkpointed(tmp_path: Path, status: str) -> None:
    host, criu = FakeHost(tmp_path, status=status), FakeCriu()
    with pytest.raises(InvalidState, match=f"state is {status}"):
        checkpoint_container(host, "web", CheckpointOptions(), criu=criu)
    assert host.events == [] and criu.requests("dump") == []
    assert leftovers(host) == []


# -- restore ----------------------------------------------------------------------------------------


def _checkpoint(tmp_path: Path, **host_kwargs: Any) -> tuple[FakeHost, str]:
    host = FakeHost(tmp_path, **host_kwargs)
    result = checkpoint_container(host, "web", CheckpointOptions(), criu=FakeCriu())
    host.events.clear()
    return host, result.checkpoint_id


def test_restore_of_a_local_checkpoint_asks_criu_with_the_images_in_place(tmp_path: Path) -> None:
    host, cid = _checkpoint(tmp_path, volumes=(Volume(source="/tmp", target="/data"),))  # the source must exist
    criu = FakeCriu()
    restore_container(host, RestoreOptions(checkpoint_id=cid, name="web2", ip="10.77.0.9"), criu=criu)
    (request,) = criu.requests("restore")
    assert request.images_dir == host.paths.checkpoint(cid) / "images"
    assert request.root == Path("/fake/merged") and request.external == ("mnt[vol0]:/tmp",)
    (spec,) = host.built
    assert (spec.name, spec.ip, spec.container_id) == ("web2", "10.77.0.9", "d" * 32)
    assert leftovers(host) == []


def _refused(host: FakeHost, options: RestoreOptions, criu: FakeCriu, exc_type: type[BaseException], match: str) -> None:
    digest_before = sorted((p.name, p.stat().st_size) for p in host.paths.checkpoints.rglob("*") if p.is_file())
    with pytest.raises(exc_type, match=match):
        restore_container(host, options, criu=criu)
    assert "build" not in host.events and criu.requests("restore") == [], "pre-flight must refuse before building"
    assert leftovers(host) == []
    assert sorted((p.name, p.stat().st_size) for p in host.paths.checkpoints.rglob("*") if p.is_file()) == digest_before


def test_preflight_refuses_an_older_criu(tmp_path: Path) -> None:
    host, cid = _checkpoint(tmp_path)
    _refused(host, RestoreOptions(checkpoint_id=cid), FakeCriu(criu_version="3.17"), IncompatibleHost, "criu 4.1.1.*criu 3.17")


def test_preflight_refuses_a_missing_image(tmp_path: Path) -> None:
    host, cid = _checkpoint(tmp_path)
    host.images.digests.clear()
    _refused(host, RestoreOptions(checkpoint_id=cid), FakeCriu(), ImageNotFound, "no such image")


def test_a_missing_layered_image_is_named_with_its_layers(tmp_path: Path) -> None:
    layers = ("sha256:" + "1" * 64, "sha256:" + "2" * 64)
    host = FakeHost(tmp_path)
    host.images.layers = layers
    cid = checkpoint_container(host, "web", CheckpointOptions(), criu=FakeCriu()).checkpoint_id
    manifest = json.loads((host.paths.checkpoint(cid) / "manifest.json").read_text())
    assert manifest["image"] == {"name": "busybox", "digest": DIGEST, "layers": list(layers), "config_digest": "sha256:" + "c" * 64}
    host.images.digests.clear()
    with pytest.raises(ImageNotFound) as err:
        restore_container(host, RestoreOptions(checkpoint_id=cid), criu=FakeCriu())
    assert "its 2 layers" in (err.value.hint or "") and "sha256:11111111111" in (err.value.hint or "")


def test_preflight_refuses_a_taken_name_and_address(tmp_path: Path) -> None:
    host, cid = _checkpoint(tmp_path)
    host.names_taken.add("web")
    _refused(host, RestoreOptions(checkpoint_id=cid), FakeCriu(), ContainerExists, "name web")
    host.names_taken.clear()
    host.ips_taken.add("10.77.0.5")
    _refused(host, RestoreOptions(checkpoint_id=cid), FakeCriu(), ContainerExists, "address 10.77.0.5")
    # --ip moves it off the taken address
    restore_container(host, RestoreOptions(checkpoint_id=cid, ip="10.77.0.6"), criu=FakeCriu())
    assert host.built[-1].ip == "10.77.0.6"


def test_a_new_address_leaves_the_mac_to_the_host_the_same_keeps_it(tmp_path: Path) -> None:
    # issue 13: a copy restored with --ip beside its running original got the original's MAC
    host = FakeHost(tmp_path)
    host.spec = dataclasses.replace(host.spec, mac="02:42:0a:4d:00:05")
    cid = checkpoint_container(host, "web", CheckpointOptions(), criu=FakeCriu()).checkpoint_id
    restore_container(host, RestoreOptions(checkpoint_id=cid, name="web2", ip="10.77.0.60"), criu=FakeCriu())
    assert (host.built[-1].ip, host.built[-1].mac) == ("10.77.0.60", None)  # the host derives the new address's
    for ip in (None, "10.77.0.5"):
        restore_container(host, RestoreOptions(checkpoint_id=cid, ip=ip), criu=FakeCriu())
        assert (host.built[-1].ip, host.built[-1].mac) == ("10.77.0.5", "02:42:0a:4d:00:05")


def test_failed_restore_keeps_the_criu_log_and_the_checkpoint(tmp_path: Path) -> None:
    host, cid = _checkpoint(tmp_path)
    images = host.paths.checkpoint(cid) / "images"
    before = sorted((p.name, p.read_bytes()) for p in images.iterdir())

    # the shim reports CRIU's error as text: a ContainerError quoting the CriuError's message
    criu = FakeCriu(fail_restore="mnt: Can't mount at ./proc")
    with pytest.raises(CriuError) as info:
        restore_container(host, RestoreOptions(checkpoint_id=cid), criu=criu)
    assert info.value.log_path is not None and info.value.log_path.is_file()
    assert info.value.log_path.parent == host.paths.root / "logs"
    assert "Can't mount at ./proc" in info.value.log_path.read_text()
    assert sorted((p.name, p.read_bytes()) for p in images.iterdir()) == before
    assert leftovers(host) == []
