"""A real client holding ONE connection to a server while the server's container moves.

Run as a script inside the client network namespace (standalone: imports nothing from the
project)::

    python3 client.py KIND HOST PORT

KIND is one of ``http-static`` (GET /hello.txt, body checked), ``http-counter`` (GET /incr: the
server's in-memory counter must rise by exactly one per request; GET /count at the end),
``redis`` (Debian's ``redis-cli`` over one session: RPUSH a list, CLIENT ID at both ends),
``postgres`` (Debian's ``psql`` reading statements from a pipe: INSERT ... RETURNING, the backend
pid at both ends), ``mariadb`` (Debian's ``mariadb`` client in batch mode, the same way, with
CONNECTION_ID()), ``memcached`` (the text protocol over one socket: set, then get every key).

Protocol with the test, one JSON object per line on stdout:

1. the client connects (retrying until the server listens, up to 60 s), issues WARMUP requests,
   then prints ``{"ready": true, "conn": IDENTITY}``;
2. it issues one request every ~10 ms, checking each answer, until a line arrives on stdin;
3. then it reads back, on the same connection, everything it wrote, and prints the result:
   ``{"requests": N, "errors": [...], "max_gap_ms": F, "conn_start": X, "conn_end": Y, ...}``.

The first failed request (or 20 s without an answer) ends the loop (its error is kept); the
final read-back still runs so the result says whether the connection came back. ``max_gap_ms``
is the longest time between two successful answers: the pause the client saw.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import subprocess
import sys
import time

INTERVAL_S = 0.010
WARMUP = 20
CONNECT_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 20.0  # a longer silence is a failed move, not a pause
STATIC_BODY = b"pymigrate realworld nginx\n"


class ClientError(Exception):
    """An answer was missing or wrong."""


class Http:
    """HTTP/1.1 keep-alive over one socket; http.client may not reopen it (auto_open = 0)."""

    def __init__(self, host: str, port: int, counter: bool) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=ANSWER_TIMEOUT_S)
        self.conn.connect()
        self.conn.auto_open = 0
        self.counter = counter
        self.last: int | None = None
        self.first: int | None = None

    def identity(self) -> str:
        return "local port %d" % self.conn.sock.getsockname()[1]

    def get(self, path: str) -> bytes:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise ClientError(f"GET {path}: status {response.status}")
        if response.will_close:
            raise ClientError(f"GET {path}: the server ends the keep-alive connection")
        return body

    def request(self, i: int) -> None:
        if not self.counter:
            body = self.get("/hello.txt")
            if body != STATIC_BODY:
                raise ClientError(f"GET /hello.txt: body {body[:60]!r}")
            return
        value = int(self.get("/incr"))
        if self.last is not None and value != self.last + 1:
            raise ClientError(f"GET /incr: counter {value} after {self.last} (server state lost or request repeated)")
        if self.first is None:
            self.first = value
        self.last = value

    def verify(self, requests: int) -> dict:
        if not self.counter:
            self.request(0)
            return {"verified": "GET /hello.txt"}
        count = int(self.get("/count"))
        if count != self.last:
            raise ClientError(f"GET /count: {count}, expected {self.last}")
        return {"verified": f"counter {self.first}..{count} over {requests} requests"}


class LineTool:
    """A CLI client (redis-cli, psql) on pipes: one statement per line in, one line out."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)

    def ask(self, statement: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(statement + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise ClientError(f"{statement!r}: client exited ({self.proc.poll()})") from exc
        ready, _, _ = select.select([self.proc.stdout], [], [], ANSWER_TIMEOUT_S)
        if not ready:
            raise ClientError(f"{statement!r}: no answer within {ANSWER_TIMEOUT_S:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise ClientError(f"{statement!r}: client exited ({self.proc.wait()})")
        return line.rstrip("\n")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Redis(LineTool):
    """redis-cli reconnects silently after a lost connection; CLIENT ID tells."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(["redis-cli", "-h", host, "-p", str(port)])
        self.client_id = self.ask("CLIENT ID")
        if not self.client_id.isdigit():
            raise ClientError(f"CLIENT ID: {self.client_id!r}")
        self.ask("DEL rw:log")

    def identity(self) -> str:
        return "client id " + self.ask("CLIENT ID")

    def request(self, i: int) -> None:
        answer = self.ask(f"RPUSH rw:log {i}")
        if answer != str(i):
            raise ClientError(f"RPUSH rw:log {i}: {answer!r}")

    def verify(self, requests: int) -> dict:
        length, first, last = self.ask("LLEN rw:log"), self.ask("LINDEX rw:log 0"), self.ask("LINDEX rw:log -1")
        if (length, first, last) != (str(requests), "1", str(requests)):
            raise ClientError(f"rw:log holds {length} items {first}..{last}, expected {requests} items 1..{requests}")
        return {"verified": f"{requests} list items"}


class Postgres(LineTool):
    """psql in a pipe; a lost connection makes it exit (ON_ERROR_STOP) or print an error."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(["psql", "-h", host, "-p", str(port), "-U", "postgres", "-d", "postgres",
                          "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        ok = self.ask("SET client_min_messages = warning; CREATE TABLE IF NOT EXISTS rw (v integer PRIMARY KEY, pid integer); "
                      "TRUNCATE rw; SELECT 'ok';")
        if ok != "ok":
            self.close()
            raise ClientError(f"psql: {ok}")
        self.pid = self.ask("SELECT pg_backend_pid();")
        if not self.pid.isdigit():
            raise ClientError(f"SELECT pg_backend_pid(): {self.pid!r}")

    def identity(self) -> str:
        return "backend pid " + self.ask("SELECT pg_backend_pid();")

    def request(self, i: int) -> None:
        answer = self.ask(f"INSERT INTO rw VALUES ({i}, pg_backend_pid()) RETURNING v, pid;")
        if answer != f"{i}|{self.pid}":
            raise ClientError(f"INSERT {i}: {answer!r}")

    def verify(self, requests: int) -> dict:
        answer = self.ask("SELECT count(*), min(v), max(v), count(DISTINCT pid) FROM rw;")
        if answer != f"{requests}|1|{requests}|1":
            raise ClientError(f"table rw: count|min|max|backends = {answer!r}, expected {requests}|1|{requests}|1")
        return {"verified": f"{requests} rows"}


class Mariadb(LineTool):
    """Debian's mariadb client in batch mode (-B -N, unbuffered); CONNECTION_ID() at both ends."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(["mariadb", "-h", host, "-P", str(port), "-u", "rw", "-prw", "-B", "-N", "-n", "rw"])
        ok = self.ask("CREATE TABLE IF NOT EXISTS rw (v INT PRIMARY KEY, c BIGINT) ENGINE=InnoDB; TRUNCATE rw; SELECT 'ok';")
        if ok != "ok":
            self.close()
            raise ClientError(f"mariadb: {ok}")
        self.connection_id = self.ask("SELECT CONNECTION_ID();")
        if not self.connection_id.isdigit():
            raise ClientError(f"SELECT CONNECTION_ID(): {self.connection_id!r}")

    def identity(self) -> str:
        return "connection id " + self.ask("SELECT CONNECTION_ID();")

    def request(self, i: int) -> None:
        answer = self.ask(f"INSERT INTO rw VALUES ({i}, CONNECTION_ID()) RETURNING v, c;")
        if answer != f"{i}\t{self.connection_id}":
            raise ClientError(f"INSERT {i}: {answer!r}")

    def verify(self, requests: int) -> dict:
        answer = self.ask("SELECT COUNT(*), MIN(v), MAX(v), COUNT(DISTINCT c) FROM rw;")
        if answer != f"{requests}\t1\t{requests}\t1":
            raise ClientError(f"table rw: count min max connections = {answer!r}, expected {requests} 1 {requests} 1")
        return {"verified": f"{requests} rows"}


class Memcached:
    """The text protocol over one socket."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=ANSWER_TIMEOUT_S)
        self.buf = b""

    def identity(self) -> str:
        return "local port %d" % self.sock.getsockname()[1]

    def _read_until(self, end: bytes) -> bytes:
        while end not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ClientError("memcached closed the connection")
            self.buf += chunk
        data, _, self.buf = self.buf.partition(end)
        return data + end

    def request(self, i: int) -> None:
        value = b"v%d" % i
        self.sock.sendall(b"set rw:%d 0 0 %d\r\n%s\r\n" % (i, len(value), value))
        answer = self._read_until(b"\r\n")
        if answer != b"STORED\r\n":
            raise ClientError(f"set rw:{i}: {answer!r}")

    def verify(self, requests: int) -> dict:
        for start in range(1, requests + 1, 100):
            keys = range(start, min(start + 100, requests + 1))
            self.sock.sendall(b"get " + b" ".join(b"rw:%d" % k for k in keys) + b"\r\n")
            data = self._read_until(b"END\r\n")
            expected = b"".join(b"VALUE rw:%d 0 %d\r\nv%d\r\n" % (k, len(b"v%d" % k), k) for k in keys) + b"END\r\n"
            if data != expected:
                raise ClientError(f"get rw:{start}..rw:{keys[-1]}: {data[:120]!r}")
        return {"verified": f"{requests} keys"}


def connect(kind: str, host: str, port: int):  # noqa: ANN201
    factories = {
        "http-static": lambda: Http(host, port, counter=False),
        "http-counter": lambda: Http(host, port, counter=True),
        "redis": lambda: Redis(host, port),
        "postgres": lambda: Postgres(host, port),
        "mariadb": lambda: Mariadb(host, port),
        "memcached": lambda: Memcached(host, port),
    }
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            client = factories[kind]()
            client.request(1)
            return client
        except FileNotFoundError as exc:
            raise ClientError(f"{exc.filename} is not installed (scripts/setup.sh installs it)") from exc
        except (OSError, ClientError, http.client.HTTPException) as exc:
            if time.monotonic() > deadline:
                raise ClientError(f"cannot reach {kind} at {host}:{port}: {exc}") from exc
            time.sleep(0.2)


def stop_requested() -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(ready)


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def main() -> int:
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        client = connect(kind, host, port)
    except ClientError as exc:
        emit({"ready": False, "error": str(exc)})
        return 1
    i = 1
    errors: list[str] = []
    try:
        while i < WARMUP:
            client.request(i + 1)
            i += 1
            time.sleep(INTERVAL_S)
        conn_start = client.identity()
    except (OSError, ClientError, http.client.HTTPException, ValueError) as exc:
        emit({"ready": False, "error": f"warm-up request {i + 1}: {type(exc).__name__}: {exc}"})
        return 1
    emit({"ready": True, "conn": conn_start})
    last_ok = time.monotonic()
    max_gap, gap_end_at = 0.0, 0.0
    started = last_ok
    while not stop_requested():
        time.sleep(INTERVAL_S)
        try:
            client.request(i + 1)
        except (OSError, ClientError, http.client.HTTPException, ValueError) as exc:
            errors.append(f"request {i + 1} at {time.monotonic() - started:.3f} s: {type(exc).__name__}: {exc}")
            break
        i += 1
        now = time.monotonic()
        if now - last_ok > max_gap:
            max_gap, gap_end_at = now - last_ok, now - started
        last_ok = now
    result = {"requests": i, "errors": errors, "max_gap_ms": round(max_gap * 1000, 1),
              "gap_end_s": round(gap_end_at, 3), "conn_start": conn_start}
    try:
        result["conn_end"] = client.identity()
        result.update(client.verify(i))
    except (OSError, ClientError, http.client.HTTPException, ValueError) as exc:
        errors.append(f"read-back: {type(exc).__name__}: {exc}")
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
