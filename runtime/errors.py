"""Errors raised by the embedded container runtime.

Tree::

    ContainerError                  every runtime failure; ``hint`` carries advice for the user
    ├── ContainerNotFound           no container by that name/id in the state root
    │   └── VolumeNotFound          no named volume by that name (runtime/volumes.py)
    ├── ContainerExists             the name (or address) is already taken
    │   └── PortInUse               a host port to publish is taken (port, protocol, host_ip, holder)
    ├── InvalidState                operation illegal in the current state (has expected/actual)
    │   └── VolumeInUse             a named volume a container uses (names them) cannot go
    ├── InvalidArgument             bad user input: names, limits, addresses, volumes, commands
    │   ├── InvalidSpec             a container spec field (a manifest's, a peer's) refused; names it
    │   └── EventsLost              an event cursor older than the journal keeps (since, oldest)
    ├── Busy                        another operation holds the container or checkpoint (names it)
    ├── ImageError                  image store problems
    │   ├── ImageNotFound
    │   ├── UnsafeArchive           a tarball member that could escape or is not allowed (names it)
    │   │   └── ImageLimitExceeded  over an extraction budget (runtime.extract_limits): limit, value
    │   └── RegistryError           pull/push failures, one subclass per cause (runtime/registry.py)
    ├── Unsupported                 the host lacks a kernel or CRIU feature (names it, hint says how)
    ├── CgroupError                 cgroupfs refused or timed out
    │   └── FreezeTimeout           cgroup.events never reported the wanted frozen state
    ├── MountError                  a mount/pivot_root step failed
    ├── NetworkError                bridge, veth, address pool
    └── CriuError                   CRIU answered with an error (operation, errno, log path, log lines)
        ├── CriuUnreachable         CRIU could not be started or its RPC socket broke
        └── CriuTimeout             CRIU did not answer in time (it was killed; names the limit)

Messages are lower case without a final period and name the object and the expectation.
"""

from __future__ import annotations

from pathlib import Path


class ContainerError(Exception):
    """Base of every runtime error."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ContainerNotFound(ContainerError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no such container: {name}")
        self.name = name


class VolumeNotFound(ContainerNotFound):
    def __init__(self, name: str, *, hint: str | None = None) -> None:
        ContainerError.__init__(self, f"no such volume: {name}", hint=hint or "pymigrate volume ls lists them; run -v NAME:/path makes one")
        self.name = name


class ContainerExists(ContainerError):
    pass


class PortInUse(ContainerExists):
    """A host port ``-p`` asks for is published by another container or bound by a host process."""

    def __init__(self, port: int, protocol: str, host_ip: str, holder: str, *, hint: str | None = None) -> None:
        super().__init__(f"host port {host_ip or '0.0.0.0'}:{port}/{protocol} is already in use by {holder}", hint=hint)
        self.port = port
        self.protocol = protocol
        self.host_ip = host_ip
        self.holder = holder


class InvalidState(ContainerError):
    def __init__(self, container: str, operation: str, actual: str, expected: str | tuple[str, ...]) -> None:
        exp = expected if isinstance(expected, str) else " or ".join(expected)
        super().__init__(f"cannot {operation} container {container}: state is {actual}, expected {exp}")
        self.container = container
        self.operation = operation
        self.actual = actual
        self.expected = expected


class VolumeInUse(InvalidState):
    """A named volume that containers (running or stopped) use: ``users`` names them."""

    def __init__(self, volume: str, users: tuple[str, ...]) -> None:
        ContainerError.__init__(self, f"volume {volume} is in use by container {', '.join(users)}",
                                hint="remove the container first (pymigrate rm NAME)")
        self.container = users[0] if users else ""
        self.operation = "remove volume"
        self.actual = "in use"
        self.expected = "unused"
        self.volume = volume
        self.users = users


class InvalidArgument(ContainerError):
    pass


class InvalidSpec(InvalidArgument):
    """A container spec refused field by field: ``field`` is its path (``volumes[0].source``)."""

    def __init__(self, field: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field


class EventsLost(InvalidArgument):
    """Events after cursor ``since`` were rotated out of the journal (``oldest`` is the first kept):
    a watcher must relist what it tracks, then watch from now (runtime/events.py)."""

    def __init__(self, since: int, oldest: int) -> None:
        super().__init__(f"events after {since} were lost: the journal keeps events from {oldest} on",
                         hint="list the objects again, then watch without a cursor (or from the oldest kept)")
        self.since = since
        self.oldest = oldest


class Busy(ContainerError):
    """Another operation holds ``resource`` (a container name, a checkpoint id) right now."""

    def __init__(self, resource: str, operation: str, *, holder_pid: int = 0, hint: str | None = None) -> None:
        held = f" (pid {holder_pid})" if holder_pid else ""
        super().__init__(f"cannot {operation} {resource}: another operation holds it{held}", hint=hint)
        self.resource = resource
        self.operation = operation
        self.holder_pid = holder_pid


class ImageError(ContainerError):
    pass


class ImageNotFound(ImageError):
    def __init__(self, name: str, *, hint: str | None = None) -> None:
        super().__init__(f"no such image: {name}",
                         hint=hint or "pull, load or import one: pymigrate image pull REF | image load FILE | image import NAME TARBALL")
        self.name = name


class UnsafeArchive(ImageError):
    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"refusing archive member {member!r}: {reason}")
        self.member = member
        self.reason = reason


class ImageLimitExceeded(UnsafeArchive):
    """A tarball needs more than an extraction limit allows (``limit`` is the field name of
    ``runtime.extract_limits.ExtractLimits``, ``value`` its setting, ``actual`` what was needed)."""

    def __init__(self, member: str, reason: str, *, limit: str, value: int, actual: int, hint: str | None = None) -> None:
        super().__init__(member, reason)
        self.hint = hint
        self.limit = limit
        self.value = value
        self.actual = actual


class Unsupported(ContainerError):
    def __init__(self, feature: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"{feature} is not supported here: {reason}", hint=hint)
        self.feature = feature
        self.reason = reason


class CgroupError(ContainerError):
    pass


class FreezeTimeout(CgroupError):
    def __init__(self, cgroup: str, wanted: str, timeout_s: float) -> None:
        super().__init__(f"cgroup {cgroup} did not become {wanted} within {timeout_s:g}s")
        self.cgroup = cgroup
        self.wanted = wanted
        self.timeout_s = timeout_s


class MountError(ContainerError):
    pass


class NetworkError(ContainerError):
    pass


class CriuError(ContainerError):
    """CRIU answered with an error.

    Attributes:
        operation: dump, restore, check, page-server, lazy-pages ...
        errno: CRIU's cr_errno (0 when unknown)
        log_path: the CRIU log file, kept for the user
        log_lines: the few lines around the first error in that log
    """

    def __init__(
        self,
        operation: str,
        message: str,
        *,
        errno: int = 0,
        log_path: Path | None = None,
        log_lines: tuple[str, ...] = (),
        hint: str | None = None,
    ) -> None:
        text = f"criu {operation} failed: {message}"
        if log_lines:
            text += "\n  " + "\n  ".join(log_lines)
        if log_path is not None:
            text += f"\n  (log: {log_path})"
        super().__init__(text, hint=hint)
        self.operation = operation
        self.errno = errno
        self.log_path = log_path
        self.log_lines = log_lines


class CriuUnreachable(CriuError):
    pass


class CriuTimeout(CriuError):
    """CRIU did not answer within ``timeout_s`` and was killed (e.g. a restore whose restored task
    crashed: CRIU then waits for it forever)."""

    def __init__(self, operation: str, timeout_s: float, *, log_path: Path | None = None,
                 log_lines: tuple[str, ...] = ()) -> None:
        super().__init__(operation, f"no answer within {timeout_s:g}s, criu was killed", log_path=log_path,
                         log_lines=log_lines, hint="a restored task may have crashed (see the log); a bigger "
                         "checkpoint may need a longer --restore-timeout")
        self.timeout_s = timeout_s
