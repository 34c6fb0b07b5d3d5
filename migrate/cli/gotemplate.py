"""``--format`` templates as docker and podman take them: the small part of Go's text/template they use.

Supported: literal text; ``{{.Field}}`` and nested ``{{.Labels.key}}``; ``{{.}}``; ``{{json .}}``
and ``{{json .Field}}``; ``{{index .Labels "key"}}``; a leading ``table`` (a header row, columns
aligned as docker's tabwriter does); ``\\t`` and ``\\n`` written in the template (a shell passes
them as two characters). Nothing else of Go's engine (no pipes, conditionals, range): an
unknown action or field is refused with the list of valid fields before anything is printed.

Pure: rows are plain mappings from field name to value; nothing here knows containers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from runtime.errors import InvalidArgument

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_PATH = re.compile(r"\.(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_.\-/]+)?)?")
_INDEX = re.compile(r'index\s+(\.[A-Za-z_][A-Za-z0-9_]*)\s+"((?:[^"\\]|\\.)*)"')
_TABLE_GAP = 3  # spaces between aligned columns (docker's tabwriter padding)


@dataclass(frozen=True)
class _Part:
    text: str = ""  # literal text (when path is empty and json is False)
    path: tuple[str, ...] | None = None  # () is "." (the whole row)
    json: bool = False


@dataclass(frozen=True)
class Template:
    """A checked template: ``render(row)`` for each row, ``header()`` for a ``table`` one."""

    parts: tuple[_Part, ...]
    table: bool
    headers: Mapping[str, str]

    def render(self, row: Mapping[str, Any]) -> str:
        return "".join(_render_part(p, row) for p in self.parts)

    def header(self) -> str:
        """The header row: each field's header name (its upper-case name when none is given)."""
        out = []
        for p in self.parts:
            if p.path is None:
                out.append(p.text)
            elif not p.path:
                out.append("")
            else:
                out.append(self.headers.get(p.path[0], p.path[0].upper()) if len(p.path) == 1 else p.path[-1].upper())
        return "".join(out)


def parse(template: str, fields: Sequence[str], headers: Mapping[str, str] | None = None) -> Template:
    """``template`` checked against the row's ``fields``.

    Raises:
        InvalidArgument: an action other than the supported ones, or a field not in ``fields``
            (the message lists the valid ones).
    """
    text = template.replace("\\t", "\t").replace("\\n", "\n")
    table = text.startswith("table")
    if table:
        text = text[len("table"):].lstrip(" ")
    parts: list[_Part] = []
    pos = 0
    for m in _ACTION.finditer(text):
        if m.start() > pos:
            parts.append(_Part(text=text[pos:m.start()]))
        parts.append(_action(m.group(1), fields))
        pos = m.end()
    if pos < len(text):
        parts.append(_Part(text=text[pos:]))
    return Template(tuple(parts), table, dict(headers or {}))


def _action(action: str, fields: Sequence[str]) -> _Part:
    is_json = action.startswith("json ")
    expr = action[len("json "):].strip() if is_json else action
    index = _INDEX.fullmatch(expr)
    if index:
        path = (*_path(index.group(1), fields), json.loads(f'"{index.group(2)}"'))
    elif _PATH.fullmatch(expr):
        path = _path(expr, fields)
    else:
        raise InvalidArgument(f"invalid format action {{{{{action}}}}}: expected .Field, json .Field, "
                              f"json . or index .Field \"key\"", hint=f"fields: {', '.join(fields)}")
    return _Part(path=path, json=is_json)


def _path(expr: str, fields: Sequence[str]) -> tuple[str, ...]:
    if expr == ".":
        return ()
    name, _, rest = expr[1:].partition(".")
    name = _match(name, fields) or name
    if name not in fields:
        raise InvalidArgument(f"unknown format field .{name}: expected one of {', '.join('.' + f for f in fields)}",
                              hint="e.g. --format '{{.Names}} {{.Status}}', or --format json")
    return (name, *rest.split(".")) if rest else (name,)


def _match(name: str, names: Iterable[Any]) -> str | None:
    """``name`` as spelled in ``names``: exactly, else ignoring case and underscores, so podman's
    ``.State.Pid`` finds our ``state.pid`` and ``.ExitCode`` finds ``exit_code``."""
    if name in names:
        return name
    wanted = _norm(name)
    return next((n for n in names if isinstance(n, str) and _norm(n) == wanted), None)


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


def _render_part(part: _Part, row: Mapping[str, Any]) -> str:
    if part.path is None:
        return part.text
    value: Any = row
    for key in part.path:
        if not isinstance(value, Mapping):
            raise InvalidArgument(f"cannot take .{key} of {type(value).__name__} in --format",
                                  hint="only maps such as .Labels have keys")
        value = value.get(_match(key, value) or key)
    if part.json:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    return text_of(value)


def text_of(value: Any) -> str:
    """A value as a template prints it: maps as ``k=v,k2=v2`` (docker's Labels), lists comma-joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return ",".join(text_of(v) for v in value)
    return str(value)


def align(lines: Iterable[str]) -> list[str]:
    """Tab-separated lines as aligned columns (a ``table`` template's output); the last column unpadded."""
    rows = [line.split("\t") for line in lines]
    widths: list[int] = []
    for cells in rows:
        for i, cell in enumerate(cells[:-1]):
            if i == len(widths):
                widths.append(0)
            widths[i] = max(widths[i], len(cell))
    return ["".join(c.ljust(widths[i] + _TABLE_GAP) for i, c in enumerate(cells[:-1])) + cells[-1]
            for cells in rows]
