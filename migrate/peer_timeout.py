"""How long a silent peer is tolerated before a migration's calls give up (a cut link).

``PYMIGRATE_PEER_TIMEOUT_S`` (whole seconds, default 15) sets it for a process, read once at
import: the gRPC channels to other daemons ping after two thirds of it and give up a third later,
and retry a lost connection at least that often once the link is back; the page-server socket's
TCP_USER_TIMEOUT is the whole of it. Long enough for a loaded host to answer; a WAN with long
outages wants more, a LAN cluster may want less (a migration over a dead link fails, and its
source thaws, sooner). Values below 3 s are raised to 3 (pings need a round trip under load).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ENV = "PYMIGRATE_PEER_TIMEOUT_S"
DEFAULT_S = 15
MIN_S = 3


def peer_timeout_s() -> int:
    """The peer timeout of this process (``ENV``, else ``DEFAULT_S``)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_S
    try:
        value = int(raw)
    except ValueError:
        log.warning("%s=%r is not a whole number of seconds: using %d", ENV, raw, DEFAULT_S)
        return DEFAULT_S
    return max(MIN_S, value)


def keepalive_ms(timeout_s: int) -> tuple[int, int]:
    """(ping interval, ping answer timeout) in ms for a peer timeout: together they make it."""
    interval = timeout_s * 2000 // 3
    return interval, timeout_s * 1000 - interval
