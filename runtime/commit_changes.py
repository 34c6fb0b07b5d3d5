"""``commit --change``: Dockerfile instructions applied to a committed image's config.

``docker commit --change`` takes the instructions that only change an image's config; this module
parses the same ones and applies them, in order, to an ``ImageConfig``:

* ``CMD`` and ``ENTRYPOINT``: the JSON form (``CMD ["cat", "/hello"]``) is the argv; anything
  else is the shell form, run as ``/bin/sh -c TEXT``. An ``ENTRYPOINT`` clears the ``Cmd`` unless a
  ``CMD`` came earlier in the same changes (Docker's rule: an inherited CMD belongs to the old
  entrypoint);
* ``ENV KEY=VALUE ...`` (quotes and backslashes as a shell reads them) or the old ``ENV KEY VALUE``;
  a key already set gets the new value in its place;
* ``LABEL KEY=VALUE ...``; ``EXPOSE PORT[/PROTO] ...`` (ranges ``8000-8002``; tcp, udp or sctp);
* ``USER USER[:GROUP]``, ``WORKDIR PATH`` (a relative one joins the current working dir),
  ``STOPSIGNAL SIGNAL`` (a name or number, checked), ``VOLUME ["/a"]`` or ``VOLUME /a /b``.

Anything else (``RUN``, ``COPY``, ``FROM``, ``ONBUILD``, ...) is refused with ``InvalidArgument``
before the container is touched: those need a build, not a commit.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
import shlex

from runtime.errors import InvalidArgument
from runtime.image_config import ImageConfig

SUPPORTED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "WORKDIR", "VOLUME", "STOPSIGNAL")
MAX_CHANGE_BYTES = 64 << 10  # one instruction; a config is small
_HINT = ("supported: " + ", ".join(SUPPORTED) + ", e.g. --change 'CMD [\"cat\", \"/hello\"]' --change 'ENV A=b'")
_KEY_RE = re.compile(r"[^\s=][^\s=]*")
_PORT_RE = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?(?:/(tcp|udp|sctp))?", re.IGNORECASE)
MAX_EXPOSED_RANGE = 4096  # ports one EXPOSE range may name


@dataclasses.dataclass(frozen=True)
class Change:
    """One parsed instruction: ``keyword`` upper case, ``text`` the rest as written."""

    keyword: str
    text: str


def parse_changes(changes: tuple[str, ...] | list[str]) -> tuple[Change, ...]:
    """Split each ``--change`` value into its instruction and arguments, refusing unknown ones.

    Raises:
        InvalidArgument: an empty change, an unsupported instruction, or one without arguments.
    """
    parsed = []
    for raw in changes:
        if not isinstance(raw, str) or len(raw.encode()) > MAX_CHANGE_BYTES or "\0" in raw:
            raise InvalidArgument(f"invalid change {str(raw)[:60]!r}: expected one instruction of at most "
                                  f"{MAX_CHANGE_BYTES} bytes", hint=_HINT)
        words = raw.strip().split(None, 1)
        if not words:
            raise InvalidArgument("invalid change '': expected an instruction such as CMD or ENV", hint=_HINT)
        keyword = words[0].upper()
        if keyword not in SUPPORTED:
            raise InvalidArgument(f"unsupported change instruction {words[0]!r}: commit applies only config instructions",
                                  hint=_HINT)
        text = words[1].strip() if len(words) > 1 else ""
        if not text:
            raise InvalidArgument(f"invalid change {raw.strip()!r}: {keyword} needs an argument", hint=_HINT)
        parsed.append(Change(keyword, text))
    return tuple(parsed)


def apply_changes(config: ImageConfig, changes: tuple[Change, ...]) -> ImageConfig:
    """``config`` with ``changes`` applied in order (module docstring).

    Raises:
        InvalidArgument: an argument that does not parse (names the instruction).
    """
    cmd_set = False
    for change in changes:
        kw, text = change.keyword, change.text
        if kw == "CMD":
            config, cmd_set = dataclasses.replace(config, cmd=_command(kw, text)), True
        elif kw == "ENTRYPOINT":
            config = dataclasses.replace(config, entrypoint=_command(kw, text), cmd=config.cmd if cmd_set else None)
        elif kw == "ENV":
            config = dataclasses.replace(config, env=_set_env(config.env, _pairs(kw, text, legacy=True)))
        elif kw == "LABEL":
            config = dataclasses.replace(config, labels={**config.labels, **dict(_pairs(kw, text, legacy=False))})
        elif kw == "EXPOSE":
            ports = list(config.exposed_ports)
            ports += [p for p in _ports(text) if p not in ports]
            config = dataclasses.replace(config, exposed_ports=tuple(ports))
        elif kw == "USER":
            config = dataclasses.replace(config, user=_single(kw, text))
        elif kw == "WORKDIR":
            config = dataclasses.replace(config, working_dir=posixpath.normpath(
                posixpath.join("/", config.working_dir or "/", _single(kw, text, spaces=True))))
        elif kw == "STOPSIGNAL":
            from runtime.container import parse_signal

            signal_text = _single(kw, text)
            parse_signal(signal_text)
            config = dataclasses.replace(config, stop_signal=signal_text)
        elif kw == "VOLUME":
            volumes = list(config.volumes)
            volumes += [v for v in _volumes(text) if v not in volumes]
            config = dataclasses.replace(config, volumes=tuple(volumes))
    return config


def _command(keyword: str, text: str) -> tuple[str, ...]:
    """The JSON form as it is, else the shell form under ``/bin/sh -c``."""
    if text.startswith("["):
        try:
            words = json.loads(text)
        except ValueError:
            words = None
        if isinstance(words, list) and all(isinstance(w, str) for w in words):
            return tuple(words)
        # Docker reads a '[' text that is not a JSON array of strings as the shell form too
    return ("/bin/sh", "-c", text)


def _split(keyword: str, text: str) -> list[str]:
    try:
        return shlex.split(text, posix=True)
    except ValueError as exc:
        raise InvalidArgument(f"invalid change {keyword} {text[:60]!r}: {exc}", hint=_HINT) from None


def _pairs(keyword: str, text: str, *, legacy: bool) -> list[tuple[str, str]]:
    """``K=V K2="v 2"`` pairs; with ``legacy``, ``KEY rest of the line`` when the first word has no '='."""
    first = text.split(None, 1)[0]
    if legacy and "=" not in first:
        rest = text[len(first):].strip()
        if not rest:
            raise InvalidArgument(f"invalid change {keyword} {text[:60]!r}: expected KEY=VALUE or KEY VALUE", hint=_HINT)
        return [(_key(keyword, first), rest)]
    pairs = []
    for word in _split(keyword, text):
        key, sep, value = word.partition("=")
        if not sep:
            raise InvalidArgument(f"invalid change {keyword} {text[:60]!r}: {word[:40]!r} is not KEY=VALUE", hint=_HINT)
        pairs.append((_key(keyword, key) if legacy else _label_key(keyword, key), value))
    return pairs


def _key(keyword: str, key: str) -> str:
    if not _KEY_RE.fullmatch(key):
        raise InvalidArgument(f"invalid change {keyword}: {key[:40]!r} is not a valid key", hint=_HINT)
    return key


def _label_key(keyword: str, key: str) -> str:
    if not key:
        raise InvalidArgument(f"invalid change {keyword}: a label needs a key", hint=_HINT)
    return key


def _set_env(env: tuple[str, ...], pairs: list[tuple[str, str]]) -> tuple[str, ...]:
    """``env`` with each KEY set: in its place when present, else appended."""
    items = dict(e.partition("=")[::2] for e in env)
    for key, value in pairs:
        items[key] = value
    return tuple(f"{k}={v}" for k, v in items.items())


def _single(keyword: str, text: str, *, spaces: bool = False) -> str:
    """One word (``spaces``: the whole text, as WORKDIR takes a path with spaces)."""
    if spaces:
        return text
    words = text.split()
    if len(words) != 1:
        raise InvalidArgument(f"invalid change {keyword} {text[:60]!r}: expected one argument", hint=_HINT)
    return words[0]


def _ports(text: str) -> list[str]:
    out: list[str] = []
    for word in text.split():
        m = _PORT_RE.fullmatch(word)
        first, last = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
        if m is None or not 1 <= first <= last <= 65535 or last - first >= MAX_EXPOSED_RANGE:
            raise InvalidArgument(f"invalid change EXPOSE {word[:40]!r}: expected PORT[-PORT][/tcp|udp|sctp] "
                                  "with ports 1-65535", hint="e.g. --change 'EXPOSE 80 53/udp'")
        proto = (m.group(3) or "tcp").lower()
        out += [f"{port}/{proto}" for port in range(first, last + 1)]
    return out


def _volumes(text: str) -> list[str]:
    if text.startswith("["):
        try:
            paths = json.loads(text)
        except ValueError:
            paths = None
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise InvalidArgument(f"invalid change VOLUME {text[:60]!r}: expected a JSON array of paths", hint=_HINT)
    else:
        paths = text.split()
    for path in paths:
        if not path.startswith("/"):
            raise InvalidArgument(f"invalid change VOLUME {path[:60]!r}: expected an absolute path", hint=_HINT)
    return [posixpath.normpath(p) for p in paths]
