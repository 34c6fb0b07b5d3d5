#!/usr/bin/env python3
"""Throughput of the ssh:// tunnel (migrate/remote/ssh.py) next to the direct paths, in one run.

Changes on the host: creates one "host" network namespace with sshd and a pymigrate daemon
(tests/integration/hosts.py) and removes it again. Needs root and openssh-server.

Measures, for SIZE MiB (default 256):
  raw up/down    bytes through the forward to a unix socket sink/source in the host, vs the
                 same socket dialled directly (same machine), vs loopback TCP; the forward once
                 through OpenSSH's ssh -L and once through paramiko's channel (PATH without ssh)
  grpc upload    ImportImage of SIZE MiB (the daemon spools it; the import then fails on the
                 garbage, which is not timed) through the tunnel (both movers) vs the daemon's
                 unix socket

    .venv/bin/python scripts/bench_ssh.py [--size-mib 256] [--json]

With ``--migrate`` (issue 17) it measures cold migrations instead: two hosts with daemons and
sshd (scripts/bench_migrate.py's lab), one memhog of SIZE MiB (issue 17's workload: half text, half
random memory; ``--text-percent 0``: all random) moved A -> B from
A's CLI, RUNS rounds, each round the four paths in a rotated order (interleaved):

  grpc            ``migrate NAME B:7443 --insecure`` (CRIU's page server carries the pages)
  unix            ``migrate NAME unix:B_ROOT/run/pymigrate.sock`` (B's daemon socket, reachable from
                  A's namespace on this one machine): the pages over B's page socket, no SSH
                  (migrate/migration/page_socket.py)
  ssh             ``migrate NAME ssh://root@B`` (B's daemon stopped: started on demand; the
                  bytes through OpenSSH's ``ssh -L``, migrate/remote/ssh_forward.py, the pages
                  through its second forward to B's page socket)
  ssh-paramiko    the same with a PATH that has no ``ssh``: paramiko's channel (the fallback; the
                  pages inside the gRPC stream)
  ssh-zstd        (``--paths`` only) ssh with ``--compress on``: the page relay's zstd on both
                  ends of the page forward (``ssh`` alone sends raw: CRIU straight into it)
  ssh-nopty       (``--paths`` only) ssh with the forwarder's ssh as it ran before its pty session
                  (``-T -N``: no TCP_NODELAY on the tunnel, ssh_forward.py's docstring): A/B in one run

and back B -> A over grpc (untimed) after each, memory warmed before each timed hop, the checksum
checked after it. Prints the median pause (frozen_ms), total and CLI wall time per path, the
ratios to grpc, which page path each took (page_socket=1: a page socket; page_compressed: the
relay chose zstd) and the load average before and after (the machine is shared).

    .venv/bin/python scripts/bench_ssh.py --migrate [--size-mib 256] [--runs 3] [--text-percent 50] [--paths P,...] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

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


def _path_without_ssh(workdir: Path) -> str:
    """A PATH of one directory: links to every program on ours except ``ssh``."""
    bin_dir = workdir / "bin-without-ssh"
    bin_dir.mkdir(exist_ok=True)
    for directory in os.environ.get("PATH", "").split(":"):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            link = bin_dir / name
            if name != "ssh" and not link.exists() and os.access(os.path.join(directory, name), os.X_OK):
                link.symlink_to(os.path.join(directory, name))
    return str(bin_dir)


# OpenSSH's ssh as the forwarder ran it before its pty session (ssh_forward.py's docstring): -T -N,
# no remote command, so no TCP_NODELAY at sshd's end: the A of an A/B in one run. It prints the
# session's marker itself (the forwarder waits for it; it would take a missing one for a failure).
_SSH_WITHOUT_PTY = """#!/bin/sh
pty=
for arg; do
  shift
  case "$arg" in -tt) pty=1; set -- "$@" -T -N ;; *"exec sleep 2147483647") ;; *) set -- "$@" "$arg" ;; esac
done
[ -n "$pty" ] && echo pty
exec {ssh} "$@"
"""


def _path_ssh_without_pty(workdir: Path, path_without_ssh: str) -> str:
    """A PATH whose ``ssh`` runs OpenSSH's without ``-tt`` and the remote command (-T -N instead)."""
    bin_dir = workdir / "bin-ssh-without-pty"
    bin_dir.mkdir(exist_ok=True)
    real = shutil.which("ssh")
    if real is None:
        raise SystemExit("bench: no ssh on PATH")
    wrapper = bin_dir / "ssh"
    wrapper.write_text(_SSH_WITHOUT_PTY.format(ssh=real))
    wrapper.chmod(0o755)
    return f"{bin_dir}:{path_without_ssh}"


MIGRATE_PATHS = ("grpc", "unix", "ssh", "ssh-paramiko")
# --paths only: ssh with --compress on (the page socket behind the relay, zstd); ssh's forwarder
# without its pty (-N: no TCP_NODELAY, as before; _SSH_WITHOUT_PTY)
EXTRA_PATHS = ("ssh-zstd", "ssh-nopty")


@contextlib.contextmanager
def _mover(mover: str, path_without_ssh: str) -> Iterator[None]:
    """With ``paramiko``: PATH without ``ssh`` while the tunnel opens (the fallback path)."""
    saved = os.environ["PATH"]
    if mover == "paramiko":
        os.environ["PATH"] = path_without_ssh
    try:
        yield
    finally:
        os.environ["PATH"] = saved


def _watch_forwarders(remote_socket: str, seen: set[int], stop: threading.Event) -> None:
    """Adds the pids of ``ssh ... -L LOCAL:remote_socket`` processes to ``seen`` until ``stop``."""
    suffix = f":{remote_socket}".encode()
    while not stop.wait(0.05):
        for entry in Path("/proc").iterdir():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
            except OSError:
                continue
            if argv and argv[0].endswith(b"/ssh") and any(arg.endswith(suffix) for arg in argv):
                seen.add(int(entry.name))


def _migrate_hop(lab, ssh: dict, path: str, name: str, size_mib: int, before: tuple) -> dict:  # noqa: ANN001
    """One timed hop A -> B over ``path``, then back over grpc (untimed)."""
    import bench_migrate
    from tests.integration.hosts import PYMIGRATE_BIN

    a, b = lab.hosts[0], lab.hosts[1]
    if path == "grpc":
        args, env = ["--insecure", "migrate", name, lab.addr(b), "--json"], None
    elif path == "unix":
        args, env = ["migrate", name, f"unix:{b.socket_path}", "--json"], None
        b.stop_daemon()
        b.start_daemon()  # on B's unix socket
    else:
        flags = ["--ssh-key", str(ssh["key"]), "--ssh-known-hosts", str(ssh["known_hosts"]),
                 "--ssh-remote-pymigrate", str(PYMIGRATE_BIN), "--ssh-remote-root", str(b.root)]  # fmt: skip
        args, env = [*flags, "migrate", name, b.ssh_url(), "--json"], dict(ssh["env"])
        if path == "ssh-zstd":
            args.append("--compress=on")
        if path == "ssh-paramiko":
            env["PATH"] = ssh["path_without_ssh"]
        if path == "ssh-nopty":
            env["PATH"] = ssh["path_ssh_without_pty"]
        b.stop_daemon()
    seen: set[int] = set()
    stop = threading.Event()
    watch = threading.Thread(target=_watch_forwarders, args=(str(b.socket_path), seen, stop), daemon=True)
    try:
        bench_migrate.warm(size_mib)
        watch.start()
        t0 = time.monotonic()
        r = a.cli(args, timeout=600, env=env)
        wall_ms = (time.monotonic() - t0) * 1000
        if r.returncode != 0:  # with --json the error is on stdout
            raise SystemExit(f"bench: migrate {name} over {path} failed ({r.returncode}): {r.stdout.decode()} {r.stderr.decode()}")
        result = json.loads(r.stdout)
    finally:
        stop.set()
        watch.join(10)
        if path == "unix":
            b.stop_daemon()
        if path != "grpc":
            lab.start_daemon(b)
    if bool(seen) != (path in ("ssh", "ssh-zstd", "ssh-nopty")):
        raise SystemExit(f"bench: ssh -L forwarders seen during the hop over {path}: {sorted(seen)}")
    after = lab.report(b, name)
    if after is None or after[0] != before[0]:
        raise SystemExit(f"bench: {name} after the hop over {path} does not match ({before} -> {after})")
    bench_migrate._json(b.cli(["--insecure", "migrate", name, lab.addr(a), "--json"], timeout=600), f"migrate {name} back")
    return {"pause_ms": result["stats"]["frozen_ms"], "total_ms": result["stats"]["total_ms"], "wall_ms": round(wall_ms, 1),
            "bytes_on_wire": result["stats"]["bytes_on_wire"], "phases_ms": result["stats"].get("phases_ms", {})}  # fmt: skip


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def bench_migrate_paths(size_mib: int, runs: int, as_json: bool, paths: tuple[str, ...] = MIGRATE_PATHS, text_percent: int = 50) -> int:
    import statistics

    sys.path.insert(0, str(REPO / "scripts"))
    import bench_migrate
    from tests.integration.migration_lab import Lab

    samples: dict[str, list[dict]] = {p: [] for p in paths}
    load_before = _uptime()
    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as workdir, Lab.create(Path(workdir)) as lab:
        ssh = bench_migrate.setup_ssh(lab, Path(workdir))
        ssh["path_without_ssh"] = _path_without_ssh(Path(workdir))
        ssh["path_ssh_without_pty"] = _path_ssh_without_pty(Path(workdir), ssh["path_without_ssh"])
        name = f"sshbench{size_mib}"
        lab.run_memhog(lab.hosts[0], name, size_mib, text_percent=text_percent)
        before = lab.report(lab.hosts[0], name)
        for run in range(runs):
            order = paths[run % len(paths) :] + paths[: run % len(paths)]
            for path in order:
                sample = _migrate_hop(lab, ssh, path, name, size_mib, before)
                samples[path].append(sample)
                if not as_json:
                    print(f"run {run + 1} {path:>13}: pause {sample['pause_ms']:7.0f} ms  total {sample['total_ms']:7.0f} ms"
                          f"  wall {sample['wall_ms']:7.0f} ms", flush=True)  # fmt: skip
                    print("      " + " ".join(f"{k}={v:.0f}" for k, v in sample["phases_ms"].items()), flush=True)
    load_after = _uptime()
    medians = {p: {k: statistics.median(s[k] for s in samples[p]) for k in ("pause_ms", "total_ms", "wall_ms")} for p in paths}
    ratios = {p: round(medians[p]["pause_ms"] / medians["grpc"]["pause_ms"], 2) for p in paths}
    if as_json:
        json.dump({"size_mib": size_mib, "text_percent": text_percent, "runs": runs, "samples": samples, "medians": medians, "pause_vs_grpc": ratios,
                   "uptime": [load_before, load_after]}, sys.stdout, indent=2)
        print()
        return 0
    print(f"\nmedians of {runs}, {size_mib} MiB cold ({text_percent}% text), A -> B:")
    for p in paths:
        m = medians[p]
        print(f"  {p:>13}: pause {m['pause_ms']:7.0f} ms ({ratios[p]:.2f}x grpc)  total {m['total_ms']:7.0f} ms  wall {m['wall_ms']:7.0f} ms")
    print(f"  goal: ssh pause <= 1.3x grpc: measured {ratios['ssh']:.2f}x / goal 1.30x / {'met' if ratios['ssh'] <= 1.3 else 'NOT met'}")
    print(f"  uptime before: {load_before}\n  uptime after:  {load_after}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is kept")
    parser.add_argument("--migrate", action="store_true", help="cold migrations: grpc vs ssh:// (ssh -L) vs ssh:// (paramiko)")
    parser.add_argument("--runs", type=int, default=3, help="with --migrate: interleaved rounds; medians are printed")
    parser.add_argument("--text-percent", type=int, default=50,
                        help="with --migrate: the memhog's share of text memory (issue 17's workload: 50, ~1.7x with zstd; 0: random)")
    parser.add_argument("--paths", default=",".join(MIGRATE_PATHS),
                        help=f"with --migrate: comma-separated, grpc and ssh among them; of {', '.join(MIGRATE_PATHS + EXTRA_PATHS)}")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.migrate:
        paths = tuple(args.paths.split(","))
        if not {"grpc", "ssh"} <= set(paths) or not set(paths) <= set(MIGRATE_PATHS + EXTRA_PATHS):
            parser.error(f"--paths needs grpc and ssh, and only {', '.join(MIGRATE_PATHS + EXTRA_PATHS)}")
        return bench_migrate_paths(args.size_mib, args.runs, args.json, paths, args.text_percent)
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
            path_without_ssh = _path_without_ssh(tmpdir)
            for direction, mode in (("up", "u"), ("down", "d")):
                best(f"raw {direction}: loopback tcp", lambda: _raw(f"127.0.0.1:{port}", mode, size))
                best(f"raw {direction}: unix socket direct", lambda: _raw(f"unix:{sink}", mode, size))
                for mover in ("openssh", "paramiko"):
                    with _mover(mover, path_without_ssh), open_ssh_target(host.ssh_url(), **options) as target:
                        assert target.forwarder == mover, target.forwarder
                        target._forward._remote_socket = str(sink)
                        best(f"raw {direction}: ssh tunnel ({mover})", lambda: _raw(target.address, mode, size))
            with RemoteEngine(f"unix:{host.socket_path}") as direct:
                best("grpc ImportImage: unix socket", lambda: _grpc_upload(direct, data, size))
            for mover in ("openssh", "paramiko"):
                with _mover(mover, path_without_ssh), RemoteEngine(host.ssh_url(), ssh=options) as tunnelled:
                    best(f"grpc ImportImage: ssh tunnel ({mover})", lambda: _grpc_upload(tunnelled, data, size))
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
