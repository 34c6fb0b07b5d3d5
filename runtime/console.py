"""A container's terminal (``run -t``) and stdin (``run -i``), owned by its shim, and the attach
socket clients reach them through.

- ``run -t``: the init opens a pty pair in the container's own devpts (after pivot_root, like
  runc's console: the slave belongs to a mount CRIU dumps), makes the slave its controlling
  terminal (setsid + TIOCSCTTY) and its stdio, and hands the master to the shim over a socketpair
  (SCM_RIGHTS). The shim reads the master all the time (a container never blocks on an absent
  client), appends what it reads to the container's log and copies it to attached clients.
- ``run -i`` without ``-t``: the init's stdin is a pipe whose write end the shim holds; output
  still goes straight to the log file (clients follow the log, as ``logs -f`` does).
- Clients connect to ``ATTACH_SOCKET`` in the container's directory (mode 0600, root only) and
  speak a framed protocol: one kind byte, a 4-byte big-endian length, the payload.
  client -> shim: ``DATA`` (stdin bytes), ``RESIZE`` (rows, cols: 2 x u16), ``STDIN_EOF``;
  shim -> client: ``DATA`` (terminal output), ``EXIT`` (the init's exit code, i32) as the last
  frame. Detaching is closing the connection: the container keeps running.
- Output written before the first client attached (a shell's first prompt, printed while
  ``run -it`` is still connecting) is kept (up to ``REPLAY_BYTES``) and sent to the first client.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import selectors
import socket
import struct
import termios
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

ATTACH_SOCKET = "attach.sock"  # in the container's directory
DATA, RESIZE, STDIN_EOF, EXIT = b"d", b"r", b"e", b"x"
_KINDS = frozenset((DATA, RESIZE, STDIN_EOF, EXIT))
_HEADER = struct.Struct(">cI")
MAX_FRAME_BYTES = 1 << 20
REPLAY_BYTES = 64 * 1024
_DRAIN_QUIET_S = 0.2  # after the init's exit: stop draining the master once it is quiet this long


class FrameError(ValueError):
    """A peer sent bytes that are not a frame of this protocol."""


def pack(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def pack_resize(rows: int, cols: int) -> bytes:
    return pack(RESIZE, struct.pack(">HH", max(0, min(rows, 0xFFFF)), max(0, min(cols, 0xFFFF))))


def pack_exit(code: int) -> bytes:
    return pack(EXIT, struct.pack(">i", code))


def unpack_resize(payload: bytes) -> tuple[int, int]:
    if len(payload) != 4:
        raise FrameError(f"resize frame of {len(payload)} bytes, expected 4")
    rows, cols = struct.unpack(">HH", payload)
    return rows, cols


def unpack_exit(payload: bytes) -> int:
    if len(payload) != 4:
        raise FrameError(f"exit frame of {len(payload)} bytes, expected 4")
    return int(struct.unpack(">i", payload)[0])


class FrameReader:
    """Splits a byte stream into ``(kind, payload)`` frames; refuses unknown kinds and huge frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= _HEADER.size:
            kind, size = _HEADER.unpack_from(self._buf)
            if kind not in _KINDS:
                raise FrameError(f"unknown frame kind {kind!r}")
            if size > MAX_FRAME_BYTES:
                raise FrameError(f"frame of {size} bytes, at most {MAX_FRAME_BYTES}")
            end = _HEADER.size + size
            if len(self._buf) < end:
                break
            frames.append((kind, bytes(self._buf[_HEADER.size:end])))
            del self._buf[:end]
        return frames


# -- the terminal, in the container's init --------------------------------------------------------


def open_terminal() -> tuple[int, int]:
    """A new pty pair (master, slave) from the devpts this process sees as /dev/pts."""
    return os.openpty()


def take_terminal(slave: int) -> None:
    """Make ``slave`` this session leader's controlling terminal and its stdin, stdout and stderr."""
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def set_size(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ: the kernel sends SIGWINCH to the terminal's foreground process group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_size(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


# -- what the shim serves ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """What a starter returns when the init has a terminal or a stdin pipe (else a bare pid)."""

    init_pid: int
    master_fd: int | None = None  # the pty master (run -t)
    stdin_fd: int | None = None  # write end of the init's stdin pipe (run -i without -t)
    log_fd: int | None = None  # where terminal output is appended (the container's log)
    interactive: bool = False  # clients' input reaches the container


def init_pid_of(started: "int | Started") -> int:
    return started.init_pid if isinstance(started, Started) else int(started)


class ConsoleServer:
    """The shim's side: a thread serving the attach socket, the pty master and the stdin pipe."""

    def __init__(self, socket_path: Path, started: Started) -> None:
        self.path = socket_path
        self._master = started.master_fd
        self._stdin = started.stdin_fd
        self._log = started.log_fd
        self._interactive = started.interactive
        self._sel = selectors.DefaultSelector()
        self._clients: dict[socket.socket, FrameReader] = {}
        self._replay: bytearray | None = bytearray()  # None once a client attached
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._exit_code: int | None = None
        self._thread = threading.Thread(target=self._serve, name="console", daemon=True)
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is created 0600: whoever reaches it drives the container
        try:
            with short_path(socket_path) as name:
                self._listener.bind(name)
        finally:
            os.umask(old)
        os.chmod(socket_path, 0o600)
        self._listener.listen(8)

    def start(self) -> None:
        self._thread.start()

    def finish(self, exit_code: int, timeout_s: float = 5.0) -> None:
        """The init exited: drain the terminal, send ``exit_code`` to every client, close all."""
        self._exit_code = exit_code
        os.write(self._wake_w, b"x")
        self._thread.join(timeout_s)

    # -- the thread ---------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            self._sel.register(self._listener, selectors.EVENT_READ, self._accept)
            self._sel.register(self._wake_r, selectors.EVENT_READ, None)
            if self._master is not None:
                os.set_blocking(self._master, False)
                self._sel.register(self._master, selectors.EVENT_READ, self._from_master)
            while self._exit_code is None:
                for key, _ in self._sel.select():
                    if key.data is not None:
                        key.data(key.fileobj)
            self._drain()
        except Exception:  # the shim's console must never take the shim down
            log.exception("console of %s failed", self.path.parent.name)
        finally:
            self._close()

    def _accept(self, _listener: object) -> None:
        conn, _ = self._listener.accept()
        conn.setblocking(True)
        self._clients[conn] = FrameReader()
        self._sel.register(conn, selectors.EVENT_READ, self._from_client)
        if self._replay:
            self._send(conn, pack(DATA, bytes(self._replay)))
        self._replay = None

    def _from_master(self, _fd: object) -> None:
        master = self._master
        assert master is not None  # registered only when there is one
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: no slave is open (the container's side is gone)
                raise
            data = b""
        if not data:
            self._sel.unregister(master)
            return
        self._output(data)

    def _output(self, data: bytes) -> None:
        if self._log is not None:
            try:
                _write_all(self._log, data)
            except OSError:  # a full disk must not stop the container's terminal
                log.warning("cannot append to the log of %s", self.path.parent.name, exc_info=True)
        if self._replay is not None:
            self._replay += data
            del self._replay[:-REPLAY_BYTES]
        frame = pack(DATA, data)
        for conn in list(self._clients):
            self._send(conn, frame)

    def _from_client(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
            frames = self._clients[conn].feed(data) if data else None
        except (OSError, FrameError) as exc:
            log.info("attach client of %s dropped: %s", self.path.parent.name, exc)
            frames = None
        if frames is None:
            self._drop(conn)
            return
        for kind, payload in frames:
            self._handle(kind, payload)

    def _handle(self, kind: bytes, payload: bytes) -> None:
        if kind == RESIZE and self._master is not None:
            rows, cols = unpack_resize(payload)
            set_size(self._master, rows, cols)
        elif kind == DATA and self._interactive:
            target = self._master if self._master is not None else self._stdin
            if target is not None:
                try:
                    _write_all(target, payload)
                except OSError:  # the reader went away; its exit ends the container soon
                    log.info("input to %s not delivered", self.path.parent.name)
        elif kind == STDIN_EOF and self._stdin is not None and self._master is None:
            os.close(self._stdin)
            self._stdin = None

    def _send(self, conn: socket.socket, frame: bytes) -> None:
        try:
            conn.sendall(frame)
        except OSError:
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        if self._clients.pop(conn, None) is not None:
            self._sel.unregister(conn)
        conn.close()

    def _drain(self) -> None:
        """Copy what the terminal still holds (the last lines before the exit), then say goodbye."""
        if self._master is not None:
            keys = self._sel.get_map()
            while self._master in keys:
                ready = self._sel.select(_DRAIN_QUIET_S)
                if not ready:
                    break
                for key, _ in ready:
                    if key.fileobj == self._master:
                        self._from_master(key.fileobj)
        # A client that connected while the init was exiting (``run -it`` of a command that ends
        # at once) waits in the listen backlog: take it in, with the output it missed, before the
        # goodbye. The path goes first, so a later connect fails and the client reads the log.
        self._unlink()
        self._accept_pending()
        frame = pack_exit(self._exit_code if self._exit_code is not None else -1)
        for conn in list(self._clients):
            self._send(conn, frame)

    def _unlink(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _accept_pending(self) -> None:
        self._listener.setblocking(False)
        while True:
            try:
                self._accept(self._listener)
            except (BlockingIOError, InterruptedError):
                return

    def _close(self) -> None:
        for conn in list(self._clients):
            self._drop(conn)
        self._unlink()
        self._listener.close()
        for fd in (self._master, self._stdin, self._log, self._wake_r, self._wake_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


@contextlib.contextmanager
def short_path(path: Path) -> Iterator[str]:
    """``path`` as a unix socket address: a long one (sun_path holds 107 bytes; a deep
    ``--root`` passes that) goes through /proc/self/fd of its directory, opened for the call."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def connect(path: Path) -> socket.socket:
    """A client connection to the attach socket at ``path`` (OSError if nobody listens there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with short_path(path) as name:
            sock.connect(name)
    except BaseException:
        sock.close()
        raise
    return sock


def serve(socket_path: Path, started: "int | Started") -> ConsoleServer | None:
    """Start serving ``started``'s terminal or stdin on ``socket_path``; None when it has neither."""
    if not isinstance(started, Started) or (started.master_fd is None and started.stdin_fd is None):
        return None
    server = ConsoleServer(socket_path, started)
    server.start()
    return server


# -- exec -t: the caller owns the master ------------------------------------------------------------


@dataclass(frozen=True)
class ExecConsole:
    """``exec -t``: the exec'd process opens a pty in the container's devpts (so ``tty`` and
    ``stty`` inside find it by name, as the init's), makes the slave its controlling terminal and
    stdio, sized ``size`` (rows, cols), and sends the master back; ``relay(master)`` runs in the
    caller once the process exec'd, until the terminal closes (the caller then closes the master)."""

    relay: Callable[[int], None]
    size: tuple[int, int] | None = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:  # the non-blocking master is full: wait until the container reads
            select.select([], [fd], [], 1.0)
