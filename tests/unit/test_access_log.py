"""CallObserver (migrate/remote/access_log.py): one access log line and the metrics of every call.

With fake handlers and a fake context: the code of a returned, aborted, raising, cancelled call;
a Migrate's pause, total and bytes from the result it answered; the peer's identity (TLS CN,
SAN, unix socket). On real sockets (a real mTLS caller is named by its certificate's CN) with FakeEngine: two in-process daemons migrate, the source
counts the migration and its pause, the target the bytes pushed to it; a refused token shows as
UNAUTHENTICATED in the log and the counters.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest

from migrate import api
from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate.remote.access_log import CallObserver, peer_identity
from migrate.errors import AuthError
from migrate.remote.client import RemoteEngine
from migrate.remote.metrics import DaemonMetrics
from migrate.remote.server import create_server
from migrate.remote.tls import TlsConfig
from tests.fakes.certs import TestCA
from tests.fakes.engine import FakeEngine

MIGRATE = "/pymigrate.v1.Host/Migrate"


class FakeContext:
    def __init__(self, peer: str = "ipv4:10.0.0.9:4242", auth: dict[str, list[bytes]] | None = None) -> None:
        self._peer = peer
        self._auth = auth or {}
        self._code: grpc.StatusCode | None = None
        self.callbacks: list[Callable[[], None]] = []

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        raise Exception(details)  # grpc's abort raises a bare Exception too

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self.callbacks.append(callback)
        return True

    def is_active(self) -> bool:
        return True

    def terminate(self) -> None:
        for callback in self.callbacks:
            callback()


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _observe(metrics: DaemonMetrics, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    return CallObserver(metrics).intercept_service(lambda details: handler, Details(method))


def _sample(metrics: DaemonMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _access(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pymigrate.access"]


def test_unary_ok_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = DaemonMetrics()
    handler = _observe(metrics, "/pymigrate.v1.Host/ListContainers",
                       grpc.unary_unary_rpc_method_handler(lambda request, context: "answer"))
    context = FakeContext(auth={"x509_common_name": [b"scheduler-1"]})
    with caplog.at_level(logging.INFO, logger="pymigrate.access"):
        assert handler.unary_unary("request", context) == "answer"
        context.terminate()  # the RPC ends after the handler: no second report
    (line,) = _access(caplog)
    assert (line.peer, line.method, line.code, line.addr) == ("cn:scheduler-1", "/pymigrate.v1.Host/ListContainers", "OK", "ipv4:10.0.0.9:4242")
    assert line.ms >= 0 and "cn:scheduler-1 /pymigrate.v1.Host/ListContainers OK" in line.getMessage()
    labels = {"service": "pymigrate.v1.Host", "method": "ListContainers", "code": "OK"}
    assert _sample(metrics, "pymigrate_rpc_handled_total", **labels) == 1
    assert _sample(metrics, "pymigrate_rpc_duration_seconds_count", **labels) == 1


def test_aborted_and_raising_calls_carry_their_code(caplog: pytest.LogCaptureFixture) -> None:
    metrics = DaemonMetrics()

    def aborts(request: Any, context: FakeContext) -> None:
        context.abort(grpc.StatusCode.NOT_FOUND, "no container web")

    def raises(request: Any, context: FakeContext) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.INFO, logger="pymigrate.access"):
        for behavior in (aborts, raises):
            handler = _observe(metrics, "/pymigrate.v1.Host/InspectContainer", grpc.unary_unary_rpc_method_handler(behavior))
            with pytest.raises(Exception, match="no container web|boom"):
                handler.unary_unary("request", FakeContext())
    assert [r.code for r in _access(caplog)] == ["NOT_FOUND", "UNKNOWN"]
    assert _sample(metrics, "pymigrate_rpc_handled_total", service="pymigrate.v1.Host", method="InspectContainer", code="NOT_FOUND") == 1


def _migrate_answers(frozen_ms: float) -> Callable[[Any, Any], Iterator[pb.MigrateResponse]]:
    def behavior(request: Any, context: Any) -> Iterator[pb.MigrateResponse]:
        yield pb.MigrateResponse(event=pb.MigrationEvent(phase="dump"))
        stats = pb.MigrationStats(frozen_ms=frozen_ms, total_ms=4200.0, bytes_on_wire=12345)
        yield pb.MigrateResponse(result=pb.MigrateResult(container_name="web", mode=pb.MIGRATION_MODE_COLD, stats=stats))

    return behavior


def test_migrate_result_feeds_the_migration_metrics() -> None:
    metrics = DaemonMetrics()
    handler = _observe(metrics, MIGRATE, grpc.unary_stream_rpc_method_handler(_migrate_answers(frozen_ms=321.5)))
    answers = list(handler.unary_stream(pb.MigrateRequest(name="web", dest="b:7443"), FakeContext()))
    assert answers[-1].result.stats.frozen_ms == 321.5
    assert _sample(metrics, "pymigrate_migrations_total", mode="cold", outcome="succeeded") == 1
    assert _sample(metrics, "pymigrate_migration_pause_seconds_count", mode="cold") == 1
    assert _sample(metrics, "pymigrate_migration_pause_seconds_sum", mode="cold") == pytest.approx(0.3215)
    assert _sample(metrics, "pymigrate_migration_duration_seconds_sum", mode="cold") == pytest.approx(4.2)
    assert _sample(metrics, "pymigrate_migration_bytes_total", direction="sent") == 12345


def test_failed_and_abandoned_migrations() -> None:
    metrics = DaemonMetrics()

    def fails(request: Any, context: FakeContext) -> Iterator[pb.MigrateResponse]:
        yield pb.MigrateResponse(event=pb.MigrationEvent(phase="preflight"))
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "incompatible host")

    handler = _observe(metrics, MIGRATE, grpc.unary_stream_rpc_method_handler(fails))
    with pytest.raises(Exception, match="incompatible"):
        list(handler.unary_stream(pb.MigrateRequest(name="web", mode=pb.MIGRATION_MODE_PRECOPY), FakeContext()))
    assert _sample(metrics, "pymigrate_migrations_total", mode="precopy", outcome="failed") == 1

    # the client goes away after the first event: gRPC closes the generator (or runs the callback)
    handler = _observe(metrics, MIGRATE, grpc.unary_stream_rpc_method_handler(_migrate_answers(frozen_ms=1.0)))
    context = FakeContext()
    stream = handler.unary_stream(pb.MigrateRequest(name="web"), context)
    next(stream)
    stream.close()
    context.terminate()
    assert _sample(metrics, "pymigrate_migrations_total", mode="cold", outcome="cancelled") == 1
    assert _sample(metrics, "pymigrate_rpc_handled_total", service="pymigrate.v1.Host", method="Migrate", code="CANCELLED") == 1
    assert _sample(metrics, "pymigrate_migration_pause_seconds_count", mode="cold") == 0


def test_termination_callback_reports_a_call_the_handler_never_finished() -> None:
    metrics = DaemonMetrics()
    handler = _observe(metrics, "/pymigrate.v1.Host/Checkpoint", grpc.unary_stream_rpc_method_handler(
        lambda request, context: iter([pb.CheckpointResponse(), pb.CheckpointResponse()])))
    context = FakeContext()
    stream = handler.unary_stream(pb.CheckpointRequest(name="web"), context)
    next(stream)
    context.terminate()  # the RPC ended; the generator is still open (not yet collected)
    assert _sample(metrics, "pymigrate_checkpoints_total", outcome="cancelled") == 1
    stream.close()  # reported once only
    assert _sample(metrics, "pymigrate_rpc_handled_total", service="pymigrate.v1.Host", method="Checkpoint", code="CANCELLED") == 1


def test_pushed_chunk_bytes_count_as_received() -> None:
    metrics = DaemonMetrics()
    handler = _observe(metrics, "/pymigrate.v1.Host/PushCheckpoint", grpc.stream_unary_rpc_method_handler(
        lambda requests, context: sum(len(r.data) for r in requests)))
    chunks = [pb.PushCheckpointRequest(data=b"x" * 1000), pb.PushCheckpointRequest(data=b"y" * 24)]
    assert handler.stream_unary(iter(chunks), FakeContext()) == 1024
    assert _sample(metrics, "pymigrate_migration_bytes_total", direction="received") == 1024


def test_peer_identity() -> None:
    assert peer_identity(FakeContext(auth={"x509_subject_alternative_name": [b"node-2.example"]})) == "san:node-2.example"
    assert peer_identity(FakeContext(peer="unix:/run/pymigrate.sock")) == f"unix:uid={os.geteuid()}"
    assert peer_identity(FakeContext(peer="ipv6:[::1]:5000")) == "ipv6:[::1]:5000"


# --- real sockets --------------------------------------------------------------------------------


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pm-acc-", dir="/tmp"))  # short: sun_path is 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_two_daemons_migrate_and_count(sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    clients: list[RemoteEngine] = []

    def peer(dest: str) -> RemoteEngine:
        clients.append(RemoteEngine(dest, token="s3cret"))
        return clients[-1]

    source_engine = FakeEngine(hostname="a", peer_factory=peer)
    source_metrics, target_metrics = DaemonMetrics(lambda: source_engine.containers(all=True)), DaemonMetrics()
    source, _ = create_server(source_engine, f"unix:{sockdir}/a.sock", metrics=source_metrics)
    target, _ = create_server(FakeEngine(hostname="b"), f"unix:{sockdir}/b.sock", metrics=target_metrics, token="s3cret")
    source.start()
    target.start()
    try:
        with caplog.at_level(logging.INFO, logger="pymigrate.access"), RemoteEngine(source.target) as client:
            tarball = sockdir / "busybox.tar"
            tarball.write_bytes(os.urandom(100_000))
            client.image_import("busybox", tarball)
            client.run(api.RunOptions(image="busybox", name="web"))
            assert _sample(source_metrics, "pymigrate_containers", state="running") == 1
            result = client.migrate("web", api.MigrateOptions(dest=target.target))
            assert _sample(source_metrics, "pymigrate_containers", state="running") == 0
            with pytest.raises(AuthError), RemoteEngine(target.target) as stranger:  # no token
                stranger.containers()
    finally:
        source.stop(0)
        target.stop(0)
        for c in clients:
            c.close()
    assert _sample(source_metrics, "pymigrate_migrations_total", mode="cold", outcome="succeeded") == 1
    assert _sample(source_metrics, "pymigrate_migration_pause_seconds_count", mode="cold") == 1
    assert _sample(source_metrics, "pymigrate_migration_pause_seconds_sum", mode="cold") == pytest.approx(result.stats.frozen_ms / 1000)
    assert _sample(source_metrics, "pymigrate_migration_bytes_total", direction="sent") == result.stats.bytes_on_wire > 0
    # the image (100 kB) and the checkpoint (64 KiB) were pushed to the target
    assert _sample(target_metrics, "pymigrate_migration_bytes_total", direction="received") >= 100_000 + (64 << 10)
    lines = [(r.peer, r.method.rpartition("/")[2], r.code) for r in _access(caplog)]
    me = f"unix:uid={os.geteuid()}"
    assert (me, "Migrate", "OK") in lines and (me, "PrepareIncoming", "OK") in lines, lines
    assert (me, "ListContainers", "UNAUTHENTICATED") in lines, lines
    assert _sample(target_metrics, "pymigrate_rpc_handled_total", service="pymigrate.v1.Host",
                   method="ListContainers", code="UNAUTHENTICATED") == 1


def test_mtls_caller_is_named_by_its_certificate(sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca = TestCA(sockdir / "pki", "pymigrate test ca")
    daemon, client = ca.issue("daemon", server=True), ca.issue("scheduler-7", server=False)
    server, _ = create_server(FakeEngine(), "127.0.0.1:0", tls=TlsConfig(cert=daemon.cert, key=daemon.key, ca=ca.ca_path))
    server.start()
    try:
        with caplog.at_level(logging.INFO, logger="pymigrate.access"), \
                RemoteEngine(server.target, tls=TlsConfig(cert=client.cert, key=client.key, ca=ca.ca_path)) as remote:
            assert remote.containers() == []
    finally:
        server.stop(0)
    (line,) = [r for r in _access(caplog) if r.method.endswith("/ListContainers")]
    assert line.peer == "cn:scheduler-7" and line.addr.startswith("ipv4:127.0.0.1:") and line.code == "OK"


def test_a_handler_that_returns_after_its_caller_left_is_cancelled() -> None:
    metrics = DaemonMetrics()
    context = FakeContext()
    context.is_active = lambda: False  # type: ignore[method-assign]  # the client cancelled

    def quiet(request: Any, ctx: Any) -> Iterator[pb.MigrateResponse]:
        yield from ()  # as service.py's ErrorInterceptor does for RpcCancelled on a dead call

    handler = _observe(metrics, MIGRATE, grpc.unary_stream_rpc_method_handler(quiet))
    assert list(handler.unary_stream(pb.MigrateRequest(name="web"), context)) == []
    assert _sample(metrics, "pymigrate_migrations_total", mode="cold", outcome="cancelled") == 1
