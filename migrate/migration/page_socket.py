"""The page stream of a cold migration over unix sockets: ``unix:`` and ``ssh://`` targets (issue 17).

A direct TCP migration sends CRIU's pages on a connection of their own to the target's page
server (cold.py, page_relay.py); gRPC carries only the small images. A target reached through a
unix socket (a daemon on this machine, ``unix:PATH``, or one behind an ssh:// tunnel) has no TCP
address to dial, and every page used to cross Python twice inside the gRPC stream. Such a target
now takes the page stream on a unix socket of its own:

    source CRIU --fd--> LOCAL [--> ssh -L (OpenSSH, C) --> sshd --]--> REMOTE --fd--> criu page-server

Over ssh:// the tunnel's one ``ssh -L`` process forwards a second local socket to REMOTE
(migrate/remote/ssh.py, ssh_forward.py); for ``unix:`` LOCAL is REMOTE. When the relay's probe
says raw (page_relay.choose, as over TCP) both CRIUs hold the socket themselves: no page passes
through Python on either side.

Where: ``<daemon socket dir>/pages/<token>.sock``, in a 0700 directory of the daemon's user beside
its 0600 socket: what may dial the daemon may send pages, nothing else may. The source names the
path (it knows which socket it dialled; the target does not), the target takes it only when the
directory is its own run directory and the name a fresh token, else it answers no page server and
the pages stream through gRPC as before. The request carries ``unix:PATH`` in
``page_server_address`` (a target without this cannot bind it as a host: no page server either);
the answer's ``page_server_port`` is ``PORT`` (a unix socket has no port; 0 still means none).
Behind the page relay (zstd) only with ``--compress on`` (``compressed_pages``; cold.py says why),
else CRIU's own connection as it comes: ``auto`` means raw here. Measured through ssh:// on one
2-core machine (issue 17): ssh and sshd spend ~0.4 CPU-s per 256 MiB between them, zstd -1 ~0.4
to compress and ~0.3 to decompress it, for 1.7x fewer bytes: where both ends share the cores, zstd
costs more than it saves. The relay's probe can still not tell such a tunnel from a slow link:
without the forwarder's pty (ssh_forward.py) it read 107 MiB/s for 555, and with it, inside a
migration on a loaded machine, 21-425 MiB/s for the same tunnel (the probe is 6 MiB, ~10 ms).

Trust, as over TCP: the target's page relay reads the handshake and decompresses boundedly; a
peer must run as this daemon's user or root (SO_PEERCRED) besides the directory's mode. No TLS:
the daemon's own unix socket has none either, and over ssh:// the tunnel encrypts.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.errors import TransferError
from migrate.migration.page_relay import PageRelayError, TargetRelay
from runtime.errors import InvalidArgument

log = logging.getLogger(__name__)

SCHEME = "unix:"
PORT = 1  # page_server_port of a page socket: listening (0 means none)
DIR_NAME = "pages"
TOKEN_RE = re.compile(r"[0-9a-f]{16}\.sock")
CONNECT_TIMEOUT_S = 10.0
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (SO_PEERCRED)
# A unix stream socket holds in flight what its *sender's* buffer allows (~208 KiB by default):
# CRIU splices page runs of MiBs, and ssh reads 16 KiB at a time on a shared, busy pair of cores;
# more room lets each run in longer turns.
SEND_BUFFER = 8 << 20
SO_SNDBUFFORCE = 32  # linux/socket.h (the socket module lacks the name)


@dataclass(frozen=True)
class PageSocket:
    """A page channel: ``remote`` the path the target daemon listens on, ``local`` the one this
    side connects to (the same for a local daemon; an ``ssh -L`` forward's end over ssh://)."""

    remote: str
    local: str
    via: str  # "unix" (a daemon on this machine) or "ssh" (the tunnel's forward)

    @property
    def address(self) -> str:
        """What PrepareIncoming's ``page_server_address`` carries."""
        return SCHEME + self.remote


def remote_path(daemon_socket: str) -> str:
    """A fresh page socket path beside ``daemon_socket`` (the target daemon's unix socket)."""
    return os.path.join(os.path.dirname(daemon_socket), DIR_NAME, secrets.token_hex(8) + ".sock")


def for_local_daemon(daemon_socket: str) -> PageSocket:
    path = remote_path(daemon_socket)
    return PageSocket(remote=path, local=path, via="unix")


def is_page_socket(address: str | None) -> bool:
    return bool(address) and str(address).startswith(SCHEME)


# -- the source's side ----------------------------------------------------------------------------------


def connect(target: Any, address: str) -> socket.socket:
    """Connect to the page socket ``address`` names, through ``target``'s own channel (its
    ``page_socket``: the local end of an ssh forward, or the path itself).

    Raises:
        TransferError: the target has no such channel, or the connection is refused.
    """
    channel: PageSocket | None = getattr(target, "page_socket", None)
    if channel is None or channel.address != address:
        raise TransferError(f"no page channel to {address} on this connection", phase="preflight")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    _send_buffer(sock, SEND_BUFFER)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect(channel.local)
    except OSError as exc:
        sock.close()
        raise TransferError(f"cannot reach the target's page socket {channel.local}: {exc.strerror or exc}",
                            phase="preflight") from exc
    sock.settimeout(None)
    log.info("page stream over %s socket %s -> %s", channel.via, channel.local, channel.remote)
    return sock


def _send_buffer(sock: socket.socket, size: int) -> None:
    try:  # past net.core.wmem_max with CAP_NET_ADMIN, as the daemon and a root CLI have
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


# -- the target's side ----------------------------------------------------------------------------------


class PageSocketRelay(TargetRelay):
    """A TargetRelay on a page socket: admits only this daemon's user or root, and removes the
    socket file when it closes."""

    def __init__(self, listener: socket.socket, path: Path, images_dir: Path, *, timeout_s: int) -> None:
        self.path = path
        super().__init__(listener, images_dir, tls=None, allowed=None, timeout_s=timeout_s)

    def _accept(self) -> socket.socket:
        conn = super()._accept()
        self.path.unlink(missing_ok=True)  # one connection per migration: nobody else may come
        _, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if uid not in (0, os.geteuid()):
            raise PageRelayError(f"page socket {self.path}: refused a peer of uid {uid}")
        return conn

    def _close(self) -> None:
        super()._close()
        self.path.unlink(missing_ok=True)


class PlainPageSocket(PageSocketRelay):
    """A page socket without the relay's handshake (no ``--compress on``: the source sends no
    probe): the connection goes to ``criu page-server`` as it is, as CRIU's own TCP one would."""

    def _handshake(self, conn: socket.socket) -> socket.socket:
        self.compressed = False
        return conn


def start(images_dir: Path, address: str, run_dir: Path, *, relay: bool, timeout_s: int) -> PageSocketRelay:
    """Listen on the page socket ``address`` (``unix:PATH``) for the source's page stream, in
    front of the ``criu page-server`` that writes into ``images_dir``.

    ``relay``: the source opens with the relay's handshake (``compressed_pages``); else CRIU's
    page server gets the connection as it comes (PlainPageSocket).

    Raises:
        InvalidArgument: ``PATH`` is not a fresh token in ``run_dir``'s pages directory: the pages
            then stream through gRPC.
        OSError: the socket cannot be made.
    """
    path = Path(address[len(SCHEME):])
    pages_dir = _pages_dir(run_dir)
    if (not path.is_absolute() or path.parent.name != DIR_NAME or not TOKEN_RE.fullmatch(path.name)
            or os.path.realpath(path.parent) != os.path.realpath(pages_dir)):
        raise InvalidArgument(f"page socket {path}: not a page socket in this daemon's {pages_dir}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))  # EADDRINUSE when it exists: a token is never taken twice
        os.chmod(path, 0o600)  # the directory (0700) guards it already; this says so again
        listener.listen(1)
    except OSError:
        listener.close()
        raise
    return (PageSocketRelay if relay else PlainPageSocket)(listener, path, images_dir, timeout_s=timeout_s)


def sweep(run_dir: Path) -> int:
    """Remove the page sockets a previous daemon of this root left (it died before a source
    connected; a live one unlinks its file at the connection): called once as the daemon starts,
    before it can make new ones. Returns how many went."""
    pages = run_dir / DIR_NAME
    try:
        names = os.listdir(pages)
    except FileNotFoundError:
        return 0
    gone = 0
    for name in names:
        path = pages / name
        if TOKEN_RE.fullmatch(name) and stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink(missing_ok=True)
            gone += 1
    return gone


def _pages_dir(run_dir: Path) -> Path:
    """``run_dir/pages``, 0700 and this daemon's user's (made when missing)."""
    pages = run_dir / DIR_NAME
    try:
        pages.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(pages)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise InvalidArgument(f"page socket directory {pages} is not a directory of uid {os.geteuid()}")
    if st.st_mode & 0o077:
        os.chmod(pages, 0o700)
    return pages
