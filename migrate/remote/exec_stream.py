"""The daemon's side of Exec and Attach: one helper process per call, bridged to the gRPC stream.

Why a helper process: a local exec (``Runtime.exec`` -> runtime/process.py ``exec_in``) forks
into the container's namespaces, and ``fork()`` in the daemon -- a process full of gRPC threads --
is unsafe (the child can inherit locks other threads held; DEVELOPERS.md, runtime/shim.py). So the
daemon runs its own CLI, ``python -m migrate --root ROOT exec|attach ...``, with ``subprocess``:
``_posixsubprocess`` forks and execs at once with no Python code between, which is safe in a
threaded process. The helper then does exactly what a local ``pymigrate exec``/``attach`` does.

- With a tty the helper's stdin/stdout/stderr are the slave of a pty whose master this side
  holds (raw, so the container's own terminal's output passes unchanged). A resize sets the
  master's size and sends the helper SIGWINCH, which it forwards as for a user's terminal (the
  pty is not its controlling terminal: the signal is sent by hand).
- Without a tty: three pipes, so stdout and stderr stay apart; ``close_stdin`` closes the pipe.
- The helper's exit status is the call's exit code (exec: the command's, 126/127 when it could
  not be run; attach: the container's). The end of the request stream, or a cancelled call,
  means the caller went away or detached: the helper is killed (an attached container runs on;
  an exec'd process loses its terminal, SIGHUP, or its pipes).
"""

from __future__ import annotations

import functools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import tty as _tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from runtime.errors import InvalidArgument, Unsupported

READ_BYTES = 65536
LINGER_S = 0.5  # output still read after the helper exited, while it keeps coming
EOF = object()  # a reader's end, in the output queue


@dataclass
class Helper:
    """A running helper: its process and, with a tty, this side's pty master."""

    proc: subprocess.Popen  # type: ignore[type-arg]
    master: int | None = None

    def write_stdin(self, data: bytes) -> None:
        try:
            if self.master is not None:
                _write_all(self.master, data)
            elif self.proc.stdin is not None:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
        except OSError:  # the helper (or the process behind it) is gone: its exit code follows
            pass

    def close_stdin(self) -> None:
        if self.master is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def resize(self, rows: int, cols: int) -> None:
        from runtime.console import set_size

        if self.master is None or not rows or not cols:
            return
        set_size(self.master, rows, cols)
        try:
            os.kill(self.proc.pid, signal.SIGWINCH)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def helper_base(root: Path) -> list[str]:
    return [sys.executable, "-m", "migrate", "--root", str(root)]


def _package_parent() -> str:
    """The helper's cwd: where ``-m migrate`` finds this very package (a daemon started from a
    checkout, with another cwd, would otherwise run another pymigrate or none)."""
    import migrate

    return str(Path(migrate.__file__).resolve().parent.parent)


def _check_name(name: str) -> str:
    if not name or name.startswith("-"):
        raise InvalidArgument(f"invalid container name {name!r}", hint="name a container by its name or id")
    return name


def exec_argv(root: Path, start: Any) -> list[str]:
    """The helper's command line for an ``ExecStart`` (validated here: no option smuggling)."""
    from runtime.container import validate_env

    if not start.command:
        raise InvalidArgument(f"no command given to exec in container {start.name}")
    argv = [*helper_base(root), "exec"]
    if start.interactive:
        argv.append("--interactive")
    if start.tty:
        argv.append("--tty")
    # KEY=VALUE only: a bare KEY would take its value from the daemon's environment
    argv += [f"--env={e}" for e in validate_env(tuple(start.env))]
    if start.workdir:
        argv.append(f"--workdir={start.workdir}")
    if start.user:
        argv.append(f"--user={start.user}")
    # argparse drops the first "--" after NAME and cmd_exec one more leading "--": a command that
    # itself starts with "--" needs both, any other command the first only
    separator = ["--", "--"] if start.command[0] == "--" else ["--"]
    return [*argv, _check_name(start.name), *separator, *start.command]


def attach_argv(root: Path, name: str, *, stdin: bool) -> list[str]:
    # no detach keys here: the caller detaches on its side by ending the call
    argv = [*helper_base(root), "attach", "--detach-keys="]
    if not stdin:
        argv.append("--no-stdin")
    return [*argv, _check_name(name)]


def spawn(argv: list[str], *, tty: bool, stdin: bool, size: tuple[int, int] | None = None) -> Helper:
    """Start the helper (fork+exec in one step: safe with threads, module doc)."""
    if not tty:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
                                start_new_session=True, cwd=_package_parent())
        return Helper(proc)
    from runtime.console import set_size

    master, slave = os.openpty()
    try:
        _tty.setraw(slave)
        if size is not None and all(size):
            set_size(slave, *size)
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                start_new_session=True, cwd=_package_parent())
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # the helper holds it now: the master reads EIO once the helper is gone
    os.set_inheritable(master, False)
    return Helper(proc, master)


def _reader(read: Callable[[], bytes], kind: str, out: "queue.Queue[Any]", stopped: threading.Event,
            close: Callable[[], None] | None = None) -> threading.Thread:
    """Copies one output of the helper into ``out``; once the call ended (``stopped``) what is
    read is dropped, so a reader never blocks on a queue nobody empties. ``close`` (a pipe's) runs
    when the output ends: a reader outliving the call (a background process kept the pipe) must
    not leave its stream to the garbage collector."""

    def put(item: Any) -> None:
        while not stopped.is_set():
            try:
                out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run() -> None:
        try:
            while True:
                try:
                    data = read()
                except (OSError, ValueError):  # EIO on the master: every slave closed; a closed pipe
                    data = b""
                if not data:
                    break
                put((kind, data))
        finally:
            put(EOF)
            if close is not None:
                try:
                    close()
                except OSError:
                    pass

    thread = threading.Thread(target=run, name=f"helper-{kind}", daemon=True)
    thread.start()
    return thread


def _feed(helper: Helper, requests: Iterator[Any]) -> threading.Thread:
    """Apply the caller's messages to the helper; the end of them (detach, a caller gone) kills it."""

    def run() -> None:
        try:
            for request in requests:
                kind = request.WhichOneof("kind")
                if kind == "stdin":
                    helper.write_stdin(request.stdin)
                elif kind == "resize":
                    helper.resize(request.resize.rows, request.resize.cols)
                elif kind == "close_stdin":
                    helper.close_stdin()
        except Exception:  # the call ended (cancelled, connection lost): treated as its end
            pass
        helper.kill()

    thread = threading.Thread(target=run, name="helper-stdin", daemon=True)
    thread.start()
    return thread


def bridge(helper: Helper, requests: Iterator[Any], context: Any, make: Callable[..., Any]) -> Iterator[Any]:
    """Responses for the helper's output (``make(stdout=...)``, ``make(stderr=...)``) and, last,
    ``make(exit_code=...)``; the helper is killed when the call ends early."""
    out: "queue.Queue[Any]" = queue.Queue(maxsize=64)  # bounded: a slow caller slows the helper
    stopped = threading.Event()
    if context is not None:
        context.add_callback(helper.kill)
    readers: list[threading.Thread] = []
    try:
        if helper.master is not None:
            master = helper.master
            readers.append(_reader(lambda: os.read(master, READ_BYTES), "stdout", out, stopped))
        else:
            for kind in ("stdout", "stderr"):
                stream = getattr(helper.proc, kind)
                readers.append(_reader(functools.partial(stream.read1, READ_BYTES), kind, out, stopped, stream.close))
        _feed(helper, requests)
        yield from _output(helper, out, len(readers), make)
        code = helper.proc.wait()
        yield make(exit_code=code if code >= 0 else 128 - code)
    finally:
        stopped.set()
        helper.kill()
        helper.proc.wait()
        # readers end with the helper (the master must not close under one), unless a process of
        # the exec keeps a pipe: those are left to end with it
        deadline = time.monotonic() + (1.0 if helper.master is not None else 0.2)
        for thread in readers:
            thread.join(max(0.0, deadline - time.monotonic()))
        if helper.master is not None:
            os.close(helper.master)
        streams = [helper.proc.stdin] + ([] if any(t.is_alive() for t in readers) else [helper.proc.stdout, helper.proc.stderr])
        for stream in streams:
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def _output(helper: Helper, out: "queue.Queue[Any]", open_readers: int, make: Callable[..., Any]) -> Iterator[Any]:
    """The helper's output until every reader ended -- or, once the helper exited, until the
    output was quiet for ``LINGER_S``: a background process of an exec'd command may hold the
    pipes for ever (a local exec ends with its process too)."""
    quiet_since: float | None = None
    while open_readers:
        try:
            item = out.get(timeout=0.1)
        except queue.Empty:
            if helper.proc.poll() is None:
                continue
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= LINGER_S:
                return
            continue
        quiet_since = None
        if item is EOF:
            open_readers -= 1
            continue
        yield make(**{item[0]: item[1]})


def _first(requests: Iterator[Any], field: str, method: str) -> Any:
    first = next(requests, None)
    if first is None or first.WhichOneof("kind") != field:
        raise InvalidArgument(f"the first {method} message must carry {field}")
    return getattr(first, field)


def _local_runtime(engine: Any, method: str) -> Any:
    rt = getattr(engine, "runtime", None)
    root = getattr(engine, "root", None)
    if rt is None or root is None:
        raise Unsupported(method, "this daemon's engine runs no containers of its own")
    return rt


def serve_exec(engine: Any, requests: Iterator[Any], context: Any, *, spawner: Callable[..., Helper] = spawn) -> Iterator[Any]:
    """The Exec RPC over ``engine`` (a LocalEngine: its state root and runtime)."""
    from migrate._proto.pymigrate.v1 import host_pb2 as pb

    requests = iter(requests)
    start = _first(requests, "start", "Exec")
    rt = _local_runtime(engine, "Exec")
    argv = exec_argv(engine.root, start)
    rt.container(start.name).require("exec")  # the usual NOT_FOUND / FAILED_PRECONDITION, not a 125
    size = (start.terminal_size.rows, start.terminal_size.cols) if start.HasField("terminal_size") else None
    helper = spawner(argv, tty=start.tty, stdin=start.interactive, size=size)
    yield from bridge(helper, requests, context, pb.ExecResponse)


def serve_attach(engine: Any, requests: Iterator[Any], context: Any, *, spawner: Callable[..., Helper] = spawn) -> Iterator[Any]:
    """The Attach RPC: a ``-t`` container's terminal, else its new output (and stdin with ``-i``)."""
    from migrate._proto.pymigrate.v1 import host_pb2 as pb

    requests = iter(requests)
    name = _first(requests, "name", "Attach")
    _local_runtime(engine, "Attach")
    spec, _ = engine.attach_socket(name)  # NOT_FOUND, or FAILED_PRECONDITION when it does not run
    argv = attach_argv(engine.root, name, stdin=spec.interactive)
    helper = spawner(argv, tty=spec.tty, stdin=spec.interactive and not spec.tty)
    yield from bridge(helper, requests, context, pb.AttachResponse)
