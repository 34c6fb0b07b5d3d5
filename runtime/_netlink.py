"""Minimal rtnetlink client: the few link, address, route and neighbour requests the bridge network needs.

Why not iproute2 or pyroute2: on this kind of machine one ``ip`` exec costs ~1.4 ms and connecting a
container needs several; ``import pyroute2`` alone takes ~150 ms. A NETLINK_ROUTE socket speaks the
same protocol for a few tens of microseconds per request, which keeps container start cheap.

Kernel facts this module relies on (see netlink(7), rtnetlink(7)):

- A netlink socket talks to the network namespace it was *created* in, for its whole life. To
  configure a container's namespace we create a socket while the calling thread is inside it (see
  ``runtime._netns.socket_in``) and switch straight back.
- Every request carries NLM_F_ACK, so the kernel always answers with NLMSG_ERROR (error 0 means
  success) after any data reply. NETLINK_EXT_ACK adds the kernel's own text to failures,
  NETLINK_CAP_ACK keeps the echoed request out of error replies.
- A veth peer can be created directly inside another namespace (IFLA_NET_NS_FD nested in
  VETH_INFO_PEER) with its final name and MAC, and the host end can be enslaved to a bridge
  in the same RTM_NEWLINK (IFLA_MASTER), so a connect is one request on the host side.
- Loopback is always ifindex 1 in every namespace (LOOPBACK_IFINDEX).
"""

from __future__ import annotations

import errno as _errno
import logging
import os
import socket
import struct

log = logging.getLogger(__name__)

# netlink(7)
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # set on NLMSG_ERROR replies whose echoed request was cut to its header
NLM_F_ACK_TLVS = 0x200  # set on NLMSG_ERROR replies carrying extended-ack attributes
NLMSGERR_ATTR_MSG = 1

# rtnetlink(7)
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFF_UP = 0x1
LOOPBACK_IFINDEX = 1

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4

RTA_OIF = 4
RTA_GATEWAY = 5
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1

NDA_DST = 1
NUD_INCOMPLETE = 0x01  # include/uapi/linux/neighbour.h

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NDMSG = struct.Struct("=BxxxiHBB")  # family, pad, pad, ifindex, state, flags, type
_RTATTR = struct.Struct("=HH")  # len, type


class NetlinkError(OSError):
    """The kernel refused a request: errno, the request in words, and the kernel's extended-ack text."""

    def __init__(self, err: int, what: str, kernel_msg: str = "") -> None:
        text = f"{what}: {os.strerror(err).lower()}"
        if kernel_msg:
            text += f" ({kernel_msg})"
        super().__init__(err, text)
        self.what = what
        self.kernel_msg = kernel_msg

    def __str__(self) -> str:
        return self.strerror or ""


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr (type-length-value), padded to 4 bytes."""
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def ifinfomsg(index: int = 0, *, up: bool = False) -> bytes:
    flags = IFF_UP if up else 0
    change = IFF_UP if up else 0
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def ndmsg(family: int = socket.AF_UNSPEC, index: int = 0) -> bytes:
    return _NDMSG.pack(family, index, 0, 0, 0)


def attrs(payload: bytes, offset: int) -> dict[int, bytes]:
    """The rtattrs of ``payload`` from ``offset`` on, by type (the last one of a type wins)."""
    found: dict[int, bytes] = {}
    while offset + _RTATTR.size <= len(payload):
        length, kind = _RTATTR.unpack_from(payload, offset)
        if length < _RTATTR.size:
            break
        found[kind] = payload[offset + _RTATTR.size : offset + length]
        offset += _align(length)
    return found


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


class RtNetlink:
    """A NETLINK_ROUTE socket bound to the network namespace it was created in.

    Use as a context manager; every method is one request and one acknowledged reply.
    """

    def __init__(self, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self._sock = sock
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except OSError:  # harmless: only the error texts get shorter (kernels < 4.12)
            pass
        sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RtNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------------------

    def request(self, msg_type: int, flags: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
        """Send one request and return the data replies (type, payload) that precede its ack.

        Raises:
            NetlinkError: the kernel answered with a negative error; ``what`` describes the request.
        """
        self._seq += 1
        seq = self._seq
        msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0)
        log.debug("netlink %s", what)
        self._sock.send(msg + body)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, rtype, rflags, rseq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                payload = data[offset + _NLMSGHDR.size : offset + length]
                offset += _align(length)
                if rseq != seq:
                    continue
                if rtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", payload)
                    if err == 0:
                        return replies
                    raise NetlinkError(-err, what, _ext_ack_message(payload, rflags))
                if rtype == NLMSG_DONE:
                    return replies
                replies.append((rtype, payload))

    # -- links -----------------------------------------------------------------------------------

    def link_index(self, name: str) -> int | None:
        """The ifindex of ``name`` in this socket's namespace, or None if there is no such link."""
        try:
            replies = self.request(RTM_GETLINK, 0, ifinfomsg() + attr_str(IFLA_IFNAME, name), f"look up link {name}")
        except NetlinkError as exc:
            if exc.errno == _errno.ENODEV:
                return None
            raise
        for rtype, payload in replies:
            if rtype == RTM_NEWLINK:
                index: int
                _family, _type, index, _flags, _change = _IFINFOMSG.unpack_from(payload)
                return index
        return None

    def link_flags(self, index: int) -> int:
        replies = self.request(RTM_GETLINK, 0, ifinfomsg(index), f"look up link #{index}")
        for rtype, payload in replies:
            if rtype == RTM_NEWLINK:
                flags: int = _IFINFOMSG.unpack_from(payload)[3]
                return flags
        raise NetlinkError(_errno.ENODEV, f"look up link #{index}")

    def link_up(self, index: int, what: str) -> None:
        self.request(RTM_NEWLINK, 0, ifinfomsg(index, up=True), f"set {what} up")

    def add_bridge(self, name: str, mac: str) -> None:
        """Create bridge ``name`` (up, fixed MAC so it does not change as ports come and go)."""
        body = (
            ifinfomsg(up=True)
            + attr_str(IFLA_IFNAME, name)
            + attr(IFLA_ADDRESS, mac_bytes(mac))
            + attr(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge"))
        )
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create bridge {name}")

    def add_veth(self, name: str, *, master: int, peer_name: str, peer_mac: str, peer_netns_fd: int, up: bool = True) -> None:
        """Create veth ``name`` (up unless ``up`` is False; enslaved to ``master``) whose peer is born
        in another namespace.

        The peer is created down: asking for IFF_UP on it in the same request fails with ENOTCONN
        (seen on 6.18), so the caller sets it up from inside its namespace.
        """
        peer = (
            ifinfomsg()
            + attr_str(IFLA_IFNAME, peer_name)
            + attr(IFLA_ADDRESS, mac_bytes(peer_mac))
            + attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
        )
        linkinfo = attr_str(IFLA_INFO_KIND, "veth") + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer))
        body = (
            ifinfomsg(up=up)
            + attr_str(IFLA_IFNAME, name)
            + attr_u32(IFLA_MASTER, master)
            + attr(IFLA_LINKINFO, linkinfo)
        )
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create veth {name} (peer {peer_name})")

    def delete_link(self, name: str) -> bool:
        """Delete link ``name``; False if it did not exist."""
        try:
            self.request(RTM_DELLINK, 0, ifinfomsg() + attr_str(IFLA_IFNAME, name), f"delete link {name}")
        except NetlinkError as exc:
            if exc.errno == _errno.ENODEV:
                return False
            raise
        return True

    # -- addresses and routes ----------------------------------------------------------------------

    def add_address(self, index: int, ip: str, prefix_len: int, broadcast: str, what: str) -> bool:
        """Add ip/prefix_len to link ``index``; False if it was already there."""
        local = socket.inet_aton(ip)
        body = (
            _IFADDRMSG.pack(socket.AF_INET, prefix_len, 0, RT_SCOPE_UNIVERSE, index)
            + attr(IFA_LOCAL, local)
            + attr(IFA_ADDRESS, local)
            + attr(IFA_BROADCAST, socket.inet_aton(broadcast))
        )
        try:
            self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"add address {ip}/{prefix_len} to {what}")
        except NetlinkError as exc:
            if exc.errno == _errno.EEXIST:
                return False
            raise
        return True

    def add_default_route(self, gateway: str, oif: int, what: str) -> None:
        body = (
            _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
            + attr(RTA_GATEWAY, socket.inet_aton(gateway))
            + attr_u32(RTA_OIF, oif)
        )
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, f"add default route via {gateway} on {what}")


    # -- neighbours ----------------------------------------------------------------------------------

    def flush_neighbours(self, state_mask: int) -> int:
        """Delete the neighbour entries (every family, every link) whose state has a bit of
        ``state_mask`` (``ip neigh flush nud ...``): one dump, one RTM_DELNEIGH per entry. An entry
        that went away in between is not an error. Returns how many were deleted."""
        deleted = 0
        for rtype, payload in self.request(RTM_GETNEIGH, NLM_F_DUMP, ndmsg(), "list neighbours"):
            if rtype != RTM_NEWNEIGH or len(payload) < _NDMSG.size:
                continue
            family, index, state, _flags, _type = _NDMSG.unpack_from(payload)
            dst = attrs(payload, _NDMSG.size).get(NDA_DST)
            if not state & state_mask or dst is None:
                continue
            try:
                self.request(RTM_DELNEIGH, 0, ndmsg(family, index) + attr(NDA_DST, dst),
                             f"delete neighbour {_address_text(family, dst)} on link #{index}")
            except NetlinkError as exc:
                if exc.errno != _errno.ENOENT:
                    raise
                continue
            deleted += 1
        return deleted


def _address_text(family: int, raw: bytes) -> str:
    try:
        return socket.inet_ntop(family, raw)
    except (OSError, ValueError):
        return raw.hex()


def _ext_ack_message(payload: bytes, flags: int) -> str:
    """The kernel's NLMSGERR_ATTR_MSG text from an NLMSG_ERROR payload, if any."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    # payload: int error, the echoed request (only its header when NLM_F_CAPPED), then TLVs
    offset = 4 + _NLMSGHDR.size
    if not flags & NLM_F_CAPPED and len(payload) >= offset:
        offset = 4 + _align(_NLMSGHDR.unpack_from(payload, 4)[0])
    while offset + _RTATTR.size <= len(payload):
        length, kind = _RTATTR.unpack_from(payload, offset)
        if length < _RTATTR.size:
            break
        if kind == NLMSGERR_ATTR_MSG:
            return payload[offset + _RTATTR.size : offset + length].rstrip(b"\0").decode(errors="replace")
        offset += _align(length)
    return ""
