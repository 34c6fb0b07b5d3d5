"""Named volumes: directories the runtime owns, by name, that outlive containers and move with them.

Layout (docker's ``local`` driver)::

    ROOT/volumes/<name>/_data          what containers see at the mount point
    ROOT/volumes/<name>/volume.json    {"name", "driver": "local", "created_at", "labels"}
    ROOT/volumes/.new-* / .rm-*        a volume being made or removed (renamed into or out of place,
                                       so a name is there whole or not at all)

A volume name is ``[a-zA-Z0-9][a-zA-Z0-9_.-]*`` (at most 128 characters) and never a path: it is
joined below ROOT/volumes only after that check, so a peer's or a manifest's name cannot point
anywhere else. A container's spec keeps the name (``Volume.name``) and the data directory it was
resolved to on this host (``Volume.source``); a restore or migration on another root resolves the
name again there (``resolve``).

Removal follows docker: a volume any container record uses (running or stopped) is refused, and
``-f`` only makes a missing name no error.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from runtime.config import Paths
from runtime.errors import Busy, ContainerExists, InvalidArgument, VolumeInUse, VolumeNotFound
from runtime.spec import Volume

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
DATA_DIR = "_data"
RECORD_FILE = "volume.json"
DRIVER = "local"
_LOCK_FILE = ".lock"

# container names that use a volume (any state): what ``remove`` and ``prune`` must not take away
UsersFn = Callable[[str], list[str]]
# runtime.state.StateStore.hold(resource, operation): a context manager, Busy when held elsewhere
HoldFn = Callable[[str, str], ContextManager[None]]


class VolumeConflict(ContainerExists):
    """A checkpoint's or a migration's volume would replace a volume here that holds data or is in use."""


@dataclass(frozen=True)
class VolumeRecord:
    """One named volume as ``volume ls`` / ``inspect`` show it."""

    name: str
    mountpoint: str  # the host directory containers see (ROOT/volumes/<name>/_data)
    created_at: float  # unix time, seconds
    driver: str = DRIVER
    labels: dict[str, str] = field(default_factory=dict)
    used_by: tuple[str, ...] = ()  # container names using it now


@dataclass(frozen=True)
class VolumePruneResult:
    removed: tuple[str, ...] = ()
    bytes_freed: int = 0


def validate_volume_name(name: object) -> str:
    """A volume name, never a path.

    Raises:
        InvalidArgument: anything but ``[a-zA-Z0-9][a-zA-Z0-9_.-]*`` up to 128 characters.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidArgument(f"invalid volume name {str(name)[:80]!r}: expected [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128 characters",
                              hint="a host directory needs an absolute path (/srv/data:/data)")
    return name


def parse_labels(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key or "\0" in item:
            raise InvalidArgument(f"invalid volume label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


class VolumeStore:
    """Named volumes under one state root; ``users`` says which containers use a volume."""

    def __init__(self, paths: Paths, users: UsersFn, hold: HoldFn | None = None) -> None:
        self.root = paths.root / "volumes"
        self._users = users
        # runtime.state.StateStore.hold: a restore holds "volume:<name>" from installing a volume
        # until its container record exists, so remove and prune see it in use meanwhile
        self._hold = hold

    def _in_use(self, name: str) -> list[str]:
        users = self._users(name)
        if users or self._hold is None:
            return users
        try:
            with self._hold(f"volume:{name}", "remove volume"):
                return []
        except Busy:
            return ["(a restore installing it)"]

    # -- paths ---------------------------------------------------------------------------------
    def dir(self, name: str) -> Path:
        return self.root / validate_volume_name(name)

    def data_dir(self, name: str) -> Path:
        return self.dir(name) / DATA_DIR

    def exists(self, name: str) -> bool:
        return (self.dir(name) / RECORD_FILE).is_file()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive over this root's volumes: a create, a remove, a prune."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- operations ----------------------------------------------------------------------------
    def create(self, name: str | None = None, labels: dict[str, str] | None = None) -> tuple[VolumeRecord, bool]:
        """The volume ``name`` (a random one when None), made if missing as docker does; the
        record and whether it was made now.

        Raises:
            InvalidArgument: a bad name or label.
        """
        name = validate_volume_name(name if name is not None else secrets.token_hex(32))
        with self.lock():
            if self.exists(name):
                return self.get(name), False
            self._make(name, labels or {})
        log.info("volume=%s created", name)
        return self.get(name), True

    def _make(self, name: str, labels: dict[str, str], extra: dict[str, str] | None = None) -> None:
        # built aside and renamed into place: a crash leaves a .new-* dir (swept by prune), never a
        # half-made volume under its name
        staging = self.root / f".new-{secrets.token_hex(8)}"
        (staging / DATA_DIR).mkdir(parents=True)
        os.chmod(staging, 0o701)
        os.chmod(staging / DATA_DIR, 0o755)
        record = {"name": name, "driver": DRIVER, "created_at": time.time(), "labels": dict(labels), **(extra or {})}
        (staging / RECORD_FILE).write_text(json.dumps(record, sort_keys=True))
        try:
            os.rename(staging, self.root / name)
        except OSError:
            _remove(staging)
            raise

    def get(self, name: str) -> VolumeRecord:
        """Raises: VolumeNotFound."""
        path = self.dir(name)
        try:
            data = json.loads((path / RECORD_FILE).read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise VolumeNotFound(name) from None
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"volume {name} has an unreadable record: {exc}") from exc
        labels = data.get("labels") if isinstance(data.get("labels"), dict) else {}
        return VolumeRecord(name=name, mountpoint=str(path / DATA_DIR), created_at=float(data.get("created_at", 0.0)),
                            driver=str(data.get("driver", DRIVER)), labels={str(k): str(v) for k, v in labels.items()},
                            used_by=tuple(self._users(name)))

    def list(self) -> list[VolumeRecord]:
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if NAME_RE.fullmatch(name) and self.exists(name):
                with contextlib.suppress(VolumeNotFound):
                    out.append(self.get(name))
        return out

    def remove(self, name: str, force: bool = False) -> bool:
        """Remove the volume and its data; False when it did not exist and ``force`` was given.

        Raises:
            VolumeNotFound: no such volume (not with ``force``, docker's ``volume rm -f``).
            VolumeInUse: a container (running or stopped) uses it; remove the container first.
        """
        with self.lock():
            if not self.exists(name):
                if force:
                    return False
                raise VolumeNotFound(name)
            users = self._in_use(name)
            if users:
                raise VolumeInUse(name, tuple(users))
            self._delete(name)
        log.info("volume=%s removed", name)
        return True

    def prune(self) -> VolumePruneResult:
        """Every volume no container uses, and leftovers of killed creates and removes."""
        removed: list[str] = []
        freed = 0
        with self.lock():
            for entry in list(os.scandir(self.root)) if self.root.is_dir() else []:
                if entry.name.startswith((".new-", ".rm-")):
                    _remove(Path(entry.path))
            for record in self.list():
                if record.used_by or self._in_use(record.name):
                    continue
                freed += tree_bytes(Path(record.mountpoint))
                self._delete(record.name)
                removed.append(record.name)
        return VolumePruneResult(removed=tuple(removed), bytes_freed=freed)

    def adopt(self, name: str, tree: Path, *, migration_id: str = "") -> str:
        """Make ``tree`` (on this root's file system: a restore's scratch) volume ``name``'s data:
        a new volume ("made"), or an existing one that is empty and unused ("filled"). Returns
        which, for ``unadopt``. ``migration_id`` is kept in the record, so a migration's abort
        finds what it brought (``adopted_by``).

        Raises:
            VolumeConflict: a volume of that name exists with content or is in use.
        """
        with self.lock():
            if not self.exists(name):
                self._make(name, {}, extra={"migration_id": migration_id, "adopted": "made"})
                how = "made"
            else:
                self._check_empty(name)
                self._write_record(name, migration_id=migration_id, adopted="filled")
                how = "filled"
            data = self.data_dir(name)
            doomed = self.root / f".rm-{secrets.token_hex(8)}"
            os.rename(data, doomed)
            os.rename(tree, data)
            _remove(doomed)
        log.info("volume=%s %s from a checkpoint%s", name, how, f" (migration {migration_id})" if migration_id else "")
        return how

    def check_adoptable(self, name: str) -> None:
        """Raises VolumeConflict unless ``adopt`` could take ``name`` now (a target's pre-flight)."""
        if self.exists(name):
            self._check_empty(name)

    def _check_empty(self, name: str) -> None:
        users = self._users(name)
        if users or os.listdir(self.data_dir(name)):
            what = f"is in use by container {', '.join(users)}" if users else "exists with content"
            raise VolumeConflict(f"volume {name} {what} on this host: the checkpoint's volume {name} cannot replace it",
                                 hint=f"remove it first (pymigrate volume rm {name}) or restore where no volume {name} holds data")

    def unadopt(self, name: str, how: str) -> None:
        """Undo ``adopt``: a made volume goes, a filled one is empty again (a failed restore)."""
        with self.lock():
            if not self.exists(name) or self._users(name):
                return
            if how == "made":
                self._delete(name)
                return
            data = self.data_dir(name)
            doomed = self.root / f".rm-{secrets.token_hex(8)}"
            os.rename(data, doomed)
            data.mkdir(mode=0o755)
            self._write_record(name, migration_id="", adopted="")
            _remove(doomed)

    def adopted_by(self, migration_id: str) -> "builtins.list[tuple[str, str]]":
        """(name, how) of the volumes ``adopt`` took for ``migration_id``."""
        out = []
        for record in self.list():
            data = self._raw(record.name)
            if migration_id and data.get("migration_id") == migration_id:
                out.append((record.name, str(data.get("adopted", "made"))))
        return out

    def _raw(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self.dir(name) / RECORD_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_record(self, name: str, **extra: str) -> None:
        from runtime.state import atomic_write

        data = self._raw(name)
        data.update(extra)
        atomic_write(self.dir(name) / RECORD_FILE, json.dumps(data, sort_keys=True).encode(), mode=0o644)

    def _delete(self, name: str) -> None:
        # out of its name first: a crash mid-removal leaves a .rm-* dir, not a half-empty volume
        doomed = self.root / f".rm-{secrets.token_hex(8)}"
        os.rename(self.dir(name), doomed)
        _remove(doomed)

    # -- containers' specs ---------------------------------------------------------------------
    def resolve(self, volumes: tuple[Volume, ...], *, create: bool = True) -> tuple[tuple[Volume, ...], tuple[str, ...]]:
        """``volumes`` with every named volume's source set to its data dir on this host; the
        names made now (``create``: missing ones are made, as ``run`` does; otherwise a missing
        one is ``VolumeNotFound``). Bind volumes pass unchanged."""
        out: list[Volume] = []
        made: list[str] = []
        for vol in volumes:
            if not vol.name:
                out.append(vol)
                continue
            if create:
                _, new = self.create(vol.name)
                if new:
                    made.append(vol.name)
            elif not self.exists(vol.name):
                raise VolumeNotFound(vol.name)
            out.append(replace(vol, source=str(self.data_dir(vol.name))))
        return tuple(out), tuple(made)


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files below ``path`` (not following links)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, f))
                total += st.st_size
    return total


def _remove(path: Path) -> None:
    from runtime.fstree import remove_tree

    remove_tree(path)


def seed_from_tree(data_dir: Path, tree: Path, target: str) -> None:
    """Copy what the image has at ``target`` into a new, empty volume (docker does this for a
    volume made by ``run``); nothing when the image has no directory there. The path is resolved
    inside ``tree`` only: a symlink in the image leading out of it copies nothing."""
    import subprocess

    src = os.path.realpath(os.path.join(tree, target.lstrip("/")))
    if not (src == os.path.realpath(tree) or src.startswith(os.path.realpath(tree) + "/")) or not os.path.isdir(src):
        return
    if os.listdir(data_dir):
        return
    st = os.stat(src)  # the mount point's owner and mode too (redis' /data belongs to redis)
    os.chown(data_dir, st.st_uid, st.st_gid)
    os.chmod(data_dir, st.st_mode & 0o7777)
    if not os.listdir(src):
        return
    # cp -a keeps owners, modes, links and times (the image's files belong to its users)
    proc = subprocess.run(["cp", "-a", "--", f"{src}/.", f"{data_dir}/"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InvalidArgument(f"cannot copy the image's {target} into volume {data_dir.parent.name}: {proc.stderr.strip()[:300]}")
