"""``pymigrate version``: the client's version and, with ``--host``, the daemon's.

    pymigrate [--host ADDR] version [--json]

The client part needs no engine (so ``version`` works with no state root and no root); the server
part is the daemon's ``GetHostInfo``: its version, the API it serves, its kernel and CRIU.
``pymigrate --version`` prints the client's version alone (migrate/cli/__init__.py).
"""

from __future__ import annotations

from typing import Any

from migrate.cli import EXIT_OK, Context

# The gRPC package the client speaks (protos/pymigrate/v1); a daemon that answers it serves the same.
API_VERSION = "pymigrate.v1"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("version", help="show the client's version (and with --host the daemon's)",
                              description="Show the client's version, Python and API; with --host also the daemon's "
                                          "version, kernel and CRIU.")
    p.set_defaults(handler=cmd_version)


def client_info() -> dict[str, str]:
    import platform
    import sys

    from migrate import __version__

    return {
        "version": __version__,
        "api_version": API_VERSION,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "os_arch": f"{sys.platform}/{platform.machine()}",
    }


def server_info(engine: Any) -> dict[str, Any]:
    info = engine.host_info()
    return {
        "version": info.version,
        "api_version": API_VERSION,
        "hostname": info.hostname,
        "kernel": info.kernel,
        "criu_version": info.criu_version,
        "cgroup_mode": info.cgroup_mode,
    }


def cmd_version(args: Any, ctx: Context) -> int:
    report: dict[str, Any] = {"client": client_info(), "server": None}
    if getattr(args, "host", None):
        report["server"] = server_info(ctx.engine)
    if ctx.json:
        ctx.emit_json(report)
        return EXIT_OK
    client = report["client"]
    lines = ["Client:", f" Version:      {client['version']}", f" API version:  {client['api_version']}",
             f" Python:       {client['python']} ({client['python_implementation']})", f" OS/Arch:      {client['os_arch']}"]
    server = report["server"]
    if server is not None:
        lines += ["", f"Server: {args.host}", f" Version:      {server['version']}", f" API version:  {server['api_version']}",
                  f" Hostname:     {server['hostname']}", f" Kernel:       {server['kernel']}",
                  f" CRIU:         {server['criu_version'] or 'not usable'}", f" Cgroups:      {server['cgroup_mode']}"]
    print("\n".join(lines))
    return EXIT_OK
