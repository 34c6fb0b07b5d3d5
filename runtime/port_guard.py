"""A firewall guard for a plain (non-TLS) CRIU page-server port: only the peer may connect.

During a migration CRIU listens on a TCP port for a short window: the target's ``criu
page-server`` (cold, disk-less dump) or the source's lazy dump (post-copy; it listens on
INADDR_ANY whatever address it is given). Between mTLS daemons that link uses TLS; without it
(``--insecure``) whoever reaches the port first could read the container's memory or feed it
false pages. ``guard_port`` closes that window: every TCP packet to PORT whose source address is
not one of the peer's gets a TCP reset at once (the connect fails fast and visibly; nothing is
logged per packet), everything else passes untouched.

One nftables table per guard, in the *calling thread's* network namespace::

    table inet pymigrate_pg_<port>_<pid>_<n>             (pid = owner process, n = per-process counter)
      chain input  type filter hook input priority -10; policy accept
        tcp dport PORT ip saddr != { allowed IPv4 } reject with tcp reset
        tcp dport PORT ip6 saddr != { allowed IPv6 } reject with tcp reset
        (an address family with no allowed address: every source of that family is rejected)

Facts this relies on (nft(8), netfilter hooks; measured with nftables 1.0.6 on kernel 6.18):

- A base chain with policy accept only *adds* a verdict: our accept does not override other
  tables (filter at priority 0 still sees the packet), our reject is final. Priority -10 runs us
  before the usual filter chains, so nothing there can accept the packet first.
- The table is made with ``create`` (EEXIST if the name exists, unlike ``add``) and the whole
  script is one nftables transaction: either the table with all its rules exists or nothing
  changed. So a guard never adds rules to a table it did not create, and it deletes only the
  table it created (by its name, validated against the pattern above).
- Deleting a table makes the commit wait for an RCU grace period (a few ms to ~25 ms here);
  creating one is cheaper. libnftables runs in this thread through ctypes (it releases the GIL,
  no process spawn); without the library the ``nft`` binary is used (its child inherits the
  calling thread's network namespace, as fork copies the caller's namespaces).
- The guard remembers the namespace it was installed in (an open fd, which also keeps it alive)
  and ``remove()`` enters it if the calling thread is elsewhere.
- netfilter sees IPv4 connections to a dual-stack socket as IPv4 packets, so an IPv4-mapped IPv6
  address (``::ffff:a.b.c.d``) in ``allowed`` is taken as the IPv4 address.
- Loopback gets no exemption: a source on ``lo`` passes only if its address is allowed. A process
  on the same machine connecting to one of its own addresses uses that address as the source
  (the route to a local address goes through ``lo`` with that address preferred), so when the
  peer *is* this machine (``127.0.0.1`` or the host's own address allowed) any local process can
  reach the port: the guard then keeps out other hosts only.
- The reject applies to every TCP packet with destination port PORT from a disallowed source,
  also replies to connections this host made from local port PORT. The kernel does not pick a
  port with a bound listener as an ephemeral port, so this matters only between the guard's
  install and CRIU's listen, and only for a connection to a disallowed host.
- The table name carries the owner's pid (in the owner's pid namespace); ``sweep_stale`` removes
  the tables of dead owners. A recycled pid keeps a stale table until that process dies too,
  which is harmless: the table only rejects traffic to a port nobody listens on.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import _netns
from runtime.errors import ContainerError, InvalidArgument, NetworkError, Unsupported

log = logging.getLogger(__name__)

TABLE_PREFIX = "pymigrate_pg_"
TABLE_FAMILY = "inet"
CHAIN = "input"
PRIORITY = -10
TABLE_RE = re.compile(r"^pymigrate_pg_([1-9][0-9]{0,4})_([1-9][0-9]{0,9})_(0|[1-9][0-9]{0,9})$")
LIBNFTABLES = "libnftables.so.1"
NFT_TIMEOUT_S = 10.0
_LABEL_MAX = 96
_LABEL_SAFE = re.compile(r"[^A-Za-z0-9 ._:/=@+-]")
_EXISTS = "File exists"
_MISSING = "No such file or directory"

_counter = itertools.count()
_lib_lock = threading.Lock()
_lib: Any = None
_lib_error: str | None = None


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (in the caller's pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# --- the script -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    """The sources a guard lets through, split by family, normalized and sorted."""

    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]


def parse_allowed(allowed: Sequence[str]) -> Allowed:
    """Validate and normalize peer addresses (IPv4-mapped IPv6 becomes IPv4, zones are dropped).

    Raises:
        InvalidArgument: empty, a bare string instead of a sequence, or an entry that is not an
            IP address (networks are not accepted: the guard admits hosts).
    """
    if isinstance(allowed, str):
        raise InvalidArgument(f"allowed addresses must be a sequence, not the string {allowed!r}")
    v4: set[ipaddress.IPv4Address] = set()
    v6: set[ipaddress.IPv6Address] = set()
    for text in allowed:
        try:
            addr = ipaddress.ip_address(str(text).strip())
        except ValueError:
            raise InvalidArgument(f"allowed address {text!r} is not an IPv4 or IPv6 address") from None
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None:
                v4.add(addr.ipv4_mapped)
                continue
            v6.add(ipaddress.IPv6Address(addr.packed))  # drops a %zone: nft matches the address only
        else:
            v4.add(addr)
    if not v4 and not v6:
        raise InvalidArgument("a port guard needs at least one allowed address")
    return Allowed(ipv4=tuple(str(a) for a in sorted(v4)), ipv6=tuple(str(a) for a in sorted(v6)))


def validate_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidArgument(f"port {port!r} is not a TCP port (1-65535)")
    return port


def validate_table(name: str) -> str:
    """``name`` if it is a guard table's name; InvalidArgument otherwise."""
    if not TABLE_RE.fullmatch(name):
        raise InvalidArgument(f"{name!r} is not a port guard table name ({TABLE_PREFIX}<port>_<pid>_<n>)")
    return name


def table_name(port: int, pid: int, n: int) -> str:
    return validate_table(f"{TABLE_PREFIX}{port}_{pid}_{n}")


def table_owner(name: str) -> int | None:
    """The owner pid a guard table's name carries; None for any other name."""
    m = TABLE_RE.fullmatch(name)
    return int(m.group(2)) if m else None


def _comment(label: str) -> str:
    """The label as a safe nft string body (no quotes, backslashes or control characters)."""
    return _LABEL_SAFE.sub("_", label)[:_LABEL_MAX]


def install_script(table: str, port: int, allowed: Allowed, *, label: str = "") -> str:
    """The nft script of one guard: a new table, its input chain and one reject rule per family."""
    validate_table(table)
    validate_port(port)
    head = f"{TABLE_FAMILY} {table}"
    lines = [
        f'create table {head} {{ comment "pymigrate page-server guard: {_comment(label)}"; }}',
        f"add chain {head} {CHAIN} {{ type filter hook input priority {PRIORITY}; policy accept; }}",
    ]
    # Without any allowed address of a family every source of it is rejected. (nft 1.0.6 lists
    # such a rule without its "meta nfproto" match; the bytecode has it.)
    for family, match, addrs in (("ipv4", "ip saddr", allowed.ipv4), ("ipv6", "ip6 saddr", allowed.ipv6)):
        if addrs:
            lines.append(f"add rule {head} {CHAIN} tcp dport {port} {match} != {{ {', '.join(addrs)} }} reject with tcp reset")
        else:
            lines.append(f"add rule {head} {CHAIN} meta nfproto {family} tcp dport {port} reject with tcp reset")
    return "\n".join(lines) + "\n"


def delete_script(table: str) -> str:
    return f"delete table {TABLE_FAMILY} {validate_table(table)}\n"


def parse_tables(listing: str) -> list[str]:
    """Guard table names in ``nft list tables`` output (family inet only)."""
    names = []
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and parts[1] == TABLE_FAMILY and TABLE_RE.fullmatch(parts[2]):
            names.append(parts[2])
    return names


# --- running nft ------------------------------------------------------------------------------


class _NftFailed(Exception):
    """nft rejected a script; ``text`` is its error output."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _library() -> Any:
    """libnftables through ctypes, loaded once; None if it cannot be loaded."""
    global _lib, _lib_error
    with _lib_lock:
        if _lib is None and _lib_error is None:
            import ctypes

            try:
                lib = ctypes.CDLL(LIBNFTABLES, use_errno=True)
            except OSError as exc:
                _lib_error = str(exc)
                log.debug("%s not loadable (%s); port guards use the nft binary", LIBNFTABLES, exc)
                return None
            lib.nft_ctx_new.argtypes = (ctypes.c_uint32,)
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_free.argtypes = (ctypes.c_void_p,)
            lib.nft_ctx_free.restype = None
            for fn in (lib.nft_ctx_buffer_output, lib.nft_ctx_buffer_error):
                fn.argtypes = (ctypes.c_void_p,)
                fn.restype = ctypes.c_int
            for fn in (lib.nft_ctx_get_output_buffer, lib.nft_ctx_get_error_buffer):
                fn.argtypes = (ctypes.c_void_p,)
                fn.restype = ctypes.c_char_p
            lib.nft_run_cmd_from_buffer.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
            lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
            _lib = lib
        return _lib


def _run_library(lib: Any, script: str) -> str:
    # A fresh context per call: its netlink socket is opened in the calling thread's namespace,
    # and a context is not thread-safe.
    ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
    if not ctx:
        raise _NftFailed("nft_ctx_new failed")
    try:
        if lib.nft_ctx_buffer_output(ctx) != 0 or lib.nft_ctx_buffer_error(ctx) != 0:
            raise _NftFailed("cannot buffer libnftables output")
        rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise _NftFailed((lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace").strip() or f"rc {rc}")
        return out
    finally:
        lib.nft_ctx_free(ctx)


def _run_binary(nft: str, script: str) -> str:
    try:
        r = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _NftFailed(f"{nft}: {exc}") from exc
    if r.returncode != 0:
        raise _NftFailed(r.stderr.strip() or f"{nft} exited with {r.returncode}")
    return r.stdout


def _run(script: str) -> str:
    """Run an nft script in the calling thread's network namespace; its output.

    Raises:
        Unsupported: neither libnftables nor the nft binary is present.
        _NftFailed: nft rejected the script.
    """
    lib = _library()
    if lib is not None:
        return _run_library(lib, script)
    nft = shutil.which("nft")
    if nft is None:
        raise Unsupported(
            "nftables port guard",
            f"neither {LIBNFTABLES} ({_lib_error}) nor the nft binary is present",
            hint="apt-get install nftables (or libnftables1)",
        )
    return _run_binary(nft, script)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no error text"


def backend() -> str:
    """``"libnftables"``, ``"nft"`` (the binary) or ``"none"``."""
    if _library() is not None:
        return "libnftables"
    return "nft" if shutil.which("nft") else "none"


def available() -> bool:
    """True if guards can be installed here: nftables is present and usable in this namespace."""
    try:
        _run(f"list tables {TABLE_FAMILY}\n")
    except (Unsupported, _NftFailed) as exc:
        log.debug("port guards unavailable: %s", exc)
        return False
    return True


# --- the guard --------------------------------------------------------------------------------


def _thread_netns() -> tuple[int, int]:
    st = os.stat(_netns.THREAD_NETNS)
    return st.st_dev, st.st_ino


class PortGuard:
    """One installed guard: its nft table in the network namespace it was installed in.

    A context manager; ``remove()`` is idempotent and may be called from any thread.
    """

    def __init__(self, table: str, port: int, allowed: Allowed, label: str, netns_fd: int, install_ms: float) -> None:
        self.table = table
        self.port = port
        self.allowed = allowed
        self.label = label
        self.install_ms = install_ms
        self.remove_ms: float | None = None
        self._netns_fd: int | None = netns_fd
        self._netns_id = (os.fstat(netns_fd).st_dev, os.fstat(netns_fd).st_ino)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self._netns_fd is not None

    def remove(self) -> None:
        """Delete the guard's table (entering its network namespace if needed); no-op once removed.

        A table already gone (someone deleted it, or its namespace went away) counts as removed.

        Raises:
            NetworkError: nft refused to delete it (the guard stays active; retry is allowed).
        """
        with self._lock:
            if self._netns_fd is None:
                return
            t0 = time.monotonic()
            try:
                if _thread_netns() == self._netns_id:
                    _delete(self.table)
                else:
                    with _netns.entered(Path(f"/proc/self/fd/{self._netns_fd}")):
                        _delete(self.table)
            except _NftFailed as exc:
                raise NetworkError(
                    f"cannot remove the guard of page-server port {self.port} ({self.label}): "
                    f"table {self.table}: {_first_line(exc.text)}"
                ) from exc
            os.close(self._netns_fd)
            self._netns_fd = None
            self.remove_ms = (time.monotonic() - t0) * 1000
        log.debug("port guard removed: port=%d table=%s label=%s remove_ms=%.1f", self.port, self.table, self.label, self.remove_ms)

    def __enter__(self) -> PortGuard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"PortGuard(port={self.port}, table={self.table!r}, label={self.label!r}, {state})"


def _delete(table: str) -> bool:
    """Delete a guard table; False if it did not exist."""
    try:
        _run(delete_script(table))
    except _NftFailed as exc:
        if _MISSING in exc.text:
            return False
        raise
    return True


def guard_port(port: int, allowed: Sequence[str], *, label: str) -> PortGuard:
    """Let only ``allowed`` source addresses reach TCP ``port``; others get a TCP reset.

    The rule lives in the calling thread's network namespace until ``remove()``.

    Args:
        port: the page-server port (1-65535).
        allowed: the peer host's addresses (IPv4 and/or IPv6; at least one). A family with no
            allowed address is rejected entirely. Loopback is not exempt (see the module doc).
        label: for logs and the table's comment, e.g. ``"migration=ab12 lazy-pages"``.

    Returns:
        The installed guard (``.table`` is its nft table's name).

    Raises:
        InvalidArgument: bad port or address.
        Unsupported: neither libnftables nor the nft binary exists.
        NetworkError: nft refused the rules (names port and reason; nothing is left behind).
    """
    validate_port(port)
    addrs = parse_allowed(allowed)
    pid = os.getpid()
    own = os.open(_netns.THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        t0 = time.monotonic()
        for _ in range(8):
            # A name taken by a stale table of an earlier process with our pid: try the next n.
            table = table_name(port, pid, next(_counter))
            try:
                _run(install_script(table, port, addrs, label=label))
                break
            except _NftFailed as exc:
                if _EXISTS in exc.text:
                    log.debug("port guard table %s exists (stale?); trying another name", table)
                    continue
                raise NetworkError(
                    f"cannot guard page-server port {port} ({label}): nft refused the rules: {_first_line(exc.text)}",
                    hint="is nf_tables available in this kernel and are we root in this network namespace?",
                ) from exc
        else:
            raise NetworkError(f"cannot guard page-server port {port} ({label}): every table name tried exists")
        install_ms = (time.monotonic() - t0) * 1000
    except BaseException:
        os.close(own)
        raise
    guard = PortGuard(table, port, addrs, label, own, install_ms)
    log.debug("port guard installed: port=%d allowed=%s table=%s label=%s install_ms=%.1f",
              port, ",".join(addrs.ipv4 + addrs.ipv6), table, label, install_ms)
    return guard


def guard_or_warn(port: int, allowed: Sequence[str], *, label: str) -> PortGuard | None:
    """``guard_port`` for a migration that goes on without it: a host without nftables (or a peer
    address we cannot parse) gets a warning naming the exposure instead of a failed migration
    (plain page-server links were asked for with --insecure)."""
    try:
        return guard_port(port, allowed, label=label)
    except ContainerError as exc:
        log.warning("page-server port %d (%s) is open to anyone who reaches it: %s", port, label, exc.message)
        return None


def drop_guard(guard: PortGuard | None) -> None:
    """Remove ``guard`` (None: nothing); a failure is logged, the table goes at the next sweep."""
    if guard is None:
        return
    try:
        guard.remove()
    except ContainerError as exc:
        log.warning("%s", exc.message)


def sweep_stale(is_alive: Callable[[int], bool] = pid_alive) -> list[str]:
    """Remove guard tables left by dead processes (the table name carries the owner's pid).

    Works in the calling thread's network namespace and looks only at inet tables whose names
    match the guard pattern; tables of live owners (this process included) are left alone.

    Returns:
        The names of the tables removed.

    Raises:
        Unsupported: nftables is not present.
        NetworkError: nft could not list or delete the tables.
    """
    try:
        names = parse_tables(_run(f"list tables {TABLE_FAMILY}\n"))
    except _NftFailed as exc:
        raise NetworkError(f"cannot list nftables tables to sweep stale port guards: {_first_line(exc.text)}") from exc
    removed = []
    for name in names:
        owner = table_owner(name)
        if owner is None or owner == os.getpid() or is_alive(owner):
            continue
        try:
            if not _delete(name):
                continue  # gone meanwhile (another sweeper)
        except _NftFailed as exc:
            raise NetworkError(f"cannot remove stale port guard table {name}: {_first_line(exc.text)}") from exc
        removed.append(name)
        log.info("removed stale port guard table %s (owner pid %d is gone)", name, owner)
    return removed
