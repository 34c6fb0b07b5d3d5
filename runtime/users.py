"""Who a container's processes run as: ``USER[:GROUP]`` resolved in the container's own
/etc/passwd and /etc/group, with runc's rules (libcontainer/user ``GetExecUser``), which Docker
and podman share:

* no user (``""``): root; its passwd entry, if any, gives the home and names the user whose
  supplementary groups are looked up;
* ``USER`` is a name or a numeric uid (a number is always a uid, never a name); the first passwd
  entry that matches gives uid, primary gid and home; a number without an entry is that uid with
  gid 0 and home ``/``; a name without an entry is refused (``InvalidArgument``);
* no ``GROUP``: the supplementary groups are every /etc/group entry that lists the matched user
  name as a member; ``GROUP`` (name or gid, the same rules) replaces the primary gid and there are
  no supplementary groups.

The files are the container's, read by the container's init after pivot_root (or by an exec'd
process after it joined the mount namespace): a symlink in the image then resolves inside the
container's root, never on the host. They are still untrusted: opened without blocking (a FIFO
would hang the start), only regular files, at most ``MAX_DB_BYTES``, and parsed defensively
(malformed lines are skipped, ids outside 0..2^31-1 ignored). A missing file is an empty
database. A file that cannot be read is an error only when a name has to be looked up in it.

Everything here runs between fork and exec, so it imports nothing at call time.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from typing import Sequence

from runtime.errors import InvalidArgument

PASSWD_PATH = "/etc/passwd"
GROUP_PATH = "/etc/group"
MAX_DB_BYTES = 4 << 20  # far beyond any real passwd or group file
MAX_ID = (1 << 31) - 1  # runc's limit: uid_t is 32 bits and (uid_t)-1 means "unchanged"
ROOT_HOME = "/root"  # root's home when no passwd entry names one (what containers always had here)
DEFAULT_HOME = "/"  # anybody else's (Docker's default)
MAX_USER_TEXT = 256

# POSIX portable names, plus what distributions allow on top ('@' in LDAP-ish names, a trailing
# '$' for machine accounts); no ':' (the separator), no whitespace, no '/'
_NAME_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]*\$?")
_ID_RE = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class UserSpec:
    """``USER[:GROUP]`` split; ``user`` is ``""`` for the default (root)."""

    user: str = ""
    group: str = ""


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str = ""


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class Credentials:
    """What the process runs as: setgroups(``groups``), setresgid(``gid``), setresuid(``uid``)."""

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()  # supplementary only; the primary gid is not repeated here
    home: str = ROOT_HOME


ROOT = Credentials()


def parse_user(text: str) -> UserSpec:
    """Check the syntax of ``USER[:GROUP]`` (names or numbers; nothing is looked up).

    Raises:
        InvalidArgument: not of that form.
    """
    if not isinstance(text, str) or len(text) > MAX_USER_TEXT:
        raise InvalidArgument(f"invalid user {str(text)[:64]!r}: expected USER[:GROUP]")
    if text == "":
        return UserSpec()
    user, sep, group = text.partition(":")
    for part, what in ((user, "user"), (group, "group")):
        if part == "" and (what == "user" or sep):
            raise InvalidArgument(f"invalid user {text!r}: expected USER[:GROUP] with a non-empty {what}",
                                  hint="a name or a number, e.g. -u nobody, -u 1000:1000")
        if part and not (_NAME_RE.fullmatch(part) or _ID_RE.fullmatch(part)):
            raise InvalidArgument(f"invalid {what} {part!r} in {text!r}: expected a name or a number")
        if _ID_RE.fullmatch(part) and int(part) > MAX_ID:
            raise InvalidArgument(f"invalid {what} id {part} in {text!r}: expected 0 to {MAX_ID}")
    return UserSpec(user, group)


def validate_user(text: str) -> str:
    """``text`` if it is a valid ``USER[:GROUP]`` (or empty); ``InvalidArgument`` otherwise."""
    parse_user(text)
    return text


def _id(text: str) -> int | None:
    if not _ID_RE.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def _lines(data: bytes) -> list[list[str]]:
    """The ':'-separated fields of each line, but comments, blank and NIS ('+'/'-') lines."""
    rows = []
    for raw in data.split(b"\n"):
        line = raw.decode("utf-8", "replace").strip()
        if not line or line[0] in "#+-":
            continue
        rows.append(line.split(":"))
    return rows


def parse_passwd(data: bytes) -> list[PasswdEntry]:
    """The entries of an /etc/passwd (``name:password:uid:gid:gecos:home:shell``); lines without
    a name or with ids that are not numbers in range are skipped."""
    entries = []
    for fields in _lines(data):
        if len(fields) < 4 or not fields[0]:
            continue
        uid, gid = _id(fields[2]), _id(fields[3])
        if uid is None or gid is None:
            continue
        entries.append(PasswdEntry(fields[0], uid, gid, fields[5] if len(fields) > 5 else ""))
    return entries


def parse_group(data: bytes) -> list[GroupEntry]:
    """The entries of an /etc/group (``name:password:gid:member,member``); malformed lines are
    skipped."""
    entries = []
    for fields in _lines(data):
        if len(fields) < 3 or not fields[0]:
            continue
        gid = _id(fields[2])
        if gid is None:
            continue
        members = tuple(m.strip() for m in fields[3].split(",") if m.strip()) if len(fields) > 3 else ()
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


def resolve(spec: UserSpec, passwd: Sequence[PasswdEntry], groups: Sequence[GroupEntry]) -> Credentials:
    """The credentials ``spec`` means in a container with these databases (module docstring).

    Raises:
        InvalidArgument: a user or group name that no entry has.
    """
    uid_arg = _id(spec.user) if spec.user else 0
    if spec.user == "":
        match = next((e for e in passwd if e.uid == 0), None)
    elif uid_arg is not None:
        match = next((e for e in passwd if e.uid == uid_arg), None)
    else:
        match = next((e for e in passwd if e.name == spec.user), None)
    if match is not None:
        uid, gid, home, name = match.uid, match.gid, match.home, match.name
    elif uid_arg is not None:
        uid, gid, home, name = uid_arg, 0, "", ""
    else:
        raise InvalidArgument(f"unable to find user {spec.user}: no matching entry in the container's {PASSWD_PATH}",
                              hint="give a numeric uid (-u 1000[:1000]) or use a user the image defines")
    supplementary: tuple[int, ...] = ()
    if spec.group:
        gid_arg = _id(spec.group)
        found = next((g for g in groups if (g.gid == gid_arg if gid_arg is not None else g.name == spec.group)), None)
        if found is not None:
            gid = found.gid
        elif gid_arg is not None:
            gid = gid_arg
        else:
            raise InvalidArgument(f"unable to find group {spec.group}: no matching entry in the container's {GROUP_PATH}",
                                  hint="give a numeric gid (-u USER:1000) or use a group the image defines")
    elif name:
        supplementary = tuple(dict.fromkeys(g.gid for g in groups if name in g.members))
    if not home:
        home = ROOT_HOME if uid == 0 else DEFAULT_HOME
    return Credentials(uid=uid, gid=gid, groups=supplementary, home=home)


def read_db(path: str) -> bytes | None:
    """The content of a passwd/group file (module docstring); ``None`` when there is none.

    Raises:
        OSError: it exists but is not a regular file, is too large or cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > MAX_DB_BYTES:
                raise OSError(errno.EFBIG, f"larger than {MAX_DB_BYTES} bytes", path)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def lookup(text: str, passwd_path: str = PASSWD_PATH, group_path: str = GROUP_PATH) -> Credentials:
    """``USER[:GROUP]`` resolved in this process's view of the container's files.

    A database that cannot be read counts as empty when no name has to be found in it (numbers
    and the default root need none), and refuses the lookup otherwise.

    Raises:
        InvalidArgument: bad syntax, an unknown name, or an unreadable file that a name needs.
    """
    spec = parse_user(text)
    need_passwd = _id(spec.user) is None and spec.user != ""
    need_group = bool(spec.group) and _id(spec.group) is None
    passwd = parse_passwd(_read_or_empty(passwd_path, need_passwd, spec.user))
    groups = parse_group(_read_or_empty(group_path, need_group, spec.group))
    return resolve(spec, passwd, groups)


def _read_or_empty(path: str, needed: bool, name: str) -> bytes:
    try:
        return read_db(path) or b""
    except OSError as exc:
        if not needed:
            return b""
        reason = exc.strerror or type(exc).__name__
        raise InvalidArgument(f"cannot look up {name} in the container's {path}: {reason}",
                              hint="use numeric ids (-u UID[:GID])") from None
