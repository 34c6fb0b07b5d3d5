"""``run --init``: tini as the container's PID 1 (what docker ships as docker-init).

A plain command as PID 1 neither reaps the orphans its children leave (zombies pile up) nor, having
no handlers, dies of SIGTERM (the kernel drops default-action signals sent to a pid namespace's
init), so ``stop`` waits for its timeout. tini runs the command as its child, forwards signals to
it, reaps every orphan and exits with the command's exit code.

The binary is the host's static build from Debian's ``tini`` package (scripts/setup.sh), bound
read-only onto an empty file at ``TARGET`` in the container's own /.pymigrate directory (it works in
any image, libc or not, and never becomes part of the container's files). To CRIU that bind is an
external mount, like a volume: a dump names it ``mnt[TARGET]:EXTERNAL_KEY`` and a restore maps the
key back to this host's binary, so a restored or migrated container keeps its init (the target
needs the package too; its absence is refused before anything is restored).
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.errors import Unsupported
from runtime.rootfs import MakeFile, Mount, MountOp
from runtime.spec import ContainerSpec
from runtime.syscalls import MS_BIND, MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REMOUNT

HOST_PATH = Path("/usr/bin/tini-static")  # Debian's tini package
TARGET = "/.pymigrate/init"  # inside the container (runtime.rootfs.LOG_DIR)
EXTERNAL_KEY = "pminit"  # CRIU's name for the bind at dump and restore


def host_path() -> Path:
    """The host's static tini.

    Raises:
        Unsupported: it is not installed.
    """
    if not os.access(HOST_PATH, os.X_OK):
        raise Unsupported("run --init", f"{HOST_PATH} (tini) is not installed on this host",
                          hint="install Debian's tini package (apt-get install tini; scripts/setup.sh does)")
    return HOST_PATH


def mount_ops() -> list[MountOp]:
    """The read-only bind of the host's tini at ``TARGET`` (after every other op of rootfs.plan:
    with --read-only, /.pymigrate is first bound on itself, and this bind goes on top of that)."""
    return [
        MakeFile(TARGET, 0o755),
        Mount(TARGET, None, str(host_path()), MS_BIND),
        Mount(TARGET, None, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV),
        Mount(TARGET, None, None, MS_PRIVATE),
    ]


def argv(command: tuple[str, ...]) -> tuple[str, ...]:
    """The init's argv: tini, then the container's command as its child."""
    return (TARGET, "--", *command)


def dump_externals(spec: ContainerSpec) -> tuple[str, ...]:
    """CRIU ``external`` entries a dump of ``spec``'s container needs for its init's bind."""
    return (f"mnt[{TARGET}]:{EXTERNAL_KEY}",) if spec.init else ()


def restore_externals(spec: ContainerSpec) -> tuple[str, ...]:
    """CRIU ``external`` entries mapping the dumped bind to this host's tini.

    Raises:
        Unsupported: ``spec`` has --init and this host has no tini.
    """
    return (f"mnt[{EXTERNAL_KEY}]:{host_path()}",) if spec.init else ()
