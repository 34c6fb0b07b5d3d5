"""The servers of the real-server suite: how each runs in its container and which client holds it.

Each runs unmodified from the Debian image (tests/realworld/debian_image.py), in the foreground,
under the user Debian's own units use: PostgreSQL 15 as postgres, MariaDB as mysql, nginx with a root master and
www-data workers, memcached dropping to memcache, redis-server as redis, HAProxy in master-worker
mode with its worker dropping to haproxy in its chroot. The application servers (Node.js,
Python's http.server, the SQLite writer) run as the container's root, as most application
containers do. Their code is passed on the command line (``node -e``, ``python3 -c``), so it is
not part of the cached image.

The Node.js, Python and HAProxy servers keep a counter in memory: GET /incr raises it by one and
returns it, GET /count returns it. A restart (or a second copy) shows as a counter that does not
follow on. The SQLite writer commits one row (id, wall-clock time) every ~10 ms in its own
transaction (BEGIN IMMEDIATE: a file lock held while it writes, so a dump needs --file-locks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PY_COUNTER_SERVER = """\
import sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

count = 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self):
        global count
        with lock:
            if self.path == "/incr":
                count += 1
            body = str(count).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"""

NODE_COUNTER_SERVER = """\
const http = require('http');
let count = 0;
const server = http.createServer((req, res) => {
  if (req.url === '/incr') count += 1;
  const body = String(count);
  res.writeHead(200, {'Content-Length': Buffer.byteLength(body)});
  res.end(body);
});
server.keepAliveTimeout = 600000;
server.listen(3000, '0.0.0.0');
"""

SQLITE_DB = "/var/lib/rw/rw.db"

SQLITE_WRITER = f"""\
import os, sqlite3, sys, time

os.makedirs(os.path.dirname({SQLITE_DB!r}), exist_ok=True)
db = sqlite3.connect({SQLITE_DB!r}, isolation_level=None, timeout=30)
db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, ts REAL NOT NULL)")
i = db.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0]
print("writer starts after row", i, flush=True)
while True:
    i += 1
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?)", (i, time.time()))
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        print(f"error: row {{i}}: {{exc}}", flush=True)
        sys.exit(1)
    time.sleep(0.01)
"""

# Run with `pymigrate exec`: what the writer committed so far, as one JSON line.
SQLITE_READER = f"""\
import json, sqlite3

db = sqlite3.connect("file:{SQLITE_DB}?mode=ro", uri=True, timeout=30)
rows = db.execute("SELECT id, ts FROM t ORDER BY id").fetchall()
gap = max((b[1] - a[1] for a, b in zip(rows, rows[1:])), default=0.0)
print(json.dumps({{"count": len(rows), "min": rows[0][0] if rows else 0, "max": rows[-1][0] if rows else 0,
                  "max_gap_ms": round(gap * 1000, 1)}}))
"""


@dataclass(frozen=True)
class Server:
    name: str
    argv: tuple[str, ...]
    port: int | None  # None: no network client (the SQLite writer)
    client: str | None  # client.py KIND
    env: tuple[str, ...] = ()
    file_locks: bool = False
    users: tuple[str, ...] = field(default=())  # users its processes must run as (checked after the move)


SERVERS = (
    Server(
        "postgresql",
        ("runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/postgres",
         "-D", "/var/lib/postgresql/15/main", "-c", "config_file=/etc/postgresql/15/main/postgresql.conf"),
        5432, "postgres", users=("postgres",),
    ),
    Server("nginx", ("nginx", "-g", "daemon off;"), 80, "http-static", users=("root", "www-data")),
    Server(
        "mariadb",
        ("runuser", "-u", "mysql", "--", "/usr/sbin/mariadbd", "--bind-address=0.0.0.0", "--init-file=/etc/mysql/rw-init.sql"),
        3306, "mariadb", file_locks=True, users=("mysql",),  # InnoDB locks its files (fcntl)
    ),
    Server("memcached", ("memcached", "-u", "memcache", "-l", "0.0.0.0", "-p", "11211", "-U", "0", "-m", "64"), 11211,
           "memcached", users=("memcache",)),
    Server(
        "redis",
        ("runuser", "-u", "redis", "--", "redis-server", "/etc/redis/redis.conf", "--daemonize", "no",
         "--supervised", "no", "--bind", "0.0.0.0", "--protected-mode", "no", "--logfile", ""),
        6379, "redis", users=("redis",),
    ),
    Server("sqlite", ("python3", "-c", SQLITE_WRITER), None, None, file_locks=True, users=("root",)),
    Server("nodejs", ("node", "-e", NODE_COUNTER_SERVER), 3000, "http-counter", users=("root",)),
    Server("python", ("python3", "-c", PY_COUNTER_SERVER, "8000"), 8000, "http-counter", users=("root",)),
    Server(
        "haproxy",
        # master-worker (-W) as Debian's unit runs it: only the worker chroots. A chrooted process
        # as the container's init cannot be dumped: CRIU reads the mount tree from the root task's
        # /proc/PID/mountinfo, which hides every mount outside its chroot ("Can't parse mountinfo").
        ("sh", "-c", 'python3 -c "$RW_APP" 8081 & haproxy -W -db -f /etc/haproxy/haproxy.cfg & wait'),
        8080, "http-counter", env=(f"RW_APP={PY_COUNTER_SERVER}",), users=("root", "haproxy"),
    ),
)
