"""``RemoteEngine``: the ``Engine`` API over gRPC, talking to a pymigrate daemon.

Every method mirrors ``LocalEngine``: it takes and returns the dataclasses of migrate/api.py and
raises the same exception classes with the same messages; a failed RPC is turned back into our
exception from the daemon's trailing metadata (migrate/remote/_rpc_errors.py), or, when there is none
(the daemon is unreachable, a TLS handshake failed), from the status code: UNAVAILABLE ->
``TransferError`` ("the daemon at X is unreachable"), UNAUTHENTICATED -> ``AuthError``,
DEADLINE_EXCEEDED -> ``MigrationTimeout``, anything else -> ``PeerError``.

Paths stay on the caller's side. ``checkpoint`` with ``export_path`` checkpoints on the daemon and
downloads the archive into the local file (the checkpoint also stays listed on the daemon);
``restore`` with ``import_path`` uploads the local archive first; ``image_import`` streams the
local tarball.

Addresses: ``unix:PATH`` and ``HOST:PORT``. TCP needs mutual TLS (``tls``) unless ``insecure``
is passed explicitly, as on the daemon. ``ssh://[user@]host[:port]`` opens an SSH tunnel to the
remote daemon's unix socket first (migrate/remote/ssh.py; ``ssh`` holds its options), closed by ``close``.

The daemon-to-daemon methods (``prepare_incoming`` ... ``commit_incoming``) are what a source
``LocalEngine`` calls on ``RemoteEngine(dest)`` during a migration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Sequence

import grpc

from migrate import api
from migrate.archive.streams import split_chunks
from migrate.remote import _rpc_errors
from migrate.remote import convert as cv
from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate._proto.pymigrate.v1 import host_pb2_grpc as pb_grpc
from migrate.errors import MigrationError, PeerError, TransferError
from migrate.peer_timeout import keepalive_ms, peer_timeout_s
from migrate.remote.tls import TlsConfig, tls_from_paths
from runtime.errors import ContainerError, InvalidArgument, Unsupported
from runtime.logs import LogEntry
from runtime.registry import PushResult, RegistryOptions
from runtime.spec import ContainerInfo

log = logging.getLogger(__name__)

SSH_SETTLE_S = 1.0  # how long an error waits for paramiko to notice a dropped ssh connection

CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 16 << 20
DEFAULT_TIMEOUT_S = 60.0  # unary calls; streams (checkpoint, migrate, transfers) have none

# Keepalive pings while a call runs (every 10 s by default): a cut link fails a long stream
# within the peer timeout (15 s, migrate/peer_timeout.py) instead of hanging on TCP retransmits;
# once the link is back, the channel retries within a third of it (gRPC's backoff would otherwise
# grow to minutes during an outage, and a migration's abort or settlement would wait for it).
_PING_MS, _PING_TIMEOUT_MS = keepalive_ms(peer_timeout_s())
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_metadata_size", 64 << 10),
    ("grpc.keepalive_time_ms", _PING_MS),
    ("grpc.keepalive_timeout_ms", _PING_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 1_000),
    ("grpc.max_reconnect_backoff_ms", max(1_000, _PING_TIMEOUT_MS)),
)


def channel_target(address: str) -> tuple[str, bool]:
    """The gRPC target for a daemon address and whether it is a unix socket.

    Raises:
        Unsupported: ``ssh://`` addresses (a later issue).
        InvalidArgument: anything but ``unix:PATH`` and ``HOST:PORT``.
    """
    if address.startswith("ssh://"):
        raise Unsupported(
            "ssh daemon addresses",
            f"{address} needs the ssh transport, which is not implemented yet",
            hint="use unix:PATH or HOST:PORT (e.g. tunnel with ssh -L PORT:/var/lib/pymigrate/run/pymigrate.sock HOST)",
        )
    if address.startswith("unix:"):
        raw = address[len("unix:") :]
        if raw.startswith("//"):
            raw = raw[2:]
        if not raw:
            raise InvalidArgument(f"invalid daemon address {address!r}: expected unix:PATH")
        return f"unix:{Path(raw).absolute()}", True
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not host or not port.isdigit():
        raise InvalidArgument(
            f"invalid daemon address {address!r}: expected unix:PATH or HOST:PORT", hint="e.g. unix:/var/lib/pymigrate/run/pymigrate.sock"
        )
    return address, False


def _is_foreign(path: Path) -> bool:
    """A podman/CRI-O archive (by content): restored as a temporary checkpoint image on the daemon
    (migrate/interop/remote_import.py), since its checkpoint upload stores pymigrate archives only."""
    from migrate.interop.foreign import sniff_format

    return sniff_format(path) == "foreign"


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


class _Requests:
    """A request iterator that remembers an exception raised while producing requests.

    gRPC swallows such an exception (it cancels the call); the caller re-raises ours instead.
    """

    def __init__(self, requests: Iterator[Any]) -> None:
        self._requests = requests
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._requests
        except BaseException as exc:
            self.error = exc
            raise


class RemoteEngine:
    """The ``Engine`` (and ``MigrationTarget``) API of the daemon at ``target``."""

    def __init__(
        self,
        target: str,
        *,
        tls: TlsConfig | None = None,
        token: str | None = None,
        insecure: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ssh: dict[str, Any] | None = None,
    ) -> None:
        # ssh:// hook: migrate/remote/ssh.py opens the tunnel (and a daemon if none runs); we dial its
        # local end without TLS (SSH authenticated the hop) and close it in close().
        self._ssh: Any = None
        if target.startswith("ssh://"):
            from migrate.remote.ssh import open_ssh_target

            self._ssh = open_ssh_target(target, **(ssh or {}))
        try:
            if self._ssh is not None:  # plain gRPC to the tunnel's private local end, whatever TLS a peer config carries
                address, tls, insecure = self._ssh.address, None, True
            else:
                address = target
            self._connect(target, address, tls, token, insecure, timeout_s)
        except BaseException:
            if self._ssh is not None:
                self._ssh.close()
            raise

    def _connect(self, target: str, address: str, tls: TlsConfig | None, token: str | None, insecure: bool, timeout_s: float) -> None:
        grpc_target, is_unix = channel_target(address)
        self.target = target
        self.timeout_s = timeout_s
        self.advertise: str | None = None  # the calling daemon's own address (a migration's source_daemon)
        self._tls = tls is not None
        options: list[tuple[str, int | str]] = list(CHANNEL_OPTIONS)
        if tls is not None:
            cert, key, ca = tls.read()
            credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(grpc_target, credentials, options=options)
        elif is_unix or insecure:
            self._channel = grpc.insecure_channel(grpc_target, options=options)
        else:
            raise InvalidArgument(
                f"refusing to talk to {target} without tls",
                hint="pass --tls-cert, --tls-key and --tls-ca (mutual tls), or --insecure on a trusted network",
            )
        self._stub = pb_grpc.HostStub(self._channel)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()

    @classmethod
    def from_args(cls, args: Any) -> "RemoteEngine":
        """Build from the CLI's global flags (--host, --tls-cert/--tls-key/--tls-ca, --token-file, --insecure)."""
        if not getattr(args, "host", None):
            raise InvalidArgument("no daemon address: pass --host unix:PATH or --host HOST:PORT")
        tls = tls_from_paths(
            getattr(args, "tls_cert", None), getattr(args, "tls_key", None), getattr(args, "tls_ca", None), who="client"
        )
        ssh = None
        if args.host.startswith("ssh://"):  # ssh:// hook: the --ssh-* flags
            from migrate.remote.ssh import ssh_options_from_args

            ssh = ssh_options_from_args(args)
        return cls(
            args.host, tls=tls, token=read_token(getattr(args, "token_file", None)), insecure=bool(getattr(args, "insecure", False)), ssh=ssh
        )

    @property
    def page_socket(self) -> Any:
        """Where a cold migration to this daemon sends its pages (migrate/migration/page_socket.py):
        the ssh tunnel's own forward, or a socket beside a local daemon's; None: through gRPC."""
        if "_page_socket" not in self.__dict__:
            from migrate.migration import page_socket

            self._page_socket = self._ssh.page_socket if self._ssh is not None else None
            grpc_target, is_unix = channel_target(self.target) if self._ssh is None else ("", False)
            if is_unix:
                self._page_socket = page_socket.for_local_daemon(grpc_target[len("unix:"):])
        return self._page_socket

    def close(self) -> None:
        self._channel.close()
        if self._ssh is not None:  # ssh:// hook
            self._ssh.close()

    def __enter__(self) -> "RemoteEngine":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------------

    def _error(self, exc: grpc.RpcError, method: str) -> BaseException:
        call: Any = exc
        code = call.code() if hasattr(call, "code") else None
        details = call.details() if hasattr(call, "details") else str(exc)
        metadata = call.trailing_metadata() if hasattr(call, "trailing_metadata") else ()
        error = _rpc_errors.decode(code, details, metadata, self.target, method)
        if self._tls and code == grpc.StatusCode.UNAVAILABLE and isinstance(error, TransferError):
            # With TLS 1.3 the daemon checks our certificate after our side of the handshake is
            # done; a refusal then looks like a closed socket, indistinguishable from a crash.
            error.hint = (
                "if the daemon runs, it may have refused our client certificate: check that --tls-cert "
                "is signed by the ca the daemon trusts (its --tls-ca)"
            )
        if self._ssh is not None and code == grpc.StatusCode.UNAVAILABLE and isinstance(error, TransferError):
            # "check that the daemon runs" is no help here: the tunnel (re)starts it on demand.
            destination = self._ssh.config.destination
            # paramiko notices a dead connection in its own thread: give it a moment to settle
            # before telling "the ssh connection ended" from "the daemon behind it went away"
            deadline = time.monotonic() + SSH_SETTLE_S
            while self._ssh.transport.is_active() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self._ssh.transport.is_active():
                error.hint = (
                    f"the ssh connection to {destination} ended (sshd stopped, the host went down or the link "
                    "dropped); a daemon started for it stops with it"
                )
            else:
                error.hint = f"the pymigrate daemon behind the ssh tunnel to {destination} went away; see ROOT/run/ssh-daemon.log there"
        return error

    def _unary(self, method: str, request: Any, *, timeout_s: float | None = -1.0) -> Any:
        try:
            return getattr(self._stub, method)(
                request, timeout=self.timeout_s if timeout_s == -1.0 else timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise self._error(exc, method) from exc

    # --request-id: sent with RunContainer, Checkpoint, Restore and Migrate, so a retry of the same
    # command gets the first call's answer (docs/api.md "request_id"); "": none
    request_id = ""

    def _with_id(self, request: Any) -> Any:
        request.request_id = self.request_id
        return request

    def _pages(self, method: str, request: Any, field: str) -> list[Any]:
        """Every item of a paginated List (AIP-158), the largest pages the daemon gives; an older
        daemon sends everything at once and no next_page_token."""
        from migrate.paging import MAX_PAGE_SIZE

        request.page_size = MAX_PAGE_SIZE
        items: list[Any] = []
        while True:
            reply = self._unary(method, request)
            items.extend(getattr(reply, field))
            if not reply.next_page_token:
                return items
            request.page_token = reply.next_page_token

    def _client_stream(self, method: str, requests: Iterator[Any]) -> Any:
        wrapped = _Requests(requests)
        try:
            return getattr(self._stub, method)(iter(wrapped), metadata=self._metadata)
        except grpc.RpcError as exc:
            if wrapped.error is not None:
                raise wrapped.error from None
            raise self._error(exc, method) from exc

    def _server_stream(self, method: str, request: Any) -> Generator[Any, None, None]:
        """Responses of a server stream; closing the iterator early cancels the call."""
        call = getattr(self._stub, method)(request, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise self._error(exc, method) from exc
        finally:
            call.cancel()  # no-op when the call already finished

    def _progress_stream(
        self, method: str, request: Any, progress: api.ProgressFn | None, event_field: str, to_event: Callable[[Any], api.ProgressEvent]
    ) -> Any:
        stream = self._server_stream(method, request)
        result = None
        last_phase: str | None = None
        try:
            for response in stream:  # read to the end: the status follows the result
                kind = response.WhichOneof("kind")
                if kind == "result":
                    result = response.result
                elif kind == event_field:
                    event = to_event(getattr(response, event_field))
                    last_phase = event.phase or last_phase
                    if progress is not None:
                        progress(event)
        except MigrationError as exc:
            # the daemon itself went away mid-operation: name the phase it had reached
            if exc.phase is None and last_phase:
                exc.phase = last_phase
            raise
        finally:
            stream.close()  # a progress callback that raised cancels the call on the daemon
        if result is None:
            raise PeerError(f"the daemon at {self.target} ended the {method} stream without a result")
        return result

    # --- host -----------------------------------------------------------------------------------

    def host_info(self) -> api.HostInfo:
        return cv.host_from_pb(self._unary("GetHostInfo", pb.GetHostInfoRequest()).host)

    # --- images ---------------------------------------------------------------------------------

    def images(self) -> list[api.ImageInfo]:
        return [cv.image_from_pb(i) for i in self._pages("ListImages", pb.ListImagesRequest(), "images")]

    def image_import(self, name: str, tarball: Path) -> api.ImageInfo:
        if not Path(tarball).is_file():
            raise InvalidArgument(f"cannot import image {name}: {tarball} is not a file")

        def requests() -> Iterator[pb.ImportImageRequest]:
            yield pb.ImportImageRequest(name=name)
            for chunk in _file_chunks(Path(tarball)):
                yield pb.ImportImageRequest(data=chunk)

        try:
            return cv.image_from_pb(self._client_stream("ImportImage", requests()).image)
        except ContainerError as exc:
            _about_local_file(exc, Path(tarball))
            raise

    def image_load(self, path: Path, name: str | None = None, platform: str | None = None) -> api.ImageInfo:
        """Upload a Docker or OCI archive (an OCI layout directory is packed as a tar here first,
        runtime.oci_image.layout_tar) and load it on the daemon. Errors name ``path``, not the
        daemon's spooled copy."""
        path = Path(path)
        if path.is_dir():
            from runtime.oci_image import layout_tar

            chunks = layout_tar(path, chunk_bytes=CHUNK_BYTES)
        elif path.is_file():
            chunks = _file_chunks(path)
        else:
            raise InvalidArgument(f"cannot load image from {path}: not a file or directory")

        def requests() -> Iterator[pb.LoadImageRequest]:
            seq = -1
            for seq, data in enumerate(split_chunks(chunks, CHUNK_BYTES)):
                request = pb.LoadImageRequest(data=data, seq=seq, crc32=zlib.crc32(data))
                if seq == 0:
                    _first_load_message(request, name, platform)
                yield request
            if seq < 0:  # an empty file: the daemon says what is wrong with it
                yield _first_load_message(pb.LoadImageRequest(seq=0), name, platform)

        try:
            return cv.image_from_pb(self._client_stream("LoadImage", requests()).image)
        except ContainerError as exc:
            _about_local_file(exc, path)
            raise

    def image_pull(self, reference: str, name: str | None = None, platform: str | None = None,
                   options: RegistryOptions | None = None, progress: api.CopyProgressFn | None = None) -> api.ImageInfo:
        """Pull on the daemon's host (skopeo runs there); ``progress`` gets skopeo's report lines as
        they come. ``options.cert_dir`` and ``options.authfile`` are paths on the daemon's host."""
        request = pb.PullImageRequest(reference=reference, registry=_registry_options(options))
        if name is not None:
            request.name = name
        if platform is not None:
            request.platform = platform
        result = self._progress_stream("PullImage", request, _copy_progress(progress), "progress", cv.progress_from_pb)
        return cv.image_from_pb(result)

    def image_push(self, name: str, reference: str, options: RegistryOptions | None = None,
                   progress: api.CopyProgressFn | None = None) -> PushResult:
        """Push a stored image of the daemon's to a registry, from the daemon's host."""
        request = pb.PushImageToRegistryRequest(name=name, reference=reference, registry=_registry_options(options))
        result = self._progress_stream("PushImageToRegistry", request, _copy_progress(progress), "progress", cv.progress_from_pb)
        return cv.push_result_from_pb(result)

    def image_inspect(self, name: str) -> api.ImageDetails:
        return cv.image_details_from_pb(self._unary("InspectImage", pb.InspectImageRequest(name=name)))

    def image_remove(self, name: str) -> api.ImageRemoval:
        reply = self._unary("RemoveImage", pb.RemoveImageRequest(name=name), timeout_s=max(self.timeout_s, 300.0))
        if not reply.HasField("removed"):  # an older daemon says only that it worked
            return api.ImageRemoval(untagged=(name,))
        return cv.image_removal_from_pb(reply.removed)

    def image_tag(self, source: str, target: str) -> api.ImageInfo:
        return cv.image_from_pb(self._unary("TagImage", pb.TagImageRequest(source=source, target=target)).image)

    def commit(self, name: str, target: str, options: api.CommitOptions | None = None) -> api.CommitResult:
        options = options or api.CommitOptions()
        request = pb.CommitContainerRequest(name=name, target=target, changes=list(options.changes), message=options.message,
                                            author=options.author, no_pause=not options.pause)
        return cv.commit_result_from_pb(self._unary("CommitContainer", request, timeout_s=max(self.timeout_s, 600.0)).result)

    # -- named volumes ----------------------------------------------------------------------------
    def volume_create(self, name: str | None = None, labels: tuple[str, ...] = ()) -> api.VolumeInfo:
        reply = self._unary("VolumeCreate", pb.VolumeCreateRequest(name=name or "", labels=list(labels)))
        return cv.volume_info_from_pb(reply.volume)

    def volumes(self) -> list[api.VolumeInfo]:
        return [cv.volume_info_from_pb(v) for v in self._pages("VolumeList", pb.VolumeListRequest(), "volumes")]

    def volume_inspect(self, name: str) -> api.VolumeInfo:
        return cv.volume_info_from_pb(self._unary("VolumeInspect", pb.VolumeInspectRequest(name=name)).volume)

    def volume_remove(self, name: str, force: bool = False) -> bool:
        return bool(self._unary("VolumeRemove", pb.VolumeRemoveRequest(name=name, force=force)).removed)

    def volume_prune(self) -> api.VolumePruneResult:
        reply = self._unary("VolumePrune", pb.VolumePruneRequest(), timeout_s=max(self.timeout_s, 300.0))
        return api.VolumePruneResult(removed=tuple(reply.removed), bytes_freed=reply.bytes_freed)

    def image_prune(self, all: bool = False) -> api.ImageRemoval:
        reply = self._unary("PruneImages", pb.PruneImagesRequest(all=all), timeout_s=max(self.timeout_s, 300.0))
        return cv.image_removal_from_pb(reply.removed)

    def image_build_busybox(self, name: str = "busybox") -> api.ImageInfo:
        reply = self._unary("BuildBusyboxImage", pb.BuildBusyboxImageRequest(name=name), timeout_s=max(self.timeout_s, 300.0))
        return cv.image_from_pb(reply.image)

    # --- containers -----------------------------------------------------------------------------

    def run(self, options: api.RunOptions) -> ContainerInfo:
        reply = self._unary("RunContainer", self._with_id(cv.run_options_to_pb(options)), timeout_s=max(self.timeout_s, 300.0))
        return cv.container_from_pb(reply.container)

    def containers(self, all: bool = False, filters: Sequence[str] = ()) -> list[ContainerInfo]:
        """``filters``: ``ps --filter`` entries, applied by the daemon (migrate/container_filter.py)."""
        request = pb.ListContainersRequest(all=all, filter=list(filters))
        return [cv.container_from_pb(c) for c in self._pages("ListContainers", request, "containers")]

    def inspect(self, name: str) -> ContainerInfo:
        return cv.container_from_pb(self._unary("InspectContainer", pb.InspectContainerRequest(name=name)).container)

    def stop(self, name: str, timeout_s: float = 10.0) -> ContainerInfo:
        # both: an older daemon reads the double, a newer one the Duration
        request = pb.StopContainerRequest(name=name, timeout_s=timeout_s, timeout=cv.as_duration(timeout_s))
        reply = self._unary("StopContainer", request, timeout_s=self.timeout_s + timeout_s)
        return cv.container_from_pb(reply.container)

    def kill(self, name: str, signal: int = 9) -> None:
        self._unary("KillContainer", pb.KillContainerRequest(name=name, signal=signal))

    def remove(self, name: str, force: bool = False) -> None:
        """None: the reply does not say whether there was anything to remove (``force``: no error either way)."""
        self._unary("RemoveContainer", pb.RemoveContainerRequest(name=name, force=force))

    def create(self, options: api.RunOptions) -> ContainerInfo:
        request = pb.CreateContainerRequest(options=cv.run_options_to_pb(options))
        reply = self._unary("CreateContainer", request, timeout_s=max(self.timeout_s, 300.0))
        return cv.container_from_pb(reply.container)

    def start(self, name: str) -> ContainerInfo:
        reply = self._unary("StartContainer", pb.StartContainerRequest(name=name), timeout_s=max(self.timeout_s, 60.0))
        return cv.container_from_pb(reply.container)

    def restart(self, name: str, timeout_s: float = 10.0) -> ContainerInfo:
        """StopContainer (a stopped one: nothing done), then StartContainer: two calls, no RPC of its own."""
        self.stop(name, timeout_s=timeout_s)
        return self.start(name)

    def rename(self, name: str, new_name: str) -> ContainerInfo:
        return cv.container_from_pb(self._unary("RenameContainer", pb.RenameContainerRequest(name=name, new_name=new_name)).container)

    def pause(self, name: str) -> ContainerInfo:
        return cv.container_from_pb(self._unary("PauseContainer", pb.PauseContainerRequest(name=name)).container)

    def unpause(self, name: str) -> ContainerInfo:
        return cv.container_from_pb(self._unary("UnpauseContainer", pb.UnpauseContainerRequest(name=name)).container)

    def logs(self, name: str, follow: bool = False, *, tail: int | None = None, since: float | None = None,
             until: float | None = None) -> Iterator[LogEntry]:
        request = cv.logs_request(name, follow, tail, since, until)
        for response in self._server_stream("StreamLogs", request):
            yield cv.log_entry_from_pb(response)

    def wait(self, name: str, timeout_s: float | None = None) -> int:
        """The container's exit code once it exits (``timeout_s`` None: wait for ever)."""
        request = pb.WaitContainerRequest(name=name)
        if timeout_s is not None:
            request.timeout_s = timeout_s
            request.timeout.CopyFrom(cv.as_duration(timeout_s))
        deadline = None if timeout_s is None else timeout_s + self.timeout_s
        return self._unary("WaitContainer", request, timeout_s=deadline).exit_code

    def exec(self, name: str, argv: tuple[str, ...], env: tuple[str, ...] = (), workdir: str | None = None,
             user: str | None = None, *, tty: bool = False, interactive: bool = False, terminal: Any = None,
             stdin_fd: int = 0, stdout_fd: int = 1, stderr_fd: int = 2) -> int:
        """``exec`` over the Exec call with this process's stdio (migrate/remote/attach_stream.py):
        with ``tty`` the user's ``terminal`` (an attach_stream.Terminal the CLI lends: raw with
        ``interactive``, resized on SIGWINCH); else stdout and stderr apart, stdin sent with
        ``interactive``. The command's exit code."""
        from migrate.remote.attach_stream import relay

        size = terminal.size() if tty and terminal is not None else None
        start = pb.ExecStart(name=name, command=list(argv), env=list(env), workdir=workdir or "", user=user or "",
                             tty=tty, interactive=interactive,
                             terminal_size=pb.TerminalSize(rows=size[0], cols=size[1]) if size else None)
        code = self._bidi("Exec", lambda call: relay(call, pb.ExecRequest(start=start), pb.ExecRequest, tty=tty,
                                                     interactive=interactive, terminal=terminal, stdin_fd=stdin_fd,
                                                     stdout_fd=stdout_fd, stderr_fd=stderr_fd))
        if code is None:
            raise PeerError(f"the daemon at {self.target} ended the Exec stream without an exit code")
        return code

    def attach(self, name: str, *, tty: bool, interactive: bool, detach_keys: bytes = b"", terminal: Any = None,
               stdin_fd: int = 0, stdout_fd: int = 1, stderr_fd: int = 2) -> int | None:
        """Attach over the Attach call (``tty``/``interactive``: the container's -t/-i, from inspect;
        ``terminal`` as for ``exec``); its exit code, or None when the user detached."""
        from migrate.remote.attach_stream import relay

        return self._bidi("Attach", lambda call: relay(call, pb.AttachRequest(name=name), pb.AttachRequest, tty=tty,
                                                       interactive=interactive, detach_keys=detach_keys, send_size=True,
                                                       terminal=terminal, stdin_fd=stdin_fd, stdout_fd=stdout_fd,
                                                       stderr_fd=stderr_fd))

    def _bidi(self, method: str, session: Callable[[Callable[[Iterator[Any]], Any]], Any]) -> Any:
        def open_call(requests: Iterator[Any]) -> Any:
            return getattr(self._stub, method)(requests, metadata=self._metadata)

        try:
            return session(open_call)
        except grpc.RpcError as exc:
            raise self._error(exc, method) from exc

    def stats(self, name: str, previous: Any = None) -> Any:
        """One ``ContainerStats`` sample from the Stats call; CPU % against ``previous`` (a sample of
        this daemon: both times are its monotonic clock)."""
        from runtime.stats import cpu_percent

        responses = list(self._server_stream("Stats", pb.StatsRequest(names=[name])))
        samples = [cv.stats_from_pb(m) for r in responses for m in r.samples]
        if not samples:
            raise PeerError(f"the daemon at {self.target} sent no stats for {name}")
        s = samples[0]
        return dataclasses.replace(s, cpu_percent=cpu_percent(previous, s.cpu_usage_us, s.read_at_s))

    def stats_stream(self, names: tuple[str, ...] = (), interval_s: float = 1.0) -> Iterator[list[Any]]:
        """Samples of ``names`` (none: every running container) every ``interval_s``, CPU % computed
        by the daemon between them, until the iterator is closed."""
        request = pb.StatsRequest(names=list(names), stream=True, interval_s=interval_s, interval=cv.as_duration(interval_s))
        for response in self._server_stream("Stats", request):
            yield [cv.stats_from_pb(m) for m in response.samples]

    def events(self, since: int | None = None, filters: tuple[str, ...] = ()) -> Iterator[Any]:
        """The daemon's events (WatchEvents) after cursor ``since`` (None: only new ones), until the
        iterator is closed; None for each keep-alive. ``EventsLost`` when the cursor is too old."""
        for response in self._server_stream("WatchEvents", cv.watch_events_request(since, filters)):
            yield cv.event_from_pb(response.event) if response.HasField("event") else None

    def top(self, name: str, ps_args: tuple[str, ...] = ()) -> Any:
        raise Unsupported("top over --host", "the daemon has no process listing call yet",
                          hint="run pymigrate top on the container's host")

    def copy_from_container(self, name: str, src_path: str, dest: Any, *, archive: bool = False, follow: bool = False) -> Any:
        raise Unsupported("cp over --host", "copying forks into the container's mount namespace, which only the local CLI can",
                          hint="run pymigrate cp on the container's host")

    def copy_to_container(self, name: str, src: Any, dest_path: str, *, archive: bool = False, follow: bool = False) -> Any:
        raise Unsupported("cp over --host", "copying forks into the container's mount namespace, which only the local CLI can",
                          hint="run pymigrate cp on the container's host")

    # --- checkpoints ----------------------------------------------------------------------------

    def checkpoint(self, name: str, options: api.CheckpointOptions, progress: api.ProgressFn | None = None) -> api.CheckpointResult:
        if options.export_format == "podman":  # the native archive downloaded, converted here
            from migrate.interop.export_remote import export_over_host

            return export_over_host(self, name, options, progress)  # type: ignore[no-any-return]
        signer = None
        if options.sign_key is not None:  # read before the container is frozen over there
            from migrate.archive.signing import ArchiveSigner

            if options.export_path is None:
                raise InvalidArgument("a signing key signs an exported archive: give --export FILE with --sign-key")
            signer = ArchiveSigner.from_file(Path(options.sign_key))
        result_pb = self._progress_stream(
            "Checkpoint", self._with_id(cv.checkpoint_request_to_pb(name, options)), progress, "progress", cv.progress_from_pb
        )
        result = cv.checkpoint_result_from_pb(result_pb)
        if options.export_path is None:
            return result
        size = self._download(result.checkpoint_id, Path(options.export_path), progress, signer)
        return dataclasses.replace(
            result, export_path=str(options.export_path), stats=dataclasses.replace(result.stats, archive_bytes=size),
            signed_by=signer.fingerprint if signer is not None else "",
        )

    def _download(self, checkpoint_id: str, path: Path, progress: api.ProgressFn | None, signer: Any = None) -> int:
        """Write the checkpoint's archive to ``path`` (complete or not at all); ``signer`` (an
        ArchiveSigner) appends its signature of the bytes downloaded."""
        from migrate.archive.signing import HashingSink

        tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
        size = 0
        try:
            with open(tmp, "wb") as f:
                out: Any = HashingSink(f) if signer is not None else f
                for chunk in self.export_checkpoint(checkpoint_id):
                    out.write(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress(api.ProgressEvent(operation="export", phase="download", bytes_done=size))
                if signer is not None:
                    signer.append(f, out.digest())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def restore(self, options: api.RestoreOptions, progress: api.ProgressFn | None = None) -> api.RestoreResult:
        signed_by = ""
        if options.import_path is not None:
            from migrate.archive.signing import verified_chunks, verify_import

            path = Path(options.import_path)
            if _is_foreign(path):
                from migrate.interop.remote_import import restore_foreign_over_host

                return restore_foreign_over_host(self, options, progress)
            verified = verify_import(path, options.trusted_keys)  # here, before a byte is uploaded
            chunks = _file_chunks(path) if verified is None else verified_chunks(path, verified, CHUNK_BYTES)
            signed_by = verified.describe() if verified is not None else ""
            info = self.import_checkpoint(chunks)
            options = dataclasses.replace(options, checkpoint_id=info.checkpoint_id, import_path=None)
        if options.image_ref and options.image_registry not in (None, RegistryOptions()):
            raise Unsupported("restore REF with registry flags over --host", "a restore request carries no registry settings",
                              hint=f"pull it there first: pymigrate --host ... image pull {options.image_ref} "
                                   "[--tls-verify=false ...], then restore REF finds it")
        if not options.checkpoint_id and not options.image_ref:
            raise InvalidArgument("restore needs a checkpoint id, an archive to import or a checkpoint image")
        result_pb = self._progress_stream("Restore", self._with_id(cv.restore_request_to_pb(options)), progress, "progress", cv.progress_from_pb)
        return dataclasses.replace(cv.restore_result_from_pb(result_pb), signed_by=signed_by)

    def checkpoints(self) -> list[api.CheckpointInfo]:
        return [cv.checkpoint_info_from_pb(c) for c in self._pages("ListCheckpoints", pb.ListCheckpointsRequest(), "checkpoints")]

    def checkpoint_remove(self, checkpoint_id: str) -> None:
        self._unary("RemoveCheckpoint", pb.RemoveCheckpointRequest(checkpoint_id=checkpoint_id))

    def checkpoint_inspect(self, checkpoint_id: str) -> dict:
        """The checkpoint's manifest."""
        reply = self._unary("InspectCheckpoint", pb.InspectCheckpointRequest(checkpoint_id=checkpoint_id))
        return json.loads(reply.manifest_json)

    def export_checkpoint(self, checkpoint_id: str) -> Iterator[bytes]:
        """The checkpoint's archive in chunks (crc32 and order checked)."""
        from migrate.errors import ChecksumMismatch, TransferError

        expected = 0
        for response in self._server_stream("DownloadCheckpoint", pb.DownloadCheckpointRequest(checkpoint_id=checkpoint_id)):
            if response.seq != expected:
                raise TransferError(f"download of checkpoint {checkpoint_id}: chunk {response.seq} arrived, expected {expected}", phase="transfer")
            if response.HasField("crc32") and zlib.crc32(response.data) != response.crc32:
                raise ChecksumMismatch(
                    f"checkpoint {checkpoint_id} chunk {response.seq}", f"crc32 {response.crc32:08x}", f"crc32 {zlib.crc32(response.data):08x}"
                )
            expected += 1
            yield response.data

    def import_checkpoint(self, chunks: Iterator[bytes]) -> api.CheckpointInfo:
        requests = (
            pb.UploadCheckpointRequest(data=data, seq=seq, crc32=zlib.crc32(data)) for seq, data in enumerate(split_chunks(chunks, CHUNK_BYTES))
        )
        return cv.checkpoint_info_from_pb(self._client_stream("UploadCheckpoint", requests).checkpoint)

    # --- migration ------------------------------------------------------------------------------

    def migrate(self, name: str, options: api.MigrateOptions, progress: api.ProgressFn | None = None) -> api.MigrateResult:
        result_pb = self._progress_stream(
            "Migrate", self._with_id(cv.migrate_request_to_pb(name, options)), progress, "event", cv.migration_event_from_pb
        )
        return cv.migrate_result_from_pb(result_pb)

    # --- daemon to daemon (MigrationTarget) ----------------------------------------------------------

    def prepare_incoming(self, request: api.IncomingRequest) -> api.IncomingTicket:
        if request.source_daemon is None and self.advertise:
            request = dataclasses.replace(request, source_daemon=self.advertise)
        return cv.ticket_from_pb(self._unary("PrepareIncoming", cv.incoming_request_to_pb(request)))

    def receive_image(self, migration_id: str, chunks: Iterator[bytes]) -> None:
        requests = (
            pb.PushImageRequest(migration_id=migration_id, data=data, seq=seq, crc32=zlib.crc32(data))
            for seq, data in enumerate(split_chunks(chunks, CHUNK_BYTES))
        )
        self._client_stream("PushImage", _non_empty(requests, pb.PushImageRequest(migration_id=migration_id, seq=0)))

    def receive_upper(self, migration_id: str, chunks: Iterator[bytes]) -> int:
        requests = (
            pb.PushUpperRequest(migration_id=migration_id, data=data, seq=seq, crc32=zlib.crc32(data))
            for seq, data in enumerate(split_chunks(chunks, CHUNK_BYTES))
        )
        reply = self._client_stream("PushUpper", _non_empty(requests, pb.PushUpperRequest(migration_id=migration_id, seq=0)))
        return int(reply.entries)

    def receive_checkpoint(self, migration_id: str, chunks: Iterator[bytes]) -> api.RestoreResult:
        requests = (
            pb.PushCheckpointRequest(migration_id=migration_id, data=data, seq=seq, crc32=zlib.crc32(data))
            for seq, data in enumerate(split_chunks(chunks, CHUNK_BYTES))
        )
        reply = self._client_stream(
            "PushCheckpoint", _non_empty(requests, pb.PushCheckpointRequest(migration_id=migration_id, seq=0))
        )
        return api.RestoreResult(container=cv.container_from_pb(reply.container), stats=cv.restore_stats_from_pb(reply.stats))

    def abort_incoming(self, migration_id: str) -> None:
        self._unary("AbortIncoming", pb.AbortIncomingRequest(migration_id=migration_id))

    def commit_incoming(self, migration_id: str) -> None:
        self._unary("CommitIncoming", pb.CommitIncomingRequest(migration_id=migration_id))

    def settle_migration(self, migration_id: str, container_id: str = "", ask_source: bool = False) -> api.Settlement:
        reply = self._unary("SettleMigration", pb.SettleMigrationRequest(migration_id=migration_id, container_id=container_id,
                                                                         ask_source=ask_source))
        return cv.settlement_from_pb(migration_id, reply)

    def start_precopy_round(self, migration_id: str, round_no: int, final: bool = False) -> int:
        reply = self._unary("StartPrecopyRound", pb.StartPrecopyRoundRequest(migration_id=migration_id, round=round_no, final=final))
        return int(reply.page_server_port)


def _first_load_message(request: pb.LoadImageRequest, name: str | None, platform: str | None) -> pb.LoadImageRequest:
    if name is not None:
        request.name = name
    if platform is not None:
        request.platform = platform
    return request


def _registry_options(options: RegistryOptions | None) -> pb.RegistryOptions:
    """The options for the daemon's skopeo; its paths are the daemon host's, so they must be absolute
    (a relative one would depend on the daemon's working directory)."""
    paths = (("--cert-dir", options.cert_dir), ("--authfile", options.authfile)) if options is not None else ()
    for what, value in paths:
        if value is not None and not Path(value).is_absolute():
            raise InvalidArgument(f"{what} {value} over a daemon connection must be an absolute path on the daemon's host",
                                  hint="the daemon's skopeo reads it there; credentials of your own go with --creds USER:PASS")
    return cv.registry_options_to_pb(options)


def _copy_progress(progress: api.CopyProgressFn | None) -> api.ProgressFn | None:
    """skopeo's report lines (what a local pull shows) out of the daemon's progress events."""
    if progress is None:
        return None
    report = progress

    def on_event(event: api.ProgressEvent) -> None:
        if event.message:
            report(event.message)

    return on_event


# the daemon's spooled copy of an upload (migrate/remote/service.py SPOOL_PREFIXES): errors about it
# are told about the caller's own file
_SPOOLED = re.compile(r"/\S*/image-(?:load|import)-[A-Za-z0-9_]+\.tar")


def _about_local_file(exc: ContainerError, path: Path) -> None:
    """Tell ``exc`` about the caller's ``path`` instead of the daemon's spooled copy of it (in its
    message, hint and path attributes)."""
    local = str(path)
    if _SPOOLED.search(exc.message):
        exc.message = _SPOOLED.sub(lambda _m: local, exc.message)
        exc.args = (exc.message, *exc.args[1:])
    if exc.hint and _SPOOLED.search(exc.hint):
        exc.hint = _SPOOLED.sub(lambda _m: local, exc.hint)
    for attr in ("source", "path"):
        value = getattr(exc, attr, None)
        if isinstance(value, str) and _SPOOLED.fullmatch(value):
            setattr(exc, attr, local)


def _non_empty(requests: Iterator[Any], empty: Any) -> Iterator[Any]:
    """At least one message, so the daemon learns the migration id of an empty stream."""
    sent = False
    for request in requests:
        sent = True
        yield request
    if not sent:
        yield empty


def read_token(path: Path | None) -> str | None:
    """The bearer token in ``path`` (surrounding whitespace stripped), or None without a path; of a
    file of named tokens (migrate/remote/tokens.py: a daemon's), the first one."""
    from migrate.remote.tokens import read_tokens

    tokens = read_tokens(path)
    return next(iter(tokens.values())) if tokens else None
