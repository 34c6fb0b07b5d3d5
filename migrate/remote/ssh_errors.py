"""Errors of the SSH transport (migrate/remote/ssh.py), kept apart so catching them never imports paramiko.

Tree (each a subclass of the ``migrate.errors`` class it refines)::

    TransferError
    └── SshUnreachable          no TCP connection or no SSH handshake with the host
    AuthError
    ├── SshAuthFailed           every key was refused; ``keys_tried`` names them
    └── HostKeyError            the host's key could not be trusted
        ├── HostKeyUnknown      not in known_hosts (``fingerprint``); --ssh-accept-new records it
        └── HostKeyMismatch     differs from the recorded key (``expected`` and ``actual`` fingerprints)
    PeerError
    ├── RemotePymigrateMissing  the remote host has no pymigrate command (how to install it in ``hint``)
    └── RemoteDaemonFailed      the daemon started over SSH did not come up (its log lines)
"""

from __future__ import annotations

from migrate.errors import AuthError, PeerError, TransferError

INSTALL_HINT = (
    "install pymigrate on {host}: git clone the pymigrate repository there and run scripts/setup.sh as root, "
    "or pass --ssh-remote-pymigrate PATH to name the remote pymigrate command"
)


class SshUnreachable(TransferError):
    def __init__(self, destination: str, reason: str) -> None:
        super().__init__(
            f"cannot reach ssh host {destination}: {reason}",
            phase="connect",
            hint="check the host name and port, and that sshd runs there",
        )
        self.destination = destination
        self.reason = reason


class SshAuthFailed(AuthError):
    def __init__(self, destination: str, keys_tried: list[str], reason: str = "") -> None:
        tried = ", ".join(keys_tried) if keys_tried else "no keys (none given, none in the agent or ~/.ssh)"
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"ssh authentication to {destination} failed{detail}; tried {tried}",
            phase="connect",
            hint="pass --ssh-key FILE with a key listed in the remote authorized_keys, or load it into ssh-agent",
        )
        self.destination = destination
        self.keys_tried = list(keys_tried)


class HostKeyError(AuthError):
    pass


class HostKeyUnknown(HostKeyError):
    def __init__(self, name: str, key_type: str, fingerprint: str, known_hosts: str) -> None:
        super().__init__(
            f"host key of {name} is not known: {key_type} {fingerprint} is not in {known_hosts}",
            phase="connect",
            hint="compare the fingerprint with the host's own (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub there), "
            "then retry with --ssh-accept-new to record it",
        )
        self.name = name
        self.key_type = key_type
        self.fingerprint = fingerprint
        self.known_hosts = known_hosts


class HostKeyMismatch(HostKeyError):
    def __init__(self, name: str, expected: str, actual: str, known_hosts: str) -> None:
        super().__init__(
            f"host key of {name} has changed: {known_hosts} records {expected}, the host presented {actual}",
            phase="connect",
            hint="this may be an attack; if the host was reinstalled, remove its line from "
            f"{known_hosts} (ssh-keygen -R HOST -f {known_hosts}) after checking the new fingerprint",
        )
        self.name = name
        self.expected = expected
        self.actual = actual
        self.known_hosts = known_hosts


class RemotePymigrateMissing(PeerError):
    def __init__(self, destination: str, command: str, host: str) -> None:
        super().__init__(
            f"pymigrate is not installed on {destination}: command {command!r} not found there",
            phase="connect",
            hint=INSTALL_HINT.format(host=host),
        )
        self.destination = destination
        self.command = command


class RemoteDaemonFailed(PeerError):
    def __init__(self, destination: str, reason: str, log_lines: list[str]) -> None:
        tail = ("; last log lines: " + " | ".join(log_lines)) if log_lines else ""
        super().__init__(f"the pymigrate daemon started on {destination} did not serve: {reason}{tail}", phase="connect")
        self.destination = destination
        self.reason = reason
        self.log_lines = list(log_lines)
