"""The gRPC servicer for pymigrate.v1.Host: an adapter over an ``Engine``, plus its interceptors.

``HostServicer`` converts each request to the library's dataclasses (migrate/remote/convert.py), calls
the engine, and converts the answer back; it holds no policy of its own. Two server interceptors
wrap every method:

- ``TokenAuthInterceptor`` (when the daemon has a bearer token) checks ``authorization: Bearer``
  metadata in constant time on every RPC except the standard health service, and rejects others
  with UNAUTHENTICATED and a message that says nothing about the host.
- ``ErrorInterceptor`` turns exceptions into status codes and trailing metadata
  (migrate/remote/_rpc_errors.py). Unexpected exceptions are logged with their traceback here and leave
  as INTERNAL with only an incident id.

Cancellation and deadlines. Checkpoint, Restore and Migrate run the engine call in a worker
thread and stream its progress events. When the RPC terminates early (the client cancelled, its
deadline passed, the connection dropped), gRPC runs the callback registered with
``context.add_callback``, which sets a ``threading.Event``. The progress callback handed to the
engine then raises ``RpcCancelled`` the first time it is called (later calls return normally, so
rollback code that reports progress is not interrupted again) -- unless the operation already
reported a phase past its point of no return (``NO_RETURN_PHASES``: commit, cleanup, done), after
which progress never raises: a migration whose container already runs on the target finishes. Engines that wait long without
reporting progress can also poll ``progress.cancelled`` (the same Event). The engine's normal
failure path (rollback, thaw the source) handles the exception; the worker runs to the end even
though nobody reads its result any more.

Client-streaming calls (UploadCheckpoint, PushImage, PushUpper, PushCheckpoint) hand the engine an
iterator of chunk bytes; when the sender goes away mid-stream, or a chunk arrives out of order or
with a bad crc32, that iterator raises ``TransferError`` / ``ChecksumMismatch`` into the engine,
which cleans up what it received. ImportImage and LoadImage spool the upload into the state root's
tmp first (held while it is there, removed after) and hand the engine that file.

PullImage and PushImageToRegistry run like Checkpoint: skopeo's report lines stream as progress
events (phase "copy"); a cancelled call raises ``RpcCancelled`` at the next line, which kills skopeo
(runtime/registry.py), and nothing is stored. The request's ``creds`` are written only into the
0600 auth file of that one copy; nothing here logs a request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import tempfile
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import grpc

from migrate import api
from migrate.archive.streams import split_chunks
from migrate.remote import _rpc_errors
from migrate.remote import convert as cv
from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate._proto.pymigrate.v1 import host_pb2_grpc as pb_grpc
from migrate.remote._rpc_errors import RpcCancelled
from migrate import list_filters, paging
from migrate.paging import Page
from migrate.remote.idempotency import Claim, RequestStore
from migrate.remote.tokens import name_of
from migrate.errors import ChecksumMismatch, TransferError
from runtime.errors import InvalidArgument, Unsupported

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Host"].full_name  # "pymigrate.v1.Host"
NO_RETURN_PHASES = frozenset({"commit", "cleanup", "done"})
CHUNK_BYTES = 1 << 20  # data messages carry at most this much payload
HEALTH_PREFIX = "/grpc.health.v1.Health/"
# uploads spooled into the state root's tmp: names the image scratch sweep knows (runtime/image_store.py
# SCRATCH_PREFIXES) and the client recognises in errors (migrate/remote/client.py)
SPOOL_IMPORT = "image-import-"
SPOOL_LOAD = "image-load-"
AUTH_METADATA_KEY = "authorization"


# --- progress and cancellation -----------------------------------------------------------------


class CallProgress:
    """The progress callback given to the engine for one streamed call.

    Calling it queues the event for the client. After the call was cancelled, the first call
    raises ``RpcCancelled``; ``cancelled`` is the Event engines may poll during long waits.
    """

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.cancelled = threading.Event()
        self._raised = False
        self._past_no_return = False
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()

    def __call__(self, event: api.ProgressEvent) -> None:
        if event.phase in NO_RETURN_PHASES:
            self._past_no_return = True
        if self.cancelled.is_set():
            if not self._raised and not self._past_no_return:
                self._raised = True
                raise RpcCancelled(f"{self.operation} was cancelled by the caller", phase=event.phase or None)
            return
        self._queue.put(("progress", event))


def _stream_call(
    context: grpc.ServicerContext, operation: str, fn: Callable[[CallProgress], Any],
    keep: Callable[[Any], None] | None = None,
) -> Iterator[api.ProgressEvent | tuple[str, Any]]:
    """Run ``fn(progress)`` in a worker thread; yield its events, then ``("result", value)``.

    Exceptions raised by ``fn`` are re-raised here (in the RPC's thread) for the interceptor.
    ``keep(value)`` runs in the worker as soon as there is a result (a request_id record). A call
    whose caller left while the work runs (gRPC drops this generator at its next yield) waits for
    the work to end -- cancelled, it rolls back if it still can -- so the caller's hold on its
    request_id lasts as long as the work (a retry must not run beside it) and the result is kept.
    """
    progress = CallProgress(operation)
    if not context.add_callback(progress.cancelled.set):
        progress.cancelled.set()  # the RPC already terminated

    def work() -> None:
        try:
            value = fn(progress)
            if keep is not None:
                keep(value)
            progress._queue.put(("result", value))
        except BaseException as exc:  # handed to the RPC thread, which reports it
            progress._queue.put(("error", exc))

    worker = threading.Thread(target=work, name=f"pymigrate-{operation}", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = progress._queue.get()
            if kind == "progress":
                yield value
            elif kind == "result":
                yield ("result", value)
                return
            else:
                raise value
    finally:
        if worker.is_alive():  # the caller left mid-call: the work goes on until it ends
            progress.cancelled.set()
            worker.join()


# --- chunk streams --------------------------------------------------------------------------------


def _chunks(
    requests: Iterable[Any], what: str, *, migration_id: list[str] | None = None
) -> Iterator[bytes]:
    """Payloads of a client stream, checking seq order, crc32 and a constant migration_id."""
    expected_seq = 0
    iterator = iter(requests)
    while True:
        try:
            msg = next(iterator)
        except StopIteration:
            return
        except grpc.RpcError as exc:  # the client cancelled or the connection broke
            raise TransferError(f"the sender of {what} went away after {expected_seq} chunks", phase="transfer") from exc
        if migration_id is not None:
            if not migration_id:
                migration_id.append(msg.migration_id)
            elif msg.migration_id and msg.migration_id != migration_id[0]:
                raise InvalidArgument(f"{what}: chunk {msg.seq} belongs to migration {msg.migration_id}, expected {migration_id[0]}")
        if msg.seq != expected_seq:
            raise TransferError(f"{what}: chunk {msg.seq} arrived, expected chunk {expected_seq}", phase="transfer")
        if msg.HasField("crc32"):
            actual = zlib.crc32(msg.data)
            if actual != msg.crc32:
                raise ChecksumMismatch(f"{what} chunk {msg.seq}", f"crc32 {msg.crc32:08x}", f"crc32 {actual:08x}")
        expected_seq += 1
        if msg.data:
            yield msg.data


def _first_migration_id(requests: Iterator[Any], what: str) -> tuple[str, Iterator[Any]]:
    """Peek at the first message of a push stream for its migration id."""
    try:
        first = next(requests)
    except StopIteration:
        raise InvalidArgument(f"{what}: empty stream, expected chunks with a migration_id") from None
    except grpc.RpcError as exc:
        raise TransferError(f"the sender of {what} went away before the first chunk", phase="transfer") from exc
    if not first.migration_id:
        raise InvalidArgument(f"{what}: the first chunk has no migration_id")

    def rest() -> Iterator[Any]:
        yield first
        yield from requests

    return first.migration_id, rest()


# --- the servicer -------------------------------------------------------------------------------


class HostServicer(pb_grpc.HostServicer):
    """Adapter: pymigrate.v1.Host over an ``Engine`` (and its ``MigrationTarget`` methods)."""

    def __init__(self, engine: api.Engine, *, spool_dir: Path | None = None) -> None:
        self.engine = engine
        self.spool_dir = spool_dir  # where ImportImage parks a tarball; None: the system tmp
        root = getattr(engine, "root", None)  # request_id records: ROOT/requests (migrate/remote/idempotency.py)
        self.requests = RequestStore(Path(root) / "requests" if root is not None else None)

    def _target(self, method: str) -> Any:
        fn = getattr(self.engine, method, None)
        if fn is None:
            raise Unsupported(method, "this daemon's engine does not implement it")
        return fn

    # host
    def GetHostInfo(self, request: pb.GetHostInfoRequest, context: grpc.ServicerContext) -> pb.GetHostInfoResponse:
        from migrate.migration.cold_lazy import DEV_FEATURE, binds_dev

        info = self.engine.host_info()  # + what this daemon does as a migration target (its environment)
        info = dataclasses.replace(info, features={**info.features, DEV_FEATURE: binds_dev()})
        return pb.GetHostInfoResponse(host=cv.host_to_pb(info))

    # images
    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext) -> pb.ListImagesResponse:
        page = _page(request, "images", lambda f: list_filters.select(self.engine.images(), f, list_filters.IMAGE_KEYS, "images"),
                     lambda i: (i.created_at, i.name))
        return pb.ListImagesResponse(images=[cv.image_to_pb(i) for i in page.items], next_page_token=page.next_page_token)

    @contextlib.contextmanager
    def _spooled(self, chunks: Iterator[bytes], prefix: str) -> Iterator[Path]:
        """An upload written to a file ``spool_dir/PREFIX*.tar`` (the state root's tmp), held
        (runtime/scratch.py: an image prune in another process sweeps that dir and leaves alone only
        what a live process holds) until the block is done, then removed."""
        from runtime.scratch import held

        if self.spool_dir is not None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tar", dir=self.spool_dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, held(path):
                for chunk in chunks:
                    out.write(chunk)
                out.flush()
                yield path
        finally:
            path.unlink(missing_ok=True)

    def ImportImage(self, request_iterator: Iterator[pb.ImportImageRequest], context: grpc.ServicerContext) -> pb.ImportImageResponse:
        first, requests = _first_request(request_iterator, "image import")
        if first is None or not first.name:
            raise InvalidArgument("image import: the first message names no image")
        with self._spooled((m.data for m in requests), SPOOL_IMPORT) as tarball:
            info = self.engine.image_import(first.name, tarball)
        return pb.ImportImageResponse(image=cv.image_to_pb(info))

    def LoadImage(self, request_iterator: Iterator[pb.LoadImageRequest], context: grpc.ServicerContext) -> pb.LoadImageResponse:
        load = self._target("image_load")
        first, requests = _first_request(request_iterator, "image load")
        if first is None:
            raise InvalidArgument("image load: empty stream, expected the archive's chunks")
        name = first.name if first.HasField("name") else None
        platform = first.platform if first.HasField("platform") else None
        with self._spooled(_chunks(requests, "image load"), SPOOL_LOAD) as archive:
            info = load(archive, name=name, platform=platform)
        return pb.LoadImageResponse(image=cv.image_to_pb(info))

    def InspectImage(self, request: pb.InspectImageRequest, context: grpc.ServicerContext) -> pb.InspectImageResponse:
        return cv.image_details_to_pb(self._target("image_inspect")(request.name))

    def PullImage(self, request: pb.PullImageRequest, context: grpc.ServicerContext) -> Iterator[pb.PullImageResponse]:
        pull = self._target("image_pull")
        options = cv.registry_options_from_pb(request.registry)
        name = request.name if request.HasField("name") else None
        platform = request.platform if request.HasField("platform") else None

        def work(progress: CallProgress) -> api.ImageInfo:
            return pull(request.reference, name=name, platform=platform, options=options, progress=_copy_lines(progress, "pull"))

        for item in _stream_call(context, "pull", work):
            if isinstance(item, tuple):
                yield pb.PullImageResponse(result=cv.image_to_pb(item[1]))
            else:
                yield pb.PullImageResponse(progress=cv.progress_to_pb(item))

    def PushImageToRegistry(self, request: pb.PushImageToRegistryRequest,
                            context: grpc.ServicerContext) -> Iterator[pb.PushImageToRegistryResponse]:
        push = self._target("image_push")
        options = cv.registry_options_from_pb(request.registry)

        def work(progress: CallProgress) -> Any:
            return push(request.name, request.reference, options=options, progress=_copy_lines(progress, "push"))

        for item in _stream_call(context, "push", work):
            if isinstance(item, tuple):
                yield pb.PushImageToRegistryResponse(result=cv.push_result_to_pb(item[1]))
            else:
                yield pb.PushImageToRegistryResponse(progress=cv.progress_to_pb(item))

    def RemoveImage(self, request: pb.RemoveImageRequest, context: grpc.ServicerContext) -> pb.RemoveImageResponse:
        return pb.RemoveImageResponse(removed=cv.image_removal_to_pb(self.engine.image_remove(request.name)))

    def TagImage(self, request: pb.TagImageRequest, context: grpc.ServicerContext) -> pb.TagImageResponse:
        return pb.TagImageResponse(image=cv.image_to_pb(self._target("image_tag")(request.source, request.target)))

    def CommitContainer(self, request: pb.CommitContainerRequest, context: grpc.ServicerContext) -> pb.CommitContainerResponse:
        options = api.CommitOptions(changes=tuple(request.changes), message=request.message, author=request.author,
                                    pause=not request.no_pause)
        result = self._target("commit")(request.name, request.target, options)
        return pb.CommitContainerResponse(result=cv.commit_result_to_pb(result))

    # -- named volumes ----------------------------------------------------------------------------
    def VolumeCreate(self, request: pb.VolumeCreateRequest, context: grpc.ServicerContext) -> pb.VolumeCreateResponse:
        info = self._target("volume_create")(request.name or None, tuple(request.labels))
        return pb.VolumeCreateResponse(volume=cv.volume_info_to_pb(info))

    def VolumeList(self, request: pb.VolumeListRequest, context: grpc.ServicerContext) -> pb.VolumeListResponse:
        page = _page(request, "volumes", lambda f: list_filters.select(self._target("volumes")(), f, list_filters.VOLUME_KEYS, "volumes"),
                     lambda v: (v.created_at, v.name))
        return pb.VolumeListResponse(volumes=[cv.volume_info_to_pb(v) for v in page.items], next_page_token=page.next_page_token)

    def VolumeInspect(self, request: pb.VolumeInspectRequest, context: grpc.ServicerContext) -> pb.VolumeInspectResponse:
        return pb.VolumeInspectResponse(volume=cv.volume_info_to_pb(self._target("volume_inspect")(request.name)))

    def VolumeRemove(self, request: pb.VolumeRemoveRequest, context: grpc.ServicerContext) -> pb.VolumeRemoveResponse:
        return pb.VolumeRemoveResponse(removed=bool(self._target("volume_remove")(request.name, force=request.force)))

    def VolumePrune(self, request: pb.VolumePruneRequest, context: grpc.ServicerContext) -> pb.VolumePruneResponse:
        result = self._target("volume_prune")()
        return pb.VolumePruneResponse(removed=list(result.removed), bytes_freed=result.bytes_freed)

    def PruneImages(self, request: pb.PruneImagesRequest, context: grpc.ServicerContext) -> pb.PruneImagesResponse:
        return pb.PruneImagesResponse(removed=cv.image_removal_to_pb(self._target("image_prune")(all=request.all)))

    def BuildBusyboxImage(self, request: pb.BuildBusyboxImageRequest, context: grpc.ServicerContext) -> pb.BuildBusyboxImageResponse:
        build = self._target("image_build_busybox")
        info = build(request.name) if request.HasField("name") else build()
        return pb.BuildBusyboxImageResponse(image=cv.image_to_pb(info))

    # containers
    def ListContainers(self, request: pb.ListContainersRequest, context: grpc.ServicerContext) -> pb.ListContainersResponse:
        page = _page(request, "containers" + (" all" if request.all else ""), self._containers(request.all),
                     lambda c: (c.spec.created_at, c.spec.container_id))
        return pb.ListContainersResponse(containers=[cv.container_to_pb(c) for c in page.items], next_page_token=page.next_page_token)

    def _containers(self, all: bool) -> Callable[[Any], list[Any]]:
        def listed(entries: Any) -> list[Any]:
            from migrate import container_filter

            filters = container_filter.parse_filters(entries)  # ps --filter's rules, stopped ones too when asked
            return container_filter.select(self.engine.containers(all=all or filters.wants_stopped()), filters)
        return listed

    def InspectContainer(self, request: pb.InspectContainerRequest, context: grpc.ServicerContext) -> pb.InspectContainerResponse:
        return pb.InspectContainerResponse(container=cv.container_to_pb(self.engine.inspect(request.name)))

    def RunContainer(self, request: pb.RunContainerRequest, context: grpc.ServicerContext) -> pb.RunContainerResponse:
        with self.requests.claim("RunContainer", request.request_id, _body(request), context.is_active) as claim:
            if claim.result is not None:
                return pb.RunContainerResponse.FromString(claim.result)
            reply = pb.RunContainerResponse(container=cv.container_to_pb(self.engine.run(cv.run_options_from_pb(request))))
            claim.record(reply.SerializeToString())
            return reply

    def StopContainer(self, request: pb.StopContainerRequest, context: grpc.ServicerContext) -> pb.StopContainerResponse:
        timeout_s = cv.seconds_of(request, "timeout", "timeout_s")  # the Duration wins over the double
        if timeout_s is None:
            timeout_s = 10.0
        return pb.StopContainerResponse(container=cv.container_to_pb(self.engine.stop(request.name, timeout_s=timeout_s)))

    def KillContainer(self, request: pb.KillContainerRequest, context: grpc.ServicerContext) -> pb.KillContainerResponse:
        self.engine.kill(request.name, signal=request.signal if request.HasField("signal") else 9)
        return pb.KillContainerResponse()

    def RemoveContainer(self, request: pb.RemoveContainerRequest, context: grpc.ServicerContext) -> pb.RemoveContainerResponse:
        self.engine.remove(request.name, force=request.force)
        return pb.RemoveContainerResponse()

    def PauseContainer(self, request: pb.PauseContainerRequest, context: grpc.ServicerContext) -> pb.PauseContainerResponse:
        return pb.PauseContainerResponse(container=cv.container_to_pb(self.engine.pause(request.name)))

    def UnpauseContainer(self, request: pb.UnpauseContainerRequest, context: grpc.ServicerContext) -> pb.UnpauseContainerResponse:
        return pb.UnpauseContainerResponse(container=cv.container_to_pb(self.engine.unpause(request.name)))

    def StreamLogs(self, request: pb.StreamLogsRequest, context: grpc.ServicerContext) -> Iterator[pb.StreamLogsResponse]:
        # A following log iterator yields empty entries now and then so a cancelled call is
        # noticed here even when the container is silent; one response per line (at most
        # runtime.logs.MAX_LINE bytes), with its stream and time.
        for entry in self.engine.logs(request.name, **cv.logs_arguments(request)):
            if not context.is_active():
                return
            if entry.data:
                yield cv.log_entry_to_pb(entry)

    def WaitContainer(self, request: pb.WaitContainerRequest, context: grpc.ServicerContext) -> pb.WaitContainerResponse:
        timeout_s = cv.seconds_of(request, "timeout", "timeout_s")
        return pb.WaitContainerResponse(exit_code=self._target("wait")(request.name, timeout_s=timeout_s))

    def CreateContainer(self, request: pb.CreateContainerRequest, context: grpc.ServicerContext) -> pb.CreateContainerResponse:
        options = cv.run_options_from_pb(request.options)
        return pb.CreateContainerResponse(container=cv.container_to_pb(self._target("create")(options)))

    def StartContainer(self, request: pb.StartContainerRequest, context: grpc.ServicerContext) -> pb.StartContainerResponse:
        # the engine's start launches the shim through the daemon's launcher (runtime/start.py)
        return pb.StartContainerResponse(container=cv.container_to_pb(self._target("start")(request.name)))

    def RenameContainer(self, request: pb.RenameContainerRequest, context: grpc.ServicerContext) -> pb.RenameContainerResponse:
        return pb.RenameContainerResponse(container=cv.container_to_pb(self._target("rename")(request.name, request.new_name)))

    # checkpoints
    def Checkpoint(self, request: pb.CheckpointRequest, context: grpc.ServicerContext) -> Iterator[pb.CheckpointResponse]:
        options = cv.checkpoint_options_from_pb(request)
        with self.requests.claim("Checkpoint", request.request_id, _body(request), context.is_active) as claim:
            if claim.result is not None:
                yield pb.CheckpointResponse.FromString(claim.result)
                return
            keep = _keeper(claim, lambda r: pb.CheckpointResponse(result=cv.checkpoint_result_to_pb(r)))
            for item in _stream_call(context, "checkpoint", lambda progress: self.engine.checkpoint(request.name, options, progress), keep):
                if isinstance(item, tuple):
                    yield pb.CheckpointResponse(result=cv.checkpoint_result_to_pb(item[1]))
                else:
                    yield pb.CheckpointResponse(progress=cv.progress_to_pb(item))

    def Restore(self, request: pb.RestoreRequest, context: grpc.ServicerContext) -> Iterator[pb.RestoreResponse]:
        options = cv.restore_options_from_pb(request)
        if not options.checkpoint_id and not options.image_ref:
            raise InvalidArgument("restore needs a checkpoint_id held by this daemon (upload the archive first) "
                                  "or the image_ref of a checkpoint image")
        with self.requests.claim("Restore", request.request_id, _body(request), context.is_active) as claim:
            if claim.result is not None:
                yield pb.RestoreResponse.FromString(claim.result)
                return
            keep = _keeper(claim, lambda r: pb.RestoreResponse(result=cv.restore_result_to_pb(r)))
            for item in _stream_call(context, "restore", lambda progress: self.engine.restore(options, progress), keep):
                if isinstance(item, tuple):
                    yield pb.RestoreResponse(result=cv.restore_result_to_pb(item[1]))
                else:
                    yield pb.RestoreResponse(progress=cv.progress_to_pb(item))

    def ListCheckpoints(self, request: pb.ListCheckpointsRequest, context: grpc.ServicerContext) -> pb.ListCheckpointsResponse:
        page = _page(request, "checkpoints",
                     lambda f: list_filters.select(self.engine.checkpoints(), f, list_filters.CHECKPOINT_KEYS, "checkpoints"),
                     lambda c: (c.created_at, c.checkpoint_id))
        return pb.ListCheckpointsResponse(checkpoints=[cv.checkpoint_info_to_pb(c) for c in page.items],
                                          next_page_token=page.next_page_token)

    def RemoveCheckpoint(self, request: pb.RemoveCheckpointRequest, context: grpc.ServicerContext) -> pb.RemoveCheckpointResponse:
        self.engine.checkpoint_remove(request.checkpoint_id)
        return pb.RemoveCheckpointResponse()

    def InspectCheckpoint(self, request: pb.InspectCheckpointRequest, context: grpc.ServicerContext) -> pb.InspectCheckpointResponse:
        manifest = self._target("checkpoint_inspect")(request.checkpoint_id)
        return pb.InspectCheckpointResponse(manifest_json=json.dumps(manifest, sort_keys=True, default=str))

    def DownloadCheckpoint(self, request: pb.DownloadCheckpointRequest, context: grpc.ServicerContext) -> Iterator[pb.DownloadCheckpointResponse]:
        export = self._target("export_checkpoint")
        for seq, piece in enumerate(split_chunks(export(request.checkpoint_id), CHUNK_BYTES)):
            if not context.is_active():
                return
            yield pb.DownloadCheckpointResponse(data=piece, seq=seq, crc32=zlib.crc32(piece))

    def UploadCheckpoint(self, request_iterator: Iterator[pb.UploadCheckpointRequest], context: grpc.ServicerContext) -> pb.UploadCheckpointResponse:
        info = self._target("import_checkpoint")(_chunks(request_iterator, "checkpoint upload"))
        return pb.UploadCheckpointResponse(checkpoint=cv.checkpoint_info_to_pb(info))

    # migration
    def Migrate(self, request: pb.MigrateRequest, context: grpc.ServicerContext) -> Iterator[pb.MigrateResponse]:
        options = cv.migrate_options_from_pb(request)
        with self.requests.claim("Migrate", request.request_id, _body(request), context.is_active) as claim:
            if claim.result is not None:
                yield pb.MigrateResponse.FromString(claim.result)
                return
            if request.request_id:  # a daemon that dies mid-call leaves a note its retry reads (migrate_retry.py)
                from migrate.remote import migrate_retry

                settled = migrate_retry.settled_result(getattr(self.engine, "root", None), request, claim.interrupted)
                if settled is not None:
                    yield _recorded(claim, pb.MigrateResponse(result=cv.migrate_result_to_pb(settled)))
                    return
                claim.begin(migrate_retry.note(self.engine, request, claim.interrupted))
            yield from self._migrate(request, options, context, claim)

    def _migrate(self, request: pb.MigrateRequest, options: api.MigrateOptions, context: grpc.ServicerContext,
                 claim: Claim) -> Iterator[pb.MigrateResponse]:
        phase, phase_start_s, phase_start_bytes = "", 0.0, 0
        keep = _keeper(claim, lambda r: pb.MigrateResponse(result=cv.migrate_result_to_pb(r)))
        for item in _stream_call(context, "migrate", lambda progress: self.engine.migrate(request.name, options, progress), keep):
            if isinstance(item, tuple):
                yield pb.MigrateResponse(result=cv.migrate_result_to_pb(item[1]))
                continue
            if item.phase != phase:
                phase, phase_start_s, phase_start_bytes = item.phase, item.elapsed_s, item.bytes_done
            dt = item.elapsed_s - phase_start_s
            rate = (item.bytes_done - phase_start_bytes) / dt if dt > 0 else 0.0
            yield pb.MigrateResponse(event=cv.migration_event_to_pb(item, max(rate, 0.0)))

    # daemon to daemon
    def PrepareIncoming(self, request: pb.PrepareIncomingRequest, context: grpc.ServicerContext) -> pb.PrepareIncomingResponse:
        incoming = dataclasses.replace(cv.incoming_request_from_pb(request), source_address=_peer_ip(context.peer()))
        ticket = self._target("prepare_incoming")(incoming)
        return cv.ticket_to_pb(ticket)

    def PushImage(self, request_iterator: Iterator[pb.PushImageRequest], context: grpc.ServicerContext) -> pb.PushImageResponse:
        receive = self._target("receive_image")
        migration_id, requests = _first_migration_id(request_iterator, "image push")
        receive(migration_id, _chunks(requests, f"image push of migration {migration_id}", migration_id=[migration_id]))
        return pb.PushImageResponse()

    def PushUpper(self, request_iterator: Iterator[pb.PushUpperRequest], context: grpc.ServicerContext) -> pb.PushUpperResponse:
        receive = self._target("receive_upper")
        migration_id, requests = _first_migration_id(request_iterator, "upper layer push")
        entries = receive(migration_id, _chunks(requests, f"upper layer push of migration {migration_id}", migration_id=[migration_id]))
        return pb.PushUpperResponse(entries=entries)

    def PushCheckpoint(self, request_iterator: Iterator[pb.PushCheckpointRequest], context: grpc.ServicerContext) -> pb.PushCheckpointResponse:
        receive = self._target("receive_checkpoint")
        migration_id, requests = _first_migration_id(request_iterator, "checkpoint push")
        result = receive(migration_id, _chunks(requests, f"checkpoint push of migration {migration_id}", migration_id=[migration_id]))
        return pb.PushCheckpointResponse(container=cv.container_to_pb(result.container), stats=cv.restore_stats_to_pb(result.stats))

    def AbortIncoming(self, request: pb.AbortIncomingRequest, context: grpc.ServicerContext) -> pb.AbortIncomingResponse:
        self._target("abort_incoming")(request.migration_id)
        return pb.AbortIncomingResponse()

    def CommitIncoming(self, request: pb.CommitIncomingRequest, context: grpc.ServicerContext) -> pb.CommitIncomingResponse:
        self._target("commit_incoming")(request.migration_id)
        return pb.CommitIncomingResponse()

    def SettleMigration(self, request: pb.SettleMigrationRequest, context: grpc.ServicerContext) -> pb.SettleMigrationResponse:
        settlement = self._target("settle_migration")(request.migration_id, request.container_id, ask_source=request.ask_source)
        return cv.settlement_to_pb(settlement)

    def StartPrecopyRound(self, request: pb.StartPrecopyRoundRequest, context: grpc.ServicerContext) -> pb.StartPrecopyRoundResponse:
        port = self._target("start_precopy_round")(request.migration_id, request.round, final=request.final,
                                                   source_address=_peer_ip(context.peer()))
        return pb.StartPrecopyRoundResponse(page_server_port=port)

    # exec, attach, stats (issue 15): a helper process per Exec/Attach (migrate/remote/exec_stream.py)
    def Exec(self, request_iterator: Iterator[pb.ExecRequest], context: grpc.ServicerContext) -> Iterator[pb.ExecResponse]:
        from migrate.remote.exec_stream import serve_exec

        yield from serve_exec(self.engine, request_iterator, context)

    def Attach(self, request_iterator: Iterator[pb.AttachRequest], context: grpc.ServicerContext) -> Iterator[pb.AttachResponse]:
        from migrate.remote.exec_stream import serve_attach

        yield from serve_attach(self.engine, request_iterator, context)

    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> Iterator[pb.StatsResponse]:
        from migrate.remote.stats_stream import serve_stats

        yield from serve_stats(self.engine, request, context)

    # events (issue 15): the state root's journal (runtime/events.py), followed until cancelled
    events_keepalive_s = 1.0  # an idle watch sends an empty response this often

    def WatchEvents(self, request: pb.WatchEventsRequest, context: grpc.ServicerContext) -> Iterator[pb.WatchEventsResponse]:
        since = request.since if request.HasField("since") else None
        idle_since = time.monotonic()
        for event in self.engine.events(since, tuple(request.filter)):
            if not context.is_active():
                return
            if event is not None:
                idle_since = time.monotonic()
                yield pb.WatchEventsResponse(event=cv.event_to_pb(event))
            elif time.monotonic() - idle_since >= self.events_keepalive_s:  # lets a client with an end time stop
                idle_since = time.monotonic()
                yield pb.WatchEventsResponse()


# --- lists and retries (issue 15): AIP-158 pages, request_id records ----------------------------------


def _page(request: Any, scope: str, listed: Callable[[Any], list[Any]], key: Callable[[Any], Any]) -> Page[Any]:
    """One page of ``listed(request.filter)`` sorted by ``key``; the token is bound to scope and filters
    (checked before anything is listed)."""
    entries = list(request.filter)
    if request.page_token:
        paging.decode_token(request.page_token, paging.filter_digest(scope, entries))
    return paging.paginate(listed(entries), key, size=request.page_size, token=request.page_token,
                           scope=scope, filters=entries)


def _body(request: Any) -> bytes:
    """The request as its request_id record compares it: deterministic bytes without the id."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return copy.SerializeToString(deterministic=True)


def _recorded(claim: Claim, response: Any) -> Any:
    claim.record(response.SerializeToString())
    return response


def _keeper(claim: Claim, respond: Callable[[Any], Any]) -> Callable[[Any], None]:
    """What ``_stream_call`` runs on a result: the final response recorded for the request_id."""
    return lambda result: claim.record(respond(result).SerializeToString())


def _peer_ip(peer: str) -> str | None:
    """The IP of a gRPC peer string ("ipv4:10.0.0.2:5000", "ipv6:[::1]:5000"); None for unix peers."""
    if peer.startswith("ipv4:"):
        return peer[len("ipv4:"):].rsplit(":", 1)[0]
    if peer.startswith("ipv6:"):
        return peer[len("ipv6:"):].rsplit(":", 1)[0].strip("[]").split("%", 1)[0]
    return None


def _first_request(requests: Iterator[Any], what: str) -> tuple[Any, Iterator[Any]]:
    """The first message of a client stream (None: an empty stream) and all of them, in order."""
    messages = _requests_or_transfer_error(requests, what)
    first = next(messages, None)
    if first is None:
        return None, iter(())

    def all_of_them() -> Iterator[Any]:
        yield first
        yield from messages

    return first, all_of_them()


def _copy_lines(progress: CallProgress, operation: str) -> Callable[[str], None]:
    """skopeo's report lines (runtime/registry.py) as progress events of ``operation``."""
    start = time.monotonic()

    def report(line: str) -> None:
        progress(api.ProgressEvent(operation=operation, phase="copy", elapsed_s=time.monotonic() - start, message=line))

    return report


def _requests_or_transfer_error(requests: Iterator[Any], what: str) -> Iterator[Any]:
    iterator = iter(requests)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except grpc.RpcError as exc:
            raise TransferError(f"the sender of {what} went away mid-stream", phase="transfer") from exc


# --- interceptors ---------------------------------------------------------------------------------


def _abort_with(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    """Report ``exc`` on ``context`` as a status (raises, as ``context.abort`` does)."""
    code, public = _rpc_errors.status_for(exc)
    if isinstance(exc, NotImplementedError):  # an engine method not written yet
        log.warning("%s is not implemented by this daemon's engine: %s", method, exc)
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by this daemon")
    if not public:
        incident = uuid.uuid4().hex[:12]
        log.error("internal error in %s (incident %s)", method, incident, exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in the pymigrate daemon (incident {incident}, see its log)")
    code, details, metadata = _rpc_errors.encode(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("%s failed: %s", method, exc, exc_info=exc)
    else:
        log.info("%s failed: %s: %s", method, type(exc).__name__, exc)
    context.set_trailing_metadata(metadata)
    context.abort(code, details)


def _wrap_behavior(behavior: Callable[..., Any], streaming_response: bool, method: str) -> Callable[..., Any]:
    if streaming_response:

        def stream(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from behavior(request_or_iterator, context)
            except Exception as exc:
                if not context.is_active() and isinstance(exc, RpcCancelled):
                    return  # nobody is listening any more
                _abort_with(context, exc, method)

        return stream

    def unary(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request_or_iterator, context)
        except Exception as exc:
            _abort_with(context, exc, method)

    return unary


def replace_behavior(handler: grpc.RpcMethodHandler, make: Callable[[Callable[..., Any], bool], Callable[..., Any]]) -> grpc.RpcMethodHandler:
    """The handler with its behaviour wrapped by ``make(behavior, streaming_response)`` (the
    interceptors' one way to wrap any of the four kinds; access_log.py uses it too)."""
    if handler.request_streaming and handler.response_streaming:
        return handler._replace(stream_stream=make(handler.stream_stream, True))  # type: ignore[attr-defined]
    if handler.request_streaming:
        return handler._replace(stream_unary=make(handler.stream_unary, False))  # type: ignore[attr-defined]
    if handler.response_streaming:
        return handler._replace(unary_stream=make(handler.unary_stream, True))  # type: ignore[attr-defined]
    return handler._replace(unary_unary=make(handler.unary_unary, False))  # type: ignore[attr-defined]


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps exceptions raised by any handler to status codes (see migrate/remote/_rpc_errors.py)."""

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return replace_behavior(handler, lambda behavior, streaming: _wrap_behavior(behavior, streaming, method))


class RefusalLog:
    """Logs refused calls without letting a caller flood the log: per peer (its address without
    the port), the first ``burst`` refusals of each ``window_s`` are logged one by one, the rest are
    counted and reported in one summary line when that peer's next window begins (or by
    ``flush``). Thread-safe: gRPC handlers run on a pool."""

    def __init__(self, *, burst: int = 5, window_s: float = 60.0, max_peers: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.window_s = window_s
        self.max_peers = max_peers
        self._clock = clock
        self._lock = threading.Lock()
        self._peers: dict[str, list[float | int]] = {}  # peer -> [window start, logged, suppressed]

    def refused(self, peer: str, method: str, reason: str) -> None:
        key = _peer_host(peer)
        now = self._clock()
        with self._lock:
            entry = self._peers.get(key)
            if entry is None or now - entry[0] >= self.window_s:
                if entry is not None and entry[2]:
                    log.warning("refused %d more calls from %s in %.0fs (%s)", entry[2], key, self.window_s, reason)
                if entry is None and len(self._peers) >= self.max_peers:
                    self._peers.pop(next(iter(self._peers)))  # bounded memory under a spray of addresses
                entry = self._peers[key] = [now, 0, 0]
            if entry[1] < self.burst:
                entry[1] += 1
                log.warning("refused %s from %s: %s", method, key, reason)
                if entry[1] == self.burst:
                    log.warning("more refused calls from %s within %.0fs are counted, not logged", key, self.window_s)
            else:
                entry[2] += 1

    def flush(self) -> None:
        """Report every peer's suppressed count now (on stop)."""
        with self._lock:
            for key, entry in self._peers.items():
                if entry[2]:
                    log.warning("refused %d more calls from %s", entry[2], key)
                    entry[2] = 0


def _peer_host(peer: str) -> str:
    """``ipv4:10.0.0.1:5000`` -> ``10.0.0.1``; ``ipv6:[::1]:5000`` -> ``::1``; unix peers as given."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rpartition(":")[0] or rest
        return host.strip("[]")
    return peer or "unknown"


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every RPC except the health service; ``token``:
    the one token, or name -> token (migrate/remote/tokens.py: any of them passes)."""

    def __init__(self, token: str | Mapping[str, str], *, refusals: RefusalLog | None = None) -> None:
        self._tokens = {"token": token} if isinstance(token, str) else dict(token)
        if not self._tokens or not all(self._tokens.values()):
            raise InvalidArgument("the daemon's bearer token is empty")
        self.refusals = refusals or RefusalLog()

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        if method.startswith(HEALTH_PREFIX):
            return continuation(handler_call_details)
        presented = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTH_METADATA_KEY:
                presented = value.encode() if isinstance(value, str) else value
                break
        # compare_digest (tokens.name_of): the time taken does not depend on how much of a token matched.
        if name_of(self._tokens, presented) is not None:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            self.refusals.refused("", method, "missing or wrong bearer token")
            return None
        refusals = self.refusals

        def deny(behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
            def refuse(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
                # logged here, where the caller's address is known (rate-limited per address)
                refusals.refused(context.peer(), method, "missing or wrong bearer token")
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid credentials")

            return refuse

        return replace_behavior(handler, deny)
