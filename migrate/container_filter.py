"""``ps --filter KEY=VALUE``: which containers a set of filters selects (docker's rules).

The same key given twice is an OR (``status=running --filter status=paused``), but for
``label``, where every one must hold (docker's ``MatchKVList``); different keys are an AND. Keys: ``status`` (created, running, paused, exited, checkpointed), ``name`` (a
regular expression searched in the name, so a plain word matches as a substring), ``label``
(``KEY`` present, or ``KEY=VALUE`` exactly), ``ancestor`` (the image by name, name without
``:latest``, or digest prefix), ``id`` (an id prefix), ``exited`` (an exit code), ``volume`` (a named
volume, or a mount's path inside or source outside), ``network`` (bridge, none, host, or
``container:NAME`` as ps shows it).

Pure: parsing works on strings, matching on ``runtime.spec.ContainerInfo``, so the CLI and,
later, the gRPC service share it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from runtime.errors import InvalidArgument
from runtime.spec import ContainerInfo

KEYS = ("status", "name", "label", "ancestor", "id", "exited", "volume", "network")
STATUSES = ("created", "running", "paused", "exited", "checkpointed")


@dataclass(frozen=True)
class Filters:
    """Parsed filters: key -> the values given for it (OR within a key, AND across keys)."""

    values: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.values)

    def wants_stopped(self) -> bool:
        """True when the filters can select containers that are not running (docker lists them without -a)."""
        return bool(self.values.get("exited")) or any(s in ("created", "exited", "checkpointed")
                                                      for s in self.values.get("status", ()))


def parse_filters(entries: Iterable[str]) -> Filters:
    """``KEY=VALUE`` strings as ``Filters``.

    Raises:
        InvalidArgument: no ``=``, an unknown key, an unknown status, a bad regular expression
            or exit code.
    """
    from migrate.list_filters import parse

    values = parse(entries, dict.fromkeys(KEYS), "container")  # the keys' matchers live here (select)
    for key, given in values.items():
        for value in given:
            _check_value(key, value)
    return Filters(values)


def _check_value(key: str, value: str) -> None:
    if key == "status" and value not in STATUSES:
        raise InvalidArgument(f"invalid filter status={value}: expected one of {', '.join(STATUSES)}")
    if key == "name":
        try:
            re.compile(value)
        except re.error as exc:
            raise InvalidArgument(f"invalid filter name={value}: not a regular expression ({exc})",
                                  hint="escape special characters, e.g. name=web\\.1") from None
    if key == "exited" and not value.lstrip("-").isdigit():
        raise InvalidArgument(f"invalid filter exited={value}: expected an exit code")


def matches(info: ContainerInfo, filters: Filters) -> bool:
    """Whether ``info`` passes every key of ``filters`` (one of each key's values)."""
    return all((all if key == "label" else any)(_MATCHERS[key](info, v) for v in values)
               for key, values in filters.values.items())


def select(infos: Iterable[ContainerInfo], filters: Filters) -> list[ContainerInfo]:
    return [i for i in infos if matches(i, filters)]


def status_word(info: ContainerInfo) -> str:
    """created, running, paused, exited, or checkpointed (exited because a checkpoint ended its run)."""
    st = info.state
    return "checkpointed" if st.status == "exited" and st.checkpointed else st.status


def _status(info: ContainerInfo, value: str) -> bool:
    word = status_word(info)
    # a checkpointed container has exited too (docker has no such state; exited lists it)
    return word == value or (value == "exited" and word == "checkpointed")


def _name(info: ContainerInfo, value: str) -> bool:
    return re.search(value, info.spec.name) is not None


def _label(info: ContainerInfo, value: str) -> bool:
    key, eq, wanted = value.partition("=")
    labels = info.spec.labels or {}
    return key in labels and (not eq or labels[key] == wanted)


def _ancestor(info: ContainerInfo, value: str) -> bool:
    image = info.spec.image
    if value in (image, f"{image}:latest") or f"{value}:latest" == image:
        return True
    digest = info.spec.image_digest
    hexdigest = digest.partition(":")[2]
    return len(value.partition(":")[2] or value) >= 4 and (digest.startswith(value) or hexdigest.startswith(value))


def _id(info: ContainerInfo, value: str) -> bool:
    return info.spec.container_id.startswith(value.lower())


def _exited(info: ContainerInfo, value: str) -> bool:
    return info.state.status == "exited" and info.state.exit_code == int(value)


def _volume(info: ContainerInfo, value: str) -> bool:
    return any(value in (v.name, v.target, v.source) for v in info.spec.volumes if value)


def _network(info: ContainerInfo, value: str) -> bool:
    if info.spec.network == "container":
        return value in ("container", info.state.shared_namespaces.get("net", ""))
    return info.spec.network == value


_MATCHERS = {"status": _status, "name": _name, "label": _label, "ancestor": _ancestor, "id": _id, "exited": _exited,
             "volume": _volume, "network": _network}
