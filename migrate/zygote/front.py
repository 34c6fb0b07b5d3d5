"""The ``pymigrate`` entry point: hand the command to a zygote when one answers, else run it here.

``PYMIGRATE_ZYGOTE=1`` turns the fast path on (``debug``: the same, plus one stderr line saying
which way the command went). Off by default: a worker is the zygote's child, not the caller's, so
whatever the caller's process is beyond what ``wire.fingerprint`` compares (its session and
controlling terminal, its parent) differs, and the whole integration suite has not been run
through it yet. Only commands that neither read a terminal nor run in the foreground go through
it (``eligible``); ``-i``/``-t``/``-a``, ``exec``, ``attach``, ``logs``, ``migrate``, ``daemon`` ...
run here as before.

With the fast path on and no zygote answering (none yet, declined, stale code), the command runs
here, after starting a zygote, detached, for the next command; it exits after
``PYMIGRATE_ZYGOTE_IDLE_S`` (default 600) idle seconds.

Signals the caller gets (Ctrl-C, ``kill``) are sent on to the worker; the worker's exit code (128 +
N when a signal killed it) becomes this process's.
"""

from __future__ import annotations

import _signal
import _socket
import os
import sys
import time

TYPE_CHECKING = False  # typing itself costs ~5 ms of every start
if TYPE_CHECKING:
    from typing import Any

from migrate.zygote import wire

# commands that never take a terminal nor wait in the foreground (per eligible's checks)
FAST = frozenset(("ps", "inspect", "rm", "stop", "kill", "pause", "unpause", "rename", "port", "create", "run", "start",
                  "checkpoint", "restore", "image", "volume", "version"))
_GLOBAL_FLAGS = frozenset(("--json", "--debug"))
# a foreground or terminal run: stays in the caller's own process
_TERMINAL = frozenset(("-i", "--interactive", "-t", "--tty", "-a", "--attach"))
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1, _signal.SIGUSR2)


def eligible(argv: list[str]) -> bool:
    """True when the zygote may run ``argv``: global options it knows, then a command from FAST
    without terminal or foreground flags (any token that could be one: refusing is always safe)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        token = argv[i]
        if token == "--root":
            i += 2
            continue
        if not (token in _GLOBAL_FLAGS or token.startswith("--root=")):
            return False
        i += 1
    if i >= len(argv) or argv[i] not in FAST:
        return False
    command, rest = argv[i], argv[i + 1:]
    if command in ("run", "start") and any(_terminal_flag(t) for t in rest):
        return False
    return command != "run" or "-d" in rest or "--detach" in rest


def _terminal_flag(token: str) -> bool:
    if token in _TERMINAL or token.startswith(("--attach=", "--tty=", "--interactive=")):
        return True
    # a bundle of short flags (-dit): any i, t or a in it
    return token.startswith("-") and not token.startswith("--") and any(c in token[1:] for c in "ita")


# a zygote declining for these has left (or never was): start a fresh one
RESTART = frozenset(("absent", "declined:stale", "declined:fingerprint", "declined:env", "declined:threads", "declined:closed"))


def main() -> int:
    argv = sys.argv[1:]
    mode = os.environ.get("PYMIGRATE_ZYGOTE", "")
    if mode not in ("1", "debug") or os.geteuid() != 0 or not eligible(argv):
        return _plain()
    fp = wire.fingerprint()
    env = wire.stable_env(os.environb)
    path = wire.socket_path(fp, env)
    t0 = time.perf_counter()
    outcome, code = _try_zygote(path, fp, argv)
    if mode == "debug":
        os.write(2, f"pymigrate: zygote {outcome} ({(time.perf_counter() - t0) * 1000:.1f} ms)\n".encode())
    if code is not None:  # served: the worker wrote the output; this interpreter's own teardown
        sys.stdout.flush()  # (its modules, the collector: 5-10 ms of every served command at load 3.5) is skipped
        sys.stderr.flush()
        os._exit(code)
    if outcome in RESTART:
        # before the command: the zygote must be what a fresh `pymigrate` is (a command may change
        # its own process: pycriu's import appends to sys.path, limits, ...), else it never matches
        _start_zygote(path)
    return _plain()


def _plain() -> int:
    from migrate.cli import main as cli_main

    return cli_main()


def _try_zygote(path: str, fp: tuple[Any, ...], argv: list[str]) -> tuple[str, int | None]:
    """("served", exit code), or (why not, None): absent, declined:<reason>, lost."""
    if not wire.dir_is_safe(os.path.dirname(path)):
        return "absent", None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError:
            return "absent", None
        if wire.peer_uid(sock) != os.geteuid():
            return "declined:peer", None
        return _handover(sock, fp, argv)
    finally:
        sock.close()


def _handover(sock: Any, fp: tuple[Any, ...], argv: list[str]) -> tuple[str, int | None]:
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        request = {"argv": list(sys.argv), "env": dict(os.environb), "umask": umask, "fp": fp}
        sock.sendmsg([wire.encode_request(request)], wire.fds_message([0, 1, 2, cwd]))
    except OSError:  # a closed stdio fd (EBADF), or the zygote went away
        return "declined:send", None
    finally:
        os.close(cwd)
    reader = _Lines(sock)
    first = reader.next()
    if not first.startswith(b"A"):
        return ("declined:" + first[1:].decode(errors="replace")) if first else "declined:closed", None
    return "served", _wait_exit(sock, reader)


def _wait_exit(sock: Any, reader: _Lines) -> int:
    """Relay our signals to the worker until its exit code comes."""
    def forward(signum: int, _frame: Any) -> None:
        try:
            sock.send(wire.line(b"S", signum))
        except OSError:
            pass

    for signum in FORWARDED:
        _signal.signal(signum, forward)
    last = reader.next()
    for signum in FORWARDED:
        _signal.signal(signum, _signal.SIG_DFL if signum != _signal.SIGINT else _signal.default_int_handler)
    if last.startswith(b"X"):
        return int(last[1:])
    os.write(2, b"pymigrate: the zygote went away before the command ended (its result is unknown)\n")
    return 125


class _Lines:
    def __init__(self, sock: Any) -> None:
        self.sock, self.buf = sock, b""

    def next(self) -> bytes:
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                chunk = b""
            if not chunk:
                return b""
            self.buf += chunk
        first, _, self.buf = self.buf.partition(b"\n")
        return first


def _start_zygote(path: str) -> None:
    """A zygote for the next command: this interpreter with our flags and sys.path, detached,
    stdio on /dev/null (it must not hold a caller's pipe open), in a session of its own."""
    try:
        import subprocess

        code = f"import sys; sys.path[:] = {sys.path!r}; from migrate.zygote.server import main; sys.exit(main({path!r}))"
        subprocess.Popen([sys.executable, *subprocess._args_from_interpreter_flags(), "-c", code],  # type: ignore[attr-defined]
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, cwd="/")
    except Exception:  # noqa: BLE001 - only a speed-up for the next command
        pass
