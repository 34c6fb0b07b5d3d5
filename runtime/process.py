"""Starting a container's init, and running an extra process inside a live container (exec).

``run_starter(plan, ...)`` returns the callable the shim runs (see runtime/shim.py). It forks an
intermediate process that

1. moves itself into the container's cgroup in every hierarchy (before unsharing the cgroup
   namespace, so the namespace's root is the container's cgroup),
2. joins the network namespace prepared by runtime.network (bind-mounted nsfs file),
3. unshares mount, uts, ipc, pid and cgroup namespaces, forks the init (PID 1 of the new pid
   namespace: CLONE_NEWPID applies to children only) and exits. Steps 2-3 are ``plan.ns.enter``
   (runtime/ns_modes.py): with --pid/--ipc/--uts/--network container:NAME or host, or
   --cgroupns host, some namespaces are joined or kept instead of unshared.

The init then, in this order: makes / recursively private; applies the rootfs plan below merged/;
pivot_root(".", ".") + umount2(".", MNT_DETACH) (runc's trick: no put_old directory needed);
resolves the container's user in its own /etc/passwd and /etc/group (runtime/users.py: after
pivot_root, so the files are the container's and their symlinks stay inside it); sethostname; setsid() (CRIU requires the init to be a session leader inside its pid namespace);
stdin from its own /dev/null, stdout and stderr appended to /.pymigrate/log and /.pymigrate/log.err in its own filesystem
(CRIU dumps fds on files of the container's root mount without extra flags; a host file or pipe
would be an external resource); chdir(workdir); resets signal dispositions (Python ignores
SIGPIPE and SIGXFSZ, and ignored signals survive exec); closes every fd but the error pipe; drops
capabilities, becomes the user (groups, gid, uid; runtime/capabilities.py) + no_new_privs; loads the seccomp filter compiled on the host (runtime/seccomp.py:
last, so none of our setup calls meet it; only the execve follows); execvpe.

Failures before exec are written as "<code> <message>" to a CLOEXEC error pipe (for bad user
input, such as an unknown user name, followed by NUL "InvalidArgument" NUL <hint>, so the caller
raises ``InvalidArgument``); code 127 means the command was not found, 126 that it could not be
invoked, 125 a setup failure. A successful
exec just closes the pipe. Everything the children need is imported before fork: after
pivot_root the host's Python library is out of reach.
"""

from __future__ import annotations

import array  # noqa: F401 - socket.send_fds imports it lazily; loaded before pivot_root
import errno
import os
import signal
import socket
import warnings  # noqa: F401 - os.execvpe imports it lazily; it must be loaded before pivot_root
from dataclasses import dataclass
from typing import Any, Callable

from runtime import capabilities, console, namespaces, ns_modes, rootfs, seccomp, users
from runtime import console as console_mod  # exec_in's ``console`` parameter shadows the module
from runtime.errors import ContainerError, InvalidArgument
from runtime.overlay import ERR_LOG_PATH_IN_CONTAINER, LOG_PATH_IN_CONTAINER
from runtime.syscalls import MNT_DETACH, MS_BIND, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, Syscalls

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

EXIT_SETUP = 125
EXIT_CANNOT_INVOKE = 126
EXIT_NOT_FOUND = 127
# A container's processes start with the OCI default umask, not whatever the caller of pymigrate
# (a CLI under umask 077, a daemon) happened to have.
CONTAINER_UMASK = 0o022

_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2)


@dataclass(frozen=True)
class InitPlan:
    """Everything the init needs, computed on the host before any fork."""

    container_id: str
    merged: str  # host path of the mounted overlay
    netns: str  # host path of the bind-mounted network namespace
    hostname: str
    argv: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str
    ops: tuple[rootfs.MountOp, ...]
    cap_last: int
    cgroup: str  # name for the CgroupManager
    seccomp_bpf: bytes | None = None  # the compiled filter (runtime/seccomp.py); None: unconfined
    user: str = ""  # USER[:GROUP] (runtime/users.py), resolved by the init; "": root
    read_only: bool = False  # remount / read-only once the log is open and the workdir exists
    caps: frozenset[int] = capabilities.DEFAULT_CAPS  # the kept set (--cap-add/--cap-drop applied)
    tty: bool = False  # run -t: stdio is a pty of the container's devpts, its master goes to the shim
    interactive: bool = False  # run -i: stdin is the shim's (the pty, or a pipe without -t)
    log_path: str = ""  # host path of the container's log (the shim appends terminal output to it)
    userns: str = ""  # host path of the container's pinned user namespace (--userns auto); "": the host's
    root_fd: int = -1  # with userns: the root as a detached tree (open_tree) the init attaches (_pinned)
    # which namespaces are unshared, joined (another container's init) or the host's (runtime/ns_modes.py)
    ns: ns_modes.NamespacePlan = ns_modes.NamespacePlan()


def container_env(user_env: tuple[str, ...], hostname: str) -> tuple[str, ...]:
    """Defaults (PATH, HOSTNAME, TERM) overridden by the user's KEY=VALUE entries, in order.

    HOME is added by ``with_home`` once the user is resolved inside the container."""
    merged: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "TERM": "xterm"}
    for item in user_env:
        key, _, value = item.partition("=")
        merged[key] = value
    return tuple(f"{k}={v}" for k, v in merged.items())


def with_home(env: tuple[str, ...], home: str) -> tuple[str, ...]:
    """``env`` with HOME=``home`` added unless it sets HOME already (the user's passwd home)."""
    if any(item.startswith("HOME=") for item in env):
        return env
    return (*env, f"HOME={home}")


def _env_dict(env: tuple[str, ...]) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in env)


_cgroup_managers: dict[str, Any] = {}


def cgroup_manager(cgroup_parent: str) -> Any:
    """``runtime.cgroups.detect(cgroup_parent)``, once per process.

    A shim forked by the CLI inherits the launcher's cache, so starting the init does not detect
    the cgroup layout a second time (it is on the ``run -d`` latency path).
    """
    manager = _cgroup_managers.get(cgroup_parent)
    if manager is None:
        from runtime.cgroups import detect

        manager = _cgroup_managers[cgroup_parent] = detect(cgroup_parent)
    return manager


def start_container(plan: InitPlan, cgroup_parent: str) -> "int | console.Started":
    """The ``Starter`` of a fresh container (picklable for exec-launched shims): start the init
    (its pid; with its terminal or stdin pipe for the shim when ``plan.tty`` or ``plan.interactive``)."""
    from runtime.syscalls import LINUX

    return run_starter(plan, cgroup_manager(cgroup_parent).add_pid, LINUX)()


def oom_killed(cgroup_parent: str, container_id: str) -> bool:
    """The shim's OOM probe: did the OOM killer strike inside the container's cgroup?"""
    return bool(cgroup_manager(cgroup_parent).stats(container_id).oom_kills > 0)


def run_starter(plan: InitPlan, add_pid: Callable[[str, int], None], sys: Syscalls) -> Callable[[], "int | console.Started"]:
    """The shim's starter for a fresh container (see the module docstring)."""

    def start() -> "int | console.Started":
        errr, errw = os.pipe2(os.O_CLOEXEC)
        pidr, pidw = os.pipe2(os.O_CLOEXEC)
        stdio = _ShimStdio.open(plan)
        mid = os.fork()
        if mid == 0:  # pragma: no cover - intermediate process
            code = EXIT_SETUP
            try:
                os.close(errr)
                os.close(pidr)
                stdio.close_shim_side()
                add_pid(plan.cgroup, os.getpid())
                own, netns = plan, plan.netns
                if plan.userns:  # first: its network and the namespaces made next are its own
                    own = _pinned(plan, sys)
                    # opened as the host's root: the namespace's root may not traverse the state root
                    netns = f"/proc/self/fd/{os.open(plan.netns, os.O_RDONLY | os.O_CLOEXEC)}"
                    namespaces.join_userns_file(sys, plan.userns)
                plan.ns.enter(sys, netns)  # joins, then unshares (runtime/ns_modes.py)
                init = os.fork()
                if init == 0:
                    os.close(pidw)
                    _init_main(own, errw, sys, stdio)
                _write_all(pidw, str(init).encode())
                code = 0
            except BaseException as exc:
                _report(errw, EXIT_SETUP, f"cannot start container {plan.container_id[:12]}: {_describe(exc)}")
            finally:
                os._exit(code)
        os.close(errw)
        os.close(pidw)
        stdio.close_init_side()
        try:
            os.waitpid(mid, 0)
            raw_pid = _read_all(pidr)
            error = _read_all(errr)
        except BaseException:
            stdio.close_shim_side()
            raise
        finally:
            os.close(pidr)
            os.close(errr)
        init_pid = int(raw_pid) if raw_pid else 0
        if error:
            stdio.close_shim_side()
            if init_pid:
                _reap(init_pid)
            raise _error_from(error)
        if not init_pid:
            stdio.close_shim_side()
            raise ContainerError(f"cannot start container {plan.container_id[:12]}: the init was not created")
        return stdio.started(init_pid)

    return start


@dataclass
class _ShimStdio:
    """The shim's ends of a ``-t``/``-i`` init's stdio (runtime/console.py), made before the fork.

    ``-t``: a socketpair over which the init sends the master of the pty it opens in the
    container's devpts. ``-i`` alone: a pipe, the init's stdin. Plus the log, opened here (not
    following a symlink the image planted) for the shim to append terminal output to."""

    plan: InitPlan
    master_sock: tuple[socket.socket, socket.socket] | None = None  # (shim's, init's)
    stdin_pipe: tuple[int, int] | None = None  # (init's read end, shim's write end)
    log_fd: int | None = None

    @classmethod
    def open(cls, plan: InitPlan) -> "_ShimStdio":
        stdio = cls(plan)
        if plan.tty:
            stdio.master_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            if plan.log_path:
                stdio.log_fd = os.open(plan.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        elif plan.interactive:
            stdio.stdin_pipe = os.pipe2(os.O_CLOEXEC)
        return stdio

    def close_shim_side(self) -> None:
        if self.master_sock is not None:
            self.master_sock[0].close()
        if self.stdin_pipe is not None:
            _close_quietly(self.stdin_pipe[1])
        if self.log_fd is not None:
            _close_quietly(self.log_fd)

    def close_init_side(self) -> None:
        if self.master_sock is not None:
            self.master_sock[1].close()
        if self.stdin_pipe is not None:
            os.close(self.stdin_pipe[0])

    def send_master(self, master: int) -> None:  # in the init
        assert self.master_sock is not None
        socket.send_fds(self.master_sock[1], [b"m"], [master])

    def started(self, init_pid: int) -> "int | console.Started":
        """In the shim, once the init runs: what the console server needs (else the bare pid)."""
        if self.master_sock is not None:
            sock = self.master_sock[0]
            sock.settimeout(10.0)
            try:
                _msg, fds, _flags, _addr = socket.recv_fds(sock, 1, 1)
            finally:
                sock.close()
            if not fds:
                raise ContainerError(f"cannot start container {self.plan.container_id[:12]}: the init sent no terminal")
            return console.Started(init_pid, master_fd=fds[0], log_fd=self.log_fd, interactive=self.plan.interactive)
        if self.stdin_pipe is not None:
            return console.Started(init_pid, stdin_fd=self.stdin_pipe[1], interactive=True)
        return init_pid


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _pinned(plan: InitPlan, sys: Syscalls) -> InitPlan:  # pragma: no cover - intermediate process
    """For a user-namespaced init, which may not traverse the host's state root: the binds of host
    paths taken now by the host's root (rootfs.pin_sources), and the root as the working directory
    (unshare(CLONE_NEWNS) carries it into the new mount namespace; the init starts there)."""
    import dataclasses

    ops, _fds = rootfs.pin_sources(list(plan.ops), sys, plan.userns)  # closed when the init execs (CLOEXEC)
    # pivot_root(2) refuses a new root that is a locked mount, and the overlay would be one: a
    # mount the host made is locked in a mount namespace of a user namespace (it covers host
    # files). A detached copy taken now, attached by the init in its own namespace, is not.
    root_fd = sys.open_tree(plan.merged)
    os.chdir(plan.merged)
    return dataclasses.replace(plan, ops=tuple(ops), merged=".", root_fd=root_fd)


def _init_main(plan: InitPlan, errw: int, sys: Syscalls, stdio: _ShimStdio | None = None) -> None:  # pragma: no cover - container init
    try:
        os.umask(CONTAINER_UMASK)
        sys.mount(None, "/", None, MS_REC | MS_PRIVATE)
        os.chdir(plan.merged)
        if plan.root_fd >= 0:  # --userns: the unlocked copy of the root, over the locked one (_pinned)
            sys.move_mount(plan.root_fd, ".")
            os.fchdir(plan.root_fd)
        # relative to the root: a user-namespaced init cannot reach it by its host path (_pinned)
        rootfs.apply(list(plan.ops), ".", sys)
        sys.pivot_root(".", ".")
        sys.umount2(".", MNT_DETACH)
        os.chdir("/")
        creds = users.lookup(plan.user)
        if plan.ns.sets_hostname():  # a shared uts namespace keeps the host's or the other's name
            sys.sethostname(plan.hostname)
        os.setsid()
        _container_stdio(stdio, tty_owner=creds.uid)
        os.makedirs(plan.workdir, exist_ok=True)
        os.chdir(plan.workdir)
        if plan.read_only:
            # runc's readonly root: a bind remount changes this mount's flag only; the log is on
            # the /.pymigrate bind (rootfs.plan), which keeps its own
            sys.mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        _reset_signals()
        _close_fds_except(errw)
        capabilities.drop_privileges(sys, plan.cap_last, keep=plan.caps, creds=creds)
        if plan.seccomp_bpf is not None:
            seccomp.load(sys, plan.seccomp_bpf)
    except BaseException as exc:
        _report_exc(errw, f"cannot set up container {plan.container_id[:12]}", exc)
        os._exit(EXIT_SETUP)
    _exec(plan.argv, with_home(plan.env, creds.home), errw)


def _container_stdio(stdio: _ShimStdio | None = None, tty_owner: int = 0) -> None:
    if stdio is not None and stdio.master_sock is not None:
        # after pivot_root: /dev/ptmx is the container's devpts (runtime/rootfs.py), so CRIU
        # finds the slave on a mount of the dumped tree
        master, slave = console.open_terminal()
        if tty_owner:
            os.fchown(slave, tty_owner, -1)  # the user's terminal, as runc's console (mesg, write)
        stdio.send_master(master)
        os.close(master)
        stdio.master_sock[1].close()
        console.take_terminal(slave)
        return
    null = os.open("/dev/null", os.O_RDONLY)
    if stdio is not None and stdio.stdin_pipe is not None:
        os.close(null)
        null = stdio.stdin_pipe[0]
    out = os.open(LOG_PATH_IN_CONTAINER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    err = os.open(ERR_LOG_PATH_IN_CONTAINER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in (null, out, err):
        os.close(fd)


def _reset_signals() -> None:
    for sig in _RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _close_fds_except(keep: int) -> None:
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 20)


def _exec(argv: tuple[str, ...], env: tuple[str, ...], errw: int) -> None:  # pragma: no cover - never returns
    try:
        os.execvpe(argv[0], list(argv), _env_dict(env))
    except FileNotFoundError:
        _report(errw, EXIT_NOT_FOUND, f"container command not found: {argv[0]}")
        os._exit(EXIT_NOT_FOUND)
    except NotADirectoryError:
        _report(errw, EXIT_NOT_FOUND, f"container command not found: {argv[0]}")
        os._exit(EXIT_NOT_FOUND)
    except OSError as exc:
        _report(errw, EXIT_CANNOT_INVOKE, f"container command {argv[0]} cannot be invoked: {exc.strerror}")
        os._exit(EXIT_CANNOT_INVOKE)
    except BaseException as exc:
        _report(errw, EXIT_SETUP, f"cannot exec {argv[0]}: {_describe(exc)}")
        os._exit(EXIT_SETUP)


def exec_in(
    init_pid: int,
    argv: tuple[str, ...],
    env: tuple[str, ...],
    workdir: str,
    join_cgroup: Callable[[int], None],
    sys: Syscalls,
    cap_last: int,
    seccomp_bpf: bytes | None = None,
    user: str = "",
    caps: frozenset[int] = capabilities.DEFAULT_CAPS,
    console: "console_mod.ExecConsole | None" = None,
) -> int:
    """Run ``argv`` inside the live container whose init is ``init_pid``; its exit code.

    Joins the container's cgroup (first, so the cgroup namespace view is right), then every
    namespace of the init (cgroup, ipc, uts, net, pid, mnt), forks so the child is inside the pid
    namespace, resolves ``user`` in the container's /etc/passwd and /etc/group (the mount
    namespace's root is the container's), drops capabilities, becomes that user and loads
    ``seccomp_bpf`` like the init, and execs with this process's stdio; with ``console``
    (``exec -t``) in a session of its own whose controlling terminal and stdio are
    ``console.slave_fd``, while ``console.relay`` runs here until the terminal closes.

    Raises:
        InvalidArgument: ``user`` names a user or group the container does not have.
        ContainerError: setup failed; ``exit_code`` is 127 for a missing command, 126 if it
            cannot be invoked, 125 otherwise.
    """
    fds = namespaces.open_namespaces(init_pid, namespaces.join_order(init_pid))
    errr, errw = os.pipe2(os.O_CLOEXEC)
    console_socks = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) if console is not None else None
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_quit = signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    try:
        mid = os.fork()
        if mid == 0:  # pragma: no cover - joins the container
            code = EXIT_SETUP
            try:
                os.close(errr)
                join_cgroup(os.getpid())
                namespaces.join(sys, fds)
                child = os.fork()
                if child == 0:
                    try:
                        if console is not None and console_socks is not None:
                            _exec_terminal(console, console_socks[1])
                        os.umask(CONTAINER_UMASK)
                        creds = users.lookup(user)
                        os.chdir(workdir)
                        _reset_signals()
                        capabilities.drop_privileges(sys, cap_last, keep=caps, creds=creds)
                        if seccomp_bpf is not None:
                            seccomp.load(sys, seccomp_bpf)
                    except BaseException as exc:
                        _report_exc(errw, "cannot set up exec", exc)
                        os._exit(EXIT_SETUP)
                    _exec(argv, with_home(env, creds.home), errw)
                os.close(errw)
                _, status = os.waitpid(child, 0)
                code = os.waitstatus_to_exitcode(status)
                if code < 0:
                    code = 128 - code
            except BaseException as exc:
                _report(errw, EXIT_SETUP, f"cannot join container: {_describe(exc)}")
            finally:
                os._exit(code)
        for _, fd in fds:
            os.close(fd)
        fds = []
        os.close(errw)
        try:
            error = _read_all(errr)
        finally:
            os.close(errr)
        if console is not None and console_socks is not None:
            console_socks[1].close()
            if not error:
                _relay_exec_terminal(console, console_socks[0])
        _, status = os.waitpid(mid, 0)
    finally:
        for _, fd in fds:
            os.close(fd)
        if console_socks is not None:
            for sock in console_socks:
                sock.close()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGQUIT, old_quit)
    if error:
        raise _error_from(error)
    return os.waitstatus_to_exitcode(status)


def _exec_terminal(con: "console_mod.ExecConsole", sock: socket.socket) -> None:  # pragma: no cover - exec child
    """In the exec'd child (inside the container's mounts): a pty of the container's devpts as
    its controlling terminal and stdio; the master goes back to the caller."""
    master, slave = console_mod.open_terminal()
    if con.size is not None:
        console_mod.set_size(slave, *con.size)
    socket.send_fds(sock, [b"m"], [master])
    os.close(master)
    sock.close()
    os.setsid()
    console_mod.take_terminal(slave)


def _relay_exec_terminal(con: "console_mod.ExecConsole", sock: socket.socket) -> None:
    sock.settimeout(10.0)
    _msg, got, _flags, _addr = socket.recv_fds(sock, 1, 1)
    if not got:
        return
    try:
        con.relay(got[0])
    finally:
        os.close(got[0])


# -- helpers ------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


_INVALID_ARGUMENT = "InvalidArgument"  # the one error kind the pipe carries besides the generic one


def _report(fd: int, code: int, message: str, *, kind: str = "", hint: str | None = None) -> None:
    text = f"{code} {message}"
    if kind:
        text += f"\0{kind}\0{hint or ''}"
    try:
        _write_all(fd, text.encode(errors="replace"))
    except OSError:
        pass


def _report_exc(fd: int, context: str, exc: BaseException) -> None:
    """Report a setup failure: bad user input (``InvalidArgument``) keeps its kind and hint."""
    if isinstance(exc, InvalidArgument):
        _report(fd, EXIT_SETUP, f"{context}: {exc.message}", kind=_INVALID_ARGUMENT, hint=exc.hint)
    else:
        _report(fd, EXIT_SETUP, f"{context}: {_describe(exc)}")


def _error_from(raw: bytes) -> ContainerError:
    text, _, extra = raw.decode(errors="replace").partition("\0")
    kind, _, hint = extra.partition("\0")
    code_text, _, message = text.partition(" ")
    exc: ContainerError
    if kind == _INVALID_ARGUMENT:
        exc = InvalidArgument(message or text, hint=hint or None)
    else:
        exc = ContainerError(message or text)
    exc.exit_code = int(code_text) if code_text.isdigit() else EXIT_SETUP  # type: ignore[attr-defined]
    return exc


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            raise
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
