"""Pre-copy with fakes (the kernel here has no soft-dirty: real pre-dumps are proven in
tests/integration/test_precopy.py on kernels that have it).

Source (migrate.migration.precopy.migrate_precopy over migrate.migration.driver's cold path): rounds run while the
container runs, each to its own target page server, with the right CRIU parent chain; the
convergence rule stops them; the final dump names the last round and freezes once; a failed
round rolls back without a freeze. Target (IncomingMigrations.start_precopy_round over
migrate.migration.precopy_target): page servers chained through CRIU's parent links, in order only; the
final link reaches the restore's images dir; abort, commit and sweep cover every round. And the
StartPrecopyRound RPC end to end through an in-process gRPC daemon.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from tests.fakes.flat_images import FlatImages

from migrate.migration import sequence
from migrate.migration import precopy
from migrate.api import ImageInfo, IncomingRequest, MigrateOptions
from migrate.errors import IncompatibleHost, MigrationError, TransferError
from migrate.migration.target import IncomingMigrations
from runtime.checkpointing import DumpTarget, NetworkCut
from runtime.config import Paths
from runtime.criu import DumpRequest, DumpStats
from runtime.errors import CriuError, Unsupported
from runtime.spec import ContainerSpec
from tests.fakes.engine import FakeEngine

DIGEST = "sha256:" + "a" * 64
FULL = 65_536  # 256 MiB of 4 KiB pages


# --- source-side fakes ----------------------------------------------------------------------------


class FakeContainer:
    def __init__(self, spec: ContainerSpec) -> None:
        self.spec = spec
        self.status = "running"
        self.container_id = spec.container_id


class FakeHost:
    """What migrate_container needs of runtime.checkpointing.CheckpointHost, recording calls."""

    def __init__(self, root: Path) -> None:
        self.paths = Paths(root)
        self.paths.ensure()
        spec = ContainerSpec(container_id="c" * 32, name="web", image="busybox", image_digest=DIGEST, command=("sh",), ip="10.77.0.9")
        self.container = FakeContainer(spec)
        self.images = FlatImages()
        self.upper = root / "containers" / spec.container_id / "upper"
        self.upper.mkdir(parents=True)
        (self.upper / "hello.txt").write_text("hello\n")
        self.events: list[str] = []

    def get(self, name: str) -> FakeContainer:
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

    def isolate(self, spec: Any) -> NetworkCut:
        return NetworkCut(criu_lock="skip", veth=None)

    @staticmethod
    def rejoin(cut: Any) -> None:
        pass

    def finish_migration(self, c: FakeContainer, *, keep: bool) -> None:
        self.events.append("finish")


class PrecopyCriu:
    """Pre-dumps report ``pages`` (one count per round); the final dump writes small images."""

    def __init__(self, host: FakeHost, pages: list[int], fail_round: int | None = None) -> None:
        self.host = host
        self.pages = list(pages)
        self.fail_round = fail_round
        self.pre_dumps: list[DumpRequest] = []
        self.dumps: list[DumpRequest] = []

    def version(self) -> str:
        return "4.1.1"

    def warm(self) -> None:
        pass

    def pre_dump(self, request: DumpRequest) -> DumpStats:
        self.pre_dumps.append(request)
        self.host.events.append(f"pre-dump {request.images_dir.name}")
        assert request.images_dir.is_dir()
        if request.parent_img:  # CRIU checks the parent exists beside the images dir (open_image_dir)
            assert (request.images_dir / request.parent_img).is_dir()
        if self.fail_round == len(self.pre_dumps):
            raise CriuError("pre-dump", "page server: connection reset", log_path=request.images_dir / "dump.log")
        (request.images_dir / "inventory.img").write_bytes(b"inv")
        return DumpStats(frozen_ms=3.0, pages_written=self.pages[len(self.pre_dumps) - 1])

    def dump(self, request: DumpRequest, *, on_notify: Any = None) -> DumpStats:
        self.dumps.append(request)
        self.host.events.append("dump")
        (request.images_dir / "core-1.img").write_bytes(b"core")
        (request.images_dir / "inventory.img").write_bytes(b"inv")
        return DumpStats(frozen_ms=5.0, pages_written=120)


class PrecopyTarget(FakeEngine):
    """FakeEngine with a listening socket as each round's page server (connect_page_server
    connects for real; the backlog accepts without an accept call)."""

    def __init__(self) -> None:
        super().__init__(hostname="target")
        self._images["busybox"] = ImageInfo(name="busybox", digest=DIGEST, size_bytes=1, created_at=0.0)
        self.rounds: list[tuple[int, bool, int]] = []  # (round, final, port)
        self.listeners: list[socket.socket] = []
        self.requests: list[IncomingRequest] = []
        self.fail_round: BaseException | None = None

    def prepare_incoming(self, request: IncomingRequest) -> Any:
        self.requests.append(request)
        return super().prepare_incoming(request)

    def start_precopy_round(self, migration_id: str, round_no: int, final: bool = False) -> int:
        self._enter("start_precopy_round")
        if self.fail_round is not None and round_no == 2:
            raise self.fail_round
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        self.listeners.append(listener)
        port = int(listener.getsockname()[1])
        self.rounds.append((round_no, final, port))
        return port

    def close_listeners(self) -> None:
        for s in self.listeners:
            s.close()


@pytest.fixture(autouse=True)
def no_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequence, "cpuinfo_dump", lambda images_dir: (images_dir / "cpuinfo.img").write_bytes(b"cpu"))


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path / "root")


@pytest.fixture
def target() -> Iterator[PrecopyTarget]:
    t = PrecopyTarget()
    yield t
    t.close_listeners()


def run(host: FakeHost, target: PrecopyTarget, criu: PrecopyCriu, **kw: Any) -> Any:
    events: list[Any] = []
    result = precopy.migrate_precopy(host, "web", MigrateOptions(dest="127.0.0.1:7443", mode="precopy"), target, criu=criu,
                                     progress=events.append, **kw)
    return result, events


# --- source -----------------------------------------------------------------------------------


def test_rounds_until_converged_then_one_frozen_dump(host: FakeHost, target: PrecopyTarget) -> None:
    criu = PrecopyCriu(host, [FULL, 30_000, 1_500])
    result, events = run(host, target, criu)

    assert result.mode == "precopy"
    assert target.requests[0].mode == "precopy" and target.requests[0].page_server_address == "127.0.0.1"
    # three rounds while running, then exactly one freeze, then the final dump
    assert host.events == ["pre-dump round1", "pre-dump round2", "pre-dump round3", "freeze", "dump", "finish"]
    assert [(r, f) for r, f, _ in target.rounds] == [(1, False), (2, False), (3, False), (4, True)]
    # the CRIU parent chain: each round names the one before; the final dump names the last round
    assert [r.parent_img for r in criu.pre_dumps] == [None, "../round1", "../round2"]
    assert all(r.track_mem and r.page_server is not None and r.page_server.fd is not None for r in criu.pre_dumps)
    assert [r.page_server.port for r in criu.pre_dumps] == [p for _, _, p in target.rounds[:3]]  # type: ignore[union-attr]
    final = criu.dumps[0]
    assert final.parent_img == "../round3" and final.track_mem and final.leave_running
    assert final.page_server is not None and final.page_server.port == target.rounds[3][2]
    assert (final.images_dir / final.parent_img).name == "round3"
    # stats: each round's time, the rounds' pages on the wire; progress names the rounds
    assert {"precopy_round1", "precopy_round2", "precopy_round3", "precopy", "freeze", "dump"} <= set(result.stats.phases_ms)
    assert result.stats.bytes_on_wire >= (FULL + 30_000 + 1_500 + 120) * 4096
    assert any(e.phase == "precopy" and "round 3: 1500 pages, converged" in e.message for e in events)
    assert target.calls[-1] == "commit_incoming"
    assert sorted(p.name for p in host.paths.tmp.iterdir()) == []  # staging (every round) removed


def test_a_workload_that_dirties_as_fast_as_it_is_sent_stops_as_stalled(host: FakeHost, target: PrecopyTarget) -> None:
    criu = PrecopyCriu(host, [FULL, 40_000, 39_000, 38_500])
    result, _ = run(host, target, criu)
    assert len(criu.pre_dumps) == 4 and criu.dumps[0].parent_img == "../round4"
    assert result.mode == "precopy"


def test_the_iteration_cap_bounds_the_rounds(host: FakeHost, target: PrecopyTarget) -> None:
    criu = PrecopyCriu(host, [FULL, 50_000, 30_000, 20_000])
    run(host, target, criu, policy=precopy.ConvergencePolicy(max_rounds=2))
    assert len(criu.pre_dumps) == 2 and criu.dumps[0].parent_img == "../round2"


def test_a_failed_round_rolls_back_without_a_freeze(host: FakeHost, target: PrecopyTarget) -> None:
    criu = PrecopyCriu(host, [FULL, 30_000], fail_round=2)
    with pytest.raises(MigrationError) as info:
        run(host, target, criu)
    assert info.value.phase == "precopy"
    assert "connection reset" in str(info.value)
    assert "freeze" not in host.events and "thaw" not in host.events and "finish" not in host.events
    assert not criu.dumps
    assert target.calls[-1] == "abort_incoming" and not target.incoming
    assert sorted(p.name for p in host.paths.tmp.iterdir()) == []
    outgoing = host.paths.run / "outgoing"
    assert not outgoing.exists() or not list(outgoing.glob("*.json"))  # the outgoing record ended


def test_a_target_that_cannot_start_a_round_rolls_back(host: FakeHost, target: PrecopyTarget) -> None:
    target.fail_round = TransferError("cannot start the page server of pre-copy round 2", phase="precopy")
    criu = PrecopyCriu(host, [FULL, 30_000])
    with pytest.raises(TransferError, match="round 2") as info:
        run(host, target, criu)
    assert info.value.phase == "precopy"
    assert len(criu.pre_dumps) == 1 and "freeze" not in host.events
    assert target.calls[-1] == "abort_incoming"


def test_an_unreachable_round_page_server_is_a_precopy_transfer_error(host: FakeHost, target: PrecopyTarget,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    monkeypatch.setattr(target, "start_precopy_round", lambda *a, **k: port)
    with pytest.raises(TransferError, match="page server") as info:
        run(host, target, PrecopyCriu(host, [FULL]))
    assert info.value.phase == "precopy" and "freeze" not in host.events


# --- mode choice and dispatch -------------------------------------------------------------------

LAZY_DIRTY = {"lazy_pages": True, "dirty_tracking": True}
DIRTY = {"lazy_pages": False, "dirty_tracking": True}
NEITHER = {"lazy_pages": False, "dirty_tracking": False}


@pytest.mark.parametrize(
    ("local", "remote", "chosen"),
    [
        (LAZY_DIRTY, LAZY_DIRTY, "postcopy"),
        (LAZY_DIRTY, DIRTY, "precopy"),
        (DIRTY, DIRTY, "precopy"),
        (DIRTY, NEITHER, "cold"),
        (NEITHER, DIRTY, "cold"),
        ({"lazy_pages": True}, {"lazy_pages": False}, "cold"),  # this machine: no soft-dirty anywhere
    ],
)
def test_auto_prefers_postcopy_then_precopy_then_cold(local: dict, remote: dict, chosen: str) -> None:
    from migrate.migration.driver import choose_mode

    assert choose_mode(MigrateOptions(dest="t:1", mode="auto"), local, remote) == chosen


def test_dispatch_runs_precopy_when_neither_host_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.migration import driver

    ran: list[str] = []
    monkeypatch.setattr(precopy, "local_refusal", lambda: None)
    monkeypatch.setattr(precopy, "migrate_precopy", lambda rt, name, options, target, **kw: ran.append(name) or "result")
    target = SimpleNamespace(host_info=lambda: SimpleNamespace(features={"dirty_tracking": True}, kernel="6.1.0"))
    assert driver.dispatch(None, "web", MigrateOptions(dest="t:1", mode="precopy"), target) == "result"
    assert ran == ["web"]


def test_dispatch_refuses_a_target_without_soft_dirty(monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.migration import driver

    monkeypatch.setattr(precopy, "local_refusal", lambda: None)
    target = SimpleNamespace(host_info=lambda: SimpleNamespace(features={"dirty_tracking": False}, kernel="6.18.4"))
    with pytest.raises(Unsupported, match="kernel 6.18.4 of the target t:1 has no soft-dirty"):
        driver.dispatch(None, "web", MigrateOptions(dest="t:1", mode="precopy"), target)


@pytest.mark.parametrize(("dest", "address"), [("10.0.0.2:7443", "10.0.0.2"), ("[fd00::2]:7443", "fd00::2"), ("unix:/run/p.sock", "127.0.0.1")])
def test_round_address(dest: str, address: str) -> None:
    assert precopy.round_address(dest) == address


def test_round_address_refuses_ssh() -> None:
    with pytest.raises(Unsupported, match="ssh"):
        precopy.round_address("ssh://root@h")


# --- target ------------------------------------------------------------------------------------


class FakeServer:
    """A CriuProcess stand-in: ``rc`` is its exit status (None: still running)."""

    def __init__(self, images_dir: Path, port: int, rc: int | None = 0) -> None:
        self.images_dir = images_dir
        self.port = port
        self.rc = rc
        self.stopped = False

    def wait(self, timeout_s: float | None = None) -> int:
        if self.rc is None:
            raise subprocess.TimeoutExpired("criu page-server", timeout_s or 0)
        if self.rc != 0:
            raise CriuError("page-server", "No space left on device (exit status 1)")
        return 0

    def poll(self) -> int | None:
        return self.rc

    def stop(self) -> None:
        self.stopped = True
        if self.rc is None:
            self.rc = -15

    @property
    def proc(self) -> Any:
        return SimpleNamespace(wait=lambda timeout=None: self.rc)

    def error(self, rc: int | None = None) -> CriuError:
        return CriuError("page-server", "failed")


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> list[FakeServer]:
    import runtime.criu
    import runtime.port_guard

    started: list[FakeServer] = []

    def start(images_dir: Path, address: str, port: int, *, tls: Any = None, **_: Any) -> FakeServer:
        # the parent link exists before the page server starts (CRIU opens it per pagemap)
        server = FakeServer(images_dir, port)
        started.append(server)
        return server

    monkeypatch.setattr(runtime.criu, "start_page_server", start)
    monkeypatch.setattr(runtime.port_guard, "guard_or_warn", lambda port, peers, label="": None)
    return started


def _incoming(tmp_path: Path) -> IncomingMigrations:
    paths = SimpleNamespace(run=tmp_path / "run", tmp=tmp_path / "tmp")
    host = SimpleNamespace(paths=paths)
    return IncomingMigrations(host, None)


def _prepared(incoming: IncomingMigrations, mode: str = "precopy") -> str:
    """A record as prepare() writes it (prepare itself needs a runtime)."""
    mid = "ab" * 8
    incoming.dir.mkdir(parents=True, exist_ok=True)
    incoming._save({"migration_id": mid, "phase": "prepared", "name": "web", "container_id": "c" * 32, "ip": None,
                    "mode": mode, "page_server_address": "10.0.0.2", "source_address": "10.0.0.1"})
    return mid


def test_round_page_servers_are_chained_through_parent_links(tmp_path: Path, servers: list[FakeServer]) -> None:
    incoming = _incoming(tmp_path)
    mid = _prepared(incoming)
    ports = [incoming.start_precopy_round(mid, n) for n in (1, 2, 3)]
    assert len(set(ports)) == 3
    rounds = tmp_path / "tmp" / f"precopy-{mid}"
    assert [s.images_dir for s in servers] == [rounds / "round1", rounds / "round2", rounds / "round3"]
    assert not (rounds / "round1" / "parent").is_symlink()
    assert os.readlink(rounds / "round2" / "parent") == "../round1"
    assert os.readlink(rounds / "round3" / "parent") == "../round2"

    final_port = incoming.start_precopy_round(mid, 4, final=True)
    pages = tmp_path / "tmp" / f"pages-{mid}"
    assert servers[-1].images_dir == pages and final_port == servers[-1].port
    assert os.readlink(pages / "parent") == str((rounds / "round3").resolve())

    # the restore's images dir gets the pages and the absolute link down the chain
    (pages / "pages-1.img").write_bytes(b"p")
    (pages / "pagemap-1.img").write_bytes(b"m")
    images = tmp_path / "restore" / "images"
    images.mkdir(parents=True)
    incoming._collect_pages(mid, images)
    assert (images / "pages-1.img").is_file() and (images / "parent").is_symlink()
    assert (images / "parent").resolve() == (rounds / "round3").resolve()
    assert not pages.exists() and rounds.is_dir()  # the rounds stay until commit or abort


def test_rounds_go_in_order_and_the_final_needs_one(tmp_path: Path, servers: list[FakeServer]) -> None:
    incoming = _incoming(tmp_path)
    mid = _prepared(incoming)
    with pytest.raises(MigrationError, match="expected round 1"):
        incoming.start_precopy_round(mid, 2)
    with pytest.raises(MigrationError, match="after at least one round"):
        incoming.start_precopy_round(mid, 1, final=True)
    incoming.start_precopy_round(mid, 1)
    with pytest.raises(MigrationError, match="expected round 2"):
        incoming.start_precopy_round(mid, 1)


def test_a_cold_migration_gets_no_rounds(tmp_path: Path, servers: list[FakeServer]) -> None:
    incoming = _incoming(tmp_path)
    mid = _prepared(incoming, mode="cold")
    with pytest.raises(MigrationError, match="expected a prepared precopy one"):
        incoming.start_precopy_round(mid, 1)
    assert not servers


def test_a_failed_round_fails_the_next_start_with_its_reason(tmp_path: Path, servers: list[FakeServer]) -> None:
    incoming = _incoming(tmp_path)
    mid = _prepared(incoming)
    incoming.start_precopy_round(mid, 1)
    servers[0].rc = 1
    with pytest.raises(TransferError, match="round 1 .* failed: No space left on device") as info:
        incoming.start_precopy_round(mid, 2)
    assert info.value.phase == "precopy"


def test_a_round_that_never_ends_is_stopped(tmp_path: Path, servers: list[FakeServer], monkeypatch: pytest.MonkeyPatch) -> None:
    import migrate.migration.precopy_target as pt

    monkeypatch.setattr(pt, "ROUND_WAIT_S", 0.01)
    incoming = _incoming(tmp_path)
    mid = _prepared(incoming)
    incoming.start_precopy_round(mid, 1)
    servers[0].rc = None
    with pytest.raises(TransferError, match="did not finish"):
        incoming.start_precopy_round(mid, 2, final=True)
    assert servers[0].stopped


class NoContainers:
    """A runtime where the migrated container was never restored."""

    @staticmethod
    def container(container_id: str) -> Any:
        from runtime.errors import ContainerNotFound

        raise ContainerNotFound(container_id)


def test_abort_stops_the_running_round_and_removes_every_round(tmp_path: Path, servers: list[FakeServer],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import migrate.migration.postcopy

    monkeypatch.setattr(migrate.migration.postcopy, "stop_session", lambda mid: None)
    incoming = _incoming(tmp_path)
    mid = _prepared(incoming)
    incoming.host.rt = NoContainers()
    incoming.start_precopy_round(mid, 1)
    incoming.start_precopy_round(mid, 2)
    servers[1].rc = None  # round 2 still receiving
    incoming.abort(mid)
    assert servers[1].stopped
    assert not (tmp_path / "tmp" / f"precopy-{mid}").exists()
    assert not (incoming.dir / f"{mid}.json").exists()


def test_commit_removes_the_rounds(tmp_path: Path, servers: list[FakeServer], monkeypatch: pytest.MonkeyPatch) -> None:
    import migrate.migration.postcopy

    monkeypatch.setattr(migrate.migration.postcopy, "finish_session", lambda mid: None)
    incoming = _incoming(tmp_path)
    mid = _prepared(incoming)
    incoming.start_precopy_round(mid, 1)
    record = json.loads((incoming.dir / f"{mid}.json").read_text())
    incoming._save({**record, "phase": "restored"})
    incoming.commit(mid)
    assert not (tmp_path / "tmp" / f"precopy-{mid}").exists()


def test_sweep_counts_round_pages_as_progress(tmp_path: Path, servers: list[FakeServer], monkeypatch: pytest.MonkeyPatch) -> None:
    import migrate.migration.target as inc

    incoming = _incoming(tmp_path)
    mid = _prepared(incoming)
    incoming.start_precopy_round(mid, 1)
    now = [1000.0]
    monkeypatch.setattr(inc.time, "monotonic", lambda: now[0])
    aborted: list[str] = []
    monkeypatch.setattr(incoming, "abort", aborted.append)
    incoming._activity[mid] = now[0]
    page_file = tmp_path / "tmp" / f"precopy-{mid}" / "round1" / "pages-1.img"
    for step in range(1, 4):  # pages keep arriving: never stale, though no gRPC byte moves
        now[0] += 20
        page_file.write_bytes(b"x" * step)
        assert incoming.sweep(stale_s=30) == []
    now[0] += 31
    assert incoming.sweep(stale_s=30) == [mid] and aborted == [mid]


def test_reconcile_removes_leftover_rounds(tmp_path: Path) -> None:
    incoming = _incoming(tmp_path)
    leftover = tmp_path / "tmp" / "precopy-0123456789abcdef" / "round1"
    leftover.mkdir(parents=True)
    incoming.reconcile()
    assert not leftover.parent.exists()


# --- target pre-flight ---------------------------------------------------------------------------


def _request(**kw: Any) -> IncomingRequest:
    base = dict(container_name="web", spec={}, image_digest=DIGEST, criu_version="4.1.1", cpu_digest="", ip=None, mode="precopy",
                page_server_address="10.0.0.2")
    return IncomingRequest(**{**base, **kw})


def test_target_preflight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precopy, "local_refusal", lambda: Unsupported("--mode precopy", "the kernel of this host has no soft-dirty"))
    with pytest.raises(Unsupported, match="this host has no soft-dirty"):
        precopy.check_incoming(_request())
    monkeypatch.setattr(precopy, "local_refusal", lambda: None)
    precopy.check_incoming(_request())
    with pytest.raises(Unsupported, match="no CRIU page servers"):
        precopy.check_incoming(_request(), page_servers=False)
    with pytest.raises(IncompatibleHost, match="address its page servers listen on"):
        precopy.check_incoming(_request(page_server_address=None))


# --- the RPC -----------------------------------------------------------------------------------


def test_start_precopy_round_over_grpc(tmp_path: Path) -> None:
    pytest.importorskip("grpc")
    import tempfile

    from migrate.remote.client import RemoteEngine
    from migrate.remote.server import create_server

    seen: list[tuple[str, int, bool, str | None]] = []

    class Engine(FakeEngine):
        def start_precopy_round(self, migration_id: str, round_no: int, final: bool = False, source_address: str | None = None) -> int:
            seen.append((migration_id, round_no, final, source_address))
            if round_no == 9:
                raise TransferError("the page server of pre-copy round 8 failed: no space", phase="precopy")
            return 40000 + round_no

    sockdir = Path(tempfile.mkdtemp(prefix="pm-pre-", dir="/tmp"))
    server, _bound = create_server(Engine(), f"unix:{sockdir}/d.sock", spool_dir=sockdir / "spool")  # type: ignore[arg-type]
    server.start()
    client = RemoteEngine(server.target, insecure=True)
    try:
        assert client.start_precopy_round("ab" * 8, 1) == 40001
        assert client.start_precopy_round("ab" * 8, 3, final=True) == 40003
        with pytest.raises(TransferError, match="round 8 failed"):
            client.start_precopy_round("ab" * 8, 9)
    finally:
        client.close()
        server.stop(0)
        import shutil

        shutil.rmtree(sockdir, ignore_errors=True)
    assert seen[:2] == [("ab" * 8, 1, False, None), ("ab" * 8, 3, True, None)]  # unix peers have no address
