"""The mounts of a foreign checkpoint's images, mapped onto this host (``podman_import``).

CRIU restores a container's mount tree from its ``mountpoints-*.img``: proc, sysfs, the /dev tmpfs
(with its content), devpts, mqueue and tmpfs mounts it makes itself; a bind mount whose source
was outside the container was dumped *external* under a key, and a restore must name a source on
this host for each key. runc (so podman and CRI-O) keys those binds by their destination
(``/etc/hosts``, ``/etc/resolv.conf``, ``/etc/hostname``, ``/run/.containerenv``, ``/dev/shm``,
every cgroup controller's bind under ``/sys/fs/cgroup`` on a cgroup-v1 host, ``/sys/fs/cgroup``
itself on v2) and masked files (``/proc/keys`` ...) by ``/dev/null``.

Each is given a source of pymigrate's own, never one named by the archive:

=====================  ===============================================================
engine files           files written here in the container's dir (``ENGINE_DIR``): hosts
                       with the container's new address, this host's resolv.conf, hostname
/dev/shm               a directory there (``devshm-checkpoint.tar``'s content)
cgroup binds           the container's own cgroup dirs; a hierarchy pymigrate does not
                       manage gets an empty directory (read-only mounts are required)
masked files           the host's ``/dev/null`` (what runc gives them)
volumes                the directories given with ``restore --volume HOST:TARGET``
=====================  ===============================================================

Anything else is refused before anything runs, naming the mount. The destinations (volumes
apart) are recorded in the spec (``ContainerSpec.engine_mounts``): every later dump declares them
external again (``mnt[DEST]:DEST``) and every later restore maps them the same way.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from runtime.errors import InvalidSpec, Unsupported

ENGINE_DIR = "engine-mounts"  # in the container's state dir
ENGINE_FILES = {"/etc/hosts": "hosts", "/etc/resolv.conf": "resolv.conf", "/etc/hostname": "hostname",
                "/run/.containerenv": ".containerenv"}
SHM = "/dev/shm"
SHM_DIR = "shm"
EMPTY_DIR = "cgroup-empty"  # the source of a cgroup hierarchy pymigrate does not manage
CGROUP_ROOT = "/sys/fs/cgroup"
DEV_NULL = "/dev/null"
MS_RDONLY = 1
MNT_IMAGE_GLOB = "mountpoints-*.img"


@dataclass(frozen=True)
class ImageMount:
    """One mount of the images (only the fields the mapping reads)."""

    mnt_id: int
    parent_mnt_id: int
    mountpoint: str  # inside the container
    ext_key: str | None  # the key of an external bind, else None
    read_only: bool


@dataclass(frozen=True)
class External:
    """An external mount of the images and what this host gives it."""

    key: str  # CRIU's key in the images
    dest: str  # the mountpoint inside the container
    kind: str  # "file" | "shm" | "cgroup" | "null" | "volume"


def read_mounts(images_dir: Path) -> list[ImageMount]:
    """The mounts of every mount namespace image in ``images_dir``."""
    from runtime.criu import read_image_entries

    mounts = []
    for path in sorted(images_dir.glob(MNT_IMAGE_GLOB)):
        try:
            entries = read_image_entries(path, "mnt_entry", "mnt_pb2")
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: a malformed image
            raise InvalidSpec("checkpoint", f"cannot read the mount image {path.name}: {exc}") from None
        for e in entries:
            key = e.ext_key if e.HasField("ext_key") and e.ext_key else None
            if not e.mountpoint.startswith("/") or os.path.normpath(e.mountpoint) != e.mountpoint:
                # the mapping matches destinations by prefix: /sys/fs/cgroup/../../etc must not pass as a cgroup bind
                raise InvalidSpec("mounts", f"the mount image {path.name} has a mountpoint that is not a clean absolute path: {e.mountpoint!r}")
            mounts.append(ImageMount(e.mnt_id, e.parent_mnt_id, e.mountpoint, key, bool(e.flags & MS_RDONLY)))
    if len({m.mountpoint for m in mounts if m.mountpoint == "/"}) != 1 or len(list(images_dir.glob(MNT_IMAGE_GLOB))) != 1:
        raise InvalidSpec("checkpoint", "the images must describe exactly one mount namespace with one root mount",
                          hint="pymigrate imports single containers, not pods or nested mount namespaces")
    return mounts


def kind_of(dest: str, volume_targets: Iterable[str] = ()) -> str | None:
    """What pymigrate mounts at ``dest`` (module docstring), None if nothing."""
    if dest in set(volume_targets):
        return "volume"
    if dest in ENGINE_FILES:
        return "file"
    if dest == SHM:
        return "shm"
    if dest == CGROUP_ROOT or dest.startswith(CGROUP_ROOT + "/"):
        return "cgroup"
    if dest.startswith(("/proc/", "/sys/")):
        return "null"  # a masked file (maskedPaths): runc binds /dev/null over it
    return None


def plan(mounts: Iterable[ImageMount], volume_targets: Iterable[str] = ()) -> tuple[External, ...]:
    """The externals of ``mounts`` with what each becomes here.

    Raises:
        Unsupported: an external mount pymigrate cannot give a source (named), or a key that two
            mounts needing different sources share.
        InvalidSpec: a cgroup bind that is not read-only (the container could change its own limits).
    """
    targets = tuple(volume_targets)
    out: list[External] = []
    by_key: dict[str, External] = {}
    for m in mounts:
        if m.ext_key is None:
            continue
        kind = kind_of(m.mountpoint, targets)
        if kind is None or (kind == "null" and m.ext_key not in (DEV_NULL, m.mountpoint)):
            raise Unsupported(f"import of the bind mount at {m.mountpoint}",
                              f"its source (key {m.ext_key!r}) was outside the container and pymigrate has no source for it",
                              hint=f"if it is a volume, map it: restore --import FILE --volume HOSTDIR:{m.mountpoint}")
        if kind == "cgroup" and not m.read_only:
            raise InvalidSpec("mounts", f"the cgroup bind at {m.mountpoint} is writable: the container could change its own limits",
                              hint="only read-only cgroup mounts (runc's default) are imported")
        ext = External(m.ext_key, m.mountpoint, kind)
        seen = by_key.setdefault(m.ext_key, ext)
        if (seen.kind, seen.dest if kind != "null" else "") != (kind, ext.dest if kind != "null" else ""):
            raise Unsupported(f"import of the bind mounts at {seen.dest} and {m.mountpoint}",
                              f"both use the key {m.ext_key!r} but need different sources here")
        out.append(ext)
    return tuple(out)


def engine_mounts(externals: Iterable[External]) -> tuple[str, ...]:
    """The destinations to record in ``ContainerSpec.engine_mounts`` (volumes are recorded as volumes)."""
    return tuple(sorted({e.dest for e in externals if e.kind != "volume"}))


def source_of(ext: External, cdir: Path, cgroup_dirs: Mapping[str, Path], volumes: Mapping[str, str]) -> str:
    """The host path mounted for ``ext``: always under ``cdir``, a cgroup dir of the container's
    own, the container's volume source, or /dev/null."""
    if ext.kind == "file":
        return str(cdir / ENGINE_DIR / ENGINE_FILES[ext.dest])
    if ext.kind == "shm":
        return str(cdir / ENGINE_DIR / SHM_DIR)
    if ext.kind == "volume":
        return volumes[ext.dest]
    if ext.kind == "null":
        return DEV_NULL
    name = ext.dest[len(CGROUP_ROOT):].lstrip("/")
    if not name:
        own = cgroup_dirs.get("unified")
    else:
        own = next((cgroup_dirs[c] for c in name.split(",") if c in cgroup_dirs), None)
    return str(own) if own is not None else str(cdir / ENGINE_DIR / EMPTY_DIR)


def externals_for(exts: Iterable[External], cdir: Path, cgroup_dirs: Mapping[str, Path],
                  volumes: Mapping[str, str]) -> tuple[str, ...]:
    """CRIU's ``external`` entries for a restore: ``mnt[KEY]:SOURCE``, once per key (``plan``
    checked that the mounts sharing a key share their source)."""
    entries = {e.key: f"mnt[{e.key}]:{source_of(e, cdir, cgroup_dirs, volumes)}" for e in exts}
    return tuple(entries.values())


def write_engine_files(cdir: Path, *, hostname: str, name: str, ip: str | None, container_id: str) -> None:
    """The files behind the engine binds, written into ``cdir/ENGINE_DIR`` (made here, 0700)."""
    base = cdir / ENGINE_DIR
    base.mkdir(mode=0o700, exist_ok=True)
    (base / SHM_DIR).mkdir(mode=0o1777, exist_ok=True)
    os.chmod(base / SHM_DIR, 0o1777)
    (base / EMPTY_DIR).mkdir(mode=0o555, exist_ok=True)
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if ip:
        hosts += f"{ip}\t{hostname or name} {name}\n"
    files = {"hosts": hosts, "hostname": f"{hostname or name}\n", "resolv.conf": _resolv_conf(),
             ".containerenv": f'engine="pymigrate"\nname="{name}"\nid="{container_id}"\n'}
    for leaf, text in files.items():
        fd = os.open(base / leaf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)


def _resolv_conf() -> str:
    """This host's resolvers, as a container may use them: loopback ones cannot be reached from
    the container's network namespace, so they are left out (docker's rule)."""
    try:
        with open("/etc/resolv.conf") as f:
            lines = f.read(64 << 10).splitlines()
    except OSError:
        return ""
    kept = [ln for ln in lines if not (ln.split()[:1] == ["nameserver"] and ln.split()[1:2]
                                      and ln.split()[1].startswith(("127.", "::1")))]
    return "\n".join(kept) + "\n"


# --- the container's side ---------------------------------------------------------------------


def prepare_container_dir(rt: Any, spec: Any, devshm: Path | None) -> Path:
    """The engine files in the container's dir, /dev/shm's content moved there; the dir."""
    stored = rt.store.load_spec(spec.container_id)  # with the address the restore leased
    cdir = Path(rt.store.dir(spec.container_id))
    if devshm is not None:
        (cdir / ENGINE_DIR).mkdir(mode=0o700, exist_ok=True)
        os.rename(devshm, cdir / ENGINE_DIR / SHM_DIR)  # both under the state root
    write_engine_files(cdir, hostname=stored.hostname, name=stored.name, ip=stored.ip, container_id=stored.container_id)
    return cdir


def container_externals(rt: Any, spec: Any, cdir: Path, exts: tuple[External, ...]) -> tuple[str, ...]:
    """``externals_for`` with the container's own cgroup dirs and volume sources."""
    dirs = rt.rt.cgroups(spec.cgroup_parent).info(spec.container_id).dirs
    volumes = {v.target: v.source for v in spec.volumes}
    return externals_for(exts, cdir, dirs, volumes)


def engine_mounts_request(rt: Any, spec: Any, root: Path, request: Any) -> Any:
    """A restore of our own checkpoint of an imported container: its engine binds (dumped keyed
    by destination, ``ContainerSpec.engine_mounts``) mapped onto this container's files and
    cgroups (migrate/restore.py calls this)."""
    wanted = set(spec.engine_mounts)
    image_mounts = [m for m in read_mounts(request.images_dir) if m.mountpoint in wanted]
    exts = plan(image_mounts)
    missing = wanted - {e.dest for e in exts}
    if missing:
        raise InvalidSpec("engine_mounts", f"the checkpoint's images have no external mount at {', '.join(sorted(missing))}")
    cdir = prepare_container_dir(rt, spec, None)
    return dataclasses.replace(request, external=request.external + container_externals(rt, spec, cdir, exts))


# --- mountpoints in the container's root ------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def make_mountpoints(root: Path, mounts: Iterable[ImageMount], files: Iterable[str]) -> None:
    """Make the mountpoints of the mounts on the root mount (``root``: the merged overlay) that do
    not exist yet, as runc does before a restore: CRIU mounts onto them but does not create them.
    ``files``: destinations that are file binds. Never follows a symlink: a path through one
    (the archive's rootfs-diff made it) is refused.

    Raises:
        InvalidSpec: a mountpoint path through a symlink, or of the wrong type.
    """
    mounts = list(mounts)
    root_ids = {m.mnt_id for m in mounts if m.mountpoint == "/"}
    file_dests = set(files)
    for m in mounts:
        if m.parent_mnt_id in root_ids and m.mountpoint != "/":
            ensure_path(root, m.mountpoint, file=m.mountpoint in file_dests)


def ensure_path(root: Path, dest: str, *, file: bool, mode: int | None = None) -> None:
    """``dest`` (absolute, inside ``root``) made if missing: its directories, then a directory or
    an empty file (``mode``: 0755 / 0644 by default); every component opened with O_NOFOLLOW
    from ``root``'s fd, an existing one checked to be a directory or a regular file."""
    if mode is None:
        mode = 0o644 if file else 0o755
    parts = [p for p in dest.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise InvalidSpec("mounts", f"mountpoint {dest!r} is not a clean absolute path")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for i, part in enumerate(parts[:-1]):
            fd = _descend(fd, part, "/" + "/".join(parts[: i + 1]), dest)
        _make_leaf(fd, parts[-1], dest, file=file, mode=mode)
    finally:
        os.close(fd)


def _descend(fd: int, part: str, path: str, dest: str) -> int:
    try:
        os.mkdir(part, 0o755, dir_fd=fd)
    except FileExistsError:
        pass
    try:
        nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
    except OSError:  # ELOOP / ENOTDIR: a symlink or a file where a directory must be
        raise InvalidSpec("mounts", f"mountpoint {dest} passes through {path}, which is not a directory (a symlink?)",
                          hint="the checkpoint's root changes put a link where a mount goes; it is not restored") from None
    os.close(fd)
    return nfd


def _make_leaf(fd: int, leaf: str, dest: str, *, file: bool, mode: int) -> None:
    try:
        st = os.stat(leaf, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        if file:
            made = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd)
            os.fchmod(made, mode & 0o666)  # not the umask's
            os.close(made)
        else:
            os.mkdir(leaf, mode, dir_fd=fd)
        return
    want = stat.S_ISREG if file else stat.S_ISDIR
    if not want(st.st_mode):
        raise InvalidSpec("mounts", f"mountpoint {dest} exists but is not a {'file' if file else 'directory'}",
                          hint="the checkpoint's root changes replaced a mountpoint; it is not restored")
