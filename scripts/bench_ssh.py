#!/usr/bin/env python3
"""Throughput of the ssh:// tunnel (migrate/remote/ssh.py) next to the direct paths, in one run.

Changes on the host: creates one "host" network namespace with sshd and a pymigrate daemon
(tests/integration/hosts.py) and removes it again. Needs root and openssh-server.

Measures, for SIZE MiB (default 256):
  raw up/down    bytes through the forward to a unix socket sink/source in the host, vs the
                 same socket dialled directly (same machine), vs loopback TCP
  grpc upload    ImportImage of SIZE MiB (the daemon spools it; the import then fails on the
                 garbage, which is not timed) through the tunnel vs the daemon's unix socket

    .venv/bin/python scripts/bench_ssh.py [--size-mib 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHUNK = 1 << 20

_SERVER = """
import socket, sys, os
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(8)
buf = b"\\0" * (1 << 20)
while True:
    c, _ = s.accept()
    mode = c.recv(1)
    n = int.from_bytes(c.recv(8), "big")
    if mode == b"u":          # client uploads n bytes, we answer 1 byte when all arrived
        got = 0
        while got < n:
            d = c.recv(1 << 20)
            if not d: break
            got += len(d)
        c.sendall(b"k")
    else:                     # client downloads n bytes
        sent = 0
        while sent < n:
            k = min(len(buf), n - sent); c.sendall(buf[:k]); sent += k
    c.close()
"""


def _tcp_server(n_holder: dict) -> tuple[socket.socket, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        buf = b"\0" * CHUNK
        while True:
            try:
                c, _ = listener.accept()
            except OSError:
                return
            mode = c.recv(1)
            n = int.from_bytes(c.recv(8), "big")
            if mode == b"u":
                got = 0
                while got < n:
                    d = c.recv(CHUNK)
                    if not d:
                        break
                    got += len(d)
                c.sendall(b"k")
            else:
                sent = 0
                while sent < n:
                    k = min(CHUNK, n - sent)
                    c.sendall(buf[:k])
                    sent += k
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def _dial(address: str) -> socket.socket:
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX)
        s.connect(address[len("unix:") :])
        return s
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)))


def _raw(address: str, mode: str, size: int) -> float:
    """MiB/s of ``size`` bytes up ("u") or down ("d") through ``address``."""
    s = _dial(address)
    buf = b"\1" * CHUNK
    start = time.perf_counter()
    s.sendall(mode.encode() + size.to_bytes(8, "big"))
    if mode == "u":
        sent = 0
        while sent < size:
            k = min(CHUNK, size - sent)
            s.sendall(buf[:k])
            sent += k
        assert s.recv(1) == b"k"
    else:
        got = 0
        while got < size:
            d = s.recv(CHUNK)
            if not d:
                raise RuntimeError(f"download through {address} ended after {got} bytes")
            got += len(d)
    elapsed = time.perf_counter() - start
    s.close()
    return size / elapsed / (1 << 20)


def _grpc_upload(engine, path: Path, size: int) -> float:  # noqa: ANN001
    from migrate.errors import MigrationError
    from runtime.errors import ContainerError

    start = time.perf_counter()
    try:
        engine.image_import("bench-garbage", path)
    except (ContainerError, MigrationError):
        pass  # the upload completed; the import of zeros fails afterwards
    return size / (time.perf_counter() - start) / (1 << 20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is kept")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.size_mib << 20

    from migrate.remote.client import RemoteEngine
    from migrate.remote.ssh import open_ssh_target
    from tests.integration.hosts import PYMIGRATE_BIN, Hosts

    results: dict[str, float] = {}

    def best(name: str, fn) -> None:  # noqa: ANN001
        results[name] = round(max(fn() for _ in range(args.repeat)), 1)
        if not args.json:
            print(f"{name:34s} {results[name]:8.1f} MiB/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as tmp, Hosts(1) as hosts:
        tmpdir = Path(tmp)
        host = hosts[0]
        key = tmpdir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        host.start_sshd(Path(f"{key}.pub"))
        sink = host.workdir / "sink.sock"
        server = host.popen([sys.executable, "-c", _SERVER, str(sink)])
        listener, port = _tcp_server({})
        data = tmpdir / "data"
        with open(data, "wb") as f:
            f.write(os.urandom(1 << 20) * args.size_mib)
        try:
            while not sink.exists():
                time.sleep(0.05)
            host.start_daemon()
            options = dict(
                key_file=key, accept_new=True, known_hosts=tmpdir / "kh", config_file=tmpdir / "none",
                remote_pymigrate=str(PYMIGRATE_BIN), remote_root=str(host.root),
            )  # fmt: skip
            for direction, mode in (("up", "u"), ("down", "d")):
                best(f"raw {direction}: loopback tcp", lambda: _raw(f"127.0.0.1:{port}", mode, size))
                best(f"raw {direction}: unix socket direct", lambda: _raw(f"unix:{sink}", mode, size))
                with open_ssh_target(host.ssh_url(), **options) as target:
                    target._forward._remote_socket = str(sink)
                    best(f"raw {direction}: ssh tunnel", lambda: _raw(target.address, mode, size))
            with RemoteEngine(f"unix:{host.socket_path}") as direct:
                best("grpc ImportImage: unix socket", lambda: _grpc_upload(direct, data, size))
            with RemoteEngine(host.ssh_url(), ssh=options) as tunnelled:
                best("grpc ImportImage: ssh tunnel", lambda: _grpc_upload(tunnelled, data, size))
                results["ssh cipher"] = tunnelled._ssh.transport.remote_cipher  # type: ignore[assignment]
        finally:
            listener.close()
            server.kill()
            server.wait(5)
    if args.json:
        json.dump({"size_mib": args.size_mib, "mib_per_s": results}, sys.stdout, indent=2)
        print()
    else:
        print(f"ssh cipher: {results['ssh cipher']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
