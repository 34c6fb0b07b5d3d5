"""The daemon's config file: ``pymigrate daemon --config FILE`` (default /etc/pymigrate/daemon.toml
when it exists), TOML whose keys are the daemon's long flags without the dashes::

    listen = "10.0.0.11:7443"
    root = "/var/lib/pymigrate"
    tls-cert = "/etc/pymigrate/tls/node-1.crt"
    grace = 60
    trusted-key = ["/etc/pymigrate/keys/ci.pub"]   # a repeatable flag takes a list
    allow-peer-volumes = true                      # an on/off flag takes a boolean

Generic over the parser: every long option of the ``daemon`` subcommand (its own and the global
ones it accepts) is a key, converted by the option's own ``type`` and checked against its
``choices``, so flags added later work without touching this module. A flag given on the
command line (before or after ``daemon``) wins over the file. Relative paths in the file are
relative to the file's directory. Unknown keys, wrong types and unreadable files are
``InvalidArgument`` naming the key and the file. Import-light (the CLI's full parser loads it):
argparse, and tomllib only when there is a file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from runtime.errors import InvalidArgument

DEFAULT_CONFIG = Path("/etc/pymigrate/daemon.toml")
# meaningless in a daemon's file (with the global --ssh-* options, which are for clients)
NOT_KEYS = frozenset({"help", "config", "version", "json", "host"})
ARGV_ATTR = "_daemon_argv"  # the words after ``daemon``, recorded by ``record_argv``
PARSER_ATTR = "_daemon_parser"  # and the parser that parsed them


def record_argv(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` (the daemon subcommand's) keep the words it parses in the namespace, so
    ``apply`` knows which flags the command line gave even when given with their default value."""
    original = parser.parse_known_args

    def parse_known_args(args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        parsed, extras = original(args, namespace)
        setattr(parsed, ARGV_ATTR, list(args or ()))
        setattr(parsed, PARSER_ATTR, parser)
        return parsed, extras

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign, assignment]


def apply_file(args: argparse.Namespace) -> tuple[Path | None, list[str]]:
    """Read ``args.config`` (or the default file) into ``args`` under the command line's flags.

    Returns:
        The file read (None: none) and the keys taken from it.
    """
    path = config_path(getattr(args, "config", None))
    if path is None:
        return None, []
    return path, apply(getattr(args, PARSER_ATTR), args, load(path), path)


def config_path(explicit: Path | None) -> Path | None:
    """The file to read: ``explicit``, else the default one when it exists, else None."""
    if explicit is not None:
        return explicit
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def load(path: Path) -> dict[str, Any]:
    """The file's table; InvalidArgument when it cannot be read or is not TOML."""
    import tomllib  # only when there is a file

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise InvalidArgument(f"cannot read daemon config {path}: {(exc.strerror or str(exc)).lower()}",
                              hint="pass --config FILE with a readable file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"invalid daemon config {path}: {exc}", hint="the file is TOML: key = value per line") from exc


def long_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Config key -> action, for every ``--long`` option of ``parser``."""
    out: dict[str, argparse.Action] = {}
    for flag, action in parser._option_string_actions.items():
        key = flag[2:]
        if flag.startswith("--") and key not in NOT_KEYS and action.dest not in NOT_KEYS and not key.startswith("ssh-"):
            out[key] = action
    return out


def apply(parser: argparse.ArgumentParser, args: argparse.Namespace, values: dict[str, Any], source: Path) -> list[str]:
    """Set in ``args`` each value of ``values`` whose flag the command line did not give.

    Returns:
        The keys taken from the file (for the log).

    Raises:
        InvalidArgument: an unknown key (with the closest known one), a value of the wrong type.
    """
    options = long_options(parser)
    argv = getattr(args, ARGV_ATTR, [])
    taken = []
    for key, value in values.items():
        action = options.get(key)
        if action is None:
            raise InvalidArgument(f"unknown key {key!r} in daemon config {source}", hint=_unknown_hint(key, options))
        if _given(action, args, argv):
            continue
        setattr(args, action.dest, _convert(action, key, value, source))
        taken.append(key)
    return taken


def _given(action: argparse.Action, args: argparse.Namespace, argv: list[str]) -> bool:
    if any(word.split("=", 1)[0] in action.option_strings for word in argv if word.startswith("--")):
        return True
    # before the subcommand (``pymigrate --root R daemon``): global options default to None/False
    if action.default in (argparse.SUPPRESS, None, False):
        return getattr(args, action.dest, None) not in (None, False)
    return False


def _convert(action: argparse.Action, key: str, value: Any, source: Path) -> Any:
    where = f"{key!r} in daemon config {source}"
    if action.nargs == 0:  # store_true and friends
        if not isinstance(value, bool):
            raise InvalidArgument(f"invalid value for {where}: expected true or false, got {value!r}")
        return action.const if value else action.default if action.default is not argparse.SUPPRESS else False
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_one(action, where, item, source) for item in items]
    if isinstance(value, (list, dict)):
        raise InvalidArgument(f"invalid value for {where}: expected one value, got {type(value).__name__}")
    return _one(action, where, value, source)


def _one(action: argparse.Action, where: str, value: Any, source: Path) -> Any:
    if isinstance(value, (bool, list, dict)):
        raise InvalidArgument(f"invalid value for {where}: expected a string or number, got {value!r}")
    try:
        converted = action.type(str(value)) if callable(action.type) else value
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise InvalidArgument(f"invalid value for {where}: {value!r} ({exc})") from exc
    if action.choices is not None and converted not in action.choices:
        raise InvalidArgument(f"invalid value for {where}: {value!r}", hint=f"choose from {', '.join(map(str, action.choices))}")
    if isinstance(converted, Path) and not converted.is_absolute():
        converted = source.parent / converted  # as the file's author saw it, not the daemon's cwd
    return converted


def _unknown_hint(key: str, options: dict[str, argparse.Action]) -> str:
    import difflib

    guess = difflib.get_close_matches(key.replace("_", "-"), list(options), n=1)
    known = ", ".join(sorted(options))
    return (f"did you mean {guess[0]!r}? " if guess else "") + f"keys are the daemon's long flags without dashes: {known}"
