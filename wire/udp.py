"""UDP (RFC 768) over IPv4: parse with checksum verification, build with checksum."""
from __future__ import annotations

import struct

from .checksum import checksum, pseudo_ipv4
from .ethernet import FrameError

UDP = struct.Struct("!HHHH")
UDP_LEN = 8


def parse_udp(buf, start: int, end: int, src: bytes, dst: bytes, verify: bool = True):
    """Return (sport, dport, payload memoryview) of the UDP datagram in buf[start:end]."""
    if end - start < UDP_LEN:
        raise FrameError("truncated UDP header")
    sport, dport, length, cs = UDP.unpack_from(buf, start)
    if length < UDP_LEN or length > end - start:
        raise FrameError("bad UDP length")
    mv = memoryview(buf)[start : start + length]
    if verify and cs != 0 and checksum(mv, pseudo_ipv4(src, dst, 17, length)) != 0:
        raise FrameError("bad UDP checksum")
    return sport, dport, mv[UDP_LEN:]


def build_udp(src: bytes, dst: bytes, sport: int, dport: int, payload) -> bytes:
    length = UDP_LEN + len(payload)
    hdr = UDP.pack(sport, dport, length, 0)
    cs = checksum(hdr + bytes(payload), pseudo_ipv4(src, dst, 17, length)) or 0xFFFF
    return UDP.pack(sport, dport, length, cs) + bytes(payload)


def parse_udp_frame(frame):
    """(source MAC, IPv4 header, sport, dport, payload) of an unfragmented UDP/IPv4 ethernet
    frame; FrameError for anything else."""
    from . import ipv4
    from .ethernet import ETHERTYPE_IPV4, parse_eth

    _dst, src_mac, etype, off = parse_eth(frame)
    if etype != ETHERTYPE_IPV4:
        raise FrameError("not IPv4")
    ip = ipv4.parse_ipv4(frame, off)
    if ip.proto != ipv4.PROTO_UDP or ip.is_fragment:
        raise FrameError("not an unfragmented UDP datagram")
    sport, dport, payload = parse_udp(frame, ip.start, ip.end, ip.src, ip.dst)
    return src_mac, ip, sport, dport, payload
