"""On-disk container records: ROOT/containers/<container_id>/{config.json,state.json}.

config.json is the ``ContainerSpec`` (written once), state.json the ``ContainerState`` (rewritten
on every transition). Every write is atomic: a temp file in the same directory, fsync, rename(2).
Every read-modify-write and every name reservation holds one exclusive fcntl.flock on
ROOT/run/state.lock, so concurrent CLI calls (and shims recording exits) never corrupt a record
nor create two containers with the same name. The lock is held only for short critical sections,
never across a container start or stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator

from runtime.config import Paths
from runtime.errors import Busy, ContainerError, ContainerExists, ContainerNotFound, InvalidArgument
from runtime.fstree import remove_tree
from runtime.spec import ContainerSpec, ContainerState

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
LOCKS_DIR = "locks"  # ROOT/run/locks/<resource>.lock: long operations (StateStore.hold)
_RESOURCE_RE = re.compile(r"[a-z]+:[a-zA-Z0-9_.-]{1,128}")

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
ID_RE = re.compile(r"[0-9a-f]{32}")

_ADJECTIVES = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nimble", "proud", "quiet", "swift", "tidy", "vivid", "witty", "zesty")
_NOUNS = ("otter", "falcon", "heron", "lynx", "marmot", "newt", "orca", "panda", "quokka", "raven", "seal", "tapir", "viper", "walrus", "yak", "zebra", "bison", "crane")


def new_container_id() -> str:
    return secrets.token_hex(16)


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid container name {name!r}: expected [a-zA-Z0-9][a-zA-Z0-9_.-]{{0,62}}",
        )
    return name


def fsync_path(path: Path) -> None:
    """fsync the file at ``path``; one that is gone meanwhile has nothing to flush."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new content, never a mix.

    ``sync`` False: no fsync before the rename; the caller fsyncs ``path`` soon after (``fsync_file``).
    Only for replacing a file that exists (ext4 flushes a file renamed over another at the commit)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True).encode() + b"\n"


class StateStore:
    """Container records under one state root."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    # -- locking -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock over every record of this root (not reentrant)."""
        self.paths.run.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.paths.run / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    @contextlib.contextmanager
    def hold(self, resource: str, operation: str) -> Iterator[None]:
        """Hold ``resource`` (e.g. ``name:web-1``; letters, digits, ``:_.-`` only) for one long
        operation, such as a restore, without waiting: a second holder gets ``Busy`` at once.

        An flock on ROOT/run/locks/<resource>.lock, dropped by the kernel when the holder dies,
        so a crash never leaves it held. The file is removed on release; whoever locked a file
        that was unlinked meanwhile (its inode no longer at the path) retries on the new one.
        """
        if not _RESOURCE_RE.fullmatch(resource):
            raise InvalidArgument(f"invalid lock name {resource!r}")
        locks = self.paths.run / LOCKS_DIR
        locks.mkdir(parents=True, exist_ok=True)
        path = locks / f"{resource}.lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise Busy(resource.split(":", 1)[-1], operation, holder_pid=holder,
                           hint="wait for the other operation to finish") from None
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # unlinked by its last holder between our open and our lock: again
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(fd)

    # -- paths ---------------------------------------------------------------------------------
    def dir(self, container_id: str) -> Path:
        return self.paths.container(container_id)

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.paths.containers)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if ID_RE.fullmatch(n) and (self.paths.containers / n / CONFIG_FILE).exists())

    # -- records -------------------------------------------------------------------------------
    def create(self, spec: ContainerSpec, state: ContainerState | None = None) -> None:
        """Reserve the name and write the first record, atomically with respect to other creators.

        Raises:
            ContainerExists: the name (or id) is taken in this root.
        """
        validate_name(spec.name)
        self.paths.containers.mkdir(parents=True, exist_ok=True)
        with self.lock():
            for other in self.ids():
                if self._name_of(other) == spec.name:
                    raise ContainerExists(
                        f"container name {spec.name} is already in use by {other[:12]}",
                        hint="choose another --name or remove the old container",
                    )
            d = self.dir(spec.container_id)
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                raise ContainerExists(f"container id {spec.container_id} already exists") from None
            atomic_write(d / STATE_FILE, _dump((state or ContainerState()).to_dict()))
            atomic_write(d / CONFIG_FILE, _dump(spec.to_dict()))

    def rename(self, container_id: str, new_name: str) -> ContainerSpec:
        """Give the record another name, atomically with respect to creators and other renames.

        Raises:
            InvalidArgument: not a valid name. ContainerExists: another container has it.
            ContainerNotFound: the record is gone.
        """
        validate_name(new_name)
        with self.lock():
            for other in self.ids():
                if other != container_id and self._name_of(other) == new_name:
                    raise ContainerExists(f"container name {new_name} is already in use by {other[:12]}",
                                          hint="choose another name or remove the old container")
            spec = dataclasses.replace(self.load_spec(container_id), name=new_name)
            self.write_spec(spec)
            return spec

    def write_spec(self, spec: ContainerSpec) -> None:
        """Rewrite the record's spec (``run``: the address changed before the container started)."""
        atomic_write(self.dir(spec.container_id) / CONFIG_FILE, _dump(spec.to_dict()))

    def _name_of(self, container_id: str) -> str | None:
        try:
            with open(self.dir(container_id) / CONFIG_FILE, "rb") as f:
                name: str | None = json.load(f).get("name")
                return name
        except (OSError, ValueError):
            return None

    def generate_name(self) -> str:
        taken = {self._name_of(i) for i in self.ids()}
        for _ in range(64):
            name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
            if name not in taken:
                return name
        return f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}_{secrets.token_hex(3)}"

    def load_spec(self, container_id: str) -> ContainerSpec:
        try:
            with open(self.dir(container_id) / CONFIG_FILE, "rb") as f:
                return ContainerSpec.from_dict(json.load(f))
        except FileNotFoundError:
            raise ContainerNotFound(container_id) from None

    def load_state(self, container_id: str) -> ContainerState:
        try:
            with open(self.dir(container_id) / STATE_FILE, "rb") as f:
                return ContainerState.from_dict(json.load(f))
        except FileNotFoundError:
            raise ContainerNotFound(container_id) from None

    def write_state(self, container_id: str, state: ContainerState, *, sync: bool = True) -> None:
        """Replace the state record (caller holds the lock or owns the container exclusively);
        ``sync`` False: see ``atomic_write`` (then ``sync_state``)."""
        d = self.dir(container_id)
        if not (d / CONFIG_FILE).exists():
            raise ContainerNotFound(container_id)
        atomic_write(d / STATE_FILE, _dump(state.to_dict()), sync=sync)

    def sync_state(self, container_id: str) -> None:
        """fsync the state record written with ``sync=False`` (gone meanwhile: nothing to do)."""
        fsync_path(self.dir(container_id) / STATE_FILE)

    def update_state(self, container_id: str, change: Callable[[ContainerState], ContainerState], *,
                     sync: bool = True) -> ContainerState:
        """Read, change and write the state under the lock; returns the new state (``sync``: see
        ``write_state``)."""
        with self.lock():
            new = change(self.load_state(container_id))
            self.write_state(container_id, new, sync=sync)
            return new

    def delete(self, container_id: str) -> None:
        """Remove the record and the container directory (nothing may be mounted below it)."""
        with self.lock():
            d = self.dir(container_id)
            # config.json goes first so a half-deleted directory is no longer listed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(d / CONFIG_FILE)
        remove_tree(d)  # the upper layer is the workload's: any depth (runtime.fstree)

    # -- lookups -------------------------------------------------------------------------------
    def resolve(self, name_or_id: str) -> str:
        """Container id for a name, a full id or a unique id prefix.

        Raises:
            ContainerNotFound: nothing matches.
            ContainerError: an id prefix matches several containers.
        """
        ids = self.ids()
        if name_or_id in ids:
            return name_or_id
        for cid in ids:
            if self._name_of(cid) == name_or_id:
                return cid
        if name_or_id and re.fullmatch(r"[0-9a-f]+", name_or_id):
            matches = [cid for cid in ids if cid.startswith(name_or_id)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise ContainerError(f"container id prefix {name_or_id} is ambiguous: {len(matches)} containers match")
        raise ContainerNotFound(name_or_id)


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0) or b"0")
    except (OSError, ValueError):
        return 0

