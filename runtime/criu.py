"""CRIU through its RPC interface: pycriu's ``rpc_pb2`` messages over a ``criu swrk`` socket.

This is the only module that imports pycriu, and it does so lazily: without pycriu the rest of the
runtime still works and checkpoint operations raise ``Unsupported`` with an install hint.

Why we spawn ``criu swrk`` ourselves instead of calling ``pycriu.criu().dump()``:
- restore must run CRIU inside the *new* container's cgroup, so the restored tree lands there
  (with ``manage_cgroups_mode=IGNORE`` CRIU leaves tasks in its own cgroup; see CRIU-NOTES), and
  the caller moves the swrk pid into that cgroup before sending the request;
- restore passes fds to CRIU (``inherit_fd``, e.g. the pre-made network namespace), which must be
  inheritable in the swrk process;
- CRIU sends NOTIFY messages (``notify_scripts``: post-dump, network-unlock, setup-namespaces, ...)
  that need an answer; pycriu's one-shot request helper cannot answer them.
The messages, field names and semantics are pycriu's (``pycriu.rpc_pb2``), exactly as libcriu uses them.

``rst_sibling``: in swrk mode CRIU can restore the root task as a sibling of ``criu swrk`` — a
child of the process that spawned swrk. The runtime's shim spawns swrk, so the restored init
becomes the shim's child and the shim reaps it like a freshly started container.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

from runtime.criu_features import criu_binary
from runtime.errors import CriuError, CriuTimeout, CriuUnreachable, Unsupported

log = logging.getLogger(__name__)

# Kernel/CRIU file names, defined once.
DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
CPUINFO_CHECK_LOG = "cpuinfo-check.log"
CPUINFO_IMAGE = "cpuinfo.img"
STATS_DUMP = "stats-dump"
STATS_RESTORE = "stats-restore"
INVENTORY = "inventory.img"

NetworkLock = Literal["iptables", "nftables", "skip"]
CgroupMode = Literal["ignore", "soft", "full", "strict", "default"]
NotifyFn = Callable[[str, int], bool]

_KDAT_READY: set[str] = set()  # binaries whose kdat cache dir this process has checked


def ensure_kdat(binary: str) -> None:
    """Once per process and binary: let CRIU keep its kernel-feature cache (runtime.criu_kdat),
    which saves ~30 ms of kernel probing in every later CRIU run."""
    if binary in _KDAT_READY:
        return
    from runtime.criu_kdat import ensure_cache_dir

    ensure_cache_dir(binary)
    _KDAT_READY.add(binary)


_MODULES: dict[str, Any] = {}
_VERSIONS: dict[str, str] = {}  # binary -> version, probed once per process


def _pycriu_module(relative: str) -> Any:
    """Load one of pycriu's generated modules (``rpc_pb2``, ``images/stats_pb2``, ``images/magic``)
    from pycriu's directory *without* running ``pycriu/__init__.py``: that imports every image
    module (about 75 ms here), a cost that would otherwise land inside a restore's downtime."""
    module = _MODULES.get(relative)
    if module is not None:
        return module
    import importlib.util

    spec = importlib.util.find_spec("pycriu")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pycriu is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / f"{relative}.py"
    if relative.startswith("images/"):
        import sys

        # generated image modules import their siblings as top-level modules (tcp_stream_pb2:
        # ``import opts_pb2``), as pycriu's own images/__init__ arranges on sys.path
        if str(path.parent) not in sys.path:
            sys.path.append(str(path.parent))
    mod_spec = importlib.util.spec_from_file_location(f"_pymigrate_pycriu_{relative.replace('/', '_')}", path)
    if mod_spec is None or mod_spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    _MODULES[relative] = module
    return module


def _rpc() -> Any:
    try:
        return _pycriu_module("rpc_pb2")
    except (ImportError, OSError) as exc:
        raise Unsupported("checkpoint/restore", f"pycriu is not importable ({exc})", hint="run scripts/setup.sh (installs pycriu into .venv)") from exc


@dataclass(frozen=True)
class PageServer:
    address: str
    port: int
    fd: int | None = None  # an already connected socket (CRIU uses it instead of connecting)
    # ``fd`` is a local relay's socketpair (migrate/migration/page_relay.py): the relay does the
    # TLS around what goes on the wire, CRIU talks plain to it
    plain: bool = False


@dataclass(frozen=True)
class CriuTls:
    """TLS on CRIU's page-server connection (criu/tls.c, gnutls; ``--tls*`` / criu_opts ``tls*``).

    CRIU's semantics (4.1.1): both ends present ``cert``/``key`` and check the other's certificate
    chain against ``cacert`` (the listening end *requires* a client certificate); ``cacrl`` is
    optional. The name check (``no_cn_verify`` off) compares the peer's certificate with CRIU's
    ``--address``: right for the connecting end (the address it dials, as gRPC checks a daemon's
    name), meaningless for a listening end with ``--address`` (it would check the *client's*
    certificate against the server's own address), so listeners always skip it (``for_listener``).
    A lazy dump over RPC listens without an address and checks the chain only.
    """

    cacert: Path
    cert: Path
    key: Path
    cacrl: Path | None = None
    no_cn_verify: bool = False

    def for_listener(self) -> "CriuTls":
        """The same material for the end that listens: the peer's chain is checked, not its name."""
        return self if self.no_cn_verify else CriuTls(self.cacert, self.cert, self.key, self.cacrl, True)

    def cli_args(self) -> list[str]:
        """``criu page-server`` / ``criu lazy-pages`` flags."""
        args = ["--tls", "--tls-cacert", str(self.cacert), "--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        if self.cacrl is not None:
            args += ["--tls-cacrl", str(self.cacrl)]
        if self.no_cn_verify:
            args.append("--tls-no-cn-verify")
        return args

    def set_rpc(self, opts: Any) -> None:
        """Fill criu_opts' ``tls*`` fields."""
        opts.tls = True
        opts.tls_cacert = str(self.cacert)
        opts.tls_cert = str(self.cert)
        opts.tls_key = str(self.key)
        if self.cacrl is not None:
            opts.tls_cacrl = str(self.cacrl)
        if self.no_cn_verify:
            opts.tls_no_cn_verify = True


@dataclass(frozen=True)
class DumpRequest:
    """Options of one dump; names mirror CRIU's (criu_opts in rpc.proto)."""

    pid: int
    images_dir: Path
    work_dir: Path | None = None  # logs and stats go here; images_dir when None
    leave_running: bool = False
    tcp_established: bool = False
    # Connections a listener had not accepted yet when frozen: CRIU refuses to dump them unless
    # skipped (their clients see a reset and reconnect; runc's --tcp-skip-in-flight).
    tcp_skip_in_flight: bool = False
    file_locks: bool = False
    ext_unix_sk: bool = False
    external: tuple[str, ...] = ()  # e.g. "net[4026532]:extnet", "mnt[/data]:vol0"
    freeze_cgroup: str | None = None
    network_lock: NetworkLock = "nftables"
    manage_cgroups_mode: CgroupMode = "ignore"
    lazy_pages: bool = False
    page_server: PageServer | None = None
    tls: CriuTls | None = None  # for the page-server connection (SwrkCriu's page_server_tls when None)
    parent_img: str | None = None  # relative to images_dir, for pre-dump chains
    track_mem: bool = False
    # a pty slave whose master is outside the tree (run -t: the shim holds it) is dumped as an
    # orphan, as runc always asks; without one it changes nothing (runtime/console.py)
    orphan_pts_master: bool = True
    # CLONE_NEWNET: the network namespace is dumped empty (a --userns container's: its restore
    # makes it anew in the restored user namespace and pymigrate wires it, runtime/userns.py)
    empty_ns: int = 0
    log_level: int = 4
    timeout_s: int | None = None


@dataclass(frozen=True)
class RestoreRequest:
    images_dir: Path
    root: Path  # the container's mounted rootfs (merged overlay dir)
    work_dir: Path | None = None
    inherit_fds: tuple[tuple[str, int], ...] = ()  # (key, fd): e.g. ("extnet", netns_fd)
    external: tuple[str, ...] = ()  # e.g. "mnt[vol0]:/host/path"
    tcp_established: bool = False
    file_locks: bool = False
    ext_unix_sk: bool = False
    network_lock: NetworkLock = "nftables"
    manage_cgroups_mode: CgroupMode = "ignore"
    lazy_pages: bool = False
    rst_sibling: bool = True
    # an orphan pty slave (run -t) gets a new master in the restored devpts, sent back to us in
    # the "orphan-pts-master" notification (SwrkCriu.take_orphan_pts_master); as runc asks
    orphan_pts_master: bool = True
    empty_ns: int = 0  # CLONE_NEWNET: a new empty network namespace, wired at "setup-namespaces"
    log_level: int = 4
    timeout_s: float | None = None  # CRIU gets killed without an answer by then (CriuTimeout)


@dataclass(frozen=True)
class DumpStats:
    """CRIU's stats-dump, converted to milliseconds. Missing values are 0."""

    freezing_ms: float = 0.0
    frozen_ms: float = 0.0
    memdump_ms: float = 0.0
    memwrite_ms: float = 0.0
    pages_scanned: int = 0
    pages_skipped_parent: int = 0
    pages_written: int = 0
    pages_lazy: int = 0


@dataclass(frozen=True)
class RestoreStats:
    restore_ms: float = 0.0
    forking_ms: float = 0.0
    pages_restored: int = 0
    raw: dict[str, Any] = field(default_factory=dict)


class Criu(Protocol):
    """Dump and restore process trees. Does not freeze, move cgroups or build rootfs (callers do)."""

    def version(self) -> str: ...

    def warm(self) -> None:
        """Load everything a request needs before the caller freezes a container."""
        ...

    def dump(self, request: DumpRequest, *, on_notify: NotifyFn | None = None) -> DumpStats:
        """Dump ``request.pid``'s tree into ``request.images_dir``; raise CriuError on failure."""
        ...

    def pre_dump(self, request: DumpRequest) -> DumpStats:
        """Pre-dump the tree's memory while it keeps running (pre-copy rounds; needs soft-dirty)."""
        ...

    def restore(
        self,
        request: RestoreRequest,
        *,
        on_spawn: Callable[[int], None] | None = None,
        on_notify: NotifyFn | None = None,
    ) -> int:
        """Restore the tree; return the host pid of its root. ``on_spawn(swrk_pid)`` runs before the
        request is sent (e.g. to move CRIU into the container's cgroup)."""
        ...


def _network_lock_value(rpc: Any, lock: NetworkLock) -> int:
    values: dict[str, int] = {"iptables": rpc.IPTABLES, "nftables": rpc.NFTABLES, "skip": rpc.SKIP}
    return values[lock]


def _cg_mode_value(rpc: Any, mode: CgroupMode) -> int:
    values: dict[str, int] = {
        "ignore": rpc.IGNORE,
        "soft": rpc.SOFT,
        "full": rpc.FULL,
        "strict": rpc.STRICT,
        "default": rpc.DEFAULT,
    }
    return values[mode]


_ERROR_LINE = re.compile(r"\bError\b|\berror\b|failed|Can't|can't")
_HARMLESS = ("RLIMIT_NOFILE",)  # no CAP_SYS_RESOURCE here: CRIU says so on every run


def log_excerpt(log_path: Path, *, context: int = 2, max_lines: int = 8) -> tuple[str, ...]:
    """The lines around the first real error in a CRIU log (CRIU prefixes them with ``Error (``)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ()
    first = None
    for i, line in enumerate(lines):
        if "Error (" in line and not any(h in line for h in _HARMLESS):
            first = i
            break
    if first is None:
        for i, line in enumerate(lines):
            if _ERROR_LINE.search(line) and not any(h in line for h in _HARMLESS):
                first = i
                break
    if first is None:
        return tuple(line.strip() for line in lines[-3:])
    chunk = lines[max(0, first - context) : first + max_lines - context]
    return tuple(line.strip() for line in chunk)


def first_error(log_path: Path) -> str | None:
    """CRIU's first real ``Error (file:line): text`` line, without its timestamp and location."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if "Error (" in line and not any(h in line for h in _HARMLESS):
            return line.split("): ", 1)[-1].strip()
    return None


def _stop_swrk(proc: subprocess.Popen[bytes], ours: socket.socket, timeout_s: float = 5.0) -> None:
    """Close our end (a swrk waiting for a request then exits) and reap it; kill if it lingers."""
    ours.close()
    if not _exited_within(proc, timeout_s):
        proc.kill()
    proc.wait()


def _exited_within(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Whether ``proc`` exits within ``timeout_s``, woken by its pidfd as it exits: Popen.wait with
    a timeout polls with doubling sleeps (1, 2, 4, 8 ms...), so a restore's shim, which reaps
    its swrk before it reports, waited up to twice the swrk's exit after CRIU's answer."""
    import select

    if proc.returncode is not None:  # reaped: its pid may be another process's by now
        return True
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # reaped already, or a kernel without pidfds (< 5.3)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout_s * 1000))
    finally:
        os.close(fd)


class PendingRestore:
    """A restore's ``criu swrk``, spawned and waiting for its request (``SwrkCriu.begin_restore``)."""

    def __init__(self, criu: SwrkCriu, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self._criu = criu
        self.proc = proc
        self.sock = sock  # readable or hung up before the request: the swrk died
        self._used = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(self, request: RestoreRequest, *, on_notify: NotifyFn | None = None) -> int:
        """Send the restore request; the restored tree's root pid (CriuError on failure)."""
        if self._used:
            raise ValueError("a pending restore runs once")
        self._used = True
        return self._criu._run_restore(self.proc, self.sock, request, on_notify)

    def cancel(self) -> None:
        """Give up before ``run``: the swrk exits (idempotent)."""
        if not self._used:
            self._used = True
            _stop_swrk(self.proc, self.sock)


class SwrkCriu:
    """The real CRIU: one ``criu swrk`` process per request."""

    _orphan_pts_master: int | None = None  # set by a restore's "orphan-pts-master" notification

    def __init__(self, binary: str | None = None, *, page_server_tls: CriuTls | None = None) -> None:
        """``page_server_tls``: the TLS of every page-server connection of this CRIU's dumps whose
        request names none (a deployment's daemons use TLS: so do their CRIUs' connections)."""
        self._binary = binary
        self.page_server_tls = page_server_tls

    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = criu_binary()
        return self._binary

    def warm(self) -> None:
        """Import what a dump or restore needs (pycriu's messages and image decoders) now, so the
        cost is not paid while a container is frozen."""
        ensure_kdat(self.binary)
        _rpc()
        try:
            _pycriu_module("images/stats_pb2")
            _pycriu_module("images/magic")
        except (ImportError, OSError):
            pass

    def version(self) -> str:
        from runtime import criu_boot_facts

        cached = _VERSIONS.get(self.binary)
        if cached is None:
            kept = criu_boot_facts.get(self.binary, "version")
            if kept:
                cached = _VERSIONS[self.binary] = kept.decode()
                return cached
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=30).stdout
            match = re.search(r"Version:\s*(\S+)", out)
            cached = _VERSIONS[self.binary] = match.group(1) if match else "unknown"
            if match:
                criu_boot_facts.put(self.binary, "version", cached.encode())
        return cached

    # --- requests -----------------------------------------------------------------------------

    def dump(self, request: DumpRequest, *, on_notify: NotifyFn | None = None) -> DumpStats:
        return self._dump(request, "dump", on_notify=on_notify)

    def pre_dump(self, request: DumpRequest) -> DumpStats:
        """``criu pre-dump`` (RPC ``SINGLE_PRE_DUMP``: one request, one answer): freeze the tree
        only while its memory is drained into pipes, thaw it, then write the pages (to
        ``request.page_server`` when given). With ``track_mem`` the kernel's soft-dirty bits are
        reset so the next (pre-)dump naming this one in ``parent_img`` writes only the pages
        dirtied since. Needs CONFIG_MEM_SOFT_DIRTY; CriuError otherwise."""
        return self._dump(request, "pre-dump")

    def _dump(self, request: DumpRequest, operation: Literal["dump", "pre-dump"], *, on_notify: NotifyFn | None = None) -> DumpStats:
        rpc = _rpc()
        work_dir = request.work_dir or request.images_dir
        opts = rpc.criu_opts()
        images_fd = os.open(request.images_dir, os.O_DIRECTORY | os.O_RDONLY)
        work_fd = os.open(work_dir, os.O_DIRECTORY | os.O_RDONLY)
        fds = [images_fd, work_fd]
        try:
            opts.images_dir_fd = images_fd
            opts.work_dir_fd = work_fd
            opts.pid = request.pid
            opts.log_file = DUMP_LOG
            opts.log_level = request.log_level
            opts.leave_running = request.leave_running
            opts.tcp_established = request.tcp_established
            opts.tcp_skip_in_flight = request.tcp_skip_in_flight
            opts.file_locks = request.file_locks
            opts.ext_unix_sk = request.ext_unix_sk
            opts.orphan_pts_master = request.orphan_pts_master
            opts.manage_cgroups = True
            opts.manage_cgroups_mode = _cg_mode_value(rpc, request.manage_cgroups_mode)
            opts.network_lock = _network_lock_value(rpc, request.network_lock)
            opts.notify_scripts = on_notify is not None
            opts.external.extend(request.external)
            if request.freeze_cgroup:
                opts.freeze_cgroup = request.freeze_cgroup
            if request.lazy_pages:
                opts.lazy_pages = True
            if request.page_server is not None:
                opts.ps.address = request.page_server.address
                opts.ps.port = request.page_server.port
                tls = None if request.page_server.plain else (request.tls or self.page_server_tls)
                if request.page_server.fd is not None:
                    # A socket passed as ps.fd gets its TLS session too with our CRIU patch
                    # (scripts/criu-patches/4.1.1-page-server-socket.patch; stock 4.1.1 skips it).
                    opts.ps.fd = request.page_server.fd
                    fds.append(request.page_server.fd)
                if tls is not None:  # a lazy dump listens for the target's lazy-pages daemon
                    (tls.for_listener() if request.lazy_pages else tls).set_rpc(opts)
            if request.parent_img:
                opts.parent_img = request.parent_img
            if request.track_mem:
                opts.track_mem = True
            if request.empty_ns:
                opts.empty_ns = request.empty_ns
            if request.timeout_s:
                opts.timeout = request.timeout_s
            log.debug("criu %s pid=%d images=%s opts=%s", operation, request.pid, request.images_dir, _opts_for_log(opts))
            req_type = rpc.DUMP if operation == "dump" else rpc.SINGLE_PRE_DUMP
            self._call(rpc, req_type, opts, operation, work_dir / DUMP_LOG, pass_fds=fds, on_notify=on_notify)
        finally:
            for fd in (images_fd, work_fd):
                os.close(fd)
        return read_dump_stats(work_dir)

    def restore(
        self,
        request: RestoreRequest,
        *,
        on_spawn: Callable[[int], None] | None = None,
        on_notify: NotifyFn | None = None,
    ) -> int:
        pending = self.begin_restore(inherit_fds=tuple(fd for _, fd in request.inherit_fds), on_spawn=on_spawn)
        return pending.run(request, on_notify=on_notify)

    def begin_restore(self, *, inherit_fds: tuple[int, ...] = (), on_spawn: Callable[[int], None] | None = None) -> PendingRestore:
        """Spawn the ``criu swrk`` of a restore before its request is known (``PendingRestore.run``
        sends it): CRIU's start, and ``on_spawn`` (moving it into the container's cgroup), can then
        happen while the images still arrive. ``inherit_fds``: the fds the request will name in
        ``inherit_fds`` (CRIU uses its own copies, so they are passed at the spawn); the images and
        work dirs are opened by CRIU through /proc/<caller>/fd when the request comes."""
        proc, ours = self._spawn("restore", pass_fds=list(inherit_fds), on_spawn=on_spawn)
        return PendingRestore(self, proc, ours)

    def _run_restore(self, proc: subprocess.Popen[bytes], ours: socket.socket, request: RestoreRequest, on_notify: NotifyFn | None) -> int:
        rpc = _rpc()
        work_dir = request.work_dir or request.images_dir
        opts = rpc.criu_opts()
        images_fd = os.open(request.images_dir, os.O_DIRECTORY | os.O_RDONLY)
        work_fd = os.open(work_dir, os.O_DIRECTORY | os.O_RDONLY)
        try:
            opts.images_dir_fd = images_fd
            opts.work_dir_fd = work_fd
            opts.log_file = RESTORE_LOG
            opts.log_level = request.log_level
            opts.root = str(request.root)
            opts.rst_sibling = request.rst_sibling
            opts.tcp_established = request.tcp_established
            opts.file_locks = request.file_locks
            opts.ext_unix_sk = request.ext_unix_sk
            opts.orphan_pts_master = request.orphan_pts_master
            opts.manage_cgroups = True
            opts.manage_cgroups_mode = _cg_mode_value(rpc, request.manage_cgroups_mode)
            opts.network_lock = _network_lock_value(rpc, request.network_lock)
            opts.notify_scripts = on_notify is not None
            opts.external.extend(request.external)
            if request.lazy_pages:
                opts.lazy_pages = True
            if request.empty_ns:
                opts.empty_ns = request.empty_ns
            for key, fd in request.inherit_fds:
                item = opts.inherit_fd.add()
                item.key = key
                item.fd = fd
            log.debug("criu restore images=%s root=%s opts=%s", request.images_dir, request.root, _opts_for_log(opts))
            resp = self._exchange(proc, ours, rpc, rpc.RESTORE, opts, "restore", work_dir / RESTORE_LOG, on_notify=on_notify,
                                  timeout_s=request.timeout_s)
        finally:
            os.close(images_fd)
            os.close(work_fd)
        return int(resp.restore.pid)

    # --- transport ----------------------------------------------------------------------------

    def _call(
        self,
        rpc: Any,
        req_type: int,
        opts: Any,
        operation: str,
        log_path: Path,
        *,
        pass_fds: list[int],
        on_spawn: Callable[[int], None] | None = None,
        on_notify: NotifyFn | None = None,
    ) -> Any:
        proc, ours = self._spawn(operation, pass_fds=pass_fds, on_spawn=on_spawn)
        return self._exchange(proc, ours, rpc, req_type, opts, operation, log_path, on_notify=on_notify)

    def _spawn(self, operation: str, *, pass_fds: list[int], on_spawn: Callable[[int], None] | None = None) -> tuple[subprocess.Popen[bytes], socket.socket]:
        """Start ``criu swrk`` on one end of a socketpair; (the process, our end). ``on_spawn`` runs
        before anything is asked of it; if it raises, the swrk is stopped."""
        ensure_kdat(self.binary)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            try:
                proc = subprocess.Popen(
                    [self.binary, "swrk", str(theirs.fileno())],
                    pass_fds=[theirs.fileno(), *pass_fds],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    close_fds=True,
                )
            except OSError as exc:
                ours.close()
                raise CriuUnreachable(operation, f"cannot start {self.binary} swrk: {exc}", errno=exc.errno or 0) from exc
        finally:
            theirs.close()
        if on_spawn is not None:
            try:
                on_spawn(proc.pid)
            except BaseException:
                _stop_swrk(proc, ours)
                raise
        return proc, ours

    def _exchange(
        self,
        proc: subprocess.Popen[bytes],
        ours: socket.socket,
        rpc: Any,
        req_type: int,
        opts: Any,
        operation: str,
        log_path: Path,
        *,
        on_notify: NotifyFn | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Send one request to a spawned swrk, answer its notifications, return its response.
        Without an answer within ``timeout_s`` the swrk is killed (``CriuTimeout``): a restore
        whose restored task died waits for it forever."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            req = rpc.criu_req()
            req.type = req_type
            req.opts.MergeFrom(opts)
            ours.send(req.SerializeToString())
            while True:
                if deadline is not None:
                    ours.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    resp, fds = self._recv(rpc, ours, operation, log_path)
                except TimeoutError:
                    proc.kill()
                    raise CriuTimeout(operation, timeout_s or 0.0, log_path=log_path, log_lines=log_excerpt(log_path)) from None
                if fds:
                    self._keep_fds(resp, fds)
                if resp.type == rpc.NOTIFY:
                    ok = True
                    if on_notify is not None:
                        ok = bool(on_notify(resp.notify.script, resp.notify.pid))
                    log.debug("criu %s notify %s pid=%d -> %s", operation, resp.notify.script, resp.notify.pid, ok)
                    ack = rpc.criu_req()
                    ack.type = rpc.NOTIFY
                    ack.notify_success = ok
                    ours.send(ack.SerializeToString())
                    continue
                break
        finally:
            _stop_swrk(proc, ours, timeout_s=60)
        if not resp.success:
            err = int(resp.cr_errno or 0)
            lines = log_excerpt(log_path)
            message = resp.cr_errmsg
            if not message or any(h in message for h in _HARMLESS):
                message = first_error(log_path) or (os.strerror(err) if err else "criu reported failure")
            raise CriuError(operation, message, errno=err, log_path=log_path, log_lines=lines)
        if resp.type != req_type:
            raise CriuUnreachable(operation, f"unexpected response type {resp.type}", log_path=log_path)
        return resp

    def take_orphan_pts_master(self) -> int | None:
        """The master CRIU made for a restored orphan pty slave (a ``run -t`` container's
        terminal), once: the caller owns the fd. None if the restore had none."""
        fd = self._orphan_pts_master
        self._orphan_pts_master = None
        return fd

    def _keep_fds(self, resp: Any, fds: list[int]) -> None:
        """fds CRIU passed with a message: the "orphan-pts-master" notification's is kept."""
        script = resp.notify.script if resp.HasField("notify") else ""
        if script == "orphan-pts-master" and self._orphan_pts_master is None:
            self._orphan_pts_master = fds.pop(0)
        for fd in fds:
            os.close(fd)

    @staticmethod
    def _recv(rpc: Any, sock: socket.socket, operation: str, log_path: Path) -> tuple[Any, list[int]]:
        """One message of the swrk and the fds passed with it (SCM_RIGHTS)."""
        try:
            size = len(sock.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK))
            buf, fds, _flags, _addr = socket.recv_fds(sock, max(size, 1), 4)
        except TimeoutError:
            raise
        except OSError as exc:
            raise CriuUnreachable(operation, f"lost the connection to criu: {exc}", errno=exc.errno or 0, log_path=log_path, log_lines=log_excerpt(log_path)) from exc
        if not buf:
            raise CriuUnreachable(operation, "criu exited without answering", errno=errno_mod.EPIPE, log_path=log_path, log_lines=log_excerpt(log_path))
        resp = rpc.criu_resp()
        resp.ParseFromString(buf)
        return resp, fds


def _opts_for_log(opts: Any) -> str:
    return " ".join(str(opts).split())


def _header_len(data: bytes) -> int:
    """Bytes of a CRIU image's magic: IMG_COMMON or IMG_SERVICE then the image's own, else one."""
    import struct

    magic = _pycriu_module("images/magic")
    (first,) = struct.unpack_from("<I", data, 0)
    return 8 if first in (magic.by_name["IMG_COMMON"], magic.by_name["IMG_SERVICE"]) else 4


def read_first_entry(path: Path, message_name: str, module: str) -> Any:
    """The first message of a CRIU image whose entry is followed by raw data (tcp-stream: the
    socket's queues), or None when the file holds none."""
    import struct

    pb = _pycriu_module(f"images/{module}")
    data = path.read_bytes()
    offset = _header_len(data)
    if offset + 4 > len(data):
        return None
    (size,) = struct.unpack_from("<I", data, offset)
    msg = getattr(pb, message_name)()
    msg.ParseFromString(data[offset + 4 : offset + 4 + size])
    return msg


def read_image_entries(path: Path, message_name: str, module: str) -> list[Any]:
    """Decode a CRIU image into protobuf messages, using pycriu's generated ``_pb2`` classes.

    CRIU image framing: a u32 magic (IMG_COMMON or IMG_SERVICE, then the image's own u32 magic),
    then entries, each a u32 little-endian length followed by that many bytes of protobuf.
    pycriu's dict decoder (pb2dict) reads ``FieldDescriptor.label``, which protobuf 7 removed, so we
    read the framing ourselves and only use the message classes.
    """
    import struct

    try:
        pb = _pycriu_module(f"images/{module}")
        _pycriu_module("images/magic")  # here, so that no pycriu means no entries (_header_len loads it)
    except (ImportError, OSError):
        return []
    data = path.read_bytes()
    offset = _header_len(data)
    cls = getattr(pb, message_name)
    entries = []
    while offset + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4
        msg = cls()
        msg.ParseFromString(data[offset : offset + size])
        offset += size
        entries.append(msg)
    return entries


def write_image_entries(path: Path, entries: list[Any]) -> None:
    """Replace the entries of the CRIU image ``path`` (read by ``read_image_entries``), keeping its
    magic; written to a temporary file beside it, then renamed over it."""
    import struct

    data = path.read_bytes()
    body = b"".join(struct.pack("<I", len(raw)) + raw for raw in (e.SerializeToString() for e in entries))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data[: _header_len(data)] + body)
    os.replace(tmp, path)


def rewrite_userns_map(images_dir: Path, base: int) -> int:
    """Point the dumped user namespaces' id maps at ``base`` (a restore on another range than the
    dump's: runtime/userns.py); each extent keeps its inside ids and count. The number of images
    changed. Task credentials are dumped as the namespace sees them, so nothing else moves."""
    import struct

    changed = 0
    for path in sorted(images_dir.glob("userns-*.img")):
        entries = read_image_entries(path, "userns_entry", "userns_pb2")
        if not entries:
            continue
        data = path.read_bytes()
        header = data[: _header_len(data)]
        for entry in entries:
            for extent in (*entry.uid_map, *entry.gid_map):
                extent.lower_first = base + extent.first
        body = b"".join(struct.pack("<I", len(raw)) + raw for raw in (e.SerializeToString() for e in entries))
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(header + body)
        os.replace(tmp, path)
        changed += 1
    return changed


def _stats(path: Path, which: str) -> dict[str, Any]:
    try:
        entries = read_image_entries(path, "stats_entry", "stats_pb2")
    except (OSError, ValueError) as exc:  # a stats image is informative only
        log.debug("cannot decode %s: %s", path, exc)
        return {}
    if not entries or not entries[0].HasField(which):
        return {}
    msg = getattr(entries[0], which)
    return {f.name: v for f, v in msg.ListFields()}


def read_dump_stats(work_dir: Path) -> DumpStats:
    """Decode CRIU's stats-dump (times in microseconds) from ``work_dir``."""
    d = _stats(work_dir / STATS_DUMP, "dump")

    def ms(key: str) -> float:
        return int(d.get(key, 0)) / 1000.0

    return DumpStats(
        freezing_ms=ms("freezing_time"),
        frozen_ms=ms("frozen_time"),
        memdump_ms=ms("memdump_time"),
        memwrite_ms=ms("memwrite_time"),
        pages_scanned=int(d.get("pages_scanned", 0)),
        pages_skipped_parent=int(d.get("pages_skipped_parent", 0)),
        pages_written=int(d.get("pages_written", 0)),
        pages_lazy=int(d.get("pages_lazy", 0)),
    )


def read_restore_stats(work_dir: Path) -> RestoreStats:
    r = _stats(work_dir / STATS_RESTORE, "restore")
    return RestoreStats(
        restore_ms=int(r.get("restore_time", 0)) / 1000.0,
        forking_ms=int(r.get("forking_time", 0)) / 1000.0,
        pages_restored=int(r.get("pages_restored", 0)),
        raw=dict(r),
    )


def cpuinfo_dump(images_dir: Path, binary: str | None = None) -> None:
    """Record this host's CPU features (cpuinfo.img) beside a dump, for checks on the target.
    The same bytes every time in one boot: the first dump's are kept (runtime/criu_boot_facts.py)."""
    from runtime import criu_boot_facts

    binary = binary or criu_binary()
    kept = criu_boot_facts.get(binary, CPUINFO_IMAGE)
    if kept:
        (images_dir / CPUINFO_IMAGE).write_bytes(kept)
        return
    _run_cli([binary, "cpuinfo", "dump", "-D", str(images_dir), "-o", "cpuinfo-dump.log"], "cpuinfo dump", images_dir / "cpuinfo-dump.log")
    try:
        criu_boot_facts.put(binary, CPUINFO_IMAGE, (images_dir / CPUINFO_IMAGE).read_bytes())
    except OSError as exc:  # nothing kept: the next dump asks CRIU again
        log.debug("cannot read %s: %s", images_dir / CPUINFO_IMAGE, exc)


def cpuinfo_check(images_dir: Path, work_dir: Path, binary: str | None = None) -> None:
    """Check that this CPU can run what was dumped with cpuinfo.img; CriuError when not.

    ``work_dir`` must be a directory we made (not part of an unpacked archive): CRIU chdirs into
    its work dir (-W, the images dir by default) and opens its log there with O_CREAT|O_TRUNC,
    following symlinks (criu/crtools.c, criu/log.c), so a log in an images dir that came from
    outside could be a link to any host file."""
    log_path = work_dir / CPUINFO_CHECK_LOG
    _run_cli([binary or criu_binary(), "cpuinfo", "check", "-D", str(images_dir), "-W", str(work_dir), "-o", CPUINFO_CHECK_LOG],
             "cpuinfo check", log_path)


def _run_cli(argv: list[str], operation: str, log_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    log.debug("%s took %.1f ms rc=%d", " ".join(argv), (time.monotonic() - started) * 1000, proc.returncode)
    if proc.returncode != 0:
        lines = log_excerpt(log_path) or tuple(proc.stderr.strip().splitlines()[-4:])
        raise CriuError(operation, f"exit status {proc.returncode}", log_path=log_path, log_lines=lines)


# --- long-running CRIU processes: lazy-pages daemon and page server --------------------------
# Both run as ``criu`` CLI processes we spawn and own (not swrk): they outlive one RPC request.
# ``--status-fd`` makes CRIU write one byte once it is ready (lazy-pages: its UNIX socket
# ``lazy-pages.socket`` exists in the work dir; page-server: it listens), so callers never race
# the process start. CRIU facts (criu/uffd.c, criu/page-xfer.c, 4.1.1):
# - ``criu lazy-pages`` creates ``lazy-pages.socket`` relative to its work dir; ``criu restore
#   --lazy-pages`` connects to the same relative name in *its* work dir, so both need one work dir.
# - the lazy-pages daemon connects to the source's page server only after the restore handed it
#   every task's userfaultfd, fetches what faults first and everything else in the background, and
#   exits 0 once every page has arrived (the source's dump returns at the same moment).
# - if the daemon dies, the kernel closes its userfaultfds and later faults get *zero pages*: a
#   container whose daemon died before its last page arrived has silently wrong memory.

LAZY_PAGES_LOG = "lazy-pages.log"
PAGE_SERVER_LOG = "page-server.log"


class CriuProcess:
    """A ``criu lazy-pages`` or ``criu page-server`` process started by ``start_lazy_pages`` or
    ``start_page_server``. The caller owns it: ``wait`` or ``stop`` it exactly once."""

    def __init__(self, proc: subprocess.Popen[bytes], operation: str, log_path: Path) -> None:
        self.proc = proc
        self.operation = operation
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        """The exit status, or None while it runs."""
        return self.proc.poll()

    def wait(self, timeout_s: float | None = None) -> int:
        """Wait for the exit; CriuError when it failed (subprocess.TimeoutExpired after ``timeout_s``)."""
        rc = self.proc.wait(timeout_s)
        if rc != 0:
            raise self.error(rc)
        return rc

    def error(self, rc: int | None = None) -> CriuError:
        rc = self.proc.returncode if rc is None else rc
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
        message = first_error(self.log_path)
        return CriuError(self.operation, f"{message} ({how})" if message else how, log_path=self.log_path, log_lines=log_excerpt(self.log_path))

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL; reaps the process. Idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start_ready(argv: list[str], operation: str, log_path: Path, timeout_s: float, pass_fds: tuple[int, ...] = ()) -> CriuProcess:
    """Start ``argv`` with ``--status-fd`` and wait until CRIU reports ready (or fails)."""
    import select

    rfd, wfd = os.pipe()
    try:
        argv = [*argv, "--status-fd", str(wfd)]
        log.debug("starting %s", " ".join(argv))
        try:
            proc = subprocess.Popen(
                argv, pass_fds=[wfd, *pass_fds], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True
            )
        except OSError as exc:
            raise CriuUnreachable(operation, f"cannot start {argv[0]}: {exc}", errno=exc.errno or 0) from exc
        os.close(wfd)
        wfd = -1
        handle = CriuProcess(proc, operation, log_path)
        ready, _, _ = select.select([rfd], [], [], timeout_s)
        data = os.read(rfd, 1) if ready else b""
        if not data:  # EOF: it exited (or closed the fd) before it was ready; or the timeout
            if proc.poll() is None:
                handle.stop()
                raise CriuError(operation, f"not ready after {timeout_s:g}s", log_path=log_path, log_lines=log_excerpt(log_path))
            raise handle.error(proc.wait())
        return handle
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)


def start_lazy_pages(
    images_dir: Path,
    work_dir: Path,
    page_server: PageServer | None,
    *,
    binary: str | None = None,
    log_level: int = 4,
    timeout_s: float = 10.0,
    tls: CriuTls | None = None,
    ps_socket: int | None = None,
) -> CriuProcess:
    """``criu lazy-pages --page-server``: serve the userfaults of a restore that runs with
    ``lazy_pages`` and the same ``work_dir``, fetching pages from ``page_server`` (the source's
    dump), over TLS when ``tls`` is given (it connects: the source's certificate must name
    ``page_server.address`` unless ``tls.no_cn_verify``). Returns once the daemon's socket exists.
    ``page_server`` None: the pages come from ``images_dir``'s own pages-*.img (a cold restore
    that resumes before its memory is in: migrate/migration/cold_lazy.py). ``ps_socket``: an
    already connected socket to the source instead (a page relay's socketpair, lazy_relay.py)."""
    binary = binary or criu_binary()
    ensure_kdat(binary)
    remote: list[str] = []
    if page_server is not None:
        where = ["--ps-socket", str(ps_socket)] if ps_socket is not None else ["--address", page_server.address, "--port", str(page_server.port)]
        remote = ["--page-server", *where]
    argv = [
        binary, "lazy-pages", *remote,
        "-D", str(images_dir), "-W", str(work_dir), "-o", LAZY_PAGES_LOG, f"-v{log_level}",
        *(tls.cli_args() if tls is not None and page_server else ()),
    ]
    fds = (ps_socket,) if ps_socket is not None else ()
    return _start_ready(argv, "lazy-pages", work_dir / LAZY_PAGES_LOG, timeout_s, pass_fds=fds)


def start_page_server(
    images_dir: Path,
    address: str,
    port: int,
    *,
    binary: str | None = None,
    log_level: int = 4,
    timeout_s: float = 10.0,
    tls: CriuTls | None = None,
    ps_socket: int | None = None,
) -> CriuProcess:
    """``criu page-server``: receive the memory pages of one dump (``DumpRequest.page_server``)
    into ``images_dir``. It exits 0 once the dump has sent everything. Returns once it listens.
    ``ps_socket``: an already connected socket to serve instead of listening (``--ps-socket``;
    a local relay's socketpair, migrate/migration/page_relay.py): ``address``/``port`` unused.

    With ``tls`` the dump must present a certificate that chains to ``tls.cacert`` (the name is
    not checked: ``CriuTls.for_listener``). CRIU accepts exactly one connection: a peer that
    fails the handshake ends the page server (non-zero exit), and with it the transfer."""
    binary = binary or criu_binary()
    ensure_kdat(binary)
    where = ["--ps-socket", str(ps_socket)] if ps_socket is not None else ["--address", address, "--port", str(port)]
    argv = [
        binary, "page-server", *where,
        "-D", str(images_dir), "-o", PAGE_SERVER_LOG, f"-v{log_level}",
        *(tls.for_listener().cli_args() if tls is not None else ()),
    ]
    fds = (ps_socket,) if ps_socket is not None else ()
    return _start_ready(argv, "page-server", images_dir / PAGE_SERVER_LOG, timeout_s, pass_fds=fds)
