"""``pymigrate daemon``: serve this host's engine over gRPC (pymigrate.v1.Host).

    pymigrate [--root DIR] daemon [--config FILE] [--listen unix:PATH | HOST:PORT]
        [--tls-cert F --tls-key F --tls-ca F] [--token-file F] [--insecure] [--grace SECONDS]
        [--allow-peer-volumes] [--trusted-key PUBKEY]... [--metrics-listen HOST:PORT] [--log-format text|json]

The default listener is ``unix:ROOT/run/pymigrate.sock`` (mode 0600). A TCP listener requires
mutual TLS (the daemon's certificate and key, and the CA client certificates must chain to)
unless ``--insecure`` is given; ``--token-file`` additionally requires a bearer token on every
call but health. The TLS and token flags are the global ones (``pymigrate --tls-cert F daemon``
works too); for the daemon they describe its own side. ``--trusted-key`` makes the daemon accept
only uploaded archives (UploadCheckpoint, ``restore --import`` through it) signed by one of the
keys (migrate/archive/signing.py); migration pushes stay authenticated by the channel.

``--config FILE`` (default /etc/pymigrate/daemon.toml when it exists) sets any of these flags
from TOML, keys named as the long flags; the command line wins (migrate/daemon_config.py). Under
systemd (Type=notify) the server reports READY=1 and STOPPING=1 (migrate/remote/sd_notify.py).

SIGTERM / SIGINT stop gracefully: no new calls, in-flight calls get ``--grace`` seconds, then
they are cancelled and the engine rolls them back. Logs go to stderr (configured here, not in
the library), as text or JSON lines, with one access line per call; ``--metrics-listen`` serves
Prometheus metrics over plain HTTP (docs/operations.md, "Metrics and logs"). Exit codes: 0
after a clean stop, 125 for bad flag combinations and when the daemon cannot start.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from typing import Any

from migrate.cli import EXIT_OK, EXIT_USAGE

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("daemon", help="serve this host's API over gRPC (for schedulers, remote CLIs, migration)")
    p.add_argument("--config", type=_path, default=None, metavar="FILE",
                   help="TOML file of flags (keys: the long flags, e.g. listen = \"...\"); the command line wins "
                        "(default /etc/pymigrate/daemon.toml when it exists)")
    from migrate.daemon_config import record_argv

    record_argv(p)  # the config file must not override flags the command line gave
    p.add_argument("--listen", default=None, help="unix:PATH or HOST:PORT (default unix:ROOT/run/pymigrate.sock)")
    # SUPPRESS: do not overwrite the same global flags given before the subcommand.
    p.add_argument("--tls-cert", type=_path, default=argparse.SUPPRESS, help="the daemon's certificate (PEM)")
    p.add_argument("--tls-key", type=_path, default=argparse.SUPPRESS, help="the daemon's private key (PEM)")
    p.add_argument("--tls-ca", type=_path, default=argparse.SUPPRESS, help="CA that client certificates must chain to")
    p.add_argument("--token-file", type=_path, default=argparse.SUPPRESS, help="require this bearer token on every call")
    p.add_argument("--insecure", action="store_true", default=argparse.SUPPRESS, help="allow plain TCP without TLS")
    p.add_argument("--grace", type=float, default=30.0, metavar="SECONDS", help="time in-flight calls get on stop (default 30)")
    p.add_argument("--max-workers", type=int, default=32, help="concurrent calls served (default 32)")
    p.add_argument("--allow-peer-volumes", action="store_true",
                   help="let containers migrated here bring volumes (host paths chosen on the source); off by default")
    p.add_argument("--trusted-key", dest="trusted_keys", type=_path, action="append", default=[], metavar="PUBKEY",
                   help="accept only uploaded archives signed by one of these ed25519 keys (ssh-ed25519 lines or "
                        "PEM; repeatable); checked before anything is extracted")
    p.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                   help="serve Prometheus metrics over plain HTTP at http://HOST:PORT/metrics (off by default)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="stderr log lines: text, or one JSON object per line (default text)")
    p.set_defaults(handler=cmd_daemon)


def _path(value: str) -> Any:
    from pathlib import Path

    return Path(value)


SWEEP_INTERVAL_S = 5.0  # how often stale incoming migrations are looked for


def _sweep_port_guards() -> None:
    """Firewall tables that guarded page-server ports of a daemon that died (runtime.port_guard)."""
    try:
        from runtime.port_guard import available, sweep_stale

        if available():
            for table in sweep_stale():
                log.info("removed the stale page-server guard %s", table)
    except Exception as exc:  # noqa: BLE001 - a stale guard only blocks a port nobody listens on
        log.warning("sweeping stale page-server guards failed: %s", exc)


def _warm_host_info(engine: Any) -> None:
    try:
        from runtime.criu import SwrkCriu

        SwrkCriu().warm()  # also mounts CRIU's kdat cache dir after a reboot (runtime.criu_kdat)
        engine.host_info()
    except Exception:  # informative only; the RPC reports the real error if it persists
        log.debug("warming host info failed", exc_info=True)


def _signature_policy(paths: list[Any]) -> Any:
    """The uploads this daemon accepts: any (no keys), or signed by one of the keys (read now, so
    a bad key file stops the start instead of refusing every upload later)."""
    from migrate.archive.signing import SignaturePolicy, load_trusted_keys

    if not paths:
        return None
    policy = SignaturePolicy(load_trusted_keys(paths))
    for key in policy.trusted:
        log.info("uploaded archives must be signed: trusting %s from %s", key.describe(), key.source)
    return policy


def _start_metrics(engine: Any, listen: str | None) -> tuple[Any, Any]:
    """The daemon's metrics and their HTTP listener (None, None without ``--metrics-listen``)."""
    if not listen:
        return None, None
    from migrate.remote.metrics import DaemonMetrics, serve

    metrics = DaemonMetrics(lambda: engine.containers(all=True))
    return metrics, serve(metrics, listen)


def cmd_daemon(args: argparse.Namespace, ctx: Any) -> int:
    from migrate.daemon_config import apply_file

    config, from_file = apply_file(args)  # first: the file may set any flag read below
    # First, while this process is still single-threaded: the shim launcher (fork server).
    # Once gRPC runs its threads, fork() here is unsafe (runtime/shim.py explains).
    from runtime.shim import use_launcher

    use_launcher()
    import sys

    if getattr(args, "host", None):
        print("pymigrate: daemon serves this host; --host is for clients", file=sys.stderr)
        return EXIT_USAGE
    from migrate.remote.log_format import configure_logging

    configure_logging(args.log_format, level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr)
    from runtime.config import Paths, default_root

    from migrate.remote.server import check_token_file, create_server, default_listen
    from migrate.remote.tokens import read_tokens
    from migrate.remote.tls import tls_from_paths

    root = args.root or default_root()
    tls = tls_from_paths(getattr(args, "tls_cert", None), getattr(args, "tls_key", None), getattr(args, "tls_ca", None), who="daemon")
    if getattr(args, "token_file", None) is not None:
        check_token_file(args.token_file)  # the token is root here: refuse a file others can read
    token = read_tokens(getattr(args, "token_file", None))  # one, or named ones the access log tells apart
    listen = args.listen or default_listen(root)

    from migrate.engine import LocalEngine, PeerConfig  # heavy: the runtime, CRIU probing

    # The daemon dials other daemons (migration targets) with its own credentials.
    engine = LocalEngine(root, peer=PeerConfig.from_args(args), allow_peer_volumes=bool(getattr(args, "allow_peer_volumes", False)),
                         signature_policy=_signature_policy(args.trusted_keys))
    engine.reconcile()
    _sweep_port_guards()
    from migrate.migration import page_socket

    page_socket.sweep(Paths(root).run)  # what a daemon of this root that died left
    metrics, metrics_server = _start_metrics(engine, args.metrics_listen)
    server, bound = create_server(
        engine,
        listen,
        tls=tls,
        token=token,
        insecure=bool(getattr(args, "insecure", False)),
        max_workers=args.max_workers,
        spool_dir=Paths(root).tmp,
        metrics=metrics,
    )
    # where migration targets reach this daemon back (a wildcard host: the address they see us at)
    host = server.address.host or "0.0.0.0"
    engine.advertise = server.target if server.address.kind == "unix" else f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        # Probe host and CRIU features now, off the request path: a migration's pre-flight asks
        # for them first (the probe runs `criu check` several times; cached for the process).
        threading.Thread(target=_warm_host_info, args=(engine,), name="warm-host-info", daemon=True).start()
        log.info(
            "pymigrate daemon: root=%s listen=%s tls=%s token=%s", root, server.target, tls is not None, token is not None
        )
        if config is not None:
            log.info("read %s: %s", config, ", ".join(from_file) or "nothing the command line did not give")
        last_sweep = 0.0
        while not stop.wait(1.0):
            if time.monotonic() - last_sweep >= SWEEP_INTERVAL_S:
                last_sweep = time.monotonic()
                try:
                    engine.sweep_incoming()
                except Exception:  # the sweep is housekeeping; the daemon keeps serving
                    log.warning("sweeping incoming migrations failed", exc_info=True)
                try:
                    engine.settle_outgoing()  # copies frozen while a migration's outcome is unknown
                except Exception:  # retried at the next round; the copy stays frozen meanwhile
                    log.warning("settling outgoing migrations failed", exc_info=True)
        log.info("received %s, stopping (grace %.1fs)", signal.Signals(received[0]).name, args.grace)
        server.stop(args.grace)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not stop.is_set():
            server.stop(0)
        if metrics_server is not None:
            metrics_server.close()
    return EXIT_OK
