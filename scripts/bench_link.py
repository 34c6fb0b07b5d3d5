"""Link shaping for the migration benchmarks (issue 17): the hosts' links at a chosen rate, so the
network and not this VM's memory bus limits a transfer (loopback veths move ~1-2 GiB/s here).

Each bench host (tests/integration/hosts.py) reaches the bridge through its eth0; a token bucket
(tc tbf) on every host's eth0 limits what that host sends. A round-trip delay needs sch_netem,
which this kernel lacks (``tc qdisc add ... netem`` says "Specified qdisc kind is unknown"):
``--rtt-ms`` is refused with that reason instead of being silently ignored.
"""

from __future__ import annotations

import re
from typing import Any

_RATE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)bit$")
_UNIT = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}


def parse_rate(text: str) -> int:
    """``1gbit``, ``500mbit``, ``10gbit`` -> bits per second (tc's decimal units)."""
    m = _RATE.match(text.strip().lower())
    if not m:
        raise SystemExit(f"bench: link rate {text!r}: expected a number and kbit|mbit|gbit, e.g. 1gbit")
    bits = int(float(m.group(1)) * _UNIT[m.group(2)])
    if bits < 1_000_000:
        raise SystemExit(f"bench: link rate {text!r} is below 1mbit: a migration would take hours")
    return bits


def rates(text: str | None) -> list[str | None]:
    """The runs a ``--link-rate`` value asks for: None is the unshaped link."""
    if not text:
        return [None]
    out = [r.strip() for r in text.split(",") if r.strip()]
    for r in out:
        parse_rate(r)
    return list(out)


def _burst_bytes(bits: int) -> int:
    # 10 ms of traffic, and never less than two 64 KiB GSO segments (veths hand tbf whole
    # segments; a bucket smaller than one drops it every time)
    return max(bits // 8 // 100, 128 << 10)


def shape(hosts: Any, rate: str | None) -> None:
    """Every host's eth0 sends at most ``rate`` (None: the qdisc removed, the link unshaped)."""
    for h in hosts:
        if rate is None:
            h.run(["tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
            continue
        bits = parse_rate(rate)
        h.run(["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", str(bits),
               "burst", str(_burst_bytes(bits)), "latency", "50ms"])


def refuse_rtt(hosts: Any, rtt_ms: float | None) -> None:
    """A delay needs sch_netem: refuse ``--rtt-ms`` with the reason (probed on a bench host's lo)."""
    if not rtt_ms:
        return
    probe = hosts[0].run(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False)
    if probe.returncode == 0:
        hosts[0].run(["tc", "qdisc", "del", "dev", "lo", "root"], check=False)
        raise SystemExit("bench: --rtt-ms: this kernel has sch_netem but the bench does not add a delay yet")
    raise SystemExit(f"bench: --rtt-ms needs the sch_netem qdisc, which this kernel lacks ({probe.stderr.decode().strip()})")
