"""Error text for users: an ``OSError`` as "cannot open /x: no such file or directory" plus a hint.

Python's own rendering (``[Errno 2] No such file or directory: '/x'``) shows an errno number users
do not need and, for a failure deep in a step, the name of a temporary file they never chose.
``describe_os_error`` renders an ``OSError`` that reaches the CLI's boundary; ``clean_text`` is
the net for messages that quoted one (``f"... {exc}"``) before it got there. Imported only when
an error is reported.
"""

from __future__ import annotations

import errno
import re

# errno -> what the user can do about it
_HINTS = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "give a file, not a directory",
    errno.EACCES: "run as root, or check the file's owner and mode",
    errno.EPERM: "run as root (pymigrate needs CAP_SYS_ADMIN for containers)",
    errno.EEXIST: "remove it first or choose another name",
    errno.ENOSPC: "free space on that filesystem (df -h), or set --root to a larger one",
    errno.EDQUOT: "free space on that filesystem, or raise the quota",
    errno.EROFS: "that filesystem is read-only; choose another place",
    errno.EBUSY: "something still uses it (a mount or another process); try again when it is done",
    errno.ECONNREFUSED: "is the daemon running there? (pymigrate daemon)",
    errno.ETIMEDOUT: "the other side did not answer; check the address and the network",
    errno.EHOSTUNREACH: "check the address and the network",
    errno.EADDRINUSE: "another process listens there; choose another address or stop it",
}

# mkstemp/mkdtemp names and pymigrate's work files: not names a user chose
_TEMP_PART = re.compile(r"^(?:tmp[a-z0-9_]{6,}|\.?[\w.-]*\.(?:tmp|part|partial)|\.[\w-]+-[a-z0-9_]{8,})$")
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ([^:\]]+?)(?:: '([^']*)')?(?:\s*->\s*'([^']*)')?(?=$|[;,)\n]|: )")


def describe_os_error(exc: OSError) -> tuple[str, str | None]:
    """(message, hint) for an ``OSError`` that reached the CLI."""
    reason = (exc.strerror or "").lower() or None
    if reason is None:
        return clean_text(str(exc)) or type(exc).__name__, getattr(exc, "hint", None)
    hint = _HINTS.get(exc.errno or 0)
    if exc.filename is None:
        return reason, hint
    where = user_path(str(exc.filename))
    if exc.filename2 is not None:
        return f"cannot move {where} to {user_path(str(exc.filename2))}: {reason}", hint
    return f"cannot open {where}: {reason}", hint


def user_path(path: str) -> str:
    """``path``, or the directory it is in when its own name is a temporary one."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _TEMP_PART.match(part):
            parent = "/".join(parts[:i]) or "/"
            return f"a temporary file in {parent}"
    return path


def clean_text(message: str) -> str:
    """``message`` with each ``[Errno N] Text: 'path'`` rewritten as ``path: text``."""

    def render(match: re.Match[str]) -> str:
        reason = match.group(2).lower()
        if match.group(3) is None or match.group(3) in match.string[:match.start()]:
            return reason  # the message named the path already ("cannot read env file /x: ...")
        where = user_path(match.group(3))
        if match.group(4) is not None:
            return f"{where} -> {user_path(match.group(4))}: {reason}"
        return f"{where}: {reason}"

    return _ERRNO_TEXT.sub(render, message)
