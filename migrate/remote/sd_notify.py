"""systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram per state change.

Under a ``Type=notify`` unit systemd sets ``$NOTIFY_SOCKET`` to a unix datagram socket, a path
or, with a leading ``@``, a name in the abstract namespace (the ``@`` stands for the leading NUL
byte). The daemon sends newline-separated ``KEY=VALUE`` assignments: ``READY=1`` once it serves
(systemd considers the start done and starts units ordered after it), ``STOPPING=1`` when it
begins to stop, ``STATUS=...`` a line shown by ``systemctl status``. Without the variable (not
under systemd, or a Type other than notify) every call is a no-op. A failed send is logged and
ignored: notification is advisory and must never stop the daemon.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace (unix(7))
    if value.startswith("/"):
        return value
    return None  # vsock: addresses (systemd 253+) are not used on the hosts we run on


def notify(*assignments: str) -> bool:
    """Send ``KEY=VALUE`` lines to ``$NOTIFY_SOCKET``; True when a datagram was sent."""
    value = os.environ.get(ENV)
    if not value:
        return False
    address = _address(value)
    if address is None:
        log.warning("ignoring %s=%s: expected a path or an @abstract name", ENV, value)
        return False
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("cannot notify systemd through %s: %s", value, exc.strerror or exc)
        return False
    log.debug("sd_notify %s", message.decode(errors="replace").replace("\n", " "))
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}")


def stopping(status: str) -> bool:
    return notify("STOPPING=1", f"STATUS={status}")
