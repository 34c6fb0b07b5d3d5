"""The zygote: import the CLI once, then fork a worker per command that runs it as the program would.

Started by ``front`` (``main(path)``), detached. It binds its socket under a temporary name and
renames it into place (a newer zygote for the same kind of caller takes the name over; the old one
sees that and leaves), and serves until ``PYMIGRATE_ZYGOTE_IDLE_S`` idle seconds pass.

Each request is checked before anything runs: the peer is our uid (SO_PEERCRED), its fingerprint
and environment (``wire``) equal ours, no source file this process has loaded changed since (mtime
and size of every loaded module's file and of each package directory: a new file could shadow a
module) and this process has one thread (forking with more is unsafe). Stale code, or a
fingerprint, environment or thread count that can never match: decline, and leave.

The worker restores the caller's process state (stdio fds, cwd, umask, environment, argv, default
signal handlers), calls ``migrate.cli.main()`` and ends as the interpreter would (non-daemon threads
joined, atexit, stdio flushed) but without tearing the modules down (``os._exit``). The zygote waits for it (pidfd), sends its exit code
and relays the caller's signals. A caller gone without a word (killed) takes its worker with it
(SIGKILL), as a killed CLI would be gone. Each worker reports the modules it imported; the zygote
imports them while idle, so the next command finds them loaded.
"""

from __future__ import annotations

import importlib
import io
import os
import selectors
import signal
import socket
import sys
import threading
import time
from typing import Any

from migrate.zygote import wire

# imported before serving (what the commands import lazily is learned from the workers)
SEED = ("migrate.cli", "migrate.cli.containers", "migrate.cli.listing", "migrate.cli.lifecycle", "migrate.cli.checkpoints",
        "migrate.cli.images", "migrate.cli.volumes", "migrate.engine", "runtime.runtime", "runtime.shim", "migrate.checkpoint",
        "migrate.restore")
# never imported into the zygote: they start threads or hold state a fork must not share
NOT_PRELOADED = ("grpc", "migrate.remote", "migrate._proto", "paramiko", "rich", "cryptography", "nacl", "concurrent",
                 "multiprocessing", "asyncio", "tests", "pytest", "_pytest")
IDLE_S = float(os.environ.get("PYMIGRATE_ZYGOTE_IDLE_S", "600"))


class Worker:
    def __init__(self, pid: int, conn: Any, pidfd: int, modules_r: int, argv: list[str]) -> None:
        self.pid, self.conn, self.pidfd, self.modules_r, self.argv = pid, conn, pidfd, modules_r, argv


class Zygote:
    def __init__(self, path: str) -> None:
        self.path, self.pid = path, os.getpid()
        self.fp = wire.fingerprint()
        self.env = wire.stable_env(os.environb)
        self.sel = selectors.DefaultSelector()
        self.workers: dict[int, Worker] = {}  # by pid
        self.files: dict[str, tuple[int, int]] = {}
        self.learned: set[str] = set()
        self.criu_warm = False  # warm_criu done
        self.listener: Any = None
        self.inode = 0
        self.last_active = time.monotonic()
        self.accepted_at = 0.0
        self.lock = -1  # held for the zygote's life (_only_one)

    # -- start ------------------------------------------------------------------------------
    def preload(self, names: tuple[str, ...] | list[str]) -> None:
        for name in names:
            if name in sys.modules or name.startswith(NOT_PRELOADED) or name.split(".")[0] in NOT_PRELOADED:
                continue
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the worker imports it itself (and reports the error) if it needs it
                pass
        self.snapshot()

    def snapshot(self) -> None:
        """The mtime and size of every loaded module's file and package directory, as loaded."""
        for module in list(sys.modules.values()):
            for path in [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or ())]:
                if isinstance(path, str) and path not in self.files:
                    self.files[path] = _stamp(path)

    def stale(self) -> bool:
        return any(_stamp(path) != stamp for path, stamp in self.files.items())

    def bind(self) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not wire.dir_is_safe(directory):
            raise SystemExit(f"zygote: {directory} is not a private directory of this user")
        tmp = f"{self.path}.{self.pid}.tmp"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(tmp)
        os.chmod(tmp, 0o600)
        sock.listen(64)
        os.rename(tmp, self.path)
        self.inode = os.stat(self.path).st_ino
        self.listener = sock
        self.sel.register(sock.fileno(), selectors.EVENT_READ, ("accept", None))

    def owns_path(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    # -- loop -------------------------------------------------------------------------------
    def serve(self) -> None:
        while True:
            events = self.sel.select(timeout=min(30.0, IDLE_S))
            for key, _ in events:
                kind, worker = key.data
                if kind == "accept":
                    if self.accept():
                        return
                elif not self.running(worker):
                    continue
                elif kind == "exit":
                    self.reap(worker)
                else:
                    self.relay(worker)
            if self.workers:
                self.last_active = time.monotonic()
            elif time.monotonic() - self.last_active > IDLE_S or not self.owns_path():
                return

    def running(self, worker: Worker) -> bool:
        """False once reaped: a worker's exit and its caller's close often come in one select
        batch; after the reap its connection is closed and its pid may be another process's."""
        return self.workers.get(worker.pid) is worker

    def accept(self) -> bool:
        """Take one request; True when this zygote must leave (its code is stale)."""
        conn, _ = self.listener.accept()
        self.last_active = time.monotonic()
        self.accepted_at = time.perf_counter()
        fds: list[int] = []
        try:
            if wire.peer_uid(conn) != os.geteuid():
                return False
            request, fds = _receive(conn)
            reason = self.refusal(request, fds)
            if reason or request is None:
                conn.sendall(wire.line(b"D", reason))
                # stale code, or a zygote that cannot serve the callers its socket is named for: leave
                return reason in ("stale", "fingerprint", "env", "threads")
            conn, caller = None, conn  # the worker's record owns it now (closed when it is reaped)
            self.start_worker(caller, request, fds)
            return False
        except Exception:  # noqa: BLE001 - the zygote's boundary: one bad request must not take it down
            return False
        finally:
            for fd in fds:
                os.close(fd)
            if conn is not None:
                conn.close()

    def refusal(self, request: dict[str, Any] | None, fds: list[int]) -> str:
        if request is None or len(fds) != wire.N_FDS or not {"argv", "env", "umask", "fp"} <= request.keys():
            return "request"
        if request.get("fp") != self.fp:
            return "fingerprint"
        if wire.stable_env(request["env"]) != self.env:
            return "env"
        if self.stale():
            return "stale"
        if threading.active_count() != 1:
            return "threads"
        return ""

    def start_worker(self, conn: Any, request: dict[str, Any], fds: list[int]) -> None:
        modules_r, modules_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(modules_r)
                reply = os.dup(conn.fileno())  # the exit code's way back (see become_worker's end)
                self.close_for_worker(conn)
                become_worker(request, fds, modules_w, self.accepted_at, reply)  # ends in os._exit: never back to serving
            except BaseException as exc:  # noqa: B036 - the worker's set-up failed: it must never go back to serving
                os.write(2, f"pymigrate: zygote worker: {type(exc).__name__}: {exc}\n".encode())
                os._exit(125)
        os.close(modules_w)
        pidfd = os.pidfd_open(pid)
        worker = Worker(pid, conn, pidfd, modules_r, list(request["argv"][1:]))
        self.watch(worker)
        try:
            conn.sendall(wire.line(b"A", pid))
        except OSError:  # the caller is gone already
            _kill(pid, signal.SIGKILL)

    def watch(self, worker: Worker) -> None:
        """The worker's exit (its pidfd) and its caller's signals or close (its connection) wake ``serve``."""
        self.workers[worker.pid] = worker
        self.sel.register(worker.pidfd, selectors.EVENT_READ, ("exit", worker))
        self.sel.register(worker.conn.fileno(), selectors.EVENT_READ, ("signal", worker))

    def close_for_worker(self, keep: Any) -> None:
        """In the worker: nothing of the zygote's stays open (the caller's connection neither)."""
        self.sel.close()
        self.listener.close()
        os.close(self.lock)  # a shim the command leaves running must not keep the next zygote out
        for worker in self.workers.values():
            worker.conn.close()
            os.close(worker.pidfd)
            os.close(worker.modules_r)
        keep.close()

    def relay(self, worker: Worker) -> None:
        try:
            data = worker.conn.recv(4096)
        except OSError:
            data = b""
        if not data:  # the caller is gone: so is its command, as it would be without us
            self.sel.unregister(worker.conn.fileno())
            _kill(worker.pid, signal.SIGKILL)
            return
        for item in data.split(b"\n"):
            if item.startswith(b"S") and item[1:].isdigit():
                _kill(worker.pid, int(item[1:]))

    def reap(self, worker: Worker) -> None:
        _, status = os.waitpid(worker.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        self.sel.unregister(worker.pidfd)
        os.close(worker.pidfd)
        if worker.conn.fileno() in self.sel.get_map():
            self.sel.unregister(worker.conn.fileno())
        try:
            worker.conn.sendall(wire.line(b"X", code if code >= 0 else 128 - code))
        except OSError:
            pass
        worker.conn.close()
        del self.workers[worker.pid]
        self.learn(worker.modules_r)
        self.prebuild(worker.argv)

    def prebuild(self, argv: list[str]) -> None:
        """Keep the parser of the command a worker ran, so the next workers do not build it
        (migrate/cli ``prebuild_parser``); off the caller's clock, as ``learn``."""
        try:
            from migrate.cli import prebuild_parser

            prebuild_parser(argv)
        except Exception:  # noqa: BLE001 - only a speed-up: a worker builds its own then
            return
        self.snapshot()  # the command's module it imported

    def learn(self, fd: int) -> None:
        """Import what the worker imported (after its reply went out: off the caller's clock)."""
        with open(fd, "rb") as f:
            names = f.read().decode(errors="replace").split()
        new = [n for n in names if n not in sys.modules and n not in self.learned]
        self.learned.update(new)
        if new:
            self.preload(new)
        if "google.protobuf" in names and not self.criu_warm:  # pycriu's messages: a worker talked to CRIU
            self.criu_warm = True
            self.warm_criu()

    def warm_criu(self) -> None:
        """After a worker talked to CRIU (a checkpoint or restore): CRIU's set-up done here too,
        off the caller's clock, so the next such worker finds it done (``SwrkCriu.warm``: the kdat
        cache dir checked, pycriu's messages loaded: 3-12 ms of each checkpoint at load 2, as a
        daemon pays it once), and CRIU's version asked. The CRIU binary and pycriu's files it loaded
        (not modules: runtime.criu keeps them) are watched for changes like the modules' files."""
        criu = sys.modules.get("runtime.criu")
        if criu is None:
            return
        try:
            swrk = criu.SwrkCriu()
            swrk.warm()
            swrk.version()  # kept per binary: 1-5 ms of each checkpoint's manifest
        except Exception:  # noqa: BLE001 - only a speed-up: the worker warms (and reports) it itself
            return
        paths = [swrk.binary, *(getattr(m, "__file__", None) for m in getattr(criu, "_MODULES", {}).values())]
        for path in paths:  # a new CRIU binary or pycriu makes the zygote stale, as a module's change does
            if isinstance(path, str) and path not in self.files:
                self.files[path] = _stamp(path)


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return -1, -1


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _receive(conn: Any) -> tuple[dict[str, Any] | None, list[int]]:
    conn.settimeout(5.0)
    msg, ancdata, _flags, _ = conn.recvmsg(65536, socket.CMSG_SPACE(4 * wire.N_FDS))
    fds = wire.fds_from(ancdata)
    if len(msg) < wire.HEADER.size:
        return None, fds
    magic, size = wire.HEADER.unpack(msg[: wire.HEADER.size])
    if magic != wire.MAGIC or size > wire.MAX_REQUEST:
        return None, fds
    payload = msg[wire.HEADER.size:]
    while len(payload) < size:
        chunk = conn.recv(size - len(payload))
        if not chunk:
            return None, fds
        payload += chunk
    conn.settimeout(None)
    import marshal

    try:
        request = marshal.loads(payload)  # from our own uid (SO_PEERCRED): as trusted as we are
    except (ValueError, EOFError, TypeError):
        return None, fds
    return (request if isinstance(request, dict) else None), fds


# -- the worker ---------------------------------------------------------------------------------
def become_worker(request: dict[str, Any], fds: list[int], modules_w: int, accepted_at: float, reply: int = -1) -> None:
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    os.fchdir(fds[3])
    for fd in fds:
        os.close(fd)
    fds.clear()
    os.umask(request["umask"])
    os.environb.clear()
    os.environb.update(request["env"])
    sys.argv = list(request["argv"])
    _fresh_stdio()
    from migrate.cli import main

    t0 = time.perf_counter()
    try:
        code = main()
    except SystemExit as exc:  # argparse's usage errors and --help
        code = _exit_code(exc)
    except KeyboardInterrupt:  # before main's own handler (while parsing): as the CLI says it
        print("pymigrate: interrupted", file=sys.stderr)
        code = 130
    t1 = time.perf_counter()
    code = _finish(code)
    if os.environ.get("PYMIGRATE_ZYGOTE") == "debug":
        os.write(2, f"pymigrate: zygote worker {os.getpid()}: accept to command {(t0 - accepted_at) * 1000:.1f} ms, "
                    f"command {(t1 - t0) * 1000:.1f} ms, exit "
                    f"{(time.perf_counter() - t1) * 1000:.1f} ms, {len(sys.modules)} modules\n".encode())
    _report_modules(modules_w)
    _reply_exit(reply, code)
    os._exit(code)


def _reply_exit(reply: int, code: int) -> None:
    """The exit code straight to the caller, its output flushed already (``_finish``): the front
    need not wait for this process's teardown and the zygote's reap (1-2 ms). A worker that dies
    before this line (a signal) is reported by the zygote's reap, as every exit was before; the
    front takes the first exit code and leaves."""
    if reply < 0:
        return
    try:
        os.write(reply, wire.line(b"X", code))
    except OSError:  # the caller is gone: nobody to tell
        pass


def _exit_code(exc: SystemExit) -> int:
    """What the interpreter makes of an uncaught SystemExit."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _finish(code: int) -> int:
    """The interpreter's exit without tearing the zygote's modules down (that is ~10 ms of
    garbage nobody reads): join non-daemon threads, run atexit handlers, flush stdio (a failed
    flush exits 120, as Python's does)."""
    threading._shutdown()  # type: ignore[attr-defined]
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    return code


_OLD_STDIO: list[Any] = []  # the zygote's stdio objects (closefd=False anyway): never collected


def _fresh_stdio() -> None:
    """New sys.std* over fds 0-2, buffered as the interpreter sets them up for these files."""
    _OLD_STDIO.extend((sys.stdin, sys.stdout, sys.stderr))
    unbuffered = bool(getattr(sys.stdout, "write_through", False))  # -u / PYTHONUNBUFFERED, as the zygote has it

    def text(fd: int, mode: str, old: Any, line_buffering: bool) -> io.TextIOWrapper:
        raw = io.FileIO(fd, mode, closefd=False)
        buffered: Any = raw if unbuffered and mode == "wb" else (io.BufferedReader(raw) if mode == "rb" else io.BufferedWriter(raw))
        return io.TextIOWrapper(buffered, encoding=old.encoding, errors=old.errors, line_buffering=line_buffering,
                                write_through=unbuffered and mode == "wb")

    sys.stdin = sys.__stdin__ = text(0, "rb", sys.stdin, False)  # type: ignore[misc]
    sys.stdout = sys.__stdout__ = text(1, "wb", sys.stdout, os.isatty(1))  # type: ignore[misc]
    sys.stderr = sys.__stderr__ = text(2, "wb", sys.stderr, True)  # type: ignore[misc]


def _report_modules(fd: int) -> None:
    try:
        os.set_blocking(fd, False)
        os.write(fd, "\n".join(sys.modules).encode()[: 60 << 10])
    except OSError:
        pass
    finally:
        os.close(fd)


def main(path: str, modules: list[str] | None = None) -> int:
    """Run a zygote at ``path`` (from ``front``, with the modules its command imported);
    0 when it leaves (idle, replaced, stale)."""
    from runtime import dataclass_cache

    signal.signal(signal.SIGTERM, _leave)  # stop_all(): leave through main's clean-up
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not wire.dir_is_safe(directory):  # before the imports: a refused start costs nothing
        return 1
    lock = _only_one(path)
    if lock is None:
        return 0
    dataclass_cache.install()
    zygote = Zygote(path)
    zygote.lock = lock
    zygote.preload([*SEED, *(modules or ())])
    zygote.bind()
    try:
        zygote.serve()
    finally:
        if os.getpid() == zygote.pid and zygote.owns_path():
            os.unlink(path)
    return 0


def _only_one(path: str, wait_s: float = 2.0) -> int | None:
    """The lock of ``path``'s zygote (an fd), or None: another one serves (or starts) there.

    Two commands that found no zygote both start one; the second leaves as soon as the first
    answers. A zygote leaving (stale) still holds the lock for a moment: its successor waits."""
    import fcntl

    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        if _answers(path) or time.monotonic() > deadline:
            os.close(fd)
            return None
        time.sleep(0.05)


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
            return True
        except OSError:
            return False


def _leave(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def stop_all(directory: str, timeout_s: float = 5.0) -> list[int]:
    """SIGTERM every zygote answering in ``directory`` (tests, benchmarks); their pids."""
    pids = []
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        if not name.endswith(".sock"):
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(os.path.join(directory, name))
            except OSError:
                continue
            pid = int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)[:4], sys.byteorder)
        _kill(pid, signal.SIGTERM)
        pids.append(pid)
    deadline = time.monotonic() + timeout_s
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return pids
