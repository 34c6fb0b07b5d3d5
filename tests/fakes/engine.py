"""FakeEngine: the ``Engine`` and ``MigrationTarget`` API in memory, for service/client tests.

State is plain dicts; behaviour follows the real engine's contract closely enough for the RPC
layer: names or ids select containers, wrong states raise ``InvalidState``, unknown names raise
the ``*NotFound`` errors, checkpoints are byte strings, migrations go through a peer engine's
``prepare_incoming`` / ``receive_*`` / ``commit_incoming`` (a ``RemoteEngine`` in tests, so two
in-process daemons really talk to each other).

Test hooks:
    ``fail[method] = exc``      the next call of ``method`` raises ``exc`` (one shot)
    ``calls``                   names of the methods called, in order
    ``checkpoint_steps``        progress events a checkpoint/migration emits (with ``step_delay_s``)
    ``cancelled``               an Event set when a progress callback raised (the call was cancelled)
    ``copy_lines``              skopeo-like report lines image_pull / image_push give their progress
    ``registry_calls``, ``loaded``, ``image_configs``   what pull/push/load got, what inspect shows
    ``peer_factory(dest)``      how migrate() reaches the target engine
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

from migrate import api
from migrate.errors import CheckpointNotFound, IncompatibleHost
from runtime.errors import ContainerExists, ContainerNotFound, ImageNotFound, InvalidArgument, InvalidState
from runtime.logs import LogEntry
from runtime.registry import PushResult, RegistryOptions
from runtime.spec import ContainerInfo, ContainerSpec, ContainerState


class FakeEngine:
    def __init__(
        self,
        *,
        hostname: str = "fake-host",
        peer_factory: Callable[[str], object] | None = None,
        checkpoint_size_bytes: int = 64 << 10,
    ) -> None:
        self.hostname = hostname
        self.peer_factory = peer_factory
        self.checkpoint_size_bytes = checkpoint_size_bytes
        self.fail: dict[str, BaseException] = {}
        self.calls: list[str] = []
        self.checkpoint_steps = 3
        self.step_delay_s = 0.0
        self.cancelled = threading.Event()
        self.progress_calls_after_cancel = 0
        self._lock = threading.RLock()
        self._images: dict[str, api.ImageInfo] = {}
        self._image_data: dict[str, bytes] = {}
        self._containers: dict[str, ContainerInfo] = {}
        self._logs: dict[str, bytes] = {}  # a line starting "err:" is on stderr
        self.logs_calls: list[dict[str, object]] = []
        self._checkpoints: dict[str, tuple[api.CheckpointInfo, bytes]] = {}
        self._incoming: dict[str, dict] = {}
        self.settled: dict[str, str] = {}  # migration id -> outcome (target side, as migrate.migration.target records it)
        self.received_image_bytes: dict[str, bytes] = {}
        self.loaded: list[tuple[str | None, str | None, bytes]] = []  # image_load: name, platform, the archive
        self.registry_calls: list[tuple[object, ...]] = []  # image_pull / image_push arguments
        self.copy_lines: tuple[str, ...] = ("Getting image source signatures", "Copying blob sha256:0123",
                                            "Writing manifest to image destination")
        self.image_configs: dict[str, dict] = {}  # digest -> the config image_inspect shows

    # --- helpers ------------------------------------------------------------------------------

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        exc = self.fail.pop(method, None)
        if exc is not None:
            raise exc

    def _find(self, name: str) -> ContainerInfo:
        with self._lock:
            for info in self._containers.values():
                if name in (info.spec.name, info.spec.container_id):
                    return info
        raise ContainerNotFound(name)

    def _put(self, info: ContainerInfo) -> ContainerInfo:
        with self._lock:
            self._containers[info.spec.container_id] = info
        return info

    def _set_state(self, info: ContainerInfo, **changes: object) -> ContainerInfo:
        return self._put(dataclasses.replace(info, state=dataclasses.replace(info.state, **changes)))

    def _steps(self, operation: str, phases: tuple[str, ...], progress: api.ProgressFn | None, total: int) -> None:
        start = time.monotonic()
        for index, phase in enumerate(phases):
            for step in range(self.checkpoint_steps):
                if progress is not None:
                    try:
                        progress(
                            api.ProgressEvent(
                                operation=operation,
                                phase=phase,
                                bytes_done=total * (step + 1) // self.checkpoint_steps,
                                bytes_total=total,
                                elapsed_s=time.monotonic() - start + index + step * 0.1,
                            )
                        )
                    except Exception:
                        self.cancelled.set()
                        raise
                if self.step_delay_s:
                    time.sleep(self.step_delay_s)

    # --- host ---------------------------------------------------------------------------------

    def host_info(self) -> api.HostInfo:
        self._enter("host_info")
        return api.HostInfo(
            version="0.1.0",
            hostname=self.hostname,
            kernel="6.18.0-fake",
            criu_version="4.1.1",
            features={"mem_dirty_track": False, "uffd_noncoop": True},
            cgroup_mode="hybrid",
            cpu_digest="sha256:" + "c" * 64,
            images=tuple(self.images()),
        )

    # --- images -------------------------------------------------------------------------------

    def images(self) -> list[api.ImageInfo]:
        self._enter("images")
        with self._lock:
            return sorted(self._images.values(), key=lambda i: i.name)

    def image_import(self, name: str, tarball: Path) -> api.ImageInfo:
        self._enter("image_import")
        data = Path(tarball).read_bytes()
        info = api.ImageInfo(name=name, digest="sha256:" + hashlib.sha256(data).hexdigest(), size_bytes=len(data), created_at=time.time())
        with self._lock:
            self._images[name] = info
            self._image_data[info.digest] = data
        return info

    def image_remove(self, name: str) -> api.ImageRemoval:
        self._enter("image_remove")
        with self._lock:
            if name not in self._images:
                raise ImageNotFound(name)
            info = self._images.pop(name)
            return api.ImageRemoval(untagged=(name,), **self._drop_unnamed([info.digest]))

    def image_tag(self, source: str, target: str) -> api.ImageInfo:
        self._enter("image_tag")
        with self._lock:
            old = self._images.get(target)
            info = dataclasses.replace(self._image(source), name=target, created_at=time.time())
            self._images[target] = info
            self._drop_unnamed([old.digest] if old is not None else [])
        return info

    def image_prune(self, all: bool = False) -> api.ImageRemoval:
        """No containers use the fake's images: ``all`` removes every one."""
        self._enter("image_prune")
        with self._lock:
            untagged = tuple(sorted(self._images)) if all else ()
            for name in untagged:
                del self._images[name]
            return api.ImageRemoval(untagged=untagged, **self._drop_unnamed(list(self._image_data)))

    def _drop_unnamed(self, digests: list[str]) -> dict:
        named = {i.digest for i in self._images.values()}
        deleted = tuple(d for d in digests if d not in named and d in self._image_data)
        freed = sum(len(self._image_data.pop(d)) for d in deleted)
        return {"deleted": deleted, "bytes_freed": freed}

    def image_build_busybox(self, name: str = "busybox") -> api.ImageInfo:
        self._enter("image_build_busybox")
        data = b"busybox rootfs " + name.encode()
        info = api.ImageInfo(name=name, digest="sha256:" + hashlib.sha256(data).hexdigest(), size_bytes=len(data), created_at=time.time())
        with self._lock:
            self._images[name] = info
            self._image_data[info.digest] = data
        return info

    def image_load(self, path: Path, name: str | None = None, platform: str | None = None) -> api.ImageInfo:
        """Records the archive's bytes (``loaded``); the image is named ``name`` or "loaded:latest"."""
        self._enter("image_load")
        data = Path(path).read_bytes()
        self.loaded.append((name, platform, data))
        return self._store(name or "loaded:latest", data)

    def image_pull(self, reference: str, name: str | None = None, platform: str | None = None,
                   options: RegistryOptions | None = None, progress: Callable[[str], None] | None = None) -> api.ImageInfo:
        """Reports ``copy_lines`` (``step_delay_s`` apart), then stores an image named ``name`` or
        after the reference's last component; ``registry_calls`` records the call."""
        self._enter("image_pull")
        self.registry_calls.append(("pull", reference, name, platform, options))
        self._copy(progress)
        return self._store(name or reference.rsplit("/", 1)[-1], f"pulled {reference}".encode())

    def image_push(self, name: str, reference: str, options: RegistryOptions | None = None,
                   progress: Callable[[str], None] | None = None) -> PushResult:
        self._enter("image_push")
        self.registry_calls.append(("push", name, reference, options))
        image = self._image(name)
        self._copy(progress)
        return PushResult(image.name, reference, "sha256:" + hashlib.sha256(reference.encode()).hexdigest())

    def image_inspect(self, name: str) -> api.ImageDetails:
        """The config set in ``image_configs`` (by digest), else none."""
        self._enter("image_inspect")
        image = self._image(name)
        return api.ImageDetails(image, self.image_configs.get(image.digest))

    def _copy(self, progress: Callable[[str], None] | None) -> None:
        for line in self.copy_lines:
            if progress is not None:
                try:
                    progress(line)
                except Exception:
                    self.cancelled.set()
                    raise
            if self.step_delay_s:
                time.sleep(self.step_delay_s)

    def _store(self, name: str, data: bytes) -> api.ImageInfo:
        info = api.ImageInfo(name=name, digest="sha256:" + hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                             created_at=time.time(), layers=1)
        with self._lock:
            self._images[name] = info
            self._image_data[info.digest] = data
        return info

    def _image(self, name: str) -> api.ImageInfo:
        with self._lock:
            if name in self._images:
                return self._images[name]
            for info in self._images.values():
                if info.digest == name:
                    return info
        raise ImageNotFound(name)

    # --- containers -------------------------------------------------------------------------------

    def run(self, options: api.RunOptions) -> ContainerInfo:
        self._enter("run")
        image = self._image(options.image)
        name = options.name or f"c-{uuid.uuid4().hex[:8]}"
        try:
            self._find(name)
        except ContainerNotFound:
            pass
        else:
            raise ContainerExists(f"container name {name} is already in use", hint="pick another --name")
        if options.memory_bytes is not None and options.memory_bytes <= 0:
            raise InvalidArgument(f"invalid memory limit {options.memory_bytes} for container {name}: expected > 0")
        spec = ContainerSpec(
            container_id=uuid.uuid4().hex,
            name=name,
            image=options.image,
            image_digest=image.digest,
            command=options.command or ("/bin/sh",),
            env=options.env,
            workdir=options.workdir or "/",
            hostname=options.hostname or name,
            memory_bytes=options.memory_bytes,
            cpus=options.cpus,
            pids_limit=options.pids_limit,
            network=options.network,
            ip=options.ip or ("10.77.0.2" if options.network == "bridge" else None),
            volumes=options.volumes,
            cgroup_parent=options.cgroup_parent,
            created_at=time.time(),
        )
        state = ContainerState(status="running", pid=4242, shim_pid=4241, started_at=time.time())
        self._logs[spec.container_id] = f"hello from {name}\n".encode()
        return self._put(ContainerInfo(spec=spec, state=state, bundle_dir=f"/fake/{spec.container_id}", cgroup={"unified": f"/pymigrate/{name}"}, memory_current_bytes=1 << 20, pids_current=1))

    def containers(self, all: bool = False) -> list[ContainerInfo]:
        self._enter("containers")
        with self._lock:
            infos = list(self._containers.values())
        return sorted((i for i in infos if all or i.state.status in ("running", "paused")), key=lambda i: i.spec.name)

    def inspect(self, name: str) -> ContainerInfo:
        self._enter("inspect")
        return self._find(name)

    def stop(self, name: str, timeout_s: float = 10.0) -> ContainerInfo:
        self._enter("stop")
        info = self._find(name)
        return self._set_state(info, status="exited", pid=0, exit_code=143, finished_at=time.time())

    def kill(self, name: str, signal: int = 9) -> None:
        self._enter("kill")
        info = self._find(name)
        if info.state.status not in ("running", "paused"):
            raise InvalidState(info.spec.name, "kill", info.state.status, ("running", "paused"))
        self._set_state(info, status="exited", pid=0, exit_code=128 + signal, finished_at=time.time())

    def remove(self, name: str, force: bool = False) -> None:
        self._enter("remove")
        info = self._find(name)
        if info.state.status in ("running", "paused") and not force:
            raise InvalidState(info.spec.name, "remove", info.state.status, ("created", "exited"))
        with self._lock:
            del self._containers[info.spec.container_id]

    def pause(self, name: str) -> ContainerInfo:
        self._enter("pause")
        info = self._find(name)
        if info.state.status != "running":
            raise InvalidState(info.spec.name, "pause", info.state.status, "running")
        return self._set_state(info, status="paused")

    def unpause(self, name: str) -> ContainerInfo:
        self._enter("unpause")
        info = self._find(name)
        if info.state.status != "paused":
            raise InvalidState(info.spec.name, "unpause", info.state.status, "paused")
        return self._set_state(info, status="running")

    def logs(self, name: str, follow: bool = False, *, tail: int | None = None, since: float | None = None,
             until: float | None = None) -> Iterator[LogEntry]:
        self._enter("logs")
        self.logs_calls.append({"name": name, "follow": follow, "tail": tail, "since": since, "until": until})
        info = self._find(name)
        for data in self._logs.get(info.spec.container_id, b"").splitlines(keepends=True):
            stream = "stderr" if data.startswith(b"err:") else "stdout"
            yield LogEntry(stream, 1_700_000_000_123_456_789, data)
        while follow:  # like a silent container: heartbeats so the caller notices cancellation
            time.sleep(0.05)
            yield LogEntry("stdout", 0, b"")

    def wait(self, name: str, timeout_s: float | None = None) -> int:
        self._enter("wait")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            info = self._find(name)
            if info.state.status == "exited":
                return info.state.exit_code if info.state.exit_code is not None else -1
            if deadline is not None and time.monotonic() > deadline:
                raise InvalidState(info.spec.name, "wait for", info.state.status, "exited")
            time.sleep(0.02)

    # --- checkpoints ----------------------------------------------------------------------------------

    def _archive(self, info: ContainerInfo) -> bytes:
        seed = info.spec.container_id.encode()
        block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
        reps = max(1, self.checkpoint_size_bytes // len(block))
        # starts as a native archive does: clients tell formats by content (migrate/interop/foreign.py)
        return (b"PYMGCKPT" + block * reps)[: self.checkpoint_size_bytes]

    def checkpoint(self, name: str, options: api.CheckpointOptions, progress: api.ProgressFn | None = None) -> api.CheckpointResult:
        self._enter("checkpoint")
        info = self._find(name)
        if info.state.status != "running":
            raise InvalidState(info.spec.name, "checkpoint", info.state.status, "running")
        data = self._archive(info)
        self._steps("checkpoint", ("freeze", "dump", "archive"), progress, len(data))
        checkpoint_id = uuid.uuid4().hex
        with self._lock:
            self._checkpoints[checkpoint_id] = (
                api.CheckpointInfo(
                    checkpoint_id=checkpoint_id,
                    container_name=info.spec.name,
                    container_id=info.spec.container_id,
                    image_digest=info.spec.image_digest,
                    created_at=time.time(),
                    size_bytes=len(data),
                    criu_version="4.1.1",
                ),
                data,
            )
        if not options.leave_running:
            self._set_state(info, status="exited", pid=0, exit_code=0, finished_at=time.time())
        stats = api.CheckpointStats(freezing_ms=1.5, frozen_ms=12.25, pages_written=len(data) // 4096, images_bytes=len(data), total_ms=20.0)
        return api.CheckpointResult(checkpoint_id=checkpoint_id, container_name=info.spec.name, export_path=None, stats=stats)

    def restore(self, options: api.RestoreOptions, progress: api.ProgressFn | None = None) -> api.RestoreResult:
        self._enter("restore")
        if options.checkpoint_id is None:
            raise InvalidArgument("restore needs a checkpoint id")
        with self._lock:
            if options.checkpoint_id not in self._checkpoints:
                raise CheckpointNotFound(options.checkpoint_id)
            cinfo, data = self._checkpoints[options.checkpoint_id]
        self._steps("restore", ("restore",), progress, len(data))
        name = options.name or cinfo.container_name
        try:
            old = self._find(name)
        except ContainerNotFound:
            old = None
        if old is not None and old.state.status in ("running", "paused"):
            raise ContainerExists(f"container name {name} is already in use")
        if old is not None:
            with self._lock:
                del self._containers[old.spec.container_id]
        spec = ContainerSpec(
            container_id=uuid.uuid4().hex, name=name, image="busybox", image_digest=cinfo.image_digest, command=("/bin/sh",), ip=options.ip
        )
        info = self._put(ContainerInfo(spec=spec, state=ContainerState(status="running", pid=5151, restored_from=cinfo.checkpoint_id)))
        return api.RestoreResult(container=info, stats=api.RestoreStats(restore_ms=30.0, total_ms=31.0, images_bytes=len(data)))

    def checkpoints(self) -> list[api.CheckpointInfo]:
        self._enter("checkpoints")
        with self._lock:
            return sorted((c for c, _ in self._checkpoints.values()), key=lambda c: c.created_at)

    def checkpoint_remove(self, checkpoint_id: str) -> None:
        self._enter("checkpoint_remove")
        with self._lock:
            if self._checkpoints.pop(checkpoint_id, None) is None:
                raise CheckpointNotFound(checkpoint_id)

    def checkpoint_inspect(self, checkpoint_id: str) -> dict:
        self._enter("checkpoint_inspect")
        with self._lock:
            if checkpoint_id not in self._checkpoints:
                raise CheckpointNotFound(checkpoint_id)
            info = self._checkpoints[checkpoint_id][0]
        return {"format_version": 1, "checkpoint": dataclasses.asdict(info), "members": [{"name": "pages-1.img", "sha256": "ab"}]}

    def export_checkpoint(self, checkpoint_id: str) -> Iterator[bytes]:
        self._enter("export_checkpoint")
        with self._lock:
            if checkpoint_id not in self._checkpoints:
                raise CheckpointNotFound(checkpoint_id)
            data = self._checkpoints[checkpoint_id][1]
        return iter([data[i : i + 300_000] for i in range(0, len(data), 300_000)])  # odd sizes on purpose

    def import_checkpoint(self, chunks: Iterator[bytes]) -> api.CheckpointInfo:
        self._enter("import_checkpoint")
        data = b"".join(chunks)
        checkpoint_id = uuid.uuid4().hex
        info = api.CheckpointInfo(
            checkpoint_id=checkpoint_id,
            container_name="imported",
            container_id=uuid.uuid4().hex,
            image_digest="sha256:" + "0" * 64,
            created_at=time.time(),
            size_bytes=len(data),
            criu_version="4.1.1",
        )
        with self._lock:
            self._checkpoints[checkpoint_id] = (info, data)
        return info

    def checkpoint_bytes(self, checkpoint_id: str) -> bytes:
        return self._checkpoints[checkpoint_id][1]

    # --- migration (source side) ------------------------------------------------------------------

    def migrate(self, name: str, options: api.MigrateOptions, progress: api.ProgressFn | None = None) -> api.MigrateResult:
        self._enter("migrate")
        info = self._find(name)
        if info.state.status != "running":
            raise InvalidState(info.spec.name, "migrate", info.state.status, "running")
        if self.peer_factory is None:
            self._steps("migrate", ("preflight", "dump", "transfer"), progress, self.checkpoint_size_bytes)
            return api.MigrateResult(container_name=name, dest=options.dest, mode=options.mode, stats=api.MigrationStats())
        started = time.monotonic()
        peer: object = self.peer_factory(options.dest)
        target_host = peer.host_info()  # type: ignore[attr-defined]
        if target_host.criu_version is None:
            raise IncompatibleHost(f"target {options.dest} has no usable criu", phase="preflight")
        ticket = peer.prepare_incoming(  # type: ignore[attr-defined]
            api.IncomingRequest(
                container_name=info.spec.name,
                spec=info.spec.to_dict(),
                image_digest=info.spec.image_digest,
                criu_version="4.1.1",
                cpu_digest="sha256:" + "c" * 64,
                ip=info.spec.ip,
                mode=options.mode,
            )
        )
        try:
            if ticket.need_image:
                data = self._image_data.get(info.spec.image_digest, b"image")
                peer.receive_image(ticket.migration_id, iter([data]))  # type: ignore[attr-defined]
            self._set_state(info, status="paused")  # "frozen"
            data = self._archive(info)
            self._steps("migrate", ("dump", "transfer"), progress, len(data))
            peer.receive_checkpoint(ticket.migration_id, iter([data[i : i + 100_000] for i in range(0, len(data), 100_000)]))  # type: ignore[attr-defined]
            peer.commit_incoming(ticket.migration_id)  # type: ignore[attr-defined]
        except BaseException:
            self._set_state(self._find(name), status="running")  # thaw
            try:
                peer.abort_incoming(ticket.migration_id)  # type: ignore[attr-defined]
            except Exception:
                pass
            raise
        # point of no return: the target runs the container
        if not options.keep_source:
            with self._lock:
                self._containers.pop(info.spec.container_id, None)
        else:
            self._set_state(self._find(name), status="running")
        total_ms = (time.monotonic() - started) * 1000
        stats = api.MigrationStats(frozen_ms=5.0, total_ms=total_ms, bytes_on_wire=len(data), raw_bytes=len(data), phases_ms={"dump": 1.0, "transfer": 2.0})
        return api.MigrateResult(container_name=name, dest=options.dest, mode=options.mode, stats=stats)

    # --- migration (target side) ----------------------------------------------------------------

    def prepare_incoming(self, request: api.IncomingRequest) -> api.IncomingTicket:
        self._enter("prepare_incoming")
        try:
            self._find(request.container_name)
        except ContainerNotFound:
            pass
        else:
            raise ContainerExists(f"container name {request.container_name} is already in use on {self.hostname}")
        with self._lock:
            have = any(i.digest == request.image_digest for i in self._images.values())
            migration_id = uuid.uuid4().hex
            self._incoming[migration_id] = {"request": request, "image": have, "container_id": None}
        return api.IncomingTicket(migration_id=migration_id, need_image=not have)

    def _incoming_entry(self, migration_id: str) -> dict:
        with self._lock:
            entry = self._incoming.get(migration_id)
        if entry is None:
            raise InvalidArgument(f"no such incoming migration: {migration_id}")
        return entry

    def receive_image(self, migration_id: str, chunks: Iterator[bytes]) -> None:
        self._enter("receive_image")
        entry = self._incoming_entry(migration_id)
        data = b"".join(chunks)
        request: api.IncomingRequest = entry["request"]
        self.received_image_bytes[migration_id] = data
        with self._lock:
            self._images[request.spec.get("image", "image")] = api.ImageInfo(
                name=request.spec.get("image", "image"), digest=request.image_digest, size_bytes=len(data), created_at=time.time()
            )
        entry["image"] = True

    def receive_checkpoint(self, migration_id: str, chunks: Iterator[bytes]) -> api.RestoreResult:
        self._enter("receive_checkpoint")
        entry = self._incoming_entry(migration_id)
        if not entry["image"]:
            raise InvalidState(entry["request"].container_name, "restore", "image missing", "image received")
        data = b"".join(chunks)
        spec = ContainerSpec.from_dict(entry["request"].spec)
        info = self._put(ContainerInfo(spec=spec, state=ContainerState(status="running", pid=6161, restored_from=migration_id)))
        entry["container_id"] = spec.container_id
        entry["bytes"] = len(data)
        return api.RestoreResult(container=info, stats=api.RestoreStats(restore_ms=25.0, total_ms=40.0, archive_bytes=len(data)))

    def abort_incoming(self, migration_id: str) -> None:
        self._enter("abort_incoming")
        with self._lock:
            entry = self._incoming.pop(migration_id, None)
            if entry and entry.get("container_id"):
                self._containers.pop(entry["container_id"], None)
            if entry is not None:
                self.settled[migration_id] = "aborted"

    def commit_incoming(self, migration_id: str) -> None:
        self._enter("commit_incoming")
        if self.settled.get(migration_id) == "committed":
            return
        self._incoming_entry(migration_id)
        with self._lock:
            del self._incoming[migration_id]
        self.settled[migration_id] = "committed"

    def settle_migration(self, migration_id: str, container_id: str = "", ask_source: bool = False) -> api.Settlement:
        """As migrate.migration.target.IncomingMigrations.settle: commit a restored migration, abort an
        unfinished one, repeat an ended one's outcome."""
        self._enter("settle_migration")
        with self._lock:
            entry = self._incoming.get(migration_id)
        if entry is None:
            running = container_id in self._containers
            return api.Settlement(migration_id, self.settled.get(migration_id, "unknown"), running)  # type: ignore[arg-type]
        if entry.get("container_id"):
            self.commit_incoming(migration_id)
            return api.Settlement(migration_id, "committed", True)
        self.abort_incoming(migration_id)
        return api.Settlement(migration_id, "aborted", False)

    @property
    def incoming(self) -> dict[str, dict]:
        return dict(self._incoming)
