"""``LocalEngine``: the ``migrate.api.Engine`` for this host, over the embedded runtime.

Container and image methods delegate to ``runtime.Runtime`` and ``runtime.image_store`` and
convert to ``migrate.api`` dataclasses; checkpoint, restore and migration are wired by the
checkpoint work. ``engine_for(args)`` picks a local or a remote engine from CLI arguments.
Imports stay light: ``pymigrate run -d`` goes through here and its latency is benchmarked.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from migrate.api import (
    CheckpointInfo,
    CheckpointOptions,
    CheckpointResult,
    Engine,
    HostInfo,
    ImageInfo,
    MigrateOptions,
    MigrateResult,
    ProgressFn,
    RestoreOptions,
    RestoreResult,
    RunOptions,
)
from runtime.spec import ContainerInfo

if TYPE_CHECKING:  # pragma: no cover
    from runtime.runtime import Runtime

log = logging.getLogger(__name__)


def _image_info(image: Any) -> ImageInfo:
    return ImageInfo(name=image.name, digest=image.digest, size_bytes=image.size_bytes, created_at=image.created_at)


class LocalEngine:
    """Everything on this host, through the runtime of state root ``root``."""

    def __init__(self, root: Path | None = None) -> None:
        from runtime.runtime import Runtime

        self.runtime: Runtime = Runtime(root)
        self.root = self.runtime.paths.root

    # -- host -----------------------------------------------------------------------------------
    def host_info(self) -> HostInfo:
        raise NotImplementedError("host_info is wired by the checkpoint work")

    # -- images ---------------------------------------------------------------------------------
    def images(self) -> list[ImageInfo]:
        return [_image_info(i) for i in self.runtime.images.list()]

    def image_import(self, name: str, tarball: Path) -> ImageInfo:
        self.runtime.paths.ensure()
        return _image_info(self.runtime.images.import_tarball(name, Path(tarball)))

    def image_remove(self, name: str) -> None:
        self.runtime.images.remove(name)

    def image_build_busybox(self, name: str = "busybox") -> ImageInfo:
        self.runtime.paths.ensure()
        return _image_info(self.runtime.images.build_busybox(name))

    # -- containers -----------------------------------------------------------------------------
    def run(self, options: RunOptions) -> ContainerInfo:
        kwargs = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
        image = kwargs.pop("image")
        command = kwargs.pop("command")
        return self.runtime.run(image, command, **kwargs)

    def containers(self, all: bool = False) -> list[ContainerInfo]:
        return self.runtime.list(all=all)

    def inspect(self, name: str) -> ContainerInfo:
        return self.runtime.inspect(name)

    def stop(self, name: str, timeout_s: float = 10.0) -> ContainerInfo:
        return self.runtime.stop(name, timeout_s=timeout_s)

    def kill(self, name: str, signal: int = 9) -> None:
        self.runtime.kill(name, signal)

    def remove(self, name: str, force: bool = False) -> None:
        self.runtime.remove(name, force=force)

    def pause(self, name: str) -> ContainerInfo:
        return self.runtime.pause(name)

    def unpause(self, name: str) -> ContainerInfo:
        return self.runtime.unpause(name)

    def logs(self, name: str, follow: bool = False) -> Iterator[bytes]:
        return self.runtime.logs(name, follow=follow)

    def exec(self, name: str, argv: tuple[str, ...], env: tuple[str, ...] = (), workdir: str | None = None) -> int:
        """Run a process in the container with this process's stdio (local only)."""
        return self.runtime.exec(name, argv, env=env, workdir=workdir)

    def wait(self, name: str, timeout_s: float | None = None) -> int:
        return self.runtime.wait(name, timeout_s=timeout_s)

    # -- checkpoints and migration (wired by the checkpoint work) -------------------------------
    def checkpoint(self, name: str, options: CheckpointOptions, progress: ProgressFn | None = None) -> CheckpointResult:
        raise NotImplementedError("checkpoint is wired by the checkpoint work")

    def restore(self, options: RestoreOptions, progress: ProgressFn | None = None) -> RestoreResult:
        raise NotImplementedError("restore is wired by the checkpoint work")

    def checkpoints(self) -> list[CheckpointInfo]:
        raise NotImplementedError("checkpoints is wired by the checkpoint work")

    def checkpoint_remove(self, checkpoint_id: str) -> None:
        raise NotImplementedError("checkpoint_remove is wired by the checkpoint work")

    def migrate(self, name: str, options: MigrateOptions, progress: ProgressFn | None = None) -> MigrateResult:
        raise NotImplementedError("migrate is wired by the checkpoint work")


def engine_for(args: Any) -> Engine:
    """LocalEngine on ``args.root`` unless ``args.host`` names a remote daemon."""
    if getattr(args, "host", None) is None:
        return LocalEngine(getattr(args, "root", None))
    from migrate.client import RemoteEngine

    return RemoteEngine.from_args(args)
