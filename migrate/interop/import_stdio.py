"""A foreign container's stdout/stderr become pymigrate's log files (``podman_import``).

Under podman or CRI-O, the init's stdout and stderr are pipes to conmon (``descriptors.json``:
``["/dev/null", "pipe:[N]", "pipe:[M]"]``); runc restores them with CRIU's ``inherit_fd``, giving
new pipes. A pymigrate container writes its output into files of its own root instead
(``/.pymigrate/log`` and ``log.err``, which ``logs`` reads and which every later dump carries as
plain files on the root mount). An inherited fd cannot be one: it would be opened outside the
container's mount namespace, which CRIU makes only while restoring, and the next dump could not
name its mount. So the images themselves are changed before the restore: each such pipe's file
entry (``files.img``) becomes a regular file entry for the log on the container's root mount,
opened ``O_WRONLY|O_APPEND`` like a native container's, and the fds using it (``fdinfo-*.img``)
are retyped. CRIU then opens the log file inside the restored mount namespace itself.

Only write ends are rewritten: a pipe the container reads (``podman run -i``: stdin from conmon)
is refused, since no one would write to it here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtime.errors import Unsupported

FILES_IMG = "files.img"
DESCRIPTORS = "descriptors.json"
FDINFO_GLOB = "fdinfo-*.img"
LOG = "/.pymigrate/log"  # runtime.overlay.LOG_PATH_IN_CONTAINER
ERR_LOG = "/.pymigrate/log.err"  # runtime.overlay.ERR_LOG_PATH_IN_CONTAINER
LOG_FLAGS = os.O_WRONLY | os.O_APPEND
MAX_DESCRIPTORS = 3  # runc records the init's stdin, stdout, stderr


def read_descriptors(images_dir: Path) -> list[str]:
    """runc's ``descriptors.json`` (what the init's fds 0, 1, 2 were), [] when absent.

    Raises:
        UnsafeMember: not a list of at most MAX_DESCRIPTORS strings.
    """
    from migrate.errors import UnsafeMember
    from migrate.interop.dump_fields import read_json

    data = read_json(images_dir, DESCRIPTORS, required=False)
    if data is None:
        return []
    if not isinstance(data, list) or len(data) > MAX_DESCRIPTORS or not all(isinstance(d, str) for d in data):
        raise UnsafeMember(f"checkpoint/{DESCRIPTORS}", f"expected a list of at most {MAX_DESCRIPTORS} strings")
    return data


def stdio_targets(descriptors: list[str]) -> dict[int, str]:
    """pipe id -> the log file it becomes, from runc's ``descriptors.json`` (fd 0, 1, 2). A path
    (``/dev/null``) is the container's own file: CRIU restores it as it is.

    Raises:
        Unsupported: a stdin pipe, or a descriptor that is neither a pipe nor a path.
    """
    out: dict[int, str] = {}
    for fd, what in enumerate(descriptors[:MAX_DESCRIPTORS]):
        if what.startswith("/"):
            continue
        if not (what.startswith("pipe:[") and what.endswith("]") and what[6:-1].isdigit()):
            raise Unsupported(f"import of a container whose fd {fd} is {what}",
                              "only pipes to the engine and files inside the container can be given back")
        if fd == 0:
            raise Unsupported("import of a container whose stdin is a pipe (podman run -i)",
                              "nothing would write to it here", hint="checkpoint a container run without -i")
        out.setdefault(int(what[6:-1]), (LOG, ERR_LOG)[fd - 1])
    return out


def pipes_to_logs(images_dir: Path, targets: dict[int, str], root_mnt_id: int) -> int:
    """Rewrite the images so the pipes ``targets`` names are the log files on the root mount
    ``root_mnt_id`` (module docstring); the number of file entries changed.

    Raises:
        Unsupported: the container holds the read end of one of those pipes.
    """
    from runtime.criu import read_image_entries, write_image_entries

    if not targets:
        return 0
    files_img = images_dir / FILES_IMG
    entries = read_image_entries(files_img, "file_entry", "fdinfo_pb2")
    if not entries:
        return 0
    types = entries[0].DESCRIPTOR.fields_by_name["type"].enum_type.values_by_name
    pipe_t, reg_t = types["PIPE"].number, types["REG"].number
    changed: set[int] = set()
    for entry in entries:
        if entry.type != pipe_t or entry.pipe.pipe_id not in targets:
            continue
        if (entry.pipe.flags & os.O_ACCMODE) != os.O_WRONLY:
            raise Unsupported(f"import of a container that reads pipe:[{entry.pipe.pipe_id}]",
                              "it is a pipe from the engine; nothing would write to it here")
        _to_regular(entry, reg_t, targets[entry.pipe.pipe_id], root_mnt_id)
        changed.add(entry.id)
    if changed:
        write_image_entries(files_img, entries)
        _retype_fds(images_dir, changed, pipe_t, reg_t)
    return len(changed)


def _to_regular(entry: Any, reg_t: int, name: str, mnt_id: int) -> None:
    fown = type(entry.pipe.fown)()
    fown.CopyFrom(entry.pipe.fown)
    entry.ClearField("pipe")
    entry.type = reg_t
    reg = entry.reg
    reg.id, reg.flags, reg.pos, reg.name, reg.mnt_id = entry.id, LOG_FLAGS, 0, name, mnt_id
    reg.fown.CopyFrom(fown)


def _retype_fds(images_dir: Path, ids: set[int], pipe_t: int, reg_t: int) -> None:
    from runtime.criu import read_image_entries, write_image_entries

    for path in sorted(images_dir.glob(FDINFO_GLOB)):
        fds = read_image_entries(path, "fdinfo_entry", "fdinfo_pb2")
        hit = [fd for fd in fds if fd.id in ids and fd.type == pipe_t]
        for fd in hit:
            fd.type = reg_t
        if hit:
            write_image_entries(path, fds)
