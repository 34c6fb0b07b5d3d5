"""A tiny Redis (RESP2) client for the live-migration test; runs as a script in the client's netns.

usage: python resp_client.py HOST PORT KEYS

1. connects once (retrying until the server listens) and keeps that one socket for its whole life;
2. SETs KEYS keys ``key:<i>`` = ``value:<i>:<sha1 prefix>`` in pipelined batches;
3. prints ``{"loaded": KEYS, "local_port": P}`` and waits for a line on stdin (the migration
   happens meanwhile);
4. GETs every key on the *same* socket, prints ``{"ok": N, "bad": M, "local_port": P}`` and exits 0.
Any socket error (reset, closed, timeout) prints ``{"error": ...}`` and exits 1: the test then knows
the connection did not survive.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time

BATCH = 1000


def value(i: int) -> bytes:
    return f"value:{i}:{hashlib.sha1(str(i).encode()).hexdigest()[:16]}".encode()


def command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def reply(self) -> bytes | None:
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(f"redis error: {rest.decode()}")
        if kind == b":":
            return rest
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.exact(n)
        raise RuntimeError(f"unexpected RESP reply {line!r}")


def connect(host: str, port: int, timeout_s: float = 60.0) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return socket.create_connection((host, port), timeout=5.0)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> int:
    host, port, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sock = connect(host, port)
    sock.settimeout(60.0)
    local_port = sock.getsockname()[1]
    reader = Reader(sock)
    try:
        for start in range(0, keys, BATCH):
            idx = range(start, min(keys, start + BATCH))
            sock.sendall(b"".join(command(b"SET", b"key:%d" % i, value(i)) for i in idx))
            for _ in idx:
                if reader.reply() != b"OK":
                    raise RuntimeError("SET did not answer OK")
        print(json.dumps({"loaded": keys, "local_port": local_port}), flush=True)
        sys.stdin.readline()
        ok = bad = 0
        for start in range(0, keys, BATCH):
            idx = range(start, min(keys, start + BATCH))
            sock.sendall(b"".join(command(b"GET", b"key:%d" % i) for i in idx))
            for i in idx:
                if reader.reply() == value(i):
                    ok += 1
                else:
                    bad += 1
        print(json.dumps({"ok": ok, "bad": bad, "local_port": sock.getsockname()[1]}), flush=True)
        return 0
    except (OSError, ConnectionError, RuntimeError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
