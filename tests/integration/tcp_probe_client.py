"""A client that watches a TCP server through a move: ``tcp_probe_client.py IP PORT``.

Two things run side by side until a line ``stop`` arrives on stdin:

- **held**: one connection, opened at the start and kept; every 10 ms it sends ``<n>\\n`` and
  waits (up to 30 s) for the same line back from the echo server. It records how many round trips
  succeeded, the longest gap between two successful answers (the client-seen pause), and the first
  error (reset, EOF, wrong answer).
- **probe**: a new connection attempt every 10 ms (closed at once when it succeeds). An attempt
  refused with ECONNREFUSED means a RST came back for a SYN: a host answered for the server's
  address while no listening socket was there — a restored container whose link came up before
  CRIU put its sockets back. Attempts that time out (no answer at all) are expected while the
  container is frozen or its link is down.

Prints ``{"ready": true}`` once the held connection works, then at the end one JSON line:
``{"ok", "max_gap_ms", "held_error", "probes", "refused", "probe_ok", "local_port"}``.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import threading
import time

INTERVAL_S = 0.01


class Held(threading.Thread):
    def __init__(self, ip: str, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection((ip, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(30)
        self.local_port = self.sock.getsockname()[1]
        self.ok = 0
        self.max_gap_ms = 0.0
        self.error: str | None = None
        self.stop = threading.Event()
        self.buf = b""
        self.round_trip()  # the connection works before anything moves

    def round_trip(self) -> None:
        line = f"{self.ok}\n".encode()
        self.sock.sendall(line)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the server closed the connection (EOF)")
            self.buf += chunk
        got, _, self.buf = self.buf.partition(b"\n")
        if got + b"\n" != line:
            raise ValueError(f"expected {line!r}, got {got!r}")
        self.ok += 1

    def run(self) -> None:
        last = time.monotonic()
        while not self.stop.is_set():
            try:
                self.round_trip()
            except (OSError, ValueError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                return
            now = time.monotonic()
            self.max_gap_ms = max(self.max_gap_ms, (now - last) * 1000)
            last = now
            time.sleep(INTERVAL_S)


class Probe(threading.Thread):
    def __init__(self, ip: str, port: int) -> None:
        super().__init__(daemon=True)
        self.addr = (ip, port)
        self.attempts = self.refused = self.succeeded = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.3)
            self.attempts += 1
            try:
                code = s.connect_ex(self.addr)
            except OSError as exc:  # the timeout
                code = exc.errno or errno.ETIMEDOUT
            finally:
                s.close()
            if code == errno.ECONNREFUSED:
                self.refused += 1
            elif code == 0:
                self.succeeded += 1
            time.sleep(INTERVAL_S)


def main() -> int:
    ip, port = sys.argv[1], int(sys.argv[2])
    held = Held(ip, port)
    probe = Probe(ip, port)
    print(json.dumps({"ready": True, "local_port": held.local_port}), flush=True)
    held.start()
    probe.start()
    sys.stdin.readline()  # "stop"
    probe.stop.set()
    held.stop.set()
    probe.join(5)
    held.join(35)
    print(json.dumps({
        "ok": held.ok, "max_gap_ms": round(held.max_gap_ms, 1), "held_error": held.error,
        "probes": probe.attempts, "refused": probe.refused, "probe_ok": probe.succeeded,
        "local_port": held.local_port,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
