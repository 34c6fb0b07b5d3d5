"""OpenSSH's ``ssh -L`` as the byte mover of an ``ssh://`` tunnel (issue 17).

paramiko moves a channel's bytes in Python (~120 MiB/s here, with a core busy); OpenSSH's
client moves them in C with AES-GCM. migrate/remote/ssh.py keeps paramiko for what it decides —
who the host is, who we are, whether a daemon serves — and then starts one ``ssh`` process that
forwards a unix socket in the tunnel's 0700 directory to the remote daemon's unix socket
(``-L LOCAL_SOCKET:REMOTE_SOCKET``: OpenSSH's ``direct-streamlocal`` channel, as paramiko's; no
port opens on either host). gRPC dials that socket; no byte passes through Python. (``ssh -W``
would spare the listener, but OpenSSH 9.2 forwards only TCP with it.) A second ``-L`` in the same
process forwards a cold migration's page stream to the target daemon's page socket
(migrate/migration/page_socket.py): CRIU's pages go socket -> ssh -> socket.

What the ``ssh`` process is allowed to decide: nothing. It runs with ``-F /dev/null`` (no config
file: no ProxyCommand, no other host name) and

- a known_hosts file of its own (in the tunnel's 0700 directory) holding only the host key
  paramiko just verified, under a fixed ``HostKeyAlias``, ``StrictHostKeyChecking=yes``,
  ``GlobalKnownHostsFile=/dev/null``: a host presenting any other key is refused;
- the one identity paramiko authenticated with, ``IdentitiesOnly=yes``: the key file itself, or
  for an agent key its public half (``-i``) with the same ``SSH_AUTH_SOCK``; publickey only,
  ``BatchMode=yes`` (never a prompt);
- its local socket made with ``StreamLocalBindMask=0177`` inside the 0700 directory.

Why a pty (``-tt``) and a remote ``sleep`` rather than ``-N`` (no session): sshd sets TCP_NODELAY
on its connection only for an interactive session (a pty or X11; OpenSSH 9.2's client sets it
always). Without it every small message sshd sends back — a channel window adjust, a page
server's or gRPC's reply — can wait behind Nagle for the client's delayed ACK (Linux: 40 ms):
measured here through ``ssh -N -L``, a 512 KiB write-and-reply took 44 ms in most rounds instead
of 1-3, and the page relay's link probe (2 MiB, an ack, 6 MiB timed, an ack) read the tunnel at a
median 107 MiB/s against 555 with the pty. The session's one command, ``exec sleep``, holds the
pty and does nothing else; it gets SIGHUP when the connection ends (sshd closes the pty). The
remote host lists the session (``who``: root@pts/N) while the tunnel lives. An sshd that refuses
ptys (``PermitTTY no``, a key's ``no-pty``) makes ssh end the session, forwards and all (the pty
is forced): the session's first line says whether it has one, and on a refusal a second ``ssh``
runs without a session (``-T -N``, Nagle on at sshd's end). A bulk stream (CRIU's pages) moves as fast either way: its cost is ssh's and sshd's CPU
(~0.2 s each per 256 MiB with AES-GCM here).

It dies with us: ``ssh`` runs under a
small local ``sh`` whose watcher reads a pipe only this process holds the write end of; when we
exit (even SIGKILLed) the pipe ends and the watcher sends ssh SIGTERM (the remote daemon's
watcher in ssh.py works the same way). They run in a process group of their own, so a terminal's
Ctrl-C reaches us, not the tunnel under a migration we may still want to abort cleanly;
``close()`` ends the pipe and signals that group.

``start`` waits for the local socket and checks that the remote daemon's HTTP/2 SETTINGS frame
comes back through it; when there is no ``ssh`` binary or this fails the caller keeps
paramiko's channels (and says so in the log).
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import paramiko

log = logging.getLogger(__name__)

HOST_KEY_ALIAS = "pymigrate-ssh-peer"
# OpenSSH's default cipher set, AEAD first: one pass over the data; AES-GCM uses AES-NI.
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr"
KEEPALIVE_S = 10  # paramiko's set_keepalive in ssh.connect
# The pty session's command (module docstring: why a pty): says whether it got the pty, then POSIX
# sleep, ~68 years; ends at SIGHUP.
REMOTE_COMMAND = "if tty -s; then echo pty; else echo no-pty; fi; exec sleep 2147483647"
PTY_MARKER, NO_PTY_MARKER = b"pty", b"no-pty"
MARKER_MAX_BYTES = 4096
PTY_REFUSED = "PTY allocation request failed"  # ssh's message when sshd says no
STDERR_TAIL_BYTES = 2048
# The HTTP/2 client preface and an empty SETTINGS frame: any HTTP/2 server (the daemon's gRPC)
# answers with a frame of its own; its 9-byte header comes back through the tunnel.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
H2_FRAME_HEADER_BYTES = 9
H2_SETTINGS = 4
# Runs "$@" (ssh) and a watcher that reads our pipe (fd 0; a background list otherwise gets
# /dev/null) and sends SIGTERM at EOF. The exit status is ssh's.
_LIFETIME_SCRIPT = """\
exec 3<&0
"$@" </dev/null 3<&- &
pid=$!
( cat <&3 >/dev/null; kill -TERM "$pid" 2>/dev/null ) >/dev/null 2>&1 &
exec 3<&-
wait "$pid"
"""


@dataclass(frozen=True)
class Identity:
    """The key paramiko authenticated with: a private key file, or an agent's key."""

    key: paramiko.PKey
    path: Path | None  # None: the key lives in the agent at ``agent_socket``
    agent_socket: str | None = None


def _host_key_algorithms(key: paramiko.PKey) -> str:
    name = key.get_name()
    return "rsa-sha2-512,rsa-sha2-256" if name == "ssh-rsa" else name


class OpenSshForwarder:
    """Runs one ``ssh -tt -L`` pinned to one verified host key and one identity (``start`` again
    to point it elsewhere)."""

    def __init__(self, binary: str, workdir: Path, *, hostname: str, port: int, user: str,
                 host_key: paramiko.PKey, identity: Identity, connect_timeout_s: float) -> None:  # fmt: skip
        self.binary = binary
        self._workdir = workdir
        self._proc: subprocess.Popen | None = None
        self._lifeline: int | None = None  # the write end of ssh's stdin
        self._err_path: Path | None = None
        self._closed = False
        self.local_socket: Path | None = None
        known_hosts = workdir / "known_hosts"
        line = f"{host_key.get_name()} {host_key.get_base64()}"
        # OpenSSH may file the alias with or without the port: pin the key under both spellings.
        _write_private(known_hosts, f"{HOST_KEY_ALIAS} {line}\n[{HOST_KEY_ALIAS}]:{port} {line}\n")
        self._argv = [
            binary, "-F", "/dev/null", "-a", "-x",
            "-o", "LogLevel=ERROR",  # its refusals (a host key, the key) for our log, no banner
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"HostKeyAlias={HOST_KEY_ALIAS}",
            "-o", f"HostKeyAlgorithms={_host_key_algorithms(host_key)}",
            "-o", "CheckHostIP=no", "-o", "UpdateHostKeys=no", "-o", "VerifyHostKeyDNS=no",
            *self._identity_options(identity),
            "-o", "PreferredAuthentications=publickey",
            "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ProxyCommand=none",
            "-o", "Compression=no", "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindMask=0177",
            "-o", f"Ciphers={CIPHERS}",
            "-o", "IPQoS=cs1",  # the DSCP a session without a pty had (a pty's default: af21, interactive)
            "-o", f"ConnectTimeout={max(1, int(connect_timeout_s))}",
            "-o", f"ServerAliveInterval={KEEPALIVE_S}", "-o", "ServerAliveCountMax=3",
            "-p", str(port), "-l", user,
        ]  # fmt: skip
        self._hostname = hostname
        self.pty = True  # until the host refuses one: then -N (no session) from the next start on
        self._pty_refused = False
        self._out: int | None = None  # ssh's stdout (the session's marker), read end

    def _identity_options(self, identity: Identity) -> list[str]:
        if identity.path is not None:
            return ["-i", str(identity.path), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
        # An agent key: its public half selects it among the agent's keys.
        pub = self._workdir / "identity.pub"
        _write_private(pub, f"{identity.key.get_name()} {identity.key.get_base64()}\n")
        return ["-i", str(pub), "-o", "IdentitiesOnly=yes", "-o", f"IdentityAgent={identity.agent_socket}"]

    def argv(self, local_socket: Path, remote_socket: str, extra: Sequence[tuple[Path, str]] = ()) -> list[str]:
        forwards = [arg for local, remote in ((local_socket, remote_socket), *extra) for arg in ("-L", f"{local}:{remote}")]
        if not self.pty:
            return [*self._argv, "-T", "-N", *forwards, "--", self._hostname]
        return [*self._argv, "-tt", "-e", "none", *forwards, "--", self._hostname, REMOTE_COMMAND]

    def start(self, local_socket: Path, remote_socket: str, timeout_s: float, *, probe: bool = True,
              extra: Sequence[tuple[Path, str]] = ()) -> str | None:
        """Start ``ssh`` forwarding ``local_socket`` to ``remote_socket`` (and each of ``extra``'s
        local sockets to its remote one: a page socket, migrate/migration/page_socket.py) and
        (``probe``) see an HTTP/2 frame come back through the first. Returns None when it works,
        else why not (ssh's own message when it printed one); then nothing is left running.

        A host that refuses the pty (module docstring) gets a second ``ssh`` without one."""
        reason = self._start(local_socket, remote_socket, timeout_s, probe, extra)
        if reason is not None and self.pty and (self._pty_refused or PTY_REFUSED in self.stderr_tail()):
            log.info("the ssh server refuses a pty: forwarding without one (Nagle stays on at its end)")
            self.pty = False
            reason = self._start(local_socket, remote_socket, timeout_s, probe, extra)
        return reason

    def _start(self, local_socket: Path, remote_socket: str, timeout_s: float, probe: bool,
               extra: Sequence[tuple[Path, str]]) -> str | None:  # fmt: skip
        self.close()
        self._pty_refused = False
        for local, remote in ((local_socket, remote_socket), *extra):
            if ":" in str(local) or ":" in remote:  # -L's separator; OpenSSH has no escape for it
                return f"ssh -L cannot forward a path with ':' ({remote})"
            local.unlink(missing_ok=True)
        self._closed = False
        err_path = self._workdir / "ssh.err"
        read_end, self._lifeline = os.pipe()
        self._out, out_write = os.pipe()
        try:
            with open(err_path, "wb") as err:
                argv = ["/bin/sh", "-c", _LIFETIME_SCRIPT, "ssh-forward", *self.argv(local_socket, remote_socket, extra)]
                self._proc = subprocess.Popen(argv, stdin=read_end, stdout=out_write, stderr=err, start_new_session=True)
        except OSError as exc:
            self.close()
            return f"cannot run {self.binary}: {exc.strerror or exc}"
        finally:
            os.close(read_end)
            os.close(out_write)
        self._err_path = err_path
        reason = self._wait_ready([local_socket, *(local for local, _ in extra)], timeout_s, probe)
        if reason is not None:
            self.close()
            return reason
        self.local_socket = local_socket
        threading.Thread(target=self._watch, args=(self._proc,), name="ssh-fwd-watch", daemon=True).start()
        return None

    def _wait_ready(self, local_sockets: list[Path], timeout_s: float, probe: bool) -> str | None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while not all(_listening(p) for p in local_sockets):  # once ssh authenticated (ExitOnForwardFailure)
            if self._proc.poll() is not None:
                return f"ssh exited with status {self._proc.returncode}: {self.stderr_tail() or 'no message'}"
            if time.monotonic() > deadline:
                return f"no forward from ssh within {timeout_s:g}s"
            time.sleep(0.005)
        if self.pty:
            reason = self._wait_pty(deadline)
            if reason is not None:
                return reason
        return _probe_http2(local_sockets[0], max(1.0, deadline - time.monotonic())) if probe else None

    def _wait_pty(self, deadline: float) -> str | None:
        """The session's marker line: ``pty``, or the host refused one (``_pty_refused``): ssh ends
        a session whose forced pty failed (RequestTTY=force), the forwards with it. Lines before
        it (a login shell's chatter) are skipped, up to MARKER_MAX_BYTES."""
        assert self._out is not None
        out = b""
        lines: list[bytes] = []
        while not {PTY_MARKER, NO_PTY_MARKER} & set(lines) and len(out) < MARKER_MAX_BYTES:
            ready, _, _ = select.select([self._out], [], [], max(0.0, deadline - time.monotonic()))
            data = os.read(self._out, MARKER_MAX_BYTES) if ready else b""
            if not data:  # EOF (ssh ended) or the deadline
                break
            out += data
            lines = [line.strip() for line in out.split(b"\n")[:-1]]  # whole lines only
        if PTY_MARKER in lines:
            return None
        self._pty_refused = NO_PTY_MARKER in lines or PTY_REFUSED in self.stderr_tail()
        if self._pty_refused:
            return "the ssh server refused a pty"
        return f"no session from ssh ({out[-80:]!r}): {self.stderr_tail() or 'no message'}"

    def _watch(self, proc: subprocess.Popen) -> None:
        status = proc.wait()
        if not self._closed and proc is self._proc:
            log.warning("ssh forward process %d exited with status %d: %s", proc.pid, status, self.stderr_tail() or "no message")

    def stderr_tail(self) -> str:
        return _tail(self._err_path) if self._err_path is not None else ""

    @property
    def pid(self) -> int | None:
        """The watcher shell's pid (ssh is its child; both lead no other group than theirs)."""
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        """End ``ssh`` (its forwarded connections end with it): EOF to the watcher, then SIGTERM
        to the group the watcher leads (ssh and the watcher's ``cat``)."""
        self._closed = True
        if self._out is not None:  # ssh sees EPIPE should the session write more (it does not)
            os.close(self._out)
            self._out = None
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self._proc is not None:
            _stop_group(self._proc)
            self._proc = None


def _listening(path: Path) -> bool:
    """Whether a unix socket at ``path`` listens (/proc/net/unix: __SO_ACCEPTCON). Between ssh's
    bind() and listen() the file exists but a connect is refused; a test connection would reach
    the remote end, so the kernel's table is asked instead."""
    suffix = f" {path}"
    try:
        with open("/proc/net/unix") as f:
            return any(line.rstrip("\n").endswith(suffix) and int(line.split()[3], 16) & 0x10000 for line in f)
    except (OSError, ValueError, IndexError):
        return path.exists()


def _probe_http2(local_socket: Path, timeout_s: float) -> str | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(local_socket))
        sock.sendall(H2_PREFACE)
        header = b""
        while len(header) < H2_FRAME_HEADER_BYTES:
            data = sock.recv(H2_FRAME_HEADER_BYTES - len(header))
            if not data:
                return "the forward closed without an answer from the remote socket"
            header += data
    except TimeoutError:
        return f"no answer through ssh within {timeout_s:g}s"
    except OSError as exc:
        return f"the forward failed: {exc.strerror or exc}"
    finally:
        sock.close()
    if header[3] != H2_SETTINGS:
        return f"the remote socket answered frame type {header[3]}, not HTTP/2 SETTINGS"
    return None


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group ``proc`` leads (start_new_session), SIGKILL after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the group outlives its leader while ssh or cat still run
        except ProcessLookupError:
            break
        try:
            proc.wait(5.0)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait(5.0)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - STDERR_TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return " ".join(line.strip() for line in text.splitlines() if line.strip() and line.isprintable())


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def find_ssh_client() -> str | None:
    """The ``ssh`` on PATH, None when there is none."""
    return shutil.which("ssh")
