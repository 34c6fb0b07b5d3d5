"""A pymigrate init's stdout/stderr become pipes to conmon in an export (``podman logs`` shows them).

A pymigrate container writes its output into files of its own root (/.pymigrate/log and log.err,
runtime/process.py); podman's containers write into pipes to conmon, which keeps ``podman logs``.
runc's restore reads ``descriptors.json`` (the init's fds 0-2) and, for each ``pipe:[N]``, gives
CRIU the new container's own stdio pipe as the inherit fd keyed ``pipe:[N]``: CRIU then restores
every fd of that pipe as that new pipe (criu/pipes.c, files.c ``inherit_fd_lookup_id``). So the
export's copy of the images is changed as migrate/interop/import_stdio.py changes podman's the
other way: the open files behind the init's fds 1 and 2 (``files.img``), when they are the log
files, become write ends of pipes with ids of their own, the fds using them (``fdinfo-*.img``,
the init's children's too: they share the open file) are retyped, and ``descriptors.json`` names
those pipes. Output written before the checkpoint stays in the log files (rootfs-diff.tar); what
comes after goes to conmon. Anything else on fds 1 and 2 (a file the command redirected to, a
terminal) is left as it is, and its descriptor entry is its path, which runc ignores.

Only the export's copy changes (written beside, renamed over: a hard-linked original stays).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

LOGS = ("/.pymigrate/log", "/.pymigrate/log.err")  # runtime.overlay's LOG_PATH_IN_CONTAINER, ERR_LOG_...
FILES_IMG = "files.img"
PIPE_ID_BASE = 0x7FFF0000  # pipe inode numbers of our own, far above any the dump holds


def _entries(path: Path, message: str, module: str) -> list[Any]:
    """The image's entries; [] when it is not there (a dump of nothing with such files)."""
    from runtime.criu import read_image_entries

    if not path.is_file():
        return []
    return read_image_entries(path, message, module)


def _init_fds(images_dir: Path) -> dict[int, int]:
    """The dumped init's fd -> file id, for fds 0-2 (its pstree entry, ids image, fdinfo image)."""
    from runtime.criu import read_first_entry

    if not (images_dir / "pstree.img").is_file():
        return {}
    tree = read_first_entry(images_dir / "pstree.img", "pstree_entry", "pstree_pb2")
    ids_img = images_dir / f"ids-{tree.pid}.img" if tree is not None else None
    ids = read_first_entry(ids_img, "task_kobj_ids_entry", "core_pb2") if ids_img is not None and ids_img.is_file() else None
    if ids is None:
        return {}
    return {fd.fd: fd.id for fd in _entries(images_dir / f"fdinfo-{ids.files_id}.img", "fdinfo_entry", "fdinfo_pb2") if fd.fd <= 2}


def logs_to_pipes(images_dir: Path, default: list[str]) -> list[str]:
    """Rewrite the images in ``images_dir`` (module docstring) and return ``descriptors.json``'s
    list; ``default`` (the three paths) where nothing is a log file or the images cannot tell."""
    from runtime.criu import write_image_entries

    files_img = images_dir / FILES_IMG
    entries = _entries(files_img, "file_entry", "fdinfo_pb2")
    fds = _init_fds(images_dir)
    if not entries or not fds:
        return list(default)
    types = entries[0].DESCRIPTOR.fields_by_name["type"].enum_type.values_by_name
    pipe_t, reg_t = types["PIPE"].number, types["REG"].number
    by_id = {e.id: e for e in entries}
    pipes: dict[int, int] = {}  # file id -> pipe id
    out = list(default)
    for fd in (1, 2):
        entry = by_id.get(fds.get(fd, -1))
        if entry is None or entry.type != reg_t or entry.reg.name not in LOGS:
            continue
        if entry.id not in pipes:
            pipes[entry.id] = PIPE_ID_BASE + len(pipes) + 1
            _to_pipe(entry, pipe_t, pipes[entry.id])
        out[fd] = f"pipe:[{pipes[entry.id]}]"
    if pipes:
        write_image_entries(files_img, entries)
        _retype_fds(images_dir, set(pipes), reg_t, pipe_t)
    return out


def _to_pipe(entry: Any, pipe_t: int, pipe_id: int) -> None:
    fown = type(entry.reg.fown)()
    fown.CopyFrom(entry.reg.fown)
    entry.ClearField("reg")
    entry.type = pipe_t
    pipe = entry.pipe
    pipe.id, pipe.pipe_id, pipe.flags = entry.id, pipe_id, os.O_WRONLY
    pipe.fown.CopyFrom(fown)


def _retype_fds(images_dir: Path, ids: set[int], reg_t: int, pipe_t: int) -> None:
    from runtime.criu import write_image_entries

    for path in sorted(images_dir.glob("fdinfo-*.img")):
        fds = _entries(path, "fdinfo_entry", "fdinfo_pb2")
        hit = [fd for fd in fds if fd.id in ids and fd.type == reg_t]
        for fd in hit:
            fd.type = pipe_t
        if hit:
            write_image_entries(path, fds)
