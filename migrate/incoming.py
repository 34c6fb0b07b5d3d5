"""The receiving side of a migration (what a target daemon does for a source).

One incoming migration is a small record, ROOT/run/incoming/<migration_id>.json, written
atomically under a lock, with a ``phase``:

    prepared   pre-flight passed; the container's name and address are reserved (the address is
               leased to the container id, so ``run`` cannot take it meanwhile)
    restored   the container runs here; the source has not committed yet
    (deleted)  committed, or aborted (abort also removes a restored container and the lease)

Partial data never lands outside ROOT/tmp: the archive is unpacked (and every checksum verified)
in a scratch dir that the restore removes whatever happens. A live migration stages the upper
layer first (``receive_upper``, while the container still runs on the source) in
ROOT/tmp/stage-<migration_id>; the checkpoint archive then carries only the upper layer's changes
since (migrate.upper_sync), merged into the staged copy before the restore. ``reconcile`` (run when a daemon
starts) aborts migrations left ``prepared`` by a crash and removes stale scratch dirs; a
``restored`` one is kept for the source to commit or abort (the source decides, it knows whether
it still runs its frozen copy).
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
from typing import Any, Iterator

from migrate.api import IncomingRequest, IncomingTicket, RestoreOptions, RestoreResult
from migrate.errors import TransferError, IncompatibleHost, MigrationError
from migrate.restore import _version_tuple, restore_container
from migrate.transfer import IteratorReader
from runtime.errors import ContainerError, ContainerExists, InvalidArgument
from runtime.fstree import remove_tree, remove_tree_quietly
from runtime.spec import ContainerSpec

log = logging.getLogger(__name__)

STALE_S = 30.0  # a prepared migration with no progress on any channel for this long is aborted


def _tree_size(path: Path) -> int:
    try:
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    except OSError:
        return 0

_SCRATCH_PREFIXES = ("import-", "restore-", "migrate-", "ckpt-", "image-", "pages-", "replaced-", "stage-", "precopy-")


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


class IncomingMigrations:
    def __init__(self, host: Any, criu: Any, *, page_servers: bool = True, page_server_tls: Any = None) -> None:
        self.host = host
        self.criu = criu
        # Disk-less dumps: a CRIU page server per migration receives the source's memory pages.
        # ``page_server_tls`` (runtime.criu.CriuTls, from the daemon's own mTLS material): CRIU's
        # page-server connections (this page server, post-copy's lazy-pages daemon) use TLS and
        # accept only a peer whose certificate chains to the daemon's CA.
        self.page_servers_allowed = page_servers
        self.page_server_tls = page_server_tls
        self._page_servers: dict[str, Any] = {}
        self._guards: dict[str, Any] = {}  # runtime.port_guard guards of plain page servers
        # Progress of prepared migrations (monotonic time of the last byte on either channel, and
        # the page-server dir's size at the last sweep): see sweep().
        self._activity: dict[str, float] = {}
        self._pages_seen: dict[str, int] = {}
        self.dir = host.paths.run / "incoming"
        self._precopy: Any = None  # migrate.precopy_target.PrecopyRounds, made on first use

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
        if request.mode == "postcopy":  # issue 7: this host must restore with lazy pages
            from migrate.postcopy import check_incoming

            check_incoming(request)
        if request.mode == "precopy":  # this host's page servers must take pre-dump rounds
            from migrate.precopy import check_incoming as check_precopy

            check_precopy(request, page_servers=self.page_servers_allowed)
        here = self.criu.version()
        if request.criu_version and _version_tuple(here) < _version_tuple(request.criu_version):
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
            need_image = not self.host.images.has_digest(request.image_digest)
            self._save({
                "migration_id": migration_id,
                "phase": "prepared",
                "name": spec.name,
                "container_id": spec.container_id,
                "ip": spec.ip,
                "network": spec.network,
                "image": spec.image,
                "image_digest": request.image_digest,
                "mode": request.mode,
                "spec": spec.to_dict(),  # a post-copy restore builds the container while its images arrive
                "created_at": time.time(),
                # pre-copy: where each round's page server listens, and the only peer it lets in
                "page_server_address": request.page_server_address,
                "source_address": request.source_address,
            })
        port = 0
        if request.page_server_address and request.mode == "cold" and self.page_servers_allowed:
            port = self._start_page_server(migration_id, request.page_server_address, request.source_address)
        log.info("migration=%s phase=preflight container=%s reserved need_image=%s page_server_port=%d",
                 migration_id, spec.name, need_image, port)
        return IncomingTicket(migration_id=migration_id, need_image=need_image, page_server_port=port, stage_upper=True)

    # -- the upper layer, staged before the freeze --------------------------------------------
    def _stage_dir(self, migration_id: str) -> Path:
        return self.host.paths.tmp / f"stage-{migration_id}"

    def staged_upper(self, migration_id: str) -> Path | None:
        """The upper layer ``receive_upper`` staged for this migration, if any."""
        path = self._stage_dir(migration_id) / "upper"
        return path if path.is_dir() else None

    def receive_upper(self, migration_id: str, chunks: Iterator[bytes]) -> int:
        """Stage the container's upper layer, sent while it still runs (verified like any archive;
        device nodes by the same policy as a checkpoint's). Returns the number of entries."""
        from migrate.images import read_archive
        from migrate.store import UPPER_STAGE_KIND, devices_allowed
        from migrate._archive_fs import walk

        record = self._load(migration_id)
        if record["phase"] != "prepared":
            raise MigrationError(f"incoming migration {migration_id} is {record['phase']}, expected prepared", phase="stage")
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

    def _start_page_server(self, migration_id: str, address: str, source: str | None = None, *, parent: Path | None = None) -> int:
        """Start ``criu page-server`` on ``address``; its port, or 0 to let the source stream.
        Without TLS only ``source`` (the caller's address) may connect to it (runtime.port_guard).
        ``parent``: the images its dump names as parent (pre-copy's last round; CRIU's parent link)."""
        from migrate.postcopy import free_port
        from runtime.criu import start_page_server
        from runtime.port_guard import guard_or_warn

        pages = self._pages_dir(migration_id)
        try:
            pages.mkdir(parents=True, mode=0o700)
            if parent is not None:
                os.symlink(parent, pages / "parent")
            port = free_port()
            if self.page_server_tls is None and source:
                guard = guard_or_warn(port, [source], label=f"migration={migration_id} page server")
                if guard is not None:
                    self._guards[migration_id] = guard
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
            self._drop_guard(migration_id)
        except ContainerError as exc:
            raise TransferError(f"the page server of migration {migration_id} failed: {exc.message}", phase="restore") from exc
        except subprocess.TimeoutExpired:
            server.stop()
            raise TransferError(f"the page server of migration {migration_id} did not finish", phase="restore") from None
        pages = self._pages_dir(migration_id)
        for p in pages.iterdir():
            if p.is_file() and not (images_dir / p.name).exists():
                os.rename(p, images_dir / p.name)
        link = pages / "parent"  # pre-copy: the pages of the rounds before (an absolute link)
        if link.is_symlink() and not (images_dir / "parent").is_symlink():
            os.symlink(os.readlink(link), images_dir / "parent")
        remove_tree_quietly(pages)

    def _page_server_failure(self, migration_id: str) -> str | None:
        """Why this migration's page server died (its first CRIU error), if it did."""
        server = self._page_servers.get(migration_id)
        if server is None:
            return None
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

    # -- pre-copy: a page server per pre-dump round (migrate/precopy_target.py) -----------------
    def _precopy_rounds(self) -> Any:
        if self._precopy is None:
            from migrate.precopy_target import PrecopyRounds

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
        reader = IteratorReader(self._touching(migration_id, chunks))
        try:
            self.host.images.import_stream(record["image"], reader, expected_digest=record["image_digest"])
        except BaseException:
            self._abort_after_failure(migration_id)
            raise
        log.info("migration=%s phase=image received %s (%d bytes)", migration_id, record["image_digest"][:19], reader.bytes_read)

    def receive_checkpoint(self, migration_id: str, chunks: Iterator[bytes], progress: Any = None) -> RestoreResult:
        record = self._load(migration_id)
        if record["phase"] != "prepared":
            raise MigrationError(f"incoming migration {migration_id} is {record['phase']}, expected prepared", phase="restore")
        reader = IteratorReader(self._touching(migration_id, chunks))
        staged = self.staged_upper(migration_id)
        try:
            if record.get("mode") == "postcopy":  # issue 7: lazy pages from the source's page server
                from migrate.postcopy import receive_postcopy

                result = receive_postcopy(self.host, self.criu, migration_id, record, reader, progress, tls=self.page_server_tls,
                                          staged_upper=staged)
            else:
                result = restore_container(
                    self.host,
                    RestoreOptions(name=record["name"], ip=record.get("ip")),
                    criu=self.criu,
                    progress=progress,
                    source=reader,
                    before_restore=lambda images_dir: self._collect_pages(migration_id, images_dir),
                    staged_upper=staged,
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
        with self._locked():
            aborted = not self._path(migration_id).exists()
            if not aborted:
                record["phase"] = "restored"
                record["restored_at"] = time.time()
                self._save(record)
        if aborted:  # the source gave up while we were restoring
            self._remove_container(migration_id, record["container_id"])
            raise MigrationError(f"incoming migration {migration_id} was aborted during its restore", phase="restore")
        return result

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

    def abort(self, migration_id: str) -> None:
        """Remove every piece of an unfinished migration. Idempotent."""
        from migrate.postcopy import stop_session

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
            path.unlink(missing_ok=True)
        log.info("migration=%s aborted on the target", migration_id)

    def commit(self, migration_id: str) -> None:
        from migrate.postcopy import finish_session

        finish_session(migration_id)  # post-copy: every page arrived, else ContainerLost
        with self._locked():
            path = self._path(migration_id)
            if not path.exists():
                raise MigrationError(f"no incoming migration {migration_id} to commit", phase="commit")
            record = json.loads(path.read_text())
            if record["phase"] != "restored":
                raise MigrationError(f"incoming migration {migration_id} is {record['phase']}, expected restored", phase="commit")
            path.unlink()
        self._drop_stage(migration_id)
        self._precopy_rounds().drop(migration_id)  # pre-copy: the restored container holds every page now
        log.info("migration=%s committed", migration_id)

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
        return aborted

    def reconcile(self) -> None:
        """After a crash: abort migrations that never got restored; remove stale scratch dirs."""
        for record in self.records():
            if record.get("phase") == "prepared":
                log.warning("migration=%s was left unfinished by a restart: aborting it", record.get("migration_id"))
                try:
                    self.abort(record["migration_id"])
                except (ContainerError, MigrationError, OSError) as exc:
                    log.warning("migration=%s: abort failed: %s", record.get("migration_id"), exc)
        tmp = self.host.paths.tmp
        if tmp.is_dir():
            for p in tmp.iterdir():
                if p.name.startswith(_SCRATCH_PREFIXES):
                    remove_tree_quietly(p)
