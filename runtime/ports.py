"""Published ports: what ``run -p`` / ``-P`` and ``restore --publish`` ask for, parsed and checked.

A ``PortMapping`` is one host port forwarded to one container port (a range such as
``8000-8002:80-82`` becomes three mappings), so the spec records exactly what the rules
(runtime/port_rules.py) install, conflict checks compare single ports and ``pymigrate port``
prints docker's one line per port. ``host_port`` 0 means "any free port", chosen on the host
that starts the container (``-p :80``, ``-P``); a started container's spec holds the chosen one.

Accepted forms (docker's, IPv4 only)::

    [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]      8080:80, 127.0.0.1:8080:80/udp
    [HOST_IP:]:CONTAINER_PORT[/PROTO]                  :80 (a free host port)
    CONTAINER_PORT[/PROTO]                             80 (likewise)
    HOST_A-HOST_B:CTR_A-CTR_B[/PROTO]                  ranges of the same length

This module only parses and validates (no kernel calls): specs from manifests and peers are
untrusted and pass through ``validate_ports`` too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from runtime.errors import InvalidArgument

Protocol = Literal["tcp", "udp"]
PROTOCOLS: tuple[str, ...] = ("tcp", "udp")
MAX_PORTS = 1024  # mappings of one container: a range is expanded, and each is a rule
_PORT_RE = re.compile(r"^[0-9]{1,5}(-[0-9]{1,5})?$")
_HINT = "expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp], e.g. -p 8080:80 or -p 127.0.0.1:8080:80/udp"

__all__ = ["PortMapping", "parse_publish", "parse_publish_all", "validate_ports", "format_mapping", "port_filter", "recorded_ports",
           "MAX_PORTS"]


@dataclass(frozen=True)
class PortMapping:
    """One published port: ``host_ip:host_port`` on the host -> ``container_port`` in the container.

    ``host_ip`` "" is every address of the host (docker's 0.0.0.0); ``host_port`` 0: not chosen yet.
    """

    container_port: int
    protocol: Protocol = "tcp"
    host_port: int = 0
    host_ip: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"container_port": self.container_port, "protocol": self.protocol, "host_port": self.host_port,
                "host_ip": self.host_ip}

    @classmethod
    def from_dict(cls, data: Any) -> PortMapping:
        """From a record or manifest: a mapping whose shape is wrong raises InvalidArgument (the
        values are checked by ``validate_ports``)."""
        if isinstance(data, PortMapping):
            return data
        if not isinstance(data, dict) or "container_port" not in data:
            raise InvalidArgument(f"invalid port mapping {data!r}: expected an object with container_port")
        unknown = set(data) - {"container_port", "protocol", "host_port", "host_ip"}
        if unknown:
            raise InvalidArgument(f"invalid port mapping {data!r}: unknown keys {', '.join(sorted(map(str, unknown)))}")
        return cls(container_port=data["container_port"], protocol=data.get("protocol", "tcp"),
                   host_port=data.get("host_port", 0), host_ip=data.get("host_ip", ""))

    @property
    def host_label(self) -> str:
        return f"{self.host_ip or '0.0.0.0'}:{self.host_port}"


def _port(text: str, what: str, spec: str, *, zero: bool = False) -> int:
    if not text.isdigit():
        raise InvalidArgument(f"invalid port {text!r} in {spec!r}: {what} must be a number", hint=_HINT)
    value = int(text)
    if not (0 if zero else 1) <= value <= 65535:
        raise InvalidArgument(f"invalid {what} {value} in {spec!r}: expected 1-65535", hint=_HINT)
    return value


def _range(text: str, what: str, spec: str) -> list[int]:
    if not _PORT_RE.fullmatch(text):
        raise InvalidArgument(f"invalid {what} {text!r} in {spec!r}: expected PORT or FIRST-LAST", hint=_HINT)
    first, _, last = text.partition("-")
    lo = _port(first, what, spec)
    hi = _port(last, what, spec) if last else lo
    if hi < lo:
        raise InvalidArgument(f"invalid {what} range {text!r} in {spec!r}: the last port is below the first", hint=_HINT)
    return list(range(lo, hi + 1))


def _host_ip(text: str, spec: str) -> str:
    if text in ("", "0.0.0.0"):
        return ""
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise InvalidArgument(f"invalid host address {text!r} in {spec!r}: expected an IPv4 address", hint=_HINT) from None
    if not isinstance(addr, ipaddress.IPv4Address):
        raise InvalidArgument(f"invalid host address {text!r} in {spec!r}: only IPv4 ports are published",
                              hint="leave the address out (all IPv4 addresses) or give an IPv4 one")
    if addr.is_multicast or addr.is_unspecified or int(addr) == 0xFFFFFFFF:
        raise InvalidArgument(f"invalid host address {text} in {spec!r}: expected a unicast address of this host", hint=_HINT)
    return str(addr)


def _protocol(text: str, spec: str) -> Protocol:
    proto = text.lower()
    if proto not in PROTOCOLS:
        raise InvalidArgument(f"invalid protocol {text!r} in {spec!r}: expected tcp or udp", hint=_HINT)
    return proto  # type: ignore[return-value]


def parse_publish(spec: str) -> list[PortMapping]:
    """One ``-p`` value as its mappings (a range: one per port, host ports 0 when not given).

    Raises:
        InvalidArgument: naming the part refused.
    """
    if not isinstance(spec, str) or not spec or spec != spec.strip():
        raise InvalidArgument(f"invalid port mapping {spec!r}: empty or with spaces", hint=_HINT)
    body, slash, proto_text = spec.rpartition("/") if "/" in spec else (spec, "", "tcp")
    proto = _protocol(proto_text, spec) if slash else "tcp"
    parts = body.rsplit(":", 2)
    host_ip, host_text, ctr_text = "", "", parts[-1]
    if len(parts) == 2:
        host_text = parts[0]
    elif len(parts) == 3:
        host_ip, host_text = _host_ip(parts[0], spec), parts[1]
    ctr_ports = _range(ctr_text, "container port", spec)
    if not host_text:
        host_ports = [0] * len(ctr_ports)
    else:
        host_ports = _range(host_text, "host port", spec)
        if len(host_ports) == 1 and len(ctr_ports) > 1:
            raise InvalidArgument(f"invalid port mapping {spec!r}: a range of container ports needs a host range of the same length", hint=_HINT)
        if len(host_ports) != len(ctr_ports):
            if len(ctr_ports) == 1:
                # docker: a host range for one container port means "one free port of that range";
                # we keep it exact (the spec records one port), so ask for equal lengths
                raise InvalidArgument(f"invalid port mapping {spec!r}: the host range has {len(host_ports)} ports for one container port",
                                      hint="give one host port, or ranges of the same length (8000-8002:80-82)")
            raise InvalidArgument(f"invalid port mapping {spec!r}: host and container ranges differ in length "
                                  f"({len(host_ports)} and {len(ctr_ports)})", hint=_HINT)
    return [PortMapping(container_port=c, protocol=proto, host_port=h, host_ip=host_ip) for h, c in zip(host_ports, ctr_ports)]


def parse_publish_all(exposed: Iterable[str]) -> list[PortMapping]:
    """``-P``: an image's ExposedPorts (``80/tcp``, ``53/udp``, ``8000-8001/tcp``) on free host ports.

    Raises:
        InvalidArgument: an entry that is not PORT[/PROTO] (the image's config is untrusted).
    """
    out: list[PortMapping] = []
    for entry in exposed:
        port_text, _, proto_text = str(entry).partition("/")
        if proto_text.lower() == "sctp":  # not published (docker's sctp needs its own rules)
            continue
        proto = _protocol(proto_text or "tcp", f"ExposedPorts {entry}")
        out.extend(PortMapping(container_port=c, protocol=proto) for c in _range(port_text, "exposed port", f"ExposedPorts {entry}"))
    return out


def validate_ports(ports: Sequence[Any], *, network: str = "bridge") -> tuple[PortMapping, ...]:
    """Check a spec's ``ports`` (run's, a manifest's, a peer's); the normalised tuple.

    Refused: a wrong shape, a port outside 1-65535 (host 0 is "choose one"), a protocol other than
    tcp/udp, a host address that is not IPv4 unicast, more than ``MAX_PORTS`` mappings, a host
    port given twice (overlapping ranges included; 0.0.0.0 overlaps every address), and ports on a
    container without a bridge network (there is no address to forward to).

    Raises:
        InvalidArgument: naming the mapping.
    """
    if isinstance(ports, (str, bytes)) or not isinstance(ports, (list, tuple)):
        raise InvalidArgument(f"invalid ports {ports!r}: expected a list of port mappings")
    if len(ports) > MAX_PORTS:
        raise InvalidArgument(f"too many published ports ({len(ports)}): at most {MAX_PORTS} per container")
    if ports and network != "bridge":
        raise InvalidArgument(f"cannot publish ports of a container with network {network}: only bridge containers have an address to forward to",
                              hint="drop -p/-P, or use --network bridge")
    out: list[PortMapping] = []
    for raw in ports:
        m = PortMapping.from_dict(raw)
        for what, value, low in (("container port", m.container_port, 1), ("host port", m.host_port, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
                raise InvalidArgument(f"invalid {what} {value!r}: expected 1-65535", hint=_HINT)
        if m.protocol not in PROTOCOLS:
            raise InvalidArgument(f"invalid protocol {m.protocol!r} of port {m.container_port}: expected tcp or udp", hint=_HINT)
        if not isinstance(m.host_ip, str):
            raise InvalidArgument(f"invalid host address {m.host_ip!r} of port {m.container_port}: expected a string")
        out.append(PortMapping(container_port=m.container_port, protocol=m.protocol, host_port=m.host_port,
                               host_ip=_host_ip(m.host_ip, f"{m.host_ip}:{m.host_port}:{m.container_port}")))
    _check_duplicates(out)
    return tuple(out)


def _check_duplicates(ports: Sequence[PortMapping]) -> None:
    seen: dict[tuple[str, int], PortMapping] = {}
    for m in ports:
        if m.host_port == 0:
            continue
        for (proto, port), other in seen.items():
            if proto == m.protocol and port == m.host_port and overlaps(other.host_ip, m.host_ip):
                raise InvalidArgument(f"host port {m.host_port}/{m.protocol} is published twice "
                                      f"({other.host_label} -> {other.container_port} and {m.host_label} -> {m.container_port})",
                                      hint="give each mapping its own host port (ranges must not overlap)")
        seen[(m.protocol, m.host_port)] = m


def recorded_ports(spec_data: Any) -> tuple[PortMapping, ...] | None:
    """The ``ports`` of a spec in its dict form (a prepared migration's record: what its pre-flight
    claimed, ``migrate -p`` included); None when it has none recorded. Checked later by the restore.

    Raises:
        InvalidArgument: a mapping of the wrong shape.
    """
    ports = spec_data.get("ports") if isinstance(spec_data, dict) else None
    if not isinstance(ports, list):
        return None
    return tuple(PortMapping.from_dict(p) for p in ports)


def overlaps(ip_a: str, ip_b: str) -> bool:
    """Whether two host addresses of a port collide ("" is every address)."""
    return not ip_a or not ip_b or ip_a == ip_b


def format_mapping(m: PortMapping) -> str:
    """docker's ``port`` line: ``80/tcp -> 0.0.0.0:8080``."""
    return f"{m.container_port}/{m.protocol} -> {m.host_label}"


def port_filter(text: str) -> tuple[int, str | None]:
    """``port NAME PRIVATE_PORT[/PROTO]``'s filter: the port and the protocol (None: both).

    Raises:
        InvalidArgument: not a port or protocol.
    """
    port_text, slash, proto_text = text.partition("/")
    port = _port(port_text, "container port", text)
    return port, (_protocol(proto_text, text) if slash else None)
