"""CRIU's images of a pymigrate checkpoint, made restorable by runc (podman's runtime).

Two things differ between what pymigrate dumps and what runc 1.1's ``Restore`` gives CRIU:

- the network namespace: pymigrate declares it external as ``extnet`` (migrate/checkpoint.py
  NETNS_KEY); runc passes the new namespace as an inherit fd keyed ``extRootNetNS``
  (libcontainer ``criuNsToKey``). CRIU keeps the key in the namespace's image (NetnsEntry
  ``ext_key``, field 8: criu/images/netns.proto), so the exported copy of that image gets runc's
  key. Only the copy changes: local restores and migrations keep reading ``extnet``.
- cgroups: pymigrate dumps with CRIU ignoring cgroups (its restore places the tree itself), so
  the images name the container's cgroup on this host (``/pymigrate/<root>/<id>``, with the
  cgroup namespace's prefix) and no cgroup directories. runc puts CRIU into the new container's
  cgroups and passes them as cgroup roots; CRIU maps a dumped directory onto them only where the
  image lists one (criu/cgroup.c ``rewrite_cgroup_roots``/``rewrite_cgsets``). So the exported
  ``cgroup.img`` gets one directory per controller, ``CGROUP_DIR``, and every task's path points
  at it (keeping the cgroup namespace's prefix), as a runc dump of a container's own cgroup
  would: the restored tree lands in podman's cgroup for the container, in a cgroup namespace
  rooted there. A task in a cgroup below the container's is refused (podman would not know it).
- masked files: runc binds /dev/null over each and keys all of them ``/dev/null``; a container
  pymigrate imported from podman keeps its engine's binds keyed by destination, so their keys
  go back to ``/dev/null`` (``rekey_mounts``). Its other engine binds (/etc/hosts, /dev/shm,
  the cgroup v1 binds ...) are keyed as runc keys them already.
- ``descriptors.json``: runc reads the paths of the init's fds 0-2 from it and, for each
  ``pipe:[N]``, gives CRIU its own new stdio pipe as an inherit fd. A pymigrate init has its
  container's /dev/null on fd 0 (CRIU reopens it from the images) and its log files
  (/.pymigrate/log, log.err) on 1 and 2, which become pipes to conmon
  (migrate/interop/export_stdio.py), so ``podman logs`` shows what comes after the restore.

CRIU's image files: an 8-byte magic pair, then entries, each a little-endian u32 length and a
protobuf message (criu/include/image.h, ``pb_write_one``). The rewrite reads the one entry field
by field (protobuf wire format) and changes nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

from migrate.errors import ArchiveError
from runtime.errors import Unsupported

RUNC_NETNS_KEY = "extRootNetNS"  # runc's key for a network namespace given by path
DESCRIPTORS = "descriptors.json"
STDIO_PATHS = ("/dev/null", "/.pymigrate/log", "/.pymigrate/log.err")  # runtime/process.py's fds 0, 1, 2
STATS_DUMP = "stats-dump"  # CRIU's dump statistics: podman keeps them beside checkpoint/
DUMP_LOG = "dump.log"  # CRIU's: beside checkpoint/ as CRI-O keeps it (inspectors read CRIU's version there)
_LEFT_OUT = frozenset({"cpuinfo.img", STATS_DUMP, DUMP_LOG})  # our restore's CPU check; the two beside checkpoint/
_MAGIC_BYTES = 8
CGROUP_IMAGE = "cgroup.img"
CGROUP_DIR = "pymigrate-export"  # the container's cgroup in the exported cgroup.img, mapped by CRIU onto runc's
_EXT_KEY_FIELD = 8


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(message: bytes) -> list[tuple[int, int, bytes]]:
    """(field number, wire type, the field's whole encoding) for each top-level field."""
    out = []
    pos = 0
    while pos < len(message):
        start = pos
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(message, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(message, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(message):
            raise ValueError("truncated field")
        out.append((number, wire, message[start:pos]))
    return out


def rekey_netns(data: bytes, old_key: str, new_key: str) -> bytes | None:
    """A netns image with its external key ``old_key`` replaced by ``new_key``; None when the
    image holds no such key (a namespace CRIU dumped whole: a --userns container's)."""
    if len(data) < _MAGIC_BYTES + 4:
        raise ValueError("shorter than an image header")
    (size,) = struct.unpack_from("<I", data, _MAGIC_BYTES)
    body = data[_MAGIC_BYTES + 4:]
    if size != len(body):
        raise ValueError(f"one entry of {size} bytes expected, the file holds {len(body)}")
    fields = _fields(body)
    old = b"".join((bytes([_EXT_KEY_FIELD << 3 | 2]), _encode_varint(len(old_key.encode())), old_key.encode()))
    if not any(number == _EXT_KEY_FIELD and raw == old for number, _w, raw in fields):
        return None
    new = b"".join((bytes([_EXT_KEY_FIELD << 3 | 2]), _encode_varint(len(new_key.encode())), new_key.encode()))
    message = b"".join(new if number == _EXT_KEY_FIELD else raw for number, _w, raw in fields)
    return data[:_MAGIC_BYTES] + struct.pack("<I", len(message)) + message


def cgroup_namespaced(path: Path) -> bool:
    """Whether the dumped tasks have a cgroup namespace (a prefix in ``cgroup.img``): what the
    images hold decides, not the spec (a container imported from podman has none, whatever its
    spec's default says), and runc binds a v1 host's hierarchies only without one."""
    from runtime.criu import read_image_entries

    return any(ctl.cgns_prefix for entry in read_image_entries(path, "cgroup_entry", "cgroup_pb2")
               for cg_set in entry.sets for ctl in cg_set.ctls)


def rekey_cgroups(path: Path) -> bytes:
    """``cgroup.img`` at ``path`` with every task in ``CGROUP_DIR`` (module docstring).

    Raises:
        Unsupported: a task sits in a cgroup below the container's own.
        ArchiveError: the image holds no cgroup entry.
    """
    from runtime.criu import read_image_entries

    entries = read_image_entries(path, "cgroup_entry", "cgroup_pb2")
    if len(entries) != 1:
        raise ArchiveError(f"criu image {path.name} of the checkpoint holds {len(entries)} cgroup entries, expected 1")
    entry = entries[0]
    root = "/" + CGROUP_DIR
    namespaced = any(ctl.cgns_prefix for cg_set in entry.sets for ctl in cg_set.ctls)
    for cg_set in entry.sets:
        for ctl in cg_set.ctls:
            inner = ctl.path[ctl.cgns_prefix:] if ctl.cgns_prefix else ""
            if inner not in ("", "/"):
                raise Unsupported("podman export", f"a task is in the cgroup {inner} below the container's ({ctl.name or 'cgroup2'})",
                                  hint="podman restores a container's tasks into its one cgroup")
            ctl.path = root
            if namespaced:
                ctl.cgns_prefix = len(root)
            else:
                ctl.ClearField("cgns_prefix")
    for controller in entry.controllers:
        del controller.dirs[:]
        controller.dirs.add(dir_name=CGROUP_DIR)
    raw = entry.SerializeToString()
    return path.read_bytes()[:_MAGIC_BYTES] + struct.pack("<I", len(raw)) + raw


DEV_NULL = "/dev/null"  # runc's one key for every masked file (libcontainer addMaskPaths / its restore)
MOUNTPOINTS_GLOB = "mountpoints-*.img"


def rekey_mounts(path: Path, masked: frozenset[str], binds: dict[str, str] | None = None) -> bytes | None:
    """A ``mountpoints-*.img`` whose external binds over ``masked`` files are keyed ``/dev/null``,
    as runc dumps them and restores them (a container pymigrate imported from podman keeps every
    engine bind keyed by its destination: migrate/interop/import_mounts.py); None when nothing
    changes. ``binds``: pymigrate's keys of bind volumes (``volN``) -> their destinations, runc's
    keys for them. Every other key (runc's own: the destination) stays."""
    from runtime.criu import read_image_entries

    entries = read_image_entries(path, "mnt_entry", "mnt_pb2")
    changed = False
    for entry in entries:
        if not entry.HasField("ext_key"):
            continue
        new = DEV_NULL if entry.ext_key in masked else (binds or {}).get(entry.ext_key, entry.ext_key)
        if new != entry.ext_key:
            entry.ext_key = new
            changed = True
    if not changed:
        return None
    body = b"".join(struct.pack("<I", len(raw)) + raw for raw in (e.SerializeToString() for e in entries))
    return path.read_bytes()[:_MAGIC_BYTES] + body


def init_rlimits(images_dir: Path) -> list[tuple[int, int]]:
    """The dumped init's (soft, hard) rlimits by resource number (its core image); [] if unreadable."""
    from runtime.criu import read_first_entry

    try:
        tree = read_first_entry(images_dir / "pstree.img", "pstree_entry", "pstree_pb2")
        core = read_first_entry(images_dir / f"core-{tree.pid}.img", "core_entry", "core_pb2") if tree is not None else None
    except (OSError, ImportError, ValueError):
        return []
    if core is None or not core.HasField("tc") or not core.tc.HasField("rlimits"):
        return []
    return [(r.cur, r.max) for r in core.tc.rlimits.rlimits]


def _link_or_copy(src: Path, dst: Path) -> None:
    """An image taken over unchanged: a hard link where it can be (pages are most of a checkpoint;
    nothing writes either name while the archive is packed), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def copy_images(images_dir: Path, dest: Path, *, netns_key: str, masked: frozenset[str] = frozenset(),
                binds: dict[str, str] | None = None) -> int:
    """CRIU's images from ``images_dir`` into ``dest`` (made here) as runc restores them (module
    docstring), ``descriptors.json`` beside them; returns how many netns images were re-keyed.
    ``masked``: the masked files of a container imported from podman, ``binds``: its bind volumes'
    keys (``rekey_mounts``).

    Raises:
        ArchiveError: a netns image that cannot be read.
    """
    dest.mkdir(mode=0o700)
    rekeyed = 0
    for src in sorted(images_dir.iterdir()):
        if not src.is_file() or src.is_symlink() or src.name in _LEFT_OUT:
            continue
        if src.name.startswith("netns-") and src.name.endswith(".img"):
            try:
                changed = rekey_netns(src.read_bytes(), netns_key, RUNC_NETNS_KEY)
            except ValueError as exc:
                raise ArchiveError(f"cannot read criu image {src.name} of the checkpoint: {exc}") from None
            if changed is not None:
                (dest / src.name).write_bytes(changed)
                rekeyed += 1
                continue
        if src.name == CGROUP_IMAGE:
            (dest / src.name).write_bytes(rekey_cgroups(src))
            continue
        if (masked or binds) and src.match(MOUNTPOINTS_GLOB):
            rekeyed_mounts = rekey_mounts(src, masked, binds)
            if rekeyed_mounts is not None:
                (dest / src.name).write_bytes(rekeyed_mounts)
                continue
        _link_or_copy(src, dest / src.name)
    from migrate.interop.export_stdio import logs_to_pipes

    (dest / DESCRIPTORS).write_text(json.dumps(logs_to_pipes(dest, list(STDIO_PATHS))))
    return rekeyed
