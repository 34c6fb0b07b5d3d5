"""Socket helpers for the relay tests (page_relay, lazy_relay)."""

from __future__ import annotations

import socket


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from ``sock``; fails the test at an early EOF."""
    buf = bytearray()
    while len(buf) < size:
        data = sock.recv(size - len(buf))
        assert data, f"EOF after {len(buf)} of {size} bytes"
        buf += data
    return bytes(buf)
