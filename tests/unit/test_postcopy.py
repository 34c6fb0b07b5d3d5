"""Post-copy: mode choice, addresses, /proc/net parsing, and the source-side driver with fakes
(success, rollback before the point of no return, ContainerLost after it)."""

from __future__ import annotations

import dataclasses
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fakes.flat_images import FlatImages

from migrate.migration import driver, postcopy, sequence
from migrate.api import HostInfo, IncomingTicket, MigrateOptions, RestoreResult, RestoreStats
from migrate.errors import ContainerLost, IncompatibleHost, TransferError
from runtime.checkpointing import DumpTarget, NetworkCut
from runtime.criu import DumpRequest, DumpStats
from runtime.errors import CriuError, Unsupported
from runtime.spec import ContainerInfo, ContainerSpec, ContainerState

LAZY = {"lazy_pages": True}
NO_LAZY = {"lazy_pages": False}


# --- mode choice -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "local", "remote", "chosen"),
    [
        ("auto", LAZY, LAZY, "postcopy"),
        ("auto", LAZY, NO_LAZY, "cold"),
        ("auto", NO_LAZY, LAZY, "cold"),
        ("cold", NO_LAZY, NO_LAZY, "cold"),
        ("postcopy", LAZY, LAZY, "postcopy"),
    ],
)
def test_choose_mode(mode: str, local: dict, remote: dict, chosen: str) -> None:
    assert driver.choose_mode(MigrateOptions(dest="t:1", mode=mode), local, remote) == chosen  # type: ignore[arg-type]


def test_postcopy_refused_without_lazy_pages() -> None:
    with pytest.raises(Unsupported, match="this host cannot serve lazy pages"):
        driver.choose_mode(MigrateOptions(dest="t:1", mode="postcopy"), NO_LAZY, LAZY)
    with pytest.raises(IncompatibleHost, match="the target t:1 cannot restore with lazy pages"):
        driver.choose_mode(MigrateOptions(dest="t:1", mode="postcopy"), LAZY, NO_LAZY)


def test_a_userns_container_needs_unprivileged_userfaultfd_on_the_target() -> None:
    lazy_userns = {"lazy_pages": True, "lazy_pages_userns": True}
    auto = MigrateOptions(dest="t:1", mode="auto")
    assert driver.choose_mode(auto, LAZY, lazy_userns, userns=True) == "postcopy"
    assert driver.choose_mode(auto, LAZY, LAZY, userns=True) == "cold"  # falls back before anything froze
    assert driver.choose_mode(auto, LAZY, LAZY, userns=False) == "postcopy"
    with pytest.raises(IncompatibleHost, match="unprivileged_userfaultfd") as err:
        driver.choose_mode(MigrateOptions(dest="t:1", mode="postcopy"), LAZY, LAZY, userns=True)
    assert "--mode cold" in (err.value.hint or "")


# --- addresses and /proc/net -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dest", "address"),
    [("unix:/run/x.sock", "127.0.0.1"), ("127.0.0.1:7070", "127.0.0.1"), ("ssh://root@127.0.0.1:22", "127.0.0.1"), ("localhost:1", "127.0.0.1")],
)
def test_page_server_address(dest: str, address: str) -> None:
    assert postcopy.page_server_address(dest) == address


def test_page_server_address_unresolvable() -> None:
    with pytest.raises(TransferError, match="cannot resolve the target host"):
        postcopy.page_server_address("no-such-host.invalid:7070")


def test_connected_from_the_real_proc_net() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        server.listen()
        assert not postcopy.is_connected("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port)):
            conn, _ = server.accept()
            with conn:
                assert postcopy.is_connected("127.0.0.1", port)
    assert postcopy.free_port() > 0


def test_proc_net_parsing(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        "   0: 00000000:A90B 00000000:0000 0A 00000000:00000000\n"  # *:43275 LISTEN
        "   1: 0300FB0A:D004 0200FB0A:A90B 01 00000000:00000000\n"  # 10.251.0.3 -> 10.251.0.2:43275 ESTABLISHED
    )
    assert postcopy.is_connected("10.251.0.2", 43275, tmp_path)
    assert not postcopy.is_connected("10.251.0.3", 43275, tmp_path)


# --- the source-side driver with fakes ---------------------------------------------------------


SPEC = ContainerSpec(container_id="c" * 32, name="web", image="busybox", image_digest="sha256:" + "0" * 64,
                     command=("sleep", "1"), network="none")


class FakeLazyCriu:
    """A lazy dump: writes images, sends post-dump, then 'serves pages' until ``served`` is set."""

    def __init__(self, fail_after_resume: bool = False) -> None:
        self.served = threading.Event()
        self.fail_after_resume = fail_after_resume
        self.requests: list[DumpRequest] = []

    def version(self) -> str:
        return "4.1.1"

    def warm(self) -> None:
        pass

    def dump(self, request: DumpRequest, *, on_notify: Any = None) -> DumpStats:
        self.requests.append(request)
        (request.images_dir / "inventory.img").write_bytes(b"inv")
        (request.images_dir / "pagemap-1.img").write_bytes(b"")
        (request.images_dir / "dump.log").write_text("(00.1) Error (criu/page-xfer.c:1): Can't read pagemap from socket\n")
        assert on_notify is not None
        on_notify("post-dump", 1)
        on_notify("network-unlock", 1)
        on_notify("status-ready", 1)
        if not self.served.wait(10):
            raise AssertionError("nobody ended the fake page transfer")
        if self.fail_after_resume:
            raise CriuError("dump", "page-xfer: Can't read pagemap from socket: Connection reset by peer")
        return DumpStats()


class FakeStore:
    def __init__(self) -> None:
        self.state = ContainerState(status="running", pid=1)

    def update_state(self, cid: str, fn: Any) -> None:
        self.state = fn(self.state)


class FakeHost:
    def __init__(self, tmp: Path, upper: Path) -> None:
        self.paths = type("P", (), {"tmp": tmp / "tmp", "root": tmp, "run": tmp / "run"})()
        self.store = FakeStore()
        self.images = FlatImages()
        self.upper = upper
        self.events: list[str] = []
        self.container = type("C", (), {"status": "running", "spec": SPEC, "container_id": SPEC.container_id})()

    def get(self, name: str) -> Any:
        return self.container

    def host_veth(self, spec: Any) -> str | None:  # as runtime.checkpointing.CheckpointHost
        from runtime.network import host_veth_name

        return host_veth_name(self.paths.root, spec.container_id) if spec.network == "bridge" else None

    def dump_target(self, c: Any) -> DumpTarget:
        return DumpTarget(spec=SPEC, init_pid=1, upper_dir=self.upper, netns_path=None, freeze_cgroup=None)

    def cpu_digest(self) -> str:
        return "cpu"

    def network_lock(self) -> str:
        return "nftables"

    def isolate(self, spec: Any) -> NetworkCut:
        self.events.append("isolate")
        return NetworkCut(criu_lock="skip", veth=None)

    def rejoin(self, cut: Any) -> None:
        self.events.append("rejoin")

    def freeze(self, c: Any) -> None:
        self.events.append("freeze")

    def thaw(self, c: Any) -> None:
        self.events.append("thaw")

    def finish_migration(self, c: Any, *, keep: bool) -> None:
        self.events.append("finish")


class FakeGuard:
    made: list["FakeGuard"] = []

    def __init__(self, port: int, allowed: list[str]) -> None:
        self.port, self.allowed, self.removed = port, allowed, False
        FakeGuard.made.append(self)

    def remove(self) -> None:
        self.removed = True


class FakeTarget:
    def __init__(self, criu: FakeLazyCriu, *, fail_restore: bool = False, lost_at_commit: bool = False,
                 answer_lost: bool = False) -> None:
        self.criu = criu
        self.answer_lost = answer_lost
        self.fail_restore = fail_restore
        self.lost_at_commit = lost_at_commit
        self.events: list[str] = []
        self.received = 0

    def host_info(self) -> HostInfo:
        return HostInfo(version="1", hostname="t", kernel="6.18", criu_version="4.1.1", features=dict(LAZY),
                        cgroup_mode="v2", cpu_digest="cpu")

    def prepare_incoming(self, request: Any) -> IncomingTicket:
        assert request.mode == "postcopy"
        self.events.append("prepare")
        return IncomingTicket(migration_id="ab" * 8, need_image=False)

    def receive_checkpoint(self, migration_id: str, chunks: Iterator[bytes]) -> RestoreResult:
        self.received = sum(len(c) for c in chunks)
        self.events.append("restore")
        if self.fail_restore:
            raise TransferError("the lazy-pages daemon could not serve the restore")
        threading.Timer(0.05, self.criu.served.set).start()  # the background transfer ends later
        if self.answer_lost:  # restored here; the answer never reaches the source
            raise TransferError("the daemon at t:1 is unreachable: Stream removed")
        info = ContainerInfo(spec=SPEC, state=ContainerState(status="running", pid=2))
        return RestoreResult(container=info, stats=RestoreStats(import_ms=1.0, restore_ms=2.0, images_bytes=3))

    def abort_incoming(self, migration_id: str) -> None:
        self.events.append("abort")

    def settle_migration(self, migration_id: str, container_id: str = "", ask_source: bool = False) -> Any:
        from migrate.api import Settlement

        self.events.append("settle")  # a failed restore aborted itself (migrate.migration.target)
        return Settlement(migration_id, "aborted" if self.fail_restore else "committed", not self.fail_restore)

    def commit_incoming(self, migration_id: str) -> None:
        self.events.append("commit")
        if self.lost_at_commit:
            raise ContainerLost("container lost on this host: its lazy-pages daemon failed", source_copy="unknown")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeHost, Path]:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "file").write_text("hello")
    monkeypatch.setattr(postcopy, "page_server_address", lambda dest: "127.0.0.1")
    monkeypatch.setattr(postcopy, "peer_address", lambda dest: "10.0.0.9")
    monkeypatch.setattr("runtime.port_guard.guard_or_warn", lambda port, allowed, label: FakeGuard(port, allowed))
    monkeypatch.setattr(postcopy, "poke_page_server", lambda port, address="127.0.0.1": None)
    monkeypatch.setattr(sequence, "cpuinfo_dump", lambda images_dir: None)
    monkeypatch.setattr(postcopy, "_keep_log", lambda host, path: None)
    return FakeHost(tmp_path, upper), tmp_path


def _migrate(host: FakeHost, criu: FakeLazyCriu, target: FakeTarget) -> Any:
    return postcopy.migrate_postcopy(host, "web", MigrateOptions(dest="t:1", mode="postcopy"), target, criu=criu)


def test_success_commits_after_the_last_page(world: tuple[FakeHost, Path]) -> None:
    host, tmp = world
    criu = FakeLazyCriu()
    target = FakeTarget(criu)
    result = _migrate(host, criu, target)
    assert target.events == ["prepare", "restore", "commit"]
    assert host.events == ["freeze", "isolate", "finish"]
    req = criu.requests[0]
    assert req.network_lock == "skip"  # the link cut by isolate is the lock
    assert req.lazy_pages and req.leave_running and req.page_server is not None and req.page_server.address == "127.0.0.1"
    assert result.mode == "postcopy"
    assert result.stats.frozen_ms > 0 and result.stats.phases_ms["last_page"] >= 40
    assert result.stats.phases_ms["target_restore"] == 2.0
    assert target.received > 0 and result.stats.bytes_on_wire >= target.received
    assert not (tmp / "tmp" / f"migrate-{'ab' * 8}").exists()
    assert not list((tmp / "run" / "outgoing").glob("*.json"))  # the record went with the migration
    guard = FakeGuard.made[-1]  # plain TCP: only the target may reach CRIU's page server, and only meanwhile
    assert guard.port == req.page_server.port and guard.allowed == ["10.0.0.9"] and guard.removed


def test_restore_failure_rolls_back(world: tuple[FakeHost, Path]) -> None:
    host, _ = world
    criu = FakeLazyCriu()
    target = FakeTarget(criu, fail_restore=True)
    threading.Timer(0.2, criu.served.set).start()  # what the poke does to CRIU: the dump ends
    with pytest.raises(TransferError, match="lazy-pages daemon"):
        _migrate(host, criu, target)
    # the whole archive went out: the copy here thaws only once the target said it aborted
    assert target.events == ["prepare", "restore", "settle"]
    assert host.events == ["freeze", "isolate", "rejoin", "thaw"]
    assert host.store.state.status == "running"
    assert not list((host.paths.run / "outgoing").glob("*.json"))


@pytest.mark.parametrize("where", ["dump", "commit"])
def test_failure_after_the_resume_is_container_lost(world: tuple[FakeHost, Path], where: str) -> None:
    host, _ = world
    criu = FakeLazyCriu(fail_after_resume=where == "dump")
    target = FakeTarget(criu, lost_at_commit=where == "commit")
    with pytest.raises(ContainerLost) as info:
        _migrate(host, criu, target)
    err = info.value
    assert "container web is lost" in err.message and err.phase == "lazy" and err.source_copy == "frozen"
    assert err.hint and "pymigrate unpause web" in err.hint
    assert target.events[-1] == "abort"
    assert "finish" not in host.events and "thaw" not in host.events  # the frozen copy is kept as is
    assert host.store.state.status == "paused"


def test_container_lost_crosses_grpc() -> None:
    grpc = pytest.importorskip("grpc")
    from migrate.remote._rpc_errors import decode, encode

    code, details, metadata = encode(ContainerLost("container web is lost", phase="lazy", hint="unpause", source_copy="frozen"))
    assert code == grpc.StatusCode.DATA_LOSS
    back = decode(code, details, metadata, "t:1")
    assert isinstance(back, ContainerLost) and back.source_copy == "frozen" and back.phase == "lazy" and back.hint == "unpause"


def test_dispatch_refuses_precopy_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import migrate.migration.precopy as precopy

    monkeypatch.setattr(precopy, "local_refusal", lambda: Unsupported("--mode precopy", "no soft-dirty here"))
    with pytest.raises(Unsupported, match="no soft-dirty here"):
        driver.dispatch(None, "web", MigrateOptions(dest="t:1", mode="precopy"), None)
    assert driver.dispatch(None, "web", MigrateOptions(dest="t:1", mode="cold"), None) is None


def test_lazy_page_count_reads_pagemaps(tmp_path: Path) -> None:
    pb = pytest.importorskip("pycriu.images.pagemap_pb2")
    magic = pytest.importorskip("pycriu.images.magic")
    import struct

    def entry(msg: Any) -> bytes:
        data = msg.SerializeToString()
        return struct.pack("<I", len(data)) + data

    head = pb.pagemap_head(pages_id=1)
    entries = [
        pb.pagemap_entry(vaddr=0x1000, nr_pages=3, flags=postcopy.PE_PRESENT),
        pb.pagemap_entry(vaddr=0x8000, nr_pages=100, flags=postcopy.PE_LAZY),
        pb.pagemap_entry(vaddr=0x90000, nr_pages=7, flags=postcopy.PE_LAZY | postcopy.PE_PRESENT),
    ]
    blob = struct.pack("<II", magic.by_name["IMG_COMMON"], magic.by_name["PAGEMAP"]) + entry(head) + b"".join(map(entry, entries))
    (tmp_path / "pagemap-1.img").write_bytes(blob)
    assert postcopy.lazy_page_count(tmp_path) == 100


def test_a_lost_answer_settles_and_the_lazy_dump_serves_on(world: tuple[FakeHost, Path]) -> None:
    host, _ = world
    criu = FakeLazyCriu()
    target = FakeTarget(criu, answer_lost=True)
    result = _migrate(host, criu, target)
    assert result.mode == "postcopy"
    assert target.events == ["prepare", "restore", "settle"]  # no abort: the target runs it
    assert "thaw" not in host.events and host.events[-1] == "finish"
    assert not list((host.paths.run / "outgoing").glob("*.json"))


# --- the target's lazy-pages daemon, started while the images are checked -----------------------


def test_lazy_start_hands_over_the_daemon_once_started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import runtime.criu

    daemon = object()
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(runtime.criu, "start_lazy_pages", lambda *args, **kw: calls.append((*args, kw)) or daemon)
    start = postcopy._LazyStart(tmp_path / "images", tmp_path / "work", runtime.criu.PageServer("10.0.0.1", 4321), None)
    start.start()
    assert start.ready() is daemon
    assert start.taken() is daemon
    assert calls == [(tmp_path / "images", tmp_path / "work", runtime.criu.PageServer("10.0.0.1", 4321), {"tls": None})]


def test_lazy_start_raises_its_error_at_ready_and_hands_over_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import runtime.criu

    def fail(*args: Any, **kw: Any) -> Any:
        raise CriuError("lazy-pages", "cannot read pstree.img")

    monkeypatch.setattr(runtime.criu, "start_lazy_pages", fail)
    start = postcopy._LazyStart(tmp_path, tmp_path, runtime.criu.PageServer("10.0.0.1", 4321), None)
    start.start()
    with pytest.raises(CriuError, match="pstree"):
        start.ready()
    assert start.taken() is None  # nothing for the caller to stop


@pytest.mark.parametrize("target_binds", [True, False])
def test_dev_externals_only_for_a_target_that_binds_them(world: tuple[FakeHost, Path], monkeypatch: pytest.MonkeyPatch,
                                                          target_binds: bool) -> None:
    # an older target (no postcopy_dev_external) would fail a restore whose dump declared /dev external
    host, _ = world
    monkeypatch.setattr("runtime.dev_mounts.dump_externals", lambda pid, spec: ("mnt[/dev]:dev", "mnt[/dev/shm]:shm"))
    criu = FakeLazyCriu()
    target = FakeTarget(criu)
    info = target.host_info()
    features = {**info.features, "postcopy_dev_external": target_binds}
    monkeypatch.setattr(target, "host_info", lambda: dataclasses.replace(info, features=features))
    _migrate(host, criu, target)
    declared = [e for e in criu.requests[0].external if e.startswith("mnt[/dev")]
    assert declared == (["mnt[/dev]:dev", "mnt[/dev/shm]:shm"] if target_binds else [])
