"""Filters of ListCheckpoints, ListImages and VolumeList (``KEY=VALUE``; containers use
migrate/container_filter.py, ``ps --filter``'s rules).

As docker: the same key given twice is an OR, but every ``label`` must hold; different keys are
an AND. Keys:

- checkpoints: ``container`` (the container's name, exactly), ``id`` (a checkpoint id prefix),
  ``label`` (``KEY`` or ``KEY=VALUE`` on the checkpoint's own labels: ``checkpoint --label``;
  the container's labels stay in the checkpoint's container spec).
- images: ``reference`` (a glob over the name, ``busybox*``; a name without a tag also matches
  its ``:latest``), ``digest`` (a digest prefix, with or without ``sha256:``).
- volumes: ``name`` (a substring), ``label``, ``dangling`` (true: no container mounts it).

Pure: matching works on migrate.api dataclasses.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterable, Mapping

from runtime.errors import InvalidArgument

_Matcher = Callable[[Any, str], bool]


def _label_in(labels: Mapping[str, str], value: str) -> bool:
    key, eq, wanted = value.partition("=")
    return key in labels and (not eq or labels[key] == wanted)


def _pairs(entries: Iterable[str]) -> dict[str, str]:
    return {k: v for k, _, v in (e.partition("=") for e in entries)}


def _reference(info: Any, value: str) -> bool:
    name = info.name
    return fnmatch.fnmatchcase(name, value) or (":" not in value.rpartition("/")[2]
                                                and fnmatch.fnmatchcase(name, f"{value}:latest"))


def _digest(info: Any, value: str) -> bool:
    value = value.lower()
    return info.digest.startswith(value) or info.digest.partition(":")[2].startswith(value)


def _dangling(info: Any, value: str) -> bool:
    if value not in ("true", "false", "1", "0"):
        raise InvalidArgument(f"invalid filter dangling={value}: expected true or false")
    return (not info.used_by) == (value in ("true", "1"))


CHECKPOINT_KEYS: dict[str, _Matcher] = {
    "container": lambda c, v: c.container_name == v,
    "id": lambda c, v: c.checkpoint_id.startswith(v),
    "label": lambda c, v: _label_in(getattr(c, "labels", None) or {}, v),
}
IMAGE_KEYS: dict[str, _Matcher] = {"reference": _reference, "digest": _digest}
VOLUME_KEYS: dict[str, _Matcher] = {
    "name": lambda v, s: s in v.name,
    "label": lambda v, s: _label_in(_pairs(v.labels), s),
    "dangling": _dangling,
}


def parse(entries: Iterable[str], keys: Mapping[str, Any], what: str) -> dict[str, tuple[str, ...]]:
    """``KEY=VALUE`` strings grouped by key.

    Raises:
        InvalidArgument: no ``=`` or no value, or a key ``keys`` does not know.
    """
    hint = f"{what} filters are KEY=VALUE with a key of: {', '.join(keys)}"
    out: dict[str, list[str]] = {}
    for entry in entries:
        key, eq, value = entry.partition("=")
        key = key.strip().lower()
        if not eq or not value:
            raise InvalidArgument(f"invalid filter {entry!r}: expected KEY=VALUE", hint=hint)
        if key not in keys:
            raise InvalidArgument(f"invalid filter {entry!r}: unknown key {key!r} for {what}", hint=hint)
        out.setdefault(key, []).append(value)
    return {k: tuple(v) for k, v in out.items()}


def select(items: Iterable[Any], entries: Iterable[str], keys: Mapping[str, _Matcher], what: str) -> list[Any]:
    """The items every filter key selects (one of its values; every one for ``label``)."""
    parsed = parse(entries, keys, what)
    if "dangling" in parsed:  # refuse a bad value even when nothing is listed
        for value in parsed["dangling"]:
            if value not in ("true", "false", "1", "0"):
                raise InvalidArgument(f"invalid filter dangling={value}: expected true or false")
    return [i for i in items
            if all((all if k == "label" else any)(keys[k](i, v) for v in vs) for k, vs in parsed.items())]
