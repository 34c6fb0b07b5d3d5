"""The per-container monitor ("shim", like conmon): starts a container's process tree, reaps it and
records how it ended.

Process picture::

    launcher (CLI) ──fork──> child ──setsid, fork──> shim ──starter()──> container init (+ helpers)
                                └─ exits at once        (subreaper, detached, stdio on /dev/null)

- No exec anywhere: the shim is a forked copy of the launching Python process (start latency is
  benchmarked against runc). The child in the middle exits immediately so the shim is reparented
  away from the launcher and survives it; setsid detaches it from the launcher's terminal.
- The shim sets PR_SET_CHILD_SUBREAPER, so whatever the starter forks and orphans (the container
  init after its intermediate parent exits, or a tree restored by ``criu swrk``) is reparented to
  the shim and reaped by it.
- ``starter`` runs in the shim and returns the host pid of the container's init (or raises). The
  shim then records state ``running`` (pid, shim_pid, started_at) *before* telling the launcher, so
  a very short-lived container can never record its exit before its start.
- When the init exits, the shim records ``exited`` with the exit code (128+N for signal N) and
  ``oom_killed``, all in one atomic state write, reaps whatever else is left, calls its ``exited``
  action if it has one (``run -d --rm``: runtime.runtime.auto_remove removes the container) and
  exits; or, when that action returns a new init's pid (a restart policy, runtime/restart.py),
  monitors that one the same way.
- The launcher learns the init pid, or the starter's error text, through a CLOEXEC pipe.

Two ways to launch, same shim:
- ``fork`` (default; the CLI): the launcher forks itself. Fast, and safe in a single-threaded
  process. The shim then shares the launcher's heap copy-on-write, so the launcher's own exit,
  whose last garbage collections write to every object's header, would copy most of its pages
  (~8 ms of ``run -d``): a launcher that forked a shim freezes the collector at exit instead
  (objects are still freed by reference counting; only cycles left at exit stay uncollected).
- ``launcher`` (the gRPC daemon, ``use_launcher()`` before gRPC starts any thread): fork() of a
  process whose other threads are inside gRPC is not safe (gRPC then skips its fork handlers and
  the child dies). So the daemon forks, while still single-threaded, a small *launcher* process
  (a fork server, warm with the runtime's imports) and sends it each starter, pickled, with the
  report pipe's write end attached (SCM_RIGHTS). The launcher forks the shim as in ``fork`` mode.
- ``exec`` (fallback when the launcher is gone): a fresh ``python -m runtime.shim`` receives the
  pickled starter; costs an interpreter start and imports (~50 ms).
In the last two modes the starter must be a ``Starter`` (a module-level function and plain data),
not a closure. pickle and subprocess are imported only by those modes: ``run -d`` forks.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import importlib
import json
import logging
import os
import signal
import sys as _sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from runtime import console
from runtime.errors import ContainerError, ContainerNotFound
from runtime.state import StateStore
from runtime.syscalls import LINUX, PR_SET_CHILD_SUBREAPER, PR_SET_NAME, Syscalls

if TYPE_CHECKING:  # pragma: no cover
    from runtime.cgroup_warmup import Warmup

log = logging.getLogger(__name__)

SHIM_COMM = "pymigrate-shim"  # /proc/<pid>/comm of every shim (at most 15 bytes)
SHIM_LOG = "shim.log"  # in the container directory


@dataclass(frozen=True)
class Starter:
    """A picklable starter (or probe): ``module:function`` called with ``kwargs`` in the shim."""

    function: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Any:
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)(**self.kwargs)


_launch_mode = "fork"
_launcher: "Launcher | None" = None
_gc_frozen_at_exit = False


def use_exec_launch(enabled: bool = True) -> None:
    """Launch shims by exec instead of fork (call once in multi-threaded processes)."""
    global _launch_mode
    _launch_mode = "exec" if enabled else "fork"


def uses_launcher() -> bool:
    """Whether shims start through the fork server (safe to launch one from any thread)."""
    return _launch_mode == "launcher" and _launcher is not None


def use_launcher() -> None:
    """Start the fork server and launch every shim through it. Call while single-threaded."""
    global _launch_mode, _launcher
    _launcher = Launcher()
    _launch_mode = "launcher"


class Launcher:
    """A fork server for shims: a single-threaded child of the daemon (see the module doc)."""

    def __init__(self) -> None:
        import socket
        import threading

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # warm the imports every shim needs, so forks of the launcher start ready
        import runtime.process  # noqa: F401
        import runtime.restore_start  # noqa: F401
        from runtime.criu import SwrkCriu

        SwrkCriu().warm()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the launcher process
            code = 0
            try:
                ours.close()
                _launcher_main(theirs)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        self._sock = ours
        self._lock = threading.Lock()
        self.alive = True

    def launch(self, payload: bytes, report_fd: int) -> bool:
        """Hand one shim to the launcher; False if the launcher is gone (caller falls back)."""
        import socket

        with self._lock:
            if not self.alive:
                return False
            try:
                socket.send_fds(self._sock, [payload], [report_fd])
                ack = self._sock.recv(16)
            except OSError:
                ack = b""
            if ack != b"ok":
                self.alive = False
                log.warning("the shim launcher (pid %d) is gone; falling back to exec", self.pid)
                return False
            return True


def _launcher_main(sock: Any) -> None:  # pragma: no cover - runs in the launcher
    import pickle
    import socket

    import runtime.events  # noqa: F401  (loaded once here, not in each shim: they journal their start)
    from runtime.config import Paths
    from runtime.syscalls import LINUX as _LINUX

    _LINUX.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: go when the daemon goes
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 1)
        if not msg:
            return
        data = pickle.loads(msg)
        report_fd = fds[0]
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sock.close()
                os.setsid()
                if os.fork() == 0:
                    store = StateStore(Paths(Path(data["root"])))
                    _shim_main(store, data["container_id"], data["starter"], report_fd, data["oom_killed"], _LINUX,
                               data.get("exited"), data.get("idle"))
                code = 0
            finally:
                os._exit(code)
        os.close(report_fd)
        os.waitpid(pid, 0)
        sock.send(b"ok")


@dataclass(frozen=True)
class ShimHandle:
    shim_pid: int
    init_pid: int


def launch_shim(
    store: StateStore,
    container_id: str,
    starter: Callable[[], int],
    *,
    oom_killed: Callable[[], bool] | None = None,
    exited: Callable[[], None] | None = None,
    sys: Syscalls = LINUX,
    warmup: "Warmup | None" = None,
    idle: Callable[[], Any] | None = None,
) -> ShimHandle:
    """Start a detached shim for ``container_id`` that runs ``starter`` and monitors its result.

    Args:
        store: the state store; the shim writes the container's state.json through it.
        starter: runs inside the shim, starts the container's process tree and returns the init's
            host pid. It may fork; orphans are reparented to the shim. An exception it raises is
            reported back here (a ``ContainerError``'s ``exit_code`` attribute, if any, is kept).
        oom_killed: called by the shim after the init exited; True if the OOM killer struck.
        exited: called by the shim last, after the exit is recorded and the rest reaped
            (``run -d --rm``: runtime.runtime.auto_remove); a failure is logged.
        warmup: the caller's running cgroup warm-up (runtime/cgroup_warmup.py), paused across
            this process's fork (a single-threaded fork) and kept on until the shim reports;
            the caller stops it.
        idle: called by the shim once, right after its report (work for the next starts, off
            this one's path: ``run``'s spare upper-layer images); a failure is logged.

    Returns:
        The shim's and the init's host pids; the state record already says ``running``.

    Raises:
        ContainerError: the starter failed (its message), or the shim died before reporting.
    """
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    if _launch_mode == "launcher" and _launcher is not None:
        import pickle

        payload = pickle.dumps({"root": str(store.paths.root), "container_id": container_id, "starter": starter, "oom_killed": oom_killed,
                               "exited": exited, "idle": idle})
        try:
            launched = _launcher.launch(payload, wfd)
        finally:
            os.close(wfd)
        if launched:
            return _read_report(store, container_id, rfd)
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
    if _launch_mode in ("exec", "launcher"):
        import pickle
        import subprocess

        payload = pickle.dumps({"root": str(store.paths.root), "container_id": container_id, "starter": starter, "oom_killed": oom_killed,
                               "exited": exited, "idle": idle})
        try:
            proc = subprocess.Popen(
                [_sys.executable, "-m", "runtime.shim", str(wfd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(wfd,),
                start_new_session=True,
            )
        except BaseException:
            os.close(rfd)
            os.close(wfd)
            raise
        os.close(wfd)
        try:
            assert proc.stdin is not None
            proc.stdin.write(payload)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        proc.wait()  # it forks the shim and exits at once
        return _read_report(store, container_id, rfd)
    _freeze_gc_at_exit()
    if warmup is not None:
        warmup.stop()  # fork from a single-threaded process
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(rfd)
            os.setsid()
            if os.fork() == 0:
                _shim_main(store, container_id, starter, wfd, oom_killed, sys, exited, idle)
            code = 0
        finally:
            os._exit(code)
    if warmup is not None:
        warmup.start()  # the init's cgroup move comes next, in the shim: the fork's gap is shorter than a grace period
    os.close(wfd)
    os.waitpid(pid, 0)
    return _read_report(store, container_id, rfd)


def _freeze_gc_at_exit() -> None:
    """Skip the exit-time collections of a process whose heap a shim shares (see the module doc)."""
    global _gc_frozen_at_exit
    if not _gc_frozen_at_exit:
        atexit.register(gc.freeze)
        _gc_frozen_at_exit = True


def _read_report(store: StateStore, container_id: str, rfd: int) -> ShimHandle:
    try:
        chunks = []
        while chunk := os.read(rfd, 65536):
            chunks.append(chunk)
    finally:
        os.close(rfd)
    if not chunks:
        raise ContainerError(f"shim of container {container_id[:12]} died before reporting", hint=f"see {store.dir(container_id) / SHIM_LOG}")
    report = json.loads(b"".join(chunks))
    if "error" in report:
        exc = _rebuild_error(report)
        if report.get("exit_code") is not None:
            exc.exit_code = report["exit_code"]  # type: ignore[attr-defined]
        raise exc
    return ShimHandle(shim_pid=report["shim_pid"], init_pid=report["init_pid"])


def _plain_attrs(exc: BaseException) -> dict[str, Any]:
    """The data attributes of a starter's error that survive JSON (CriuError's operation, errno...)."""
    out: dict[str, Any] = {}
    for key, value in vars(exc).items():
        if key in ("message", "hint") or key.startswith("_"):
            continue
        if isinstance(value, Path):
            value = str(value)
        if value is None or isinstance(value, (str, int, float, bool)) or (
            isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        ):
            out[key] = value
    return out


def _rebuild_error(report: dict[str, Any]) -> ContainerError:
    """The starter's error as its own runtime.errors class (a restore timeout stays a
    ``CriuTimeout`` for the caller), with its message, hint and data; else a ContainerError."""
    from runtime import errors

    message = str(report["error"])
    cls = getattr(errors, str(report.get("type") or ""), None)
    if not (isinstance(cls, type) and issubclass(cls, ContainerError)):
        return ContainerError(message, hint=report.get("hint"))
    exc = cls.__new__(cls)  # the message is final already: skip the class's own formatting
    Exception.__init__(exc, message)
    exc.message = message
    exc.hint = report.get("hint")
    for key, value in (report.get("attrs") or {}).items():
        if key == "log_path" and value is not None:
            value = Path(value)
        setattr(exc, key, tuple(value) if isinstance(value, list) else value)
    return exc


def _shim_main(  # pragma: no cover - runs in the shim process
    store: StateStore,
    container_id: str,
    starter: Callable[[], int],
    report_fd: int,
    oom_killed: Callable[[], bool] | None,
    sys: Syscalls,
    exited: Callable[[], None] | None = None,
    idle: Callable[[], Any] | None = None,
) -> None:
    code = 0
    try:
        sys.prctl(PR_SET_NAME, _comm_arg())
        sys.prctl(PR_SET_CHILD_SUBREAPER, 1)
        _detach_stdio(store, container_id)
        # Nothing of the launcher's survives in the shim (and so in the container) but the report pipe.
        os.closerange(3, report_fd)
        os.closerange(report_fd + 1, 1 << 20)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        try:
            started = starter()
            # From here on the shim writes to attach clients and to a -t/-i container's terminal or
            # stdin, any of which may be gone: an EPIPE to handle, not a SIGPIPE that kills the shim
            # (and, with the terminal's master, its container). The init got SIGPIPE's default in
            # runtime/process.py, as does every restart.
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            init_pid = console.init_pid_of(started)
            # -t/-i: serve the terminal or stdin before "running" is recorded, so an attach
            # right after ``run`` finds the socket (runtime/console.py)
            console_server = console.serve(store.dir(container_id) / console.ATTACH_SOCKET, started)
            now = time.time()
            # visible before the report (readers see the page cache); its fsync (4-12 ms here)
            # comes right after the report: the launcher need not wait for the disk
            store.update_state(
                container_id,
                lambda s: dataclasses.replace(
                    s, status="running", pid=init_pid, shim_pid=os.getpid(), started_at=now,
                    exit_code=None, oom_killed=False, finished_at=None,
                ),
                sync=False,
            )
            _started_event(store, container_id, starter)
        except BaseException as exc:  # the shim's boundary: everything goes back to the launcher
            report = {"error": str(exc) or type(exc).__name__, "hint": getattr(exc, "hint", None), "exit_code": getattr(exc, "exit_code", None),
                      "type": type(exc).__name__, "attrs": _plain_attrs(exc)}
            if not isinstance(exc, ContainerError):
                log.error("starter of %s failed", container_id, exc_info=True)
                report["error"] = f"cannot start container {container_id[:12]}: {type(exc).__name__}: {exc}"
            _write_all(report_fd, json.dumps(report).encode())
            code = 1
            return
        _write_all(report_fd, json.dumps({"init_pid": init_pid, "shim_pid": os.getpid()}).encode())
        os.close(report_fd)
        try:
            store.sync_state(container_id)
        except OSError:  # the container runs: monitoring it matters more than the disk's answer
            log.warning("container=%s: cannot fsync its running state", container_id, exc_info=True)
        _run_idle(container_id, idle)
        from runtime import log_index  # after the report: off the path of ``run -d``

        while init_pid > 0:
            # the times of its output (runtime/log_index.py); stopped before the exit is recorded
            # (a follower that sees "exited" finds every line indexed) and before the exited
            # action, which may fork a restarted init or unmount the root
            indexer = log_index.start(store.dir(container_id) / "merged")
            _monitor(store, container_id, init_pid, oom_killed, before_record=indexer.stop if indexer else None)
            _finish_console(console_server, store, container_id)
            console_server = None  # a restarted init has no terminal of ours (refused with -t/-i)
            init_pid = _after_exit(container_id, exited)
    except BaseException:
        log.exception("shim of %s failed", container_id)
        code = 1
    finally:
        os._exit(code)


def _run_idle(container_id: str, idle: Callable[[], Any] | None) -> None:
    if idle is None:
        return
    try:
        idle()
    except Exception:  # the next start does the work itself; this one's container runs
        log.warning("container=%s: the shim's idle work failed", container_id, exc_info=True)


def _finish_console(server: "console.ConsoleServer | None", store: StateStore, container_id: str) -> None:
    """Hand the recorded exit code to attached clients and close the terminal (runtime/console.py)."""
    if server is not None:
        try:
            code = store.load_state(container_id).exit_code
        except ContainerNotFound:
            code = None
        server.finish(-1 if code is None else code)


def _monitor(store: StateStore, container_id: str, init_pid: int, oom_killed: Callable[[], bool] | None,
             before_record: Callable[[], None] | None = None) -> None:
    """Wait for ``init_pid``'s exit, record it, then reap whatever else is left."""
    status = _reap_until(init_pid)
    if before_record is not None:
        try:
            before_record()
        except Exception:  # recording the exit matters more
            log.warning("container=%s: before recording its exit", container_id, exc_info=True)
    exit_code = os.waitstatus_to_exitcode(status)
    if exit_code < 0:
        exit_code = 128 - exit_code
    oom = False
    if oom_killed is not None:
        try:
            oom = bool(oom_killed())
        except Exception:  # recording the exit matters more than the oom flag
            log.warning("cannot read oom state of %s", container_id, exc_info=True)
    record_exit(store, container_id, exit_code, oom)
    _reap_rest()


def _after_exit(container_id: str, exited: Callable[[], Any] | None) -> int:
    """Run the exited action; a positive int it returns is a new init to monitor (a restart
    policy started the container's process again: runtime/restart.py), anything else ends the shim."""
    if exited is None:
        return 0
    try:
        again = exited()
    except Exception:  # the exit is recorded: a failed removal or restart leaves an exited record
        log.warning("after the exit of %s", container_id, exc_info=True)
        return 0
    return again if isinstance(again, int) and not isinstance(again, bool) and again > 0 else 0


def _started_event(store: StateStore, container_id: str, starter: Any) -> None:
    """The journal's start (after a restore: restore, then start), written before the launcher
    hears of it: whoever started the container cannot journal its start before its die."""
    from runtime.events import emit_container

    try:
        spec = store.load_spec(container_id)
    except ContainerNotFound:  # removed meanwhile: nothing to tell
        return
    if str(getattr(starter, "function", "")).startswith("runtime.restore_start:"):
        emit_container(store.paths.root, "restore", spec)
    emit_container(store.paths.root, "start", spec)


def record_exit(store: StateStore, container_id: str, exit_code: int, oom_killed: bool) -> None:
    """Record ``exited`` atomically; a container removed meanwhile is fine."""
    now = time.time()
    try:
        store.update_state(
            container_id,
            lambda s: dataclasses.replace(s, status="exited", exit_code=exit_code, oom_killed=oom_killed, finished_at=now),
        )
    except ContainerNotFound:
        pass
    log.info("container=%s exited code=%s oom_killed=%s", container_id, exit_code, oom_killed)
    try:  # the journal's die event: this shim is the one process that sees the exit
        from runtime.events import emit_container

        emit_container(store.paths.root, "die", store.load_spec(container_id), exitCode=exit_code,
                       oomKilled=str(oom_killed).lower())
    except ContainerNotFound:
        pass


def _reap_until(init_pid: int) -> int:
    """Reap children (orphans included) until ``init_pid`` exits; its wait status."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            # init is not (or no longer) our child: poll for its disappearance instead
            while _alive(init_pid):
                time.sleep(0.05)
            return 255 << 8
        if pid == init_pid:
            return status


def _reap_rest() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _comm_arg() -> int:
    import ctypes

    buf = ctypes.create_string_buffer(SHIM_COMM.encode()[:15])
    _comm_arg.keep = buf  # type: ignore[attr-defined]
    return ctypes.addressof(buf)


def _detach_stdio(store: StateStore, container_id: str) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    try:
        logfd = os.open(store.dir(container_id) / SHIM_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError:
        logfd = null
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(logfd, 2)
    for fd in {null, logfd}:
        if fd > 2:
            os.close(fd)
    # The launcher's logging handlers point at its stderr; the shim logs to shim.log.
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def is_shim(pid: int) -> bool:
    """Whether ``pid`` is alive and is a pymigrate shim (guards against pid reuse). A killed shim
    not yet reaped by whoever inherited it (a zombie keeps its comm) is not alive."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # "pid (comm) state ...": comm may hold spaces and parentheses, so split at the last ')'
    name, _, rest = stat.rpartition(b")")
    return rest[1:2] not in (b"Z", b"X", b"") and name.partition(b"(")[2] == SHIM_COMM.encode()[:15]


def _exec_main() -> None:  # pragma: no cover - the exec'd launcher (see "Two ways to launch")
    import pickle

    from runtime.config import Paths
    from runtime.syscalls import LINUX as _LINUX

    report_fd = int(_sys.argv[1])
    data = pickle.load(_sys.stdin.buffer)
    store = StateStore(Paths(Path(data["root"])))
    os.set_inheritable(report_fd, False)
    if os.fork() == 0:
        _shim_main(store, data["container_id"], data["starter"], report_fd, data["oom_killed"], _LINUX,
                               data.get("exited"), data.get("idle"))
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    _exec_main()
