"""HostServicer + interceptors + RemoteEngine against FakeEngine on real sockets (unix, TCP port 0).

Every RPC round-trips; errors raised in the engine reach the client as the same class with the
same message and data, under the documented status code; streams carry 10 MiB intact; a
cancelled or timed-out stream reaches the engine; health and reflection answer; the unix socket
is 0600; two in-process daemons migrate a container through the daemon-to-daemon RPCs.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from migrate import api
from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate._proto.pymigrate.v1 import host_pb2_grpc as pb_grpc
from migrate.migration.cold_lazy import DEV_FEATURE, binds_dev
from migrate.remote.client import RemoteEngine
from migrate.errors import (
    AuthError,
    ChecksumMismatch,
    CheckpointNotFound,
    IncompatibleHost,
    MigrationTimeout,
    PeerError,
    TransferError,
    UnsafeMember,
)
from migrate.remote.server import DaemonServer, create_server
from runtime.errors import (
    ContainerExists,
    ContainerNotFound,
    CriuError,
    FreezeTimeout,
    ImageNotFound,
    InvalidArgument,
    InvalidState,
    Unsupported,
)
from tests.fakes.engine import FakeEngine


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # Short path: unix socket paths are limited to 107 bytes, pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="pm-svc-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Daemon:
    def __init__(self, engine: FakeEngine, server: DaemonServer, bound: int | str) -> None:
        self.engine = engine
        self.server = server
        self.bound = bound
        self.client = RemoteEngine(server.target, insecure=True)
        self.channel = grpc.insecure_channel(server.target)
        self.stub = pb_grpc.HostStub(self.channel)

    def close(self) -> None:
        self.client.close()
        self.channel.close()
        self.server.stop(0)


def start_daemon(listen: str, engine: FakeEngine | None = None, **kwargs: object) -> Daemon:
    engine = engine or FakeEngine()
    server, bound = create_server(engine, listen, **kwargs)  # type: ignore[arg-type]
    server.start()
    return Daemon(engine, server, bound)


@pytest.fixture
def daemon(sockdir: Path) -> Iterator[Daemon]:
    d = start_daemon(f"unix:{sockdir}/d.sock", spool_dir=sockdir / "spool")
    yield d
    d.close()


def _image(d: Daemon, tmp: Path, name: str = "busybox", size: int = 3_000_001) -> api.ImageInfo:
    tarball = tmp / f"{name}.tar"
    tarball.write_bytes(os.urandom(size))
    return d.client.image_import(name, tarball)


# --- round trips ------------------------------------------------------------------------------------


def test_host_and_images(daemon: Daemon, sockdir: Path) -> None:
    info = _image(daemon, sockdir)
    assert info.size_bytes == 3_000_001 and info.name == "busybox"
    assert daemon.client.images() == [info]
    host = daemon.client.host_info()
    local = daemon.engine.host_info()  # + what the daemon does as a migration target (cold_lazy.binds_dev)
    assert host == dataclasses.replace(local, features={**local.features, DEV_FEATURE: binds_dev()})
    assert host.images == (info,)
    assert not list((sockdir / "spool").iterdir()), "the spooled tarball is removed after import"
    daemon.client.image_remove("busybox")
    assert daemon.client.images() == []
    built = daemon.client.image_build_busybox("bb")
    assert daemon.client.images() == [built] and built.name == "bb"
    daemon.client.image_remove("bb")
    with pytest.raises(ImageNotFound) as exc_info:
        daemon.client.image_remove("busybox")
    assert exc_info.value.hint.startswith("pull, load or import one")


def test_tag_prune_and_what_rm_removed_cross_the_wire(daemon: Daemon, sockdir: Path) -> None:
    info = _image(daemon, sockdir, size=1000)
    tagged = daemon.client.image_tag("busybox", "bb:2")
    assert tagged.name == "bb:2" and tagged.digest == info.digest and tagged in daemon.client.images()
    assert daemon.client.image_tag(info.digest, "bb:3").digest == info.digest
    assert daemon.client.image_remove("busybox") == api.ImageRemoval(untagged=("busybox",))  # still named bb:2, bb:3
    pruned = daemon.client.image_prune(all=True)
    assert pruned == api.ImageRemoval(untagged=("bb:2", "bb:3"), deleted=(info.digest,), bytes_freed=1000)
    assert daemon.client.images() == [] and daemon.client.image_prune() == api.ImageRemoval()
    with pytest.raises(ImageNotFound):
        daemon.client.image_tag("nope", "x")
    assert daemon.engine.calls.count("image_prune") == 2


def test_container_lifecycle(daemon: Daemon, sockdir: Path) -> None:
    _image(daemon, sockdir)
    c = daemon.client
    info = c.run(api.RunOptions(image="busybox", name="web", command=("sleep", "100"), memory_bytes=1 << 20, env=("A=1",)))
    assert info == daemon.engine.inspect("web")
    assert c.inspect("web") == info
    assert c.inspect(info.spec.container_id) == info
    assert [x.spec.name for x in c.containers()] == ["web"]
    assert c.pause("web").state.status == "paused"
    assert c.unpause("web").state.status == "running"
    assert [e.data for e in c.logs("web")] == [b"hello from web\n"]
    assert c.stop("web", timeout_s=1).state.status == "exited"
    assert c.containers() == [] and len(c.containers(all=True)) == 1
    assert c.wait("web") == 143 and c.wait("web", timeout_s=1) == 143
    c.remove("web")
    c.run(api.RunOptions(image="busybox", name="k"))
    with pytest.raises(InvalidState, match="cannot wait for container k: state is running, expected exited"):
        c.wait("k", timeout_s=0.1)
    with pytest.raises(Unsupported, match="runs no containers of its own"):  # the Exec call needs a LocalEngine
        c.exec("k", ("true",))
    c.kill("k", signal=15)
    assert c.inspect("k").state.exit_code == 128 + 15
    c.remove("k", force=True)
    assert c.containers(all=True) == []


def test_checkpoint_restore_and_progress(daemon: Daemon, sockdir: Path) -> None:
    _image(daemon, sockdir)
    daemon.client.run(api.RunOptions(image="busybox", name="web"))
    events: list[api.ProgressEvent] = []
    result = daemon.client.checkpoint("web", api.CheckpointOptions(leave_running=True, level=3), events.append)
    assert [e.phase for e in events] == ["freeze"] * 3 + ["dump"] * 3 + ["archive"] * 3
    assert all(e.operation == "checkpoint" for e in events)
    assert result.stats.frozen_ms == 12.25 and result.export_path is None
    listed = daemon.client.checkpoints()
    assert [x.checkpoint_id for x in listed] == [result.checkpoint_id]
    restored = daemon.client.restore(api.RestoreOptions(checkpoint_id=result.checkpoint_id, name="web2"))
    assert restored.container.spec.name == "web2"
    assert restored.container.state.restored_from == result.checkpoint_id
    manifest = daemon.client.checkpoint_inspect(result.checkpoint_id)
    assert manifest == daemon.engine.checkpoint_inspect(result.checkpoint_id)
    daemon.client.checkpoint_remove(result.checkpoint_id)
    with pytest.raises(CheckpointNotFound, match=f"no such checkpoint: {result.checkpoint_id}"):
        daemon.client.checkpoint_remove(result.checkpoint_id)


def test_checkpoint_export_and_restore_import_use_local_files(daemon: Daemon, sockdir: Path) -> None:
    _image(daemon, sockdir)
    daemon.client.run(api.RunOptions(image="busybox", name="web"))
    daemon.engine.checkpoint_size_bytes = 3 << 20
    archive = sockdir / "web.tar.zst"
    result = daemon.client.checkpoint("web", api.CheckpointOptions(export_path=archive))
    assert result.export_path == str(archive)
    assert archive.read_bytes() == daemon.engine.checkpoint_bytes(result.checkpoint_id)
    assert result.stats.archive_bytes == 3 << 20
    restored = daemon.client.restore(api.RestoreOptions(import_path=archive, name="copy"))
    imported = restored.container.state.restored_from
    assert imported is not None and daemon.engine.checkpoint_bytes(imported) == archive.read_bytes()


def test_ten_mib_upload_and_download_preserve_bytes(daemon: Daemon) -> None:
    data = os.urandom(10 << 20) + b"tail"
    pieces = [data[i : i + 777_777] for i in range(0, len(data), 777_777)]  # not chunk aligned
    info = daemon.client.import_checkpoint(iter(pieces))
    assert info.size_bytes == len(data)
    assert daemon.engine.checkpoint_bytes(info.checkpoint_id) == data
    chunks = list(daemon.client.export_checkpoint(info.checkpoint_id))
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= 1 << 20


def test_migrate_streams_events_and_result(daemon: Daemon, sockdir: Path) -> None:
    _image(daemon, sockdir)
    daemon.client.run(api.RunOptions(image="busybox", name="web"))
    events: list[api.ProgressEvent] = []
    raw = list(daemon.stub.Migrate(pb.MigrateRequest(name="web", dest="unix:/nowhere", mode=pb.MIGRATION_MODE_PRECOPY)))
    assert raw[-1].WhichOneof("kind") == "result" and raw[-1].result.mode == pb.MIGRATION_MODE_PRECOPY
    transfer = [r.event for r in raw[:-1] if r.event.phase == "transfer"]
    assert transfer and transfer[-1].throughput_bytes_per_s > 0
    result = daemon.client.migrate("web", api.MigrateOptions(dest="unix:/nowhere"), events.append)
    assert result.container_name == "web" and result.mode == "cold"
    assert {e.phase for e in events} == {"preflight", "dump", "transfer"}


# --- daemon to daemon ---------------------------------------------------------------------------


def _two_daemons(sockdir: Path) -> tuple[Daemon, Daemon]:
    peers: list[RemoteEngine] = []

    def peer(dest: str) -> RemoteEngine:
        client = RemoteEngine(dest)
        peers.append(client)
        return client

    source = start_daemon(f"unix:{sockdir}/a.sock", FakeEngine(hostname="a", peer_factory=peer))
    target = start_daemon(f"unix:{sockdir}/b.sock", FakeEngine(hostname="b"))
    return source, target


def test_migration_between_two_daemons(sockdir: Path) -> None:
    source, target = _two_daemons(sockdir)
    try:
        image = _image(source, sockdir)
        source.client.run(api.RunOptions(image="busybox", name="web", ip="10.77.0.5"))
        result = source.client.migrate("web", api.MigrateOptions(dest=target.server.target))
        assert result.stats.bytes_on_wire == source.engine.checkpoint_size_bytes
        moved = target.client.inspect("web")
        assert moved.state.status == "running" and moved.spec.ip == "10.77.0.5"
        assert moved.spec.image_digest == image.digest
        with pytest.raises(ContainerNotFound):
            source.client.inspect("web")
        # the image was shipped because the target lacked it
        assert [i.digest for i in target.client.images()] == [image.digest]
        assert list(target.engine.received_image_bytes.values()) == [source.engine._image_data[image.digest]]
        protocol = [c for c in target.engine.calls if c.endswith("_incoming") or c.startswith("receive_")]
        assert protocol == ["prepare_incoming", "receive_image", "receive_checkpoint", "commit_incoming"]
        assert target.engine.incoming == {}
    finally:
        source.close()
        target.close()


def test_failed_target_restore_keeps_the_source_running(sockdir: Path) -> None:
    source, target = _two_daemons(sockdir)
    try:
        _image(source, sockdir)
        source.client.run(api.RunOptions(image="busybox", name="web"))
        target.engine.fail["receive_checkpoint"] = ChecksumMismatch("pages-1.img", "aa", "bb")
        with pytest.raises(ChecksumMismatch) as exc_info:
            source.client.migrate("web", api.MigrateOptions(dest=target.server.target))
        assert exc_info.value.member == "pages-1.img"  # crossed two daemons with its data intact
        assert source.client.inspect("web").state.status == "running"
        assert target.client.containers(all=True) == []
        assert "abort_incoming" in target.engine.calls and target.engine.incoming == {}
    finally:
        source.close()
        target.close()


def test_push_stream_checks_order_crc_and_migration_id(daemon: Daemon) -> None:
    eng = daemon.engine
    eng._images["busybox"] = api.ImageInfo("busybox", "sha256:1", 1, 0.0)
    spec = {"container_id": "a" * 32, "name": "web", "image": "busybox", "image_digest": "sha256:1", "command": ["sh"]}
    ticket = daemon.client.prepare_incoming(api.IncomingRequest("web", spec, "sha256:1", "4.1.1", "", None))
    assert ticket.need_image is False
    mid = ticket.migration_id

    def push(*msgs: pb.PushCheckpointRequest) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as exc_info:
            daemon.stub.PushCheckpoint(iter(msgs))
        return exc_info.value

    err = push(pb.PushCheckpointRequest(migration_id=mid, data=b"a", seq=0), pb.PushCheckpointRequest(migration_id=mid, data=b"b", seq=2))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "chunk 2 arrived, expected chunk 1" in err.details()
    err = push(pb.PushCheckpointRequest(migration_id=mid, data=b"a", seq=0, crc32=1))
    assert err.code() == grpc.StatusCode.DATA_LOSS
    err = push(pb.PushCheckpointRequest(migration_id=mid, data=b"a", seq=0), pb.PushCheckpointRequest(migration_id="other", data=b"b", seq=1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = push()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty stream" in err.details()
    result = daemon.client.receive_checkpoint(mid, iter([b"x" * 10, b"y" * 10]))
    assert result.container.spec.name == "web" and result.stats.archive_bytes == 20
    daemon.client.abort_incoming(mid)
    assert daemon.client.containers(all=True) == []


# --- errors -------------------------------------------------------------------------------------------

ERROR_CASES = [
    (ContainerNotFound("web"), grpc.StatusCode.NOT_FOUND),
    (ImageNotFound("busybox"), grpc.StatusCode.NOT_FOUND),
    (CheckpointNotFound("ck1"), grpc.StatusCode.NOT_FOUND),
    (InvalidState("web", "pause", "paused", ("running", "created")), grpc.StatusCode.FAILED_PRECONDITION),
    (IncompatibleHost("target criu 3.17 is older than 4.0", phase="preflight", hint="upgrade criu"), grpc.StatusCode.FAILED_PRECONDITION),
    (ContainerExists("container name web is already in use", hint="pick another"), grpc.StatusCode.ALREADY_EXISTS),
    (InvalidArgument("invalid memory limit -1"), grpc.StatusCode.INVALID_ARGUMENT),
    (UnsafeMember("../etc/passwd", "escapes the images dir"), grpc.StatusCode.INVALID_ARGUMENT),
    (ChecksumMismatch("pages-1.img", "aa", "bb"), grpc.StatusCode.DATA_LOSS),
    (Unsupported("lazy pages", "the kernel lacks userfaultfd", hint="use cold mode"), grpc.StatusCode.UNIMPLEMENTED),
    (PermissionError(errno.EACCES, "Permission denied", "/var/lib/x"), grpc.StatusCode.PERMISSION_DENIED),
    (MigrationTimeout("migration of web took longer than 30s", phase="transfer"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (FreezeTimeout("/pymigrate/web", "frozen", 5.0), grpc.StatusCode.DEADLINE_EXCEEDED),
    (PeerError("target refused", phase="restore"), grpc.StatusCode.UNAVAILABLE),
    (TransferError("link broke after 3 MiB", phase="transfer"), grpc.StatusCode.UNAVAILABLE),
    (AuthError("token refused by peer"), grpc.StatusCode.UNAUTHENTICATED),
    (OSError(errno.ENOSPC, "No space left on device"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (
        CriuError("dump", "task 42 has a vma we cannot dump", errno=5, log_path=Path("/r/dump.log"), log_lines=("Error (a)", "Error (b)")),
        grpc.StatusCode.INTERNAL,
    ),
]


def _public(exc: BaseException) -> dict[str, object]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(exc).items()}


@pytest.mark.parametrize("exc, code", ERROR_CASES, ids=[type(e).__name__ for e, _ in ERROR_CASES])
def test_errors_map_to_status_and_back(daemon: Daemon, exc: BaseException, code: grpc.StatusCode) -> None:
    daemon.engine.fail["inspect"] = exc
    with pytest.raises(grpc.RpcError) as raw:
        daemon.stub.InspectContainer(pb.InspectContainerRequest(name="web"))
    assert raw.value.code() == code
    assert dict(raw.value.trailing_metadata())["pymigrate-error-type"] == type(exc).__name__

    daemon.engine.fail["inspect"] = exc
    with pytest.raises(type(exc)) as got:
        daemon.client.inspect("web")
    assert type(got.value) is type(exc)
    assert str(got.value) == str(exc)
    assert getattr(got.value, "hint", None) == getattr(exc, "hint", None)
    assert getattr(got.value, "phase", None) == getattr(exc, "phase", None)
    if not isinstance(exc, OSError):
        assert _public(got.value) == _public(exc)
    else:
        assert (got.value.errno, got.value.strerror) == (exc.errno, exc.strerror)


def test_errors_in_streams_map_back_too(daemon: Daemon, sockdir: Path) -> None:
    daemon.engine.fail["checkpoint"] = InvalidState("web", "checkpoint", "paused", "running")
    with pytest.raises(InvalidState, match="cannot checkpoint container web: state is paused, expected running"):
        daemon.client.checkpoint("web", api.CheckpointOptions())
    daemon.engine.fail["import_checkpoint"] = UnsafeMember("/abs", "absolute path")
    with pytest.raises(UnsafeMember, match="refusing archive member '/abs': absolute path"):
        daemon.client.import_checkpoint(iter([b"x" * 100]))
    daemon.engine.fail["migrate"] = IncompatibleHost("cpu features differ", phase="preflight")
    with pytest.raises(IncompatibleHost) as exc_info:
        daemon.client.migrate("web", api.MigrateOptions(dest="unix:/x"))
    assert str(exc_info.value) == "cpu features differ (phase: preflight)"
    with pytest.raises(CheckpointNotFound):
        list(daemon.client.export_checkpoint("nope"))


def test_unexpected_errors_leak_nothing(daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    daemon.engine.fail["inspect"] = RuntimeError("secret detail /etc/shadow")
    with caplog.at_level(logging.ERROR, logger="migrate.remote.service"):
        with pytest.raises(grpc.RpcError) as raw:
            daemon.stub.InspectContainer(pb.InspectContainerRequest(name="web"))
    assert raw.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in raw.value.details() and "incident" in raw.value.details()
    assert "pymigrate-error-type" not in dict(raw.value.trailing_metadata())
    assert "secret detail" in caplog.text  # the traceback stays in the daemon's log
    daemon.engine.fail["inspect"] = RuntimeError("secret detail")
    with pytest.raises(PeerError, match="failed: internal: internal error in the pymigrate daemon") as exc_info:
        daemon.client.inspect("web")
    assert "secret" not in str(exc_info.value)


def test_a_client_side_iterator_error_is_raised_as_is(daemon: Daemon) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"x" * 10
        raise TransferError("the dump broke", phase="dump")

    logging.getLogger("grpc._channel").disabled = True  # it logs the iterator's exception
    try:
        with pytest.raises(TransferError, match="the dump broke"):
            daemon.client.import_checkpoint(chunks())
    finally:
        logging.getLogger("grpc._channel").disabled = False


def test_not_implemented_engine_methods_are_unimplemented(daemon: Daemon) -> None:
    daemon.engine.fail["host_info"] = NotImplementedError("wired later")
    with pytest.raises(Unsupported, match="GetHostInfo is not supported here: the daemon at .* does not implement it"):
        daemon.client.host_info()


def test_engine_without_target_methods_is_unimplemented(sockdir: Path) -> None:
    class Minimal(FakeEngine):
        export_checkpoint = None  # type: ignore[assignment]

    d = start_daemon(f"unix:{sockdir}/m.sock", Minimal())
    try:
        with pytest.raises(Unsupported, match="export_checkpoint is not supported here"):
            list(d.client.export_checkpoint("x"))
    finally:
        d.close()


# --- cancellation and deadlines ------------------------------------------------------------------------


def test_cancelling_a_stream_reaches_the_engine(daemon: Daemon, sockdir: Path) -> None:
    _image(daemon, sockdir)
    daemon.client.run(api.RunOptions(image="busybox", name="web"))
    daemon.engine.checkpoint_steps, daemon.engine.step_delay_s = 100, 0.05

    class Stop(Exception):
        pass

    def progress(event: api.ProgressEvent) -> None:
        raise Stop  # the caller gives up (Ctrl-C in the CLI): the call is cancelled

    with pytest.raises(Stop):
        daemon.client.checkpoint("web", api.CheckpointOptions(), progress)
    assert daemon.engine.cancelled.wait(5.0), "the engine never saw the cancellation"
    assert daemon.client.checkpoints() == [], "the cancelled checkpoint must not complete"


def test_progress_raises_once_and_never_past_the_point_of_no_return() -> None:
    from migrate.remote.service import CallProgress, RpcCancelled

    progress = CallProgress("migrate")
    progress(api.ProgressEvent("migrate", "dump"))
    progress.cancelled.set()
    with pytest.raises(RpcCancelled, match="migrate was cancelled by the caller"):
        progress(api.ProgressEvent("migrate", "dump"))
    progress(api.ProgressEvent("migrate", "rollback"))  # rollback reporting is not interrupted

    late = CallProgress("migrate")
    late(api.ProgressEvent("migrate", "commit"))  # the container runs on the target
    late.cancelled.set()
    late(api.ProgressEvent("migrate", "done"))
    late(api.ProgressEvent("migrate", "done"))


def test_a_deadline_reaches_the_engine(daemon: Daemon, sockdir: Path) -> None:
    _image(daemon, sockdir)
    daemon.client.run(api.RunOptions(image="busybox", name="web"))
    daemon.engine.checkpoint_steps, daemon.engine.step_delay_s = 100, 0.05
    with pytest.raises(grpc.RpcError) as raw:
        list(daemon.stub.Migrate(pb.MigrateRequest(name="web", dest="unix:/x"), timeout=0.3))
    assert raw.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert daemon.engine.cancelled.wait(5.0)


def test_following_logs_stops_when_the_client_goes(daemon: Daemon, sockdir: Path) -> None:
    _image(daemon, sockdir)
    daemon.client.run(api.RunOptions(image="busybox", name="web"))
    logs = daemon.client.logs("web", follow=True)
    assert next(logs).data == b"hello from web\n"
    logs.close()
    started = time.monotonic()
    daemon.server.stop(5.0)  # would wait the whole grace if the follower still ran
    assert time.monotonic() - started < 3.0


def test_graceful_stop_lets_in_flight_calls_finish(daemon: Daemon, sockdir: Path) -> None:
    _image(daemon, sockdir)
    daemon.client.run(api.RunOptions(image="busybox", name="web"))
    daemon.engine.checkpoint_steps, daemon.engine.step_delay_s = 5, 0.05
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(daemon.client.checkpoint("web", api.CheckpointOptions())))
    worker.start()
    time.sleep(0.2)
    daemon.server.stop(grace_s=10.0)
    worker.join(10)
    assert len(results) == 1 and isinstance(results[0], api.CheckpointResult)
    assert not Path(daemon.bound).exists(), "stop removes the socket"
    with pytest.raises(TransferError, match="is unreachable"):
        daemon.client.host_info()


def test_stop_after_grace_cancels_and_rolls_back(daemon: Daemon, sockdir: Path) -> None:
    _image(daemon, sockdir)
    daemon.client.run(api.RunOptions(image="busybox", name="web"))
    daemon.engine.checkpoint_steps, daemon.engine.step_delay_s = 200, 0.05
    errors: list[BaseException] = []

    def call() -> None:
        try:
            daemon.client.checkpoint("web", api.CheckpointOptions())
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.2)
    daemon.server.stop(grace_s=0.2)
    worker.join(10)
    assert daemon.engine.cancelled.is_set()
    assert len(errors) == 1 and isinstance(errors[0], (TransferError, PeerError))


# --- health, reflection, socket -------------------------------------------------------------------------


def test_health_and_reflection(daemon: Daemon) -> None:
    health = health_pb2_grpc.HealthStub(daemon.channel)
    for service in ("", "pymigrate.v1.Host"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(daemon.channel)
    replies = list(
        reflect.ServerReflectionInfo(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="pymigrate.v1.Host"),
                ]
            ),
            timeout=5,
        )
    )
    services = {s.name for s in replies[0].list_services_response.service}
    assert {"pymigrate.v1.Host", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    assert replies[1].file_descriptor_response.file_descriptor_proto


def test_unix_socket_is_0600_and_stale_sockets_are_replaced(sockdir: Path) -> None:
    path = sockdir / "run" / "pymigrate.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a dead daemon's socket: nobody accepts on it
    d = start_daemon(f"unix:{path}")
    try:
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert d.bound == str(path)
        assert d.client.host_info().hostname == "fake-host"
        with pytest.raises(InvalidArgument, match="another daemon is listening there"):
            create_server(FakeEngine(), f"unix:{path}")
    finally:
        d.close()
    assert not path.exists()


def test_tcp_insecure_port_zero(sockdir: Path) -> None:
    d = start_daemon("127.0.0.1:0", insecure=True)
    try:
        assert isinstance(d.bound, int) and d.bound > 0
        assert d.server.target == f"127.0.0.1:{d.bound}"
        assert RemoteEngine(d.server.target, insecure=True).host_info().hostname == "fake-host"
    finally:
        d.close()


def test_tcp_without_tls_needs_explicit_insecure() -> None:
    with pytest.raises(InvalidArgument, match="refusing to listen on 127.0.0.1:0 without tls") as exc_info:
        create_server(FakeEngine(), "127.0.0.1:0")
    assert "--insecure" in (exc_info.value.hint or "")


@pytest.mark.parametrize(
    "peer, ip",
    [("ipv4:10.251.0.2:51234", "10.251.0.2"), ("ipv6:[::1]:51234", "::1"), ("ipv6:[fe80::1%eth0]:7", "fe80::1"), ("unix:/run/x.sock", None), ("", None)],
)
def test_peer_ip_of_a_grpc_peer(peer: str, ip: str | None) -> None:
    from migrate.remote.service import _peer_ip

    assert _peer_ip(peer) == ip
