"""rtnetlink encoding and reply parsing against canned kernel replies (no root, no real socket)."""

from __future__ import annotations

import errno
import struct

import pytest

from runtime import _netlink as nl


class CannedSocket:
    """Stands in for a netlink socket: records sends, answers with prepared datagrams."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = replies
        self.sent: list[bytes] = []

    def setsockopt(self, *args: object) -> None:
        pass

    def bind(self, addr: object) -> None:
        pass

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.replies.pop(0)

    def close(self) -> None:
        pass


def _msg(msg_type: int, seq: int, payload: bytes, flags: int = 0) -> bytes:
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, msg_type, flags, seq, 0) + payload + b"\0" * ((-length) % 4)


def _ack(seq: int, err: int = 0, ext_msg: str = "") -> bytes:
    echoed = struct.pack("=IHHII", 32, nl.RTM_NEWLINK, 0, seq, 0)
    payload = struct.pack("=i", -err) + echoed
    flags = nl.NLM_F_CAPPED
    if ext_msg:
        payload += nl.attr_str(nl.NLMSGERR_ATTR_MSG, ext_msg)
        flags |= nl.NLM_F_ACK_TLVS
    return _msg(nl.NLMSG_ERROR, seq, payload, flags)


def test_attributes_are_padded_to_four_bytes() -> None:
    a = nl.attr_str(nl.IFLA_IFNAME, "eth0")  # 4 header + 5 payload -> 12
    assert len(a) == 12
    assert struct.unpack_from("=HH", a) == (9, nl.IFLA_IFNAME)
    assert a[4:9] == b"eth0\0"
    assert len(nl.attr_u32(nl.IFLA_MASTER, 7)) == 8


def test_request_header_and_ack() -> None:
    sock = CannedSocket([_ack(1)])
    with nl.RtNetlink(sock) as rt:  # type: ignore[arg-type]
        rt.link_up(5, "eth0")
    (sent,) = sock.sent
    length, msg_type, flags, seq, _ = struct.unpack_from("=IHHII", sent)
    assert length == len(sent) and msg_type == nl.RTM_NEWLINK and seq == 1
    assert flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK
    family, _type, index, ifflags, change = struct.unpack_from("=BxHiII", sent, 16)
    assert (index, ifflags, change) == (5, nl.IFF_UP, nl.IFF_UP)


def test_error_carries_errno_request_and_kernel_text() -> None:
    sock = CannedSocket([_ack(1, errno.EBUSY, "Device or resource busy, really")])
    rt = nl.RtNetlink(sock)  # type: ignore[arg-type]
    with pytest.raises(nl.NetlinkError) as info:
        rt.add_bridge("pmt0", "02:42:0a:00:00:01")
    assert info.value.errno == errno.EBUSY
    assert str(info.value) == "create bridge pmt0: device or resource busy (Device or resource busy, really)"


def test_link_index_reads_reply_and_maps_enodev_to_none() -> None:
    reply = _msg(nl.RTM_NEWLINK, 1, struct.pack("=BxHiII", 0, 1, 42, 0, 0))
    sock = CannedSocket([reply + _ack(1), _ack(2, errno.ENODEV)])
    rt = nl.RtNetlink(sock)  # type: ignore[arg-type]
    assert rt.link_index("pmbr0") == 42
    assert rt.link_index("missing") is None


def test_replies_of_other_sequence_numbers_are_skipped() -> None:
    sock = CannedSocket([_ack(7) + _ack(1)])
    rt = nl.RtNetlink(sock)  # type: ignore[arg-type]
    assert rt.delete_link("pmv0") is True


def test_idempotent_helpers() -> None:
    sock = CannedSocket([_ack(1, errno.ENODEV), _ack(2, errno.EEXIST)])
    rt = nl.RtNetlink(sock)  # type: ignore[arg-type]
    assert rt.delete_link("gone") is False
    assert rt.add_address(3, "10.77.0.1", 16, "10.77.255.255", "bridge") is False


def test_veth_request_nests_peer_in_its_namespace() -> None:
    sock = CannedSocket([_ack(1)])
    rt = nl.RtNetlink(sock)  # type: ignore[arg-type]
    rt.add_veth("pmvx", master=9, peer_name="eth0", peer_mac="02:42:0a:4d:00:05", peer_netns_fd=17)
    sent = sock.sent[0]
    assert b"veth\0" in sent and b"pmvx\0" in sent and b"eth0\0" in sent
    assert bytes.fromhex("02420a4d0005") in sent
    assert nl.attr_u32(nl.IFLA_NET_NS_FD, 17) in sent
    assert nl.attr_u32(nl.IFLA_MASTER, 9) in sent


def _neigh(seq: int, family: int, index: int, state: int, dst: bytes) -> bytes:
    payload = struct.pack("=BxxxiHBB", family, index, state, 0, 1) + nl.attr(nl.NDA_DST, dst)
    payload += nl.attr(2, bytes.fromhex("02420a000002"))  # NDA_LLADDR: skipped over
    return _msg(nl.RTM_NEWNEIGH, seq, payload, flags=2)  # NLM_F_MULTI


def test_flush_neighbours_dumps_then_deletes_only_entries_in_the_states_asked() -> None:
    import socket

    v4, v6 = socket.inet_aton("10.88.0.7"), socket.inet_pton(socket.AF_INET6, "fe80::1")
    dump = (_neigh(1, socket.AF_INET, 4, nl.NUD_INCOMPLETE, v4)
            + _neigh(1, socket.AF_INET, 4, 0x02, socket.inet_aton("10.88.0.1"))  # NUD_REACHABLE: kept
            + _neigh(1, socket.AF_INET6, 4, nl.NUD_INCOMPLETE, v6))
    done = _msg(nl.NLMSG_DONE, 1, struct.pack("=i", 0), flags=2)
    # the dump comes in two datagrams; the IPv6 entry vanished before its delete (ENOENT: not an error)
    sock = CannedSocket([dump, done, _ack(2), _ack(3, errno.ENOENT)])
    with nl.RtNetlink(sock) as rt:  # type: ignore[arg-type]
        assert rt.flush_neighbours(nl.NUD_INCOMPLETE) == 1
    get, del4, del6 = sock.sent
    _len, msg_type, flags, seq, _ = struct.unpack_from("=IHHII", get)
    assert (msg_type, seq) == (nl.RTM_GETNEIGH, 1) and flags & nl.NLM_F_DUMP == nl.NLM_F_DUMP
    assert struct.unpack_from("=BxxxiHBB", get, 16) == (socket.AF_UNSPEC, 0, 0, 0, 0)
    for sent, family, dst, seq_expected in ((del4, socket.AF_INET, v4, 2), (del6, socket.AF_INET6, v6, 3)):
        length, msg_type, flags, seq, _ = struct.unpack_from("=IHHII", sent)
        assert (length, msg_type, seq) == (len(sent), nl.RTM_DELNEIGH, seq_expected)
        assert flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK
        assert struct.unpack_from("=BxxxiHBB", sent, 16)[:2] == (family, 4)
        assert nl.attrs(sent, 16 + 12) == {nl.NDA_DST: dst}


def test_flush_neighbours_raises_other_errors() -> None:
    import socket

    dump = _neigh(1, socket.AF_INET, 4, nl.NUD_INCOMPLETE, socket.inet_aton("10.88.0.7"))
    sock = CannedSocket([dump + _msg(nl.NLMSG_DONE, 1, struct.pack("=i", 0)), _ack(2, errno.EPERM)])
    with pytest.raises(nl.NetlinkError) as info:
        nl.RtNetlink(sock).flush_neighbours(nl.NUD_INCOMPLETE)  # type: ignore[arg-type]
    assert info.value.errno == errno.EPERM and "delete neighbour 10.88.0.7 on link #4" in str(info.value)
