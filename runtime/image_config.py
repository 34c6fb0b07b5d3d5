"""The run configuration an image carries (the ``config`` object of an OCI image config blob).

Kept with the image name in the store's index (runtime/image_store.py) and applied when a
container is created from the image (``resolve_run``), the way Docker and podman do it:

* no command given: the image's ``Entrypoint`` followed by its ``Cmd``;
* a command given: it replaces ``Cmd`` and is appended to ``Entrypoint``;
* ``--entrypoint`` given: it replaces ``Entrypoint`` and the image's ``Cmd`` is not used at all
  (Docker resets CMD then): the command is the new entrypoint followed by the user's command;
  an empty entrypoint (``--entrypoint ''``) clears the image's, so a command is needed;
* the image's ``Env`` comes first, the user's ``-e`` entries after it (a later entry wins);
* ``WorkingDir`` is the working directory unless the user gave one;
* ``User`` is the user unless ``-u`` gave one (resolved inside the container: runtime/users.py).

``ExposedPorts``, ``Labels`` and ``Volumes`` are kept and shown by ``image inspect`` but not
applied yet (docs/images.md); ``StopSignal`` is what ``stop`` sends. Images imported from a
flat rootfs tarball have no config (``None``): only ``--entrypoint`` changes anything for them.

Field names follow the OCI image spec (config.md, "Properties"); the json form written to the
index uses those names too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import ImageError, InvalidArgument

MAX_CONFIG_ITEMS = 4096  # entries of any one list or map: a config is small


class ImageConfigError(ImageError):
    """An image config that does not have the shape of the OCI image spec's config."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"invalid image config in {source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class ImageConfig:
    """What an image says about running it. ``None`` lists mean "not set" (not "empty")."""

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    os: str = ""
    architecture: str = ""
    variant: str = ""
    volumes: tuple[str, ...] = ()  # VOLUME paths (commit --change): kept and shown, not applied

    def to_json(self) -> dict[str, Any]:
        """The form stored in the index and printed by ``image inspect`` (OCI field names)."""
        return {
            "Entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
            "Cmd": list(self.cmd) if self.cmd is not None else None,
            "Env": list(self.env),
            "WorkingDir": self.working_dir,
            "User": self.user,
            "ExposedPorts": list(self.exposed_ports),
            "Labels": dict(self.labels),
            "StopSignal": self.stop_signal,
            "os": self.os,
            "architecture": self.architecture,
            "variant": self.variant,
            # only when set: index entries and ``image inspect`` of images without stay as they were
            **({"Volumes": list(self.volumes)} if self.volumes else {}),
        }

    def to_oci(self) -> dict[str, Any]:
        """The ``config`` object of an OCI image config blob (``ExposedPorts`` a map, unset fields left out)."""
        run: dict[str, Any] = {}
        if self.entrypoint is not None:
            run["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            run["Cmd"] = list(self.cmd)
        if self.env:
            run["Env"] = list(self.env)
        for key, value in (("WorkingDir", self.working_dir), ("User", self.user), ("StopSignal", self.stop_signal)):
            if value:
                run[key] = value
        if self.exposed_ports:
            run["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        if self.labels:
            run["Labels"] = dict(self.labels)
        if self.volumes:
            run["Volumes"] = {path: {} for path in self.volumes}
        return run

    @classmethod
    def from_json(cls, data: Any, source: str = "image index") -> ImageConfig:
        """Read ``to_json``'s form back (the same checks as ``from_oci``)."""
        if not isinstance(data, dict):
            raise ImageConfigError(source, "expected a json object")
        return cls._build(data, data, source)

    @classmethod
    def from_oci(cls, blob: Any, source: str) -> ImageConfig:
        """From a parsed OCI (or Docker v2) image config blob: its ``config`` and platform fields.

        Raises:
            ImageConfigError: a field has the wrong type.
        """
        if not isinstance(blob, dict):
            raise ImageConfigError(source, "expected a json object")
        run = blob.get("config") or {}
        if not isinstance(run, dict):
            raise ImageConfigError(source, "'config' is not an object")
        ports = run.get("ExposedPorts") or {}
        if not isinstance(ports, dict):
            raise ImageConfigError(source, "'ExposedPorts' is not an object")
        volumes = run.get("Volumes") or {}
        if not isinstance(volumes, dict):
            raise ImageConfigError(source, "'Volumes' is not an object")
        merged = dict(run, ExposedPorts=sorted(ports), Volumes=sorted(volumes))
        return cls._build(merged, blob, source)

    @classmethod
    def _build(cls, run: dict[str, Any], platform: dict[str, Any], source: str) -> ImageConfig:
        labels = run.get("Labels") or {}
        if not isinstance(labels, dict) or len(labels) > MAX_CONFIG_ITEMS or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ImageConfigError(source, "'Labels' is not an object of strings")
        env = _strings(run.get("Env"), "Env", source) or ()
        for item in env:
            if "=" not in item or item.startswith("=") or "\0" in item:
                raise ImageConfigError(source, f"'Env' entry {item[:64]!r} is not KEY=VALUE")
        return cls(
            entrypoint=_strings(run.get("Entrypoint"), "Entrypoint", source),
            cmd=_strings(run.get("Cmd"), "Cmd", source),
            env=env,
            working_dir=_string(run.get("WorkingDir"), "WorkingDir", source),
            user=_string(run.get("User"), "User", source),
            exposed_ports=_strings(run.get("ExposedPorts"), "ExposedPorts", source) or (),
            labels=dict(labels),
            stop_signal=_string(run.get("StopSignal"), "StopSignal", source),
            os=_string(platform.get("os"), "os", source),
            architecture=_string(platform.get("architecture"), "architecture", source),
            variant=_string(platform.get("variant"), "variant", source),
            volumes=_strings(run.get("Volumes"), "Volumes", source) or (),
        )


def _strings(value: Any, name: str, source: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_CONFIG_ITEMS or not all(isinstance(v, str) for v in value):
        raise ImageConfigError(source, f"{name!r} is not a list of strings")
    return tuple(value)


def _string(value: Any, name: str, source: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageConfigError(source, f"{name!r} is not a string")
    return value


def parse_entrypoint(text: str | None) -> tuple[str, ...] | None:
    """``--entrypoint``'s value: ``None`` (not given), ``()`` for ``''`` (clear the image's), a
    JSON array of strings (podman's form: ``'["/bin/sh", "-c"]'``), else one executable (Docker's:
    the whole text is ``argv[0]``, never split at spaces).

    Raises:
        InvalidArgument: a JSON array that does not parse or holds anything but strings.
    """
    if text is None:
        return None
    if text == "":
        return ()
    if not text.lstrip().startswith("["):
        return (text,)
    try:
        words = json.loads(text)
    except ValueError:
        words = None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise InvalidArgument(f"invalid entrypoint {text[:80]!r}: expected one executable or a JSON array of strings",
                              hint='e.g. --entrypoint /bin/sh or --entrypoint \'["/bin/sh", "-c"]\'')
    return tuple(words)


@dataclass(frozen=True)
class RunDefaults:
    """What ``run`` uses after the image config was applied."""

    command: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str | None
    user: str = ""
    stop_signal: str = ""


def resolve_run(config: ImageConfig | None, command: tuple[str, ...], env: tuple[str, ...], workdir: str | None,
                *, user: str = "", entrypoint: tuple[str, ...] | None = None, stop_signal: str = "") -> RunDefaults:
    """Apply ``config`` to what the user gave ``run`` (module docstring). ``config`` ``None``: only
    ``entrypoint`` applies; ``entrypoint`` ``None``: the image's.

    An empty result command is left to ``run`` to refuse ("the image has no default command").
    """
    if config is None:
        config = ImageConfig()
    if entrypoint is not None:
        resolved = (*entrypoint, *command)
    else:
        resolved = (*(config.entrypoint or ()), *(command or config.cmd or ()))
    return RunDefaults(resolved, (*config.env, *env), workdir or config.working_dir or None, user or config.user,
                       stop_signal or config.stop_signal)
