"""``LocalEngine``: the ``migrate.api.Engine`` for this host, over the embedded runtime.

Container and image methods delegate to ``runtime.Runtime`` and ``runtime.image_store`` and
convert to ``migrate.api`` dataclasses; checkpoint, restore and migration are wired by the
checkpoint work. ``engine_for(args)`` picks a local or a remote engine from CLI arguments.
Imports stay light: ``pymigrate run -d`` goes through here and its latency is benchmarked.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from migrate.api import (
    CheckpointInfo,
    CheckpointOptions,
    CheckpointResult,
    CommitOptions,
    CommitResult,
    Engine,
    HostInfo,
    ImageDetails,
    ImageInfo,
    ImageRemoval,
    IncomingRequest,
    IncomingTicket,
    MigrateOptions,
    MigrateResult,
    ProgressFn,
    RestoreOptions,
    RestoreResult,
    RunOptions,
    VolumeInfo,
    VolumePruneResult,
)
from runtime.spec import ContainerInfo

if TYPE_CHECKING:  # pragma: no cover
    from runtime.logs import LogEntry
    from runtime.registry import PushResult, RegistryOptions
    from runtime.runtime import Runtime
    from migrate.archive.signing import SignaturePolicy

log = logging.getLogger(__name__)



def _version() -> str:
    from migrate import __version__  # the one source (pyproject.toml reads it too)

    return __version__


def _event(root: Path, type: str, action: str, object_id: str, name: str, **attributes: Any) -> None:
    """Journal an event (runtime/events.py; never raises into the operation)."""
    from runtime.events import emit

    emit(root, type, action, object_id, name, attributes)


def _container_event(root: Path, action: str, spec: Any, **attributes: Any) -> None:
    """Journal a container's event: its id, name, image and labels from ``spec``."""
    from runtime.events import emit_container

    emit_container(root, action, spec, **attributes)


def _image_info(image: Any) -> ImageInfo:
    return ImageInfo(name=image.name, digest=image.digest, size_bytes=image.size_bytes, created_at=image.created_at,
                     layers=len(image.layers))


def _removal(removal: Any) -> ImageRemoval:
    return ImageRemoval(**dataclasses.asdict(removal))


def _volume_info(record: Any) -> VolumeInfo:
    return VolumeInfo(name=record.name, mountpoint=record.mountpoint, created_at=record.created_at, driver=record.driver,
                      labels=tuple(f"{k}={v}" for k, v in sorted(record.labels.items())), used_by=tuple(record.used_by))


class LocalEngine:
    """Everything on this host, through the runtime of state root ``root``."""

    def __init__(self, root: Path | None = None, *, peer: "PeerConfig | None" = None, peer_args: Any = None,
                 allow_peer_volumes: bool = False, signature_policy: "SignaturePolicy | None" = None) -> None:
        """``allow_peer_volumes``: containers migrated here may bring volumes (host paths their
        source chose); off by default, see docs/security.md. ``signature_policy``: which keys
        uploaded archives must be signed with (None: uploads need no signature)."""
        from runtime.runtime import Runtime

        self.runtime: Runtime = Runtime(root)
        # a checkpoint restores onto its base image: prune and a moved name keep an image one uses
        self.runtime.image_references.append(lambda digest: digest in self._checkpoint_store().image_digests())
        self.allow_peer_volumes = allow_peer_volumes
        self.signature_policy = signature_policy
        self.root = self.runtime.paths.root
        self._peer = peer
        self._peer_args = peer_args
        self._incoming_migrations: Any = None
        # this daemon's own address (HOST:PORT, set by ``pymigrate daemon``): sent to migration
        # targets, which ask it what became of a migration the source never settled
        self.advertise: str | None = None
        self._checkpoint_host: Any = None

    @property
    def peer(self) -> "PeerConfig":
        """How to dial other daemons; built on first use from the CLI arguments, because reading
        them imports grpc and paramiko (~150 ms) and ``pymigrate run -d`` never needs them."""
        if self._peer is None:
            self._peer = PeerConfig.from_args(self._peer_args) if self._peer_args is not None else PeerConfig()
        return self._peer

    # -- host -----------------------------------------------------------------------------------
    def host_info(self) -> HostInfo:
        import socket

        from runtime.host import host_report

        report = host_report()
        return HostInfo(
            version=_version(),
            hostname=socket.gethostname(),
            kernel=report.kernel_release or "",
            criu_version=report.criu.version if report.criu.usable else None,
            features=report.features(),
            cgroup_mode=report.cgroup.mode if report.cgroup else "unknown",
            cpu_digest=report.cpu_flags_sha256 or "",
            images=tuple(self.images()),
        )

    # -- images ---------------------------------------------------------------------------------
    def images(self) -> list[ImageInfo]:
        return [_image_info(i) for i in self.runtime.images.list()]

    def image_import(self, name: str, tarball: Path) -> ImageInfo:
        self.runtime.paths.ensure()
        info = _image_info(self.runtime.images.import_tarball(name, Path(tarball)))
        _event(self.root, "image", "import", info.digest, info.name)
        return info

    def image_load(self, path: Path, name: str | None = None, platform: str | None = None) -> ImageInfo:
        """Load a Docker/OCI archive or OCI layout directory (runtime.image_store.load_archive);
        the daemon's LoadImage hands it the upload spooled into the state root's tmp."""
        self.runtime.paths.ensure()
        info = _image_info(self.runtime.images.load_archive(Path(path), name=name, platform=platform))
        _event(self.root, "image", "load", info.digest, info.name)
        return info

    def image_pull(self, reference: str, name: str | None = None, platform: str | None = None,
                   options: RegistryOptions | None = None, progress: Callable[[str], None] | None = None) -> ImageInfo:
        """Pull ``reference`` from a registry with skopeo and load it (runtime.registry.pull);
        ``progress`` gets skopeo's report lines. ``options``' paths are this host's."""
        from runtime import registry

        self.runtime.paths.ensure()
        image = registry.pull(self.runtime.images, reference, name=name, platform=platform, options=options,
                              progress=progress)
        _event(self.root, "image", "pull", image.digest, image.name, reference=reference)
        return _image_info(image)

    def image_push(self, name: str, reference: str, options: RegistryOptions | None = None,
                   progress: Callable[[str], None] | None = None) -> PushResult:
        """Push a stored image to a registry (runtime.registry.push): its layers as stored, or one
        layer made from a flat image's tree."""
        from runtime import registry

        self.runtime.paths.ensure()
        return registry.push(self.runtime.images, name, reference, options=options, progress=progress)

    def image_inspect(self, name: str) -> ImageDetails:
        config = self.runtime.images.config(name)
        return ImageDetails(_image_info(self.runtime.images.get(name)), None if config is None else config.to_json())

    def image_login(self, registry: str, username: str, password: str, options: RegistryOptions | None = None) -> Path:
        """``skopeo login`` on this host (runtime.registry.login): the registry checks the
        credentials, which then go to ``options.authfile`` or the default auth file, where pulls and
        pushes without ``--creds`` find them. Not in the ``Engine`` protocol: local only. Returns the
        auth file."""
        from runtime import registry as reg

        options = options or reg.RegistryOptions()
        return reg.login(registry, username, password, tls_verify=options.tls_verify, cert_dir=options.cert_dir,
                         authfile=options.authfile)

    def image_logout(self, registry: str, authfile: Path | None = None) -> Path:
        """``skopeo logout`` on this host: the registry's credentials leave the auth file. Local only."""
        from runtime import registry as reg

        return reg.logout(registry, authfile=authfile)

    def image_remove(self, name: str) -> ImageRemoval:
        removal = _removal(self.runtime.images.remove(name))
        _event(self.root, "image", "remove", "", name)
        return removal

    def image_tag(self, source: str, target: str) -> ImageInfo:
        info = _image_info(self.runtime.images.tag(source, target))
        _event(self.root, "image", "tag", info.digest, target, source=source)
        return info

    def image_prune(self, all: bool = False) -> ImageRemoval:
        """Unnamed images no container or checkpoint uses (``all``: named ones too), then unused
        layers and blobs, then leftovers of killed image work (runtime.image_store.prune)."""
        self.runtime.paths.ensure()
        return _removal(self.runtime.images.prune(all=all))

    def _with_image_config(self, options: RunOptions) -> RunOptions:
        """``options`` with the image's config and ``--entrypoint`` applied
        (runtime/image_config.py): the command, the image's env under ``-e``, its working dir and
        user; ``entrypoint`` is used up (None)."""
        from runtime.errors import ImageNotFound
        from runtime.image_config import resolve_run

        try:
            config = self.runtime.images.config(options.image)
        except ImageNotFound:
            config = None  # run names the missing image itself
        resolved = resolve_run(config, options.command, options.env, options.workdir, user=options.user,
                               entrypoint=options.entrypoint, stop_signal=options.stop_signal)
        return dataclasses.replace(options, command=resolved.command, env=resolved.env, workdir=resolved.workdir,
                                   user=resolved.user, entrypoint=None, stop_signal=resolved.stop_signal)

    def _with_exposed_ports(self, options: RunOptions) -> RunOptions:
        """``-P``: the image's ExposedPorts not already given with ``-p`` join ``ports`` on free
        host ports (docker's rule); ``publish_all`` is used up."""
        if not options.publish_all:
            return options
        from runtime.errors import ImageNotFound
        from runtime.ports import parse_publish_all

        try:
            config = self.runtime.images.config(options.image)
        except ImageNotFound:
            config = None  # run names the missing image itself
        given = {(m.container_port, m.protocol) for m in options.ports}
        exposed = parse_publish_all(config.exposed_ports if config is not None else ())
        extra = tuple(m for m in exposed if (m.container_port, m.protocol) not in given)
        return dataclasses.replace(options, ports=options.ports + extra, publish_all=False)

    def image_build_busybox(self, name: str = "busybox") -> ImageInfo:
        self.runtime.paths.ensure()
        return _image_info(self.runtime.images.build_busybox(name))

    def commit(self, name: str, target: str, options: CommitOptions | None = None) -> CommitResult:
        """A new image from container ``name``: its image's layers plus one of its upper layer,
        the config as it runs with ``options.changes`` applied (runtime/commit.py)."""
        from runtime import commit as rc

        options = options or CommitOptions()
        self.runtime.paths.ensure()
        result = rc.commit(self.runtime, name, target, rc.CommitOptions(
            changes=options.changes, message=options.message, author=options.author, pause=options.pause))
        return CommitResult(image=_image_info(result.image), layer_diff_id=result.layer_diff_id,
                            layer_bytes=result.layer_bytes, whiteouts=result.whiteouts,
                            opaque_dirs=result.opaque_dirs, skipped=result.skipped, frozen_ms=result.frozen_ms)

    # -- named volumes (runtime/volumes.py) -------------------------------------------------------
    def volume_create(self, name: str | None = None, labels: tuple[str, ...] = ()) -> VolumeInfo:
        """Make volume ``name`` (a random one when None); an existing one is returned as it is (docker)."""
        from runtime.volumes import parse_labels

        self.runtime.paths.ensure()
        record, _ = self.runtime.volumes.create(name, parse_labels(labels))
        return _volume_info(record)

    def volumes(self) -> list[VolumeInfo]:
        return [_volume_info(r) for r in self.runtime.volumes.list()]

    def volume_inspect(self, name: str) -> VolumeInfo:
        return _volume_info(self.runtime.volumes.get(name))

    def volume_remove(self, name: str, force: bool = False) -> bool:
        """Refused while a container (any state) uses it; ``force`` only makes a missing name no error."""
        return bool(self.runtime.volumes.remove(name, force=force))

    def volume_prune(self) -> VolumePruneResult:
        result = self.runtime.volumes.prune()
        return VolumePruneResult(removed=result.removed, bytes_freed=result.bytes_freed)

    # -- containers -----------------------------------------------------------------------------
    def run(self, options: RunOptions) -> ContainerInfo:
        image, command, kwargs = self._run_args(options)
        return self.runtime.run(image, command, **kwargs)  # create: the runtime's event, start: the shim's

    def create(self, options: RunOptions) -> ContainerInfo:
        """``run`` without the start (status ``created``); ``start`` runs it (runtime/start.py)."""
        image, command, kwargs = self._run_args(options)
        return self.runtime.create(image, command, **kwargs)  # its create event: the runtime's

    def _run_args(self, options: RunOptions) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        """``options`` as the runtime's run takes them: image, command and keywords."""
        options = self._with_image_config(options)
        options = self._with_exposed_ports(options)
        kwargs = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
        image = kwargs.pop("image")
        command = kwargs.pop("command")
        del kwargs["entrypoint"]  # part of command now
        del kwargs["publish_all"]  # part of ports now
        return image, command, kwargs

    def start(self, name: str) -> ContainerInfo:
        """Start a created or exited container; a running one is left as it is (runtime/start.py)."""
        from runtime.start import start

        return start(self.runtime, name)  # its start event: the shim's (runtime/shim.py)

    def restart(self, name: str, timeout_s: float = 10.0) -> ContainerInfo:
        from runtime.start import restart

        info = restart(self.runtime, name, timeout_s)
        _container_event(self.root, "restart", info.spec)
        return info

    def rename(self, name: str, new_name: str) -> ContainerInfo:
        """Refused while an outgoing migration of it is recorded: its target gets the name it started with."""
        from migrate.migration.recovery import OutgoingMigrations
        from runtime.errors import Busy

        cid = self.runtime.container(name).container_id
        for record in OutgoingMigrations(self.runtime.paths).records():
            if record.get("container_id") == cid:
                raise Busy(f"container {name}", "rename", holder_pid=int(record.get("pid") or 0),
                           hint=f"migration {record.get('migration_id')} to {record.get('dest')} works on it; rename it when that is done")
        from runtime.rename import rename

        info = rename(self.runtime, name, new_name)
        _container_event(self.root, "rename", info.spec, oldName=name)
        return info

    def containers(self, all: bool = False) -> list[ContainerInfo]:
        return self.runtime.list(all=all)

    def inspect(self, name: str) -> ContainerInfo:
        return self.runtime.inspect(name)

    def stop(self, name: str, timeout_s: float = 10.0) -> ContainerInfo:
        info = self.runtime.stop(name, timeout_s=timeout_s)
        _container_event(self.root, "stop", info.spec)
        return info

    def kill(self, name: str, signal: int = 9) -> None:
        spec = self.runtime.container(name).spec  # before: a --rm container may be gone after
        self.runtime.kill(name, signal)
        _container_event(self.root, "kill", spec, signal=signal)

    def remove(self, name: str, force: bool = False) -> bool:
        """False: ``force`` and no such container (nothing done, no error: docker's ``rm -f``)."""
        from runtime.errors import ContainerNotFound

        try:
            spec = self.runtime.container(name).spec
        except ContainerNotFound:
            spec = None  # remove says so (or, forced, does nothing)
        removed = self.runtime.remove(name, force=force)
        if removed and spec is not None:
            _container_event(self.root, "remove", spec)
        return removed

    def pause(self, name: str) -> ContainerInfo:
        info = self.runtime.pause(name)
        _container_event(self.root, "pause", info.spec)
        return info

    def unpause(self, name: str) -> ContainerInfo:
        self._refuse_unsettled(name, "unpause")
        info = self.runtime.unpause(name)
        _container_event(self.root, "unpause", info.spec)
        return info

    def logs(self, name: str, follow: bool = False, *, tail: int | None = None, since: float | None = None,
             until: float | None = None) -> Iterator[LogEntry]:
        return self.runtime.logs(name, follow=follow, tail=tail, since=since, until=until)

    def events(self, since: int | None = None, filters: tuple[str, ...] = ()) -> Iterator[Any]:
        """This root's journal (runtime/events.py): events after cursor ``since`` (None: only new
        ones) matching ``filters``, then new ones forever; None between them when a poll found
        none (a caller's chance to stop). Raises ``EventsLost`` for a cursor older than kept."""
        from runtime.events import EventFilter, Journal

        wanted = EventFilter.parse(filters)
        return (e for e in Journal(self.root).follow(since) if e is None or wanted.match(e))

    def exec(self, name: str, argv: tuple[str, ...], env: tuple[str, ...] = (), workdir: str | None = None,
             user: str | None = None, console: Any = None) -> int:
        """Run a process in the container with this process's stdio (local only), as ``user``
        (``USER[:GROUP]``; None: the container's user); ``console``: a terminal for it (exec -t,
        runtime.console.ExecConsole)."""
        return self.runtime.exec(name, argv, env=env, workdir=workdir, user=user, console=console)

    def wait(self, name: str, timeout_s: float | None = None) -> int:
        return self.runtime.wait(name, timeout_s=timeout_s)

    def attach_socket(self, name: str) -> tuple[Any, Any]:
        """The spec of a live container and its attach socket's path (local only: runtime/console.py)."""
        return self.runtime.attach_socket(name)

    def stats(self, name: str, previous: Any = None) -> Any:
        """One ``runtime.stats.ContainerStats`` sample; CPU % against ``previous`` (a sample of the
        same container), None without one."""
        from runtime.stats import sample

        return sample(self.runtime, name, previous)

    def top(self, name: str, ps_args: tuple[str, ...] = ()) -> Any:
        """The container's processes as host ``ps`` shows them (``runtime.top.TopResult``)."""
        from runtime.top import top

        return top(self.runtime, name, ps_args)

    def copy_from_container(self, name: str, src_path: str, dest: Any, *, archive: bool = False,
                            follow: bool = False) -> Any:
        """``cp NAME:SRC DEST`` (local only: a forked child in the container's root,
        runtime/container_files); ``dest`` a host path or a binary file object for the tar."""
        from runtime.container_files import copy_out

        return copy_out(self.runtime, name, src_path, dest, archive=archive, follow=follow)

    def copy_to_container(self, name: str, src: Any, dest_path: str, *, archive: bool = False,
                          follow: bool = False) -> Any:
        """``cp SRC NAME:DEST`` (local only); ``src`` a host path or a binary file object with a tar."""
        from runtime.container_files import copy_in

        return copy_in(self.runtime, name, src, dest_path, archive=archive, follow=follow)

    # -- checkpoints and migration (wired by the checkpoint work) -------------------------------
    def checkpoint(self, name: str, options: CheckpointOptions, progress: ProgressFn | None = None) -> CheckpointResult:
        from migrate.checkpoint import checkpoint_container

        self.runtime.paths.ensure()
        if options.create_image:  # what the image would refuse is refused before the container is frozen
            from migrate.interop.checkpoint_image import precheck

            precheck(self._host(), name, options)
        if options.export_format == "podman":  # a local checkpoint converted, then removed
            from migrate.interop.podman_export import export_checkpoint

            result = export_checkpoint(self._host(), name, options, progress=progress)
        else:
            result = checkpoint_container(self._host(), name, options, progress=progress)
        self._checkpoint_event("create", result.checkpoint_id, result.container_name, export=result.export_path or None)
        if options.create_image:
            result = self._create_checkpoint_image(result, options.create_image)
        return result

    def _create_checkpoint_image(self, result: CheckpointResult, reference: str) -> CheckpointResult:
        """checkpoint --create-image: the checkpoint just taken as an OCI checkpoint image (kept
        either way: a failure here says how to restore it)."""
        from migrate.errors import MigrationError
        from migrate.interop.checkpoint_image import build_checkpoint_image
        from runtime.errors import ContainerError

        try:
            built = build_checkpoint_image(self._host(), result.checkpoint_id, reference)
        except (ContainerError, MigrationError) as exc:
            exc.hint = f"{exc.hint + '; ' if exc.hint else ''}the checkpoint is kept: pymigrate restore {result.checkpoint_id}"
            raise
        _event(self.root, "image", "checkpoint", built.digest, built.name, reference=built.reference,
               checkpoint=result.checkpoint_id)
        return dataclasses.replace(result, image_ref=built.reference, image_digest=built.digest)

    def restore(self, options: RestoreOptions, progress: ProgressFn | None = None) -> RestoreResult:
        from migrate.restore import restore_container

        self.runtime.paths.ensure()
        if options.image_ref:  # restore REF: a checkpoint image, here or pulled
            from migrate.interop.checkpoint_image import restore_checkpoint_image

            return restore_checkpoint_image(self._host(), options, registry=options.image_registry, progress=progress)
        if options.import_path is not None:  # a podman/CRI-O archive, told by its content (docs/interop.md)
            from migrate.interop.foreign import sniff_format

            if sniff_format(Path(options.import_path)) == "foreign":
                from migrate.interop.podman_import import import_archive

                return import_archive(self._host(), options, progress=progress)
        return restore_container(self._host(), options, progress=progress)  # restore and start: the shim's events

    def checkpoints(self) -> list[CheckpointInfo]:
        return self._checkpoint_store().list()

    def checkpoint_remove(self, checkpoint_id: str) -> None:
        facts = self._checkpoint_facts(checkpoint_id)  # read before it goes
        self._checkpoint_store().remove(checkpoint_id)
        self._checkpoint_event("remove", checkpoint_id, facts=facts)

    def checkpoint_inspect(self, checkpoint_id: str) -> dict[str, Any]:
        return self._checkpoint_store().manifest(checkpoint_id)

    def export_checkpoint(self, checkpoint_id: str) -> Iterator[bytes]:
        from migrate.archive.store import export_stream

        self._checkpoint_event("export", checkpoint_id)
        return export_stream(self.runtime.paths, checkpoint_id)

    def import_checkpoint(self, chunks: Iterator[bytes]) -> CheckpointInfo:
        from migrate.archive.store import import_stream

        self.runtime.paths.ensure()
        info = import_stream(self.runtime.paths, chunks, self.signature_policy)
        self._checkpoint_event("import", info.checkpoint_id, info.container_name)
        return info

    def _checkpoint_facts(self, checkpoint_id: str) -> tuple[str, str, dict[str, Any]]:
        """(full id, container name, attributes: container_id and the checkpoint's labels) from its
        manifest; what is known when it cannot be read (an export-only checkpoint keeps none here)."""
        from migrate.archive.store import info_from_manifest

        try:
            info = info_from_manifest(self._checkpoint_store().manifest(checkpoint_id))
        except Exception:
            return checkpoint_id, "", {}
        return info.checkpoint_id, info.container_name, {**getattr(info, "labels", {}), "container_id": info.container_id}

    def _checkpoint_event(self, action: str, checkpoint_id: str, name: str = "",
                          facts: tuple[str, str, dict[str, Any]] | None = None, **attributes: Any) -> None:
        full_id, known_name, attrs = facts or self._checkpoint_facts(checkpoint_id)
        _event(self.root, "checkpoint", action, full_id, known_name or name, **{**attrs, **attributes})

    # -- migration ------------------------------------------------------------------------------
    def migrate(self, name: str, options: MigrateOptions, progress: ProgressFn | None = None) -> MigrateResult:
        from migrate.migration.driver import migrate_container
        from runtime.criu import SwrkCriu

        self.runtime.paths.ensure()
        page_server = self._page_server_address(options.dest)
        target = self.peer.connect(options.dest)
        if self.advertise and hasattr(target, "advertise"):
            target.advertise = self.advertise  # sent with prepare_incoming (IncomingRequest.source_daemon)
        try:
            if page_server is None:  # unix:, ssh://: a page socket (page_socket.py)
                channel = getattr(target, "page_socket", None)
                page_server = channel.address if channel is not None else None
            criu = SwrkCriu(page_server_tls=self._page_server_tls())  # disk-less and post-copy dumps
            return migrate_container(self._host(), name, options, target, criu=criu, progress=progress, page_server_address=page_server)
        finally:
            close = getattr(target, "close", None)
            if close is not None:
                close()

    def prepare_incoming(self, request: IncomingRequest) -> IncomingTicket:
        self.runtime.paths.ensure()
        return self._incoming().prepare(request)

    def receive_image(self, migration_id: str, chunks: Iterator[bytes]) -> None:
        self._incoming().receive_image(migration_id, chunks)

    def receive_upper(self, migration_id: str, chunks: Iterator[bytes]) -> int:
        return self._incoming().receive_upper(migration_id, chunks)

    def receive_checkpoint(self, migration_id: str, chunks: Iterator[bytes]) -> RestoreResult:
        return self._incoming().receive_checkpoint(migration_id, chunks)

    def abort_incoming(self, migration_id: str) -> None:
        self._incoming().abort(migration_id)

    def commit_incoming(self, migration_id: str) -> None:
        self._incoming().commit(migration_id)

    def settle_migration(self, migration_id: str, container_id: str = "", ask_source: bool = False) -> Any:
        """What became of ``migration_id`` (migrate.api.Settlement): as its target (commit a restored
        migration, abort an unfinished one), or with ``ask_source`` as its source (a target whose
        restored copy's lease expired asks)."""
        if ask_source:
            from migrate.migration.recovery import answer_as_source

            return answer_as_source(self._host(), lambda dest: self.peer.connect(dest), migration_id, container_id)
        return self._incoming().settle(migration_id, container_id)

    def settle_outgoing(self) -> None:
        """Settle outgoing migrations whose outcome is unknown and no driver works on (the daemon
        runs this every few seconds; migrate/migration/recovery.py)."""
        from migrate.migration.recovery import settle_pending

        if (self.runtime.paths.run / "outgoing").is_dir():
            settle_pending(self._host(), lambda dest: self.peer.connect(dest))

    def _refuse_unsettled(self, name: str, action: str) -> None:
        """A copy frozen while its migration's outcome is unknown must not run (the target may)."""
        from migrate.migration.recovery import OutgoingMigrations
        from runtime.errors import InvalidState

        record = OutgoingMigrations(self.runtime.paths).unsettled_for(self.runtime.container(name).container_id)
        if record is not None:
            err = InvalidState(name, action, f"frozen until migration {record['migration_id']} to {record.get('dest')} is settled",
                               "paused")
            err.hint = (f"the target may run this container now; the daemon here asks {record.get('dest')} every few seconds, "
                        "then removes or thaws this copy (docs/migration.md, 'Exactly one copy')")
            raise err

    def start_precopy_round(self, migration_id: str, round_no: int, final: bool = False, source_address: str | None = None) -> int:
        """``source_address``: the caller as the service saw it (the only host a plain page server lets in)."""
        return self._incoming().start_precopy_round(migration_id, round_no, final=final, source_address=source_address)

    def sweep_incoming(self) -> None:
        """Abort incoming migrations whose source went silent (see IncomingMigrations.sweep)."""
        if self._incoming_migrations is not None:
            self._incoming_migrations.sweep()

    def reconcile(self) -> None:
        """After a (re)start: finish or undo what a crash interrupted (outgoing migrations: thaw or
        finish the source copy; incoming migrations; scratch). Outgoing first: it waits for an
        orphaned CRIU to leave the staging dir that the incoming reconcile then removes."""
        from migrate.archive import partial_exports
        from migrate.migration.recovery import reconcile_outgoing
        from runtime.restart import on_daemon_start as restart_on_daemon_start
        from runtime.port_rules import sweep_stale as sweep_stale_ports

        self.runtime.paths.ensure()
        steps: tuple[tuple[str, Any], ...] = (
            ("freezes of dead checkpoints", self.runtime.settle_freezes),  # thaw, remove partial files
            # exports killed after a --leave-running thaw, while compressing (migrate/archive/partial_exports.py)
            ("interrupted exports", lambda: partial_exports.sweep(self.runtime.paths.run, self.runtime.paths.tmp)),
            ("outgoing migrations", lambda: reconcile_outgoing(self._host(), lambda dest: self.peer.connect(dest))),
            ("incoming migrations and scratch", lambda: self._incoming().reconcile()),
            # held by live image work in CLI processes is kept (runtime/scratch.py)
            ("image scratch", lambda: self.runtime.images.sweep_scratch()),
            ("published ports", lambda: sweep_stale_ports(self.runtime)),  # of containers gone or exited
            # last: settled freezes and migrations decide which copy is the live one
            ("restart policies", lambda: restart_on_daemon_start(self.runtime)),
        )
        for what, step in steps:
            # A boundary: whatever a crash or a hostile input left behind, the daemon must start
            # (a scratch tree it cannot remove once kept it down for good). Log, go on.
            try:
                step()
            except Exception:
                log.exception("reconcile of %s failed; the daemon starts anyway", what)

    # -- helpers --------------------------------------------------------------------------------
    def _page_server_address(self, dest: str) -> str | None:
        """Where a disk-less dump sends its pages: the target's host.

        CRIU's page server is its own TCP connection: with mTLS daemons it uses TLS with the
        daemons' certificates (``_page_server_tls``); with ``--insecure`` daemons it is plain TCP,
        like their gRPC. ``unix:`` and ``ssh://`` targets are not reachable by a direct TCP
        connection (and an ssh tunnel's security would not cover it): their pages go over a unix
        page socket the target connection offers (``migrate`` asks it; page_socket.py), or stream."""
        if dest.startswith(("unix:", "ssh://")):
            return None
        host, sep, port = dest.rpartition(":")
        if not sep or not port.isdigit():
            return None
        return host.strip("[]") or None

    def _page_server_tls(self) -> Any:
        """TLS for CRIU's page-server connections (runtime.criu.CriuTls), from this daemon's mTLS
        material, or None without it. The connecting end checks that the peer's certificate names
        the address it dials (as gRPC does), unless the deployment overrides gRPC's server name,
        which CRIU cannot: then, as on the listening end, the chain alone is checked."""
        tls = self.peer.tls
        if tls is None:
            return None
        from runtime.criu import CriuTls

        return CriuTls(cacert=Path(tls.ca).resolve(), cert=Path(tls.cert).resolve(), key=Path(tls.key).resolve(),
                       no_cn_verify=tls.server_name is not None)

    def _host(self) -> Any:
        if self._checkpoint_host is None:
            from runtime.checkpointing import CheckpointHost

            self._checkpoint_host = CheckpointHost(self.runtime)
            self._checkpoint_host.allow_peer_volumes = self.allow_peer_volumes
        return self._checkpoint_host

    def _checkpoint_store(self) -> Any:
        from migrate.archive.store import CheckpointStore

        return CheckpointStore(self.runtime.paths)

    def _incoming(self) -> Any:
        if self._incoming_migrations is None:
            from migrate.migration.target import IncomingMigrations
            from runtime.criu import SwrkCriu

            self._incoming_migrations = IncomingMigrations(self._host(), SwrkCriu(), page_server_tls=self._page_server_tls(),
                                                           connect=lambda address: self.peer.connect(address))
        return self._incoming_migrations


@dataclasses.dataclass(frozen=True)
class PeerConfig:
    """How this host dials another daemon (migration targets): the same credential kinds as the CLI."""

    tls: Any = None  # migrate.remote.tls.TlsConfig
    token: str | None = None
    insecure: bool = False
    ssh: dict[str, Any] | None = None

    def connect(self, dest: str) -> Any:
        from migrate.remote.client import RemoteEngine

        ssh = self.ssh if dest.startswith("ssh://") else None
        return RemoteEngine(dest, tls=self.tls, token=self.token, insecure=self.insecure, ssh=ssh)

    @classmethod
    def from_args(cls, args: Any) -> "PeerConfig":
        from migrate.remote.client import read_token
        from migrate.remote.tls import tls_from_paths

        tls = tls_from_paths(getattr(args, "tls_cert", None), getattr(args, "tls_key", None), getattr(args, "tls_ca", None), who="peer")
        ssh = None
        # Only when a --ssh-* flag differs from its default: migrate.remote.ssh imports paramiko (~70 ms
        # on every TCP migrate otherwise); without flags open_ssh_target's defaults are the same.
        given = any(getattr(args, a, None) for a in ("ssh_key", "ssh_accept_new", "ssh_known_hosts", "ssh_remote_root"))
        if given or getattr(args, "ssh_remote_pymigrate", None) not in (None, "pymigrate"):
            from migrate.remote.ssh import ssh_options_from_args

            ssh = ssh_options_from_args(args)
        return cls(tls=tls, token=read_token(getattr(args, "token_file", None)), insecure=bool(getattr(args, "insecure", False)), ssh=ssh)


def engine_for(args: Any) -> Engine:
    """LocalEngine on ``args.root`` unless ``args.host`` names a remote daemon."""
    if getattr(args, "host", None) is None:
        return LocalEngine(getattr(args, "root", None), peer_args=args)
    from migrate.remote.client import RemoteEngine

    return RemoteEngine.from_args(args)
