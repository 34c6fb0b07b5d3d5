#!/usr/bin/env python3
"""Move every running container off a host: a scheduler's view of the pymigrate API.

    scripts/drain_host.py SOURCE TARGET [--parallel N] [--mode cold|precopy|postcopy|auto]
        [--tls-cert F --tls-key F --tls-ca F] [--token-file F] [--insecure] [--json]

SOURCE and TARGET are daemon addresses (unix:PATH or HOST:PORT). TARGET is the address the
*source daemon* dials, so it must make sense from that host. This script uses only gRPC and the
generated stubs (migrate/_proto), as a scheduler in any language would: ListContainers on the
source, then one server-streaming Migrate call per container, printing its phases. It changes
nothing on this machine; on the hosts it moves containers (the source copy is removed only after
the target runs it).

Exit codes: 0 every container moved, 1 some failed (each failure is printed with its status
code and the daemon's error type), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc

from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate._proto.pymigrate.v1 import host_pb2_grpc as pb_grpc

MODES = {
    "cold": pb.MIGRATION_MODE_COLD,
    "precopy": pb.MIGRATION_MODE_PRECOPY,
    "postcopy": pb.MIGRATION_MODE_POSTCOPY,
    "auto": pb.MIGRATION_MODE_AUTO,
}


def channel(address: str, args: argparse.Namespace) -> grpc.Channel:
    if args.tls_ca:
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(args.tls_ca).read_bytes(),
            private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
            certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
        )
        return grpc.secure_channel(address, creds)
    if not address.startswith("unix:") and not args.insecure:
        sys.exit(f"drain_host: {address} needs --tls-cert/--tls-key/--tls-ca or --insecure")
    return grpc.insecure_channel(address)


def migrate_one(stub: pb_grpc.HostStub, name: str, args: argparse.Namespace, metadata: tuple) -> dict:
    started = time.monotonic()
    request = pb.MigrateRequest(name=name, dest=args.target, mode=MODES[args.mode])
    try:
        for response in stub.Migrate(request, metadata=metadata):
            if response.HasField("event"):
                e = response.event
                if not args.json:
                    print(
                        f"{name}: {e.phase:<10} {e.bytes_done / 2**20:8.1f} MiB "
                        f"{e.throughput_bytes_per_s / 2**20:7.1f} MiB/s {e.elapsed_s:6.2f}s",
                        file=sys.stderr,
                    )
            else:
                stats = response.result.stats
                return {
                    "name": name,
                    "ok": True,
                    "frozen_ms": stats.frozen_ms,
                    "total_ms": stats.total_ms,
                    "bytes_on_wire": stats.bytes_on_wire,
                }
        return {"name": name, "ok": False, "error": "the stream ended without a result"}
    except grpc.RpcError as exc:
        error_type = dict(exc.trailing_metadata() or ()).get("pymigrate-error-type", "")
        return {
            "name": name,
            "ok": False,
            "code": exc.code().name,
            "type": error_type,
            "error": exc.details(),
            "elapsed_s": time.monotonic() - started,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="migrate every running container from SOURCE to TARGET")
    parser.add_argument("source", help="source daemon address (unix:PATH or HOST:PORT)")
    parser.add_argument("target", help="target daemon address, as the source daemon reaches it")
    parser.add_argument("--parallel", type=int, default=1, help="migrations at once (default 1)")
    parser.add_argument("--mode", choices=sorted(MODES), default="cold")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-ca")
    parser.add_argument("--token-file")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    metadata: tuple = ()
    if args.token_file:
        metadata = (("authorization", "Bearer " + Path(args.token_file).read_text().strip()),)

    with channel(args.source, args) as ch:
        stub = pb_grpc.HostStub(ch)
        try:
            listing = stub.ListContainers(pb.ListContainersRequest(), metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            print(f"drain_host: cannot list containers on {args.source}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        names = [c.spec.name for c in listing.containers if c.state.status == pb.CONTAINER_STATUS_RUNNING]
        skipped = [c.spec.name for c in listing.containers if c.state.status != pb.CONTAINER_STATUS_RUNNING]
        with futures.ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            results = list(pool.map(lambda n: migrate_one(stub, n, args, metadata), names))

    failed = [r for r in results if not r["ok"]]
    if args.json:
        json.dump({"moved": [r for r in results if r["ok"]], "failed": failed, "skipped": skipped}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in results:
            if r["ok"]:
                print(f"{r['name']}: moved, downtime {r['frozen_ms']:.0f} ms, {r['bytes_on_wire'] / 2**20:.1f} MiB on the wire")
            else:
                print(f"{r['name']}: FAILED {r.get('code', '')} {r.get('type', '')}: {r['error']}")
        for name in skipped:
            print(f"{name}: skipped (not running)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
