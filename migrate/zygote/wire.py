"""What the front and the zygote share: where the socket is, what must match, how bytes are framed.

Imported by every ``pymigrate`` start, so only builtin or tiny C modules here (``_socket`` and
``_struct``, not ``socket``/``struct``: those import ``enum``, ~2-5 ms on a loaded host).

A zygote may only run a command the way the plain CLI would, so the caller and the zygote must be
the same kind of process: the same interpreter, flags, ``sys.path`` and package, the same user,
namespaces, cgroup, limits, capabilities, seccomp, CPU set, priority and LSM label, and the same
environment except the variables a shell changes on every command (``VOLATILE_ENV``; the worker
gets the caller's exact environment anyway). ``fingerprint()`` collects those; the socket's name
is a checksum of it (one zygote per kind of caller, no thrashing between two of them), and the
zygote compares the whole value, so a checksum collision only declines.
"""

from __future__ import annotations

import _socket
import _struct
import marshal
import os
import sys
import zlib

TYPE_CHECKING = False  # typing itself costs ~5 ms of every start
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"PMZ1"
HEADER = _struct.Struct("!4sI")  # magic, payload length
MAX_REQUEST = 4 << 20
N_FDS = 4  # stdin, stdout, stderr, the cwd (O_PATH)
DEFAULT_DIR = "/run/pymigrate/zygote"
# changed by shells on every command, or the front's own switch: not part of the match
VOLATILE_ENV = frozenset((b"PWD", b"OLDPWD", b"_", b"SHLVL", b"PYMIGRATE_ZYGOTE"))
_NAMESPACES = ("mnt", "net", "pid", "pid_for_children", "uts", "ipc", "user", "cgroup", "time")
_STATUS_KEYS = (b"Uid:", b"Gid:", b"Groups:", b"CapInh:", b"CapPrm:", b"CapEff:", b"CapBnd:", b"CapAmb:",
                b"NoNewPrivs:", b"Seccomp:", b"Cpus_allowed_list:", b"Mems_allowed_list:")
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def socket_dir() -> str:
    return os.environ.get("PYMIGRATE_ZYGOTE_DIR") or DEFAULT_DIR


def _read(path: str) -> bytes:
    try:
        with open(path, "rb", buffering=0) as f:
            return f.read()
    except OSError:
        return b""


def _ns(name: str) -> int:
    try:
        return os.stat(f"/proc/self/ns/{name}").st_ino
    except OSError:
        return 0


def stable_env(env: Any) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(sorted((k, v) for k, v in env.items() if k not in VOLATILE_ENV))


def fingerprint() -> tuple[Any, ...]:
    """This process as a zygote must match it (everything but the environment: ``stable_env``)."""
    status = tuple(line for line in _read("/proc/self/status").splitlines() if line.startswith(_STATUS_KEYS))
    return (
        sys.executable, sys.hexversion, tuple(sys.path), PACKAGE_DIR, tuple(sys.flags), tuple(sorted(sys._xoptions.items())),
        tuple(sys.warnoptions), os.geteuid(), os.getegid(), tuple(_ns(n) for n in _NAMESPACES), _read("/proc/self/cgroup"),
        _read("/proc/self/limits"), status, _read("/proc/self/oom_score_adj"), _read("/proc/self/attr/current"),
        os.getpriority(os.PRIO_PROCESS, 0),
    )


def socket_path(fp: tuple[Any, ...], env: tuple[tuple[bytes, bytes], ...]) -> str:
    data = marshal.dumps((fp, env))
    return os.path.join(socket_dir(), f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}.sock")


def dir_is_safe(path: str) -> bool:
    """Ours and nobody else's: a directory (not a link) owned by us, no group or other access."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_mode & 0o170000) == 0o040000 and st.st_uid == os.geteuid() and st.st_mode & 0o077 == 0


def peer_uid(sock: Any) -> int:
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int(_struct.unpack("3i", creds)[1])


def encode_request(request: dict[str, Any]) -> bytes:
    payload = marshal.dumps(request)
    return HEADER.pack(MAGIC, len(payload)) + payload


def fds_message(fds: list[int]) -> list[tuple[int, int, bytes]]:
    return [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _struct.pack(f"{len(fds)}i", *fds))]


def fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            n = len(data) // 4
            fds.extend(_struct.unpack(f"{n}i", data[: 4 * n]))
    return fds


# Replies, one line each: A<worker pid> accepted; D<reason> declined (run it yourself);
# X<exit code> the worker's end. From the front after A: S<signal number> (deliver to the worker).
def line(kind: bytes, value: object) -> bytes:
    return kind + str(value).encode() + b"\n"
