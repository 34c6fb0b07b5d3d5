"""Foreign checkpoints: podman's and CRI-O's archives, detected, unpacked safely and validated.

Detection is by content, never by name: our own archives begin with ``PYMGCKPT``; podman writes
tar compressed with zstd by default even when the file is called ``.tar.gz`` (``--compress``
picks zstd, gzip or none), CRI-O writes plain tar. So ``sniff_format`` answers "native" for our
magic and "foreign" for tar, gzip or zstd, and refuses anything else.

An archive is untrusted input (docs/security.md). ``extract_foreign`` unpacks it member by member
into a fresh directory, checking each against the whitelist below *before* writing it:

- top-level regular files: ``config.dump``, ``spec.dump``, ``network.status``, ``stats-dump``,
  ``deleted.files``, ``rootfs-diff.tar``, ``devshm-checkpoint.tar``, ``ctr.log``, ``dump.log``,
  ``restore.log``, ``status.dump``, ``pod.options``, ``pod.dump`` (podman, libpod's
  exportCheckpoint and pod checkpoints) and ``bind.mounts``, ``io.kubernetes.cri-o.LogPath``
  (CRI-O); the JSON ones at most ``dump_fields.MAX_JSON_BYTES``;
- ``checkpoint/``: flat, regular files named as CRIU names its images (``migrate.archive.members``)
  plus runc's ``descriptors.json``;
- ``volumes/NAME.tar`` (podman's named volumes, one tar each, flat) and ``artifacts/...``
  (a tree of directories and regular files podman keeps beside the checkpoint).

Only regular files and directories are created: a symlink, hard link, device, fifo or sparse
member is refused, so nothing written can point anywhere, and every path is opened from the
destination's fd with ``O_NOFOLLOW``. Budgets come from ``runtime.extract_limits`` (members,
depth, name length, each file's and all files' sizes), pax/GNU long-name headers are bounded
before ``tarfile`` reads them. On any error the destination is removed (or emptied, if the caller
made it), so a refused archive leaves nothing behind; the error names the member.

``load_foreign_dir`` reads an extracted directory (ours, or a checkpoint image's layer unpacked
by its own safe extraction): ``spec.dump`` and ``config.dump`` are parsed and the fields we read
validated for type and size (``dump_fields``); the engine is told by ``spec.dump``'s
``io.container.manager`` annotation (``libpod`` or ``cri-o``) or, without it, by the shape of
``config.dump``. Paths inside these files (podman's ``rootfs``, bind sources) are data to show
or compare, never opened.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, cast

from migrate.archive.members import CRIU_IMAGE_NAME
from migrate.errors import ArchiveError, ArchiveLimitExceeded, TruncatedArchive, UnsafeMember
from migrate.interop import crio
from migrate.interop import dump_fields as f
from runtime.extract_limits import NAME_MAX, ExtractLimits, current_limits
from runtime.fstree import remove_tree
from runtime.tarsafe import GZIP_MAGIC, MAX_HEADER_BYTES, MAX_TRAILING_BYTES, ZSTD_MAGIC, open_decompressed
from runtime.zstd_frames import FrameTee, ZstdFrames

log = logging.getLogger(__name__)

NATIVE_MAGIC = b"PYMGCKPT"  # migrate/archive/format.py MAGIC (not imported: sniffing stays cheap)
ENGINE_PODMAN = "podman"
ENGINE_CRIO = crio.ENGINE

CONFIG_DUMP = "config.dump"
SPEC_DUMP = "spec.dump"
NETWORK_STATUS = "network.status"
STATS_DUMP = "stats-dump"
DELETED_FILES = "deleted.files"
ROOTFS_DIFF = "rootfs-diff.tar"
CHECKPOINT_DIR = "checkpoint"
DESCRIPTORS = "descriptors.json"

JSON_FILES = frozenset({CONFIG_DUMP, SPEC_DUMP, NETWORK_STATUS, DELETED_FILES, crio.BIND_MOUNTS,
                        "status.dump", "pod.options", "pod.dump"})
TOP_FILES = JSON_FILES | frozenset({STATS_DUMP, ROOTFS_DIFF, "devshm-checkpoint.tar", "ctr.log", "dump.log",
                                    "restore.log", crio.LOG_MEMBER})
_VOLUME_TAR = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}\.tar")
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_HEADER_ERRORS = (tarfile.TarError, ValueError, OverflowError, UnicodeError, IndexError, EOFError)


@dataclass(frozen=True)
class ForeignCheckpoint:
    """A podman or CRI-O checkpoint, unpacked at ``root`` and validated (the interop contract)."""

    engine: str  # "podman" | "cri-o"
    root: Path  # checkpoint/, spec.dump, config.dump, rootfs-diff.tar, ...
    spec: dict[str, Any]  # spec.dump (OCI runtime spec), validated for the fields we read
    config: dict[str, Any]  # config.dump as the engine wrote it
    container_name: str
    image_name: str  # e.g. "localhost/pmt-base:1" ("" if absent)
    image_id: str  # podman rootfsImageID / CRI-O rootfsImageRef ("" if absent)
    checkpointed_at: float | None
    has_rootfs_diff: bool
    deleted_files: tuple[str, ...]  # from deleted.files, relative to the container's root ("tmp/x")
    network_status: Any  # network.status parsed (None if absent)
    crio: crio.CrioMetadata | None = field(default=None, compare=False)  # CRI-O's extra metadata


# --- detection ---------------------------------------------------------------------------------


def sniff_format(path: Path) -> str:
    """"native" (a pymigrate archive) or "foreign" (tar, gzip or zstd: podman, CRI-O), by content.

    Raises:
        ArchiveError: neither (names the file and what its first bytes look like).
        OSError: the file cannot be read (passes through: errno and path say it all).
    """
    with open(path, "rb") as fp:
        head = fp.read(512)
    if head.startswith(NATIVE_MAGIC):
        return "native"
    if head.startswith(GZIP_MAGIC) or head.startswith(ZSTD_MAGIC) or _is_tar_header(head):
        return "foreign"
    raise ArchiveError(f"cannot read {path}: not a checkpoint archive (expected pymigrate's PYMGCKPT, or a "
                       f"podman/CRI-O tar, tar.gz or tar.zst)",
                       hint="give a file written by `pymigrate checkpoint --export`, `podman container checkpoint "
                            "--export` or the kubelet's checkpoint API")


def _is_tar_header(head: bytes) -> bool:
    # ustar/GNU magic at offset 257 (POSIX.1-2001 ustar header); a v7 tar has none, nobody writes those
    return len(head) >= 262 and head[257:262] == b"ustar"


# --- the whitelist ----------------------------------------------------------------------------


def check_member(name: str, kind: str) -> None:
    """Raise UnsafeMember unless a foreign archive may hold ``name`` (clean, relative) as ``kind``
    ("file" or "dir"); see the module docstring for the table."""
    top, _, rest = name.partition("/")
    if not rest:
        if top in TOP_FILES:
            if kind != "file":
                raise UnsafeMember(name, f"must be a regular file, not a {kind}")
            return
        if top in (CHECKPOINT_DIR, "volumes", "artifacts"):
            if kind != "dir":
                raise UnsafeMember(name, f"must be a directory, not a {kind}")
            return
        raise UnsafeMember(name, "not a member a podman or CRI-O checkpoint holds (expected checkpoint/, "
                                 "config.dump, spec.dump, rootfs-diff.tar, ... see docs/interop.md)")
    if top == CHECKPOINT_DIR:
        if kind != "file" or "/" in rest:
            raise UnsafeMember(name, "the CRIU images dir holds only regular files, no subdirectories")
        if rest != DESCRIPTORS and not CRIU_IMAGE_NAME.fullmatch(rest):
            raise UnsafeMember(name, f"{rest!r} is not a CRIU image name")
        return
    if top == "volumes":
        if kind != "file" or not _VOLUME_TAR.fullmatch(rest):
            raise UnsafeMember(name, "volumes/ holds one VOLUME.tar regular file per named volume")
        return
    if top == "artifacts":
        return  # a tree of regular files and directories (kinds checked by the unpacker)
    raise UnsafeMember(name, f"{top!r} is not a directory a podman or CRI-O checkpoint holds")


def _clean_name(raw: str) -> str:
    """An archive name -> ``a/b`` relative to the root ("" for the root itself); refuses absolute
    names, ``..`` and NUL. podman's tars name the root ``./`` and members ``./x`` or ``x``."""
    if "\x00" in raw:
        raise UnsafeMember(raw, "NUL byte in the path")
    if raw.startswith("/"):
        raise UnsafeMember(raw, "absolute path, expected a path relative to the checkpoint's root")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeMember(raw, "path has a '..' component, expected a path inside the checkpoint")
    try:
        raw.encode("utf-8", "strict")
    except UnicodeEncodeError:
        raise UnsafeMember(raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                           "not a UTF-8 name") from None
    return "/".join(parts)


# --- extraction --------------------------------------------------------------------------------


class _BoundedInfo(tarfile.TarInfo):
    """Refuses a pax or GNU long-name header above MAX_HEADER_BYTES before ``tarfile`` reads it
    into memory whole (a few KB of zstd can claim gigabytes)."""

    def _bounded(self) -> None:
        if self.size > MAX_HEADER_BYTES:
            raise UnsafeMember(self.name or "(header)", f"a {self.size}-byte extended header, expected at most "
                                                        f"{MAX_HEADER_BYTES}")

    def _proc_pax(self, tarfile):  # type: ignore[no-untyped-def]
        self._bounded()
        return super()._proc_pax(tarfile)  # type: ignore[misc]

    def _proc_gnulong(self, tarfile):  # type: ignore[no-untyped-def]
        self._bounded()
        return super()._proc_gnulong(tarfile)  # type: ignore[misc]


@dataclass
class ExtractReport:
    """What an extraction saw: every regular member's size (kept or only counted)."""

    sizes: dict[str, int] = field(default_factory=dict)
    compression: str = "none"


class _Unpacker:
    """Writes checked members under ``root`` (an empty directory): directories and regular files
    only, every path component opened with O_NOFOLLOW from the root's fd."""

    def __init__(self, root: Path, source: str, limits: ExtractLimits, keep: Callable[[str], bool] | None) -> None:
        self.source = source
        self.limits = limits
        self.keep = keep
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.seen: dict[str, str] = {"": "dir"}
        self.members = 0
        self.total_bytes = 0
        self.report = ExtractReport()

    def close(self) -> None:
        os.close(self.root_fd)

    def add(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        name = _clean_name(m.name)
        self._budget(m, name)
        kind = "dir" if m.isdir() else "file" if m.isreg() and not m.issparse() else _kind(m)
        if kind not in ("dir", "file"):
            raise UnsafeMember(m.name, f"a {kind} is not allowed in a checkpoint archive (only regular files and "
                                       f"directories)")
        if not name:
            if kind != "dir":
                raise UnsafeMember(m.name, "names the archive's root but is not a directory")
            return
        check_member(name, kind)
        if name in self.seen:
            if kind == "dir" and self.seen[name] == "dir":
                return
            raise UnsafeMember(m.name, "appears twice in the archive")
        if kind == "file" and name in JSON_FILES and m.size > f.MAX_JSON_BYTES:
            raise UnsafeMember(name, f"{m.size} bytes, expected at most {f.MAX_JSON_BYTES}")
        parent_fd = self._parent(name)
        try:
            leaf = name.rsplit("/", 1)[-1]
            if kind == "dir":
                os.mkdir(leaf, 0o700, dir_fd=parent_fd)
            else:
                self.report.sizes[name] = m.size
                if self.keep is None or self.keep(name):
                    self._write(tar, m, parent_fd, leaf)
        finally:
            if parent_fd != self.root_fd:
                os.close(parent_fd)
        self.seen[name] = kind

    def _budget(self, m: tarfile.TarInfo, name: str) -> None:
        lim = self.limits
        self.members += 1
        if self.members > lim.max_members:
            raise _over(m.name, lim, "max_members", self.members, f"archive {self.source}")
        parts = name.split("/") if name else []
        if len(parts) > lim.max_depth:
            raise _over(m.name, lim, "max_depth", len(parts), f"member {m.name!r}")
        if len(name.encode()) > lim.max_name_bytes or any(len(p.encode()) > NAME_MAX for p in parts):
            raise UnsafeMember(m.name, f"name too long (at most {lim.max_name_bytes} bytes, {NAME_MAX} per component)")
        if m.isreg():
            if m.size > lim.max_member_bytes:
                raise _over(m.name, lim, "max_member_bytes", m.size, f"member {m.name!r}")
            self.total_bytes += m.size
            if self.total_bytes > lim.max_total_bytes:
                raise _over(m.name, lim, "max_total_bytes", self.total_bytes, f"archive {self.source}")

    def _parent(self, name: str) -> int:
        """An fd of ``name``'s parent directory, made when the archive had no entry for it."""
        parts = name.split("/")[:-1]
        fd = self.root_fd
        for i, part in enumerate(parts):
            path = "/".join(parts[: i + 1])
            if path not in self.seen:
                check_member(path, "dir")
                os.mkdir(part, 0o700, dir_fd=fd)
                self.seen[path] = "dir"
            elif self.seen[path] != "dir":
                raise UnsafeMember(name, f"its parent {path!r} is a file in the archive")
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            if fd != self.root_fd:
                os.close(fd)
            fd = nfd
        return fd

    def _write(self, tar: tarfile.TarFile, m: tarfile.TarInfo, parent_fd: int, leaf: str) -> None:
        src = tar.extractfile(m)
        assert src is not None  # a regular member
        fd = os.open(leaf, _FILE_FLAGS, 0o600, dir_fd=parent_fd)
        with os.fdopen(fd, "wb") as out:
            left = m.size
            while left > 0:
                try:
                    chunk = src.read(min(_CHUNK, left))
                except OSError as exc:  # tarfile's "unexpected end of data" is a bare OSError
                    raise TruncatedArchive(f"cannot read archive {self.source}: member {m.name!r} ends early: "
                                           f"{exc}") from exc
                if not chunk:
                    raise TruncatedArchive(f"cannot read archive {self.source}: member {m.name!r} ends early "
                                           f"({m.size - left} of {m.size} bytes)")
                out.write(chunk)
                left -= len(chunk)


def _kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hard link"
    if m.ischr() or m.isblk():
        return "device node"
    if m.isfifo():
        return "fifo"
    if m.issparse():
        return "sparse file"
    return f"member of type {m.type!r}"


def _over(member: str, limits: ExtractLimits, limit: str, actual: int, what: str) -> ArchiveLimitExceeded:
    return ArchiveLimitExceeded(f"refusing archive member {member!r}: {limits.exceeded(limit, actual, what)}",
                                limit=limit, value=getattr(limits, limit), actual=actual, hint=limits.hint(limit))


def extract_foreign(path: Path, dest: Path, *, limits: ExtractLimits | None = None,
                    keep: Callable[[str], bool] | None = None) -> ForeignCheckpoint:
    """Unpack the untrusted podman/CRI-O archive ``path`` into ``dest`` and read it.

    Args:
        path: a tar, tar.gz or tar.zst file (by content).
        dest: a directory that does not exist yet (its parent does), or an empty one.
        limits: the extraction budget (default ``runtime.extract_limits.current_limits()``).
        keep: if given, only members it accepts are written; the others are still checked and
            counted (``inspect`` keeps the small ones).

    Raises:
        UnsafeMember: a member the whitelist refuses, of a refused kind, or a bad field in a
            JSON file (names the member, and the field).
        ArchiveLimitExceeded: over a budget (names the limit).
        TruncatedArchive / ArchiveError: corrupt or truncated compression or tar data.
        On any error ``dest`` is gone (or empty, if it existed).
    """
    fc, _ = extract_with_report(path, dest, limits=limits, keep=keep)
    return fc


def extract_with_report(path: Path, dest: Path, *, limits: ExtractLimits | None = None,
                        keep: Callable[[str], bool] | None = None) -> tuple[ForeignCheckpoint, ExtractReport]:
    """``extract_foreign`` that also returns what the archive held (every file's size)."""
    made = not dest.exists()
    if made:
        dest.mkdir(mode=0o700)
    elif any(dest.iterdir()):
        raise ArchiveError(f"cannot extract {path} into {dest}: the directory is not empty")
    try:
        with open(path, "rb") as stream:
            report = _unpack(stream, dest, str(path), limits or current_limits(), keep)
        fc = load_foreign_dir(dest)
        if keep is not None:  # rootfs-diff.tar may have been counted, not written
            fc = dataclasses.replace(fc, has_rootfs_diff=ROOTFS_DIFF in report.sizes)
        return fc, report
    except BaseException:
        _discard(dest, made)
        raise


def _discard(dest: Path, made: bool) -> None:
    if made:
        remove_tree(dest)
        return
    for entry in list(dest.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            remove_tree(entry)
        else:
            entry.unlink()


def _unpack(stream: BinaryIO, dest: Path, source: str, limits: ExtractLimits,
            keep: Callable[[str], bool] | None) -> ExtractReport:
    head = stream.read(4)
    stream.seek(0)
    frames = ZstdFrames() if head == ZSTD_MAGIC else None
    if frames is not None:
        stream = cast(BinaryIO, io.BufferedReader(FrameTee(stream, frames), buffer_size=_CHUNK))
    reader, compression, corrupt = open_decompressed(stream)
    errors = corrupt + _HEADER_ERRORS
    try:
        tar = tarfile.open(fileobj=reader, mode="r|", tarinfo=_BoundedInfo)
    except errors as exc:
        if frames is not None and not frames.complete():
            raise TruncatedArchive(f"cannot read archive {source}: truncated at its start: the zstd stream ends inside "
                                   f"a frame") from exc
        raise ArchiveError(f"cannot read archive {source}: not a tar archive ({compression} compression): {exc}") from exc
    unpacker = _Unpacker(dest, source, limits, keep)
    unpacker.report.compression = compression
    last = None
    try:
        while True:
            try:
                m = tar.next()  # skipping a short member's data: tarfile raises a bare OSError
            except errors + (OSError,) as exc:
                where = f"after member {last!r}" if last else "at its start"
                raise TruncatedArchive(f"cannot read archive {source}: corrupt or truncated {where}: {exc}") from exc
            if m is None:
                break
            try:
                unpacker.add(tar, m)
            except errors as exc:
                raise TruncatedArchive(f"cannot read archive {source}: corrupt or truncated in member {m.name!r}: "
                                       f"{exc}") from exc
            last = m.name
        _drain(reader, source, compression, corrupt)
        if frames is not None and not frames.complete():
            where = f"after member {last!r}" if last else "at its start"
            raise TruncatedArchive(f"cannot read archive {source}: corrupt or truncated {where}: the zstd stream "
                                   f"ends inside a frame")
    finally:
        unpacker.close()
        tar.close()
    return unpacker.report


def _drain(reader: BinaryIO, source: str, compression: str, corrupt: tuple[type[BaseException], ...]) -> None:
    """Read past the tar's end so gzip's CRC and zstd's checksum are verified (bounded padding)."""
    trailing = 0
    try:
        while chunk := reader.read(_CHUNK):
            trailing += len(chunk)
            if trailing > MAX_TRAILING_BYTES:
                raise UnsafeMember("(end of archive)", f"more than {MAX_TRAILING_BYTES} bytes after the end of the tar")
    except corrupt as exc:
        raise TruncatedArchive(f"cannot read archive {source}: corrupt {compression} data after the last member: "
                               f"{exc}") from exc


# --- reading an extracted directory -----------------------------------------------------------


def load_foreign_dir(root: Path) -> ForeignCheckpoint:
    """Read and validate the extracted checkpoint at ``root`` (already unpacked safely).

    Raises:
        UnsafeMember: a required file missing, not a regular file, bad JSON, or a field of the
            wrong type or size (names the file and the field).
        ArchiveError: the engine cannot be told (neither podman's nor CRI-O's metadata).
    """
    images = root / CHECKPOINT_DIR
    if not stat.S_ISDIR(_lstat_mode(images)):
        raise UnsafeMember(CHECKPOINT_DIR, "missing, expected the CRIU images directory checkpoint/")
    spec = validate_spec(f.read_json(root, SPEC_DUMP))
    config = f.as_kind(f.read_json(root, CONFIG_DUMP), dict, f"{CONFIG_DUMP}: ")
    deleted = _deleted_files(f.read_json(root, DELETED_FILES, required=False))
    network = f.read_json(root, NETWORK_STATUS, required=False)
    network_interfaces(network)  # validated here: callers may use the addresses
    common = dict(root=root, spec=spec, config=config, deleted_files=deleted, network_status=network,
                  has_rootfs_diff=stat.S_ISREG(_lstat_mode(root / ROOTFS_DIFF)))
    if crio.is_crio(config, spec):
        meta = crio.read_crio(config, spec, f.read_json(root, crio.BIND_MOUNTS, required=False))
        return ForeignCheckpoint(engine=ENGINE_CRIO, container_name=meta.container_name, image_name=meta.image_name,
                                 image_id=meta.image_id, checkpointed_at=meta.checkpointed_at, crio=meta, **common)
    if not _is_podman(config, spec):
        raise ArchiveError(f"cannot read the checkpoint at {root}: config.dump is neither podman's nor CRI-O's "
                           f"(no rootfsImageID or rootfsImageRef, no io.container.manager annotation)")
    where = f"{CONFIG_DUMP}: "
    if "spec" in config:
        f.get(config, "spec", dict, where)
    return ForeignCheckpoint(
        engine=ENGINE_PODMAN,
        container_name=f.get(config, "name", str, where, ""),
        image_name=f.get(config, "rootfsImageName", str, where, "") or f.get(config, "RawImageName", str, where, ""),
        image_id=f.get(config, "rootfsImageID", str, where, ""),
        checkpointed_at=f.rfc3339(f.get(config, "checkpointedTime", str, where), f.field(where, "checkpointedTime")),
        **common,  # type: ignore[arg-type]
    )


def _lstat_mode(path: Path) -> int:
    try:
        return path.lstat().st_mode
    except FileNotFoundError:
        return 0


def _is_podman(config: dict[str, Any], spec: dict[str, Any]) -> bool:
    annotations = spec.get("annotations") or {}
    return annotations.get(crio.MANAGER_ANNOTATION) == "libpod" or "rootfsImageID" in config or "spec" in config


def _deleted_files(value: Any) -> tuple[str, ...]:
    """deleted.files: a JSON list of container paths (podman writes them absolute: "/tmp/x")."""
    if value is None:
        return ()
    items = f.as_kind(value, list, f"{DELETED_FILES}: ")
    return tuple(f.container_path(f.as_kind(v, str, f"{DELETED_FILES}: [{i}]"), f"{DELETED_FILES}: [{i}]")
                 for i, v in enumerate(items))


def validate_spec(value: Any) -> dict[str, Any]:
    """spec.dump checked for the fields pymigrate reads (process, root, hostname, mounts,
    annotations, linux.namespaces/uidMappings/gidMappings); the spec itself is returned."""
    where = f"{SPEC_DUMP}: "
    spec = f.as_kind(value, dict, where)
    f.get(spec, "ociVersion", str, where)
    f.get(spec, "hostname", str, where)
    f.str_map(spec, "annotations", where)
    process = f.get(spec, "process", dict, where, {})
    pw = f.field(where, "process")
    f.str_list(process, "args", pw)
    f.str_list(process, "env", pw)
    f.get(process, "cwd", str, pw)
    f.get(process, "terminal", bool, pw)
    user = f.get(process, "user", dict, pw, {})
    for key in ("uid", "gid"):
        f.get(user, key, int, f.field(pw, "user"))
    root = f.get(spec, "root", dict, where, {})
    f.get(root, "path", str, f.field(where, "root"))
    f.get(root, "readonly", bool, f.field(where, "root"))
    for i, mount in enumerate(f.get(spec, "mounts", list, where, [])):
        mw = f"{where}mounts[{i}]"
        mount = f.as_kind(mount, dict, mw)
        f.container_path(f.get(mount, "destination", str, mw, ""), f.field(mw, "destination"))
        f.get(mount, "type", str, mw)
        f.get(mount, "source", str, mw)
        f.str_list(mount, "options", mw)
    _validate_linux(f.get(spec, "linux", dict, where, {}), f.field(where, "linux"))
    return spec


def _validate_linux(linux: dict[str, Any], where: str) -> None:
    for i, ns in enumerate(f.get(linux, "namespaces", list, where, [])):
        nw = f"{f.field(where, 'namespaces')}[{i}]"
        ns = f.as_kind(ns, dict, nw)
        f.get(ns, "type", str, nw)
        f.get(ns, "path", str, nw)
    for key in ("uidMappings", "gidMappings"):
        for i, extent in enumerate(f.get(linux, key, list, where, [])):
            ew = f"{f.field(where, key)}[{i}]"
            extent = f.as_kind(extent, dict, ew)
            for k in ("containerID", "hostID", "size"):
                f.get(extent, k, int, ew)


@dataclass(frozen=True)
class NetworkInterface:
    network: str
    interface: str
    ip: str  # "10.88.0.5" (no prefix length)
    prefix: str  # "10.88.0.5/16" as written
    gateway: str
    mac: str


def network_interfaces(status: Any) -> tuple[NetworkInterface, ...]:
    """The addresses of podman's network.status (netavark's: {network: {interfaces: {name:
    {subnets: [{ipnet, gateway}], mac_address}}}}), validated; () for None or another shape
    (CNI-era podman wrote a list of CNI results: not read)."""
    if not isinstance(status, dict):
        return ()
    out = []
    for net_name, result in sorted(status.items()):
        where = f"{NETWORK_STATUS}: {net_name[:64]}"
        result = f.as_kind(result, dict, where)
        for if_name, iface in sorted(f.get(result, "interfaces", dict, where, {}).items()):
            iw = f"{where}.interfaces.{if_name[:64]}"
            iface = f.as_kind(iface, dict, iw)
            mac = f.get(iface, "mac_address", str, iw, "")
            for i, subnet in enumerate(f.get(iface, "subnets", list, iw, [])):
                sw = f"{iw}.subnets[{i}]"
                subnet = f.as_kind(subnet, dict, sw)
                ipnet = f.get(subnet, "ipnet", str, sw, "")
                out.append(NetworkInterface(network=net_name, interface=if_name, ip=ipnet.partition("/")[0],
                                            prefix=ipnet, gateway=f.get(subnet, "gateway", str, sw, ""), mac=mac))
            if not f.get(iface, "subnets", list, iw, []):
                out.append(NetworkInterface(network=net_name, interface=if_name, ip="", prefix="", gateway="", mac=mac))
    return tuple(out)


def read_small(root: Path, name: str, limit: int) -> bytes | None:
    """The first ``limit`` bytes of the regular file ``root/name`` (never through a symlink), or None."""
    try:
        fd = os.open(root / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fp:
        if not stat.S_ISREG(os.fstat(fp.fileno()).st_mode):
            return None
        return fp.read(limit)

