"""The caller's side of Exec and Attach: this process's stdio bridged to a bidirectional gRPC call.

- A tty session puts the user's terminal in raw mode (with ``-i``), sends what the user types as
  ``stdin`` messages, writes ``stdout`` messages as they come, and sends the terminal's size on
  every SIGWINCH (``resize``). The detach keys (attach only) end the call: the daemon then stops
  relaying and the container runs on.
- Without a tty, ``stdout`` and ``stderr`` messages go to this process's stdout and stderr; with
  ``-i`` stdin is read in a thread (a pipe or a file works too) and its end becomes ``close_stdin``.
- The call's last message is the exit code; it is returned (``DETACHED``, None, after a detach).

The user's terminal is the CLI's business (raw mode, SIGWINCH, detach keys: migrate/cli/attach.py,
which migrate.remote must not import): the CLI lends it as a ``Terminal``, as a local ``exec -t``
gets an ExecConsole; without one a session has no raw mode, no resizes and no detach keys.
"""

from __future__ import annotations

import os
import queue
import selectors
import threading
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

DETACHED = None
READ_BYTES = 65536


class _PassThrough:
    """A detach scanner that never detaches."""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        return data, False


@dataclass
class Terminal:
    """The caller's terminal habits (migrate/cli/attach.py ``remote_terminal`` builds the real one)."""

    size: Callable[[], "tuple[int, int] | None"] = lambda: None  # (rows, cols) of the user's terminal
    raw: Callable[[], AbstractContextManager[Any]] = nullcontext  # raw mode for the block
    window_changes: Callable[[], AbstractContextManager[Any]] = field(default=lambda: nullcontext(None))  # a pipe fd, readable on SIGWINCH
    scanner: Callable[[bytes], Any] = lambda keys: _PassThrough()  # DetachScanner(keys)


class Outbox:
    """The request iterator gRPC reads (in its own thread): messages put here, until ``close``."""

    def __init__(self, first: Any) -> None:
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._queue.put(first)

    def put(self, message: Any) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[Any]:
        while (message := self._queue.get()) is not None:
            yield message


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Input:
    """Reads stdin (and, with a tty, window changes) into the outbox in a thread until ``stop``."""

    def __init__(self, outbox: Outbox, make: Callable[..., Any], *, stdin_fd: int | None, winch_fd: int | None,
                 size: Callable[[], tuple[int, int] | None], scanner: Any, tty: bool) -> None:
        self.outbox, self.make, self.size, self.tty = outbox, make, size, tty
        self.scanner = scanner
        self.detached = threading.Event()
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        # select(2), not epoll: stdin may be a regular file, which epoll refuses
        self.sel = selectors.SelectSelector()
        self.sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        if stdin_fd is not None:
            self.sel.register(stdin_fd, selectors.EVENT_READ, "stdin")
        if winch_fd is not None:
            self.sel.register(winch_fd, selectors.EVENT_READ, "winch")
        self.on_detach: Callable[[], None] = lambda: None
        self.thread = threading.Thread(target=self._run, name="stdin", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self.thread.join(2.0)
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _resize(self) -> None:
        size = self.size()
        if size is not None:
            self.outbox.put(self.make(resize=_terminal_size(*size)))

    def _run(self) -> None:
        while True:
            for key, _ in self.sel.select():
                if key.data == "stop":
                    return
                if key.data == "winch":
                    _drain(key.fd)
                    self._resize()
                elif not self._stdin(key.fd):
                    return

    def _stdin(self, fd: int) -> bool:
        data = os.read(fd, READ_BYTES)
        if not data:
            self.sel.unregister(fd)
            if not self.tty:  # a terminal's "end" is a byte (Ctrl-D) the container reads itself
                self.outbox.put(self.make(close_stdin=True))
            return True
        data, detach = self.scanner.feed(data)
        if data:
            self.outbox.put(self.make(stdin=data))
        if detach:
            self.detached.set()
            self.on_detach()
            return False
        return True


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _terminal_size(rows: int, cols: int) -> Any:
    from migrate._proto.pymigrate.v1 import host_pb2 as pb

    return pb.TerminalSize(rows=rows, cols=cols)


def relay(open_call: Callable[[Iterator[Any]], Any], first: Any, make: Callable[..., Any], *, tty: bool,
          interactive: bool, detach_keys: bytes = b"", send_size: bool = False, terminal: Terminal | None = None,
          stdin_fd: int = 0, stdout_fd: int = 1, stderr_fd: int = 2) -> int | None:
    """Run one Exec or Attach call (``open_call(requests)`` -> its response iterator, with
    ``cancel``); ``first`` the opening message, ``make`` the request class. ``send_size``: send the
    terminal's size as the first ``resize`` (Attach; Exec carries it in ``first``). Returns the exit
    code or ``DETACHED``; a failed call raises its ``grpc.RpcError``."""
    import grpc

    term = terminal or Terminal()
    outbox = Outbox(first)
    with ExitStack() as stack:
        winch = stack.enter_context(term.window_changes()) if tty else None
        if tty and interactive:
            stack.enter_context(term.raw())
        if send_size and tty and (now := term.size()) is not None:
            outbox.put(make(resize=_terminal_size(*now)))
        keys = detach_keys if tty and os.isatty(stdin_fd) else b""
        pump = _Input(outbox, make, stdin_fd=stdin_fd if interactive else None, winch_fd=winch, size=term.size,
                      scanner=term.scanner(keys), tty=tty)
        call = open_call(iter(outbox))
        pump.on_detach = call.cancel
        pump.start()
        code: int | None = None
        try:
            for response in call:
                kind = response.WhichOneof("kind")
                if kind == "stdout":
                    _write_all(stdout_fd, response.stdout)
                elif kind == "stderr":
                    _write_all(stderr_fd, response.stderr)
                elif kind == "exit_code":
                    code = response.exit_code
        except grpc.RpcError:
            if pump.detached.is_set():
                return DETACHED
            raise
        finally:
            pump.stop()
            outbox.close()
            call.cancel()  # nothing when it finished
        return DETACHED if pump.detached.is_set() else code
