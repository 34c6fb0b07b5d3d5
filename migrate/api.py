"""The one library API: the ``Engine`` protocol and the frozen dataclasses it takes and returns.

``LocalEngine`` (migrate/engine.py) runs everything on this host through the runtime and the
checkpoint core; ``RemoteEngine`` (migrate/remote/client.py) is the gRPC client of a pymigrate daemon.
The CLI and the gRPC servicer talk only to an ``Engine``; neither sees protobuf and runtime
internals at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Protocol

from runtime.ports import PortMapping
from runtime.spec import ContainerInfo, Volume

if TYPE_CHECKING:  # not imported at run time: ``pymigrate run -d`` imports this module, and its start is benchmarked
    from runtime.logs import LogEntry
    from runtime.registry import PushResult, RegistryOptions

MigrationMode = Literal["cold", "postcopy", "precopy", "auto"]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long operation, for progress bars and streamed RPCs."""

    operation: str  # checkpoint | restore | migrate | import | export
    phase: str  # e.g. preflight, freeze, dump, transfer, restore, cleanup, done
    bytes_done: int = 0
    bytes_total: int = 0  # 0 when unknown
    elapsed_s: float = 0.0
    message: str = ""


ProgressFn = Callable[[ProgressEvent], None]
# one line of skopeo's report while an image is copied to or from a registry ("Copying blob sha256:...")
CopyProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class RunOptions:
    image: str
    command: tuple[str, ...] = ()
    name: str | None = None
    hostname: str | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    memory_bytes: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    network: str = "bridge"  # bridge | none | host | container:NAME (runtime/ns_modes.py)
    ip: str | None = None
    volumes: tuple[Volume, ...] = ()
    # -p: host ports forwarded to the container (runtime/ports.py; host port 0: a free one)
    ports: tuple[PortMapping, ...] = ()
    publish_all: bool = False  # -P: the image's ExposedPorts on free host ports, added to ``ports``
    cgroup_parent: str | None = None
    seccomp: str = "default"  # default | unconfined | custom (runtime/seccomp.py)
    seccomp_profile: str | None = None  # a custom profile's JSON text
    user: str = ""  # USER[:GROUP], names or ids (runtime/users.py); "": the image's User, else root
    # replaces the image's Entrypoint, and its Cmd is then not used; () clears it; None: the image's
    entrypoint: tuple[str, ...] | None = None
    stop_signal: str = ""  # what stop sends first (SIGQUIT, QUIT, 3); "": the image's StopSignal, else SIGTERM
    auto_remove: bool = False  # removed on the host once it exited (run -d --rm): by its shim, not the caller
    read_only: bool = False  # run --read-only: the container's root is mounted read-only
    cap_add: tuple[str, ...] = ()  # capability names (NET_RAW, CAP_SYS_ADMIN) or ALL, added to the default set
    cap_drop: tuple[str, ...] = ()  # likewise, dropped from it (an add wins; docker's rules)
    restart: str = "no"  # no | on-failure[:N] | always | unless-stopped, kept by its shim (runtime/restart.py)
    init: bool = False  # run --init: tini is PID 1 (forwards signals, reaps zombies)
    tty: bool = False  # run -t: a pty owned by the container's shim (runtime/console.py)
    interactive: bool = False  # run -i: the shim keeps the container's stdin for attach clients
    # --pid/--ipc/--uts private | host | container:NAME, --cgroupns private | host (runtime/ns_modes.py)
    pid_mode: str = "private"
    ipc_mode: str = "private"
    uts_mode: str = "private"
    cgroupns_mode: str = "private"
    userns: str = ""  # --userns auto[:size=N]: its own id range from the host's pool (runtime/userns.py); "": host
    labels: dict[str, str] = field(default_factory=dict)  # --label KEY=VALUE (runtime/labels.py)


@dataclass(frozen=True)
class ImageInfo:
    name: str
    digest: str  # "sha256:<hex>"
    size_bytes: int
    created_at: float  # when this name was given to the digest (unix time)
    layers: int = 0  # how many layers it is stored as (0: one flat tree, e.g. from image import)


@dataclass(frozen=True)
class ImageRemoval:
    """What ``image rm`` and ``image prune`` took off the host (runtime.image_store.Removal)."""

    untagged: tuple[str, ...] = ()  # names removed
    deleted: tuple[str, ...] = ()  # image digests no longer stored
    layers_removed: tuple[str, ...] = ()  # diff_ids of layers no stored image uses any more
    blobs_removed: int = 0  # layer blobs and configs no stored image refers to
    scratch_removed: int = 0  # leftovers of killed image work swept from the state root's tmp (prune)
    bytes_freed: int = 0  # unpacked layers, blobs and flat trees (scratch not counted)


@dataclass(frozen=True)
class CheckpointOptions:
    leave_running: bool = False
    export_path: Path | None = None
    compress: Literal["zstd", "gzip", "none"] = "zstd"  # gzip: --format podman only
    level: int = 1
    tcp_established: bool = False
    file_locks: bool = False
    # an ed25519 private key (OpenSSH or PEM) that signs the export (migrate/archive/signing.py); read
    # by the caller's side, never sent to a daemon
    sign_key: Path | None = None
    # an export leaves the named volumes' contents out (podman's --ignore-volumes): a restore then
    # needs volumes of those names on its host (migrate/volumes.py)
    ignore_volumes: bool = False
    # checkpoint --label KEY=VALUE: kept on the checkpoint (its manifest), listed and filterable;
    # the container's own labels stay in the checkpoint's container spec
    labels: dict[str, str] = field(default_factory=dict)
    # checkpoint --create-image REF: also an OCI checkpoint image in the image store, named as a
    # pull of REF would be (migrate/interop/checkpoint_image.py); "" for none
    create_image: str = ""
    # checkpoint --export FILE --format podman: an archive podman container restore --import restores
    # (migrate/interop/podman_export.py); "native": pymigrate's own (the default)
    export_format: Literal["native", "podman"] = "native"


@dataclass(frozen=True)
class CheckpointStats:
    """Times in milliseconds, sizes in bytes. ``frozen_ms`` is the downtime."""

    freezing_ms: float = 0.0
    frozen_ms: float = 0.0
    memdump_ms: float = 0.0
    memwrite_ms: float = 0.0
    pages_scanned: int = 0
    pages_skipped_parent: int = 0
    pages_written: int = 0
    images_bytes: int = 0
    upper_bytes: int = 0
    archive_bytes: int = 0  # compressed archive size (0 when not exported)
    archive_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class CheckpointResult:
    checkpoint_id: str
    container_name: str
    export_path: str | None
    stats: CheckpointStats
    signed_by: str = ""  # the signing key's fingerprint when the export was signed
    image_ref: str = ""  # --create-image: the reference, normalised ("" without one)
    image_digest: str = ""  # --create-image: the stored checkpoint image's digest


@dataclass(frozen=True)
class CheckpointInfo:
    checkpoint_id: str
    container_name: str
    container_id: str
    image_digest: str
    created_at: float
    size_bytes: int  # on disk (allocated blocks): the sparse upper.img counts what it holds
    criu_version: str
    labels: dict[str, str] = field(default_factory=dict)  # checkpoint --label (the manifest's "labels")


DEFAULT_RESTORE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class RestoreOptions:
    checkpoint_id: str | None = None
    import_path: Path | None = None
    name: str | None = None
    ip: str | None = None
    tcp_established: bool = False
    # host directories for the checkpoint's volumes, matched by target: an imported or uploaded
    # archive cannot choose host paths, so each of its volumes must be mapped here
    volumes: tuple[Volume, ...] = ()
    timeout_s: float = DEFAULT_RESTORE_TIMEOUT_S  # CRIU's restore is killed after this long
    # the restorer's explicit seccomp choice, replacing the checkpoint's (None: keep it, within
    # the policy for imported and migrated containers, migrate/restore.py seccomp_policy)
    seccomp: str | None = None
    seccomp_profile: str | None = None
    # public keys (files of ssh-ed25519 lines or PEM): the imported archive must be signed by one
    # of them, checked before anything is extracted (migrate/archive/signing.py); on the caller's side
    trusted_keys: tuple[Path, ...] = ()
    # restore --publish: these ports replace the checkpoint's (None: keep them; () publishes none)
    ports: tuple[PortMapping, ...] | None = None
    # podman's flags: the restored copy takes a fresh address (and so a fresh MAC) / a fresh MAC
    ignore_static_ip: bool = False
    ignore_static_mac: bool = False
    # restore REF / --image REF: a checkpoint image, found here or pulled (migrate/interop/checkpoint_image.py)
    image_ref: str = ""
    # how to pull it: a runtime.registry.RegistryOptions (Any: this module does not import the
    # registry code); on the caller's side only, never sent to a daemon
    image_registry: Any = None
    # restore --import --pull: a podman/CRI-O archive's image is pulled (with image_registry's flags)
    # when it is not here (migrate/interop/podman_import.py); local only (refused over --host:
    # migrate/interop/remote_import.py)
    pull_image: bool = False


@dataclass(frozen=True)
class RestoreStats:
    import_ms: float = 0.0  # verify + unpack of an archive
    restore_ms: float = 0.0  # CRIU restore
    total_ms: float = 0.0
    archive_bytes: int = 0
    images_bytes: int = 0
    since_resume_ms: float = 0.0  # the container resumed this long before the answer (migration pause)


@dataclass(frozen=True)
class RestoreResult:
    container: ContainerInfo
    stats: RestoreStats
    signed_by: str = ""  # the trusted key that signed the imported archive, when keys were given


@dataclass(frozen=True)
class MigrateOptions:
    dest: str  # daemon address: unix:PATH, HOST:PORT or ssh://[user@]host[:port]
    keep_source: bool = False
    mode: MigrationMode = "cold"
    tcp_established: bool = False
    file_locks: bool = False  # dump and restore file locks (flock, fcntl, leases) held by the tree
    # migrate -p: the ports the target publishes instead of the container's (None: the same ones)
    ports: tuple[PortMapping, ...] | None = None
    # zstd on the page-server stream (migrate/migration/page_relay.py): "auto" when it beats the
    # measured link, "on", "off" (empty: auto)
    compress: str = "auto"


@dataclass(frozen=True)
class MigrationStats:
    frozen_ms: float = 0.0  # downtime: freeze to running on the target (the target's resume, not its answer)
    total_ms: float = 0.0
    bytes_on_wire: int = 0
    raw_bytes: int = 0
    phases_ms: dict[str, float] = field(default_factory=dict)
    # upper-layer entries sent while frozen (the changes since the pre-freeze staging); -1: all of it
    upper_entries_frozen: int = -1
    image_bytes: int = 0  # the base image, when the target lacked it (sent before the freeze)
    image_layers_sent: int = 0  # layer blobs of a layered image the target lacked


@dataclass(frozen=True)
class MigrateResult:
    container_name: str
    dest: str
    mode: str
    stats: MigrationStats


@dataclass(frozen=True)
class ImageDetails:
    """``image inspect``: the image and its run config (OCI field names; None: the image has none,
    e.g. one imported from a flat rootfs tarball)."""

    image: ImageInfo
    config: dict[str, Any] | None


@dataclass(frozen=True)
class CommitOptions:
    """``commit``: what to change in the config, and how to read a running container."""

    changes: tuple[str, ...] = ()  # Dockerfile instructions: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, ...
    message: str = ""  # the new history entry's comment (-m)
    author: str = ""  # the image's author (--author)
    pause: bool = True  # freeze a running container while its changes are read (--pause=false: not)


@dataclass(frozen=True)
class CommitResult:
    """The committed image and what its new layer holds."""

    image: ImageInfo
    layer_diff_id: str  # the new layer (sha256 of its uncompressed tar)
    layer_bytes: int
    whiteouts: int  # deletions of image files the layer carries
    opaque_dirs: int  # directories the container made anew over the image's
    skipped: tuple[str, ...] = ()  # the container's paths left out: device nodes, sockets, .wh.* names
    frozen_ms: float = 0.0  # how long commit froze the container (0: it did not)


@dataclass(frozen=True)
class HostInfo:
    version: str
    hostname: str
    kernel: str
    criu_version: str | None
    features: dict[str, bool]  # criu and kernel features by name
    cgroup_mode: str
    cpu_digest: str
    images: tuple[ImageInfo, ...] = ()


@dataclass(frozen=True)
class VolumeInfo:
    """A named volume (runtime/volumes.py): ``volume ls`` and ``volume inspect``."""

    name: str
    mountpoint: str  # its data directory on the volume's host
    created_at: float  # unix time, seconds
    driver: str = "local"
    labels: tuple[str, ...] = ()  # KEY=VALUE
    used_by: tuple[str, ...] = ()  # names of the containers (any state) that mount it


@dataclass(frozen=True)
class VolumePruneResult:
    removed: tuple[str, ...] = ()  # volume names
    bytes_freed: int = 0


class Engine(Protocol):
    """Everything a user can do to one host. Names accept a container name or id."""

    def host_info(self) -> HostInfo: ...

    # images
    def images(self) -> list[ImageInfo]: ...
    def image_import(self, name: str, tarball: Path) -> ImageInfo: ...
    # a Docker/OCI archive (a RemoteEngine uploads it; an OCI layout dir is packed as a tar first)
    def image_load(self, path: Path, name: str | None = None, platform: str | None = None) -> ImageInfo: ...
    # registries, through skopeo on the engine's host (cert_dir and authfile are paths there)
    def image_pull(self, reference: str, name: str | None = None, platform: str | None = None,
                   options: RegistryOptions | None = None, progress: CopyProgressFn | None = None) -> ImageInfo: ...
    def image_push(self, name: str, reference: str, options: RegistryOptions | None = None,
                   progress: CopyProgressFn | None = None) -> PushResult: ...
    def image_inspect(self, name: str) -> ImageDetails: ...
    def image_remove(self, name: str) -> ImageRemoval: ...
    def image_tag(self, source: str, target: str) -> ImageInfo: ...
    def image_prune(self, all: bool = False) -> ImageRemoval: ...
    def image_build_busybox(self, name: str = "busybox") -> ImageInfo: ...
    # a new image: the container's image layers plus one layer of its changes (runtime/commit.py)
    def commit(self, name: str, target: str, options: CommitOptions | None = None) -> CommitResult: ...

    # named volumes
    def volume_create(self, name: str | None = None, labels: tuple[str, ...] = ()) -> VolumeInfo: ...
    def volumes(self) -> list[VolumeInfo]: ...
    def volume_inspect(self, name: str) -> VolumeInfo: ...
    def volume_remove(self, name: str, force: bool = False) -> bool: ...
    def volume_prune(self) -> VolumePruneResult: ...

    # containers
    def run(self, options: RunOptions) -> ContainerInfo: ...
    def containers(self, all: bool = False) -> list[ContainerInfo]: ...
    def inspect(self, name: str) -> ContainerInfo: ...
    def stop(self, name: str, timeout_s: float = 10.0) -> ContainerInfo: ...
    def kill(self, name: str, signal: int = 9) -> None: ...
    def remove(self, name: str, force: bool = False) -> bool | None: ...  # False: rm -f of a missing one
    def create(self, options: RunOptions) -> ContainerInfo: ...
    def start(self, name: str) -> ContainerInfo: ...
    def restart(self, name: str, timeout_s: float = 10.0) -> ContainerInfo: ...
    def rename(self, name: str, new_name: str) -> ContainerInfo: ...
    def pause(self, name: str) -> ContainerInfo: ...
    def unpause(self, name: str) -> ContainerInfo: ...
    # stdout and stderr lines in time order (runtime/logs.py); tail/since/until: docker's filters
    # (unix s); following yields an empty entry now and then while silent
    def logs(self, name: str, follow: bool = False, *, tail: int | None = None, since: float | None = None,
             until: float | None = None) -> Iterator[LogEntry]: ...

    # checkpoints
    def checkpoint(self, name: str, options: CheckpointOptions, progress: ProgressFn | None = None) -> CheckpointResult: ...
    def restore(self, options: RestoreOptions, progress: ProgressFn | None = None) -> RestoreResult: ...
    def checkpoints(self) -> list[CheckpointInfo]: ...
    def checkpoint_remove(self, checkpoint_id: str) -> None: ...
    def checkpoint_inspect(self, checkpoint_id: str) -> dict: ...  # the manifest

    # migration
    def migrate(self, name: str, options: MigrateOptions, progress: ProgressFn | None = None) -> MigrateResult: ...

    # processes and files (runtime/stats.py, runtime/top.py, runtime/container_files); remote:
    # Unsupported (cp forks into the container, which the daemon cannot; no RPCs for the others yet)
    def stats(self, name: str, previous: Any = None) -> Any: ...  # runtime.stats.ContainerStats
    def top(self, name: str, ps_args: tuple[str, ...] = ()) -> Any: ...  # runtime.top.TopResult
    def copy_from_container(self, name: str, src_path: str, dest: Any, *, archive: bool = False,
                            follow: bool = False) -> Any: ...  # runtime.container_files.CopyResult
    def copy_to_container(self, name: str, src: Any, dest_path: str, *, archive: bool = False,
                          follow: bool = False) -> Any: ...
    # runtime.events.Event after cursor ``since`` (None: only new ones), then new ones until closed;
    # None now and then while none come (a caller's chance to stop); EventsLost for a too old cursor
    def events(self, since: int | None = None, filters: tuple[str, ...] = ()) -> Iterator[Any]: ...


# ---------------------------------------------------------------------------------------------
# Daemon-to-daemon migration: what a source engine asks of a target engine. LocalEngine
# implements these for its own host; RemoteEngine forwards them to a daemon (PrepareIncoming,
# PushImage, PushUpper, PushCheckpoint, AbortIncoming, CommitIncoming), so a source calls the same methods
# on RemoteEngine(dest) whether the target is in-process (tests) or on another host.


@dataclass(frozen=True)
class IncomingRequest:
    """A source's announcement of a container it wants to move here (pre-flight input)."""

    container_name: str
    spec: dict  # ContainerSpec.to_dict() of the source container
    image_digest: str  # "sha256:<hex>"
    criu_version: str | None
    cpu_digest: str
    ip: str | None
    mode: MigrationMode = "cold"
    # Disk-less dump: the address the source dials this host on. When set, the target starts a
    # CRIU page server there and the source's CRIU sends memory pages straight to it.
    page_server_address: str | None = None
    # The source's address as the target's daemon saw the call come in (filled in by the target's
    # service, never taken from the wire): the only host a plain page server lets in.
    source_address: str | None = None
    # The source daemon's own address (HOST:PORT; a wildcard host means "the address the call came
    # from"): where the target asks what became of the migration when the source never settles it
    # (a restored copy's lease, migrate/migration/target.py). None: the target cannot ask.
    source_daemon: str | None = None
    image_layers: tuple[str, ...] = ()  # a layered image's diff_ids, lowest first (empty: flat)
    # the source can send the page-server stream through its relay (zstd or raw, decided on the link)
    compressed_pages: bool = False


@dataclass(frozen=True)
class IncomingTicket:
    migration_id: str
    need_image: bool  # the target lacks image_digest: receive_image before receive_checkpoint
    page_server_port: int = 0  # the page server for a disk-less dump (0: none; stream the pages)
    stage_upper: bool = False  # send the upper layer with receive_upper before the freeze
    # need_image of a layered image: the image_layers the target lacks (only their blobs are sent)
    missing_layers: tuple[str, ...] = ()
    layered_image: bool = False  # receive_image takes that OCI archive (an older target: a raw tar)
    pages_compressed: bool = False  # page_server_port is a page relay (an older target: CRIU's own, raw)


SettlementOutcome = Literal["committed", "aborted", "lost", "pending", "unknown"]


@dataclass(frozen=True)
class Settlement:
    """What became of a migration, as the host asked knows it (SettleMigration; docs/migration.md
    "Exactly one copy"). ``outcome``: "committed" (the target runs it for good), "aborted" (no
    copy there), "lost" (post-copy: the target's copy missed pages and was removed), "pending"
    (still under way on the host asked), "unknown" (the host asked has no trace of it).
    ``container_running``: a container of the migrated id runs, unfrozen, on the host asked."""

    migration_id: str
    outcome: SettlementOutcome
    container_running: bool = False


class MigrationTarget(Protocol):
    """The receiving side of a migration, and checkpoint archives as byte streams.

    A migration on the target is: prepare_incoming (reserve name and address, check CRIU, CPU and
    image), receive_image if the ticket says so, receive_upper (the upper layer while the container
    still runs) if the ticket says so, receive_checkpoint (verify, restore, return once
    the container runs), then commit_incoming; abort_incoming removes every piece of an
    unfinished migration, including a restored but uncommitted container. Chunk iterators may
    raise ``TransferError`` when the sender goes away; implementations clean up and re-raise.
    """

    def prepare_incoming(self, request: IncomingRequest) -> IncomingTicket: ...
    def receive_image(self, migration_id: str, chunks: Iterator[bytes]) -> None: ...
    def receive_upper(self, migration_id: str, chunks: Iterator[bytes]) -> int: ...
    def receive_checkpoint(self, migration_id: str, chunks: Iterator[bytes]) -> RestoreResult: ...
    def abort_incoming(self, migration_id: str) -> None: ...
    def commit_incoming(self, migration_id: str) -> None: ...
    def settle_migration(self, migration_id: str, container_id: str = "", ask_source: bool = False) -> Settlement: ...
    def start_precopy_round(self, migration_id: str, round_no: int, final: bool = False) -> int:
        """Pre-copy (migrate/migration/precopy.py): start the CRIU page server of pre-dump round ``round_no``
        (1, 2, ... in order; ``final``: the frozen dump's, after the last round) and return its port."""
        ...

    def export_checkpoint(self, checkpoint_id: str) -> Iterator[bytes]: ...
    def import_checkpoint(self, chunks: Iterator[bytes]) -> CheckpointInfo: ...
