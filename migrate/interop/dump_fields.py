"""Typed reads of the JSON files of a foreign checkpoint (``config.dump``, ``spec.dump``, ...).

Those files come from an archive or an image somebody else made, so every field is read through
one of these getters: the type is checked, strings and lists are bounded, and a violation is an
``UnsafeMember`` naming the file and the field (``config.dump: name``). A missing optional field is
its default. Nothing here turns a value into a host path: callers use paths from these files only
as names to compare or show, never to open.
"""

from __future__ import annotations

import json
import os
import re
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from migrate.errors import UnsafeMember

MAX_JSON_BYTES = 16 << 20  # config.dump of a real podman container is ~25 KB, spec.dump ~20 KB
MAX_STRING_BYTES = 64 << 10  # one string field (a long command line, an annotation value)
MAX_LIST_ITEMS = 65536  # args, env, mounts, deleted files ...
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object", list: "a list"}


def read_json(root: Path, name: str, *, required: bool = True) -> Any:
    """The parsed JSON file ``root/name``: a regular file (never a symlink) of bounded size.

    Returns None when it is absent and not ``required``. Raises UnsafeMember naming the file.
    """
    try:
        fd = os.open(root / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if required:
            raise UnsafeMember(name, "missing, expected it in a podman or CRI-O checkpoint") from None
        return None
    except OSError as exc:  # ELOOP: a symlink
        raise UnsafeMember(name, f"cannot be opened as a regular file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeMember(name, "not a regular file")
        if st.st_size > MAX_JSON_BYTES:
            raise UnsafeMember(name, f"{st.st_size} bytes, expected at most {MAX_JSON_BYTES}")
        data = f.read(MAX_JSON_BYTES + 1)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, deep nesting
        raise UnsafeMember(name, f"not valid JSON: {exc}") from None


def _check(value: Any, kind: type, where: str) -> Any:
    # bool is an int in Python: an integer field must not accept true/false
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise invalid(where, f"is {type(value).__name__}, expected {_TYPE_NAMES.get(kind, kind.__name__)}")
    sized: Any = value
    if kind is str and len(sized) > MAX_STRING_BYTES:
        raise invalid(where, f"has {len(sized)} characters, expected at most {MAX_STRING_BYTES}")
    if kind in (list, dict) and len(sized) > MAX_LIST_ITEMS:
        raise invalid(where, f"has {len(sized)} items, expected at most {MAX_LIST_ITEMS}")
    return value


def invalid(where: str, problem: str) -> UnsafeMember:
    """The error for the field ``where`` (``member: path``): ``refusing archive member 'm': field 'f' ...``."""
    member, _, path = where.partition(": ")
    return UnsafeMember(member, f"field {path!r} {problem}" if path else problem)


def field(where: str, key: str) -> str:
    """``where`` (``member: path`` or ``member: `` for the top object) one level down at ``key``."""
    return f"{where}{key}" if where.endswith(": ") else f"{where}.{key}"


def get(obj: dict[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    """``obj[key]`` checked to be a ``kind`` (``where`` names the object: ``spec.dump: process``, or
    ``spec.dump: `` for the top); ``default`` when absent or JSON null."""
    value = obj.get(key)
    if value is None:
        return default
    return _check(value, kind, field(where, key))


def as_kind(value: Any, kind: type, where: str) -> Any:
    """``value`` checked to be a ``kind``; ``where`` is ``member: field``."""
    return _check(value, kind, where)


def str_list(obj: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    """``obj[key]`` as a list of strings (empty when absent)."""
    items = get(obj, key, list, where, [])
    return tuple(as_kind(v, str, f"{field(where, key)}[{i}]") for i, v in enumerate(items))


def str_map(obj: dict[str, Any], key: str, where: str) -> dict[str, str]:
    """``obj[key]`` as an object of string values (empty when absent)."""
    items = get(obj, key, dict, where, {})
    return {k: as_kind(v, str, f"{field(where, key)}[{k[:64]!r}]") for k, v in items.items()}


def rfc3339(value: str | None, where: str) -> float | None:
    """Seconds since the epoch of a Go ``time.Time`` in JSON (nanoseconds allowed); None for the
    zero time (``0001-01-01T00:00:00Z``, what Go writes for "never") or an absent value."""
    if not value:
        return None
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise invalid(where, f"is {value[:64]!r}, expected an RFC 3339 time")
    if m.group(1).startswith("0001-01-01"):
        return None
    fraction = (m.group(2) or "")[:7]  # datetime keeps microseconds: drop the nanoseconds
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        when = datetime.fromisoformat(f"{m.group(1)}{fraction}{zone}")
    except ValueError as exc:  # month 13, ...
        raise invalid(where, f"is not a valid time: {exc}") from None
    return when.astimezone(timezone.utc).timestamp()


def container_path(value: str, where: str) -> str:
    """A path inside the container (``/tmp/x``) as a relative, normalised one (``tmp/x``): no NUL,
    no ``..``, not the root itself."""
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if "\x00" in value or ".." in parts or not parts:
        raise invalid(where, f"is {value[:256]!r}, expected a path inside the container")
    return "/".join(parts)
