"""``cp``: files between a container and the host, as a tar stream through a child that works in
the container's root (enter.py), never by resolving a container path on the host.

``copy_out``: the child packs the source inside the container, this process unpacks on the host
(or passes the tar to a file object: ``cp NAME:SRC -``). ``copy_in``: this process packs the host
source (or passes a tar from stdin through: ``cp - NAME:DEST``), the child unpacks inside.
Docker's path rules are in paths.py, the extraction rules in tarstream.py.

Which containers: running or paused (their mount namespace: volumes included), created or
exited (their root is still mounted at merged/; their volumes are attached in the child, except a
``--userns`` container's), checkpointed (read only: its layer mounted read-only in the
child; a restore takes the files from the checkpoint, so writing into the container would be
lost or would not match the dumped process state).

Ownership (docker's): copied into a container, files belong to root (of the container: a
``--userns`` container's root is its base id), or with ``archive`` (``-a``) keep the uid/gid the
tar has (shifted likewise). Copied out, they belong to the caller, or with ``archive`` keep the
container's ids (as the container sees them). Relative container paths are below its working dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterator

from runtime.container_files import enter, paths, tarstream
from runtime.errors import ContainerError, InvalidArgument, InvalidState, Unsupported

OVERFLOW_ID = 65534  # a host id outside a --userns container's range shows as nobody


@dataclass(frozen=True)
class CopyResult:
    container: str
    source: str  # as copied: the container path made absolute, or the host path; "-" for a stream
    destination: str


def copy_out(rt: Any, name: str, src_path: str, dest: str | IO[bytes], *, archive: bool = False,
             follow: bool = False) -> CopyResult:
    """Copy ``src_path`` of container ``name`` to host path ``dest`` (or write its tar to ``dest``,
    a binary file object). See the module doc for the rules."""
    c = rt.container(name)
    src = paths.source(paths.container_path(src_path, c.spec.workdir))
    with _root(rt, c, write=False) as root:
        base, size = _id_range(c, root)
        skip = enter.pseudo_mount_points(root.pid) if isinstance(root, enter.LiveRoot) else ()
        r, w = os.pipe2(os.O_CLOEXEC)

        def pack() -> None:
            with os.fdopen(w, "wb") as out:
                tarstream.write_tree(out, src, follow=follow, skip_below=skip,
                                     ids=lambda u, g: (_to_view(u, base, size), _to_view(g, base, size)))

        def unpack() -> None:
            with os.fdopen(r, "rb") as stream:
                if not isinstance(dest, str):
                    shutil.copyfileobj(stream, dest)
                    return
                owner = (lambda u, g: (u, g)) if archive else (lambda u, g: (os.getuid(), os.getgid()))
                tarstream.extract(stream, src.top, lambda is_dir: _host_plan(dest, is_dir, src), ids=owner, host=True)

        child = _spawn(root, pack, c.name, parent_end=r, child_end=w)
        _together(child, unpack, child_writes=True)
    return CopyResult(c.name, src.path, dest if isinstance(dest, str) else "-")


def copy_in(rt: Any, name: str, src: str | IO[bytes], dest_path: str, *, archive: bool = False,
            follow: bool = False) -> CopyResult:
    """Copy host path ``src`` (or the tar read from ``src``, a binary file object: it must go
    into an existing directory) into container ``name`` at ``dest_path``."""
    c = rt.container(name)
    dest = paths.container_path(dest_path, c.spec.workdir)
    source = _host_source(src) if isinstance(src, str) else None
    src_is_dir = source is not None and _is_dir(source.path, follow)
    with _root(rt, c, write=True) as root:
        base, size = _id_range(c, root)
        owner = (lambda u, g: (_from_view(u, base, size), _from_view(g, base, size))) if archive else (lambda u, g: (base, base))
        r, w = os.pipe2(os.O_CLOEXEC)

        def unpack() -> None:
            plan = (lambda is_dir: _container_plan(dest, is_dir, src_is_dir, source))
            with os.fdopen(r, "rb") as stream:
                tarstream.extract(stream, source.top if source else None, plan, ids=owner, host=False)

        def pack() -> None:
            with os.fdopen(w, "wb") as out:
                if not isinstance(src, str):
                    shutil.copyfileobj(src, out)
                elif source is not None:
                    tarstream.write_tree(out, source, follow=follow, ids=lambda u, g: (u, g))

        child = _spawn(root, unpack, c.name, parent_end=w, child_end=r)
        _together(child, pack, child_writes=False)
    return CopyResult(c.name, source.path if source else "-", dest)


def _spawn(root: enter.Root, work: Callable[[], None], name: str, *, parent_end: int, child_end: int) -> enter.Child:
    """The child with its end of the pipe; this process keeps the other (both closed on failure)."""
    try:
        child = enter.spawn(root, work, what=f"container {name}", close_in_child=(parent_end,))
    except BaseException:
        os.close(parent_end)
        os.close(child_end)
        raise
    os.close(child_end)
    return child


def _id_range(c: Any, root: enter.Root) -> tuple[int, int]:
    """(base, size) of the id shift between the files as the child sees them and the container's
    ids: a --userns container's range when the child sees host ids (stopped: its layers from the
    host), base 0 when the child is inside its user namespace (the kernel maps them)."""
    if not c.spec.userns_size:
        return 0, 0
    if isinstance(root, enter.LiveRoot):
        return 0, c.spec.userns_size
    return c.spec.userns_base, c.spec.userns_size


def _together(child: enter.Child, work: Callable[[], None], *, child_writes: bool) -> None:
    """Run this side's half while the child runs its own. When this side fails, the side that
    stopped first has the cause: the child when it writes the stream (this side then only saw it
    empty or cut) or stopped reading it (a broken pipe here), else this side."""
    try:
        work()
    except (tarfile.TarError, BrokenPipeError, ContainerError, OSError) as exc:
        child.finish(parent_failed=True, quiet=not (child_writes or isinstance(exc, BrokenPipeError)))
        if isinstance(exc, tarfile.TarError):
            raise ContainerError(f"cannot copy files of {child.what}: the tar stream is not valid ({exc})") from None
        if isinstance(exc, BrokenPipeError):
            raise ContainerError(f"cannot copy files of {child.what}: the helper stopped reading") from None
        raise
    child.finish()


@contextlib.contextmanager
def _root(rt: Any, c: Any, *, write: bool) -> Iterator[enter.Root]:
    """Where the child works for container ``c``; a checkpointed one's scratch dir is held
    (runtime/scratch.py) for as long as the copy runs."""
    from runtime import scratch

    root = _root_of(rt, c, write=write)
    if root is not None:
        yield root
        return
    from runtime import upperfs

    layout = upperfs.Layout.of(rt.store.dir(c.container_id))
    lowers = rt.images.get(c.spec.image_digest).lowers
    rt.paths.tmp.mkdir(parents=True, exist_ok=True)
    with scratch.scratch_dir(rt.paths.tmp, "view-cp-") as work:
        yield enter.LayerRoot(upper=layout.upper, lowers=lowers, scratch=work, image=layout.image)


def _root_of(rt: Any, c: Any, *, write: bool) -> enter.Root | None:
    """A live or mounted root; None: a checkpointed container's layers must be mounted."""
    from runtime import overlay

    if c.is_live:
        if c.state.pid not in rt.cgroups(c.spec.cgroup_parent).pids(c.container_id):
            raise ContainerError(f"container {c.name}: its init {c.state.pid} is not in its cgroup",
                                 hint="it may have just exited; try again")
        return enter.LiveRoot(c.state.pid, userns=bool(c.spec.userns_size))
    cdir = rt.store.dir(c.container_id)
    if overlay.is_mounted(cdir / "merged"):
        # a --userns container's volumes show through its idmapped binds only: left out when stopped
        volumes = () if c.spec.userns_size else tuple((v.source, v.target, v.readonly) for v in c.spec.volumes)
        return enter.MountedRoot(cdir / "merged", volumes)
    if c.state.checkpointed is None:
        raise ContainerError(f"cannot copy files of container {c.name}: its root file system is not mounted",
                             hint="a host reboot unmounts it; remove the container and run it again")
    if write:
        exc = InvalidState(c.name, "copy files into", "checkpointed", ("running", "paused", "created", "exited"))
        exc.hint = "a restore takes the files from the checkpoint; restore it first, then copy"
        raise exc
    if c.spec.userns_size:
        raise Unsupported("copying out of a checkpointed --userns container", "its layers are mounted only through its user namespace",
                          hint="restore it first, then copy")
    return None


def _host_source(text: str) -> paths.Source:
    absolute = os.path.abspath(text)
    if text.endswith("/.") and not absolute.endswith("/."):
        absolute = absolute.rstrip("/") + "/."
    elif text.endswith("/") and not absolute.endswith("/"):
        absolute += "/"
    src = paths.source(absolute)
    if not os.path.lexists(src.path):
        raise InvalidArgument(f"no such file or directory: {text}")
    if src.must_be_dir and not os.path.isdir(src.path):
        raise InvalidArgument(f"source {text} is not a directory: expected one (the path ends in '/')")
    return src


def _is_dir(path: str, follow: bool) -> bool:
    return stat.S_ISDIR((os.stat if follow else os.lstat)(path).st_mode)


def _host_plan(dest: str, src_is_dir: bool, src: paths.Source) -> paths.Extraction:
    absolute = os.path.abspath(dest)
    if dest.endswith("/") and absolute != "/":
        absolute += "/"  # "DEST/" must be a directory (abspath drops the slash)
    return _plan(absolute, src_is_dir, src)


def _container_plan(dest: str, first_is_dir: bool, src_is_dir: bool, src: paths.Source | None) -> paths.Extraction:
    """Runs in the child, inside the container's root."""
    if src is None:
        if not os.path.isdir(dest):
            raise InvalidArgument(f"destination {dest} must be an existing directory to unpack a tar stream into")
        return paths.Extraction(os.path.normpath(dest))
    return _plan(dest, src_is_dir, src)


def _plan(dest: str, src_is_dir: bool, src: paths.Source) -> paths.Extraction:
    kind: paths.DestKind = "dir" if os.path.isdir(dest) else "file" if os.path.lexists(dest) else "missing"
    parent = os.path.dirname(os.path.normpath(dest)) or "/"
    return paths.plan_extraction(dest, kind, os.path.isdir(parent), src_is_dir, src)


def _to_view(host_id: int, base: int, size: int) -> int:
    if not size:
        return host_id
    return host_id - base if base <= host_id < base + size else OVERFLOW_ID


def _from_view(view_id: int, base: int, size: int) -> int:
    if not size:
        return view_id
    return base + view_id if view_id < size else base + OVERFLOW_ID % size
