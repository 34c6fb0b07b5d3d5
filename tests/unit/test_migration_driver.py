"""The source-side phase driver (migrate/migration/driver.py) with fakes: a fake runtime host, a fake
CRIU that writes a small images dir, and FakeEngine (tests/fakes/engine.py) as the target.

What must hold on every failure before the point of no return: the error names the phase, the
source container is thawed exactly once if it was frozen (and never finished), the target is
asked to abort, the source's staging dir is gone. After it: cleanup errors are logged, not raised.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fakes.flat_images import FlatImages

from migrate.migration import sequence
from migrate.migration import driver as migration
from migrate.api import MigrateOptions
from migrate.errors import IncompatibleHost, MigrationError, PeerError, TransferError
from runtime.checkpointing import DumpTarget, NetworkCut
from runtime.config import Paths
from runtime.criu import DumpRequest, DumpStats
from runtime.errors import CriuError, InvalidState
from runtime.spec import ContainerSpec
from tests.fakes.engine import FakeEngine

DIGEST = "sha256:" + "a" * 64


class FakeContainer:
    def __init__(self, spec: ContainerSpec, status: str = "running") -> None:
        self.spec = spec
        self.status = status
        self.container_id = spec.container_id


class FakeHost:
    """What migrate_container needs of runtime.checkpointing.CheckpointHost, recording calls."""

    def __init__(self, root: Path, *, status: str = "running") -> None:
        self.paths = Paths(root)
        self.paths.ensure()
        self.images = FlatImages()
        spec = ContainerSpec(container_id="c" * 32, name="web", image="busybox", image_digest=DIGEST, command=("sh",), ip="10.77.0.9")
        self.container = FakeContainer(spec, status)
        upper = root / "containers" / spec.container_id / "upper"
        upper.mkdir(parents=True)
        (upper / "hello.txt").write_text("hello\n")
        self.upper = upper
        self.events: list[str] = []
        self.fail_finish: BaseException | None = None

    def get(self, name: str) -> FakeContainer:
        assert name in ("web", self.container.container_id)
        return self.container

    def dump_target(self, c: FakeContainer) -> DumpTarget:
        return DumpTarget(spec=c.spec, init_pid=4242, upper_dir=self.upper, netns_path=None, freeze_cgroup="/sys/fs/cgroup/x")

    def cpu_digest(self) -> str:
        return "sha256:" + "c" * 64

    def freeze(self, c: FakeContainer) -> None:
        self.events.append("freeze")

    def thaw(self, c: FakeContainer) -> None:
        self.events.append("thaw")

    @staticmethod
    def network_lock() -> str:
        return "nftables"

    def isolate(self, spec: Any) -> NetworkCut:  # --network none: nothing to cut
        return NetworkCut(criu_lock="skip", veth=None)

    @staticmethod
    def rejoin(cut: Any) -> None:
        pass

    def finish_migration(self, c: FakeContainer, *, keep: bool) -> None:
        self.events.append(f"finish keep={keep}")
        if self.fail_finish is not None:
            raise self.fail_finish


class FakeDumpCriu:
    """Writes pages-1.img (``pages_bytes``) and two small images; optionally fails."""

    def __init__(self, pages_bytes: int = 3 << 20, fail: BaseException | None = None) -> None:
        self.pages_bytes = pages_bytes
        self.fail = fail
        self.requests: list[DumpRequest] = []

    def version(self) -> str:
        return "4.1.1"

    def warm(self) -> None:
        pass

    def dump(self, request: DumpRequest, *, on_notify: Any = None) -> DumpStats:
        self.requests.append(request)
        with open(request.images_dir / "pages-1.img", "wb") as f:
            for _ in range(self.pages_bytes // (1 << 20)):
                f.write(os.urandom(1 << 20))
        if self.fail is not None:
            raise self.fail
        (request.images_dir / "core-1.img").write_bytes(b"core" * 100)
        (request.images_dir / "inventory.img").write_bytes(b"inv")
        return DumpStats(frozen_ms=12.0, memdump_ms=3.0, memwrite_ms=4.0, pages_written=self.pages_bytes // 4096)


class Target(FakeEngine):
    """FakeEngine as the target, with faults: fail after reading ``fail_after_chunks`` chunks of
    the checkpoint push, or after reading all of it (a failed restore)."""

    def __init__(self) -> None:
        super().__init__(hostname="target")
        from migrate.api import ImageInfo

        self._images["busybox"] = ImageInfo(name="busybox", digest=DIGEST, size_bytes=1, created_at=0.0)
        self.fail_after_chunks: int | None = None
        self.fail_restore: BaseException | None = None
        self.fail_abort: BaseException | None = None
        self.fail_commit: BaseException | None = None
        self.fail_image_after_read: BaseException | None = None
        self.received = b""

    def receive_image(self, migration_id: str, chunks: Iterator[bytes]) -> None:
        if self.fail_image_after_read is not None:
            next(iter(chunks))
            raise self.fail_image_after_read
        super().receive_image(migration_id, chunks)

    def receive_checkpoint(self, migration_id: str, chunks: Iterator[bytes]) -> Any:
        if self.fail_after_chunks is not None:
            it = iter(chunks)
            for _ in range(self.fail_after_chunks):
                next(it)
            raise PeerError("the target went away", phase="transfer")
        data = b"".join(chunks)
        self.received = data
        if self.fail_restore is not None:
            raise self.fail_restore
        return super().receive_checkpoint(migration_id, iter([data]))

    def abort_incoming(self, migration_id: str) -> None:
        super().abort_incoming(migration_id)
        if self.fail_abort is not None:
            raise self.fail_abort

    def commit_incoming(self, migration_id: str) -> None:
        if self.fail_commit is not None:
            self.calls.append("commit_incoming")
            raise self.fail_commit
        super().commit_incoming(migration_id)


@pytest.fixture(autouse=True)
def no_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequence, "cpuinfo_dump", lambda images_dir: (images_dir / "cpuinfo.img").write_bytes(b"cpu"))


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path / "root")


@pytest.fixture
def target() -> Target:
    return Target()


def migrate(host: FakeHost, target: Target, criu: FakeDumpCriu | None = None, **options: Any) -> Any:
    events: list[Any] = []
    result = migration.migrate_container(
        host, "web", MigrateOptions(dest="10.0.0.2:7443", **options), target, criu=criu or FakeDumpCriu(), progress=events.append
    )
    return result, events


def staging_left(host: FakeHost) -> list[str]:
    return sorted(p.name for p in host.paths.tmp.iterdir())


# --- success ----------------------------------------------------------------------------------


def test_success_streams_a_valid_archive_and_finishes_the_source(host: FakeHost, target: Target) -> None:
    from migrate.archive import read_archive

    result, events = migrate(host, target)
    assert host.events == ["freeze", "finish keep=False"]  # no thaw: the frozen copy is killed
    assert target.calls.count("commit_incoming") == 1 and "abort_incoming" not in target.calls
    assert target.incoming == {}
    stats = result.stats
    assert stats.bytes_on_wire == len(target.received) > 0
    assert stats.frozen_ms > 0 and stats.total_ms >= stats.frozen_ms
    assert {"preflight", "freeze", "dump", "restore", "commit"} <= set(stats.phases_ms)
    assert [e.phase for e in events][0] == "preflight" and events[-1].phase == "done"
    out = host.paths.root / "check"
    manifest = read_archive(io.BytesIO(target.received), out)
    assert manifest["container"]["name"] == "web"
    assert (out / "upper" / "hello.txt").read_text() == "hello\n"
    assert (out / "images" / "pages-1.img").stat().st_size == 3 << 20
    assert staging_left(host) == []


def test_image_is_shipped_first_when_the_target_lacks_it(host: FakeHost, target: Target) -> None:
    target._images.clear()
    result, _ = migrate(host, target)
    assert target.calls.index("receive_image") < target.calls.index("receive_checkpoint")
    assert "image" in result.stats.phases_ms


def test_keep_source(host: FakeHost, target: Target) -> None:
    migrate(host, target, keep_source=True)
    assert host.events == ["freeze", "finish keep=True"]


# --- failures before the point of no return ----------------------------------------------------


def assert_rolled_back(host: FakeHost, target: Target, *, frozen: bool = True) -> None:
    assert host.events == (["freeze", "thaw"] if frozen else [])
    assert "abort_incoming" in target.calls
    assert "commit_incoming" not in target.calls
    assert target.incoming == {}
    assert staging_left(host) == []


def test_target_fails_mid_stream_reports_its_error_and_the_dump_phase(host: FakeHost, target: Target) -> None:
    target.fail_after_chunks = 1
    with pytest.raises(MigrationError) as info:
        migrate(host, target, criu=FakeDumpCriu(pages_bytes=24 << 20))
    # the target's error (the cause), not the producer's "stopped receiving" echo of it
    assert isinstance(info.value, PeerError)
    assert "the target went away" in str(info.value)
    assert info.value.phase == "dump"
    assert "(phase: dump)" in str(info.value)
    assert_rolled_back(host, target)


def test_target_restore_fails(host: FakeHost, target: Target) -> None:
    target.fail_restore = CriuError("restore", "criu restore failed: no such image")
    with pytest.raises(MigrationError) as info:
        migrate(host, target)
    assert info.value.phase == "restore"
    assert "criu restore failed" in str(info.value)
    assert_rolled_back(host, target)


def test_target_disk_full_names_the_cause(host: FakeHost, target: Target) -> None:
    import errno

    target.fail_after_chunks = None
    target.fail_restore = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(MigrationError) as info:
        migrate(host, target)
    assert "No space left on device" in str(info.value)
    assert info.value.phase == "restore"
    assert_rolled_back(host, target)


def test_criu_dump_fails(host: FakeHost, target: Target) -> None:
    with pytest.raises(MigrationError) as info:
        migrate(host, target, criu=FakeDumpCriu(fail=CriuError("dump", "criu dump failed: cannot seize 4242")))
    assert info.value.phase == "dump"
    assert "cannot seize" in str(info.value)
    assert_rolled_back(host, target)


def test_target_phase_names_are_replaced_by_the_driver_phase(host: FakeHost, target: Target) -> None:
    target.fail_restore = TransferError("archive truncated", phase="verify")
    with pytest.raises(MigrationError) as info:
        migrate(host, target)
    assert info.value.phase == "restore"


def test_abort_failure_keeps_the_original_error(host: FakeHost, target: Target) -> None:
    target.fail_restore = PeerError("restore refused")
    target.fail_abort = TransferError("the daemon at 10.0.0.2:7443 is unreachable")
    with pytest.raises(MigrationError) as info:
        migrate(host, target)
    assert "restore refused" in str(info.value)
    assert host.events == ["freeze", "thaw"]


def test_preflight_refused_touches_nothing(host: FakeHost, target: Target) -> None:
    target.fail["prepare_incoming"] = IncompatibleHost("the target has criu 3.17", phase="preflight")
    with pytest.raises(IncompatibleHost) as info:
        migrate(host, target)
    assert info.value.phase == "preflight"
    assert host.events == []
    assert "receive_checkpoint" not in target.calls


def test_image_push_fails_before_the_freeze(host: FakeHost, target: Target) -> None:
    target._images.clear()
    target.fail_image_after_read = PeerError("image digest mismatch")
    with pytest.raises(MigrationError) as info:
        migrate(host, target)
    assert "image digest mismatch" in str(info.value)
    assert info.value.phase == "image"
    assert_rolled_back(host, target, frozen=False)


def test_container_not_running_is_refused(tmp_path: Path, target: Target) -> None:
    host = FakeHost(tmp_path / "r", status="exited")
    with pytest.raises(InvalidState):
        migrate(host, target)
    assert target.calls == []


def test_interrupt_during_dump_thaws(host: FakeHost, target: Target) -> None:
    with pytest.raises(KeyboardInterrupt):
        migrate(host, target, criu=FakeDumpCriu(fail=KeyboardInterrupt()))
    assert_rolled_back(host, target)


# --- after the point of no return -------------------------------------------------------------


def test_commit_failure_after_restore_is_not_raised(host: FakeHost, target: Target) -> None:
    target.fail_commit = TransferError("the daemon is unreachable")
    result, _ = migrate(host, target)
    assert result.container_name == "web"
    assert host.events == ["freeze", "finish keep=False"]
    assert "abort_incoming" not in target.calls


def test_source_cleanup_failure_after_restore_is_not_raised(host: FakeHost, target: Target) -> None:
    host.fail_finish = OSError("cannot remove")
    result, _ = migrate(host, target)
    assert result.container_name == "web"
    assert "abort_incoming" not in target.calls


# --- events (issue 15: runtime/events.py) ------------------------------------------------------


def test_the_source_journals_its_migration(host: FakeHost, target: Target) -> None:
    from runtime.events import Journal

    migrate(host, target, keep_source=True)
    failing = Target()
    failing.fail_restore = CriuError("restore", "criu restore failed: no such image")
    with pytest.raises(MigrationError):
        migrate(host, failing)
    events = [e for e in Journal(host.paths.root).read() if e.type == "migration"]
    assert [e.action for e in events] == ["start", "frozen", "completed", "start", "frozen", "failed"]
    assert len({events[0].id, events[3].id}) == 2 and all(e.name == "web" for e in events)
    assert events[2].attributes["role"] == "source" and float(events[2].attributes["frozen_ms"]) > 0
    assert "criu restore failed" in events[5].attributes["error"]
