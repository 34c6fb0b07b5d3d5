"""The receiving side of a migration (what a target daemon does for a source).

One incoming migration is a small record, ROOT/run/incoming/<migration_id>.json, written
atomically under a lock, with a ``phase``:

    prepared   pre-flight passed; the container's name and address are reserved (the address is
               leased to the container id, so ``run`` cannot take it meanwhile)
    restoring  the whole archive arrived and verified; CRIU restores (an abort can no longer stop
               it cleanly: a settlement asked now answers "pending")
    restored   the container runs here; the source has not committed yet
    (deleted)  committed, or aborted (abort also removes a restored container and the lease)

Partial data never lands outside ROOT/tmp: the archive is unpacked (and every checksum verified)
in a scratch dir that the restore removes whatever happens. A live migration stages the upper
layer first (``receive_upper``, while the container still runs on the source) in
ROOT/tmp/stage-<migration_id>; the checkpoint archive then carries only the upper layer's changes
since (migrate.migration.upper_sync), merged into the staged copy before the restore. ``reconcile`` (run when a daemon
starts) aborts migrations left ``prepared`` by a crash and removes stale scratch dirs; a
``restored`` one is kept: the container runs here and the source, frozen, waits to hear so.

Settlement (docs/migration.md, "Exactly one copy"): once the source sent its final dump it does
not thaw before this host said what became of the migration. ``settle`` answers by migration id
and is final and idempotent: a ``restored`` migration is committed ("committed": the source then
removes its frozen copy), a ``prepared`` one is aborted ("aborted": the source thaws; an abort wins
over a restore still running, which removes what it built when it finds its record gone). Every
ending leaves a small outcome record, ROOT/run/settled/<migration_id>.json, kept SETTLED_KEEP_S,
so that the same question asked again (the first answer lost, a source restarted) gets the same
answer. A ``restored`` migration the source does not settle within LEASE_S is not left to live
on blindly: ``sweep`` asks the source's daemon (its address came with the reservation) and
commits or aborts by its answer; while the source cannot be asked, the copy here keeps running
(after the point of no return the target wins: the source never thaws without this host's word).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from migrate import failpoints
from migrate.peer_timeout import peer_timeout_s
from migrate.api import IncomingRequest, IncomingTicket, RestoreOptions, RestoreResult, Settlement
from migrate.errors import ContainerLost, TransferError, IncompatibleHost, MigrationError
from migrate.restore import version_tuple, restore_container
from migrate.archive.streams import IteratorReader
from runtime.errors import ContainerError, ContainerExists, InvalidArgument, PortInUse
from runtime.ports import recorded_ports
from runtime.fstree import remove_tree, remove_tree_quietly
from runtime.scratch import sweep
from runtime.spec import ContainerSpec

if TYPE_CHECKING:
    from runtime.checkpointing import CheckpointHost
    from migrate.migration.page_relay import TargetRelay
    from runtime.criu import CriuProcess

log = logging.getLogger(__name__)

# a prepared migration with no progress on any channel for this long is aborted: twice the peer
# timeout (30 s by default), by when the source has given up on the link too
STALE_S = 2.0 * peer_timeout_s()
LEASE_S = 60.0  # a restored migration the source has not settled for this long: ask the source
SETTLED_KEEP_S = 7 * 86400.0  # how long an outcome record answers a late settlement
SOURCE_TIMEOUT_S = 10.0  # per call to the source when a lease expires


def _tree_size(path: Path) -> int:
    try:
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    except OSError:
        return 0

# scratch of migrations and checkpoints, which a crash leaves behind: removed whole at start-up. The image
# store's scratch (image-, pull-, view-, ...: runtime.image_store.SCRATCH_PREFIXES) may belong to a CLI
# process working right now; LocalEngine.reconcile sweeps it with ImageStore.sweep_scratch instead.
_SCRATCH_PREFIXES = ("import-", "restore-", "migrate-", "ckpt-", "pages-", "replaced-", "stage-", "precopy-",
                     "export-", "rm-")


def _validate_request(request: IncomingRequest, spec: ContainerSpec) -> None:
    """Refuse a peer's names and ids that are not well-formed before anything is reserved: they
    become paths under the state root (containers/<id>, the image index, lease records)."""
    from runtime.image_store import validate_digest
    from runtime.image_store import validate_name as validate_image_name
    from runtime.state import ID_RE, validate_name

    validate_name(spec.name)
    validate_name(request.container_name)
    if not isinstance(spec.container_id, str) or not ID_RE.fullmatch(spec.container_id):
        raise InvalidArgument(f"invalid container id {spec.container_id!r}: expected 32 lower-case hex characters")
    validate_image_name(spec.image)
    validate_digest(request.image_digest)
    from runtime.ns_modes import refuse_in_manifest

    refuse_in_manifest(spec)  # a shared namespace (--pid host, container:...) never comes from a peer


def _has_named_volumes(record: dict[str, Any]) -> bool:
    vols = (record.get("spec") or {}).get("volumes") or ()
    return any(isinstance(v, dict) and v.get("name") for v in vols)


def _has_session(migration_id: str) -> bool:
    from migrate.migration.postcopy import session_pid

    return session_pid(migration_id) is not None


def _dial_back(source_daemon: str | None, source_address: str | None) -> str | None:
    """Where this host may dial the source daemon back: only its port is taken from the wire, the
    host is always the address the authenticated call came from — this host sends its own peer
    credentials there, so a source cannot point it at a third host. A unix socket address is
    taken only from a local caller (no peer address)."""
    if not source_daemon:
        return None
    if source_daemon.startswith("unix:"):
        return source_daemon if source_address is None else None
    _host, sep, port = source_daemon.rpartition(":")
    if not sep or not port.isdigit() or not source_address:
        return None
    return f"[{source_address}]:{port}" if ":" in source_address else f"{source_address}:{port}"


class IncomingMigrations:
    def __init__(self, host: CheckpointHost, criu: Any, *, page_servers: bool = True, page_server_tls: Any = None,
                 connect: Any = None) -> None:
        self.host = host
        self.criu = criu
        self.connect = connect  # connect(address) -> the source daemon's engine, for expired leases
        # Disk-less dumps: a CRIU page server per migration receives the source's memory pages.
        # ``page_server_tls`` (runtime.criu.CriuTls, from the daemon's own mTLS material): CRIU's
        # page-server connections (this page server, post-copy's lazy-pages daemon) use TLS and
        # accept only a peer whose certificate chains to the daemon's CA.
        self.page_servers_allowed = page_servers
        self.page_server_tls = page_server_tls
        self._page_servers: dict[str, CriuProcess | TargetRelay] = {}
        self._guards: dict[str, Any] = {}  # runtime.port_guard guards of plain page servers
        # Progress of prepared migrations (monotonic time of the last byte on either channel, and
        # the page-server dir's size at the last sweep): see sweep().
        self._activity: dict[str, float] = {}
        self._pages_seen: dict[str, int] = {}
        self.dir: Path = host.paths.run / "incoming"
        self.settled_dir: Path = host.paths.run / "settled"
        self._precopy: Any = None  # migrate.migration.precopy_target.PrecopyRounds, made on first use

    # -- records ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _path(self, migration_id: str) -> Path:
        if not migration_id or not all(c in "0123456789abcdef" for c in migration_id) or len(migration_id) > 64:
            raise InvalidArgument(f"invalid migration id {migration_id!r}")
        return self.dir / f"{migration_id}.json"

    def _load(self, migration_id: str) -> dict[str, Any]:
        try:
            return json.loads(self._path(migration_id).read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            raise MigrationError(f"no incoming migration {migration_id} on this host", phase="restore") from None

    def _save(self, record: dict[str, Any]) -> None:
        path = self._path(record["migration_id"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        os.replace(tmp, path)

    def records(self) -> list[dict[str, Any]]:
        out = []
        if self.dir.is_dir():
            for p in self.dir.glob("*.json"):
                try:
                    out.append(json.loads(p.read_text()))
                except (OSError, ValueError):
                    continue
        return out

    # -- protocol -----------------------------------------------------------------------------
    def prepare(self, request: IncomingRequest) -> IncomingTicket:
        """Pre-flight and reservation. Raises IncompatibleHost / ContainerExists naming the problem."""
        spec = ContainerSpec.from_dict(request.spec)
        _validate_request(request, spec)
        from migrate.volumes import check_incoming as check_volumes

        if spec.volumes:  # before the source freezes: a volume name taken here, a bind mount's missing path
            check_volumes(self.host.volumes, spec, mode=request.mode, allow_peer_volumes=self.host.allow_peer_volumes)
        if request.mode == "postcopy":  # this host must restore with lazy pages
            from migrate.migration.postcopy import check_incoming

            check_incoming(request)
        if request.mode == "precopy":  # this host's page servers must take pre-dump rounds
            from migrate.migration.precopy import check_incoming as check_precopy

            check_precopy(request, page_servers=self.page_servers_allowed)
        here = self.criu.version()
        if request.criu_version and version_tuple(here) < version_tuple(request.criu_version):
            raise IncompatibleHost(
                f"this host has criu {here}, older than the source's {request.criu_version}", phase="preflight"
            )
        mine = self.host.cpu_digest()
        if request.cpu_digest and mine and request.cpu_digest != mine:
            # Different flags are not fatal by themselves: ``criu cpuinfo check`` on the dumped
            # cpuinfo.img decides during restore. Say so in the log for the operator.
            log.info("migration from a CPU with other flags (source %s, here %s): cpuinfo check decides",
                     request.cpu_digest[:12], mine[:12])
        migration_id = secrets.token_hex(8)
        from migrate.migration.cold_lazy import lazy_reason

        no_lazy = lazy_reason(request.mode, spec.to_dict())  # a cold restore resumes before its pages are in
        with self._locked():
            for other in self.records():
                if other.get("name") == spec.name:
                    raise ContainerExists(f"container name {spec.name} is reserved by incoming migration {other['migration_id']}")
            replace_id = self.host.replaceable_id(spec)
            self.host.check_name_free(spec.name, replace_id=replace_id)
            if spec.ip:
                if not self.host.ip_free(spec.ip, replace_id=replace_id, owner=spec.container_id):
                    raise ContainerExists(f"address {spec.ip} of container {spec.name} is already in use on this host")
                self.host.rt.network(spec.network).lease(spec.container_id, spec.ip)
            if spec.ports:  # before the source freezes: a taken host port refuses the migration (PortInUse)
                spec = self._claim_ports(spec, replace_id)  # the record keeps them, host ports chosen
            if spec.userns_size:  # before the source freezes: no free id range refuses it (Unsupported)
                from runtime import userns

                # the restore finds this claim (same root and id); unused, it lapses (runtime/userns.py)
                userns.allocate(self.host.rt.paths.root, spec.container_id, spec.userns_size, prefer=spec.userns_base)
            need_image = not self.host.images.has_digest(request.image_digest)
            layered = need_image and bool(request.image_layers)
            missing = tuple(d for d in request.image_layers if not self.host.images.layers.has_layer(d)) if layered else ()
            self._save({
                "migration_id": migration_id,
                "phase": "prepared",
                "name": spec.name,
                "container_id": spec.container_id,
                "ip": spec.ip,
                "network": spec.network,
                "image": spec.image,
                "image_digest": request.image_digest,
                "image_layered": layered,  # receive_image takes an OCI archive (missing layers only)
                "mode": request.mode,
                "spec": spec.to_dict(),  # a post-copy restore builds the container while its images arrive
                "created_at": time.time(),
                # pre-copy: where each round's page server listens, and the only peer it lets in
                "page_server_address": request.page_server_address,
                "source_address": request.source_address,
                "source_daemon": _dial_back(request.source_daemon, request.source_address),
                "lazy_restore": no_lazy is None,
            })
        if request.mode == "postcopy" or (request.mode == "cold" and no_lazy is None):  # (cold: cold_lazy.py)
            # its shell is built while the source still runs, not in the pause
            from migrate.migration.postcopy import prebuild_shell

            prebuild_shell(self.host, self.criu, self._load(migration_id))
        port = 0
        relayed = request.compressed_pages and request.mode in ("cold", "postcopy")
        if request.page_server_address and request.mode == "cold" and self.page_servers_allowed:
            port = self._start_page_server(migration_id, request.page_server_address, request.source_address, relay=relayed)
        elif relayed and request.page_server_address and self.page_servers_allowed:  # post-copy's lazy pages (lazy_relay.py)
            from migrate.migration.lazy_relay import start_for

            port = start_for(migration_id, request.page_server_address, request.source_address, tls=self.page_server_tls)
        log.info("migration=%s phase=preflight container=%s reserved need_image=%s missing_layers=%d page_server_port=%d "
                 "restore=%s", migration_id, spec.name, need_image, len(missing), port,
                 "lazy" if no_lazy is None else f"full ({no_lazy})" if request.mode == "cold" else "mode's")
        return IncomingTicket(migration_id=migration_id, need_image=need_image, page_server_port=port, stage_upper=True,
                              missing_layers=missing, layered_image=layered, pages_compressed=bool(port) and relayed)

    def _claim_ports(self, spec: ContainerSpec, replace_id: str | None) -> ContainerSpec:
        """Refuse the ports another container here publishes or a host process holds, and the
        address lease just made goes again (nothing else is reserved yet). The peer's ports are
        checked first (the whole spec is validated only by the restore)."""
        from dataclasses import replace

        from runtime.ports import validate_ports

        try:
            spec = replace(spec, ports=validate_ports(spec.ports, network=spec.network))
            return replace(spec, ports=self.host.claim_ports(spec, replace_id=replace_id))
        except BaseException as exc:
            if spec.ip and replace_id is None:
                self.host.rt.network(spec.network).release(spec.container_id)
            if isinstance(exc, PortInUse):  # typed, so a scheduler can pick another host: say where
                raise PortInUse(exc.port, exc.protocol, exc.host_ip, f"{exc.holder} on the migration target",
                                hint="free that port there, or migrate elsewhere") from exc
            raise

    # -- the upper layer, staged before the freeze --------------------------------------------
    def _stage_dir(self, migration_id: str) -> Path:
        return self.host.paths.tmp / f"stage-{migration_id}"

    def staged_upper(self, migration_id: str) -> Path | None:
        """The upper layer ``receive_upper`` staged for this migration, if any: a directory, or
        the file system image of a layer that moves block-wise (migrate/archive/upper_image.py)."""
        from migrate.archive.upper_image import MEMBER
        from runtime.upperfs import is_image_file

        stage = self._stage_dir(migration_id)
        if is_image_file(stage / MEMBER):
            return stage / MEMBER
        path = stage / "upper"
        return path if path.is_dir() else None

    def receive_upper(self, migration_id: str, chunks: Iterator[bytes]) -> int:
        """Stage the container's upper layer, sent while it still runs (verified like any archive;
        device nodes by the same policy as a checkpoint's). Returns the number of entries."""
        from migrate.archive import read_archive
        from migrate.archive.store import UPPER_STAGE_KIND, devices_allowed
        from migrate.archive.upper_image import MEMBER, unpack_members
        from migrate.archive.fs import walk

        record = self._load(migration_id)
        if record["phase"] != "prepared":
            raise MigrationError(f"incoming migration {migration_id} is {record['phase']}, expected prepared", phase="stage")
        failpoints.hit("target.upper")
        stage = self._stage_dir(migration_id)
        partial = stage.with_name(stage.name + ".partial")
        remove_tree_quietly(partial)
        self.host.paths.tmp.mkdir(parents=True, exist_ok=True)
        partial.mkdir(mode=0o700)
        reader = IteratorReader(self._touching(migration_id, chunks))
        try:
            manifest = read_archive(reader, partial / "tree", allow_devices=devices_allowed)
            if manifest.get("kind") != UPPER_STAGE_KIND or manifest.get("migration_id") != migration_id:
                raise MigrationError(f"incoming migration {migration_id}: not its upper layer (kind {manifest.get('kind')!r})",
                                     phase="stage")
            upper = partial / "tree" / "upper"
            upper.mkdir(exist_ok=True)
            os.rename(upper, partial / "upper")
            if (partial / "tree" / "volumes").is_dir():  # named volumes (migrate/volumes.py)
                os.rename(partial / "tree" / "volumes", partial / "volumes")
            try:  # a layer on an image: its blocks, not its tree
                unpack_members(partial / "tree", partial / MEMBER)
            except ValueError as exc:
                raise MigrationError(f"incoming migration {migration_id}: {exc}", phase="stage") from exc
            remove_tree(partial / "tree")
            remove_tree_quietly(stage)
            os.rename(partial, stage)
        except BaseException:
            remove_tree_quietly(partial)
            self._abort_after_failure(migration_id)
            raise
        entries = sum(1 for _ in walk(stage / "upper"))
        log.info("migration=%s phase=stage upper layer staged: %d entries, %d bytes", migration_id, entries, reader.bytes_read)
        return entries

    def _drop_stage(self, migration_id: str) -> None:
        stage = self._stage_dir(migration_id)
        remove_tree_quietly(stage)
        remove_tree_quietly(stage.with_name(stage.name + ".partial"))

    # -- disk-less dumps: a CRIU page server per migration ------------------------------------
    def _pages_dir(self, migration_id: str) -> Path:
        return self.host.paths.tmp / f"pages-{migration_id}"

    def _start_page_server(self, migration_id: str, address: str, source: str | None = None, *, parent: Path | None = None,
                           relay: bool = False) -> int:
        """Start ``criu page-server`` on ``address``; its port, or 0 to let the source stream.
        Without TLS only ``source`` (the caller's address) may connect to it (runtime.port_guard).
        ``parent``: the images its dump names as parent (pre-copy's last round; CRIU's parent link).
        ``relay``: behind a page relay that takes zstd or raw (page_relay.py; it does the TLS)."""
        from migrate.migration.postcopy import free_port
        from runtime.criu import start_page_server
        from runtime.port_guard import guard_or_warn

        pages = self._pages_dir(migration_id)
        try:
            pages.mkdir(parents=True, mode=0o700)
            if parent is not None:
                os.symlink(parent, pages / "parent")
            if address.startswith("unix:"):  # a page socket in this daemon's run dir: no port, no guard
                from migrate.migration import page_socket
                from migrate.migration.phases import PAGE_SERVER_TIMEOUT_S

                self._page_servers[migration_id] = page_socket.start(pages, address, self.host.paths.run, relay=relay,
                                                                     timeout_s=PAGE_SERVER_TIMEOUT_S)
                return page_socket.PORT
            port = free_port()
            if self.page_server_tls is None and source:
                guard = guard_or_warn(port, [source], label=f"migration={migration_id} page server")
                if guard is not None:
                    self._guards[migration_id] = guard
            if relay:
                from migrate.migration.page_relay import start_relayed_page_server
                from migrate.migration.phases import PAGE_SERVER_TIMEOUT_S

                self._page_servers[migration_id] = start_relayed_page_server(
                    pages, address, port, tls=self.page_server_tls, allowed=source, timeout_s=PAGE_SERVER_TIMEOUT_S)
            else:
                self._page_servers[migration_id] = start_page_server(pages, address, port, tls=self.page_server_tls)
        except (ContainerError, OSError) as exc:  # not fatal: the pages stream with the archive
            log.warning("migration=%s: no page server on %s (%s): the source streams its pages", migration_id, address, exc)
            remove_tree_quietly(pages)
            self._drop_guard(migration_id)
            return 0
        return port

    def _drop_guard(self, migration_id: str) -> None:
        from runtime.port_guard import drop_guard

        drop_guard(self._guards.pop(migration_id, None))

    def _collect_pages(self, migration_id: str, images_dir: Path) -> None:
        """Wait for the page server (it exits once the dump sent everything) and move the pages it
        received beside the other images."""
        server = self._page_servers.pop(migration_id, None)
        if server is None:
            return
        try:
            server.wait(timeout_s=120)
            self._log_relay(migration_id, server)  # its port guard goes after the restore (an nft call: ~15 ms)
        except ContainerError as exc:
            raise TransferError(f"the page server of migration {migration_id} failed: {exc.message}", phase="restore") from exc
        except subprocess.TimeoutExpired:
            server.stop()
            raise TransferError(f"the page server of migration {migration_id} did not finish", phase="restore") from None
        log.debug("migration=%s cold at_ms=%.1f target: page server done", migration_id, time.monotonic() * 1000)
        pages = self._pages_dir(migration_id)
        for p in pages.iterdir():
            if p.is_file() and not (images_dir / p.name).exists():
                os.rename(p, images_dir / p.name)
        link = pages / "parent"  # pre-copy: the pages of the rounds before (an absolute link)
        if link.is_symlink() and not (images_dir / "parent").is_symlink():
            os.symlink(os.readlink(link), images_dir / "parent")
        remove_tree_quietly(pages)

    def _log_relay(self, migration_id: str, server: Any) -> None:
        counters = getattr(server, "counters", None)  # a page relay's (page_relay.TargetRelay)
        if counters is not None:
            log.info("migration=%s page stream %s: %d bytes on the wire for %d", migration_id,
                     "zstd" if server.compressed else "raw", counters.wire_bytes, counters.raw_bytes)

    def _page_server_failure(self, migration_id: str) -> str | None:
        """Why this migration's page server died (its first CRIU error), if it did."""
        server = self._page_servers.get(migration_id)
        if server is None:
            return None
        from migrate.migration.page_relay import TargetRelay

        if isinstance(server, TargetRelay):  # its reason (CRIU then saw only EOF), or its CRIU's
            return server.failure_reason()
        try:
            rc = server.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None
        if rc == 0:
            return None
        return server.error(rc).message

    def _stop_page_server(self, migration_id: str) -> None:
        server = self._page_servers.pop(migration_id, None)
        if server is not None:
            server.stop()
        self._drop_guard(migration_id)
        remove_tree_quietly(self._pages_dir(migration_id))

    # -- pre-copy: a page server per pre-dump round (migrate/migration/precopy_target.py) -----------------
    def _precopy_rounds(self) -> Any:
        if self._precopy is None:
            from migrate.migration.precopy_target import PrecopyRounds

            self._precopy = PrecopyRounds(self.host.paths.tmp, tls=self.page_server_tls)
        return self._precopy

    def start_precopy_round(self, migration_id: str, round_no: int, *, final: bool = False, source_address: str | None = None) -> int:
        """The page server of pre-dump round ``round_no`` (``final``: of the frozen dump, chained to
        the last round and collected by the restore); returns its port."""
        record = self._load(migration_id)
        if record["phase"] != "prepared" or record.get("mode") != "precopy":
            raise MigrationError(f"incoming migration {migration_id} is a {record.get('mode')} migration in phase "
                                 f"{record['phase']}, expected a prepared precopy one", phase="precopy")
        address = record.get("page_server_address")
        if not address:
            raise MigrationError(f"incoming migration {migration_id} has no page-server address", phase="precopy")
        source = source_address or record.get("source_address")
        self._activity[migration_id] = time.monotonic()
        rounds = self._precopy_rounds()
        try:
            if not final:
                return int(rounds.start(migration_id, round_no, address, source))
            last = rounds.finish(migration_id, round_no)
            port = self._start_page_server(migration_id, address, source, parent=last.resolve())
            if not port:
                raise TransferError(f"cannot start the final page server of migration {migration_id} on {address}", phase="precopy")
            return port
        finally:
            self._activity[migration_id] = time.monotonic()

    def receive_image(self, migration_id: str, chunks: Iterator[bytes]) -> None:
        record = self._load(migration_id)
        failpoints.hit("target.image")
        reader = IteratorReader(self._touching(migration_id, chunks))
        try:
            if record.get("image_layered"):
                self._receive_layered_image(migration_id, record, reader)
            else:
                self.host.images.import_stream(record["image"], reader, expected_digest=record["image_digest"])
        except BaseException:
            self._abort_after_failure(migration_id)
            raise
        log.info("migration=%s phase=image received %s (%d bytes)", migration_id, record["image_digest"][:19], reader.bytes_read)

    def _receive_layered_image(self, migration_id: str, record: dict[str, Any], reader: Any) -> None:
        """The source's OCI archive (the blobs of the layers this host lacks, the config, the
        manifest): unpacked by the safe extractor into scratch, then loaded by the same verifying
        loader as ``image load`` (every blob re-hashed, the left-out ones found in this host's
        store), and tagged only if the result has the announced digest."""
        from runtime import tarsafe

        work = self.host.paths.tmp / f"image-{migration_id}"
        remove_tree_quietly(work)
        work.mkdir(mode=0o700, parents=True)
        try:
            tarsafe.extract(reader, work, source=f"migration {migration_id} image")
            self.host.images.load_archive(work, name=record["image"], expected_digest=record["image_digest"],
                                          fallback_blobs=True)
        finally:
            remove_tree_quietly(work)

    def receive_checkpoint(self, migration_id: str, chunks: Iterator[bytes], progress: Any = None) -> RestoreResult:
        record = self._load(migration_id)
        if record["phase"] != "prepared":
            raise MigrationError(f"incoming migration {migration_id} is {record['phase']}, expected prepared", phase="restore")
        reader = IteratorReader(self._touching(migration_id, chunks))
        staged = self.staged_upper(migration_id)
        try:
            if record.get("mode") == "postcopy":  # lazy pages from the source's page server
                from migrate.migration.postcopy import receive_postcopy

                result = receive_postcopy(self.host, self.criu, migration_id, record, reader, progress, tls=self.page_server_tls,
                                          staged_upper=staged, before_restore=lambda: self._before_restore(migration_id, None),
                                          on_complete=lambda: self._pages_complete(migration_id))
            elif record.get("lazy_restore"):  # cold: resumes before the pages (all here already) are in memory
                from migrate.migration.cold_lazy import receive_cold_lazy

                result = receive_cold_lazy(self.host, self.criu, migration_id, record, reader, progress, staged_upper=staged,
                                           before_restore=lambda images_dir: self._before_restore(migration_id, images_dir))
            else:
                result = restore_container(
                    self.host,
                    RestoreOptions(name=record["name"], ip=record.get("ip"), ports=recorded_ports(record.get("spec"))),
                    criu=self.criu,
                    progress=progress,
                    source=reader,
                    before_restore=lambda images_dir: self._before_restore(migration_id, images_dir),
                    staged_upper=staged,
                    staged_volumes=self._stage_dir(migration_id) / "volumes",
                    migration_id=migration_id,
                )
        except BaseException as exc:
            # The restore removed what it built. The source never pushes twice, so the reservation
            # is of no use any more: drop it now rather than wait for an abort that a cut link or
            # a dead source may never deliver.
            reason = self._page_server_failure(migration_id)
            self._abort_after_failure(migration_id)
            if reason:  # e.g. ENOSPC here: the source only saw its socket break
                raise TransferError(f"the page server on this host failed: {reason}", phase="dump") from exc
            raise
        received_at = time.monotonic()
        with self._locked():
            aborted = not self._path(migration_id).exists()
            if not aborted:
                # the point of no return: from here on this copy is the one (the source's waits)
                record["phase"] = "restored"
                record["restored_at"] = time.time()
                record["lease_until"] = record["restored_at"] + LEASE_S
                self._save(record)
        if aborted:  # the source gave up (or settled) while we were restoring
            self._remove_container(migration_id, record["container_id"])
            raise MigrationError(f"incoming migration {migration_id} was aborted during its restore", phase="restore")
        self._resumed_events(migration_id, record, result)
        failpoints.hit("target.answer")
        self._drop_guard(migration_id)  # the page server is gone: its port guard, off the pause
        from migrate.migration.cold_lazy import answered

        return answered(result, received_at)

    def _resumed_events(self, migration_id: str, record: dict[str, Any], result: RestoreResult) -> None:
        """The journal here (runtime/events.py): its migration resumed (the container's restore and
        start: its shim's events, runtime/shim.py)."""
        from runtime.events import emit

        spec, root = result.container.spec, self.host.paths.root
        emit(root, "migration", "resumed", migration_id, spec.name,
             {"container_id": spec.container_id, "mode": str(record.get("mode") or "cold"), "role": "target",
              **getattr(spec, "labels", {})})

    def _before_restore(self, migration_id: str, images_dir: Path | None) -> None:
        if images_dir is not None:  # cold and pre-copy: the pages a page server received
            self._collect_pages(migration_id, images_dir)
        self.mark_restoring(migration_id)
        failpoints.hit("target.restore")

    def _pages_complete(self, migration_id: str) -> None:
        """Post-copy: every page arrived; a settlement after a restart may commit this copy."""
        with self._locked():
            record = self._load_or_none(migration_id)
            if record is not None:
                record["pages_complete"] = True
                self._save(record)

    def mark_restoring(self, migration_id: str) -> None:
        """The archive is complete: the restore starts, unless a settlement aborted it already."""
        with self._locked():
            record = self._load_or_none(migration_id)
            if record is None or record["phase"] != "prepared":
                raise MigrationError(f"incoming migration {migration_id} was aborted before its restore", phase="restore")
            record["phase"] = "restoring"
            self._save(record)

    def _abort_after_failure(self, migration_id: str) -> None:
        try:
            self.abort(migration_id)
        except (ContainerError, MigrationError, OSError) as exc:  # the original error matters more
            log.warning("migration=%s: abort after a failed receive failed: %s", migration_id, exc)

    def _remove_container(self, migration_id: str, container_id: str) -> None:
        try:
            self.host.rt.remove(container_id, force=True)
        except ContainerError as exc:
            log.warning("migration=%s: removing the restored container failed: %s", migration_id, exc)

    def abort(self, migration_id: str, *, outcome: str = "aborted") -> None:
        """Remove every piece of an unfinished migration, and record ``outcome``. Idempotent."""
        from migrate.migration.postcopy import stop_session

        stop_session(migration_id)  # post-copy: the lazy-pages daemon goes first
        self._stop_page_server(migration_id)
        self._precopy_rounds().drop(migration_id)  # pre-copy: every round's pages
        self._drop_stage(migration_id)
        with self._locked():
            path = self._path(migration_id)
            try:
                record = json.loads(path.read_text())
            except FileNotFoundError:
                return
            cid = record["container_id"]
            try:
                status: str | None = self.host.rt.container(cid).status
            except ContainerError:
                status = None
            # "restored", or "prepared" with a container of that id that is not the exited original
            # prepare() saw (a restore a crashed daemon left half done, or one still in progress)
            if record["phase"] == "restored" or status not in (None, "exited"):
                self._remove_container(migration_id, cid)
            try:
                exists = True
                self.host.rt.container(cid)
            except ContainerError:
                exists = False
            if not exists and record.get("ip"):
                self.host.rt.network(record.get("network", "bridge")).release(cid)
            if not exists and _has_named_volumes(record):  # what its restore adopted (migrate/volumes.py)
                from migrate.volumes import uninstall

                uninstall(self.host.volumes, self.host.volumes.adopted_by(migration_id))
            self._record_outcome(migration_id, outcome, cid)
            path.unlink(missing_ok=True)
        log.info("migration=%s aborted on the target", migration_id)

    def commit(self, migration_id: str) -> None:
        """Make a restored migration permanent. Idempotent: committing a committed one is a no-op."""
        from migrate.migration.postcopy import finish_session

        finish_session(migration_id)  # post-copy: every page arrived, else ContainerLost
        with self._locked():
            path = self._path(migration_id)
            if not path.exists():
                if self.outcome(migration_id) == "committed":
                    return
                raise MigrationError(f"no incoming migration {migration_id} to commit", phase="commit")
            record = json.loads(path.read_text())
            if record["phase"] != "restored":
                raise MigrationError(f"incoming migration {migration_id} is {record['phase']}, expected restored", phase="commit")
            self._record_outcome(migration_id, "committed", record["container_id"])
            path.unlink()
        self._drop_stage(migration_id)
        self._precopy_rounds().drop(migration_id)  # pre-copy: the restored container holds every page now
        log.info("migration=%s committed", migration_id)

    # -- settlement ----------------------------------------------------------------------------
    def _outcome_path(self, migration_id: str) -> Path:
        return self.settled_dir / self._path(migration_id).name

    def _record_outcome(self, migration_id: str, outcome: str, container_id: str) -> None:
        """Remember how a migration ended (called under the lock, before its record goes)."""
        self.settled_dir.mkdir(parents=True, exist_ok=True)
        path = self._outcome_path(migration_id)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"migration_id": migration_id, "outcome": outcome, "container_id": container_id, "at": time.time()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def outcome(self, migration_id: str) -> str | None:
        """How migration ``migration_id`` ended here, if it did (within SETTLED_KEEP_S)."""
        try:
            return str(json.loads(self._outcome_path(migration_id).read_text())["outcome"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def settle(self, migration_id: str, container_id: str = "") -> Settlement:
        """The source asks what became of ``migration_id``; the answer is final (module doc).

        A restored migration is committed, a prepared one aborted; an ended one answers with its
        recorded outcome; one this host never heard of (or forgot) answers "unknown", saying
        whether a container of ``container_id`` runs here."""
        record = self._load_or_none(migration_id)
        if record is None:
            known = self.outcome(migration_id)
            running = self._running(container_id)
            return Settlement(migration_id, known if known in ("committed", "aborted", "lost") else "unknown", running)  # type: ignore[arg-type]
        cid = record["container_id"]
        if record["phase"] == "restoring":
            return Settlement(migration_id, "pending", False)
        if record["phase"] != "restored":
            log.warning("migration=%s: settled before its restore finished: aborting it here (the source keeps its copy)", migration_id)
            self.abort(migration_id)
            return Settlement(migration_id, "aborted", self._running(cid))
        if record.get("mode") == "postcopy" and not record.get("pages_complete") and not _has_session(migration_id):
            # post-copy restored before a restart of this daemon, its lazy-pages daemon gone with it
            # before the last page: the copy here may be missing memory, the source's frozen one is whole
            log.error("migration=%s: post-copy pages incomplete when this daemon restarted: removing the copy here", migration_id)
            self.abort(migration_id, outcome="lost")
            return Settlement(migration_id, "lost", False)
        try:
            self.commit(migration_id)
        except ContainerLost as exc:  # post-copy: the copy here missed pages
            log.error("migration=%s: %s: removing the copy here", migration_id, exc.message)
            self.abort(migration_id, outcome="lost")
            return Settlement(migration_id, "lost", False)
        log.info("migration=%s settled: committed here", migration_id)
        return Settlement(migration_id, "committed", self._running(cid))

    def _load_or_none(self, migration_id: str) -> dict[str, Any] | None:
        try:
            return self._load(migration_id)
        except MigrationError:
            return None

    def _running(self, container_id: str) -> bool:
        if not container_id:
            return False
        try:
            return bool(self.host.rt.container(container_id).status == "running")
        except ContainerError:
            return False

    def _check_lease(self, record: dict[str, Any]) -> None:
        """A restored migration the source has not settled within its lease: ask the source."""
        mid = record["migration_id"]
        now = time.time()
        if now < float(record.get("lease_until") or (record.get("restored_at") or now) + LEASE_S):
            return
        answer = self._ask_source(record)
        if answer is not None and (answer.outcome == "committed" or (answer.outcome == "unknown" and not answer.container_running)):
            log.warning("migration=%s: lease expired; the source %s (%s): committing the copy here", mid,
                        "committed" if answer.outcome == "committed" else "has neither a record nor a running copy",
                        record.get("source_daemon"))
            self._settle_here(mid, "commit")
        elif answer is not None and answer.outcome in ("aborted", "lost", "unknown"):
            log.error("migration=%s: lease expired; the source %s says %s (its copy running: %s): removing the copy here",
                      mid, record.get("source_daemon"), answer.outcome, answer.container_running)
            self._settle_here(mid, "abort")
        else:
            why = "still settling it" if answer is not None else "cannot be asked"
            log.warning("migration=%s: lease expired; the source %s %s: the restored copy keeps running here "
                        "(the source does not thaw without this host's answer)", mid, record.get("source_daemon") or "(no address)", why)
            with self._locked():
                current = self._load_or_none(mid)
                if current is not None and current.get("phase") == "restored":
                    current["lease_until"] = time.time() + LEASE_S
                    self._save(current)

    def _settle_here(self, migration_id: str, how: str) -> None:
        try:
            if how == "commit":
                self.settle(migration_id)
            else:
                self.abort(migration_id)
        except (ContainerError, MigrationError, OSError) as exc:
            log.warning("migration=%s: settling after the lease failed: %s", migration_id, exc)

    def _ask_source(self, record: dict[str, Any]) -> Settlement | None:
        address = record.get("source_daemon")
        if not address or self.connect is None:
            return None
        source = None
        try:
            source = self.connect(address)
            if hasattr(source, "timeout_s"):
                source.timeout_s = min(source.timeout_s, SOURCE_TIMEOUT_S)
            return source.settle_migration(record["migration_id"], record["container_id"], ask_source=True)  # type: ignore[no-any-return]
        except Exception as exc:  # noqa: BLE001 - an unreachable source is the case this handles
            log.warning("migration=%s: cannot ask the source %s: %s", record["migration_id"], address, exc)
            return None
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def _prune_outcomes(self, keep_s: float = SETTLED_KEEP_S) -> None:
        if not self.settled_dir.is_dir():
            return
        cutoff = time.time() - keep_s
        for p in self.settled_dir.iterdir():
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
            except OSError:
                continue

    def _touching(self, migration_id: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        self._activity[migration_id] = time.monotonic()
        for chunk in chunks:
            self._activity[migration_id] = time.monotonic()
            yield chunk

    def sweep(self, stale_s: float = STALE_S) -> list[str]:
        """Abort prepared migrations that made no progress for ``stale_s``: no byte on the gRPC
        stream and no growth of the page-server dir. A source that died or lost its link cannot
        send the abort itself, and a half-open TCP connection may never tell us. Returns the ids
        aborted. Run periodically by the daemon."""
        now = time.monotonic()
        aborted = []
        for record in self.records():
            mid = record.get("migration_id", "")
            if record.get("phase") == "restored" and mid:
                self._check_lease(record)
                continue
            if record.get("phase") != "prepared" or not mid:
                continue
            last = self._activity.setdefault(mid, now)
            size = _tree_size(self._pages_dir(mid)) + (self._precopy.size_bytes(mid) if self._precopy is not None else 0)
            if size != self._pages_seen.get(mid):
                self._pages_seen[mid] = size
                last = self._activity[mid] = now
            if now - last > stale_s:
                log.warning("migration=%s: no progress for %.0fs, aborting it on this host", mid, now - last)
                try:
                    self.abort(mid)
                    aborted.append(mid)
                except (ContainerError, MigrationError, OSError) as exc:
                    log.warning("migration=%s: abort of a stale migration failed: %s", mid, exc)
        for mid in set(self._activity) - {r.get("migration_id") for r in self.records()}:
            self._activity.pop(mid, None)
            self._pages_seen.pop(mid, None)
        self._prune_outcomes()
        return aborted

    def reconcile(self) -> None:
        """After a crash: abort migrations that never got restored; remove stale scratch dirs."""
        for record in self.records():
            if record.get("phase") in ("prepared", "restoring"):
                log.warning("migration=%s was left unfinished by a restart: aborting it", record.get("migration_id"))
                try:
                    self.abort(record["migration_id"])
                except (ContainerError, MigrationError, OSError) as exc:
                    log.warning("migration=%s: abort failed: %s", record.get("migration_id"), exc)
        # no grace, as before (these take no lock); a mount a dead process left in one is
        # detached first, never removed through (runtime/scratch.py)
        sweep(self.host.paths.tmp, _SCRATCH_PREFIXES, grace_s=0)
