"""Daemon listen addresses (``unix:PATH``, ``HOST:PORT``, ``[V6]:PORT``): what ``daemon --listen``
and ``--metrics-listen`` take. A module of its own so the metrics listener parses them without
importing the server (server -> access_log -> metrics would close a circle)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runtime.errors import InvalidArgument

UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL (unix(7))


@dataclass(frozen=True)
class ListenAddress:
    kind: Literal["unix", "tcp"]
    path: Path | None = None  # unix
    host: str = ""  # tcp; IPv6 without brackets
    port: int = 0  # tcp; 0 picks a free port

    @property
    def grpc_address(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(listen: str) -> ListenAddress:
    """Parse ``unix:PATH``, ``unix://PATH``, ``HOST:PORT`` or ``[V6]:PORT``.

    Raises:
        InvalidArgument: anything else, a unix path longer than sun_path, a bad port.
    """
    if listen.startswith("unix:"):
        raw = listen[len("unix:") :]
        if raw.startswith("//"):
            raw = raw[2:]
        if not raw:
            raise InvalidArgument(f"invalid listen address {listen!r}: expected unix:PATH")
        path = Path(raw).absolute()
        if len(os.fsencode(str(path))) > UNIX_PATH_MAX:
            raise InvalidArgument(
                f"invalid listen address {listen!r}: the socket path is longer than {UNIX_PATH_MAX} bytes",
                hint="use a shorter path (unix sockets are limited by sun_path)",
            )
        return ListenAddress(kind="unix", path=path)
    if "://" in listen:
        raise InvalidArgument(f"invalid listen address {listen!r}: expected unix:PATH or HOST:PORT")
    if listen.startswith("["):
        host, sep, port_s = listen[1:].partition("]:")
    else:
        host, sep, port_s = listen.rpartition(":")
    if not sep or not host or ":" in host and not listen.startswith("["):
        raise InvalidArgument(f"invalid listen address {listen!r}: expected unix:PATH or HOST:PORT")
    try:
        port = int(port_s)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"invalid listen address {listen!r}: port must be 0..65535")
    return ListenAddress(kind="tcp", host=host, port=port)
