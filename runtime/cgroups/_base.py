"""What the v2 and v1/hybrid managers share: where a container's cgroup lives and how it goes away.

A container cgroup is ``<own cgroup>/<parent>/<name>`` in each hierarchy used, where ``<own
cgroup>`` is this process's cgroup in that hierarchy (from /proc/self/cgroup) and ``<parent>``
defaults to ``pymigrate``. Nothing is ever created outside that subtree, and no file directly in
a hierarchy's root directory is ever written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from runtime.cgroups._files import (
    CgroupFs,
    make_dirs,
    remove_if_empty,
    remove_tree,
    sigkill_until_empty,
    validate_name,
)
from runtime.cgroups._interface import CgroupInfo
from runtime.cgroups._layout import Hierarchy
from runtime.errors import CgroupError

log = logging.getLogger(__name__)


class BaseManager:
    """Directory bookkeeping over a set of hierarchies; subclasses add the controller files."""

    mode: str

    def __init__(self, hierarchies: list[Hierarchy], parent: PurePosixPath, fs: CgroupFs) -> None:
        if not hierarchies:
            raise CgroupError("no cgroup hierarchy to place containers in")
        self._hierarchies = {h.name: h for h in hierarchies}
        self._parent = parent
        self._fs = fs

    @property
    def parent(self) -> PurePosixPath:
        return self._parent

    def parent_dirs(self) -> dict[str, Path]:
        """Hierarchy name -> ``<own>/<parent>`` (the shared intermediate directory)."""
        return {n: h.own_dir.joinpath(*self._parent.parts) for n, h in self._hierarchies.items()}

    def _dirs(self, name: str) -> dict[str, Path]:
        validate_name(name)
        return {n: h.own_dir.joinpath(*self._parent.parts, name) for n, h in self._hierarchies.items()}

    def _existing_dirs(self, name: str) -> dict[str, Path]:
        return {n: d for n, d in self._dirs(name).items() if self._fs.exists(d)}

    def _require(self, name: str) -> dict[str, Path]:
        dirs = self._dirs(name)
        missing = [str(d) for d in dirs.values() if not self._fs.exists(d)]
        if missing:
            raise CgroupError(f"cgroup {name} does not exist: missing {', '.join(missing)}")
        return dirs

    def info(self, name: str) -> CgroupInfo:
        return CgroupInfo(name=name, dirs=self._require(name))

    def exists(self, name: str) -> bool:
        dirs = self._dirs(name)
        return any(self._fs.exists(d) for d in dirs.values())

    def _make(self, name: str) -> dict[str, Path]:
        """mkdir the container cgroup in every hierarchy; undo on failure."""
        dirs = self._dirs(name)
        existing = [str(d) for d in dirs.values() if self._fs.exists(d)]
        if existing:
            raise CgroupError(
                f"cgroup {name} already exists at {', '.join(existing)}",
                hint="a previous run may have left it behind; destroy it first",
            )
        made: list[Path] = []
        try:
            for hname, h in self._hierarchies.items():
                make_dirs(self._fs, h.own_dir, self._parent)
                make_dirs(self._fs, h.own_dir, self._parent / name)
                made.append(dirs[hname])
        except BaseException:
            for d in made:
                try:
                    remove_tree(self._fs, d, cgroup=name)
                except CgroupError as exc:  # rollback path: keep the first error
                    log.warning("rollback of cgroup %s: %s", name, exc)
            raise
        log.debug("cgroup %s created: %s", name, dirs)
        return dirs

    def _kill_and_remove(self, name: str, timeout_s: float, kill_first: Callable[[dict[str, Path]], None]) -> None:
        dirs = self._existing_dirs(name)
        if not dirs:
            return
        kill_first(dirs)
        # stragglers: a pid that is in one hierarchy only, or a fork racing cgroup.kill
        sigkill_until_empty(self._fs, list(dirs.values()), cgroup=name, timeout_s=timeout_s)
        for d in dirs.values():
            remove_tree(self._fs, d, cgroup=name)
        for hname, h in self._hierarchies.items():
            if hname not in dirs:
                continue
            # Remove our intermediate directories bottom-up while empty; stop below our own
            # cgroup. Another container may still use them (EBUSY), which is fine.
            parts = list(self._parent.parts)
            while parts:
                if not remove_if_empty(self._fs, h.own_dir.joinpath(*parts)):
                    break
                parts.pop()
        log.debug("cgroup %s destroyed", name)
