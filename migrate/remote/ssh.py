"""Reach a host's pymigrate daemon over SSH: paramiko bootstrap and tunnel, nothing else.

``open_ssh_target("ssh://[user@]host[:port]")`` connects with paramiko, makes sure a daemon
serves on the remote host's unix socket (``ROOT/run/pymigrate.sock``; starting one for the
duration if none runs) and forwards a private local endpoint to that socket. gRPC
(``migrate.remote.client.RemoteEngine``) then dials ``SshTarget.address`` without TLS: the hop is local
and SSH authenticated it. The core never sees paramiko; this module is imported only for
``ssh://`` addresses.

Facts a reader needs first:

- Who we are: ``--ssh-key FILE`` alone when given (like ``IdentitiesOnly``); otherwise the agent's
  keys (``SSH_AUTH_SOCK``), then ``IdentityFile`` of the matching ``~/.ssh/config`` ``Host``
  block, or ``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa`` when it names none. ``HostName``,
  ``User`` and ``Port`` from the config apply where the URL leaves them out. Encrypted key files
  are skipped (load them into ssh-agent).
- Who they are: the host key is checked against known_hosts (``--ssh-known-hosts FILE`` or
  ``~/.ssh/known_hosts``; hashed entries work) under the name OpenSSH uses (``host``, or
  ``[host]:port`` off port 22). Unknown: refused unless ``accept_new``, which appends it.
  Changed: refused always, with both SHA256 fingerprints. Known key types are offered first
  in the key exchange, so a host with several keys presents the one on record.
- The tunnel: OpenSSH's ``direct-streamlocal@openssh.com`` channel (PROTOCOL, section 2.4:
  string socket path, string reserved, uint32 reserved) connects to the remote unix socket as
  the SSH user, so the socket keeps mode 0600 and no port opens on the remote host. paramiko
  has no API for this channel type; ``open_streamlocal`` builds the open request itself. sshd
  must allow it (``AllowStreamLocalForwarding``, on by default).
- The bytes: an OpenSSH ``ssh -L LOCAL_SOCKET:REMOTE_SOCKET`` process moves them
  (migrate/remote/ssh_forward.py: C and AES-GCM instead of paramiko's Python packet loop), pinned
  to the host key verified here and to the key that authenticated here, with no config file of
  the user's; it ends with us. Without an ``ssh`` client on PATH, with ``local="tcp"``, or when a
  probe through it fails (logged), the connections go through paramiko's channels as before.
- The pages: the same ``ssh`` process forwards a second local socket (``pages.sock``) to a page
  socket path beside the remote daemon's (``SshTarget.page_socket``); a cold migration's CRIU pages
  go socket -> ssh -> socket, not through gRPC (migrate/migration/page_socket.py). On paramiko there
  is no such forward: the pages stream through gRPC (slower, as before).
- The local end is a unix socket in a fresh 0700 directory by default: a loopback TCP port
  would let every local user reach the remote daemon as the SSH user. ``local="tcp"`` binds
  127.0.0.1 only, for tools that need a TCP address.
- A daemon started here runs as ``sh -c`` child of the SSH session and is tied to it: a
  watcher reads the session's stdin and sends SIGTERM to the daemon at EOF, which comes when
  we close it or when the connection dies (sshd killed, link cut). A daemon that was already
  running is used and left alone.
"""

from __future__ import annotations

import atexit
import base64
import getpass
import hashlib
import logging
import os
import shlex
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import paramiko
from paramiko.channel import Channel
from paramiko.common import cMSG_CHANNEL_OPEN
from paramiko.message import Message

from migrate.remote.ssh_errors import (
    HostKeyError,
    HostKeyMismatch,
    HostKeyUnknown,
    RemoteDaemonFailed,
    RemotePymigrateMissing,
    SshAuthFailed,
    SshUnreachable,
)
from migrate.errors import PeerError, TransferError
from migrate.migration.page_socket import PageSocket
from migrate.migration.page_socket import remote_path as page_socket_path
from migrate.remote.ssh_forward import Identity, OpenSshForwarder, find_ssh_client
from runtime.errors import InvalidArgument

__all__ = [
    "DEFAULT_PORT",
    "HostKeyError",
    "HostKeyMismatch",
    "HostKeyUnknown",
    "RemoteDaemonFailed",
    "RemotePymigrateMissing",
    "SshAuthFailed",
    "SshHostConfig",
    "SshTarget",
    "SshUnreachable",
    "SshUrl",
    "fingerprint",
    "known_hosts_name",
    "open_ssh_target",
    "open_streamlocal",
    "parse_ssh_url",
    "resolve_host",
    "ssh_options_from_args",
    "verify_host_key",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 22
STREAMLOCAL = "direct-streamlocal@openssh.com"
DEFAULT_REMOTE_ROOT = "${PYMIGRATE_ROOT:-/var/lib/pymigrate}"  # the remote's runtime.config.default_root()
RUN_DIR = "run"  # runtime.config.Paths.run, relative to the root
SOCKET_NAME = "pymigrate.sock"  # migrate.remote.server.SOCKET_NAME
OPENSSH_SOCKET_NAME = "ssh.sock"  # the ssh -L forwarder's local end, beside ours
PAGES_SOCKET_NAME = "pages.sock"  # its forward of the page stream (migrate/migration/page_socket.py)
DEFAULT_KEY_NAMES = ("id_ed25519", "id_ecdsa", "id_rsa")  # OpenSSH's defaults we can load
# OpenSSH's SSH2_OPEN_* reason codes (RFC 4254 section 5.1)
OPEN_ADMINISTRATIVELY_PROHIBITED = 1
OPEN_CONNECT_FAILED = 2

# Our receive window per channel. 2 MiB (paramiko's default) already fills a loopback link;
# more only helps long fat links and costs memory per channel.
WINDOW_BYTES = 4 << 20
PUMP_BYTES = 256 << 10
# What a remote command may print: ours print a line or two (a path, a pid). A hostile or broken
# server must not make us buffer without end, nor hold us with a trickle of bytes.
MAX_REMOTE_OUTPUT_BYTES = 64 << 10
# AEAD ciphers first: one pass over the data instead of cipher + MAC.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")


class _QuietParamiko(logging.Filter):
    """Keep paramiko's ERROR records at debug: each becomes a typed error for the caller.

    paramiko logs every refused channel open ("Secsh channel N open FAILED", which the socket
    probe expects while a daemon starts), a dropped connection ("Socket exception: ...") and a
    failed handshake (with a traceback) at ERROR, on top of raising; we raise
    ``TransferError``/``PeerError``/``AuthError`` for them, so they are debug detail here.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            log.debug("paramiko: %s", record.getMessage())
            return False
        return True


PARAMIKO_LOG = f"{__name__}.paramiko"
logging.getLogger(PARAMIKO_LOG).addFilter(_QuietParamiko())


# --- addresses and configuration ---------------------------------------------------------------


@dataclass(frozen=True)
class SshUrl:
    """``ssh://[user@]host[:port]`` split up; ``user`` and ``port`` are None when not given."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"ssh://{user}{host}{port}"


def parse_ssh_url(url: str) -> SshUrl:
    """Split ``ssh://[user@]host[:port]`` (IPv6 hosts in brackets; a trailing ``/`` is allowed).

    Raises:
        InvalidArgument: another scheme, a path, query or fragment, an empty user or host, a
            port outside 1..65535.
    """
    expected = "expected ssh://[user@]host[:port]"
    if not url.startswith("ssh://"):
        raise InvalidArgument(f"invalid ssh address {url!r}: {expected}")
    rest = url[len("ssh://") :]
    if rest.endswith("/"):
        rest = rest[:-1]
    if any(c in rest for c in "/?#") or any(c.isspace() for c in rest):
        raise InvalidArgument(f"invalid ssh address {url!r}: {expected} (no path, query or spaces)")
    user: str | None = None
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if not user or user.startswith("-"):
            raise InvalidArgument(f"invalid ssh address {url!r}: empty or invalid user name, {expected}")
    port_text = ""
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise InvalidArgument(f"invalid ssh address {url!r}: unbalanced brackets, {expected}")
        port_text = tail[1:] if tail else ""
        if tail == ":":
            port_text = "!"
    else:
        host, colon, port_text = rest.partition(":")
        if colon and not port_text:
            port_text = "!"
        if ":" in port_text:
            raise InvalidArgument(f"invalid ssh address {url!r}: put an IPv6 address in brackets, e.g. ssh://[::1]:22")
    if not host or host.startswith("-"):
        raise InvalidArgument(f"invalid ssh address {url!r}: empty or invalid host, {expected}")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise InvalidArgument(f"invalid ssh address {url!r}: port must be a number in 1..65535")
        port = int(port_text)
    return SshUrl(host=host, user=user, port=port)


@dataclass(frozen=True)
class SshHostConfig:
    """Where and as whom to connect, after ``~/.ssh/config`` filled in what the URL left out."""

    alias: str  # the host as written in the URL
    hostname: str
    port: int
    user: str
    identity_files: tuple[Path, ...]  # from IdentityFile, or OpenSSH's defaults; may not exist
    known_hosts: Path

    @property
    def destination(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.user}@{host}:{self.port}"


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def resolve_host(url: SshUrl, *, config_file: Path | None = None, known_hosts: Path | None = None) -> SshHostConfig:
    """Apply ``~/.ssh/config`` (or ``config_file``): HostName, User, Port, IdentityFile,
    UserKnownHostsFile. The URL's user and port win over the config's.

    Raises:
        InvalidArgument: the config file cannot be parsed or names a bad port.
    """
    path = Path(config_file) if config_file is not None else _home() / ".ssh" / "config"
    entry: dict[str, Any] = {}
    if path.is_file():
        try:
            entry = dict(paramiko.SSHConfig.from_path(str(path)).lookup(url.host))
        except (OSError, paramiko.ConfigParseError, ValueError) as exc:
            raise InvalidArgument(f"cannot read ssh config {path}: {exc}") from exc
    hostname = str(entry.get("hostname") or url.host)
    if url.port is not None:
        port = url.port
    else:
        try:
            port = int(entry.get("port", DEFAULT_PORT))
        except ValueError as exc:
            raise InvalidArgument(f"invalid Port for host {url.host} in {path}: {entry.get('port')!r}") from exc
    user = url.user or str(entry.get("user") or getpass.getuser())
    identity = entry.get("identityfile") or []
    if identity:
        identity_files = tuple(Path(os.path.expanduser(p)) for p in identity)
    else:
        identity_files = tuple(_home() / ".ssh" / name for name in DEFAULT_KEY_NAMES)
    if known_hosts is not None:
        known = Path(known_hosts)
    elif entry.get("userknownhostsfile"):
        known = Path(os.path.expanduser(str(entry["userknownhostsfile"]).split()[0]))
    else:
        known = _home() / ".ssh" / "known_hosts"
    return SshHostConfig(
        alias=url.host, hostname=hostname, port=port, user=user, identity_files=identity_files, known_hosts=known
    )


# --- host keys -------------------------------------------------------------------------------------


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's fingerprint: ``SHA256:`` and the unpadded base64 of the key blob's sha256."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(hostname: str, port: int) -> str:
    """The name OpenSSH files a host under: ``host`` on port 22, else ``[host]:port``."""
    return hostname if port == DEFAULT_PORT else f"[{hostname}]:{port}"


def _known_keys(known_hosts: Path, name: str) -> dict[str, paramiko.PKey]:
    keys = paramiko.HostKeys()
    if known_hosts.is_file():
        try:
            keys.load(str(known_hosts))
        except OSError as exc:
            raise InvalidArgument(f"cannot read known hosts file {known_hosts}: {exc.strerror}") from exc
    found = keys.lookup(name)
    return dict(found) if found else {}


def _host_key_algorithms(known: dict[str, paramiko.PKey]) -> list[str]:
    """paramiko's host key algorithms with the types on record first (OpenSSH does the same)."""
    preferred = list(paramiko.Transport._preferred_keys)
    first: list[str] = []
    for key_type in known:
        names = ["rsa-sha2-512", "rsa-sha2-256"] if key_type == "ssh-rsa" else [key_type]
        first.extend(n for n in names if n in preferred and n not in first)
    return first + [n for n in preferred if n not in first]


def verify_host_key(known_hosts: Path, name: str, key: paramiko.PKey, *, accept_new: bool = False) -> bool:
    """Check ``key`` against the entries for ``name``; record it when unknown and ``accept_new``.

    Returns:
        True when the key was newly recorded, False when it was already known.

    Raises:
        HostKeyMismatch: the host is on record with another key (of this or another type),
            even with ``accept_new``.
        HostKeyUnknown: not on record and not ``accept_new``.
    """
    known_hosts = Path(known_hosts)
    known = _known_keys(known_hosts, name)
    actual = f"{key.get_name()} {fingerprint(key)}"
    if known:
        recorded = known.get(key.get_name())
        if recorded is not None and recorded.asbytes() == key.asbytes():
            return False
        expected = ", ".join(f"{key_type} {fingerprint(k)}" for key_type, k in known.items())
        raise HostKeyMismatch(name, expected, actual, str(known_hosts))
    if not accept_new:
        raise HostKeyUnknown(name, key.get_name(), fingerprint(key), str(known_hosts))
    known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(f"{name} {key.get_name()} {key.get_base64()}\n")
    log.warning("recorded new host key of %s (%s) in %s", name, actual, known_hosts)
    return True


# --- user keys -----------------------------------------------------------------------------------


class _EncryptedKey(Exception):
    pass


def _load_key(path: Path) -> paramiko.PKey:
    """The private key in ``path``; ``_EncryptedKey`` when it needs a passphrase.

    Depending on format and paramiko version, a missing passphrase shows up as
    ``PasswordRequiredException`` or as ``cryptography``'s ``TypeError`` ("password was not
    given but private key is encrypted", "key is password-protected, but password was not
    provided").
    """
    try:
        return paramiko.PKey.from_path(str(path))
    except paramiko.PasswordRequiredException as exc:
        raise _EncryptedKey(str(path)) from exc
    except TypeError as exc:
        if "encrypted" in str(exc) or "password" in str(exc).lower():
            raise _EncryptedKey(str(path)) from exc
        raise


def _user_keys(key_file: Path | None, identity_files: tuple[Path, ...]) -> tuple[list[tuple[str, paramiko.PKey]], list[str]]:
    """Keys to offer, each with a label naming it, and notes on keys skipped."""
    if key_file is not None:
        path = Path(key_file)
        try:
            key = _load_key(path)
        except _EncryptedKey as exc:
            raise InvalidArgument(
                f"cannot use ssh key {path}: it is encrypted", hint="load it into ssh-agent and leave out --ssh-key"
            ) from exc
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise InvalidArgument(f"cannot read ssh key {path}: {exc}") from exc
        return [(f"{path} ({key.get_name()} {fingerprint(key)})", key)], []
    keys: list[tuple[str, paramiko.PKey]] = []
    skipped: list[str] = []
    if os.environ.get("SSH_AUTH_SOCK"):
        try:
            for agent_key in paramiko.Agent().get_keys():
                comment = getattr(agent_key, "comment", "") or ""
                label = f"agent key {agent_key.get_name()} {fingerprint(agent_key)}" + (f" ({comment})" if comment else "")
                keys.append((label, agent_key))
        except paramiko.SSHException as exc:
            skipped.append(f"ssh-agent ({exc})")
    for path in identity_files:
        if not path.is_file():
            continue
        try:
            key = _load_key(path)
        except _EncryptedKey:
            skipped.append(f"{path} (encrypted, load it into ssh-agent)")
            continue
        except (OSError, paramiko.SSHException, ValueError) as exc:
            skipped.append(f"{path} (unreadable: {exc})")
            continue
        keys.append((f"{path} ({key.get_name()} {fingerprint(key)})", key))
    return keys, skipped


def _authenticate(transport: paramiko.Transport, config: SshHostConfig, keys: list[tuple[str, paramiko.PKey]], skipped: list[str]) -> str:
    tried: list[str] = []
    for label, key in keys:
        tried.append(label)
        try:
            remaining = transport.auth_publickey(config.user, key)
        except paramiko.BadAuthenticationType as exc:
            allowed = ", ".join(exc.allowed_types) or "nothing"
            raise SshAuthFailed(config.destination, tried + skipped, f"the server does not accept public keys (only {allowed})") from exc
        except paramiko.AuthenticationException:
            log.debug("ssh %s refused key %s", config.destination, label)
            continue
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshAuthFailed(config.destination, tried + skipped, f"the server closed the connection ({exc})") from exc
        if remaining:
            raise SshAuthFailed(config.destination, tried + skipped, f"the server asks for more methods ({', '.join(remaining)})")
        if transport.is_authenticated():
            return label
    raise SshAuthFailed(config.destination, tried + skipped)


# --- connection ----------------------------------------------------------------------------------


def connect(
    config: SshHostConfig, *, key_file: Path | None = None, accept_new: bool = False, timeout_s: float = 10.0
) -> paramiko.Transport:
    """An authenticated paramiko transport to ``config``'s host, its host key verified.

    Raises:
        SshUnreachable, HostKeyUnknown, HostKeyMismatch, SshAuthFailed; InvalidArgument for an
        unreadable ``key_file`` or known_hosts file.
    """
    return _connect(config, key_file=key_file, accept_new=accept_new, timeout_s=timeout_s)[0]


def _identity(label: str, key: paramiko.PKey, key_file: Path | None, identity_files: tuple[Path, ...]) -> Identity:
    """Where the key that authenticated lives, for the ``ssh`` forwarder to use the same one."""
    if isinstance(key, paramiko.AgentKey):
        return Identity(key=key, path=None, agent_socket=os.environ.get("SSH_AUTH_SOCK"))
    candidates = (Path(key_file),) if key_file is not None else identity_files
    path = next((p for p in candidates if label.startswith(f"{p} (")), None)
    return Identity(key=key, path=path)


def _connect(
    config: SshHostConfig, *, key_file: Path | None, accept_new: bool, timeout_s: float
) -> tuple[paramiko.Transport, Identity]:
    keys, skipped = _user_keys(key_file, config.identity_files)
    name = known_hosts_name(config.hostname, config.port)
    known = _known_keys(config.known_hosts, name)
    try:
        sock = socket.create_connection((config.hostname, config.port), timeout=timeout_s)
    except socket.gaierror as exc:
        raise SshUnreachable(config.destination, f"cannot resolve {config.hostname}: {exc.strerror}") from exc
    except TimeoutError as exc:
        raise SshUnreachable(config.destination, f"no answer within {timeout_s:g}s") from exc
    except OSError as exc:
        raise SshUnreachable(config.destination, (exc.strerror or str(exc)).lower()) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock, default_window_size=WINDOW_BYTES)
    transport.set_log_channel(PARAMIKO_LOG)
    try:
        options = transport.get_security_options()
        options.key_types = _host_key_algorithms(known)
        options.ciphers = [c for c in PREFERRED_CIPHERS if c in options.ciphers] + [
            c for c in options.ciphers if c not in PREFERRED_CIPHERS
        ]
        transport.banner_timeout = timeout_s
        try:
            transport.start_client(timeout=timeout_s)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshUnreachable(config.destination, f"ssh handshake failed: {exc}") from exc
        if transport.host_key is None:  # start_client returns at its timeout without raising
            raise SshUnreachable(config.destination, f"ssh handshake failed: no key exchange within {timeout_s:g}s")
        verify_host_key(config.known_hosts, name, transport.get_remote_server_key(), accept_new=accept_new)
        label = _authenticate(transport, config, keys, skipped)
        log.info("ssh connected to %s with %s", config.destination, label)
        transport.set_keepalive(10)
        return transport, _identity(label, dict(keys)[label], key_file, config.identity_files)
    except BaseException:
        close_transport(transport)
        raise


def close_transport(transport: paramiko.Transport) -> None:
    """Close the session and its socket (``Transport.close`` skips the socket of a dead session)."""
    transport.close()
    transport.sock.close()


def open_streamlocal(transport: paramiko.Transport, socket_path: str, *, timeout_s: float = 10.0) -> Channel:
    """Open a ``direct-streamlocal@openssh.com`` channel to ``socket_path`` on the server.

    paramiko's ``open_channel`` only knows the tcpip and x11 payloads, so this repeats its
    steps with the streamlocal payload (OpenSSH PROTOCOL 2.4: string socket path, string
    reserved, uint32 reserved).

    Raises:
        paramiko.ChannelException: the server refused (``code`` 1: forwarding prohibited,
            2: connect failed).
        paramiko.SSHException: the session ended or the open timed out.
    """
    if not transport.active:
        raise paramiko.SSHException("ssh session not active")
    t: Any = transport  # paramiko internals, the same ones Transport.open_channel uses
    with t.lock:
        window_size = t._sanitize_window_size(None)
        max_packet_size = t._sanitize_packet_size(None)
        chanid = t._next_channel()
        m = Message()
        m.add_byte(cMSG_CHANNEL_OPEN)
        m.add_string(STREAMLOCAL)
        m.add_int(chanid)
        m.add_int(window_size)
        m.add_int(max_packet_size)
        m.add_string(socket_path)
        m.add_string("")
        m.add_int(0)
        chan = Channel(chanid)
        t._channels.put(chanid, chan)
        t.channel_events[chanid] = event = threading.Event()
        t.channels_seen[chanid] = True
        chan._set_transport(t)
        chan._set_window(window_size, max_packet_size)
    t._send_user_message(m)
    deadline = time.monotonic() + timeout_s
    while not event.wait(0.1):
        if not transport.active:
            raise transport.get_exception() or paramiko.SSHException("ssh session ended while opening a channel")
        if time.monotonic() > deadline:
            raise paramiko.SSHException(f"timed out opening a channel to {socket_path}")
    opened = t._channels.get(chanid)
    if opened is not None:
        return opened
    raise transport.get_exception() or paramiko.SSHException(f"cannot open a channel to {socket_path}")


def _run(transport: paramiko.Transport, command: str, *, timeout_s: float = 30.0,
         limit_bytes: int = MAX_REMOTE_OUTPUT_BYTES) -> tuple[int, str, str]:
    """Run ``command`` on the remote host; its exit status, stdout and stderr (made printable).

    Bounded: the whole exchange within ``timeout_s`` (TransferError), at most ``limit_bytes`` of
    output (PeerError) — the remote host is not trusted to be brief or to finish."""
    deadline = time.monotonic() + timeout_s
    chan = transport.open_session(timeout=timeout_s)
    try:
        chan.exec_command(command)
        out, err = bytearray(), bytearray()
        while True:
            busy = False
            if chan.recv_ready():
                out += chan.recv(PUMP_BYTES)
                busy = True
            if chan.recv_stderr_ready():
                err += chan.recv_stderr(PUMP_BYTES)
                busy = True
            if len(out) + len(err) > limit_bytes:
                raise PeerError(f"the remote command printed more than {limit_bytes} bytes (expected a few lines)", phase="connect")
            if not busy and chan.exit_status_ready() and (chan.eof_received or chan.closed):
                break
            if time.monotonic() > deadline:
                raise TransferError(f"the remote command did not finish within {timeout_s:g}s", phase="connect")
            if not busy:
                time.sleep(0.002)
        return chan.recv_exit_status(), _printable(out), _printable(err)
    finally:
        _close_channel(chan)


def _printable(raw: bytes | bytearray) -> str:
    """Remote text as we show it: decoded, with control characters (terminal escapes a hostile
    host could send into the user's terminal) replaced; newlines and tabs kept."""
    text = raw.decode(errors="replace")
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "\ufffd" for ch in text)


def _close_channel(chan: Channel) -> None:
    """Close ``chan``; paramiko raises EOFError/OSError when the session is already gone."""
    try:
        chan.close()
    except (OSError, EOFError, paramiko.SSHException):
        pass  # nothing left to tell the other side


def _sh(script: str) -> str:
    """``script`` for ``sh -c``, whatever the user's login shell is."""
    return "sh -c " + shlex.quote(script)


# --- the forward ----------------------------------------------------------------------------------


class _Pipe:
    """One local connection and its channel, pumped by two threads (one per direction)."""

    def __init__(self, sock: socket.socket, chan: Channel) -> None:
        self.sock = sock
        self.chan = chan
        self._lock = threading.Lock()
        self._open_directions = 2
        for target, name in ((self._to_channel, "ssh-fwd-up"), (self._to_socket, "ssh-fwd-down")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def _to_channel(self) -> None:
        try:
            while data := self.sock.recv(PUMP_BYTES):
                self.chan.sendall(data)
            self.chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            self.close()
        finally:
            self._done()

    def _to_socket(self) -> None:
        try:
            while data := self.chan.recv(PUMP_BYTES):
                self.sock.sendall(data)
            if self.chan.closed or not self.chan.get_transport().is_active():
                self.close()  # the session died: do not leave the client waiting on a half-open socket
            else:
                self.sock.shutdown(socket.SHUT_WR)
        except (OSError, EOFError, paramiko.SSHException):
            self.close()
        finally:
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._open_directions -= 1
            last = self._open_directions == 0
        if last:
            self.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        _close_channel(self.chan)


class _Forward:
    """A local listener whose every connection goes to ``remote_socket``: through an ``ssh -W``
    process once ``use_openssh`` succeeded (ssh_forward.py), else a paramiko streamlocal channel."""

    def __init__(self, transport: paramiko.Transport, remote_socket: str, local: Literal["unix", "tcp"]) -> None:
        self._transport = transport
        self._remote_path = remote_socket
        self._timeout_s = 10.0
        self._pipes: list[_Pipe] = []
        self._lock = threading.Lock()
        self._closed = False
        self.openssh: OpenSshForwarder | None = None
        self.page_socket: PageSocket | None = None  # the forward of the page stream, with OpenSSH only
        # 0700: the local socket, and the ssh forwarder's pinned known_hosts and identity
        self._dir = Path(tempfile.mkdtemp(prefix="pymigrate-tunnel-"))
        if local == "unix":
            path = self._dir / SOCKET_NAME
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(str(path))
            os.chmod(path, 0o600)
            self.address = f"unix:{path}"
        elif local == "tcp":
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        else:
            raise InvalidArgument(f"invalid local forward kind {local!r}: expected unix or tcp")
        self._listener.listen(16)
        self._thread = threading.Thread(target=self._accept_loop, name="ssh-fwd-accept", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self._closed:
                conn.close()
                return
            try:
                chan = open_streamlocal(self._transport, self._remote_socket)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                log.warning("ssh forward: cannot open a channel to %s: %s", self._remote_socket, exc)
                conn.close()
                continue
            if conn.family == socket.AF_INET:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pipes = [p for p in self._pipes if not p.chan.closed]
                self._pipes.append(_Pipe(conn, chan))

    @property
    def _remote_socket(self) -> str:
        return self._remote_path

    @_remote_socket.setter
    def _remote_socket(self, path: str) -> None:
        """Point later connections at another remote socket (tests and scripts/bench_ssh.py)."""
        self._remote_path = path
        if self.openssh is not None:
            assert self.openssh.local_socket is not None
            extra = [(Path(self.page_socket.local), self.page_socket.remote)] if self.page_socket is not None else []
            reason = self.openssh.start(self.openssh.local_socket, path, self._timeout_s, probe=False, extra=extra)  # not HTTP/2
            if reason is not None:
                raise PeerError(f"cannot forward to {path} through ssh: {reason}", phase="connect")

    def use_openssh(self, config: SshHostConfig, identity: Identity, timeout_s: float) -> None:
        """Move the bytes through an ``ssh -L`` process when an ``ssh`` client is here and a probe
        through it reaches the daemon (``address`` is then its socket); else stay on paramiko,
        saying why in the log."""
        if not self.address.startswith("unix:"):
            log.info("ssh forward to a tcp port: forwarding through paramiko")
            return
        binary = find_ssh_client()
        if binary is None:
            log.info("no ssh client on PATH: forwarding through paramiko (slower, ~120 MiB/s)")
            return
        if identity.path is None and not identity.agent_socket:
            log.warning("ssh forward: the key that authenticated cannot be handed to %s: forwarding through paramiko", binary)
            return
        forwarder = OpenSshForwarder(binary, self._dir, hostname=config.hostname, port=config.port, user=config.user,
                                     host_key=self._transport.get_remote_server_key(), identity=identity,
                                     connect_timeout_s=timeout_s)  # fmt: skip
        # the page stream's own forward in the same process (a cold migration's CRIU pages:
        # socket -> ssh -> socket, migrate/migration/page_socket.py); sshd dials it only when used
        pages = PageSocket(remote=page_socket_path(self._remote_socket), local=str(self._dir / PAGES_SOCKET_NAME), via="ssh")
        reason = forwarder.start(self._dir / OPENSSH_SOCKET_NAME, self._remote_socket, timeout_s,
                                 extra=[(Path(pages.local), pages.remote)])
        if reason is not None:
            log.warning("ssh forward through %s failed (%s): forwarding through paramiko (slower)", binary, reason)
            return
        log.info("ssh forward through %s (pid %s) -L %s, pages -L %s", binary, forwarder.pid, self._remote_socket, pages.remote)
        self.openssh = forwarder
        self.page_socket = pages
        self._timeout_s = timeout_s
        self.address = f"unix:{forwarder.local_socket}"

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        self._listener.close()
        self._thread.join(5.0)
        with self._lock:
            pipes, self._pipes = self._pipes, []
        for pipe in pipes:
            pipe.close()
        if self.openssh is not None:
            self.openssh.close()
        shutil.rmtree(self._dir, ignore_errors=True)


# --- the remote daemon ------------------------------------------------------------------------------

# Starts the daemon in the background, prints "PID LOG", and ties the daemon to the session: the
# watcher subshell reads our stdin (explicitly: an asynchronous list otherwise gets /dev/null) and
# sends SIGTERM at EOF. The script's exit status is the daemon's. The log is ROOT/run/ssh-daemon.log
# (overwritten by the next start), next to the socket, so nothing accumulates elsewhere.
_START_SCRIPT = """\
root={root}
(umask 077 && mkdir -p "$root/run") || exit 125
log="$root/run/ssh-daemon.log"
exec 3<&0
{pymigrate} --root "$root" daemon --listen {listen} </dev/null >"$log" 2>&1 3<&- &
pid=$!
( cat <&3 >/dev/null; kill -TERM "$pid" 2>/dev/null ) >/dev/null 2>&1 &
exec 3<&-
printf '%s %s\\n' "$pid" "$log"
wait "$pid"
"""


class _RemoteDaemon:
    """A daemon this module started over ``transport``; ``stop`` ends it."""

    def __init__(self, transport: paramiko.Transport, destination: str, pymigrate: str, root: str, socket_path: str) -> None:
        self._transport = transport
        self._destination = destination
        script = _START_SCRIPT.format(
            pymigrate=shlex.quote(pymigrate), root=shlex.quote(root), listen=shlex.quote(f"unix:{socket_path}")
        )
        self._chan = transport.open_session(timeout=10.0)
        self._chan.settimeout(30.0)  # each read: the script prints its first line at once
        self._chan.exec_command(_sh(script))
        self._out = self._chan.makefile("rb")
        try:
            first = _printable(self._out.readline(4096)).split()  # bounded: "<pid> <log path>\n"
        except socket.timeout as exc:
            _close_channel(self._chan)
            raise RemoteDaemonFailed(destination, "the start script printed nothing within 30s", []) from exc
        if len(first) != 2 or not first[0].isdigit():
            # at EOF the script ended, but sshd sends its exit status after the EOF: wait for it,
            # bounded (a script that printed something else may still be running: no wait)
            ready = self._chan.status_event.wait(3.0) if not first else self._chan.exit_status_ready()
            status = self._chan.recv_exit_status() if ready else -1
            err = _printable(self._chan.makefile_stderr("rb").read(MAX_REMOTE_OUTPUT_BYTES)) if status != -1 else ""
            _close_channel(self._chan)
            raise RemoteDaemonFailed(destination, f"the start script failed with status {status}", [line for line in err.splitlines() if line.strip()])
        self.pid = int(first[0])
        self.log_path = first[1]
        log.info("started pymigrate daemon pid %d on %s (log %s)", self.pid, destination, self.log_path)

    def exited(self) -> bool:
        return self._chan.exit_status_ready()

    def failure(self, reason: str) -> RemoteDaemonFailed:
        lines: list[str] = []
        try:
            _, out, _ = _run(self._transport, _sh(f"tail -n 15 {shlex.quote(self.log_path)}"))
            lines = [line for line in out.splitlines() if line.strip()]
        except (paramiko.SSHException, OSError, EOFError):
            pass
        return RemoteDaemonFailed(self._destination, reason, lines)

    def stop(self, timeout_s: float = 30.0) -> None:
        """EOF to the watcher -> SIGTERM -> graceful stop; SIGKILL after ``timeout_s``."""
        if self._chan.exit_status_ready():
            return
        try:
            self._chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            return  # the session is gone; the watcher saw EOF and stopped the daemon already
        deadline = time.monotonic() + timeout_s
        while not self._chan.exit_status_ready():
            if time.monotonic() > deadline or not self._transport.is_active():
                break
            time.sleep(0.05)
        if self._chan.exit_status_ready():
            log.info("pymigrate daemon pid %d on %s stopped with status %d", self.pid, self._destination, self._chan.recv_exit_status())
        elif self._transport.is_active():
            log.warning("pymigrate daemon pid %d on %s ignored SIGTERM for %.0fs, killing it", self.pid, self._destination, timeout_s)
            try:
                _run(self._transport, f"kill -KILL {self.pid}", timeout_s=10.0)
            except (paramiko.SSHException, OSError, EOFError):
                pass
        _close_channel(self._chan)


# --- the target ----------------------------------------------------------------------------------------


@dataclass(eq=False)
class SshTarget:
    """An open tunnel to a host's daemon. ``address`` is what ``RemoteEngine`` dials.

    Use as a context manager or call ``close()``: it stops the forward, then a daemon this
    target started, then the SSH connection. Close gRPC channels on ``address`` first.
    """

    url: str
    address: str  # "unix:/tmp/pymigrate-tunnel-XXXX/pymigrate.sock" or "127.0.0.1:PORT"
    remote_socket: str
    started_daemon: bool
    config: SshHostConfig
    _transport: paramiko.Transport = field(repr=False)
    _forward: _Forward = field(repr=False)
    _daemon: _RemoteDaemon | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def daemon_pid(self) -> int | None:
        """The remote pid of the daemon this target started, None when it found one serving."""
        return self._daemon.pid if self._daemon is not None else None

    @property
    def transport(self) -> paramiko.Transport:
        return self._transport

    @property
    def forwarder(self) -> str:
        """What moves the bytes: ``"openssh"`` (an ``ssh -L`` process) or ``"paramiko"``."""
        return "openssh" if self._forward.openssh is not None else "paramiko"

    @property
    def page_socket(self) -> PageSocket | None:
        """The page stream's forward in the ``ssh -L`` process (migrate/migration/page_socket.py);
        None on paramiko: a cold migration's pages then stream through gRPC (slower)."""
        return self._forward.page_socket

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _OPEN_TARGETS.discard(self)
        try:
            self._forward.close()
            if self._daemon is not None:
                self._daemon.stop()
        finally:
            close_transport(self._transport)

    def __enter__(self) -> "SshTarget":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Targets still open at interpreter exit (a CLI that never closed its engine) are closed then,
# so the daemon they started stops gracefully and their local socket directory goes away.
# Strong references: a target dropped unclosed lives until exit rather than leaking its daemon.
_OPEN_TARGETS: set["SshTarget"] = set()


@atexit.register
def _close_open_targets() -> None:
    for target in list(_OPEN_TARGETS):
        try:
            target.close()
        except Exception as exc:  # interpreter exit: report, keep closing
            log.warning("closing ssh tunnel to %s at exit: %s", target.url, exc)


def _probe_socket(transport: paramiko.Transport, socket_path: str, destination: str) -> bool:
    """True when something accepts on the remote unix socket."""
    try:
        open_streamlocal(transport, socket_path).close()
        return True
    except paramiko.ChannelException as exc:
        if exc.code == OPEN_ADMINISTRATIVELY_PROHIBITED:
            raise PeerError(
                f"sshd on {destination} refuses forwarding to unix sockets",
                phase="connect",
                hint="set AllowStreamLocalForwarding yes (the default) in the remote sshd_config",
            ) from exc
        return False
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise TransferError(f"ssh session to {destination} ended: {exc}", phase="connect") from exc


def open_ssh_target(
    url: str,
    *,
    key_file: Path | str | None = None,
    accept_new: bool = False,
    known_hosts: Path | str | None = None,
    remote_pymigrate: str = "pymigrate",
    remote_root: str | None = None,
    local: Literal["unix", "tcp"] = "unix",
    config_file: Path | str | None = None,
    connect_timeout_s: float = 10.0,
    daemon_start_timeout_s: float = 20.0,
) -> SshTarget:
    """Connect to ``url`` and return a tunnel to its pymigrate daemon, starting one if needed.

    Args:
        url: ``ssh://[user@]host[:port]``.
        key_file: use only this private key (else agent, ~/.ssh/config IdentityFile, defaults).
        accept_new: record an unknown host key instead of refusing it (a changed one is still refused).
        known_hosts: the known_hosts file (default ~/.ssh/known_hosts or the config's).
        remote_pymigrate: the pymigrate command on the remote host (a name on its PATH or a path).
        remote_root: the remote state root (default the remote's $PYMIGRATE_ROOT or /var/lib/pymigrate).
        local: ``"unix"`` (a socket in a private 0700 directory) or ``"tcp"`` (127.0.0.1:PORT).

    Raises:
        InvalidArgument: a bad URL, key file or config.
        SshUnreachable, HostKeyUnknown, HostKeyMismatch, SshAuthFailed, RemotePymigrateMissing,
        RemoteDaemonFailed; PeerError when sshd forbids unix socket forwarding.
    """
    parsed = parse_ssh_url(url)
    config = resolve_host(
        parsed,
        config_file=Path(config_file) if config_file is not None else None,
        known_hosts=Path(known_hosts) if known_hosts is not None else None,
    )
    transport, identity = _connect(
        config, key_file=Path(key_file) if key_file is not None else None, accept_new=accept_new, timeout_s=connect_timeout_s
    )
    daemon: _RemoteDaemon | None = None
    try:
        root_expr = shlex.quote(remote_root) if remote_root else f'"{DEFAULT_REMOTE_ROOT}"'
        probe = f"printf '%s\\n' {root_expr}; command -v {shlex.quote(remote_pymigrate)} || true"
        try:
            status, out, err = _run(transport, _sh(probe))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransferError(f"cannot run commands on {config.destination}: {exc}", phase="connect") from exc
        lines = out.splitlines()
        if status != 0 or not lines or not lines[0].startswith("/"):
            raise PeerError(
                f"cannot find the pymigrate state root on {config.destination}: probe exited {status} ({err.strip() or out.strip()})",
                phase="connect",
                hint="pass --ssh-remote-root with an absolute path",
            )
        root = lines[0]
        socket_path = str(PurePosixPath(root) / RUN_DIR / SOCKET_NAME)
        pymigrate_path = lines[1].strip() if len(lines) > 1 else ""
        if not _probe_socket(transport, socket_path, config.destination):
            if not pymigrate_path:
                raise RemotePymigrateMissing(config.destination, remote_pymigrate, config.hostname)
            daemon = _RemoteDaemon(transport, config.destination, pymigrate_path, root, socket_path)
            deadline = time.monotonic() + daemon_start_timeout_s
            while not _probe_socket(transport, socket_path, config.destination):
                if daemon.exited():
                    raise daemon.failure(f"it exited with status {daemon._chan.recv_exit_status()}")
                if time.monotonic() > deadline:
                    daemon.stop(timeout_s=5.0)
                    raise daemon.failure(f"no socket at {socket_path} after {daemon_start_timeout_s:g}s")
                time.sleep(0.05)
        else:
            log.info("using the pymigrate daemon serving on %s:%s", config.destination, socket_path)
        forward = _Forward(transport, socket_path, local)
        try:
            forward.use_openssh(config, identity, connect_timeout_s)
        except BaseException:
            forward.close()
            raise
    except BaseException:
        if daemon is not None:
            daemon.stop(timeout_s=5.0)
        close_transport(transport)
        raise
    log.info("ssh tunnel %s -> %s:%s", forward.address, config.destination, socket_path)
    target = SshTarget(
        url=url,
        address=forward.address,
        remote_socket=socket_path,
        started_daemon=daemon is not None,
        config=config,
        _transport=transport,
        _forward=forward,
        _daemon=daemon,
    )
    _OPEN_TARGETS.add(target)
    return target


def ssh_options_from_args(args: Any) -> dict[str, Any]:
    """``open_ssh_target`` keyword arguments from the CLI's global ``--ssh-*`` flags."""
    options: dict[str, Any] = {
        "key_file": getattr(args, "ssh_key", None),
        "accept_new": bool(getattr(args, "ssh_accept_new", False)),
        "known_hosts": getattr(args, "ssh_known_hosts", None),
        "remote_pymigrate": getattr(args, "ssh_remote_pymigrate", None) or "pymigrate",
        "remote_root": getattr(args, "ssh_remote_root", None),
    }
    return options
