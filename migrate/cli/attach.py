"""``attach``, and the user's side of ``run -it`` and ``exec -it``.

- A ``-t`` container's terminal belongs to its shim (runtime/console.py); this side connects to
  the container's attach socket, puts the user's terminal in raw mode (so Ctrl-C, Ctrl-D and
  arrows reach the container as bytes), sends what the user types, writes what the container
  prints, and forwards the user's window size at once and on every SIGWINCH.
- The detach keys (docker's default Ctrl-p Ctrl-q; ``--detach-keys``) end the attachment and
  leave the container running: exit 0. A container that ends while attached makes its exit code
  this command's.
- A container without ``-t``: its output is its log (followed from its current end, as
  ``docker attach`` shows only new output) and, with ``-i``, stdin is sent to the shim; the end
  of stdin closes the container's stdin.
- ``exec -t``: this side owns the pty (as runc's console socket gives the master to its caller):
  the exec'd process gets the slave, this process relays the master.
Over ``--host`` (not ``run``/``start -a``, still local only): the daemon's Attach call relays the same
(migrate/remote/attach_stream.py; the detach keys are scanned on this side).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import selectors
import signal
import socket
import sys
import termios
import threading
import tty as _tty
from contextlib import contextmanager
from typing import Any, Iterator

from migrate.cli import EXIT_OK

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("attach", help="attach to a running container's terminal or output")
    p.add_argument("--detach-keys", default=DEFAULT_DETACH_KEYS, metavar="KEYS",
                   help="key sequence that detaches (default ctrl-p,ctrl-q)")
    p.add_argument("--no-stdin", action="store_true", help="do not send this terminal's input")
    p.add_argument("name")
    p.set_defaults(handler=cmd_attach)


def parse_detach_keys(text: str) -> bytes:
    """docker's ``--detach-keys`` format: comma-separated ``ctrl-X`` (X in a-z @ [ \\ ] ^ _) or
    single characters, e.g. ``ctrl-p,ctrl-q``; "" disables detaching.

    Raises:
        InvalidArgument: an element that is neither.
    """
    from runtime.errors import InvalidArgument

    if text == "":
        return b""
    out = bytearray()
    for item in text.split(","):
        low = item.lower()
        if low.startswith("ctrl-") and len(low) == 6 and (low[5].isalpha() or low[5] in "@[\\]^_"):
            out.append(ord(low[5].upper()) & 0x1F)
        elif len(item) == 1:
            out += item.encode()
        else:
            raise InvalidArgument(f"invalid detach keys {text!r}: {item!r} is not ctrl-<key> or one character",
                                  hint="e.g. --detach-keys ctrl-p,ctrl-q")
    return bytes(out)


class DetachScanner:
    """Finds the detach sequence in typed input; holds back a partial match until it is decided."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self._held = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to send on, whether the sequence was completed)."""
        if not self.keys:
            return data, False
        out = bytearray()
        for b in data:
            if b == self.keys[self._held]:
                self._held += 1
                if self._held == len(self.keys):
                    self._held = 0
                    return bytes(out), True
                continue
            out += self.keys[: self._held]
            self._held = 0
            if b == self.keys[0]:
                self._held = 1
                if len(self.keys) == 1:
                    return bytes(out), True
            else:
                out.append(b)
        return bytes(out), False


# -- the user's terminal ----------------------------------------------------------------------------


@contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """``fd``'s terminal in raw mode for the block (nothing if it is not a terminal)."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    _tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextmanager
def window_changes() -> Iterator[int]:
    """A pipe's read end that becomes readable on every SIGWINCH."""
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def on_winch(_signum: int, _frame: Any) -> None:
        try:
            os.write(w, b"w")
        except OSError:  # a full pipe already says "changed"
            pass

    old = signal.signal(signal.SIGWINCH, on_winch)
    try:
        yield r
    finally:
        signal.signal(signal.SIGWINCH, old)
        os.close(r)
        os.close(w)


def terminal_size(*fds: int) -> tuple[int, int] | None:
    from runtime.console import get_size

    for fd in fds:
        if os.isatty(fd):
            try:
                return get_size(fd)
            except OSError:
                continue
    return None


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _write_out(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- attach to a shim's console -----------------------------------------------------------------------


DETACHED = None  # what attach_console returns when the user detached


def connect(path: Any, name: str) -> socket.socket:
    """A connection to the attach socket of container ``name``.

    Raises:
        InvalidState: the container has no terminal or stdin to attach to (or just ended).
    """
    from runtime.errors import InvalidState

    from runtime import console

    try:
        return console.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise InvalidState(name, "attach to", "without a terminal or stdin", "started with -t or -i") from exc


def attach_console(sock: socket.socket, *, interactive: bool, detach_keys: bytes,
                   stdin_fd: int = 0, stdout_fd: int = 1, write_output: bool = True) -> int | None:
    """Relay a ``-t`` container's terminal over ``sock`` until it exits (its exit code), the user
    detaches (``DETACHED``) or the shim goes away (-1)."""
    from runtime import console

    sel = selectors.DefaultSelector()
    reader = console.FrameReader()
    scanner = DetachScanner(detach_keys if os.isatty(stdin_fd) else b"")
    with sock, raw_terminal(stdin_fd) if interactive else _nothing(), window_changes() as winch:
        size = terminal_size(stdin_fd, stdout_fd)
        if size is not None:
            sock.sendall(console.pack_resize(*size))
        sel.register(sock, selectors.EVENT_READ, "sock")
        sel.register(winch, selectors.EVENT_READ, "winch")
        if interactive:
            sel.register(stdin_fd, selectors.EVENT_READ, "stdin")
        while True:
            for key, _ in sel.select():
                if key.data == "winch":
                    _drain_pipe(winch)
                    size = terminal_size(stdin_fd, stdout_fd)
                    if size is not None:
                        sock.sendall(console.pack_resize(*size))
                elif key.data == "stdin":
                    data = os.read(stdin_fd, 65536)
                    if not data:
                        sel.unregister(stdin_fd)
                        continue
                    data, detach = scanner.feed(data)
                    if data:
                        sock.sendall(console.pack(console.DATA, data))
                    if detach:
                        return DETACHED
                else:
                    data = sock.recv(65536)
                    if not data:
                        return -1
                    for kind, payload in reader.feed(data):
                        if kind == console.DATA and write_output:
                            _write_out(stdout_fd, payload)
                        elif kind == console.EXIT:
                            return console.unpack_exit(payload)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def forward_stdin(sock: socket.socket, stdin_fd: int = 0) -> threading.Thread:
    """``-i`` without ``-t``: send stdin to the container's stdin pipe in a thread, then its end."""
    from runtime import console

    def pump() -> None:
        try:
            while data := os.read(stdin_fd, 65536):
                sock.sendall(console.pack(console.DATA, data))
            sock.sendall(console.pack(console.STDIN_EOF))
        except OSError:  # the container (and its shim's socket) ended first
            pass

    thread = threading.Thread(target=pump, name="stdin", daemon=True)
    thread.start()
    return thread


def follow_output(engine: Any, name: str, *, tail: int | None = None, write: bool = True) -> bool:
    """Write the container's log as it grows until the container exits (stdout to our stdout,
    stderr to our stderr); ``tail``: of what it printed already, only the last N lines (0: none).
    Returns whether our stdout was left in the middle of a line."""
    return pass_output(engine.logs(name, follow=True, tail=tail), write=write)


def pass_output(entries: Iterator[Any], *, write: bool = True) -> bool:
    """``follow_output`` of entries asked for already (engine.logs fixes the lines written before
    when it is called: a tail of 0 then shows everything printed after the call)."""
    from migrate.cli.logs import write_entries

    if write:
        return write_entries(entries)
    for _ in entries:
        pass
    return False


@contextmanager
def forward_signals(engine: Any, name: str) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP sent to this process go to the container's init instead
    (docker's sig-proxy) while a foreground ``run -t``/``-i`` is attached; with a raw terminal
    Ctrl-C is a byte for the container anyway."""

    def forward(signum: int, _frame: Any) -> None:
        try:
            engine.kill(name, signum)
        except Exception:  # the container may be gone already
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def remote_terminal(stdin_fd: int = 0, stdout_fd: int = 1) -> Any:
    """This terminal's habits lent to a ``--host`` exec or attach (migrate/remote/attach_stream.py)."""
    from migrate.remote.attach_stream import Terminal

    return Terminal(size=lambda: terminal_size(stdin_fd, stdout_fd), raw=lambda: raw_terminal(stdin_fd),
                    window_changes=window_changes, scanner=DetachScanner)


def require_local(engine: Any, what: str) -> None:
    if not hasattr(engine, "attach_socket"):
        from runtime.errors import Unsupported

        raise Unsupported(what, "only on the container's own host (no remote attach yet)",
                          hint="run pymigrate there, or use -d and then pymigrate --host HOST attach")


def attach(ctx: Any, name: str, *, detach_keys: bytes, stdin: bool = True, whole_log: bool = False) -> int | None:
    """Attach to container ``name`` (``-t``: its terminal; else its output and, with ``-i``, its
    stdin); its exit code, or ``DETACHED``. ``whole_log``: a container without ``-t`` shows its log
    from the start (``run -i``: nothing it printed before this is lost), else only new output."""
    from runtime.errors import InvalidState

    engine = ctx.engine
    if not whole_log and not hasattr(engine, "attach_socket"):  # --host: the daemon's Attach call
        spec = engine.inspect(name).spec
        sys.stdout.flush()
        with open(os.devnull, "wb") as null:  # --json: only the answer on stdout, as locally
            return engine.attach(name, tty=spec.tty, interactive=stdin and spec.interactive, detach_keys=detach_keys,
                                 terminal=remote_terminal(), stdout_fd=null.fileno() if ctx.json else 1)
    require_local(engine, "attach")
    try:
        spec, path = engine.attach_socket(name)
        sock = connect(path, name) if spec.tty or (stdin and spec.interactive) else None
    except InvalidState:
        if not whole_log:
            raise
        # run: a command that ended before we could connect; what it printed is in its log
        spec = engine.inspect(name).spec
        if spec.tty:  # its terminal already turned \n into \r\n: the user's must not add another \r
            with raw_terminal(1):
                follow_output(engine, name, write=not ctx.json)
            return int(engine.wait(name))
        spec, sock = dataclasses.replace(spec, interactive=False), None
    if spec.tty and sock is not None:
        sys.stdout.flush()
        code = attach_console(sock, interactive=stdin and spec.interactive, detach_keys=detach_keys,
                              write_output=not ctx.json)
        return engine.wait(name) if code == -1 else code
    entries = engine.logs(name, follow=True, tail=None if whole_log else 0)  # before any input: its answer is new
    if sock is not None:
        forward_stdin(sock)
    pass_output(entries, write=not ctx.json)
    return int(engine.wait(name))


def cmd_attach(args: argparse.Namespace, ctx: Any) -> int:
    keys = parse_detach_keys(args.detach_keys)
    code = attach(ctx, args.name, detach_keys=keys, stdin=not args.no_stdin)
    if ctx.json:
        ctx.emit_json({"name": args.name, "detached": code is DETACHED, "exit_code": code})
    return EXIT_OK if code is None else code


# -- exec -t: this side owns the pty ------------------------------------------------------------------


def exec_console(interactive: bool, stdin_fd: int = 0, stdout_fd: int = 1) -> Any:
    """A ``runtime.console.ExecConsole`` for ``exec -t``: this terminal's size, and the relay."""
    from runtime.console import ExecConsole

    def relay(master: int) -> None:
        relay_pty(master, interactive=interactive, stdin_fd=stdin_fd, stdout_fd=stdout_fd)

    return ExecConsole(relay=relay, size=terminal_size(stdin_fd, stdout_fd))


def relay_pty(master: int, *, interactive: bool, stdin_fd: int = 0, stdout_fd: int = 1) -> None:
    """Copy between the user's terminal and ``master`` until the exec'd side closed the terminal."""
    from runtime.console import set_size

    sel = selectors.DefaultSelector()
    with raw_terminal(stdin_fd) if interactive else _nothing(), window_changes() as winch:
        sel.register(master, selectors.EVENT_READ, "master")
        sel.register(winch, selectors.EVENT_READ, "winch")
        if interactive:
            sel.register(stdin_fd, selectors.EVENT_READ, "stdin")
        while True:
            for key, _ in sel.select():
                if key.data == "winch":
                    _drain_pipe(winch)
                    size = terminal_size(stdin_fd, stdout_fd)
                    if size is not None:
                        set_size(master, *size)
                elif key.data == "stdin":
                    data = os.read(stdin_fd, 65536)
                    if not data:
                        sel.unregister(stdin_fd)
                        continue
                    _write_out(master, data)
                else:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: every slave is closed, the process is gone
                        data = b""
                    if not data:
                        return
                    _write_out(stdout_fd, data)
