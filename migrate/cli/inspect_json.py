"""The CLI's JSON for containers, images and checkpoints (inspect, ps --json).

The engine's dataclasses as they are, plus what people and scripts reading JSON expect:
RFC 3339 times beside the unix-seconds fields (``created`` beside ``created_at``, ``started``
beside ``started_at``, ``finished`` beside ``finished_at``), and a container's
``state.checkpointed`` as a boolean with the checkpoint's id in ``state.checkpoint_id``. Only
here: the gRPC API keeps its numbers.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

from runtime.errors import ContainerError, ContainerNotFound, InvalidArgument

KINDS = ("container", "image", "checkpoint")


class ObjectNotFound(ContainerNotFound):
    """inspect without --type: the name is no container, image or checkpoint here."""

    def __init__(self, name: str) -> None:
        ContainerError.__init__(self, f"no such container: {name}",
                                hint="no image or checkpoint has this name or id either: ps -a, image ls, checkpoint ls")
        self.name = name


def rfc3339(t: float | None) -> str | None:
    """Unix seconds as RFC 3339 in UTC (``2026-12-04T19:41:49.123456Z``); None stays None."""
    if t is None or isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _with_times(d: dict[str, Any], fields: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """``d`` with each (numeric, text) pair's text field set beside its numeric one."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        out[key] = value
        for numeric, text in fields:
            if key == numeric:
                out[text] = rfc3339(value)
    return out


def container_json(info: Any) -> dict[str, Any]:
    """A ``ContainerInfo`` as inspect and ps --json print it."""
    d = dataclasses.asdict(info)
    d["spec"] = _with_times(d["spec"], (("created_at", "created"),))
    state = _with_times(d["state"], (("started_at", "started"), ("finished_at", "finished")))
    checkpoint_id = state.get("checkpointed")
    state["checkpointed"] = checkpoint_id is not None  # a dump ended this run ("migrated": a migration's)
    state["checkpoint_id"] = checkpoint_id
    d["state"] = state
    return d


def image_json(details: Any) -> dict[str, Any]:
    d = dataclasses.asdict(details)
    d["image"] = _with_times(d["image"], (("created_at", "created"),))
    return d


def checkpoint_json(manifest: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's manifest: its ``created_at`` and its container spec's with their RFC 3339 twins."""
    d = _with_times(dict(manifest), (("created_at", "created"),))
    if isinstance(d.get("container"), dict):
        d["container"] = _with_times(d["container"], (("created_at", "created"),))
    return d


def inspect_one(engine: Any, name: str, kind: str | None) -> dict[str, Any]:
    """The JSON object for ``name``: a container, image or checkpoint (``kind``), else the first
    of them that has the name (docker's order: container, then image).

    Raises:
        ContainerNotFound, ImageNotFound, CheckpointNotFound: ``kind`` given and no such object.
        ObjectNotFound: no ``kind`` and no object of any kind has the name.
    """
    if kind == "container":
        return container_json(engine.inspect(name))
    if kind == "image":
        return image_json(engine.image_inspect(name))
    if kind == "checkpoint":
        return checkpoint_json(engine.checkpoint_inspect(name))
    from migrate.errors import CheckpointNotFound
    from runtime.errors import ImageNotFound

    import re

    for each in KINDS:
        if each == "checkpoint" and not re.fullmatch(r"[0-9a-f]{4,64}", name):
            continue  # not a checkpoint id; and asking would load the archive code for nothing
        try:
            return inspect_one(engine, name, each)
        except (ContainerNotFound, ImageNotFound, CheckpointNotFound):
            continue
        except InvalidArgument:
            continue  # not a valid name of this kind (a checkpoint id is hex): not this kind
    raise ObjectNotFound(name)


def template_row(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` for ``inspect --format`` with podman's names beside ours: ``.Id``, ``.Name``,
    ``.Config`` (the spec), ``.Created``; ``.State.Pid`` finds ``state.pid`` (gotemplate matches
    names without regard to case and underscores)."""
    row = dict(obj)
    spec = obj.get("spec")
    if isinstance(spec, dict):
        row.update(Id=spec.get("container_id"), Name=spec.get("name"), Image=spec.get("image"),
                   Config=spec, Created=spec.get("created"))
    image = obj.get("image")
    if isinstance(image, dict):
        row.update(Id=image.get("digest"), Name=image.get("name"), Created=image.get("created"))
    return row
