"""The daemon's gRPC server: listen address, transport security, auth, health, reflection, stop.

``create_server(engine, listen, ...)`` builds and binds a server for ``HostServicer`` and returns
it with its bound port (TCP) or socket path (unix); ``start()`` serves and ``stop(grace_s)`` stops
gracefully. Serving and stopping are separate so tests bind port 0 and the daemon can stop on a
signal.

Security rules:
- ``unix:PATH`` (the default, ROOT/run/pymigrate.sock) is bound under umask 0177 and chmod 0600
  afterwards: only root (the socket's owner) can connect. A stale socket left by a dead daemon
  is replaced; a live one (something accepts connections) is an error.
- ``HOST:PORT`` requires mutual TLS: the daemon's cert and key, and the CA every client
  certificate must chain to (``require_client_auth``). Plain TCP needs an explicit
  ``insecure=True``, logged as a warning.
- A bearer token, when given, is required on every RPC except health (``TokenAuthInterceptor``).
- The standard health service (grpc.health.v1) and server reflection are registered, so
  ``grpcurl`` and load balancers work.

Stop: health flips to NOT_SERVING, new calls are refused, in-flight calls get ``grace_s`` to
finish; after that gRPC cancels them, which reaches the engine as a cancellation (see
migrate/remote/service.py) and the engine rolls back; ``stop`` waits for those handlers and workers.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from migrate import api
from migrate._proto.pymigrate.v1 import host_pb2_grpc as pb_grpc
from migrate.remote import reflection_v1
from migrate.remote.access_log import CallObserver
from migrate.remote.listen_address import UNIX_PATH_MAX, ListenAddress, parse_listen  # noqa: F401 (callers import them from here)
from migrate.remote import sd_notify
from migrate.remote.service import SERVICE_NAME, ErrorInterceptor, HostServicer, TokenAuthInterceptor
from migrate.remote.tls import TlsConfig
from runtime.config import Paths
from runtime.errors import InvalidArgument

if TYPE_CHECKING:  # prometheus_client (~80 ms) only when the daemon serves metrics
    from migrate.remote.metrics import DaemonMetrics

log = logging.getLogger(__name__)

SOCKET_NAME = "pymigrate.sock"
MAX_MESSAGE_BYTES = 16 << 20  # chunks are ~1 MiB; leave room for large listings

# Server-side keepalive: ping idle peers so a cut link is noticed during long streams, and let
# clients ping us every 5 s without being told "too many pings".
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_metadata_size", 64 << 10),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
)


def default_listen(root: Path) -> str:
    """The default listen address for a state root: ``unix:ROOT/run/pymigrate.sock``."""
    return f"unix:{Paths(root).run / SOCKET_NAME}"


class DaemonServer:
    """A bound, not yet started gRPC server for one engine."""

    def __init__(
        self,
        server: grpc.Server,
        executor: futures.ThreadPoolExecutor,
        health_servicer: health.HealthServicer,
        address: ListenAddress,
        bound: int | str,
    ) -> None:
        self.grpc_server = server
        self._executor = executor
        self._health = health_servicer
        self.address = address
        self.bound = bound
        self._socket_ino: int | None = None
        if address.kind == "unix" and address.path is not None:
            self._socket_ino = address.path.stat().st_ino
        self._stopped = threading.Event()

    @property
    def target(self) -> str:
        """An address a client on this machine can dial (``unix:PATH`` or ``HOST:PORT``)."""
        if self.address.kind == "unix":
            return f"unix:{self.address.path}"
        host = self.address.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.bound}"

    def start(self) -> None:
        self.grpc_server.start()
        for service in ("", SERVICE_NAME):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving pymigrate.v1 on %s", self.target)
        sd_notify.ready(f"serving pymigrate.v1 on {self.target}")  # under systemd (Type=notify): started

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting calls; give in-flight calls ``grace_s`` seconds, then cancel them.

        Returns once every handler has returned (cancelled engine calls have rolled back), or
        after ``grace_s`` + 60 s at most.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("stopping: in-flight calls have %.1fs to finish", grace_s)
        sd_notify.stopping(f"stopping: in-flight calls have {grace_s:.0f}s to finish")
        self._health.enter_graceful_shutdown()
        self.grpc_server.stop(grace_s).wait()
        # Handlers still running (cancelled streams unwinding, engine rollback) finish here.
        waiter = threading.Thread(target=self._executor.shutdown, kwargs={"wait": True}, daemon=True)
        waiter.start()
        waiter.join(60.0)
        if waiter.is_alive():
            log.warning("stopped with handlers still running after %.1fs", grace_s + 60.0)
        self._remove_socket()
        log.info("stopped")

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops; False if ``timeout_s`` passed first."""
        timed_out = self.grpc_server.wait_for_termination(timeout_s)
        return not timed_out

    def _remove_socket(self) -> None:
        path = self.address.path
        if path is None:
            return
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        # Only remove our own socket, not one a newer daemon bound in the meantime.
        if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._socket_ino:
            path.unlink(missing_ok=True)


def _prepare_unix_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InvalidArgument(f"cannot listen on unix:{path}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        log.info("removing stale socket %s", path)
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise InvalidArgument(
        f"cannot listen on unix:{path}: another daemon is listening there",
        hint="stop it first, or pass a different --listen",
    )


def check_token_file(path: Path) -> None:
    """Refuse a daemon token file that others could read: the token is root on this host.

    Raises:
        PermissionError: the file is readable or writable by its group or others, or owned by
            another user than the daemon's (the message names the file and the mode).
    """
    import stat as _stat

    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidArgument(f"cannot read token file {path}: {exc.strerror}") from exc
    mode = _stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        denied = PermissionError(f"token file {path} is accessible by group or others (mode {mode:04o}), expected 0600")
        denied.hint = f"chmod 600 {path}"  # type: ignore[attr-defined]
        raise denied
    if st.st_uid != os.geteuid():
        denied = PermissionError(f"token file {path} belongs to uid {st.st_uid}, not to the daemon's uid {os.geteuid()}")
        denied.hint = f"chown {os.geteuid()} {path}; chmod 600 {path}"  # type: ignore[attr-defined]
        raise denied


def create_server(
    engine: api.Engine,
    listen: str,
    *,
    tls: TlsConfig | None = None,
    token: str | Mapping[str, str] | None = None,
    insecure: bool = False,
    max_workers: int = 32,
    spool_dir: Path | None = None,
    metrics: DaemonMetrics | None = None,
) -> tuple[DaemonServer, int | str]:
    """Build a gRPC server for ``engine`` and bind it to ``listen`` (not started yet).

    Args:
        engine: the engine every RPC is served by (LocalEngine in the daemon, a fake in tests).
        listen: ``unix:PATH`` or ``HOST:PORT`` (port 0 picks a free one).
        tls: server certificate, key and the CA client certificates must chain to (mutual TLS).
        token: when set, every RPC but health must carry ``authorization: Bearer <token>``; name ->
            token (migrate/remote/tokens.py): any of them, and the access log names the caller's.
        insecure: allow plain TCP without TLS (explicit opt-in; a warning is logged).
        max_workers: concurrent RPCs handled (each stream holds one worker while it runs).
        spool_dir: where uploaded image tarballs are parked before import (the state root's
            tmp/ in the daemon, so the import can rename instead of copy).
        metrics: where calls are counted and timed (migrate/remote/metrics.py); every call is
            access-logged either way (migrate/remote/access_log.py).

    Returns:
        The server and the bound TCP port (int) or the unix socket path (str).

    Raises:
        InvalidArgument: a bad address, TCP without TLS and without ``insecure``, unreadable
            TLS files, an address in use.
    """
    address = parse_listen(listen)
    if address.kind == "tcp" and tls is None and not insecure:
        raise InvalidArgument(
            f"refusing to listen on {listen} without tls",
            hint="pass --tls-cert, --tls-key and --tls-ca (mutual tls), or --insecure on a trusted network",
        )
    # first, so it also sees the calls the token check refuses, with their final status
    interceptors: list[grpc.ServerInterceptor] = [CallObserver(metrics, tokens=None if isinstance(token, str) else token)]
    if token is not None:
        interceptors.append(TokenAuthInterceptor(token))
    interceptors.append(ErrorInterceptor())

    from migrate.remote import memtrace

    memtrace.limit_arenas()  # before the server's threads: each would get its own malloc arena (issue 17)
    memtrace.start_from_env()  # PYMIGRATE_TRACEMALLOC: where the memory goes (debugging, issue 17)
    executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="pymigrate-rpc")
    server = grpc.server(executor, interceptors=interceptors, options=SERVER_OPTIONS)
    pb_grpc.add_HostServicer_to_server(HostServicer(engine, spool_dir=spool_dir), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    # reflection v1alpha and v1 (migrate/remote/reflection_v1.py: grpcio-reflection serves only v1alpha)
    reflection_v1.enable_server_reflection((SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)

    credentials = None
    if tls is not None:
        cert, key, ca = tls.read()
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    if address.kind == "unix":
        assert address.path is not None
        _prepare_unix_path(address.path)
        old_umask = os.umask(0o177)  # the socket is born 0600, no window where others may connect
        try:
            _bind(server, address, credentials, listen)
        finally:
            os.umask(old_umask)
        os.chmod(address.path, 0o600)
        bound: int | str = str(address.path)
    else:
        if credentials is None:
            log.warning("listening on %s without tls (--insecure): anyone who can reach it controls this host", listen)
        bound = _bind(server, address, credentials, listen)
    return DaemonServer(server, executor, health_servicer, address, bound), bound


def _bind(server: grpc.Server, address: ListenAddress, credentials: grpc.ServerCredentials | None, listen: str) -> int:
    try:
        if credentials is None:
            port = server.add_insecure_port(address.grpc_address)
        else:
            port = server.add_secure_port(address.grpc_address, credentials)
    except RuntimeError as exc:
        raise InvalidArgument(f"cannot listen on {listen}: {exc}", hint="is the address in use or not local?") from exc
    if address.kind == "tcp" and port == 0:
        raise InvalidArgument(f"cannot listen on {listen}: {os.strerror(errno.EADDRINUSE)}")
    return port


def wait_for_serving(target_channel: grpc.Channel, timeout_s: float = 5.0) -> None:
    """Block until the health service on ``target_channel`` answers SERVING (tests, scripts)."""
    stub = health_pb2_grpc.HealthStub(target_channel)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1.0)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"the daemon did not report SERVING within {timeout_s:g}s")
        time.sleep(0.05)
