"""The methods ``@dataclass`` writes, compiled once and kept like bytecode across processes.

Why: ``dataclasses`` generates each class's ``__init__``, ``__repr__``, ``__eq__``, ``__hash__``,
``__setattr__`` and ``__delattr__`` as source text and compiles every one with ``exec`` (Python
3.11: ~0.1 ms each, six per frozen class). ``pymigrate run -d`` creates ~80 dataclasses on its
way, ~45 ms of its wall time here: a third of the command. The compiled code depends only on the
text (and the compiler flags, none: dataclasses.py has no ``__future__`` import), so code compiled
by an earlier process is the same code; loading it costs ~2 ms.

How: ``install()`` shadows the builtin ``exec`` inside the ``dataclasses`` module only (a module
global is looked up before builtins) with one that looks the text up first; ``exec`` itself still
runs with the class's own globals, so each class gets fresh functions exactly as before. The
cache is one marshal file beside this module's bytecode (``__pycache__``), as trusted as the
``.pyc`` files there: it is used only when owned by us or root and writable by nobody else; it
is written (atomically, at exit, only by the process that installed it) when something new was
compiled, unless bytecode writing is off (``-B`` / ``PYTHONDONTWRITEBYTECODE``) or the directory
is read-only. Entries are marshalled code objects keyed by their full source text, decoded on
first use; a file from another interpreter version is ignored.

Installed by the CLI when it runs as a program (migrate/cli ``main``), never on import.
"""

from __future__ import annotations

import atexit
import dataclasses
import marshal
import os
import sys
from pathlib import Path
from typing import Any

CACHE_DIR = Path(__file__).resolve().parent / "__pycache__"
MAX_ENTRIES = 4096  # past this, a save keeps only what the saving process used (the code changed)
HEADER = f"{sys.implementation.cache_tag} {sys.hexversion:x}"


def cache_path() -> Path:
    return CACHE_DIR / f"dataclass-methods.{sys.implementation.cache_tag}.marshal"


class MethodCache:
    """Compiled code by source text: loaded from ``path``, grown by ``exec``, written by ``save``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stored = load(path)  # source text -> marshalled code, as loaded
        self.new: dict[str, bytes] = {}  # compiled by this process
        self.used: set[str] = set()
        self.code: dict[str, Any] = {}  # decoded or compiled by this process

    def exec(self, source: Any, globals: Any = None, locals: Any = None, /) -> None:
        """``exec`` as dataclasses calls it; a string's code comes from the cache."""
        if not isinstance(source, str):
            return exec(source, globals, locals)  # noqa: S102 - exactly what dataclasses asked for
        code = self.code.get(source)
        if code is None:
            stored = self.stored.get(source)
            if stored is not None:
                code = marshal.loads(stored)
            else:
                # what exec(source) in dataclasses compiles: file name "<string>", no future flags
                code = compile(source, "<string>", "exec", dont_inherit=True)
                self.new[source] = marshal.dumps(code)
            self.code[source] = code
        self.used.add(source)
        exec(code, globals, locals)  # noqa: S102 - the code dataclasses wrote
        return None

    def save(self) -> bool:
        """Write the file (atomically) if this process compiled something new; whether it wrote."""
        if not self.new or sys.dont_write_bytecode:
            return False
        entries = {**self.stored, **self.new}
        if len(entries) > MAX_ENTRIES:
            entries = {k: v for k, v in entries.items() if k in self.used}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(exist_ok=True)
            with open(tmp, "xb") as f:
                os.fchmod(f.fileno(), 0o644)
                marshal.dump((HEADER, entries), f)
            os.replace(tmp, self.path)
        except OSError:  # read-only install, full disk: a cache never fails a command
            tmp.unlink(missing_ok=True)
            return False
        self.stored.update(self.new)
        self.new.clear()
        return True


def load(path: Path) -> dict[str, bytes]:
    """The entries of the cache file at ``path``; none when it is missing, torn, of another
    interpreter, or writable by (or owned by) someone other than us and root."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            return {}  # someone else could have written code into it
        with os.fdopen(fd, "rb", closefd=False) as f:
            loaded = marshal.load(f)
    except (OSError, EOFError, ValueError, TypeError):
        return {}  # unreadable or torn: compile as if there were none
    finally:
        os.close(fd)
    if not (isinstance(loaded, tuple) and len(loaded) == 2 and loaded[0] == HEADER and isinstance(loaded[1], dict)):
        return {}
    return loaded[1]


_installed: tuple[int, MethodCache] | None = None


def install(path: Path | None = None) -> MethodCache:
    """Route ``dataclasses``' compiles through the cache for the rest of this process (once)."""
    global _installed
    if _installed is None:
        cache = MethodCache(path or cache_path())
        dataclasses.exec = cache.exec  # type: ignore[attr-defined]
        _installed = (os.getpid(), cache)
        atexit.register(_save_at_exit)
    return _installed[1]


def _save_at_exit() -> None:
    if _installed is not None and os.getpid() == _installed[0]:  # not in a forked shim
        _installed[1].save()
